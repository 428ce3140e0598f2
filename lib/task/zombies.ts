/**
 * Zombie children: children that exited and that their parent has not waited for yet. Nothing
 * of them is left to dump but their pid, their exit status and their group, yet the parent's
 * next wait() expects them: a restore without them would answer ECHILD.
 *
 * Dump: the parent's children in state Z, with the exit status /proc/PID/stat gives (field 52,
 * in the form wait() reports it).
 * Restore: the restored parent forks a child with the zombie's pid (clone3 set_tid); the child
 * takes its name and leads its group again if it did, then exits with the same status: exit_group(code) run at a
 * syscall instruction, or the same signal (no core is written: RLIMIT_CORE 0, so the status
 * lacks the core flag). Once the tool, its tracer, has seen it exit, the zombie is its parent's
 * to wait for. The SIGCHLD that exit sends the parent is taken back (an injected
 * rt_sigtimedwait) unless SIGCHLD was pending at dump: the original got its SIGCHLD long ago.
 */
import {
  cont,
  getRegs,
  kill,
  PR,
  RLIMIT,
  setRegs,
  setSigMask,
  SIG,
  sigBit,
  SYS,
  waitpid,
} from "../../ffi/mod.ts";
import { RestoreError } from "../errors.ts";
import { Injector } from "../ptrace/inject.ts";
import { childrenOf, tryReadStat } from "../inspect/procfs.ts";
import { RemoteMemory } from "../inspect/memory.ts";
import type { ProcessEntry, ZombieEntry } from "../image/schema.ts";
import { wasPending } from "./signals.ts";
import { forkWithPid } from "../ptrace/stub.ts";

/** The children of `pid` that are zombies, in pid order. */
export function zombieChildren(pid: number): ZombieEntry[] {
  const out: ZombieEntry[] = [];
  for (const child of childrenOf(pid)) {
    const stat = tryReadStat(child); // null: reaped meanwhile
    if (stat?.state !== "Z") continue;
    out.push({
      pid: child,
      comm: stat.comm,
      status: stat.exitCode,
      pgid: stat.pgrp,
      sid: stat.session,
    });
  }
  return out.sort((a, b) => a.pid - b.pid);
}

/** Makes the zombie children of a process just made (`inj` runs in it) again. */
export function restoreZombies(inj: Injector, entry: ProcessEntry): void {
  const zombies = entry.zombies ?? [];
  for (const z of zombies) makeZombie(inj, z);
  if (zombies.length && !wasPending(entry, SIG.SIGCHLD)) {
    // SIGCHLD is not blocked in the stub: take back the one the exits sent (zero timeout).
    const set = inj.put(new Uint8Array(new BigUint64Array([sigBit(SIG.SIGCHLD)]).buffer));
    const zero = inj.put(new Uint8Array(16), 64);
    for (let i = 0; i < zombies.length; i++) {
      if (inj.raw(SYS.rt_sigtimedwait, set, 0, zero, 8) < 0n) break;
    }
  }
}

function makeZombie(parent: Injector, z: ZombieEntry): void {
  const pid = forkWithPid(parent, z.pid);
  const mem = new RemoteMemory(pid);
  try {
    const inj = new Injector(pid, pid, mem, parent.site);
    inj.call("prctl", PR.SET_NAME, inj.put(new TextEncoder().encode(z.comm.slice(0, 15) + "\0")));
    if (z.sid === z.pid) inj.call("setsid");
    else if (z.pgid === z.pid) inj.call("setpgid", 0, 0);
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
    cont(pid);
    for (let stops = 0;; stops++) {
      const st = waitpid(pid);
      if (!st || st.exited || st.signaled) break;
      if (stops > 16) throw new RestoreError(`it keeps stopping (${st.raw.toString(16)})`);
      cont(pid, st.stopSignal === signal ? signal : 0);
    }
  } catch (err) {
    throw new RestoreError(`cannot make zombie child ${z.pid} again: ${(err as Error).message}`);
  } finally {
    mem.close();
  }
}
