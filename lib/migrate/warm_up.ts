/**
 * A migration's freeze runs code this tool process never ran before: V8 compiles each function
 * the first time it is called, which made up some 20 ms of the sender's freeze (the dump of the
 * task, threads and files) and more of the receiver's restore and its comparison with the
 * image. Each side therefore rehearses once, while the memory streams, on a throwaway process
 * of its own (a `sleep`): the sender dumps it and lets it run on; the receiver dumps it and
 * restores it as the migration will (lazily if asked), then ends it. Nothing of the migration
 * depends on a rehearsal: one that fails is ignored.
 */
import { checkpoint } from "../dump/checkpoint.ts";
import { restore } from "../restore/restore.ts";
import { kill, SIG, waitpid } from "../../ffi/mod.ts";
import type { Policy } from "../policy.ts";
import { mark } from "../timeline.ts";

/** What the tool inherited and the `sleep` with it (a shell's stray pipes) is not dumped. */
const STDIO_ONLY: Policy = { fd: (fd) => fd.fd <= 2 ? "dump" : "skip" };

/** How long the receiver's rehearsal waits for the pid of its dumped `sleep`. */
const PID_FREED_WITHIN_MS = 2000;

/** Whether `pid` exists (a zombie too). */
function exists(pid: number): boolean {
  try {
    Deno.statSync(`/proc/${pid}`);
    return true;
  } catch {
    return false;
  }
}

/**
 * Starts `sleep` as the child of a shell that waits for it (not of this process, whose children
 * Deno reaps): once it is killed the shell reaps it at once, so its pid is free for the
 * rehearsal's restore (init would reap it seconds later). Returns its pid. A rehearsal takes
 * well under a second; the sleep ends by itself after a minute should this tool be killed
 * before it ends it.
 */
async function startSleeper(): Promise<number> {
  const sh = new Deno.Command("/bin/sh", {
    args: ["-c", "sleep 60 </dev/null >/dev/null 2>&1 & echo $!; exec >&-; wait"],
    stdin: "null",
    stdout: "piped",
    stderr: "null",
  }).spawn();
  sh.status.catch(() => {});
  const pid = Number((await new Response(sh.stdout).text()).trim());
  if (!(pid > 0)) throw new Error("could not start a sleep to rehearse on");
  return pid;
}

function end(pid: number): void {
  try {
    kill(pid, SIG.SIGKILL);
  } catch { /* gone */ }
}

/** A rehearsal under way; `finish` stops it after its current step and waits for it. */
export class WarmUp {
  #stopped = false;
  readonly #done: Promise<void>;
  /** Resolves when `finish` is called: a wait between steps ends at once. */
  readonly #stopping: Promise<void>;
  #stop = () => {};

  private constructor(steps: (go: () => boolean, pause: () => Promise<unknown>) => Promise<void>) {
    this.#stopping = new Promise((r) => this.#stop = r);
    const pause = () => {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const slept = new Promise((r) => timer = setTimeout(r, 10));
      return Promise.race([slept, this.#stopping]).finally(() => clearTimeout(timer));
    };
    // Only a rehearsal: its failure is marked (TARDIGRADE_TIMELINE shows it), nothing more.
    this.#done = steps(() => !this.#stopped, pause)
      .catch((err) => mark(`warm-up failed: ${err}`));
  }

  /** The sender's: a dump of a throwaway process, which runs on and is then ended. */
  static sender(): WarmUp {
    return new WarmUp(async (go) => {
      const pid = await startSleeper();
      const dir = await Deno.makeTempDir({ prefix: "tardigrade-warm-up-" });
      try {
        if (go()) {
          await checkpoint(pid, `${dir}/image`, {
            leaveRunning: true,
            durable: false,
            policy: STDIO_ONLY,
          });
        }
      } finally {
        end(pid);
        await Deno.remove(dir, { recursive: true }).catch(() => {});
      }
    });
  }

  /**
   * The receiver's: a throwaway process dumped (it ends) and restored as the migration's will be
   * (`lazy`), then ended. Steps left when `finish` is called are skipped.
   */
  static receiver(lazy: boolean): WarmUp {
    return new WarmUp(async (go, pause) => {
      const pid = await startSleeper();
      const image = `${Deno.env.get("TMPDIR") ?? "/tmp"}/tardigrade-warm-up-${crypto.randomUUID()}`;
      let restored: number | undefined;
      try {
        if (!go()) return;
        await checkpoint(pid, image, { durable: false, policy: STDIO_ONLY });
        // Its pid is free once its shell reaps it: waited for here, where the migration's
        // restore can stop the rehearsal, not in the rehearsal's restore (which must not be
        // under way long when the migration's comes).
        for (const until = Date.now() + PID_FREED_WITHIN_MS; exists(pid) && Date.now() < until;) {
          if (!go()) return;
          await pause();
        }
        if (!go() || exists(pid)) return;
        // The image goes when the restore is done (lazily: when its page server ends).
        const made = await restore(image, {
          lazy,
          lazyLog: "/dev/null",
          discardImage: true,
        });
        restored = made.pid;
      } finally {
        end(pid);
        if (restored === undefined) await Deno.remove(image, { recursive: true }).catch(() => {});
        else {
          end(restored);
          try {
            waitpid(restored); // a restored process is the restorer's child
          } catch { /* reaped elsewhere */ }
        }
      }
    });
  }

  /** Waits until it is over (never throws). */
  done(): Promise<void> {
    return this.#done;
  }

  /** Stops after the step under way and waits for it (never throws). */
  async finish(): Promise<void> {
    this.#stopped = true;
    this.#stop();
    await this.#done;
  }
}
