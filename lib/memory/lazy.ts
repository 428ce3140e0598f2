/**
 * Lazy (post-copy) restore, the memory side: which mappings are served lazily, what is written
 * before the process runs all the same, and the userfaultfd their missing pages are served
 * through (page_server.ts serves them).
 *
 * Served lazily: private anonymous memory (heap, stacks, anonymous mappings) with pages in the
 * image. Everything else is written before the process runs, as in a plain restore: shared
 * memory and memfds (one object, several mappings), pages written over a private file mapping
 * (userfaultfd does not serve file-backed private memory), and what the restore changes after
 * the pages are in: hugetlb, droppable, mlocked (populated at once), guarded and sealed mappings;
 * and memory the process cannot read (PROT_NONE): it can reach it only through /proc/PID/mem,
 * whose reads of a missing page fail (EIO) instead of waiting for the page server, as
 * ptrace(PEEKDATA) does.
 * So are the few pages the kernel or the restore touch before the process runs (rseq areas, the
 * pages the registers point at, the argument strings).
 */
import { pageDown, pageUp, PROT, UFFD, uffdApi, uffdRegister } from "../../ffi/mod.ts";
import { RestoreError } from "../errors.ts";
import type { MappingEntry, PageRun, ProcessEntry } from "../image/schema.ts";
import { listPages, USER_SPACE_END } from "../inspect/pages.ts";
import { PendingPages, type PendingRun } from "./pending_pages.ts";
import { hex, type Range } from "./target.ts";

/** Advice that keeps a mapping out of lazy serving (see the module's comment). */
const EAGER_ADVICE = ["ht", "dp", "lo", "sl"];

/** The userfaultfd features a page server needs: it follows forks, mremap, discards and unmaps. */
const LAZY_FEATURES = UFFD.FEATURE_EVENT_FORK | UFFD.FEATURE_EVENT_REMAP |
  UFFD.FEATURE_EVENT_REMOVE | UFFD.FEATURE_EVENT_UNMAP;

/** Whether the pages of mapping `m` are served lazily. */
export function servedLazily(m: MappingEntry): boolean {
  return !m.shared && m.source.type === "anonymous" && m.pages.length > 0 &&
    (m.prot & PROT.READ) !== 0 &&
    !m.sharedWithParent?.length && !m.guards?.length &&
    !(m.advice ?? []).some((a) => EAGER_ADVICE.includes(a));
}

/** How one process's pages are split between the restore and the page server. */
export interface LazyPlan {
  /** The entry with the page runs written before the process runs. */
  eager: ProcessEntry;
  /** The lazily served mappings, to register with the userfaultfd. */
  ranges: Range[];
  /** The pages the page server fills. */
  pending: PendingRun[];
  /** Bytes of `pending`. */
  bytes: number;
}

/**
 * The pages touched before the process runs, sorted and merged: each thread's rseq area (the
 * kernel writes it on the thread's return to user mode, as the restore drives it), the pages its
 * registers point at (a sleep cut short by the dump is started again with the thread's own
 * pointers, and the kernel writes the time left there) and the argument and environment strings
 * (the restore's comparison reads /proc/PID/cmdline and environ). A pre-copy dump copies them
 * again at the freeze, so that a lazy restore finds them in the last, small extents.
 */
export function touchedBeforeRunning(p: Pick<ProcessEntry, "threads" | "mm">): Range[] {
  const pages = (start: bigint, end: bigint) => ({ start: pageDown(start), end: pageUp(end) });
  const all: Range[] = [];
  for (const t of p.threads) {
    if (t.rseq?.abiPointer) {
      all.push(pages(t.rseq.abiPointer, t.rseq.abiPointer + BigInt(t.rseq.length)));
    }
    for (const v of Object.values(t.regs)) {
      if (v > 0n && v < USER_SPACE_END) all.push(pages(v, v + 1n));
    }
  }
  const mm = p.mm;
  if (mm.argEnd > mm.argStart) all.push(pages(mm.argStart, mm.argEnd));
  if (mm.envEnd > mm.envStart) all.push(pages(mm.envStart, mm.envEnd));
  return sortedUnion(all);
}

/** `ranges` sorted, those that overlap or touch joined. */
function sortedUnion(ranges: Range[]): Range[] {
  const out: Range[] = [];
  for (const r of [...ranges].sort((a, b) => Number(a.start - b.start))) {
    const last = out[out.length - 1];
    if (last && r.start <= last.end) last.end = r.end > last.end ? r.end : last.end;
    else out.push({ ...r });
  }
  return out;
}

/** Splits `run` into its parts inside `ranges` (sorted, not overlapping) and those outside. */
function splitRun(run: PageRun, ranges: Range[]): { inside: PageRun[]; outside: PageRun[] } {
  const inside: PageRun[] = [], outside: PageRun[] = [];
  const end = run.start + BigInt(run.length);
  const piece = (s: bigint, e: bigint): PageRun => ({
    start: s,
    length: Number(e - s),
    extent: run.extent,
    offset: run.offset + Number(s - run.start),
  });
  let at = run.start;
  for (const r of ranges) {
    if (r.end <= at || r.start >= end) continue;
    if (r.start > at) outside.push(piece(at, r.start));
    const e = r.end < end ? r.end : end;
    inside.push(piece(r.start > at ? r.start : at, e));
    at = e;
  }
  if (at < end) outside.push(piece(at, end));
  return { inside, outside };
}

/**
 * Splits the pages of `p` between the restore and the page server; those in `inherited` (what
 * its children inherit from it, cow.ts) are written before the children are forked.
 */
export function planLazy(p: ProcessEntry, inherited: Range[] = []): LazyPlan {
  const early = sortedUnion([...touchedBeforeRunning(p), ...inherited]);
  const ranges: Range[] = [];
  const pending: PendingRun[] = [];
  let bytes = 0;
  const mappings = p.mappings.map((m) => {
    if (!servedLazily(m)) return m;
    ranges.push({ start: m.start, end: m.end });
    const now: PageRun[] = [];
    for (const run of m.pages) {
      const { inside, outside } = splitRun(run, early);
      now.push(...inside);
      for (const r of outside) {
        const start = Number(r.start);
        pending.push({ start, end: start + r.length, extent: r.extent, offset: r.offset });
        bytes += r.length;
      }
    }
    return { ...m, pages: now };
  });
  return { eager: { ...p, mappings }, ranges, pending, bytes };
}

/**
 * Registers the lazily served ranges of process `pid` with `uffd` (a userfaultfd made inside it,
 * taken into the tool) for missing pages, with the events a page server follows. Just before
 * the process runs: a page that is already there (something of the restore touched it) would
 * never get its contents, so one is refused naming it.
 */
export function armLazyPages(pid: number, uffd: number, plan: LazyPlan): void {
  const pending = new PendingPages(plan.pending);
  for (const range of plan.ranges) {
    for (const page of listPages(pid, range)) {
      if (!page.present && !page.swapped) continue;
      for (let a = page.start; a < page.end; a += 4096n) {
        if (pending.find(Number(a))) {
          throw new RestoreError(
            `cannot restore lazily: page ${hex(a)} of mapping ${hex(range.start)}-` +
              `${hex(range.end)} was touched before the process ran, its contents would be lost`,
          );
        }
      }
    }
  }
  uffdApi(uffd, LAZY_FEATURES);
  for (const r of plan.ranges) {
    uffdRegister(uffd, r.start, r.end - r.start, UFFD.REGISTER_MODE_MISSING);
  }
}
