/**
 * History kept across sessions: every line entered on a terminal is appended to a file (mode
 * 0600: lines may hold secrets), and the next session starts with the last lines of it. The file
 * is appended to rather than rewritten, so two sessions at once both keep their lines, and cut
 * back to its last lines whenever it grows past the size limit.
 */
/** Lines kept by default, in the file and in the session. */
export const HISTORY_SIZE = 1000;

/** The readline side of a REPL, as far as history goes: newest entry first. */
export interface HistoryHolder {
  history: string[];
  on(event: "history", listener: (history: string[]) => void): unknown;
}

/** The last `size` lines of the history file, oldest first; none if there is no file yet. */
export function readHistory(path: string, size: number = HISTORY_SIZE): string[] {
  let text: string;
  try {
    text = Deno.readTextFileSync(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return [];
    throw err;
  }
  const lines = text.split("\n").filter((l) => l.trim() !== "");
  return lines.slice(Math.max(0, lines.length - size));
}

/** Rewrites the file with only its last `size` lines (atomically: a rename). */
function trimHistory(path: string, size: number): void {
  const kept = readHistory(path, size);
  const tmp = `${path}.${Deno.pid}.tmp`;
  Deno.writeTextFileSync(tmp, kept.map((l) => `${l}\n`).join(""), { mode: 0o600 });
  Deno.renameSync(tmp, path);
}

/**
 * Loads the history of `path` into `rl` and appends each line entered from now on. A line that
 * repeats the one before is not kept twice; lines are single lines (the editor's own entries).
 */
export function keepHistory(rl: HistoryHolder, path: string, size: number = HISTORY_SIZE): void {
  const all = readHistory(path, Infinity);
  if (all.length > size) trimHistory(path, size);
  const loaded = all.slice(Math.max(0, all.length - size));
  rl.history.splice(0, rl.history.length, ...loaded.toReversed());
  let count = loaded.length;
  let last = rl.history[0];
  rl.on("history", (history) => {
    const line = history[0];
    if (line === undefined || line === last) return;
    last = line;
    try {
      Deno.writeTextFileSync(path, `${line}\n`, { append: true, mode: 0o600 });
      if (++count > size) {
        trimHistory(path, size);
        count = size;
      }
    } catch (err) {
      // History is a convenience: a full disk or a read-only home must not end the session.
      console.error(`tardigrade: history not saved in ${path}: ${(err as Error).message}`);
    }
  });
}
