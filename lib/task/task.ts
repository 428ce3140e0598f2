/**
 * Process-wide state: signal dispositions, shared pending signals, interval timers, resource
 * limits, credentials, umask, cwd, root, personality, comm and the mm fields with auxv. What only
 * the process can tell is asked by injecting the syscall into it.
 */
import { Errno, errnoName, errnoText, peekSigInfo, SYS, SyscallError } from "../../ffi/mod.ts";
import { RestoreError } from "../errors.ts";
import type { Injector } from "../ptrace/inject.ts";
import type { Process } from "../inspect/process.ts";
import { zombieChildren } from "./zombies.ts";
import type { ProcessEntry, RlimitEntry, SigactionEntry } from "../image/schema.ts";

const SIGKILL = 9;
const SIGSTOP = 19;
/** Signals 1..64 whose disposition can be read and set. */
export const SETTABLE_SIGNALS = Array.from({ length: 64 }, (_, i) => i + 1).filter((s) =>
  s !== SIGKILL && s !== SIGSTOP
);
/** RLIMIT_CPU .. RLIMIT_RTTIME. */
export const RESOURCES = Array.from({ length: 16 }, (_, i) => i);

function u64s(bytes: Uint8Array): BigUint64Array {
  return new BigUint64Array(bytes.slice().buffer);
}

/** Every signal's disposition: rt_sigaction(sig, NULL, &old, 8) in the target. */
export function dumpSigactions(inj: Injector): SigactionEntry[] {
  const out: SigactionEntry[] = [];
  const at = inj.scratch();
  for (const signo of SETTABLE_SIGNALS) {
    inj.call("rt_sigaction", signo, 0, at, 8);
    const [handler, flags, restorer, mask] = u64s(inj.get(0, 32));
    if (handler === 0n && flags === 0n && mask === 0n) continue; // SIG_DFL, the default
    out.push({ signo, handler, flags, restorer, mask });
  }
  return out;
}

/** ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF that are armed. */
export function dumpItimers(inj: Injector): ProcessEntry["itimers"] {
  const out: ProcessEntry["itimers"] = [];
  for (const which of [0, 1, 2]) {
    inj.call("getitimer", which, inj.scratch());
    const [iSec, iUsec, vSec, vUsec] = u64s(inj.get(0, 32));
    const valueUs = vSec * 1_000_000n + vUsec;
    if (valueUs === 0n) continue;
    out.push({ which, intervalUs: iSec * 1_000_000n + iUsec, valueUs });
  }
  return out;
}

/** Resource limits as the process itself sees them: prlimit64(0, res, NULL, &old). */
export function dumpRlimits(inj: Injector): RlimitEntry[] {
  return RESOURCES.map((resource) => {
    inj.call("prlimit64", 0, resource, 0, inj.scratch());
    const [soft, hard] = u64s(inj.get(0, 16));
    return { resource, soft, hard };
  });
}

/** Everything process-wide a frozen process holds, but its memory, threads and files. */
export async function dumpTask(
  proc: Process,
  inj: Injector,
): Promise<
  Omit<ProcessEntry, "threads" | "mappings" | "special" | "objects" | "files" | "fds" | "extents">
> {
  const pid = proc.pid;
  const [stat, uids, gids, groups, caps, umask, personality, auxv, cmdline] = await Promise.all([
    proc.stat(),
    proc.uids(),
    proc.gids(),
    proc.groups(),
    proc.capabilities(),
    proc.umask(),
    proc.personality(),
    proc.auxv(),
    proc.cmdline(),
  ]);
  let exe: ProcessEntry["exe"] = null;
  try {
    const path = await proc.exe();
    if (!path.endsWith(" (deleted)")) {
      const st = await Deno.stat(path);
      exe = { path, size: st.size, mtimeMs: st.mtime?.getTime() ?? 0 };
    }
  } catch { /* a kernel thread or an unreadable exe: restore without an exe link */ }
  const brk = inj.call("brk", 0);
  // prctl(PR_GET_PDEATHSIG, &sig): the signal it gets when its parent dies.
  inj.call("prctl", 2, inj.scratch());
  const pdeathsig = new DataView(inj.get(0, 4).slice().buffer).getInt32(0, true);
  return {
    pid,
    ppid: stat.ppid,
    pdeathsig,
    sid: stat.session,
    pgid: stat.pgrp,
    zombies: zombieChildren(pid),
    comm: stat.comm,
    cmdline,
    exe,
    cwd: await proc.cwd(),
    root: await proc.root(),
    umask,
    personality,
    creds: {
      uids: [uids.real, uids.effective, uids.saved, uids.fs],
      gids: [gids.real, gids.effective, gids.saved, gids.fs],
      groups,
      capInh: caps.inheritable,
      capPrm: caps.permitted,
      capEff: caps.effective,
      capBnd: caps.bounding,
      capAmb: caps.ambient,
    },
    rlimits: dumpRlimits(inj),
    mm: {
      startCode: stat.startCode,
      endCode: stat.endCode,
      startData: stat.startData,
      endData: stat.endData,
      startBrk: stat.startBrk,
      brk,
      startStack: stat.startStack,
      argStart: stat.argStart,
      argEnd: stat.argEnd,
      envStart: stat.envStart,
      envEnd: stat.envEnd,
      auxv: auxv.flat(),
    },
    sigactions: dumpSigactions(inj),
    sharedPending: peekSigInfo(pid, true).map((s) => ({ signo: s.signo, siginfo: s.raw })),
    itimers: dumpItimers(inj),
  };
}

const SIG_DFL = 0n;
const PR_SET_MM = 35;
const PR_SET_MM_MAP = 14;
const PRCTL_MM_MAP_SIZE = 104;

/** Sets every signal's disposition: the dumped ones, the default for the rest. */
export function restoreSigactions(inj: Injector, list: SigactionEntry[]): void {
  const bySig = new Map(list.map((s) => [s.signo, s]));
  for (const signo of SETTABLE_SIGNALS) {
    const s = bySig.get(signo);
    const act = new BigUint64Array(
      s ? [s.handler, s.flags, s.restorer, s.mask] : [SIG_DFL, 0n, 0n, 0n],
    );
    inj.call("rt_sigaction", signo, inj.put(new Uint8Array(act.buffer), 0), 0, 8);
  }
}

/** Arms the dumped interval timers and disarms the others. */
export function restoreItimers(inj: Injector, list: ProcessEntry["itimers"]): void {
  for (const which of [0, 1, 2]) {
    const t = list.find((i) => i.which === which);
    const v = t
      ? [
        t.intervalUs / 1_000_000n,
        t.intervalUs % 1_000_000n,
        t.valueUs / 1_000_000n,
        t.valueUs % 1_000_000n,
      ]
      : [0n, 0n, 0n, 0n];
    inj.call("setitimer", which, inj.put(new Uint8Array(new BigUint64Array(v).buffer), 0), 0);
  }
}

/** Resource limits, where this machine allows (no process may raise a hard limit here). */
export function restoreRlimits(inj: Injector, list: RlimitEntry[]): string[] {
  const warnings: string[] = [];
  for (const r of list) {
    const res = inj.raw(
      SYS.prlimit64,
      0,
      r.resource,
      inj.put(new Uint8Array(new BigUint64Array([r.soft, r.hard]).buffer), 0),
      0,
    );
    if (res < 0n) {
      const e = Number(-res);
      const why = e === Errno.EPERM ? "no process may raise a hard limit here" : errnoText(e);
      warnings.push(`rlimit ${r.resource} (${r.soft}/${r.hard}): ${errnoName(e)}, ${why}`);
    }
  }
  return warnings;
}

/** The mm fields, auxv and exe link through PR_SET_MM_MAP. */
export function restoreMm(inj: Injector, entry: ProcessEntry): void {
  const mm = entry.mm;
  const auxv = new BigUint64Array(mm.auxv);
  const auxvAddr = inj.put(new Uint8Array(auxv.buffer), 4096);
  let exeFd = -1;
  // The kernel refuses (EBUSY) to replace an exe link whose old file is still mapped: when the
  // dumped program is the stub's own (`sleep`), the link is already right, so leave it.
  if (entry.exe && !sameFile(`/proc/${inj.pid}/exe`, entry.exe.path)) {
    exeFd = Number(
      inj.call(
        "openat",
        -100,
        inj.put(new TextEncoder().encode(entry.exe.path + "\0"), 8192),
        0,
        0,
      ),
    );
  }
  const map = new BigUint64Array(PRCTL_MM_MAP_SIZE / 8);
  map.set([
    mm.startCode,
    mm.endCode,
    mm.startData,
    mm.endData,
    mm.startBrk,
    mm.brk,
    mm.startStack,
    mm.argStart,
    mm.argEnd,
    mm.envStart,
    mm.envEnd,
    auxvAddr,
  ]);
  const tail = new DataView(map.buffer);
  tail.setUint32(96, auxv.byteLength, true);
  tail.setUint32(100, exeFd >>> 0, true);
  try {
    inj.call(
      "prctl",
      PR_SET_MM,
      PR_SET_MM_MAP,
      inj.put(new Uint8Array(map.buffer), 0),
      PRCTL_MM_MAP_SIZE,
      0,
    );
  } catch (err) {
    if (!(err instanceof SyscallError)) throw err;
    throw new RestoreError(
      `PR_SET_MM_MAP (mm fields, auxv, exe link ${entry.exe?.path ?? "unchanged"}) in ` +
        `${inj.pid} failed: ${err.code} (${errnoText(err.errno)})`,
      { cause: err },
    );
  } finally {
    if (exeFd >= 0) inj.call("close", exeFd);
  }
}

/** Whether two paths name the same file (device and inode); false if either is unreadable. */
function sameFile(a: string, b: string): boolean {
  try {
    const x = Deno.statSync(a);
    const y = Deno.statSync(b);
    return x.dev === y.dev && x.ino !== null && x.ino === y.ino;
  } catch {
    return false;
  }
}

/** cwd, root, umask, personality, parent-death signal. */
export function restoreFsAndPersonality(inj: Injector, entry: ProcessEntry): void {
  if (entry.pdeathsig) inj.call("prctl", 1, /* PR_SET_PDEATHSIG */ entry.pdeathsig);
  const path = (p: string) => inj.put(new TextEncoder().encode(p + "\0"), 0);
  if (entry.root !== "/") inj.call("chroot", path(entry.root));
  inj.call("chdir", path(entry.cwd));
  inj.call("umask", entry.umask);
  inj.call("personality", entry.personality);
}

/** A process that led its session or process group leads a new one (other ids cannot be
 * joined without the processes that own them). */
export function restoreSession(inj: Injector, entry: ProcessEntry): void {
  if (entry.sid === entry.pid) inj.call("setsid");
  else if (entry.pgid === entry.pid) inj.call("setpgid", 0, 0);
}

/** Credentials, last: once they drop, the rest could not be set. */
export function restoreCreds(inj: Injector, entry: ProcessEntry): void {
  const c = entry.creds;
  if ([...c.uids, ...c.gids].every((id) => id === 0) && c.groups.length === 0) return;
  const groups = new Uint32Array(c.groups);
  inj.call("setgroups", groups.length, inj.put(new Uint8Array(groups.buffer), 0));
  inj.call("setresgid", c.gids[0], c.gids[1], c.gids[2]);
  inj.call("setresuid", c.uids[0], c.uids[1], c.uids[2]);
}
