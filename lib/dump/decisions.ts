/**
 * The policy's answers, asked once per object right after the freeze and checked before anything
 * is dumped: an answer that is not one of the documented ones stops the dump, naming the hook,
 * the object and the value (a typo such as `"sk1p"` must never drop memory). Skipping memory
 * the process is using (its stack, its heap, its code) needs `{ skip: true, evenIfUsed: true }`:
 * the restored process could not run without it. Descriptors declared external (`--external`)
 * are checked here too: each key must name a descriptor, and one open file.
 */
import { DumpError, PolicyError } from "../errors.ts";
import type { FdDecision } from "../files/types.ts";
import type { Fd } from "../inspect/fds.ts";
import type { Mapping } from "../inspect/mappings.ts";
import type { ContentsDecision } from "../memory/address_space.ts";
import type { MappingDecision, Policy } from "../policy.ts";
import type { FrozenThread } from "../ptrace/freeze.ts";

/** A value as the message shows it: strings quoted, objects as JSON. */
function shown(v: unknown): string {
  if (v === undefined) return "undefined";
  if (typeof v === "function") return "a function";
  try {
    return JSON.stringify(v, (_k, x) => typeof x === "bigint" ? String(x) : x);
  } catch {
    return String(v);
  }
}

const hex = (n: bigint) => `0x${n.toString(16)}`;

function describe(m: Mapping): string {
  return `${hex(m.start)}-${hex(m.end)} ${m.perms} ${m.path ?? `(${m.kind})`}`;
}

/** Why the process cannot run without the contents of `m`, or null when it can. */
function inUse(m: Mapping, threads: readonly FrozenThread[]): string | null {
  if (m.kind === "stack") return "its stack";
  if (m.kind === "heap") return "its heap";
  const inside = (addr: bigint) => m.start <= addr && addr < m.end;
  const rip = threads.find((t) => inside(t.regs.rip));
  if (rip) return `the code thread ${rip.tid} runs`;
  const rsp = threads.find((t) => inside(t.regs.rsp));
  if (rsp) return `the stack of thread ${rsp.tid}`;
  if (m.prot.exec) return "its code";
  return null;
}

/**
 * The policy's mapping answers for every mapping of a frozen process, checked: by start address,
 * whether its contents are dumped.
 */
export async function decideMappings(
  policy: Policy,
  pid: number,
  layout: readonly Mapping[],
  threads: readonly FrozenThread[],
): Promise<Map<bigint, ContentsDecision>> {
  const out = new Map<bigint, ContentsDecision>();
  for (const m of layout) {
    const answer: unknown = policy.mapping ? await policy.mapping(m) : "dump";
    out.set(m.start, mappingContents(answer, m, pid, threads));
  }
  return out;
}

const MAPPING_ANSWERS = `"dump", "skip" or { skip: true, evenIfUsed: true }`;

function mappingContents(
  answer: unknown,
  m: Mapping,
  pid: number,
  threads: readonly FrozenThread[],
): ContentsDecision {
  const what = `the policy's mapping hook answered ${shown(answer)} for mapping ${
    describe(m)
  } of process ${pid}`;
  if (answer === "dump") return "dump";
  const forced = isForcedSkip(answer);
  if (answer !== "skip" && !forced) {
    throw new PolicyError(`${what}, which is none of ${MAPPING_ANSWERS}; nothing was dumped`);
  }
  const used = forced ? null : inUse(m, threads);
  if (used) {
    throw new PolicyError(
      `${what}, but it holds ${used}: the restored process could not run without it; answer ` +
        `{ skip: true, evenIfUsed: true } to skip it anyway`,
    );
  }
  return "skip";
}

function isForcedSkip(answer: unknown): answer is Extract<MappingDecision, object> {
  if (typeof answer !== "object" || answer === null) return false;
  const keys = Object.keys(answer).sort().join(",");
  const a = answer as Record<string, unknown>;
  return keys === "evenIfUsed,skip" && a.skip === true && a.evenIfUsed === true;
}

/** One descriptor with the policy's checked answer for it. */
export interface DecidedFd {
  fd: Fd;
  decision: FdDecision;
}

/**
 * The open files the user declared external by key (`dump --external KEY`): `pipe:[12345]`,
 * `socket:[6789]`, a FIFO's or terminal's path (what `fd.target` reads), or `fd:N` for fd N of
 * the dump's root process. Each is recorded under its object's name (`fd.target`), also when
 * declared as `fd:N`, so the restore asks for it by what it is.
 */
export class ExternalDeclarations {
  readonly #keys: readonly string[];
  readonly #matched = new Set<string>();

  /** `keys` as the user gave them; `root` the pid `fd:N` keys refer to. */
  constructor(keys: readonly string[], readonly root: number) {
    for (const key of keys) {
      if (!key) throw new DumpError(`--external needs a key (pipe:[N], socket:[N], a path, fd:N)`);
    }
    this.#keys = keys;
  }

  /** The key `fd` is declared external under, or undefined. */
  match(fd: Fd): string | undefined {
    const key = this.#keys.find((k) =>
      k === fd.target || (fd.pid === this.root && k === `fd:${fd.fd}`)
    );
    if (key === undefined) return undefined;
    this.#matched.add(key);
    return fd.target;
  }

  /** Once every process is planned: refuses a key that named no descriptor of the dump. */
  checkAllMatched(decided: readonly DecidedFd[]): void {
    const unmatched = this.#keys.filter((k) => !this.#matched.has(k));
    if (!unmatched.length) return;
    const shown = decided.filter((d) => d.fd.pid === this.root).slice(0, 12)
      .map((d) => `fd ${d.fd.fd} ${d.fd.target}`).join(", ");
    throw new DumpError(
      `--external ${unmatched[0]} names no descriptor of the dump (those of process ` +
        `${this.root}: ${shown}); nothing was dumped`,
    );
  }
}

/**
 * Checks the external files of a whole dump (`decided`: every process's descriptors): an open
 * file declared external in one process is external in every process that shares it, and one key
 * names one open file (the restore hands one file in per key).
 */
export function settleExternal(decided: DecidedFd[]): void {
  const byFile = new Map<number, string>();
  const byKey = new Map<string, DecidedFd>();
  for (const d of decided) {
    if (typeof d.decision !== "object" || !("external" in d.decision)) continue;
    const key = d.decision.external;
    byFile.set(d.fd.fileId, key);
    const first = byKey.get(key);
    if (first && first.fd.fileId !== d.fd.fileId) {
      throw new DumpError(
        `external file ${key} would be two open files, fd ${first.fd.fd} of process ` +
          `${first.fd.pid} and fd ${d.fd.fd} of process ${d.fd.pid}, but a restore hands in ` +
          `one file per key: give them keys of their own (a policy's { external: "KEY" })`,
      );
    }
    byKey.set(key, d);
  }
  for (const d of decided) {
    const key = byFile.get(d.fd.fileId);
    if (key !== undefined && d.decision === "dump") d.decision = { external: key };
  }
}

/**
 * The policy's fd answers for every descriptor, checked (a reopen path must be a file); a
 * descriptor the user declared external (`external`) is external, where the policy answers
 * "dump" for it (any other answer is refused: the two would disagree).
 */
export async function decideFds(
  policy: Policy,
  pid: number,
  fds: readonly Fd[],
  external?: ExternalDeclarations,
): Promise<DecidedFd[]> {
  const out: DecidedFd[] = [];
  for (const fd of fds) {
    const answer: unknown = policy.fd ? await policy.fd(fd) : "dump";
    const decision = fdDecision(answer, fd, pid);
    const key = external?.match(fd);
    if (key !== undefined && decision !== "dump") {
      throw new PolicyError(
        `fd ${fd.fd} of process ${pid} (${fd.target}) is declared external (--external), but ` +
          `the policy's fd hook answered ${shown(answer)} for it; nothing was dumped`,
      );
    }
    out.push({ fd, decision: key === undefined ? decision : { external: key } });
  }
  return out;
}

const FD_ANSWERS = `"dump", "skip", { reopen: "/path" } or { external: "KEY" }`;

function fdDecision(answer: unknown, fd: Fd, pid: number): FdDecision {
  const what = `the policy's fd hook answered ${shown(answer)} for fd ${fd.fd} of process ${pid} ` +
    `(${fd.target})`;
  if (answer === "dump" || answer === "skip") return answer;
  const a = answer as Record<string, unknown> | null;
  const key = typeof a === "object" && a !== null ? Object.keys(a).join(",") : "";
  if (key === "external" && typeof a!.external === "string") {
    if (!a!.external || /[\n\r]/.test(a!.external)) {
      throw new PolicyError(`${what}: an external file's key is a name on one line`);
    }
    return { external: a!.external };
  }
  if (key !== "reopen" || typeof a!.reopen !== "string") {
    throw new PolicyError(`${what}, which is none of ${FD_ANSWERS}; nothing was dumped`);
  }
  const path = a!.reopen;
  if (!path.startsWith("/")) throw new PolicyError(`${what}: the path to reopen must be absolute`);
  let st: Deno.FileInfo;
  try {
    st = Deno.statSync(path);
  } catch (err) {
    throw new PolicyError(`${what}: ${path} cannot be reopened (${(err as Error).message})`);
  }
  if (!st.isFile && !st.isDirectory) {
    throw new PolicyError(`${what}: ${path} is not a regular file or a directory`);
  }
  return { reopen: path };
}
