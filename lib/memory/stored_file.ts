/**
 * Stored files: a memfd, or a file deleted while mapped or open. Neither can be reopened by
 * path, so its contents go into the image as a memory object, which its mappings and its
 * descriptors (lib/files/memfd.ts, lib/files/regular.ts) refer to.
 *
 * Dump: stored once per file, under the key `storedFileKey` computes from the file's own stat
 * (whether it was reached through a mapping or a descriptor), with a memfd's seals.
 *
 * Restore: a memfd is made again (memfd_create, sized, with its owner and mode; MFD_NOEXEC_SEAL
 * for one made so); a deleted file is made again under its old name (or beside it, should that
 * be taken) with its owner and mode, opened in the target and by the tool, then unlinked: a
 * "ghost" that exists only while it is being opened. Once the contents are in, seals go on
 * (after the mode: F_SEAL_EXEC on a mode with x bits would seal writes too) and a deleted file
 * gets its access and modification times back (its ctime is the restore's: no call sets it).
 */
import { dirname } from "node:path";
import {
  close,
  encodeFileTimes,
  F,
  fstat,
  linkOpenFile,
  MFD,
  O,
  open,
  renameNoReplace,
  SEAL,
  type Stat,
  syscall,
} from "../../ffi/mod.ts";
import { RestoreError } from "../errors.ts";
import type { MemoryObjectEntry } from "../image/schema.ts";
import { mountRoot } from "../inspect/mount_root.ts";
import type { Injector } from "../ptrace/inject.ts";
import { type MadeObject, type MemoryObjects, withOpenFile } from "./objects.ts";
import { openInTarget, putString, type Target } from "./target.ts";

/** What a stored file is. */
export type StoredFileKind = "memfd" | "deleted-file";

/**
 * The object key of a file: its device and inode as stat gives them, so that a mapping of it and
 * a descriptor on it name the same object.
 */
export function storedFileKey(st: Pick<Stat, "dev" | "ino">): string {
  return `file:${st.dev}:${st.ino}`;
}

/** A memfd's name, or a deleted file's former path, from the name /proc shows for it. */
function storedFileName(procName: string): string {
  return procName.replace(/^\/memfd:/, "").replace(/ \(deleted\)$/, "");
}

/**
 * Stores the file at `path` (an entry of /proc/PID/map_files or /proc/PID/fd) once; `procName`
 * is the name /proc shows for it. Returns its object id.
 */
export function storeFile(
  objects: MemoryObjects,
  kind: StoredFileKind,
  procName: string,
  path: string,
): number {
  return withOpenFile(path, (fd) => {
    const st = fstat(fd);
    const key = storedFileKey(st);
    return objects.idOf(key) ?? objects.store(key, fd, st.size, {
      kind,
      name: storedFileName(procName),
      size: st.size,
      mode: st.mode & 0o7777,
      uid: st.uid,
      gid: st.gid,
      // A deleted regular file has no seals; its times are read before its contents are.
      ...(kind === "memfd"
        ? { seals: Number(syscall("fcntl", fd, F.GET_SEALS, 0)) }
        : { seals: 0, atimeNs: st.atimeNs, mtimeNs: st.mtimeNs }),
    });
  });
}

/**
 * Makes stored file `obj` inside the target (its contents come later). A ghost file on disk is
 * listed in `ghosts` for as long as it exists, so that a failed restore removes it.
 */
export function makeStoredFile(t: Target, obj: MemoryObjectEntry, ghosts: string[]): MadeObject {
  if (obj.kind === "memfd") {
    const fd = Number(t.inj.call("memfd_create", putString(t.inj, obj.name), memfdFlags(obj)));
    t.inj.call("ftruncate", fd, obj.size);
    setOwnerAndMode(t.inj, fd, obj);
    const what = `memfd ${obj.name}`;
    return { fd, writer: { fd: open(`/proc/${t.pid}/fd/${fd}`, O.RDWR), base: 0n, what } };
  }
  // A deleted file: made unnamed (O_TMPFILE) and named beside its old name while the target opens
  // it; renamed to the old name, which its (deleted) link shows, and unlinked at once. A restore
  // killed meanwhile leaves the name beside it, which no later restore needs; the old name for two
  // consecutive syscalls at most. Should the old name be taken, the one beside it is kept.
  // The tool makes it where it finds the target's paths: in a container's own mounts too.
  const root = mountRoot(t.pid);
  const name = root + obj.name;
  const inside = `${obj.name}.tardigrade-${crypto.randomUUID().slice(0, 8)}`;
  const beside = root + inside;
  let mine: number | undefined;
  try {
    try {
      mine = open(dirname(name), O.TMPFILE | O.RDWR, obj.mode || 0o600);
      linkOpenFile(mine, beside);
    } catch {
      // A filesystem without O_TMPFILE: a named file from the start.
      if (mine !== undefined) close(mine);
      mine = undefined;
      Deno.writeFileSync(beside, new Uint8Array(0), { mode: obj.mode || 0o600, createNew: true });
      mine = open(beside, O.RDWR);
    }
    syscall("ftruncate", mine, obj.size);
  } catch (err) {
    if (mine !== undefined) close(mine);
    try {
      Deno.removeSync(beside);
    } catch { /* never named */ }
    throw new RestoreError(`cannot recreate deleted file ${obj.name}: ${err}`);
  }
  ghosts.push(beside);
  let fd: number;
  try {
    fd = openInTarget(t.inj, inside, O.RDWR);
  } catch (err) {
    close(mine);
    throw err;
  }
  const path = renameNoReplace(beside, name) ? name : beside;
  ghosts[ghosts.length - 1] = path;
  Deno.removeSync(path);
  ghosts.pop();
  const what = `deleted file ${obj.name}` + (path === name ? "" : ` (made again as ${inside})`);
  setOwnerAndMode(t.inj, fd, obj);
  return { fd, writer: { fd: mine, base: 0n, what } };
}

const EXEC_BITS = 0o111;

/**
 * memfd_create flags for `obj`: sealing allowed (its seals go on later), and executable or not
 * as it was: MFD_NOEXEC_SEAL for one without x bits sealed F_SEAL_EXEC (what that flag makes),
 * MFD_EXEC otherwise (said, so vm.memfd_noexec does not decide). Older images have no owner:
 * the plain call, as before.
 */
function memfdFlags(obj: MemoryObjectEntry): number {
  if (obj.uid === undefined) return MFD.ALLOW_SEALING;
  const noExec = (obj.mode & EXEC_BITS) === 0 && ((obj.seals ?? 0) & SEAL.EXEC) !== 0;
  return MFD.ALLOW_SEALING | (noExec ? MFD.NOEXEC_SEAL : MFD.EXEC);
}

/** Gives a stored file made again its owner, then its mode (a chown clears set-id bits). */
function setOwnerAndMode(inj: Injector, fd: number, obj: MemoryObjectEntry): void {
  if (obj.uid !== undefined) inj.call("fchown", fd, obj.uid, obj.gid ?? 0);
  if (obj.uid !== undefined || obj.kind === "memfd") inj.call("fchmod", fd, obj.mode);
}

/**
 * Gives the deleted files among `objects` their access and modification times again, now that
 * their contents are written (which set the modification time).
 */
export function restoreFileTimes(
  inj: Injector,
  objects: MemoryObjectEntry[],
  fdOf: (id: number) => number,
): void {
  for (const obj of objects) {
    if (obj.atimeNs === undefined || obj.mtimeNs === undefined) continue;
    const times = inj.put(encodeFileTimes(obj.atimeNs, obj.mtimeNs));
    inj.call("utimensat", fdOf(obj.id), 0, times, 0); // futimens
  }
}

/** Removes the ghost files a failed restore left (`makeStoredFile`'s `ghosts`). */
export function removeGhosts(ghosts: string[]): void {
  for (const path of ghosts) {
    try {
      Deno.removeSync(path);
    } catch { /* ignore */ }
  }
}

/** Seals the memfds among `objects` again, now that their contents are in (F_ADD_SEALS). */
export function sealMemfds(
  inj: Injector,
  objects: MemoryObjectEntry[],
  fdOf: (id: number) => number,
): void {
  for (const obj of objects) {
    if (obj.kind === "memfd" && obj.seals) {
      inj.call("fcntl", fdOf(obj.id), F.ADD_SEALS, obj.seals);
    }
  }
}
