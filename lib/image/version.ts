/** Versions an image carries, and the magic that starts every framed file of an image. */

/**
 * Version of the image layout this tool writes. A reader accepts images of this version and
 * older, and refuses newer ones: bump it for any change an older reader would misread.
 */
export const FORMAT_VERSION = 1;

/** Version of tardigrade that wrote an image, recorded in its manifest for diagnostics. */
export const TOOL_VERSION = "0.1.0";

/** The 8 bytes every metadata file (and the manifest) starts with. */
export const MAGIC = new TextEncoder().encode("TARDIGRD");
