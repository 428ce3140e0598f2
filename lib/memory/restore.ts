/**
 * Restore side of memory: empty the new process's address space but the special mappings, move
 * [vvar], [vvar_vclock] and [vdso] to the dumped addresses, recreate every mapping at its address
 * with its protection and flags, shared memory shared again, and fill the pages.
 */
import {
  close,
  Errno,
  getRseqConfig,
  O,
  open,
  processVmWrite,
  pwrite,
  SYS,
} from "../../ffi/mod.ts";
import { RestoreError } from "../errors.ts";
import type { ImageReader } from "../image/mod.ts";
import { type Injector, SCRATCH_SIZE } from "../ptrace/inject.ts";
import type { MappingEntry, MemoryObjectEntry, PageRun, ProcessEntry } from "../image/schema.ts";
import { innermostPid } from "../inspect/procfs.ts";
import { ensureSegment, removeSegment } from "./sysv_shm.ts";
import { restoreVmaAdvice } from "./advice.ts";

const PROT_READ = 1;
const PROT_WRITE = 2;
const PROT_EXEC = 4;
const SHM_RDONLY = 0o10000;
const SHM_EXEC = 0o100000;
const MAP_SHARED = 0x01;
const MAP_PRIVATE = 0x02;
const MAP_ANONYMOUS = 0x20;
const MAP_GROWSDOWN = 0x100;
const MAP_FIXED_NOREPLACE = 0x100000;
const MREMAP_MAYMOVE = 1;
const MREMAP_FIXED = 2;
const RSEQ_FLAG_UNREGISTER = 1;

/** A size rounded up to whole pages (at least one). */
const pageAlign = (size: number): bigint => BigInt(Math.max(size, 4096) + 4095 & ~4095);
const VSYSCALL = 0xffffffffff600000n;

interface Range {
  start: bigint;
  end: bigint;
}

const hex = (n: bigint) => `0x${n.toString(16)}`;
const overlaps = (a: Range, b: Range) => a.start < b.end && b.start < a.end;

/** Hands out address ranges that neither the dumped layout nor the special mappings use. */
class GapAllocator {
  #next: bigint;
  constructor(private readonly taken: Range[]) {
    const candidates = [0x200000000000n, 0x300000000000n, 0x100000000000n, 0x500000000000n];
    const room = 0x10000000000n; // 1 TiB of room per candidate
    const free = candidates.find((c) =>
      !taken.some((t) => overlaps(t, { start: c, end: c + room }))
    );
    if (free === undefined) throw new RestoreError("no free address range to work in");
    this.#next = free;
  }

  take(size: bigint): bigint {
    const start = this.#next;
    this.#next += (size + 0xfffn) & ~0xfffn;
    return start;
  }
}

/** Memory objects already made by a process of the tree being restored, by key. */
export type SharedObjects = Map<string, { pid: number; builder: AddressSpaceBuilder; id: number }>;

/**
 * A duplicate, in the process `inj` runs in, of descriptor `fd` of process `pid`: the same open
 * file (pidfd_getfd), as a fork would have shared it.
 */
export function takeFd(inj: Injector, pid: number, fd: number): number {
  // The owner's pid as the target names it: they share the innermost pid namespace.
  const pidfd = inj.call("pidfd_open", innermostPid(pid), 0);
  try {
    return Number(inj.call("pidfd_getfd", pidfd, fd, 0));
  } finally {
    inj.call("close", pidfd);
  }
}

/** Builds the dumped address space inside a process made from the stub. */
export class AddressSpaceBuilder {
  readonly #gaps: GapAllocator;
  /** Target fds of stored memory objects (memfd, deleted file, shared anonymous memory). */
  readonly #objectFds = new Map<number, number>();
  /** Temporary mappings of shared anonymous objects, to be unmapped at the end. */
  readonly #shmemTemps = new Map<number, Range>();
  /** Local fds for writing object contents, and where in them an object starts. */
  readonly #objectWriters = new Map<number, { fd: number; base: bigint }>();
  /** System V segments of this image, by object id. */
  readonly #segments = new Map<number, { shmid: number; size: number }>();
  /** Attaches made so far (`shmid@base`). */
  readonly #attaches = new Set<string>();
  /** System V segments made again by this restore: removed if it fails. */
  readonly #madeSegments: number[] = [];
  /** System V segments to mark for removal once mapped, as they were at dump. */
  readonly #segmentsToRemove: number[] = [];
  readonly #fileFds = new Map<string, number>();
  /** Ghost files made for deleted files, removed once opened. */
  readonly ghosts: string[] = [];

  constructor(
    private readonly pid: number,
    private readonly inj: Injector,
    private readonly image: ProcessEntry,
  ) {
    const taken: Range[] = image.mappings.map((m) => ({ start: m.start, end: m.end }));
    for (const s of [image.special.vdso, image.special.vvar, image.special.vvarVclock]) {
      if (s) taken.push(s);
    }
    taken.push(...this.#currentSpecials().map((s) => s.range));
    this.#gaps = new GapAllocator(taken);
  }

  #currentSpecials(): { name: string; range: Range }[] {
    const out: { name: string; range: Range }[] = [];
    for (const line of Deno.readTextFileSync(`/proc/${this.pid}/maps`).split("\n")) {
      const name = line.match(/\[(vdso|vvar|vvar_vclock)\]$/)?.[1];
      if (!name) continue;
      const [a, b] = line.split(" ")[0].split("-").map((h) => BigInt(`0x${h}`));
      out.push({ name, range: { start: a, end: b } });
    }
    return out;
  }

  /** Drops the stub's rseq registration, descriptors and every mapping but the special ones. */
  empty(): void {
    const rseq = getRseqConfig(this.inj.tid);
    if (rseq.abiPointer !== 0n) {
      this.inj.call("rseq", rseq.abiPointer, rseq.length, RSEQ_FLAG_UNREGISTER, rseq.signature);
    }
    this.inj.call("close_range", 0, 0xffffffff, 0);
    const specials = this.#currentSpecials().map((s) => s.range);
    for (const line of Deno.readTextFileSync(`/proc/${this.pid}/maps`).split("\n")) {
      if (!line) continue;
      const [a, b] = line.split(" ")[0].split("-").map((h) => BigInt(`0x${h}`));
      if (a === VSYSCALL || specials.some((s) => s.start === a)) continue;
      this.inj.call("munmap", a, b - a);
    }
    this.inj.dropScratch();
  }

  /** Moves this kernel's vvar, vvar_vclock and vdso to where the dumped process had them. */
  moveSpecials(): void {
    const want: Record<string, Range | undefined> = {
      vdso: this.image.special.vdso,
      vvar: this.image.special.vvar,
      vvar_vclock: this.image.special.vvarVclock,
    };
    const now = this.#currentSpecials();
    const vdsoNow = now.find((s) => s.name === "vdso")!.range;
    const siteOffset = this.inj.site - vdsoNow.start;
    // The injector runs from the vdso: follow it wherever it moves.
    const move = (name: string, from: Range, to: bigint) => {
      this.#mremap(from, to);
      if (name === "vdso") this.inj.site = to + siteOffset;
    };
    // Through a free area first, so no move lands on another special mapping.
    const parked = new Map<string, bigint>();
    for (const s of now) {
      if (!want[s.name]) continue;
      const to = this.#gaps.take(s.range.end - s.range.start);
      move(s.name, s.range, to);
      parked.set(s.name, to);
    }
    for (const s of now) {
      const target = want[s.name];
      const from = parked.get(s.name);
      if (!target || from === undefined) continue;
      const size = s.range.end - s.range.start;
      if (target.end - target.start !== size) {
        throw new RestoreError(`[${s.name}] of the image has another size than this kernel's`);
      }
      move(s.name, { start: from, end: from + size }, target.start);
    }
  }

  #mremap(from: Range, to: bigint): void {
    const size = from.end - from.start;
    this.inj.call("mremap", from.start, size, size, MREMAP_MAYMOVE | MREMAP_FIXED, to);
  }

  /** Maps the injector's scratch region in a gap of the dumped layout. */
  placeScratch(): void {
    this.inj.scratchAt(this.#gaps.take(SCRATCH_SIZE));
  }

  #putString(s: string): bigint {
    return this.inj.put(new TextEncoder().encode(s + "\0"), 4096);
  }

  #openInTarget(path: string, flags: number): number {
    return Number(this.inj.call("openat", -100, this.#putString(path), flags, 0));
  }

  /**
   * Makes every stored memory object inside the target (contents are filled later). An object
   * another process of the tree already made (`shared`, by key) is taken from it instead, so
   * both map the very same memory.
   */
  createObjects(shared?: SharedObjects): void {
    for (const obj of this.image.objects) {
      // A System V segment is found by its id by every process: nothing to hand over.
      if (obj.kind === "sysv-shm" && obj.sysv) {
        this.#prepareSegment(obj, obj.sysv);
        continue;
      }
      const owner = obj.key ? shared?.get(obj.key) : undefined;
      if (owner) {
        this.#objectFds.set(obj.id, takeFd(this.inj, owner.pid, owner.builder.objectFd(owner.id)));
        continue;
      }
      if (obj.key) shared?.set(obj.key, { pid: this.pid, builder: this, id: obj.id });
      if (obj.kind === "shmem") {
        const size = pageAlign(obj.size);
        const at = this.#gaps.take(size);
        this.inj.call(
          "mmap",
          at,
          size,
          PROT_READ | PROT_WRITE,
          MAP_SHARED | MAP_ANONYMOUS |
            MAP_FIXED_NOREPLACE,
          -1,
          0,
        );
        const range = { start: at, end: at + size };
        this.#shmemTemps.set(obj.id, range);
        const mapFile = `map_files/${at.toString(16)}-${range.end.toString(16)}`;
        this.#objectFds.set(obj.id, this.#openInTarget(`/proc/self/${mapFile}`, O.RDWR));
        this.#objectWriters.set(obj.id, {
          fd: open(`/proc/${this.pid}/${mapFile}`, O.RDWR),
          base: 0n,
        });
      } else if (obj.kind === "memfd") {
        const fd = Number(
          this.inj.call("memfd_create", this.#putString(obj.name), 0x2 /* ALLOW_SEALING */),
        );
        this.inj.call("ftruncate", fd, obj.size);
        this.#objectFds.set(obj.id, fd);
        this.#objectWriters.set(obj.id, {
          fd: open(`/proc/${this.pid}/fd/${fd}`, O.RDWR),
          base: 0n,
        });
      } else {
        // A deleted file: make it again under its old name (or beside it), open it, unlink it.
        let path = obj.name;
        try {
          Deno.lstatSync(path);
          path = `${obj.name}.tardigrade-${crypto.randomUUID().slice(0, 8)}`;
        } catch { /* the old name is free */ }
        try {
          Deno.writeFileSync(path, new Uint8Array(0), { mode: obj.mode || 0o600 });
        } catch (err) {
          throw new RestoreError(`cannot recreate deleted file ${obj.name}: ${err}`);
        }
        this.ghosts.push(path);
        Deno.truncateSync(path, obj.size);
        this.#objectFds.set(obj.id, this.#openInTarget(path, O.RDWR));
        this.#objectWriters.set(obj.id, { fd: open(path, O.RDWR), base: 0n });
        Deno.removeSync(path);
        this.ghosts.pop();
      }
    }
  }

  /**
   * A System V segment: made again if it is gone (sysv_shm.ts). Only a segment made again is
   * filled from the image, through an attach of its own for the time of the restore and
   * /proc/PID/mem (the segment's file cannot be written); a live one keeps its contents.
   */
  #prepareSegment(obj: MemoryObjectEntry, sysv: NonNullable<MemoryObjectEntry["sysv"]>): void {
    const { shmid, removed } = sysv;
    this.#segments.set(obj.id, { shmid, size: obj.size });
    const made = ensureSegment({ ...sysv, mode: obj.mode, size: obj.size });
    if (removed) this.#segmentsToRemove.push(shmid);
    if (!made) return;
    this.#madeSegments.push(shmid);
    const at = this.#gaps.take(pageAlign(obj.size));
    this.#shmat(shmid, at, 0);
    this.#shmemTemps.set(obj.id, { start: at, end: at + pageAlign(obj.size) });
    this.#objectWriters.set(obj.id, { fd: open(`/proc/${this.pid}/mem`, O.RDWR), base: at });
  }

  #shmat(shmid: number, at: bigint, flags: number): void {
    const got = this.inj.raw(SYS.shmat, shmid, at, flags);
    if (got !== at) {
      const why = got < 0n ? `errno ${-got}` : `got ${hex(got)}`;
      throw new RestoreError(`cannot attach System V shared memory ${shmid} at ${hex(at)}: ${why}`);
    }
  }

  /**
   * One mapping of a System V segment. Mappings are attaches (shmat), not mmaps of its file: only
   * an attach counts in shm_nattch and can be detached with shmdt. The first piece of an attach
   * (pieces share `start - offset`) attaches the whole segment, read-only unless a piece is
   * writable, and unmaps what the image lacks of it; each piece then gets its protection.
   */
  #attachPiece(m: MappingEntry, object: number, segment: { shmid: number; size: number }): void {
    const base = m.start - m.offset;
    const key = `${segment.shmid}@${base}`;
    const pieces = this.image.mappings.filter((x) =>
      x.source.type === "shmem" && x.source.object === object && x.start - x.offset === base
    );
    const write = pieces.some((x) => x.prot & PROT_WRITE);
    const exec = pieces.some((x) => x.prot & PROT_EXEC);
    const attachProt = PROT_READ | (write ? PROT_WRITE : 0) | (exec ? PROT_EXEC : 0);
    if (!this.#attaches.has(key)) {
      this.#attaches.add(key);
      this.#shmat(segment.shmid, base, (write ? 0 : SHM_RDONLY) | (exec ? SHM_EXEC : 0));
      let at = base;
      const end = base + pageAlign(segment.size);
      for (const piece of [...pieces].sort((a, b) => Number(a.start - b.start))) {
        if (piece.start > at) this.inj.call("munmap", at, piece.start - at);
        at = piece.end;
      }
      if (at < end) this.inj.call("munmap", at, end - at);
    }
    if (m.prot !== attachProt) this.inj.call("mprotect", m.start, m.end - m.start, m.prot);
  }

  /** Moves the objects' target fds to `base` and up, out of the way of the restored fds. */
  relocateObjectFds(base: number): void {
    for (const [id, fd] of this.#objectFds) {
      const moved = Number(this.inj.call("fcntl", fd, 0, /* F_DUPFD */ base));
      this.inj.call("close", fd);
      this.#objectFds.set(id, moved);
    }
  }

  /** The target fd of a stored memory object. */
  objectFd(id: number): number {
    const fd = this.#objectFds.get(id);
    if (fd === undefined) throw new RestoreError(`image refers to memory object ${id} it lacks`);
    return fd;
  }

  #fileFd(m: MappingEntry & { source: { type: "file" } }): number {
    const writable = m.shared && (m.prot & PROT_WRITE) !== 0;
    const key = `${writable ? "w" : "r"}:${m.source.path}`;
    let fd = this.#fileFds.get(key);
    if (fd === undefined) {
      fd = this.#openInTarget(m.source.path, writable ? O.RDWR : O.RDONLY);
      this.#fileFds.set(key, fd);
    }
    return fd;
  }

  #needsWrite(m: MappingEntry): boolean {
    return !m.shared && m.pages.length > 0;
  }

  /** Recreates every mapping at its address; private ones writable until pages are in. */
  createMappings(): void {
    for (const m of this.image.mappings) {
      const size = m.end - m.start;
      // Writable only while its pages go in: an extra PROT_WRITE would change how VMAs merge.
      const prot = this.#needsWrite(m) ? m.prot | PROT_READ | PROT_WRITE : m.prot;
      let flags = (m.shared ? MAP_SHARED : MAP_PRIVATE) | MAP_FIXED_NOREPLACE;
      if (m.growsDown) flags |= MAP_GROWSDOWN;
      let fd = -1;
      const src = m.source;
      const segment = src.type === "shmem" ? this.#segments.get(src.object) : undefined;
      if (segment) {
        this.#attachPiece(m, (src as { object: number }).object, segment);
        continue;
      }
      if (src.type === "anonymous") flags |= MAP_ANONYMOUS;
      else if (src.type === "file") fd = this.#fileFd(m as MappingEntry & { source: typeof src });
      else fd = this.objectFd(src.object);
      const r = this.inj.raw(
        SYS.mmap,
        m.start,
        size,
        prot,
        flags,
        fd,
        src.type === "anonymous" ? 0 : m.offset,
      );
      if (r !== m.start) {
        const why = r < 0n
          ? `errno ${-r}${-r === BigInt(Errno.EEXIST) ? " (address taken)" : ""}`
          : `got ${hex(r)}`;
        throw new RestoreError(
          `cannot recreate mapping ${hex(m.start)}-${hex(m.end)} ${m.name ?? ""}: ${why}`,
        );
      }
    }
  }

  /**
   * Writes every page run from the image: process memory and memory objects. Two buffers take
   * turns: while one extent is written into the process, the next is read from the image on
   * another thread (the read and the write are of about the same speed, so this nearly halves
   * the time of a large restore).
   */
  async fillPages(
    reader: ImageReader,
    buffers: [Uint8Array, Uint8Array],
    onProgress?: (bytes: number) => void,
  ): Promise<number> {
    const byExtent = new Map<number, { run: PageRun; object?: number }[]>();
    const add = (run: PageRun, object?: number) => {
      let list = byExtent.get(run.extent);
      if (!list) byExtent.set(run.extent, list = []);
      list.push({ run, object });
    };
    for (const m of this.image.mappings) for (const run of m.pages) add(run);
    for (const o of this.image.objects) for (const run of o.pages) add(run, o.id);
    const order = [...byExtent].sort((a, b) => a[0] - b[0]);
    const read = (k: number) => {
      const extent = this.image.extents[order[k][0]];
      return reader.readExtentAsync(extent, buffers[k % 2].subarray(0, extent.length));
    };
    let bytes = 0;
    let next = order.length ? read(0) : undefined;
    try {
      for (let k = 0; k < order.length; k++) {
        const data = await next!;
        next = k + 1 < order.length ? read(k + 1) : undefined;
        const extent = this.image.extents[order[k][0]];
        reader.verifyExtent(extent, data);
        this.#writeExtent(data, order[k][1]);
        bytes += extent.length;
        onProgress?.(bytes);
      }
    } finally {
      // A failure must not leave a read going into a buffer that is used again.
      await next?.catch(() => {});
    }
    return bytes;
  }

  /** Scatters one extent's bytes over the process's addresses and its memory objects. */
  #writeExtent(data: Uint8Array, runs: { run: PageRun; object?: number }[]): void {
    const vm = runs.filter((r) => r.object === undefined).map((r) => r.run);
    // One process_vm_writev per batch of iovecs.
    for (let i = 0; i < vm.length; i += 512) {
      const batch = vm.slice(i, i + 512);
      const first = batch[0].offset;
      const last = batch[batch.length - 1];
      const local = data.subarray(first, last.offset + last.length);
      const contiguous = batch.every((r, k) =>
        k === 0 || r.offset === batch[k - 1].offset + batch[k - 1].length
      );
      if (contiguous) {
        const n = processVmWrite(
          this.pid,
          local,
          batch.map((r) => ({ remote: r.start, len: r.length })),
        );
        if (n !== local.length) {
          throw new RestoreError(`short write of pages at ${hex(batch[0].start)}`);
        }
      } else {
        for (const r of batch) {
          processVmWrite(this.pid, data.subarray(r.offset, r.offset + r.length), [{
            remote: r.start,
            len: r.length,
          }]);
        }
      }
    }
    for (const { run, object } of runs) {
      if (object === undefined) continue;
      const writer = this.#objectWriters.get(object);
      if (!writer) continue; // made by another process of the tree (filled there), or live
      pwrite(
        writer.fd,
        data.subarray(run.offset, run.offset + run.length),
        writer.base + run.start,
      );
    }
  }

  /** Final protections, and the temporary fds and mappings gone. Object fds stay open until
   * the descriptors are restored (they may be reopened); `closeObjects` closes them. */
  finish(): void {
    for (const m of this.image.mappings) {
      if (this.#needsWrite(m) && m.prot !== (m.prot | PROT_READ | PROT_WRITE)) {
        this.inj.call("mprotect", m.start, m.end - m.start, m.prot);
      }
    }
    restoreVmaAdvice(this.inj, this.image.mappings);
    for (const fd of this.#fileFds.values()) this.inj.call("close", fd);
    this.#fileFds.clear();
    for (const { fd } of this.#objectWriters.values()) close(fd);
    this.#objectWriters.clear();
    for (const r of this.#shmemTemps.values()) this.inj.call("munmap", r.start, r.end - r.start);
    this.#shmemTemps.clear();
    // Marked for removal only now that the mappings hold it: it goes with the last of them.
    for (const shmid of this.#segmentsToRemove.splice(0)) removeSegment(shmid);
  }

  /** Seals memfds again, now that their contents are in (F_ADD_SEALS). */
  seal(): void {
    for (const obj of this.image.objects) {
      if (obj.kind === "memfd" && obj.seals) {
        this.inj.call("fcntl", this.objectFd(obj.id), 1033, /* F_ADD_SEALS */ obj.seals);
      }
    }
  }

  /** Closes the target fds of memory objects. */
  closeObjects(): void {
    for (const fd of this.#objectFds.values()) this.inj.call("close", fd);
    this.#objectFds.clear();
  }

  /** Local cleanup after a failure (the target itself is killed by the caller). */
  abort(): void {
    for (const { fd } of this.#objectWriters.values()) {
      try {
        close(fd);
      } catch { /* ignore */ }
    }
    for (const shmid of this.#madeSegments) removeSegment(shmid);
    for (const path of this.ghosts) {
      try {
        Deno.removeSync(path);
      } catch { /* ignore */ }
    }
  }
}
