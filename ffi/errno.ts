/** errno values of x86_64 Linux, with their names and the kernel's short descriptions. */
const TABLE: [number, string, string][] = [
  [1, "EPERM", "operation not permitted"],
  [2, "ENOENT", "no such file or directory"],
  [3, "ESRCH", "no such process"],
  [4, "EINTR", "interrupted system call"],
  [5, "EIO", "input/output error"],
  [6, "ENXIO", "no such device or address"],
  [7, "E2BIG", "argument list too long"],
  [8, "ENOEXEC", "exec format error"],
  [9, "EBADF", "bad file descriptor"],
  [10, "ECHILD", "no child processes"],
  [11, "EAGAIN", "resource temporarily unavailable"],
  [12, "ENOMEM", "cannot allocate memory"],
  [13, "EACCES", "permission denied"],
  [14, "EFAULT", "bad address"],
  [16, "EBUSY", "device or resource busy"],
  [17, "EEXIST", "file exists"],
  [18, "EXDEV", "invalid cross-device link"],
  [19, "ENODEV", "no such device"],
  [20, "ENOTDIR", "not a directory"],
  [21, "EISDIR", "is a directory"],
  [22, "EINVAL", "invalid argument"],
  [23, "ENFILE", "too many open files in system"],
  [24, "EMFILE", "too many open files"],
  [25, "ENOTTY", "inappropriate ioctl for device"],
  [26, "ETXTBSY", "text file busy"],
  [27, "EFBIG", "file too large"],
  [28, "ENOSPC", "no space left on device"],
  [29, "ESPIPE", "illegal seek"],
  [30, "EROFS", "read-only file system"],
  [32, "EPIPE", "broken pipe"],
  [34, "ERANGE", "numerical result out of range"],
  [36, "ENAMETOOLONG", "file name too long"],
  [38, "ENOSYS", "function not implemented"],
  [39, "ENOTEMPTY", "directory not empty"],
  [61, "ENODATA", "no data available"],
  [75, "EOVERFLOW", "value too large for defined data type"],
  [95, "EOPNOTSUPP", "operation not supported"],
  [98, "EADDRINUSE", "address already in use"],
  [99, "EADDRNOTAVAIL", "cannot assign requested address"],
  [107, "ENOTCONN", "transport endpoint is not connected"],
  [110, "ETIMEDOUT", "connection timed out"],
  [111, "ECONNREFUSED", "connection refused"],
  [115, "EINPROGRESS", "operation now in progress"],
  [512, "ERESTARTSYS", "interrupted, restart the system call"],
  [513, "ERESTARTNOINTR", "interrupted, restart the system call without EINTR"],
  [514, "ERESTARTNOHAND", "interrupted, restart if no handler"],
  [516, "ERESTART_RESTARTBLOCK", "interrupted, restart through restart_syscall"],
];

const byNumber = new Map(TABLE.map(([n, name, text]) => [n, { name, text }]));

/** Numeric errno constants by name, for comparisons such as `err.errno === Errno.ESRCH`. */
export const Errno = Object.fromEntries(TABLE.map(([n, name]) => [name, n])) as Record<
  string,
  number
>;

/** The symbolic name of an errno value (`3` → `"ESRCH"`), or `E<n>` when unknown. */
export function errnoName(errno: number): string {
  return byNumber.get(errno)?.name ?? `E${errno}`;
}

/** The kernel's short description of an errno value (`3` → `"no such process"`). */
export function errnoText(errno: number): string {
  return byNumber.get(errno)?.text ?? `errno ${errno}`;
}

/**
 * Base of every error tardigrade raises on purpose, from the FFI layer up: one family for a user
 * to catch. The SDK's errors (`NoSuchProcess`, `AccessDenied` …) extend it.
 */
export class TardigradeError extends Error {
  /** An error with a message saying what happened and why. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = new.target.name;
  }
}

/**
 * A system call or libc function failed. Carries the errno value and its name, the call and
 * its arguments: `ptrace(PTRACE_SEIZE, 4242): ESRCH (no such process)`.
 */
export class SyscallError extends TardigradeError {
  /** The errno value the call set. */
  readonly errno: number;
  /** The errno's symbolic name, `ESRCH`. */
  readonly code: string;
  /** The call that failed, `ptrace`. */
  readonly call: string;
  /** The call's arguments as shown in the message. */
  readonly args: readonly unknown[];

  /** A failure of `call(args)` with `errno`. */
  constructor(call: string, args: readonly unknown[], errno: number) {
    const shown = args.map((a) => typeof a === "bigint" ? `0x${a.toString(16)}` : String(a));
    super(`${call}(${shown.join(", ")}): ${errnoName(errno)} (${errnoText(errno)})`);
    this.errno = errno;
    this.code = errnoName(errno);
    this.call = call;
    this.args = args;
  }
}
