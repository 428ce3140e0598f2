/**
 * The restore's checks of what a process names by path: the files of its mappings, its
 * executable, its open files. Paths are the process's own, found under a root
 * (lib/inspect/mount_root.ts): the tool's mount tree before anything is made, or a container's,
 * once the restore has made its mounts (a file in its own tmpfs or overlay is nowhere before).
 */
import { RestoreError } from "../errors.ts";
import { handlerForEntry } from "../files/registry.ts";
import type { ProcessEntry } from "../image/schema.ts";
import { fileChanged, mappedFileProblem } from "../memory/mapping.ts";
import { onControllingTerminal } from "../task/terminal.ts";

/** Refuses the restore of process `p` when a file it names is not as dumped under `root`. */
export function checkFiles(p: ProcessEntry, root: string): void {
  const mapped = mappedFileProblem(p.mappings, root) ??
    (p.exe ? fileChanged(p.exe.path, p.exe.size, p.exe.mtimeMs, root) : null);
  if (mapped) throw new RestoreError(`cannot restore: ${mapped}`);
  for (const f of p.files) {
    const why = handlerForEntry(f)?.check?.(f, root);
    if (why && onControllingTerminal(p, f)) {
      throw new RestoreError(
        `cannot restore: ${why} (the terminal of process ${p.pid}; restore it with ` +
          `--shell-job from a terminal to bring it back there)`,
      );
    }
    if (why) throw new RestoreError(`cannot restore: ${why}`);
  }
}
