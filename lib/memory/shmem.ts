/**
 * Shared anonymous memory (`mmap(MAP_SHARED | MAP_ANONYMOUS)`, shown as `/dev/zero (deleted)`):
 * one object per inode, which every process sharing it (since a fork) maps.
 *
 * Dump: stored once per inode, whole, through /proc/PID/map_files: its file also holds pages no
 * live process maps any more, such as those a PostgreSQL backend that has exited wrote into the
 * shared buffers.
 *
 * Restore: made as a temporary shared mapping in a gap of the layout, which the target opens
 * through /proc/self/map_files (the fd its mappings are mmap()ed from, and that other processes
 * of the tree take) and the tool through /proc/PID/map_files to write the contents into; the
 * temporary mapping goes once the pages are in.
 */
import { fstat, hugePageSizeFlag, MAP, O, open, PAGE_SIZE, PROT } from "../../ffi/mod.ts";
import type { MemoryObjectEntry } from "../image/schema.ts";
import type { Mapping } from "../inspect/mappings.ts";
import { type MadeObject, type MemoryObjects, objectSpan, withOpenFile } from "./objects.ts";
import { openInTarget, type Target } from "./target.ts";

/**
 * Stores the shared anonymous memory behind mapping `m` once per inode; returns its object id.
 * `pageSize`: the mapping's (a hugetlb one's is larger than 4096).
 */
export function storeSharedAnonymous(
  objects: MemoryObjects,
  m: Mapping,
  pageSize?: number,
): number {
  const key = `shmem:${m.inode}`;
  const huge = pageSize && pageSize > PAGE_SIZE ? { hugePageSize: pageSize } : {};
  return objects.idOf(key) ?? withOpenFile(m.mapFile, (fd) => {
    const size = Number(fstat(fd).size);
    return objects.store(key, fd, size, {
      kind: "shmem",
      name: m.path ?? "",
      size,
      mode: 0o600,
      ...huge,
    });
  });
}

/** Makes shared anonymous memory object `obj` inside the target (its contents come later). */
export function makeSharedAnonymous(t: Target, obj: MemoryObjectEntry): MadeObject {
  const huge = obj.hugePageSize ?? 0;
  const unit = BigInt(huge || PAGE_SIZE);
  const size = (objectSpan(obj.size) + unit - 1n) / unit * unit;
  const at = t.gaps.take(size + unit); // room to align a huge page
  const start = (at + unit - 1n) / unit * unit;
  let flags = MAP.SHARED | MAP.ANONYMOUS | MAP.FIXED_NOREPLACE;
  if (huge) flags |= MAP.HUGETLB | hugePageSizeFlag(huge);
  t.inj.call("mmap", start, size, PROT.READ | PROT.WRITE, flags, -1, 0);
  const temp = { start, end: start + size };
  const what = `shared memory object ${obj.id}${huge ? " (huge pages)" : ""}`;
  const mapFile = `map_files/${start.toString(16)}-${temp.end.toString(16)}`;
  return {
    temp,
    fd: openInTarget(t.inj, `/proc/self/${mapFile}`, O.RDWR),
    // hugetlbfs has no write(): its contents go in through the temporary mapping.
    writer: huge
      ? { fd: open(`/proc/${t.pid}/mem`, O.RDWR), base: start, what }
      : { fd: open(`/proc/${t.pid}/${mapFile}`, O.RDWR), base: 0n, what },
  };
}
