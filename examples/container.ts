/**
 * Checkpoint a running container and bring it back: its init (pid 1 of its pid namespace) and
 * every process below it are dumped with their namespaces, ended, and restored into fresh
 * namespaces of the same kinds, where the init is pid 1 again. Shows the namespaces the container
 * lives in before and after (as `proc(PID).namespaces()` shows them in `tardigrade repl`).
 *
 *     unshare --pid --fork --mount-proc --uts --ipc sh -c 'hostname box; while :; do sleep 1; done' &
 *     deno run -A examples/container.ts INIT_PID
 *
 * INIT_PID is the host pid of the container's init (the child of `unshare`). Needs root.
 */
import { checkpoint, Process, restore } from "../mod.ts";

const pid = Number(Deno.args[0]);
if (!pid) {
  console.error("usage: deno run -A examples/container.ts INIT_PID");
  Deno.exit(2);
}

/** The kinds of namespace `p` lives in apart from this process, with their inode numbers. */
async function ownNamespaces(p: number): Promise<string> {
  const mine = await (await Process.open(Deno.pid)).namespaces();
  const its = await (await Process.open(p)).namespaces();
  const kinds = Object.keys(its).filter((k) => !k.endsWith("_for_children") && its[k] !== mine[k]);
  return kinds.map((k) => `${k}:[${its[k]}]`).join(" ") || "none (the host's)";
}

const base = await Deno.makeTempDir({ prefix: "tardigrade-container-" });
try {
  console.log(`container ${pid} lives in namespaces of its own: ${await ownNamespaces(pid)}`);
  const dumped = await checkpoint(pid, `${base}/image`);
  console.log(
    `dumped ${dumped.processes.length} process(es) of container ${pid}, frozen ` +
      `${dumped.frozenMs.toFixed(1)} ms; it ended`,
  );
  const restored = await restore(`${base}/image`);
  console.log(
    `restored container: host pid ${restored.pid}, pid ${restored.namespacePid} inside, ` +
      `${restored.processes.length} process(es)`,
  );
  console.log(`in fresh namespaces: ${await ownNamespaces(restored.pid)}`);
  console.log(
    `in the REPL (tardigrade repl): await proc(${restored.pid}).namespaces(); ` +
      `to stop it: kill -9 ${restored.pid}`,
  );
} finally {
  await Deno.remove(base, { recursive: true });
}
