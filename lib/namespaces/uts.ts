/**
 * A container's UTS namespace: its host name and domain name, read inside the container's init
 * (an injected uname) and set again in the fresh namespace the restore gives it.
 */
import { CLONE } from "../../ffi/mod.ts";
import type { Injector } from "../ptrace/inject.ts";
import type { UtsEntry } from "../image/schema.ts";

/** `struct utsname`: six fields of 65 bytes; nodename is the second, domainname the sixth. */
const FIELD = 65;
const UTSNAME_SIZE = 6 * FIELD;

function field(bytes: Uint8Array, index: number): string {
  const f = bytes.subarray(index * FIELD, (index + 1) * FIELD);
  const end = f.indexOf(0);
  return new TextDecoder().decode(f.subarray(0, end < 0 ? FIELD : end));
}

/** The host and domain name of the UTS namespace of the process `inj` runs in. */
export function dumpUts(inj: Injector): UtsEntry {
  const at = inj.put(new Uint8Array(UTSNAME_SIZE), 0);
  inj.call("uname", at);
  const bytes = inj.mem.read(at, UTSNAME_SIZE);
  return { hostname: field(bytes, 1), domainname: field(bytes, 5) };
}

/** Gives the process `inj` runs in a UTS namespace of its own with the names of `uts`. */
export function makeUts(inj: Injector, uts: UtsEntry): void {
  inj.call("unshare", CLONE.NEWUTS);
  for (const [call, name] of [["sethostname", uts.hostname], ["setdomainname", uts.domainname]]) {
    const bytes = new TextEncoder().encode(name);
    inj.call(call as "sethostname" | "setdomainname", inj.put(bytes, 0), bytes.length);
  }
}
