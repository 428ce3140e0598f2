/** Versions an image carries, and the magic that starts every framed file of an image. */

/**
 * Newest version of the image layout this tool reads and writes. A reader accepts images of this
 * version and older, and refuses newer ones: bump it for any change an older reader would
 * misread. Version 2 added incremental images (a parent image, extents that live in it), version
 * 3 memory a process shares with its parent (`MappingEntry.sharedWithParent`).
 */
export const FORMAT_VERSION = 3;

/** Version written for an incremental image (one with a parent image). */
export const INCREMENTAL_FORMAT_VERSION = 2;

/**
 * Version written for an image where a process shares memory with its parent: an older reader
 * would restore the child without those pages.
 */
export const SHARED_PAGES_FORMAT_VERSION = 3;

/**
 * Version written for an image without a parent: such an image is exactly what version 1 was, so
 * a tool that knows only version 1 still reads it. An incremental image is written as
 * `FORMAT_VERSION`, so such a tool refuses it instead of reading extents from the wrong image.
 */
export const BASE_FORMAT_VERSION = 1;

/** Version of tardigrade that wrote an image, recorded in its manifest for diagnostics. */
export const TOOL_VERSION = "0.1.0";

/** The 8 bytes every metadata file (and the manifest) starts with. */
export const MAGIC = new TextEncoder().encode("TARDIGRD");
