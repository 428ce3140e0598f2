/**
 * tardigrade: checkpoint, inspect and restore live Linux processes from TypeScript.
 *
 * ```ts
 * import { Process } from "./mod.ts";
 * const proc = await Process.open(1234);
 * for await (const m of proc.mappings()) console.log(m.start, m.path);
 * ```
 * @module
 */
export {
  AccessDenied,
  DumpError,
  ImageError,
  NoSuchProcess,
  RestoreError,
  SyscallError,
  TardigradeError,
  Unsupported,
} from "./lib/errors.ts";
