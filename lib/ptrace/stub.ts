/**
 * The process a restore turns into the dumped one: an ordinary program (`sleep`) started
 * detached, seized, and made to fork with `clone3` and `set_tid` so the child gets the dumped
 * pid. No kernel module and no compiled helper: everything is injected syscalls.
 */
import {
  CLONE_THREAD_FLAGS,
  cont,
  encodeCloneArgs,
  Errno,
  interrupt,
  kill,
  PTRACE_EVENT,
  PTRACE_O,
  seize,
  SIG,
  SYS,
  SyscallError,
  waitpid,
} from "../../ffi/mod.ts";
import { RestoreError } from "../errors.ts";
import { Injector } from "./inject.ts";
import { procExists } from "../inspect/procfs.ts";
import { RemoteMemory } from "../inspect/memory.ts";

/** Options the restorer traces its processes with: fork and clone children are attached too,
 * and everything made dies with the tool if the tool dies midway. */
export const RESTORE_TRACE_OPTIONS = PTRACE_O.TRACEFORK | PTRACE_O.TRACECLONE | PTRACE_O.EXITKILL;

/** Starts `sleep` detached from this process (so Deno does not reap it) and returns its pid. */
async function startSleeper(): Promise<number> {
  const out = await new Deno.Command("/bin/sh", {
    args: ["-c", "/bin/sleep 1000000 </dev/null >/dev/null 2>&1 & echo $!"],
    stdout: "piped",
    stderr: "null",
    stdin: "null",
  }).output();
  const pid = Number(new TextDecoder().decode(out.stdout).trim());
  if (!out.success || !(pid > 0)) throw new RestoreError("could not start the /bin/sleep stub");
  return pid;
}

/** Waits for a ptrace stop of `tid`; throws if it ended instead. */
export function waitStopped(tid: number, what: string): void {
  const st = waitpid(tid)!;
  if (st.exited || st.signaled) throw new RestoreError(`${what} (${tid}) ended unexpectedly`);
}

/**
 * Injects clone3 with set_tid = `id` into the process `inj` runs in: a child process
 * (`thread` false) or a thread of it. The new task is attached to us (PTRACE_O_TRACEFORK /
 * TRACECLONE) and stopped; its id as we see it is returned.
 */
export function cloneWithId(inj: Injector, id: number, thread: boolean): number {
  const what = thread ? "thread id" : "pid";
  const tidAddr = inj.put(new Uint8Array(new Int32Array([id]).buffer), 256);
  const args = encodeCloneArgs(
    thread
      ? { flags: CLONE_THREAD_FLAGS, setTid: tidAddr, setTidSize: 1 }
      : { flags: 0n, exitSignal: SIG.SIGCHLD, setTid: tidAddr, setTidSize: 1 },
  );
  const argsAddr = inj.put(args, 0);
  let r = inj.raw(SYS.clone3, argsAddr, args.length);
  // A process just reaped leaves /proc a moment before its pid is free for reuse: wait for it,
  // but only while nothing holds the id.
  for (let i = 0; r === -BigInt(Errno.EEXIST) && i < 50 && !procExists(id); i++) {
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 2);
    r = inj.raw(SYS.clone3, argsAddr, args.length);
  }
  if (r === -BigInt(Errno.EEXIST)) throw new RestoreError(`${what} ${id} is in use`);
  if (r < 0n) throw new SyscallError(`clone3 (${what} ${id}) in ${inj.pid}`, [id], Number(-r));
  const event = thread ? PTRACE_EVENT.CLONE : PTRACE_EVENT.FORK;
  const made = Number(inj.events.findLast((e) => e.event === event)?.message ?? r);
  waitStopped(made, thread ? "restored thread" : "restored process");
  return made;
}

/** A child process of the process `inj` runs in, with exactly `pid` (see `cloneWithId`). */
export function forkWithPid(inj: Injector, pid: number): number {
  return cloneWithId(inj, pid, false);
}

/** A seized stub, ready to fork the process that becomes the restored one. */
export class Stub {
  #ended = false;

  private constructor(readonly pid: number, readonly injector: Injector) {}

  /** Starts and seizes a stub. */
  static async start(): Promise<Stub> {
    const pid = await startSleeper();
    try {
      seize(pid, RESTORE_TRACE_OPTIONS);
      interrupt(pid);
      waitStopped(pid, "stub");
      return new Stub(pid, new Injector(pid, pid, new RemoteMemory(pid)));
    } catch (err) {
      try {
        kill(pid, SIG.SIGKILL);
      } catch { /* gone */ }
      // Ours to reap when we traced it or it was reparented to us (a child subreaper).
      try {
        waitpid(pid);
      } catch { /* not ours: init reaps it */ }
      throw err;
    }
  }

  /**
   * Forks a child with exactly `pid` (clone3 with set_tid). The child is attached to us and
   * stopped; it is a copy of the stub until the restorer empties it.
   */
  forkWithPid(pid: number): number {
    return forkWithPid(this.injector, pid);
  }

  /** Ends the stub. Its child, if any, is reparented and stays traced by us. */
  end(): void {
    if (this.#ended) return; // its pid may belong to another process by now
    this.#ended = true;
    try {
      this.injector.mem.close();
      kill(this.pid, SIG.SIGKILL);
      cont(this.pid);
    } catch { /* already gone */ }
    try {
      waitpid(this.pid);
    } catch { /* reaped elsewhere */ }
  }
}
