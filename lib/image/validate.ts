/**
 * Checks a decoded process entry (`process.cbor`, `process-PID.cbor`) before anyone uses it: every
 * field schema.ts describes has its type, integers that count, size, index or number something are
 * whole and not negative, and references inside the entry (a page run's extent, a descriptor's
 * file, a mapping's memory object, a thread's seccomp filters) point at something that is there.
 * A checksum only says the bytes are those written; this says they are a process entry, so a
 * damaged or forged image is refused with an `ImageError` naming the file and the field instead of
 * failing somewhere in the restore (or worse, restoring something else).
 *
 * Every map schema.ts describes is closed: a key it does not name is refused, as a renamed key is
 * one the restore would silently go without (a fuzzed `special.vvarVclock` left the vvar clock
 * page unmapped). A later version that adds a field adds it here, with its format version. The
 * kind-specific fields of open files are left to their handlers in lib/files, which declare them
 * for `validateFields` (the restore's preflight checks them before anything is made). The kinds
 * of memory objects and of mapping sources are closed lists too, as the restore dispatches on them
 * (an unknown object kind would be made as a deleted file).
 */
import { REG_NAMES } from "../../ffi/mod.ts";
import { ImageError } from "../errors.ts";
import { isPlainFileName } from "./manifest.ts";

/** Whether the metadata file `name` (with `.cbor`) holds a process entry. */
export function isProcessEntryFile(name: string): boolean {
  return /^process(-\d+)?\.cbor$/.test(name);
}

class Malformed extends Error {}

type Obj = Record<string, unknown>;

const U64_END = 1n << 64n;

function show(v: unknown): string {
  if (v instanceof Uint8Array) return `a byte string`;
  if (Array.isArray(v)) return `a list`;
  if (v === null) return "null";
  if (v === undefined) return "missing";
  if (typeof v === "object") return "a map";
  if (typeof v === "string") return `text ${JSON.stringify(v.slice(0, 40))}`;
  return `${typeof v} ${String(v)}`;
}

function bad(at: string, v: unknown, want: string): never {
  throw new Malformed(`${at} is ${show(v)}, not ${want}`);
}

/** A map whose keys are all in `known` (the fields schema.ts gives it). */
function obj(v: unknown, at: string, known: readonly string[]): Obj {
  if (typeof v !== "object" || v === null || Array.isArray(v) || v instanceof Uint8Array) {
    bad(at, v, "a map");
  }
  for (const key of Object.keys(v)) {
    if (!known.includes(key)) {
      throw new Malformed(
        `${at ? `${at}.` : ""}${JSON.stringify(key)} is not a field of ${at || "a process entry"}`,
      );
    }
  }
  return v as Obj;
}

/** A map of unknown keys (an open file's, whose handler checks the kind-specific ones). */
function openObj(v: unknown, at: string): Obj {
  if (typeof v !== "object" || v === null || Array.isArray(v) || v instanceof Uint8Array) {
    bad(at, v, "a map");
  }
  return v as Obj;
}

function list(v: unknown, at: string): unknown[] {
  if (!Array.isArray(v)) bad(at, v, "a list");
  return v;
}

/** A whole number in [min, max]. */
function int(v: unknown, at: string, min = 0, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < min || v > max) {
    bad(at, v, `a whole number in [${min}, ${max === Number.MAX_SAFE_INTEGER ? "2^53" : max}]`);
  }
  return v;
}

/** An unsigned 64-bit value (addresses, registers, masks). */
function u64(v: unknown, at: string): bigint {
  if (typeof v !== "bigint" || v < 0n || v >= U64_END) bad(at, v, "a 64-bit unsigned integer");
  return v;
}

function finite(v: unknown, at: string): number {
  if (typeof v !== "number" || !Number.isFinite(v)) bad(at, v, "a number");
  return v;
}

function text(v: unknown, at: string): string {
  if (typeof v !== "string") bad(at, v, "text");
  return v;
}

function bool(v: unknown, at: string): boolean {
  if (typeof v !== "boolean") bad(at, v, "true or false");
  return v;
}

function bytes(v: unknown, at: string): Uint8Array {
  if (!(v instanceof Uint8Array)) bad(at, v, "a byte string");
  return v;
}

/** Checks `check` on each element of the list `v` (`at[i]`). */
function each<T>(v: unknown, at: string, check: (x: unknown, at: string) => T): T[] {
  return list(v, at).map((x, i) => check(x, `${at}[${i}]`));
}

/** Checks `o[key]` with `check` when it is there (`at` is the path of `o`, "" at the top). */
function optional<T>(o: Obj, key: string, at: string, check: (x: unknown, at: string) => T) {
  if (o[key] !== undefined) check(o[key], at ? `${at}.${key}` : key);
}

/** Ids must be unique: returns the set. */
function unique(ids: number[], at: string, what: string): Set<number> {
  const set = new Set<number>();
  for (const id of ids) {
    if (set.has(id)) throw new Malformed(`${at}: ${what} ${id} appears twice`);
    set.add(id);
  }
  return set;
}

/** A page run inside `[0, limit)` (byte offsets, or addresses from `base`). */
function pageRuns(
  v: unknown,
  at: string,
  extents: { length: number }[],
  range: { start: bigint; end: bigint },
): void {
  each(v, at, (r, a) => {
    const run = obj(r, a, ["start", "length", "extent", "offset", "checksums"]);
    const start = u64(run.start, `${a}.start`);
    const length = int(run.length, `${a}.length`);
    const extent = int(run.extent, `${a}.extent`, 0, extents.length - 1);
    const offset = int(run.offset, `${a}.offset`);
    if (offset + length > extents[extent].length) {
      throw new Malformed(
        `${a}: ${length} bytes at offset ${offset} run past the end of extent ${extent} ` +
          `(${extents[extent].length} bytes)`,
      );
    }
    if (start < range.start || start + BigInt(length) > range.end) {
      throw new Malformed(
        `${a}: ${length} bytes at 0x${start.toString(16)} are outside ` +
          `0x${range.start.toString(16)}-0x${range.end.toString(16)}`,
      );
    }
    optional(run, "checksums", a, bytes);
  });
}

// The fields of each map of schema.ts (see the note at the top).
const ENTRY_FIELDS = [
  "pid",
  "ppid",
  "stopped",
  "stopSignal",
  "pdeathsig",
  "sid",
  "pgid",
  "tty",
  "zombies",
  "comm",
  "cmdline",
  "exe",
  "cwd",
  "removedCwd",
  "root",
  "umask",
  "personality",
  "creds",
  "namespaceInodes",
  "oomScoreAdj",
  "audit",
  "thpDisable",
  "childSubreaper",
  "membarrier",
  "dumpable",
  "rlimits",
  "mm",
  "sigactions",
  "sharedPending",
  "itimers",
  "posixTimers",
  "threads",
  "seccompFilters",
  "mappings",
  "special",
  "objects",
  "files",
  "fds",
  "sharesFilesWith",
  "sharesFsWith",
  "extents",
  "nestedPid",
  "childPidNamespace",
  "mountNamespace",
  "tree",
  "networkLock",
  "namespaces",
  "cgroups",
  "cgroupGroups",
] as const;
const THREAD_FIELDS = [
  "tid",
  "name",
  "regs",
  "xstate",
  "sigmask",
  "pending",
  "sigaltstack",
  "clearChildTid",
  "robustList",
  "rseq",
  "sleepRemainingNs",
  "noNewPrivs",
  "seccomp",
  "creds",
  "securebits",
  "scheduling",
  "cgroups",
  "nestedTids",
] as const;
const SCHEDULING_FIELDS = [
  "policy",
  "flags",
  "nice",
  "rtPriority",
  "priority",
  "runtime",
  "deadline",
  "period",
  "utilMin",
  "utilMax",
  "cpus",
  "ioprio",
  "timerSlackNs",
] as const;
const CAPABILITY_SETS = ["capInh", "capPrm", "capEff", "capBnd", "capAmb"] as const;
const MM_ADDRESSES = [
  "startCode",
  "endCode",
  "startData",
  "endData",
  "startBrk",
  "brk",
  "startStack",
  "argStart",
  "argEnd",
  "envStart",
  "envEnd",
] as const;
const MAPPING_FIELDS = [
  "start",
  "end",
  "prot",
  "shared",
  "offset",
  "kind",
  "name",
  "source",
  "growsDown",
  "advice",
  "pageSize",
  "guards",
  "pages",
  "sharedWithParent",
] as const;
const SOURCE_FIELDS: Record<string, readonly string[]> = {
  anonymous: [],
  file: ["path", "size", "mtimeMs", "inode", "dev"],
  shmem: ["object"],
  "stored-file": ["object"],
  aio: ["events"],
};
const OBJECT_FIELDS = [
  "id",
  "key",
  "kind",
  "name",
  "size",
  "mode",
  "seals",
  "uid",
  "gid",
  "atimeNs",
  "mtimeNs",
  "hugePageSize",
  "sysv",
  "pages",
] as const;

const MAPPING_KEYS: ReadonlySet<string> = new Set(MAPPING_FIELDS);
const RUN_KEYS: ReadonlySet<string> = new Set(["start", "length", "extent", "offset", "checksums"]);
const FILE_SOURCE_KEYS: ReadonlySet<string> = new Set(["type", ...SOURCE_FIELDS.file]);

const isMap = (v: unknown): v is Obj =>
  typeof v === "object" && v !== null && !Array.isArray(v) && !(v instanceof Uint8Array);
const isU64 = (v: unknown): v is bigint => typeof v === "bigint" && v >= 0n && v < U64_END;
const isCount = (v: unknown): v is number =>
  typeof v === "number" && Number.isSafeInteger(v) && v >= 0;

function onlyKeys(o: Obj, known: ReadonlySet<string>): boolean {
  for (const key in o) if (!known.has(key)) return false;
  return true;
}

/**
 * Whether mapping entry `m` passes every check of `checkEntry`'s mapping loop, without making a
 * path text per field: true for the common entries (anonymous or file memory, no inherited
 * pages); false sends the entry to those checks, which pass it or say what is wrong. Never true
 * for an entry they would refuse.
 */
function plainMapping(
  m: unknown,
  extents: { length: number }[],
  objectIdOk: (x: unknown) => boolean,
): boolean {
  if (!isMap(m) || !onlyKeys(m, MAPPING_KEYS) || m.sharedWithParent !== undefined) return false;
  const { start, end, prot, source: src, advice, pages } = m;
  if (!isU64(start) || !isU64(end) || end <= start) return false;
  if (typeof prot !== "number" || !Number.isSafeInteger(prot) || prot < 0 || prot > 7) {
    return false;
  }
  if (typeof m.shared !== "boolean" || !isU64(m.offset) || typeof m.kind !== "string") {
    return false;
  }
  if (m.name !== null && typeof m.name !== "string") return false;
  if (typeof m.growsDown !== "boolean" || !isMap(src)) return false;
  if (src.type === "anonymous") {
    for (const key in src) if (key !== "type") return false;
  } else if (src.type === "file") {
    if (!onlyKeys(src, FILE_SOURCE_KEYS) || typeof src.path !== "string") return false;
    if (!isCount(src.size) || typeof src.mtimeMs !== "number" || !Number.isFinite(src.mtimeMs)) {
      return false;
    }
    if (!isU64(src.inode) || typeof src.dev !== "string") return false;
  } else if (src.type === "shmem" || src.type === "stored-file") {
    for (const key in src) if (key !== "type" && key !== "object") return false;
    if (!objectIdOk(src.object)) return false;
  } else return false;
  if (advice !== undefined) {
    if (!Array.isArray(advice)) return false;
    for (const f of advice) if (typeof f !== "string") return false;
  }
  if (!Array.isArray(pages)) return false;
  for (const run of pages) {
    if (!isMap(run) || !onlyKeys(run, RUN_KEYS)) return false;
    const { start: at, length, extent, offset } = run;
    if (!isU64(at) || !isCount(length) || !isCount(offset)) return false;
    if (!isCount(extent) || extent > extents.length - 1) return false;
    if (offset + length > extents[extent].length) return false;
    if (at < start || at + BigInt(length) > end) return false;
    if (run.checksums !== undefined && !(run.checksums instanceof Uint8Array)) return false;
  }
  return true;
}

const PAGE = 4096n;
const roundUp = (n: bigint) => (n + PAGE - 1n) / PAGE * PAGE;

function pending(v: unknown, at: string): void {
  each(v, at, (s, a) => {
    const o = obj(s, a, ["signo", "siginfo"]);
    int(o.signo, `${a}.signo`, 1, 64);
    bytes(o.siginfo, `${a}.siginfo`);
  });
}

function range(
  v: unknown,
  at: string,
  known: readonly string[] = ["start", "end"],
): { start: bigint; end: bigint } {
  const o = obj(v, at, known);
  const start = u64(o.start, `${at}.start`);
  const end = u64(o.end, `${at}.end`);
  if (end <= start) throw new Malformed(`${at}: end 0x${end.toString(16)} is not past its start`);
  return { start, end };
}

function credentials(v: unknown, at: string): void {
  const creds = obj(v, at, ["uids", "gids", "groups", ...CAPABILITY_SETS]);
  for (const k of ["uids", "gids"]) {
    const ids = each(creds[k], `${at}.${k}`, (x, a) => int(x, a, 0, 2 ** 32 - 1));
    if (ids.length !== 4) {
      throw new Malformed(`${at}.${k} has ${ids.length} ids, not 4 (real, effective, saved, fs)`);
    }
  }
  each(creds.groups, `${at}.groups`, (x, a) => int(x, a, 0, 2 ** 32 - 1));
  for (const k of CAPABILITY_SETS) u64(creds[k], `${at}.${k}`);
}

function checkEntry(v: unknown): void {
  const p = obj(v, "", ENTRY_FIELDS);
  int(p.pid, "pid", 1);
  int(p.ppid, "ppid");
  optional(p, "stopped", "", bool);
  optional(p, "pdeathsig", "", (x, a) => int(x, a, 0, 64));
  int(p.sid, "sid");
  int(p.pgid, "pgid");
  if (p.tty !== undefined) {
    const t = obj(p.tty, "tty", ["dev", "path", "foreground", "modes", "winsize"]);
    int(t.dev, "tty.dev");
    if (t.path !== null) text(t.path, "tty.path");
    bool(t.foreground, "tty.foreground");
    if (t.modes !== undefined) {
      const m = obj(t.modes, "tty.modes", [
        "raw",
        "iflag",
        "oflag",
        "cflag",
        "lflag",
        "line",
        "cc",
      ]);
      bytes(m.raw, "tty.modes.raw");
      for (const k of ["iflag", "oflag", "cflag", "lflag", "line"]) {
        int(m[k], `tty.modes.${k}`, 0, 2 ** 32 - 1);
      }
      each(m.cc, "tty.modes.cc", (x, a) => int(x, a, 0, 255));
    }
    if (t.winsize !== undefined) {
      const w = obj(t.winsize, "tty.winsize", ["rows", "cols", "xpixel", "ypixel"]);
      for (const k of ["rows", "cols", "xpixel", "ypixel"]) int(w[k], `tty.winsize.${k}`, 0, 65535);
    }
  }
  if (p.zombies !== undefined) {
    each(p.zombies, "zombies", (z, a) => {
      const o = obj(z, a, ["pid", "comm", "status", "pgid", "sid", "thread"]);
      int(o.pid, `${a}.pid`, 1);
      text(o.comm, `${a}.comm`);
      int(o.status, `${a}.status`);
      int(o.pgid, `${a}.pgid`);
      int(o.sid, `${a}.sid`);
    });
  }
  text(p.comm, "comm");
  each(p.cmdline, "cmdline", text);
  if (p.exe !== null) {
    const e = obj(p.exe, "exe", ["path", "size", "mtimeMs"]);
    text(e.path, "exe.path");
    int(e.size, "exe.size");
    finite(e.mtimeMs, "exe.mtimeMs");
  }
  text(p.cwd, "cwd");
  text(p.root, "root");
  int(p.umask, "umask", 0, 0o777);
  int(p.personality, "personality", 0, 2 ** 32 - 1);
  credentials(p.creds, "creds");
  optional(p, "namespaceInodes", "", (v, at) =>
    each(v, at, (n, a) => {
      const o = obj(n, a, ["name", "inode"]);
      text(o.name, `${a}.name`);
      u64(o.inode, `${a}.inode`);
    }));
  each(p.rlimits, "rlimits", (r, a) => {
    const o = obj(r, a, ["resource", "soft", "hard"]);
    int(o.resource, `${a}.resource`, 0, 63);
    u64(o.soft, `${a}.soft`);
    u64(o.hard, `${a}.hard`);
  });
  const mm = obj(p.mm, "mm", [...MM_ADDRESSES, "auxv"]);
  for (const k of MM_ADDRESSES) u64(mm[k], `mm.${k}`);
  each(mm.auxv, "mm.auxv", u64);
  each(p.sigactions, "sigactions", (s, a) => {
    const o = obj(s, a, ["signo", "handler", "flags", "restorer", "mask"]);
    int(o.signo, `${a}.signo`, 1, 64);
    for (const k of ["handler", "flags", "restorer", "mask"]) u64(o[k], `${a}.${k}`);
  });
  pending(p.sharedPending, "sharedPending");
  each(p.itimers, "itimers", (t, a) => {
    const o = obj(t, a, ["which", "intervalUs", "valueUs"]);
    int(o.which, `${a}.which`, 0, 2);
    u64(o.intervalUs, `${a}.intervalUs`);
    u64(o.valueUs, `${a}.valueUs`);
  });
  if (p.posixTimers !== undefined) {
    each(p.posixTimers, "posixTimers", (t, a) => {
      const o = obj(t, a, [
        "id",
        "clockid",
        "signo",
        "sigval",
        "notify",
        "targetTid",
        "intervalNs",
        "valueNs",
      ]);
      int(o.id, `${a}.id`, 0, 2 ** 31 - 1);
      int(o.clockid, `${a}.clockid`, -(2 ** 31), 2 ** 31 - 1); // CPU-time clocks are negative
      int(o.signo, `${a}.signo`, 0, 64);
      u64(o.sigval, `${a}.sigval`);
      int(o.notify, `${a}.notify`);
      int(o.targetTid, `${a}.targetTid`);
      u64(o.intervalNs, `${a}.intervalNs`);
      u64(o.valueNs, `${a}.valueNs`);
    });
  }
  const filters = p.seccompFilters === undefined
    ? []
    : each(p.seccompFilters, "seccompFilters", (f, a) => {
      const o = obj(f, a, ["bpf", "flags"]);
      bytes(o.bpf, `${a}.bpf`);
      int(o.flags, `${a}.flags`);
    });
  const tids = each(p.threads, "threads", (t, a) => {
    const o = obj(t, a, THREAD_FIELDS);
    const tid = int(o.tid, `${a}.tid`, 1);
    text(o.name, `${a}.name`);
    const regs = obj(o.regs, `${a}.regs`, REG_NAMES);
    for (const r of REG_NAMES) u64(regs[r], `${a}.regs.${r}`);
    bytes(o.xstate, `${a}.xstate`);
    u64(o.sigmask, `${a}.sigmask`);
    pending(o.pending, `${a}.pending`);
    const ss = obj(o.sigaltstack, `${a}.sigaltstack`, ["sp", "flags", "size"]);
    u64(ss.sp, `${a}.sigaltstack.sp`);
    int(ss.flags, `${a}.sigaltstack.flags`);
    u64(ss.size, `${a}.sigaltstack.size`);
    u64(o.clearChildTid, `${a}.clearChildTid`);
    const rl = obj(o.robustList, `${a}.robustList`, ["head", "len"]);
    u64(rl.head, `${a}.robustList.head`);
    u64(rl.len, `${a}.robustList.len`);
    const rseq = obj(o.rseq, `${a}.rseq`, ["abiPointer", "length", "flags", "signature"]);
    u64(rseq.abiPointer, `${a}.rseq.abiPointer`);
    int(rseq.length, `${a}.rseq.length`);
    int(rseq.flags, `${a}.rseq.flags`);
    int(rseq.signature, `${a}.rseq.signature`, 0, 2 ** 32 - 1);
    optional(o, "sleepRemainingNs", a, u64);
    optional(o, "noNewPrivs", a, bool);
    optional(o, "cgroups", a, (v, b) => field(v, b, { list: { map: CGROUP_FIELDS } }));
    optional(o, "nestedTids", a, nestedIds);
    if (o.seccomp !== undefined) {
      const sc = obj(o.seccomp, `${a}.seccomp`, ["mode", "filters"]);
      int(sc.mode, `${a}.seccomp.mode`, 0, 2);
      each(sc.filters, `${a}.seccomp.filters`, (x, b) => int(x, b, 0, filters.length - 1));
    }
    if (o.creds !== undefined) credentials(o.creds, `${a}.creds`);
    optional(o, "securebits", a, int);
    if (o.scheduling !== undefined) obj(o.scheduling, `${a}.scheduling`, SCHEDULING_FIELDS);
    return tid;
  });
  if (!tids.length) throw new Malformed("threads is empty");
  unique(tids, "threads", "thread id");

  // Page data first: runs refer to extents.
  const extents = each(p.extents, "extents", (e, a) => {
    const o = obj(e, a, ["file", "offset", "length", "checksum", "image"]);
    const file = text(o.file, `${a}.file`);
    if (!isPlainFileName(file)) bad(`${a}.file`, file, "a file name of the image");
    int(o.offset, `${a}.offset`);
    const length = int(o.length, `${a}.length`);
    int(o.checksum, `${a}.checksum`, 0, 2 ** 32 - 1);
    optional(o, "image", a, int);
    return { length };
  });
  const objectIds = unique(
    each(p.objects, "objects", (m, a) => {
      const o = obj(m, a, OBJECT_FIELDS);
      const id = int(o.id, `${a}.id`);
      optional(o, "key", a, text);
      if (!["shmem", "sysv-shm", "memfd", "deleted-file"].includes(o.kind as string)) {
        bad(`${a}.kind`, o.kind, "shmem, sysv-shm, memfd or deleted-file");
      }
      text(o.name, `${a}.name`);
      const size = int(o.size, `${a}.size`);
      int(o.mode, `${a}.mode`, 0, 0o177777);
      optional(o, "seals", a, int);
      if (o.sysv !== undefined) {
        const s = obj(o.sysv, `${a}.sysv`, ["key", "shmid", "uid", "gid", "removed"]);
        int(s.key, `${a}.sysv.key`, -(2 ** 31), 2 ** 32 - 1);
        int(s.shmid, `${a}.sysv.shmid`);
        int(s.uid, `${a}.sysv.uid`, 0, 2 ** 32 - 1);
        int(s.gid, `${a}.sysv.gid`, 0, 2 ** 32 - 1);
        bool(s.removed, `${a}.sysv.removed`);
      }
      pageRuns(o.pages, `${a}.pages`, extents, { start: 0n, end: roundUp(BigInt(size)) });
      return id;
    }),
    "objects",
    "object id",
  );
  const objectRef = (x: unknown, at: string) => {
    if (!objectIds.has(int(x, at))) throw new Malformed(`${at}: no memory object ${x}`);
  };
  const objectIdOk = (x: unknown) => typeof x === "number" && objectIds.has(x);
  list(p.mappings, "mappings").forEach((m, i) => {
    // Tens of thousands of entries: most pass the fast check, which makes no path text; one it
    // does not pass goes through the full checks below, which name what is wrong.
    if (plainMapping(m, extents, objectIdOk)) return;
    const a = `mappings[${i}]`;
    const o = obj(m, a, MAPPING_FIELDS);
    const r = range(o, a, MAPPING_FIELDS);
    int(o.prot, `${a}.prot`, 0, 7);
    bool(o.shared, `${a}.shared`);
    u64(o.offset, `${a}.offset`);
    text(o.kind, `${a}.kind`);
    if (o.name !== null) text(o.name, `${a}.name`);
    const src = openObj(o.source, `${a}.source`);
    const fields = Object.hasOwn(SOURCE_FIELDS, src.type as string)
      ? SOURCE_FIELDS[src.type as string]
      : undefined;
    if (!fields) bad(`${a}.source.type`, src.type, "anonymous, file, shmem, stored-file or aio");
    obj(src, `${a}.source`, ["type", ...fields]);
    switch (src.type) {
      case "anonymous":
        break;
      case "file":
        text(src.path, `${a}.source.path`);
        int(src.size, `${a}.source.size`);
        finite(src.mtimeMs, `${a}.source.mtimeMs`);
        u64(src.inode, `${a}.source.inode`);
        text(src.dev, `${a}.source.dev`);
        break;
      case "shmem":
      case "stored-file":
        objectRef(src.object, `${a}.source.object`);
        break;
      case "aio":
        int(src.events, `${a}.source.events`, 1, 0x7fffffff);
        break;
      default:
        bad(`${a}.source.type`, src.type, "anonymous, file, shmem, stored-file or aio");
    }
    bool(o.growsDown, `${a}.growsDown`);
    optional(o, "advice", a, (x, b) => each(x, b, text));
    pageRuns(o.pages, `${a}.pages`, extents, r);
    if (o.sharedWithParent !== undefined) {
      if (o.shared || src.type !== "anonymous") {
        throw new Malformed(`${a}.sharedWithParent: only private anonymous memory is inherited`);
      }
      let at = r.start;
      each(o.sharedWithParent, `${a}.sharedWithParent`, (s, b) => {
        const pages = range(s, b);
        if (pages.start < at || pages.end > r.end || pages.start % PAGE || pages.end % PAGE) {
          throw new Malformed(`${b}: not page-aligned, in order and inside the mapping`);
        }
        at = pages.end;
      });
    }
  });
  const special = obj(p.special, "special", ["vdso", "vvar", "vvarVclock"]);
  if (special.vdso !== undefined) {
    range(special.vdso, "special.vdso", ["start", "end", "checksum"]);
    int((special.vdso as Obj).checksum, "special.vdso.checksum", 0, 2 ** 32 - 1);
  }
  if (special.vvar !== undefined) range(special.vvar, "special.vvar");
  if (special.vvarVclock !== undefined) range(special.vvarVclock, "special.vvarVclock");
  const fileIds = unique(
    each(p.files, "files", (f, a) => {
      const o = openObj(f, a);
      text(o.kind, `${a}.kind`);
      int(o.flags, `${a}.flags`, 0, 2 ** 32 - 1);
      // Stored contents (deleted files, memfds) are memory objects of this entry.
      if (o.object !== undefined) objectRef(o.object, `${a}.object`);
      return int(o.id, `${a}.id`);
    }),
    "files",
    "file id",
  );
  unique(
    each(p.fds, "fds", (d, a) => {
      const o = obj(d, a, ["fd", "file", "closeOnExec"]);
      const file = int(o.file, `${a}.file`);
      if (!fileIds.has(file)) throw new Malformed(`${a}.file: no open file ${file}`);
      bool(o.closeOnExec, `${a}.closeOnExec`);
      return int(o.fd, `${a}.fd`, 0, 2 ** 31 - 1);
    }),
    "fds",
    "descriptor",
  );
  optional(p, "namespaces", "", (v, a) => fields(v, a, NAMESPACES_FIELDS));
  optional(p, "cgroups", "", (v, a) => field(v, a, { list: { map: CGROUP_FIELDS } }));
  optional(p, "cgroupGroups", "", (v, a) =>
    each(v, a, (g, b) => {
      const o = obj(g, b, [...Object.keys(CGROUP_FIELDS), "settings", "frozen"]);
      fields({ hierarchy: o.hierarchy, path: o.path }, b, CGROUP_FIELDS);
      if (o.tool !== undefined) {
        throw new Malformed(`${b}.tool: a group of its own is not the tool's`);
      }
      for (const [k, x] of Object.entries(openObj(o.settings, `${b}.settings`))) {
        if (!/^[a-z_]+(\.[a-z_]+)+$/.test(k)) throw new Malformed(`${b}.settings: no file ${k}`);
        text(x, `${b}.settings.${k}`);
      }
      optional(o, "frozen", b, bool);
    }));
  optional(p, "nestedPid", "", (v, a) => {
    const o = obj(v, a, ["init", "pids"]);
    int(o.init, `${a}.init`, 1);
    nestedIds(o.pids, `${a}.pids`);
  });
  optional(p, "childPidNamespace", "", (v, a) => int(v, a, 1));
  optional(
    p,
    "mountNamespace",
    "",
    (v, a) =>
      fields(v, a, { mounts: (NAMESPACES_FIELDS.mounts as { optional: FieldType }).optional }),
  );
  if (p.tree !== undefined) {
    each(p.tree, "tree", (t, a) => {
      const o = obj(t, a, ["pid", "ppid"]);
      int(o.pid, `${a}.pid`, 1);
      int(o.ppid, `${a}.ppid`);
    });
  }
  if (p.networkLock !== undefined) {
    fields(p.networkLock, "networkLock", NETWORK_LOCK_FIELDS);
    // Handed to nft and iptables: nothing but a name the tool gives.
    const name = (p.networkLock as Obj).name;
    if (!/^tardigrade-[0-9a-f]{16}$/.test(name as string)) {
      bad("networkLock.name", name, "tardigrade- and 16 hex digits");
    }
  }
}

/** A task's ids in the pid namespaces nested below the dump's: one a level (32 at most). */
function nestedIds(v: unknown, at: string): void {
  const ids = each(v, at, (x, a) => int(x, a, 1, 2 ** 22));
  if (ids.length < 1 || ids.length > 32) bad(at, ids.length, "1 to 32 levels");
}

/** The network lock of the root entry (schema.ts `NetworkLockEntry`). */
const NETWORK_LOCK_FIELDS: Fields = {
  method: { oneOf: ["nftables", "iptables"] },
  name: "text",
  connections: { list: { map: { local: "text", peer: "text" } } },
};

/**
 * The type of one field of a map an image holds, for `validateFields`: a whole number (as a
 * number or a bigint), any finite number, text, true or false, a byte string, anything; or one of
 * the texts listed, a field that may be absent, null, a list, or a closed map of its own.
 */
export type FieldType =
  | "whole"
  | "number"
  | "text"
  | "bool"
  | "bytes"
  | "any"
  | { readonly oneOf: readonly string[] }
  | { readonly optional: FieldType }
  | { readonly nullable: FieldType }
  | { readonly list: FieldType }
  | { readonly map: Fields };

/** The fields of a closed map: every key it may have, with its type. */
export type Fields = Readonly<Record<string, FieldType>>;

/** `CgroupMembership`: a group of one hierarchy. */
const CGROUP_FIELDS: Fields = { hierarchy: "text", path: "text", tool: { optional: "bool" } };

/** A System V object's identity and owner (`SysvObjectEntry`). */
const SYSV_OBJECT_FIELDS: Fields = {
  id: "whole",
  key: "whole",
  uid: "whole",
  gid: "whole",
  mode: "whole",
};

/** A message queue's messages. */
const MESSAGES: FieldType = { list: { map: { type: "whole", data: "bytes" } } };

/** `NetAddressEntry`. */
const NET_ADDRESS: FieldType = {
  map: {
    family: { oneOf: ["inet", "inet6"] },
    local: "text",
    prefixlen: "whole",
    scope: "text",
    broadcast: { optional: "text" },
    label: { optional: "text" },
  },
};

/** `NetRouteEntry`. */
const NET_ROUTE: FieldType = {
  map: {
    family: { oneOf: ["inet", "inet6"] },
    dst: "text",
    type: { optional: "text" },
    gateway: { optional: "text" },
    dev: { optional: "text" },
    table: { optional: "text" },
    metric: { optional: "whole" },
    protocol: { optional: "text" },
    scope: { optional: "text" },
    prefsrc: { optional: "text" },
  },
};

/** `NetEntry`: a container's network namespace. */
const NET_FIELDS: Fields = {
  links: {
    list: {
      map: {
        name: "text",
        kind: { oneOf: ["loopback", "veth"] },
        mtu: "whole",
        mac: "text",
        up: "bool",
        addresses: { list: NET_ADDRESS },
        peer: {
          optional: {
            map: {
              name: "text",
              mtu: "whole",
              mac: "text",
              up: "bool",
              master: { optional: "text" },
              addresses: { list: NET_ADDRESS },
              routes: { list: NET_ROUTE },
            },
          },
        },
      },
    },
  },
  routes: { list: NET_ROUTE },
  sysctls: { list: { map: { path: "text", value: "text" } } },
  firewall: {
    optional: {
      map: { ruleset: "text", iptables: { optional: "text" }, ip6tables: { optional: "text" } },
    },
  },
};

/** One range of a user namespace's id map. */
const ID_RANGE: Fields = { inside: "whole", outside: "whole", count: "whole" };

/** `ProcessEntry.namespaces`: a container's namespaces. */
const NAMESPACES_FIELDS: Fields = {
  kinds: { list: { oneOf: ["pid", "mnt", "uts", "ipc", "time", "net", "user", "cgroup"] } },
  user: {
    optional: {
      map: {
        uidMap: { list: { map: ID_RANGE } },
        gidMap: { list: { map: ID_RANGE } },
        setgroups: { oneOf: ["allow", "deny"] },
      },
    },
  },
  mounts: {
    optional: {
      list: {
        map: {
          mountPoint: "text",
          fsType: "text",
          source: "text",
          options: "text",
          superOptions: "text",
          root: { optional: "text" },
          bindFrom: { optional: "text" },
          bindHost: { optional: "bool" },
          pidNamespace: { optional: "whole" },
          files: {
            optional: {
              list: {
                map: {
                  path: "text",
                  type: { oneOf: ["dir", "file", "symlink", "link", "char", "block", "fifo"] },
                  mode: "whole",
                  uid: "whole",
                  gid: "whole",
                  mtimeMs: { optional: "number" },
                  data: { optional: "bytes" },
                  target: { optional: "text" },
                  rdev: { optional: "whole" },
                },
              },
            },
          },
        },
      },
    },
  },
  uts: { optional: { map: { hostname: "text", domainname: "text" } } },
  ipc: {
    optional: {
      map: {
        msg: { list: { map: { ...SYSV_OBJECT_FIELDS, qbytes: "whole", messages: MESSAGES } } },
        sem: { list: { map: { ...SYSV_OBJECT_FIELDS, values: { list: "whole" } } } },
        shm: {
          optional: {
            list: {
              map: {
                ...SYSV_OBJECT_FIELDS,
                size: "whole",
                removed: "bool",
                data: { optional: "bytes" },
              },
            },
          },
        },
        mqueues: {
          optional: {
            list: {
              map: {
                name: "text",
                uid: "whole",
                gid: "whole",
                mode: "whole",
                maxmsg: "whole",
                msgsize: "whole",
                messages: { list: { map: { priority: "whole", data: "bytes" } } },
              },
            },
          },
        },
        mqueueLimits: {
          optional: {
            map: {
              msgMax: "whole",
              msgsizeMax: "whole",
              msgDefault: "whole",
              msgsizeDefault: "whole",
              queuesMax: "whole",
            },
          },
        },
      },
    },
  },
  time: {
    optional: {
      map: {
        monotonic: "whole",
        boottime: "whole",
        bootId: "text",
        clocks: { map: { monotonic: "whole", boottime: "whole" } },
      },
    },
  },
  net: { optional: { map: NET_FIELDS } },
  joined: { optional: { list: { oneOf: ["net", "user"] } } },
};

function field(v: unknown, at: string, type: FieldType): void {
  if (typeof type === "object") {
    if ("optional" in type) {
      if (v !== undefined) field(v, at, type.optional);
    } else if ("nullable" in type) {
      if (v !== null) field(v, at, type.nullable);
    } else if ("list" in type) each(v, at, (x, a) => field(x, a, type.list));
    else if ("map" in type) fields(v, at, type.map);
    else if (!type.oneOf.includes(v as string)) bad(at, v, type.oneOf.join(" or "));
    return;
  }
  switch (type) {
    case "whole":
      if (typeof v === "bigint") return;
      if (typeof v !== "number" || !Number.isSafeInteger(v)) bad(at, v, "a whole number");
      return;
    case "number":
      finite(v, at);
      return;
    case "text":
      text(v, at);
      return;
    case "bool":
      bool(v, at);
      return;
    case "bytes":
      bytes(v, at);
      return;
    case "any":
      return;
  }
}

function fields(v: unknown, at: string, spec: Fields): void {
  const o = obj(v, at, Object.keys(spec));
  for (const [key, type] of Object.entries(spec)) field(o[key], `${at}.${key}`, type);
}

/**
 * Checks that `value`, at `at` in the metadata file `file`, is a map with the fields `spec`
 * gives and no others (an open file's kind-specific state, which its handler describes); throws
 * an `ImageError` naming the first field that is not.
 */
export function validateFields(file: string, value: unknown, at: string, spec: Fields): void {
  refusing(file, () => fields(value, at, spec));
}

/** Runs `check`, turning what it finds malformed into an `ImageError` naming `file`. */
function refusing(file: string, check: () => void): void {
  try {
    check();
  } catch (err) {
    if (!(err instanceof Malformed)) throw err;
    throw new ImageError(`${file}: malformed process entry (${err.message})`);
  }
}

/**
 * Throws an `ImageError` naming `file` and the first field that is not what a process entry
 * holds; returns quietly for a well-formed entry.
 */
export function validateProcessEntry(file: string, value: unknown): void {
  refusing(file, () => checkEntry(value));
}
