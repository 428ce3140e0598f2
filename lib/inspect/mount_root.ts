/**
 * Where the tool sees the files of a process. Paths a process shows (its descriptors, mappings,
 * working directory, bound UNIX sockets) are paths of its own mount tree; in the tool's mount
 * namespace they name the same files, but in another (a container's) they may name nothing or
 * something else (its own tmpfs, an overlay, a pivot_root'ed root). There, the process's
 * `/proc/PID/root` walks its mount tree, without the tool entering its namespace.
 */

/** The prefix under which the tool finds the paths of process `pid`: "" in its own mount namespace. */
export function mountRoot(pid: number): string {
  const ns = (p: number | "self") => Deno.readLinkSync(`/proc/${p}/ns/mnt`);
  return ns(pid) === ns("self") ? "" : `/proc/${pid}/root`;
}
