/**
 * The network lock, as CRIU's: from just before a TCP connection's state is read until its
 * restore has made it again, netfilter drops every packet of it, both ways. A peer that sends
 * meanwhile sees silence and retransmits (a delay) instead of a reset from a kernel that has no
 * socket for the connection any more.
 *
 * One lock per image, of the tool's own (netfilter.ts): an nft table, or an iptables chain where
 * nft is missing, named `tardigrade-` + a hash of the image directory's absolute path, made when
 * the dump meets its first TCP connection (a dump without any touches no netfilter). It is
 * recorded in the root process entry (`networkLock`). A dump that fails, or whose processes run on,
 * removes it; one that ends them leaves it for the restore, which removes it just before the
 * connections leave repair mode (so their window probe reaches the peer), or for
 * `unlockNetwork(DIR)` (`tardigrade unlock DIR`) when the image is not to be restored. Because the
 * name follows from the directory, `unlockNetwork` also finds the lock of a dumper killed with
 * SIGKILL before its image was written; a dump into a directory whose lock is still in place is
 * refused (that lock holds another dump's connections).
 */
import { basename, dirname, resolve } from "node:path";
import { AF } from "../../ffi/mod.ts";
import { ImageError, RestoreError } from "../errors.ts";
import { ImageReader } from "../image/mod.ts";
import { type NetworkLockEntry, PROCESS_META, type ProcessEntry } from "../image/schema.ts";
import { familyOf, formatAddress, ipOf } from "../files/socket/address.ts";
import {
  availableNetfilter,
  type Endpoint,
  installed,
  type LockedConnection,
  type LockMethod,
  type Netfilter,
  netfilterOf,
} from "./netfilter.ts";

/** The name of the lock of the image directory `dir`: the same for any way of writing its path. */
export function lockNameFor(dir: string): string {
  const path = resolve(dir);
  let parent = dirname(path);
  try {
    parent = Deno.realPathSync(parent);
  } catch { /* gone: its path as given */ }
  // Loaded when needed: node:crypto costs some 10 ms at every start of the tool otherwise.
  const { createHash } = process.getBuiltinModule("node:crypto") as typeof import("node:crypto");
  const hash = createHash("sha256").update(`${parent}/${basename(path)}`).digest("hex");
  return `tardigrade-${hash.slice(0, 16)}`;
}

/** An inet sockaddr as netfilter matches it; an IPv4-mapped IPv6 address travels as IPv4. */
function endpoint(addr: Uint8Array): Endpoint & { family: 4 | 6 } {
  const port = (addr[2] << 8) | addr[3];
  const { bytes } = ipOf(addr);
  const mapped = bytes.length === 16 && bytes.subarray(0, 10).every((b) => b === 0) &&
    bytes[10] === 0xff && bytes[11] === 0xff;
  if (familyOf(addr) === AF.INET || mapped) {
    return { family: 4, ip: [...bytes.subarray(bytes.length - 4)].join("."), port };
  }
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(((bytes[i] << 8) | bytes[i + 1]).toString(16));
  return { family: 6, ip: groups.join(":"), port };
}

/** What removing the lock `name` says when it fails. */
function cannotRemove(name: string, method: LockMethod, err: unknown, dir: string): string {
  return `the network lock ${name} (${method}) of its TCP connections could not be removed ` +
    `(${(err as Error).message}); \`tardigrade unlock ${dir}\` removes it`;
}

/** The lock of one dump, made on its first connection. */
export class NetworkLock {
  #netfilter: Netfilter | undefined;
  readonly #connections = new Map<string, { local: string; peer: string }>();
  #name?: string;

  /** The lock of a dump into the image directory `dir`. */
  constructor(readonly dir: string) {}

  /** Its name (`lockNameFor`), worked out when first needed: most dumps lock nothing. */
  get name(): string {
    return this.#name ??= lockNameFor(this.dir);
  }

  /**
   * Drops the packets of the connection between the raw sockaddrs `local` and `peer` from now on;
   * calls `fail` with the reason when it cannot.
   */
  add(local: Uint8Array, peer: Uint8Array, fail: (why: string) => never): void {
    const l = endpoint(local), p = endpoint(peer);
    const connection: LockedConnection = { family: l.family, local: l, peer: p };
    // Both ends of a loopback connection in the dump are one connection: locked once.
    const key = [formatAddress(local), formatAddress(peer)].sort().join(" ");
    if (this.#connections.has(key)) return;
    try {
      if (!this.#netfilter) {
        const netfilter = availableNetfilter();
        if (!netfilter) {
          fail(
            "neither nft nor iptables is installed to lock the network until the restore " +
              "(a peer that sent meanwhile would get a reset)",
          );
        }
        try {
          netfilter.create(this.name);
        } catch (err) {
          fail(
            `cannot make the network lock ${this.name} (${(err as Error).message}); if a dump ` +
              `into ${this.dir} left it, \`tardigrade unlock ${this.dir}\` removes it`,
          );
        }
        this.#netfilter = netfilter;
      }
      this.#netfilter.add(this.name, connection);
    } catch (err) {
      if (!this.#netfilter || !(err instanceof Error)) throw err; // a refusal of `fail`
      fail(`cannot lock the network for it (${err.message})`);
    }
    this.#connections.set(key, { local: formatAddress(local), peer: formatAddress(peer) });
  }

  /** What the image records, once a connection is locked. */
  get entry(): NetworkLockEntry | undefined {
    if (!this.#netfilter) return undefined;
    return {
      method: this.#netfilter.method,
      name: this.name,
      connections: [...this.#connections.values()],
    };
  }

  /**
   * Removes the lock, if one was made (a dump that failed, or processes that run on); returns
   * why it could not, or null.
   */
  remove(): string | null {
    const netfilter = this.#netfilter;
    if (!netfilter) return null;
    try {
      netfilter.remove(this.name);
      this.#netfilter = undefined;
      return null;
    } catch (err) {
      return cannotRemove(this.name, netfilter.method, err, this.dir);
    }
  }
}

/**
 * Removes the lock an image records, before its connections leave repair mode. Returns a warning
 * when this machine has not the command to remove it with (the lock then cannot be here, unless
 * the command was removed since); throws when the removal fails.
 */
export function releaseNetworkLock(lock: NetworkLockEntry, dir: string): string | null {
  if (!installed(lock.method)) {
    return `the image's network lock ${lock.name} was made with ${lock.method}, which is not ` +
      `installed here: it was not looked for`;
  }
  try {
    netfilterOf(lock.method).remove(lock.name);
    return null;
  } catch (err) {
    throw new RestoreError(`cannot restore: ${cannotRemove(lock.name, lock.method, err, dir)}`);
  }
}

/** What `unlockNetwork` removed. */
export interface UnlockResult {
  /** Each lock removed, as `NAME (METHOD)`; empty when none was in place. */
  removed: string[];
}

/**
 * Removes the network lock of the image directory `dir` without restoring it: the one its image
 * records, and the one a dump into `dir` killed before it wrote its image left. A lock that is not
 * there is not an error. An image that is not to be restored should be unlocked, or the peers of
 * its connections keep being ignored.
 */
export async function unlockNetwork(dir: string): Promise<UnlockResult> {
  const locks: { method: LockMethod; name: string }[] = [];
  try {
    using reader = await ImageReader.open(dir);
    const root = await reader.readMeta<ProcessEntry>(PROCESS_META);
    if (root.networkLock) locks.push(root.networkLock);
  } catch (err) {
    // No image (a dump killed before it wrote one): its lock is found by its name alone.
    if (!(err instanceof ImageError && err.message.startsWith("not an image"))) throw err;
  }
  for (const method of ["nftables", "iptables"] as const) {
    if (installed(method)) locks.push({ method, name: lockNameFor(dir) });
  }
  const removed: string[] = [];
  for (const { method, name } of locks) {
    const what = `${name} (${method})`;
    if (removed.includes(what) || !installed(method)) continue;
    if (netfilterOf(method).remove(name)) removed.push(what);
  }
  return { removed };
}
