/**
 * One socket of a frozen process, read (and, to peek at its queue, adjusted) where it is: injected
 * getsockopt, setsockopt, getsockname, getpeername and ioctl on its fd number. The dump of
 * listening, bound and UNIX sockets works this way rather than on a copy taken with pidfd_getfd,
 * which would move the socket's net_cls and netprio to the tool's cgroup.
 */
import { Errno, SO, SOL, SYS } from "../../../ffi/mod.ts";
import type { Injector } from "../../ptrace/inject.ts";
import type { OptionReader } from "./options.ts";
import { readI32, readU32 } from "../util.ts";

/** Scratch offsets used: a value buffer and its length word (unix_pair.ts peeks below them). */
const SCRATCH_VALUE = 0xe000;
/** The length word, in the scratch region's last bytes: a value may take all before it. */
const SCRATCH_LEN = 0xfff0;

/** The largest value an option read here may have. */
const MAX_VALUE = SCRATCH_LEN - SCRATCH_VALUE;

const len32 = (n: number) => new Uint8Array(new Uint32Array([n]).buffer);

/** Socket calls on fd `fd` of the process `inj` runs syscalls in; each gives a negative errno on failure. */
export class TargetSocket implements OptionReader {
  /** The socket at fd `fd` of the process `inj` runs syscalls in. */
  constructor(readonly inj: Injector, readonly fd: number) {}

  #call(nr: number, ...args: (number | bigint)[]): number {
    return Number(this.inj.raw(nr, this.fd, ...args));
  }

  #readBack(max: number): Uint8Array {
    const len = readU32(this.inj.get(SCRATCH_LEN, 4).slice());
    return this.inj.get(SCRATCH_VALUE, Math.min(len, max)).slice();
  }

  /** getsockopt with room for `size` bytes (holding `input` first): the bytes, or a negative errno. */
  getsockopt(level: number, option: number, size: number, input?: Uint8Array): Uint8Array | number {
    if (size > MAX_VALUE) throw new RangeError(`getsockopt value of ${size} bytes: too large`);
    const buf = new Uint8Array(size);
    if (input) buf.set(input.subarray(0, size));
    const value = this.inj.put(buf, SCRATCH_VALUE);
    const len = this.inj.put(len32(size), SCRATCH_LEN);
    const r = this.#call(SYS.getsockopt, level, option, value, len);
    return r < 0 ? r : this.#readBack(size);
  }

  /** The classic BPF filter attached (empty: none), or a negative errno (see ffi's tryGetFilter). */
  filter(): Uint8Array | number {
    // SO_GET_FILTER counts instructions: first how many, with no room, then them.
    const len = this.inj.put(len32(0), SCRATCH_LEN);
    let r = this.#call(SYS.getsockopt, SOL.SOCKET, SO.ATTACH_FILTER, 0, len);
    if (r < 0) return r;
    const count = readU32(this.inj.get(SCRATCH_LEN, 4).slice());
    if (count === 0) return new Uint8Array(0);
    const at = SCRATCH_VALUE - count * 8; // below the value buffer: a filter has at most 4096
    if (at < 0) return -Errno.E2BIG;
    const value = this.inj.put(new Uint8Array(count * 8), at);
    this.inj.put(len32(count), SCRATCH_LEN);
    r = this.#call(SYS.getsockopt, SOL.SOCKET, SO.ATTACH_FILTER, value, len);
    return r < 0 ? r : this.inj.get(at, count * 8).slice();
  }

  /** setsockopt with raw bytes: 0, or a negative errno. */
  setsockopt(level: number, option: number, value: Uint8Array): number {
    const addr = this.inj.put(value, SCRATCH_VALUE);
    return this.#call(SYS.setsockopt, level, option, addr, value.length);
  }

  /** The raw sockaddr getsockname or getpeername gives, or a negative errno. */
  name(which: "getsockname" | "getpeername"): Uint8Array | number {
    const value = this.inj.put(new Uint8Array(128), SCRATCH_VALUE);
    const len = this.inj.put(len32(128), SCRATCH_LEN);
    const r = this.#call(SYS[which], value, len);
    return r < 0 ? r : this.#readBack(128);
  }

  /** poll() of the socket without waiting: its revents (0: none of `events`), or a negative errno. */
  poll(events: number): number {
    const pfd = new Uint8Array(8);
    const v = new DataView(pfd.buffer);
    v.setInt32(0, this.fd, true);
    v.setInt16(4, events, true);
    const addr = this.inj.put(pfd, SCRATCH_VALUE);
    const r = Number(this.inj.raw(SYS.poll, addr, 1, 0));
    if (r <= 0) return r;
    return new DataView(this.inj.get(SCRATCH_VALUE, 8).slice().buffer).getUint16(6, true);
  }

  /** An ioctl that fills an int (a queue length): the value, or a negative errno. */
  ioctlInt(request: number): number {
    const value = this.inj.put(new Uint8Array(4), SCRATCH_VALUE);
    const r = this.#call(SYS.ioctl, request, value);
    return r < 0 ? r : readI32(this.inj.get(SCRATCH_VALUE, 4).slice());
  }
}
