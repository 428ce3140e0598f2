/**
 * The namespaces a process is in, as the inode numbers of /proc/PID/ns: recorded for inspection
 * and comparison (`ImageProcess.namespaces()`, `diff`), not made again by a restore, which puts
 * the process in the restorer's namespaces or a new pid namespace, as asked.
 */
import type { NamespaceEntry } from "../image/schema.ts";
import type { Process } from "../inspect/process.ts";

/** Reads the namespace inodes of `proc`, by name. */
export async function dumpNamespaces(proc: Process): Promise<NamespaceEntry[]> {
  return Object.entries(await proc.namespaces()).map(([name, inode]) => ({ name, inode }));
}
