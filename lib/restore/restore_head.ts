/**
 * What a restore starts before it reads its image: the stub (a shell and an exec) and, for a
 * lazy restore, the page server (a Deno, the slowest to start). Each restore starts its own
 * while it reads the image; a migration's receiver starts them while the memory streams in, so
 * that the restore at the freeze finds them ready.
 */
import { Stub } from "../ptrace/stub.ts";
import { PageServerProcess } from "./page_server_process.ts";

/** The stub and page server of one restore, started ahead of it. */
export class RestoreHead {
  #taken = false;

  private constructor(
    readonly stub: Promise<Stub>,
    readonly server: PageServerProcess | undefined,
  ) {
    stub.catch(() => {}); // its failure is reported where it is awaited, not as unhandled
  }

  /** Starts a stub, and a page server when the restore is to be `lazy`. */
  static start(lazy: boolean): RestoreHead {
    return new RestoreHead(Stub.start(), lazy ? PageServerProcess.start() : undefined);
  }

  /**
   * Hands the parts to the restore (once): a page server is started if a lazy restore lacks
   * one, and ended if the restore is not lazy after all.
   */
  take(lazy: boolean): { stub: Promise<Stub>; server?: PageServerProcess } {
    if (this.#taken) throw new Error("a restore head serves one restore");
    this.#taken = true;
    if (!lazy) this.server?.abort();
    const server = lazy ? this.server ?? PageServerProcess.start() : undefined;
    return { stub: this.stub, server };
  }

  /** Ends the parts if no restore took them (the migration failed before its restore). */
  drop(): void {
    if (this.#taken) return;
    this.#taken = true;
    this.server?.abort();
    this.stub.then((s) => s.end(), () => {});
  }
}
