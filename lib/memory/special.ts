/**
 * The special mappings the kernel gives every process: [vdso] (code glibc calls, keeping a
 * pointer into it), [vvar] and [vvar_vclock] (its data, which cannot be read), and [vsyscall]
 * (at the same address in every process).
 *
 * Dump: only where they were, and a checksum of the vdso's code.
 *
 * Restore: the image's vdso must be this kernel's (the same size and code); this kernel's three
 * mappings then move together (mremap) to the dumped addresses, keeping their relative offsets.
 */
import { MAP, MREMAP, PAGE_SIZE, PROT } from "../../ffi/mod.ts";
import { RestoreError } from "../errors.ts";
import { checksum } from "../image/checksum.ts";
import type { SpecialMappings } from "../image/schema.ts";
import { listMappings, type Mapping } from "../inspect/mappings.ts";
import { readMemoryInto } from "../inspect/memory.ts";
import { RemoteMemory } from "../inspect/memory.ts";
import { SYSCALL_PAGE_CODE, syscallSiteInCode } from "../ptrace/inject.ts";
import type { Range, Target } from "./target.ts";

/** Whether `m` is one of the special mappings a restore moves: [vdso], [vvar], [vvar_vclock]. */
export function isMovedSpecial(m: Mapping): boolean {
  return m.kind === "vdso" || m.kind === "vvar" || m.kind === "vvar_vclock";
}

/**
 * Records mapping `m` in `special` if it is a special mapping (the vdso with a checksum of its
 * code); returns whether it was one. [vsyscall] is left out: it is the same everywhere.
 */
export function recordSpecial(special: SpecialMappings, m: Mapping): boolean {
  switch (m.kind) {
    case "vsyscall":
      return true;
    case "vvar":
      special.vvar = { start: m.start, end: m.end };
      return true;
    case "vvar_vclock":
      special.vvarVclock = { start: m.start, end: m.end };
      return true;
    case "vdso": {
      const code = new Uint8Array(m.size);
      readMemoryInto(m.pid, m.start, code);
      special.vdso = { start: m.start, end: m.end, checksum: checksum(code) };
      return true;
    }
    default:
      return false;
  }
}

/** This kernel's vdso, once read (it is the same for every process of a restore). */
let ownVdso: { size: number; checksum: number } | null | undefined;

/** The size and checksum of this kernel's vdso (the tool's own). */
function vdsoChecksum(): { size: number; checksum: number } | null {
  if (ownVdso === undefined) ownVdso = readOwnVdso();
  return ownVdso;
}

function readOwnVdso(): { size: number; checksum: number } | null {
  const vdso = listMappings(Deno.pid).find((m) => m.kind === "vdso");
  if (!vdso) return null;
  using mem = new RemoteMemory(Deno.pid);
  const code = mem.read(vdso.start, vdso.size);
  return { size: code.length, checksum: checksum(code) };
}

/** Why the image's vdso cannot be used on this kernel (another kernel's code), or null. */
export function vdsoMismatch(special: SpecialMappings): string | null {
  if (!special.vdso) return null;
  const here = vdsoChecksum();
  const size = Number(special.vdso.end - special.vdso.start);
  if (!here || here.size !== size || here.checksum !== special.vdso.checksum) {
    return "the image's vdso differs from this kernel's (dumped on another kernel?)";
  }
  return null;
}

/** The ranges the image's special mappings are to take. */
export function specialRanges(special: SpecialMappings): Range[] {
  const out: Range[] = [];
  for (const s of [special.vdso, special.vvar, special.vvarVclock]) if (s) out.push(s);
  return out;
}

/** This kernel's special mappings in process `pid` now, but [vsyscall]. */
export function currentSpecials(pid: number): { name: string; range: Range }[] {
  return listMappings(pid).filter(isMovedSpecial).map((m) => ({
    name: m.kind,
    range: { start: m.start, end: m.end },
  }));
}

/**
 * Moves this kernel's vvar, vvar_vclock and vdso in the target to where `special` had them, and
 * unmaps those the dumped process had unmapped. When the vdso the injector runs from goes, the
 * injector gets a page of code of its own first: returned, for `dropCodePage` once the process's
 * own code is in; null otherwise.
 */
export function moveSpecials(t: Target, special: SpecialMappings): Range | null {
  const want: Record<string, Range | undefined> = {
    vdso: special.vdso,
    vvar: special.vvar,
    vvar_vclock: special.vvarVclock,
  };
  const now = currentSpecials(t.pid);
  const gone = now.filter((s) => !want[s.name]);
  let codePage: Range | null = null;
  if (gone.some((s) => s.name === "vdso")) {
    const page = t.gaps.take(BigInt(PAGE_SIZE));
    const flags = MAP.PRIVATE | MAP.ANONYMOUS | MAP.FIXED_NOREPLACE;
    t.inj.call("mmap", page, PAGE_SIZE, PROT.READ | PROT.EXEC, flags, -1, 0);
    t.inj.mem.write(page, SYSCALL_PAGE_CODE); // /proc/PID/mem writes through the protection
    t.inj.site = page;
    codePage = { start: page, end: page + BigInt(PAGE_SIZE) };
  }
  for (const s of gone) t.inj.call("munmap", s.range.start, s.range.end - s.range.start);
  // The injector runs from the vdso: follow it wherever it moves.
  const move = (name: string, from: Range, to: bigint) => {
    const size = from.end - from.start;
    const siteOffset = t.inj.site - from.start;
    t.inj.call("mremap", from.start, size, size, MREMAP.MAYMOVE | MREMAP.FIXED, to);
    if (name === "vdso") t.inj.site = to + siteOffset;
  };
  const kept = now.filter((s) => want[s.name]);
  for (const s of kept) {
    const target = want[s.name]!;
    if (target.end - target.start !== s.range.end - s.range.start) {
      throw new RestoreError(`[${s.name}] of the image has another size than this kernel's`);
    }
  }
  const overlaps = (a: Range, b: Range) => a.start < b.end && b.start < a.end;
  const clash = kept.some((s) => kept.some((o) => o !== s && overlaps(want[s.name]!, o.range)));
  // Where a move could land on another special mapping, through a free area first.
  const from = new Map<string, Range>(kept.map((s) => [s.name, s.range]));
  if (clash) {
    for (const s of kept) {
      const size = s.range.end - s.range.start;
      const to = t.gaps.take(size);
      move(s.name, s.range, to);
      from.set(s.name, { start: to, end: to + size });
    }
  }
  for (const s of kept) {
    const at = from.get(s.name)!;
    if (at.start !== want[s.name]!.start) move(s.name, at, want[s.name]!.start);
  }
  return codePage;
}

/**
 * Points the injector at a `syscall` of the restored process's own code (its pages are in) and
 * unmaps the code page `moveSpecials` made: the process keeps no page of the restorer's.
 */
export function dropCodePage(t: Target, codePage: Range): void {
  const site = syscallSiteInCode(t.pid, t.inj.mem, codePage);
  if (site === null) {
    throw new RestoreError(
      `process ${t.pid} has no [vdso] and no syscall instruction in its code to finish with`,
    );
  }
  t.inj.site = site;
  t.inj.call("munmap", codePage.start, codePage.end - codePage.start);
}
