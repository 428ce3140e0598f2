/**
 * The receiving side of a migration (`tardigrade serve`): takes authenticated connections, writes
 * the image each sends into a directory of its own (built as `DIR.partial-*` and renamed when
 * whole, as the image writer does), and, when asked, restores it and says how it went.
 */
import { Channel, decodeFilePiece, FRAME, MigrationError } from "./channel.ts";
import { restore, restoreWithHead } from "../restore/restore.ts";
import { RestoreHead } from "../restore/restore_head.ts";
import type { LateRanges } from "../restore/late_pages.ts";
import { isPageFileName } from "../image/pages.ts";
import { LateReceiver } from "./late_receiver.ts";
import { WarmUp } from "./warm_up.ts";
import { PARTIAL } from "../image/writer.ts";
import { WAIT, waitpid } from "../../ffi/mod.ts";
import { mark, Timeline } from "../timeline.ts";

/** How `serve` works. */
export interface ServeOptions {
  /** The address to listen on. */
  hostname: string;
  /** The port to listen on (0: any free one). */
  port: number;
  /** The shared secret both sides hold. */
  key: Uint8Array;
  /**
   * Where received images go (a fresh directory in it each), kept. If omitted, each image is a
   * temporary directory (`$TMPDIR/tardigrade-received-*`), removed once the processes restored
   * from it no longer need it (`RestoreOptions.discardImage`), at once if its restore failed;
   * one only stored (`dump --to`) stays.
   */
  dir?: string;
  /** Serve one sender, then return. */
  once?: boolean;
  /** How long a sender has to prove it holds the key, in ms (default 10 s); then it is dropped. */
  handshakeMs?: number;
  /**
   * Restores a received image and returns the pid; `restore()` in this process if omitted, whose
   * restored processes are this server's children: it reaps them when they end.
   */
  restorer?: (dir: string, lazy: boolean) => Promise<number>;
  /** Told what happens, a line at a time. */
  log?: (line: string) => void;
  /** Told the address once listening (port 0 picks one). */
  onListening?: (addr: Deno.NetAddr) => void;
  /** Stops the server when aborted. */
  signal?: AbortSignal;
}

/** What one sender's session ended with. */
export interface Received {
  /** The image directory, once whole. */
  dir?: string;
  /** The restored process, when asked to restore and it did. */
  pid?: number;
  /** Why the session failed. */
  error?: string;
}

/**
 * Serves migrations: each authenticated sender's image is received, stored and, when asked,
 * restored. Returns after the first session with `once`, else when `signal` aborts.
 */
export async function serve(opts: ServeOptions): Promise<Received[]> {
  const listener = Deno.listen({ hostname: opts.hostname, port: opts.port });
  opts.onListening?.(listener.addr as Deno.NetAddr);
  opts.signal?.addEventListener("abort", () => listener.close(), { once: true });
  const log = opts.log ?? (() => {});
  const out: Received[] = [];
  try {
    for await (const conn of listener) {
      const r = await session(conn, opts, log);
      out.push(r);
      if (opts.once) break;
    }
  } catch (err) {
    if (!opts.signal?.aborted) throw err;
  } finally {
    try {
      listener.close();
    } catch { /* closed by the signal */ }
  }
  return out;
}

/** How long a restore waits for the pids of an original that ends as it starts (one machine). */
const PIDS_FREED_WITHIN_MS = 10_000;

/** How long a sender has to prove it holds the key. */
const HANDSHAKE_MS = 10_000;

/** Frames received but not yet written, at most (4 MiB each). */
const MAX_WRITES_IN_FLIGHT = 4;

/** Children this server restored, reaped once they end (nobody else can wait for them). */
const restoredChildren = new Set<number>();
let reaper: ReturnType<typeof setInterval> | undefined;

/** Reaps `pid` once it ends; returns it. */
function reapWhenDone(pid: number): number {
  restoredChildren.add(pid);
  reaper ??= setInterval(() => {
    for (const p of restoredChildren) {
      try {
        if (waitpid(p, WAIT.WNOHANG)) restoredChildren.delete(p);
      } catch {
        restoredChildren.delete(p); // not ours (adopted elsewhere) or gone
      }
    }
  }, 1000);
  Deno.unrefTimer(reaper);
  return pid;
}

/**
 * Post-copy (COMMIT's `late`): checks the held-back ranges (page files of the image, inside their
 * size) and gives each such file its full size, its held-back bytes still holes.
 */
function heldBack(partial: string, held: unknown, sizes: Record<string, number>): LateRanges {
  const late = held as LateRanges;
  for (const [name, ranges] of Object.entries(late)) {
    const size = sizes[name];
    const fits = Array.isArray(ranges) &&
      ranges.every((r) => Array.isArray(r) && 0 <= r[0] && r[0] < r[1] && r[1] <= size);
    if (!isPageFileName(name) || size === undefined || !fits) {
      throw new MigrationError(`held-back bytes of ${JSON.stringify(name)}: refused`);
    }
    using file = Deno.openSync(`${partial}/${name}`, { write: true, create: true, mode: 0o600 });
    file.truncateSync(size);
  }
  return late;
}

const mib = (n: number) => (n / (1 << 20)).toFixed(1);

/** Why a post-copy restore cannot be made here, if it cannot. */
function postCopyRefused(lazy: boolean, opts: ServeOptions, head?: RestoreHead): string | null {
  if (!lazy) return "the restore is not lazy";
  if (opts.restorer) return "this receiver restores through a restorer of its own";
  if (!head?.server) return "no page server was started for it (no lazy PREPARE)";
  return null;
}

/** One sender: handshake, files, commit, and a restore if asked. */
async function session(
  conn: Deno.Conn,
  opts: ServeOptions,
  log: (line: string) => void,
): Promise<Received> {
  const from = conn.remoteAddr as Deno.NetAddr;
  let channel: Channel;
  // A peer that connects and says nothing must not hold the server: the handshake is bounded.
  const silent = setTimeout(() => conn.close(), opts.handshakeMs ?? HANDSHAKE_MS);
  try {
    channel = await Channel.accept(conn, opts.key);
  } catch (err) {
    log(`refused ${from.hostname}:${from.port}: ${(err as Error).message}`);
    return { error: (err as Error).message };
  } finally {
    clearTimeout(silent);
  }
  // Without a directory of the user's, each image is a temporary directory of its own.
  const name = `${Date.now()}-${crypto.randomUUID().slice(0, 8)}`;
  const dir = opts.dir
    ? `${opts.dir}/image-${name}`
    : `${Deno.env.get("TMPDIR") ?? "/tmp"}/tardigrade-received-${name}`;
  const partial = `${dir}${PARTIAL}receiving`;
  Deno.mkdirSync(partial, { mode: 0o700 });
  const files = new Map<string, Deno.FsFile>();
  let received: Received = {};
  let head: RestoreHead | undefined;
  /** A rehearsal of the restore while the memory streams in (warm_up.ts). */
  let warmUp: WarmUp | undefined;
  // Writes go on in order on Deno's blocking threads while the next frame is read and checked.
  let writing: Promise<void> = Promise.resolve();
  let inFlight = 0;
  /** Post-copy: the page-file bytes held back by the sender (from its COMMIT). */
  let late: LateRanges | undefined;
  let postCopy: LateReceiver | undefined;
  /** Where this side's part of the downtime goes, told to the sender with the RESULT. */
  const timeline = Timeline.record();
  /** Writes a FILE frame's bytes (in order, on Deno's blocking threads). */
  const onFile = async (payload: Uint8Array) => {
    const piece = decodeFilePiece(payload);
    if (!/^[A-Za-z0-9._-]+$/.test(piece.name)) {
      throw new MigrationError(`a file named ${JSON.stringify(piece.name)}: refused`);
    }
    const end = piece.offset + piece.data.length;
    if (received.dir && !late?.[piece.name]?.some(([s, e]) => s <= piece.offset && end <= e)) {
      throw new MigrationError(`bytes of ${piece.name} that the image has already: refused`);
    }
    let file = files.get(piece.name);
    if (!file) {
      file = Deno.openSync(`${received.dir ?? partial}/${piece.name}`, {
        write: true,
        create: true,
        mode: 0o600,
      });
      files.set(piece.name, file);
    }
    const into = file;
    inFlight++;
    writing = writing.then(async () => {
      await into.seek(piece.offset, Deno.SeekMode.Start);
      for (let at = 0; at < piece.data.length;) at += await into.write(piece.data.subarray(at));
      inFlight--;
      postCopy?.arrived(piece.name, piece.offset, end);
    });
    if (inFlight >= MAX_WRITES_IN_FLIGHT) await writing;
  };
  try {
    for (;;) {
      const f = await channel.receive();
      if (f.type === FRAME.FILE) {
        await onFile(f.payload);
      } else if (f.type === FRAME.COMMIT) {
        mark("serve: commit");
        await writing;
        mark("serve: written");
        const { files: sizes, durable, late: held } = JSON.parse(
          new TextDecoder().decode(f.payload),
        );
        for (const file of files.values()) {
          if (durable === true) file.syncSync();
          file.close();
        }
        files.clear();
        if (held) late = heldBack(partial, held, sizes);
        for (const [name, size] of Object.entries(sizes as Record<string, number>)) {
          const have = Deno.statSync(`${partial}/${name}`).size;
          if (have !== size) {
            throw new MigrationError(`${name}: ${have} bytes received of ${size}`);
          }
        }
        Deno.renameSync(partial, dir);
        received = { dir };
        log(`received an image into ${dir}`);
        await channel.sendJson(FRAME.STORED, { dir });
        mark("serve: stored");
      } else if (f.type === FRAME.RESTORE && received.dir) {
        mark("serve: restore");
        await warmUp?.finish();
        mark("serve: warmed up");
        const { lazy, ending } = JSON.parse(new TextDecoder().decode(f.payload));
        // Post-copy: the held-back bytes come while the restore runs and after the resume.
        postCopy = late ? new LateReceiver(channel, late) : undefined;
        const taking = postCopy?.take(onFile);
        taking?.catch(() => {}); // awaited once the process runs; a restore waiting fails first
        try {
          const refused = postCopy && postCopyRefused(lazy === true, opts, head);
          if (refused) throw new MigrationError(`cannot restore with pages to come: ${refused}`);
          // `ending`: on one machine the original ends meanwhile; its pids are waited for.
          const restoreOpts = {
            lazy: lazy === true,
            pidsFreedWithinMs: ending === true ? PIDS_FREED_WITHIN_MS : 0,
            discardImage: !opts.dir,
            late: postCopy,
          };
          let pid: number;
          if (opts.restorer) pid = await opts.restorer(dir, lazy === true);
          else {
            const made = head
              ? await restoreWithHead(dir, restoreOpts, head)
              : await restore(dir, restoreOpts);
            pid = reapWhenDone(made.pid);
          }
          received.pid = pid;
          const held = postCopy &&
            ` (${mib(postCopy.bytes)} MiB of pages to come, ${mib(postCopy.fetched)} MiB ` +
              `of them fetched before it ran)`;
          log(`restored pid ${pid} from ${dir}${held ?? ""}`);
          if (postCopy) postCopy.serving(head!.server!);
          await channel.sendJson(FRAME.RESULT, { ok: true, pid, timeline: timeline.stop() });
          mark("serve: result");
        } catch (err) {
          received.error = (err as Error).message;
          log(`restore of ${dir} failed: ${received.error}`);
          // The sender resumes its original: an image in a temporary directory is of no use.
          if (!opts.dir && !opts.restorer) {
            // Not removable: the sender must still get its answer.
            await Deno.remove(dir, { recursive: true }).catch(() => {});
          }
          await channel.sendJson(FRAME.RESULT, { ok: false, error: received.error });
          return received;
        }
        if (!postCopy) return received;
        try {
          await taking;
          await writing;
          await postCopy.allIn();
          await channel.sendJson(FRAME.ALL_IN, {});
          log(`every page of pid ${received.pid} is in ${dir}`);
        } catch (err) {
          received.error = await postCopy.lost(err as Error);
          log(`pid ${received.pid}: ${received.error}`);
        }
        return received;
      } else if (f.type === FRAME.PREPARE && !head && !opts.restorer) {
        const { lazy, warmUp: rehearse } = JSON.parse(new TextDecoder().decode(f.payload));
        head = RestoreHead.start(lazy === true);
        if (rehearse === true) warmUp = WarmUp.receiver(lazy === true);
      } else if (f.type === FRAME.PREPARE) {
        // A restorer of the caller's, or a second PREPARE: nothing to start.
      } else if (f.type === FRAME.ABORT) {
        throw new MigrationError(`the sender gave up: ${new TextDecoder().decode(f.payload)}`);
      } else {
        throw new MigrationError(`unexpected frame ${f.type}`);
      }
    }
  } catch (err) {
    // The stream ended: a store-only sender closes after STORED; anything else is a failure.
    if (received.dir && !received.error) return received;
    received.error = (err as Error).message;
    log(`session from ${from.hostname}:${from.port} failed: ${received.error}`);
    return received;
  } finally {
    timeline.stop();
    await warmUp?.finish();
    head?.drop(); // started for a restore that did not come
    await writing.catch(() => {});
    for (const file of files.values()) file.close();
    if (!received.dir) Deno.removeSync(partial, { recursive: true });
    channel.close();
  }
}
