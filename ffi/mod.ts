/**
 * The FFI layer: libc bound through `Deno.dlopen`, the kernel's constants grouped by area, struct
 * codecs, and typed wrappers that turn errno into `SyscallError`. It knows nothing of the SDK in
 * `lib/`, and it is the only place that touches raw pointers or libc.
 * @module
 */
export { addressOf, alignedBytes, cstring, errno, libc, unwrap } from "./libc.ts";
export * from "./bpf.ts";
export * from "./capability.ts";
export * from "./errno.ts";
export * from "./fanotify.ts";
export * from "./fcntl.ts";
export * from "./ioprio.ts";
export * from "./ipc.ts";
export * from "./membarrier.ts";
export * from "./mman.ts";
export * from "./mount.ts";
export * from "./pidfd.ts";
export * from "./prctl.ts";
export * from "./ptrace.ts";
export * from "./resource.ts";
export * from "./sched.ts";
export * from "./seccomp.ts";
export * from "./signal.ts";
export * from "./socket.ts";
export * from "./stat.ts";
export * from "./structs.ts";
export * from "./syscalls.ts";
export * from "./time.ts";
export * from "./tty.ts";
export * from "./userfaultfd.ts";
export * from "./zlib.ts";
