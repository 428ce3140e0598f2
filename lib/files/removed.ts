/**
 * Things that were removed from the filesystem while a process still used them: a FIFO or a
 * directory held open, a working directory that was rmdir'ed. Nothing names them any more, so
 * they are made again at their old path with their permission bits and owner (and any parent
 * directory that is gone too), opened or entered by the restored processes, and removed again
 * once every process of the restore has them. The kernel then shows them as before: "PATH
 * (deleted)", no links, a removed directory empty and closed to new entries. What is not kept: the
 * inode number (it is a new inode) and the times.
 *
 * The tool makes and removes them itself, where it finds the restored processes' paths: in its
 * own view of the filesystem (a pid namespace restore gets a copy of the tool's mounts), or under a
 * container's root (lib/inspect/mount_root.ts).
 */
import { mkfifo } from "../../ffi/mod.ts";
import { RestoreError } from "../errors.ts";
import type { Fields } from "../image/validate.ts";
import { entryExists } from "./util.ts";

/** Permission bits and owner of something removed, to make it again alike. */
export interface RemovedAttributes {
  /** st_mode permission bits (07777). */
  mode: number;
  uid: number;
  gid: number;
}

/** The image fields of `RemovedAttributes`. */
export const REMOVED_FIELDS: Fields = { mode: "whole", uid: "whole", gid: "whole" };

/** The kinds `recreate` makes. */
export type RemovedKind = "fifo" | "directory";

interface Made {
  kind: RemovedKind;
  /** What was made, the missing parents first: removed in reverse. */
  paths: string[];
}

// What each restore (scope) made, by path.
const made = new WeakMap<object, Map<string, Made>>();

/**
 * Why `path` cannot be made again as a removed `kind` now (something else has its name), or
 * null. For the checks before anything is made.
 */
export function whyNotRecreatable(path: string, kind: RemovedKind, root = ""): string | null {
  if (!path.startsWith("/")) return `the removed ${kind} "${path}" has no absolute path`;
  return entryExists(root + path)
    ? `the removed ${kind} ${path} cannot be made again: something else has its name now`
    : null;
}

/**
 * Makes `path` again as an empty directory or a FIFO with `attrs`, once per restore (`scope`):
 * a second call for the same path and kind finds it made. It stays until `removeRecreated`.
 * Throws a `RestoreError` about `what` when something else has the name. The tool finds `path`
 * under `root`.
 */
export function recreate(
  scope: object,
  path: string,
  kind: RemovedKind,
  attrs: RemovedAttributes,
  what: string,
  root = "",
): void {
  let mine = made.get(scope);
  if (!mine) made.set(scope, mine = new Map());
  const have = mine.get(path);
  if (have?.kind === kind) return;
  const why = have ? `it was made again as a ${have.kind}` : whyNotRecreatable(path, kind, root);
  if (why) throw new RestoreError(`${what}: ${why}`);
  const entry: Made = { kind, paths: [] };
  mine.set(path, entry);
  // Parents that are gone too were removed with it (rm -rf): made again, removed again after.
  const parts = path.split("/").filter(Boolean);
  for (let i = 1; i < parts.length; i++) {
    const parent = root + "/" + parts.slice(0, i).join("/");
    if (entryExists(parent)) continue;
    Deno.mkdirSync(parent, { mode: 0o700 });
    entry.paths.push(parent);
  }
  const file = root + path;
  if (kind === "directory") Deno.mkdirSync(file, { mode: 0o700 });
  else mkfifo(file, 0o600);
  entry.paths.push(file);
  Deno.chownSync(file, attrs.uid, attrs.gid);
  Deno.chmodSync(file, attrs.mode & 0o7777); // after chown, which clears set-id bits
}

/** Removes everything `recreate` made for `scope`, the newest first. */
export function removeRecreated(scope: object): void {
  const mine = made.get(scope);
  made.delete(scope);
  for (const entry of [...(mine?.values() ?? [])].reverse()) {
    for (const path of [...entry.paths].reverse()) {
      try {
        Deno.removeSync(path);
      } catch { /* a parent someone else put something into stays */ }
    }
  }
}
