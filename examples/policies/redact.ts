/**
 * A policy that keeps secrets out of the image: private anonymous mappings (not heap or stack)
 * whose contents hold a marker — `TARDIGRADE_REDACT`, default `-----BEGIN PRIVATE KEY-----` —
 * are not dumped and come back zero-filled. Put key material in its own mmap'd region and
 * reload it after a restore. `afterDump` lists what was left out.
 *
 *     tardigrade dump PID DIR --policy examples/policies/redact.ts
 */
import { type Mapping, type Policy, Process } from "../../mod.ts";

const marker = new TextEncoder().encode(
  Deno.env.get("TARDIGRADE_REDACT") ?? "-----BEGIN PRIVATE KEY-----",
);

function contains(hay: Uint8Array, needle: Uint8Array): boolean {
  for (let i = hay.indexOf(needle[0]); i >= 0; i = hay.indexOf(needle[0], i + 1)) {
    let j = 1;
    while (j < needle.length && hay[i + j] === needle[j]) j++;
    if (j === needle.length) return true;
  }
  return false;
}

/** Whether mapping `m` holds the marker (read while the process is frozen). */
async function holdsSecret(m: Mapping): Promise<boolean> {
  const proc = await Process.open(m.pid);
  const buf = new Uint8Array(Math.min(m.size, 16 << 20));
  for (let addr = m.start; addr < m.end; addr += BigInt(buf.length - marker.length)) {
    const n = await proc.readInto(
      addr,
      buf.subarray(0, Math.min(buf.length, Number(m.end - addr))),
    );
    if (contains(buf.subarray(0, n), marker)) return true;
    if (addr + BigInt(n) >= m.end) break;
  }
  return false;
}

const redacted: string[] = [];

const policy: Policy = {
  beforeFreeze() {
    redacted.length = 0; // one list per dump
  },
  async mapping(m) {
    if (m.kind !== "anonymous" || !m.prot.read || !(await holdsSecret(m))) return "dump";
    redacted.push(`0x${m.start.toString(16)}-0x${m.end.toString(16)}`);
    return "skip";
  },
  afterDump(image) {
    if (redacted.length) {
      console.error(`redact: left out of ${image.dir}: ${redacted.join(", ")}`);
    }
  },
};

export default policy;
