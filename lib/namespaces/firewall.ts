/**
 * The firewall of a container's net namespace: its nftables ruleset, and the tables iptables-nft
 * (Debian's iptables) keeps in it. All is read and made by commands run in the namespace under
 * `nsenter --net` (netns_command.ts: children of the tool, which never enters it).
 *
 * Dump: `nft list ruleset` (counters included), and `iptables-save -c` / `ip6tables-save -c` for
 * the tables iptables owns: made again by `nft` they would work but iptables could no longer read
 * them, so they are made again by `iptables-restore -c`, and the rest of the ruleset by `nft -f`.
 * The restore's check reads both again, without what moves once packets flow (counters' values,
 * set elements' expiry).
 *
 * Refused at dump time: legacy iptables tables (x_tables, which nft does not see), arptables and
 * ebtables tables, a table iptables calls incompatible (nft added to it), and a ruleset `nft`
 * could not make again (checked with `nft -c`, which makes nothing).
 */
import { DumpError, RestoreError } from "../errors.ts";
import type { FirewallEntry } from "../image/schema.ts";
import { hasProgram, runInNetns } from "./netns_command.ts";

/** The /proc/net files that name the legacy (x_tables) tables of a net namespace. */
const LEGACY_TABLES = ["ip_tables_names", "ip6_tables_names", "arp_tables_names"];

/** The iptables commands of each family whose tables they own. */
const IPTABLES = { ip: "iptables", ip6: "ip6tables" } as const;

/** Refuses legacy iptables tables in the net namespace of `pid`, which nft cannot read. */
function refuseLegacyTables(pid: number): void {
  for (const file of LEGACY_TABLES) {
    let names = "";
    try {
      names = Deno.readTextFileSync(`/proc/${pid}/net/${file}`).trim();
    } catch { /* the module is not loaded: no such tables anywhere */ }
    if (names) {
      throw new DumpError(
        `the net namespace of container ${pid} has legacy iptables tables (${file}: ` +
          `${names.split("\n").join(", ")}), which tardigrade does not dump (nft's it does)`,
      );
    }
  }
}

/** One `table FAMILY NAME { … }` of `nft list ruleset`. */
interface Table {
  family: string;
  name: string;
  text: string;
}

/** The tables of a ruleset as `nft list ruleset` prints them (each from `table` to `}`). */
function tablesOf(ruleset: string): Table[] {
  const tables: Table[] = [];
  let current: string[] = [];
  for (const line of ruleset.split("\n")) {
    if (line.startsWith("table ") || current.length) current.push(line);
    if (line === "}" && current.length) {
      const [, family, name] = current[0].split(/\s+/);
      tables.push({ family, name, text: current.join("\n") });
      current = [];
    }
  }
  return tables;
}

/** The tables an iptables-save output holds (its `*NAME` lines). */
const savedTables = (saved: string | undefined) =>
  (saved ?? "").split("\n").filter((l) => l.startsWith("*")).map((l) => l.slice(1));

/** Runs `program` on the file `text` is written to (a file of the tool's), in `pid`'s namespace. */
function onFile(pid: number, program: string, args: string[], text: string): void {
  const file = Deno.makeTempFileSync({ prefix: "tardigrade-firewall-" });
  try {
    Deno.writeTextFileSync(file, text);
    runInNetns(pid, program, [...args, file]);
  } finally {
    Deno.removeSync(file);
  }
}

/** The tables of `firewall.ruleset` that `nft` makes: those iptables does not own. */
function nftTables(firewall: FirewallEntry): Table[] {
  return tablesOf(firewall.ruleset).filter((t) =>
    !(t.family === "ip" && savedTables(firewall.iptables).includes(t.name)) &&
    !(t.family === "ip6" && savedTables(firewall.ip6tables).includes(t.name))
  );
}

/** `iptables-save -c` of family `family` in `pid`'s namespace; refuses a table it cannot read. */
function saveIptables(pid: number, family: keyof typeof IPTABLES): string {
  const saved = runInNetns(pid, `${IPTABLES[family]}-save`, ["-c"]);
  const bad = saved.split("\n").find((l) => /incompatible|Warning/i.test(l));
  if (bad) {
    throw new DumpError(
      `the ${family} firewall tables of the net namespace of container ${pid} mix iptables' ` +
        `rules with nft's (${bad.replace(/^#\s*/, "")}), which tardigrade does not dump`,
    );
  }
  return saved;
}

/** Without nft: refuses iptables-nft tables in the namespace of `pid`, which nft alone reads. */
function refuseUnread(pid: number): void {
  for (const program of Object.values(IPTABLES)) {
    if (!hasProgram(`${program}-save`)) continue;
    const table = savedTables(runInNetns(pid, `${program}-save`, []))[0];
    if (table) {
      throw new DumpError(
        `the net namespace of container ${pid} has ${program} table ${table}, and nft, which ` +
          `tardigrade reads a firewall with, is not installed`,
      );
    }
  }
}

/** The firewall of the net namespace of container `pid` (frozen); undefined: none. */
export function dumpFirewall(pid: number): FirewallEntry | undefined {
  refuseLegacyTables(pid);
  if (!hasProgram("nft")) {
    refuseUnread(pid);
    return undefined;
  }
  const ruleset = runInNetns(pid, "nft", ["list", "ruleset"]);
  const tables = tablesOf(ruleset);
  if (!tables.length) return undefined;
  const foreign = tables.find((t) =>
    t.family === "arp" || (t.family === "bridge" &&
      ["filter", "nat", "broute"].includes(t.name))
  );
  if (foreign) {
    throw new DumpError(
      `the net namespace of container ${pid} has firewall table ${foreign.family} ` +
        `${foreign.name}, arptables' or ebtables', which tardigrade does not dump`,
    );
  }
  const entry: FirewallEntry = { ruleset };
  for (const family of ["ip", "ip6"] as const) {
    if (tables.some((t) => t.family === family)) {
      entry[IPTABLES[family]] = saveIptables(pid, family);
    }
  }
  const made = nftTables(entry);
  try {
    if (made.length) onFile(pid, "nft", ["-c", "-f"], made.map((t) => t.text).join("\n"));
  } catch (err) {
    throw new DumpError(
      `the firewall ruleset of the net namespace of container ${pid} could not be made again ` +
        `by nft: ${(err as Error).message}`,
    );
  }
  return entry;
}

/** Makes `firewall` in the (fresh) net namespace of `pid`. */
export function makeFirewall(pid: number, firewall: FirewallEntry): void {
  if (!hasProgram("nft")) {
    throw new RestoreError("its net namespace had a firewall ruleset, and nft is not installed");
  }
  const made = nftTables(firewall);
  if (made.length) onFile(pid, "nft", ["-f"], made.map((t) => t.text).join("\n"));
  for (const family of ["ip", "ip6"] as const) {
    const saved = firewall[IPTABLES[family]];
    if (saved) onFile(pid, `${IPTABLES[family]}-restore`, ["-c"], saved);
  }
  dropAddedChains(pid, firewall.ruleset);
}

/** The chains of a table as nft prints it, with whether each holds no rule. */
function chainsOf(table: Table): Map<string, boolean> {
  const chains = new Map<string, boolean>();
  for (const m of table.text.matchAll(/^\tchain (\S+) \{\n([\s\S]*?)\n\t\}$/gm)) {
    chains.set(m[1], m[2].split("\n").every((l) => /^\t\ttype |^\s*$/.test(l)));
  }
  return chains;
}

/**
 * Deletes the empty chains iptables-restore made that the dumped ruleset lacks (it makes every
 * built-in chain its save names): the tables are then as nft showed them at the dump.
 */
function dropAddedChains(pid: number, ruleset: string): void {
  const dumped = tablesOf(ruleset);
  for (const table of tablesOf(runInNetns(pid, "nft", ["list", "ruleset"]))) {
    const was = dumped.find((t) => t.family === table.family && t.name === table.name);
    if (!was) continue;
    const had = chainsOf(was);
    for (const [chain, empty] of chainsOf(table)) {
      if (empty && !had.has(chain)) {
        runInNetns(pid, "nft", ["delete", "chain", table.family, table.name, chain]);
      }
    }
  }
}

/** A ruleset or save without what moves as packets flow, and without its comments. */
const stateless = (text: string) =>
  text.replace(/ counter packets \d+ bytes \d+/g, " counter").replace(/ expires \S+/g, "")
    .replace(/^\[\d+:\d+\] /gm, "").replace(/ \[\d+:\d+\]$/gm, "")
    .split("\n").filter((l) => !l.startsWith("#")).join("\n").trim();

/**
 * How the firewall of the net namespace of `pid` differs from `firewall` (absent: none), or
 * null: nft's tables, and iptables' as iptables saves them.
 */
export function firewallDiffers(pid: number, firewall: FirewallEntry | undefined): string | null {
  if (firewall === undefined) return null;
  const nftNow = nftTables({ ...firewall, ruleset: runInNetns(pid, "nft", ["list", "ruleset"]) });
  const text = (tables: Table[]) => tables.map((t) => stateless(t.text)).sort().join("\n");
  if (text(nftNow) !== text(nftTables(firewall))) {
    return "its nftables ruleset is not the image's";
  }
  for (const family of ["ip", "ip6"] as const) {
    const saved = firewall[IPTABLES[family]];
    if (saved && stateless(saveIptables(pid, family)) !== stateless(saved)) {
      return `its ${IPTABLES[family]} rules are not the image's`;
    }
  }
  return null;
}
