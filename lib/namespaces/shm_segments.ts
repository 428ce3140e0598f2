/**
 * The System V shared memory segments of a container's IPC namespace, read and made again inside
 * its init (the tool's /proc/sysvipc/shm shows only the tool's namespace).
 *
 * Dump: every segment by index (`SHM_STAT_ANY`) with its id, key, owner, mode, size and removal
 * mark. The contents of a segment no process attaches are read through an attach of the init's
 * own, for the time of the read; an attached one's are the attaching processes' memory object
 * (lib/memory/sysv_shm.ts, given this table by `segmentTable`).
 *
 * Restore, in the fresh namespace before the tree is forked: each segment made with its id
 * (`shm_next_id`), key, owner and mode, an unattached one filled; the attaching processes fill
 * the others and mark the removed ones again once attached (`SysvAttaches`).
 *
 * Refused: a segment locked in memory (SHM_LOCK), one not created by root, an unattached one
 * whose contents pass `DATA_MAX`, and unattached ones in a namespace with `shm_rmid_forced` set
 * (the read's own detach would destroy them).
 */
import { close, errnoName, O, open, pread, SHM, SYS, SYSV_DS } from "../../ffi/mod.ts";
import { DumpError, RestoreError } from "../errors.ts";
import type { ShmSegmentEntry } from "../image/schema.ts";
import type { Injector } from "../ptrace/inject.ts";
import type { SysvSegment } from "../memory/sysv_shm.ts";
import { objectSpan } from "../memory/objects.ts";
import { readIpcSysctl } from "./ipc_sysctl.ts";
import { createFlags, eachObject, makeWithId, objectOf, setOwner } from "./sysv_ipc.ts";

/** The largest contents of an unattached segment the image holds (inline, in its metadata). */
const DATA_MAX = 64 * 1024 * 1024;
/** How much of a segment one read takes. */
const CHUNK = 1024 * 1024;

/** The segment's contents up to its last non-zero byte, read from `fd` (its file). */
function contents(fd: number, size: number, id: number): Uint8Array {
  const chunks: Uint8Array[] = [];
  let end = 0; // past the last non-zero byte
  for (let at = 0; at < size; at += CHUNK) {
    const chunk = new Uint8Array(Math.min(CHUNK, size - at));
    // A hole reads as zeroes without being allocated (unlike a fault through a mapping).
    for (let n = 0; n < chunk.length;) {
      const got = pread(fd, chunk.subarray(n), at + n);
      if (got === 0) break;
      n += got;
    }
    const last = chunk.findLastIndex((b) => b !== 0);
    if (last < 0) continue;
    end = at + last + 1;
    if (end > DATA_MAX) {
      throw new DumpError(
        `System V shared memory segment ${id} is attached by no process and holds more than ` +
          `${DATA_MAX} bytes, more than a dump keeps of such a segment`,
      );
    }
    chunks[at / CHUNK] = chunk;
  }
  const out = new Uint8Array(end);
  chunks.forEach((c, i) => out.set(c.subarray(0, Math.max(0, end - i * CHUNK)), i * CHUNK));
  return out;
}

/** Reads unattached segment `id` of `size` bytes through an attach of `inj`'s process. */
function readUnattached(inj: Injector, id: number, size: number): Uint8Array {
  const at = inj.raw(SYS.shmat, id, 0, SHM.RDONLY);
  if (at < 0n && at > -4096n) {
    throw new DumpError(
      `cannot read System V shared memory segment ${id}: its container's init cannot attach ` +
        `it (${errnoName(Number(-at))})`,
    );
  }
  try {
    const path = `/proc/${inj.pid}/map_files/${at.toString(16)}-${
      (at + objectSpan(size)).toString(16)
    }`;
    const fd = open(path, O.RDONLY);
    try {
      return contents(fd, size, id);
    } finally {
      close(fd);
    }
  } finally {
    inj.call("shmdt", at);
  }
}

/** A segment as `SHM_STAT_ANY` shows it, contents left out, and whether anything attaches it. */
type ListedSegment = Omit<ShmSegmentEntry, "data"> & { attached: boolean };

/** The shared memory segments of the IPC namespace of `inj`'s process, contents left out. */
function listShmSegments(inj: Injector): ListedSegment[] {
  const found: ListedSegment[] = [];
  eachObject(inj, "shm", (id) => {
    const { ds, ...o } = objectOf(inj, id, "System V shared memory segment");
    const mode = ds.getUint16(SYSV_DS.mode, true);
    if (mode & SHM.LOCKED) {
      throw new DumpError(
        `System V shared memory segment ${id} is locked in memory (SHM_LOCK), which a restore ` +
          `does not give again`,
      );
    }
    found.push({
      ...o,
      size: Number(ds.getBigUint64(SYSV_DS.shmSegsz, true)),
      removed: (mode & SHM.DEST) !== 0,
      attached: ds.getBigUint64(SYSV_DS.shmNattch, true) > 0n,
    });
  });
  return found;
}

/** The shared memory segments of the IPC namespace `inj`'s process (a container's init) lives in. */
export function dumpShmSegments(inj: Injector): ShmSegmentEntry[] {
  const found = listShmSegments(inj);
  const unattached = found.filter((s) => !s.attached);
  if (unattached.length && readIpcSysctl(inj, "kernel/shm_rmid_forced") !== "0") {
    throw new DumpError(
      `its IPC namespace has kernel.shm_rmid_forced set: reading System V shared memory ` +
        `segment ${unattached[0].id}, attached by no process, would destroy it`,
    );
  }
  return found.map(({ attached, ...s }) =>
    attached ? s : { ...s, data: readUnattached(inj, s.id, s.size) }
  );
}

/** The segments of an image as the address-space dump looks them up: by id. */
export function segmentTable(segments: readonly ShmSegmentEntry[]): Map<number, SysvSegment> {
  return new Map(segments.map((s) => [s.id, { ...s, shmid: s.id }]));
}

/**
 * Makes the segments of `segments` again in the (fresh) IPC namespace of `inj`'s process, with
 * their ids, keys, owners and modes; fills the unattached ones. A removed one is marked again by
 * the process that attaches it.
 */
export function makeShmSegments(inj: Injector, segments: readonly ShmSegmentEntry[]): void {
  for (const s of segments) {
    makeWithId(inj, s, "shm_next_id", () => inj.call("shmget", s.key, s.size, createFlags(s.key)));
    setOwner(inj, s, "shm");
    if (!s.data?.length) continue;
    const at = inj.call("shmat", s.id, 0, 0);
    try {
      inj.mem.write(at, s.data);
    } catch (err) {
      throw new RestoreError(
        `cannot fill System V shared memory segment ${s.id}: ${(err as Error).message}`,
      );
    } finally {
      inj.call("shmdt", at);
    }
  }
}

/**
 * How the segments of the IPC namespace of `inj`'s process (the restored container's init, its
 * tree made) differ from `segments`, or null: ids, keys, owners, modes, sizes, removal marks and
 * which are attached.
 */
export function shmSegmentsDiffer(
  inj: Injector,
  segments: readonly ShmSegmentEntry[],
): string | null {
  const text = (list: ListedSegment[]) =>
    JSON.stringify(
      list.sort((a, b) => a.id - b.id).map((s) => [
        s.id,
        s.key,
        s.uid,
        s.gid,
        s.mode,
        s.size,
        s.removed,
        s.attached,
      ]),
    );
  const now = text(listShmSegments(inj));
  const want = text(segments.map(({ data, ...s }) => ({ ...s, attached: data === undefined })));
  return now === want ? null : `its System V shared memory segments are ${now}, not ${want}`;
}
