/** Reads and verifies an image directory written by `ImageWriter`. */
import { close, O, open, preadAsync } from "../../ffi/mod.ts";
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

/** Options of `ImageReader.open`. */
export interface ImageReaderOptions {
  /** Checksum every file against the manifest before returning (reads the whole image). */
  verify?: boolean;
  /** Refuse an image written on another architecture (default true; false for inspection). */
  checkArch?: boolean;
}

/** Options of `ImageReader.readExtent`. */
export interface ReadExtentOptions {
  /** Check the extent's checksum after reading (default true). */
  verify?: boolean;
}

/**
 * An open image. Opening checks the manifest (magic, format version, architecture) and that
 * every file it lists is there with its size; `verify` also checks every checksum. Every
 * refusal is an `ImageError` naming the file and the reason.
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
  #pageFiles = new Map<string, Deno.FsFile>();
  /** Raw descriptors of page files, for reads on another thread (a FsFile has no fd). */
  #pageFds = new Map<string, number>();

  private constructor(
    /** The image directory. */
    readonly dir: string,
    /** The image's manifest, as read from `manifest.cbor`. */
    readonly manifest: ImageManifest,
  ) {
    this.#entries = new Map(manifest.files.map((f) => [f.name, f]));
  }

  /** Opens the image in `dir`, refusing a damaged, newer or foreign image. */
  static async open(dir: string, options: ImageReaderOptions = {}): Promise<ImageReader> {
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
    const reader = new ImageReader(dir, manifest);
    for (const entry of manifest.files) await reader.#checkSize(entry);
    if (options.verify) await reader.verify();
    return reader;
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
   * checksum against the manifest and its header.
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
    return decodePayload(fileName, unframe(fileName, bytes).payload) as T;
  }

  /**
   * Reads the bytes of `extent` into `into` (or a new buffer) and returns them as a view of
   * exactly `extent.length` bytes; checks the extent's checksum unless `verify` is false.
   */
  readExtent(extent: PageExtent, into?: Uint8Array, options: ReadExtentOptions = {}): Uint8Array {
    const { name, offset, length, out } = this.#extentTarget(extent, into);
    const file = this.#pageFile(name);
    try {
      file.seekSync(offset, Deno.SeekMode.Start);
      for (let done = 0; done < length;) {
        const n = file.readSync(out.subarray(done));
        if (n === null) {
          throw new ImageError(`${name}: truncated at offset ${offset + done}`);
        }
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
  async readExtentAsync(extent: PageExtent, into: Uint8Array): Promise<Uint8Array> {
    const { name, offset, length, out } = this.#extentTarget(extent, into);
    const fd = this.#pageFd(name);
    try {
      for (let done = 0; done < length;) {
        const n = await preadAsync(fd, out.subarray(done), offset + done);
        if (n === 0) throw new ImageError(`${name}: truncated at offset ${offset + done}`);
        done += n;
      }
    } catch (err) {
      throw err instanceof ImageError ? err : fileError(name, err);
    }
    return out;
  }

  /** Throws an ImageError unless `data` has the extent's checksum. */
  verifyExtent(extent: PageExtent, data: Uint8Array): void {
    if (checksum(data) !== extent.checksum) {
      throw new ImageError(
        `${extent.file}: checksum mismatch at offset ${extent.offset} (${extent.length} bytes)`,
      );
    }
  }

  /** Checks an extent against the manifest and sizes the buffer it is read into. */
  #extentTarget(extent: PageExtent, into?: Uint8Array) {
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
    if (into && into.length < length) {
      throw new RangeError(`buffer of ${into.length} bytes is too small for ${length} bytes`);
    }
    const out = into ? into.subarray(0, length) : new Uint8Array(length);
    return { name, offset, length, out };
  }

  /** Checks every file's size and checksum against the manifest (reads the whole image). */
  async verify(): Promise<void> {
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
    for (const f of this.#pageFiles.values()) f.close();
    this.#pageFiles.clear();
    for (const fd of this.#pageFds.values()) close(fd);
    this.#pageFds.clear();
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

  #pageFile(name: string): Deno.FsFile {
    let file = this.#pageFiles.get(name);
    if (!file) {
      try {
        file = Deno.openSync(`${this.dir}/${name}`, { read: true });
      } catch (err) {
        throw fileError(name, err);
      }
      this.#pageFiles.set(name, file);
    }
    return file;
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
