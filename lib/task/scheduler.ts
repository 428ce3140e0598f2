/**
 * How each thread is scheduled: CPU policy, real-time priority and nice value, utilization clamps,
 * CPU affinity, I/O priority and timer slack. All are per thread. The tool reads and sets the first
 * ones on any tid itself (sched_getattr/sched_setattr, getpriority/setpriority,
 * sched_getaffinity/sched_setaffinity, ioprio_get/ioprio_set); only the timer slack must be asked
 * and set inside the thread (PR_GET/SET_TIMERSLACK).
 */
import {
  errnoText,
  getAffinity,
  getNice,
  ioprioGet,
  ioprioSet,
  PR,
  SCHED,
  SCHED_FLAG,
  schedGetattr,
  schedSetattr,
  setAffinity,
  setNice,
  SyscallError,
} from "../../ffi/mod.ts";
import { RestoreError } from "../errors.ts";
import type { SchedulingEntry } from "../image/schema.ts";
import { parseStat } from "../inspect/procfs.ts";
import type { Injector } from "../ptrace/inject.ts";

/** The kernel's priority of a nice value under a fair policy, as /proc's stat shows it. */
const NICE_TO_PRIORITY = 20;

/**
 * The timer slack of the thread `inj` runs in, asked in it: queued (`Injector.queueCall`), made
 * with the calls queued beside it.
 */
export function queueTimerSlack(inj: Injector): () => number {
  const slack = inj.queueCall("prctl", [PR.GET_TIMERSLACK, 0, 0, 0, 0]);
  return () => Number(slack());
}

/**
 * How thread `tid` of process `pid` is scheduled; `timerSlackNs` as the thread gave it
 * (`queueTimerSlack`).
 */
export function dumpScheduling(pid: number, tid: number, timerSlackNs: number): SchedulingEntry {
  const attr = schedGetattr(tid);
  const stat = parseStat(Deno.readTextFileSync(`/proc/${pid}/task/${tid}/stat`));
  return {
    policy: attr.policy,
    flags: attr.flags,
    nice: getNice(tid),
    rtPriority: attr.priority,
    priority: stat.priority,
    runtime: attr.runtime,
    deadline: attr.deadline,
    period: attr.period,
    utilMin: attr.utilMin,
    utilMax: attr.utilMax,
    cpus: getAffinity(tid),
    ioprio: ioprioGet(tid),
    timerSlackNs,
  };
}

/**
 * Queues the timer slack `s` gives the thread `inj` runs in (made with the thread's other state,
 * restoreThreadState): before `restoreScheduling`, as a real-time policy sets it to 0 and ignores
 * PR_SET_TIMERSLACK.
 */
export function queueTimerSlackRestore(inj: Injector, s: SchedulingEntry): void {
  // PR_SET_TIMERSLACK 0 means "back to the default": a real-time thread's 0 comes with its policy.
  if (s.timerSlackNs === 0) return;
  const args = [PR.SET_TIMERSLACK, s.timerSlackNs, 0, 0, 0];
  inj.queue("prctl", args, (r) => {
    if (r < 0n) {
      failed(inj, `timer slack ${s.timerSlackNs} ns`, new SyscallError("prctl", args, Number(-r)));
    }
  });
}

/** A step of scheduling a thread failed: the restore fails, naming the step and the reason. */
function failed(inj: Injector, what: string, err: SyscallError): never {
  throw new RestoreError(
    `thread ${inj.tid} of ${inj.pid}: ${what} failed: ${err.code} (${errnoText(err.errno)})`,
    { cause: err },
  );
}

/**
 * Schedules the thread `inj` runs in (`inj.tid` is the host's) as `s` says, but the timer slack
 * (`queueTimerSlackRestore`, given before). Last of its steps but the seccomp filters: an idle or
 * pinned thread would make the injected steps before slow.
 */
export function restoreScheduling(inj: Injector, s: SchedulingEntry): void {
  const tid = inj.tid;
  const step = (what: string, fn: () => void) => {
    try {
      fn();
    } catch (err) {
      if (!(err instanceof SyscallError)) throw err;
      failed(inj, what, err);
    }
  };
  if (ioprioGet(tid) !== s.ioprio) step(`I/O priority ${s.ioprio}`, () => ioprioSet(tid, s.ioprio));
  step(`CPU affinity ${s.cpus.join(",")}`, () => setAffinity(tid, s.cpus));
  // The nice value first: under a real-time policy sched_setattr leaves it as it is.
  step(`nice ${s.nice}`, () => setNice(tid, s.nice));
  const now = schedGetattr(tid);
  const clamps = (now.utilMin !== s.utilMin ? SCHED_FLAG.UTIL_CLAMP_MIN : 0) |
    (now.utilMax !== s.utilMax ? SCHED_FLAG.UTIL_CLAMP_MAX : 0);
  const fair = s.policy === SCHED.OTHER || s.policy === SCHED.BATCH || s.policy === SCHED.IDLE;
  step(`scheduling policy ${s.policy} (priority ${s.rtPriority})`, () =>
    schedSetattr(tid, {
      policy: s.policy,
      flags: s.flags | clamps,
      // SCHED_IDLE keeps the nice it is given in the kernel's priority only (stat field 18).
      nice: s.policy === SCHED.IDLE ? s.priority - NICE_TO_PRIORITY : s.nice,
      priority: s.rtPriority,
      // A fair thread's slice: 0 unless it asked for its own (a fresh thread has the default).
      runtime: fair && s.runtime === now.runtime ? 0n : s.runtime,
      deadline: s.deadline,
      period: s.period,
      utilMin: s.utilMin,
      utilMax: s.utilMax,
    }));
}
