/**
 * Views: processes, mappings, descriptors and images as plain rows and summaries, the shapes the
 * CLI prints (and `--json` gives) and the REPL shows as tables.
 */
export { type FdsRow, fdsRows } from "./fds.ts";
export { type ImageSummary, type InspectedProcess, inspectImage } from "./image.ts";
export { type MapsRow, mapsRows } from "./maps.ts";
export { type PsRow, psRows } from "./ps.ts";
