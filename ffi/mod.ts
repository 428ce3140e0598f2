/**
 * The FFI layer: libc bound through `Deno.dlopen`, kernel struct codecs, and typed wrappers that
 * turn errno into `SyscallError`. It knows nothing of the SDK in `lib/`.
 * @module
 */
export * from "./errno.ts";
export { addressOf, cstring, errno, libc, unwrap } from "./libc.ts";
export * from "./structs.ts";
export * from "./ptrace.ts";
export * from "./syscalls.ts";
export * from "./mman.ts";
export * from "./ipc.ts";
