// Run as an unprivileged user by inspect_process_test.ts: prints the error names it meets.
import { freeze } from "../lib/ptrace/freeze.ts";
import { Process } from "../lib/inspect/process.ts";

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
try {
  await (await freeze(1)).release();
  console.log("freeze: ok");
} catch (err) {
  console.log(`freeze: ${(err as Error).name}: ${(err as Error).message}`);
}
