// Run as an unprivileged user by inspect_process_test.ts: prints the error names it meets.
import { Process } from "../lib/process.ts";

const p = await Process.open(1);
console.log(`comm: ${await p.comm()}`);
for (
  const [what, run] of [
    ["read", () => p.read(0x400000n, 8)],
    ["environ", () => p.environ()],
  ] as const
) {
  try {
    await run();
    console.log(`${what}: ok`);
  } catch (err) {
    console.log(`${what}: ${(err as Error).name}`);
  }
}
