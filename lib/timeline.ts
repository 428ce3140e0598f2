/**
 * Moments of a migration's freeze, on CLOCK_MONOTONIC (the clock a process's own timestamps
 * use, shared by every process of one machine): where the downtime goes. Marks cost a push; they
 * are kept only while someone records (`Timeline.record`), and printed to stderr as they come
 * when `TARDIGRADE_TIMELINE` is set.
 */
import { addressOf, CLOCK, syscall } from "../ffi/mod.ts";

/** One moment: what happened and when (CLOCK_MONOTONIC, in ms). */
export type TimelineMark = [what: string, atMs: number];

/** CLOCK_MONOTONIC minus `performance.now()` (both monotonic, read once). */
let offsetMs: number | undefined;

/** CLOCK_MONOTONIC now, in ms. */
export function monotonicMs(): number {
  if (offsetMs === undefined) {
    const ts = new BigInt64Array(2);
    const before = performance.now();
    syscall("clock_gettime", CLOCK.MONOTONIC, addressOf(ts));
    const after = performance.now();
    offsetMs = Number(ts[0]) * 1e3 + Number(ts[1]) / 1e6 - (before + after) / 2;
  }
  return performance.now() + offsetMs;
}

const recording = new Set<Timeline>();
const printing = (() => {
  try {
    return Deno.env.get("TARDIGRADE_TIMELINE") !== undefined;
  } catch {
    return false; // no --allow-env: not printed
  }
})();

/** Marks a moment in every timeline being recorded (and prints it with `TARDIGRADE_TIMELINE`). */
export function mark(what: string): void {
  if (!recording.size && !printing) return;
  const at = monotonicMs();
  for (const t of recording) t.marks.push([what, at]);
  if (printing) console.error(`[timeline ${Deno.pid}] ${at.toFixed(1)} ${what}`);
}

/** The marks made while it records. */
export class Timeline {
  readonly marks: TimelineMark[] = [];

  private constructor() {}

  /** Starts recording every mark (until `stop`). */
  static record(): Timeline {
    const t = new Timeline();
    recording.add(t);
    return t;
  }

  /** Stops recording; returns the marks. */
  stop(): TimelineMark[] {
    recording.delete(this);
    return this.marks;
  }
}
