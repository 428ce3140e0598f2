/**
 * Restore verification suite (issue 5): for every fixture in tests/fixtures/r_*.c, start it,
 * check it (sanity), checkpoint it (which kills it), restore it, and require that the restored
 * process has the same pid and that the same check, run again inside it, passes.
 *
 * Each fixture's top comment says what state it holds and what its check proves;
 * tests/fixtures_selfcheck_test.ts proves the fixtures themselves (PASS twice, and after
 * SIGSTOP/SIGCONT) without a restore.
 *
 * `R_FIXTURES=r_pipe,r_epoll` runs only those.
 */
import assert from "node:assert/strict";
import { checkpoint, restore } from "../mod.ts";
import {
  fixture,
  needs,
  noNetworkLock,
  notInstalled,
  PING_GROUPS,
  reapAdopted,
  removeAnnounced,
  setSysctls,
  spawnTarget,
  type Target,
  waitUntil,
  zombieChildrenOf,
} from "./helpers.ts";

/** How a fixture is started. */
export interface RestoreCase {
  name: string;
  args?: string[];
  env?: Record<string, string>;
  cwd?: string;
  /** Why this piece of state is not restored yet: the test is ignored, the fixture kept. */
  unsupported?: string;
  /** What this machine lacks for it (`notInstalled`): the test is ignored with that reason. */
  missing?: string;
  /** Sysctls set while it runs (helpers.ts `setSysctls`), put back after. */
  sysctls?: Record<string, string>;
}

/** One row per fixture; tests/fixtures_selfcheck_test.ts checks that no fixture is missing. */
export const restoreCases: RestoreCase[] = [
  // Memory
  { name: "r_memory" },
  { name: "r_mprotect" },
  { name: "r_private_file_map" },
  { name: "r_shared_file_map" },
  { name: "r_deleted_map" },
  { name: "r_memfd" },
  { name: "r_shared_anon" },
  { name: "r_heap_grow" },
  { name: "r_madvise" },
  { name: "r_sysv_shm" },
  { name: "r_vdso_clock" },
  // Threads, registers, syscalls in progress
  { name: "r_threads" },
  { name: "r_fpu" },
  { name: "r_futex" },
  { name: "r_robust_mutex" },
  { name: "r_nanosleep" },
  { name: "r_pids" },
  { name: "r_rseq" },
  // Signals and timers
  { name: "r_signals" },
  { name: "r_sigaltstack" },
  { name: "r_itimer" },
  { name: "r_itimer_fired" },
  { name: "r_posix_timer_fire" },
  // Process attributes
  { name: "r_rlimits" },
  { name: "r_umask" },
  { name: "r_cwd" },
  { name: "r_comm" },
  { name: "r_seccomp" },
  {
    name: "r_cmdline",
    args: ["alpha", "two words", "", "ünïcödé", "--flag=x=y"],
    env: { TG_CMDLINE_VAR: "value with spaces=and equals" },
  },
  // File descriptors
  { name: "r_file_flags" },
  { name: "r_dup_shared_pos" },
  { name: "r_many_files" },
  { name: "r_pipe" },
  { name: "r_eventfd" },
  { name: "r_epoll" },
  { name: "r_timerfd" },
  { name: "r_signalfd" },
  { name: "r_listen" },
  { name: "r_tcp_loopback", missing: noNetworkLock() },
  { name: "r_tcp_accept_queue" },
  { name: "r_socketpair" },
  { name: "r_socketpair_tree" },
  { name: "r_socketpair_creds" },
  { name: "r_scm_rights" },
  { name: "r_scm_rights_stream" },
  { name: "r_inherited_fds" },
  { name: "r_socket_options" },
  { name: "r_inet_options" },
  { name: "r_reuseport" },
  { name: "r_multicast" },
  { name: "r_multicast6" },
  { name: "r_unix_dgram_queue" },
  { name: "r_unix_ghost" },
  { name: "r_unix_accept_queue" },
  { name: "r_ping_socket", sysctls: PING_GROUPS },
  { name: "r_inet_kinds" },
  { name: "r_netlink_socket" },
  { name: "r_packet_socket" },
  { name: "r_flock" },
  { name: "r_posix_timer" },
  { name: "r_tree" },
  { name: "r_zombie" },
  // Issue 10, "Nothing comes back different": task state
  { name: "r_caps" },
  { name: "r_sched_policy" },
  { name: "r_affinity" },
  { name: "r_ioprio" },
  { name: "r_timerslack" },
  { name: "r_oom_score_adj" },
  {
    name: "r_loginuid",
    unsupported:
      "restore refused: the login uid comes back, but the audit session id cannot (the kernel makes a new one whenever it sets a login uid; a process restored from its own login session keeps both)",
  },
  { name: "r_thp_disable" },
  { name: "r_subreaper" },
  { name: "r_membarrier" },
  { name: "r_dumpable" },
  { name: "r_thread_names" },
  { name: "r_stopped" },
  { name: "r_zombie_groups" },
  { name: "r_zombie_kinds" },
  { name: "r_zombie_thread" },
  { name: "r_other_uid" },
  { name: "r_thread_creds" },
  // Issue 10: memory
  { name: "r_vma_flags" },
  { name: "r_mseal" },
  { name: "r_guard_pages" },
  { name: "r_file_map_prot" },
  { name: "r_cow_fork" },
  { name: "r_stack_grow" },
  { name: "r_unreadable_maps" },
  { name: "r_hugetlb" },
  { name: "r_no_vdso" },
  { name: "r_aio" },
  { name: "r_memfd_attrs" },
  { name: "r_fexecve" },
  // Issue 10: files
  { name: "r_fd_status_flags" },
  { name: "r_clone_files" },
  { name: "r_clone_fs" },
  { name: "r_ghost_file" },
  { name: "r_ghost_fifo" },
  { name: "r_ghost_dir_fd" },
  { name: "r_deleted_cwd" },
  { name: "r_chroot" },
  { name: "r_opath" },
  { name: "r_proc_child_fd" },
  { name: "r_pidfd" },
  { name: "r_fanotify" },
  { name: "r_lease" },
  { name: "r_inotify_wd" },
  // Issue 13: terminals
  { name: "r_pty" },
  { name: "r_pty_session" },
  { name: "r_pty_raw" },
  { name: "r_pty_hup" },
  { name: "r_console" },
];

/** Interpreted programs that append a count to a file every 50 ms (tests/fixtures/counter.*). */
export const counterCases = [
  { name: "counter.py", command: "python3" },
  { name: "counter.js", command: "node" },
];

/** The last number a counter wrote to its file. */
function lastCount(t: Target): number {
  const file = t.output().match(/\bfile=(\S+)/)?.[1];
  if (!file) throw new Error(`no file= on the READY line:\n${t.output()}`);
  const lines = Deno.readTextFileSync(file).trimEnd().split("\n");
  return Number(lines[lines.length - 1]);
}

const only = Deno.env.get("R_FIXTURES")?.split(",");

for (const { name, args = [], env, cwd, unsupported, missing, sysctls } of restoreCases) {
  if (only && !only.includes(name)) continue;
  const why = missing ?? (only ? undefined : unsupported && `unsupported: ${unsupported}`);
  Deno.test(needs(`restore: ${name}`, why), async () => {
    using _sysctls = setSysctls(sysctls);
    const bin = await fixture(name);
    const t = await spawnTarget(bin, args, { ready: /^(READY|SETUP FAILED) /m, cwd, env });
    const img = await Deno.makeTempDir({ prefix: "tardigrade-restore-" });
    let restoredPid: number | undefined;
    try {
      assert.match(t.output(), /^READY /m, `fixture setup failed:\n${t.output()}`);
      assert.equal(await t.check(), "PASS", `check before checkpoint; output:\n${t.output()}`);
      const zombies = zombieChildrenOf(t.pid);
      await checkpoint(t.pid, img + "/image");
      await reapAdopted(zombies);
      const r = await restore(img + "/image");
      restoredPid = r.pid;
      assert.equal(r.pid, t.pid, "restored with another pid");
      assert.equal(await t.check(), "PASS", `check after restore; output:\n${t.output()}`);
    } finally {
      await t.kill();
      if (restoredPid !== undefined && restoredPid !== t.pid) await t.kill(restoredPid);
      await removeAnnounced(t);
      await Deno.remove(img, { recursive: true }).catch(() => {});
      await Deno.remove(t.outPath).catch(() => {});
    }
  });
}

for (const { name, command } of counterCases) {
  if (only && !only.includes(name)) continue;
  Deno.test(needs(`restore: ${name} keeps counting`, notInstalled(command)), async () => {
    const script = new URL(`./fixtures/${name}`, import.meta.url).pathname;
    const t = await spawnTarget(command, [script], { ready: /^READY /m });
    const img = await Deno.makeTempDir({ prefix: "tardigrade-restore-" });
    try {
      await waitUntil(() => lastCount(t) >= 5, 5000, () => `5 counts: ${lastCount(t)}`);
      assert.equal(await t.check(), "PASS", `check before checkpoint; output:\n${t.output()}`);
      await checkpoint(t.pid, img + "/image");
      const atDump = lastCount(t);
      const r = await restore(img + "/image");
      assert.equal(r.pid, t.pid, "restored with another pid");
      await waitUntil(
        () => lastCount(t) >= atDump + 5,
        5000,
        () => `5 more counts after ${atDump}: stuck at ${lastCount(t)} after restore`,
      );
      assert.equal(await t.check(), "PASS", `check after restore; output:\n${t.output()}`);
    } finally {
      await t.kill();
      await removeAnnounced(t);
      await Deno.remove(img, { recursive: true }).catch(() => {});
      await Deno.remove(t.outPath).catch(() => {});
    }
  });
}
