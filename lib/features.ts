/**
 * Which kernel features tardigrade needs and whether this kernel has them. Each probe asks the
 * kernel itself (a syscall, an ioctl on this process's own /proc files) instead of trusting a
 * version number.
 */
import {
  addressOf,
  AF,
  CAP,
  close,
  encodeCloneArgs,
  encodePmScanArg,
  encodeProcmapQuery,
  Errno,
  hasCap,
  ioctl,
  O,
  open,
  PAGE_IS,
  PAGE_SIZE,
  pageDown,
  PAGEMAP_SCAN,
  PM_SCAN_ARG_SIZE,
  PROCMAP_QUERY,
  PROCMAP_QUERY_COVERING_OR_NEXT_VMA,
  PROCMAP_QUERY_SIZE,
  SIG,
  SOCK,
  SOL,
  syscall,
  SyscallError,
  TCP,
  TCP_REPAIR,
  trySetsockoptInt,
  trySocket,
} from "../ffi/mod.ts";
import { availableNetfilter } from "./network/netfilter.ts";
import { freeze } from "./ptrace/freeze.ts";
import { hexMask, statusField } from "./inspect/procfs.ts";

/** The outcome of one probe. */
export interface Feature {
  /** Short name of the feature. */
  name: string;
  /** Whether the tool cannot work without it. */
  required: boolean;
  /** Whether this kernel has it. */
  ok: boolean;
  /** What was found, in a few words. */
  detail: string;
}

function errnoOf(fn: () => void): number {
  try {
    fn();
    return 0;
  } catch (err) {
    if (err instanceof SyscallError) return err.errno;
    throw err;
  }
}

function ioctlOn(path: string, request: bigint, arg: Uint8Array, name: string): number {
  const fd = open(path, O.RDONLY);
  try {
    return errnoOf(() => ioctl(fd, request, arg, name));
  } finally {
    close(fd);
  }
}

function procmapQuery(): Feature {
  const arg = new Uint8Array(PROCMAP_QUERY_SIZE);
  encodeProcmapQuery(arg, 0n, PROCMAP_QUERY_COVERING_OR_NEXT_VMA);
  const e = ioctlOn("/proc/self/maps", PROCMAP_QUERY, arg, "PROCMAP_QUERY");
  return {
    name: "PROCMAP_QUERY",
    required: false,
    ok: e === 0,
    detail: e === 0 ? "ioctl on /proc/PID/maps" : `errno ${e}; the maps text is read instead`,
  };
}

function pagemapScan(): Feature {
  const vec = new Uint8Array(24 * 4);
  const page = pageDown(addressOf(vec));
  const arg = new Uint8Array(PM_SCAN_ARG_SIZE);
  encodePmScanArg(arg, {
    start: page,
    end: page + BigInt(PAGE_SIZE),
    vec: addressOf(vec),
    vecLen: 4,
    returnMask: PAGE_IS.PRESENT,
  });
  const e = ioctlOn("/proc/self/pagemap", PAGEMAP_SCAN, arg, "PAGEMAP_SCAN");
  return {
    name: "PAGEMAP_SCAN",
    required: false,
    ok: e === 0,
    detail: e === 0 ? "ioctl on /proc/PID/pagemap" : `errno ${e}; pagemap entries are read instead`,
  };
}

function mapFiles(): Feature {
  const name = "/proc/PID/map_files";
  try {
    for (const e of Deno.readDirSync("/proc/self/map_files")) {
      Deno.readLinkSync(`/proc/self/map_files/${e.name}`);
      return { name, required: true, ok: true, detail: "readable" };
    }
    return { name, required: true, ok: false, detail: "empty" };
  } catch (err) {
    return { name, required: true, ok: false, detail: (err as Error).message };
  }
}

/** clone3 with set_tid = [1]: EEXIST proves set_tid works (pid 1 is always taken), without
 * making anything; a kernel without it refuses the larger struct (E2BIG) or clone3 (ENOSYS). */
function clone3SetTid(): Feature {
  const tid = new Int32Array([1]);
  const args = encodeCloneArgs({
    flags: 0n,
    exitSignal: SIG.SIGCHLD,
    setTid: addressOf(tid),
    setTidSize: 1,
  });
  const e = errnoOf(() => syscall("clone3", addressOf(args), args.length));
  const ok = e === Errno.EEXIST;
  return {
    name: "clone3 set_tid",
    required: true,
    ok,
    detail: ok ? "chosen pids work" : `errno ${e}${e === Errno.EPERM ? " (needs root)" : ""}`,
  };
}

function userfaultfd(): Feature {
  let fd = -1;
  const e = errnoOf(() => fd = Number(syscall("userfaultfd", O.CLOEXEC | O.NONBLOCK)));
  if (fd >= 0) close(fd);
  const ok = e === 0 || e === Errno.EPERM;
  return {
    name: "userfaultfd",
    required: false,
    ok,
    detail: e === 0
      ? "available (dirty page tracking, lazy restore)"
      : e === Errno.EPERM
      ? "for faults in user mode only (dirty page tracking; not lazy restore)"
      : `errno ${e}`,
  };
}

function nsLastPid(): Feature {
  const name = "ns_last_pid";
  try {
    const text = Deno.readTextFileSync("/proc/sys/kernel/ns_last_pid").trim();
    return { name, required: false, ok: true, detail: `/proc/sys/kernel/ns_last_pid = ${text}` };
  } catch (err) {
    return { name, required: false, ok: false, detail: (err as Error).message };
  }
}

/** TCP repair mode on a fresh socket: needed to dump established connections. */
function tcpRepair(): Feature {
  const name = "TCP_REPAIR";
  const fd = trySocket(AF.INET, SOCK.STREAM | SOCK.CLOEXEC, 0);
  const r = fd < 0 ? fd : trySetsockoptInt(fd, SOL.TCP, TCP.REPAIR, TCP_REPAIR.ON);
  const e = -Math.min(r, 0);
  if (fd >= 0) close(fd);
  return {
    name,
    required: false,
    ok: e === 0,
    detail: e === 0
      ? "established TCP connections can be dumped"
      : `errno ${e}${e === Errno.EPERM ? " (needs CAP_NET_ADMIN)" : ""}`,
  };
}

/** What restore --pid-namespace needs: pid namespaces, and the right to make one (and mount). */
function pidNamespaces(): Feature {
  const name = "pid namespaces";
  try {
    const max = Number(Deno.readTextFileSync("/proc/sys/user/max_pid_namespaces").trim());
    const capEff = hexMask(statusField(Deno.pid, "CapEff"));
    const sysAdmin = hasCap(capEff, CAP.SYS_ADMIN);
    const ok = max > 0 && sysAdmin;
    return {
      name,
      required: false,
      ok,
      detail: ok
        ? "restore --pid-namespace can make copies beside the original"
        : max > 0
        ? "needs CAP_SYS_ADMIN"
        : "user.max_pid_namespaces is 0",
    };
  } catch (err) {
    return { name, required: false, ok: false, detail: (err as Error).message };
  }
}

/** Seizes and releases a short-lived `sleep` started detached (so Deno does not reap it). */
async function ptraceSeize(): Promise<Feature> {
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
    return { name, required: true, ok: true, detail: "seize and interrupt of a sleep" };
  } catch (err) {
    return { name, required: true, ok: false, detail: (err as Error).message };
  } finally {
    try {
      Deno.kill(pid, "SIGKILL");
    } catch { /* gone */ }
  }
}

/** What locks the network while TCP connections are dumped (lib/network/): nft, else iptables. */
function networkLock(): Feature {
  const nf = availableNetfilter();
  return {
    name: "network lock",
    required: false,
    ok: nf !== null,
    detail: nf
      ? `${nf.method} (a dump's TCP connections stay locked until their restore)`
      : "neither nft nor iptables runs here: a dump with TCP connections is refused",
  };
}

/** Probes every kernel feature tardigrade uses, and what locks the network. */
export async function kernelFeatures(): Promise<Feature[]> {
  return [
    await ptraceSeize(),
    procmapQuery(),
    pagemapScan(),
    mapFiles(),
    clone3SetTid(),
    userfaultfd(),
    nsLastPid(),
    tcpRepair(),
    pidNamespaces(),
    networkLock(),
  ];
}
