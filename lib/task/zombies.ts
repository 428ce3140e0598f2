/**
 * Zombie children: children that exited and that their parent has not waited for yet. Nothing
 * of them is left to dump but their pid, their exit status and their group, yet the parent's
 * next wait() expects them: a restore without them would answer ECHILD.
 *
 * Dump: the children of each of the parent's threads in state Z, with the exit status
 * /proc/PID/stat gives (field 52, in the form wait() reports it), their group and session, and
 * the thread that forked them.
 * Restore: once every process of the tree exists (a zombie may be in the group of another), the
 * restored parent's thread that forked it forks a child with the zombie's pid (clone3 set_tid);
 * the child takes its name, leads its session or group again if it did or joins the group it was
 * in, then exits with the same status: exit_group(code) run at a syscall instruction, or the same
 * signal (no core is written: RLIMIT_CORE 0, so the status lacks the core flag). Once the tool,
 * its tracer, has seen it exit, the zombie is its parent's to wait for. The SIGCHLD that exit
 * sends the parent is taken back (an injected rt_sigtimedwait) unless SIGCHLD was pending at
 * dump: the original got its SIGCHLD long ago.
 */
import {
  cont,
  errnoText,
  getRegs,
  kill,
  PR,
  RLIMIT,
  setRegs,
  setSigMask,
  SIG,
  sigBit,
  SYS,
  SyscallError,
  waitpid,
} from "../../ffi/mod.ts";
import { RestoreError } from "../errors.ts";
import { Injector } from "../ptrace/inject.ts";
import { readProcText, threadIds, tryReadStat } from "../inspect/procfs.ts";
import { RemoteMemory } from "../inspect/memory.ts";
import type { ProcessEntry, ZombieEntry } from "../image/schema.ts";
import { forkWithPid } from "../ptrace/stub.ts";

/** The children of thread `tid` of process `pid` (empty once it is gone). */
function childrenOfThread(pid: number, tid: number): number[] {
  try {
    return readProcText(pid, `task/${tid}/children`).split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

/** The children of `pid` that are zombies, in pid order, with the thread that forked each. */
export function zombieChildren(pid: number): ZombieEntry[] {
  const out: ZombieEntry[] = [];
  for (const tid of threadIds(pid)) {
    for (const child of childrenOfThread(pid, tid)) {
      const stat = tryReadStat(child); // null: reaped meanwhile
      if (stat?.state !== "Z") continue;
      out.push({
        pid: child,
        comm: stat.comm,
        status: stat.exitCode,
        pgid: stat.pgrp,
        sid: stat.session,
        ...(tid !== pid ? { thread: tid } : {}),
      });
    }
  }
  return out.sort((a, b) => a.pid - b.pid);
}

/** Leaders of a session or group first: the others may join their group. */
const leadersFirst = (a: ZombieEntry, b: ZombieEntry) =>
  Number(b.pgid === b.pid) - Number(a.pgid === a.pid) || a.pid - b.pid;

/**
 * Makes again the zombie children that one thread of a process just made had forked: `thread`
 * is that thread's dumped tid (undefined: the main thread), `inj` runs in it. Every process of
 * the tree must exist already: a zombie may be in another one's process group. `made` is told the
 * pid the tool sees each by (another in a new pid namespace): image pid → host pid.
 */
export function restoreZombies(
  inj: Injector,
  entry: ProcessEntry,
  thread?: number,
  made?: { set(pid: number, hostPid: number): void },
): void {
  const zombies = (entry.zombies ?? []).filter((z) => z.thread === thread).sort(leadersFirst);
  for (const z of zombies) made?.set(z.pid, makeZombie(inj, entry, z));
  // The exits sent the process a SIGCHLD the original got long ago, unless one was pending for
  // the whole process at dump (then it is that one).
  const isChld = (s: { signo: number }) => s.signo === SIG.SIGCHLD;
  if (!zombies.length || entry.sharedPending.some(isChld)) return;
  // SIGCHLD is not blocked in the stub: every one pending for this thread is taken (zero
  // timeout), its own first, then the process's; its own, already given back when the main
  // thread's zombies come last, are queued again.
  const set = inj.put(new Uint8Array(new BigUint64Array([sigBit(SIG.SIGCHLD)]).buffer));
  const zero = inj.put(new Uint8Array(16), 64);
  for (let i = 0; i < 64; i++) {
    if (inj.raw(SYS.rt_sigtimedwait, set, 0, zero, 8) < 0n) break;
  }
  if (thread !== undefined) return; // its pending signals are given back after this
  const own = entry.threads.find((t) => t.tid === entry.pid)?.pending.filter(isChld) ?? [];
  if (!own.length) return;
  const [tgid, tid] = [inj.raw(SYS.getpid), inj.raw(SYS.gettid)];
  for (const s of own) {
    inj.raw(SYS.rt_tgsigqueueinfo, tgid, tid, s.signo, inj.put(s.siginfo));
  }
}

/**
 * Puts the zombie-to-be (`inj` runs in it) in the session and group the zombie was in, relative to
 * its parent: its own, its parent's (inherited), or the group of another process of the session.
 * Ids are the image's: they are the ones the process sees, in a new pid namespace too.
 */
function joinGroup(inj: Injector, parent: ProcessEntry, z: ZombieEntry): void {
  if (z.sid === z.pid) {
    inj.call("setsid");
    return;
  }
  if (z.sid !== parent.sid) {
    throw new RestoreError(
      `it was in session ${z.sid}, neither one it led nor its parent's (${parent.pid} is in ` +
        `session ${parent.sid}): no process can join another session`,
    );
  }
  if (z.pgid === z.pid) inj.call("setpgid", 0, 0);
  else if (z.pgid !== parent.pgid) {
    try {
      inj.call("setpgid", 0, z.pgid);
    } catch (err) {
      if (!(err instanceof SyscallError)) throw err;
      throw new RestoreError(
        `joining process group ${z.pgid} failed: ${err.code} (${errnoText(err.errno)}; its ` +
          `leader or a member must be in the image, in the same session)`,
      );
    }
  }
}

/** Makes zombie `z` of the process `parent` runs in; returns its pid as the tool sees it. */
function makeZombie(parent: Injector, entry: ProcessEntry, z: ZombieEntry): number {
  const pid = forkWithPid(parent, z.pid);
  const mem = new RemoteMemory(pid);
  try {
    const inj = new Injector(pid, pid, mem, parent.site, { diesWithTool: true });
    inj.call("prctl", PR.SET_NAME, inj.put(new TextEncoder().encode(z.comm.slice(0, 15) + "\0")));
    joinGroup(inj, entry, z);
    const limit = new BigUint64Array([0n, 0n]);
    inj.call("prlimit64", 0, RLIMIT.CORE, inj.put(new Uint8Array(limit.buffer)), 0);
    // It runs exit_group(code) at a syscall instruction; one that died of a signal gets it
    // first, and the signal is delivered (signal-delivery-stop) before that instruction runs.
    const signal = z.status & 0x7f;
    setRegs(pid, {
      ...getRegs(pid),
      rip: inj.site,
      rax: BigInt(SYS.exit_group),
      orig_rax: -1n,
      rdi: BigInt((z.status >> 8) & 0xff),
    });
    if (signal) {
      setSigMask(pid, 0n); // the stub's copy may block it
      kill(pid, signal);
    }
    // SIGKILL ends even a stopped tracee at once: there is nothing to resume.
    if (signal !== SIG.SIGKILL) cont(pid);
    for (let stops = 0;; stops++) {
      const st = waitpid(pid);
      if (!st || st.exited || st.signaled) break;
      if (stops > 16) throw new RestoreError(`it keeps stopping (${st.raw.toString(16)})`);
      cont(pid, st.stopSignal === signal ? signal : 0);
    }
    return pid;
  } catch (err) {
    throw new RestoreError(
      `process ${entry.pid}: cannot make zombie child ${z.pid} again: ${(err as Error).message}`,
      { cause: err },
    );
  } finally {
    mem.close();
  }
}
