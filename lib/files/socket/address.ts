/**
 * Socket addresses: raw sockaddrs as getsockname and getpeername give them (and as the image keeps
 * them), read, built and written as text for messages.
 */
import { AF } from "../../../ffi/mod.ts";
import { readU32 } from "../util.ts";

/** The family of a raw sockaddr (`AF.*`, its first two bytes). */
export function familyOf(addr: Uint8Array): number {
  return addr[0] | (addr[1] << 8);
}

/** Whether a getsockname result is the "not bound" address of its family. */
export function isUnbound(addr: Uint8Array): boolean {
  const family = familyOf(addr);
  if (family === AF.UNIX) return addr.length <= 2;
  // sin_port / sin6_port at 2, then the address: all zero means nothing was bound.
  const rest = family === AF.INET ? addr.subarray(2, 8) : addr.subarray(2, 24);
  return rest.every((b) => b === 0);
}

/** The path of a UNIX address ("" for abstract or unnamed ones). */
export function unixPath(addr: Uint8Array): string {
  if (addr.length <= 2 || addr[2] === 0) return "";
  const bytes = addr.subarray(2);
  const nul = bytes.indexOf(0);
  return new TextDecoder().decode(nul < 0 ? bytes : bytes.subarray(0, nul));
}

/** The UNIX address of a path, or null when the path is too long for one (over 107 bytes). */
export function unixAddress(path: string): Uint8Array | null {
  const bytes = new TextEncoder().encode(path);
  if (bytes.length > 107) return null;
  const addr = new Uint8Array(2 + bytes.length + 1);
  addr[0] = AF.UNIX;
  addr.set(bytes, 2);
  return addr;
}

/** The IP address bytes of an inet sockaddr, and its IPv6 scope id. */
export function ipOf(addr: Uint8Array): { bytes: Uint8Array; scope: number } {
  if (familyOf(addr) === AF.INET) return { bytes: addr.subarray(4, 8), scope: 0 };
  return { bytes: addr.subarray(8, 24), scope: addr.length >= 28 ? readU32(addr, 24) : 0 };
}

/**
 * A sockaddr as text: 127.0.0.1:80, [::1]:80, /path, @abstract, "unnamed", "netlink port 42",
 * "interface 1, protocol 0x0003".
 */
export function formatAddress(addr: Uint8Array | null): string {
  if (!addr || addr.length < 2) return "unbound";
  const family = familyOf(addr);
  const port = (addr[2] << 8) | addr[3];
  if (family === AF.INET) return `${[...addr.subarray(4, 8)].join(".")}:${port}`;
  if (family === AF.INET6) {
    const groups: string[] = [];
    for (let i = 8; i < 24; i += 2) groups.push(((addr[i] << 8) | addr[i + 1]).toString(16));
    let text = groups.join(":");
    const zeros = text.match(/(?:^|:)0(?::0)+(?::|$)/g);
    if (zeros) {
      const longest = zeros.reduce((a, b) => (b.length > a.length ? b : a));
      text = text.replace(longest, "::");
    }
    return `[${text}]:${port}`;
  }
  if (family === AF.UNIX) {
    if (addr.length <= 2) return "unnamed";
    if (addr[2] === 0) {
      return "@" + new TextDecoder().decode(addr.subarray(3)).replace(/\0/g, "@");
    }
    return unixPath(addr);
  }
  if (family === AF.NETLINK && addr.length >= 12) return `netlink port ${readU32(addr, 4)}`;
  if (family === AF.PACKET && addr.length >= 8) {
    const ifindex = readU32(addr, 4);
    return `${ifindex ? `interface ${ifindex}` : "every interface"}, protocol 0x` +
      ((addr[2] << 8) | addr[3]).toString(16).padStart(4, "0");
  }
  return `family ${family}`;
}
