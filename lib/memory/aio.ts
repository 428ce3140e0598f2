/**
 * Linux AIO contexts (`io_setup`): the kernel maps the context's ring of completion events into
 * the process (`/[aio] (deleted)`, read-write, shared) and the context id the program holds is
 * the ring's address. The ring's file cannot be opened (map_files: ENXIO) nor made by mmap.
 *
 * Dump: the ring's header gives its capacity (`nr`). Completed events not yet reaped
 * (head ≠ tail) are refused: a new context cannot be given them. Requests still in flight when
 * the process was frozen cannot be seen from outside (the kernel shows no count of them): their
 * completions are not carried.
 *
 * Restore: `io_setup` with the request that gives a ring of the same capacity (the kernel doubles
 * it and rounds it up to whole pages), then `mremap` of the new ring to the old address: the
 * kernel follows the move, so the old context id names the new context.
 */
import { AIO_RING, MREMAP } from "../../ffi/mod.ts";
import { RestoreError, Unsupported } from "../errors.ts";
import type { MappingEntry, MappingSource } from "../image/schema.ts";
import type { Mapping } from "../inspect/mappings.ts";
import { readMemoryInto } from "../inspect/memory.ts";
import { hex, type Target } from "./target.ts";

/** The ring's header fields a restore needs. */
function ringHeader(pid: number, at: bigint): { nr: number; head: number; tail: number } {
  const header = new Uint8Array(AIO_RING.HEADER_SIZE);
  readMemoryInto(pid, at, header);
  const v = new DataView(header.buffer, header.byteOffset, header.byteLength);
  const magic = v.getUint32(AIO_RING.MAGIC, true);
  if (magic !== AIO_RING.MAGIC_VALUE) {
    throw new Unsupported(`AIO ring at ${hex(at)} of process ${pid}: magic ${magic.toString(16)}`);
  }
  return {
    nr: v.getUint32(AIO_RING.NR, true),
    head: v.getUint32(AIO_RING.HEAD, true),
    tail: v.getUint32(AIO_RING.TAIL, true),
  };
}

/** The source of AIO ring mapping `m` of a frozen process; refuses unreaped completions. */
export function aioSource(m: Mapping): MappingSource {
  const { nr, head, tail } = ringHeader(m.pid, m.start);
  if (head !== tail) {
    throw new Unsupported(
      `process ${m.pid}: AIO context ${hex(m.start)} holds ${(tail - head + nr) % nr} ` +
        `completed events not yet reaped (a new context cannot be given them)`,
    );
  }
  return { type: "aio", events: nr };
}

/** Makes the AIO context of ring mapping `m` again, its ring at its old address. */
export function makeAioRing(t: Target, m: MappingEntry & { source: { type: "aio" } }): void {
  const events = m.source.events;
  const idAt = t.inj.put(new Uint8Array(8)); // aio_context_t, zero as io_setup wants it
  // io_setup(n) makes a ring of 2·n + 2 events at least, rounded up to whole pages.
  t.inj.call("io_setup", Math.floor((events - 2) / 2), idAt);
  const id = t.inj.get(0, 8);
  const made = new DataView(id.buffer, id.byteOffset, 8).getBigUint64(0, true);
  const size = m.end - m.start;
  const got = ringHeader(t.pid, made).nr;
  if (got !== events) {
    throw new RestoreError(
      `AIO context ${hex(m.start)}: this kernel makes a ring of ${got} events, not ${events} ` +
        `(more CPUs than where it was dumped?)`,
    );
  }
  if (made !== m.start) {
    t.inj.call("mremap", made, size, size, MREMAP.MAYMOVE | MREMAP.FIXED, m.start);
  }
}
