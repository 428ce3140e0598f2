/**
 * System V shared memory segments (shmget/shmat), as a process has them attached.
 *
 * A segment lives in the IPC namespace, not in the process: it outlives a killed process unless
 * it was marked for removal (IPC_RMID, then it goes with its last attach). Its mapping shows as
 * `/SYSV<key> (deleted)` and the mapping's inode is the shmid.
 *
 * Dump: the segment's key, id, size, mode, owner and removal mark come from /proc/sysvipc/shm;
 * its data is stored once, whole, as for other shared memory.
 *
 * Restore: a segment that still exists with the same id, key and size is attached again as it is
 * (its contents are the live ones, which other processes may share). One that is gone is made
 * again with the same id (kernel.shm_next_id), key, owner and mode, filled from the image through
 * an attach of its own, and marked for removal again if it was. Every mapping of a segment is an
 * attach (shmat), never an mmap of its file: only an attach counts in shm_nattch and can be
 * detached with shmdt.
 *
 * Inside a container's IPC namespace the segments are listed and made again by its init
 * (lib/namespaces/shm_segments.ts): each process fills those it attaches, and marks them removed
 * again, by syscalls of its own.
 */
import {
  Errno,
  fstat,
  IPC,
  O,
  open,
  PROT,
  SHM,
  shmSetPerm,
  SYS,
  syscall,
  SyscallError,
} from "../../ffi/mod.ts";
import { RestoreError } from "../errors.ts";
import type { MappingEntry, MemoryObjectEntry } from "../image/schema.ts";
import type { Mapping } from "../inspect/mappings.ts";
import { type MadeObject, type MemoryObjects, objectSpan, withOpenFile } from "./objects.ts";
import { hex, type Target } from "./target.ts";

/** A segment as /proc/sysvipc/shm lists it. */
export interface SysvSegment {
  /** The IPC key (0: IPC_PRIVATE). */
  key: number;
  /** Its id. */
  shmid: number;
  /** Permission bits. */
  mode: number;
  /** Size in bytes. */
  size: number;
  /** Owner. */
  uid: number;
  /** Owner's group. */
  gid: number;
  /** Marked for removal (IPC_RMID): it goes with its last attach. */
  removed: boolean;
}

/** Every segment of the tool's IPC namespace, by shmid. */
export function sysvSegments(): Map<number, SysvSegment> {
  const out = new Map<number, SysvSegment>();
  let text = "";
  try {
    text = Deno.readTextFileSync("/proc/sysvipc/shm");
  } catch {
    return out;
  }
  for (const line of text.split("\n").slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 10) continue;
    const mode = parseInt(f[2], 8);
    out.set(Number(f[1]), {
      key: Number(f[0]),
      shmid: Number(f[1]),
      mode: mode & 0o777,
      size: Number(f[3]),
      uid: Number(f[7]),
      gid: Number(f[8]),
      removed: (mode & SHM.DEST) !== 0,
    });
  }
  return out;
}

/** Whether a mapping's /proc name is a System V segment's. */
export function isSysvName(name: string | null | undefined): boolean {
  return !!name?.startsWith("/SYSV");
}

/**
 * Stores segment `segment`, which mapping `m` attaches, once per shmid; returns its object id.
 * Its data is read through /proc/PID/map_files, whole.
 */
export function storeSysvSegment(objects: MemoryObjects, m: Mapping, segment: SysvSegment): number {
  const key = `sysv:${segment.shmid}`;
  return objects.idOf(key) ??
    withOpenFile(m.mapFile, (fd) =>
      objects.store(key, fd, Number(fstat(fd).size), {
        kind: "sysv-shm",
        name: m.path!.replace(/ \(deleted\)$/, ""),
        size: segment.size,
        mode: segment.mode,
        sysv: {
          key: segment.key,
          shmid: segment.shmid,
          uid: segment.uid,
          gid: segment.gid,
          removed: segment.removed,
        },
      }));
}

/**
 * Makes a segment that is gone again, with its old id: kernel.shm_next_id picks the id of the
 * next shmget in this IPC namespace. Returns false when it still exists as it was (nothing to
 * make, nothing to fill); throws when its id now belongs to another segment.
 */
export function ensureSegment(want: SysvSegment): boolean {
  const now = sysvSegments().get(want.shmid);
  if (now) {
    if (now.key === want.key && now.size === want.size) return false;
    throw new RestoreError(
      `System V shared memory ${want.shmid} is now another segment (key ${now.key}, ` +
        `${now.size} bytes; the image has key ${want.key}, ${want.size} bytes)`,
    );
  }
  Deno.writeTextFileSync("/proc/sys/kernel/shm_next_id", String(want.shmid));
  let id: number;
  try {
    id = Number(syscall("shmget", want.key, want.size, IPC.CREAT | IPC.EXCL | want.mode));
  } catch (err) {
    Deno.writeTextFileSync("/proc/sys/kernel/shm_next_id", "-1");
    if (err instanceof SyscallError && err.errno === Errno.EEXIST) {
      throw new RestoreError(
        `System V shared memory key ${want.key} is taken by another segment (the image's was ` +
          `id ${want.shmid})`,
      );
    }
    throw err;
  }
  if (id !== want.shmid) {
    removeSegment(id);
    throw new RestoreError(
      `System V shared memory ${want.shmid} could not be made again with its id (got ${id})`,
    );
  }
  // It was made by the tool, as root: the owner and mode it had.
  shmSetPerm(id, want);
  return true;
}

/** IPC_RMID: the segment goes once nothing has it attached. */
export function removeSegment(shmid: number): void {
  try {
    syscall("shmctl", shmid, IPC.RMID, 0);
  } catch { /* already gone */ }
}

/** The System V segments of one process being restored, and its attaches of them. */
export class SysvAttaches {
  /** The segments of this image, by object id. */
  readonly #segments = new Map<number, { shmid: number; size: number }>();
  /** Attaches made so far (`shmid@base`). */
  readonly #attaches = new Set<string>();
  /** Segments made again by this restore: removed if it fails. */
  readonly #made: number[] = [];
  /** Segments to mark for removal once mapped, as they were at dump. */
  readonly #toRemove: number[] = [];

  /**
   * `mappings`: the process's mappings, of which an attach's pieces are; `inContainer`: the
   * process lives in a container's IPC namespace, whose init made every segment, empty.
   */
  constructor(
    private readonly t: Target,
    private readonly mappings: MappingEntry[],
    private readonly inContainer = false,
  ) {}

  /**
   * Object `obj`'s segment: made again if it is gone (`ensureSegment`). Only a segment made again
   * (in a container: by its init, empty) is filled from the image, through an attach of its own for the time of the restore and
   * /proc/PID/mem (the segment's file cannot be written); a live one keeps its contents.
   */
  prepare(obj: MemoryObjectEntry, sysv: NonNullable<MemoryObjectEntry["sysv"]>): MadeObject {
    const { shmid, removed } = sysv;
    this.#segments.set(obj.id, { shmid, size: obj.size });
    if (removed) this.#toRemove.push(shmid);
    if (!this.inContainer) {
      if (!ensureSegment({ ...sysv, mode: obj.mode, size: obj.size })) return {};
      this.#made.push(shmid);
    }
    const at = this.t.gaps.take(objectSpan(obj.size));
    this.#shmat(shmid, at, 0);
    return {
      temp: { start: at, end: at + objectSpan(obj.size) },
      writer: {
        fd: open(`/proc/${this.t.pid}/mem`, O.RDWR),
        base: at,
        what: `System V shared memory segment ${shmid}`,
      },
    };
  }

  /** Whether memory object `object` is a System V segment. */
  has(object: number): boolean {
    return this.#segments.has(object);
  }

  #shmat(shmid: number, at: bigint, flags: number): void {
    const got = this.t.inj.raw(SYS.shmat, shmid, at, flags);
    if (got !== at) {
      const why = got < 0n ? `errno ${-got}` : `got ${hex(got)}`;
      throw new RestoreError(`cannot attach System V shared memory ${shmid} at ${hex(at)}: ${why}`);
    }
  }

  /**
   * One mapping of segment object `object`. The first piece of an attach (pieces share
   * `start - offset`) attaches the whole segment, read-only unless a piece is writable, and
   * unmaps what the image lacks of it; each piece then gets its protection.
   */
  attach(m: MappingEntry, object: number): void {
    const segment = this.#segments.get(object)!;
    const inj = this.t.inj;
    const base = m.start - m.offset;
    const key = `${segment.shmid}@${base}`;
    const pieces = this.mappings.filter((x) =>
      x.source.type === "shmem" && x.source.object === object && x.start - x.offset === base
    );
    // Attached writable also where it may only be made so (VmFlags mw), then mprotected.
    const write = pieces.some((x) => x.prot & PROT.WRITE || x.advice?.includes("mw"));
    const exec = pieces.some((x) => x.prot & PROT.EXEC);
    const attachProt = PROT.READ | (write ? PROT.WRITE : 0) | (exec ? PROT.EXEC : 0);
    if (!this.#attaches.has(key)) {
      this.#attaches.add(key);
      this.#shmat(segment.shmid, base, (write ? 0 : SHM.RDONLY) | (exec ? SHM.EXEC : 0));
      let at = base;
      const end = base + objectSpan(segment.size);
      for (const piece of [...pieces].sort((a, b) => Number(a.start - b.start))) {
        if (piece.start > at) inj.call("munmap", at, piece.start - at);
        at = piece.end;
      }
      if (at < end) inj.call("munmap", at, end - at);
    }
    if (m.prot !== attachProt) inj.call("mprotect", m.start, m.end - m.start, m.prot);
  }

  /** Marks for removal the segments that were, now that the mappings hold them: each goes with
   * the last of its attaches. */
  removeMarked(): void {
    for (const shmid of this.#toRemove.splice(0)) {
      // In its namespace; another process of the tree may have marked it already.
      if (this.inContainer) this.t.inj.raw(SYS.shmctl, shmid, IPC.RMID, 0);
      else removeSegment(shmid);
    }
  }

  /** After a failure: removes the segments this restore made. */
  abort(): void {
    for (const shmid of this.#made) removeSegment(shmid);
  }
}
