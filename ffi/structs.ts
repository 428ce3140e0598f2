/** Codecs for the kernel structs tardigrade exchanges with the kernel (x86_64 layouts). */

/** `struct user_regs_struct` field names in kernel order (27 × u64, 216 bytes). */
export const REG_NAMES = [
  "r15",
  "r14",
  "r13",
  "r12",
  "rbp",
  "rbx",
  "r11",
  "r10",
  "r9",
  "r8",
  "rax",
  "rcx",
  "rdx",
  "rsi",
  "rdi",
  "orig_rax",
  "rip",
  "cs",
  "eflags",
  "rsp",
  "ss",
  "fs_base",
  "gs_base",
  "ds",
  "es",
  "fs",
  "gs",
] as const; // deno-fmt-ignore

/** One register's name in `user_regs_struct`. */
export type RegName = typeof REG_NAMES[number];
/** General registers of one x86_64 thread, as `PTRACE_GETREGS` gives them. */
export type Regs = Record<RegName, bigint>;
/** Size of `struct user_regs_struct`. */
export const REGS_SIZE = REG_NAMES.length * 8;

/** Decodes `struct user_regs_struct`. */
export function decodeRegs(buf: Uint8Array): Regs {
  const v = new BigUint64Array(buf.buffer, buf.byteOffset, REG_NAMES.length);
  const regs = {} as Regs;
  REG_NAMES.forEach((name, i) => regs[name] = v[i]);
  return regs;
}

/** Encodes `struct user_regs_struct`; negative values are stored as two's complement. */
export function encodeRegs(regs: Regs): Uint8Array<ArrayBuffer> {
  const v = new BigUint64Array(REG_NAMES.length);
  REG_NAMES.forEach((name, i) => v[i] = BigInt.asUintN(64, regs[name]));
  return new Uint8Array(v.buffer);
}

/** An array of `struct iovec { void *base; size_t len; }`. */
export function encodeIovecs(parts: readonly { base: bigint; len: number }[]) {
  const v = new BigUint64Array(parts.length * 2);
  parts.forEach((p, i) => {
    v[2 * i] = p.base;
    v[2 * i + 1] = BigInt(p.len);
  });
  return new Uint8Array(v.buffer);
}

/** The fields of `siginfo_t` (128 bytes) tardigrade looks at, plus the raw bytes to replay it. */
export interface SigInfo {
  /** Signal number. */
  signo: number;
  /** si_errno. */
  errno: number;
  /** si_code: where the signal came from (SI_USER 0, SI_QUEUE -1, SI_TKILL -6 …). */
  code: number;
  /** The whole 128-byte `siginfo_t`, to hand back to the kernel unchanged. */
  raw: Uint8Array;
}
/** Size of `siginfo_t`. */
export const SIGINFO_SIZE = 128;

/** Decodes `siginfo_t`. */
export function decodeSigInfo(buf: Uint8Array): SigInfo {
  const dv = new DataView(buf.buffer, buf.byteOffset, SIGINFO_SIZE);
  return {
    signo: dv.getInt32(0, true),
    errno: dv.getInt32(4, true),
    code: dv.getInt32(8, true),
    raw: buf.slice(0, SIGINFO_SIZE),
  };
}

/** `PROCMAP_QUERY` ioctl request number. */
export const PROCMAP_QUERY = 0xc0686611n;
/** `struct procmap_query` size. */
export const PROCMAP_QUERY_SIZE = 104;
/** `query_flags`: the VMA covering the address, or the next one. */
export const PROCMAP_QUERY_COVERING_OR_NEXT_VMA = 0x10;
/** `vma_flags` bits. */
export const PROCMAP_VMA = { READ: 1, WRITE: 2, EXEC: 4, SHARED: 8 } as const;

/** What `PROCMAP_QUERY` answered for one VMA. */
export interface ProcmapAnswer {
  start: bigint;
  end: bigint;
  flags: number;
  pageSize: bigint;
  offset: bigint;
  inode: bigint;
  devMajor: number;
  devMinor: number;
  nameSize: number;
  buildIdSize: number;
}

/** Fills a `struct procmap_query` request in place. */
export function encodeProcmapQuery(
  buf: Uint8Array,
  addr: bigint,
  flags: number,
  name?: { addr: bigint; size: number },
  buildId?: { addr: bigint; size: number },
): void {
  const dv = new DataView(buf.buffer, buf.byteOffset, PROCMAP_QUERY_SIZE);
  buf.fill(0, 0, PROCMAP_QUERY_SIZE);
  dv.setBigUint64(0, BigInt(PROCMAP_QUERY_SIZE), true);
  dv.setBigUint64(8, BigInt(flags), true);
  dv.setBigUint64(16, addr, true);
  if (name) {
    dv.setUint32(80, name.size, true);
    dv.setBigUint64(88, name.addr, true);
  }
  if (buildId) {
    dv.setUint32(84, buildId.size, true);
    dv.setBigUint64(96, buildId.addr, true);
  }
}

/** Reads the answer out of a `struct procmap_query`. */
export function decodeProcmapQuery(buf: Uint8Array): ProcmapAnswer {
  const dv = new DataView(buf.buffer, buf.byteOffset, PROCMAP_QUERY_SIZE);
  return {
    start: dv.getBigUint64(24, true),
    end: dv.getBigUint64(32, true),
    flags: Number(dv.getBigUint64(40, true)),
    pageSize: dv.getBigUint64(48, true),
    offset: dv.getBigUint64(56, true),
    inode: dv.getBigUint64(64, true),
    devMajor: dv.getUint32(72, true),
    devMinor: dv.getUint32(76, true),
    nameSize: dv.getUint32(80, true),
    buildIdSize: dv.getUint32(84, true),
  };
}

/** `PAGEMAP_SCAN` ioctl request number. */
export const PAGEMAP_SCAN = 0xc0606610n;
/** `struct pm_scan_arg` size. */
export const PM_SCAN_ARG_SIZE = 96;
/** `struct page_region` size. */
export const PAGE_REGION_SIZE = 24;
/** Page categories of `PAGEMAP_SCAN`. */
export const PAGE_IS = {
  WPALLOWED: 1,
  WRITTEN: 2,
  FILE: 4,
  PRESENT: 8,
  SWAPPED: 0x10,
  PFNZERO: 0x20,
  HUGE: 0x40,
} as const;
/** `PAGEMAP_SCAN` flags. */
export const PM_SCAN = { WP_MATCHING: 1, CHECK_WPASYNC: 2 } as const;

/** The request of a `PAGEMAP_SCAN` ioctl. */
export interface PmScanArg {
  flags?: number;
  start: bigint;
  end: bigint;
  /** Address of an array of `struct page_region`. */
  vec: bigint;
  vecLen: number;
  maxPages?: number;
  categoryInvertedMask?: number;
  categoryMask?: number;
  categoryAnyofMask?: number;
  returnMask: number;
}

/** Fills `struct pm_scan_arg` in place. */
export function encodePmScanArg(buf: Uint8Array, a: PmScanArg): void {
  const dv = new DataView(buf.buffer, buf.byteOffset, PM_SCAN_ARG_SIZE);
  buf.fill(0, 0, PM_SCAN_ARG_SIZE);
  dv.setBigUint64(0, BigInt(PM_SCAN_ARG_SIZE), true);
  dv.setBigUint64(8, BigInt(a.flags ?? 0), true);
  dv.setBigUint64(16, a.start, true);
  dv.setBigUint64(24, a.end, true);
  // walk_end (32) is written by the kernel.
  dv.setBigUint64(40, a.vec, true);
  dv.setBigUint64(48, BigInt(a.vecLen), true);
  dv.setBigUint64(56, BigInt(a.maxPages ?? 0), true);
  dv.setBigUint64(64, BigInt(a.categoryInvertedMask ?? 0), true);
  dv.setBigUint64(72, BigInt(a.categoryMask ?? 0), true);
  dv.setBigUint64(80, BigInt(a.categoryAnyofMask ?? 0), true);
  dv.setBigUint64(88, BigInt(a.returnMask), true);
}

/** Where the kernel stopped walking (`walk_end` of `struct pm_scan_arg`). */
export function pmScanWalkEnd(buf: Uint8Array): bigint {
  return new DataView(buf.buffer, buf.byteOffset, PM_SCAN_ARG_SIZE).getBigUint64(32, true);
}

/** `struct clone_args` size (with set_tid and cgroup). */
export const CLONE_ARGS_SIZE = 88;

/** The fields of `struct clone_args`; pointers are addresses in the process that calls clone3. */
export interface CloneArgs {
  flags: bigint;
  pidfd?: bigint;
  childTid?: bigint;
  parentTid?: bigint;
  exitSignal?: number;
  stack?: bigint;
  stackSize?: bigint;
  tls?: bigint;
  setTid?: bigint;
  setTidSize?: number;
  cgroup?: bigint;
}

/** Encodes `struct clone_args`. */
export function encodeCloneArgs(a: CloneArgs): Uint8Array<ArrayBuffer> {
  const v = new BigUint64Array(CLONE_ARGS_SIZE / 8);
  v[0] = a.flags;
  v[1] = a.pidfd ?? 0n;
  v[2] = a.childTid ?? 0n;
  v[3] = a.parentTid ?? 0n;
  v[4] = BigInt(a.exitSignal ?? 0);
  v[5] = a.stack ?? 0n;
  v[6] = a.stackSize ?? 0n;
  v[7] = a.tls ?? 0n;
  v[8] = a.setTid ?? 0n;
  v[9] = BigInt(a.setTidSize ?? 0);
  v[10] = a.cgroup ?? 0n;
  return new Uint8Array(v.buffer);
}
