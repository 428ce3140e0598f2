/**
 * The page server of a lazy restore: it holds the userfaultfd of a restored process (and of every
 * child it forks while pages are missing) and fills the missing pages from the image. A fault is
 * served first, from the faulting page on (`UFFDIO_COPY`), or with the zero page where the image
 * has nothing (`UFFDIO_ZEROPAGE`); between faults the rest is filled in address order, the most
 * recently written pages first: those of the image itself before those an incremental image
 * takes from its parents (not written since the parent was dumped), nearest parent first. It
 * follows the process's own changes to its memory: a fork gives the child a userfaultfd of its
 * own and the parent's missing pages, mremap moves them, madvise(DONTNEED) and munmap drop them.
 * A process is done once every page is in or it is gone; the server ends when all are.
 *
 * An image it cannot read (a damaged or vanished page file) must not leave a process waiting
 * forever on a fault, nor let it run on with zeros: the server logs why and kills the restored
 * process and everything it forked.
 */
import {
  close,
  decodeUffdMessage,
  Errno,
  kill,
  O,
  open,
  POLL,
  pollFds,
  read,
  SIG,
  SyscallError,
  UFFD,
  uffdCopy,
  uffdWake,
  uffdZeropage,
  write,
} from "../../ffi/mod.ts";
import type { ImageReader, PageExtent } from "../image/mod.ts";
import { childrenOf } from "../inspect/procfs.ts";
import { breather, STAGING_SIZE } from "./page_data.ts";
import { checksum } from "../image/checksum.ts";
import { PendingPages, type PendingRun } from "./pending_pages.ts";

const PAGE = 4096;
const hex = (n: number) => `0x${n.toString(16)}`;
/** Bytes filled for one fault, from the faulting page on: a reader in address order faults once
 * a chunk, not once a page. */
const FAULT_CHUNK = 1 << 20;
/** Bytes filled between two looks at the faults. */
const BACKGROUND_CHUNK = 2 << 20;
/** Extents kept read (and checked) for the faults and the fill that follow. */
const CACHED_EXTENTS = 4;

/** The largest extent a dump writes (half its staging buffer). */
const EXTENT_SIZE = STAGING_SIZE / 2;

/** Extent buffers made and touched ahead (`warmUpPageServer`), taken by the first reads. */
const spareBuffers: Uint8Array[] = [];

/**
 * Readies a page server process before it is given anything to serve (it starts long before):
 * the first fault would otherwise wait some 80 ms on the loading of the CRC-32 it checks
 * extents with (`node:zlib`) and on the first touch of fresh buffers.
 */
export function warmUpPageServer(): void {
  // Two: one for the faults, one for the fill between them (the others are made as needed).
  for (let i = 0; i < 2; i++) {
    const buf = new Uint8Array(EXTENT_SIZE);
    buf.fill(i + 1); // its pages are in
    spareBuffers.push(buf);
  }
  checksum(spareBuffers[0]);
}

/** One process the server fills. */
interface Served {
  uffd: number;
  pending: PendingPages;
  /** What the log calls it. */
  name: string;
  /** The image (0: this one, 1: its parent …) whose pages the background fill is at. */
  age: number;
  /** Done with: its userfaultfd is closed (its number may already be another's). */
  closed?: boolean;
}

/** The outcome of filling pieces into one process. */
type Filled = "done" | "again" | "gone";

/** Counts a server reports when it ends. */
export interface PageServerStats {
  /** Faults served. */
  faults: number;
  /** Bytes filled with UFFDIO_COPY. */
  bytes: number;
  /** Processes served (the restored one and the children it forked while pages were missing). */
  processes: number;
  /** Bytes never filled because their process was gone or had dropped them. */
  dropped: number;
}

/** One restored process a page server starts with. */
export interface ServedProcess {
  /** Its pid. */
  pid: number;
  /** Its userfaultfd (armed by armLazyPages), held by the server. */
  uffd: number;
  /** Its missing pages, whose `extent` indexes `extents`. */
  pending: PendingRun[];
  /** The extents of its image entry. */
  extents: PageExtent[];
}

/**
 * Serves the missing pages of the restored processes of a tree (and of the children they fork)
 * from an image.
 */
export class PageServer {
  readonly #served: Served[] = [];
  readonly #cache = new Map<number, Uint8Array>();
  /** Faults to serve again once the events that held them up are read. */
  #retry: { p: Served; addr: number }[] = [];
  #forks = 0;
  /** The highest age of an extent (see `#age`). */
  readonly #oldest: number;
  readonly stats: PageServerStats = { faults: 0, bytes: 0, processes: 0, dropped: 0 };
  /** The extents of every process's entry, one after the other (pending runs index them). */
  readonly #extents: PageExtent[] = [];
  /** The restored processes, the root of the tree first. */
  readonly #roots: number[];

  /**
   * Serves `processes` (the root of the tree first) from the image `reader` reads; `log` is
   * told what happens.
   */
  constructor(
    processes: ServedProcess[],
    private readonly reader: ImageReader,
    private readonly log: (line: string) => void,
    /**
     * Whether the bytes of an extent are in the image yet (post-copy: they come after the
     * process runs); a fault on one waits until they are. It throws if they never will be.
     */
    private readonly ready: (extent: PageExtent) => boolean = () => true,
  ) {
    for (const p of processes) {
      // Each entry has extents of its own: their indexes follow those of the entries before.
      const base = this.#extents.length;
      this.#extents.push(...p.extents);
      const pending = p.pending.map((r) => ({ ...r, extent: r.extent + base }));
      this.#served.push({
        uffd: p.uffd,
        pending: new PendingPages(pending),
        name: `process ${p.pid}`,
        age: 0,
      });
    }
    this.stats.processes = processes.length;
    this.#roots = processes.map((p) => p.pid);
    this.#oldest = this.#extents.reduce((n, e) => Math.max(n, e.image ?? 0), 0);
  }

  /**
   * Serves until every page is in or every process is gone. Throws (after killing the restored
   * process and its descendants) when the image cannot be read.
   */
  async run(): Promise<PageServerStats> {
    const breathe = breather(); // signal handlers run now and then
    try {
      for (;;) {
        this.#finishDone();
        if (!this.#served.length) return this.stats;
        this.#readEvents();
        this.#serveRetries();
        if (this.#fillSome()) await breathe();
        else await new Promise((r) => setTimeout(r, 1)); // waiting for bytes still on their way
      }
    } catch (err) {
      this.#killAll(err instanceof Error ? err.message : String(err));
      throw err;
    } finally {
      for (const p of this.#served) close(p.uffd);
      this.#served.length = 0;
    }
  }

  /** Closes the userfaultfd of every process whose pages are all in: it runs on alone. */
  #finishDone(): void {
    for (const p of [...this.#served]) {
      if (!p.pending.empty || this.#retry.some((r) => r.p === p)) continue;
      this.#drop(p);
    }
  }

  #drop(p: Served): void {
    p.closed = true;
    close(p.uffd);
    this.#served.splice(this.#served.indexOf(p), 1);
    this.#retry = this.#retry.filter((r) => r.p !== p);
  }

  /** Reads every message waiting on any userfaultfd and acts on it. */
  #readEvents(): void {
    const ready = pollFds(this.#served.map((p) => p.uffd), POLL.IN, 0);
    const buf = new Uint8Array(64 * UFFD.MSG_SIZE);
    for (const [i, p] of [...this.#served].entries()) {
      if (!ready[i]) continue;
      while (!p.closed) {
        let n: number;
        try {
          n = read(p.uffd, buf);
        } catch (err) {
          if (err instanceof SyscallError && err.errno === Errno.EAGAIN) break;
          throw err;
        }
        for (let at = 0; at + UFFD.MSG_SIZE <= n && !p.closed; at += UFFD.MSG_SIZE) {
          this.#onMessage(p, buf, at);
        }
        if (n < buf.length) break;
      }
    }
  }

  #onMessage(p: Served, buf: Uint8Array, at: number): void {
    const msg = decodeUffdMessage(buf, at);
    if ("address" in msg) {
      this.stats.faults++;
      this.#serveFault(p, Number(msg.address));
    } else if ("ufd" in msg) {
      const name = `child ${++this.#forks} of ${p.name}`;
      const pending = p.pending.clone();
      this.#served.push({ uffd: msg.ufd, pending, name, age: p.age });
      this.stats.processes++;
      this.log(
        `${p.name} forked (${name}) with ${(pending.bytes / 1048576).toFixed(1)} MiB missing`,
      );
    } else if ("from" in msg) {
      p.pending.move(Number(msg.from), Number(msg.to), Number(msg.len));
    } else if ("start" in msg) {
      const gone = p.pending.take(Number(msg.start), Number(msg.end));
      this.stats.dropped += gone.reduce((n, r) => n + r.end - r.start, 0);
    }
  }

  /** A thread waits on the page at `addr`: its contents (and those after it), or zeros. */
  #serveFault(p: Served, addr: number): void {
    const page = addr - (addr % PAGE);
    const run = p.pending.find(page);
    if (run) {
      const pieces = p.pending.take(page, Math.min(run.end, page + FAULT_CHUNK));
      const got = this.#fill(p, pieces);
      if (got === "again") this.#retry.push({ p, addr });
      else if (got === "gone") this.#drop(p);
      else this.#wake(p, page); // filled, or not fillable (no longer mapped): let it retry
      return;
    }
    // Not in the image (or discarded since): it reads as zeros. There already, or no longer
    // registered: the thread is woken to fault again.
    const z = uffdZeropage(p.uffd, BigInt(page), BigInt(PAGE));
    if (z.errno === Errno.EAGAIN) this.#retry.push({ p, addr });
    else if (z.errno === Errno.ESRCH) this.#drop(p);
    else if (z.errno === Errno.EEXIST || z.errno === Errno.ENOENT) this.#wake(p, page);
    else if (z.errno) throw new SyscallError("ioctl(UFFDIO_ZEROPAGE)", [hex(page)], z.errno);
  }

  #wake(p: Served, page: number): void {
    try {
      uffdWake(p.uffd, BigInt(page), BigInt(PAGE));
    } catch { /* the range is gone: nothing waits on it */ }
  }

  #serveRetries(): void {
    const retry = this.#retry;
    this.#retry = [];
    for (const { p, addr } of retry) {
      if (!p.closed) this.#serveFault(p, addr);
    }
  }

  /**
   * Fills the next piece of one process, in address order (round robin over processes); false
   * when every piece left waits for bytes not in the image yet.
   */
  #fillSome(): boolean {
    const isIn = (r: PendingRun) => this.ready(this.#extents[r.extent]);
    const p = this.#served.find((s) => s.pending.first(isIn));
    if (!p) return !this.#served.some((s) => !s.pending.empty);
    this.#served.push(...this.#served.splice(this.#served.indexOf(p), 1));
    let first: PendingRun | undefined;
    // Pages only ever leave an age (a moved or put back piece keeps its own): count up.
    while (
      !(first = p.pending.first((r) => this.#age(r) === p.age && isIn(r))) && p.age < this.#oldest
    ) {
      p.age++;
    }
    first ??= p.pending.first(isIn)!;
    const pieces = p.pending.take(first.start, Math.min(first.end, first.start + BACKGROUND_CHUNK));
    if (this.#fill(p, pieces) === "gone") this.#drop(p);
    return true;
  }

  /**
   * Copies `pieces` (taken out of `p.pending`) into the process. What is not copied because the
   * address space is changing (EAGAIN: events to read first) is put back.
   */
  #fill(p: Served, pieces: PendingRun[]): Filled {
    for (const [k, piece] of pieces.entries()) {
      if (!this.ready(this.#extents[piece.extent])) {
        p.pending.putBack(pieces.slice(k));
        return "again";
      }
      const data = this.#extent(piece.extent);
      let at = 0;
      const len = piece.end - piece.start;
      while (at < len) {
        const src = data.subarray(piece.offset + at, piece.offset + len);
        const r = uffdCopy(p.uffd, BigInt(piece.start + at), src);
        at += r.bytes;
        this.stats.bytes += r.bytes;
        if (!r.errno) continue;
        if (r.errno === Errno.EAGAIN) {
          p.pending.putBack([
            { ...piece, start: piece.start + at, offset: piece.offset + at },
            ...pieces.slice(k + 1),
          ]);
          return "again";
        }
        if (r.errno === Errno.ESRCH) return "gone";
        if (r.errno === Errno.EEXIST) {
          at += PAGE; // the page is there already (nothing fills a pending page but us)
          continue;
        }
        if (r.errno !== Errno.ENOENT) {
          // ENOMEM and the like: the page would read as zeros if it were let go.
          throw new SyscallError("ioctl(UFFDIO_COPY)", [hex(piece.start + at)], r.errno);
        }
        // No longer a registered mapping there (unmapped meanwhile: events will tell).
        this.stats.dropped += len - at;
        break;
      }
    }
    return "done";
  }

  /** How many images up from the restored one the bytes of `r` are (0: in it). */
  #age(r: PendingRun): number {
    return this.#extents[r.extent].image ?? 0;
  }

  /** The bytes of extent `index`, read and checked once while cached. */
  #extent(index: number): Uint8Array {
    const cached = this.#cache.get(index);
    if (cached) {
      this.#cache.delete(index); // most recently used last
      this.#cache.set(index, cached);
      return cached;
    }
    const extent = this.#extents[index];
    let buf: Uint8Array | undefined;
    if (this.#cache.size >= CACHED_EXTENTS) {
      const [oldest, data] = this.#cache.entries().next().value!;
      this.#cache.delete(oldest);
      buf = data;
    }
    if (!buf && spareBuffers.length) buf = spareBuffers.pop();
    if (!buf || buf.buffer.byteLength < extent.length) {
      buf = new Uint8Array(Math.max(extent.length, buf?.buffer.byteLength ?? 0));
    }
    const data = this.reader.readExtent(extent, new Uint8Array(buf.buffer, 0, extent.length));
    this.#cache.set(index, data);
    return data;
  }

  /**
   * Kills the restored processes and every process below them, telling the root why on its
   * stderr first (where its own output goes, a terminal or a log: as a shell says "Killed").
   */
  #killAll(why: string): void {
    const all = new Set<number>();
    const walk = (pid: number) => {
      all.add(pid);
      for (const c of childrenOf(pid)) walk(c);
    };
    for (const pid of this.#roots) walk(pid);
    try {
      // Appended, never blocking: a full pipe or a file it writes at an offset stays as it is.
      const fd = open(`/proc/${this.#roots[0]}/fd/2`, O.WRONLY | O.APPEND | O.NONBLOCK | O.NOCTTY);
      try {
        write(fd, new TextEncoder().encode(`tardigrade: lazy restore: ${why}: killed\n`));
      } finally {
        close(fd);
      }
    } catch { /* no stderr, or a socket: the log says it */ }
    for (const pid of all) {
      try {
        kill(pid, SIG.SIGKILL);
      } catch { /* gone */ }
    }
    this.log(`killed ${[...all].join(", ")}`);
  }
}
