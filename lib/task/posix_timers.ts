/**
 * POSIX timers (`timer_create`): their ids, clocks, notification and times. The ids are part of
 * the program's state (it holds them), so the restore asks the kernel for the same ids with
 * `PR_TIMER_CREATE_RESTORE_IDS`.
 */
import { PR, SIGEV } from "../../ffi/mod.ts";
import type { Injector } from "../ptrace/inject.ts";
import type { PosixTimerEntry } from "../image/schema.ts";

/** /proc/PID/timers `notify:` kinds. */
const NOTIFY_KINDS: Record<string, number> = {
  signal: SIGEV.SIGNAL,
  none: SIGEV.NONE,
  thread: SIGEV.THREAD,
};

function ns(sec: bigint, nsec: bigint): bigint {
  return sec * 1_000_000_000n + nsec;
}

/** Parses /proc/PID/timers. */
export function parseTimers(text: string): Omit<PosixTimerEntry, "intervalNs" | "valueNs">[] {
  const out: Omit<PosixTimerEntry, "intervalNs" | "valueNs">[] = [];
  for (const block of text.split(/\n(?=ID: )/)) {
    const id = block.match(/^ID: (-?\d+)/m);
    if (!id) continue;
    const sig = block.match(/^signal: (\d+)\/([0-9a-f]+)/m)!;
    const notify = block.match(/^notify: (\w+)\/(\w+)\.(\d+)/m)!;
    const clock = block.match(/^ClockID: (-?\d+)/m)!;
    out.push({
      id: Number(id[1]),
      signo: Number(sig[1]),
      sigval: BigInt(`0x${sig[2]}`),
      notify: (NOTIFY_KINDS[notify[1]] ?? 0) | (notify[2] === "tid" ? SIGEV.THREAD_ID : 0),
      targetTid: Number(notify[3]),
      clockid: Number(clock[1]),
    });
  }
  return out;
}

/** Every POSIX timer of a frozen process, with the time left as timer_gettime tells it. */
export function dumpPosixTimers(pid: number, inj: Injector): PosixTimerEntry[] {
  let text: string;
  try {
    text = Deno.readTextFileSync(`/proc/${pid}/timers`);
  } catch {
    return [];
  }
  return parseTimers(text).map((t) => {
    inj.call("timer_gettime", t.id, inj.scratch());
    const [iSec, iNsec, vSec, vNsec] = new BigInt64Array(inj.get(0, 32).slice().buffer);
    return { ...t, intervalNs: ns(iSec, iNsec), valueNs: ns(vSec, vNsec) };
  });
}

function timespecPair(intervalNs: bigint, valueNs: bigint): Uint8Array {
  const G = 1_000_000_000n;
  return new Uint8Array(
    new BigInt64Array([intervalNs / G, intervalNs % G, valueNs / G, valueNs % G]).buffer,
  );
}

/**
 * Makes the timers again with their ids and arms them with the time they had left; `seen` gives
 * a target thread's tid as the process sees it (the image's, but in a nested pid namespace).
 */
export function restorePosixTimers(
  inj: Injector,
  timers: PosixTimerEntry[],
  seen: (tid: number) => number = (tid) => tid,
): void {
  if (timers.length === 0) return;
  inj.call("prctl", PR.TIMER_CREATE_RESTORE_IDS, 1, 0, 0, 0);
  try {
    for (const t of [...timers].sort((a, b) => a.id - b.id)) {
      // struct sigevent: sigev_value 0, sigev_signo 8, sigev_notify 12, _tid 16; 64 bytes.
      const sev = new DataView(new ArrayBuffer(64));
      sev.setBigUint64(0, t.sigval, true);
      sev.setInt32(8, t.signo, true);
      sev.setInt32(12, t.notify, true);
      // SIGEV_THREAD_ID (4) names a thread; otherwise the kernel ignores the field.
      sev.setInt32(16, t.notify & 4 ? seen(t.targetTid) : t.targetTid, true);
      const sevAddr = inj.put(new Uint8Array(sev.buffer), 0);
      const idAddr = inj.put(new Uint8Array(new Int32Array([t.id]).buffer), 128);
      inj.call("timer_create", t.clockid, sevAddr, idAddr);
      if (t.valueNs > 0n) {
        inj.call("timer_settime", t.id, 0, inj.put(timespecPair(t.intervalNs, t.valueNs), 256), 0);
      }
    }
  } finally {
    inj.call("prctl", PR.TIMER_CREATE_RESTORE_IDS, 0, 0, 0, 0);
  }
}
