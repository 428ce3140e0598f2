/**
 * The contents of a tmpfs a container mounted: its files live nowhere else, so the dump copies
 * them into the image (directories, regular files with their bytes, symbolic links, device nodes
 * and FIFOs; owner, permissions and modification time; hard links as links) and the restore
 * writes them into the fresh tmpfs before anything is mounted on it. The tool reads and writes
 * them through /proc/PID/root of the container's init, which walks the init's mounts without the
 * tool entering its namespace; the init makes each (injected mkdir, open, symlink, link, mknod),
 * which in a user namespace of the container's only a process inside may.
 * A mount point inside the tmpfs (a directory or file another mount covers) is recorded as an
 * empty directory or file. UNIX socket files are the socket code's (a bound socket makes its
 * own); extended attributes are not carried.
 */
import { AT_FDCWD, cstring, O } from "../../ffi/mod.ts";
import { DumpError, RestoreError } from "../errors.ts";
import type { Injector } from "../ptrace/inject.ts";
import type { TmpfsFileEntry } from "../image/schema.ts";

/** More than this in one tmpfs is refused: an image is no place for a scratch disk. */
const MAX_BYTES = 64 * 1024 * 1024;

/** The file type bits of st_mode. */
const S_IFMT = 0o170000;

/** The files of the tmpfs at `dir` (a path the tool reads, /proc/PID/root/…), by relative path. */
export function dumpTmpfsFiles(dir: string, what: string): TmpfsFileEntry[] {
  const files: TmpfsFileEntry[] = [];
  const dev = Deno.statSync(dir).dev;
  const seen = new Map<number, string>(); // inode → the first path, for hard links
  let bytes = 0;
  const walk = (rel: string) => {
    for (const e of Deno.readDirSync(`${dir}/${rel}`)) {
      const path = rel ? `${rel}/${e.name}` : e.name;
      const full = `${dir}/${path}`;
      const st = Deno.lstatSync(full);
      if (st.dev !== dev) {
        // Another mount covers it: its mount point only.
        files.push({ path, type: st.isDirectory ? "dir" : "file", mode: 0o755, uid: 0, gid: 0 });
        continue;
      }
      const base = {
        path,
        mode: (st.mode ?? 0) & ~S_IFMT,
        uid: st.uid ?? 0,
        gid: st.gid ?? 0,
        ...(st.mtime ? { mtimeMs: st.mtime.getTime() } : {}),
      };
      if (!st.isDirectory && (st.nlink ?? 1) > 1) {
        const first = seen.get(st.ino!);
        if (first !== undefined) {
          files.push({ ...base, type: "link", target: first });
          continue;
        }
        seen.set(st.ino!, path);
      }
      if (st.isDirectory) {
        files.push({ ...base, type: "dir" });
        walk(path);
      } else if (st.isFile) {
        const data = Deno.readFileSync(full);
        bytes += data.length;
        if (bytes > MAX_BYTES) {
          throw new DumpError(`${what} holds more than ${MAX_BYTES >> 20} MiB, not dumped`);
        }
        files.push({ ...base, type: "file", data });
      } else if (st.isSymlink) {
        files.push({ ...base, type: "symlink", target: Deno.readLinkSync(full) });
      } else if (st.isCharDevice || st.isBlockDevice || st.isFifo) {
        const type = st.isCharDevice ? "char" : st.isBlockDevice ? "block" : "fifo";
        files.push({ ...base, type, rdev: st.rdev ?? 0 });
      } // a socket file: made by the socket bound to it, if any
    }
  };
  walk("");
  return files;
}

/** The st_mode type bits of a node mknod makes. */
const NODE_TYPE = { char: 0o020000, block: 0o060000, fifo: 0o010000 } as const;

/**
 * Writes `files` into the empty tmpfs at `dir` as the tool reaches it (/proc/PID/root/…); `inDir`
 * is the same directory as the process `inj` runs in sees it (device nodes are its mknods).
 */
export function makeTmpfsFiles(
  inj: Injector,
  dir: string,
  inDir: string,
  files: readonly TmpfsFileEntry[],
): void {
  for (const f of files) {
    if (f.path.split("/").some((part) => part === ".." || part === "." || part === "")) {
      throw new RestoreError(
        `the image's tmpfs file ${JSON.stringify(f.path)} is not a plain path`,
      );
    }
    const full = `${dir}/${f.path}`;
    // Made by the init, which may create files in a tmpfs of its user namespace (the tool, whose
    // ids that namespace does not map, may not); their bytes, owners and modes are the tool's.
    const inside = (path: string, at: number) => inj.put(cstring(`${inDir}/${path}`), at);
    switch (f.type) {
      case "dir":
        inj.call("mkdir", inside(f.path, 0), 0o700);
        break;
      case "file": {
        const flags = O.WRONLY | O.CREAT | O.EXCL | O.CLOEXEC;
        inj.call("close", inj.call("openat", AT_FDCWD, inside(f.path, 0), flags, 0o600));
        // Without O_CREAT: a file of another owner in a sticky directory may be written.
        Deno.writeFileSync(full, f.data ?? new Uint8Array(), { create: false });
        break;
      }
      case "symlink":
        inj.call("symlink", inj.put(cstring(f.target!), 0), inside(f.path, 4096));
        continue; // its owner and times are not set (no lchown here)
      case "link":
        inj.call("link", inside(f.target!, 0), inside(f.path, 4096));
        continue;
      default:
        inj.call(
          "mknod",
          inj.put(cstring(`${inDir}/${f.path}`), 0),
          NODE_TYPE[f.type] | f.mode,
          f.rdev ?? 0,
        );
    }
    Deno.chownSync(full, f.uid, f.gid);
    Deno.chmodSync(full, f.mode);
  }
  // Times last: making a file in a directory changes the directory's.
  for (const f of [...files].reverse()) {
    if (f.mtimeMs === undefined || f.type === "symlink" || f.type === "link") continue;
    const t = new Date(f.mtimeMs);
    Deno.utimeSync(`${dir}/${f.path}`, t, t);
  }
}
