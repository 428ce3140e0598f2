/** The memory mappings (VMAs) of a process: PROCMAP_QUERY ioctl walk or /proc/PID/maps text. */
import {
  addressOf,
  close,
  Errno,
  ioctl,
  O,
  open,
  PROCMAP_QUERY,
  PROCMAP_QUERY_COVERING_OR_NEXT_VMA,
  PROCMAP_QUERY_SIZE,
  PROCMAP_VMA,
  SyscallError,
} from "../../ffi/mod.ts";
import { Unsupported } from "../errors.ts";
import { procError, procPath } from "./procfs.ts";

/** What a mapping holds, derived from its name, inode and sharing. */
export type MappingKind =
  | "file"
  | "anonymous"
  | "shared-anonymous"
  | "heap"
  | "stack"
  | "vdso"
  | "vvar"
  | "vvar_vclock"
  | "vsyscall"
  | "deleted-file"
  | "memfd"
  | "aio";

/** Page protection of a mapping. */
export interface Prot {
  /** Readable. */
  read: boolean;
  /** Writable. */
  write: boolean;
  /** Executable. */
  exec: boolean;
}

/** Options of `mappings()`. */
export interface MappingOptions {
  /** Also read the GNU build id of file mappings (ELF files only; forces the ioctl path). */
  buildId?: boolean;
  /**
   * How to list: `"ioctl"` walks with PROCMAP_QUERY (falling back to the text where the kernel
   * lacks it), `"text"` parses /proc/PID/maps. Both give the same listing. Default: `"text"`,
   * which measures faster (bench/inspect.ts); `buildId` always uses the ioctl.
   */
  via?: "ioctl" | "text";
}

const VSYSCALL_START = 0xffffffffff600000n;
const VSYSCALL_END = 0xffffffffff601000n;
const TWO32 = 4294967296;

/**
 * One VMA of a process, as /proc/PID/maps shows it. Addresses and offsets are bigints; `size` is
 * a number of bytes. Derived fields (`prot`, `perms`, `kind`, `device`) are computed on access.
 */
export class Mapping {
  /** Made by the listings (`mappings()`, `listMappings`, `findMapping`). */
  constructor(
    /** The process the mapping belongs to. */
    readonly pid: number,
    /** First address. */
    readonly start: bigint,
    /** Address just past the end. */
    readonly end: bigint,
    /** PROCMAP_VMA bits: READ 1, WRITE 2, EXEC 4, SHARED 8. */
    readonly flags: number,
    /** Offset in the file (page offset for anonymous memory, as the kernel reports it). */
    readonly offset: bigint,
    /** Device major number of the file (0 for anonymous memory). */
    readonly major: number,
    /** Device minor number of the file. */
    readonly minor: number,
    /** Inode of the file (0 for anonymous memory). */
    readonly inode: bigint,
    /** The name /proc/PID/maps shows (a path, `[heap]`, `/dev/zero (deleted)` …), or null. */
    readonly path: string | null,
    /** The GNU build id as hex, when asked for and the file has one. */
    readonly buildId?: string,
  ) {}

  /** Length in bytes. */
  get size(): number {
    return Number(this.end - this.start);
  }

  /** Read, write and execute permission. */
  get prot(): Prot {
    const f = this.flags;
    return {
      read: (f & PROCMAP_VMA.READ) !== 0,
      write: (f & PROCMAP_VMA.WRITE) !== 0,
      exec: (f & PROCMAP_VMA.EXEC) !== 0,
    };
  }

  /** Whether writes are shared with other mappings of the same object (`s` in perms). */
  get shared(): boolean {
    return (this.flags & PROCMAP_VMA.SHARED) !== 0;
  }

  /** The permission string of /proc/PID/maps, such as `r-xp`. */
  get perms(): string {
    const f = this.flags;
    return (f & PROCMAP_VMA.READ ? "r" : "-") + (f & PROCMAP_VMA.WRITE ? "w" : "-") +
      (f & PROCMAP_VMA.EXEC ? "x" : "-") + (f & PROCMAP_VMA.SHARED ? "s" : "p");
  }

  /** The device as /proc/PID/maps writes it, `fe:00` (hex major:minor). */
  get device(): string {
    return `${this.major.toString(16).padStart(2, "0")}:${
      this.minor.toString(16).padStart(2, "0")
    }`;
  }

  /** What the mapping holds. */
  get kind(): MappingKind {
    return mappingKind(this.path, this.inode, this.shared);
  }

  /** The `/proc/PID/map_files/START-END` entry that names the exact file behind the mapping. */
  get mapFile(): string {
    return procPath(this.pid, `map_files/${this.start.toString(16)}-${this.end.toString(16)}`);
  }

  /**
   * Opens the exact file behind the mapping (also a deleted file, a memfd or shared anonymous
   * memory) through /proc/PID/map_files and returns a raw descriptor from ffi `open`, ready for
   * `pread` or `ioctl`. The caller closes it with ffi `close`. Private anonymous memory, heap,
   * stack and the special mappings have no file: `Unsupported`.
   */
  open(flags: number = O.RDONLY): number {
    if (this.inode === 0n && this.kind !== "shared-anonymous") {
      throw new Unsupported(
        `mapping ${this.start.toString(16)}-${this.end.toString(16)} (${this.kind}) of process ` +
          `${this.pid} has no file to open`,
      );
    }
    try {
      return open(this.mapFile, flags);
    } catch (err) {
      throw procError(err, this.pid, this.mapFile);
    }
  }
}

/** Classifies a mapping by the name the kernel gives it. */
export function mappingKind(path: string | null, inode: bigint, shared: boolean): MappingKind {
  if (path === null || path === "") return shared ? "shared-anonymous" : "anonymous";
  if (path.charCodeAt(0) === 91 /* [ */) {
    switch (path) {
      case "[heap]":
        return "heap";
      case "[stack]":
        return "stack";
      case "[vdso]":
        return "vdso";
      case "[vvar]":
        return "vvar";
      case "[vvar_vclock]":
        return "vvar_vclock";
      case "[vsyscall]":
        return "vsyscall";
    }
    if (path.startsWith("[stack:")) return "stack";
    if (path.startsWith("[anon_shmem:")) return "shared-anonymous";
    return shared ? "shared-anonymous" : "anonymous"; // [anon:NAME] and others
  }
  if (path.endsWith(" (deleted)")) {
    if (path.startsWith("/memfd:")) return "memfd";
    // The memory of MAP_HUGETLB without a file (hugetlbfs's own), and an AIO context's ring.
    if (path === "/anon_hugepage (deleted)") return shared ? "shared-anonymous" : "anonymous";
    if (path.startsWith("/[aio]")) return "aio";
    if (path === "/dev/zero (deleted)" || path.startsWith("/SYSV")) return "shared-anonymous";
    return "deleted-file";
  }
  if (path.startsWith("/SYSV") && inode !== 0n && shared) return "shared-anonymous";
  return inode === 0n && !path.startsWith("/") ? "anonymous" : "file";
}

// Whether PROCMAP_QUERY is known to be missing (ENOTTY/EINVAL once): then use the text.
let ioctlMissing = false;
// Whether this kernel shows [vsyscall] (the ioctl never does), learned from /proc/self/maps once.
let kernelHasVsyscall: boolean | undefined;

function hasVsyscall(): boolean {
  if (kernelHasVsyscall === undefined) {
    kernelHasVsyscall = Deno.readTextFileSync("/proc/self/maps").includes("[vsyscall]");
  }
  return kernelHasVsyscall;
}

/**
 * Lists the mappings of process `pid` in address order. Sync under the hood (each step is one
 * ioctl); `listMappings` is the array form, `mappings()` of `Process` the async iterable.
 */
export function listMappings(pid: number, opts: MappingOptions = {}): Mapping[] {
  // The text is the faster walk on this machine (bench/inspect.ts); the ioctl is needed for
  // build ids.
  const via = opts.buildId ? "ioctl" : (opts.via ?? "text");
  if (via === "text") return parseMapsText(pid, readMapsText(pid));
  if (!ioctlMissing) {
    const listed = queryMappings(pid, opts.buildId ?? false);
    if (listed) return listed;
    ioctlMissing = true;
  }
  if (opts.buildId) {
    throw new Unsupported(`build ids need the PROCMAP_QUERY ioctl, which this kernel lacks`);
  }
  return parseMapsText(pid, readMapsText(pid));
}

/** auxv type of the vdso's address (AT_SYSINFO_EHDR). */
const AT_SYSINFO_EHDR = 33n;

/**
 * The special mappings of process `pid` by kind (`vdso`, `vvar`, `vvar_vclock`, `vsyscall`):
 * where a restore moves them, and where the injector finds its `syscall` instruction.
 */
export function specialMappings(pid: number): Map<MappingKind, Mapping> {
  return specialOf(listMappings(pid));
}

/** The special mappings among `list` (a listing of one process), by kind. */
export function specialOf(list: Iterable<Mapping>): Map<MappingKind, Mapping> {
  const out = new Map<MappingKind, Mapping>();
  for (const m of list) {
    if (
      m.kind === "vdso" || m.kind === "vvar" || m.kind === "vvar_vclock" || m.kind === "vsyscall"
    ) {
      out.set(m.kind, m);
    }
  }
  return out;
}

/**
 * The [vdso] of process `pid`, or null when it has none (unmapped): found from the address auxv
 * gives it (one point lookup), or by listing when it is not there any more.
 */
export function findVdso(pid: number): Mapping | null {
  let base: bigint | undefined;
  try {
    const words = new BigUint64Array(Deno.readFileSync(procPath(pid, "auxv")).slice().buffer);
    for (let i = 0; i + 1 < words.length && words[i] !== 0n; i += 2) {
      if (words[i] === AT_SYSINFO_EHDR) base = words[i + 1];
    }
  } catch (err) {
    throw procError(err, pid, "auxv");
  }
  const at = base === undefined ? null : findMapping(pid, base);
  if (at?.kind === "vdso") return at;
  return specialMappings(pid).get("vdso") ?? null;
}

/** The mapping that covers `addr`, or null: one PROCMAP_QUERY, or a scan of the text. */
export function findMapping(pid: number, addr: bigint, opts: { buildId?: boolean } = {}) {
  if (!ioctlMissing) {
    const found = queryMappings(pid, opts.buildId ?? false, addr);
    if (found) return found[0] ?? null;
    ioctlMissing = true;
  }
  for (const m of listMappings(pid, opts)) if (m.start <= addr && addr < m.end) return m;
  return null;
}

// One request buffer and one name buffer, reused by every walk (walks are synchronous).
const request = new Uint8Array(PROCMAP_QUERY_SIZE);
const req32 = new Uint32Array(request.buffer);
const NAME_MAX = 4096 + 64;
const nameBuf = new Uint8Array(NAME_MAX);
const buildIdBuf = new Uint8Array(256); // off the V8 heap (> 64 bytes), so its address holds
const utf8 = new TextDecoder();

function addressBits(buf: Uint8Array): [number, number] {
  const v = addressOf(buf);
  return [Number(v & 0xffffffffn), Number(v >> 32n)];
}

/**
 * The PROCMAP_QUERY walk, or the one VMA covering `at` when given; null when the ioctl is missing
 * on this kernel.
 */
function queryMappings(pid: number, withBuildId: boolean, at?: bigint): Mapping[] | null {
  const path = procPath(pid, "maps");
  let fd: number;
  try {
    fd = open(path, O.RDONLY);
  } catch (err) {
    throw procError(err, pid, "maps");
  }
  const out: Mapping[] = [];
  try {
    const [nameLo, nameHi] = addressBits(nameBuf);
    const [bidLo, bidHi] = addressBits(buildIdBuf);
    request.fill(0);
    req32[0] = PROCMAP_QUERY_SIZE;
    req32[2] = at === undefined ? PROCMAP_QUERY_COVERING_OR_NEXT_VMA : 0;
    if (at !== undefined) {
      req32[4] = Number(at & 0xffffffffn);
      req32[5] = Number(at >> 32n);
    }
    req32[22] = nameLo;
    req32[23] = nameHi;
    if (withBuildId) {
      req32[24] = bidLo;
      req32[25] = bidHi;
    }
    let lastName: Uint8Array | null = null;
    let lastPath = "";
    for (;;) {
      req32[20] = NAME_MAX;
      req32[21] = withBuildId ? buildIdBuf.length : 0;
      try {
        ioctl(fd, PROCMAP_QUERY, request, "ioctl(PROCMAP_QUERY)");
      } catch (err) {
        const e = err instanceof SyscallError ? err.errno : 0;
        if (e === Errno.ENOENT) break; // No VMA at or after the address: the walk is done.
        const missing = e === Errno.ENOTTY || (e === Errno.EINVAL && at === undefined);
        if (missing && out.length === 0) return null;
        throw procError(err, pid, "maps");
      }
      const startLo = req32[6], startHi = req32[7], endLo = req32[8], endHi = req32[9];
      const nameSize = req32[20];
      let name: string | null = null;
      if (nameSize > 1) {
        const n = nameSize - 1; // without the NUL
        if (lastName !== null && lastName.length === n && sameBytes(lastName, nameBuf, n)) {
          name = lastPath;
        } else {
          lastName = nameBuf.slice(0, n);
          lastPath = utf8.decode(lastName);
          name = lastPath;
        }
      }
      let buildId: string | undefined;
      if (withBuildId && req32[21] > 0) buildId = toHex(buildIdBuf.subarray(0, req32[21]));
      out.push(
        new Mapping(
          pid,
          BigInt(startHi * TWO32 + startLo),
          BigInt(endHi * TWO32 + endLo),
          req32[10],
          u64(req32[14], req32[15]),
          req32[18],
          req32[19],
          u64(req32[16], req32[17]),
          name,
          buildId,
        ),
      );
      if (at !== undefined) return out;
      req32[4] = endLo; // the next query starts where this VMA ends
      req32[5] = endHi;
    }
  } finally {
    close(fd);
  }
  // The gate VMA is not a real VMA: the ioctl skips it. 64-bit processes have it (their stack
  // lies above 4 GiB; a 32-bit one's does not), so add it where the kernel shows it.
  if (at !== undefined) return at >= VSYSCALL_START && at < VSYSCALL_END ? gate(pid) : out;
  const last = out[out.length - 1];
  if (last && last.end > 0x100000000n && hasVsyscall()) {
    out.push(...gate(pid));
  }
  return out;
}

/** The [vsyscall] gate mapping as /proc/PID/maps shows it, where this kernel has one. */
function gate(pid: number): Mapping[] {
  if (!hasVsyscall()) return [];
  return [
    new Mapping(pid, VSYSCALL_START, VSYSCALL_END, PROCMAP_VMA.EXEC, 0n, 0, 0, 0n, "[vsyscall]"),
  ];
}

function u64(lo: number, hi: number): bigint {
  return hi < 0x200000 ? BigInt(hi * TWO32 + lo) : (BigInt(hi) << 32n) | BigInt(lo);
}

function sameBytes(a: Uint8Array, b: Uint8Array, n: number): boolean {
  for (let i = n - 1; i >= 0; i--) if (a[i] !== b[i]) return false;
  return true;
}

function toHex(bytes: Uint8Array): string {
  let s = "";
  for (const b of bytes) s += b.toString(16).padStart(2, "0");
  return s;
}

/** Reads /proc/PID/maps. */
export function readMapsText(pid: number): string {
  try {
    return Deno.readTextFileSync(procPath(pid, "maps"));
  } catch (err) {
    throw procError(err, pid, "maps");
  }
}

function hex(s: string): bigint {
  return s.length <= 13 ? BigInt(parseInt(s, 16)) : BigInt(`0x${s}`);
}

function decimal(s: string): bigint {
  return s === "0" ? 0n : s.length <= 15 ? BigInt(parseInt(s, 10)) : BigInt(s);
}

/**
 * Parses /proc/PID/maps text: `start-end perms offset maj:min inode   path`. The kernel writes
 * a newline inside a name as `\012`; that escape is kept as it is.
 */
export function parseMapsText(pid: number, text: string): Mapping[] {
  const out: Mapping[] = [];
  let pos = 0;
  const len = text.length;
  while (pos < len) {
    let eol = text.indexOf("\n", pos);
    if (eol < 0) eol = len;
    const dash = text.indexOf("-", pos);
    const sp1 = text.indexOf(" ", dash);
    const sp2 = sp1 + 5;
    const sp3 = text.indexOf(" ", sp2 + 1);
    const colon = text.indexOf(":", sp3);
    const sp4 = text.indexOf(" ", colon);
    let sp5 = text.indexOf(" ", sp4 + 1);
    if (sp5 < 0 || sp5 > eol) sp5 = eol;
    let p = sp5;
    while (p < eol && text.charCodeAt(p) === 32) p++;
    const flags = (text.charCodeAt(sp1 + 1) === 114 ? PROCMAP_VMA.READ : 0) |
      (text.charCodeAt(sp1 + 2) === 119 ? PROCMAP_VMA.WRITE : 0) |
      (text.charCodeAt(sp1 + 3) === 120 ? PROCMAP_VMA.EXEC : 0) |
      (text.charCodeAt(sp1 + 4) === 115 ? PROCMAP_VMA.SHARED : 0);
    out.push(
      new Mapping(
        pid,
        hex(text.slice(pos, dash)),
        hex(text.slice(dash + 1, sp1)),
        flags,
        hex(text.slice(sp2 + 1, sp3)),
        parseInt(text.slice(sp3 + 1, colon), 16),
        parseInt(text.slice(colon + 1, sp4), 16),
        decimal(text.slice(sp4 + 1, sp5)),
        p < eol ? text.slice(p, eol) : null,
      ),
    );
    pos = eol + 1;
  }
  return out;
}
