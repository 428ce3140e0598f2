/**
 * The descriptor table: each open file stored once in an object table keyed by its file id and
 * referred to by every fd that shares it, as the Linux-CR object table did.
 */
import { close, O, pidfdOpen, SYS } from "../../ffi/mod.ts";
import { DumpError, RestoreError } from "../errors.ts";
import type { Fd } from "../inspect/fds.ts";
import { abortScope, handlerForEntry, handlerForFd } from "./registry.ts";
import type { RegularEntry } from "./regular.ts";
import type { FdDecision, FileDumpContext, FileRestoreContext } from "./types.ts";
import { type Injector, SCRATCH_SIZE } from "../ptrace/inject.ts";
import type { RemoteMemory } from "../inspect/memory.ts";
import type { FdEntry, FileEntry, ProcessEntry } from "../image/schema.ts";
import { type MadeObjects, takeFd } from "../memory/objects.ts";

/** Open files already restored in a process of the tree, by file id: where to take them from. */
export type SharedFiles = Map<number, { pid: number; fd: number }>;

const F_DUPFD = 0;
const O_CLOEXEC = 0o2000000;

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

/** Dumps every descriptor of the frozen process, each as decided (the policy's checked answers). */
export async function dumpFdTable(
  ctx: FileDumpContext,
  decided: readonly { fd: Fd; decision: FdDecision }[],
): Promise<FdTableDump> {
  const files = new Map<number, FileEntry>();
  const fds: FdEntry[] = [];
  for (const { fd, decision } of decided) {
    if (decision === "skip") continue;
    const known = decision === "dump" ? ctx.dumpedFiles?.get(fd.fileId) : undefined;
    if (known) files.set(fd.fileId, known);
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
        const entry = { ...(await handler.dump(fd, ctx)), id: fd.fileId };
        files.set(fd.fileId, entry);
        ctx.dumpedFiles?.set(fd.fileId, entry);
      }
    }
    fds.push({ fd: fd.fd, file: fd.fileId, closeOnExec: fd.closeOnExec });
  }
  return { files: [...files.values()], fds };
}

/** Puts bytes in the scratch region above what the restorer itself uses, cycling. */
function scratchAllocator(inj: Injector) {
  const base = 16384;
  let at = base;
  return (data: Uint8Array): bigint => {
    if (at + data.length > Number(SCRATCH_SIZE)) at = base;
    const addr = inj.put(data, at);
    at += (data.length + 15) & ~15;
    return addr;
  };
}

/** Opens a pidfd of the tool inside the target, by the tool's pid (seen from the target). */
function toolPidfdByPid(inj: Injector): bigint {
  return inj.raw(SYS.pidfd_open, Deno.pid, 0);
}

/**
 * Restores every descriptor at its number, each open file made once. `toolPidfd` opens a pidfd
 * of the tool inside the target; by the tool's pid unless the target cannot see it (another pid
 * namespace).
 */
export function restoreFdTable(
  p: ProcessEntry,
  inj: Injector,
  mem: RemoteMemory,
  objects: MadeObjects,
  shared: SharedFiles = new Map(),
  scope?: object,
  toolPidfd: (inj: Injector) => bigint = toolPidfdByPid,
): () => void {
  const put = scratchAllocator(inj);
  const pidfd = pidfdOpen(inj.pid);
  const firstFd = new Map<number, number>();
  for (const f of p.fds) if (!firstFd.has(f.file)) firstFd.set(f.file, f.fd);
  const ctx: FileRestoreContext = {
    pid: inj.pid,
    injector: inj,
    memory: mem,
    pidfd,
    put,
    putString: (s) => put(new TextEncoder().encode(s + "\0")),
    toolPidfd: () => toolPidfd(inj),
    objectFd: (id) => objects.fd(id),
    fdOfFile: (id) => {
      const fd = firstFd.get(id);
      if (fd === undefined) throw new RestoreError(`no descriptor refers to open file ${id}`);
      return fd;
    },
    finalFds: new Map(p.fds.map((f) => [f.fd, f.fd])),
    scope,
  };
  const cleanup = () => {
    // Else the whole tree's restore releases them at its end. Alone, finish() settled or
    // resumed each file, unless the restore stopped early: what is left is dropped.
    if (!scope) abortScope(ctx);
    close(pidfd);
  };
  try {
    // Work above every final number so no dup2 lands on an fd still in use.
    const high = Math.max(2, ...p.fds.map((f) => f.fd)) + 1;
    objects.relocateFds(high + p.files.length);
    const temp = new Map<number, number>();
    const taken = new Set<number>();
    for (const f of p.files) {
      if (!firstFd.has(f.id)) continue;
      // An open file another process of the tree already has (shared since a fork): the same
      // open file, not a second one.
      const owner = shared.get(f.id);
      if (owner) taken.add(f.id);
      const fd = owner ? takeFd(inj, owner.pid, owner.fd) : handlerForEntry(f)!.open(f, ctx);
      const moved = Number(inj.call("fcntl", fd, F_DUPFD, high));
      inj.call("close", fd);
      temp.set(f.id, moved);
    }
    for (const f of p.fds) {
      inj.call("dup3", temp.get(f.file)!, f.fd, f.closeOnExec ? O_CLOEXEC : 0);
    }
    for (const fd of temp.values()) inj.call("close", fd);
    for (const f of p.files) {
      const fd = firstFd.get(f.id);
      if (fd === undefined || taken.has(f.id)) continue;
      handlerForEntry(f)!.finish?.(f, fd, ctx);
      shared.set(f.id, { pid: inj.pid, fd });
    }
  } catch (err) {
    cleanup();
    throw err;
  }
  return cleanup;
}
