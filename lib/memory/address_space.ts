/**
 * A process's address space as a whole: in what order its kinds of memory are dumped, and made
 * again inside a process forked from the stub. Each kind holds its own dump and restore:
 * special.ts (vdso, vvar), mapping.ts (anonymous and file mappings), shmem.ts, sysv_shm.ts,
 * stored_file.ts (memfd, deleted files), advice.ts (madvise, mlock) and page_data.ts; the
 * tables of memory objects are in objects.ts. This file only calls them.
 *
 * Each process of a tree is built by itself, after the whole tree is forked, but a child that
 * still shares pages copy-on-write with its parent: forked once the parent's memory is in, it keeps
 * the mappings it inherits (cow.ts). docs/IMAGE.md says more.
 */
import { getRseqConfig, RSEQ_FLAG } from "../../ffi/mod.ts";
import type { ImageReader } from "../image/mod.ts";
import type {
  MappingEntry,
  MappingSource,
  ProcessEntry,
  SpecialMappings,
} from "../image/schema.ts";
import { Unsupported } from "../errors.ts";
import { listMappings, type Mapping } from "../inspect/mappings.ts";
import { RemoteMemory } from "../inspect/memory.ts";
import { dumpableRanges, guardRanges, USER_SPACE_END } from "../inspect/pages.ts";
import type { Injector } from "../ptrace/inject.ts";
import { installGuards, refusedFlag, restoreVmaAdvice, sealMappings, vmaStates } from "./advice.ts";
import { aioSource, makeAioRing } from "./aio.ts";
import { inheritable, inheritedMappings, type ParentMemory, prepareInherited } from "./cow.ts";
import { describeMapping, fileSource, MappingMaker } from "./mapping.ts";
import { MadeObjects, type MemoryObjects, type SharedObjects } from "./objects.ts";
import {
  breather,
  copyPrivatePages,
  type PageCopyContext,
  type PageStore,
  type ReusablePages,
  writePages,
} from "./page_data.ts";
import { makeSharedAnonymous, storeSharedAnonymous } from "./shmem.ts";
import {
  currentSpecials,
  dropCodePage,
  isMovedSpecial,
  moveSpecials,
  recordSpecial,
  specialRanges,
} from "./special.ts";
import {
  makeStoredFile,
  removeGhosts,
  restoreFileTimes,
  sealMemfds,
  storeFile,
} from "./stored_file.ts";
import {
  isSysvName,
  storeSysvSegment,
  SysvAttaches,
  type SysvSegment,
  sysvSegments,
} from "./sysv_shm.ts";
import { GapAllocator, type Range, type Target } from "./target.ts";

/** What to do with one mapping's contents: dump them, or skip them (restored as zeroes, or as
 * the file's own pages for a file mapping). The mapping itself is always recreated. */
export type ContentsDecision = "dump" | "skip";

/** What `dumpAddressSpace` dumps, and where to. */
export interface AddressSpaceDumpContext {
  /** The frozen process. */
  pid: number;
  /** Its mappings, listed before anything of the tool's was mapped into it. */
  mappings: Mapping[];
  /** Whether a mapping's contents are dumped. */
  decide(m: Mapping): ContentsDecision;
  /** Where private pages go. */
  pages: PageStore;
  /** Where memory objects go (shared memory, memfds, deleted files). */
  objects: MemoryObjects;
  /** Pre-copy: runs already in the image that are still the memory's contents. */
  precopied?: ReusablePages;
  /** Its parent in the dump, dumped before it: pages they share are stored once (cow.ts). */
  parent?: ParentMemory;
  /** The System V segments of its IPC namespace when not the tool's (a container's), by id. */
  segments?: Map<number, SysvSegment>;
  /** Its /proc/PID/smaps, read ahead while frozen (see `vmaStates`). */
  smaps?: Uint8Array;
}

/** What `dumpAddressSpace` returns. */
export interface AddressSpaceDump {
  /** Every mapping but the special ones, in address order. */
  mappings: MappingEntry[];
  /** Where the special mappings were. */
  special: SpecialMappings;
}

/**
 * Describes every mapping of a frozen process and copies the pages it alone holds; shared
 * memory, memfds and deleted files go to `ctx.objects`. The event loop turns now and then during
 * a long copy (`breather`).
 */
export async function dumpAddressSpace(ctx: AddressSpaceDumpContext): Promise<AddressSpaceDump> {
  const { pid, objects } = ctx;
  const mappings: MappingEntry[] = [];
  const special: SpecialMappings = {};
  let states = vmaStates(pid, ctx.smaps);
  // Read ahead while the dump injected syscalls: a mapping of ours may have been merged or split
  // in it meanwhile, and then it is read again.
  if (ctx.smaps && ctx.mappings.some((m) => states.get(m.start)?.end !== m.end)) {
    states = vmaStates(pid);
  }
  using memory = new RemoteMemory(pid);
  // Every page present or swapped, in one scan (below the top of user space: not [vsyscall]).
  const user = ctx.mappings.filter((m) => m.end <= USER_SPACE_END);
  const present = user.length ? dumpableRanges(pid, user[0].start, user.at(-1)!.end) : [];
  const copy: PageCopyContext = {
    pid,
    memory,
    present,
    pages: ctx.pages,
    precopied: ctx.precopied,
    breathe: breather(),
  };
  let segments = ctx.segments; // else the tool's, read once when first needed
  const source = (m: Mapping, keep: boolean): MappingSource => {
    switch (m.kind) {
      case "shared-anonymous": {
        if (!keep) return { type: "anonymous" };
        const segment = isSysvName(m.path)
          ? (segments ??= sysvSegments()).get(Number(m.inode))
          : undefined;
        const object = segment
          ? storeSysvSegment(objects, m, segment)
          : storeSharedAnonymous(objects, m, states.get(m.start)?.pageSize);
        return { type: "shmem", object };
      }
      case "memfd":
      case "deleted-file":
        return { type: "stored-file", object: storeFile(objects, m.kind, m.path!, m.mapFile) };
      case "aio":
        return aioSource(m);
      default:
        return fileSource(m);
    }
  };
  for (const m of ctx.mappings) {
    if (recordSpecial(special, m)) continue;
    const state = states.get(m.start);
    const refused = refusedFlag(state?.flags ?? [], m.kind, ctx.precopied !== undefined);
    if (refused) {
      throw new Unsupported(
        `process ${pid}: mapping ${m.start.toString(16)}-${m.end.toString(16)} ` +
          `${m.path ?? `(${m.kind})`} cannot be restored as it is: ${refused}`,
      );
    }
    const keep = ctx.decide(m) === "dump";
    const entry = describeMapping(m, state);
    entry.source = source(m, keep);
    // Guard pages hold no data (and cannot be read): left out of the copy, installed again.
    const guards = state?.flags.includes("gu") ? guardRanges(pid, m.start, m.end) : [];
    if (guards.length) entry.guards = guards;
    if (keep && !m.shared) {
      const parent = ctx.parent && inheritable(ctx.parent, entry) ? ctx.parent.pid : undefined;
      const shared = await copyPrivatePages(copy, m, entry.pages, guards, parent);
      if (shared.length) entry.sharedWithParent = shared;
    }
    mappings.push(entry);
  }
  return { mappings, special };
}

/**
 * Builds the dumped address space inside a process made from the stub. `AddressSpaceBuilder`'s
 * steps run in this order: `empty`, `moveSpecials`, `placeScratch`, `createObjects`,
 * `createMappings`, `fillPages`, `finish`, `seal`; after the descriptors, `closeObjects`; last of
 * all, once nothing else changes mappings, `sealMappings`.
 */
export class AddressSpaceBuilder {
  /** The memory objects made in the process (the descriptor table reopens some). */
  readonly objects: MadeObjects;
  /** Ghost files made for deleted files, while they exist (stored_file.ts). */
  readonly #ghosts: string[] = [];
  readonly #target: Target;
  readonly #sysv: SysvAttaches;
  readonly #mappings: MappingMaker;
  /** The injector's own code page while the process has no vdso to run it from. */
  #codePage: Range | null = null;

  /**
   * `pid` is being made from the stub through `inj`, to hold what `image` describes;
   * `inContainerIpc`: in a container's IPC namespace, whose init made its System V segments.
   */
  constructor(
    private readonly pid: number,
    private readonly inj: Injector,
    private readonly image: ProcessEntry,
    inContainerIpc = false,
  ) {
    const taken: Range[] = image.mappings.map((m) => ({ start: m.start, end: m.end }));
    taken.push(...specialRanges(image.special));
    taken.push(...currentSpecials(pid).map((s) => s.range));
    this.#target = { pid, inj, gaps: new GapAllocator(taken) };
    this.objects = new MadeObjects(inj);
    this.#sysv = new SysvAttaches(this.#target, image.mappings, inContainerIpc);
    this.#mappings = new MappingMaker(this.#target);
  }

  /**
   * Drops the stub's rseq registration, descriptors and every mapping but the special ones and
   * those inherited from the parent (cow.ts). A process sharing its maker's descriptor table
   * (CLONE_FILES) leaves it alone: the maker empties it, and may hold its memory objects in it.
   * `keepFd` stays open (what the restore still needs in it, closed by the restore).
   */
  empty(keepFd?: number): void {
    // One save of the registers and one settle for all of these calls, not one each.
    this.inj.batch(() => {
      const rseq = getRseqConfig(this.inj.tid);
      if (rseq.abiPointer !== 0n) {
        this.inj.call("rseq", rseq.abiPointer, rseq.length, RSEQ_FLAG.UNREGISTER, rseq.signature);
      }
      if (this.image.sharesFilesWith === undefined) {
        if (keepFd === undefined) this.inj.call("close_range", 0, 0xffffffff, 0); // every fd
        else {
          if (keepFd > 0) this.inj.call("close_range", 0, keepFd - 1, 0);
          this.inj.call("close_range", keepFd + 1, 0xffffffff, 0);
        }
      }
      // Everything around the kept mappings, a few ranges at a time: munmap skips the holes.
      const listed = listMappings(this.pid).filter((m) => m.kind !== "vsyscall");
      const keep: Range[] = [...listed.filter(isMovedSpecial), ...inheritedMappings(this.image)]
        .sort((a, b) => Number(a.start - b.start));
      let at = listed.reduce((lo, m) => m.start < lo ? m.start : lo, keep[0]?.start ?? 0n);
      const end = listed.reduce((hi, m) => m.end > hi ? m.end : hi, 0n);
      for (const k of [...keep, { start: end, end }]) {
        if (k.start > at) this.inj.call("munmap", at, k.start - at);
        if (k.end > at) at = k.end;
      }
    });
    this.inj.dropScratch();
  }

  /**
   * Moves this kernel's vvar, vvar_vclock and vdso to where the dumped process had them (or
   * unmaps those it had unmapped).
   */
  moveSpecials(): void {
    this.#codePage = moveSpecials(this.#target, this.image.special);
  }

  /** Maps the injector's scratch region in a gap of the dumped layout. */
  placeScratch(): void {
    this.inj.scratchAt(this.#target.gaps.take(this.inj.scratchBytes));
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
        this.objects.add(obj.id, this.#sysv.prepare(obj, obj.sysv));
        continue;
      }
      const fd = obj.key ? shared?.take(this.inj, obj.key) : undefined;
      if (fd !== undefined) {
        this.objects.add(obj.id, { fd });
        continue;
      }
      if (obj.key) shared?.add(obj.key, this.pid, this.objects, obj.id);
      this.objects.add(
        obj.id,
        obj.kind === "shmem"
          ? makeSharedAnonymous(this.#target, obj)
          : makeStoredFile(this.#target, obj, this.#ghosts),
      );
    }
  }

  /** Recreates every mapping at its address; private ones writable until pages are in. */
  createMappings(): void {
    // Every file mapped from its path (not one inherited from the parent), opened together.
    this.#mappings.openFiles(this.image.mappings.filter((m) => !m.sharedWithParent?.length));
    for (const m of this.image.mappings) {
      const src = m.source;
      if (m.sharedWithParent?.length) prepareInherited(this.inj, m);
      else if (src.type === "shmem" && this.#sysv.has(src.object)) this.#sysv.attach(m, src.object);
      else if (src.type === "aio") makeAioRing(this.#target, { ...m, source: src });
      else this.#mappings.create(m, (id) => this.objects.fd(id));
    }
    this.inj.flush(); // their pages go in next, from outside
  }

  /**
   * Writes every page run of `entry` (by default the image's; a lazy restore's holds those
   * written before the process runs) into the process and its memory objects.
   */
  fillPages(
    reader: ImageReader,
    buffers: [Uint8Array, Uint8Array],
    onProgress?: (bytes: number) => void,
    entry: ProcessEntry = this.image,
  ): Promise<number> {
    return writePages({
      pid: this.pid,
      image: entry,
      reader,
      buffers,
      writerOf: (id) => this.objects.writer(id),
      onProgress,
    });
  }

  /** Final protections and advice, and the temporary fds and mappings gone. Object fds stay open
   * until the descriptors are restored (they may be reopened); `closeObjects` closes them. */
  finish(): void {
    this.#mappings.protectFinal(this.image.mappings);
    installGuards(this.inj, this.image.mappings);
    restoreVmaAdvice(this.inj, this.image.mappings);
    this.#mappings.closeFiles();
    this.objects.closeWriters();
    this.objects.unmapTemps();
    if (this.#codePage) dropCodePage(this.#target, this.#codePage);
    this.#codePage = null;
    this.#sysv.removeMarked(); // only now do mappings hold the segments
    this.inj.flush();
  }

  /** Seals memfds again, now that their contents are in. */
  seal(): void {
    sealMemfds(this.inj, this.image.objects, (id) => this.objects.fd(id));
  }

  /**
   * Gives deleted files their access and modification times again: once every process of the
   * tree has mapped them, as each mmap of a file sets its access time (a pool's workers map the
   * semaphores their parent made).
   */
  restoreFileTimes(): void {
    restoreFileTimes(this.inj, this.image.objects, (id) => this.objects.fd(id));
  }

  /**
   * Seals the mappings that were sealed (mseal): after every other change to the address space
   * of the restore, as they can no longer be unmapped, moved or made writable.
   */
  sealMappings(): void {
    sealMappings(this.inj, this.image.mappings);
    this.inj.flush();
  }

  /** Closes the target fds of memory objects. */
  closeObjects(): void {
    this.objects.closeFds();
  }

  /** Local cleanup after a failure (the target itself is killed by the caller). */
  abort(): void {
    this.objects.abort();
    this.#sysv.abort();
    removeGhosts(this.#ghosts);
  }
}
