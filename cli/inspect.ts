/** `tardigrade inspect DIR`: what an image holds, optionally verifying every checksum. */
import { type FileEntry, ImageError, ImageReader, type ProcessEntry } from "../mod.ts";
import {
  count,
  errorLine,
  formatBytes,
  hex,
  parseVerb,
  printJson,
  table,
  type Verb,
} from "./common.ts";

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
  pid: number;
  ppid: number;
  comm: string;
  cmdline: string[];
  exe: string | null;
  cwd: string;
  /**
   * Its controlling terminal, absent when it had none: `size` is "COLSxROWS", `modes` the main
   * local modes as `stty` spells them ("-icanon -echo" for a raw-mode editor).
   */
  terminal?: { path: string | null; foreground: boolean; size?: string; modes?: string };
  /** Children that had exited and were not waited for: "exit N" or "signal N". */
  zombies: { pid: number; comm: string; ended: string }[];
  threads: { tid: number; name: string; rip: string; rsp: string; regs?: Record<string, string> }[];
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
  fds: { fd: number; file: number; kind: string; path: string | null; closeOnExec: boolean }[];
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

/** Bytes of the runs of `e` whose extents are in a parent image. */
function inParents(e: ProcessEntry): number {
  let n = 0;
  for (const owner of [...e.mappings, ...e.objects]) {
    for (const r of owner.pages) if (e.extents[r.extent]?.image) n += r.length;
  }
  return n;
}

/** Reads the summary of every process in the image at `dir`. */
export async function inspectImage(
  dir: string,
  opts: { verify?: boolean; regs?: boolean } = {},
) {
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
    ...(opts.verify ? { verified: true } : {}),
    processes,
  };
}

function printHuman(r: Awaited<ReturnType<typeof inspectImage>>, regs: boolean): void {
  const m = r.manifest;
  console.log(
    `image ${r.dir}: format ${m.format}, tardigrade ${m.toolVersion}, kernel ${m.kernel} ` +
      `${m.arch}, created ${m.createdAt}`,
  );
  if (r.parents) console.log(`parents (nearest first): ${r.parents.join(", ")}`);
  for (const p of r.processes) {
    console.log(`\nprocess ${p.pid} (${p.comm}) ppid ${p.ppid}: ${p.cmdline.join(" ")}`);
    console.log(`  exe ${p.exe ?? "-"}  cwd ${p.cwd}`);
    if (p.terminal) {
      const t = p.terminal;
      const what = [t.foreground ? "foreground" : "background", t.size, t.modes].filter(Boolean);
      console.log(`  terminal ${t.path ?? "(no descriptor open on it)"}: ${what.join(", ")}`);
    }
    if (p.zombies.length) {
      const list = p.zombies.map((z) => `${z.pid} (${z.comm}, ${z.ended})`).join(", ");
      console.log(`  zombie children not waited for: ${list}`);
    }
    console.log("");
    console.log(table(
      [{ header: "TID", right: true }, { header: "RIP" }, { header: "RSP" }, { header: "NAME" }],
      p.threads.map((t) => [String(t.tid), t.rip, t.rsp, t.name]),
    ));
    if (regs) {
      for (const t of p.threads) {
        console.log(`\nregisters of thread ${t.tid}:`);
        const entries = Object.entries(t.regs ?? {});
        for (let i = 0; i < entries.length; i += 4) {
          console.log(
            "  " + entries.slice(i, i + 4).map(([k, v]) => `${k.padEnd(8)} ${v.padEnd(18)}`)
              .join(" ").trimEnd(),
          );
        }
      }
    }
    console.log();
    console.log(table(
      [
        { header: "START" },
        { header: "END" },
        { header: "PERMS" },
        { header: "SIZE", right: true },
        { header: "PAGES", right: true },
        { header: "KIND" },
        { header: "NAME" },
      ],
      p.mappings.map((x) => [
        x.start,
        x.end,
        x.perms,
        formatBytes(x.size),
        formatBytes(x.pageBytes),
        x.kind,
        x.name ?? "",
      ]),
    ));
    console.log();
    console.log(table(
      [{ header: "FD", right: true }, { header: "KIND" }, { header: "FILE", right: true }, {
        header: "PATH",
      }],
      p.fds.map((d) => [String(d.fd), d.kind, String(d.file), d.path ?? ""]),
    ));
    const t = p.totals;
    console.log(
      `\ntotals: ${count(t.threads, "thread")}, ${count(t.mappings, "mapping")} ` +
        `(${formatBytes(t.mappedBytes)}), ${formatBytes(t.pageBytes)} of pages` +
        (t.parentPageBytes !== undefined
          ? ` (and ${formatBytes(t.parentPageBytes)} in parent images)`
          : "") +
        `, ${count(t.fds, "fd")}`,
    );
  }
  if (r.verified) {
    const chain = r.parents ? ", in this image and every parent" : "";
    console.log(`\nverify: OK (every checksum matches${chain})`);
  }
}

/** The verb. */
export const inspect: Verb = {
  name: "inspect",
  summary: "Show what an image holds: processes, threads, mappings, fds, totals.",
  usage: "tardigrade inspect DIR [--json] [--verify] [--verbose]",
  help: `options:
  --verify   check every checksum of the image (and of its parents, for an incremental
             image); exit 1 with the reason if one fails
  --verbose  also show every register of every thread
  --json     {dir, manifest: {format, toolVersion, kernel, arch, createdAt}, parents?,
             verified?,
             processes: [{pid, ppid, comm, cmdline, exe, cwd, terminal?: {path, foreground,
             size?, modes?}, zombies: [{pid, comm, ended}],
             threads: [{tid, name, rip, rsp, regs?}],
             mappings: [{start, end, size, perms, kind, name, source, pageBytes}],
             fds: [{fd, file, kind, path, closeOnExec}], totals: {threads, mappings,
             mappedBytes, pageBytes, parentPageBytes?, fds}}]}
             (parents: an incremental image's parent images, nearest first; pageBytes: in
             this image's page files, parentPageBytes: in its parents')`,
  async run(args) {
    const p = parseVerb(this, args, {
      json: { type: "boolean" },
      verify: { type: "boolean" },
    }, { min: 1, max: 1 });
    if (!p) return 0;
    const regs = Boolean(p.values.verbose);
    let r;
    try {
      r = await inspectImage(p.positionals[0], { verify: Boolean(p.values.verify), regs });
    } catch (err) {
      if (!(err instanceof ImageError) || !p.values.verify) throw err;
      console.error(errorLine(new Error(`verify failed: ${err.message}`)));
      return 1;
    }
    if (p.values.json) printJson(r);
    else printHuman(r, regs);
    return 0;
  },
};
