/**
 * Dirty tracking of another process with userfaultfd write-protection in async mode (soft-dirty
 * does not exist on this kernel): a userfaultfd is made inside the frozen target by an injected
 * syscall, taken into the tool with pidfd_getfd and closed in the target (its fd table ends up as
 * it was). The tool registers the target's private anonymous writable mappings with it in WP
 * mode and write-protects them; in async mode a write just clears the page's protection, the
 * target never blocks. PAGEMAP_SCAN then tells which pages were not written since arming.
 * Closing the uffd in the tool unregisters every range and removes the protection.
 */
import {
  addressOf,
  close,
  encodePmScanArg,
  Errno,
  ioctl,
  O,
  open,
  PAGE_IS,
  PAGE_REGION_SIZE,
  PAGEMAP_SCAN,
  pidfdGetfd,
  PM_SCAN_ARG_SIZE,
  pmScanWalkEnd,
  SyscallError,
  UFFD,
} from "../../ffi/mod.ts";
import type { Injector } from "../ptrace/inject.ts";
import type { Mapping } from "../inspect/mappings.ts";
import type { AddressRange } from "../inspect/pages.ts";
import { procPath } from "../inspect/procfs.ts";

/** Whether a mapping is tracked: private anonymous writable memory (heap, stack, anon). */
export function isTrackable(m: Mapping): boolean {
  const kind = m.kind;
  return !m.shared && m.inode === 0n && m.prot.write &&
    (kind === "anonymous" || kind === "heap" || kind === "stack");
}

/**
 * Makes a userfaultfd inside the frozen process that `inj` drives and returns a descriptor of it
 * in the tool. The target's own descriptor is closed again before this returns, also on failure.
 */
export function takeUserfaultfd(inj: Injector, pidfd: number): number {
  let remote: bigint;
  try {
    remote = inj.call("userfaultfd", O.CLOEXEC | O.NONBLOCK);
  } catch (err) {
    // vm.unprivileged_userfaultfd = 0 and no CAP_SYS_PTRACE in the target: user-mode faults
    // only, which is all async write-protection needs.
    if (!(err instanceof SyscallError && err.errno === Errno.EPERM)) throw err;
    remote = inj.call("userfaultfd", O.CLOEXEC | O.NONBLOCK | UFFD.USER_MODE_ONLY);
  }
  try {
    return pidfdGetfd(pidfd, Number(remote));
  } finally {
    inj.call("close", remote);
  }
}

/** The write-protection of a set of ranges of one process, held through a uffd in the tool. */
export class DirtyTracker implements Disposable {
  #uffd: number;

  /**
   * Takes over `uffd` (from `takeUserfaultfd`): enables async WP on it, registers `ranges`
   * (private anonymous mappings of `pid`) and write-protects every page of them, present or
   * not. Closes `uffd` when any step fails.
   */
  constructor(readonly pid: number, uffd: number, readonly ranges: AddressRange[]) {
    this.#uffd = uffd;
    try {
      const api = new BigUint64Array([
        UFFD.API,
        UFFD.FEATURE_WP_ASYNC | UFFD.FEATURE_WP_UNPOPULATED,
        0n,
      ]);
      ioctl(uffd, UFFD.IOC_API, new Uint8Array(api.buffer), "ioctl(UFFDIO_API)");
      const reg = new BigUint64Array(4);
      const wp = new BigUint64Array(3);
      for (const r of ranges) {
        reg.set([r.start, r.end - r.start, UFFD.REGISTER_MODE_WP, 0n]);
        ioctl(uffd, UFFD.IOC_REGISTER, new Uint8Array(reg.buffer), "ioctl(UFFDIO_REGISTER)");
      }
      for (const r of ranges) {
        wp.set([r.start, r.end - r.start, UFFD.WRITEPROTECT_MODE_WP]);
        ioctl(uffd, UFFD.IOC_WRITEPROTECT, new Uint8Array(wp.buffer), "ioctl(UFFDIO_WRITEPROTECT)");
      }
    } catch (err) {
      this.close();
      throw err;
    }
  }

  /**
   * The pages of the tracked ranges that are still write-protected, that is not written since
   * arming, in a VMA still registered (WPALLOWED: a mapping replaced meanwhile is not) and not
   * the shared zero page (a page dropped and read again). Sorted, merged.
   */
  cleanRanges(): AddressRange[] {
    const out: AddressRange[] = [];
    const path = procPath(this.pid, "pagemap");
    const fd = open(path, O.RDONLY);
    const VEC = 1024;
    const vec = new BigUint64Array(VEC * (PAGE_REGION_SIZE / 8));
    const arg = new Uint8Array(PM_SCAN_ARG_SIZE);
    try {
      for (const r of this.ranges) {
        let start = r.start;
        while (start < r.end) {
          encodePmScanArg(arg, {
            start,
            end: r.end,
            vec: addressOf(vec),
            vecLen: VEC,
            categoryMask: PAGE_IS.WPALLOWED | PAGE_IS.WRITTEN | PAGE_IS.PFNZERO,
            categoryInvertedMask: PAGE_IS.WRITTEN | PAGE_IS.PFNZERO,
            returnMask: PAGE_IS.WPALLOWED,
          });
          const n = ioctl(fd, PAGEMAP_SCAN, arg, `ioctl(${path}, PAGEMAP_SCAN)`);
          for (let i = 0; i < n; i++) {
            const s = vec[i * 3], e = vec[i * 3 + 1];
            const last = out[out.length - 1];
            if (last && last.end === s) last.end = e;
            else out.push({ start: s, end: e });
          }
          const walkEnd = pmScanWalkEnd(arg);
          if (walkEnd <= start) break;
          start = walkEnd;
        }
      }
    } finally {
      close(fd);
    }
    return out;
  }

  /** Unregisters everything and lifts the protection (closing the uffd does both). */
  close(): void {
    if (this.#uffd < 0) return;
    const fd = this.#uffd;
    this.#uffd = -1;
    close(fd);
  }

  [Symbol.dispose](): void {
    this.close();
  }
}
