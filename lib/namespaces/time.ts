/**
 * A container's time namespace: the offsets it adds to CLOCK_MONOTONIC and CLOCK_BOOTTIME
 * (/proc/PID/timens_offsets). The restore gives the container's init a fresh time namespace
 * with the same offsets, so its processes keep their clock view; restored after a reboot (the
 * host's clocks started again), the offsets are moved so that the container's clocks go on from
 * where the dump read them instead of running backwards. As CRIU does: the init unshares a time
 * namespace for its children, the tool writes its offsets, and the init joins it (setns of its
 * own `time_for_children`), before any process is in it.
 */
import { AT_FDCWD, CLOCK, CLONE, cstring, O } from "../../ffi/mod.ts";
import { RestoreError } from "../errors.ts";
import type { Injector } from "../ptrace/inject.ts";
import type { TimeEntry } from "../image/schema.ts";
import { procPath, readProcText } from "../inspect/procfs.ts";

const NS_PER_S = 1_000_000_000n;

/** The clocks a time namespace offsets, as /proc/PID/timens_offsets names them. */
const CLOCKS = { monotonic: CLOCK.MONOTONIC, boottime: CLOCK.BOOTTIME } as const;
type ClockName = keyof typeof CLOCKS;

/** This boot of the machine: the host's clocks count from it. */
function bootId(): string {
  return Deno.readTextFileSync("/proc/sys/kernel/random/boot_id").trim();
}

/** The offsets (ns) of the time namespace process `pid` makes its children in. */
function readOffsets(pid: number): Record<ClockName, bigint> {
  const offsets: Record<ClockName, bigint> = { monotonic: 0n, boottime: 0n };
  for (const line of readProcText(pid, "timens_offsets").split("\n")) {
    const [name, s, ns] = line.trim().split(/\s+/);
    if (name in CLOCKS) offsets[name as ClockName] = BigInt(s) * NS_PER_S + BigInt(ns);
  }
  return offsets;
}

/** Clock `clock` (ns) as the process `inj` runs in sees it. */
function clockOf(inj: Injector, clock: number): bigint {
  const at = inj.put(new Uint8Array(16), 0);
  inj.call("clock_gettime", clock, at);
  const v = new DataView(inj.get(0, 16).buffer.slice(0));
  return v.getBigInt64(0, true) * NS_PER_S + v.getBigInt64(8, true);
}

/** The time namespace of container `pid` (its init, frozen; `inj` runs in it). */
export function dumpTime(pid: number, inj: Injector): TimeEntry {
  const offsets = readOffsets(pid);
  return {
    monotonic: offsets.monotonic,
    boottime: offsets.boottime,
    bootId: bootId(),
    clocks: {
      monotonic: clockOf(inj, CLOCKS.monotonic),
      boottime: clockOf(inj, CLOCKS.boottime),
    },
  };
}

/**
 * The offsets to give the container now: the dumped ones on the same boot; after a reboot those
 * that make its clocks read what they read at the dump (`host` reads the host's clocks).
 */
function offsetsNow(time: TimeEntry, host: (clock: number) => bigint): Record<ClockName, bigint> {
  if (time.bootId === bootId()) {
    return { monotonic: BigInt(time.monotonic), boottime: BigInt(time.boottime) };
  }
  return {
    monotonic: BigInt(time.clocks.monotonic) - host(CLOCKS.monotonic),
    boottime: BigInt(time.clocks.boottime) - host(CLOCKS.boottime),
  };
}

/** `timens_offsets` text of one clock: seconds (may be negative) and nanoseconds below a second. */
function offsetLine(name: ClockName, ns: bigint): string {
  let s = ns / NS_PER_S, rest = ns % NS_PER_S;
  if (rest < 0n) [s, rest] = [s - 1n, rest + NS_PER_S];
  return `${name} ${s} ${rest}\n`;
}

/**
 * Moves the process `inj` runs in (single-threaded, still in the host's time
 * namespace) into a fresh time namespace with the offsets of `time`; its children follow it.
 */
export function makeTime(inj: Injector, time: TimeEntry): void {
  const offsets = offsetsNow(time, (clock) => clockOf(inj, clock));
  inj.call("unshare", CLONE.NEWTIME);
  // Only while no process is in it: setns below freezes them.
  const text = offsetLine("monotonic", offsets.monotonic) +
    offsetLine("boottime", offsets.boottime);
  try {
    Deno.writeTextFileSync(procPath(inj.pid, "timens_offsets"), text);
  } catch (err) {
    throw new RestoreError(`cannot set its time namespace's offsets: ${(err as Error).message}`);
  }
  const fd = inj.call(
    "openat",
    AT_FDCWD,
    inj.put(cstring("/proc/self/ns/time_for_children"), 0),
    O.RDONLY | O.CLOEXEC,
    0,
  );
  try {
    inj.call("setns", fd, CLONE.NEWTIME);
  } finally {
    inj.call("close", fd);
  }
}

/** How the time namespace of restored container `pid` differs from `time`, or null. */
export function timeDiffers(pid: number, time: TimeEntry): string | null {
  const now = readOffsets(pid);
  if (time.bootId !== bootId()) return null; // moved on purpose (offsetsNow)
  for (const name of Object.keys(CLOCKS) as ClockName[]) {
    if (now[name] !== BigInt(time[name])) {
      return `its ${name} clock is offset by ${now[name]} ns, not ${time[name]} ns`;
    }
  }
  return null;
}
