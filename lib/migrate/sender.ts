/**
 * The sending side of a migration. The process is checkpointed with pre-copy into a local image
 * while the shipper streams each file's bytes to the receiver as they are written: memory goes
 * while the process runs. Frozen for the last part, the rest is sent and the image committed on
 * both sides; the receiver restores it (lazily if asked) and only when it says the process runs
 * does the original end. Anything that fails before lets the original run on, untouched.
 *
 * On one machine (the receiver's boot id is ours) the restored process needs the original's pids:
 * the original ends once the receiver holds the whole image, and should the receiver's restore
 * then fail, the image kept here is restored here, so the process is never lost.
 */
import { checkpoint, type CheckpointResult } from "../dump/checkpoint.ts";
import type { Policy } from "../policy.ts";
import { restore } from "../restore/restore.ts";
import { bootId, Channel, FRAME, MigrationError } from "./channel.ts";
import { type LateRequest, Shipper } from "./shipper.ts";
import { lateBytes, type LateRanges } from "../restore/late_pages.ts";
import { mark, Timeline, type TimelineMark } from "../timeline.ts";
import { WarmUp } from "./warm_up.ts";

/** Pre-copy rounds at most before the freeze. */
const MAX_ROUNDS = 16;

/** A round that copied less than this is the last: the freeze sends the rest. */
const ENOUGH = 4 << 20;

/**
 * A round that copied more than this share of the round before is the last: the written set no
 * longer shrinks (the stream is no faster than the writes), and more rounds would only send the
 * same pages again.
 */
const CONVERGING = 0.8;

/** Where and how to send. */
export interface SendOptions {
  /** The receiver's address (`tardigrade serve`). */
  hostname: string;
  /** The receiver's port. */
  port: number;
  /** The shared secret both sides hold. */
  key: Uint8Array;
  /** Single process, not the tree below it (as `checkpoint`'s `single`). */
  single?: boolean;
  /** Hooks that decide what is dumped (as `checkpoint`'s), e.g. descriptors to leave out. */
  policy?: Policy;
}

/** What `migrate` did. */
export interface MigrateResult {
  /** The process as the receiver restored it. */
  pid: number;
  /** Where the receiver keeps the image. */
  remoteDir: string;
  /** Whether sender and receiver are one machine (the original ended before the restore). */
  sameMachine: boolean;
  /** Bytes of image sent. */
  bytesSent: number;
  /** With `postCopy`: bytes of pages held back at the freeze (sent as the receiver asked, the rest once the process ran there). */
  postCopyBytes?: number;
  /** The dump's own figures. */
  dump: CheckpointResult;
  /**
   * Where the downtime went: the moments of each side from the freeze on (CLOCK_MONOTONIC, in
   * ms; on one machine both sides and the process itself share that clock).
   */
  timeline: { sender: TimelineMark[]; receiver: TimelineMark[] };
}

/** Options of `migrate`. */
export interface MigrateOptions extends SendOptions {
  /**
   * The receiver restores lazily: the processes run before all their memory is in (the rest is
   * served by a page server at the receiver).
   */
  lazy?: boolean;
  /**
   * Post-copy of the last round (implies `lazy`): the freeze sends the state but not the pages
   * written since the last pre-copy round; the process runs on the receiver at once and those
   * follow. From that point it needs both machines until every page is in: should the stream
   * break, the receiver's page server kills it, and the image kept here is the last copy.
   */
  postCopy?: boolean;
  /**
   * Each side rehearses on a throwaway process of its own while the memory streams, so that the
   * code of the freeze and of the restore runs compiled (default true; warm_up.ts).
   */
  warmUp?: boolean;
}

/** Connects and authenticates. */
async function open(opts: SendOptions): Promise<{ channel: Channel; bootId: string }> {
  let conn: Deno.Conn;
  try {
    conn = await Deno.connect({ hostname: opts.hostname, port: opts.port });
  } catch (err) {
    throw new MigrationError(
      `cannot reach ${opts.hostname}:${opts.port}: ${(err as Error).message}`,
      { cause: err },
    );
  }
  return await Channel.connect(conn, opts.key);
}

/**
 * A local directory for the image the shipper streams from: in memory (/dev/shm) where there is
 * one, as the copy is read back at once and dropped after (a disk's write speed would bound the
 * stream); it holds as much as the image for the time of the migration.
 */
async function stagingDir(): Promise<{ dir: string; drop: () => void }> {
  let inMemory: string | undefined;
  try {
    if (Deno.statSync("/dev/shm").isDirectory) inMemory = "/dev/shm";
  } catch { /* none: the temporary directory */ }
  const root = await Deno.makeTempDir({ dir: inMemory, prefix: "tardigrade-send-" });
  return {
    dir: `${root}/image`,
    drop: () => Deno.removeSync(root, { recursive: true }),
  };
}

/**
 * Moves process `pid` (and the processes below it) to the receiver at `hostname:port`: memory is
 * streamed while it runs, then a short freeze sends the rest; the receiver restores it and the
 * original ends only once the receiver says it runs. On a failure before that, the original runs
 * on (on one machine, where it had to end first, it is restored here again).
 */
export async function migrate(pid: number, opts: MigrateOptions): Promise<MigrateResult> {
  const { channel, bootId: theirBoot } = await open(opts);
  const sameMachine = theirBoot === bootId();
  const staging = await stagingDir();
  const shipper = new Shipper(channel, staging.dir);
  let restored: { pid: number; remoteDir: string } | undefined;
  let keepImage = false;
  const postCopy = opts.postCopy === true;
  const lazy = opts.lazy === true || postCopy;
  let lateSent = 0;
  const timeline = Timeline.record();
  let theirTimeline: TimelineMark[] = [];
  const warmUp = opts.warmUp === false ? undefined : WarmUp.sender();
  try {
    // The receiver starts what its restore needs while the memory streams in (and rehearses).
    await channel.sendJson(FRAME.PREPARE, { lazy, warmUp: warmUp !== undefined });
    shipper.start();
    const dump = await checkpoint(pid, staging.dir, {
      preCopy: true,
      single: opts.single,
      policy: opts.policy,
      durable: false, // a copy on its way: the receiver's is what counts
      afterPreCopy: async (copy) => {
        // Rounds while it runs: each sends what the last one left, until little is left or it
        // no longer shrinks.
        await shipper.catchUp();
        await warmUp?.done(); // before the rounds: they copy what was written meanwhile
        let last = Infinity;
        for (let round = 0; round < MAX_ROUNDS; round++) {
          const bytes = await copy.again();
          await shipper.catchUp();
          if (bytes < ENOUGH || bytes > last * CONVERGING) break;
          last = bytes;
        }
        if (postCopy) shipper.holdPages(); // what the freeze writes follows after the resume
      },
      handOver: async ({ end }) => {
        const late = await shipper.finish({ holdBack: postCopy });
        mark("send: committed");
        const stored = await channel.receiveJson(FRAME.STORED);
        mark("send: stored");
        let ended = false;
        try {
          // On one machine the receiver's restore needs the pids: the original ends while the
          // restore starts (it waits for them).
          await channel.sendJson(FRAME.RESTORE, { lazy, ending: sameMachine });
          const pushing = postCopy ? new LatePush(channel, shipper, late) : undefined;
          if (sameMachine) {
            await end();
            ended = true;
          }
          const result = await (pushing?.result ?? channel.receiveJson(FRAME.RESULT));
          mark("send: result");
          if (result.ok !== true) {
            throw new MigrationError(`the receiver's restore failed: ${result.error}`);
          }
          restored = { pid: Number(result.pid), remoteDir: String(stored.dir) };
          if (Array.isArray(result.timeline)) theirTimeline = result.timeline as TimelineMark[];
          if (!pushing) return;
          // It runs there: the original ends, and the pages held back follow.
          if (!ended) await end();
          ended = true;
          try {
            await pushing.allIn();
          } catch (err) {
            keepImage = true;
            throw new MigrationError(
              `the process ran on the receiver as pid ${restored.pid}, but the stream broke ` +
                `before every page was in (${(err as Error).message}): the receiver's page ` +
                `server kills it; the whole image is kept here, in ${staging.dir}`,
              { cause: err },
            );
          }
          lateSent = lateBytes(late);
        } catch (err) {
          if (!ended) throw err; // the original runs on
          if (keepImage) throw err; // it ran there: restoring it here could make two
          const back = await restoredHere(staging.dir, err);
          keepImage = !back.restored; // the user's last copy, named in the error
          throw back.error;
        }
      },
    });
    return {
      pid: restored!.pid,
      remoteDir: restored!.remoteDir,
      sameMachine,
      bytesSent: shipper.bytes,
      ...(postCopy ? { postCopyBytes: lateSent } : {}),
      dump,
      timeline: { sender: timeline.stop(), receiver: theirTimeline },
    };
  } finally {
    timeline.stop();
    await warmUp?.finish();
    await shipper.stop();
    channel.close();
    if (!keepImage) staging.drop();
  }
}

/**
 * Post-copy, once RESTORE is sent: reads what the receiver says (FETCH: bytes its restore
 * needs first; RESULT; ALL_IN) while the held-back bytes are pushed in order.
 */
class LatePush {
  /** The receiver's RESULT. */
  readonly result: Promise<Record<string, unknown>>;
  readonly #allIn: Promise<void>;
  readonly #asked: LateRequest[] = [];
  /** The process runs there: the rest goes in order. */
  #resumed = false;
  /** Why nothing more is to be sent (the restore failed, the stream broke). */
  #over?: Error;
  /** Wakes `#next` (a FETCH or the RESULT came). */
  #wake = () => {};

  constructor(channel: Channel, shipper: Shipper, late: LateRanges) {
    let answer!: (r: Record<string, unknown>) => void;
    this.result = new Promise((resolve) => answer = resolve);
    const reading = (async () => {
      for (;;) {
        const f = await channel.receive();
        const msg = JSON.parse(new TextDecoder().decode(f.payload));
        if (f.type === FRAME.FETCH) this.#asked.push({ file: msg.file, ranges: msg.ranges });
        else if (f.type === FRAME.RESULT) {
          if (msg.ok === true) this.#resumed = true;
          else this.#over = new MigrationError("the receiver's restore failed");
          answer(msg);
        } else if (f.type === FRAME.ALL_IN) return;
        else throw new MigrationError(`unexpected frame ${f.type}`);
        this.#wake();
      }
    })().catch((err) => {
      this.#over = err;
      this.#wake();
      throw err;
    });
    const pushing = shipper.pushLate(late, () => this.#next())
      .then(() => channel.sendJson(FRAME.LATE_SENT, {}));
    this.#allIn = Promise.all([reading, pushing]).then(() => {});
    this.#allIn.catch(() => {}); // awaited once the process runs
    // A stream that breaks before the RESULT: the restore is taken as failed.
    reading.catch((err) => answer({ ok: false, error: (err as Error).message }));
  }

  /** Resolves once the receiver says every page is in. */
  allIn(): Promise<void> {
    return this.#allIn;
  }

  /** What to send next: what the receiver asked for first, the rest once the process runs. */
  async #next(): Promise<LateRequest | null> {
    for (;;) {
      if (this.#over) throw this.#over;
      const asked = this.#asked.shift();
      if (asked) return asked;
      if (this.#resumed) return null;
      await new Promise<void>((wake) => this.#wake = wake);
    }
  }
}

/**
 * On one machine, after the original ended: the image restored here again, and the error to
 * report. Should the receiver have restored it after all (its answer lost), the pids are taken
 * and the error says where it may run.
 */
async function restoredHere(
  dir: string,
  cause: unknown,
): Promise<{ restored: boolean; error: MigrationError }> {
  const why = (cause as Error).message;
  try {
    const back = await restore(dir);
    const error = new MigrationError(
      `${why}; the process was restored here again as pid ${back.pid}`,
      { cause },
    );
    return { restored: true, error };
  } catch (err) {
    const error = new MigrationError(
      `${why}; restoring it here failed too (${(err as Error).message}; if its pids are in ` +
        `use, the receiver may run it): the image is in ${dir}`,
      { cause },
    );
    return { restored: false, error };
  }
}

/** What `streamImage` did. */
export interface StreamResult {
  /** Where the receiver keeps the image. */
  remoteDir: string;
  /** Bytes of image sent. */
  bytesSent: number;
  /** The dump's own figures (the processes end, as with `checkpoint`). */
  dump: CheckpointResult;
}

/**
 * Dumps `pid` straight to a receiver (`dump PID --to ADDR:PORT`), which stores the image without
 * restoring it. The processes end once the receiver holds the image; on a failure before, they
 * run on.
 */
export async function streamImage(pid: number, opts: SendOptions): Promise<StreamResult> {
  const { channel } = await open(opts);
  const staging = await stagingDir();
  const shipper = new Shipper(channel, staging.dir);
  let remoteDir = "";
  try {
    shipper.start();
    const dump = await checkpoint(pid, staging.dir, {
      single: opts.single,
      policy: opts.policy,
      durable: false, // a copy on its way: the receiver flushes its own
      handOver: async () => {
        await shipper.finish({ durable: true });
        remoteDir = String((await channel.receiveJson(FRAME.STORED)).dir);
      },
    });
    return { remoteDir, bytesSent: shipper.bytes, dump };
  } finally {
    await shipper.stop();
    channel.close();
    staging.drop();
  }
}
