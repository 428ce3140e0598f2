/**
 * Restoring into a new pid namespace (`restore(dir, { pidNamespace: true })`): inside it the
 * processes get exactly their dumped pids and tids whatever the host runs under those numbers, so
 * an image dumped with `leaveRunning` can be restored beside its original, and as often as wanted.
 *
 * How: the stub (in the tool's namespaces) unshares CLONE_NEWPID and forks its next child, pid 1
 * of the new namespace. That child, a copy of the stub, becomes the namespace's init: it unshares
 * a mount namespace, makes every mount private (so nothing it mounts propagates to the host) and
 * mounts a proc of its own on /proc, so /proc/self inside names the namespace pid. It then forks
 * the restored root with clone3 set_tid = [dumped pid] (one level: the pid inside; the host's is
 * any). The root's parent is therefore this init (getppid() says 1), not its original parent.
 *
 * The init must outlive the tree: when pid 1 of a namespace dies the kernel kills every process in
 * it. Rather than exec a program (an exec under ptrace, and a binary to rely on), it runs a few
 * instructions of ours from a private page: wait4(-1) in a loop, reaping orphans as an init
 * should, then exit_group(0) once no child is left (ECHILD), so it never outlives the copy it
 * guards. It blocks every signal (SIGKILL still ends it, and with it the whole copy), holds no
 * descriptor, has "/" as its cwd and is not traced once the restore is done.
 *
 * Pids: the tool works from outside with host pids (ptrace, /proc/PID, pidfd_open, tgkill,
 * process_vm_*); the image and everything written into the processes use the namespace pids
 * (set_tid, the tgid of a queued signal). `PidMap` keeps the one to the other.
 */
import {
  CLONE,
  cstring,
  detach,
  getRegs,
  kill,
  MAP,
  O,
  PAGE_SIZE,
  PR,
  PROT,
  setRegs,
  setSigMask,
  SIG,
  WAIT,
  waitpid,
} from "../../ffi/mod.ts";
import { RestoreError } from "../errors.ts";
import { Injector } from "../ptrace/inject.ts";
import { processState, readProcText, readStatus, threadIds } from "../inspect/procfs.ts";
import { RemoteMemory } from "../inspect/memory.ts";
import type { ProcessEntry } from "../image/schema.ts";
import { forkWithPid } from "../ptrace/stub.ts";
import { makeMounts } from "../namespaces/mounts.ts";
import type { MountEntry } from "../image/schema.ts";

/** The proc the init of a copy's namespace mounts on /proc, as `mount -t proc` would. */
const NAMESPACE_PROC: MountEntry = {
  mountPoint: "/proc",
  fsType: "proc",
  source: "proc",
  options: "rw,nosuid,nodev,noexec",
  superOptions: "rw",
};

/** The soft limit on descriptors of process `pid` (/proc/PID/limits). */
function nofileLimit(pid: number): number {
  const line = readProcText(pid, "limits").split("\n").find((l) => l.startsWith("Max open files"));
  return Number(line?.split(/\s+/)[3] ?? 1024);
}

/**
 * The init's whole program (x86_64):
 * `loop: r = wait4(-1, NULL, __WALL, NULL); if (r != -ECHILD) goto loop; exit_group(0);`
 */
// deno-fmt-ignore
const REAPER_LOOP = new Uint8Array([
  0xb8, 0x3d, 0x00, 0x00, 0x00,             // mov eax, 61 (wait4)
  0x48, 0xc7, 0xc7, 0xff, 0xff, 0xff, 0xff, // mov rdi, -1 (any child)
  0x31, 0xf6,                               // xor esi, esi (no status)
  0xba, 0x00, 0x00, 0x00, 0x40,             // mov edx, __WALL
  0x45, 0x31, 0xd2,                         // xor r10d, r10d (no rusage)
  0x0f, 0x05,                               // syscall
  0x48, 0x83, 0xf8, 0xf6,                   // cmp rax, -10 (-ECHILD: no child left)
  0x75, 0xe2,                               // jne loop
  0xb8, 0xe7, 0x00, 0x00, 0x00,             // mov eax, 231 (exit_group)
  0x31, 0xff,                               // xor edi, edi
  0x0f, 0x05,                               // syscall
]);

/**
 * Image pid or tid (what the restored processes see) → host pid or tid (what the tool uses from
 * outside). Without a new pid namespace every entry is the identity.
 */
export class PidMap {
  readonly #host = new Map<number, number>();
  /** The other way (a tree's comparison asks it for every thread and descriptor owner). */
  readonly #image = new Map<number, number>();

  /** Records that the process or thread the image calls `image` is `host` on the host. */
  set(image: number, host: number): void {
    const was = this.#host.get(image);
    if (was !== undefined && this.#image.get(was) === image) this.#image.delete(was);
    this.#host.set(image, host);
    this.#image.set(host, image);
  }

  /** The host pid or tid of the image's `image`; throws if none was made for it. */
  host(image: number): number {
    const host = this.#host.get(image);
    if (host === undefined) throw new RestoreError(`no process or thread made for pid ${image}`);
    return host;
  }

  /** The image's pid or tid of host pid or tid `host` (itself when not made by this restore). */
  image(host: number): number {
    return this.#image.get(host) ?? host;
  }

  /** Every entry, image pid → host pid. */
  toMap(): Map<number, number> {
    return new Map(this.#host);
  }
}

/**
 * Refuses an image that cannot go into a new pid namespace: pid 1 there is the namespace's init,
 * so no process, thread or zombie of the image may have it.
 */
export function checkNamespacePids(entries: ProcessEntry[]): void {
  for (const p of entries) {
    const ids = [p.pid, ...p.threads.map((t) => t.tid), ...(p.zombies ?? []).map((z) => z.pid)];
    if (ids.includes(1)) {
      throw new RestoreError(
        `cannot restore into a new pid namespace: process ${p.pid} of the image has pid or tid 1, ` +
          `which is the namespace's init there; restore it without a pid namespace`,
      );
    }
  }
}

/** Whether `pid` is gone or a zombie (its parent, not us, will reap it). */
function goneOrZombie(pid: number): boolean {
  const state = processState(pid);
  return state === "" || state === "Z";
}

/**
 * Our tracees that exited and wait for us (their tracer): a namespace's init cannot finish
 * exiting before every process of the namespace is reaped, also those we trace.
 */
function reapTracedZombies(): void {
  for (const e of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(e.name)) continue;
    const pid = Number(e.name);
    for (const tid of threadIds(pid)) {
      try {
        const status = readStatus(pid, tid);
        if (!status.get("State")?.startsWith("Z")) continue;
        if (status.get("TracerPid") !== String(Deno.pid)) continue;
        waitpid(tid, WAIT.WNOHANG);
      } catch { /* gone, or not ours after all */ }
    }
  }
}

/** A new pid namespace (and mount namespace) with its init, traced by us until `release`. */
export class PidNamespace {
  #released = false;

  private constructor(
    /** Host pid of the namespace's init (pid 1 inside). */
    readonly init: number,
    /** Runs syscalls in the init; null when the init is the restored root (a container's). */
    readonly injector: Injector | null,
    /** A container's init's descriptor of a pidfd of the tool, until `dropToolPidfd` (else -1). */
    readonly toolPidfdFd: number,
    /** The stub's scratch region, which the init has a copy of. */
    readonly stubScratch: { start: bigint; end: bigint } | null,
  ) {}

  /**
   * Makes the namespace of a container's restored root, which is its init (pid 1): forked from
   * the seized, stopped stub, traced and stopped, a copy of the stub until the restore builds it
   * (as `forkRoot` would give). It keeps the tool's pidfd at a descriptor above every one the
   * image gives it (`keptFd`), for a net namespace handed in (`joinHandedIn`), until
   * `dropToolPidfd`.
   */
  static createForContainer(stub: Injector, image: ProcessEntry): PidNamespace {
    // High, for the image's descriptors are below it, but not so high the table grows large.
    const kept = Math.min(nofileLimit(stub.pid), 65536) - 1;
    if (image.fds.some((f) => f.fd >= kept)) {
      throw new RestoreError(
        `cannot restore container: its init has a descriptor at or above ${kept}, where the ` +
          `restore keeps its own until the tree is made`,
      );
    }
    const pidfd = stub.call("pidfd_open", Deno.pid, 0);
    stub.call("dup3", pidfd, kept, O.CLOEXEC);
    stub.call("close", pidfd);
    stub.call("unshare", CLONE.NEWPID);
    const init = forkWithPid(stub, 1);
    return new PidNamespace(init, null, kept, stub.scratchRange);
  }

  /** The descriptor the restored root keeps through its emptying, when it is the init. */
  keptFd(pid: number): number | undefined {
    return this.injector === null && pid === this.init ? this.toolPidfdFd : undefined;
  }

  /** A container's init, restored: closes the tool's pidfd it kept (see `createForContainer`). */
  dropToolPidfd(root: Injector): void {
    if (this.injector !== null || this.#released) return;
    root.call("close", this.toolPidfdFd);
    this.#released = true;
  }

  /**
   * Makes the namespace and its init (traced, stopped) from the seized, stopped stub; `mountProc`
   * comes next.
   */
  static create(stub: Injector): PidNamespace {
    stub.call("unshare", CLONE.NEWPID);
    const init = forkWithPid(stub, 1);
    try {
      const inj = new Injector(init, init, new RemoteMemory(init), stub.site, {
        diesWithTool: true,
      });
      return new PidNamespace(init, inj, -1, stub.scratchRange);
    } catch (err) {
      kill(init, SIG.SIGKILL);
      waitpid(init); // as its tracer; the stub, its parent, is ended by the caller
      throw err;
    }
  }

  /**
   * Gives the init a mount namespace of its own, every mount private, with a proc for the new
   * pid namespace on /proc. Before `forkRoot`: the restored processes inherit it.
   */
  mountProc(): void {
    try {
      this.#mountProc();
    } catch (err) {
      throw new RestoreError(
        `cannot set up the new pid namespace's init: ${(err as Error).message}`,
      );
    }
  }

  #mountProc(): void {
    const inj = this.injector!;
    inj.call("prctl", PR.SET_NAME, inj.put(cstring("tardigrade-init")));
    makeMounts(inj, [NAMESPACE_PROC]);
  }

  /** Forks the restored root from the init: `pid` inside the namespace; returns its host pid. */
  forkRoot(pid: number): number {
    if (this.injector === null) return this.init; // a container's: the root is the init
    return forkWithPid(this.injector, pid);
  }

  /**
   * Lets the init go: it closes every descriptor, moves to "/", and runs
   * its reaper loop from a private page with every signal blocked, no longer traced.
   */
  release(): void {
    const inj = this.injector;
    if (inj === null) return; // a container's init is the restored root, resumed as such
    inj.call("close_range", 0, 0xffffffff, 0);
    inj.call("chdir", inj.put(new TextEncoder().encode("/\0")));
    const code = inj.call(
      "mmap",
      0,
      PAGE_SIZE,
      PROT.READ | PROT.EXEC,
      MAP.PRIVATE | MAP.ANONYMOUS,
      -1,
      0,
    );
    inj.mem.write(code, REAPER_LOOP); // /proc/PID/mem writes through the page's protection
    if (this.stubScratch) {
      inj.call("munmap", this.stubScratch.start, this.stubScratch.end - this.stubScratch.start);
    }
    inj.release();
    setSigMask(this.init, ~0n);
    setRegs(this.init, { ...getRegs(this.init), rip: code, orig_rax: -1n });
    detach(this.init);
    inj.mem.close();
    this.#released = true;
  }

  /**
   * Kills the init, and with it every process of the namespace, and waits until it is gone.
   * The init finishes exiting only once every other process of the namespace is reaped, those we
   * trace by us: the caller reaps what it made first; strays are swept here.
   */
  async abort(): Promise<void> {
    try {
      kill(this.init, SIG.SIGKILL);
    } catch { /* already gone */ }
    this.injector?.mem.close();
    const deadline = Date.now() + 5000;
    while (Date.now() < deadline) {
      try {
        const st = waitpid(this.init, WAIT.WNOHANG);
        if (st && (st.exited || st.signaled)) return; // traced by us, or our child: reaped
      } catch {
        // Neither our tracee nor our child any more: its parent reaps it.
        if (goneOrZombie(this.init)) return;
      }
      reapTracedZombies();
      await new Promise((r) => setTimeout(r, 10));
    }
  }
}
