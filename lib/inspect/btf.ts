/**
 * The running kernel's type information (BTF, /sys/kernel/btf/vmlinux): where a field lies in a
 * kernel struct and the id of a kernel function, which a BPF program the tool loads needs (its
 * loads are checked against these types, so offsets must be the kernel's own).
 */

/** BTF kinds the walk needs, by number (include/uapi/linux/btf.h). */
const KIND = {
  INT: 1,
  PTR: 2,
  ARRAY: 3,
  STRUCT: 4,
  UNION: 5,
  ENUM: 6,
  FWD: 7,
  TYPEDEF: 8,
  VOLATILE: 9,
  CONST: 10,
  RESTRICT: 11,
  FUNC: 12,
  FUNC_PROTO: 13,
  VAR: 14,
  DATASEC: 15,
  FLOAT: 16,
  DECL_TAG: 17,
  TYPE_TAG: 18,
  ENUM64: 19,
} as const;

interface BtfType {
  name: string;
  kind: number;
  kindFlag: boolean;
  /** Size (struct, union, int …) or referenced type id (pointer, typedef, modifiers, func). */
  sizeOrType: number;
  /** A struct's or union's members: name, type id, offset in bits. */
  members?: { name: string; type: number; bits: number }[];
}

/** Bytes each kind adds after the common 12-byte header, for `vlen` items. */
function extraBytes(kind: number, vlen: number): number {
  switch (kind) {
    case KIND.INT:
    case KIND.VAR:
    case KIND.DECL_TAG:
      return 4;
    case KIND.ARRAY:
      return 12;
    case KIND.STRUCT:
    case KIND.UNION:
    case KIND.DATASEC:
    case KIND.ENUM64:
      return 12 * vlen;
    case KIND.ENUM:
    case KIND.FUNC_PROTO:
      return 8 * vlen;
    default:
      return 0;
  }
}

/** A BTF blob, read where asked (the kernel's has some 150,000 types: none is decoded ahead). */
export class Btf {
  readonly #view: DataView;
  /** Where each type starts, by id (0 is void). */
  readonly #at: Uint32Array;
  readonly #count: number;
  /** The string section, one character a byte, and where it starts. */
  readonly #strings: string;
  readonly #strOff: number;

  constructor(data: Uint8Array) {
    const v = this.#view = new DataView(data.buffer, data.byteOffset, data.byteLength);
    if (v.getUint16(0, true) !== 0xeb9f) throw new Error("not BTF (magic)");
    const hdrLen = v.getUint32(4, true);
    const typeOff = hdrLen + v.getUint32(8, true);
    const typeEnd = typeOff + v.getUint32(12, true);
    this.#strOff = hdrLen + v.getUint32(16, true);
    const strEnd = this.#strOff + v.getUint32(20, true);
    this.#strings = new TextDecoder("latin1").decode(data.subarray(this.#strOff, strEnd));
    const at: number[] = [0];
    for (let p = typeOff; p < typeEnd;) {
      at.push(p);
      const info = v.getUint32(p + 4, true);
      p += 12 + extraBytes((info >>> 24) & 0x1f, info & 0xffff);
    }
    this.#at = Uint32Array.from(at);
    this.#count = at.length;
  }

  #str(off: number): string {
    return this.#strings.slice(off, this.#strings.indexOf("\0", off));
  }

  #type(id: number): BtfType {
    const v = this.#view, at = this.#at[id];
    const info = v.getUint32(at + 4, true);
    const kind = (info >>> 24) & 0x1f;
    const t: BtfType = {
      name: this.#str(v.getUint32(at, true)),
      kind,
      kindFlag: (info >>> 31) === 1,
      sizeOrType: v.getUint32(at + 8, true),
    };
    if (kind === KIND.STRUCT || kind === KIND.UNION) {
      t.members = [];
      for (let i = 0; i < (info & 0xffff); i++) {
        const m = at + 12 + i * 12;
        const offset = v.getUint32(m + 8, true);
        t.members.push({
          name: this.#str(v.getUint32(m, true)),
          type: v.getUint32(m + 4, true),
          bits: t.kindFlag ? offset & 0xffffff : offset,
        });
      }
    }
    return t;
  }

  /** The running kernel's BTF. */
  static vmlinux(): Btf {
    return new Btf(Deno.readFileSync("/sys/kernel/btf/vmlinux"));
  }

  #find(name: string, kinds: number[]): number {
    // The name's offsets in the string section, then the types that bear one of them.
    const offsets = new Set<number>();
    for (let i = this.#strings.indexOf(`\0${name}\0`); i >= 0;) {
      offsets.add(i + 1);
      i = this.#strings.indexOf(`\0${name}\0`, i + 1);
    }
    const v = this.#view;
    for (let id = 1; id < this.#count; id++) {
      const at = this.#at[id];
      if (!offsets.has(v.getUint32(at, true))) continue;
      if (kinds.includes((v.getUint32(at + 4, true) >>> 24) & 0x1f)) return id;
    }
    throw new Error(`BTF has no ${name}`);
  }

  /** The type id of kernel function `name` (a BPF program attaches to it by this id). */
  funcId(name: string): number {
    return this.#find(name, [KIND.FUNC]);
  }

  /** Follows typedefs and qualifiers to the type they name. */
  #resolve(id: number): BtfType {
    let t = this.#type(id);
    const through: number[] = [
      KIND.TYPEDEF,
      KIND.VOLATILE,
      KIND.CONST,
      KIND.RESTRICT,
      KIND.TYPE_TAG,
    ];
    while (through.includes(t.kind)) t = this.#type(t.sizeOrType);
    return t;
  }

  /** The offset in bits of member `name` in `t`, looking into anonymous members too. */
  #member(t: BtfType, name: string): { bits: number; type: number } | undefined {
    for (const m of t.members ?? []) {
      if (m.name === name) return { bits: m.bits, type: m.type };
      if (m.name) continue;
      const inner = this.#member(this.#resolve(m.type), name);
      if (inner) return { bits: m.bits + inner.bits, type: inner.type };
    }
    return undefined;
  }

  /**
   * The byte offset of `path` ("inet_conn.icsk_accept_queue.rskq_accept_head") in struct
   * `struct`; throws where a name is not there (another kernel's layout).
   */
  offsetOf(struct: string, path: string): number {
    let t = this.#type(this.#find(struct, [KIND.STRUCT, KIND.UNION]));
    let bits = 0;
    for (const name of path.split(".")) {
      const m = this.#member(t, name);
      if (!m) throw new Error(`BTF: struct ${struct} has no ${path}`);
      bits += m.bits;
      t = this.#resolve(m.type);
    }
    if (bits % 8) throw new Error(`BTF: ${struct}.${path} is a bit field`);
    return bits / 8;
  }
}
