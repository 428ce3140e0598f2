/**
 * Runs every benchmark, one after the other, each in its own process: `deno task bench`.
 * Arguments are passed on (`--small` skips the 2 GiB targets of dump and restore).
 */
const benches = [
  "inspect.ts",
  "checksum.ts",
  "dump.ts",
  "incremental.ts",
  "restore.ts",
  "lazy_restore.ts",
  "criu.ts",
  "small.ts",
];

let failed = 0;
for (const name of benches) {
  console.log(`\n# bench/${name}`);
  const path = new URL(`./${name}`, import.meta.url).pathname;
  const { success } = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", path, ...Deno.args],
    stdout: "inherit",
    stderr: "inherit",
  }).output();
  if (!success) {
    console.log(`bench/${name} failed`);
    failed++;
  }
}
if (failed) Deno.exit(1);
