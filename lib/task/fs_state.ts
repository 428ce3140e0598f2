/** The process's fs state: working directory, root directory (chroot) and umask. */
import type { ProcessEntry } from "../image/schema.ts";
import type { Process } from "../inspect/process.ts";
import type { Injector } from "../ptrace/inject.ts";

/** The fs state of a process. */
export type FsState = Pick<ProcessEntry, "cwd" | "root" | "umask">;

/** The fs state of a process, from /proc. */
export async function dumpFsState(proc: Process): Promise<FsState> {
  const [cwd, root, umask] = await Promise.all([proc.cwd(), proc.root(), proc.umask()]);
  return { cwd, root, umask };
}

/** chroot, chdir and umask in the target. */
export function restoreFsState(inj: Injector, fs: FsState): void {
  const path = (p: string) => inj.put(new TextEncoder().encode(p + "\0"), 0);
  if (fs.root !== "/") inj.call("chroot", path(fs.root));
  inj.call("chdir", path(fs.cwd));
  inj.call("umask", fs.umask);
}
