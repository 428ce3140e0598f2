/**
 * What changed between two snapshots of a process, or a snapshot and the running process: pages
 * (by address, merged into ranges, per mapping), mappings, descriptors, threads (registers and
 * signal state), credentials, limits, signals. Pages two images hold at the same place of the
 * same page file are equal without a read, pages whose recorded CRC-32s differ differ without
 * one; only the others are read, a window at a time, and compared byte for byte.
 */
import { PAGE_SIZE } from "../../ffi/mod.ts";
import { Unsupported } from "../errors.ts";
import { ImageReader } from "../image/reader.ts";
import type { Mapping } from "./mappings.ts";
import { isPidTarget, openTarget } from "./open_target.ts";
import { type AddressRange, appendRange } from "./pages.ts";
import { type PageSource, pageSource } from "./page_source.ts";
import type { FdView, ProcessView, ThreadView } from "./view.ts";

const PAGE = BigInt(PAGE_SIZE);
/** Pages read at a time where they must be compared byte for byte. */
const WINDOW = 256;
/** The kernel's mappings: their bytes are not the process's. */
const KERNEL_KINDS = new Set(["vdso", "vvar", "vvar_vclock", "vsyscall"]);

/** One value that differs: `field` names it (`uids.effective`, `NOFILE.soft`, `rip` …). */
export interface Change {
  /** What differs. */
  field: string;
  /** Its value in A. */
  before: unknown;
  /** Its value in B. */
  after: unknown;
}

/** A mapping as a diff names it. */
export interface MappingSummary {
  /** First address. */
  start: bigint;
  /** Address past the end. */
  end: bigint;
  /** rwxp / rwxs. */
  perms: string;
  /** heap, stack, anonymous, file … */
  kind: string;
  /** The mapped path or [name], null for anonymous memory. */
  path: string | null;
}

/** The pages of one mapping (as in B) whose contents differ. */
export interface MappingPages {
  /** The mapping, as in B. */
  mapping: MappingSummary;
  /** The pages that differ, merged into ranges. */
  changed: AddressRange[];
  /** How many pages differ. */
  changedPages: number;
  /** Pages one side could not read (a file changed since its image …): not compared. */
  unreadable?: AddressRange[];
}

/** A descriptor as a diff names it. */
export type FdSummary = Pick<FdView, "fd" | "kind" | "target" | "flags" | "closeOnExec">;

/** What changed in one process from A to B. */
export interface ProcessDiff {
  /** The process id in B. */
  pid: number;
  /** Its command name in B. */
  comm: string;
  /** ppid, pgid, sid, comm, cmdline, exe, cwd, root, umask, personality. */
  attributes: Change[];
  /** User and group ids, groups, capability sets. */
  creds: Change[];
  /** Resource limits (`NOFILE.soft` …). */
  limits: Change[];
  /** Namespace inodes by name, where both sides tell them. */
  namespaces: Change[];
  /** Process signal masks (pending, shdPending, blocked, ignored, caught). */
  signals: Change[];
  /** Threads by tid: their name, registers, blocked mask and pending signals. */
  threads: {
    added: number[];
    removed: number[];
    changed: { tid: number; changes: Change[] }[];
    /**
     * Whether registers were compared: both sides must know them (an image does; a live
     * process's threads do not tell them without being stopped).
     */
    registersCompared: boolean;
  };
  /** Mappings by start address (the kernel's [vsyscall] aside). */
  mappings: {
    added: MappingSummary[];
    removed: MappingSummary[];
    changed: { start: bigint; changes: Change[] }[];
  };
  /** Descriptors by number; `moved`: the same file at another number. */
  fds: {
    added: FdSummary[];
    removed: FdSummary[];
    moved: { from: number; to: number; target: string }[];
    changed: { fd: number; changes: Change[] }[];
  };
  /** Pages whose contents differ, per mapping of B, over the addresses both map. */
  pages: MappingPages[];
  /** How many pages differ in all. */
  changedPages: number;
}

/** What changed from the target A to the target B (each a pid or an image directory). */
export interface TargetDiff {
  /** A, as given. */
  a: string;
  /** B, as given. */
  b: string;
  /** Each process of both, compared. */
  processes: ProcessDiff[];
  /** Pids only B has. */
  added: number[];
  /** Pids only A has. */
  removed: number[];
}

/** Compares two processes (live or in an image): what changed from `a` to `b`. */
export async function diffProcesses(a: ProcessView, b: ProcessView): Promise<ProcessDiff> {
  const [ma, mb] = [await listMappings(a), await listMappings(b)];
  const pages = await diffPages(a, b, ma, mb);
  return {
    pid: b.pid,
    comm: await b.comm(),
    attributes: await diffAttributes(a, b),
    creds: await diffCreds(a, b),
    limits: changes(flatten(await a.rlimits()), flatten(await b.rlimits())),
    namespaces: changes(await namespacesOf(a), await namespacesOf(b)),
    signals: changes(flatten(await a.signals()), flatten(await b.signals())),
    threads: diffThreads(await Array.fromAsync(a.threads()), await Array.fromAsync(b.threads())),
    mappings: diffMappings(ma, mb),
    fds: diffFds(await Array.fromAsync(a.fds()), await Array.fromAsync(b.fds())),
    pages,
    changedPages: pages.reduce((n, p) => n + p.changedPages, 0),
  };
}

/**
 * Compares two targets, each a pid or an image directory. Two images pair their processes by
 * pid; a live process pairs with the image's root (or its process `pid`), whatever its own pid
 * (a copy restored in a pid namespace has another).
 */
export async function diffTargets(
  a: string | number,
  b: string | number,
  opts: { pid?: number } = {},
): Promise<TargetDiff> {
  const pickA = isPidTarget(a) ? {} : { pid: opts.pid };
  const pickB = isPidTarget(b) ? {} : { pid: opts.pid };
  using ta = await openTarget(a, pickA);
  using tb = await openTarget(b, pickB);
  const out: TargetDiff = { a: String(a), b: String(b), processes: [], added: [], removed: [] };
  if (ta.image && tb.image) {
    const inB = new Map(tb.processes.map((p) => [p.pid, p]));
    for (const pa of ta.processes) {
      const pb = inB.get(pa.pid);
      if (pb) out.processes.push(await diffProcesses(pa, pb));
      else out.removed.push(pa.pid);
      inB.delete(pa.pid);
    }
    out.added.push(...inB.keys());
  } else {
    out.processes.push(await diffProcesses(ta.processes[0], tb.processes[0]));
  }
  return out;
}

/**
 * Walks a series of snapshots in order (image directories, or a pid last for the process as it
 * runs now), yielding what changed from each to the next: `diffSeries(await imageChain(dir))`
 * walks a `dump --parent` chain, e.g. to see which pages a program writes over time.
 */
export async function* diffSeries(
  targets: (string | number)[],
  opts: { pid?: number } = {},
): AsyncIterable<TargetDiff> {
  for (let i = 0; i + 1 < targets.length; i++) {
    yield await diffTargets(targets[i], targets[i + 1], opts);
  }
}

/** The images of the parent chain of the image `dir`, the oldest first and `dir` last. */
export async function imageChain(dir: string): Promise<string[]> {
  using image = await ImageReader.open(dir, { checkArch: false });
  const out: string[] = [];
  for (let r: ImageReader | undefined = image; r; r = r.parent) out.unshift(r.dir);
  return out;
}

/** The namespaces of `p`, none where an older image did not record them. */
async function namespacesOf(p: ProcessView): Promise<Record<string, bigint>> {
  try {
    return await p.namespaces();
  } catch (err) {
    if (err instanceof Unsupported) return {};
    throw err;
  }
}

async function listMappings(p: ProcessView): Promise<Mapping[]> {
  const out: Mapping[] = [];
  for await (const m of p.mappings()) if (m.kind !== "vsyscall") out.push(m);
  return out;
}

function summary(m: Mapping): MappingSummary {
  return { start: m.start, end: m.end, perms: m.perms, kind: m.kind, path: m.path };
}

async function diffAttributes(a: ProcessView, b: ProcessView): Promise<Change[]> {
  const read = async (p: ProcessView) => ({
    ppid: await p.ppid(),
    pgid: await p.pgid(),
    sid: await p.sid(),
    comm: await p.comm(),
    cmdline: (await p.cmdline()).join(" "),
    exe: await p.exe(),
    cwd: await p.cwd(),
    root: await p.root(),
    umask: await p.umask(),
    personality: await p.personality(),
  });
  return changes(await read(a), await read(b));
}

async function diffCreds(a: ProcessView, b: ProcessView): Promise<Change[]> {
  const read = async (p: ProcessView) =>
    flatten({
      uids: await p.uids(),
      gids: await p.gids(),
      groups: (await p.groups()).join(","),
      capabilities: await p.capabilities(),
    });
  return changes(await read(a), await read(b));
}

function diffThreads(a: ThreadView[], b: ThreadView[]): ProcessDiff["threads"] {
  const inB = new Map(b.map((t) => [t.tid, t]));
  const inA = new Set(a.map((t) => t.tid));
  const out: ProcessDiff["threads"] = {
    added: b.filter((t) => !inA.has(t.tid)).map((t) => t.tid),
    removed: a.filter((t) => !inB.has(t.tid)).map((t) => t.tid),
    changed: [],
    registersCompared: a.length > 0 && b.length > 0 && [...a, ...b].every((t) => t.regs),
  };
  for (const ta of a) {
    const tb = inB.get(ta.tid);
    if (!tb) continue;
    const c = changes(threadState(ta, tb), threadState(tb, ta));
    if (c.length) out.changed.push({ tid: ta.tid, changes: c });
  }
  return out;
}

/** What both threads tell of themselves (a live thread tells no registers). */
function threadState(t: ThreadView, other: ThreadView): Record<string, unknown> {
  const out: Record<string, unknown> = { name: t.name };
  if (t.regs && other.regs) Object.assign(out, t.regs);
  if (t.sigmask !== undefined && other.sigmask !== undefined) out.sigmask = t.sigmask;
  const pending = (x: ThreadView) => (x as { pending?: number[] }).pending;
  if (pending(t) && pending(other)) out.pending = pending(t)!.join(",");
  return out;
}

function diffMappings(a: Mapping[], b: Mapping[]): ProcessDiff["mappings"] {
  const inB = new Map(b.map((m) => [m.start, m]));
  const inA = new Map(a.map((m) => [m.start, m]));
  const out: ProcessDiff["mappings"] = {
    added: b.filter((m) => !inA.has(m.start)).map(summary),
    removed: a.filter((m) => !inB.has(m.start)).map(summary),
    changed: [],
  };
  for (const ma of a) {
    const mb = inB.get(ma.start);
    if (!mb) continue;
    const c = changes(
      { ...summary(ma), offset: ma.offset },
      { ...summary(mb), offset: mb.offset },
    );
    if (c.length) out.changed.push({ start: ma.start, changes: c });
  }
  return out;
}

function diffFds(a: FdView[], b: FdView[]): ProcessDiff["fds"] {
  const fdSummary = (f: FdView): FdSummary => ({
    fd: f.fd,
    kind: f.kind,
    target: f.target,
    flags: f.flags,
    closeOnExec: f.closeOnExec,
  });
  const inB = new Map(b.map((f) => [f.fd, f]));
  const inA = new Map(a.map((f) => [f.fd, f]));
  let added = b.filter((f) => !inA.has(f.fd));
  let removed = a.filter((f) => !inB.has(f.fd));
  // A descriptor closed and the same file opened at another number: moved.
  const moved: ProcessDiff["fds"]["moved"] = [];
  for (const r of removed) {
    const to = added.find((x) => x.target === r.target && x.kind === r.kind);
    if (!to) continue;
    moved.push({ from: r.fd, to: to.fd, target: r.target });
    added = added.filter((x) => x !== to);
    removed = removed.filter((x) => x !== r);
  }
  const changed: ProcessDiff["fds"]["changed"] = [];
  for (const fa of a) {
    const fb = inB.get(fa.fd);
    if (!fb) continue;
    const c = changes(
      { ...fdSummary(fa), position: fa.position },
      { ...fdSummary(fb), position: fb.position },
    );
    if (c.length) changed.push({ fd: fa.fd, changes: c });
  }
  return { added: added.map(fdSummary), removed: removed.map(fdSummary), moved, changed };
}

/** The pages that differ, over the addresses both processes map (not the kernel's mappings). */
async function diffPages(
  a: ProcessView,
  b: ProcessView,
  ma: Mapping[],
  mb: Mapping[],
): Promise<MappingPages[]> {
  const [sa, sb] = [await pageSource(a), await pageSource(b)];
  const byMapping = new Map<Mapping, MappingPages>();
  const bufA = new Uint8Array(WINDOW * PAGE_SIZE), bufB = new Uint8Array(WINDOW * PAGE_SIZE);
  let i = 0;
  for (const m of mb) {
    if (KERNEL_KINDS.has(m.kind)) continue;
    while (i < ma.length && ma[i].end <= m.start) i++;
    for (let j = i; j < ma.length && ma[j].start < m.end; j++) {
      if (KERNEL_KINDS.has(ma[j].kind)) continue;
      const lo = ma[j].start > m.start ? ma[j].start : m.start;
      const hi = ma[j].end < m.end ? ma[j].end : m.end;
      for (const r of mergeRanges(sa.dataRanges(lo, hi), sb.dataRanges(lo, hi))) {
        let entry = byMapping.get(m);
        if (!entry) {
          entry = { mapping: summary(m), changed: [], changedPages: 0 };
          byMapping.set(m, entry);
        }
        await comparePages(sa, sb, r, entry, bufA, bufB);
      }
    }
  }
  return [...byMapping.values()].filter((e) => e.changedPages || e.unreadable);
}

/** Compares the pages of `r` on both sides, a window at a time, into `entry`. */
async function comparePages(
  sa: PageSource,
  sb: PageSource,
  r: AddressRange,
  entry: MappingPages,
  bufA: Uint8Array,
  bufB: Uint8Array,
): Promise<void> {
  for (let at = r.start; at < r.end; at += BigInt(WINDOW) * PAGE) {
    const pages = Number(
      ((r.end - at) / PAGE) < BigInt(WINDOW) ? (r.end - at) / PAGE : BigInt(WINDOW),
    );
    // What the images tell without reading: the same stored bytes, or different CRC-32s.
    const verdict: ("same" | "changed" | "read")[] = [];
    for (let k = 0; k < pages; k++) {
      const addr = at + BigInt(k) * PAGE;
      const fa = sa.facts(addr), fb = sb.facts(addr);
      if (fa.location !== undefined && fa.location === fb.location) verdict.push("same");
      else if (
        fa.checksum !== undefined && fb.checksum !== undefined && fa.checksum !== fb.checksum
      ) {
        verdict.push("changed");
      } else verdict.push("read");
    }
    let na = 0, nb = 0;
    if (verdict.includes("read")) {
      const len = pages * PAGE_SIZE;
      na = await sa.readInto(at, bufA.subarray(0, len));
      nb = await sb.readInto(at, bufB.subarray(0, len));
    }
    for (let k = 0; k < pages; k++) {
      const addr = at + BigInt(k) * PAGE;
      let v = verdict[k];
      if (v === "read") {
        const off = k * PAGE_SIZE;
        if (off + PAGE_SIZE > na || off + PAGE_SIZE > nb) {
          appendRange(entry.unreadable ??= [], addr, addr + PAGE);
          continue;
        }
        v = equalBytes(bufA, bufB, off, PAGE_SIZE) ? "same" : "changed";
      }
      if (v === "changed") {
        appendRange(entry.changed, addr, addr + PAGE);
        entry.changedPages++;
      }
    }
  }
}

function equalBytes(a: Uint8Array, b: Uint8Array, off: number, len: number): boolean {
  // 32-bit words: a page is 1024 comparisons instead of 4096.
  const wa = new Uint32Array(a.buffer, a.byteOffset + off, len >> 2);
  const wb = new Uint32Array(b.buffer, b.byteOffset + off, len >> 2);
  for (let i = 0; i < wa.length; i++) if (wa[i] !== wb[i]) return false;
  return true;
}

/** Two sorted lists of ranges as one, in address order, overlapping and touching ones joined. */
function mergeRanges(x: AddressRange[], y: AddressRange[]): AddressRange[] {
  const all = [...x, ...y].sort((p, q) => (p.start < q.start ? -1 : p.start > q.start ? 1 : 0));
  const out: AddressRange[] = [];
  for (const r of all) {
    const last = out[out.length - 1];
    if (last && r.start <= last.end) {
      if (r.end > last.end) last.end = r.end;
    } else out.push({ ...r });
  }
  return out;
}

/** A nested record as `a.b` → value. */
function flatten(value: object, prefix = ""): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(value)) {
    if (v !== null && typeof v === "object" && !Array.isArray(v)) {
      Object.assign(out, flatten(v, `${prefix}${k}.`));
    } else out[`${prefix}${k}`] = v;
  }
  return out;
}

/** The fields of two flat records that differ (a field one lacks is left out). */
function changes(a: Record<string, unknown>, b: Record<string, unknown>): Change[] {
  const out: Change[] = [];
  for (const field of Object.keys(a)) {
    if (!(field in b)) continue;
    if (a[field] !== b[field]) out.push({ field, before: a[field], after: b[field] });
  }
  return out;
}
