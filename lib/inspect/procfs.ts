/** Small readers and parsers of /proc/PID files, with errors named for the process. */
import { Errno, SyscallError } from "../../ffi/mod.ts";
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

/** One field of /proc/PID/task/TID/status (`Seccomp`, `NSpid` …), or undefined. */
export function statusField(pid: number, name: string, tid = pid): string | undefined {
  try {
    const text = Deno.readTextFileSync(`/proc/${pid}/task/${tid}/status`);
    return text.match(new RegExp(`^${name}:\\s*(.*)$`, "m"))?.[1].trim();
  } catch {
    return undefined;
  }
}

/**
 * The pid `hostPid` has in the innermost pid namespace it lives in (the last field of NSpid): how
 * another process of the same namespace names it. Without a new namespace it is `hostPid`.
 */
export function innermostPid(hostPid: number): number {
  const nspid = statusField(hostPid, "NSpid")?.split(/\s+/);
  return nspid?.length ? Number(nspid[nspid.length - 1]) : hostPid;
}

/** The state letter of /proc/PID/stat (R, S, T, Z …), or "" when the process is gone. */
export function processState(pid: number): string {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    return stat[stat.lastIndexOf(")") + 2];
  } catch {
    return "";
  }
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
    super(`process ${pid} has no address space (kernel thread or zombie): no ${what}`, options);
  }
}

const PF_KTHREAD = 0x00200000;

/** Whether process `pid` is a kernel thread or a zombie, so has no memory to look at. */
export function hasNoAddressSpace(pid: number): boolean {
  try {
    const { fields } = splitStat(Deno.readTextFileSync(procPath(pid, "stat")));
    return fields[0] === "Z" || fields[0] === "X" || (Number(fields[6]) & PF_KTHREAD) !== 0;
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
