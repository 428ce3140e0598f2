/** Reads and verifies an image directory written by `ImageWriter`. */
import {
  addressOf,
  cachedPages,
  close,
  Errno,
  O,
  open,
  PAGE_SIZE,
  pread,
  preadAsync,
  readAheadAsync,
  SyscallError,
} from "../../ffi/mod.ts";
import { ImageError } from "../errors.ts";
import { checksum, checksumFile } from "./checksum.ts";
import { decodePayload, unframe } from "./frame.ts";
import {
  type ImageFileEntry,
  type ImageManifest,
  MANIFEST_NAME,
  validateManifest,
} from "./manifest.ts";
import { isPageFileName, type PageExtent } from "./pages.ts";
import { parentDirOf, type ParentLink } from "./parent.ts";
import { isProcessEntryFile, validateProcessEntry } from "./validate.ts";

/** Options of `ImageReader.open`. */
export interface ImageReaderOptions {
  /** Checksum every file against the manifest before returning (reads the whole image). */
  verify?: boolean;
  /** Refuse an image written on another architecture (default true; false for inspection). */
  checkArch?: boolean;
}

/** Longest chain of parents followed: far beyond any real use, short of a loop's forever. */
const MAX_CHAIN = 1000;

/** Options of `ImageReader.readExtent`. */
export interface ReadExtentOptions {
  /** Check the extent's checksum after reading (default true). */
  verify?: boolean;
}

/**
 * An open image. Opening checks the manifest (magic, format version, architecture) and that
 * every file it lists is there with its size; `verify` also checks every checksum. Every
 * refusal is an `ImageError` naming the file and the reason. An incremental image opens its
 * parent too (and that one its own …), with the same options: extents that live in a parent are
 * read from it, so callers never see the chain.
 *
 * ```ts
 * using image = await ImageReader.open("/var/lib/tardigrade/job-1");
 * const core = await image.readMeta("core");
 * const buf = new Uint8Array(64 << 20);
 * const bytes = image.readExtent(extent, buf); // verified against extent.checksum
 * ```
 */
export class ImageReader implements Disposable {
  #entries: Map<string, ImageFileEntry>;
  /** Raw descriptors of page files: every read is a pread, on this thread or another. */
  #pageFds = new Map<string, number>();
  /** The same files opened O_DIRECT (-1 where the filesystem refuses it). */
  #directFds = new Map<string, number>();
  #parent: ImageReader | undefined;

  private constructor(
    /** The image directory. */
    readonly dir: string,
    /** The image's manifest, as read from `manifest.cbor`. */
    readonly manifest: ImageManifest,
    /** CRC-32 of the whole `manifest.cbor`: what a child image records of its parent. */
    readonly manifestChecksum: number,
  ) {
    this.#entries = new Map(manifest.files.map((f) => [f.name, f]));
  }

  /** The open parent of an incremental image (whose own parent is `parent.parent` …). */
  get parent(): ImageReader | undefined {
    return this.#parent;
  }

  /** Opens the image in `dir`, refusing a damaged, newer or foreign image. */
  static open(dir: string, options: ImageReaderOptions = {}): Promise<ImageReader> {
    return ImageReader.#open(dir, options, []);
  }

  /** `open`, with the images of the chain already open below it (to refuse a loop). */
  static async #open(
    dir: string,
    options: ImageReaderOptions,
    children: string[],
  ): Promise<ImageReader> {
    dir = dir.length > 1 ? dir.replace(/\/+$/, "") : dir;
    let bytes: Uint8Array;
    try {
      bytes = await Deno.readFile(`${dir}/${MANIFEST_NAME}`);
    } catch (err) {
      if (err instanceof Deno.errors.NotFound) {
        let isDir = false;
        try {
          isDir = Deno.statSync(dir).isDirectory;
        } catch { /* missing */ }
        const why = isDir ? `no ${MANIFEST_NAME} in ${dir}` : `no directory ${dir}`;
        throw new ImageError(`not an image: ${why}`, { cause: err });
      }
      throw new ImageError(`${MANIFEST_NAME}: cannot read: ${(err as Error).message}`, {
        cause: err,
      });
    }
    const { version, payload } = unframe(MANIFEST_NAME, bytes);
    const manifest = validateManifest(decodePayload(MANIFEST_NAME, payload), version);
    if ((options.checkArch ?? true) && manifest.arch !== Deno.build.arch) {
      throw new ImageError(`image is for ${manifest.arch}, this machine is ${Deno.build.arch}`);
    }
    const reader = new ImageReader(dir, manifest, checksum(bytes));
    for (const entry of manifest.files) await reader.#checkSize(entry);
    if (options.verify) await reader.#verifyOwn();
    if (manifest.parent) {
      reader.#parent = await ImageReader.#openParent(dir, manifest.parent, options, children);
    }
    return reader;
  }

  /** Opens the parent `link` of the image `dir` and checks it is the one `dir` was made from. */
  static async #openParent(
    dir: string,
    link: ParentLink,
    options: ImageReaderOptions,
    children: string[],
  ): Promise<ImageReader> {
    const parentDir = parentDirOf(dir, link);
    const chain = [...children, realPath(dir)];
    if (chain.includes(realPath(parentDir)) || chain.length > MAX_CHAIN) {
      throw new ImageError(`image ${dir} has parent ${parentDir}, which is a loop in the chain`);
    }
    let parent: ImageReader;
    try {
      parent = await ImageReader.#open(parentDir, options, chain);
    } catch (err) {
      if (!(err instanceof ImageError)) throw err;
      const missing = err.message.startsWith("not an image: ");
      throw new ImageError(
        missing
          ? `image ${dir} needs its parent ${parentDir}, which is missing (${err.message})`
          : `image ${dir} needs its parent ${parentDir}: ${err.message}`,
        { cause: err },
      );
    }
    if (
      parent.manifestChecksum !== link.manifestChecksum ||
      parent.manifest.createdAt !== link.createdAt
    ) {
      parent.close();
      throw new ImageError(
        `image ${dir} needs its parent ${parentDir} as it was when ${dir} was dumped ` +
          `(created ${link.createdAt}, manifest checksum ${hex32(link.manifestChecksum)}), ` +
          `but ${parentDir} was replaced or changed since (created ` +
          `${parent.manifest.createdAt}, manifest checksum ${hex32(parent.manifestChecksum)})`,
      );
    }
    return parent;
  }

  /** Names of the metadata files in the image, without `.cbor`, in the order written. */
  metaNames(): string[] {
    return this.manifest.files.filter((f) => f.name.endsWith(".cbor"))
      .map((f) => f.name.slice(0, -".cbor".length));
  }

  /** Whether the image holds the metadata file `name` (`.cbor` optional). */
  hasMeta(name: string): boolean {
    return this.#entries.has(metaFileName(name));
  }

  /**
   * Reads and decodes the metadata file `name` (`.cbor` optional), checking its size and
   * checksum against the manifest and its header; a process entry (`process`, `process-PID`)
   * is also checked field by field (validate.ts).
   */
  async readMeta<T = unknown>(name: string): Promise<T> {
    const fileName = metaFileName(name);
    const entry = this.#entries.get(fileName);
    if (!entry) throw new ImageError(`${fileName}: no such metadata in image ${this.dir}`);
    let bytes: Uint8Array;
    try {
      bytes = await Deno.readFile(`${this.dir}/${fileName}`);
    } catch (err) {
      throw fileError(fileName, err);
    }
    checkSize(entry, bytes.length);
    if (checksum(bytes) !== entry.checksum) {
      throw new ImageError(`${fileName}: checksum mismatch (file of ${bytes.length} bytes)`);
    }
    const value = decodePayload(fileName, unframe(fileName, bytes).payload);
    // A process entry is checked field by field: its bytes may be intact and still not one.
    if (isProcessEntryFile(fileName)) validateProcessEntry(fileName, value);
    return value as T;
  }

  /**
   * Reads the bytes of `extent` into `into` (or a new buffer) and returns them as a view of
   * exactly `extent.length` bytes; checks the extent's checksum unless `verify` is false.
   */
  readExtent(extent: PageExtent, into?: Uint8Array, options: ReadExtentOptions = {}): Uint8Array {
    const owner = this.#owner(extent);
    if (owner !== this) return owner.readExtent(local(extent), into, options);
    const { name, offset, length, out } = this.#extentTarget(extent, into);
    const fd = this.#pageFd(name);
    let direct = this.#directFdFor(name, fd, out, offset);
    try {
      for (let done = 0; done < length;) {
        const at = offset + done;
        let n: number;
        try {
          n = pread(direct >= 0 && at % PAGE_SIZE === 0 ? direct : fd, out.subarray(done), at);
        } catch (err) {
          direct = this.#withoutDirect(name, direct, err);
          continue;
        }
        if (n === 0) throw new ImageError(`${name}: truncated at offset ${at}`);
        done += n;
      }
    } catch (err) {
      throw err instanceof ImageError ? err : fileError(name, err);
    }
    if (options.verify !== false) this.verifyExtent(extent, out);
    return out;
  }

  /**
   * Reads one extent on another thread, so the caller can work meanwhile; `into` must be left
   * alone until it resolves. It does not verify: `verifyExtent` does, when the caller is ready.
   */
  readExtentAsync(extent: PageExtent, into: Uint8Array): Promise<Uint8Array> {
    const owner = this.#owner(extent);
    if (owner !== this) return owner.readExtentAsync(local(extent), into);
    return this.#readOwnExtentAsync(extent, into);
  }

  async #readOwnExtentAsync(extent: PageExtent, into: Uint8Array): Promise<Uint8Array> {
    const { name, offset, length, out } = this.#extentTarget(extent, into);
    const fd = this.#pageFd(name);
    let direct = this.#directFdFor(name, fd, out, offset);
    try {
      for (let done = 0; done < length;) {
        const part = out.subarray(done);
        const at = offset + done;
        let n: number;
        try {
          n = await preadAsync(direct >= 0 && at % PAGE_SIZE === 0 ? direct : fd, part, at);
        } catch (err) {
          direct = this.#withoutDirect(name, direct, err);
          continue;
        }
        if (n === 0) throw new ImageError(`${name}: truncated at offset ${offset + done}`);
        done += n;
      }
    } catch (err) {
      throw err instanceof ImageError ? err : fileError(name, err);
    }
    return out;
  }

  /**
   * Has the kernel read this image's page files into the page cache in the background, so that a
   * restore's reads, which come once its process is made, find them there (or on their way)
   * rather than wait for the disk then. A parent's files are left alone: only a part of them may
   * be this image's.
   */
  prefetch(): void {
    for (const f of this.manifest.files) {
      if (!isPageFileName(f.name)) continue;
      let fd: number;
      try {
        fd = open(`${this.dir}/${f.name}`, O.RDONLY | O.CLOEXEC);
      } catch {
        continue; // advice only: the read says what is wrong with the file
      }
      const done = () => close(fd);
      readAheadAsync(fd).then(done, done);
    }
  }

  /**
   * Reads `into.length` bytes from byte `at` of `extent` (for comparing a part of it; nothing is
   * verified: the extent's checksum covers it whole).
   */
  readExtentPart(extent: PageExtent, at: number, into: Uint8Array): Uint8Array {
    const owner = this.#owner(extent);
    if (owner !== this) return owner.readExtentPart(local(extent), at, into);
    // Only the part is read: no buffer of the whole extent.
    const { name, offset, length } = this.#checkExtent(extent);
    if (!Number.isSafeInteger(at) || at < 0 || at + into.length > length) {
      throw new RangeError(`${into.length} bytes at ${at} are not inside an extent of ${length}`);
    }
    const fd = this.#pageFd(name);
    try {
      for (let done = 0; done < into.length;) {
        const n = pread(fd, into.subarray(done), BigInt(offset + at + done));
        if (n === 0) throw new ImageError(`${name}: truncated at offset ${offset + at + done}`);
        done += n;
      }
    } catch (err) {
      throw err instanceof ImageError ? err : fileError(name, err);
    }
    return into;
  }

  /** Throws an ImageError unless `data` has the extent's checksum. */
  verifyExtent(extent: PageExtent, data: Uint8Array): void {
    if (checksum(data) !== extent.checksum) {
      const owner = this.#owner(extent);
      const where = owner === this ? "" : ` of parent image ${owner.dir}`;
      const last = extent.offset + extent.length - 1;
      throw new ImageError(
        `${extent.file}${where}: checksum mismatch in bytes ${extent.offset}-${last} ` +
          `(${extent.length} bytes of page data): the image is damaged`,
      );
    }
  }

  /** The image of the chain that holds `extent` (its `image` counts the links up). */
  #owner(extent: PageExtent): ImageReader {
    const up = extent.image ?? 0;
    if (!Number.isSafeInteger(up) || up < 0) {
      throw new ImageError(`${extent.file}: invalid extent (image ${up})`);
    }
    if (up === 0) return this;
    let owner = this.#parent;
    for (let i = 1; owner && i < up; i++) owner = owner.#parent;
    if (!owner) {
      throw new ImageError(
        `${extent.file}: extent in the image ${up} parents up from ${this.dir}, ` +
          `but the chain is shorter`,
      );
    }
    return owner;
  }

  /** Checks an extent against the manifest and sizes the buffer it is read into. */
  #extentTarget(extent: PageExtent, into?: Uint8Array) {
    const { name, offset, length } = this.#checkExtent(extent);
    if (into && into.length < length) {
      throw new RangeError(`buffer of ${into.length} bytes is too small for ${length} bytes`);
    }
    const out = into ? into.subarray(0, length) : new Uint8Array(length);
    return { name, offset, length, out };
  }

  /** Checks an extent against the manifest. */
  #checkExtent(extent: PageExtent): { name: string; offset: number; length: number } {
    const { file: name, offset, length } = extent;
    const entry = this.#entries.get(name);
    if (!entry || !isPageFileName(name)) {
      throw new ImageError(`${name}: not a page file of image ${this.dir}`);
    }
    if (
      !Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0
    ) {
      throw new ImageError(`${name}: invalid extent (offset ${offset}, length ${length})`);
    }
    if (offset + length > entry.size) {
      throw new ImageError(
        `${name}: extent at offset ${offset} of ${length} bytes runs past the end (${entry.size})`,
      );
    }
    return { name, offset, length };
  }

  /**
   * Checks every file's size and checksum against the manifest (reads the whole image), and
   * then every parent's.
   */
  async verify(): Promise<void> {
    await this.#verifyOwn();
    await this.#parent?.verify();
  }

  async #verifyOwn(): Promise<void> {
    for (const entry of this.manifest.files) {
      await this.#checkSize(entry);
      let sum: number;
      try {
        sum = checksumFile(`${this.dir}/${entry.name}`).checksum;
      } catch (err) {
        throw fileError(entry.name, err);
      }
      if (sum !== entry.checksum) {
        throw new ImageError(`${entry.name}: checksum mismatch (file of ${entry.size} bytes)`);
      }
    }
  }

  /** Closes the page files opened by `readExtent` and `readExtentAsync`. */
  close(): void {
    for (const fd of [...this.#pageFds.values(), ...this.#directFds.values()]) {
      if (fd >= 0) close(fd);
    }
    this.#pageFds.clear();
    this.#directFds.clear();
    this.#parent?.close();
  }

  /** Same as `close()`, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }

  async #checkSize(entry: ImageFileEntry): Promise<void> {
    let info: Deno.FileInfo;
    try {
      info = await Deno.stat(`${this.dir}/${entry.name}`);
    } catch (err) {
      throw fileError(entry.name, err);
    }
    checkSize(entry, info.size);
  }

  /**
   * After a failed read through `direct`: a filesystem that opens O_DIRECT but wants another
   * alignment (EINVAL) is read through the page cache from now on (returns -1); anything else
   * is thrown.
   */
  #withoutDirect(name: string, direct: number, err: unknown): number {
    if (direct < 0 || !(err instanceof SyscallError) || err.errno !== Errno.EINVAL) throw err;
    this.#directFds.set(name, -1);
    return -1;
  }

  #pageFd(name: string): number {
    let fd = this.#pageFds.get(name);
    if (fd === undefined) {
      try {
        fd = open(`${this.dir}/${name}`, O.RDONLY | O.CLOEXEC);
      } catch (err) {
        throw fileError(name, err);
      }
      this.#pageFds.set(name, fd);
    }
    return fd;
  }

  /**
   * The O_DIRECT descriptor of page file `name` for reading `out` from `offset`, or -1 to read
   * through the page cache. An extent the cache does not hold (the dump wrote it O_DIRECT) goes
   * from the disk straight into `out` (page-aligned buffer, offset and length): no copy through
   * the cache, which a cold buffered read makes in small read-ahead steps.
   */
  #directFdFor(name: string, fd: number, out: Uint8Array, offset: number): number {
    const pages = out.length / PAGE_SIZE;
    if (!Number.isInteger(pages) || offset % PAGE_SIZE || addressOf(out) % BigInt(PAGE_SIZE)) {
      return -1;
    }
    if ((cachedPages(fd, offset, out.length) ?? pages) * 2 >= pages) return -1; // mostly cached
    let direct = this.#directFds.get(name);
    if (direct === undefined) {
      try {
        direct = open(`${this.dir}/${name}`, O.RDONLY | O.DIRECT | O.CLOEXEC);
      } catch {
        direct = -1; // a filesystem without O_DIRECT
      }
      this.#directFds.set(name, direct);
    }
    return direct;
  }
}

/** The extent as the image of the chain that holds it names it. */
function local(extent: PageExtent): PageExtent {
  return { ...extent, image: 0 };
}

function hex32(n: number): string {
  return `0x${(n >>> 0).toString(16).padStart(8, "0")}`;
}

/** The canonical path of `dir` (itself if it cannot be resolved): to tell a loop, or one image. */
export function realPath(dir: string): string {
  try {
    return Deno.realPathSync(dir);
  } catch {
    return dir;
  }
}

function metaFileName(name: string): string {
  return name.endsWith(".cbor") ? name : `${name}.cbor`;
}

function checkSize(entry: ImageFileEntry, size: number): void {
  if (size < entry.size) {
    throw new ImageError(`${entry.name}: truncated (${size} of ${entry.size} bytes)`);
  }
  if (size > entry.size) {
    throw new ImageError(`${entry.name}: ${size} bytes, the manifest says ${entry.size}`);
  }
}

function fileError(name: string, err: unknown): ImageError {
  const reason = err instanceof Deno.errors.NotFound
    ? "missing from the image"
    : `cannot read: ${(err as Error).message}`;
  return new ImageError(`${name}: ${reason}`, { cause: err });
}
