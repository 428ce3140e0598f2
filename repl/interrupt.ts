/**
 * Ctrl-C while an input is being evaluated: the REPL stops waiting for it and takes the next
 * one. Processes a dump holds frozen are released, as SIGINT does to the command line tool, so
 * the dump fails and leaves no image; other work the input started cannot be stopped from
 * outside and may end in the background (its result or error is then dropped).
 */
import { interruptFrozen } from "../mod.ts";

/** An input that Ctrl-C interrupted: the REPL stopped waiting for it. */
export class Interrupted extends Error {
  /** `released`: pids of the processes that were frozen and now run on. */
  constructor(released: number[]) {
    const freed = released.length === 0 ? "" : `; released process ${released.join(", ")} ` +
      "from its freeze (the dump under way fails and leaves no image)";
    super(`stopped waiting for the input; what it started may go on in the background${freed}`);
    this.name = "Interrupted";
  }
}

/** The work the REPL is waiting for, if any, and the way to stop waiting for it. */
export class Waiting {
  #stop: ((err: Interrupted) => void) | null = null;

  /** Whether an input is being waited for. */
  get busy(): boolean {
    return this.#stop !== null;
  }

  /** `work`, or an `Interrupted` rejection as soon as `interrupt()` is called. */
  async until<T>(work: Promise<T>): Promise<T> {
    // Once given up, the work's own failure concerns no one: it must not end the REPL.
    work.catch(() => {});
    try {
      return await Promise.race([
        work,
        new Promise<never>((_, reject) => this.#stop = reject),
      ]);
    } finally {
      this.#stop = null;
    }
  }

  /** Stops waiting (releasing frozen processes first); false if nothing was waited for. */
  interrupt(): boolean {
    if (!this.#stop) return false;
    this.#stop(new Interrupted(interruptFrozen()));
    return true;
  }
}
