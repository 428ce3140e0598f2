/**
 * Mappings as such: a mapping's range, protection, sharing and growth, and where its contents
 * come from. Anonymous and file mappings are wholly this kind's; a mapping of shared memory or of
 * a stored file gets its source from that kind and is mapped here from the object's descriptor.
 *
 * Dump: `describeMapping`, and `fileSource`: a file mapping names its file by path with its
 * size, mtime and identity.
 *
 * Restore: `mappedFileProblem` checks first that the files are there and a private mapping's
 * file is unchanged (the pages not in the image come from it); `MappingMaker` maps each mapping
 * again at its address with MAP_FIXED_NOREPLACE, writable while its pages go in, and gives it
 * its final protection after.
 */
import { Errno, hugePageSizeFlag, MAP, O, PAGE_SIZE, PROT } from "../../ffi/mod.ts";
import { RestoreError } from "../errors.ts";
import type { MappingEntry, MappingSource, ProcessEntry } from "../image/schema.ts";
import type { Mapping } from "../inspect/mappings.ts";
import { keptFlags, type VmaState } from "./advice.ts";
import { hex, openInTarget, queueOpenInTarget, type Target } from "./target.ts";

/**
 * The entry of mapping `m` (`state`: what smaps says of it), its source anonymous and no pages
 * yet.
 */
export function describeMapping(m: Mapping, state: VmaState | undefined): MappingEntry {
  const flags = state?.flags ?? [];
  const advice = keptFlags(flags, { shared: m.shared, writable: m.prot.write });
  const pageSize = state?.pageSize ?? PAGE_SIZE;
  return {
    start: m.start,
    end: m.end,
    prot: (m.prot.read ? PROT.READ : 0) | (m.prot.write ? PROT.WRITE : 0) |
      (m.prot.exec ? PROT.EXEC : 0),
    shared: m.shared,
    offset: m.offset,
    kind: m.kind,
    name: m.path,
    source: { type: "anonymous" },
    growsDown: m.kind === "stack" || flags.includes("gd"),
    ...(advice.length ? { advice } : {}),
    ...(pageSize !== PAGE_SIZE ? { pageSize } : {}),
    pages: [],
  };
}

/** The source of a mapping that is neither shared memory nor a stored file: its file, if any. */
export function fileSource(m: Mapping): MappingSource {
  if (m.kind !== "file" || m.inode === 0n || !m.path?.startsWith("/")) {
    return { type: "anonymous" };
  }
  // The mapped file itself: its path may name nothing in the tool's mount namespace (a
  // container's own tmpfs).
  const st = Deno.statSync(m.mapFile);
  return {
    type: "file",
    path: m.path,
    size: st.size,
    mtimeMs: st.mtime?.getTime() ?? 0,
    inode: m.inode,
    dev: m.device,
  };
}

/**
 * Why the file at `path` (found under `root`: lib/inspect/mount_root.ts) is not the one of `size`
 * bytes and mtime `mtimeMs` dumped, or null.
 */
export function fileChanged(
  path: string,
  size: number,
  mtimeMs: number,
  root = "",
): string | null {
  try {
    const st = Deno.statSync(root + path);
    if (st.size !== size) return `${path} changed since the dump (size ${size} → ${st.size})`;
    if ((st.mtime?.getTime() ?? 0) !== mtimeMs) return `${path} changed since the dump (mtime)`;
    return null;
  } catch {
    return `${path} no longer exists`;
  }
}

function existsAsFile(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

/** Why the files of `mappings` (found under `root`) cannot be mapped again as they were, or null. */
export function mappedFileProblem(mappings: MappingEntry[], root = ""): string | null {
  for (const m of mappings) {
    if (m.source.type !== "file") continue;
    // A private mapping is the process's own copy of the file: its pages not in the image come
    // from the file, which must be as it was. A shared one is a window on a file others may
    // write as well (a database's -shm, a cache): that it changed is what sharing means.
    const why = m.shared
      ? (existsAsFile(root + m.source.path) ? null : `${m.source.path} no longer exists`)
      : fileChanged(m.source.path, m.source.size, m.source.mtimeMs, root);
    if (why) return why;
  }
  return null;
}

/**
 * Whether the mapping may be made writable (VmFlags `mw`): it is, or its image says so. Of
 * interest for a shared mapping, whose file must be open for writing for that.
 */
function mayWrite(m: MappingEntry): boolean {
  return (m.prot & PROT.WRITE) !== 0 || (m.advice ?? []).includes("mw");
}

/**
 * Why the hugetlb mappings of process `p` cannot be made on this machine (too few free huge pages
 * of their size: vm.nr_hugepages), or null.
 */
export function hugePageProblem(p: ProcessEntry): string | null {
  const need = new Map<number, { pages: number; first: MappingEntry }>();
  const objects = new Set<number>();
  for (const m of p.mappings) {
    if (!m.advice?.includes("ht") || !m.pageSize) continue;
    const src = m.source;
    if (src.type === "shmem" || src.type === "stored-file") {
      if (objects.has(src.object)) continue;
      objects.add(src.object);
    }
    const n = need.get(m.pageSize) ?? { pages: 0, first: m };
    n.pages += Math.ceil(Number(m.end - m.start) / m.pageSize);
    need.set(m.pageSize, n);
  }
  for (const [size, { pages, first }] of need) {
    const dir = `/sys/kernel/mm/hugepages/hugepages-${size / 1024}kB`;
    let free = 0;
    try {
      free = parseInt(Deno.readTextFileSync(`${dir}/free_hugepages`));
    } catch { /* no pool of that size */ }
    if (free < pages) {
      return `process ${p.pid} needs ${pages} free huge pages of ${size / 1024} kB for its ` +
        `hugetlb mappings (the first at ${hex(first.start)}-${hex(first.end)}), this machine has ` +
        `${free} (${dir}/nr_hugepages)`;
    }
  }
  return null;
}

/** Whether pages are written into the mapping at restore (it is private and has some). */
export function needsWrite(m: MappingEntry): boolean {
  return !m.shared && m.pages.length > 0;
}

/** Maps the mappings of one process again, each at its address. */
export class MappingMaker {
  /** Target fds of mapped files, by access and path (or object). */
  readonly #fileFds = new Map<string, number>();

  /** `t`: the process being made. */
  constructor(private readonly t: Target) {}

  /** The key of a mapped file's fd, and how it is opened. */
  #fileOpen(m: MappingEntry & { source: { type: "file" } }): { key: string; flags: number } {
    const writable = m.shared && mayWrite(m);
    return { key: `${writable ? "w" : "r"}:${m.source.path}`, flags: writable ? O.RDWR : O.RDONLY };
  }

  #fileFd(m: MappingEntry & { source: { type: "file" } }): number {
    const { key, flags } = this.#fileOpen(m);
    let fd = this.#fileFds.get(key);
    if (fd === undefined) {
      fd = openInTarget(this.t.inj, m.source.path, flags);
      this.#fileFds.set(key, fd);
    }
    return fd;
  }

  /**
   * Opens the files `mappings` map (those `create` maps from their file) in one run, instead of a
   * round trip each as `create` would: a program maps a dozen libraries.
   */
  openFiles(mappings: readonly MappingEntry[]): void {
    const opening = new Map<string, () => number>();
    for (const m of mappings) {
      if (m.source.type !== "file") continue;
      const { key, flags } = this.#fileOpen(m as MappingEntry & { source: { type: "file" } });
      if (this.#fileFds.has(key) || opening.has(key)) continue;
      opening.set(key, queueOpenInTarget(this.t.inj, m.source.path, flags));
    }
    for (const [key, fd] of opening) this.#fileFds.set(key, fd());
  }

  /**
   * A read-only descriptor, in the target, on object `id` (a shared mapping of it that may never
   * be made writable: the kernel clears may-write for a file opened read-only).
   */
  #readOnlyObjectFd(id: number, objectFd: (id: number) => number): number {
    const key = `object:${id}`;
    let fd = this.#fileFds.get(key);
    if (fd === undefined) {
      fd = openInTarget(this.t.inj, `/proc/self/fd/${objectFd(id)}`, O.RDONLY);
      this.#fileFds.set(key, fd);
    }
    return fd;
  }

  /**
   * Maps `m` at its address: anonymous memory, its file, or the memory object `objectFd` gives
   * the descriptor of. A private mapping stays writable until its pages are in.
   */
  create(m: MappingEntry, objectFd: (id: number) => number): void {
    const size = m.end - m.start;
    // Writable only while its pages go in: an extra PROT_WRITE would change how VMAs merge.
    const prot = needsWrite(m) ? m.prot | PROT.READ | PROT.WRITE : m.prot;
    const advice = m.advice ?? [];
    const type = m.shared ? MAP.SHARED : advice.includes("dp") ? MAP.DROPPABLE : MAP.PRIVATE;
    let flags = type | MAP.FIXED_NOREPLACE;
    if (m.growsDown) flags |= MAP.GROWSDOWN;
    if (advice.includes("nr")) flags |= MAP.NORESERVE;
    let fd = -1;
    const src = m.source;
    if (src.type === "anonymous") {
      flags |= MAP.ANONYMOUS;
      if (advice.includes("ht")) flags |= MAP.HUGETLB | hugePageSizeFlag(m.pageSize ?? PAGE_SIZE);
    } else if (src.type === "file") {
      fd = this.#fileFd(m as MappingEntry & { source: typeof src });
    } else if (src.type === "aio") {
      throw new RestoreError(`AIO ring ${hex(m.start)} is made by io_setup, not mmap`);
    } else if (m.shared && !mayWrite(m)) fd = this.#readOnlyObjectFd(src.object, objectFd);
    else fd = objectFd(src.object);
    // Queued: thousands of mappings are made in a few runs (the address space's `flush`).
    const offset = src.type === "anonymous" ? 0 : m.offset;
    this.t.inj.queue("mmap", [m.start, size, prot, flags, fd, offset], (r) => {
      if (r === m.start) return;
      const why = r < 0n
        ? `errno ${-r}${-r === BigInt(Errno.EEXIST) ? " (address taken)" : ""}`
        : `got ${hex(r)}`;
      throw new RestoreError(
        `cannot recreate mapping ${hex(m.start)}-${hex(m.end)} ${m.name ?? ""}: ${why}`,
      );
    });
  }

  /** Gives the mappings that were writable only for their pages their own protection. */
  protectFinal(mappings: MappingEntry[]): void {
    for (const m of mappings) {
      if (needsWrite(m) && m.prot !== (m.prot | PROT.READ | PROT.WRITE)) {
        this.t.inj.queue("mprotect", [m.start, m.end - m.start, m.prot]);
      }
    }
  }

  /** Closes the target's fds of mapped files. */
  closeFiles(): void {
    for (const fd of this.#fileFds.values()) this.t.inj.queue("close", [fd]);
    this.#fileFds.clear();
  }
}
