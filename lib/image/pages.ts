/** Page data: raw bytes appended to `pages-N.img` files, located by extents. */
import {
  addressOf,
  close,
  Errno,
  O,
  open,
  PAGE_SIZE,
  pwrite,
  pwriteAsync,
  syscall,
  SyscallError,
} from "../../ffi/mod.ts";
import { ImageError } from "../errors.ts";
import { checksum, combineChecksums } from "./checksum.ts";
import type { ImageFileEntry } from "./manifest.ts";

/** Where one appended run of bytes lives in an image. */
export interface PageExtent {
  /** Page file holding the bytes, e.g. `"pages-0.img"`. */
  file: string;
  /** Byte offset of the run inside `file`. */
  offset: number;
  /** Length of the run in bytes. */
  length: number;
  /** Checksum (CRC-32) of the run. */
  checksum: number;
  /**
   * Incremental images: the extent is in an earlier image of the chain, this many parent links
   * up (1: the parent, 2: its parent …). Absent (or 0): in this image.
   */
  image?: number;
}

/**
 * Appends raw page data to an image. `append` writes the bytes through at once (large
 * synchronous writes), so the caller may reuse its buffer right after; the image never holds
 * page data in memory. An extent never spans two files.
 */
export interface PageSink {
  /** Appends `bytes` and returns where they went, with their checksum. */
  append(bytes: Uint8Array): PageExtent;
  /**
   * Appends `bytes` like `append`, but writes them on another thread: the caller works on and
   * must leave `bytes` alone until `written` resolves (it rejects as `append` would throw).
   */
  appendLater?(bytes: Uint8Array): { extent: PageExtent; written: Promise<void> };
  /** Bytes appended so far, over all page files. */
  readonly bytesWritten: number;
}

/** Default size past which the sink starts a new page file. */
export const DEFAULT_ROLL_SIZE = 4 * 1024 ** 3;

/** Extent size from which combining checksums beats checksumming the bytes a second time. */
const COMBINE_THRESHOLD = 64 * 1024;

/** Whether `name` is the name of a page file. */
export function isPageFileName(name: string): boolean {
  return /^pages-\d+\.img$/.test(name);
}

interface OpenPageFile {
  name: string;
  /** A raw descriptor: writes on another thread need one (a FsFile has none). */
  fd: number;
  /**
   * The same file opened O_DIRECT (-1 where the filesystem refuses it): aligned writes go from
   * the caller's buffer to the disk, with no copy into the page cache and nothing left for the
   * commit's fdatasync to write but the file's metadata.
   */
  direct: number;
  size: number;
  /** Writes still going on another thread; the fd is closed only once they are done. */
  inFlight: Set<Promise<void>>;
  /** Running checksum of the whole file, for the manifest (combined from the extents'). */
  checksum: number;
}

/** The `PageSink` of an `ImageWriter`: page files in the writer's partial directory. */
export class PageFileSink implements PageSink {
  #files: OpenPageFile[] = [];
  #bytesWritten = 0;
  #closed = false;
  /** The first failure of a write on another thread (the image was discarded then). */
  #failure: Error | undefined;

  /**
   * `onError` turns a write failure into the error to throw (the writer aborts the image there);
   * `rollSize` is the size past which a new file starts.
   */
  constructor(
    private readonly dir: string,
    private readonly rollSize: number,
    private readonly onError: (err: unknown, what: string) => Error,
  ) {
    if (!(rollSize > 0)) throw new RangeError(`rollSize must be positive, got ${rollSize}`);
  }

  get bytesWritten(): number {
    return this.#bytesWritten;
  }

  append(bytes: Uint8Array): PageExtent {
    const { file, offset, checksum: sum } = this.#reserve(bytes);
    try {
      for (let done = 0; done < bytes.length;) {
        done += this.#writeNow(file, bytes.subarray(done), offset + done);
      }
    } catch (err) {
      throw this.onError(err, `${file.name}: write of ${bytes.length} bytes at ${offset} failed`);
    }
    return { file: file.name, offset, length: bytes.length, checksum: sum };
  }

  appendLater(bytes: Uint8Array): { extent: PageExtent; written: Promise<void> } {
    const { file, offset, checksum: sum } = this.#reserve(bytes);
    const written = (async () => {
      try {
        for (let done = 0; done < bytes.length;) {
          const part = bytes.subarray(done);
          const at = offset + done;
          done += await (this.#canDirect(file, part, at)
            ? pwriteAsync(file.direct, part, at).catch((e) =>
              this.#directFailed(file, e, part, at)
            )
            : pwriteAsync(file.fd, part, at));
        }
      } catch (err) {
        throw this.#failure ??= this.onError(
          err,
          `${file.name}: write of ${bytes.length} bytes at ${offset} failed`,
        );
      }
    })();
    file.inFlight.add(written);
    const done = () => void file.inFlight.delete(written);
    written.then(done, done);
    return { extent: { file: file.name, offset, length: bytes.length, checksum: sum }, written };
  }

  /** Waits for every write going on another thread (the first failure rejects). */
  async settle(): Promise<void> {
    for (const f of this.#files) await Promise.all([...f.inFlight]);
  }

  /** One pwrite on this thread, through the O_DIRECT descriptor where it can go. */
  #writeNow(file: OpenPageFile, bytes: Uint8Array, offset: number): number {
    if (!this.#canDirect(file, bytes, offset)) return pwrite(file.fd, bytes, offset);
    try {
      return pwrite(file.direct, bytes, offset);
    } catch (err) {
      return this.#directFailed(file, err, bytes, offset);
    }
  }

  /**
   * Whether `bytes` at `offset` can go through the O_DIRECT descriptor: page-aligned address,
   * length and offset (the staging buffer's halves are, and whole pages are).
   */
  #canDirect(file: OpenPageFile, bytes: Uint8Array, offset: number): boolean {
    return file.direct >= 0 && bytes.length % PAGE_SIZE === 0 && offset % PAGE_SIZE === 0 &&
      addressOf(bytes) % BigInt(PAGE_SIZE) === 0n;
  }

  /**
   * A filesystem that opened the file O_DIRECT but refuses the write (EINVAL: it wants another
   * alignment) gets every later write through the page cache; this one is made there now.
   */
  #directFailed(file: OpenPageFile, err: unknown, bytes: Uint8Array, offset: number): number {
    if (!(err instanceof SyscallError) || err.errno !== Errno.EINVAL) throw err;
    file.direct = -1;
    return pwrite(file.fd, bytes, offset);
  }

  /** Takes the place of `bytes` in the current page file (a new one past the roll size). */
  #reserve(bytes: Uint8Array): { file: OpenPageFile; offset: number; checksum: number } {
    if (this.#failure) throw this.#failure; // a write on another thread failed: that is why
    if (this.#closed) {
      throw new ImageError("page sink is closed: the image was committed or aborted");
    }
    let current = this.#files.at(-1);
    if (!current || (current.size > 0 && current.size + bytes.length > this.rollSize)) {
      current = this.#openNext();
    }
    const sum = checksum(bytes);
    const offset = current.size;
    // Combining costs ≈ 1.6 µs, a second pass ≈ 0.03 ns a byte: combine only large extents.
    current.checksum = bytes.length >= COMBINE_THRESHOLD
      ? combineChecksums(current.checksum, sum, bytes.length)
      : checksum(bytes, current.checksum);
    current.size += bytes.length;
    this.#bytesWritten += bytes.length;
    return { file: current, offset, checksum: sum };
  }

  #openNext(): OpenPageFile {
    const name = `pages-${this.#files.length}.img`;
    try {
      const path = `${this.dir}/${name}`;
      const fd = open(path, O.WRONLY | O.CREAT | O.EXCL | O.CLOEXEC, 0o600);
      let direct = -1;
      try {
        direct = open(path, O.WRONLY | O.DIRECT | O.CLOEXEC);
      } catch { /* a filesystem without O_DIRECT (EINVAL): the page cache it is */ }
      const entry = { name, fd, direct, size: 0, checksum: 0, inFlight: new Set<Promise<void>>() };
      this.#files.push(entry);
      return entry;
    } catch (err) {
      throw this.onError(err, `${name}: cannot create`);
    }
  }

  /**
   * Flushes every page file to disk (unless `sync` is false), closes them and returns their
   * manifest entries. Syncing waits until commit so a dump does not stall on the disk.
   */
  close(sync: boolean): ImageFileEntry[] {
    if (this.#closed) return [];
    this.#closed = true;
    const entries: ImageFileEntry[] = [];
    let failure: { err: unknown; what: string } | undefined;
    for (const f of this.#files) {
      if (f.inFlight.size) throw new ImageError(`${f.name}: closed while writes were going on`);
      try {
        if (sync && !failure) syscall("fdatasync", f.fd);
      } catch (err) {
        failure ??= { err, what: `${f.name}: fsync failed` };
      }
      closePageFile(f);
      entries.push({ name: f.name, size: f.size, checksum: f.checksum });
    }
    if (failure) throw this.onError(failure.err, failure.what);
    return entries;
  }

  /** Closes every file without syncing (the image is being discarded). */
  discard(): void {
    this.#closed = true;
    for (const f of this.#files) {
      // Not under a write going on elsewhere: its fd number could be reused meanwhile.
      const shut = () => {
        try {
          closePageFile(f);
        } catch { /* already closed */ }
      };
      if (f.inFlight.size) void Promise.allSettled([...f.inFlight]).then(shut);
      else shut();
    }
  }
}

/** Closes both descriptors of a page file. */
function closePageFile(f: OpenPageFile): void {
  if (f.direct >= 0) close(f.direct);
  close(f.fd);
}
