/**
 * The System V message queues and semaphore sets of a container's IPC namespace, read and made
 * again inside its init (injected syscalls: the tool never enters the namespace). Dump: every
 * object by index (`MSG_STAT_ANY`, `SEM_STAT_ANY`), a queue's messages copied without being taken
 * (`msgrcv` with `MSG_COPY`), a set's values (`GETALL`). Restore, in the fresh namespace: each
 * object made with its id (`/proc/sys/kernel/{msg,sem}_next_id`, which names the writer's IPC
 * namespace), key, owner, mode and capacity, its messages sent again in order, its values set.
 * Not carried, and so refused: objects whose creator is not root (the creator cannot be given);
 * semaphore undo adjustments (SEM_UNDO) are not visible from outside and are lost (README).
 * Its shared memory segments use the same reading and making of an object (shm_segments.ts).
 */
import {
  errnoName,
  IPC,
  IPC_INFO,
  IPC_INFO_SIZE,
  SYS,
  SyscallError,
  SYSV,
  SYSV_DS,
} from "../../ffi/mod.ts";
import { DumpError, RestoreError } from "../errors.ts";
import type { Injector } from "../ptrace/inject.ts";
import { writeIpcSysctl } from "./ipc_sysctl.ts";
import type { MsgQueueEntry, SemSetEntry, SysvObjectEntry } from "../image/schema.ts";

/** The three kinds of System V object. */
export type SysvKind = "msg" | "sem" | "shm";

/** Scratch offsets: the ds struct, then message text or semaphore values. */
export const DS_AT = 0;
const DATA_AT = 256;
/** The largest message (type and text) the scratch region holds. */
const MAX_MESSAGE = 60 * 1024;

/** The object `*_STAT_ANY` wrote at DS_AT, with id `id`; refuses one root did not create. */
export function objectOf(
  inj: Injector,
  id: number,
  what: string,
): SysvObjectEntry & { ds: DataView } {
  const b = inj.get(DS_AT, SYSV_DS.size);
  const ds = new DataView(b.buffer, b.byteOffset, b.length);
  if (ds.getUint32(SYSV_DS.cuid, true) !== 0 || ds.getUint32(SYSV_DS.cgid, true) !== 0) {
    throw new DumpError(
      `${what} ${id} was created by uid ${ds.getUint32(SYSV_DS.cuid, true)}, gid ` +
        `${ds.getUint32(SYSV_DS.cgid, true)}: a restore can only create it as root`,
    );
  }
  return {
    id,
    key: ds.getInt32(SYSV_DS.key, true),
    uid: ds.getUint32(SYSV_DS.uid, true),
    gid: ds.getUint32(SYSV_DS.gid, true),
    mode: ds.getUint16(SYSV_DS.mode, true) & 0o777,
    ds,
  };
}

/** `{msg,sem,shm}ctl` of object (or index) `id` with command `cmd` and struct `at`: the raw result. */
function ctl(inj: Injector, kind: SysvKind, id: number, cmd: number, at: bigint): bigint {
  if (kind === "sem") return inj.raw(SYS.semctl, id, 0, cmd, at);
  return inj.raw(kind === "msg" ? SYS.msgctl : SYS.shmctl, id, cmd, at);
}

/** `ctl` that throws on failure. */
function ctlChecked(inj: Injector, kind: SysvKind, id: number, cmd: number, at: bigint): bigint {
  const r = ctl(inj, kind, id, cmd, at);
  if (r < 0n) throw new SyscallError(`${kind}ctl in ${inj.tid}`, [id, cmd, at], Number(-r));
  return r;
}

const STAT_ANY = { msg: SYSV.MSG_STAT_ANY, sem: SYSV.SEM_STAT_ANY, shm: SYSV.SHM_STAT_ANY };

/**
 * Ids of the objects of one kind: `*_STAT_ANY` of every index up to what `*_INFO` says; each
 * object's ds is at DS_AT while `body` runs.
 */
export function eachObject(inj: Injector, kind: SysvKind, body: (id: number) => void): void {
  const ds = inj.put(new Uint8Array(IPC_INFO_SIZE), DS_AT);
  const maxIndex = Number(ctlChecked(inj, kind, 0, IPC_INFO[kind].cmd, ds));
  for (let index = 0; index <= maxIndex; index++) {
    const r = ctl(inj, kind, index, STAT_ANY[kind], ds);
    if (r >= 0n) body(Number(r)); // an unused index: EINVAL
  }
}

/** `*get` flags that make an object of key `key` (IPC_PRIVATE always makes one), owner-only. */
export const createFlags = (key: number) => (key === 0 ? 0 : IPC.CREAT | IPC.EXCL) | 0o600;

/** The message queues and semaphore sets of the IPC namespace `inj`'s process lives in. */
export function dumpSysvIpc(inj: Injector): { msg: MsgQueueEntry[]; sem: SemSetEntry[] } {
  const msg: MsgQueueEntry[] = [];
  eachObject(inj, "msg", (id) => {
    const { ds, ...o } = objectOf(inj, id, "System V message queue");
    const count = Number(ds.getBigUint64(SYSV_DS.msgQnum, true));
    const messages: MsgQueueEntry["messages"] = [];
    for (let n = 0; n < count; n++) {
      const at = inj.put(new Uint8Array(8), DATA_AT);
      const flags = SYSV.IPC_NOWAIT | SYSV.MSG_COPY;
      const len = inj.raw(SYS.msgrcv, id, at, MAX_MESSAGE - 8, n, flags);
      if (len < 0n) {
        throw new DumpError(
          `cannot copy message ${n} of System V queue ${id} (${errnoName(Number(-len))})`,
        );
      }
      const b = inj.get(DATA_AT, 8 + Number(len));
      const type = new DataView(b.buffer, b.byteOffset, 8).getBigInt64(0, true);
      messages.push({ type, data: b.slice(8) });
    }
    msg.push({ ...o, qbytes: Number(ds.getBigUint64(SYSV_DS.msgQbytes, true)), messages });
  });
  const sem: SemSetEntry[] = [];
  eachObject(inj, "sem", (id) => {
    const { ds, ...o } = objectOf(inj, id, "System V semaphore set");
    const nsems = Number(ds.getBigUint64(SYSV_DS.semNsems, true));
    inj.call("semctl", id, 0, SYSV.GETALL, inj.put(new Uint8Array(2 * nsems), DATA_AT));
    const b = inj.get(DATA_AT, 2 * nsems);
    sem.push({
      ...o,
      values: [...new Uint16Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.length))],
    });
  });
  return { msg, sem };
}

/** Sets the owner and mode (and a queue's capacity) of a made object with IPC_STAT then IPC_SET. */
export function setOwner(inj: Injector, o: SysvObjectEntry, kind: SysvKind, qbytes?: number) {
  const at = inj.put(new Uint8Array(SYSV_DS.size), DS_AT);
  ctlChecked(inj, kind, o.id, IPC.STAT, at);
  const b = inj.get(DS_AT, SYSV_DS.size);
  const ds = new DataView(b.buffer, b.byteOffset, b.length);
  ds.setUint32(SYSV_DS.uid, o.uid, true);
  ds.setUint32(SYSV_DS.gid, o.gid, true);
  ds.setUint16(SYSV_DS.mode, o.mode, true);
  if (qbytes !== undefined) ds.setBigUint64(SYSV_DS.msgQbytes, BigInt(qbytes), true);
  inj.put(b, DS_AT);
  ctlChecked(inj, kind, o.id, IPC.SET, at);
}

/** Makes object `o` with its id: `get` creates it (after next_id is set) and returns its id. */
export function makeWithId(
  inj: Injector,
  o: SysvObjectEntry,
  file: string,
  get: () => bigint,
): void {
  writeIpcSysctl(inj, `kernel/${file}`, o.id);
  const id = Number(get());
  if (id !== o.id) throw new RestoreError(`System V object ${o.id} came back as ${id}`);
}

/**
 * Makes the message queues and semaphore sets of `ipc` again in the (fresh) IPC namespace of
 * `inj`'s process, with their ids, owners, messages and values.
 */
export function makeSysvIpc(inj: Injector, ipc: { msg: MsgQueueEntry[]; sem: SemSetEntry[] }) {
  for (const q of ipc.msg) {
    makeWithId(inj, q, "msg_next_id", () => inj.call("msgget", q.key, createFlags(q.key)));
    setOwner(inj, q, "msg", q.qbytes);
    for (const m of q.messages) {
      const b = new Uint8Array(8 + m.data.length);
      new DataView(b.buffer).setBigInt64(0, m.type, true);
      b.set(m.data, 8);
      inj.call("msgsnd", q.id, inj.put(b, DATA_AT), m.data.length, SYSV.IPC_NOWAIT);
    }
  }
  for (const s of ipc.sem) {
    makeWithId(
      inj,
      s,
      "sem_next_id",
      () => inj.call("semget", s.key, s.values.length, createFlags(s.key)),
    );
    const values = new Uint16Array(s.values);
    inj.call("semctl", s.id, 0, SYSV.SETALL, inj.put(new Uint8Array(values.buffer), DATA_AT));
    setOwner(inj, s, "sem");
  }
}
