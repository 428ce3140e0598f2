/**
 * Outside peers: open files of a dump whose other side is held by a process outside it. The other
 * end of a pipe, the peer of a connected UNIX socket, another opener of a FIFO, the session, pty
 * master or other openers of a pseudo-terminal: restored alone, the file would be cut off from
 * that process (a writer whose reader is not restored dies at its first write, with EPIPE). The
 * dump refuses such a file, naming it and the process, unless it is declared external
 * (external.ts), to be handed in at restore.
 *
 * Who holds what is read from /proc/PID/fd of every process but those of the dump, once per dump
 * and only when something asks; the terminals of processes (/proc/PID/stat) likewise, only when a
 * terminal asks. The tool's own descriptors are read too but never count as a peer (it holds
 * copies of the target's files while it works, and hands its own in at restore); a UNIX socket's
 * refusal still names the tool when it is the one holding the peer.
 *
 * Not outside peers: a pipe whose other end is closed everywhere (it comes back the same: EOF,
 * EPIPE), a process's controlling terminal (`restore --shell-job` moves it; a plain restore
 * reopens it by path, where it must still be the same device), and terminals other than
 * pseudo-terminals (consoles, virtual and serial terminals are reopened by path).
 */
import { makedev, O } from "../../ffi/mod.ts";
import { DumpError } from "../errors.ts";
import type { Fd } from "../inspect/fds.ts";
import { parseKeyValues, tryReadStat } from "../inspect/procfs.ts";
import { isPtyMaster, PTY_SLAVE, ptyIndex, ptySlavePath } from "./pty_names.ts";

/** One descriptor of a process outside the dump. */
export interface OutsideHolder {
  pid: number;
  fd: number;
  /** Its command name, for messages. */
  comm: string;
  /** The tool itself (never a peer of a pipe, FIFO or terminal). */
  tool: boolean;
}

/** The major number of every pty slave (UNIX98_PTY_SLAVE_MAJOR; the index is the minor). */
const PTY_SLAVE_MAJOR = 136;

/** The processes outside one dump, with what they hold; /proc is read once, when first asked. */
export class OutsideProcesses {
  readonly #dumped: ReadonlySet<number>;
  #links?: Map<string, { pid: number; fd: number }[]>;
  #terminals?: Map<number, { pid: number; session: number }[]>;
  readonly #comms = new Map<number, string>();

  /** `dumped`: every process of the dump. */
  constructor(dumped: readonly number[]) {
    this.#dumped = new Set(dumped);
  }

  /** The pids of /proc but those of the dump. */
  #pids(): number[] {
    const out: number[] = [];
    for (const e of Deno.readDirSync("/proc")) {
      const pid = Number(e.name);
      if (Number.isInteger(pid) && pid > 0 && !this.#dumped.has(pid)) out.push(pid);
    }
    return out;
  }

  /** Every descriptor link of every outside process, by link target (`pipe:[1]`, a path). */
  #scanLinks(): Map<string, { pid: number; fd: number }[]> {
    if (this.#links) return this.#links;
    const links = new Map<string, { pid: number; fd: number }[]>();
    for (const pid of this.#pids()) {
      let entries: Deno.DirEntry[];
      try {
        entries = [...Deno.readDirSync(`/proc/${pid}/fd`)];
      } catch {
        continue; // gone, or a kernel thread's
      }
      for (const e of entries) {
        try {
          const target = Deno.readLinkSync(`/proc/${pid}/fd/${e.name}`);
          let list = links.get(target);
          if (!list) links.set(target, list = []);
          list.push({ pid, fd: Number(e.name) });
        } catch { /* closed meanwhile */ }
      }
    }
    return this.#links = links;
  }

  /** Outside processes by controlling terminal (its device number), with their session. */
  #scanTerminals(): Map<number, { pid: number; session: number }[]> {
    if (this.#terminals) return this.#terminals;
    const terminals = new Map<number, { pid: number; session: number }[]>();
    for (const pid of this.#pids()) {
      const st = tryReadStat(pid);
      if (!st || st.ttyNr === 0) continue;
      this.#comms.set(pid, st.comm);
      let list = terminals.get(st.ttyNr);
      if (!list) terminals.set(st.ttyNr, list = []);
      list.push({ pid, session: st.session });
    }
    return this.#terminals = terminals;
  }

  /** The command name of `pid`, for messages ("?" once it is gone). */
  comm(pid: number): string {
    let comm = this.#comms.get(pid);
    if (comm === undefined) this.#comms.set(pid, comm = tryReadStat(pid)?.comm ?? "?");
    return comm;
  }

  #holder(h: { pid: number; fd: number }): OutsideHolder {
    return { ...h, comm: this.comm(h.pid), tool: h.pid === Deno.pid };
  }

  /** Every outside descriptor whose link reads `target` (`pipe:[123]`, `socket:[4]`, a path). */
  holders(target: string): OutsideHolder[] {
    return (this.#scanLinks().get(target) ?? []).map((h) => this.#holder(h));
  }

  /**
   * Outside processes whose controlling terminal is device `rdev`: the session leader first, when
   * it is one of them.
   */
  onTerminal(rdev: bigint): { pid: number; comm: string; leader: boolean }[] {
    const list = this.#scanTerminals().get(Number(rdev)) ?? [];
    return list.map((p) => ({ pid: p.pid, comm: this.comm(p.pid), leader: p.pid === p.session }))
      .filter((p) => p.pid !== Deno.pid)
      .sort((a, b) => Number(b.leader) - Number(a.leader));
  }

  /** Outside holders of the master of pseudo-terminal number `index` (/dev/pts/INDEX). */
  ptyMasters(index: number): OutsideHolder[] {
    const out: OutsideHolder[] = [];
    for (const [target, list] of this.#scanLinks()) {
      if (!target.endsWith("/ptmx")) continue;
      for (const h of list) {
        const info = fdinfo(h.pid, h.fd);
        if (info && Number(info.get("tty-index")) === index) out.push(this.#holder(h));
      }
    }
    return out;
  }
}

/** /proc/PID/fdinfo/FD as key → value, or null once it is closed. */
function fdinfo(pid: number, fd: number): Map<string, string> | null {
  try {
    return parseKeyValues(Deno.readTextFileSync(`/proc/${pid}/fdinfo/${fd}`));
  } catch {
    return null;
  }
}

/** The access mode outside holder `h` has its descriptor open with, or null once it is closed. */
function accessMode(h: OutsideHolder): number | null {
  const flags = fdinfo(h.pid, h.fd)?.get("flags");
  if (flags === undefined) return null;
  const f = parseInt(flags, 8);
  return f & O.PATH ? null : f & O.ACCMODE;
}

/** Whether descriptors open with access modes `a` and `b` talk to each other through one pipe. */
function talk(a: number, b: number): boolean {
  return a === O.RDWR || b === O.RDWR || a !== b;
}

/** An access mode in words, for messages: "reading", "writing", "reading and writing". */
export const ACCESS_WORDS: Readonly<Record<number, string>> = {
  [O.RDONLY]: "reading",
  [O.WRONLY]: "writing",
  [O.RDWR]: "reading and writing",
};

/** `cat 456 (fd 0)`. */
export function describeHolder(h: { pid: number; comm: string; fd?: number }): string {
  return `${h.comm} ${h.pid}${h.fd === undefined ? "" : ` (fd ${h.fd})`}`;
}

/** Whether the path behind an outside holder's descriptor is the very file `fd` has open. */
function sameFile(h: OutsideHolder, fd: Fd): boolean {
  try {
    const st = Deno.statSync(`/proc/${h.pid}/fd/${h.fd}`);
    return BigInt(st.dev) === fd.dev && BigInt(st.ino ?? 0) === fd.inode;
  } catch {
    return false;
  }
}

/**
 * Who outside the dump is on the other side of `fd` (a pipe end, a FIFO, a pseudo-terminal),
 * said for a message ("its read end is held by cat 456 (fd 0)"), or null when nobody is. The
 * tool itself is never such a peer.
 */
export function outsidePeer(fd: Fd, outside: OutsideProcesses): string | null {
  const mine = fd.flags & O.ACCMODE;
  if (fd.kind === "pipe") {
    const peer = outside.holders(fd.target).find((h) => {
      const mode = h.tool ? null : accessMode(h);
      return mode !== null && talk(mine, mode);
    });
    if (!peer) return null;
    const end = mine === O.WRONLY ? "read end" : mine === O.RDONLY ? "write end" : "other end";
    return `its ${end} is held by ${describeHolder(peer)}`;
  }
  if (fd.kind === "fifo") {
    for (const h of outside.holders(fd.target)) {
      const mode = h.tool ? null : accessMode(h);
      if (mode === null || !talk(mine, mode) || !sameFile(h, fd)) continue;
      return `it is open for ${ACCESS_WORDS[mode]} by ${describeHolder(h)}`;
    }
    return null;
  }
  if (fd.kind === "tty" && isPtyMaster(fd)) return slaveOutside(fd, outside);
  const pty = fd.kind === "tty" ? PTY_SLAVE.exec(fd.target) : null;
  if (pty) {
    const session = outside.onTerminal(fd.rdev)[0];
    if (session) {
      const who = session.leader ? "its session leader" : "a process of its session";
      return `${who} is ${describeHolder(session)}`;
    }
    const master = outside.ptyMasters(Number(pty[1])).find((h) => !h.tool);
    if (master) return `its pty master is held by ${describeHolder(master)}`;
    const other = outside.holders(fd.target).find((h) => !h.tool && sameFile(h, fd));
    if (other) return `it is open in ${describeHolder(other)} too`;
  }
  return null;
}

/** Who outside the dump holds the slave of pty master `fd`, or has it as its terminal. */
function slaveOutside(fd: Fd, outside: OutsideProcesses): string | null {
  const index = ptyIndex(fd);
  if (index === null) return null;
  const rdev = makedev(PTY_SLAVE_MAJOR, index);
  const session = outside.onTerminal(rdev)[0];
  if (session) return `its slave is the terminal of ${describeHolder(session)}`;
  const slave = outside.holders(ptySlavePath(index)).find((h) => {
    try {
      return !h.tool && BigInt(Deno.statSync(`/proc/${h.pid}/fd/${h.fd}`).rdev ?? 0) === rdev;
    } catch {
      return false;
    }
  });
  return slave ? `its slave ${ptySlavePath(index)} is held by ${describeHolder(slave)}` : null;
}

/** How to declare the open file `key` external, for the end of a refusal. */
export function externalHint(key: string): string {
  return `declare it external (dump --external ${key}, or a policy's fd answer ` +
    `{ external: "${key}" }) and hand it in at restore (--inherit-fd fd[N]:${key}), or, if the ` +
    `program never uses it (a descriptor inherited by accident), leave it out (a policy's fd ` +
    `answer "skip")`;
}

/** What the open file behind `fd` is, for messages: "the write end of pipe:[12]". */
function objectOf(fd: Fd): string {
  const mode = fd.flags & O.ACCMODE;
  if (fd.kind === "pipe") {
    return `the ${mode === O.WRONLY ? "write" : mode === O.RDONLY ? "read" : "read-write"} end ` +
      `of ${fd.target}`;
  }
  if (fd.kind === "fifo") return `FIFO ${fd.target}, open for ${ACCESS_WORDS[mode]}`;
  if (isPtyMaster(fd)) return `the master of pty ${ptyIndex(fd)} (${fd.target})`;
  return `terminal ${fd.target}`;
}

/** One process of a dump as the check sees it. */
export interface DumpedFds {
  pid: number;
  /** Its controlling terminal's device number (0: none): never an outside peer. */
  ctty: number;
  /** The descriptors to be dumped as themselves (not skipped, reopened or external). */
  fds: readonly Fd[];
}

/**
 * Refuses a dump whose pipes, FIFOs or pseudo-terminals have a peer outside it, naming each fd,
 * its process, the object and the outside process, and how to declare it external. /proc is read
 * only when there is such a file to ask about.
 */
export function refuseOutsidePeers(processes: readonly DumpedFds[], outside: OutsideProcesses) {
  const found: string[] = [];
  for (const p of processes) {
    for (const fd of p.fds) {
      if (fd.kind !== "pipe" && fd.kind !== "fifo" && fd.kind !== "tty") continue;
      const pty = PTY_SLAVE.test(fd.target) || isPtyMaster(fd);
      if (fd.kind === "tty" && (BigInt(p.ctty) === fd.rdev || !pty)) {
        continue;
      }
      const peer = outsidePeer(fd, outside);
      if (!peer) continue;
      found.push(
        `fd ${fd.fd} of process ${p.pid}, ${objectOf(fd)}: ${peer}, outside the dump; ` +
          `restored alone it would be cut off from it: ${externalHint(fd.target)}`,
      );
    }
  }
  if (found.length === 1) throw new DumpError(found[0]);
  if (found.length) {
    throw new DumpError(
      `${found.length} descriptors have peers outside the dump:\n${found.join("\n")}`,
    );
  }
}
