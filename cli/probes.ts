/**
 * Kernel feature probes for `tardigrade check`. Each one asks the kernel directly (a syscall,
 * an ioctl on this process's own /proc files) rather than trusting version numbers, except
 * where a probe would need a second process.
 */
import { freeze } from "../mod.ts";

/** The outcome of one probe. */
export interface Probe {
  /** Short name of the feature. */
  name: string;
  /** Whether the tool cannot work without it. */
  required: boolean;
  ok: boolean;
  /** What was found, in a few words. */
  detail: string;
}

const PROCMAP_QUERY = 0xc0686611n;
const PAGEMAP_SCAN = 0xc0606610n;
const SYS_USERFAULTFD = 323n;
const ENOTTY = 25;
const ENOSYS = 38;
const EPERM = 1;

let libc: ReturnType<typeof openLibc> | undefined;

function openLibc() {
  return Deno.dlopen("libc.so.6", {
    open: { parameters: ["buffer", "i32"], result: "i32" },
    close: { parameters: ["i32"], result: "i32" },
    ioctl: { parameters: ["i32", "u64", "buffer"], result: "i32" },
    syscall: { parameters: ["i64", "i64"], result: "i64" },
    __errno_location: { parameters: [], result: "pointer" },
  }).symbols;
}

function c(): NonNullable<typeof libc> {
  return libc ??= openLibc();
}

function errno(): number {
  const p = c().__errno_location();
  return p ? new Deno.UnsafePointerView(p).getInt32() : 0;
}

/** Runs an ioctl on a fresh descriptor of `path`; returns 0 or the errno. */
function ioctlOn(path: string, request: bigint, arg: Uint8Array): number {
  const fd = c().open(new TextEncoder().encode(`${path}\0`), 0);
  if (fd < 0) return errno();
  const rc = c().ioctl(fd, request, arg);
  const e = rc < 0 ? errno() : 0;
  c().close(fd);
  return e;
}

function kernelVersion(): [number, number] {
  const [maj, min] = Deno.osRelease().split(/[.-]/).map(Number);
  return [maj, min];
}

function probeProcmapQuery(): Probe {
  const arg = new Uint8Array(104);
  const v = new DataView(arg.buffer);
  v.setBigUint64(0, 104n, true);
  v.setBigUint64(8, 0x10n, true); // COVERING_OR_NEXT_VMA from address 0: the first VMA
  const e = ioctlOn("/proc/self/maps", PROCMAP_QUERY, arg);
  const ok = e === 0 && v.getBigUint64(32, true) > v.getBigUint64(24, true);
  return {
    name: "PROCMAP_QUERY",
    required: false,
    ok,
    detail: ok ? "ioctl on /proc/PID/maps" : `errno ${e}; the maps text is used instead`,
  };
}

function probePagemapScan(): Probe {
  const vec = new Uint8Array(24 * 4);
  const arg = new Uint8Array(96);
  const v = new DataView(arg.buffer);
  // Scan the page holding our own stack-ish buffer: any mapped address works.
  const addr = BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(vec))) & ~4095n;
  v.setBigUint64(0, 96n, true);
  v.setBigUint64(16, addr, true);
  v.setBigUint64(24, addr + 4096n, true);
  v.setBigUint64(40, BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(vec))), true);
  v.setBigUint64(48, 4n, true);
  v.setBigUint64(88, 0x08n, true); // return PRESENT
  const e = ioctlOn("/proc/self/pagemap", PAGEMAP_SCAN, arg);
  return {
    name: "PAGEMAP_SCAN",
    required: false,
    ok: e === 0,
    detail: e === 0
      ? "ioctl on /proc/PID/pagemap"
      : `errno ${e}${e === ENOTTY ? " (not in this kernel)" : ""}; pagemap entries are read`,
  };
}

function probeMapFiles(): Probe {
  try {
    for (const e of Deno.readDirSync("/proc/self/map_files")) {
      Deno.readLinkSync(`/proc/self/map_files/${e.name}`);
      return { name: "/proc/PID/map_files", required: true, ok: true, detail: "readable" };
    }
    return { name: "/proc/PID/map_files", required: true, ok: false, detail: "empty" };
  } catch (err) {
    return {
      name: "/proc/PID/map_files",
      required: true,
      ok: false,
      detail: (err as Error).message,
    };
  }
}

function probeClone3(): Probe {
  const [maj, min] = kernelVersion();
  const recent = maj > 5 || (maj === 5 && min >= 5);
  const root = Deno.uid() === 0;
  return {
    name: "clone3 set_tid",
    required: true,
    ok: recent && root,
    detail: `kernel ${maj}.${min} ${recent ? "≥" : "<"} 5.5, ${root ? "root" : "not root"}`,
  };
}

function probeUserfaultfd(): Probe {
  // O_CLOEXEC | O_NONBLOCK; EPERM still proves the syscall exists.
  const fd = c().syscall(SYS_USERFAULTFD, 0o2004000n);
  const e = fd < 0n ? errno() : 0;
  if (fd >= 0n) c().close(Number(fd));
  const ok = fd >= 0n || e === EPERM;
  return {
    name: "userfaultfd",
    required: false,
    ok,
    detail: fd >= 0n
      ? "syscall works (dirty page tracking)"
      : e === ENOSYS
      ? "not in this kernel"
      : `errno ${e}`,
  };
}

function probeNsLastPid(): Probe {
  try {
    const text = Deno.readTextFileSync("/proc/sys/kernel/ns_last_pid").trim();
    return {
      name: "ns_last_pid",
      required: false,
      ok: true,
      detail: `/proc/sys/kernel/ns_last_pid = ${text}`,
    };
  } catch (err) {
    return { name: "ns_last_pid", required: false, ok: false, detail: (err as Error).message };
  }
}

/** Seizes a short-lived `sleep` (started detached so Deno does not reap it) and lets it go. */
async function probePtrace(): Promise<Probe> {
  const name = "ptrace";
  const sh = await new Deno.Command("sh", {
    args: ["-c", "sleep 5 >/dev/null 2>&1 </dev/null & echo $!"],
    stdout: "piped",
  }).output();
  const pid = Number(new TextDecoder().decode(sh.stdout).trim());
  if (!pid) return { name, required: true, ok: false, detail: "could not start sleep" };
  try {
    const frozen = await freeze(pid);
    await frozen.release();
    return { name, required: true, ok: true, detail: "seize and interrupt of a child sleep" };
  } catch (err) {
    return { name, required: true, ok: false, detail: (err as Error).message };
  } finally {
    try {
      Deno.kill(pid, "SIGKILL");
    } catch { /* gone */ }
  }
}

/** Runs every probe. */
export async function runProbes(): Promise<Probe[]> {
  return [
    await probePtrace(),
    probeProcmapQuery(),
    probePagemapScan(),
    probeMapFiles(),
    probeClone3(),
    probeUserfaultfd(),
    probeNsLastPid(),
  ];
}
