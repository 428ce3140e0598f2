/** userfaultfd(2): the API handshake, registration and write-protection ioctls. */

/** userfaultfd constants (linux/userfaultfd.h). */
export const UFFD = {
  API: 0xaan,
  FEATURE_WP_UNPOPULATED: 1n << 13n,
  FEATURE_WP_ASYNC: 1n << 15n,
  /** Faults from kernel mode are not handled: allowed without privilege. */
  USER_MODE_ONLY: 1,
  IOC_API: 0xc018aa3fn,
  IOC_REGISTER: 0xc020aa00n,
  IOC_WRITEPROTECT: 0xc018aa06n,
  REGISTER_MODE_WP: 2n,
  WRITEPROTECT_MODE_WP: 1n,
} as const;
