/**
 * timerfd: clock, settime flags, time left, interval and expirations not yet read.
 *
 * open() makes the timer with timerfd_create and arms it with the time that was left at dump
 * (relative; for a TFD_TIMER_ABSTIME timer, now + left on the target's clock, with the original
 * settime flags, so TFD_TIMER_CANCEL_ON_SET still applies). The time the process spent dumped is
 * not counted: the timer fires that much later than it would have. An armed periodic timer
 * showing 0 left is about to fire: it gets 1 ns. Expirations counted but not yet read (`ticks`)
 * are put back with the TFD_IOC_SET_TICKS ioctl (CONFIG_CHECKPOINT_RESTORE); without it the
 * restore fails rather than lose them.
 */
import { O } from "../../ffi/mod.ts";
import type { Fd, TimerfdInfo, TimeSpec } from "../inspect/fds.ts";
import type { FileEntry } from "../image/schema.ts";
import type { FileHandler, FileRestoreContext } from "./types.ts";
import { injectRaw, u64 } from "./util.ts";

/** A timerfd. */
export interface TimerfdEntry extends FileEntry {
  kind: "timerfd";
  clockid: number;
  /** TFD_TIMER_ABSTIME 1 | TFD_TIMER_CANCEL_ON_SET 2. */
  settimeFlags: number;
  /** Time left until the next expiry (0 when disarmed). */
  value: TimeSpec;
  interval: TimeSpec;
  /** Expirations not yet read. */
  ticks: bigint;
}

const TFD_TIMER_ABSTIME = 1;
const TFD_IOC_SET_TICKS = 0x40085400;
const SYS_CLOCK_GETTIME = 228;
const SYS_IOCTL = 16;
const NS = 1_000_000_000n;

const ns = (t: TimeSpec) => t.sec * NS + t.nsec;

function itimerspec(interval: bigint, value: bigint): Uint8Array {
  const b = new Uint8Array(32);
  const v = new DataView(b.buffer);
  v.setBigInt64(0, interval / NS, true);
  v.setBigInt64(8, interval % NS, true);
  v.setBigInt64(16, value / NS, true);
  v.setBigInt64(24, value % NS, true);
  return b;
}

function clockNow(ctx: FileRestoreContext, clockid: number): bigint {
  const addr = ctx.put(new Uint8Array(16));
  injectRaw(ctx, "clock_gettime", SYS_CLOCK_GETTIME, clockid, addr);
  const v = new DataView(ctx.memory.read(addr, 16).slice().buffer);
  return v.getBigInt64(0, true) * NS + v.getBigInt64(8, true);
}

/** timerfds. */
export const timerfdHandler: FileHandler<TimerfdEntry> = {
  kind: "timerfd",
  fields: {
    clockid: "whole",
    settimeFlags: "whole",
    value: { map: { sec: "whole", nsec: "whole" } },
    interval: { map: { sec: "whole", nsec: "whole" } },
    ticks: "whole",
  },
  fdKinds: ["timerfd"],
  dump(fd: Fd): TimerfdEntry {
    const info = fd.info as TimerfdInfo;
    return {
      id: fd.fileId,
      kind: "timerfd",
      flags: fd.flags,
      clockid: info.clockid,
      settimeFlags: info.settimeFlags,
      value: info.value,
      interval: info.interval,
      ticks: info.ticks,
    };
  },
  open(e: TimerfdEntry, ctx: FileRestoreContext): number {
    const fd = Number(ctx.injector.call("timerfd_create", e.clockid, e.flags & O.NONBLOCK));
    const interval = ns(e.interval);
    let value = ns(e.value);
    if (value <= 0n && interval > 0n) value = 1n;
    if (value > 0n) {
      let flags = 0;
      if (e.settimeFlags & TFD_TIMER_ABSTIME) {
        value += clockNow(ctx, e.clockid);
        flags = e.settimeFlags;
      }
      ctx.injector.call("timerfd_settime", fd, flags, ctx.put(itimerspec(interval, value)), 0);
    }
    if (e.ticks > 0n) {
      injectRaw(
        ctx,
        "ioctl(TFD_IOC_SET_TICKS)",
        SYS_IOCTL,
        fd,
        TFD_IOC_SET_TICKS,
        ctx.put(u64(e.ticks)),
      );
    }
    return fd;
  },
};
