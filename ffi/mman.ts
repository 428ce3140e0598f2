/**
 * Memory of a process as the kernel's ABI names it: the page size, mmap/mprotect/mremap flags,
 * madvise and mlock2 advice, memfd flags and seals, the lseek whences that find a file's data,
 * and the few other constants the memory code passes to injected syscalls (x86_64 values).
 */

/** The size of a page (x86_64, no huge pages). */
export const PAGE_SIZE = 4096;

const PAGE_MASK = BigInt(PAGE_SIZE - 1);

/** `n` rounded down to a page boundary. */
export function pageDown(n: bigint): bigint {
  return n & ~PAGE_MASK;
}

/** `n` rounded up to a page boundary. */
export function pageUp(n: bigint): bigint {
  return (n + PAGE_MASK) & ~PAGE_MASK;
}

/** Page protection (`mmap`, `mprotect`); also the `prot` of an image's mapping entry. */
export const PROT = { NONE: 0, READ: 1, WRITE: 2, EXEC: 4 } as const;

/** `mmap` flags. */
export const MAP = {
  SHARED: 0x01,
  PRIVATE: 0x02,
  FIXED: 0x10,
  ANONYMOUS: 0x20,
  GROWSDOWN: 0x100,
  FIXED_NOREPLACE: 0x100000,
} as const;

/** `mremap` flags. */
export const MREMAP = { MAYMOVE: 1, FIXED: 2 } as const;

/** `madvise` advice that a mapping keeps (smaps shows it in `VmFlags`). */
export const MADV = {
  DONTFORK: 10,
  MERGEABLE: 12,
  HUGEPAGE: 14,
  NOHUGEPAGE: 15,
  DONTDUMP: 16,
  WIPEONFORK: 18,
} as const;

/** `mlock2` flags. */
export const MLOCK = { ONFAULT: 1 } as const;

/** `memfd_create` flags. */
export const MFD = { CLOEXEC: 1, ALLOW_SEALING: 2 } as const;
