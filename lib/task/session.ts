/** Sessions and process groups a process leads. */
import type { ProcessEntry } from "../image/schema.ts";
import type { Injector } from "../ptrace/inject.ts";

/**
 * A process that led its session or process group leads a new one (other ids cannot be joined
 * without the processes that own them).
 */
export function restoreSession(inj: Injector, entry: Pick<ProcessEntry, "pid" | "sid" | "pgid">) {
  if (entry.sid === entry.pid) inj.call("setsid");
  else if (entry.pgid === entry.pid) inj.call("setpgid", 0, 0);
}
