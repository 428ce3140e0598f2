/**
 * Ships an image while it is being written: the image writer builds `DIR.partial-*` and appends
 * to its files (page data first, copied while the processes still run with pre-copy, metadata
 * last), and the shipper sends each file's new bytes as they appear, so that when the image is
 * committed only its last bytes are left to send. The receiver writes the same files: the stream
 * is the image format in motion.
 */
import { basename, dirname } from "node:path";
import { type Channel, FilePiece, FRAME } from "./channel.ts";
import { PARTIAL } from "../image/writer.ts";
import { isPageFileName } from "../image/pages.ts";
import { type LateRanges, within, without } from "../restore/late_pages.ts";

/**
 * Pieces in flight: one is read from its file while the one before is MAC'd (on another thread)
 * and written.
 */
const IN_FLIGHT = 2;

/** Post-copy: held-back bytes sent between two looks at what the receiver asks for. */
const PUSH_PIECE = 1 << 20;

/** Held-back bytes of one file the receiver asks for first (a FETCH frame). */
export interface LateRequest {
  file: string;
  ranges: [number, number][];
}

/** Sends the files of an image directory as they grow. */
export class Shipper {
  /** Bytes sent of each file, by name. */
  readonly #sent = new Map<string, number>();
  #stopped = false;
  /** Post-copy, from the freeze: page files are held back (`finish` says which bytes). */
  #pagesHeld = false;
  #loop?: Promise<void>;
  /** Why the background loop stopped early (the stream broke): `finish` reports it. */
  #failure?: unknown;
  readonly #pieces = Array.from({ length: IN_FLIGHT }, () => new FilePiece());
  /** The send of each piece's buffer, until which it is not read into again. */
  readonly #sending: Promise<void>[] = Array(IN_FLIGHT).fill(Promise.resolve());
  #next = 0;
  /** Bytes sent in all. */
  bytes = 0;

  constructor(readonly channel: Channel, readonly dir: string) {}

  /** Starts sending the partial directory's files as the writer appends to them. */
  start(): void {
    this.#loop = (async () => {
      while (!this.#stopped) {
        const partial = this.#partialDir();
        const skip = this.#pagesHeld ? isPageFileName : undefined;
        const sent = partial ? await this.#sendNew(partial, skip) : 0;
        if (sent === 0) await new Promise((r) => setTimeout(r, 5));
      }
    })().catch((err) => {
      this.#failure = err;
    });
  }

  /**
   * Post-copy, as the processes freeze: the pages written from now on are not sent while they
   * are frozen (`finish` holds them back).
   */
  holdPages(): void {
    this.#pagesHeld = true;
  }

  /**
   * Once the image is committed (`DIR` is whole): sends what is left of every file and the
   * COMMIT with each file's size; `durable` asks the receiver to flush the image to its disk
   * before it says it has it (an image to keep, not one restored at once). With `holdBack`
   * (post-copy), the page-file bytes not yet sent stay here (`pushLate` sends them later):
   * returns them.
   */
  async finish(options: { durable?: boolean; holdBack?: boolean } = {}): Promise<LateRanges> {
    this.#stopped = true;
    await this.#loop;
    if (this.#failure) throw this.#failure;
    const files: Record<string, number> = {};
    for (const e of Deno.readDirSync(this.dir)) {
      if (e.isFile) files[e.name] = Deno.statSync(`${this.dir}/${e.name}`).size;
    }
    const late: LateRanges = {};
    for (const [name, size] of Object.entries(files)) {
      const sent = this.#sent.get(name) ?? 0;
      if (options.holdBack && isPageFileName(name) && size > sent) late[name] = [[sent, size]];
    }
    const held = new Set(Object.keys(late));
    while (await this.#sendNew(this.dir, (name) => held.has(name)) > 0) {
      /* until every file is sent whole */
    }
    await this.channel.sendJson(FRAME.COMMIT, {
      files,
      durable: options.durable === true,
      ...(options.holdBack ? { late } : {}),
    });
    return late;
  }

  /**
   * Post-copy: sends the bytes `finish` held back. `next` says what to send next: ranges the
   * receiver asks for (a restore waits on them), or null for the rest in order (once the
   * process runs there); it waits meanwhile. Resolves once all are sent.
   */
  async pushLate(late: LateRanges, next: () => Promise<LateRequest | null>): Promise<void> {
    const left = structuredClone(late);
    for (;;) {
      const first = Object.entries(left).find(([, r]) => r.length);
      if (!first) break;
      const asked = await next();
      const [name, ranges] = asked ? [asked.file, asked.ranges] : first;
      // What is asked and still here; or the next piece in order.
      const todo = asked
        ? ranges.flatMap(([s, e]) => within(left[name] ?? [], s, e))
        : [[ranges[0][0], Math.min(ranges[0][1], ranges[0][0] + PUSH_PIECE)] as [number, number]];
      for (const [s, e] of todo) {
        await this.#sendRange(name, s, e);
        left[name] = without(left[name], s, e);
      }
    }
  }

  /**
   * Waits until every byte the partial directory holds now is sent (while the processes run,
   * so that the freeze that follows has only what is written after to send).
   */
  async catchUp(): Promise<void> {
    const partial = this.#partialDir();
    if (!partial) return;
    const due = new Map<string, number>();
    for (const e of Deno.readDirSync(partial)) {
      if (e.isFile) due.set(e.name, Deno.statSync(`${partial}/${e.name}`).size);
    }
    const behind = () => [...due].some(([name, size]) => (this.#sent.get(name) ?? 0) < size);
    while (behind() && !this.#failure && !this.#stopped) {
      await new Promise((r) => setTimeout(r, 5));
    }
    if (this.#failure) throw this.#failure;
  }

  /** Stops the background loop (a failed migration). */
  async stop(): Promise<void> {
    this.#stopped = true;
    await this.#loop;
  }

  /** The writer's `DIR.partial-*`, once it exists. */
  #partialDir(): string | null {
    const prefix = `${basename(this.dir)}${PARTIAL}`;
    try {
      for (const e of Deno.readDirSync(dirname(this.dir))) {
        if (e.isDirectory && e.name.startsWith(prefix)) return `${dirname(this.dir)}/${e.name}`;
      }
    } catch { /* not there yet */ }
    return null;
  }

  /** Sends every file's bytes beyond what was sent (but those `skip` names); returns how many. */
  async #sendNew(from: string, skip?: (name: string) => boolean): Promise<number> {
    let total = 0;
    let entries: Deno.DirEntry[];
    try {
      entries = [...Deno.readDirSync(from)];
    } catch {
      return 0; // renamed meanwhile: finish() sends the rest from the committed directory
    }
    for (const e of entries) {
      if (!e.isFile || skip?.(e.name)) continue;
      const at = this.#sent.get(e.name) ?? 0;
      const n = await this.#sendFrom(`${from}/${e.name}`, e.name, at, Infinity);
      this.#sent.set(e.name, at + n);
      total += n;
    }
    await Promise.all(this.#sending); // sent means written
    this.bytes += total;
    return total;
  }

  /** Sends bytes `[start, end)` of the committed file `name` (held back by `finish`). */
  async #sendRange(name: string, start: number, end: number): Promise<void> {
    const n = await this.#sendFrom(`${this.dir}/${name}`, name, start, end);
    await Promise.all(this.#sending);
    if (n !== end - start) throw new Error(`${name}: ${n} bytes of ${end - start} to send`);
    this.bytes += n;
  }

  /** Sends bytes `[at, end)` of file `path` (as far as it goes) under `name`; returns how many. */
  async #sendFrom(path: string, name: string, at: number, end: number): Promise<number> {
    let file: Deno.FsFile;
    try {
      file = Deno.openSync(path);
    } catch {
      return 0;
    }
    let total = 0;
    try {
      file.seekSync(at, Deno.SeekMode.Start);
      while (at < end) {
        const k = this.#next;
        await this.#sending[k]; // its buffer is free again
        const piece = this.#pieces[k];
        const room = piece.room(name);
        const n = file.readSync(room.subarray(0, Math.min(room.length, end - at)));
        if (!n) break;
        const sending = this.channel.sendPiece(piece.framed(at, n));
        sending.catch(() => {}); // a broken stream is reported where the send is awaited
        this.#sending[k] = sending;
        this.#next = (k + 1) % IN_FLIGHT;
        at += n;
        total += n;
      }
    } finally {
      file.close();
    }
    return total;
  }
}
