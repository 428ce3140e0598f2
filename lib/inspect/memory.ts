/**
 * Another process's memory: one reader and writer for the whole tool. `process_vm_readv/writev`
 * is the fast path; where it may not go (PROT_NONE pages, read-only pages to write, a range
 * running into a hole) `/proc/PID/mem` takes over, which goes through page protections
 * (FOLL_FORCE) as a debugger does. Reading or writing a frozen process's code and read-only data
 * (while restoring) works the same way.
 */
import {
  close,
  Errno,
  O,
  open,
  pageDown,
  pageUp,
  pread,
  processVmRead,
  processVmWrite,
  pwrite,
  SyscallError,
} from "../../ffi/mod.ts";
import { sharedPageRanges } from "./pages.ts";
import { procError, procPath } from "./procfs.ts";

type Direction = "read" | "write";

/** Reads up to this size go through /proc/PID/mem alone (see `#read`). */
const SMALL_READ = 65536;

/**
 * The memory of process `pid`. Methods are synchronous; `/proc/PID/mem` is opened on first need
 * and kept until `close()` (or `using`).
 */
export class RemoteMemory implements Disposable {
  #memFd = -1;
  #memWritable = false;

  /** The memory of process `pid`; nothing is opened yet. */
  constructor(readonly pid: number) {}

  /** Reads exactly `buf.length` bytes at `addr` into `buf`; throws when any cannot be read. */
  readInto(addr: bigint, buf: Uint8Array): Uint8Array {
    this.#exactly("read", addr, buf);
    return buf;
  }

  /** Reads `length` bytes at `addr`; throws when any of them cannot be read. */
  read(addr: bigint, length: number): Uint8Array {
    return this.readInto(addr, new Uint8Array(length));
  }

  /**
   * Reads up to `buf.length` bytes at `addr` into `buf` without allocating; returns the bytes
   * read, short where the range runs into unmapped memory.
   */
  readAvailable(addr: bigint, buf: Uint8Array): number {
    return this.#read(addr, buf);
  }

  /** Writes all of `data` at `addr`, read-only mappings included; throws when it cannot. */
  write(addr: bigint, data: Uint8Array): void {
    this.#exactly("write", addr, data);
  }

  /** Closes `/proc/PID/mem` if it was opened. */
  close(): void {
    if (this.#memFd < 0) return;
    const fd = this.#memFd;
    this.#memFd = -1;
    close(fd);
  }

  /** Closes it (`using`). */
  [Symbol.dispose](): void {
    this.close();
  }

  #exactly(which: Direction, addr: bigint, buf: Uint8Array): void {
    const n = which === "read" ? this.#read(addr, buf) : this.#copy(which, addr, buf);
    if (n < buf.length) {
      const call = which === "read" ? "process_vm_readv" : "process_vm_writev";
      const err = new SyscallError(call, [this.pid, addr + BigInt(n)], Errno.EFAULT);
      throw procError(err, this.pid, "memory");
    }
  }

  #copy(which: Direction, addr: bigint, buf: Uint8Array): number {
    let done = 0;
    while (done < buf.length) {
      const part = done === 0 ? buf : buf.subarray(done);
      const at = addr + BigInt(done);
      let n: number;
      try {
        const range = [{ remote: at, len: part.length }];
        n = which === "read"
          ? processVmRead(this.pid, part, range)
          : processVmWrite(this.pid, part, range);
      } catch (err) {
        if (!(err instanceof SyscallError)) throw err;
        if (err.errno === Errno.EINTR) continue;
        if (err.errno !== Errno.EFAULT) throw procError(err, this.pid, "memory");
        n = 0; // the first page may not be touched this way
      }
      if (n > 0) {
        done += n;
        continue;
      }
      // A page process_vm_* may not touch (read-only for a write, PROT_NONE) or not mapped.
      const m = this.#viaMem(which, at, part);
      done += m;
      if (m === 0) break;
    }
    return done;
  }

  /**
   * Reads without taking the process a copy of the pages it shares. process_vm_readv pins what it
   * reads, and pinning a page shared copy-on-write (since a fork, or merged by KSM) gives the
   * process a private copy of it (a forked server's workers would each grow by what they share
   * with their master); /proc/PID/mem does not pin. So small reads, and the shared pages of large
   * ones (pagemap tells them), go through /proc/PID/mem; the rest through the faster
   * process_vm_readv.
   */
  #read(addr: bigint, buf: Uint8Array): number {
    if (buf.length <= SMALL_READ) {
      const n = this.#viaMem("read", addr, buf);
      return n === buf.length ? n : n + this.#copy("read", addr + BigInt(n), buf.subarray(n));
    }
    const end = addr + BigInt(buf.length);
    const shared = sharedPageRanges(this.pid, pageDown(addr), pageUp(end));
    let done = 0;
    for (const s of [...shared, { start: end, end }]) {
      const from = s.start > addr ? s.start : addr;
      const to = s.end < end ? s.end : end;
      for (const [how, stop] of [["copy", from], ["mem", to]] as const) {
        const at = addr + BigInt(done);
        if (stop <= at) continue;
        const part = buf.subarray(done, Number(stop - addr));
        const n = how === "copy" ? this.#copy("read", at, part) : this.#viaMem("read", at, part);
        done += n;
        if (n < part.length) return done;
      }
    }
    return done;
  }

  /** Moves bytes through /proc/PID/mem; returns the bytes moved before the first failure. */
  #viaMem(which: Direction, addr: bigint, buf: Uint8Array): number {
    const fd = this.#mem(which === "write");
    let done = 0;
    while (done < buf.length) {
      const part = buf.subarray(done);
      const off = addr + BigInt(done);
      let n: number;
      try {
        n = which === "read" ? pread(fd, part, off) : pwrite(fd, part, off);
      } catch (err) {
        if (!(err instanceof SyscallError)) throw err;
        if (err.errno === Errno.EIO || err.errno === Errno.EFAULT) break; // not mapped
        if (err.errno === Errno.EINTR) continue;
        throw procError(err, this.pid, "mem");
      }
      if (n === 0) break;
      done += n;
    }
    return done;
  }

  #mem(writable: boolean): number {
    if (this.#memFd >= 0 && (this.#memWritable || !writable)) return this.#memFd;
    this.close();
    try {
      this.#memFd = open(procPath(this.pid, "mem"), writable ? O.RDWR : O.RDONLY);
    } catch (err) {
      throw procError(err, this.pid, "mem");
    }
    this.#memWritable = writable;
    return this.#memFd;
  }
}

/**
 * Reads up to `buf.length` bytes at `addr` of process `pid` without allocating; returns the bytes
 * read, short when the range runs into unmapped memory.
 */
export function readMemoryInto(pid: number, addr: bigint, buf: Uint8Array): number {
  using mem = new RemoteMemory(pid);
  return mem.readAvailable(addr, buf);
}

/** Reads `length` bytes at `addr` of process `pid`; throws when any of them cannot be read. */
export function readMemory(pid: number, addr: bigint, length: number): Uint8Array {
  using mem = new RemoteMemory(pid);
  return mem.read(addr, length);
}

/**
 * Writes `bytes` at `addr` of process `pid`, also into read-only mappings; throws when any byte
 * cannot be written. Writing into a file-backed page makes that page a private anonymous copy in
 * the target.
 */
export function writeMemory(pid: number, addr: bigint, bytes: Uint8Array): void {
  using mem = new RemoteMemory(pid);
  mem.write(addr, bytes);
}
