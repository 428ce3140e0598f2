/** Reads and writes another process's memory through /proc/PID/mem, which writes through page
 * protections (needed for code pages and read-only data while restoring). */
import { close, O, open, pread, pwrite } from "../../ffi/mod.ts";
import { explain } from "../errors.ts";

/** An open /proc/PID/mem of one process. */
export class RemoteMemory implements Disposable {
  readonly #fd: number;
  #closed = false;

  /** Opens /proc/PID/mem for reading and writing. */
  constructor(readonly pid: number) {
    try {
      this.#fd = open(`/proc/${pid}/mem`, O.RDWR);
    } catch (err) {
      throw explain(err, pid, "memory");
    }
  }

  /** Reads exactly `buf.length` bytes at `addr` (throws if the range is not all mapped). */
  readInto(addr: bigint, buf: Uint8Array): Uint8Array {
    let done = 0;
    while (done < buf.length) {
      const n = pread(this.#fd, buf.subarray(done), addr + BigInt(done));
      if (n === 0) throw new RangeError(`process ${this.pid}: 0x${addr.toString(16)} not mapped`);
      done += n;
    }
    return buf;
  }

  /** Reads `length` bytes at `addr`. */
  read(addr: bigint, length: number): Uint8Array {
    return this.readInto(addr, new Uint8Array(length));
  }

  /** Writes all of `data` at `addr`. */
  write(addr: bigint, data: Uint8Array): void {
    let done = 0;
    while (done < data.length) {
      const n = pwrite(this.#fd, data.subarray(done), addr + BigInt(done));
      if (n === 0) throw new RangeError(`process ${this.pid}: 0x${addr.toString(16)} not mapped`);
      done += n;
    }
  }

  /** Closes the descriptor. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    close(this.#fd);
  }

  /** Closes the descriptor (`using`). */
  [Symbol.dispose](): void {
    this.close();
  }
}
