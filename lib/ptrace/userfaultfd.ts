/**
 * A userfaultfd of another process, taken into the tool: made inside the stopped process by an
 * injected syscall (a userfaultfd serves the address space of whoever made it), taken with
 * pidfd_getfd and closed there again, so the process's descriptor table ends up as it was.
 */
import { Errno, O, pidfdGetfd, SyscallError, UFFD } from "../../ffi/mod.ts";
import type { Injector } from "./inject.ts";

/**
 * Makes a userfaultfd inside the stopped process that `inj` drives and returns a descriptor of it
 * in the tool (non-blocking). The target's own descriptor is closed again before this returns,
 * also on failure. `userModeOnly: "fallback"` accepts one that handles faults from user mode only
 * where the process may not have more (vm.unprivileged_userfaultfd = 0, no CAP_SYS_PTRACE): enough
 * for write-protection in async mode, not for serving missing pages, which the kernel also
 * touches (a read(2) into them).
 */
export function takeUserfaultfd(
  inj: Injector,
  pidfd: number,
  userModeOnly: "fallback" | "never" = "fallback",
): number {
  let remote: bigint;
  try {
    remote = inj.call("userfaultfd", O.CLOEXEC | O.NONBLOCK);
  } catch (err) {
    if (!(err instanceof SyscallError && err.errno === Errno.EPERM) || userModeOnly === "never") {
      throw err;
    }
    remote = inj.call("userfaultfd", O.CLOEXEC | O.NONBLOCK | UFFD.USER_MODE_ONLY);
  }
  try {
    return pidfdGetfd(pidfd, Number(remote));
  } finally {
    inj.call("close", remote);
  }
}
