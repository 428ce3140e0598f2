/**
 * Process-wide state, assembled from the modules of this folder: identity and tree position,
 * credentials (the main thread's), namespaces (for inspection only), audit identity, fs state, attributes, mm, signal dispositions
 * and pending signals, interval timers, resource limits, zombie children. What only the process
 * can tell is asked by injecting the syscall into it.
 */
import type { ProcessEntry } from "../image/schema.ts";
import type { Process } from "../inspect/process.ts";
import type { Injector } from "../ptrace/inject.ts";
import { dumpAttributes } from "./attributes.ts";
import { dumpAudit } from "./audit.ts";
import { dumpCgroups } from "./cgroups.ts";
import { dumpCredentials } from "./credentials.ts";
import { dumpFsState } from "./fs_state.ts";
import { dumpItimers } from "./itimers.ts";
import { dumpExe, dumpMm } from "./mm.ts";
import { dumpNamespaces } from "./namespaces.ts";
import { dumpRlimits } from "./rlimits.ts";
import { dumpSharedPending, dumpSigactions } from "./signals.ts";
import { zombieChildren } from "./zombies.ts";

/** What `dumpTask` gives: a process entry but its memory, threads and files. */
export type TaskDump = Omit<
  ProcessEntry,
  "threads" | "mappings" | "special" | "objects" | "files" | "fds" | "extents"
>;

/** Everything process-wide a frozen process holds, but its memory, threads and files. */
export async function dumpTask(proc: Process, inj: Injector): Promise<TaskDump> {
  const pid = proc.pid;
  const stat = await proc.stat();
  return {
    pid,
    ppid: stat.ppid,
    sid: stat.session,
    pgid: stat.pgrp,
    zombies: zombieChildren(pid),
    comm: stat.comm,
    cmdline: await proc.cmdline(),
    exe: await dumpExe(proc),
    ...await dumpFsState(proc),
    ...await dumpAttributes(proc, inj),
    creds: dumpCredentials(pid),
    namespaceInodes: await dumpNamespaces(proc),
    audit: dumpAudit(pid),
    rlimits: await dumpRlimits(proc),
    mm: await dumpMm(proc, stat, inj),
    sigactions: dumpSigactions(inj),
    sharedPending: dumpSharedPending(pid),
    itimers: dumpItimers(inj),
    cgroups: dumpCgroups(pid),
  };
}
