/**
 * The entries of a process image (`process.cbor`), as the dumper writes them and the restorer
 * reads them. docs/IMAGE.md describes them for people; this file is the truth for code.
 */
import type { PageExtent } from "./image/mod.ts";

/** Name of the metadata file holding the process entry. */
export const PROCESS_META = "process";

/** One range of page data: `length` bytes at `offset` inside extent number `extent`. */
export interface PageRun {
  /** Address the bytes belong at (for memory objects: byte offset in the object). */
  start: bigint;
  length: number;
  /** Index into `ProcessEntry.extents`. */
  extent: number;
  /** Byte offset inside that extent. */
  offset: number;
}

/** What a mapping is, as the restorer must recreate it. */
export type MappingSource =
  | { type: "anonymous" }
  /** A file reopened by path; size and mtime must not have changed. */
  | { type: "file"; path: string; size: number; mtimeMs: number; inode: bigint; dev: string }
  /** Shared anonymous memory (`/dev/zero (deleted)`, SysV shm), one object per inode. */
  | { type: "shmem"; object: number }
  /** A memfd or a deleted file whose contents are stored in the image. */
  | { type: "stored-file"; object: number };

/** One virtual memory area. */
export interface MappingEntry {
  start: bigint;
  end: bigint;
  /** PROT_READ 1 | PROT_WRITE 2 | PROT_EXEC 4. */
  prot: number;
  shared: boolean;
  /** File offset (or offset in the shared object). */
  offset: bigint;
  /** heap, stack, anonymous, file … as the inspection SDK names it. */
  kind: string;
  /** The name /proc/PID/maps shows, for display. */
  name: string | null;
  source: MappingSource;
  /** MAP_GROWSDOWN: the main stack. */
  growsDown: boolean;
  /** Page data of private pages (anonymous or copied-on-write). */
  pages: PageRun[];
}

/** Contents of a memory object that cannot be reopened: shared anonymous memory, memfd, a
 * deleted file. Referred to by number from mappings and descriptors. */
export interface MemoryObjectEntry {
  id: number;
  kind: "shmem" | "memfd" | "deleted-file";
  /** memfd name, or the deleted file's former path. */
  name: string;
  size: number;
  /** st_mode permission bits. */
  mode: number;
  /** memfd seals (F_GET_SEALS), 0 otherwise. */
  seals?: number;
  /** Contents, at byte offsets within the object. */
  pages: PageRun[];
}

/** The x86 special mappings; restored by moving this kernel's copies to the same addresses. */
export interface SpecialMappings {
  vdso?: { start: bigint; end: bigint; checksum: number };
  vvar?: { start: bigint; end: bigint };
  vvarVclock?: { start: bigint; end: bigint };
}

/** A signal waiting to be delivered, as `PTRACE_PEEKSIGINFO` gave it. */
export interface PendingSignal {
  signo: number;
  /** The 128-byte siginfo_t. */
  siginfo: Uint8Array;
}

/** One thread. */
export interface ThreadEntry {
  tid: number;
  name: string;
  /** user_regs_struct, field by field. */
  regs: Record<string, bigint>;
  /** The NT_X86_XSTATE register set (FPU, SSE, AVX …). */
  xstate: Uint8Array;
  sigmask: bigint;
  pending: PendingSignal[];
  sigaltstack: { sp: bigint; flags: number; size: bigint };
  clearChildTid: bigint;
  robustList: { head: bigint; len: bigint };
  rseq: { abiPointer: bigint; length: number; flags: number; signature: number };
  /** For a thread stopped in clock_nanosleep: the time it still had to sleep (ns), if known. */
  sleepRemainingNs?: bigint;
}

/** One signal's disposition (`struct kernel_sigaction`). */
export interface SigactionEntry {
  signo: number;
  handler: bigint;
  flags: bigint;
  restorer: bigint;
  mask: bigint;
}

/** An interval timer (`struct itimerval`) in microseconds. */
export interface ItimerEntry {
  which: number;
  intervalUs: bigint;
  valueUs: bigint;
}

/** The mm fields `PR_SET_MM_MAP` takes. */
export interface MmEntry {
  startCode: bigint;
  endCode: bigint;
  startData: bigint;
  endData: bigint;
  startBrk: bigint;
  brk: bigint;
  startStack: bigint;
  argStart: bigint;
  argEnd: bigint;
  envStart: bigint;
  envEnd: bigint;
  /** /proc/PID/auxv: (type, value) pairs, flattened. */
  auxv: bigint[];
}

/** An open file description, stored once and referred to by every fd that shares it. */
export interface FileEntry {
  /** `fileId` of the inspection SDK. */
  id: number;
  /** Handler kind: "regular", "pipe", "eventfd" … (see lib/files/). */
  kind: string;
  /** open(2) flags. */
  flags: number;
  /** The kind's own state. */
  [key: string]: unknown;
}

/** One descriptor number pointing at an open file description. */
export interface FdEntry {
  fd: number;
  file: number;
  closeOnExec: boolean;
}

/** A resource limit; `RLIM_INFINITY` is 2^64-1. */
export interface RlimitEntry {
  resource: number;
  soft: bigint;
  hard: bigint;
}

/** Everything needed to bring one process back. */
export interface ProcessEntry {
  pid: number;
  ppid: number;
  /** Session and process group ids: a session or group leader leads them again. */
  sid: number;
  pgid: number;
  comm: string;
  cmdline: string[];
  exe: { path: string; size: number; mtimeMs: number } | null;
  cwd: string;
  root: string;
  umask: number;
  personality: number;
  creds: {
    uids: number[];
    gids: number[];
    groups: number[];
    capInh: bigint;
    capPrm: bigint;
    capEff: bigint;
    capBnd: bigint;
    capAmb: bigint;
  };
  rlimits: RlimitEntry[];
  mm: MmEntry;
  sigactions: SigactionEntry[];
  sharedPending: PendingSignal[];
  itimers: ItimerEntry[];
  threads: ThreadEntry[];
  mappings: MappingEntry[];
  special: SpecialMappings;
  objects: MemoryObjectEntry[];
  files: FileEntry[];
  fds: FdEntry[];
  /** Where page data lives: each extent is one checksummed run of a page file. */
  extents: PageExtent[];
}
