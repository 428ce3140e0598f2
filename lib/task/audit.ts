/**
 * The audit identity of a process: its login uid (set once by login or sshd through
 * /proc/self/loginuid, inherited by everything started from that login) and its audit session id.
 *
 * Only the process itself may write its login uid (another process gets EPERM, root included),
 * so the restore writes it from inside, before its threads are made (they inherit it) and before
 * the credentials drop (changing a login uid that is set needs CAP_AUDIT_CONTROL). The kernel
 * hands out a new session id with every write: a process whose login uid and session differ from
 * the restorer's cannot get its session id back, and the restore's comparison refuses it (unless
 * differences are allowed). One restored from the same login session as the restorer inherits
 * both unchanged.
 */
import { AT_FDCWD, errnoText, O, SyscallError } from "../../ffi/mod.ts";
import { RestoreError } from "../errors.ts";
import type { ProcessEntry } from "../image/schema.ts";
import type { Injector } from "../ptrace/inject.ts";

/** The audit identity of a process. */
export type Audit = NonNullable<ProcessEntry["audit"]>;

function readNumber(pid: number, name: string): number {
  return Number(Deno.readTextFileSync(`/proc/${pid}/${name}`).trim());
}

/** The login uid and session id of process `pid`, from /proc. */
export function dumpAudit(pid: number): Audit {
  return { loginuid: readNumber(pid, "loginuid"), sessionid: readNumber(pid, "sessionid") };
}

/** Gives the process `inj` runs in (its main thread) its login uid, when it is not that already. */
export function restoreAudit(inj: Injector, audit: Audit | undefined): void {
  if (!audit || readNumber(inj.pid, "loginuid") === audit.loginuid) return;
  const path = inj.put(new TextEncoder().encode("/proc/self/loginuid\0"), 0);
  const text = new TextEncoder().encode(String(audit.loginuid));
  const value = inj.put(text, 64);
  let fd = -1;
  try {
    fd = Number(inj.call("openat", AT_FDCWD, path, O.WRONLY, 0));
    inj.call("write", fd, value, text.length);
  } catch (err) {
    if (!(err instanceof SyscallError)) throw err;
    throw new RestoreError(
      `process ${inj.pid}: setting its audit login uid ${audit.loginuid} failed: ${err.code} ` +
        `(${errnoText(err.errno)}; changing one that is set needs CAP_AUDIT_CONTROL, and the ` +
        `kernel may make login uids immutable)`,
      { cause: err },
    );
  } finally {
    if (fd >= 0) inj.call("close", fd);
  }
}
