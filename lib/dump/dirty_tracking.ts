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
  ioctl,
  O,
  open,
  PAGE_IS,
  PAGE_REGION_SIZE,
  PAGEMAP_SCAN,
  PM_SCAN,
  PM_SCAN_ARG_SIZE,
  pmScanWalkEnd,
  UFFD,
  uffdApi,
  uffdRegister,
} from "../../ffi/mod.ts";
import type { Mapping } from "../inspect/mappings.ts";
import type { AddressRange } from "../inspect/pages.ts";
import { procPath } from "../inspect/procfs.ts";

/** Whether a mapping is tracked: private anonymous writable memory (heap, stack, anon). */
export function isTrackable(m: Mapping): boolean {
  const kind = m.kind;
  return !m.shared && m.inode === 0n && m.prot.write &&
    (kind === "anonymous" || kind === "heap" || kind === "stack");
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
      uffdApi(uffd, UFFD.FEATURE_WP_ASYNC | UFFD.FEATURE_WP_UNPOPULATED);
      const wp = new BigUint64Array(3);
      for (const r of ranges) uffdRegister(uffd, r.start, r.end - r.start, UFFD.REGISTER_MODE_WP);
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
    return this.#scan({
      categoryMask: PAGE_IS.WPALLOWED | PAGE_IS.WRITTEN | PAGE_IS.PFNZERO,
      categoryInvertedMask: PAGE_IS.WRITTEN | PAGE_IS.PFNZERO,
      returnMask: PAGE_IS.WPALLOWED,
    });
  }

  /**
   * The pages written since they were last protected, protected again in the same step (the
   * kernel does both at once: a write that comes after is caught next time). For copying them
   * again while the process runs. Sorted, merged.
   */
  takeWritten(): AddressRange[] {
    return this.#scan({
      // Not CHECK_WPASYNC: a mapping replaced since arming is skipped (the freeze copies it).
      flags: PM_SCAN.WP_MATCHING,
      categoryMask: PAGE_IS.WPALLOWED | PAGE_IS.WRITTEN,
      returnMask: PAGE_IS.WRITTEN,
    });
  }

  /** One PAGEMAP_SCAN over the tracked ranges, the ranges it reports merged. */
  #scan(
    q: { flags?: number; categoryMask: number; categoryInvertedMask?: number; returnMask: number },
  ): AddressRange[] {
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
          encodePmScanArg(arg, { ...q, start, end: r.end, vec: addressOf(vec), vecLen: VEC });
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
