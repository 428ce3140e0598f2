/**
 * Memory a forked child still shares copy-on-write with its parent. A page the two map from the
 * same page frame is stored once, in the parent's entry; the child's mapping lists it in
 * `sharedWithParent`. The restore forks such a child from its parent once the parent's memory is
 * in, keeps the mapping it inherits, drops the inherited pages the child did not share (so they
 * read as the zeroes they were) and writes its own pages over the rest: the two share those
 * pages again, as before, instead of holding a copy each.
 *
 * Only a private anonymous mapping the parent has at the same place, with the same protection,
 * kind and advice, is inherited: anything else a fork would not have given the child as it is.
 */
import { MADV, PAGE_SIZE, PROT } from "../../ffi/mod.ts";
import type { MappingEntry, ProcessEntry } from "../image/schema.ts";
import { type AddressRange, appendRange, pageFrames } from "../inspect/pages.ts";
import type { Injector } from "../ptrace/inject.ts";
import { needsWrite } from "./mapping.ts";

const PAGE = BigInt(PAGE_SIZE);
/** Pages compared at a time, so a large mapping needs no large buffer. */
const CHUNK_PAGES = 65536n;

/** Advice a fork does not hand down as it is (not inherited, wiped, or a hugetlb or droppable mapping). */
const NOT_INHERITED = ["dc", "wf", "ht", "dp", "sl"];

/** The parent of a process being dumped: its pid and the mappings whose contents it dumped. */
export interface ParentMemory {
  pid: number;
  /** Its mapping entries (with pages) whose contents it dumped, by start address. */
  dumped: ReadonlyMap<bigint, MappingEntry>;
}

/** Whether the child's mapping `m` would be what a fork from `parent` gives (see the top). */
export function inheritable(parent: ParentMemory, m: MappingEntry): boolean {
  const p = parent.dumped.get(m.start);
  if (!p || m.shared || p.shared || m.source.type !== "anonymous") return false;
  if (p.source.type !== "anonymous" || p.end !== m.end || p.prot !== m.prot) return false;
  if (p.kind !== m.kind || p.name !== m.name || p.growsDown !== m.growsDown) return false;
  if (p.guards?.length || m.guards?.length || p.pageSize || m.pageSize) return false;
  const advice = (e: MappingEntry) => (e.advice ?? []).join();
  if (advice(p) !== advice(m)) return false;
  return !(m.advice ?? []).some((a) => NOT_INHERITED.includes(a));
}

/** The parts of `ranges` (page aligned, in `child`'s memory) that `child` and `parent` map from the same page frames. */
export function sharedRanges(
  child: number,
  parent: number,
  ranges: AddressRange[],
): AddressRange[] {
  const out: AddressRange[] = [];
  for (const r of ranges) {
    for (let at = r.start; at < r.end; at += CHUNK_PAGES * PAGE) {
      const end = at + CHUNK_PAGES * PAGE < r.end ? at + CHUNK_PAGES * PAGE : r.end;
      const mine = pageFrames(child, at, end);
      const theirs = pageFrames(parent, at, end);
      for (let i = 0; i < mine.length; i += 2) {
        if (mine[i] !== theirs[i] || mine[i + 1] !== theirs[i + 1]) continue;
        if (mine[i] === 0 && mine[i + 1] === 0) continue; // not in RAM (or no frames to see)
        const start = at + BigInt(i / 2) * PAGE;
        appendRange(out, start, start + PAGE);
      }
    }
  }
  return out;
}

/** The mappings of `p` it inherits from its parent at restore. */
export function inheritedMappings(p: ProcessEntry): MappingEntry[] {
  return p.mappings.filter((m) => m.sharedWithParent?.length);
}

/**
 * The ranges of `parent`'s memory that its children in `entries` inherit from it copy-on-write:
 * their pages must be in the parent before the children are forked.
 */
export function inheritedRanges(parent: ProcessEntry, entries: ProcessEntry[]): AddressRange[] {
  return entries.filter((c) => c.ppid === parent.pid)
    .flatMap((c) => inheritedMappings(c).flatMap((m) => m.sharedWithParent!));
}

/** Whether `p` must be forked from its parent once the parent's memory is in. */
export function inheritsMemory(p: ProcessEntry): boolean {
  return p.mappings.some((m) => m.sharedWithParent?.length);
}

/**
 * In a child just forked from its built parent: makes inherited mapping `m` writable for its
 * own pages and drops every inherited page it did not share, which then reads as zeroes.
 */
export function prepareInherited(inj: Injector, m: MappingEntry): void {
  // Writable while its own pages go in, as a mapping made anew (MappingMaker.protectFinal).
  const prot = m.prot | PROT.READ | PROT.WRITE;
  // Queued: made together with the next mappings' calls.
  if (needsWrite(m) && prot !== m.prot) inj.queue("mprotect", [m.start, m.end - m.start, prot]);
  let at = m.start;
  for (const s of [...m.sharedWithParent!, { start: m.end, end: m.end }]) {
    if (s.start > at) inj.queue("madvise", [at, s.start - at, MADV.DONTNEED]);
    at = s.end;
  }
}
