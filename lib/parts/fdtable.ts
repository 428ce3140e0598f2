/**
 * The descriptor table: each open file stored once in an object table keyed by its file id and
 * referred to by every fd that shares it, as the Linux-CR object table did.
 */
import { O } from "../../ffi/mod.ts";
import { DumpError } from "../errors.ts";
import { assignFileIds, type Fd } from "../fds.ts";
import { handlerForFd } from "../files/registry.ts";
import type { RegularEntry } from "../files/regular.ts";
import type { FileDumpContext } from "../files/types.ts";
import type { Policy } from "../policy.ts";
import type { FdEntry, FileEntry } from "../schema.ts";

/** The dumped descriptor table. */
export interface FdTableDump {
  files: FileEntry[];
  fds: FdEntry[];
}

function reopenEntry(fd: Fd, path: string): RegularEntry {
  const st = Deno.statSync(path);
  return {
    id: fd.fileId,
    kind: "regular",
    flags: fd.flags & ~(O.CREAT | O.TRUNC | O.EXCL),
    path,
    directory: st.isDirectory,
    position: 0n,
    size: st.size,
    mtimeMs: st.mtime?.getTime() ?? 0,
    inode: BigInt(st.ino ?? 0),
    dev: BigInt(st.dev),
  };
}

/** Dumps every descriptor of the frozen process, asking the policy about each. */
export async function dumpFdTable(ctx: FileDumpContext, policy: Policy): Promise<FdTableDump> {
  const files = new Map<number, FileEntry>();
  const fds: FdEntry[] = [];
  for (const fd of assignFileIds([ctx.pid])) {
    const decision = (await policy.fd?.(fd)) ?? "dump";
    if (decision === "skip") continue;
    if (!files.has(fd.fileId)) {
      if (typeof decision === "object") {
        files.set(fd.fileId, reopenEntry(fd, decision.reopen));
      } else {
        const handler = handlerForFd(fd);
        if (!handler) {
          throw new DumpError(
            `fd ${fd.fd} of process ${ctx.pid} is a ${fd.kind} (${fd.target}), which tardigrade ` +
              `cannot dump yet; a policy can skip it`,
          );
        }
        files.set(fd.fileId, { ...(await handler.dump(fd, ctx)), id: fd.fileId });
      }
    }
    fds.push({ fd: fd.fd, file: fd.fileId, closeOnExec: fd.closeOnExec });
  }
  return { files: [...files.values()], fds };
}
