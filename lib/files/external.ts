/**
 * External files: open files the user declared to belong outside the dump (`dump --external KEY`,
 * a policy's fd answer `{ external: KEY }`), as CRIU's external files. Nothing of them is dumped:
 * the image records the key, the status flags and what the file was (for messages). At restore the
 * user hands each one in (`restore --inherit-fd fd[N]:KEY`, `inheritFds: { KEY: N }`): every
 * descriptor of that file gets the very open file the restoring tool has at fd N, taken with an
 * injected pidfd_getfd on the tool, and the dumped status flags. So `tardigrade restore DIR
 * --inherit-fd fd[1]:pipe:[12345] | tee log` gives the restored writer the pipe to this tee.
 *
 * Checked before anything is made: every external file of the image is handed in, every key
 * handed in is one of them (a typo must not pass silently), and each fd of the tool is open with
 * the access mode the file had (F_SETFL cannot change it).
 */
import { F, O } from "../../ffi/mod.ts";
import { DumpError, RestoreError } from "../errors.ts";
import type { Fd } from "../inspect/fds.ts";
import type { FileEntry, ProcessEntry } from "../image/schema.ts";
import { ACCESS_WORDS, outsidePeer, type OutsideProcesses } from "./outside_peers.ts";
import type { FileHandler, FileRestoreContext } from "./types.ts";
import { fcntl, handToTarget } from "./util.ts";

/** An open file left outside the image, handed in at restore. */
export interface ExternalEntry extends FileEntry {
  /** Always "external". */
  kind: "external";
  /** The name the restore asks for it by (`--inherit-fd fd[N]:KEY`): `pipe:[12345]` … */
  key: string;
  /** The inspection kind it had: `pipe`, `socket`, `fifo`, `tty` … */
  was: string;
  /** "fd 1 of process 123; when dumped, its read end is held by tee 456 (fd 0)", for messages. */
  origin: string;
  /** "pipe:[12345], handed in at restore (--inherit-fd)", for `inspect`. */
  description: string;
}

/** The entry of `fd`, declared external as `key`; `outside` names its peer, if it has one. */
export function externalEntry(fd: Fd, key: string, outside?: OutsideProcesses): ExternalEntry {
  const peer = outside ? outsidePeer(fd, outside) : null;
  return {
    id: fd.fileId,
    kind: "external",
    flags: fd.flags,
    key,
    was: fd.kind,
    origin: `fd ${fd.fd} of process ${fd.pid}${peer ? `; when dumped, ${peer}` : ""}`,
    description: `${key}, handed in at restore (--inherit-fd)`,
  };
}

/** `fd[N]:KEY` for each key, the way to hand them in. */
function inheritArgs(keys: string[]): string {
  return keys.map((k) => `--inherit-fd fd[N]:${k}`).join(" ");
}

/**
 * Checks what is handed in for the external files of `entries` (key → the tool's fd) before
 * anything is made; returns it as the restore uses it. Refuses an external file nothing is handed
 * in for, a key the image has no external file of, an fd the tool does not have open, or one of
 * another access mode than the file had.
 */
export function checkInherited(
  entries: readonly ProcessEntry[],
  given: Readonly<Record<string, number>>,
): ReadonlyMap<string, number> {
  const needed = new Map<string, ExternalEntry>();
  for (const p of entries) {
    for (const f of p.files) {
      if (f.kind === "external" && !needed.has(f.key as string)) {
        needed.set(f.key as string, f as ExternalEntry);
      }
    }
  }
  const inherited = new Map(Object.entries(given));
  for (const [key, fd] of inherited) {
    const arg = `--inherit-fd fd[${fd}]:${key}`;
    const entry = needed.get(key);
    if (!entry) {
      const have = needed.size
        ? `its outside files: ${[...needed.keys()].join(", ")}`
        : "it has none";
      throw new RestoreError(`${arg}: the image has no outside file ${key} (${have})`);
    }
    if (!Number.isInteger(fd) || fd < 0) throw new RestoreError(`${arg}: not a descriptor number`);
    let flags: number;
    try {
      flags = fcntl(fd, F.GETFL);
    } catch {
      throw new RestoreError(`${arg}: tardigrade has no fd ${fd} open to hand in`);
    }
    const want = entry.flags & O.ACCMODE, have = flags & O.ACCMODE;
    if (want !== have) {
      throw new RestoreError(
        `${arg}: fd ${fd} of tardigrade is open for ${ACCESS_WORDS[have]}, but ${key} ` +
          `(${entry.origin}) was open for ${ACCESS_WORDS[want]}`,
      );
    }
  }
  const missing = [...needed.values()].filter((e) => !inherited.has(e.key));
  if (missing.length) {
    const files = missing.map((e) => `${e.key} (${e.origin})`).join(", ");
    throw new RestoreError(
      `the image needs ${missing.length === 1 ? "an outside file" : "outside files"} for ` +
        `${files}: restore ${inheritArgs(missing.map((e) => e.key))}`,
    );
  }
  return inherited;
}

/** External files: made of the tool's descriptor handed in for their key. */
export const externalHandler: FileHandler<ExternalEntry> = {
  kind: "external",
  fields: { key: "text", was: "text", origin: "text", description: "text" },
  fdKinds: [], // the fd table makes their entries, as decided
  dump(fd: Fd): ExternalEntry {
    throw new DumpError(
      `fd ${fd.fd} of process ${fd.pid}: external entries come from the fd table`,
    );
  },
  open(e: ExternalEntry, ctx: FileRestoreContext): number {
    const mine = ctx.inherited?.get(e.key);
    if (mine === undefined) {
      throw new RestoreError(
        `the image needs an outside file for ${e.key} (${e.origin}): restore ` +
          inheritArgs([e.key]),
      );
    }
    return handToTarget(ctx, mine, `${e.key} (--inherit-fd fd[${mine}]:${e.key})`);
  },
};
