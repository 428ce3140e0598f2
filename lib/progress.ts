/** Progress of a dump or a restore, in bytes of page data. */

/**
 * Told as page data is written: `bytes` so far and, when known (a restore), `totalBytes`. A dump
 * does not know its total before it has copied: `totalBytes` is undefined there.
 */
export type ProgressCallback = (bytes: number, totalBytes?: number) => void;
