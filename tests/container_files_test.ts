/**
 * A container's files in mounts of its own, which the tool's mount namespace does not show at
 * their paths (a tmpfs its init mounted, an overlay on host directories): open files, a shared
 * file mapping, its working directory, a FIFO, a listening UNIX socket, a deleted file, and a FIFO
 * and a directory removed while open are dumped, checked and made again in its own mount tree,
 * where container_files.c checks them. A file that changed since the dump is refused there,
 * naming it, and nothing is left.
 */
import assert from "node:assert/strict";
import { checkpoint, restore } from "../mod.ts";
import {
  childrenOf,
  fixture,
  isAlive,
  killAndReap,
  needs,
  notInstalled,
  runningFixtures,
  spawnTarget,
  waitUntil,
} from "./helpers.ts";

Deno.test(
  needs(
    "container files: held in its own tmpfs and overlay, checked and reopened in its mount tree",
    notInstalled("unshare", "cc"),
  ),
  async () => {
    const tmpfs = await Deno.makeTempDir({ prefix: "tardigrade-ctfiles-" });
    const layers = await Deno.makeTempDir({ prefix: "tardigrade-ctfiles-layers-" });
    const dir = await Deno.makeTempDir({ prefix: "tardigrade-ctfiles-image-" });
    const bin = await fixture("container_files");
    const unshare = await spawnTarget(
      "unshare",
      ["--pid", "--fork", "--mount-proc", bin, tmpfs, layers],
      { ready: /^(READY|SETUP FAILED).*$/m, append: true },
    );
    try {
      assert.match(unshare.output(), /^READY /m, unshare.output());
      const [init] = childrenOf(unshare.pid);
      assert.equal(await unshare.check(init), "PASS", unshare.output());
      assert.deepEqual([...Deno.readDirSync(tmpfs)], [], "the tool sees none of its files");
      await checkpoint(init, `${dir}/image`);
      await waitUntil(() => !isAlive(init), 5000, "the dumped container to end");
      await killAndReap(unshare.pid);

      // A file it reads in its overlay changed since the dump: refused once its mounts are made,
      // naming the path it has inside; no process is left.
      const base = `${layers}/lower/base`;
      const { mtime } = Deno.statSync(base);
      Deno.writeTextFileSync(base, "changed");
      await assert.rejects(
        () => restore(`${dir}/image`),
        new RegExp(`cannot restore: ${tmpfs}/merged/base changed since the dump`),
      );
      assert.deepEqual(runningFixtures(bin), [], "a process of the failed restore is left");
      Deno.writeTextFileSync(base, "lower");
      Deno.utimeSync(base, mtime!, mtime!);

      const restored = await restore(`${dir}/image`);
      assert.equal(await unshare.check(restored.pid), "PASS", unshare.output());
      assert.equal(await unshare.check(restored.pid), "PASS", "and it runs on");
      assert.deepEqual([...Deno.readDirSync(tmpfs)], [], "the restore made nothing in the tool's");
    } finally {
      for (const pid of runningFixtures(bin)) await killAndReap(pid);
      await killAndReap(unshare.pid);
      for (const d of [dir, tmpfs, layers]) {
        await Deno.remove(d, { recursive: true }).catch(() => {});
      }
    }
  },
);
