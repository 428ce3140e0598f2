/** The manifest: what an image is, what wrote it, and every file it holds with its checksum. */
import { ImageError } from "../errors.ts";
import { CHECKSUM_ALGORITHM } from "./checksum.ts";
import { checkVersion } from "./frame.ts";
import { isParentLink, type ParentLink } from "./parent.ts";

/** Name of the manifest file inside an image directory. */
export const MANIFEST_NAME = "manifest.cbor";

/** One file of an image, as the manifest records it. */
export interface ImageFileEntry {
  /** File name inside the image directory, e.g. `"pages-0.img"` or `"core.cbor"`. */
  name: string;
  /** Size in bytes. */
  size: number;
  /** Checksum of the whole file, with the manifest's `checksum` algorithm. */
  checksum: number;
}

/** The decoded contents of `manifest.cbor`. */
export interface ImageManifest {
  /** Format version of the image (the same as in every file header). */
  format: number;
  /** Version of tardigrade that wrote the image. */
  toolVersion: string;
  /** Kernel release of the machine that wrote the image (`uname -r`). */
  kernel: string;
  /** Architecture of the dumped processes, as `Deno.build.arch` names it (`"x86_64"`). */
  arch: string;
  /** When the image was committed, ISO 8601 in UTC. */
  createdAt: string;
  /** Checksum algorithm of every checksum in the image (`"crc32"`). */
  checksum: string;
  /** Every file of the image except the manifest itself. */
  files: ImageFileEntry[];
  /**
   * An incremental image only (format 2): the image whose page data it reuses, which must be
   * there, unchanged, to read it.
   */
  parent?: ParentLink;
}

/** Checks the shape and compatibility of a decoded manifest read with header version `version`. */
export function validateManifest(value: unknown, version: number): ImageManifest {
  const bad = (why: string): never => {
    throw new ImageError(`${MANIFEST_NAME}: malformed (${why})`);
  };
  if (typeof value !== "object" || value === null || Array.isArray(value)) bad("not a map");
  const m = value as Record<string, unknown>;
  if (typeof m.format !== "number") bad("no format version");
  checkVersion(MANIFEST_NAME, m.format as number);
  if (m.format !== version) {
    bad(`header says format ${version}, manifest says ${m.format}`);
  }
  for (const key of ["toolVersion", "kernel", "arch", "createdAt", "checksum"]) {
    if (typeof m[key] !== "string") bad(`${key} is missing or not text`);
  }
  if (m.checksum !== CHECKSUM_ALGORITHM) {
    throw new ImageError(
      `${MANIFEST_NAME}: checksum algorithm ${m.checksum} is unknown to this tool ` +
        `(it knows ${CHECKSUM_ALGORITHM})`,
    );
  }
  if (!Array.isArray(m.files)) bad("files is missing or not a list");
  for (const [i, f] of (m.files as unknown[]).entries()) {
    const e = f as Partial<ImageFileEntry> | null;
    if (
      typeof e?.name !== "string" || !isPlainFileName(e.name) ||
      typeof e.size !== "number" || typeof e.checksum !== "number"
    ) {
      bad(`entry ${i} of files is not {name, size, checksum}`);
    }
  }
  if (m.parent !== undefined && !isParentLink(m.parent)) {
    bad("parent is not {path, manifestChecksum, createdAt}");
  }
  return m as unknown as ImageManifest;
}

/** A name that stays inside the image directory: no separators, no leading dot. */
export function isPlainFileName(name: string): boolean {
  return /^[A-Za-z0-9_][A-Za-z0-9._-]*$/.test(name);
}
