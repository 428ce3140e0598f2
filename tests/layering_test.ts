/**
 * The layers import downwards only: no import cycle among the modules of lib/ and ffi/, ffi/ (the
 * kernel ABI) imports nothing from lib/, and lib/ (the SDK) nothing from cli/ or repl/. Imports
 * are read from the source text: static imports and re-exports, type-only ones included, and
 * dynamic `import("…")` of a literal path.
 */
import assert from "node:assert/strict";
import { dirname, join, relative, resolve } from "node:path";

const root = resolve(import.meta.dirname!, "..");

const IMPORTS = [
  /^\s*(?:import|export)\b[^;]*?\bfrom\s*["']([^"']+)["']/gm,
  /^\s*import\s*["']([^"']+)["']/gm,
  /\bimport\(\s*["']([^"']+)["']\s*\)/g,
];

/** Every .ts file below `dir`, as paths relative to the repository. */
function modulesIn(dir: string): string[] {
  const out: string[] = [];
  const walk = (abs: string) => {
    for (const e of Deno.readDirSync(abs)) {
      const p = join(abs, e.name);
      if (e.isDirectory) walk(p);
      else if (e.name.endsWith(".ts")) out.push(relative(root, p));
    }
  };
  walk(join(root, dir));
  return out.sort();
}

/** The repository-relative paths a module imports (relative specifiers only). */
function importsOf(module: string): string[] {
  const text = Deno.readTextFileSync(join(root, module));
  const found = new Set<string>();
  for (const re of IMPORTS) {
    for (const m of text.matchAll(re)) {
      if (m[1].startsWith(".")) found.add(relative(root, resolve(root, dirname(module), m[1])));
    }
  }
  return [...found];
}

const graph = new Map([...modulesIn("lib"), ...modulesIn("ffi")].map((m) => [m, importsOf(m)]));

/** Every import cycle, each as the modules along it (the first repeated at the end). */
function cycles(): string[][] {
  const found: string[][] = [];
  const state = new Map<string, "open" | "done">();
  const path: string[] = [];
  const visit = (m: string) => {
    state.set(m, "open");
    path.push(m);
    for (const dep of graph.get(m) ?? []) {
      if (state.get(dep) === "open") found.push([...path.slice(path.indexOf(dep)), dep]);
      else if (!state.has(dep) && graph.has(dep)) visit(dep);
    }
    path.pop();
    state.set(m, "done");
  };
  for (const m of graph.keys()) if (!state.has(m)) visit(m);
  return found;
}

/** The imports of modules under `from` that reach into any folder of `into`. */
function reaching(from: string, into: string[]): string[] {
  return [...graph].filter(([m]) => m.startsWith(`${from}/`)).flatMap(([m, deps]) =>
    deps.filter((d) => into.some((f) => d.startsWith(`${f}/`))).map((d) => `${m} → ${d}`)
  );
}

Deno.test("layering: no import cycle among the modules of lib/ and ffi/", () => {
  assert.ok(graph.size > 50, `only ${graph.size} modules found under ${root}`);
  const found = cycles().map((c) => c.join(" → "));
  assert.deepEqual(found, [], `import cycles:\n${found.join("\n")}`);
});

Deno.test("layering: ffi/ imports nothing from lib/", () => {
  assert.deepEqual(reaching("ffi", ["lib"]), []);
});

Deno.test("layering: lib/ imports nothing from cli/ or repl/", () => {
  assert.deepEqual(reaching("lib", ["cli", "repl"]), []);
});
