/**
 * Search another process's memory for a string and print every address with the mapping it
 * lies in.
 *
 *     deno run -A examples/find-string.ts PID STRING
 */
import { type Mapping, Process } from "../mod.ts";

const [pidArg, needleText] = Deno.args;
if (!/^\d+$/.test(pidArg ?? "") || !needleText) {
  console.error("usage: deno run -A examples/find-string.ts PID STRING");
  Deno.exit(2);
}
const proc = await Process.open(Number(pidArg));
const needle = new TextEncoder().encode(needleText);
const CHUNK = 1 << 20;
const buf = new Uint8Array(CHUNK + needle.length); // overlap so a match across chunks is found

function indexesOf(hay: Uint8Array, from: number): number[] {
  const out: number[] = [];
  for (let i = hay.indexOf(needle[0], from); i >= 0; i = hay.indexOf(needle[0], i + 1)) {
    if (i + needle.length > hay.length) break;
    let j = 1;
    while (j < needle.length && hay[i + j] === needle[j]) j++;
    if (j === needle.length) out.push(i);
  }
  return out;
}

let hits = 0;
const maps: Mapping[] = [];
for await (const m of proc.mappings()) maps.push(m);
for (const m of maps) {
  // The vvar pages cannot be read; vsyscall is the kernel's.
  if (!m.prot.read || m.kind === "vvar" || m.kind === "vvar_vclock" || m.kind === "vsyscall") {
    continue;
  }
  for (let addr = m.start; addr < m.end; addr += BigInt(CHUNK)) {
    const want = Math.min(buf.length, Number(m.end - addr));
    const n = await proc.readInto(addr, buf.subarray(0, want));
    for (const i of indexesOf(buf.subarray(0, n), 0)) {
      if (i >= CHUNK) continue; // found again in the next chunk
      hits++;
      console.log(`0x${(addr + BigInt(i)).toString(16)}  ${m.perms}  ${m.kind}  ${m.path ?? ""}`);
    }
  }
}
console.log(
  `${hits} match${hits === 1 ? "" : "es"} of ${JSON.stringify(needleText)} in pid ${proc.pid}`,
);
