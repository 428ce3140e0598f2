/**
 * The reliability suite ("No silent traps"): what the tool promises when things go wrong, tried
 * many times at random moments, with figures.
 *
 * - **dumper killed**: `tardigrade dump PID DIR` (kill mode, `--leave-running`, `--pre-copy`)
 *   gets SIGKILL after a random delay in [0, 1.2 × the duration of a whole dump] → the target is
 *   intact: alive, traced by nobody, no thread stopped, the same threads and signal masks as
 *   before, and its memory checks out (it checks itself on SIGUSR1); a mapping or descriptor the
 *   dumper left in it is a leftover. A dump that finished before the kill in kill mode
 *   legitimately ended the target: its image must then be complete (`inspect --verify`) and
 *   restore (counted apart). A `DIR.partial-*` left by SIGKILL is noted (nobody can clean up
 *   after SIGKILL); a `DIR` that is not a complete image is a miss.
 * - **damaged images**: variants of one good image of a small target (flipped bytes, truncations,
 *   appended bytes, damaged headers, fuzzed CBOR, fuzzed CBOR re-framed with correct checksums so
 *   the decoding and the schema checks are reached, missing files …) → every restore is refused,
 *   and leaves no process with the dumped pid or tid, no stub, no zombie, no stray file. A
 *   restore that succeeds is a miss, unless the damage is provably where the restore does not
 *   look (page bytes no extent covers, or a restored process that the tool's whole comparison
 *   finds equal to the undamaged image and that passes its own check): then it is said so.
 * - **ENOSPC**: a dump onto a small tmpfs (each mode) → a clean error naming the lack of space,
 *   no image, the target intact; a restore that must make a deleted file again in a directory on
 *   a full tmpfs → a clean refusal, nothing left, and once there is room a restore works.
 * - **restore killed**: `tardigrade restore DIR` gets SIGKILL after a random delay → no process
 *   with the pid left half made, no stub; a second restore then works and the process checks out.
 * - **pid taken**: a process holding the pid (or a thread's id) before the restore or while it
 *   runs → a clean refusal naming it, nothing else left, the holder untouched.
 *
 * Run: deno run -A bench/reliability.ts [--short] [--seed N] [--only NAME,…]  (`deno task
 * reliability`). Names: dumper, damaged, enospc, restore-kill, pid-taken. Each miss is printed as
 * it is found (scenario, try, delay, what was found); the last line is the summary
 * `reliability: …`; the exit status is 1 on any miss.
 */
import { parseArgs } from "node:util";
import { decode } from "cbor-x";
import { checkpoint, describeDifference, ImageReader, restore, verifyRestored } from "../mod.ts";
import { frame, HEADER_SIZE, unframe } from "../lib/image/frame.ts";
import { checksum } from "../lib/image/checksum.ts";
import type { ImageManifest } from "../lib/image/manifest.ts";
import type { ProcessEntry } from "../lib/image/schema.ts";
import { WAIT, waitpid } from "../ffi/mod.ts";
import { SCRATCH_SIZE } from "../lib/ptrace/inject.ts";
import { FRAME_STRIDE } from "../lib/ptrace/way_back.ts";
import { STUB_PROGRAM } from "../lib/ptrace/stub.ts";
import {
  type BenchTarget,
  checkTarget,
  cleanupScratch,
  killAndReap,
  reapOrphans,
  scratch,
  startTarget,
} from "./common.ts";

// ---------------------------------------------------------------------------------------------
// Options

const { values: flags } = parseArgs({
  args: Deno.args,
  options: {
    short: { type: "boolean" },
    help: { type: "boolean" },
    seed: { type: "string" },
    only: { type: "string" },
    tries: { type: "string" },
    images: { type: "string" },
  },
});
if (flags.help) {
  console.log(
    "usage: deno run -A bench/reliability.ts [--short] [--seed N] [--only NAME,…] [--tries N] " +
      "[--images N]\nnames: dumper, damaged, enospc, restore-kill, pid-taken",
  );
  Deno.exit(0);
}
const SHORT = flags.short ?? false;
const SCENARIOS = ["dumper", "damaged", "enospc", "restore-kill", "pid-taken"];
const only = flags.only ? flags.only.split(",") : SCENARIOS;
for (const name of only) {
  if (!SCENARIOS.includes(name)) {
    console.error(`unknown scenario ${name} (${SCENARIOS.join(", ")})`);
    Deno.exit(2);
  }
}
/** Kills of the dumper per dump mode. */
const DUMP_TRIES = Number(flags.tries ?? (SHORT ? 4 : 50));
/** Damaged variants of the good image. */
const IMAGES = Number(flags.images ?? (SHORT ? 30 : 240));
/** Kills of a restore. */
const RESTORE_TRIES = Number(flags.tries ?? (SHORT ? 4 : 50));
/** Rounds of the four pid-taken cases. */
const PID_ROUNDS = SHORT ? 1 : 3;
/** Memory of the dump target: enough that a dump takes a while. */
const BIG_MIB = 128;
/** Memory of the restore-kill target. */
const RESTORE_MIB = 64;
const seed = Number(flags.seed ?? (Date.now() >>> 0));

/** mulberry32: a small seeded PRNG, so a run can be repeated with --seed. */
function prng(s: number): () => number {
  let a = s >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const random = prng(seed);
const randInt = (n: number) => Math.floor(random() * n);
const pick = <T>(xs: readonly T[]): T => xs[randInt(xs.length)];

// ---------------------------------------------------------------------------------------------
// Figures and misses

const fig = {
  dumperKills: 0,
  intact: 0,
  /** Kill mode: the dump finished before the kill (the target legitimately gone). */
  dumpedFirst: 0,
  dumpedFirstGood: 0,
  partialDirs: 0,
  images: 0,
  imagesRefused: 0,
  /** Damaged images whose restore succeeded with a process identical to the good image's. */
  imagesNoEffect: 0,
  /** Variants not run: fuzzed bytes that decoded to an image of the same shape. */
  sameShape: 0,
  refusedAs: new Map<string, number>(),
  /** Refused damaged images by the last stage of the restore they reached. */
  refusedAt: new Map<string, number>(),
  /** Damaged images by file and kind of damage. */
  damageKinds: new Map<string, number>(),
  enospc: 0,
  enospcClean: 0,
  restoreKills: 0,
  restoreClean: 0,
  restoredFirst: 0,
  secondRestoreOk: 0,
  pidCases: 0,
  pidRefused: 0,
  leftovers: 0,
  /** Targets left with nothing but the scratch region or the userfaultfd (see `Condition`). */
  scratchLeft: 0,
  /** Steps skipped because another program of the machine took a pid we needed. */
  skipped: 0,
  notes: [] as string[],
};

interface Miss {
  scenario: string;
  what: string;
}
const misses: Miss[] = [];
/** Set once the run is being stopped (SIGINT, SIGTERM): nothing new is mounted or started. */
let stopping = false;

function miss(scenario: string, what: string): void {
  if (stopping) return; // interrupted: what fails now is our own stopping
  misses.push({ scenario, what });
  console.log(`MISS ${scenario}: ${what}`);
}

/** Records leftovers (each is also a miss). */
function leftover(scenario: string, found: string[]): void {
  for (const f of found) {
    fig.leftovers++;
    miss(scenario, `leftover: ${f}`);
  }
}

function note(text: string): void {
  fig.notes.push(text);
  console.log(`note: ${text}`);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const ms = (x: number) => `${x.toFixed(0)} ms`;

// ---------------------------------------------------------------------------------------------
// The target: memory with a pattern, a page rewritten every 2 ms, and on request a thread, a pipe,
// an open file and a deleted file mapped shared. It checks all of it on SIGUSR1.

const TARGET_C = String.raw`
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* reltarget MIB [DIR [DELETED_BYTES]] */
#define HOT_PAGES 64
#define PW 512
static uint64_t *mem, *hot;
static size_t words;
static uint64_t gen;
static volatile sig_atomic_t check_requested;
static volatile uint64_t ticks;
static int extras, file_fd = -1, ghost_fd = -1, pipe_fds[2];
static uint8_t *ghost_map;
static size_t ghost_size;
static char path[4096];

static void on_usr1(int sig) { (void)sig; check_requested = 1; }
/* A fault is reported with where it happened, for the miss line, then the process ends. */
static void on_fault(int sig, siginfo_t *si, void *uc) {
  char buf[160];
  int n = snprintf(buf, sizeof buf, "CRASH signal %d code %d addr %p ip %p sp %p\n", sig, si->si_code,
                   si->si_addr, (void *)((ucontext_t *)uc)->uc_mcontext.gregs[REG_RIP],
                   (void *)((ucontext_t *)uc)->uc_mcontext.gregs[REG_RSP]);
  (void)!write(1, buf, n);
  _exit(3);
}
static uint64_t pat(size_t i) { return i * 0x9e3779b97f4a7c15ull ^ 0x5bd1e995ull; }
static uint64_t hotpat(uint64_t g, size_t j) { return g * 0xff51afd7ed558ccdull ^ j; }
static void nap(long ns) { struct timespec t = {0, ns}; nanosleep(&t, NULL); }
static void *ticker(void *a) { (void)a; for (;;) { nap(5000000); ticks++; } return NULL; }
static void setup_failed(const char *what) { printf("SETUP FAILED %s: %s\n", what, strerror(errno)); exit(2); }

static int check(char *why, size_t len) {
  size_t bad = 0;
  for (size_t i = 0; i < words; i++) bad += mem[i] != pat(i);
  if (bad) { snprintf(why, len, "%zu words of the big mapping differ", bad); return 0; }
  for (size_t p = 0; p < HOT_PAGES; p++) {
    uint64_t *w = hot + p * PW, g = w[0];
    if (!g) continue;
    if (g % HOT_PAGES != p || g > gen) {
      snprintf(why, len, "hot page %zu has generation %lu (now %lu)", p, (unsigned long)g, (unsigned long)gen);
      return 0;
    }
    for (size_t j = 1; j < PW; j++)
      if (w[j] != hotpat(g, j)) { snprintf(why, len, "hot page %zu word %zu differs", p, j); return 0; }
  }
  if (extras) {
    uint64_t t0 = ticks;
    for (int i = 0; i < 50 && ticks == t0; i++) nap(10000000);
    if (ticks == t0) { snprintf(why, len, "the ticker thread does not run"); return 0; }
    char buf[16] = "";
    if (write(pipe_fds[1], "ping", 4) != 4 || read(pipe_fds[0], buf, 4) != 4 || memcmp(buf, "ping", 4)) {
      snprintf(why, len, "pipe: %s", strerror(errno));
      return 0;
    }
    if (pread(file_fd, buf, 11, 0) != 11 || memcmp(buf, "reliability", 11)) {
      snprintf(why, len, "open file: %s", strerror(errno));
      return 0;
    }
    struct stat st;
    if (fstat(ghost_fd, &st) || st.st_nlink != 0 || (size_t)st.st_size != ghost_size) {
      snprintf(why, len, "deleted file: links %lu size %ld", (unsigned long)st.st_nlink, (long)st.st_size);
      return 0;
    }
    for (size_t i = 0; i < ghost_size; i++)
      if (ghost_map[i] != (uint8_t)(i * 7 + 3)) { snprintf(why, len, "deleted file byte %zu differs", i); return 0; }
  }
  return 1;
}

int main(int argc, char **argv) {
  syscall(SYS_close_range, 3, ~0U, 0);
  setvbuf(stdout, NULL, _IONBF, 0);
  size_t mib = argc > 1 ? strtoul(argv[1], 0, 10) : 64;
  words = (mib << 20) / 8;
  mem = mmap(0, mib << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  hot = mmap(0, HOT_PAGES * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED || hot == MAP_FAILED) setup_failed("mmap");
  for (size_t i = 0; i < words; i++) mem[i] = pat(i);
  if (argc > 2) {
    extras = 1;
    ghost_size = argc > 3 ? strtoul(argv[3], 0, 10) : 65536;
    pthread_t t;
    if (pthread_create(&t, NULL, ticker, NULL)) setup_failed("thread");
    if (pipe(pipe_fds)) setup_failed("pipe");
    snprintf(path, sizeof path, "%s/file", argv[2]);
    file_fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (file_fd < 0 || write(file_fd, "reliability", 11) != 11) setup_failed("file");
    snprintf(path, sizeof path, "%s/deleted", argv[2]);
    ghost_fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (ghost_fd < 0 || ftruncate(ghost_fd, ghost_size)) setup_failed("deleted file");
    ghost_map = mmap(0, ghost_size, PROT_READ | PROT_WRITE, MAP_SHARED, ghost_fd, 0);
    if (ghost_map == MAP_FAILED) setup_failed("mmap of the deleted file");
    for (size_t i = 0; i < ghost_size; i++) ghost_map[i] = (uint8_t)(i * 7 + 3);
    if (unlink(path)) setup_failed("unlink");
  }
  struct sigaction sa = {0};
  sa.sa_handler = on_usr1;
  sigaction(SIGUSR1, &sa, NULL);
  struct sigaction fault = {0};
  fault.sa_sigaction = on_fault;
  fault.sa_flags = SA_SIGINFO;
  sigaction(SIGBUS, &fault, NULL);
  sigaction(SIGSEGV, &fault, NULL);
  printf("READY %d %p\n", getpid(), (void *)mem);
  for (;;) {
    nap(2000000);
    uint64_t g = ++gen;
    uint64_t *w = hot + (g % HOT_PAGES) * PW;
    for (size_t j = 1; j < PW; j++) w[j] = hotpat(g, j);
    w[0] = g;
    if (check_requested) {
      check_requested = 0;
      char why[256] = "";
      if (check(why, sizeof why)) printf("PASS\n");
      else printf("FAIL %s\n", why);
    }
  }
}
`;

let targetBin: string | undefined;
async function targetBinary(): Promise<string> {
  if (targetBin) return targetBin;
  const src = `${scratch}/reltarget.c`;
  const out = `${scratch}/reltarget`;
  Deno.writeTextFileSync(src, TARGET_C);
  const cc = await new Deno.Command("cc", {
    args: ["-O2", "-pthread", "-o", out, src],
    stderr: "piped",
  }).output();
  if (!cc.success) throw new Error(`cc reltarget.c:\n${new TextDecoder().decode(cc.stderr)}`);
  return targetBin = out;
}

/** A target of `mib` MiB; with `dir` also a thread, a pipe, `dir/file` and a deleted file. */
async function startReltarget(mib: number, dir?: string, deletedBytes = 65536) {
  if (stopping) throw new Error("stopping");
  const args = [String(mib), ...(dir ? [dir, String(deletedBytes)] : [])];
  return await startTarget(await targetBinary(), args, { append: true });
}

/** The target's (or a process restored from its image, `pid`) self-check, "PASS" or why not. */
function selfCheck(t: BenchTarget, pid = t.pid): Promise<string> {
  return checkTarget({ ...t, pid }, 5000);
}

// ---------------------------------------------------------------------------------------------
// What /proc says

function readText(path: string): string | undefined {
  try {
    return Deno.readTextFileSync(path);
  } catch {
    return undefined;
  }
}

/** State letter and parent of `pid`, undefined once it is gone. */
function stat(pid: number): { state: string; ppid: number } | undefined {
  const s = readText(`/proc/${pid}/stat`);
  if (!s) return undefined;
  const rest = s.slice(s.lastIndexOf(")") + 2).split(" ");
  return { state: rest[0], ppid: Number(rest[1]) };
}

/** Whether `pid` is a live process (not a zombie). */
function isAlive(pid: number): boolean {
  const st = stat(pid);
  return st !== undefined && st.state !== "Z";
}

function exists(path: string): boolean {
  try {
    Deno.lstatSync(path);
    return true;
  } catch {
    return false;
  }
}

function tids(pid: number): number[] {
  try {
    return [...Deno.readDirSync(`/proc/${pid}/task`)].map((e) => Number(e.name)).sort((a, b) =>
      a - b
    );
  } catch {
    return [];
  }
}

function statusField(path: string, field: string): string | undefined {
  return readText(path)?.match(new RegExp(`^${field}:\\s*(.*)$`, "m"))?.[1];
}

function cmdline(pid: number): string {
  return (readText(`/proc/${pid}/cmdline`) ?? "").replaceAll("\0", " ").trim();
}

/** What a dump must leave as it was: maps, descriptors, threads and their signal masks. */
interface Snapshot {
  maps: string;
  fds: string;
  threads: string;
}

function snapshot(pid: number): Snapshot {
  const fds: string[] = [];
  try {
    for (const e of Deno.readDirSync(`/proc/${pid}/fd`)) {
      let target = "?";
      try {
        target = Deno.readLinkSync(`/proc/${pid}/fd/${e.name}`);
      } catch { /* closed meanwhile */ }
      fds.push(`${e.name} -> ${target}`);
    }
  } catch { /* gone */ }
  fds.sort((a, b) => parseInt(a) - parseInt(b));
  const threads = tids(pid).map((t) =>
    `${t} SigBlk ${statusField(`/proc/${pid}/task/${t}/status`, "SigBlk")}`
  );
  return {
    maps: readText(`/proc/${pid}/maps`) ?? "",
    fds: fds.join("\n"),
    threads: threads.join("\n"),
  };
}

/** The lines of `after` not in `before` and the reverse, for a miss report. */
function diffLines(before: string, after: string, most = 6): string {
  const b = new Set(before.split("\n")), a = new Set(after.split("\n"));
  const gone = [...b].filter((l) => !a.has(l)).map((l) => `-${l.trim()}`);
  const added = [...a].filter((l) => !b.has(l)).map((l) => `+${l.trim()}`);
  return [...gone, ...added].slice(0, most).join("; ");
}

/** Bytes of address space the maps text lists. */
function mappedBytes(maps: string): bigint {
  let n = 0n;
  for (const m of maps.matchAll(/^([0-9a-f]+)-([0-9a-f]+) /gm)) {
    n += BigInt(`0x${m[2]}`) - BigInt(`0x${m[1]}`);
  }
  return n;
}

/** How the target is after a dumper was killed (or a failed dump). */
interface Condition {
  /** What harms it (gone, traced, stopped, threads or masks changed, memory wrong). */
  harm?: string;
  /** What a dumper left in it that does not harm it (a mapping, a descriptor). */
  leftover?: string;
  /**
   * Only the injector's scratch region, or the dirty tracking's userfaultfd, is left in it: the
   * dumper was killed while it ran syscalls in the process, where nobody can take them back.
   * Counted apart, not a miss: the process runs on unharmed with them.
   */
  scratchLeft?: string;
}

/**
 * Whether the target is intact: alive, no thread traced or stopped, its memory check passes, and
 * (with `before`) the same threads and signal masks. Maps or descriptors that are not as before
 * are leftovers in it, reported apart.
 */
async function conditionOf(t: BenchTarget, before?: Snapshot): Promise<Condition> {
  const st = stat(t.pid);
  if (!st) return { harm: "the target is gone" };
  if (st.state === "Z") return { harm: `the target died (${endOf(t.pid)})` };
  for (const tid of tids(t.pid)) {
    const path = `/proc/${t.pid}/task/${tid}/status`;
    const tracer = statusField(path, "TracerPid");
    const state = statusField(path, "State") ?? "?";
    if (tracer !== undefined && tracer !== "0") {
      return { harm: `thread ${tid} is still traced by ${tracer} (${cmdline(Number(tracer))})` };
    }
    if (/^[tT]/.test(state)) return { harm: `thread ${tid} is stopped (${state})` };
  }
  const now = before && snapshot(t.pid);
  if (before && now && now.threads !== before.threads) {
    const crash = readText(t.out)?.match(/^CRASH .*$/m)?.[0];
    return {
      harm: `threads or signal masks changed: ${diffLines(before.threads, now.threads)}` +
        (crash ? ` (${crash})` : ""),
    };
  }
  const check = await selfCheck(t);
  if (check !== "PASS") return { harm: `its self-check says ${check}` };
  if (!before || !now) return {};
  // What a dumper killed while it ran syscalls in the process cannot take back, and that does
  // not harm it: the injector's scratch region (its argument area and a frame per thread for the
  // ways back) and the dirty tracking's userfaultfd (pre-copy) between its making and its
  // closing. Anything else is a leftover.
  const more = mappedBytes(now.maps) - mappedBytes(before.maps);
  const mapsChanged = diffLines(before.maps, now.maps, Infinity);
  const scratch = now.maps !== before.maps && more >= SCRATCH_SIZE &&
    (more - SCRATCH_SIZE) % BigInt(FRAME_STRIDE) === 0n &&
    mapsChanged.split("; ").every((l) => /^[-+][0-9a-f]+-[0-9a-f]+ rw-p 0+ 00:00 0$/.test(l));
  const fdsChanged = diffLines(before.fds, now.fds, Infinity);
  const uffd = now.fds !== before.fds &&
    fdsChanged.split("; ").every((l) => /^\+\d+ -> anon_inode:\[userfaultfd\]$/.test(l));
  const left: string[] = [];
  const untaken: string[] = [];
  if (now.maps !== before.maps) {
    (scratch ? untaken : left).push(
      `its address space changed (${more >= 0n ? "+" : ""}${more / 1024n} KiB` +
        (scratch ? `, the injector's scratch region` : "") +
        `): ${diffLines(before.maps, now.maps)}`,
    );
  }
  if (now.fds !== before.fds) {
    (uffd ? untaken : left).push(`its descriptors changed: ${diffLines(before.fds, now.fds)}`);
  }
  if (left.length) return { leftover: [...left, ...untaken].join("; ") };
  return untaken.length ? { scratchLeft: untaken.join("; ") } : {};
}

/** Whether a SIGKILL is on its way to `pid` (what EXITKILL sends as the tracer dies). */
function killPending(pid: number): boolean {
  const status = `/proc/${pid}/status`;
  return ["SigPnd", "ShdPnd"].some((f) =>
    (BigInt(`0x${statusField(status, f) ?? "0"}`) & 0x100n) !== 0n
  );
}

/** Whether `pid` descends from this process (orphans are reparented here: a subreaper). */
function isOurs(pid: number): boolean {
  let p = stat(pid);
  for (let depth = 0; p && depth < 6; depth++) {
    if (p.ppid === Deno.pid) return true;
    p = stat(p.ppid);
  }
  return false;
}

/** Stub processes of restores (`/bin/cat`) below this process, live or zombies. */
function ourStubs(): { pid: number; state: string; tracer: string }[] {
  const out: { pid: number; state: string; tracer: string }[] = [];
  for (const e of Deno.readDirSync("/proc")) {
    const pid = Number(e.name);
    if (!(pid > 0)) continue;
    if (readText(`/proc/${pid}/cmdline`) !== `${STUB_PROGRAM}\x00`) continue;
    if (!isOurs(pid)) continue;
    const state = stat(pid)?.state ?? "?";
    const tracer = statusField(`/proc/${pid}/status`, "TracerPid") ?? "?";
    out.push({ pid, state, tracer });
  }
  return out;
}

/** Children of Deno.Command this process still waits for (their zombies are Deno's to reap). */
const commandChildren = new Set<number>();

/** Zombie children of this process (a child subreaper: orphans come here), Deno's own aside. */
function ourZombies(): number[] {
  const out: number[] = [];
  for (const e of Deno.readDirSync("/proc")) {
    const pid = Number(e.name);
    if (!(pid > 0) || commandChildren.has(pid)) continue;
    const st = stat(pid);
    if (st?.state === "Z" && st.ppid === Deno.pid) out.push(pid);
  }
  return out;
}

function reap(pid: number): void {
  try {
    waitpid(pid, WAIT.WNOHANG);
  } catch { /* not ours */ }
}

const SIGNAL_NAMES: Record<number, string> = {
  4: "SIGILL",
  5: "SIGTRAP",
  6: "SIGABRT",
  7: "SIGBUS",
  9: "SIGKILL",
  11: "SIGSEGV",
  15: "SIGTERM",
};

/** How `pid`, gone or a zombie of ours (reaped here), ended. */
function endOf(pid: number): string {
  const st = stat(pid);
  if (!st) return "no process";
  if (st.state !== "Z" || st.ppid !== Deno.pid) return `state ${st.state}`;
  try {
    const w = waitpid(pid, WAIT.WNOHANG);
    if (w?.signaled) return `killed by ${SIGNAL_NAMES[w.termSignal!] ?? `signal ${w.termSignal}`}`;
    if (w?.exited) return `exited with code ${w.exitCode}`;
  } catch { /* not ours after all */ }
  return "a zombie";
}

/** Reaps the zombies that came to us as init would (killed stubs and processes of a tool). */
function reapAdopted(): void {
  for (const z of ourZombies()) reap(z);
}

/**
 * What a refused or killed restore left: processes with `pids` (live; a zombie of ours is reaped
 * unless `zombiesCount`), live stubs, and with `zombiesCount` zombies of ours not there before.
 */
async function leftoversOf(
  pids: number[],
  opts: { zombiesBefore?: Set<number>; zombiesCount?: boolean } = {},
): Promise<string[]> {
  const found: string[] = [];
  const clean: number[] = [];
  for (const pid of pids) {
    const st = stat(pid);
    if (!st) continue;
    // Whatever a restore makes descends from us (a subreaper); another program may reuse a pid.
    if (!isOurs(pid)) continue;
    if (st.state === "Z" && st.ppid === Deno.pid && !opts.zombiesCount) {
      reap(pid);
      continue;
    }
    found.push(
      `a process with pid ${pid} (state ${st.state}, parent ${st.ppid}, ${cmdline(pid) || "?"})`,
    );
    clean.push(pid);
  }
  for (const s of ourStubs()) {
    if (s.state === "Z" && !opts.zombiesCount) reap(s.pid);
    else {
      found.push(
        `stub ${s.pid} (state ${s.state}, ` +
          (s.tracer === "0"
            ? "traced by nobody: never seized, or let go)"
            : `traced by ${s.tracer})`),
      );
      clean.push(s.pid);
    }
  }
  if (opts.zombiesCount) {
    for (const z of ourZombies()) {
      if (opts.zombiesBefore?.has(z)) continue;
      if (!found.some((f) => f.includes(` ${z} `))) found.push(`zombie ${z} (${cmdline(z)})`);
      clean.push(z);
    }
  }
  // Found and reported: now gone, so that nothing is left behind and the next try starts clean.
  for (const pid of clean) await killAndReap(pid);
  return found;
}

/** Waits until `cond` or `timeoutMs`. */
async function waitFor(cond: () => boolean, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) return false;
    await sleep(10);
  }
  return true;
}

/** Names in `dir` (sorted), [] if it is not there. */
function names(dir: string): string[] {
  try {
    return [...Deno.readDirSync(dir)].map((e) => e.name).sort();
  } catch {
    return [];
  }
}

// ---------------------------------------------------------------------------------------------
// The CLI

const mainTs = new URL("../main.ts", import.meta.url).pathname;

/** `deno run -A main.ts ARGS` started; `done` resolves with how it ended. */
function startCli(args: string[]) {
  if (stopping) throw new Error("stopping");
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", mainTs, ...args],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  commandChildren.add(child.pid);
  const done = child.output().then((o) => {
    commandChildren.delete(child.pid);
    const dec = new TextDecoder();
    return {
      code: o.code,
      signal: o.signal,
      success: o.success,
      stdout: dec.decode(o.stdout),
      stderr: dec.decode(o.stderr).trim(),
    };
  });
  const kill = () => {
    try {
      child.kill("SIGKILL");
    } catch { /* it ended already */ }
  };
  return { pid: child.pid, done, kill };
}

async function cli(args: string[]) {
  const t = performance.now();
  const r = await startCli(args).done;
  return { ...r, ms: performance.now() - t };
}

/** Checks an image the way `inspect --verify` does; returns what is wrong or undefined. */
async function imageProblem(dir: string): Promise<string | undefined> {
  try {
    using _r = await ImageReader.open(dir, { verify: true });
    return undefined;
  } catch (err) {
    return (err as Error).message;
  }
}

// ---------------------------------------------------------------------------------------------
// 1. The dumper killed at random moments

const DUMP_MODES = {
  kill: [] as string[],
  "leave-running": ["--leave-running"],
  "pre-copy": ["--pre-copy"],
};
type DumpMode = keyof typeof DUMP_MODES;

async function dumperKilled(mode: DumpMode): Promise<void> {
  const scenario = `dumper killed (${mode})`;
  const base = Deno.makeTempDirSync({ dir: scratch, prefix: "dk-" });
  const endsTarget = mode !== "leave-running";
  let t: BenchTarget | undefined;
  const fresh = async () => {
    if (t) await killAndReap(t.pid);
    t = await startReltarget(BIG_MIB);
    return t;
  };
  try {
    // A whole dump's duration (the second of two: the first warms the page cache up).
    let duration = 0;
    for (let i = 0; i < 2; i++) {
      const target = await fresh();
      const r = await cli(["dump", String(target.pid), `${base}/measure`, ...DUMP_MODES[mode]]);
      if (!r.success) throw new Error(`${scenario}: a whole dump failed: ${r.stderr}`);
      duration = r.ms;
      Deno.removeSync(`${base}/measure`, { recursive: true });
      if (endsTarget) await killAndReap(target.pid);
      else t = target;
    }
    if (endsTarget) t = undefined;
    console.log(`${scenario}: a whole dump takes ${ms(duration)}`);

    for (let i = 0; i < DUMP_TRIES; i++) {
      const target = t && isAlive(t.pid) ? t : await fresh();
      const before = snapshot(target.pid);
      const dir = `${base}/img-${i}`;
      const delay = random() * 1.2 * duration;
      const where = `try ${i}, delay ${ms(delay)} of ${ms(duration)}`;
      const dumper = startCli(["dump", String(target.pid), dir, ...DUMP_MODES[mode]]);
      await sleep(delay);
      dumper.kill();
      const r = await dumper.done;
      fig.dumperKills++;
      const finished = r.success;
      const partial = names(base).filter((n) => n.startsWith(`img-${i}.partial-`));
      if (partial.length) {
        fig.partialDirs++;
        const withManifest = partial.some((p) => exists(`${base}/${p}/manifest.cbor`));
        if (withManifest) {
          note(
            `${scenario} ${where}: a partial directory with a manifest (killed between ` +
              `writing the manifest and the rename)`,
          );
        }
      }
      if (!finished && r.signal !== "SIGKILL") {
        miss(scenario, `${where}: the dumper failed by itself (${r.code}): ${r.stderr}`);
      }
      const committed = exists(dir);
      const problem = committed ? await imageProblem(dir) : undefined;
      if (committed && problem) {
        miss(scenario, `${where}: ${dir} exists but is not a complete image: ${problem}`);
      }
      if (finished && !committed) miss(scenario, `${where}: the dump succeeded, no image`);
      const st = stat(target.pid);
      const gone = !st || st.state === "Z";
      if (gone && endsTarget && committed) {
        // The dump got to its end: the target legitimately ended. The image must be good.
        fig.dumpedFirst++;
        await killAndReap(target.pid);
        t = undefined;
        if (!problem) {
          const { bad, skipped } = await restoresAndChecks(target, dir);
          if (bad) miss(scenario, `${where}: the dump finished first, but its image ${bad}`);
          else if (!skipped) fig.dumpedFirstGood++;
          else fig.dumpedFirst--;
        }
      } else if (gone) {
        miss(
          scenario,
          `${where}: the target is gone (${endOf(target.pid)})` +
            (committed ? "" : " and there is no image") + `; dumper: ${r.stderr || r.signal}`,
        );
        await killAndReap(target.pid);
        t = undefined;
      } else if (finished && endsTarget) {
        miss(scenario, `${where}: the dump finished in kill mode, and the target still runs`);
        await killAndReap(target.pid);
        t = undefined;
      } else {
        const c = await conditionOf(target, before);
        const when = `${where}${finished ? " (the dump had finished)" : ""}`;
        if (c.harm) {
          miss(scenario, `${when}: ${c.harm}`);
          await killAndReap(target.pid);
          t = undefined;
        } else {
          fig.intact++;
          t = target;
        }
        if (c.scratchLeft) {
          fig.scratchLeft++;
          console.log(`scratch region left (${when}): ${c.scratchLeft}`);
        }
        if (c.leftover || c.scratchLeft) {
          if (c.leftover) {
            leftover(scenario, [`${when}: in the target (alive and well): ${c.leftover}`]);
          }
          await killAndReap(target.pid); // the next try starts from a target as it was
          t = undefined;
        }
      }
      await Deno.remove(dir, { recursive: true }).catch(() => {});
      for (const p of partial) await Deno.remove(`${base}/${p}`, { recursive: true });
    }
  } finally {
    if (t) await killAndReap(t.pid);
    await Deno.remove(base, { recursive: true }).catch(() => {});
  }
}

/**
 * Waits (up to 15 s) until none of `ids` is held by a process that is not ours: the machine runs
 * other programs, which may take a dumped pid meanwhile. Returns the holder if one stays.
 */
async function othersRelease(ids: number[]): Promise<string | undefined> {
  const holder = () => {
    for (const id of ids) {
      const st = stat(id);
      // A zombie holds its pid too, until its parent (init, every 2 s here) reaps it.
      if (st && !isOurs(id)) return `${id} (${cmdline(id).slice(0, 80) || `state ${st.state}`})`;
    }
    return undefined;
  };
  await waitFor(() => holder() === undefined, 15_000);
  return holder();
}

/**
 * Restores `dir` (the image of `t`, which is gone), has it check itself, ends it. Returns what
 * went wrong (`bad`), or `skipped` when another program of the machine holds one of `ids`.
 */
async function restoresAndChecks(
  t: BenchTarget,
  dir: string,
  ids = [t.pid],
): Promise<{ bad?: string; skipped?: string }> {
  const taken = await othersRelease(ids);
  if (taken) {
    fig.skipped++;
    note(`not restored: another program on this machine holds ${taken}`);
    return { skipped: taken };
  }
  try {
    const r = await restore(dir);
    try {
      const check = await selfCheck(t, r.pid);
      return check === "PASS" ? {} : { bad: `restored, but its self-check says ${check}` };
    } finally {
      await killAndReap(r.pid);
    }
  } catch (err) {
    return { bad: `does not restore: ${(err as Error).message}` };
  }
}

// ---------------------------------------------------------------------------------------------
// 2. Damaged images

/** The files of an image, by name. */
type Files = Map<string, Uint8Array>;

function readImage(dir: string): Files {
  const files: Files = new Map();
  for (const name of names(dir)) files.set(name, Deno.readFileSync(`${dir}/${name}`));
  return files;
}

/** Writes `files` as the image `dir`: unchanged files are hard links to the good image's. */
function writeImage(dir: string, files: Files, good: Files, goodDir: string): void {
  Deno.mkdirSync(dir);
  for (const [name, bytes] of files) {
    if (good.get(name) === bytes) Deno.linkSync(`${goodDir}/${name}`, `${dir}/${name}`);
    else Deno.writeFileSync(`${dir}/${name}`, bytes);
  }
}

/** Where the shapes of `a` and `b` differ (up to `max` paths). */
function shapeDiff(a: unknown, b: unknown, at = "", out: string[] = [], max = 3): string[] {
  if (out.length >= max) return out;
  const ta = typeName(a), tb = typeName(b);
  if (ta !== tb) {
    out.push(`${at || "the payload"}: ${ta} → ${tb}`);
  } else if (ta === "array") {
    const xa = a as unknown[], xb = b as unknown[];
    if (xa.length !== xb.length) out.push(`${at}: ${xa.length} → ${xb.length} elements`);
    for (let i = 0; i < Math.min(xa.length, xb.length); i++) {
      shapeDiff(xa[i], xb[i], `${at}.${i}`, out, max);
    }
  } else if (ta === "object") {
    const oa = a as Record<string, unknown>, ob = b as Record<string, unknown>;
    for (const k of new Set([...Object.keys(oa), ...Object.keys(ob)])) {
      const p = at ? `${at}.${k}` : k;
      if (!(k in ob)) out.length < max && out.push(`${p} gone`);
      else if (!(k in oa)) out.length < max && out.push(`${p} added`);
      else shapeDiff(oa[k], ob[k], p, out, max);
    }
  }
  return out;
}

/** Every path (keys and indexes) into a decoded value, with the value there. */
function paths(v: unknown, at: (string | number)[] = []): [(string | number)[], unknown][] {
  const out: [(string | number)[], unknown][] = at.length ? [[at, v]] : [];
  if (v instanceof Uint8Array) return out;
  if (Array.isArray(v)) v.forEach((x, i) => out.push(...paths(x, [...at, i])));
  else if (v && typeof v === "object") {
    for (const [k, x] of Object.entries(v)) out.push(...paths(x, [...at, k]));
  }
  return out;
}

/**
 * Keys of the image's entries read from schema.ts and manifest.ts: those that may be absent
 * (`name?:`), and those that may be null (`name: T | null`). Deleting the one or nulling the other
 * is no damage.
 */
function schemaKeys(): { optional: Set<string>; nullable: Set<string> } {
  const optional = new Set<string>(), nullable = new Set<string>();
  for (const f of ["schema.ts", "manifest.ts"]) {
    const text = Deno.readTextFileSync(new URL(`../lib/image/${f}`, import.meta.url));
    for (const m of text.matchAll(/^\s*(\w+)\?:/gm)) optional.add(m[1]);
    for (const m of text.matchAll(/^\s*(\w+)\??: [^;]*\bnull\b/gm)) nullable.add(m[1]);
  }
  return { optional, nullable };
}

function typeName(v: unknown): string {
  if (v instanceof Uint8Array) return "bytes";
  if (Array.isArray(v)) return "array";
  return v === null ? "null" : typeof v;
}

/** Values of other types to put in place of one. */
const WRONG_VALUES: unknown[] = [
  "x",
  -1,
  1.5,
  2 ** 60,
  -1n,
  2n ** 70n,
  null,
  true,
  new Uint8Array([1, 2, 3]),
  [],
  {},
];

/** Keys whose integers are counts, sizes, offsets, indexes or ids: a negative one is damage. */
const COUNT_KEYS = new Set([
  "pid",
  "tid",
  "fd",
  "file",
  "extent",
  "offset",
  "length",
  "size",
  "object",
  "id",
  "signo",
  "resource",
  "which",
]);

/** One damaged variant: what was done, and the image's files. */
interface Variant {
  what: string;
  files: Files;
  /** For page data: the byte range damaged (to tell bytes that no extent uses). */
  pageRange?: { file: string; from: number; to: number };
}

/** `files` with `name` replaced by `bytes`, the manifest's entry for it updated and re-framed. */
function reframedWith(files: Files, name: string, bytes: Uint8Array): Files {
  const out = new Map(files);
  out.set(name, bytes);
  const raw = files.get("manifest.cbor")!;
  const { version, payload } = unframe("manifest.cbor", raw);
  const manifest = decode(payload) as ImageManifest;
  for (const f of manifest.files) {
    if (f.name === name) {
      f.size = bytes.length;
      f.checksum = checksum(bytes);
    }
  }
  out.set("manifest.cbor", frame(manifest, version));
  return out;
}

/** Sets the value at `path` inside `root` (or deletes the key with `del`). */
function setAt(root: unknown, path: (string | number)[], value: unknown, del = false): void {
  let v = root as Record<string | number, unknown>;
  for (const k of path.slice(0, -1)) v = v[k] as Record<string | number, unknown>;
  const last = path.at(-1)!;
  if (del) delete v[last];
  else v[last] = value;
}

const { optional: OPTIONAL, nullable: NULLABLE } = schemaKeys();

/**
 * A structural mutation of the decoded `value`: a required key deleted, a value replaced by one
 * of another type, or an integer that counts something made negative or fractional. Each must be
 * refused by a reader that checks what it decodes.
 */
function mutateStructure(value: unknown): { what: string; value: unknown } {
  const copy = decode(frame(value).subarray(HEADER_SIZE));
  const all = paths(copy);
  for (;;) {
    const [path, v] = pick(all);
    const at = path.join(".");
    const key = path.at(-1)!;
    const kind = randInt(3);
    if (kind === 0 && typeof key === "string" && !OPTIONAL.has(key)) {
      setAt(copy, path, undefined, true);
      return { what: `${at} deleted`, value: copy };
    }
    if (kind === 1) {
      const wrong = WRONG_VALUES.filter((w) =>
        typeName(w) !== typeName(v) && !(w === null && NULLABLE.has(String(key)))
      );
      const w = pick(wrong);
      setAt(copy, path, w);
      return { what: `${at}: ${typeName(v)} → ${typeName(w)} ${String(w)}`, value: copy };
    }
    if (kind === 2 && typeof key === "string" && COUNT_KEYS.has(key)) {
      const w = typeof v === "bigint" ? pick([-1n, -4096n]) : pick([-1, -4096, 0.5]);
      if (typeof v !== "number" && typeof v !== "bigint") continue;
      setAt(copy, path, w);
      return { what: `${at}: ${v} → ${w}`, value: copy };
    }
  }
}

/** `count` bytes (at distinct offsets, so each one differs) changed in `bytes[from, to)`. */
function flipped(bytes: Uint8Array, from: number, to: number, count: number) {
  const out = bytes.slice();
  const at = new Set<number>();
  while (at.size < Math.min(count, to - from)) at.add(from + randInt(to - from));
  for (const p of at) out[p] ^= 1 + randInt(255);
  return { out, at: [...at].sort((a, b) => a - b) };
}

/** One damaged variant of `good`, of kind `kind`, in file `name`. */
function makeVariant(good: Files, name: string, kind: string): Variant | undefined {
  const bytes = good.get(name)!;
  const files = new Map(good);
  const isCbor = name.endsWith(".cbor");
  switch (kind) {
    case "flip": {
      const { out, at } = flipped(bytes, 0, bytes.length, 1 + randInt(4));
      files.set(name, out);
      return {
        what: `${name}: bytes flipped at ${at.join(",")}`,
        files,
        pageRange: isCbor ? undefined : { file: name, from: at[0], to: at.at(-1)! + 1 },
      };
    }
    case "truncate": {
      const len = randInt(bytes.length);
      files.set(name, bytes.slice(0, len));
      return { what: `${name}: truncated to ${len} of ${bytes.length} bytes`, files };
    }
    case "append": {
      const more = 1 + randInt(64);
      const out = new Uint8Array(bytes.length + more);
      out.set(bytes);
      for (let i = bytes.length; i < out.length; i++) out[i] = randInt(256);
      files.set(name, out);
      return { what: `${name}: ${more} bytes appended`, files };
    }
    case "missing":
      files.delete(name);
      return { what: `${name}: missing`, files };
    case "header": {
      const { out, at } = flipped(bytes, 0, HEADER_SIZE, 1);
      files.set(name, out);
      return { what: `${name}: header byte ${at[0]} changed`, files };
    }
    case "payload": {
      // Fuzzed CBOR, the checksums left as they were.
      const { out, at } = flipped(bytes, HEADER_SIZE, bytes.length, 1 + randInt(8));
      files.set(name, out);
      return { what: `${name}: payload bytes fuzzed at ${at.join(",")}`, files };
    }
    case "reframed-bytes": {
      // Fuzzed CBOR with correct checksums: the decoder and the schema checks see it. A variant
      // that decodes to the same shape (other values, a valid image) is not damage they can see.
      const { payload, version } = unframe(name, bytes);
      const { out, at } = flipped(payload, 0, payload.length, 1 + randInt(3));
      let decoded: unknown;
      try {
        decoded = decode(out);
      } catch {
        decoded = undefined; // malformed CBOR: damage all right
      }
      const changes = decoded === undefined ? [] : shapeDiff(decode(payload), decoded);
      if (decoded !== undefined && !changes.length) {
        fig.sameShape++;
        return undefined;
      }
      const framed = frameRaw(out, version);
      const what =
        `${name}: payload bytes fuzzed at ${at.map((a) => a + HEADER_SIZE).join(",")}, ` +
        `re-framed with correct checksums (` +
        (decoded === undefined ? "malformed CBOR" : changes.join(", ")) + ")";
      return {
        what,
        files: name === "manifest.cbor"
          ? new Map([...files, [name, framed]])
          : reframedWith(files, name, framed),
      };
    }
    case "reframed-schema": {
      const { payload, version } = unframe(name, bytes);
      const m = mutateStructure(decode(payload));
      const framed = frame(m.value, version);
      const what = `${name}: ${m.what}, re-framed with correct checksums`;
      return {
        what,
        files: name === "manifest.cbor"
          ? new Map([...files, [name, framed]])
          : reframedWith(files, name, framed),
      };
    }
    case "zeroed": {
      const out = bytes.slice();
      const from = randInt(Math.max(1, bytes.length - 4096));
      out.fill(0, from, from + 4096);
      if (out.every((b, i) => b === bytes[i])) return undefined; // it was zero already
      files.set(name, out);
      return {
        what: `${name}: 4096 bytes zeroed at ${from}`,
        files,
        pageRange: { file: name, from, to: from + 4096 },
      };
    }
    case "page-checksum-fixed": {
      // Page data changed and the manifest's whole-file checksum made to agree: the extents'
      // own checksums in process.cbor must catch it.
      const { out, at } = flipped(bytes, 0, bytes.length, 1 + randInt(4));
      return {
        what: `${name}: bytes flipped at ${at.join(",")}, the manifest's checksum fixed`,
        files: reframedWith(files, name, out),
        pageRange: { file: name, from: at[0], to: at.at(-1)! + 1 },
      };
    }
  }
  return undefined;
}

/** A framed file of `payload` as it is (not re-encoded). */
function frameRaw(payload: Uint8Array, version: number): Uint8Array {
  const out = new Uint8Array(HEADER_SIZE + payload.length);
  const model = frame(0, version);
  out.set(model.subarray(0, 12));
  const view = new DataView(out.buffer);
  view.setUint32(12, checksum(payload), true);
  view.setBigUint64(16, BigInt(payload.length), true);
  out.set(payload, HEADER_SIZE);
  return out;
}

const CBOR_KINDS = [
  "flip",
  "truncate",
  "append",
  "header",
  "payload",
  "reframed-bytes",
  "reframed-bytes",
  "reframed-bytes",
  "reframed-schema",
  "reframed-schema",
  "reframed-schema",
  "missing",
];
const PAGE_KINDS = ["flip", "truncate", "append", "zeroed", "page-checksum-fixed", "missing"];

/** Whether no extent of the image covers any byte of `range` of its page file. */
function unusedPageBytes(entry: ProcessEntry, range: Variant["pageRange"]): boolean {
  if (!range) return false;
  return !entry.extents.some((e) =>
    e.file === range.file && e.offset < range.to && e.offset + e.length > range.from
  );
}

async function damagedImages(): Promise<void> {
  const scenario = "damaged image";
  const base = Deno.makeTempDirSync({ dir: scratch, prefix: "dmg-" });
  const extras = `${base}/extras`;
  const cwd = `${base}/cwd`;
  Deno.mkdirSync(extras);
  Deno.mkdirSync(cwd);
  const goodDir = `${base}/good`;
  const t = await startReltarget(1, extras);
  const pid = t.pid;
  const threadIds = tids(pid);
  const oldCwd = Deno.cwd();
  try {
    await checkpoint(pid, goodDir);
    await killAndReap(pid);
    const { bad, skipped } = await restoresAndChecks(t, goodDir, threadIds);
    if (bad) throw new Error(`${scenario}: the good image ${bad}`);
    if (skipped) return;
    const good = readImage(goodDir);
    let goodEntry: ProcessEntry;
    {
      using r = await ImageReader.open(goodDir);
      goodEntry = await r.readMeta<ProcessEntry>("process");
    }
    // Anything the restore makes by a relative path lands here, where it is seen.
    Deno.chdir(cwd);
    const extrasBefore = names(extras);
    const fileNames = [...good.keys()];
    console.log(
      `${scenario}: the good image of pid ${pid} (threads ${threadIds.join(", ")}) has ` +
        fileNames.map((n) => `${n} (${good.get(n)!.length} bytes)`).join(", "),
    );
    for (let i = 0; fig.images < IMAGES && i < IMAGES * 20; i++) {
      const name = fileNames[i % fileNames.length];
      const kind = pick(name.endsWith(".cbor") ? CBOR_KINDS : PAGE_KINDS);
      const variant = makeVariant(good, name, kind);
      if (!variant) continue;
      const n = fig.images++;
      const k = `${name.replace(/-\d+\.img$/, ".img")} ${kind}`;
      fig.damageKinds.set(k, (fig.damageKinds.get(k) ?? 0) + 1);
      const dir = `${base}/v${n}`;
      writeImage(dir, variant.files, good, goodDir);
      const zombiesBefore = new Set(ourZombies());
      let err: Error | undefined;
      let restoredPid: number | undefined;
      const started = performance.now();
      // The last stage the restore reached: how far into making a process a refusal came.
      let stage = "reading the image";
      try {
        restoredPid = (await restore(dir, { policy: { restoreStage: (s) => void (stage = s) } }))
          .pid;
      } catch (e) {
        err = e as Error;
      }
      const took = performance.now() - started;
      const where = `image ${n} (${variant.what})`;
      if (err) {
        fig.imagesRefused++;
        const kindOfError = err.name === "Error" ? err.constructor.name : err.name;
        fig.refusedAs.set(kindOfError, (fig.refusedAs.get(kindOfError) ?? 0) + 1);
        fig.refusedAt.set(stage, (fig.refusedAt.get(stage) ?? 0) + 1);
        if (!["ImageError", "RestoreError"].includes(err.name)) {
          note(`${where}: refused with a ${kindOfError}, not an ImageError: ${err.message}`);
        }
        if (took > 5000) note(`${where}: took ${ms(took)} to be refused`);
      } else {
        // Restored: a miss, unless the damage provably changed nothing the restore uses: page
        // bytes no extent covers, or a restored process that the tool's whole comparison finds
        // equal to the undamaged image and that passes its own check.
        let diffs: string[] = [];
        try {
          diffs = (await verifyRestored(goodDir)).map(describeDifference);
        } catch (e) {
          diffs = [`verify: ${(e as Error).message}`];
        }
        const check = await selfCheck(t, restoredPid);
        await killAndReap(restoredPid!);
        if (unusedPageBytes(goodEntry, variant.pageRange) && check === "PASS") {
          fig.imagesNoEffect++;
          note(`${where}: restored; the damaged bytes are in no extent (not used)`);
        } else if (!diffs.length && check === "PASS") {
          fig.imagesNoEffect++;
          note(
            `${where}: restored, identical to the undamaged image (every field the restore ` +
              `compares) and its self-check passes: the damaged field is not used`,
          );
        } else {
          miss(
            scenario,
            `${where}: RESTORED (self-check ${check}; compared with the good image: ` +
              `${diffs.length ? diffs.slice(0, 3).join("; ") : "no difference"})`,
          );
        }
      }
      leftover(
        scenario,
        (await leftoversOf(threadIds, { zombiesBefore, zombiesCount: true })).map((f) =>
          `${where}: ${f}`
        ),
      );
      const extrasNow = names(extras);
      if (extrasNow.join() !== extrasBefore.join()) {
        leftover(scenario, [`${where}: files in ${extras}: ${extrasNow.join(", ")}`]);
        for (const f of extrasNow) {
          if (!extrasBefore.includes(f)) Deno.removeSync(`${extras}/${f}`, { recursive: true });
        }
      }
      const stray = names(cwd);
      if (stray.length) {
        leftover(scenario, [`${where}: files made in the working directory: ${stray.join(", ")}`]);
        for (const f of stray) Deno.removeSync(`${cwd}/${f}`, { recursive: true });
      }
      reapAdopted();
      await Deno.remove(dir, { recursive: true });
    }
  } finally {
    Deno.chdir(oldCwd);
    await killAndReap(pid);
    await Deno.remove(base, { recursive: true }).catch(() => {});
  }
}

// ---------------------------------------------------------------------------------------------
// 3. ENOSPC

const mounts = new Set<string>();

async function mountTmpfs(dir: string, size: string): Promise<void> {
  if (stopping) throw new Error("stopping");
  Deno.mkdirSync(dir, { recursive: true });
  mounts.add(dir);
  const r = await new Deno.Command("mount", {
    args: ["-t", "tmpfs", "-o", `size=${size},mode=0700`, "tmpfs", dir],
    stderr: "piped",
  }).output();
  if (!r.success) {
    mounts.delete(dir);
    throw new Error(`mount tmpfs on ${dir}: ${new TextDecoder().decode(r.stderr)}`);
  }
}

/** The mount points below the scratch directory, as the kernel lists them. */
function ourMounts(): string[] {
  return (readText("/proc/self/mounts") ?? "").split("\n").map((l) => l.split(" ")[1] ?? "")
    .filter((m) => m.startsWith(`${scratch}/`));
}

async function unmount(dir: string): Promise<void> {
  mounts.delete(dir);
  if (!ourMounts().includes(dir)) return;
  let r = await new Deno.Command("umount", { args: [dir], stderr: "null" }).output();
  if (!r.success) r = await new Deno.Command("umount", { args: ["-l", dir] }).output();
  if (!r.success) miss("cleanup", `could not unmount ${dir}`);
}

/** Fills the file system of `dir` with `dir/filler` until it has no room left. */
function fill(dir: string): void {
  using f = Deno.openSync(`${dir}/filler`, { write: true, create: true });
  const chunk = new Uint8Array(64 << 10).fill(0xaa);
  try {
    for (;;) f.writeSync(chunk);
  } catch { /* full */ }
  try {
    for (;;) f.writeSync(chunk.subarray(0, 512));
  } catch { /* full to the last byte */ }
}

const NO_SPACE = /No space left on device|ENOSPC|no space/i;

/**
 * The end of an ENOSPC dump: the target must be as it was. Counts the scenario clean when it is
 * and nothing else was wrong (`ok`); prints the tool's first line.
 */
async function judgeFailedDump(
  scenario: string,
  t: BenchTarget,
  before: Snapshot,
  ok: boolean,
  stderr: string,
): Promise<void> {
  const c = await conditionOf(t, before);
  if (c.harm) miss(scenario, `the target: ${c.harm}`);
  const left = c.leftover ?? c.scratchLeft;
  if (left) leftover(scenario, [`in the target: ${left}`]);
  if (ok && !c.harm && !left) fig.enospcClean++;
  console.log(`${scenario}: ${stderr.split("\n")[0]}`);
}

async function enospc(): Promise<void> {
  const base = Deno.makeTempDirSync({ dir: scratch, prefix: "nospc-" });
  try {
    // Mid-dump: page data does not fit.
    for (const mode of Object.keys(DUMP_MODES) as DumpMode[]) {
      const scenario = `ENOSPC mid-dump (${mode})`;
      const mnt = `${base}/dump-${mode}`;
      await mountTmpfs(mnt, "4m");
      const t = await startReltarget(64);
      try {
        fig.enospc++;
        const before = snapshot(t.pid);
        const r = await cli(["dump", String(t.pid), `${mnt}/img`, ...DUMP_MODES[mode]]);
        const left = names(mnt);
        let ok = true;
        if (r.success) {
          miss(scenario, `the dump succeeded on a 4 MiB file system`);
          ok = false;
        } else if (!NO_SPACE.test(r.stderr)) {
          miss(scenario, `the error does not name the lack of space: ${r.stderr}`);
          ok = false;
        }
        if (left.length && !left.every((n) => r.stderr.includes(n))) {
          leftover(scenario, [`${left.join(", ")} in ${mnt}`]);
          ok = false;
        }
        await judgeFailedDump(scenario, t, before, ok, r.stderr);
      } finally {
        await killAndReap(t.pid);
        await unmount(mnt);
      }
    }
    // Mid-dump, at the metadata: room for the page data, not for process.cbor or the manifest.
    await enospcAtMetadata(base, "process.cbor");
    await enospcAtMetadata(base, "manifest.cbor");
    // Mid-restore: the deleted file cannot be made again.
    await enospcMidRestore(base);
  } finally {
    for (const m of [...mounts]) await unmount(m);
    await Deno.remove(base, { recursive: true }).catch(() => {});
  }
}

/** A dump whose page data fits and whose `file` (process.cbor, or manifest.cbor at commit) does not. */
async function enospcAtMetadata(base: string, file: "process.cbor" | "manifest.cbor") {
  const scenario = `ENOSPC mid-dump (${file})`;
  const probe = `${base}/probe`;
  const t = await startReltarget(1);
  try {
    await sleep(300); // every page it rewrites has been touched once: its image no longer grows
    await checkpoint(t.pid, probe, { leaveRunning: true });
    const pageBytes = names(probe).filter((n) => n.endsWith(".img"))
      .reduce((n, f) => n + Deno.statSync(`${probe}/${f}`).size, 0);
    const metaPages = Math.ceil(Deno.statSync(`${probe}/process.cbor`).size / 4096);
    Deno.removeSync(probe, { recursive: true });
    // Whole pages (tmpfs counts pages) for the page data, and for half of process.cbor or for
    // all of it and nothing for the manifest.
    const room = (Math.ceil(pageBytes / 4096) +
      (file === "process.cbor" ? Math.floor(metaPages / 2) : metaPages)) * 4096;
    const mnt = `${base}/meta-${file}`;
    await mountTmpfs(mnt, `${room}`);
    try {
      fig.enospc++;
      const before = snapshot(t.pid);
      // At the commit in kill mode: the failed commit must not end the process.
      const mode = file === "manifest.cbor" ? [] : ["--leave-running"];
      const r = await cli(["dump", String(t.pid), `${mnt}/img`, ...mode]);
      const left = names(mnt);
      let ok = true;
      if (r.success) {
        note(`${scenario}: the image fit in ${room} bytes after all; not counted`);
        fig.enospc--;
        return;
      }
      if (!NO_SPACE.test(r.stderr)) {
        miss(scenario, `the error does not name the lack of space: ${r.stderr}`);
        ok = false;
      }
      if (left.length) {
        leftover(scenario, [`${left.join(", ")} in ${mnt}`]);
        ok = false;
      }
      await judgeFailedDump(scenario, t, before, ok, r.stderr);
    } finally {
      await unmount(mnt);
    }
  } finally {
    await killAndReap(t.pid);
  }
}

async function enospcMidRestore(base: string): Promise<void> {
  const scenario = "ENOSPC mid-restore (deleted file)";
  const mnt = `${base}/ghosts`;
  await mountTmpfs(mnt, "4m");
  // The deleted file (1 MiB) lives in a directory on the small tmpfs; the image elsewhere.
  const t = await startReltarget(1, mnt, 1 << 20);
  const image = `${base}/ghost-img`;
  const pids = tids(t.pid);
  try {
    await checkpoint(t.pid, image);
    await killAndReap(t.pid);
    fill(mnt);
    const before = names(mnt);
    const taken = await othersRelease(pids);
    if (taken) {
      fig.skipped++;
      note(`${scenario}: skipped, another program on this machine holds ${taken}`);
      return;
    }
    fig.enospc++;
    const zombiesBefore = new Set(ourZombies());
    let err: Error | undefined;
    let pid: number | undefined;
    try {
      pid = (await restore(image)).pid;
    } catch (e) {
      err = e as Error;
    }
    let ok = true;
    if (!err) {
      miss(
        scenario,
        `restored onto a full file system (self-check ${await checkTarget({ ...t, pid: pid! })})`,
      );
      await killAndReap(pid!);
      ok = false;
    } else if (!NO_SPACE.test(err.message)) {
      miss(scenario, `the refusal does not name the lack of space: ${err.name}: ${err.message}`);
      ok = false;
    }
    const found = await leftoversOf(pids, { zombiesBefore, zombiesCount: true });
    const now = names(mnt);
    if (now.join() !== before.join()) found.push(`files in ${mnt}: ${now.join(", ")}`);
    leftover(scenario, found);
    if (found.length) ok = false;
    console.log(`${scenario}: ${err ? `${err.name}: ${err.message}` : "restored"}`);
    // With room again, it restores.
    Deno.removeSync(`${mnt}/filler`);
    const { bad } = await restoresAndChecks(t, image, pids);
    if (bad) {
      miss(scenario, `once there is room again, the image ${bad}`);
      ok = false;
    }
    if (ok) fig.enospcClean++;
  } finally {
    await killAndReap(t.pid);
    await unmount(mnt);
  }
}

// ---------------------------------------------------------------------------------------------
// 4. A restore killed at random moments

async function restoreKilled(): Promise<void> {
  const scenario = "restore killed";
  const base = Deno.makeTempDirSync({ dir: scratch, prefix: "rk-" });
  const extras = `${base}/extras`;
  Deno.mkdirSync(extras);
  const image = `${base}/img`;
  const t = await startReltarget(RESTORE_MIB, extras);
  const ids = tids(t.pid);
  try {
    await checkpoint(t.pid, image);
    await killAndReap(t.pid);
    const extrasBefore = names(extras);
    let duration = 0;
    for (let i = 0; i < 2; i++) {
      const r = await cli(["restore", image]);
      if (!r.success) throw new Error(`${scenario}: a whole restore failed: ${r.stderr}`);
      duration = r.ms;
      const check = await checkTarget(t);
      if (check !== "PASS") throw new Error(`${scenario}: a whole restore: ${check}`);
      await killAndReap(t.pid);
    }
    console.log(`${scenario}: a whole restore takes ${ms(duration)}`);
    for (let i = 0; i < RESTORE_TRIES; i++) {
      const delay = random() * 1.2 * duration;
      const where = `try ${i}, delay ${ms(delay)} of ${ms(duration)}`;
      const taken = await othersRelease(ids);
      if (taken) {
        fig.skipped++;
        note(`${scenario} ${where}: skipped, another program on this machine holds ${taken}`);
        continue;
      }
      const restorer = startCli(["restore", image]);
      await sleep(delay);
      restorer.kill();
      const r = await restorer.done;
      fig.restoreKills++;
      let clean = true;
      if (!r.success && r.signal !== "SIGKILL") {
        miss(scenario, `${where}: the restore failed by itself (${r.code}): ${r.stderr}`);
        clean = false;
      }
      // The tool's tracees die with it (EXITKILL); their zombies come to us, as to init.
      // Waits until nothing of it is traced any more (a process the restore let go runs on).
      await waitFor(() => {
        reapAdopted();
        // (An exiting task has let go of its memory: no cmdline any more.)
        return ids.every((id) => {
          const st = stat(id);
          return !st || st.state === "Z" ||
            statusField(`/proc/${id}/status`, "TracerPid") === "0" && !killPending(id) &&
              cmdline(id) !== "";
        }) && ourStubs().every((s) => s.state === "Z");
      }, 3000);
      reapAdopted();
      const st = stat(t.pid);
      if (st && st.state !== "Z") {
        // Alive: it must be whole (the restore let it go before the kill), else a miss. One
        // that dies meanwhile was on its way out (EXITKILL's SIGKILL), half made or not.
        const { harm } = await conditionOf(t);
        const after = stat(t.pid);
        if (harm && after && after.state !== "Z") {
          miss(scenario, `${where}: a process with the pid is left: ${harm}`);
          clean = false;
        } else if (!harm) fig.restoredFirst++;
        await killAndReap(t.pid);
      }
      const found = await leftoversOf(ids.filter((id) => id !== t.pid));
      const extrasNow = names(extras);
      if (extrasNow.join() !== extrasBefore.join()) {
        // Like a partial image: nobody can remove a ghost file after SIGKILL.
        note(
          `${scenario} ${where}: left in ${extras}: ${
            extrasNow.filter((n) => !extrasBefore.includes(n)).join(", ")
          }`,
        );
      }
      leftover(scenario, found.map((f) => `${where}: ${f}`));
      if (found.length) clean = false;
      // A second restore works and the process checks out.
      const { bad } = await restoresAndChecks(t, image, ids);
      if (bad) {
        miss(scenario, `${where}: then the image ${bad}`);
        clean = false;
      } else fig.secondRestoreOk++;
      for (const n of names(extras)) {
        if (!extrasBefore.includes(n)) Deno.removeSync(`${extras}/${n}`);
      }
      if (clean) fig.restoreClean++;
    }
  } finally {
    await killAndReap(t.pid);
    reapAdopted();
    await Deno.remove(base, { recursive: true }).catch(() => {});
  }
}

// ---------------------------------------------------------------------------------------------
// 5. The pid taken

/**
 * Starts `sleep 999` with exactly `pid` (ns_last_pid, then a fork; retried while other
 * processes of the machine take the pid first). Synchronous, so a restore stage can call it.
 */
function takePid(pid: number): Deno.ChildProcess {
  const misses: Deno.ChildProcess[] = [];
  try {
    for (let i = 0; i < 200; i++) {
      if (stat(pid)) throw new Error(`pid ${pid} is taken already by ${cmdline(pid).slice(0, 80)}`);
      Deno.writeTextFileSync("/proc/sys/kernel/ns_last_pid", String(pid - 1));
      const child = new Deno.Command("sleep", { args: ["999"], stdin: "null", stdout: "null" })
        .spawn();
      commandChildren.add(child.pid);
      if (child.pid === pid) return child;
      misses.push(child);
    }
    throw new Error(`could not take pid ${pid}`);
  } finally {
    for (const c of misses) {
      c.kill("SIGKILL");
      void c.status.then(() => commandChildren.delete(c.pid));
    }
  }
}

async function pidTaken(): Promise<void> {
  const base = Deno.makeTempDirSync({ dir: scratch, prefix: "pid-" });
  const extras = `${base}/extras`;
  Deno.mkdirSync(extras);
  const image = `${base}/img`;
  const t = await startReltarget(1, extras);
  const ids = tids(t.pid);
  const tid = ids.find((id) => id !== t.pid)!;
  try {
    await checkpoint(t.pid, image);
    await killAndReap(t.pid);
    const cases = [
      { id: t.pid, what: "pid", when: "before" },
      { id: t.pid, what: "pid", when: "preflight" },
      { id: tid, what: "thread id", when: "before" },
      { id: tid, what: "thread id", when: "threads" },
    ] as const;
    for (let round = 0; round < PID_ROUNDS; round++) {
      for (const c of cases) {
        const scenario = `${c.what} taken (${
          c.when === "before" ? "before the restore" : `at ${c.when}`
        })`;
        const taken = await othersRelease(ids);
        if (taken) {
          fig.skipped++;
          note(`${scenario}: skipped, another program on this machine holds ${taken}`);
          continue;
        }
        fig.pidCases++;
        let holder: Deno.ChildProcess | undefined;
        const zombiesBefore = new Set(ourZombies());
        let err: Error | undefined;
        let pid: number | undefined;
        try {
          if (c.when === "before") holder = takePid(c.id);
          pid = (await restore(image, {
            policy: {
              restoreStage(stage) {
                if (stage === c.when) holder = takePid(c.id);
              },
            },
          })).pid;
        } catch (e) {
          err = e as Error;
        }
        let ok = true;
        const want = new RegExp(`${c.what} ${c.id} is in use`);
        if (!holder) {
          miss(scenario, `the holder never started (${err?.message})`);
          ok = false;
        } else if (!err) {
          miss(scenario, `restored (pid ${pid}) although ${c.what} ${c.id} was taken`);
          await killAndReap(pid!);
          ok = false;
        } else if (!want.test(err.message)) {
          miss(scenario, `the refusal does not name it: ${err.name}: ${err.message}`);
          ok = false;
        }
        if (holder) {
          const hs = stat(holder.pid);
          const tracer = statusField(`/proc/${holder.pid}/status`, "TracerPid");
          if (!hs || hs.state === "Z" || /[tT]/.test(hs.state) || tracer !== "0") {
            miss(scenario, `the holder was harmed (state ${hs?.state}, tracer ${tracer})`);
            ok = false;
          }
        }
        const others = ids.filter((id) => id !== c.id);
        const found = await leftoversOf(others, { zombiesBefore, zombiesCount: true });
        leftover(scenario, found);
        if (found.length) ok = false;
        if (ok) fig.pidRefused++;
        if (round === 0) console.log(`${scenario}: ${err ? err.message : "restored"}`);
        if (holder) {
          holder.kill("SIGKILL");
          await holder.status;
          commandChildren.delete(holder.pid);
        }
      }
    }
    // And with the pid free again, it restores.
    const { bad } = await restoresAndChecks(t, image, ids);
    if (bad) miss("pid taken", `once the pid is free again, the image ${bad}`);
  } finally {
    await killAndReap(t.pid);
    await Deno.remove(base, { recursive: true }).catch(() => {});
  }
}

// ---------------------------------------------------------------------------------------------
// The run

function summary(seconds: number): string {
  const parts: string[] = [];
  if (only.includes("dumper")) {
    const of = fig.dumperKills - fig.dumpedFirst;
    parts.push(
      `${fig.intact}/${of} targets intact` +
        (fig.dumpedFirst
          ? ` (+${fig.dumpedFirstGood}/${fig.dumpedFirst} dumps done before the kill, image good)`
          : "") +
        (fig.scratchLeft
          ? ` (${fig.scratchLeft} of them keep the injector's scratch region or the dirty ` +
            `tracking's userfaultfd: killed while running syscalls in it)`
          : ""),
    );
  }
  if (only.includes("damaged")) {
    parts.push(
      `${fig.imagesRefused}/${fig.images - fig.imagesNoEffect} damaged images refused` +
        (fig.imagesNoEffect
          ? ` (+${fig.imagesNoEffect} damaged only where the restore does not look: restored as ` +
            `the good image)`
          : ""),
    );
  }
  if (only.includes("enospc")) parts.push(`${fig.enospcClean}/${fig.enospc} ENOSPC clean`);
  if (only.includes("restore-kill")) {
    parts.push(
      `${fig.restoreClean}/${fig.restoreKills} killed restores clean` +
        (fig.restoredFirst ? ` (${fig.restoredFirst} done before the kill)` : ""),
    );
  }
  if (only.includes("pid-taken")) {
    parts.push(`${fig.pidRefused}/${fig.pidCases} pids taken refused`);
  }
  parts.push(`${fig.leftovers} leftovers`);
  if (fig.skipped) parts.push(`${fig.skipped} skipped (a pid taken by another program)`);
  parts.push(`${misses.length} misses`);
  return `reliability: ${parts.join(", ")} (${seconds.toFixed(0)} s, seed ${seed}${
    SHORT ? ", short" : ""
  })`;
}

async function main(): Promise<number> {
  const started = performance.now();
  reapOrphans();
  console.log(
    `reliability suite${SHORT ? " (short)" : ""}, seed ${seed}: ${DUMP_TRIES} dumper kills per ` +
      `mode, ${IMAGES} damaged images, ${RESTORE_TRIES} restore kills, ${PID_ROUNDS} round(s) ` +
      `of pids taken`,
  );
  const run = async (name: string, fn: () => Promise<void>) => {
    if (!only.includes(name)) return;
    const t = performance.now();
    try {
      await fn();
    } catch (err) {
      miss(name, `the scenario could not run: ${(err as Error).stack ?? err}`);
    }
    reapAdopted();
    console.log(`-- ${name}: ${((performance.now() - t) / 1000).toFixed(1)} s`);
  };
  await targetBinary();
  await run("dumper", async () => {
    for (const mode of Object.keys(DUMP_MODES) as DumpMode[]) await dumperKilled(mode);
  });
  await run("damaged", damagedImages);
  await run("enospc", enospc);
  await run("restore-kill", restoreKilled);
  await run("pid-taken", pidTaken);
  // Each scenario ends what it made: anything still running below us was left by someone.
  const stray: string[] = [];
  for (const e of Deno.readDirSync("/proc")) {
    const pid = Number(e.name);
    if (pid > 0 && isOurs(pid) && isAlive(pid)) stray.push(`${pid} (${cmdline(pid)})`);
  }
  leftover("end of the run", stray.map((p) => `still running below the suite: ${p}`));
  if (stopping) return 130; // the signal handler cleans up, says so and exits
  if (fig.damageKinds.size) {
    const kinds = [...fig.damageKinds].sort().map(([k, v]) => `${k} ${v}`).join(", ");
    console.log(`damaged images made: ${kinds}`);
  }
  const byError = [...fig.refusedAs].map(([k, v]) => `${k} ${v}`).join(", ");
  if (byError) console.log(`damaged images refused by: ${byError}`);
  const byStage = [...fig.refusedAt].map(([k, v]) => `${k} ${v}`).join(", ");
  if (byStage) console.log(`damaged images refused after the stage: ${byStage}`);
  if (fig.partialDirs) {
    console.log(`note: ${fig.partialDirs} partial image directories left by SIGKILL (expected)`);
  }
  if (fig.sameShape) {
    console.log(
      `note: ${fig.sameShape} fuzzed payloads decoded to an image of the same shape (other ` +
        `values, no damage a reader can see) and were not run`,
    );
  }
  if (misses.length) {
    console.log(`\n${misses.length} misses:`);
    for (const m of misses) console.log(`  ${m.scenario}: ${m.what}`);
  }
  console.log(summary((performance.now() - started) / 1000));
  return misses.length ? 1 : 0;
}

/** Kills whatever still runs below this process (targets, restored processes, stubs, CLIs). */
async function killDescendants(): Promise<number> {
  const pids: number[] = [];
  for (const e of Deno.readDirSync("/proc")) {
    const pid = Number(e.name);
    if (pid > 0 && pid !== Deno.pid && isOurs(pid) && stat(pid)?.state !== "Z") pids.push(pid);
  }
  for (const pid of pids) await killAndReap(pid);
  reapAdopted();
  return pids.length;
}

/** Everything the run made goes: processes, mounts, the scratch directory. */
async function cleanup(): Promise<void> {
  // Interrupted, a start or a mount may still be on its way: rounds until nothing is left.
  for (let round = 0; round < 5; round++) {
    await killDescendants();
    for (const m of new Set([...mounts, ...ourMounts()])) await unmount(m);
    await cleanupScratch();
    if (!stopping || !exists(scratch) && !ourMounts().length) break;
    await sleep(300);
  }
}

// A promise of the tool rejected with nobody to handle it would end this process (Deno's default):
// it is a miss, and the run goes on.
globalThis.addEventListener("unhandledrejection", (e) => {
  e.preventDefault();
  const err = e.reason as Error;
  miss("unhandled rejection", `a promise rejected with no handler: ${err?.stack ?? err}`);
});

let code = 1;
const onSignal = () => {
  if (stopping) return;
  stopping = true;
  console.log("reliability: interrupted, cleaning up");
  void cleanup().finally(() => Deno.exit(130));
};
Deno.addSignalListener("SIGINT", onSignal);
Deno.addSignalListener("SIGTERM", onSignal);
try {
  code = await main();
} finally {
  if (!stopping) await cleanup();
}
if (!stopping) Deno.exit(code);
