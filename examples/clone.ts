/**
 * Clone a running process: dump it without stopping it for longer than the dump, then restore
 * copies beside it, each in a pid namespace of its own where it has the very pids it had (so
 * nothing in it notices). The original runs on untouched. Handy to poke at a copy of a live
 * server, or to run an experiment twice from the same point.
 *
 *     deno run -A examples/clone.ts PID [COPIES]
 *
 * A copy shares the network with the original: a process listening on a port cannot be cloned
 * while the original holds it (the restore says so).
 */
import { checkpoint, Process, restore } from "../mod.ts";

const pid = Number(Deno.args[0]);
const copies = Number(Deno.args[1] ?? 1);
if (!pid || !(copies >= 1)) {
  console.error("usage: deno run -A examples/clone.ts PID [COPIES]");
  Deno.exit(2);
}

const base = await Deno.makeTempDir({ prefix: "tardigrade-clone-" });
try {
  const dumped = await checkpoint(pid, `${base}/image`, { leaveRunning: true });
  console.log(
    `dumped ${dumped.processes.length} process(es) of ${pid}, frozen ${
      dumped.frozenMs.toFixed(1)
    } ms; the original runs on`,
  );
  const inits: number[] = [];
  for (let i = 0; i < copies; i++) {
    const copy = await restore(`${base}/image`, { pidNamespace: true });
    const { comm, state } = await (await Process.open(copy.pid)).stat();
    console.log(
      `copy ${i + 1}: host pid ${copy.pid} (pid ${copy.namespacePid} in its namespace), ` +
        `${comm} state ${state}`,
    );
    if (copy.namespaceInit) inits.push(copy.namespaceInit);
  }
  // Ending a namespace's init ends every process in it: the whole copy, and nothing else.
  if (inits.length) console.log(`to stop the copies: kill -9 ${inits.join(" ")}`);
} finally {
  await Deno.remove(base, { recursive: true });
}
