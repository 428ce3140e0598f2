/**
 * The image format as data: the reader and writer, the manifest, and the entries of
 * `process.cbor` (`ProcessEntry` and everything in it) that docs/IMAGE.md describes. Imported
 * as `@tardigrade/tardigrade/image`, or as the `image` namespace of the main module.
 *
 * ```ts
 * import { ImageReader, type ProcessEntry } from "./image.ts";
 * using reader = await ImageReader.open("/tmp/img", { verify: true });
 * const root = await reader.readMeta<ProcessEntry>("process");
 * console.log(root.pid, root.mappings.length);
 * ```
 * @module
 */
export {
  BASE_FORMAT_VERSION,
  CHECKSUM_ALGORITHM,
  DEFAULT_ROLL_SIZE,
  FORMAT_VERSION,
  type ImageFileEntry,
  type ImageManifest,
  ImageReader,
  type ImageReaderOptions,
  ImageWriter,
  type ImageWriterOptions,
  INCREMENTAL_FORMAT_VERSION,
  type PageExtent,
  type PageSink,
  type ParentLink,
  type ReadExtentOptions,
  SHARED_PAGES_FORMAT_VERSION,
  TOOL_VERSION,
} from "./lib/image/mod.ts";
export {
  type CgroupEntry,
  type CgroupMembership,
  type Credentials,
  type FdEntry,
  type FileEntry,
  type FirewallEntry,
  type IdRange,
  type IpcEntry,
  type ItimerEntry,
  type MappingEntry,
  type MappingSource,
  type MemoryObjectEntry,
  type MmEntry,
  type MountEntry,
  type MqueueEntry,
  type MqueueLimitsEntry,
  type MsgQueueEntry,
  type NamespaceEntry,
  type NamespacesEntry,
  type NestedPidEntry,
  type NetAddressEntry,
  type NetEntry,
  type NetLinkEntry,
  type NetRouteEntry,
  type NetworkLockEntry,
  type PageRun,
  type PendingSignal,
  type PosixTimerEntry,
  PROCESS_META,
  type ProcessEntry,
  processMetaName,
  type RlimitEntry,
  type SchedulingEntry,
  type SeccompFilterEntry,
  type SemSetEntry,
  type ShmSegmentEntry,
  type SigactionEntry,
  type SpecialMappings,
  type SysvObjectEntry,
  type TerminalEntry,
  type TerminalModes,
  type ThreadEntry,
  type TimeEntry,
  type TmpfsFileEntry,
  type UserEntry,
  type UtsEntry,
  type VethPeerEntry,
  type WindowSize,
  type ZombieEntry,
} from "./lib/image/schema.ts";
