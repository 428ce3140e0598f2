/**
 * The image container: a directory of CBOR metadata and raw page data, versioned and
 * checksummed. See docs/IMAGE.md for the layout.
 * @module
 */
export { ImageWriter, type ImageWriterOptions } from "./writer.ts";
export { ImageReader, type ImageReaderOptions, type ReadExtentOptions } from "./reader.ts";
export { DEFAULT_ROLL_SIZE, type PageExtent, type PageSink } from "./pages.ts";
export type { ImageFileEntry, ImageManifest } from "./manifest.ts";
export type { ParentLink } from "./parent.ts";
export { CHECKSUM_ALGORITHM } from "./checksum.ts";
export {
  BASE_FORMAT_VERSION,
  FORMAT_VERSION,
  INCREMENTAL_FORMAT_VERSION,
  SHARED_PAGES_FORMAT_VERSION,
  TOOL_VERSION,
} from "./version.ts";
