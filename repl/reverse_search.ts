/**
 * Ctrl-R: search the history backwards as in bash. Typed characters narrow the search, Ctrl-R
 * again goes to the next older match, Enter runs the match, any other editing key keeps it on
 * the line to edit, Ctrl-C or Ctrl-G puts back the line as it was.
 */
import { Interface } from "node:readline";

/** A key as readline decodes it. */
export interface Key {
  name?: string;
  ctrl?: boolean;
  meta?: boolean;
  shift?: boolean;
  sequence?: string;
}

/** The parts of a line editor the search drives. */
export interface SearchableEditor {
  history: string[];
  line: string;
  cursor: number;
  getPrompt(): string;
  _ttyWrite(s: string | undefined, key: Key | undefined): void;
  _refreshLine(): void;
}

/** The prompt while searching: what is looked for, and whether it was found. */
export function searchPrompt(query: string, found: boolean): string {
  return `(${found ? "" : "failed "}reverse-i-search)'${query}': `;
}

/** Index of the first entry at or after `from` (newest first) that contains `query`, or -1. */
export function findInHistory(history: string[], query: string, from: number): number {
  for (let i = from; i < history.length; i++) if (history[i].includes(query)) return i;
  return -1;
}

/** Makes Ctrl-R search the history of `editor`. */
export function installReverseSearch(editor: SearchableEditor): void {
  const write = editor._ttyWrite.bind(editor);
  // The editor's own prompt setter: the REPL's would also change the prompt it starts lines with.
  const setPrompt = (p: string) => Interface.prototype.setPrompt.call(editor, p);
  let search:
    | { query: string; index: number; line: string; cursor: number; prompt: string }
    | null = null;

  const show = (from: number) => {
    const s = search!;
    const i = s.query === "" ? -1 : findInHistory(editor.history, s.query, from);
    if (i >= 0) s.index = i;
    const shown = s.index >= 0 ? editor.history[s.index] : s.line;
    setPrompt(searchPrompt(s.query, s.query === "" || i >= 0));
    editor.line = shown;
    const at = s.query === "" ? -1 : shown.indexOf(s.query);
    editor.cursor = at >= 0 ? at : shown.length;
    editor._refreshLine();
  };
  const end = (keep: boolean) => {
    const s = search!;
    search = null;
    setPrompt(s.prompt);
    if (!keep) {
      editor.line = s.line;
      editor.cursor = s.cursor;
    } else editor.cursor = editor.line.length;
    editor._refreshLine();
  };

  editor._ttyWrite = (s, key) => {
    if (!search) {
      if (key?.ctrl && key.name === "r") {
        search = {
          query: "",
          index: -1,
          line: editor.line,
          cursor: editor.cursor,
          prompt: editor.getPrompt(),
        };
        show(0);
        return;
      }
      return write(s, key);
    }
    if (key?.ctrl && key.name === "r") return show(search.index + 1);
    if (key?.ctrl && (key.name === "c" || key.name === "g")) return end(false);
    if (key?.name === "backspace") {
      search.query = search.query.slice(0, -1);
      search.index = -1;
      return show(0);
    }
    if (!key?.ctrl && !key?.meta && s && s.length === 1 && s >= " " && s !== "\x7f") {
      search.query += s;
      return show(Math.max(search.index, 0));
    }
    // Enter runs the match; any other key keeps it on the line and does what it does.
    end(true);
    if (key?.name !== "escape") write(s, key);
  };
}
