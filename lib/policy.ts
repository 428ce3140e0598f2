/**
 * Checkpoint policies: TypeScript hooks that decide what is dumped and how. The same object works
 * from the SDK (`checkpoint(pid, { policy })`), the CLI (`--policy FILE.ts`) and the REPL.
 */
import type { Fd } from "./inspect/fds.ts";
import type { Mapping } from "./inspect/mappings.ts";
import type { FdDecision } from "./files/types.ts";
import type { Process } from "./inspect/process.ts";
import type { ProcessEntry } from "./image/schema.ts";
import { PolicyError } from "./errors.ts";
import type { Difference } from "./restore/verify.ts";

export type { FdDecision };

/**
 * What to do with one mapping's contents: dump them, or skip them (restored as zeroes, or as the
 * file's own pages for a file mapping; the mapping itself is always made again). Memory the
 * process uses (its stack, its heap, its code) is skipped only with `{ skip: true, evenIfUsed:
 * true }`. Any other answer stops the dump.
 */
export type MappingDecision = "dump" | "skip" | { skip: true; evenIfUsed: true };

/** A finished image, as `afterDump` sees it before the image is committed. */
export interface DumpedImage {
  /** Where the image will be once committed. */
  dir: string;
  /** The process entry written to it. */
  process: ProcessEntry;
  /** Bytes of page data. */
  pageBytes: number;
}

/** Hooks a policy may define; every hook is optional and may be async. */
export interface Policy {
  /** Before the process is frozen (throw to refuse the dump). */
  beforeFreeze?(proc: Process): void | Promise<void>;
  /** For each mapping, while frozen. */
  mapping?(m: Mapping): MappingDecision | Promise<MappingDecision>;
  /**
   * For each descriptor, while frozen: `"dump"`, `"skip"`, `{ reopen: "/path" }`, or
   * `{ external: KEY }` to leave its open file outside the image, handed in at restore as
   * `inheritFds: { KEY: N }` (`--inherit-fd fd[N]:KEY`); KEY is usually `fd.target`
   * (`pipe:[12345]`). A pipe, FIFO, pseudo-terminal or connected UNIX socket whose other side a
   * process outside the dump holds is refused unless skipped or external.
   */
  fd?(fd: Fd): FdDecision | Promise<FdDecision>;
  /** After everything is written, before the image is committed (throw to discard it). */
  afterDump?(image: DumpedImage): void | Promise<void>;
}

/** The stages of a restore, in order, as `RestorePolicy.restoreStage` is told them. */
export type RestoreStage =
  | "preflight"
  | "stub"
  | "memory"
  | "files"
  | "process"
  | "threads"
  | "verify"
  | "resume";

/** Hooks a restore calls; every hook is optional. */
export interface RestorePolicy {
  /**
   * Told each stage of each process (`preflight`, `stub`, `verify` and `resume` once, for the
   * root)
   * before it runs; throwing stops the restore, which kills what it made.
   */
  restoreStage?(stage: RestoreStage, process: ProcessEntry): void;
  /**
   * Told each difference the restore's comparison finds between the image and the restored
   * processes; true accepts it (the restore goes on), false or no hook fails the restore.
   */
  allowDifference?(difference: Difference): boolean;
}

/** The hooks a policy may have: those of a dump and those of a restore. */
const HOOKS = [
  "beforeFreeze",
  "mapping",
  "fd",
  "afterDump",
  "restoreStage",
  "allowDifference",
] as const;

/**
 * Checks that `policy` is a policy: an object whose every property is one of the hooks, as a
 * function. A misspelt hook (`mappings`) would otherwise be silently never called. `where` names
 * it in the message (a file, "the SDK's policy option").
 */
export function checkPolicy(policy: unknown, where: string): Policy & RestorePolicy {
  if (typeof policy !== "object" || policy === null || Array.isArray(policy)) {
    throw new PolicyError(`${where}: a policy is an object of hooks, not ${typeof policy}`);
  }
  for (const [key, value] of Object.entries(policy)) {
    if (!(HOOKS as readonly string[]).includes(key)) {
      throw new PolicyError(
        `${where}: "${key}" is not a policy hook (the hooks are ${HOOKS.join(", ")})`,
      );
    }
    if (typeof value !== "function") {
      throw new PolicyError(`${where}: hook "${key}" is a ${typeof value}, not a function`);
    }
  }
  return policy as Policy & RestorePolicy;
}

/**
 * Loads a policy module (its default export) from a path or URL and checks it. A module that
 * cannot be loaded, throws while it loads, has no default export or exports something else than
 * a policy is refused with a `PolicyError` saying which.
 */
export async function loadPolicy(pathOrUrl: string): Promise<Policy & RestorePolicy> {
  const url = /^[a-z]+:/.test(pathOrUrl)
    ? pathOrUrl
    : new URL(pathOrUrl, `file://${Deno.cwd()}/`).href;
  let mod: Record<string, unknown>;
  try {
    mod = await import(url);
  } catch (err) {
    throw new PolicyError(`policy ${pathOrUrl} cannot be loaded: ${(err as Error).message}`, {
      cause: err,
    });
  }
  if (!("default" in mod)) {
    throw new PolicyError(`policy ${pathOrUrl} has no default export (export default { … })`);
  }
  return checkPolicy(mod.default, `policy ${pathOrUrl}`);
}
