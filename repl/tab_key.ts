/**
 * The Tab key, handled before the line editor sees it. node:readline on Deno completes
 * asynchronously: a second Tab that arrives in the same read as the first (a quick double Tab,
 * or keys sent by a program) is inserted into the line as a tab character, and completion then
 * runs on a line ending in a tab and lists every name. Here each Tab completes at once: a
 * single candidate or a longer common prefix is inserted, and a second Tab lists them all.
 */
import type { Completion } from "./completion.ts";
import type { Key } from "./reverse_search.ts";

/** The parts of a line editor the Tab key drives. */
export interface CompletingEditor {
  line: string;
  cursor: number;
  _ttyWrite(s: string | undefined, key: Key | undefined): void;
  _insertString(s: string): void;
  _refreshLine(): void;
}

/** The longest start that all of `words` share. */
export function commonPrefix(words: string[]): string {
  if (words.length === 0) return "";
  let prefix = words[0];
  for (const w of words) while (!w.startsWith(prefix)) prefix = prefix.slice(0, -1);
  return prefix;
}

/** `words` in columns that fit in `width` characters, row by row as `ls` does. */
export function inColumns(words: string[], width: number): string {
  const cell = Math.max(...words.map((w) => w.length)) + 2;
  const perRow = Math.max(1, Math.floor(width / cell));
  const rows: string[] = [];
  for (let i = 0; i < words.length; i += perRow) {
    rows.push(words.slice(i, i + perRow).map((w) => w.padEnd(cell)).join("").trimEnd());
  }
  return rows.join("\r\n");
}

/**
 * Makes Tab complete on `editor` with `completer` (given the text before the cursor); lists go
 * to `output`, `columns` wide.
 */
export function installTabCompletion(
  editor: CompletingEditor,
  completer: (line: string) => Completion,
  output: { write(s: string): unknown; columns?: number },
): void {
  const write = editor._ttyWrite.bind(editor);
  let tabBefore = false;
  editor._ttyWrite = (s, key) => {
    const isTab = key?.name === "tab" && !key.ctrl && !key.meta && !key.shift;
    const again = tabBefore;
    tabBefore = isTab;
    if (!isTab) return write(s, key);
    const [candidates, token] = completer(editor.line.slice(0, editor.cursor));
    if (candidates.length === 0) return;
    const common = commonPrefix(candidates);
    if (common.length > token.length && common.startsWith(token)) {
      editor._insertString(common.slice(token.length));
    } else if (again && candidates.length > 1) {
      output.write(`\r\n${inColumns(candidates, output.columns ?? 80)}\r\n`);
      editor._refreshLine();
    }
  };
}
