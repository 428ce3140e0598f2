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
  /** A mapping type of its own (not SHARED nor PRIVATE): the kernel may drop its pages. */
  DROPPABLE: 0x08,
  FIXED: 0x10,
  ANONYMOUS: 0x20,
  GROWSDOWN: 0x100,
  NORESERVE: 0x4000,
  HUGETLB: 0x40000,
  FIXED_NOREPLACE: 0x100000,
} as const;

/**
 * Where `mmap` (MAP_HUGETLB) and `memfd_create` (MFD_HUGETLB) take the log2 of the huge page
 * size: `MAP.HUGETLB | hugePageSizeFlag(2 << 20)` asks for 2 MiB pages.
 */
export const HUGE_SIZE_SHIFT = 26;

/** The flag bits that choose a huge page size of `bytes` (a power of two) for mmap or memfd. */
export function hugePageSizeFlag(bytes: number): number {
  return Math.log2(bytes) << HUGE_SIZE_SHIFT;
}

/** `mremap` flags. */
export const MREMAP = { MAYMOVE: 1, FIXED: 2 } as const;

/** `madvise` advice that a mapping keeps (smaps shows it in `VmFlags`). */
export const MADV = {
  RANDOM: 1,
  SEQUENTIAL: 2,
  /** Drops the pages: private anonymous memory reads as zeroes again. */
  DONTNEED: 4,
  DONTFORK: 10,
  MERGEABLE: 12,
  HUGEPAGE: 14,
  NOHUGEPAGE: 15,
  DONTDUMP: 16,
  DODUMP: 17,
  WIPEONFORK: 18,
  /** Linux 6.13: makes pages guard pages (a touch faults) without splitting the mapping. */
  GUARD_INSTALL: 102,
} as const;

/** `mlock2` flags. */
export const MLOCK = { ONFAULT: 1 } as const;

/** `memfd_create` flags. */
export const MFD = {
  CLOEXEC: 1,
  ALLOW_SEALING: 2,
  HUGETLB: 4,
  /** Not executable, ever: mode without x bits and F_SEAL_EXEC (Linux 6.3). */
  NOEXEC_SEAL: 8,
  /** Executable (mode 0777), stated so under vm.memfd_noexec. */
  EXEC: 0x10,
} as const;

/** memfd seals (`F_ADD_SEALS`, `F_GET_SEALS`). */
export const SEAL = {
  SEAL: 1,
  SHRINK: 2,
  GROW: 4,
  WRITE: 8,
  FUTURE_WRITE: 0x10,
  EXEC: 0x20,
} as const;

/** What an AIO context's ring (`io_setup`, mapped as `/[aio]`) starts with. */
export const AIO_RING = {
  /** `struct aio_ring` header size; `struct io_event`s follow, 32 bytes each. */
  HEADER_SIZE: 32,
  EVENT_SIZE: 32,
  /** Byte offsets of the header's u32 fields `nr`, `head`, `tail`, `magic`. */
  NR: 4,
  HEAD: 8,
  TAIL: 12,
  MAGIC: 16,
  /** `AIO_RING_MAGIC`. */
  MAGIC_VALUE: 0xa10a10a1,
} as const;
