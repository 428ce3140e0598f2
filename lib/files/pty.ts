/**
 * Pseudo-terminals whose master is in the dump: the master and every slave come back as one new
 * pty pair, at the same index (/dev/pts/N), with the modes, window size, packet mode, lock,
 * session and foreground group, and the bytes queued both ways. A slave whose master is not in
 * the dump is a device reopened by path (device.ts), as before: the shell-job case, or refused
 * as having an outside peer (outside_peers.ts).
 *
 * Dump: the pair's state is read through the tool's copy of the master (pidfd_getfd): the modes
 * and window size (which belong to the slave, and which the master's ioctls reach), TIOCGPKT,
 * TIOCGPTLCK, TIOCGSID and TIOCGPGRP. A terminal has no peek: the queues are read, then put
 * back at once with TIOCSTI (which hands bytes to the line discipline right away), so a dump
 * that fails or leaves the process running leaves the pty as it found it. The slave's input is
 * read from a slave the tool opens (TIOCGPTPEER) non-blocking: in canonical mode one read per
 * line, so the line boundaries are kept, then the unfinished line with ICANON off for the
 * moment. The master's queue (what the slave wrote) is read from the copy after poll() says it
 * is there (poll pushes the bytes still in flight), packet mode off meanwhile. Before either, a
 * NUL written to the slave tells whether its output runs (a pty stopped by ^S is refused: a new
 * one would run); it is taken off the end of the master's queue again.
 *
 * Restore: before any process is made (`makePtys`), the tool opens /dev/ptmx until it gets the
 * index the image has (devpts gives the lowest free one), unlocks it, opens the slave, sets the
 * window size, pushes the input back with the modes the refill needs (no echo, no signals, every
 * byte escaped with VLNEXT in canonical mode, each line ended as it was), sets the dumped modes,
 * pushes the master's queue, sets packet mode. A session leader takes it as its controlling
 * terminal right after it is forked (lib/task/terminal.ts), so the processes it forks inherit
 * it. Each open file is then handed to its process: the master itself, a slave as a new open
 * file from TIOCGPTPEER. Once every process is made the lock and exclusive mode are set again
 * and the tool's copies
 * are closed: a pair whose slave had been closed everywhere is left so (the master reads EIO).
 */
import {
  CAP,
  close,
  Errno,
  F,
  FD_CLOEXEC,
  hasCap,
  ioctlGetInt,
  ioctlSetInt,
  O,
  open,
  openPtyPeer,
  pidfdGetfd,
  POLL,
  pushInput,
  read,
  syscall,
  SyscallError,
  tcgetattr,
  tcgetpgrp,
  tcgetwinsize,
  tcsetattrNow,
  tcsetwinsize,
  TERMIOS,
  TERMIOS_CC,
  TERMIOS_SIZE,
  tryPoll,
  TTY_IOCTL,
  VCC,
  type WinSize,
  write,
} from "../../ffi/mod.ts";
import { DumpError, RestoreError } from "../errors.ts";
import type { Fd } from "../inspect/fds.ts";
import type { FileEntry, ProcessEntry } from "../image/schema.ts";
import { hexMask, parseKeyValues, statusField } from "../inspect/procfs.ts";
import { type DeviceEntry, dumpDevice } from "./device.ts";
import { isPtyMaster, PTY_SLAVE, ptyIndex } from "./pty_names.ts";
import type { FileDumpContext, FileHandler, FileRestoreContext } from "./types.ts";
import { fcntl, handToTarget, reopenFlags } from "./util.ts";

/** One open file of a pseudo-terminal whose master is in the image. */
export interface PtyEntry extends FileEntry {
  kind: "pty";
  end: "master" | "slave";
  /** The pty's number when dumped (/dev/pts/INDEX); the restore gives it the same. */
  index: number;
  /** The path it was opened by: /dev/ptmx (or /dev/pts/ptmx) for the master, /dev/pts/N. */
  path: string;
  /** On the master only: the state of the pair. */
  pair?: PtyPairState;
}

/** What a pty pair holds besides its open files. */
export interface PtyPairState {
  /** `struct termios` as TCGETS reads it (the slave's: the master's ioctls reach it). */
  termios: Uint8Array;
  winsize: WinSize;
  /** Packet mode (TIOCPKT) of the master. */
  packet: boolean;
  /** Locked (TIOCSPTLCK): the slave cannot be opened again. */
  locked: boolean;
  /** Its slave had been opened and then closed everywhere (the master reads EIO). */
  slaveClosed: boolean;
  /** The slave is in exclusive mode (TIOCEXCL); absent when not, and in older images. */
  exclusive?: boolean;
  /** The session it is the controlling terminal of (its leader's pid), 0 for none. */
  session: number;
  /** Its foreground process group, 0 for none. */
  foregroundGroup: number;
  /** The slave's input: in canonical mode one item per line as read() gives it, else one. */
  input: Uint8Array[];
  /** In canonical mode, the line being typed, not yet ended (not yet readable). */
  pendingInput: Uint8Array;
  /** What the slave wrote that the master has not read yet (after output processing). */
  output: Uint8Array;
}

const PAIR_FIELDS = {
  termios: "bytes",
  winsize: { map: { rows: "whole", cols: "whole", xpixel: "whole", ypixel: "whole" } },
  packet: "bool",
  locked: "bool",
  slaveClosed: "bool",
  exclusive: { optional: "bool" },
  session: "whole",
  foregroundGroup: "whole",
  input: { list: "bytes" },
  pendingInput: "bytes",
  output: "bytes",
} as const;

// ---- Dump ----

/** Where the processes of a dump hold pty masters and slaves, read once per dump. */
interface DumpedPtys {
  /** Indexes of the ptys whose master a process of the dump holds. */
  masters: Set<number>;
  /** Indexes of the ptys whose slave a process of the dump holds. */
  slaves: Set<number>;
}

const dumpedPtys = new WeakMap<object, DumpedPtys>();

function ptysOfDump(ctx: FileDumpContext): DumpedPtys {
  const scope = ctx.scope ?? ctx;
  let found = dumpedPtys.get(scope);
  if (found) return found;
  found = { masters: new Set(), slaves: new Set() };
  for (const pid of ctx.pids ?? [ctx.pid]) {
    let entries: Deno.DirEntry[];
    try {
      entries = [...Deno.readDirSync(`/proc/${pid}/fd`)];
    } catch {
      continue;
    }
    for (const e of entries) {
      try {
        const target = Deno.readLinkSync(`/proc/${pid}/fd/${e.name}`);
        if (isPtyMaster({ target })) {
          const info = parseKeyValues(Deno.readTextFileSync(`/proc/${pid}/fdinfo/${e.name}`));
          const index = info.get("tty-index");
          if (index !== undefined) found.masters.add(Number(index));
        } else {
          const m = PTY_SLAVE.exec(target);
          if (m) found.slaves.add(Number(m[1]));
        }
      } catch { /* closed meanwhile */ }
    }
  }
  dumpedPtys.set(scope, found);
  return found;
}

/** read() of a non-blocking fd: the bytes, an empty array at end of file, null when none wait. */
function readSome(fd: number, buf: Uint8Array): Uint8Array | null {
  try {
    return buf.slice(0, read(fd, buf));
  } catch (err) {
    if (err instanceof SyscallError && err.errno === Errno.EAGAIN) return null;
    throw err;
  }
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) out.set(p, (at += p.length) - p.length);
  return out;
}

function lflag(termios: Uint8Array): number {
  return new DataView(termios.buffer, termios.byteOffset).getUint32(12, true);
}

function isCanonical(termios: Uint8Array): boolean {
  return (lflag(termios) & (TERMIOS.ICANON | TERMIOS.EXTPROC)) === TERMIOS.ICANON;
}

/** The canonical queue holds at most this much (N_TTY_BUF_SIZE). */
const TTY_BUFFER = 4096;

/** Reads what the slave has to read, through `slave`, a non-blocking open file of it. */
function readInput(
  slave: number,
  termios: Uint8Array,
): Pick<PtyPairState, "input" | "pendingInput"> {
  const buf = new Uint8Array(TTY_BUFFER + 1);
  const input: Uint8Array[] = [];
  if (isCanonical(termios)) {
    // One read, one line (an empty one: a line ended by VEOF alone), until none is left.
    for (let line; input.length <= TTY_BUFFER && (line = readSome(slave, buf)) !== null;) {
      input.push(line);
    }
    // The unfinished line is not readable in canonical mode: read it with ICANON off a moment.
    const raw = termios.slice();
    const dv = new DataView(raw.buffer);
    dv.setUint32(12, lflag(raw) & ~TERMIOS.ICANON, true);
    raw[TERMIOS_CC + VCC.VMIN] = 0;
    raw[TERMIOS_CC + VCC.VTIME] = 0;
    tcsetattrNow(slave, raw);
    try {
      return { input, pendingInput: readAll(slave, buf) };
    } finally {
      tcsetattrNow(slave, termios);
    }
  }
  const all = readAll(slave, buf);
  return { input: all.length ? [all] : [], pendingInput: new Uint8Array(0) };
}

/** Reads a non-canonical slave until nothing is left. */
function readAll(slave: number, buf: Uint8Array): Uint8Array {
  const parts: Uint8Array[] = [];
  for (let part; (part = readSome(slave, buf)) !== null && part.length;) parts.push(part);
  return concat(parts);
}

/** Reads the master's queue (what the slave wrote), through `master`, packet mode off. */
function readOutput(master: number): Uint8Array {
  const parts: Uint8Array[] = [];
  // poll() first: it hands bytes still in flight to the queue, and a read then never waits.
  while (tryPoll(master, POLL.IN) & POLL.IN) {
    const queued = ioctlGetInt(master, TTY_IOCTL.TIOCINQ, "ioctl(TIOCINQ)");
    if (queued <= 0) break;
    const buf = new Uint8Array(queued);
    const n = read(master, buf);
    if (n <= 0) break;
    parts.push(buf.subarray(0, n));
  }
  return concat(parts);
}

/**
 * The modes the slave's input is pushed back with: the dumped ones without echo, signals, flow
 * control or input translation, so every byte lands as it was read; in canonical mode VLNEXT
 * escapes each byte, so that only the line ends given on purpose end lines.
 */
function refillModes(termios: Uint8Array): Uint8Array {
  const t = termios.slice();
  const dv = new DataView(t.buffer);
  const I = TERMIOS;
  dv.setUint32(
    0,
    dv.getUint32(0, true) &
      ~(I.INLCR | I.IGNCR | I.ICRNL | I.IUCLC | I.ISTRIP | I.IXON | I.IXOFF | I.IXANY | I.PARMRK |
        I.INPCK | I.IMAXBEL),
    true,
  );
  let l = dv.getUint32(12, true) &
    ~(I.ISIG | I.ECHO | I.ECHOE | I.ECHOK | I.ECHONL | I.ECHOCTL | I.ECHOPRT | I.ECHOKE);
  if (isCanonical(termios)) {
    l |= I.IEXTEN;
    t[TERMIOS_CC + VCC.VLNEXT] ||= LNEXT;
    t[TERMIOS_CC + VCC.VEOF] ||= EOF;
  }
  dv.setUint32(12, l, true);
  return t;
}

/** ^V and ^D: VLNEXT and VEOF where the modes have them disabled. */
const LNEXT = 0x16, EOF = 0x04;

/** The bytes to push for the slave's input so that it reads back as `input`, `pendingInput`. */
function inputBytes(termios: Uint8Array, state: Pick<PtyPairState, "input" | "pendingInput">) {
  if (!isCanonical(termios)) return concat([...state.input, state.pendingInput]);
  const modes = refillModes(termios);
  const cc = (i: number) => modes[TERMIOS_CC + i];
  const lnext = cc(VCC.VLNEXT);
  const enders = new Set([0x0a, cc(VCC.VEOL), cc(VCC.VEOL2)].filter((c) => c !== 0));
  const escaped = (bytes: Uint8Array) => [...bytes].flatMap((b) => [lnext, b]);
  const out: number[] = [];
  for (const line of state.input) {
    const last = line[line.length - 1];
    if (line.length && enders.has(last)) out.push(...escaped(line.subarray(0, -1)), last);
    else out.push(...escaped(line), cc(VCC.VEOF)); // read() gives no VEOF: it ended the line
  }
  out.push(...escaped(state.pendingInput));
  return new Uint8Array(out);
}

/**
 * Puts the queues back into a pair: the slave's input through `slave` (with the refill modes for
 * the moment), then the dumped modes, then the master's queue through `master`.
 */
function refill(master: number, slave: number | null, s: PtyPairState): void {
  const input = inputBytes(s.termios, s);
  if (slave !== null && input.length) {
    tcsetattrNow(slave, refillModes(s.termios));
    try {
      pushInput(slave, input);
    } finally {
      tcsetattrNow(slave, s.termios);
    }
  } else tcsetattrNow(slave ?? master, s.termios);
  pushInput(master, s.output);
}

/** Runs `fn` with the pty unlocked, when it is locked (a slave cannot be opened meanwhile). */
function unlocked<T>(master: number, locked: boolean, fn: () => T): T {
  if (locked) ioctlSetInt(master, TTY_IOCTL.TIOCSPTLCK, 0, "ioctl(TIOCSPTLCK)");
  try {
    return fn();
  } finally {
    if (locked) ioctlSetInt(master, TTY_IOCTL.TIOCSPTLCK, 1, "ioctl(TIOCSPTLCK)");
  }
}

/** TIOCGSID of a master: the session's leader, 0 when it is nobody's controlling terminal. */
function sessionOf(master: number): number {
  try {
    return ioctlGetInt(master, TTY_IOCTL.TIOCGSID, "ioctl(TIOCGSID)");
  } catch (err) {
    if (err instanceof SyscallError && err.errno === Errno.ENOTTY) return 0;
    throw err;
  }
}

/** Whether this process may push bytes into a terminal's input (TIOCSTI, not its own terminal). */
function mayPushInput(): boolean {
  return hasCap(hexMask(statusField(Deno.pid, "CapEff")), CAP.SYS_ADMIN);
}

/** Reads a pair through `master`, the tool's copy of its master, and puts its queues back. */
function dumpPair(master: number, index: number, where: string, slaveOpen: boolean) {
  if (!mayPushInput()) {
    throw new DumpError(
      `${where}: the queues of pty ${index} cannot be read without being put back, which needs ` +
        `CAP_SYS_ADMIN (TIOCSTI); tardigrade lacks it`,
    );
  }
  const termios = tcgetattr(master);
  const packet = ioctlGetInt(master, TTY_IOCTL.TIOCGPKT, "ioctl(TIOCGPKT)") !== 0;
  const locked = ioctlGetInt(master, TTY_IOCTL.TIOCGPTLCK, "ioctl(TIOCGPTLCK)") !== 0;
  const slaveClosed = (tryPoll(master, POLL.IN) & POLL.HUP) !== 0;
  if (!slaveClosed && !slaveOpen) {
    throw new DumpError(
      `${where}: the slave of pty ${index} was never opened; what was written to the master ` +
        `cannot be read without opening it, which the program would see`,
    );
  }
  if (packet && tryPoll(master, POLL.PRI) & POLL.PRI) {
    throw new DumpError(
      `${where}: pty ${index} in packet mode has a status byte waiting (a flush or a change of ` +
        `flow control the master has not read yet); dump again once it is read`,
    );
  }
  const state: PtyPairState = {
    termios,
    winsize: tcgetwinsize(master),
    packet,
    locked,
    slaveClosed,
    session: sessionOf(master),
    foregroundGroup: Math.max(0, tcgetpgrp(master)),
    input: [],
    pendingInput: new Uint8Array(0),
    output: new Uint8Array(0),
  };
  let slave: number | null = null;
  if (packet) ioctlSetInt(master, TTY_IOCTL.TIOCPKT, 0, "ioctl(TIOCPKT)");
  try {
    if (!slaveClosed) {
      slave = unlocked(
        master,
        locked,
        () => openPtyPeer(master, O.RDWR | O.NOCTTY | O.NONBLOCK | O.CLOEXEC),
      );
      // First, before anything is read: putting the input back would start it again.
      if (!probeOutput(slave)) {
        throw new DumpError(
          `${where}: the output of pty ${index} does not run (stopped by ^S or tcflow, which a ` +
            `new pty would not be, or its master's queue is full); dump again once it runs (^Q)`,
        );
      }
      if (ioctlGetInt(slave, TTY_IOCTL.TIOCGEXCL, "ioctl(TIOCGEXCL)")) state.exclusive = true;
      Object.assign(state, readInput(slave, termios));
    }
    const output = readOutput(master);
    // The probe's byte came last: it is not the program's.
    const probed = slave === null || output[output.length - 1] === 0;
    state.output = slave !== null && probed ? output.subarray(0, -1) : output;
    refill(master, slave, state);
    if (!probed) {
      throw new DumpError(`${where}: the byte written to see whether pty ${index} runs was lost`);
    }
  } finally {
    if (slave !== null) close(slave);
    if (packet) ioctlSetInt(master, TTY_IOCTL.TIOCPKT, 1, "ioctl(TIOCPKT)");
  }
  return state;
}

/**
 * Whether the slave's output runs, which no ioctl shows (^S with IXON, or tcflow TCOOFF, stop
 * it): a NUL written to the slave, non-blocking, is refused when it is stopped. Else it is the
 * last byte of the master's queue now (a control character: output processing leaves it as it
 * is, and the column where the next character goes too).
 */
function probeOutput(slave: number): boolean {
  try {
    write(slave, new Uint8Array(1));
    return true;
  } catch (err) {
    if (err instanceof SyscallError && err.errno === Errno.EAGAIN) return false;
    throw err;
  }
}

/** Terminals: pty pairs with their master in the dump here, every other one as a device. */
export const ptyHandler: FileHandler<PtyEntry, PtyEntry | DeviceEntry> = {
  kind: "pty",
  fields: {
    end: { oneOf: ["master", "slave"] },
    index: "whole",
    path: "text",
    pair: { optional: { map: PAIR_FIELDS } },
  },
  fdKinds: ["tty"],
  dump(fd: Fd, ctx: FileDumpContext): PtyEntry | DeviceEntry {
    const index = ptyIndex(fd);
    const ptys = ptysOfDump(ctx);
    if (index === null || !ptys.masters.has(index)) return dumpDevice(fd);
    const entry: PtyEntry = {
      id: fd.fileId,
      kind: "pty",
      flags: fd.flags,
      end: isPtyMaster(fd) ? "master" : "slave",
      index,
      path: fd.target,
    };
    if (entry.end === "slave") return entry;
    const master = pidfdGetfd(ctx.pidfd, fd.fd);
    try {
      const where = `fd ${fd.fd} of ${fd.pid} (${fd.target})`;
      entry.pair = dumpPair(master, index, where, ptys.slaves.has(index));
    } finally {
      close(master);
    }
    return entry;
  },
  check(e: PtyEntry): string | null {
    if (e.end === "master" && !e.pair) return `pty ${e.index}: its master has no pair state`;
    if (e.pair && e.pair.termios.length !== TERMIOS_SIZE) {
      return `pty ${e.index}: termios of ${e.pair.termios.length} bytes, not ${TERMIOS_SIZE}`;
    }
    const ptmx = e.end === "master" ? e.path : "/dev/ptmx";
    try {
      if (!Deno.statSync(ptmx).isCharDevice) return `${ptmx} is not a character device`;
    } catch {
      return `${ptmx} does not exist: no pseudo-terminal can be made`;
    }
    return null;
  },
  open(e: PtyEntry, ctx: FileRestoreContext): number {
    const pair = pairOf(ctx, e.index);
    const what = `pty ${e.index} (${e.end})`;
    if (e.end === "master") return handToTarget(ctx, pair.master, what);
    // Not O_CLOEXEC: TIOCGPTPEER keeps it in the open file's flags, which the target shares.
    const mine = openPtyPeer(pair.master, reopenFlags(e.flags) | O.NOCTTY);
    try {
      fcntl(mine, F.SETFD, FD_CLOEXEC);
      return handToTarget(ctx, mine, what);
    } finally {
      close(mine);
    }
  },
  release(scope: object): void {
    for (const pair of restoring.get(scope)?.values() ?? []) {
      // Once every slave is open: the lock is set again; a slave closed everywhere is so again.
      if (pair.state.locked) {
        ioctlSetInt(pair.master, TTY_IOCTL.TIOCSPTLCK, 1, "ioctl(TIOCSPTLCK)");
      }
      if (pair.state.exclusive) syscall("ioctl", pair.slave, TTY_IOCTL.TIOCEXCL, 0);
    }
    closePairs(scope);
  },
  abort: closePairs,
};

// ---- Restore ----

/** A pty pair made for a restore: the tool's master and slave until every process has its own. */
interface MadePair {
  master: number;
  slave: number;
  state: PtyPairState;
}

const restoring = new WeakMap<object, Map<number, MadePair>>();

function pairOf(ctx: FileRestoreContext, index: number): MadePair {
  const pair = restoring.get(ctx.scope ?? ctx)?.get(index);
  if (!pair) {
    throw new RestoreError(
      `pty ${index}: its pair is made by a restore of the whole tree (its master was not there)`,
    );
  }
  return pair;
}

function closePairs(scope: object): void {
  for (const pair of restoring.get(scope)?.values() ?? []) {
    close(pair.slave);
    close(pair.master);
  }
  restoring.delete(scope);
}

/** How long a restore waits for a pty index that a pty just closed still holds. */
const INDEX_WAIT_MS = 2000;

/**
 * Opens `path` (/dev/ptmx) until it gives pty `index` (devpts gives the lowest free index); the
 * lower ones taken meanwhile are closed again. Refuses when the index is held by another pty.
 */
async function openAtIndex(path: string, flags: number, index: number): Promise<number> {
  const deadline = Date.now() + INDEX_WAIT_MS;
  for (;;) {
    const held: number[] = [];
    try {
      for (;;) {
        const fd = open(path, reopenFlags(flags) | O.NOCTTY | O.CLOEXEC);
        held.push(fd);
        const got = ioctlGetInt(fd, TTY_IOCTL.TIOCGPTN, "ioctl(TIOCGPTN)");
        if (got === index) return held.pop()!;
        if (got > index) break;
      }
    } finally {
      for (const fd of held) close(fd);
    }
    // A pty of the dumped processes, killed a moment ago, may not be released yet.
    if (Date.now() > deadline) {
      throw new RestoreError(
        `cannot restore: /dev/pts/${index} is in use by another pseudo-terminal; the restored ` +
          `program would see its terminal under another name`,
      );
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** The master entries of every pty of the image, by index. */
function mastersOf(entries: readonly ProcessEntry[]): Map<number, PtyEntry> {
  const out = new Map<number, PtyEntry>();
  for (const p of entries) {
    for (const f of p.files) {
      if (f.kind === "pty" && (f as PtyEntry).end === "master") {
        out.set((f as PtyEntry).index, f as PtyEntry);
      }
    }
  }
  return out;
}

/**
 * Before any process is made: every pty pair of the image, made again at its index with its
 * state, held by the tool for `scope`. A pty whose session or foreground group the image does
 * not make again is refused.
 */
export async function makePtys(scope: object, entries: readonly ProcessEntry[]): Promise<void> {
  const masters = mastersOf(entries);
  for (const p of entries) {
    for (const f of p.files) {
      if (f.kind === "pty" && !masters.has((f as PtyEntry).index)) {
        throw new RestoreError(
          `cannot restore: process ${p.pid} holds the slave of pty ${(f as PtyEntry).index}, ` +
            `whose master is not in the image`,
        );
      }
    }
  }
  for (const [index, e] of masters) {
    const s = e.pair!;
    const leader = entries.find((p) => p.pid === s.session && p.sid === p.pid);
    if (s.session !== 0 && !leader) {
      throw new RestoreError(
        `cannot restore: pty ${index} is the controlling terminal of session ${s.session}, ` +
          `whose leader is not in the image`,
      );
    }
    const inSession = (g: number) => entries.some((p) => p.pgid === g && p.sid === s.session);
    if (s.foregroundGroup !== 0 && !inSession(s.foregroundGroup)) {
      throw new RestoreError(
        `cannot restore: the foreground process group ${s.foregroundGroup} of pty ${index} has ` +
          `no process in the image`,
      );
    }
  }
  const made = new Map<number, MadePair>();
  restoring.set(scope, made);
  for (const [index, e] of masters) {
    const state = e.pair!;
    const master = await openAtIndex(e.path, e.flags, index);
    let slave = -1;
    try {
      ioctlSetInt(master, TTY_IOCTL.TIOCSPTLCK, 0, "ioctl(TIOCSPTLCK)");
      slave = openPtyPeer(master, O.RDWR | O.NOCTTY | O.NONBLOCK | O.CLOEXEC);
      tcsetwinsize(master, state.winsize);
      refill(master, state.slaveClosed ? null : slave, state);
      if (state.packet) ioctlSetInt(master, TTY_IOCTL.TIOCPKT, 1, "ioctl(TIOCPKT)");
    } catch (err) {
      if (slave >= 0) close(slave);
      close(master);
      throw new RestoreError(`pty ${index}: ${(err as Error).message}`);
    }
    made.set(index, { master, slave, state });
  }
}

/** The pty (its index) that session `sid` of a restore has for its controlling terminal. */
export function ptyOfSession(scope: object, sid: number): number | undefined {
  for (const [index, pair] of restoring.get(scope) ?? []) {
    if (pair.state.session === sid) return index;
  }
  return undefined;
}

/** The foreground process group pty `index` of a restore had (0: none). */
export function foregroundOf(scope: object, index: number): number {
  return restoring.get(scope)?.get(index)?.state.foregroundGroup ?? 0;
}
