/**
 * The readers and parsers of /proc/PID files: every module that needs a process's stat, status,
 * threads, children or comm reads them here, with errors named for the process.
 */
import { Errno, PF, SyscallError } from "../../ffi/mod.ts";
import { AccessDenied, explain, NoSuchProcess, Unsupported } from "../errors.ts";

const decoder = new TextDecoder();

/** The path of a file under /proc/PID. */
export function procPath(pid: number, name: string): string {
  return `/proc/${pid}/${name}`;
}

/** Whether /proc/PID still exists (a zombie counts: it still has a /proc entry). */
export function procExists(pid: number): boolean {
  try {
    Deno.statSync(`/proc/${pid}`);
    return true;
  } catch {
    return false;
  }
}

/** The thread ids of process `pid`, in ascending order (empty once it is gone). */
export function threadIds(pid: number): number[] {
  try {
    return [...Deno.readDirSync(procPath(pid, "task"))].map((e) => Number(e.name)).sort((a, b) =>
      a - b
    );
  } catch {
    return [];
  }
}

/** The command name (comm) of process `pid`, or of its thread `tid`. */
export function readComm(pid: number, tid = pid): string {
  return readProcText(pid, `task/${tid}/comm`).replace(/\n$/, "");
}

/** /proc/PID/stat parsed, or null when the process is gone. */
export function tryReadStat(pid: number): ProcStat | null {
  try {
    return parseStat(Deno.readTextFileSync(procPath(pid, "stat")));
  } catch {
    return null;
  }
}

/** /proc/PID/status as key → value text (of thread `tid` when given). */
export function readStatus(pid: number, tid = pid): Map<string, string> {
  return parseKeyValues(readProcText(pid, tid === pid ? "status" : `task/${tid}/status`));
}

/** The children of every thread of `pid`, in pid order (empty once it is gone). */
export function childrenOf(pid: number): number[] {
  const out: number[] = [];
  try {
    for (const t of Deno.readDirSync(`/proc/${pid}/task`)) {
      try {
        const text = Deno.readTextFileSync(`/proc/${pid}/task/${t.name}/children`).trim();
        if (text) out.push(...text.split(/\s+/).map(Number));
      } catch { /* the thread ended */ }
    }
  } catch { /* gone */ }
  return out.sort((a, b) => a - b);
}

/** One field of /proc/PID/task/TID/status (`Seccomp`, `NSpid` …), or undefined when gone. */
export function statusField(pid: number, name: string, tid = pid): string | undefined {
  try {
    return readStatus(pid, tid).get(name);
  } catch {
    return undefined;
  }
}

/**
 * The pid `hostPid` has in the innermost pid namespace it lives in (the last field of NSpid): how
 * another process of the same namespace names it. Without a new namespace it is `hostPid`.
 */
export function innermostPid(hostPid: number): number {
  const nspid = namespaceIds(hostPid);
  return nspid.length ? nspid[nspid.length - 1] : hostPid;
}

/**
 * The ids of `field` (NSpid, NSsid, NSpgid) of host pid or tid `hostPid`: one per pid namespace
 * from the tool's (first) down to its own (last), 0 where a session or group leader is not in
 * that namespace; empty when it is gone.
 */
export function namespaceIds(
  hostPid: number,
  field: "NSpid" | "NSsid" | "NSpgid" = "NSpid",
): number[] {
  return statusField(hostPid, field)?.split(/\s+/).map(Number) ?? [];
}

/** One line of /proc/PID/mountinfo. */
export interface MountInfo {
  /** Mount id. */
  id: number;
  /** Device (`major:minor`) of its file system. */
  dev: string;
  /** The directory of the file system mounted there (`/` for its root). */
  root: string;
  /** Where it is mounted, as the process sees it. */
  mountPoint: string;
  /** Per-mount options (`rw,nosuid,relatime`). */
  options: string;
  /** Optional fields, its propagation (`shared:1 master:2`), "" when private. */
  propagation: string;
  /** File system type. */
  fsType: string;
  /** Source (a device, or the type's name). */
  source: string;
  /** Superblock options. */
  superOptions: string;
}

/** The mounts of the mount namespace process `pid` (or the tool, "self") lives in. */
export function readMountInfo(pid: number | "self"): MountInfo[] {
  return Deno.readTextFileSync(`/proc/${pid}/mountinfo`).split("\n").filter(Boolean).map((l) => {
    const f = l.split(" ");
    const dash = f.indexOf("-");
    return {
      id: Number(f[0]),
      dev: f[2],
      root: f[3],
      mountPoint: f[4],
      options: f[5],
      propagation: f.slice(6, dash).join(" "),
      fsType: f[dash + 1],
      source: f[dash + 2],
      superOptions: f[dash + 3],
    };
  });
}

/** The state letter of /proc/PID/stat (R, S, T, Z …), or "" when the process is gone. */
export function processState(pid: number): string {
  return tryReadStat(pid)?.state ?? "";
}

/**
 * The process exists but has no address space: a kernel thread or a zombie. Listings of memory
 * give nothing for it; reading its memory throws this.
 */
export class NoAddressSpace extends Unsupported {
  /** `what` names what was asked for (`maps`, `memory` …). */
  constructor(
    /** The process. */
    readonly pid: number,
    what: string,
    options?: ErrorOptions,
  ) {
    super(`process ${pid} ${whyNoAddressSpace(pid)}: it has no ${what}`, options);
  }
}

/** What a process without an address space is, for messages. */
function whyNoAddressSpace(pid: number): string {
  const stat = tryReadStat(pid);
  if (!stat) return "has no address space (kernel thread or zombie)";
  if ((stat.flags & PF.KTHREAD) !== 0) return `(${stat.comm}) is a kernel thread`;
  return `(${stat.comm}) has exited (a zombie its parent has not waited for)`;
}

/** Whether process `pid` is a kernel thread (false once it is gone). */
export function isKernelThread(pid: number): boolean {
  const stat = tryReadStat(pid);
  return stat !== null && (stat.flags & PF.KTHREAD) !== 0;
}

/** Whether process `pid` is a kernel thread or a zombie, so has no memory to look at. */
export function hasNoAddressSpace(pid: number): boolean {
  try {
    const stat = parseStat(Deno.readTextFileSync(procPath(pid, "stat")));
    return stat.state === "Z" || stat.state === "X" || (stat.flags & PF.KTHREAD) !== 0;
  } catch {
    return false;
  }
}

function isEsrch(err: unknown): boolean {
  if (err instanceof SyscallError) return err.errno === Errno.ESRCH;
  return err instanceof Error && err.message.includes("(os error 3)");
}

/**
 * Maps an error met while reading `what` of process `pid`: `AccessDenied` where the kernel
 * refused, `NoSuchProcess` once /proc/PID is gone, `NoAddressSpace` for a kernel thread or zombie
 * asked about memory; other errors pass through.
 */
export function procError(err: unknown, pid: number, what: string): unknown {
  const mapped = explain(err, pid, what);
  if (mapped instanceof AccessDenied) return mapped;
  if (!procExists(pid)) return new NoSuchProcess(pid, what, { cause: err });
  if ((mapped instanceof NoSuchProcess || isEsrch(err)) && hasNoAddressSpace(pid)) {
    return new NoAddressSpace(pid, what, { cause: err });
  }
  return mapped;
}

/** Runs `body`; a process without an address space gives `empty` instead of an error. */
export function orEmpty<T>(body: () => T, empty: T): T {
  try {
    return body();
  } catch (err) {
    if (err instanceof NoAddressSpace) return empty;
    throw err;
  }
}

/** Reads a /proc/PID file as text. */
export function readProcText(pid: number, name: string): string {
  try {
    return Deno.readTextFileSync(procPath(pid, name));
  } catch (err) {
    throw procError(err, pid, name);
  }
}

/** Reads a /proc/PID file as bytes. */
export function readProcBytes(pid: number, name: string): Uint8Array {
  try {
    return Deno.readFileSync(procPath(pid, name));
  } catch (err) {
    throw procError(err, pid, name);
  }
}

/** Reads a /proc/PID symlink (exe, cwd, root, fd/N, ns/X). */
export function readProcLink(pid: number, name: string): string {
  try {
    return Deno.readLinkSync(procPath(pid, name));
  } catch (err) {
    throw procError(err, pid, name);
  }
}

/** Splits a NUL-separated list (cmdline, environ); a trailing NUL does not make an empty entry. */
export function splitNul(bytes: Uint8Array): string[] {
  const text = decoder.decode(bytes);
  if (text === "") return [];
  const parts = text.split("\0");
  if (parts[parts.length - 1] === "") parts.pop();
  return parts;
}

/** Parses `Key:\tvalue` lines (status, fdinfo) into a map of trimmed values. */
export function parseKeyValues(text: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const line of text.split("\n")) {
    const colon = line.indexOf(":");
    if (colon <= 0) continue;
    out.set(line.slice(0, colon), line.slice(colon + 1).trim());
  }
  return out;
}

/** A hexadecimal mask such as `SigBlk: 0000000000010000` as a bigint. */
export function hexMask(value: string | undefined): bigint {
  return value ? BigInt(`0x${value.trim()}`) : 0n;
}

/** The inode number inside a `type:[1234]` link (ns, pipe, socket). */
export function bracketInode(link: string): bigint | null {
  const m = /\[(\d+)\]$/.exec(link);
  return m ? BigInt(m[1]) : null;
}

/** The fields of /proc/PID/stat after `pid (comm)`, split on spaces, and the comm itself. */
export function splitStat(text: string): { comm: string; fields: string[] } {
  const open = text.indexOf("(");
  const close = text.lastIndexOf(")");
  return {
    comm: text.slice(open + 1, close),
    fields: text.slice(close + 2).trim().split(" "),
  };
}

/**
 * Scheduler state letter of /proc/PID/stat: R running, S sleeping, D disk sleep, T stopped,
 * t tracing stop, Z zombie, X dead, I idle, P parked.
 */
export type ProcessState = "R" | "S" | "D" | "T" | "t" | "Z" | "X" | "I" | "P";

/**
 * The fields of /proc/PID/stat. Addresses (and counters that can pass 2⁵³) are bigints. The
 * kernel shows the address fields as 0 to readers without ptrace access.
 */
export interface ProcStat {
  /** Process id. */
  pid: number;
  /** Command name. */
  comm: string;
  /** Scheduler state. */
  state: ProcessState;
  /** Parent pid. */
  ppid: number;
  /** Process group. */
  pgrp: number;
  /** Session id. */
  session: number;
  /** Controlling terminal (device number). */
  ttyNr: number;
  /** Foreground process group of the terminal. */
  tpgid: number;
  /** PF_* flags of the task. */
  flags: number;
  /** Minor page faults. */
  minflt: bigint;
  /** Major page faults. */
  majflt: bigint;
  /** User and system time in clock ticks. */
  utime: bigint;
  /** System time in clock ticks. */
  stime: bigint;
  /** Kernel priority. */
  priority: number;
  /** Nice value. */
  nice: number;
  /** Thread count. */
  numThreads: number;
  /** Start time after boot in clock ticks: with the pid, identifies the process. */
  starttime: bigint;
  /** Virtual size in bytes. */
  vsize: bigint;
  /** Resident pages. */
  rss: bigint;
  /** RSS limit in bytes. */
  rsslim: bigint;
  /** Start of the program text. */
  startCode: bigint;
  /** End of the program text. */
  endCode: bigint;
  /** Bottom (start) of the main stack. */
  startStack: bigint;
  /** Signal sent to the parent at exit. */
  exitSignal: number;
  /** CPU last run on. */
  processor: number;
  /** Real-time priority. */
  rtPriority: number;
  /** Scheduling policy. */
  policy: number;
  /** Start of initialized and bss data. */
  startData: bigint;
  /** End of data. */
  endData: bigint;
  /** Start of the heap (brk). */
  startBrk: bigint;
  /** Start of the argument strings. */
  argStart: bigint;
  /** End of the argument strings. */
  argEnd: bigint;
  /** Start of the environment strings. */
  envStart: bigint;
  /** End of the environment strings. */
  envEnd: bigint;
  /** Exit status (as waitpid reports it). */
  exitCode: number;
}

/** Parses /proc/PID/stat text. */
export function parseStat(text: string): ProcStat {
  const { comm, fields } = splitStat(text);
  // fields[0] is field 3 (state) of proc(5); field n is fields[n - 3].
  const n = (i: number) => Number(fields[i - 3] ?? 0);
  const b = (i: number) => BigInt(fields[i - 3] ?? 0);
  return {
    pid: parseInt(text, 10),
    comm,
    state: fields[0] as ProcessState,
    ppid: n(4),
    pgrp: n(5),
    session: n(6),
    ttyNr: n(7),
    tpgid: n(8),
    flags: n(9),
    minflt: b(10),
    majflt: b(12),
    utime: b(14),
    stime: b(15),
    priority: n(18),
    nice: n(19),
    numThreads: n(20),
    starttime: b(22),
    vsize: b(23),
    rss: b(24),
    rsslim: b(25),
    startCode: b(26),
    endCode: b(27),
    startStack: b(28),
    exitSignal: n(38),
    processor: n(39),
    rtPriority: n(40),
    policy: n(41),
    startData: b(45),
    endData: b(46),
    startBrk: b(47),
    argStart: b(48),
    argEnd: b(49),
    envStart: b(50),
    envEnd: b(51),
    exitCode: n(52),
  };
}
