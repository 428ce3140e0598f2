/**
 * Checkpoint policies: TypeScript hooks that decide what is dumped and how. The same object works
 * from the SDK (`checkpoint(pid, { policy })`), the CLI (`--policy FILE.ts`) and the REPL.
 */
import type { Fd } from "./inspect/fds.ts";
import type { Mapping } from "./inspect/mappings.ts";
import type { MappingDecision } from "./memory/address_space.ts";
import type { Process } from "./inspect/process.ts";
import type { ProcessEntry } from "./image/schema.ts";
import type { Difference } from "./restore/verify.ts";

/** What to do with one descriptor: dump it, leave it out (closed after restore), or restore it
 * as the file at another path (opened with the same flags, at position 0 unless appending). */
export type FdDecision = "dump" | "skip" | { reopen: string };

export type { MappingDecision };

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
  /** For each descriptor, while frozen. */
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

/** Loads a policy module (its default export) from a path or URL. */
export async function loadPolicy(pathOrUrl: string): Promise<Policy> {
  const url = /^[a-z]+:/.test(pathOrUrl)
    ? pathOrUrl
    : new URL(pathOrUrl, `file://${Deno.cwd()}/`).href;
  const mod = await import(url);
  const policy = mod.default ?? mod.policy;
  if (!policy || typeof policy !== "object") {
    throw new TypeError(`${pathOrUrl} has no default export of a policy object`);
  }
  return policy as Policy;
}
