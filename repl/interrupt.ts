/**
 * Ctrl-C while an input is being evaluated: the REPL stops waiting for it and takes the next
 * one. Processes a dump holds frozen are released, as SIGINT does to the command line tool, so
 * the dump fails and leaves no image; a restore stops at its next stage, before it resumes
 * anything, and kills what it made. Other work the input started cannot be stopped from outside
 * and may end in the background (its result or error is then dropped).
 */
import { interruptFrozen } from "../mod.ts";

/** An input that Ctrl-C interrupted: the REPL stopped waiting for it. */
export class Interrupted extends Error {
  /** `released`: pids of the processes that were frozen and now run on. */
  constructor(released: number[]) {
    const freed = released.length === 0 ? "" : `; released process ${released.join(", ")} ` +
      "from its freeze (the dump under way fails and leaves no image)";
    super(
      "stopped waiting for the input (a dump or restore under way fails; other work it " +
        `started may end in the background)${freed}`,
    );
    this.name = "Interrupted";
  }
}

/** Runs an input's work, or rejects with `Interrupted` as soon as Ctrl-C comes. */
export type Interruptible = <T>(work: () => Promise<T>) => Promise<T>;

/** The inputs the REPL is waiting for, and the way to stop waiting for them. */
export class Waiting {
  readonly #pending = new Set<(err: Interrupted) => void>();

  /** Whether an input is entered and not finished. */
  get busy(): boolean {
    return this.#pending.size > 0;
  }

  /**
   * Registers an input at once, when it is entered, so that a Ctrl-C that follows the Enter
   * closely interrupts it even before it starts (its turn comes after the inputs before it).
   */
  begin(): Interruptible {
    let stopped = false;
    let stop = (_: Interrupted) => {};
    const interrupted = new Promise<never>((_, reject) => stop = reject);
    interrupted.catch(() => {}); // an input that already ended no longer listens
    const entry = (err: Interrupted) => {
      stopped = true;
      stop(err);
    };
    this.#pending.add(entry);
    return async <T>(work: () => Promise<T>): Promise<T> => {
      try {
        if (stopped) return await interrupted; // interrupted before its turn: never started
        const running = work();
        // Once given up, the work's own failure concerns no one: it must not end the REPL.
        running.catch(() => {});
        return await Promise.race([running, interrupted]);
      } finally {
        this.#pending.delete(entry);
      }
    };
  }

  /** Stops waiting (releasing frozen processes first); false if nothing was waited for. */
  interrupt(): boolean {
    if (!this.busy) return false;
    const err = new Interrupted(interruptFrozen());
    for (const stop of this.#pending) stop(err);
    this.#pending.clear();
    return true;
  }
}
