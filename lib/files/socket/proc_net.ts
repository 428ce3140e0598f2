/**
 * The peer of a connected ping or raw socket, which getpeername does not give (it wants a port,
 * and ICMP and raw IP have none): read from the process's /proc/PID/net/{icmp,icmp6,raw,raw6}
 * table, whose line for the socket's inode holds its remote address and its state (1,
 * TCP_ESTABLISHED, once connect()ed).
 */
import { AF, SOCK, TCP_STATE } from "../../../ffi/mod.ts";

/** The raw sockaddr of an address as /proc/net's tables print it ("0100007F:0000"). */
function sockaddrOf(family: number, text: string): Uint8Array {
  const [hex, portHex] = text.split(":");
  const port = parseInt(portHex, 16);
  const out = new Uint8Array(family === AF.INET ? 16 : 28);
  out[0] = family;
  out[2] = port >> 8;
  out[3] = port & 0xff;
  // Each 32-bit word is printed as the host (little-endian) number it holds.
  const at = family === AF.INET ? 4 : 8;
  for (let w = 0; w < hex.length / 8; w++) {
    for (let b = 0; b < 4; b++) {
      out[at + w * 4 + b] = parseInt(hex.slice(w * 8 + (3 - b) * 2, w * 8 + (3 - b) * 2 + 2), 16);
    }
  }
  return out;
}

/**
 * The peer a ping (`SOCK_DGRAM`) or raw socket of process `pid` was connect()ed to, or null when
 * it is not connected (or its table does not list it).
 */
export function procNetPeer(
  pid: number,
  family: number,
  type: number,
  inode: bigint,
): Uint8Array | null {
  const table = `${type === SOCK.RAW ? "raw" : "icmp"}${family === AF.INET6 ? "6" : ""}`;
  let text: string;
  try {
    text = Deno.readTextFileSync(`/proc/${pid}/net/${table}`);
  } catch {
    return null;
  }
  for (const line of text.split("\n").slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 10 || f[9] !== String(inode)) continue;
    if (parseInt(f[3], 16) !== TCP_STATE.ESTABLISHED) return null;
    return sockaddrOf(family, f[2]);
  }
  return null;
}
