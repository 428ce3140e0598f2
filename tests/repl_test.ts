/** The REPL driven through piped stdin: helpers, tables, dot-commands, TypeScript, await. */
import assert from "node:assert/strict";
import { complete, watchPromises } from "../repl/completion.ts";
import { initialScope, RESULT_SHAPES } from "../repl/helpers.ts";
import { keepHistory, readHistory } from "../repl/history.ts";
import { findInHistory } from "../repl/reverse_search.ts";
import { commonPrefix, inColumns } from "../repl/tab_key.ts";
import * as sdk from "../mod.ts";
import { Process } from "../mod.ts";
import { EventEmitter } from "node:events";
import { declaredNames, evaluate } from "../repl/evaluate.ts";
import { fixture, spawnTarget } from "./helpers.ts";

const root = new URL("../", import.meta.url).pathname;

/** Runs the REPL (`deno run -A ENTRY`) with `input` on stdin; returns stdout and stderr. */
async function runRepl(input: string, entry = ["repl/main.ts"]) {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", ...entry],
    cwd: root,
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const w = child.stdin.getWriter();
  await w.write(new TextEncoder().encode(input));
  await w.close();
  const out = await child.output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

Deno.test("repl: help(), ps() table, a dot-command and an inline policy", async () => {
  const t = await spawnTarget(await fixture("hello"), [], { ready: /READY/ });
  try {
    const r = await runRepl([
      "help()",
      "(await ps()).filter((p) => p.pid === " + t.pid + ")",
      `.fds ${t.pid}`,
      `const policy: Policy = { mapping: (m) => m.kind === "stack" ? "skip" : "dump" }`,
      `policy.mapping!({ kind: "stack" } as Mapping)`,
      "const n: number = await Promise.resolve(40)",
      "n + (",
      "  2)",
      "",
    ].join("\n"));
    assert.equal(r.code, 0, r.stderr);
    const out = r.stdout;
    assert.match(out, /^dump\(pid, dir, policy\?, opts\?\)\s+checkpoint pid into dir/m);
    assert.match(out, /^inspect\(dir\)\s+/m);
    // console.table of ps(): a header with the row's keys and the fixture's row.
    assert.match(out, /│ \(idx\) │ pid\s+│ ppid\s*│ uid │ state │ threads │ rssBytes │ comm/);
    assert.match(out, new RegExp(`│\\s+0 │ ${t.pid} │.*"hello"`));
    // .fds PID: the fixture's three descriptors.
    assert.match(out, /│\s+0 │\s+0 │ "device" │ "\/dev\/null"/);
    assert.match(out, /│\s+2 │\s+2 │ "file"/);
    assert.match(out, /'skip'/);
    assert.match(out, /^(tardigrade> |\| )*42$/m);
  } finally {
    await t.kill();
  }
});

Deno.test("repl: also started as `main.ts repl`; errors are reported and the session goes on", async () => {
  const r = await runRepl("nosuch\n.maps abc\n1 + 1\n", ["main.ts", "repl"]);
  assert.equal(r.code, 0);
  assert.match(r.stdout, /ReferenceError: nosuch is not defined/);
  assert.match(r.stderr, /tardigrade: not a pid: 'abc'/);
  assert.match(r.stdout, /^(tardigrade> )*2$/m);
});

Deno.test("repl: declarations persist, destructuring and functions included", async () => {
  const scope: Record<string, unknown> = {};
  await evaluate(
    "const { a, b: c } = { a: 1, b: 2 }; function f(x: number) { return x * 10 }",
    scope,
  );
  assert.equal(await evaluate("f(a + c)", scope), 30);
  await evaluate("let k = 1", scope);
  await evaluate("k += 4", scope);
  assert.equal(await evaluate("k", scope), 5);
  assert.deepEqual(declaredNames("const x = 1, y = [1,\n2]\nclass Z {}\nlet [p, q] = y"), [
    "x",
    "y",
    "Z",
    "p",
    "q",
  ]);
});

Deno.test("repl: completion lists the members of the object before the dot", async () => {
  const scope = initialScope();
  const members = Object.keys(sdk).filter((k) => k.startsWith("P")).sort();
  assert.ok(members.includes("Process") && members.includes("PolicyError"));
  assert.deepEqual(complete("sdk.P", scope), [members, "P"]);
  assert.deepEqual(complete("x = Math.ma", scope), [["max"], "ma"]);
  // A bare name: the session's names and the globals, not members of anything.
  const [names, token] = complete("await pr", scope);
  assert.equal(token, "pr");
  assert.ok(names.includes("proc") && names.includes("processes") && names.includes("prompt"));
  // A Process and its class: methods of the prototype, statics of the class; none of Object's.
  scope.p = await Process.open(Deno.pid);
  const [methods] = complete("p.", scope);
  assert.ok(
    ["comm", "cmdline", "mappings", "read"].every((m) => methods.includes(m)),
    `${methods}`,
  );
  assert.ok(!methods.includes("hasOwnProperty") && !methods.includes("constructor"));
  assert.deepEqual(complete("sdk.Process.op", scope)[0], ["open", "openSync"]);
  // Awaited values: a settled promise of the session, a helper whose result is known.
  scope.pending = Process.open(Deno.pid);
  watchPromises(scope);
  await scope.pending;
  await Promise.resolve(); // the watcher's own callback runs after the awaiter's
  assert.deepEqual(complete("(await pending).cm", scope)[0], ["cmdline"]);
  assert.deepEqual(complete("(await proc(1)).en", scope, [], RESULT_SHAPES)[0], ["environ"]);
  assert.ok(complete("(await ps()).fil", scope, [], RESULT_SHAPES)[0].includes("filter"));
  // Never runs code: after a call, or a still-pending promise, nothing is offered.
  assert.deepEqual(complete("ps().", scope), [[], ""]);
  scope.never = new Promise(() => {});
  watchPromises(scope);
  assert.deepEqual(complete("(await never).", scope), [[], ""]);
  assert.deepEqual(complete("nosuch.x", scope), [[], "x"]);
  // Dot-commands at the start of a line.
  assert.deepEqual(complete(".i", scope, ["inspect", "help", "ps"]), [[".inspect"], ".i"]);
});

Deno.test("repl: history is appended to its file (0600) and cut back to its size", async () => {
  const dir = await Deno.makeTempDir({ prefix: "tardigrade-history-" });
  try {
    const path = `${dir}/history`;
    await Deno.writeTextFile(path, ["one", "two", "three", "four"].join("\n") + "\n");
    const rl = Object.assign(new EventEmitter(), { history: [] as string[] });
    keepHistory(rl, path, 3);
    // The session starts with the last three lines, newest first; the file is cut to them.
    assert.deepEqual(rl.history, ["four", "three", "two"]);
    assert.deepEqual(readHistory(path, 100), ["two", "three", "four"]);
    for (const line of ["five", "five", "six"]) {
      rl.history.unshift(line);
      rl.emit("history", rl.history);
    }
    // A line repeated at once is kept once; the file never holds more than three lines.
    assert.deepEqual(readHistory(path, 100), ["four", "five", "six"]);
    assert.equal((await Deno.stat(path)).mode! & 0o777, 0o600);
    assert.deepEqual(findInHistory(["six", "five", "four"], "f", 0), 1);
    assert.deepEqual(findInHistory(["six", "five", "four"], "f", 2), 2);
    assert.deepEqual(findInHistory(["six"], "x", 1), -1);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("repl: Tab lists in columns what it cannot complete", () => {
  assert.equal(commonPrefix(["PolicyError", "Process"]), "P");
  assert.equal(commonPrefix(["open", "openSync"]), "open");
  assert.equal(inColumns(["a", "bb", "ccc", "d"], 10), "a    bb\r\nccc  d");
});
