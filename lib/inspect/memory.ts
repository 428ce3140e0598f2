/** Reading and writing another process's memory: process_vm_readv/writev, /proc/PID/mem fallback. */
import { addressOf, close, Errno, errno, libc, O, open, SyscallError } from "../../ffi/mod.ts";
import { procError, procPath } from "./procfs.ts";

// One local and one remote iovec, reused by every call (calls are synchronous).
const localIov = new BigUint64Array(2);
const remoteIov = new BigUint64Array(2);
const localIovBytes = new Uint8Array(localIov.buffer);
const remoteIovBytes = new Uint8Array(remoteIov.buffer);

type Direction = "process_vm_readv" | "process_vm_writev";

/**
 * One process_vm_* call; returns the bytes moved, or -errno. A short count means the remote
 * range hit a page the call may not touch.
 */
function vmCall(which: Direction, pid: number, local: Uint8Array, remote: bigint): number {
  localIov[0] = addressOf(local);
  localIov[1] = BigInt(local.length);
  remoteIov[0] = remote;
  remoteIov[1] = BigInt(local.length);
  const n = libc[which](pid, localIovBytes, 1n, remoteIovBytes, 1n, 0n);
  return n === -1n ? -errno() : Number(n);
}

/**
 * Moves bytes through /proc/PID/mem, which goes through page protections (FOLL_FORCE): it reads
 * PROT_NONE memory and writes read-only memory. Returns the bytes moved before the first failure.
 */
function viaMem(which: Direction, pid: number, local: Uint8Array, remote: bigint): number {
  const path = procPath(pid, "mem");
  let fd: number;
  try {
    fd = open(path, which === "process_vm_readv" ? O.RDONLY : O.RDWR);
  } catch (err) {
    throw procError(err, pid, "mem");
  }
  try {
    let done = 0;
    while (done < local.length) {
      const part = local.subarray(done) as Uint8Array<ArrayBuffer>;
      const off = remote + BigInt(done);
      const n = which === "process_vm_readv"
        ? libc.pread(fd, part, BigInt(part.length), off)
        : libc.pwrite(fd, part, BigInt(part.length), off);
      if (n === -1n) {
        const e = errno();
        if (e === Errno.EIO || e === Errno.EFAULT) break; // not mapped
        if (e === Errno.EINTR) continue;
        throw procError(
          new SyscallError(which === "process_vm_readv" ? "pread" : "pwrite", [
            path,
            off,
          ], e),
          pid,
          "mem",
        );
      }
      if (n === 0n) break;
      done += Number(n);
    }
    return done;
  } finally {
    close(fd);
  }
}

function copy(which: Direction, pid: number, local: Uint8Array, remote: bigint): number {
  let done = 0;
  while (done < local.length) {
    const part = done === 0 ? local : local.subarray(done);
    const n = vmCall(which, pid, part, remote + BigInt(done));
    if (n > 0) {
      done += n;
      continue;
    }
    if (n === 0 || n === -Errno.EFAULT) {
      // A page the call may not touch (read-only for a write, PROT_NONE) or not mapped.
      const m = viaMem(which, pid, part, remote + BigInt(done));
      done += m;
      if (m === 0) break;
      continue;
    }
    if (n === -Errno.EINTR) continue;
    const call = which;
    throw procError(new SyscallError(call, [pid, remote + BigInt(done)], -n), pid, "memory");
  }
  return done;
}

/**
 * Reads `buf.length` bytes at `addr` of process `pid` into `buf` without allocating; returns the
 * bytes read, short when the range runs into unmapped memory.
 */
export function readMemoryInto(pid: number, addr: bigint, buf: Uint8Array): number {
  return copy("process_vm_readv", pid, buf, addr);
}

/** Reads `length` bytes at `addr`; throws when any of them cannot be read. */
export function readMemory(pid: number, addr: bigint, length: number): Uint8Array {
  const buf = new Uint8Array(length);
  const n = readMemoryInto(pid, addr, buf);
  if (n < length) {
    throw new SyscallError("process_vm_readv", [pid, addr + BigInt(n)], Errno.EFAULT);
  }
  return buf;
}

/**
 * Writes `bytes` at `addr` of process `pid`, also into read-only mappings (through
 * /proc/PID/mem); throws when any byte cannot be written. Writing into a file-backed page makes
 * that page a private anonymous copy in the target.
 */
export function writeMemory(pid: number, addr: bigint, bytes: Uint8Array): void {
  const n = copy("process_vm_writev", pid, bytes, addr);
  if (n < bytes.length) {
    throw new SyscallError("process_vm_writev", [pid, addr + BigInt(n)], Errno.EFAULT);
  }
}
