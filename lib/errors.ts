/** Errors named for what happened, as psutil names them. */
import { Errno, SyscallError, TardigradeError } from "../ffi/mod.ts";

export { SyscallError, TardigradeError };

/** The process (or thread) does not exist, or exited while it was being looked at. */
export class NoSuchProcess extends TardigradeError {
  /** Process `pid` is gone; `detail` says what was being looked at. */
  constructor(readonly pid: number, detail?: string, options?: ErrorOptions) {
    super(`no such process ${pid}${detail ? ` (${detail})` : ""}`, options);
  }
}

/** The kernel refused access to a process or one of its files. */
export class AccessDenied extends TardigradeError {
  /** The kernel refused `what` of process `pid`; `why` says why, when known. */
  constructor(readonly pid: number, what: string, options?: ErrorOptions & { why?: string }) {
    super(
      `access denied to ${what} of process ${pid}${options?.why ? `: ${options.why}` : ""}`,
      options,
    );
  }
}

/** An image is damaged, of another version or architecture, or does not match this machine. */
export class ImageError extends TardigradeError {}

/** A restore cannot go on: the pid is taken, a file changed since the dump, … */
export class RestoreError extends TardigradeError {}

/** A dump cannot go on: an fd kind not handled, a policy that threw, … */
export class DumpError extends TardigradeError {}

/** A policy is not one: a file that does not load, a misspelt hook, an answer it may not give. */
export class PolicyError extends TardigradeError {}

/** Something the tool does not handle (yet), named precisely. */
export class Unsupported extends TardigradeError {}

/**
 * A thread did not stop within the freeze's time limit: it sleeps in the kernel where no signal
 * reaches it (a vfork waiting for its child, I/O that cannot be interrupted …). The process was
 * left running as it was.
 */
export class FreezeTimeout extends TardigradeError {
  /** Thread `tid` of process `pid` did not stop within `ms`; `why` says where it waits. */
  constructor(readonly pid: number, readonly tid: number, ms: number, why: string) {
    super(`thread ${tid} of process ${pid} did not stop within ${ms} ms: ${why}`);
  }
}

/**
 * Turns a `SyscallError` about process `pid` into `NoSuchProcess` or `AccessDenied` where that is
 * what it means; other errors pass through unchanged.
 */
export function explain(err: unknown, pid: number, what: string): unknown {
  if (err instanceof SyscallError) {
    if (err.errno === Errno.ESRCH) return new NoSuchProcess(pid, what, { cause: err });
    if (err.errno === Errno.EPERM || err.errno === Errno.EACCES) {
      return new AccessDenied(pid, what, { cause: err });
    }
  }
  if (err instanceof Deno.errors.NotFound) return new NoSuchProcess(pid, what, { cause: err });
  if (err instanceof Deno.errors.PermissionDenied) {
    return new AccessDenied(pid, what, { cause: err });
  }
  return err;
}
