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
import { Errno, MAP, O, PROT, SYS } from "../../ffi/mod.ts";
import { RestoreError } from "../errors.ts";
import type { MappingEntry, MappingSource } from "../image/schema.ts";
import type { Mapping } from "../inspect/mappings.ts";
import { hex, openInTarget, type Target } from "./target.ts";

/** The entry of mapping `m` (`advice`: its kept VmFlags), its source anonymous and no pages yet. */
export function describeMapping(m: Mapping, advice: string[] | undefined): MappingEntry {
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
    growsDown: m.kind === "stack",
    ...(advice ? { advice } : {}),
    pages: [],
  };
}

/** The source of a mapping that is neither shared memory nor a stored file: its file, if any. */
export function fileSource(m: Mapping): MappingSource {
  if (m.inode === 0n || !m.path?.startsWith("/")) return { type: "anonymous" };
  const st = Deno.statSync(m.path);
  return {
    type: "file",
    path: m.path,
    size: st.size,
    mtimeMs: st.mtime?.getTime() ?? 0,
    inode: m.inode,
    dev: m.device,
  };
}

/** Why the file at `path` is not the one of `size` bytes and mtime `mtimeMs` dumped, or null. */
export function fileChanged(path: string, size: number, mtimeMs: number): string | null {
  try {
    const st = Deno.statSync(path);
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

/** Why the files of `mappings` cannot be mapped again as they were, or null. */
export function mappedFileProblem(mappings: MappingEntry[]): string | null {
  for (const m of mappings) {
    if (m.source.type !== "file") continue;
    // A private mapping is the process's own copy of the file: its pages not in the image come
    // from the file, which must be as it was. A shared one is a window on a file others may
    // write as well (a database's -shm, a cache): that it changed is what sharing means.
    const why = m.shared
      ? (existsAsFile(m.source.path) ? null : `${m.source.path} no longer exists`)
      : fileChanged(m.source.path, m.source.size, m.source.mtimeMs);
    if (why) return why;
  }
  return null;
}

/** Whether pages are written into the mapping at restore (it is private and has some). */
function needsWrite(m: MappingEntry): boolean {
  return !m.shared && m.pages.length > 0;
}

/** Maps the mappings of one process again, each at its address. */
export class MappingMaker {
  /** Target fds of mapped files, by access and path. */
  readonly #fileFds = new Map<string, number>();

  /** `t`: the process being made. */
  constructor(private readonly t: Target) {}

  #fileFd(m: MappingEntry & { source: { type: "file" } }): number {
    const writable = m.shared && (m.prot & PROT.WRITE) !== 0;
    const key = `${writable ? "w" : "r"}:${m.source.path}`;
    let fd = this.#fileFds.get(key);
    if (fd === undefined) {
      fd = openInTarget(this.t.inj, m.source.path, writable ? O.RDWR : O.RDONLY);
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
    let flags = (m.shared ? MAP.SHARED : MAP.PRIVATE) | MAP.FIXED_NOREPLACE;
    if (m.growsDown) flags |= MAP.GROWSDOWN;
    let fd = -1;
    const src = m.source;
    if (src.type === "anonymous") flags |= MAP.ANONYMOUS;
    else if (src.type === "file") fd = this.#fileFd(m as MappingEntry & { source: typeof src });
    else fd = objectFd(src.object);
    const r = this.t.inj.raw(
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

  /** Gives the mappings that were writable only for their pages their own protection. */
  protectFinal(mappings: MappingEntry[]): void {
    for (const m of mappings) {
      if (needsWrite(m) && m.prot !== (m.prot | PROT.READ | PROT.WRITE)) {
        this.t.inj.call("mprotect", m.start, m.end - m.start, m.prot);
      }
    }
  }

  /** Closes the target's fds of mapped files. */
  closeFiles(): void {
    for (const fd of this.#fileFds.values()) this.t.inj.call("close", fd);
    this.#fileFds.clear();
  }
}
