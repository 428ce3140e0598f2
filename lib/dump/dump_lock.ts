/**
 * One dump at a time per process, by design: a dump takes an exclusive `flock` on a file named
 * for the process (its pid and start time, so a reused pid is another process) before it does
 * anything, and a second dump of it is refused at once, naming the other dumper. The kernel
 * drops the lock when the dumper ends, however it ends; the small files stay in the lock
 * directory.
 */
import {
  close,
  Errno,
  LOCK,
  O,
  open,
  pread,
  pwrite,
  syscall,
  SyscallError,
} from "../../ffi/mod.ts";
import { DumpError } from "../errors.ts";
import { tryReadStat } from "../inspect/procfs.ts";

/** Where the lock files live: /run when it can be written, else the temporary directory. */
function lockDir(): string {
  for (const dir of ["/run/tardigrade", `${Deno.env.get("TMPDIR") ?? "/tmp"}/tardigrade`]) {
    try {
      Deno.mkdirSync(dir, { recursive: true, mode: 0o700 });
      return dir;
    } catch { /* not writable: the next one */ }
  }
  throw new DumpError("no directory for dump locks (/run/tardigrade, /tmp/tardigrade)");
}

/** The exclusive right to dump one process, held until disposed. */
export class DumpLock implements Disposable {
  private constructor(readonly pid: number, readonly fd: number) {}

  /** Takes the lock of process `pid`, or throws a `DumpError` naming the dumper that has it. */
  static take(pid: number): DumpLock {
    const started = tryReadStat(pid)?.starttime ?? 0n;
    const fd = open(`${lockDir()}/dump-${pid}-${started}.lock`, O.RDWR | O.CREAT, 0o600);
    try {
      syscall("flock", fd, LOCK.EX | LOCK.NB);
    } catch (err) {
      const holder = readHolder(fd);
      close(fd);
      if (err instanceof SyscallError && err.errno === Errno.EAGAIN) {
        throw new DumpError(
          `process ${pid} is being dumped already` +
            (holder ? ` (by tardigrade, pid ${holder})` : "") +
            `: one dump at a time`,
        );
      }
      throw err;
    }
    const me = new TextEncoder().encode(`${Deno.pid}\n`.padEnd(12));
    pwrite(fd, me, 0);
    return new DumpLock(pid, fd);
  }

  /** Lets the next dump of the process in. */
  [Symbol.dispose](): void {
    close(this.fd);
  }
}

/** The pid the holder wrote into the lock file, or 0. */
function readHolder(fd: number): number {
  const buf = new Uint8Array(12);
  try {
    const n = pread(fd, buf, 0);
    return Number(new TextDecoder().decode(buf.subarray(0, n)).trim()) || 0;
  } catch {
    return 0;
  }
}
