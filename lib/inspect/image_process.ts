/**
 * The processes of a checkpoint image as objects with the interface of a live `Process`
 * (`ProcessView`): what a script asks of a pid it can ask of an image directory. Page data is
 * read a part at a time where asked (`ImageMemory`), never loaded whole.
 */
import { major, minor, PROCMAP_VMA, RLIMIT, sigBit } from "../../ffi/mod.ts";
import { ImageError, NoSuchProcess, Unsupported } from "../errors.ts";
import { ImageReader } from "../image/reader.ts";
import {
  type Credentials,
  type FileEntry,
  type MappingEntry,
  PROCESS_META,
  type ProcessEntry,
  processMetaName,
} from "../image/schema.ts";
import { type FdKind, isTtyMajor } from "./fds.ts";
import { ImageMemory, type MappedArea } from "./image_memory.ts";
import { Mapping } from "./mappings.ts";
import { type AddressRange, appendRange, type PageRegion, USER_SPACE_END } from "./pages.ts";
import { lazyList } from "./process.ts";
import { splitNul } from "./procfs.ts";
import type {
  Capabilities,
  FdView,
  Ids,
  ProcessView,
  Rlimit,
  RlimitName,
  SignalMasks,
  ThreadView,
} from "./view.ts";

const memories = new WeakMap<ImageProcess, ImageMemory>();

/** The memory index of a process of an image (for the SDK's own readers: search, diff). */
export function memoryOf(p: ImageProcess): ImageMemory {
  return memories.get(p)!;
}

/** Options of `ProcessImage.open`. */
export interface ProcessImageOptions {
  /** Check every checksum of the image (and its parents) first: reads it all once. */
  verify?: boolean;
}

/**
 * An image opened to look at its processes. Opening reads the metadata (small) and checks it;
 * page data is read only where memory is asked for, and not checked against its checksums then
 * (they cover whole extents, up to 32 MiB): open with `verify` to check every byte first. Close
 * it (or `using`) to close the page files.
 *
 * ```ts
 * using image = await ProcessImage.open("/tmp/img");
 * const p = image.root;
 * console.log(await p.comm(), (await p.read(0x401000n, 16)));
 * ```
 */
export class ProcessImage implements Disposable {
  #byPid = new Map<number, ImageProcess>();

  private constructor(
    /** The open image (with its parents). */
    readonly reader: ImageReader,
    entries: ProcessEntry[],
  ) {
    // Parents first (the root's tree is in that order), so a child finds its parent's memory.
    for (const e of entries) {
      const parent = this.#byPid.get(e.ppid);
      this.#byPid.set(e.pid, new ImageProcess(this, e, parent && memoryOf(parent)));
    }
  }

  /** Opens the image in `dir` (an `ImageError` names what is wrong with it). */
  static async open(dir: string, opts: ProcessImageOptions = {}): Promise<ProcessImage> {
    const reader = await ImageReader.open(dir, { verify: opts.verify, checkArch: false });
    try {
      if (!reader.hasMeta(PROCESS_META)) {
        throw new ImageError(`${PROCESS_META}.cbor: the image at ${dir} holds no process`);
      }
      const root = await reader.readMeta<ProcessEntry>(PROCESS_META);
      const entries = [root];
      for (const t of root.tree ?? []) {
        entries.push(await reader.readMeta<ProcessEntry>(processMetaName(t.pid)));
      }
      return new ProcessImage(reader, entries);
    } catch (err) {
      reader.close();
      throw err;
    }
  }

  /** The image directory. */
  get dir(): string {
    return this.reader.dir;
  }

  /** The process the dump was asked for. */
  get root(): ImageProcess {
    return this.#byPid.values().next().value!;
  }

  /** Every process of the image, parents before their children (the root first). */
  processes(): ImageProcess[] {
    return [...this.#byPid.values()];
  }

  /** The process `pid` of the image; `NoSuchProcess` naming the ones it has otherwise. */
  process(pid: number): ImageProcess {
    const p = this.#byPid.get(pid);
    if (!p) {
      throw new NoSuchProcess(
        pid,
        `not in the image ${this.dir} (it holds ${[...this.#byPid.keys()].join(", ")})`,
      );
    }
    return p;
  }

  /** Closes the page files. */
  close(): void {
    this.reader.close();
  }

  /** Same as `close()`, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/** A thread of an image: its registers, masks and signals as dumped. */
export interface ImageThread extends ThreadView {
  /** Every register of `user_regs_struct`. */
  regs: Record<string, bigint>;
  /** Blocked signals. */
  sigmask: bigint;
  /** Signals pending for this thread (numbers, in order). */
  pending: number[];
}

/**
 * A process of an image, with the interface of a live `Process` (`ProcessView`) and its
 * `entry`, the image's record of it. Values are those of the moment it was dumped.
 */
export class ImageProcess implements ProcessView {
  /** The memory of the process, read from the page files where asked. */
  readonly #memory: ImageMemory;

  /** Made by `ProcessImage`. */
  constructor(
    /** The image it belongs to. */
    readonly image: ProcessImage,
    /** The image's entry of the process (lib/image/schema.ts). */
    readonly entry: ProcessEntry,
    parentMemory?: ImageMemory,
  ) {
    this.#memory = new ImageMemory(image.reader, entry, parentMemory);
    memories.set(this, this.#memory);
  }

  /** The process id at dump (a restore gives it again). */
  get pid(): number {
    return this.entry.pid;
  }

  /** The parent's pid at dump. */
  ppid(): Promise<number> {
    return Promise.resolve(this.entry.ppid);
  }

  /** The process group id. */
  pgid(): Promise<number> {
    return Promise.resolve(this.entry.pgid);
  }

  /** The session id. */
  sid(): Promise<number> {
    return Promise.resolve(this.entry.sid);
  }

  /** The command name. */
  comm(): Promise<string> {
    return Promise.resolve(this.entry.comm);
  }

  /** The arguments. */
  cmdline(): Promise<string[]> {
    return Promise.resolve([...this.entry.cmdline]);
  }

  /** The environment, read from the process's memory where the kernel placed it. */
  async environ(): Promise<string[]> {
    const { envStart, envEnd } = this.entry.mm;
    if (envEnd <= envStart) return [];
    return splitNul(await this.read(envStart, Number(envEnd - envStart)));
  }

  /** The executable's path, empty when none was recorded. */
  exe(): Promise<string> {
    return Promise.resolve(this.entry.exe?.path ?? "");
  }

  /** The working directory. */
  cwd(): Promise<string> {
    return Promise.resolve(this.entry.cwd);
  }

  /** The root directory. */
  root(): Promise<string> {
    return Promise.resolve(this.entry.root);
  }

  /** The file mode creation mask. */
  umask(): Promise<number> {
    return Promise.resolve(this.entry.umask);
  }

  /** The personality flags. */
  personality(): Promise<number> {
    return Promise.resolve(this.entry.personality);
  }

  /** User ids (of the main thread). */
  uids(): Promise<Ids> {
    return Promise.resolve(idsOf(this.entry.creds.uids));
  }

  /** Group ids (of the main thread). */
  gids(): Promise<Ids> {
    return Promise.resolve(idsOf(this.entry.creds.gids));
  }

  /** Supplementary groups. */
  groups(): Promise<number[]> {
    return Promise.resolve([...this.entry.creds.groups]);
  }

  /** Capability sets (of the main thread). */
  capabilities(): Promise<Capabilities> {
    return Promise.resolve(capabilitiesOf(this.entry.creds));
  }

  /** Pending, blocked, ignored and caught signals, as /proc/PID/status would have shown them. */
  signals(): Promise<SignalMasks> {
    const e = this.entry;
    const main = e.threads[0];
    let ignored = 0n, caught = 0n;
    for (const a of e.sigactions) {
      if (a.handler === 1n) ignored |= sigBit(a.signo);
      else if (a.handler > 1n) caught |= sigBit(a.signo);
    }
    return Promise.resolve({
      pending: maskOf((main?.pending ?? []).map((s) => s.signo)),
      shdPending: maskOf(e.sharedPending.map((s) => s.signo)),
      blocked: main?.sigmask ?? 0n,
      ignored,
      caught,
    });
  }

  /** Resource limits as the process saw them. */
  rlimits(): Promise<Record<RlimitName, Rlimit>> {
    const names = Object.fromEntries(Object.entries(RLIMIT).map(([k, v]) => [v, k]));
    const out = {} as Record<RlimitName, Rlimit>;
    for (const r of this.entry.rlimits) {
      const name = names[r.resource] as RlimitName | undefined;
      if (name) out[name] = { soft: r.soft, hard: r.hard };
    }
    return Promise.resolve(out);
  }

  /**
   * Namespace inode numbers by name, as /proc/PID/ns showed them at dump (a restored process is
   * in the restorer's namespaces, or a new pid namespace). `Unsupported` for an image written
   * before tardigrade recorded them.
   */
  namespaces(): Promise<Record<string, bigint>> {
    const ns = this.entry.namespaceInodes;
    if (!ns) {
      return Promise.reject(
        new Unsupported(
          `the image ${this.image.dir} was written by a tardigrade that did not record namespaces`,
        ),
      );
    }
    return Promise.resolve(Object.fromEntries(ns.map((n) => [n.name, n.inode])));
  }

  /** The ELF auxiliary vector as [type, value] pairs, without the final AT_NULL. */
  auxv(): Promise<[bigint, bigint][]> {
    const words = this.entry.mm.auxv;
    const out: [bigint, bigint][] = [];
    for (let i = 0; i + 1 < words.length && words[i] !== 0n; i += 2) {
      out.push([words[i], words[i + 1]]);
    }
    return Promise.resolve(out);
  }

  /** The children dumped with it, in pid order. */
  children(): Promise<ImageProcess[]> {
    return Promise.resolve(
      this.image.processes().filter((p) => p.entry.ppid === this.pid && p !== this)
        .sort((a, b) => a.pid - b.pid),
    );
  }

  /** The threads with their registers, the main one first. */
  threads(): AsyncIterable<ImageThread> {
    return lazyList(() =>
      this.entry.threads.map((t) => ({
        tid: t.tid,
        name: t.name,
        regs: t.regs,
        sigmask: t.sigmask,
        pending: t.pending.map((s) => s.signo),
      }))
    );
  }

  /** The mappings in address order, the vdso and vvar included, as /proc/PID/maps listed them. */
  mappings(): AsyncIterable<Mapping> {
    return lazyList(() => this.#memory.areas.map((a) => this.#mapping(a)));
  }

  /** The mapping that covers `addr`, or null. */
  findMapping(addr: bigint): Promise<Mapping | null> {
    const a = this.#memory.areaAt(addr);
    return Promise.resolve(a ? this.#mapping(a) : null);
  }

  /**
   * The pages the image holds over `range` (default: all user space), as present and written
   * runs, and guard pages; pages it does not hold are not listed.
   */
  pages(range: Partial<AddressRange> = {}): AsyncIterable<PageRegion> {
    const start = range.start ?? 0n, end = range.end ?? USER_SPACE_END;
    return lazyList(() => {
      const out: PageRegion[] = [];
      for (const area of this.#memory.areas) {
        if (area.end <= start || area.start >= end) continue;
        const file = area.entry !== undefined && area.entry.source.type !== "anonymous";
        const stored: AddressRange[] = [];
        for (const p of area.pieces) {
          const lo = p.start > start ? p.start : start, hi = p.end < end ? p.end : end;
          if (hi > lo) appendRange(stored, lo, hi);
        }
        for (const r of stored) out.push(region(r, { present: true, written: true, file }));
        for (const g of area.entry?.guards ?? []) {
          const lo = g.start > start ? g.start : start, hi = g.end < end ? g.end : end;
          if (hi > lo) out.push(region({ start: lo, end: hi }, { guard: true }));
        }
      }
      return out.sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0));
    });
  }

  /** The descriptors in ascending order; `fileId` is the image's file id (shared ones equal). */
  fds(): AsyncIterable<FdView> {
    return lazyList(() => {
      const files = new Map(this.entry.files.map((f) => [f.id, f]));
      return [...this.entry.fds].sort((a, b) => a.fd - b.fd).map((d) => {
        const f = files.get(d.file);
        return {
          fd: d.fd,
          kind: f ? fdKindOf(f) : "other",
          target: f ? targetOf(f) : "",
          flags: f?.flags ?? 0,
          position: typeof f?.position === "number" || typeof f?.position === "bigint"
            ? BigInt(f.position)
            : 0n,
          closeOnExec: d.closeOnExec,
          fileId: d.file,
        };
      });
    });
  }

  /** Reads `length` bytes at `addr`; throws, naming the address and why, where it cannot. */
  read(addr: bigint, length: number): Promise<Uint8Array> {
    const buf = new Uint8Array(length);
    try {
      const { stop } = this.#memory.readInto(addr, buf);
      if (stop) {
        throw new Unsupported(
          `cannot read 0x${stop.addr.toString(16)} of process ${this.pid} in the image ` +
            `${this.image.dir}: ${stop.why}`,
        );
      }
      return Promise.resolve(buf);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /** Reads into `buf` from `addr`; returns the bytes read (short where memory cannot be read). */
  readInto(addr: bigint, buf: Uint8Array): Promise<number> {
    try {
      return Promise.resolve(this.#memory.readInto(addr, buf).read);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  #mapping(a: MappedArea): Mapping {
    const special = a.entry ? undefined : specialName(this.entry, a.start);
    return new ImageMapping(this.pid, a, special);
  }
}

/** A mapping of an image: no file of a live process behind it to open. */
class ImageMapping extends Mapping {
  constructor(pid: number, a: MappedArea, special?: string) {
    const m: MappingEntry | undefined = a.entry;
    const src = m?.source;
    const [maj, min] = src?.type === "file" ? parseDevice(src.dev) : [0, 0];
    super(
      pid,
      a.start,
      a.end,
      m
        ? m.prot | (m.shared ? PROCMAP_VMA.SHARED : 0)
        : PROCMAP_VMA.READ | (special === "[vdso]" ? PROCMAP_VMA.EXEC : 0),
      m?.offset ?? 0n,
      maj,
      min,
      src?.type === "file" ? BigInt(src.inode) : 0n,
      m ? m.name : special ?? null,
    );
  }

  /** An image's mapping has no /proc entry. */
  override get mapFile(): string {
    throw new Unsupported(`a mapping in an image has no /proc/PID/map_files entry`);
  }

  /** An image's mapping has no file to open. */
  override open(): number {
    throw new Unsupported(`a mapping in an image has no file to open`);
  }
}

function specialName(e: ProcessEntry, start: bigint): string {
  if (e.special.vdso?.start === start) return "[vdso]";
  if (e.special.vvarVclock?.start === start) return "[vvar_vclock]";
  return "[vvar]";
}

/** `fe:01` (as maps writes it) or a decimal dev_t → [major, minor]. */
function parseDevice(dev: string | number | bigint): [number, number] {
  if (typeof dev === "string") {
    const m = dev.match(/^([0-9a-f]+):([0-9a-f]+)$/i);
    return m ? [parseInt(m[1], 16), parseInt(m[2], 16)] : [0, 0];
  }
  return [major(dev), minor(dev)];
}

function region(r: AddressRange, set: Partial<PageRegion>): PageRegion {
  return {
    start: r.start,
    end: r.end,
    present: false,
    written: false,
    swapped: false,
    file: false,
    zero: false,
    huge: false,
    guard: false,
    ...set,
  };
}

/** What the inspection of a live process would call a descriptor of this kind. */
function fdKindOf(f: FileEntry): FdKind {
  switch (f.kind) {
    case "regular":
      return f.directory ? "directory" : f.symlink ? "symlink" : "file";
    case "device":
      return f.tty || isTtyMajor(major(BigInt(f.rdev as number))) ? "tty" : "device";
    case "unix-pair":
    case "unix-pending":
    case "tcp-stream":
    case "tcp-pending":
      return "socket";
    case "external":
      return (typeof f.was === "string" ? f.was : "other") as FdKind;
    default:
      return f.kind as FdKind;
  }
}

const ANON_TARGETS: Record<string, string> = {
  eventfd: "anon_inode:[eventfd]",
  epoll: "anon_inode:[eventpoll]",
  signalfd: "anon_inode:[signalfd]",
  timerfd: "anon_inode:[timerfd]",
  inotify: "anon_inode:inotify",
  fanotify: "anon_inode:[fanotify]",
  pidfd: "anon_inode:[pidfd]",
};

/** What readlink of /proc/PID/fd/N showed, as far as the entry tells. */
function targetOf(f: FileEntry): string {
  if (typeof f.path === "string") return f.removed ? `${f.path} (deleted)` : f.path;
  switch (f.kind) {
    case "pipe":
      return `pipe:[${f.pipe}]`;
    case "socket":
    case "unix-pair":
    case "unix-pending":
    case "tcp-stream":
    case "tcp-pending":
      return `socket:[${f.inode}]`;
    case "memfd":
      return String(f.name);
    case "external":
      return String(f.key);
  }
  return ANON_TARGETS[f.kind] ?? f.kind;
}

function idsOf(v: number[]): Ids {
  return { real: v[0], effective: v[1], saved: v[2], fs: v[3] };
}

function capabilitiesOf(c: Credentials): Capabilities {
  return {
    inheritable: c.capInh,
    permitted: c.capPrm,
    effective: c.capEff,
    bounding: c.capBnd,
    ambient: c.capAmb,
  };
}

function maskOf(signals: number[]): bigint {
  return signals.reduce((m, s) => m | sigBit(s), 0n);
}
