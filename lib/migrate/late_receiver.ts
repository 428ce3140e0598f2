/**
 * The receiver's side of post-copy (`migrate --post-copy`): the image arrives with the pages
 * written in the last round held back. The restore asks the sender first for those it writes
 * before the process runs (FETCH); the process then runs with the rest missing, and the page
 * server serves them as they come (told by `in` lines on its stdin). Should the stream break
 * before every byte is in, the page server is told, and it kills the process with a message on
 * its stderr: it never waits on a fault forever, nor runs on with zeros.
 */
import type { PageExtent } from "../image/mod.ts";
import {
  lateBytes,
  LatePages,
  type LatePagesArrival,
  type LateRanges,
} from "../restore/late_pages.ts";
import type { PageServerProcess } from "../restore/page_server_process.ts";
import { type Channel, FRAME, MigrationError } from "./channel.ts";

/** The held-back bytes of one migration, as the receiver takes them in. */
export class LateReceiver implements LatePagesArrival {
  readonly #pages: LatePages;
  #server?: PageServerProcess;
  /** What the page server is to be told once it serves (it reads nothing before `go`). */
  #queued: string[] = [];
  #told: Promise<void> = Promise.resolve();
  /** Bytes held back in all. */
  readonly bytes: number;
  /** Bytes of them asked for before the process ran. */
  fetched = 0;

  constructor(readonly channel: Channel, late: LateRanges) {
    this.#pages = new LatePages(late);
    this.bytes = lateBytes(late);
  }

  /** The bytes missing now. */
  missing(): LateRanges {
    return this.#pages.missing();
  }

  /** Asks the sender for the missing bytes of `extents` first, and waits for them. */
  async arrival(extents: PageExtent[]): Promise<void> {
    const wanted = this.#pages.missingOf(extents);
    this.fetched += lateBytes(wanted);
    for (const [file, ranges] of Object.entries(wanted)) {
      await this.channel.sendJson(FRAME.FETCH, { file, ranges });
    }
    await this.#pages.arrival(extents);
  }

  /**
   * Reads the held-back bytes (FILE frames, written by `write`, which calls `arrived` once they
   * are in the image) until the sender says all are sent; a broken stream fails every wait.
   */
  async take(write: (payload: Uint8Array) => Promise<void>): Promise<void> {
    try {
      for (;;) {
        const f = await this.channel.receive();
        if (f.type === FRAME.LATE_SENT) return;
        if (f.type !== FRAME.FILE) throw new MigrationError(`unexpected frame ${f.type}`);
        await write(f.payload);
      }
    } catch (err) {
      this.#pages.fail(err as Error);
      throw err;
    }
  }

  /** Bytes `[start, end)` of `file` are written into the image. */
  arrived(file: string, start: number, end: number): void {
    this.#pages.arrived(file, start, end);
    this.#tell(`in ${file} ${start} ${end}`);
  }

  /** The restore is done and `server` serves: it hears of what came meanwhile, and after. */
  serving(server: PageServerProcess): void {
    this.#server = server;
    for (const line of this.#queued.splice(0)) this.#tell(line);
  }

  /** Once every byte is written: the page server is told; throws if some never came. */
  async allIn(): Promise<void> {
    if (!this.#pages.complete) throw new MigrationError("the sender ended with pages unsent");
    this.#tell("all");
    await this.#told;
  }

  /**
   * The stream broke with pages still to come: the page server is told, which kills the
   * process (it cannot run on without them). Returns what to report.
   */
  async lost(err: Error): Promise<string> {
    const why = `the sender's stream broke before every page came (${err.message})`;
    this.#pages.fail(new MigrationError(why));
    this.#tell(`lost ${why}`);
    await this.#told;
    return `${why}: the page server kills the process`;
  }

  #tell(line: string): void {
    const server = this.#server;
    if (!server) this.#queued.push(line);
    else this.#told = this.#told.then(() => server.tell(line));
  }
}
