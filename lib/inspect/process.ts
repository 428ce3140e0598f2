/** A live process as an object, modelled on psutil: a pid plus lazy async accessors. */
import { RLIM_INFINITY, RLIMIT } from "../../ffi/mod.ts";
import { NoSuchProcess } from "../errors.ts";
import { type Fd, FileTable, listFdNumbers, readFd } from "./fds.ts";
import { findMapping, listMappings, type Mapping, type MappingOptions } from "./mappings.ts";
import { readMemory, readMemoryInto, writeMemory } from "./memory.ts";
import {
  type AddressRange,
  type DumpableOptions,
  dumpableRanges,
  listPages,
  type PageRegion,
} from "./pages.ts";
import {
  bracketInode,
  childrenOf,
  hexMask,
  orEmpty,
  parseStat,
  procError,
  type ProcessState,
  procPath,
  type ProcStat,
  readProcBytes,
  readProcLink,
  readProcText,
  readStatus,
  splitNul,
  tryReadStat,
} from "./procfs.ts";
import type { Capabilities, Ids, ProcessView, Rlimit, RlimitName, SignalMasks } from "./view.ts";

export { parseStat, type ProcessState, type ProcStat };

export { RLIM_INFINITY, RLIMIT };
export type { Capabilities, Ids, Rlimit, RlimitName, SignalMasks };

const LIMIT_NAMES: Record<string, RlimitName> = {
  "Max cpu time": "CPU",
  "Max file size": "FSIZE",
  "Max data size": "DATA",
  "Max stack size": "STACK",
  "Max core file size": "CORE",
  "Max resident set": "RSS",
  "Max processes": "NPROC",
  "Max open files": "NOFILE",
  "Max locked memory": "MEMLOCK",
  "Max address space": "AS",
  "Max file locks": "LOCKS",
  "Max pending signals": "SIGPENDING",
  "Max msgqueue size": "MSGQUEUE",
  "Max nice priority": "NICE",
  "Max realtime priority": "RTPRIO",
  "Max realtime timeout": "RTTIME",
};

/** One thread of a process. */
export interface ThreadInfo {
  /** Thread id. */
  tid: number;
  /** Scheduler state. */
  state: ProcessState;
  /** The thread's comm. */
  name: string;
}

/** Builds an async iterable over a list computed (synchronously) on the first step. */
export function lazyList<T>(produce: () => T[]): AsyncIterable<T> {
  return {
    [Symbol.asyncIterator](): AsyncIterator<T> {
      let items: T[] | null = null;
      let i = 0;
      return {
        next(): Promise<IteratorResult<T>> {
          try {
            items ??= produce();
          } catch (err) {
            return Promise.reject(err);
          }
          return Promise.resolve(
            i < items.length
              ? { value: items[i++], done: false }
              : { value: undefined, done: true },
          );
        },
      };
    },
  };
}

/**
 * A live process. Every accessor is an async method that reads /proc (or asks the kernel) when it
 * is called, so values are fresh; nothing but the pid and start time is kept. Listings
 * (`mappings`, `pages`, `fds`, `threads`) are async iterables. Errors: `NoSuchProcess` once the
 * process is gone, `AccessDenied` where the kernel refuses.
 *
 * ```ts
 * const p = await Process.open(1234);
 * console.log(await p.comm(), await p.cmdline());
 * for await (const m of p.mappings()) console.log(m.perms, m.path);
 * ```
 */
export class Process implements ProcessView {
  /** Use `Process.open`. */
  protected constructor(
    /** The process id. */
    readonly pid: number,
    /** Start time in clock ticks after boot (stat field 22), to tell a reused pid apart. */
    readonly startTime: bigint,
  ) {}

  /** Opens process `pid`; `NoSuchProcess` if there is none. */
  static open(pid: number): Promise<Process> {
    try {
      return Promise.resolve(Process.openSync(pid));
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /** The synchronous form of `open`. */
  static openSync(pid: number): Process {
    if (!Number.isInteger(pid) || pid <= 0) throw new NoSuchProcess(pid, "not a valid pid");
    const stat = parseStat(readProcText(pid, "stat"));
    return new Process(pid, stat.starttime);
  }

  /** Whether the process still runs (not a zombie) and its pid was not reused. */
  async isRunning(): Promise<boolean> {
    try {
      const s = await this.stat();
      return s.starttime === this.startTime && s.state !== "Z" && s.state !== "X";
    } catch {
      return false;
    }
  }

  /** Parsed /proc/PID/stat. */
  stat(): Promise<ProcStat> {
    return this.#sync(() => parseStat(readProcText(this.pid, "stat")));
  }

  /** /proc/PID/status as key → value text. */
  status(): Promise<Map<string, string>> {
    return this.#sync(() => this.#status());
  }

  /** The parent's pid (0 for pid 1). */
  async ppid(): Promise<number> {
    return (await this.stat()).ppid;
  }

  /** The process group id. */
  async pgid(): Promise<number> {
    return (await this.stat()).pgrp;
  }

  /** The session id. */
  async sid(): Promise<number> {
    return (await this.stat()).session;
  }

  /** The command name (up to 15 bytes). */
  comm(): Promise<string> {
    return this.#sync(() => readProcText(this.pid, "comm").replace(/\n$/, ""));
  }

  /** The arguments (empty for a kernel thread or a zombie). */
  cmdline(): Promise<string[]> {
    return this.#sync(() => orEmpty(() => splitNul(readProcBytes(this.pid, "cmdline")), []));
  }

  /** The environment as `NAME=value` strings. */
  environ(): Promise<string[]> {
    return this.#sync(() => orEmpty(() => splitNul(readProcBytes(this.pid, "environ")), []));
  }

  /**
   * The executable's path (ends with ` (deleted)` when it was removed); empty for a kernel
   * thread or a zombie.
   */
  exe(): Promise<string> {
    return this.#sync(() => orEmpty(() => readProcLink(this.pid, "exe"), ""));
  }

  /** The working directory. */
  cwd(): Promise<string> {
    return this.#sync(() => readProcLink(this.pid, "cwd"));
  }

  /** The root directory (chroot). */
  root(): Promise<string> {
    return this.#sync(() => readProcLink(this.pid, "root"));
  }

  /** The scheduler state letter. */
  async state(): Promise<ProcessState> {
    return (await this.stat()).state;
  }

  /** User ids. */
  uids(): Promise<Ids> {
    return this.#sync(() => ids(this.#status().get("Uid")));
  }

  /** Group ids. */
  gids(): Promise<Ids> {
    return this.#sync(() => ids(this.#status().get("Gid")));
  }

  /** Supplementary groups. */
  groups(): Promise<number[]> {
    return this.#sync(() =>
      (this.#status().get("Groups") ?? "").split(/\s+/).filter(Boolean).map(Number)
    );
  }

  /** Capability sets. */
  capabilities(): Promise<Capabilities> {
    return this.#sync(() => {
      const s = this.#status();
      return {
        inheritable: hexMask(s.get("CapInh")),
        permitted: hexMask(s.get("CapPrm")),
        effective: hexMask(s.get("CapEff")),
        bounding: hexMask(s.get("CapBnd")),
        ambient: hexMask(s.get("CapAmb")),
      };
    });
  }

  /** The file mode creation mask. */
  umask(): Promise<number> {
    return this.#sync(() => parseInt(this.#status().get("Umask") ?? "0", 8));
  }

  /** Pending, blocked, ignored and caught signals. */
  signals(): Promise<SignalMasks> {
    return this.#sync(() => {
      const s = this.#status();
      return {
        pending: hexMask(s.get("SigPnd")),
        shdPending: hexMask(s.get("ShdPnd")),
        blocked: hexMask(s.get("SigBlk")),
        ignored: hexMask(s.get("SigIgn")),
        caught: hexMask(s.get("SigCgt")),
      };
    });
  }

  /**
   * Resource limits from /proc/PID/limits (prlimit would need CAP_SYS_RESOURCE for a process of
   * another uid). Unlimited is `RLIM_INFINITY`.
   */
  rlimits(): Promise<Record<RlimitName, Rlimit>> {
    return this.#sync(() => {
      const out = {} as Record<RlimitName, Rlimit>;
      const value = (s: string) => s === "unlimited" ? RLIM_INFINITY : BigInt(s);
      for (const line of readProcText(this.pid, "limits").split("\n").slice(1)) {
        const name = LIMIT_NAMES[line.slice(0, 25).trim()];
        if (!name) continue;
        const [soft, hard] = line.slice(26).trim().split(/\s+/);
        out[name] = { soft: value(soft), hard: value(hard) };
      }
      return out;
    });
  }

  /** Namespace inode numbers by name (`mnt`, `net`, `pid`, `pid_for_children`, …). */
  namespaces(): Promise<Record<string, bigint>> {
    return this.#sync(() => {
      const out: Record<string, bigint> = {};
      let names: string[];
      try {
        names = [...Deno.readDirSync(procPath(this.pid, "ns"))].map((e) => e.name).sort();
      } catch (err) {
        throw procError(err, this.pid, "ns");
      }
      for (const name of names) {
        const inode = bracketInode(readProcLink(this.pid, `ns/${name}`));
        if (inode !== null) out[name] = inode;
      }
      return out;
    });
  }

  /** The personality flags (/proc/PID/personality). */
  personality(): Promise<number> {
    return this.#sync(() => parseInt(readProcText(this.pid, "personality"), 16));
  }

  /** The ELF auxiliary vector as [type, value] pairs, without the final AT_NULL. */
  auxv(): Promise<[bigint, bigint][]> {
    return this.#sync(() => {
      const bytes = orEmpty(() => readProcBytes(this.pid, "auxv"), new Uint8Array(0));
      const words = new BigUint64Array(bytes.buffer, bytes.byteOffset, bytes.length >> 3);
      const out: [bigint, bigint][] = [];
      for (let i = 0; i + 1 < words.length && words[i] !== 0n; i += 2) {
        out.push([words[i], words[i + 1]]);
      }
      return out;
    });
  }

  /** The direct children, of every thread, in pid order. */
  children(): Promise<Process[]> {
    return this.#sync(() => {
      const out: Process[] = [];
      for (const pid of childrenOf(this.pid)) {
        const s = tryReadStat(pid); // null: it exited meanwhile
        if (s) out.push(new Process(pid, s.starttime));
      }
      return out;
    });
  }

  /** The threads, each with its state and name. */
  threads(): AsyncIterable<ThreadInfo> {
    return lazyList(() => {
      let tids: number[];
      try {
        tids = [...Deno.readDirSync(procPath(this.pid, "task"))].map((e) => Number(e.name));
      } catch (err) {
        throw procError(err, this.pid, "task");
      }
      const out: ThreadInfo[] = [];
      for (const tid of tids.sort((a, b) => a - b)) {
        try {
          const s = parseStat(Deno.readTextFileSync(procPath(this.pid, `task/${tid}/stat`)));
          out.push({ tid, state: s.state, name: s.comm });
        } catch { /* the thread exited meanwhile */ }
      }
      return out;
    });
  }

  /**
   * The memory mappings in address order, equal to /proc/PID/maps. See `MappingOptions` for
   * build ids and the listing method.
   */
  mappings(opts?: MappingOptions): AsyncIterable<Mapping> {
    return lazyList(() => orEmpty(() => listMappings(this.pid, opts), []));
  }

  /** The mapping that covers `addr`, or null. */
  findMapping(addr: bigint): Promise<Mapping | null> {
    return this.#sync(() => findMapping(this.pid, addr));
  }

  /**
   * Runs of pages with the same state (present, swapped, file, zero, huge, written) over the
   * mapped part of `range` (default: all user space).
   */
  pages(range?: Partial<AddressRange>): AsyncIterable<PageRegion> {
    return lazyList(() => orEmpty(() => listPages(this.pid, range), []));
  }

  /** Merged ranges of pages in [start, end) that are present or swapped: what a dump copies. */
  dumpableRanges(
    start: bigint,
    end: bigint,
    opts?: DumpableOptions,
  ): Promise<AddressRange[]> {
    return this.#sync(() => orEmpty(() => dumpableRanges(this.pid, start, end, opts), []));
  }

  /**
   * The open descriptors in ascending order. Pass one `FileTable` to several processes' `fds()`
   * to get `fileId`s comparable across them.
   */
  fds(opts: { files?: FileTable } = {}): AsyncIterable<Fd> {
    const files = opts.files ?? new FileTable();
    return lazyList(() => {
      const out: Fd[] = [];
      for (const n of listFdNumbers(this.pid)) {
        const fd = readFd(this.pid, n, files);
        if (fd) out.push(fd);
      }
      return out;
    });
  }

  /** Reads `length` bytes at `addr`; throws when any of them cannot be read. */
  read(addr: bigint, length: number): Promise<Uint8Array> {
    return this.#sync(() => readMemory(this.pid, addr, length));
  }

  /**
   * Reads `buf.length` bytes at `addr` into `buf` without allocating; returns the bytes read
   * (short where the range runs into unmapped memory). For big copies into a reused buffer.
   */
  readInto(addr: bigint, buf: Uint8Array): Promise<number> {
    return this.#sync(() => readMemoryInto(this.pid, addr, buf));
  }

  /** Writes `bytes` at `addr`, read-only mappings included (through /proc/PID/mem). */
  write(addr: bigint, bytes: Uint8Array): Promise<void> {
    return this.#sync(() => writeMemory(this.pid, addr, bytes));
  }

  #status(): Map<string, string> {
    return readStatus(this.pid);
  }

  // Runs a synchronous reader, turning its throw into a rejected promise.
  #sync<T>(body: () => T): Promise<T> {
    try {
      return Promise.resolve(body());
    } catch (err) {
      return Promise.reject(err);
    }
  }
}

function ids(line: string | undefined): Ids {
  const [real, effective, saved, fs] = (line ?? "").split(/\s+/).map(Number);
  return { real, effective, saved, fs };
}

function listPids(): number[] {
  const out: number[] = [];
  for (const e of Deno.readDirSync("/proc")) {
    const c = e.name.charCodeAt(0);
    if (c >= 48 && c <= 57) out.push(Number(e.name));
  }
  return out.sort((a, b) => a - b);
}

/** Every process in /proc, in pid order; one that exits before it is opened is skipped. */
export async function* processes(): AsyncIterable<Process> {
  for (const pid of listPids()) {
    try {
      yield await Process.open(pid);
    } catch (err) {
      if (!(err instanceof NoSuchProcess)) throw err;
    }
  }
}
