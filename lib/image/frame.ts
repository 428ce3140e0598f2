/**
 * The frame around every CBOR file of an image (metadata files and the manifest): a fixed
 * 24-byte header, then the CBOR payload.
 *
 * ```text
 * offset size  field
 *      0    8  magic "TARDIGRD"
 *      8    4  format version, u32 little endian
 *     12    4  CRC-32 of the payload, u32 little endian
 *     16    8  payload length in bytes, u64 little endian
 *     24    …  payload: one CBOR data item
 * ```
 *
 * Magic and version stay at these offsets in every format version, so any reader can tell
 * "newer than me" from "damaged".
 */
// Named first so every resolver (also a script outside this checkout, and `deno install -g`, which
// ignores package.json overrides) settles on cbor-extract 2.2.2, the version the registry here
// serves for every platform, for cbor-x's optional dependency. Only its package.json is read:
// loading the module (a native string extractor) would cost tens of milliseconds at every start,
// and cbor-x's plain decoder is fast enough for image metadata.
// Versions in the specifiers, so mod.ts is importable from a script anywhere (no deno.json).
// deno-lint-ignore no-import-prefix
import "npm:cbor-extract@2.2.2/package.json" with { type: "json" };
// deno-lint-ignore no-import-prefix
import { Encoder } from "npm:cbor-x@1.6.8/encode";
import { ImageError } from "../errors.ts";
import { checksum } from "./checksum.ts";
import { BASE_FORMAT_VERSION, FORMAT_VERSION, MAGIC } from "./version.ts";

/** Size of the header before the CBOR payload. */
export const HEADER_SIZE = 24;

// Plain standard CBOR (no cbor-x record extension, Uint8Array as untagged byte strings), so
// any CBOR decoder reads an image. Bigints are written as 64-bit integers (or bignum tags) and
// so decode as bigints again.
const cbor = new Encoder({ useRecords: false, tagUint8Array: false });

/**
 * Encodes `value` as CBOR and frames it with the header, as format `version` (by default that of
 * an image without a parent).
 */
export function frame(value: unknown, version = BASE_FORMAT_VERSION): Uint8Array {
  const payload = cbor.encode(value);
  const out = new Uint8Array(HEADER_SIZE + payload.length);
  const view = new DataView(out.buffer);
  out.set(MAGIC, 0);
  view.setUint32(8, version, true);
  view.setUint32(12, checksum(payload), true);
  view.setBigUint64(16, BigInt(payload.length), true);
  out.set(payload, HEADER_SIZE);
  return out;
}

/** The parts of a framed file, before its payload is decoded. */
export interface Unframed {
  /** Format version from the header. */
  version: number;
  /** The CBOR payload (a view into the file's bytes). */
  payload: Uint8Array;
}

/**
 * Checks the header of the framed file `name` (magic, version, length, checksum) and returns
 * its payload. Errors name the file and the reason.
 */
export function unframe(name: string, bytes: Uint8Array): Unframed {
  if (bytes.length < HEADER_SIZE) {
    throw new ImageError(`${name}: truncated (${bytes.length} bytes, header needs ${HEADER_SIZE})`);
  }
  if (!MAGIC.every((b, i) => bytes[i] === b)) {
    throw new ImageError(`${name}: not a tardigrade image file (bad magic)`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const version = view.getUint32(8, true);
  checkVersion(name, version);
  const length = view.getBigUint64(16, true);
  const have = BigInt(bytes.length - HEADER_SIZE);
  if (length > have) {
    throw new ImageError(`${name}: truncated (payload ${have} of ${length} bytes)`);
  }
  if (length < have) {
    throw new ImageError(`${name}: ${have - length} unexpected bytes after the payload`);
  }
  const payload = bytes.subarray(HEADER_SIZE);
  if (checksum(payload) !== view.getUint32(12, true)) {
    throw new ImageError(
      `${name}: checksum mismatch in bytes ${HEADER_SIZE}-${bytes.length - 1} (its payload): ` +
        `the image is damaged`,
    );
  }
  return { version, payload };
}

/** Decodes the payload of a checked file; damage past the checksum still gets a clear error. */
export function decodePayload(name: string, payload: Uint8Array): unknown {
  try {
    return cbor.decode(payload);
  } catch (err) {
    throw new ImageError(`${name}: malformed CBOR (${(err as Error).message})`, { cause: err });
  }
}

/** Refuses a format version this tool cannot read, saying why. */
export function checkVersion(name: string, version: number): void {
  if (version > FORMAT_VERSION) {
    throw new ImageError(
      `${name}: format version ${version} is newer than this tool's ${FORMAT_VERSION}; ` +
        `read it with a newer tardigrade`,
    );
  }
  if (version < 1) throw new ImageError(`${name}: format version ${version} is not valid`);
}
