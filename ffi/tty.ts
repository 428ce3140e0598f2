/** Terminal ABI: the termios and job-control ioctls, with checked calls on the tool's fds. */
import { addressOf } from "./libc.ts";
import { SIG, SIG_HOW, sigBit } from "./signal.ts";
import { ioctl, syscall } from "./syscalls.ts";

/** Terminal ioctl requests. */
export const TTY_IOCTL = {
  TCGETS: 0x5401n,
  /** Set once the output written so far is sent, as a shell does (tcsetattr TCSADRAIN). */
  TCSETSW: 0x5403n,
  TIOCSCTTY: 0x540en,
  TIOCGPGRP: 0x540fn,
  TIOCSPGRP: 0x5410n,
  TIOCGWINSZ: 0x5413n,
  TIOCSWINSZ: 0x5414n,
  /** Sets the modes at once, without waiting for output (tcsetattr TCSANOW). */
  TCSETS: 0x5402n,
  /** Bytes waiting to be read (FIONREAD). */
  TIOCINQ: 0x541bn,
  /** Pushes one byte into the terminal's input, as if it had been typed (needs CAP_SYS_ADMIN). */
  TIOCSTI: 0x5412n,
  TIOCPKT: 0x5420n,
  /** Exclusive mode: no further open of the terminal (but with CAP_SYS_ADMIN). */
  TIOCEXCL: 0x540cn,
  TIOCGEXCL: 0x80045440n,
  TIOCGSID: 0x5429n,
  TIOCGPTN: 0x80045430n,
  TIOCSPTLCK: 0x40045431n,
  TIOCGPKT: 0x80045438n,
  TIOCGPTLCK: 0x80045439n,
  /** Opens the slave of a pty master: a new open file, with the open(2) flags given. */
  TIOCGPTPEER: 0x5441n,
} as const;

/** termios flags a pty's queues are read and refilled around (asm-generic/termbits.h). */
export const TERMIOS = {
  /** c_iflag */
  IGNBRK: 0o1,
  BRKINT: 0o2,
  IGNPAR: 0o4,
  PARMRK: 0o10,
  INPCK: 0o20,
  ISTRIP: 0o40,
  INLCR: 0o100,
  IGNCR: 0o200,
  ICRNL: 0o400,
  IUCLC: 0o1000,
  IXON: 0o2000,
  IXANY: 0o4000,
  IXOFF: 0o10000,
  IMAXBEL: 0o20000,
  /** c_oflag */
  OPOST: 0o1,
  /** c_lflag */
  ISIG: 0o1,
  ICANON: 0o2,
  ECHO: 0o10,
  ECHOE: 0o20,
  ECHOK: 0o40,
  ECHONL: 0o100,
  NOFLSH: 0o200,
  TOSTOP: 0o400,
  ECHOCTL: 0o1000,
  ECHOPRT: 0o2000,
  ECHOKE: 0o4000,
  IEXTEN: 0o100000,
  EXTPROC: 0o200000,
} as const;

/** Indexes of `c_cc` in the kernel's `struct termios` (which starts at byte 17). */
export const VCC = {
  VINTR: 0,
  VQUIT: 1,
  VERASE: 2,
  VKILL: 3,
  VEOF: 4,
  VTIME: 5,
  VMIN: 6,
  VSTART: 8,
  VSTOP: 9,
  VSUSP: 10,
  VEOL: 11,
  VREPRINT: 12,
  VWERASE: 14,
  VLNEXT: 15,
  VEOL2: 16,
} as const;

/** Byte offset of `c_cc` in the kernel's `struct termios`. */
export const TERMIOS_CC = 17;

/** sizeof(struct termios) as the kernel's TCGETS/TCSETS* take it on x86_64 (NCCS 19). */
export const TERMIOS_SIZE = 36;

/** makedev(5, 0): /dev/tty, "my controlling terminal". */
export const DEV_TTY = 0x500n;

/** `struct winsize`. */
export interface WinSize {
  /** Rows. */
  rows: number;
  /** Columns. */
  cols: number;
  /** Width in pixels, 0 when unknown. */
  xpixel: number;
  /** Height in pixels, 0 when unknown. */
  ypixel: number;
}

/** The terminal's modes (`struct termios`, TCGETS) as raw bytes. */
export function tcgetattr(fd: number): Uint8Array {
  const raw = new Uint8Array(TERMIOS_SIZE);
  ioctl(fd, TTY_IOCTL.TCGETS, raw, "ioctl(TCGETS)");
  return raw;
}

/** Sets the terminal's modes once pending output is sent (TCSETSW), SIGTTOU blocked. */
export function tcsetattr(fd: number, raw: Uint8Array): void {
  withSignalBlocked(SIG.SIGTTOU, () => ioctl(fd, TTY_IOCTL.TCSETSW, raw, "ioctl(TCSETSW)"));
}

/** Sets the terminal's modes at once (TCSETS), SIGTTOU blocked. */
export function tcsetattrNow(fd: number, raw: Uint8Array): void {
  withSignalBlocked(SIG.SIGTTOU, () => ioctl(fd, TTY_IOCTL.TCSETS, raw, "ioctl(TCSETS)"));
}

/** The terminal's window size (TIOCGWINSZ). */
export function tcgetwinsize(fd: number): WinSize {
  const ws = new Uint16Array(4);
  ioctl(fd, TTY_IOCTL.TIOCGWINSZ, new Uint8Array(ws.buffer), "ioctl(TIOCGWINSZ)");
  return { rows: ws[0], cols: ws[1], xpixel: ws[2], ypixel: ws[3] };
}

/** Sets the terminal's window size (TIOCSWINSZ). */
export function tcsetwinsize(fd: number, ws: WinSize): void {
  const raw = new Uint16Array([ws.rows, ws.cols, ws.xpixel, ws.ypixel]);
  ioctl(fd, TTY_IOCTL.TIOCSWINSZ, new Uint8Array(raw.buffer), "ioctl(TIOCSWINSZ)");
}

/** An ioctl that fills an int (TIOCGPTN, TIOCGPKT, TIOCINQ …): the value. */
export function ioctlGetInt(fd: number, request: bigint, name: string): number {
  const v = new Int32Array(1);
  ioctl(fd, request, new Uint8Array(v.buffer), name);
  return v[0];
}

/** An ioctl that reads an int through a pointer (TIOCSPTLCK, TIOCPKT). */
export function ioctlSetInt(fd: number, request: bigint, value: number, name: string): void {
  ioctl(fd, request, new Uint8Array(new Int32Array([value]).buffer), name);
}

/** Pushes `bytes` into the terminal's input queue one by one (TIOCSTI), as if typed. */
export function pushInput(fd: number, bytes: Uint8Array): void {
  const one = new Uint8Array(1);
  for (const b of bytes) {
    one[0] = b;
    ioctl(fd, TTY_IOCTL.TIOCSTI, one, "ioctl(TIOCSTI)");
  }
}

/** The slave of pty master `fd` opened with open(2) `flags` (TIOCGPTPEER): a new fd. */
export function openPtyPeer(fd: number, flags: number): number {
  return Number(syscall("ioctl", fd, TTY_IOCTL.TIOCGPTPEER, flags));
}

/** The terminal's foreground process group (TIOCGPGRP). */
export function tcgetpgrp(fd: number): number {
  const pgrp = new Int32Array(1);
  ioctl(fd, TTY_IOCTL.TIOCGPGRP, new Uint8Array(pgrp.buffer), "ioctl(TIOCGPGRP)");
  return pgrp[0];
}

/**
 * Gives the terminal to process group `pgrp` (TIOCSPGRP). SIGTTOU is blocked meanwhile: a group
 * that is not in the foreground (the tool, once a job has the terminal) would otherwise be
 * stopped for taking it back.
 */
export function tcsetpgrp(fd: number, pgrp: number): void {
  withSignalBlocked(
    SIG.SIGTTOU,
    () =>
      ioctl(fd, TTY_IOCTL.TIOCSPGRP, new Uint8Array(new Int32Array([pgrp]).buffer), "TIOCSPGRP"),
  );
}

/** Runs `fn` with signal `signo` blocked in the calling thread. */
export function withSignalBlocked<T>(signo: number, fn: () => T): T {
  const block = new BigUint64Array([sigBit(signo)]);
  const old = new BigUint64Array(1);
  syscall("rt_sigprocmask", SIG_HOW.BLOCK, addressOf(block), addressOf(old), 8);
  try {
    return fn();
  } finally {
    syscall("rt_sigprocmask", SIG_HOW.SETMASK, addressOf(old), 0, 8);
  }
}
