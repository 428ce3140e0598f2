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

/**
 * Pieces in flight: one is read from its file while the one before is MAC'd (on another thread)
 * and written.
 */
const IN_FLIGHT = 2;

/** Sends the files of an image directory as they grow. */
export class Shipper {
  /** Bytes sent of each file, by name. */
  readonly #sent = new Map<string, number>();
  #stopped = false;
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
        const sent = partial ? await this.#sendNew(partial) : 0;
        if (sent === 0) await new Promise((r) => setTimeout(r, 5));
      }
    })().catch((err) => {
      this.#failure = err;
    });
  }

  /**
   * Once the image is committed (`DIR` is whole): sends what is left of every file and the
   * COMMIT with each file's size; `durable` asks the receiver to flush the image to its disk
   * before it says it has it (an image to keep, not one restored at once).
   */
  async finish(options: { durable?: boolean } = {}): Promise<void> {
    this.#stopped = true;
    await this.#loop;
    if (this.#failure) throw this.#failure;
    while (await this.#sendNew(this.dir) > 0) { /* until every file is sent whole */ }
    const files: Record<string, number> = {};
    for (const e of Deno.readDirSync(this.dir)) {
      if (e.isFile) files[e.name] = Deno.statSync(`${this.dir}/${e.name}`).size;
    }
    await this.channel.sendJson(FRAME.COMMIT, { files, durable: options.durable === true });
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

  /** Sends every file's bytes beyond what was sent; returns how many. */
  async #sendNew(from: string): Promise<number> {
    let total = 0;
    let entries: Deno.DirEntry[];
    try {
      entries = [...Deno.readDirSync(from)];
    } catch {
      return 0; // renamed meanwhile: finish() sends the rest from the committed directory
    }
    for (const e of entries) {
      if (!e.isFile) continue;
      let file: Deno.FsFile;
      try {
        file = Deno.openSync(`${from}/${e.name}`);
      } catch {
        continue;
      }
      try {
        let at = this.#sent.get(e.name) ?? 0;
        file.seekSync(at, Deno.SeekMode.Start);
        for (;;) {
          const k = this.#next;
          await this.#sending[k]; // its buffer is free again
          const piece = this.#pieces[k];
          const n = file.readSync(piece.room(e.name));
          if (!n) break;
          const sending = this.channel.sendPiece(piece.framed(at, n));
          sending.catch(() => {}); // a broken stream is reported where the send is awaited
          this.#sending[k] = sending;
          this.#next = (k + 1) % IN_FLIGHT;
          at += n;
          total += n;
        }
        this.#sent.set(e.name, at);
      } finally {
        file.close();
      }
    }
    await Promise.all(this.#sending); // sent means written
    this.bytes += total;
    return total;
  }
}
