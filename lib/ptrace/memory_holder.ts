/**
 * A process that holds a frozen process's memory while that one ends: a clone of it made with
 * CLONE_VM, attached to the tool, stopped before it runs an instruction and holding no
 * descriptor. Freeing a large address space is most of a process's exit (about 80 ms a GiB on
 * these machines), and its pid is free only after: with a holder the process ends at once and its
 * pid is free for a restore on the same machine, while the memory is freed later, when the
 * holder is let go (`drop`).
 */
import {
  CLONE,
  kill,
  PTRACE_O,
  SECCOMP_MODE,
  setOptions,
  SIG,
  WAIT,
  waitpid,
} from "../../ffi/mod.ts";
import type { FrozenProcess } from "./freeze.ts";
import { Injector } from "./inject.ts";
import { cloneChild } from "./stub.ts";
import { RemoteMemory } from "../inspect/memory.ts";
import { statusField } from "../inspect/procfs.ts";

/** How often a dropped holder is looked for until it is collected, in ms. */
const REAP_EVERY_MS = 20;

/** A stopped clone sharing a frozen process's memory. */
export class MemoryHolder {
  private constructor(readonly pid: number) {}

  /**
   * Makes a holder of `frozen`'s memory, or returns null where none is made: a process confined
   * by seccomp (the options set here would wake its filters), or an injection that failed. The
   * process then ends as any does, its memory freed on its way out.
   */
  static take(frozen: FrozenProcess): MemoryHolder | null {
    let holder: MemoryHolder | undefined;
    try {
      const inj = frozen.injector;
      const confined = statusField(frozen.pid, "Seccomp", inj.tid) ?? SECCOMP_MODE.DISABLED;
      if (Number(confined) !== SECCOMP_MODE.DISABLED) return null;
      // The clone is attached to us and stopped before it runs (TRACECLONE), and dies with the
      // tool (EXITKILL): it never runs on the frozen process's stack. The process itself is
      // ended right after, so dying with the tool from now on changes nothing for it.
      setOptions(inj.tid, PTRACE_O.TRACESYSGOOD | PTRACE_O.TRACECLONE | PTRACE_O.EXITKILL);
      holder = new MemoryHolder(cloneChild(inj, { share: CLONE.VM, quiet: true }).host);
      // Its copy of the descriptor table would keep the process's files open (a lock, a
      // listening port) past its end: only the memory is held.
      using mem = new RemoteMemory(holder.pid);
      const own = new Injector(holder.pid, holder.pid, mem, inj.site, { diesWithTool: true });
      own.call("close_range", 0, 0xffffffff, 0);
      return holder;
    } catch {
      holder?.drop();
      return null;
    }
  }

  /** Ends the holder: the memory is freed now, off the caller's path; collected when it ends. */
  drop(): void {
    try {
      kill(this.pid, SIG.SIGKILL);
    } catch { /* gone */ }
    const pid = this.pid;
    const reaper = setInterval(() => {
      try {
        if (!waitpid(pid, WAIT.WNOHANG)) return;
      } catch { /* not ours any more */ }
      clearInterval(reaper);
    }, REAP_EVERY_MS);
    Deno.unrefTimer(reaper);
  }
}
