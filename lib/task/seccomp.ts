/**
 * Seccomp and no_new_privs: a confined program must not come back unconfined. The dump reads
 * each thread's mode and no_new_privs from /proc and its filter chain with
 * PTRACE_SECCOMP_GET_FILTER (the freeze suspended the filters, so we have CAP_SYS_ADMIN); the
 * restore installs them again in each thread, after everything else that thread needs, while
 * PTRACE_O_SUSPEND_SECCOMP keeps them inert until the process is let go.
 */
import {
  Errno,
  errnoText,
  getSeccompFilter,
  getSeccompFilterFlags,
  PR,
  PTRACE_O,
  SECCOMP_MODE,
  SECCOMP_SET_MODE,
  setOptions,
  SyscallError,
} from "../../ffi/mod.ts";
import { DumpError, RestoreError } from "../errors.ts";
import type { Injector } from "../ptrace/inject.ts";
import { readStatus } from "../inspect/procfs.ts";
import type { ProcessEntry, SeccompFilterEntry, ThreadEntry } from "../image/schema.ts";

/** Where the BPF program goes in the scratch region: room for the kernel's 4096 instructions. */
const BPF_OFFSET = 16384;

/** A thread's `Seccomp:` mode and `NoNewPrivs:` from /proc (one read of its status). */
function statusOf(pid: number, tid: number): { mode: number; noNewPrivs: boolean } {
  let status = new Map<string, string>();
  try {
    status = readStatus(pid, tid);
  } catch { /* gone: as statusField, no fields */ }
  return {
    mode: Number(status.get("Seccomp") ?? 0),
    noNewPrivs: status.get("NoNewPrivs") === "1",
  };
}

/**
 * Adds each thread's seccomp state to its entry and returns the filters they refer to, each
 * stored once (threads synchronised with TSYNC share every filter). `threads` are stopped.
 */
export function dumpSeccomp(pid: number, threads: ThreadEntry[]): SeccompFilterEntry[] {
  const pool: SeccompFilterEntry[] = [];
  const byKey = new Map<string, number>();
  for (const t of threads) {
    const { mode, noNewPrivs } = statusOf(pid, t.tid);
    if (noNewPrivs) t.noNewPrivs = true;
    if (mode === SECCOMP_MODE.DISABLED) continue;
    const filters: number[] = [];
    for (let index = 0; mode === SECCOMP_MODE.FILTER; index++) {
      const bpf = getSeccompFilter(t.tid, index);
      if (!bpf) break;
      const flags = getSeccompFilterFlags(t.tid, index);
      const key = `${flags}:${Array.from(bpf, (b) => b.toString(16).padStart(2, "0")).join("")}`;
      let at = byKey.get(key);
      if (at === undefined) {
        at = pool.push({ bpf, flags }) - 1;
        byKey.set(key, at);
      }
      filters.unshift(at); // the kernel lists the newest first; we keep the install order
    }
    // A chain we could not read would come back as no filter at all: refuse instead.
    if (mode === SECCOMP_MODE.FILTER && filters.length === 0) {
      throw new DumpError(`thread ${t.tid} of ${pid} has seccomp filters that cannot be read`);
    }
    t.seccomp = { mode, filters };
  }
  return pool;
}

/** Whether the image holds a process that seccomp confines. */
export function needsSeccompSuspended(entries: ProcessEntry[]): boolean {
  return entries.some((p) =>
    p.threads.some((t) => (t.seccomp?.mode ?? SECCOMP_MODE.DISABLED) !== SECCOMP_MODE.DISABLED)
  );
}

/**
 * Makes every process the stub forks (and every thread they clone, which inherit its ptrace
 * options) run with seccomp suspended while we trace it: the filters we install may forbid the
 * syscalls we inject after them. Detaching ends the suspension.
 */
export function suspendSeccompFor(stubPid: number, options: number): void {
  try {
    setOptions(stubPid, options | PTRACE_O.SUSPEND_SECCOMP);
  } catch (err) {
    if (!(err instanceof SyscallError)) throw err;
    throw new RestoreError(
      `the image holds a process confined by seccomp, and installing its filters safely needs ` +
        `PTRACE_O_SUSPEND_SECCOMP, which was refused with ${err.code}: tardigrade needs ` +
        `CAP_SYS_ADMIN and must not run under seccomp itself`,
      { cause: err },
    );
  }
}

/**
 * Whether a thread's filters must go in before its credentials: without no_new_privs the kernel
 * asks for CAP_SYS_ADMIN, which the restored credentials may drop.
 */
export function seccompBeforeCreds(t: ThreadEntry): boolean {
  return t.seccomp?.mode === SECCOMP_MODE.FILTER && !t.noNewPrivs;
}

/**
 * Sets no_new_privs and installs the thread's filters (oldest first) or strict mode. Any failure
 * is a `RestoreError`: a process must never run on less confined than it was.
 */
export function restoreSeccomp(
  inj: Injector,
  t: ThreadEntry,
  filters: SeccompFilterEntry[],
): void {
  const fail = (what: string, err: unknown): never => {
    const why = err instanceof SyscallError ? `${err.code} (${errnoText(err.errno)})` : err;
    throw new RestoreError(`thread ${t.tid}: ${what} failed: ${why}`, { cause: err });
  };
  if (t.noNewPrivs) {
    try {
      inj.call("prctl", PR.SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    } catch (err) {
      fail("PR_SET_NO_NEW_PRIVS", err);
    }
  }
  const mode = t.seccomp?.mode ?? SECCOMP_MODE.DISABLED;
  if (mode === SECCOMP_MODE.STRICT) {
    try {
      inj.call("seccomp", SECCOMP_SET_MODE.STRICT, 0, 0);
    } catch (err) {
      fail("seccomp strict mode", err);
    }
  } else if (mode === SECCOMP_MODE.FILTER) {
    for (const [i, n] of (t.seccomp?.filters ?? []).entries()) {
      const f = filters[n];
      if (!f) throw new RestoreError(`thread ${t.tid}: seccomp filter ${n} is not in the image`);
      const prog = new DataView(new ArrayBuffer(16)); // struct sock_fprog { u16 len; ptr filter }
      prog.setUint16(0, f.bpf.length / 8, true);
      prog.setBigUint64(8, inj.put(f.bpf, BPF_OFFSET), true);
      try {
        inj.call("seccomp", SECCOMP_SET_MODE.FILTER, f.flags, inj.put(new Uint8Array(prog.buffer)));
      } catch (err) {
        const hint = err instanceof SyscallError && err.errno === Errno.EACCES
          ? " (installed without no_new_privs: it needs CAP_SYS_ADMIN)"
          : "";
        fail(`installing seccomp filter ${i + 1} of ${t.seccomp!.filters.length}${hint}`, err);
      }
    }
  }
}
