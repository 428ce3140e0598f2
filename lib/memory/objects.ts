/**
 * Memory objects: what mappings and descriptors refer to by number because it cannot be
 * reopened by path (shared anonymous memory, System V segments, memfds, deleted files). The
 * kinds (shmem.ts, sysv_shm.ts, stored_file.ts) describe and make them; this file keeps the
 * tables.
 *
 * Dump: `MemoryObjects`, one process's objects, each stored once per key with its data.
 *
 * Restore: `MadeObjects`, what one process being made holds of its objects (descriptors in it,
 * temporary mappings, where the tool writes their contents); `SharedObjects`, which process of
 * the tree made the object of each key, so that the others take that very object (pidfd_getfd),
 * as the fork that shared it had.
 */
import { close, F, O, open, PAGE_SIZE, pageUp, SyscallError } from "../../ffi/mod.ts";
import { RestoreError } from "../errors.ts";
import type { MemoryObjectEntry } from "../image/schema.ts";
import { takeFd } from "../ptrace/fd_taker.ts";
import type { Injector } from "../ptrace/inject.ts";
import { type ObjectWriter, type PageStore, storeFileData } from "./page_data.ts";
import type { Range } from "./target.ts";

/** An object's entry as its kind describes it; the table adds id, key and pages. */
export type ObjectDescription = Omit<MemoryObjectEntry, "id" | "key" | "pages">;

/** Runs `body` with `path` open read-only (raw fd), closed after. */
export function withOpenFile<T>(path: string, body: (fd: number) => T): T {
  const fd = openNoAtime(path);
  try {
    return body(fd);
  } finally {
    close(fd);
  }
}

/**
 * Opens `path` to read without setting its access time (O_NOATIME): the dump's read must not
 * change the file, which other processes of the tree, stored after, record the times of (a
 * Python pool's workers map the semaphores their parent made). O_NOATIME needs the file's owner
 * or CAP_FOWNER; without them the read sets it as any reader would.
 */
function openNoAtime(path: string): number {
  try {
    return open(path, O.RDONLY | O.NOATIME);
  } catch (err) {
    if (!(err instanceof SyscallError) || err.code !== "EPERM") throw err;
    return open(path, O.RDONLY);
  }
}

/** The length of a mapping of a whole object of `size` bytes: whole pages, at least one. */
export function objectSpan(size: number): bigint {
  return pageUp(BigInt(Math.max(size, PAGE_SIZE)));
}

/** The memory objects of one process being dumped, each stored once (by key). */
export class MemoryObjects {
  /** The entries, in the order they were stored (their ids). */
  readonly entries: MemoryObjectEntry[] = [];
  readonly #byKey = new Map<string, MemoryObjectEntry>();

  /**
   * `pages` stores the objects' data, unless `storeFor` gives a store for an object's key (an
   * incremental dump compares each object with the parent's object of the same key).
   */
  constructor(
    private readonly pages: PageStore,
    private readonly storeFor?: (key: string | undefined) => PageStore,
  ) {}

  /** The id of the object stored under `key`, if one is. */
  idOf(key: string): number | undefined {
    return this.#byKey.get(key)?.id;
  }

  /**
   * Stores the object open on `fd` under `key` (unless one is stored already), with the parts of
   * its first `size` bytes that hold data; returns its id.
   */
  store(key: string, fd: number, size: number, description: ObjectDescription): number {
    const known = this.#byKey.get(key);
    if (known) return known.id;
    const entry: MemoryObjectEntry = { id: this.entries.length, key, pages: [], ...description };
    this.entries.push(entry);
    this.#byKey.set(key, entry);
    storeFileData(this.storeFor?.(key) ?? this.pages, fd, size, entry.pages);
    return entry.id;
  }
}

/** What a kind made inside the target for one object. */
export interface MadeObject {
  /** The target's descriptor on it (none for a System V segment: it is found by its id). */
  fd?: number;
  /** A temporary mapping of it in the target, unmapped once the pages are in. */
  temp?: Range;
  /** Where the tool writes its contents (none where they are not to be written). */
  writer?: ObjectWriter;
}

/** The memory objects of one process being restored, by object id. */
export class MadeObjects {
  readonly #fds = new Map<number, number>();
  readonly #temps = new Map<number, Range>();
  readonly #writers = new Map<number, ObjectWriter>();

  /** `inj` runs syscalls in the process being made. */
  constructor(private readonly inj: Injector) {}

  /** Records what was made for object `id`. */
  add(id: number, made: MadeObject): void {
    if (made.fd !== undefined) this.#fds.set(id, made.fd);
    if (made.temp) this.#temps.set(id, made.temp);
    if (made.writer) this.#writers.set(id, made.writer);
  }

  /** The target fd of a stored memory object. */
  fd(id: number): number {
    const fd = this.#fds.get(id);
    if (fd === undefined) throw new RestoreError(`image refers to memory object ${id} it lacks`);
    return fd;
  }

  /** Where the tool writes object `id`'s contents, if it does. */
  writer(id: number): ObjectWriter | undefined {
    return this.#writers.get(id);
  }

  /** Moves the objects' target fds to `base` and up, out of the way of the restored fds. */
  relocateFds(base: number): void {
    for (const [id, fd] of this.#fds) {
      const moved = Number(this.inj.call("fcntl", fd, F.DUPFD, base));
      this.inj.call("close", fd);
      this.#fds.set(id, moved);
    }
  }

  /** Closes the tool's writers. */
  closeWriters(): void {
    for (const { fd } of this.#writers.values()) close(fd);
    this.#writers.clear();
  }

  /** Unmaps the temporary mappings from the target. */
  unmapTemps(): void {
    for (const r of this.#temps.values()) this.inj.call("munmap", r.start, r.end - r.start);
    this.#temps.clear();
  }

  /** Closes the target's fds of the objects. */
  closeFds(): void {
    for (const fd of this.#fds.values()) this.inj.call("close", fd);
    this.#fds.clear();
  }

  /** Local cleanup after a failure: the tool's writers (the target itself is killed). */
  abort(): void {
    for (const { fd } of this.#writers.values()) {
      try {
        close(fd);
      } catch { /* ignore */ }
    }
  }
}

/**
 * The memory objects of one restore that several processes of the tree share (the same key in
 * their images): the first process to need one makes it, the others take it from that process.
 */
export class SharedObjects {
  readonly #owners = new Map<string, { pid: number; objects: MadeObjects; id: number }>();

  /**
   * A descriptor, in the process `inj` runs in, on the object another process made for `key`;
   * undefined when none did yet.
   */
  take(inj: Injector, key: string): number | undefined {
    const owner = this.#owners.get(key);
    if (!owner) return undefined;
    // The owner's fd as it is now: its objects' fds have moved since it made them.
    return takeFd(inj, owner.pid, owner.objects.fd(owner.id));
  }

  /** Records that process `pid` makes object `id` (of its `objects`) for `key`. */
  add(key: string, pid: number, objects: MadeObjects, id: number): void {
    this.#owners.set(key, { pid, objects, id });
  }
}
