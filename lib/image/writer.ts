/** Writes an image directory: metadata files, page files and, at commit, the manifest. */
import { ImageError } from "../errors.ts";
import { checksum, CHECKSUM_ALGORITHM } from "./checksum.ts";
import { frame } from "./frame.ts";
import {
  type ImageFileEntry,
  type ImageManifest,
  isPlainFileName,
  MANIFEST_NAME,
} from "./manifest.ts";
import { DEFAULT_ROLL_SIZE, PageFileSink, type PageSink } from "./pages.ts";
import type { ParentLink } from "./parent.ts";
import { BASE_FORMAT_VERSION, INCREMENTAL_FORMAT_VERSION, TOOL_VERSION } from "./version.ts";

/** What follows an image directory's name in the name of the directory it is built in. */
export const PARTIAL = ".partial-";

/** Options of `ImageWriter.create`. */
export interface ImageWriterOptions {
  /** Size in bytes past which page data goes on in a new `pages-N.img` file (default 4 GiB). */
  rollSize?: number;
  /** Flush files and directories to disk at commit (default true; benchmarks turn it off). */
  sync?: boolean;
  /**
   * Makes an incremental image: its extents may live in this parent (recorded in the manifest,
   * written as format 2). Without it the image is format 1, as images have always been.
   */
  parent?: ParentLink;
}

/**
 * Builds an image in a private sibling directory (`DIR.partial-<random>`, mode 0700, files
 * mode 0600: they hold the process's secrets) and renames it to `DIR` at `commit()`, so `DIR`
 * is either absent or a complete image. Any write failure discards the whole partial directory
 * and throws an `ImageError`.
 *
 * ```ts
 * await using w = await ImageWriter.create("/var/lib/tardigrade/job-1");
 * await w.writeMeta("core", { pid: 1234, start: 0x7f00_0000_0000n });
 * const extent = w.pages().append(buffer); // keep extents in your own index
 * await w.commit(); // without it, leaving the block aborts
 * ```
 */
export class ImageWriter implements AsyncDisposable {
  #state: "open" | "committed" | "aborted" = "open";
  #metaFiles: ImageFileEntry[] = [];
  #sink: PageFileSink | undefined;

  private constructor(
    /** The directory the image will have once committed. */
    readonly dir: string,
    /** The private directory the image is built in until commit. */
    readonly partialDir: string,
    private readonly options: Required<Omit<ImageWriterOptions, "parent">>,
    private readonly parent: ParentLink | undefined,
  ) {}

  #needed = BASE_FORMAT_VERSION;

  /**
   * Format version of the image being written: the lowest whose readers understand it, 1 unless
   * it has a parent (2) or uses what `needsFormat` said.
   */
  get format(): number {
    return Math.max(this.parent ? INCREMENTAL_FORMAT_VERSION : BASE_FORMAT_VERSION, this.#needed);
  }

  /**
   * The image holds something readers older than `version` would misread: it is written as that
   * version at least. Called before the metadata files are written (each carries the version).
   */
  needsFormat(version: number): void {
    if (this.#metaFiles.length) {
      throw new ImageError(`format ${version} asked for after metadata files were written`);
    }
    if (version > this.#needed) this.#needed = version;
  }

  /** Starts an image that will become `dir`; refuses if `dir` exists and is not empty. */
  static async create(dir: string, options: ImageWriterOptions = {}): Promise<ImageWriter> {
    dir = dir.length > 1 ? dir.replace(/\/+$/, "") : dir;
    await refuseOccupied(dir);
    const suffix = Array.from(crypto.getRandomValues(new Uint8Array(6)))
      .map((b) => b.toString(16).padStart(2, "0")).join("");
    const partialDir = `${dir}${PARTIAL}${suffix}`;
    try {
      await Deno.mkdir(partialDir, { mode: 0o700 });
    } catch (err) {
      throw new ImageError(`cannot create ${partialDir}: ${(err as Error).message}`, {
        cause: err,
      });
    }
    return new ImageWriter(dir, partialDir, {
      rollSize: options.rollSize ?? DEFAULT_ROLL_SIZE,
      sync: options.sync ?? true,
    }, options.parent);
  }

  /** Whether `commit()` has succeeded. */
  get committed(): boolean {
    return this.#state === "committed";
  }

  /**
   * Writes the metadata file `NAME.cbor` (`name` may already end in `.cbor`): `value` as CBOR
   * (bigint, Uint8Array, nested objects and arrays, null, undefined) behind the image header.
   * Each name can be written once.
   */
  writeMeta(name: string, value: unknown): Promise<void> {
    return settle(() => this.#writeMeta(name, value));
  }

  #writeMeta(name: string, value: unknown): void {
    this.#checkOpen("write metadata");
    const fileName = name.endsWith(".cbor") ? name : `${name}.cbor`;
    if (!isPlainFileName(fileName) || fileName === MANIFEST_NAME) {
      throw new ImageError(`${fileName}: not a valid metadata name (or reserved)`);
    }
    if (this.#metaFiles.some((f) => f.name === fileName)) {
      throw new ImageError(`${fileName}: written twice`);
    }
    const bytes = frame(value, this.format);
    this.#writeNewFile(fileName, bytes);
    this.#metaFiles.push({ name: fileName, size: bytes.length, checksum: checksum(bytes) });
  }

  /** The sink for page data (the same one on every call); extents are for the caller to keep. */
  pages(): PageSink {
    this.#checkOpen("write pages");
    this.#sink ??= new PageFileSink(
      this.partialDir,
      this.options.rollSize,
      (err, what) => this.#fail(err, what),
    );
    return this.#sink;
  }

  /**
   * Writes the manifest, flushes everything to disk and renames the partial directory to `dir`
   * in one step (replacing `dir` if it is an empty directory). Returns the manifest written.
   */
  async commit(): Promise<ImageManifest> {
    await this.#sink?.settle(); // page writes still going on another thread
    const manifest = await settle(() => this.#writeManifest());
    if (this.options.sync) {
      // Nothing in the partial directory counts before the rename: every file and the directory
      // are flushed together, on Deno's blocking threads (one journal commit serves them all).
      const names = [...manifest.files.map((f) => f.name), MANIFEST_NAME];
      try {
        await Promise.all([...names, "."].map((name) => this.#flush(name)));
      } catch (err) {
        throw this.#fail(err, "commit");
      }
    }
    return await settle(() => this.#rename(manifest));
  }

  /** Closes the page files and writes the manifest that lists every file. */
  #writeManifest(): ImageManifest {
    this.#checkOpen("commit");
    try {
      // Flushed by `commit` with the other files, all at once.
      const pageFiles = this.#sink?.close(false) ?? [];
      const manifest: ImageManifest = {
        format: this.format,
        toolVersion: TOOL_VERSION,
        kernel: Deno.osRelease(),
        arch: Deno.build.arch,
        createdAt: new Date().toISOString(),
        checksum: CHECKSUM_ALGORITHM,
        files: [...this.#metaFiles, ...pageFiles],
        ...(this.parent ? { parent: this.parent } : {}),
      };
      this.#writeNewFile(MANIFEST_NAME, frame(manifest, this.format));
      return manifest;
    } catch (err) {
      throw this.#fail(err, "commit");
    }
  }

  /** fsync of `name` in the partial directory (`.`: the directory itself), naming it on failure. */
  async #flush(name: string): Promise<void> {
    try {
      using f = await Deno.open(`${this.partialDir}/${name}`, { read: true });
      await f.sync();
    } catch (err) {
      throw new ImageError(`${name}: fsync failed: ${(err as Error).message}`, { cause: err });
    }
  }

  /** Renames the flushed partial directory to `dir`, then flushes its parent. */
  #rename(manifest: ImageManifest): ImageManifest {
    this.#checkOpen("commit");
    try {
      Deno.renameSync(this.partialDir, this.dir);
    } catch (err) {
      throw this.#fail(
        new ImageError(`cannot rename to ${this.dir}: ${(err as Error).message}`, { cause: err }),
        "commit",
      );
    }
    this.#state = "committed";
    // So the rename survives a crash; a failure here leaves a complete image, and says so.
    if (this.options.sync) syncPath(parentOf(this.dir));
    return manifest;
  }

  /** Removes the partial image. Safe to call twice, after a failed commit, or after commit. */
  abort(): Promise<void> {
    return settle(() => this.#discard());
  }

  /** Aborts unless committed, so `await using` never leaves a partial image behind. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.abort();
  }

  #checkOpen(what: string): void {
    if (this.#state !== "open") {
      throw new ImageError(`cannot ${what}: the image ${this.dir} was already ${this.#state}`);
    }
  }

  /** Creates `name` (mode 0600) in the partial directory and writes all of `bytes`. */
  #writeNewFile(name: string, bytes: Uint8Array): void {
    try {
      using file = Deno.openSync(`${this.partialDir}/${name}`, {
        write: true,
        createNew: true,
        mode: 0o600,
      });
      for (let done = 0; done < bytes.length;) done += file.writeSync(bytes.subarray(done));
    } catch (err) {
      throw this.#fail(err, `${name}: write failed`);
    }
  }

  /** Discards the partial image after a failure and returns the error to throw. */
  #fail(err: unknown, what: string): ImageError {
    if (err instanceof ImageError && this.#state === "aborted") return err; // already reported
    let cleanup = "";
    try {
      this.#discard();
    } catch (cleanupErr) {
      cleanup = `; also failed to remove ${this.partialDir}: ${(cleanupErr as Error).message}`;
    }
    const reason = err instanceof Error ? err.message : String(err);
    return new ImageError(`${what}: ${reason} (image ${this.dir} discarded${cleanup})`, {
      cause: err,
    });
  }

  #discard(): void {
    if (this.#state !== "open") return;
    this.#state = "aborted";
    this.#sink?.discard();
    try {
      Deno.removeSync(this.partialDir, { recursive: true });
    } catch (err) {
      if (!(err instanceof Deno.errors.NotFound)) throw err;
    }
  }
}

/** Runs synchronous work behind a promise, so its errors arrive as rejections. */
function settle<T>(work: () => T): Promise<T> {
  try {
    return Promise.resolve(work());
  } catch (err) {
    return Promise.reject(err);
  }
}

/** Refuses `dir` if it exists and is anything but an empty directory. */
async function refuseOccupied(dir: string): Promise<void> {
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(dir);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return;
    throw new ImageError(`cannot check ${dir}: ${(err as Error).message}`, { cause: err });
  }
  if (!info.isDirectory) throw new ImageError(`${dir} exists and is not a directory`);
  for await (const _ of Deno.readDir(dir)) {
    throw new ImageError(`${dir} exists and is not empty; refusing to write an image there`);
  }
}

/** fsync of a file or directory by path. */
function syncPath(path: string): void {
  using f = Deno.openSync(path, { read: true });
  f.syncSync();
}

function parentOf(path: string): string {
  const slash = path.lastIndexOf("/");
  return slash < 0 ? "." : slash === 0 ? "/" : path.slice(0, slash);
}
