/**
 * What an image holds, summarized per process: threads, mappings, descriptors, totals. What
 * `tardigrade inspect` and the REPL's `inspect()` show.
 */
import type { FileEntry, IdRange, NamespacesEntry, ProcessEntry } from "../image/schema.ts";
import { type ImageManifest, ImageReader } from "../image/mod.ts";
import { hex } from "./format.ts";

/** What to show for an open file that has no path: a pipe's end and inode, a socket's kind. */
function describe(f: FileEntry | undefined): string | null {
  if (!f) return null;
  if (f.kind === "pipe") return `pipe:[${f.pipe}] ${f.end} end`;
  // Sockets (listening, connected pairs, TCP connections) describe themselves.
  if (typeof f.description === "string") return f.description;
  if (f.kind === "socket") return `socket ${f.state ?? ""}`.trim();
  return null;
}

/** A summary of one process of an image (the `processes[]` items of `inspect --json`). */
export interface InspectedProcess {
  /** Process id (restored as it was). */
  pid: number;
  /** Parent pid at dump. */
  ppid: number;
  /** Command name. */
  comm: string;
  /** Arguments. */
  cmdline: string[];
  /** The executable, null when none was recorded. */
  exe: string | null;
  /** Working directory. */
  cwd: string;
  /**
   * Its controlling terminal, absent when it had none: `size` is "COLSxROWS", `modes` the main
   * local modes as `stty` spells them ("-icanon -echo" for a raw-mode editor).
   */
  terminal?: { path: string | null; foreground: boolean; size?: string; modes?: string };
  /**
   * The root of a container's image: the namespaces a restore makes anew, each kind with what
   * it holds ("uts tardibox (tardinet)", "mnt +proc on /proc").
   */
  namespaces?: string[];
  /** Children that had exited and were not waited for: "exit N" or "signal N". */
  zombies: { pid: number; comm: string; ended: string }[];
  /** Threads with their instruction and stack pointers (every register with `regs`). */
  threads: { tid: number; name: string; rip: string; rsp: string; regs?: Record<string, string> }[];
  /** Mappings with their page data in this image. */
  mappings: {
    start: string;
    end: string;
    size: number;
    perms: string;
    kind: string;
    name: string | null;
    source: string;
    pageBytes: number;
  }[];
  /** Descriptors and what each is. */
  fds: { fd: number; file: number; kind: string; path: string | null; closeOnExec: boolean }[];
  /** Counts and byte totals. */
  totals: {
    threads: number;
    mappings: number;
    mappedBytes: number;
    /** Page data in this image's own page files. */
    pageBytes: number;
    /** Incremental images: page data its runs take from the parent chain. */
    parentPageBytes?: number;
    fds: number;
  };
}

const PROT_NAMES = ["r", "w", "x"];
/** `c_lflag` bits worth showing: what makes a terminal raw or cooked. */
const LFLAG_NAMES: [string, number][] = [["isig", 0o1], ["icanon", 0o2], ["echo", 0o10]];

function terminalOf(e: ProcessEntry): InspectedProcess["terminal"] {
  const t = e.tty;
  if (!t) return undefined;
  return {
    path: t.path,
    foreground: t.foreground,
    ...(t.winsize ? { size: `${t.winsize.cols}x${t.winsize.rows}` } : {}),
    ...(t.modes
      ? { modes: LFLAG_NAMES.map(([n, bit]) => (t.modes!.lflag & bit ? n : `-${n}`)).join(" ") }
      : {}),
  };
}

/** Summarizes a process entry; `regs` adds every register of every thread. */
export function summarize(e: ProcessEntry, regs = false): InspectedProcess {
  const files = new Map(e.files.map((f) => [f.id, f]));
  const mappings = e.mappings.map((m) => ({
    start: hex(m.start),
    end: hex(m.end),
    size: Number(m.end - m.start),
    perms: PROT_NAMES.map((c, i) => (m.prot & (1 << i)) ? c : "-").join("") +
      (m.shared ? "s" : "p"),
    kind: m.kind,
    name: m.name,
    source: m.source.type,
    pageBytes: m.pages.reduce((a, r) => a + r.length, 0),
  }));
  const threads = e.threads.map((t) => ({
    tid: t.tid,
    name: t.name,
    rip: hex(t.regs.rip ?? 0n),
    rsp: hex(t.regs.rsp ?? 0n),
    ...(regs
      ? { regs: Object.fromEntries(Object.entries(t.regs).map(([k, v]) => [k, hex(BigInt(v))])) }
      : {}),
  }));
  const fds = e.fds.map((d) => {
    const f = files.get(d.file);
    return {
      fd: d.fd,
      file: d.file,
      kind: f?.kind ?? "?",
      path: typeof f?.path === "string" ? f.path : describe(f),
      closeOnExec: d.closeOnExec,
    };
  });
  return {
    pid: e.pid,
    ppid: e.ppid,
    comm: e.comm,
    cmdline: e.cmdline,
    exe: e.exe?.path ?? null,
    cwd: e.cwd,
    ...(e.tty ? { terminal: terminalOf(e) } : {}),
    ...(e.namespaces ? { namespaces: namespacesOf(e.namespaces) } : {}),
    zombies: (e.zombies ?? []).map((z) => ({
      pid: z.pid,
      comm: z.comm,
      ended: z.status & 0x7f ? `signal ${z.status & 0x7f}` : `exit ${(z.status >> 8) & 0xff}`,
    })),
    threads,
    mappings,
    fds,
    totals: {
      threads: threads.length,
      mappings: mappings.length,
      mappedBytes: mappings.reduce((a, m) => a + m.size, 0),
      pageBytes: e.extents.reduce((a, x) => a + (x.image ? 0 : x.length), 0),
      ...(e.extents.some((x) => x.image) ? { parentPageBytes: inParents(e) } : {}),
      fds: fds.length,
    },
  };
}

/** Each kind of a container's namespaces, with what the image records of it. */
function namespacesOf(ns: NamespacesEntry): string[] {
  const joined = (ns.joined ?? []).map((k) => `${k} joined at restore (--external ${k})`);
  return [...ns.kinds, ...joined].map((k) => {
    if (k === "uts" && ns.uts) return `uts ${ns.uts.hostname} (${ns.uts.domainname})`;
    if (k === "mnt" && ns.mounts?.length) {
      return `mnt ${ns.mounts.map((m) => `+${m.fsType} on ${m.mountPoint}`).join(" ")}`;
    }
    if (k === "ipc" && ns.ipc) {
      const messages = ns.ipc.msg.reduce((n, q) => n + q.messages.length, 0);
      const shm = ns.ipc.shm ?? [];
      const mqueues = ns.ipc.mqueues ?? [];
      const posted = mqueues.reduce((n, q) => n + q.messages.length, 0);
      return `ipc ${ns.ipc.msg.length} message queues (${messages} messages), ` +
        `${ns.ipc.sem.length} semaphore sets` +
        (shm.length ? `, ${shm.length} shared memory segments` : "") +
        (mqueues.length
          ? `, POSIX message queues ${mqueues.map((q) => `/${q.name}`).join(" ")} ` +
            `(${posted} messages)`
          : "");
    }
    if (k === "net" && ns.net) {
      const links = ns.net.links.map((l) =>
        l.peer
          ? `${l.name} (veth to ${l.peer.name}${l.peer.master ? ` on ${l.peer.master}` : ""})`
          : l.name
      );
      const firewall = ns.net.firewall
        ? `, firewall of ${ns.net.firewall.ruleset.match(/^table /gm)?.length ?? 0} tables`
        : "";
      return `net ${links.join(", ")}, ${ns.net.routes.length} routes${firewall}`;
    }
    if (k === "time" && ns.time) {
      const s = (offset: bigint) => `${offset < 0n ? "" : "+"}${Number(offset) / 1e9} s`;
      return `time ${s(BigInt(ns.time.monotonic))} monotonic, ${
        s(BigInt(ns.time.boottime))
      } boottime`;
    }
    if (k === "user" && ns.user) {
      const map = (m: IdRange[]) => m.map((r) => `${r.inside}:${r.outside}:${r.count}`).join(",");
      return `user uids ${map(ns.user.uidMap)} gids ${map(ns.user.gidMap)} ` +
        `(setgroups ${ns.user.setgroups})`;
    }
    return k;
  });
}

/** Bytes of the runs of `e` whose extents are in a parent image. */
function inParents(e: ProcessEntry): number {
  let n = 0;
  for (const owner of [...e.mappings, ...e.objects]) {
    for (const r of owner.pages) if (e.extents[r.extent]?.image) n += r.length;
  }
  return n;
}

/** What `inspectImage` gives: the image's manifest, its parents, and each process summarized. */
export interface ImageSummary {
  /** The image directory. */
  dir: string;
  /** Its manifest's identity fields. */
  manifest: Pick<ImageManifest, "format" | "toolVersion" | "kernel" | "arch" | "createdAt">;
  /** An incremental image's parents, nearest first. */
  parents?: string[];
  /**
   * Whether every checksum of the page data was checked (`verify`); false: only the metadata's
   * were, and damaged page data would go unnoticed until it is read.
   */
  verified: boolean;
  /** Every process of the image, the root first. */
  processes: InspectedProcess[];
}

/** Reads the summary of every process in the image at `dir` (`verify`: check every checksum). */
export async function inspectImage(
  dir: string,
  opts: { verify?: boolean; regs?: boolean } = {},
): Promise<ImageSummary> {
  using image = await ImageReader.open(dir, { verify: opts.verify, checkArch: false });
  const { format, toolVersion, kernel, arch, createdAt } = image.manifest;
  // An incremental image: its parents, nearest first (open and, with verify, verified).
  const parents: string[] = [];
  for (let p = image.parent; p; p = p.parent) parents.push(p.dir);
  const processes: InspectedProcess[] = [];
  for (const name of image.metaNames()) {
    if (name !== "process" && !name.startsWith("process-")) continue;
    processes.push(summarize(await image.readMeta<ProcessEntry>(name), opts.regs));
  }
  return {
    dir,
    manifest: { format, toolVersion, kernel, arch, createdAt },
    ...(parents.length ? { parents } : {}),
    verified: opts.verify === true,
    processes,
  };
}
