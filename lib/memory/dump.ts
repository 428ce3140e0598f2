/**
 * Dump side of memory: every mapping with its protection, flags and file identity, the pages
 * only this process holds (private anonymous pages, pages written over a private file mapping),
 * shared anonymous memory once per inode, memfd and deleted-file contents once per inode, and the
 * special mappings (the vdso is checked at restore; vvar is skipped).
 */
import { close, Errno, fstat, O, open, pread, syscall, SyscallError } from "../../ffi/mod.ts";
import { checksum } from "../image/checksum.ts";
import type { Mapping } from "../inspect/mappings.ts";
import type { MappingDecision } from "../policy.ts";
import { readMemoryInto } from "../inspect/memory.ts";
import { dumpableRanges, listPages } from "../inspect/pages.ts";
import type { MappingEntry, MemoryObjectEntry, SpecialMappings } from "../image/schema.ts";
import { type Fill, type PageStore, STAGING_SIZE } from "../dump/page_collector.ts";
import type { PrecopiedPages, Segment } from "../dump/precopy.ts";
import { isSysvName, type SysvSegment, sysvSegments } from "./sysv_shm.ts";
import { vmaAdvice } from "./advice.ts";

/** Memory objects (shared anonymous memory, memfd, deleted files) stored once each. */
export class MemoryObjects {
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

  #sysv?: Map<number, SysvSegment>;
  /** System V segments, read once per dump. */
  #segments(): Map<number, SysvSegment> {
    return this.#sysv ??= sysvSegments();
  }

  /** The object for a key, made on first use. */
  object(key: string, make: () => Omit<MemoryObjectEntry, "id" | "pages">): MemoryObjectEntry {
    let entry = this.#byKey.get(key);
    if (!entry) {
      entry = { id: this.entries.length, key, pages: [], ...make() };
      this.entries.push(entry);
      this.#byKey.set(key, entry);
    }
    return entry;
  }

  /**
   * Stores the contents of a file-like object (memfd, deleted file) read from `path` — an entry
   * of /proc/PID/map_files or /proc/PID/fd — once per key.
   */
  storeFile(key: string, kind: "memfd" | "deleted-file", name: string, path: string): number {
    const existing = this.#byKey.get(key);
    if (existing) return existing.id;
    const fd = open(path, O.RDONLY);
    try {
      const { size, mode } = fstat(fd);
      // F_GET_SEALS (1034); a deleted regular file has none.
      const seals = kind === "memfd" ? Number(syscall("fcntl", fd, 1034, 0)) : 0;
      const entry = this.object(key, () => ({ kind, name, size, mode: mode & 0o7777, seals }));
      this.#storeData(entry, fd, size);
      return entry.id;
    } finally {
      close(fd);
    }
  }

  /**
   * Stores shared memory (shared anonymous memory, a System V segment) once per inode, whole: its
   * file (through map_files) holds pages no live process has mapped any more, such as those a
   * PostgreSQL backend that has exited wrote into the shared buffers. A System V segment (its
   * inode is the shmid) is keyed and described as such when /proc lists it.
   */
  storeShmem(m: Mapping): number {
    const segment = isSysvName(m.path) ? this.#segments().get(Number(m.inode)) : undefined;
    const key = segment ? `sysv:${segment.shmid}` : `shmem:${m.inode}`;
    const existing = this.#byKey.get(key);
    if (existing) return existing.id;
    const fd = open(m.mapFile, O.RDONLY);
    try {
      const size = Number(fstat(fd).size);
      const entry = this.object(key, () =>
        segment
          ? {
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
          }
          : { kind: "shmem", name: m.path ?? "", size, mode: 0o600 });
      this.#storeData(entry, fd, size);
      return entry.id;
    } finally {
      close(fd);
    }
  }

  /** Stores the parts of a file that hold data (SEEK_DATA/SEEK_HOLE): holes read as zeros. */
  #storeData(entry: MemoryObjectEntry, fd: number, size: number): void {
    const fill: Fill = (start, buf) => readFully(fd, start, buf);
    const store = this.storeFor?.(entry.key) ?? this.pages;
    for (const r of dataRanges(fd, size)) {
      entry.pages.push(...store.add(r.start, Number(r.end - r.start), fill));
    }
  }
}

const SEEK_DATA = 3, SEEK_HOLE = 4;

/** The ranges of a file below `size` that hold data; all of it where lseek cannot tell. */
function dataRanges(fd: number, size: number): { start: bigint; end: bigint }[] {
  const end = BigInt(size);
  const out: { start: bigint; end: bigint }[] = [];
  for (let at = 0n; at < end;) {
    let start: bigint;
    try {
      start = syscall("lseek", fd, at, SEEK_DATA);
    } catch (err) {
      if (err instanceof SyscallError && err.errno === Errno.ENXIO) break; // no data past `at`
      return [{ start: 0n, end }];
    }
    if (start >= end) break;
    const hole = syscall("lseek", fd, start, SEEK_HOLE);
    const stop = hole < end ? hole : end;
    out.push({ start, end: stop });
    at = stop;
  }
  return out;
}

function readFully(fd: number, offset: bigint, buf: Uint8Array): number {
  let done = 0;
  while (done < buf.length) {
    const n = pread(fd, buf.subarray(done), offset + BigInt(done));
    if (n === 0) break;
    done += n;
  }
  return done;
}

/** The pages of a private mapping that a dump must copy. */
function privateRanges(pid: number, m: Mapping): { start: bigint; end: bigint }[] {
  if (m.inode === 0n) return dumpableRanges(pid, m.start, m.end);
  // Over a file: only pages that are no longer the file's (written, copied on write).
  const out: { start: bigint; end: bigint }[] = [];
  for (const p of listPages(pid, { start: m.start, end: m.end })) {
    if (!((p.present && !p.file) || p.swapped)) continue;
    const last = out[out.length - 1];
    if (last && last.end === p.start) last.end = p.end;
    else out.push({ start: p.start, end: p.end });
  }
  return out;
}

function fileStat(path: string) {
  const st = Deno.statSync(path);
  return { size: st.size, mtimeMs: st.mtime?.getTime() ?? 0 };
}

/** What `dumpMemory` returns. */
export interface MemoryDump {
  mappings: MappingEntry[];
  special: SpecialMappings;
}

/** Bytes copied between two chances for the event loop to turn: half the staging buffer, so
 * each chunk is copied into one half while the other is written. */
const CHUNK = STAGING_SIZE / 2;
/** How long the copy may go on before it lets the event loop turn. */
const YIELD_MS = 50;

/**
 * Describes every mapping of a frozen process and copies the pages it alone holds. Every
 * `YIELD_MS` or so it lets the event loop turn, so SIGINT and SIGTERM handlers (which release the
 * process and remove the partial image) run during a long copy, not after it.
 */
export async function dumpMemory(
  pid: number,
  mappings: Mapping[],
  decide: (m: Mapping) => MappingDecision,
  pages: PageStore,
  objects: MemoryObjects,
  precopied?: PrecopiedPages,
): Promise<MemoryDump> {
  let lastYield = performance.now();
  const breathe = async () => {
    if (performance.now() - lastYield < YIELD_MS) return;
    await new Promise((r) => setTimeout(r, 0));
    lastYield = performance.now();
  };
  const out: MappingEntry[] = [];
  const special: SpecialMappings = {};
  const memFill = (addr: bigint, buf: Uint8Array) => readMemoryInto(pid, addr, buf);
  const advice = vmaAdvice(pid);
  for (const m of mappings) {
    const kind = m.kind;
    if (kind === "vsyscall") continue;
    if (kind === "vvar") {
      special.vvar = { start: m.start, end: m.end };
      continue;
    }
    if (kind === "vvar_vclock") {
      special.vvarVclock = { start: m.start, end: m.end };
      continue;
    }
    if (kind === "vdso") {
      const code = new Uint8Array(m.size);
      readMemoryInto(pid, m.start, code);
      special.vdso = { start: m.start, end: m.end, checksum: checksum(code) };
      continue;
    }
    const keep = decide(m) === "dump";
    const entry: MappingEntry = {
      start: m.start,
      end: m.end,
      prot: (m.prot.read ? 1 : 0) | (m.prot.write ? 2 : 0) | (m.prot.exec ? 4 : 0),
      shared: m.shared,
      offset: m.offset,
      kind,
      name: m.path,
      source: { type: "anonymous" },
      growsDown: kind === "stack",
      ...(advice.has(m.start) ? { advice: advice.get(m.start) } : {}),
      pages: [],
    };
    // The same key as an fd on the same file gets (st_dev encoding of major:minor).
    const key = `file:${(m.major << 8) | m.minor}:${m.inode}`;
    if (kind === "shared-anonymous") {
      entry.source = { type: "shmem", object: keep ? objects.storeShmem(m) : -1 };
      if (!keep) entry.source = { type: "anonymous" };
    } else if (kind === "memfd" || kind === "deleted-file") {
      const name = kind === "memfd"
        ? m.path!.replace(/^\/memfd:/, "").replace(/ \(deleted\)$/, "")
        : m.path!.replace(/ \(deleted\)$/, "");
      entry.source = {
        type: "stored-file",
        object: objects.storeFile(key, kind, name, m.mapFile),
      };
    } else if (m.inode !== 0n && m.path?.startsWith("/")) {
      entry.source = {
        type: "file",
        path: m.path,
        ...fileStat(m.path),
        inode: m.inode,
        dev: m.device,
      };
    }
    if (keep && !m.shared) {
      for (const range of privateRanges(pid, m)) {
        // Pre-copy hook: runs copied while the process ran and not written since are reused.
        const parts: Segment[] = precopied ? precopied.split(range.start, range.end) : [range];
        for (const r of parts) {
          if (r.runs) {
            entry.pages.push(...r.runs);
            continue;
          }
          for (let at = r.start; at < r.end; at += BigInt(CHUNK)) {
            const n = Math.min(CHUNK, Number(r.end - at));
            await pages.room?.(n); // the last chunk is written while this one is copied
            entry.pages.push(...pages.add(at, n, memFill));
            await breathe();
          }
        }
      }
    }
    out.push(entry);
  }
  return { mappings: out, special };
}
