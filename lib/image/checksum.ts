/**
 * The checksum of an image: CRC-32 (IEEE 802.3, the polynomial of zlib, gzip and PNG).
 *
 * Chosen by measurement on the target machine (bench/checksum.ts): `node:zlib` crc32 ran at
 * ≈ 33 GB/s, far above the ≈ 5.8 GB/s of `process_vm_readv`, so checksumming never bounds a
 * dump. It is not a cryptographic hash: it detects damage, not tampering.
 *
 * Loading `node:zlib` costs some 20 ms, a fifth of a small process's dump from the command line:
 * inputs below `FAST_FROM` go to the system's libz (ffi/zlib.ts, about 6 GB/s, bound in no time),
 * and `node:zlib` is loaded when the first large one comes. Both compute the same CRC-32.
 */
import { libzCrc32 } from "../../ffi/mod.ts";

/** Name of the checksum algorithm, as recorded in the manifest. */
export const CHECKSUM_ALGORITHM = "crc32";

/** Inputs of this size and more are worth loading `node:zlib` for. */
const FAST_FROM = 4 << 20;

type Crc32 = (bytes: Uint8Array, previous: number) => number;
let fast: Crc32 | undefined;

/** `node:zlib`'s crc32, loaded synchronously on first use (`process.getBuiltinModule`). */
function nodeCrc32(): Crc32 {
  const node = globalThis as { process?: { getBuiltinModule?(id: string): unknown } };
  return fast ??= (node.process!.getBuiltinModule!("node:zlib") as { crc32: Crc32 }).crc32;
}

/** CRC-32 of `bytes`; pass the CRC of the preceding bytes as `previous` to continue a stream. */
export function checksum(bytes: Uint8Array, previous = 0): number {
  if (fast || bytes.length >= FAST_FROM) return nodeCrc32()(bytes, previous);
  return libzCrc32(bytes, previous) ?? nodeCrc32()(bytes, previous);
}

// CRC-32 combination, after zlib's crc32_combine: arithmetic on polynomials over GF(2) modulo
// the CRC polynomial, in the reflected bit order CRC-32 uses.
const POLYNOMIAL = 0xedb88320;

/** a(x) · b(x) mod p(x). */
function multiplyModP(a: number, b: number): number {
  let product = 0;
  for (let m = 0x80000000; m !== 0; m >>>= 1) {
    if (a & m) {
      product ^= b;
      if ((a & (m - 1)) === 0) break;
    }
    b = b & 1 ? (b >>> 1) ^ POLYNOMIAL : b >>> 1;
  }
  return product >>> 0;
}

/** x^(2^k) mod p(x) for k = 0..63. */
const X_POW_2K = new Uint32Array(64);
X_POW_2K[0] = 0x40000000; // x^1
for (let k = 1; k < 64; k++) X_POW_2K[k] = multiplyModP(X_POW_2K[k - 1], X_POW_2K[k - 1]);

/**
 * CRC-32 of the concatenation A‖B from CRC(A), CRC(B) and B's length, without touching the
 * bytes: a page file's checksum follows from its extents' checksums in one pass over the data.
 */
export function combineChecksums(first: number, second: number, secondLength: number): number {
  let xPow = 0x80000000; // x^0
  // x^(8 · secondLength): walk the bits of the length in bytes, starting at 2^3 (bits per byte).
  for (let n = secondLength, k = 3; n > 0; n = Math.floor(n / 2), k++) {
    if (n % 2) xPow = multiplyModP(X_POW_2K[k % 64], xPow);
  }
  return (multiplyModP(xPow, first) ^ second) >>> 0;
}

/** Chunk size for checksumming whole files: large enough to amortise each read. */
const FILE_CHUNK = 16 << 20;

/** CRC-32 of a whole file, read in large chunks so a page file never sits in memory at once. */
export function checksumFile(path: string): { size: number; checksum: number } {
  using file = Deno.openSync(path, { read: true });
  const chunk = new Uint8Array(FILE_CHUNK);
  let crc = 0;
  let size = 0;
  for (;;) {
    const n = file.readSync(chunk);
    if (n === null) break;
    crc = checksum(chunk.subarray(0, n), crc);
    size += n;
  }
  return { size, checksum: crc };
}
