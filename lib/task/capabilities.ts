/**
 * Capabilities and securebits, which belong to each thread (a capset or prctl changes its caller's
 * only). The sets are read from /proc/PID/task/TID/status, the securebits asked in the thread.
 * The restore gives them in steps that each need what a later one takes away (credentials.ts puts
 * them in order); these are the steps.
 */
import { capName, capsIn, encodeCapset, PR, PR_CAP_AMBIENT, SECBIT } from "../../ffi/mod.ts";
import type { ThreadEntry } from "../image/schema.ts";
import { hexMask, statusField } from "../inspect/procfs.ts";
import type { Injector } from "../ptrace/inject.ts";

/** A thread's securebits, asked in the thread (`inj` runs in it). */
export function dumpSecurebits(inj: Injector): number {
  return queueSecurebits(inj)();
}

/** `dumpSecurebits` queued (`Injector.queueCall`): made with the calls queued beside it. */
export function queueSecurebits(inj: Injector): () => number {
  const bits = inj.queueCall("prctl", [PR.GET_SECUREBITS, 0, 0, 0, 0]);
  return () => Number(bits());
}

/**
 * The capabilities a process made by this tool can be given: a root child of the tool gets its
 * bounding set, and no process can ever gain one outside it.
 */
function attainable(): bigint {
  return hexMask(statusField(Deno.pid, "CapBnd"));
}

/**
 * Why the threads' capabilities could not be given back by this tool, naming the process, the
 * thread, the set and the capabilities; undefined when they all can. A restore that let them go
 * would run the program with fewer privileges than it had (or refuse it: verify.ts). In a user
 * namespace of its own (`ownUserNamespace`) every one can: they are the namespace's, and its
 * maker has them all there.
 */
export function unattainableCapabilities(
  pid: number,
  threads: ThreadEntry[],
  ownUserNamespace = false,
): string | undefined {
  if (ownUserNamespace) return undefined;
  const have = attainable();
  for (const t of threads) {
    if (!t.creds) continue;
    const sets: [string, bigint][] = [
      ["bounding", t.creds.capBnd],
      ["permitted", t.creds.capPrm],
      ["inheritable", t.creds.capInh],
    ];
    for (const [name, set] of sets) {
      const missing = capsIn(set & ~have);
      if (missing.length === 0) continue;
      return `process ${pid} (thread ${t.tid}) has ${missing.map(capName).join(", ")} in its ` +
        `${name} capability set, which tardigrade itself cannot have here (its bounding set is ` +
        `0x${have.toString(16)}): a restore could not give ${
          missing.length > 1 ? "them" : "it"
        } back`;
    }
  }
  return undefined;
}

/** Sets the thread's effective, permitted and inheritable sets (capset). */
export function setCapabilitySets(
  inj: Injector,
  sets: { effective: bigint; permitted: bigint; inheritable: bigint },
): void {
  const { header, data } = encodeCapset(sets);
  inj.call("capset", inj.put(header, 0), inj.put(data, 64));
}

/**
 * The thread's capability sets as they are now, from /proc (`inj.pid`, `inj.tid` are the host's).
 */
export function currentCapabilities(inj: Injector): { effective: bigint; permitted: bigint } {
  const field = (name: string) => hexMask(statusField(inj.pid, name, inj.tid));
  return { effective: field("CapEff"), permitted: field("CapPrm") };
}

/** Raises each capability of `ambient` (each must be permitted and inheritable already). */
export function raiseAmbient(inj: Injector, ambient: bigint): void {
  for (const cap of capsIn(ambient)) {
    inj.call("prctl", PR.CAP_AMBIENT, PR_CAP_AMBIENT.RAISE, cap, 0, 0);
  }
}

/** Drops from the bounding set every capability not in `bounding` (needs CAP_SETPCAP). */
export function limitBoundingSet(inj: Injector, bounding: bigint): void {
  const now = hexMask(statusField(inj.pid, "CapBnd", inj.tid));
  for (const cap of capsIn(now & ~bounding)) inj.call("prctl", PR.CAPBSET_DROP, cap, 0, 0, 0);
}

/** Sets the thread's securebits (needs CAP_SETPCAP; locks set here stay). */
export function setSecurebits(inj: Injector, bits: number): void {
  inj.call("prctl", PR.SET_SECUREBITS, bits, 0, 0, 0);
}

/** Securebits under which a change of uid leaves the capability sets alone. */
export const KEEP_CAPABILITIES_ACROSS_SETUID = SECBIT.NO_SETUID_FIXUP;
