/** `tardigrade diff A B`: what changed between two images, or an image and a live process. */
import {
  type Change,
  diffSeries,
  imageChain,
  type MappingSummary,
  type ProcessDiff,
  type TargetDiff,
} from "../mod.ts";
import { count, hex, parsePid, parseVerb, printJson, UsageError, type Verb } from "./common.ts";

/** The verb. */
export const diff: Verb = {
  name: "diff",
  summary: "Show what changed between two images, or an image and a live process.",
  usage: "tardigrade diff A B [C...] [--chain] [--pid PID] [--json]",
  help: `A, B …: image directories or pids, compared in order (A with B, B with C …). Two images
pair their processes by pid; a pid pairs with the image's root (or --pid), whatever its own pid.
Shown: pages whose contents differ (per mapping, merged into ranges), mappings added, removed or
changed, descriptors added, removed, moved or changed, threads (registers where both sides know
them: a live process's are not read, and it runs on while it is compared), credentials,
limits, namespaces, signal masks. Pages two images of a 'dump --parent' chain share, or whose
recorded checksums differ, are told apart without being read.

options:
  --chain    A is an image: walk its 'dump --parent' chain, oldest first, ending with A
  --pid PID  of images, only the process PID
  --json     the full diff: {a, b, processes: [{pid, comm, attributes, creds, limits, signals,
             namespaces, threads, mappings, fds, pages: [{mapping, changed: [{start, end}], changedPages,
             unreadable?}], changedPages}], added, removed}; an array of them for a series`,
  async run(args) {
    const p = parseVerb(this, args, {
      json: { type: "boolean" },
      chain: { type: "boolean" },
      pid: { type: "string" },
    }, { min: 1, max: Infinity });
    if (!p) return 0;
    const pid = p.values.pid === undefined ? undefined : parsePid(p.values.pid as string, this);
    let targets = p.positionals;
    if (p.values.chain) {
      if (targets.length !== 1) throw new UsageError("--chain takes one image", this.usage);
      targets = await imageChain(targets[0]);
      if (targets.length < 2) throw new UsageError(`${p.positionals[0]} has no parent`, this.usage);
    } else if (targets.length < 2) throw new UsageError("missing argument B", this.usage);
    const diffs: TargetDiff[] = [];
    for await (const d of diffSeries(targets, { pid })) {
      if (p.values.json) diffs.push(d);
      else console.log(describe(d));
    }
    if (p.values.json) printJson(diffs.length === 1 ? diffs[0] : diffs);
    return 0;
  },
};

/** The summary of one comparison. */
function describe(d: TargetDiff): string {
  const out = [`${d.a} → ${d.b}`];
  for (const pid of d.removed) out.push(`  process ${pid}: only in ${d.a}`);
  for (const pid of d.added) out.push(`  process ${pid}: only in ${d.b}`);
  for (const p of d.processes) out.push(...describeProcess(p));
  return out.join("\n");
}

function describeProcess(p: ProcessDiff): string[] {
  const out: string[] = [];
  const section = (name: string, lines: string[]) => {
    if (lines.length) out.push(`    ${name}:`, ...lines.map((l) => `      ${l}`));
  };
  const maps = p.pages.length;
  out.push(
    `  process ${p.pid} (${p.comm}): ${count(p.changedPages, "page")} changed` +
      (maps ? ` in ${count(maps, "mapping")}` : ""),
  );
  section(
    "pages",
    p.pages.map((m) =>
      `${mappingName(m.mapping)}: ${
        m.changed.map((r) => `${hex(r.start)}-${hex(r.end)}`).join(", ")
      }` +
      (m.unreadable ? ` (not compared, unreadable: ${m.unreadable.length} ranges)` : "")
    ),
  );
  section("mappings", [
    ...p.mappings.added.map((m) => `+ ${mappingName(m)}`),
    ...p.mappings.removed.map((m) => `- ${mappingName(m)}`),
    ...p.mappings.changed.map((c) => `~ ${hex(c.start)}: ${changeList(c.changes)}`),
  ]);
  section("fds", [
    ...p.fds.added.map((f) => `+ ${f.fd} ${f.kind} ${f.target}`),
    ...p.fds.removed.map((f) => `- ${f.fd} ${f.kind} ${f.target}`),
    ...p.fds.moved.map((m) => `> ${m.from} → ${m.to} ${m.target}`),
    ...p.fds.changed.map((c) => `~ ${c.fd}: ${changeList(c.changes)}`),
  ]);
  section("threads", [
    ...p.threads.added.map((t) => `+ ${t}`),
    ...p.threads.removed.map((t) => `- ${t}`),
    ...p.threads.changed.map((t) => `~ ${t.tid}: ${changeList(t.changes)}`),
    ...(p.threads.registersCompared
      ? []
      : ["(registers not compared: a live process's are not read)"]),
  ]);
  for (const name of ["attributes", "creds", "limits", "namespaces", "signals"] as const) {
    section(name, p[name].length ? [changeList(p[name])] : []);
  }
  return out;
}

function mappingName(m: MappingSummary): string {
  return `${hex(m.start)}-${hex(m.end)} ${m.perms} ${m.kind}${m.path ? ` ${m.path}` : ""}`;
}

function changeList(changes: Change[]): string {
  return changes.map((c) => `${c.field} ${show(c.before)} → ${show(c.after)}`).join(", ");
}

function show(v: unknown): string {
  return typeof v === "bigint" ? hex(v) : JSON.stringify(v);
}
