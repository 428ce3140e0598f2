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
  FreezeTimeout,
  ImageError,
  NoSuchProcess,
  PolicyError,
  RestoreError,
  SyscallError,
  TardigradeError,
  Unsupported,
} from "./lib/errors.ts";
export { ImageReader, ImageWriter, TOOL_VERSION } from "./lib/image/mod.ts";
/** The image format as data: manifest and `process.cbor` entry types (also `./image.ts`). */
export * as image from "./image.ts";
export {
  type Capabilities,
  type Ids,
  Process,
  processes,
  type ProcessState,
  type ProcStat,
  RLIM_INFINITY,
  RLIMIT,
  type Rlimit,
  type RlimitName,
  type SignalMasks,
  type ThreadInfo,
} from "./lib/inspect/process.ts";
export type { FdView, ProcessView, ThreadView } from "./lib/inspect/view.ts";
export {
  type ImageProcess,
  type ImageThread,
  ProcessImage,
  type ProcessImageOptions,
} from "./lib/inspect/image_process.ts";
export {
  isPidTarget,
  type OpenedTarget,
  openTarget,
  type OpenTargetOptions,
} from "./lib/inspect/open_target.ts";
export {
  type MemoryMatch,
  REGEX_REACH,
  searchMemory,
  type SearchOptions,
  type SearchPattern,
} from "./lib/inspect/search.ts";
export {
  type Change,
  diffProcesses,
  diffSeries,
  diffTargets,
  type FdSummary,
  imageChain,
  type MappingPages,
  type MappingSummary,
  type ProcessDiff,
  type TargetDiff,
} from "./lib/inspect/diff.ts";
export {
  Mapping,
  type MappingKind,
  type MappingOptions,
  type Prot,
} from "./lib/inspect/mappings.ts";
export { type AddressRange, type DumpableOptions, type PageRegion } from "./lib/inspect/pages.ts";
export { NoAddressSpace } from "./lib/inspect/procfs.ts";
export {
  type EpollInfo,
  type EpollTarget,
  type EventfdInfo,
  type FanotifyInfo,
  type FanotifyMark,
  type Fd,
  type FdInfo,
  type FdKind,
  FileTable,
  type InotifyInfo,
  type InotifyWatch,
  type PidfdInfo,
  type SignalfdInfo,
  type TimerfdInfo,
  type TimeSpec,
} from "./lib/inspect/fds.ts";
export {
  freeze,
  type FreezeOptions,
  type FrozenProcess,
  type FrozenThread,
  interruptFrozen,
} from "./lib/ptrace/freeze.ts";
export { type Arg, Injector, type SyscallName } from "./lib/ptrace/inject.ts";
export { RemoteMemory } from "./lib/inspect/memory.ts";
export {
  checkpoint,
  type CheckpointOptions,
  type CheckpointResult,
  type HandOver,
  type PreCopyPass,
} from "./lib/dump/checkpoint.ts";
export {
  checkPolicy,
  type DumpedImage,
  type FdDecision,
  loadPolicy,
  type MappingDecision,
  type Policy,
  type RestorePolicy,
  type RestoreStage,
} from "./lib/policy.ts";
export type { ProgressCallback } from "./lib/progress.ts";
export {
  type LazyPages,
  restore,
  type RestoreOptions,
  type RestoreResult,
} from "./lib/restore/restore.ts";
export type { LatePagesArrival, LateRanges } from "./lib/restore/late_pages.ts";
export { unlockNetwork, type UnlockResult } from "./lib/network/lock.ts";
export { MigrationError } from "./lib/migrate/channel.ts";
export {
  migrate,
  type MigrateOptions,
  type MigrateResult,
  type SendOptions,
  streamImage,
  type StreamResult,
} from "./lib/migrate/sender.ts";
export { type Received, serve, type ServeOptions } from "./lib/migrate/receiver.ts";
export type { TimelineMark } from "./lib/timeline.ts";
export type { ExternalEntry } from "./lib/files/external.ts";
export {
  compareWithImage,
  describeDifference,
  type Difference,
  type RestoredProcess,
  type VerifyOptions,
  verifyRestored,
} from "./lib/restore/verify.ts";
export { ShellJob, type ShellJobStatus, type ToolTerminal } from "./lib/restore/shell_job.ts";
export { Errno, REG_NAMES, type RegName, type Regs, type SigInfo, SYS } from "./ffi/mod.ts";
export { type Feature, kernelFeatures } from "./lib/features.ts";
export {
  type FdsRow,
  fdsRows,
  type ImageSummary,
  type InspectedProcess,
  inspectImage,
  type MapsRow,
  mapsRows,
  type PsRow,
  psRows,
} from "./lib/views/mod.ts";
