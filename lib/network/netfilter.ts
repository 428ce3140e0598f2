/**
 * The two ways the network lock drops the packets of TCP connections, each driving Debian's own
 * command: nftables (`nft`, as CRIU's nftables mode) and, where nft is missing, iptables
 * (`iptables`/`ip6tables`). Each lock is one object of the tool's own, named by the lock: an nft
 * table `inet NAME`, or a chain NAME in the filter table with one jump to it from INPUT and one
 * from OUTPUT. Nothing else is ever changed: removing a lock deletes that table, or those two jumps
 * and that chain. Packets carrying the mark of the segments a restore forges for a closing
 * connection's peer (tcp_segment.ts) pass.
 */
import { SEGMENT_MARK } from "../files/socket/tcp_segment.ts";

/** One end of a connection as netfilter matches it. */
export interface Endpoint {
  ip: string;
  port: number;
}

/** A connection to lock: IPv4 (also an IPv4-mapped IPv6 one) or IPv6, and its two ends. */
export interface LockedConnection {
  family: 4 | 6;
  local: Endpoint;
  peer: Endpoint;
}

/** The two ways a lock is made. */
export type LockMethod = "nftables" | "iptables";

/** Runs `program` with `args`; null when it is not installed (not on PATH). */
function run(program: string, args: string[]): { ok: boolean; error: string } | null {
  try {
    const out = new Deno.Command(program, { args, stdout: "null", stderr: "piped" }).outputSync();
    const error = new TextDecoder().decode(out.stderr).trim().split("\n")[0] ?? "";
    return { ok: out.success, error: error || `exit code ${out.code}` };
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return null;
    throw err;
  }
}

/** Runs `program`; throws naming the command and what it printed when it fails or is missing. */
function must(program: string, args: string[]): void {
  const r = run(program, args);
  if (!r) throw new Error(`${program} is not installed`);
  if (!r.ok) throw new Error(`${program} ${args.join(" ")}: ${r.error}`);
}

/** A way of locking: make the lock, add a connection to it, remove it. */
export interface Netfilter {
  readonly method: LockMethod;
  /** Makes the empty lock `name`; refuses when one of that name exists. */
  create(name: string): void;
  /** Drops the packets of `c`, both ways, from now on. */
  add(name: string, c: LockedConnection): void;
  /**
   * Removes the lock `name` and everything in it; false when there was none. Throws when it
   * cannot tell (the command is not installed) or fails.
   */
  remove(name: string): boolean;
}

// ---- nftables ----

const NFT_FAMILIES = [
  { set: "conns4", addr: "ipv4_addr", match: "ip" },
  { set: "conns6", addr: "ipv6_addr", match: "ip6" },
];

/** The table of the lock `name`: one table for IPv4 and IPv6. */
const nftTable = (name: string) => `inet ${name}`;

const nftables: Netfilter = {
  method: "nftables",
  create(name) {
    const t = nftTable(name);
    const commands = [`create table ${t}`];
    for (const chain of ["input", "output"]) {
      commands.push(`add chain ${t} ${chain} { type filter hook ${chain} priority 0; }`);
      // The segments a restore forges for a closing connection's peer go through (tcp_segment.ts).
      commands.push(`add rule ${t} ${chain} meta mark ${SEGMENT_MARK} accept`);
    }
    for (const f of NFT_FAMILIES) {
      commands.push(
        `add set ${t} ${f.set} { type ${f.addr} . inet_service . ${f.addr} . inet_service; }`,
      );
      for (const chain of ["input", "output"]) {
        commands.push(
          `add rule ${t} ${chain} ${f.match} saddr . tcp sport . ${f.match} daddr . tcp dport ` +
            `@${f.set} drop`,
        );
      }
    }
    // One invocation is one transaction: all of it is made, or nothing.
    must("nft", [commands.join("; ")]);
  },
  add(name, c) {
    const key = (from: Endpoint, to: Endpoint) =>
      `${from.ip} . ${from.port} . ${to.ip} . ${to.port}`;
    const set = NFT_FAMILIES[c.family === 4 ? 0 : 1].set;
    must("nft", [
      `add element ${nftTable(name)} ${set} { ${key(c.peer, c.local)}, ${key(c.local, c.peer)} }`,
    ]);
  },
  remove(name) {
    const r = run("nft", [`delete table ${nftTable(name)}`]);
    if (!r) throw new Error("nft is not installed");
    if (r.ok) return true;
    if (/No such file or directory/.test(r.error)) return false;
    throw new Error(`nft delete table ${nftTable(name)}: ${r.error}`);
  },
};

// ---- iptables ----

const IPTABLES = { 4: "iptables", 6: "ip6tables" } as const;

/** Whether the chain `name` exists in `program`'s filter table (null: not installed). */
function hasChain(program: string, name: string): boolean | null {
  const r = run(program, ["-w", "-t", "filter", "-S", name]);
  return r && r.ok;
}

const iptables: Netfilter = {
  method: "iptables",
  create(name) {
    // The chains are made per family as connections come (a machine may lack ip6tables).
    for (const program of Object.values(IPTABLES)) {
      if (hasChain(program, name)) throw new Error(`${program} has a chain ${name} already`);
    }
  },
  add(name, c) {
    const program = IPTABLES[c.family];
    if (!hasChain(program, name)) {
      must(program, ["-w", "-t", "filter", "-N", name]);
      // The segments a restore forges for a closing connection's peer go through (tcp_segment.ts).
      must(program, [
        ...["-w", "-t", "filter", "-A", name, "-m", "mark", "--mark", `${SEGMENT_MARK}`],
        ...["-j", "RETURN"],
      ]);
      for (const hook of ["INPUT", "OUTPUT"]) {
        must(program, ["-w", "-t", "filter", "-I", hook, "-j", name]);
      }
    }
    for (const [from, to] of [[c.peer, c.local], [c.local, c.peer]]) {
      must(program, [
        ...["-w", "-t", "filter", "-A", name, "-p", "tcp"],
        ...["-s", from.ip, "--sport", `${from.port}`, "-d", to.ip, "--dport", `${to.port}`],
        ...["-j", "DROP"],
      ]);
    }
  },
  remove(name) {
    if (hasChain(IPTABLES[4], name) === null) throw new Error(`${IPTABLES[4]} is not installed`);
    let removed = false;
    for (const program of Object.values(IPTABLES)) {
      if (!hasChain(program, name)) continue;
      // Every jump to the chain (one from each hook), then its rules, then the chain.
      for (const hook of ["INPUT", "OUTPUT"]) {
        while (run(program, ["-w", "-t", "filter", "-D", hook, "-j", name])?.ok);
      }
      must(program, ["-w", "-t", "filter", "-F", name]);
      must(program, ["-w", "-t", "filter", "-X", name]);
      removed = true;
    }
    return removed;
  },
};

/** The way a lock made with `method` is removed. */
export function netfilterOf(method: LockMethod): Netfilter {
  return method === "nftables" ? nftables : iptables;
}

/** Whether the command of `method` runs here. */
export function installed(method: LockMethod): boolean {
  return method === "nftables"
    ? run("nft", ["--version"]) !== null
    : run(IPTABLES[4], ["--version"]) !== null;
}

/** nftables where nft runs, else iptables where it does, else null. */
export function availableNetfilter(): Netfilter | null {
  if (installed("nftables")) return nftables;
  if (installed("iptables")) return iptables;
  return null;
}
