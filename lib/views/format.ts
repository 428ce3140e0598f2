/** Formatting shared by the views. */

/** A bigint as `0x…` hex, as the views and `--json` show addresses. */
export function hex(n: bigint): string {
  return `0x${n.toString(16)}`;
}
