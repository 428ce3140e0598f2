/** Process attributes set with personality(2) and prctl(2): personality, parent-death signal. */
import { PR } from "../../ffi/mod.ts";
import type { ProcessEntry } from "../image/schema.ts";
import type { Process } from "../inspect/process.ts";
import type { Injector } from "../ptrace/inject.ts";

/** The attributes of a process. */
export type Attributes = Pick<ProcessEntry, "personality" | "pdeathsig">;

/** Reads them: personality from /proc, the parent-death signal asked in the target. */
export async function dumpAttributes(proc: Process, inj: Injector): Promise<Attributes> {
  inj.call("prctl", PR.GET_PDEATHSIG, inj.scratch());
  const pdeathsig = new DataView(inj.get(0, 4).slice().buffer).getInt32(0, true);
  return { personality: await proc.personality(), pdeathsig };
}

/** Sets them in the target; after its credentials, as a change of uid clears the signal. */
export function restoreAttributes(inj: Injector, a: Attributes): void {
  if (a.pdeathsig) inj.call("prctl", PR.SET_PDEATHSIG, a.pdeathsig);
  inj.call("personality", a.personality);
}
