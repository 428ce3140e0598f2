/**
 * The page server of a lazy restore as a process of its own (page_server_main.ts runs it): started
 * detached at the beginning of the restore, so its start-up overlaps the restore's work, handed
 * what it serves once the processes' memory is made, told to go once they are armed, and left
 * running alone when the restore returns. It takes the userfaultfds (one a process of the tree)
 * from the restoring tool with pidfd_getfd, and answers "ready" once it holds them: only then may
 * the processes run, and the tool close its copies.
 */
import { RestoreError } from "../errors.ts";
import type { PageExtent } from "../image/mod.ts";
import type { PendingRun } from "../memory/pending_pages.ts";
import type { LateRanges } from "./late_pages.ts";

/** One restored process the page server serves. */
export interface ServedSpec {
  /** The restored process (host pid). */
  pid: number;
  /** The process holding its userfaultfd, and the descriptor number there. */
  from: { pid: number; fd: number };
  /** Missing pages as [start, end, extent, offset]. */
  pending: [number, number, number, number][];
  /** The extents of the process's entry. */
  extents: PageExtent[];
}

/** What the page server is told to serve (a line of JSON on its stdin). */
export interface PageServerSpec {
  /** The image directory. */
  dir: string;
  /** The restored processes, the root of the tree first. */
  processes: ServedSpec[];
  /** The file the server logs to. */
  log: string;
  /** Remove `dir` when the server ends (`RestoreOptions.discardImage`). */
  discard?: boolean;
  /**
   * Post-copy: page-file bytes not in the image yet. After `go`, its stdin says as they come:
   * `in FILE START END`, then `all`; or `lost WHY` (they never will: it kills the processes).
   */
  late?: LateRanges;
}

/** The pending pages of a served process, as the server takes them back. */
export function specRuns(spec: ServedSpec): PendingRun[] {
  return spec.pending.map(([start, end, extent, offset]) => ({ start, end, extent, offset }));
}

/** A served process's pending pages as the spec carries them. */
export function runsOfSpec(runs: PendingRun[]): ServedSpec["pending"] {
  return runs.map((r) => [r.start, r.end, r.extent, r.offset]);
}

/** How long the server may take to start and take the userfaultfd, under a loaded machine. */
const START_TIMEOUT_MS = 60_000;

/** A detached page-server process, from its start to the hand-over. */
export class PageServerProcess {
  readonly #child: Deno.ChildProcess;
  readonly #lines: ReadableStreamDefaultReader<string>;
  readonly #stdin: WritableStreamDefaultWriter<Uint8Array>;

  private constructor(child: Deno.ChildProcess) {
    this.#child = child;
    this.#lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    this.#stdin = child.stdin.getWriter();
  }

  /** Its pid. */
  get pid(): number {
    return this.#child.pid;
  }

  /** Starts a page server (in a session of its own: the terminal's signals are not for it). */
  static start(): PageServerProcess {
    const main = new URL("./page_server_main.ts", import.meta.url);
    const config = new URL("../../deno.json", import.meta.url);
    const args = ["run", "-A", "--quiet"];
    try {
      if (Deno.statSync(config).isFile) args.push("--config", config.pathname);
    } catch { /* used as a package: its own imports only */ }
    const child = new Deno.Command(Deno.execPath(), {
      args: [...args, main.href],
      stdin: "piped",
      stdout: "piped",
      stderr: "null",
      detached: true,
    }).spawn();
    child.status.catch(() => {});
    return new PageServerProcess(child);
  }

  /**
   * Tells the server what to serve and waits until it holds the userfaultfds; throws with the
   * server's own reason when it cannot serve. It serves once told to `go`: the processes may be
   * armed meanwhile.
   */
  async handOver(spec: PageServerSpec): Promise<void> {
    await this.#stdin.write(new TextEncoder().encode(JSON.stringify(spec) + "\n"));
    let text = "";
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new RestoreError("the page server did not answer")),
        START_TIMEOUT_MS,
      );
    });
    try {
      while (!text.includes("\n")) {
        const { value, done } = await Promise.race([this.#lines.read(), timeout]);
        if (done) break;
        text += value;
      }
    } finally {
      clearTimeout(timer);
    }
    const line = text.split("\n")[0];
    if (line !== "ready") {
      throw new RestoreError(
        `the page server cannot serve the pages: ${line || "it exited"} (log: ${spec.log})`,
      );
    }
  }

  /**
   * Tells the server, once it holds the userfaultfds and they are armed, to serve. With
   * `late` bytes (post-copy), its stdin stays open for `tell`.
   */
  async go(late = false): Promise<void> {
    await this.#stdin.write(new TextEncoder().encode("go\n"));
    if (!late) await this.#stdin.close();
  }

  /**
   * Post-copy: tells the server a line about the late bytes (see `PageServerSpec.late`); `all`
   * and `lost` close its stdin. One that has ended (its processes are gone) is not told.
   */
  async tell(line: string): Promise<void> {
    try {
      await this.#stdin.write(new TextEncoder().encode(line + "\n"));
      if (line === "all" || line.startsWith("lost ")) await this.#stdin.close();
    } catch { /* it ended: nothing waits on those bytes */ }
  }

  /** Lets it run on alone: this process may exit. */
  release(): void {
    this.#lines.cancel().catch(() => {});
    this.#child.unref();
  }

  /** Ends it (the restore failed). */
  abort(): void {
    try {
      this.#child.kill("SIGKILL");
    } catch { /* gone */ }
    this.#lines.cancel().catch(() => {});
    this.#stdin.close().catch(() => {});
    this.#child.unref();
  }
}
