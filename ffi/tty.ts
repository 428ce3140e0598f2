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
} as const;

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

/** The terminal's window size (TIOCGWINSZ). */
export function tcgetwinsize(fd: number): WinSize {
  const ws = new Uint16Array(4);
  ioctl(fd, TTY_IOCTL.TIOCGWINSZ, new Uint8Array(ws.buffer), "ioctl(TIOCGWINSZ)");
  return { rows: ws[0], cols: ws[1], xpixel: ws[2], ypixel: ws[3] };
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
