/**
 * The link from an incremental image to its parent: the image whose page data it reuses. A
 * manifest records where the parent is and which parent it was (the checksum of its manifest and
 * when it was made), so a parent that was replaced or changed since is refused, not trusted.
 */
import { dirname, isAbsolute, relative, resolve } from "node:path";

/** The manifest's `parent` key. */
export interface ParentLink {
  /**
   * The parent image directory: absolute when it was given so, else relative to the directory
   * that holds this image (so a chain of images can be moved together).
   */
  path: string;
  /** CRC-32 of the parent's whole `manifest.cbor` when this image was written. */
  manifestChecksum: number;
  /** The parent manifest's `createdAt`. */
  createdAt: string;
}

/** The `path` to record for the parent `parentDir` (as given) of the image `childDir`. */
export function recordedParentPath(childDir: string, parentDir: string): string {
  if (isAbsolute(parentDir)) return parentDir.length > 1 ? parentDir.replace(/\/+$/, "") : "/";
  return relative(dirname(resolve(childDir)), resolve(parentDir)) || ".";
}

/** The directory of the parent an image in `childDir` links to. */
export function parentDirOf(childDir: string, link: ParentLink): string {
  return isAbsolute(link.path) ? link.path : resolve(dirname(resolve(childDir)), link.path);
}

/** Whether `value` has the shape of a `ParentLink`. */
export function isParentLink(value: unknown): value is ParentLink {
  const p = value as Partial<ParentLink> | null;
  return typeof p === "object" && p !== null && typeof p.path === "string" && p.path !== "" &&
    typeof p.manifestChecksum === "number" && typeof p.createdAt === "string";
}
