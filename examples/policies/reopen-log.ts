/**
 * A policy for a process that writes a log file: every descriptor on a regular file whose path
 * ends in `.log` is restored by opening `TARDIGRADE_LOG` (default: the same path) instead of
 * the dumped file position — with O_APPEND the process goes on appending. Use it to move a log
 * to another disk or rotate it across a migration.
 *
 *     TARDIGRADE_LOG=/var/log/app-new.log tardigrade dump PID DIR --policy examples/policies/reopen-log.ts
 */
import type { Policy } from "../../mod.ts";

const to = Deno.env.get("TARDIGRADE_LOG");

const policy: Policy = {
  fd(fd) {
    if (fd.kind !== "file" || !fd.target.endsWith(".log")) return "dump";
    return { reopen: to ?? fd.target };
  },
};

export default policy;
