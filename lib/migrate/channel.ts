/**
 * The migration stream: frames over a TCP connection, authenticated both ways with a shared
 * secret and each carrying an HMAC-SHA256 of its sequence number, type and payload under a key of
 * the session, so a frame that is forged, damaged, replayed or reordered ends the session.
 *
 * A frame is `type` (u8), `length` (u32 LE), the payload, then its 32-byte MAC. The handshake:
 * the receiver sends HELLO {nonce, bootId}; the sender answers AUTH {nonce, proof} with
 * proof = HMAC(secret, "sender" ‖ receiver's nonce); the receiver answers WELCOME
 * {proof = HMAC(secret, "receiver" ‖ sender's nonce)}. Both then key the session with
 * HMAC(secret, receiver's nonce ‖ sender's nonce). A receiver that gets a wrong proof closes the
 * connection; so does a sender.
 */
import { TardigradeError } from "../errors.ts";

/** Frame types. */
export const FRAME = {
  HELLO: 1,
  AUTH: 2,
  WELCOME: 3,
  /** A file's bytes at an offset: name length (u16), name, offset (u64), bytes. */
  FILE: 4,
  /** The image is whole: JSON {files: {name: size}}. */
  COMMIT: 5,
  /** The receiver has the image: JSON {dir}. */
  STORED: 6,
  /**
   * Restore it: JSON {lazy, ending, late?}; `late` (post-copy) names the page-file bytes held
   * back, {file: [[start, end]…]}, which follow once the process runs.
   */
  RESTORE: 7,
  /** How the restore went: JSON {ok, pid?, error?}. */
  RESULT: 8,
  /** The sender gives up: JSON {error}. */
  ABORT: 9,
  /**
   * The image is to be restored (sent first, before the files): JSON {lazy}. The receiver starts
   * what the restore needs while the memory streams in.
   */
  PREPARE: 10,
  /**
   * Post-copy, receiver to sender: send these held-back bytes first (a restore needs them before
   * the process runs): JSON {file, ranges: [[start, end]…]}.
   */
  FETCH: 11,
  /** Post-copy, sender to receiver: every held-back byte is sent (JSON {}). */
  LATE_SENT: 12,
  /** Post-copy, receiver to sender: every held-back byte is in the image (JSON {}). */
  ALL_IN: 13,
} as const;

/** A migration that could not go on: the stream broke, or the other side refused. */
export class MigrationError extends TardigradeError {}

const MAC_SIZE = 32;
/** Reads smaller than this go through a buffer that keeps what follows. */
const READ_AHEAD = 64 * 1024;
const HEADER = 5;
/** The largest payload a frame may carry (a FILE frame's data is sent in pieces below it). */
export const MAX_PAYLOAD = 4 << 20;
/** What the MAC covers in front of a payload: the sequence number and the header. */
const MAC_PREFIX = 8 + HEADER;

const encoder = new TextEncoder();
const decoder = new TextDecoder();

async function hmacKey(secret: Uint8Array): Promise<CryptoKey> {
  return await crypto.subtle.importKey(
    "raw",
    secret as Uint8Array<ArrayBuffer>,
    { name: "HMAC", hash: "SHA-256" },
    false,
    ["sign", "verify"],
  );
}

async function hmac(key: CryptoKey, ...parts: Uint8Array[]): Promise<Uint8Array> {
  const all = parts.length === 1
    ? parts[0] as Uint8Array<ArrayBuffer>
    : concat(parts, parts.reduce((n, p) => n + p.length, 0));
  return new Uint8Array(await crypto.subtle.sign("HMAC", key, all));
}

/** `parts` one after the other in one buffer of `total` bytes. */
function concat(parts: Uint8Array[], total: number): Uint8Array<ArrayBuffer> {
  const all = new Uint8Array(total);
  let at = 0;
  for (const p of parts) all.set(p, (at += p.length) - p.length);
  return all;
}

/** Compares two MACs without leaking where they differ. */
function sameMac(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let d = 0;
  for (let i = 0; i < a.length; i++) d |= a[i] ^ b[i];
  return d === 0;
}

/** This machine's boot id: equal on both sides when sender and receiver share a kernel. */
export function bootId(): string {
  return Deno.readTextFileSync("/proc/sys/kernel/random/boot_id").trim();
}

/** One frame received. */
export interface Frame {
  type: number;
  payload: Uint8Array;
}

/** An authenticated, MAC'd stream of frames over `conn`. */
export class Channel {
  #sendSeq = 0n;
  #recvSeq = 0n;
  #session?: CryptoKey;
  #buffer = new Uint8Array(0);

  private constructor(readonly conn: Deno.Conn) {
    // Frames are written whole: the stream's turns (COMMIT, STORED, RESTORE) must not wait for
    // a delayed ACK.
    (conn as Partial<Deno.TcpConn>).setNoDelay?.(true);
  }

  /** The receiver's side of the handshake; throws (and closes) on a wrong secret. */
  static async accept(conn: Deno.Conn, secret: Uint8Array): Promise<Channel> {
    const ch = new Channel(conn);
    try {
      const key = await hmacKey(secret);
      const nonce = crypto.getRandomValues(new Uint8Array(32));
      await ch.#sendRaw(FRAME.HELLO, encodeJson({ nonce: hexOf(nonce), bootId: bootId() }));
      const auth = parseJson(await ch.#expectRaw(FRAME.AUTH));
      const theirs = bytesOf(String(auth.nonce));
      const proof = await hmac(key, encoder.encode("sender"), nonce);
      if (!sameMac(proof, bytesOf(String(auth.proof)))) {
        throw new MigrationError("the sender did not prove it knows the key: refused");
      }
      const answer = await hmac(key, encoder.encode("receiver"), theirs);
      await ch.#sendRaw(FRAME.WELCOME, encodeJson({ proof: hexOf(answer) }));
      ch.#session = await hmacKey(await hmac(key, nonce, theirs));
      return ch;
    } catch (err) {
      ch.close();
      throw err;
    }
  }

  /** The sender's side; returns the channel and the receiver's boot id. */
  static async connect(
    conn: Deno.Conn,
    secret: Uint8Array,
  ): Promise<{ channel: Channel; bootId: string }> {
    const ch = new Channel(conn);
    try {
      const key = await hmacKey(secret);
      const hello = parseJson(await ch.#expectRaw(FRAME.HELLO));
      const theirs = bytesOf(String(hello.nonce));
      const nonce = crypto.getRandomValues(new Uint8Array(32));
      const proof = await hmac(key, encoder.encode("sender"), theirs);
      await ch.#sendRaw(FRAME.AUTH, encodeJson({ nonce: hexOf(nonce), proof: hexOf(proof) }));
      const welcome = parseJson(
        await ch.#expectRaw(FRAME.WELCOME).catch((err) => {
          throw new MigrationError(
            "the receiver closed the connection in the handshake: it refuses this key",
            { cause: err },
          );
        }),
      );
      const expected = await hmac(key, encoder.encode("receiver"), nonce);
      if (!sameMac(expected, bytesOf(String(welcome.proof)))) {
        throw new MigrationError("the receiver did not prove it knows the key");
      }
      ch.#session = await hmacKey(await hmac(key, theirs, nonce));
      return { channel: ch, bootId: String(hello.bootId) };
    } catch (err) {
      ch.close();
      throw err instanceof MigrationError ? err : new MigrationError(
        `handshake failed: ${(err as Error).message} (a receiver refuses a wrong key)`,
        { cause: err },
      );
    }
  }

  /**
   * Sends one MAC'd frame. Frames go out in the order of the calls, but a caller may make the
   * next call before this one resolves: its MAC is computed (on another thread) while this one is
   * written. `payload` must stay unchanged until the call resolves.
   */
  send(type: number, payload: Uint8Array): Promise<void> {
    if (payload.length > MAX_PAYLOAD) throw new RangeError("frame payload too large");
    const head = header(type, payload.length);
    const mac = hmac(this.#session!, seqBytes(this.#sendSeq++), head, payload);
    return this.#enqueue(() => this.#write(head, payload, mac));
  }

  /**
   * Sends a FILE frame built in place (`FilePiece.framed`), as `send` does, without copying its
   * bytes: the MAC is computed over the piece's buffer, whose room in front it fills.
   */
  sendPiece(framed: Uint8Array): Promise<void> {
    const length = framed.length - MAC_PREFIX;
    const v = new DataView(framed.buffer, framed.byteOffset, MAC_PREFIX);
    v.setBigUint64(0, this.#sendSeq++, true);
    framed[8] = FRAME.FILE;
    v.setUint32(9, length, true);
    const mac = hmac(this.#session!, framed);
    return this.#enqueue(() => this.#write(framed.subarray(8), undefined, mac));
  }

  /** Runs `write` once every frame sent before is written; a failed write fails those after. */
  #enqueue(write: () => Promise<void>): Promise<void> {
    const written = this.#written.then(write);
    this.#written = written;
    return written;
  }

  #written: Promise<void> = Promise.resolve();

  /** Sends a JSON message. */
  sendJson(type: number, value: unknown): Promise<void> {
    return this.send(type, encodeJson(value));
  }

  /** Receives one frame, checking its MAC; throws when the stream ends or is damaged. */
  async receive(): Promise<Frame> {
    const head = await this.#read(HEADER);
    const length = new DataView(head.buffer, head.byteOffset).getUint32(1, true);
    if (length > MAX_PAYLOAD) throw new MigrationError(`a frame of ${length} bytes: refused`);
    // Read after room for what the MAC covers in front of it: checked without a copy.
    const framed = await this.#read(length, MAC_PREFIX);
    const mac = await this.#read(MAC_SIZE);
    new DataView(framed.buffer, framed.byteOffset).setBigUint64(0, this.#recvSeq++, true);
    framed.set(head, 8);
    const want = await hmac(this.#session!, framed);
    const payload = framed.subarray(MAC_PREFIX);
    if (!sameMac(want, mac)) {
      throw new MigrationError("a frame failed its check (damaged, forged or out of order)");
    }
    return { type: head[0], payload };
  }

  /** Receives a frame of type `type` as JSON; an ABORT or another type is an error. */
  async receiveJson(type: number): Promise<Record<string, unknown>> {
    const f = await this.receive();
    if (f.type === FRAME.ABORT) {
      throw new MigrationError(`the other side gave up: ${parseJson(f.payload).error}`);
    }
    if (f.type !== type) throw new MigrationError(`expected frame ${type}, got ${f.type}`);
    return parseJson(f.payload);
  }

  /** Closes the connection (twice is harmless). */
  close(): void {
    try {
      this.conn.close();
    } catch { /* closed */ }
  }

  async #sendRaw(type: number, payload: Uint8Array): Promise<void> {
    await this.#enqueue(() => this.#write(header(type, payload.length), payload));
  }

  async #expectRaw(type: number): Promise<Uint8Array> {
    const head = await this.#read(HEADER);
    const length = new DataView(head.buffer, head.byteOffset).getUint32(1, true);
    if (head[0] !== type || length > 4096) {
      throw new MigrationError(`not a tardigrade migration stream (frame ${head[0]})`);
    }
    return await this.#read(length);
  }

  async #write(head: Uint8Array, payload?: Uint8Array, mac?: Promise<Uint8Array>): Promise<void> {
    let parts = [head, ...(payload ? [payload] : []), ...(mac ? [await mac] : [])];
    // A small frame goes in one write: its parts in several would wait on each other's ACKs.
    const total = parts.reduce((n, p) => n + p.length, 0);
    if (total <= READ_AHEAD && parts.length > 1) parts = [concat(parts, total)];
    try {
      for (const p of parts) {
        for (let at = 0; at < p.length;) at += await this.conn.write(p.subarray(at));
      }
    } catch (err) {
      throw new MigrationError(`the connection broke: ${(err as Error).message}`, { cause: err });
    }
  }

  /**
   * Reads exactly `n` bytes: what is buffered first, then straight into the result, which has
   * `room` bytes in front of them.
   */
  async #read(n: number, room = 0): Promise<Uint8Array> {
    const whole = new Uint8Array(room + n);
    const out = whole.subarray(room);
    let have = Math.min(n, this.#buffer.length);
    out.set(this.#buffer.subarray(0, have));
    this.#buffer = this.#buffer.subarray(have);
    while (have < n) {
      // Small reads (headers, MACs) read ahead into a buffer; large ones into `out` itself.
      const into = n - have >= READ_AHEAD ? out.subarray(have) : new Uint8Array(READ_AHEAD);
      let got: number | null;
      try {
        got = await this.conn.read(into);
      } catch (err) {
        throw new MigrationError(`the connection broke: ${(err as Error).message}`, { cause: err });
      }
      if (got === null) throw new MigrationError("the connection closed mid-stream");
      if (into.buffer === out.buffer) {
        have += got;
        continue;
      }
      const take = Math.min(got, n - have);
      out.set(into.subarray(0, take), have);
      have += take;
      this.#buffer = into.subarray(take, got);
    }
    return whole;
  }
}

function header(type: number, length: number): Uint8Array {
  const h = new Uint8Array(HEADER);
  h[0] = type;
  new DataView(h.buffer).setUint32(1, length, true);
  return h;
}

function seqBytes(seq: bigint): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, seq, true);
  return b;
}

function encodeJson(value: unknown): Uint8Array {
  return encoder.encode(JSON.stringify(value));
}

function parseJson(bytes: Uint8Array): Record<string, unknown> {
  try {
    const v = JSON.parse(decoder.decode(bytes));
    if (typeof v === "object" && v !== null && !Array.isArray(v)) return v;
  } catch { /* below */ }
  throw new MigrationError("a message that is not one");
}

function hexOf(b: Uint8Array): string {
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

function bytesOf(hex: string): Uint8Array {
  if (!/^([0-9a-f]{2})*$/.test(hex)) throw new MigrationError("a malformed handshake");
  return new Uint8Array(hex.match(/../g)?.map((h) => parseInt(h, 16)) ?? []);
}

/**
 * A FILE frame built in place in a buffer of its own: name length (u16), name, offset (u64), then
 * the file's bytes, read straight into `room`; room in front for what the MAC covers.
 */
export class FilePiece {
  readonly #buffer = new Uint8Array(MAC_PREFIX + MAX_PAYLOAD);
  readonly #view = new DataView(this.#buffer.buffer);
  #dataAt = 0;

  /** Where the bytes of a piece of file `name` go (the rest of the frame's room). */
  room(name: string): Uint8Array {
    const n = encoder.encode(name);
    this.#view.setUint16(MAC_PREFIX, n.length, true);
    this.#buffer.set(n, MAC_PREFIX + 2);
    this.#dataAt = MAC_PREFIX + 2 + n.length + 8;
    return this.#buffer.subarray(this.#dataAt);
  }

  /** The frame of the first `n` bytes of `room`, at `offset` in the file (`sendPiece`). */
  framed(offset: number, n: number): Uint8Array {
    this.#view.setBigUint64(this.#dataAt - 8, BigInt(offset), true);
    return this.#buffer.subarray(0, this.#dataAt + n);
  }
}

/** The parts of a FILE frame's payload. */
export function decodeFilePiece(
  payload: Uint8Array,
): { name: string; offset: number; data: Uint8Array } {
  const v = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  const len = v.getUint16(0, true);
  const name = decoder.decode(payload.subarray(2, 2 + len));
  const offset = Number(v.getBigUint64(2 + len, true));
  return { name, offset, data: payload.subarray(10 + len) };
}
