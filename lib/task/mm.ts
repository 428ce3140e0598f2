/**
 * The fields of the process's mm that name its layout (code, data, brk, stack, arguments,
 * environment), its auxiliary vector and its exe link, set at once with PR_SET_MM_MAP (which
 * works without CAP_SYS_RESOURCE, unlike the single PR_SET_MM_* options).
 */
import {
  AT_FDCWD,
  errnoText,
  PR,
  PR_SET_MM,
  PRCTL_MM_MAP_SIZE,
  SyscallError,
} from "../../ffi/mod.ts";
import { RestoreError } from "../errors.ts";
import type { MmEntry, ProcessEntry } from "../image/schema.ts";
import { mountRoot } from "../inspect/mount_root.ts";
import type { Process, ProcStat } from "../inspect/process.ts";
import type { Injector } from "../ptrace/inject.ts";

/** The mm fields of a frozen process: /proc/PID/stat and auxv, and brk(0) asked in the target. */
export async function dumpMm(proc: Process, stat: ProcStat, inj: Injector): Promise<MmEntry> {
  const auxv = await proc.auxv();
  return {
    startCode: stat.startCode,
    endCode: stat.endCode,
    startData: stat.startData,
    endData: stat.endData,
    startBrk: stat.startBrk,
    brk: inj.call("brk", 0),
    startStack: stat.startStack,
    argStart: stat.argStart,
    argEnd: stat.argEnd,
    envStart: stat.envStart,
    envEnd: stat.envEnd,
    auxv: auxv.flat(),
  };
}

/** The executable, as the restore checks it is unchanged; null when unreadable or deleted. */
export async function dumpExe(proc: Process): Promise<ProcessEntry["exe"]> {
  try {
    const path = await proc.exe();
    if (path.endsWith(" (deleted)")) return null;
    // The executable itself: its path may name nothing in the tool's mount namespace.
    const st = await Deno.stat(`/proc/${proc.pid}/exe`);
    return { path, size: st.size, mtimeMs: st.mtime?.getTime() ?? 0 };
  } catch {
    return null; // a kernel thread or an unreadable exe: restore without an exe link
  }
}

/** Whether two paths name the same file (device and inode); false if either is unreadable. */
function sameFile(a: string, b: string): boolean {
  try {
    const x = Deno.statSync(a);
    const y = Deno.statSync(b);
    return x.dev === y.dev && x.ino !== null && x.ino === y.ino;
  } catch {
    return false;
  }
}

/** The mm fields, auxv and exe link through PR_SET_MM_MAP. */
export function restoreMm(inj: Injector, entry: ProcessEntry): void {
  const mm = entry.mm;
  const auxv = new BigUint64Array(mm.auxv);
  const auxvAddr = inj.put(new Uint8Array(auxv.buffer), 4096);
  let exeFd = -1;
  // The kernel refuses (EBUSY) to replace an exe link whose old file is still mapped: when the
  // dumped program is the stub's own (`sleep`), the link is already right, so leave it.
  if (entry.exe && !sameFile(`/proc/${inj.pid}/exe`, mountRoot(inj.pid) + entry.exe.path)) {
    const path = inj.put(new TextEncoder().encode(entry.exe.path + "\0"), 8192);
    exeFd = Number(inj.call("openat", AT_FDCWD, path, 0, 0));
  }
  // struct prctl_mm_map: eleven addresses, the auxv pointer, its size and the exe fd.
  const map = new BigUint64Array(PRCTL_MM_MAP_SIZE / 8);
  map.set([
    mm.startCode,
    mm.endCode,
    mm.startData,
    mm.endData,
    mm.startBrk,
    mm.brk,
    mm.startStack,
    mm.argStart,
    mm.argEnd,
    mm.envStart,
    mm.envEnd,
    auxvAddr,
  ]);
  const tail = new DataView(map.buffer);
  tail.setUint32(96, auxv.byteLength, true);
  tail.setUint32(100, exeFd >>> 0, true);
  try {
    const mapAddr = inj.put(new Uint8Array(map.buffer), 0);
    inj.call("prctl", PR.SET_MM, PR_SET_MM.MAP, mapAddr, PRCTL_MM_MAP_SIZE, 0);
  } catch (err) {
    if (!(err instanceof SyscallError)) throw err;
    throw new RestoreError(
      `PR_SET_MM_MAP (mm fields, auxv, exe link ${entry.exe?.path ?? "unchanged"}) in ` +
        `${inj.pid} failed: ${err.code} (${errnoText(err.errno)})`,
      { cause: err },
    );
  } finally {
    if (exeFd >= 0) inj.call("close", exeFd);
  }
}
