/**
 * The libc symbols tardigrade calls, bound once with `Deno.dlopen`. Each entry carries its C
 * prototype. Every call here is synchronous: errno lives in thread-local storage and ptrace
 * requests must come from the thread that attached.
 */
import { SyscallError } from "./errno.ts";

export const symbols = {
  // int *__errno_location(void);
  __errno_location: { parameters: [], result: "pointer" },
  // long ptrace(enum __ptrace_request request, pid_t pid, void *addr, void *data);
  ptrace: { parameters: ["i64", "i32", "usize", "usize"], result: "i64" },
  // pid_t waitpid(pid_t pid, int *wstatus, int options);
  waitpid: { parameters: ["i32", "buffer", "i32"], result: "i32" },
  // ssize_t process_vm_readv(pid_t, const struct iovec *local, unsigned long liovcnt,
  //                          const struct iovec *remote, unsigned long riovcnt, unsigned long flags);
  process_vm_readv: {
    parameters: ["i32", "buffer", "usize", "buffer", "usize", "usize"],
    result: "isize",
  },
  // ssize_t process_vm_writev(pid_t, const struct iovec *local, unsigned long liovcnt,
  //                           const struct iovec *remote, unsigned long riovcnt, unsigned long flags);
  process_vm_writev: {
    parameters: ["i32", "buffer", "usize", "buffer", "usize", "usize"],
    result: "isize",
  },
  // void *mmap(void *addr, size_t length, int prot, int flags, int fd, off_t offset);
  mmap: { parameters: ["usize", "usize", "i32", "i32", "i32", "i64"], result: "pointer" },
  // int munmap(void *addr, size_t length);
  munmap: { parameters: ["pointer", "usize"], result: "i32" },
  // int ioctl(int fd, unsigned long request, void *argp);
  ioctl: { parameters: ["i32", "u64", "buffer"], result: "i32" },
  // int open(const char *pathname, int flags, mode_t mode);
  open: { parameters: ["buffer", "i32", "u32"], result: "i32" },
  // int close(int fd);
  close: { parameters: ["i32"], result: "i32" },
  // ssize_t pread(int fd, void *buf, size_t count, off_t offset);
  pread: { parameters: ["i32", "buffer", "usize", "i64"], result: "isize" },
  // The same pread on one of Deno's blocking threads: the call returns a promise.
  pread_nonblocking: {
    name: "pread",
    parameters: ["i32", "buffer", "usize", "i64"],
    result: "isize",
    nonblocking: true,
  },
  // ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset);
  pwrite: { parameters: ["i32", "buffer", "usize", "i64"], result: "isize" },
  // The same pwrite on one of Deno's blocking threads: the call returns a promise.
  pwrite_nonblocking: {
    name: "pwrite",
    parameters: ["i32", "buffer", "usize", "i64"],
    result: "isize",
    nonblocking: true,
  },
  // int posix_fadvise(int fd, off_t offset, off_t len, int advice); on a blocking thread: the
  // kernel submits the reads of WILLNEED there before it returns.
  posix_fadvise_nonblocking: {
    name: "posix_fadvise",
    parameters: ["i32", "i64", "i64", "i32"],
    result: "i32",
    nonblocking: true,
  },
  // ssize_t read(int fd, void *buf, size_t count);
  read: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  // ssize_t write(int fd, const void *buf, size_t count);
  write: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  // ssize_t tee(int fd_in, int fd_out, size_t len, unsigned int flags);
  tee: { parameters: ["i32", "i32", "usize", "u32"], result: "isize" },
  // int pipe2(int pipefd[2], int flags);
  pipe2: { parameters: ["buffer", "i32"], result: "i32" },
  // int kill(pid_t pid, int sig);
  kill: { parameters: ["i32", "i32"], result: "i32" },
  // int prctl(int option, unsigned long arg2, unsigned long arg3, unsigned long arg4, unsigned long arg5);
  prctl: { parameters: ["i32", "usize", "usize", "usize", "usize"], result: "i32" },
  // long syscall(long number, ...);  (kcmp, pidfd_open, pidfd_getfd, clone3, tgkill)
  syscall: {
    parameters: ["i64", "i64", "i64", "i64", "i64", "i64", "i64"],
    result: "i64",
  },
  // pid_t getpid(void);
  getpid: { parameters: [], result: "i32" },
  // pid_t gettid(void);
  gettid: { parameters: [], result: "i32" },
  // uid_t geteuid(void);
  geteuid: { parameters: [], result: "u32" },
} as const satisfies Deno.ForeignLibraryInterface;

/** The bound libc functions. */
export const libc = Deno.dlopen("libc.so.6", symbols).symbols;

// Every call here runs on the one JS thread, so its errno lives at one address: found once, at
// load, so that reading it after a failed call runs no other foreign call that could set it first
// (a first call of __errno_location right after a failed ptrace once read ENOENT on a fresh machine).
const errnoLocation = libc.__errno_location();
const errnoView = errnoLocation === null ? null : new Deno.UnsafePointerView(errnoLocation);

/** The calling thread's errno, read right after a failed call. */
export function errno(): number {
  return errnoView === null ? 0 : errnoView.getInt32();
}

/**
 * Turns a libc return value into a result or a `SyscallError`: -1 (as number or bigint) means
 * failure with errno set. The call name and arguments go into the error message.
 */
export function unwrap<T extends number | bigint>(
  result: T,
  call: string,
  args: readonly unknown[] = [],
): T {
  if (result === -1 || result === -1n) throw new SyscallError(call, args, errno());
  return result;
}

/** The address of a buffer's bytes, for structs that point at other memory (iovec, clone_args). */
export function addressOf(buf: ArrayBufferView): bigint {
  return BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(buf as Uint8Array<ArrayBuffer>)));
}

/**
 * `size` zeroed bytes whose first byte lies on an `align` boundary (a power of two), as O_DIRECT
 * wants of its buffers; a large `Uint8Array` of its own starts 16 bytes into a malloc'd block.
 */
export function alignedBytes(size: number, align = 4096): Uint8Array<ArrayBuffer> {
  const whole = new Uint8Array(size + align);
  const skew = Number(BigInt(align) - (addressOf(whole) & BigInt(align - 1))) % align;
  return whole.subarray(skew, skew + size);
}

/** A NUL-terminated C string. */
export function cstring(s: string): Uint8Array<ArrayBuffer> {
  return new TextEncoder().encode(s + "\0") as Uint8Array<ArrayBuffer>;
}
