/** A progress bar on stderr for dump and restore: bytes, MB/s and time left. */
import { formatBytes } from "./common.ts";

const WIDTH = 30;
const REDRAW_MS = 100;

/**
 * Draws a one-line bar on stderr, redrawn at most every 100 ms. It draws only when stderr is
 * a terminal, so logs and pipes never see control characters.
 */
export class ProgressBar {
  readonly #enabled: boolean;
  readonly #started = performance.now();
  #lastDraw = 0;
  #bytes = 0;
  #drawn = false;

  /** `total` is the expected byte count (0 when unknown: no percentage or time left). */
  constructor(readonly label: string, readonly total = 0) {
    this.#enabled = Deno.stderr.isTerminal();
  }

  /** Records that `bytes` bytes (cumulative) are done. */
  update(bytes: number): void {
    this.#bytes = bytes;
    const now = performance.now();
    if (!this.#enabled || now - this.#lastDraw < REDRAW_MS) return;
    this.#lastDraw = now;
    this.#draw(now);
  }

  /** Draws the final state and ends the line. */
  finish(): void {
    if (!this.#enabled) return;
    this.#draw(performance.now());
    if (this.#drawn) Deno.stderr.writeSync(new TextEncoder().encode("\n"));
  }

  #draw(now: number): void {
    const secs = Math.max((now - this.#started) / 1000, 1e-3);
    const rate = this.#bytes / secs;
    const total = Math.max(this.total, this.#bytes);
    let bar = "";
    let left = "";
    if (total > 0) {
      const frac = Math.min(this.#bytes / total, 1);
      const fill = Math.round(frac * WIDTH);
      bar = `[${"#".repeat(fill)}${" ".repeat(WIDTH - fill)}] ${(frac * 100).toFixed(0)}% `;
      const remain = rate > 0 ? (total - this.#bytes) / rate : 0;
      left = `, ${remain.toFixed(1)}s left`;
    }
    const text = `\r${this.label} ${bar}${formatBytes(this.#bytes)} ` +
      `(${(rate / 1e6).toFixed(1)} MB/s${left})\x1b[K`;
    Deno.stderr.writeSync(new TextEncoder().encode(text));
    this.#drawn = true;
  }
}
