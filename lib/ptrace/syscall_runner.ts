/**
 * Many syscalls in one ptrace round trip, for a process being restored.
 *
 * One injected syscall costs four ptrace requests (set registers, single-step, wait, read
 * registers), some 50 µs; a restore of 50,000 mappings or 10,000 descriptors spends seconds on
 * them. So a process that dies with the tool (one being restored, never a dump's target) gets a
 * 64-byte loop written into its scratch region: it reads records of a syscall number and six
 * arguments, makes each syscall, stores the result beside it and stops at the first error or at
 * the end with `int3`. The tool writes the records, runs the loop once, and reads the results.
 * The code is these bytes, written by the tool: there is no compiled helper.
 */

/** Bytes of one record: the number, six arguments, the result. */
export const RECORD_SIZE = 64;

/**
 * The loop (x86-64), entered with r12 = the first record and r13 = how many. On return r13 is
 * how many were not made (the failed one among them) and r12 points at the first of those.
 *
 *     loop:  test r13, r13;  jz done
 *            mov rax, [r12]; mov rdi, [r12+8]; mov rsi, [r12+16]; mov rdx, [r12+24]
 *            mov r10, [r12+32]; mov r8, [r12+40]; mov r9, [r12+48]
 *            syscall
 *            mov [r12+56], rax
 *            cmp rax, -4095; jae done          ; -4095..-1: an errno
 *            add r12, 64; dec r13; jmp loop
 *     done:  int3
 */
export const RUNNER_CODE = new Uint8Array([
  0x4d,
  0x85,
  0xed, // test r13, r13
  0x74,
  0x3a, // jz done
  0x49,
  0x8b,
  0x04,
  0x24, // mov rax, [r12]
  0x49,
  0x8b,
  0x7c,
  0x24,
  0x08, // mov rdi, [r12+8]
  0x49,
  0x8b,
  0x74,
  0x24,
  0x10, // mov rsi, [r12+16]
  0x49,
  0x8b,
  0x54,
  0x24,
  0x18, // mov rdx, [r12+24]
  0x4d,
  0x8b,
  0x54,
  0x24,
  0x20, // mov r10, [r12+32]
  0x4d,
  0x8b,
  0x44,
  0x24,
  0x28, // mov r8, [r12+40]
  0x4d,
  0x8b,
  0x4c,
  0x24,
  0x30, // mov r9, [r12+48]
  0x0f,
  0x05, // syscall
  0x49,
  0x89,
  0x44,
  0x24,
  0x38, // mov [r12+56], rax
  0x48,
  0x3d,
  0x01,
  0xf0,
  0xff,
  0xff, // cmp rax, -4095
  0x73,
  0x09, // jae done
  0x49,
  0x83,
  0xc4,
  0x40, // add r12, 64
  0x49,
  0xff,
  0xcd, // dec r13
  0xeb,
  0xc1, // jmp loop
  0xcc, // done: int3
]);

/** Where `int3` leaves the instruction pointer: just past the loop's last byte. */
export const RUNNER_END = BigInt(RUNNER_CODE.length);

/** How many records one run takes. */
export const MAX_RECORDS = 512;

/** Where the records start in the runner's part of the scratch region, after a page of code. */
export const RECORDS_AT = 4096;

/** Where the data queued syscalls point at starts (paths …), after the records. */
export const DATA_AT = RECORDS_AT + MAX_RECORDS * RECORD_SIZE;

/** The runner's part of a scratch region: code, records, data. */
export const RUNNER_BYTES = 64 * 1024;

/** Bytes of data the queued syscalls of one run may point at. */
export const DATA_BYTES = RUNNER_BYTES - DATA_AT;

/** One syscall waiting to be made. */
export interface QueuedCall {
  nr: number;
  args: bigint[];
  /**
   * Told the result once made (a negative errno on failure): throws to fail the restore, returns
   * to let a failure pass. Without it, a failure throws `SyscallError`.
   */
  onResult?: (result: bigint) => void;
  /** The syscall's name, for errors. */
  name: string;
}

/** The records of `calls`, ready to write after the code page. */
export function encodeRecords(calls: readonly QueuedCall[]): Uint8Array {
  const bytes = new Uint8Array(calls.length * RECORD_SIZE);
  const view = new DataView(bytes.buffer);
  calls.forEach((c, i) => {
    const at = i * RECORD_SIZE;
    view.setBigUint64(at, BigInt(c.nr), true);
    for (let a = 0; a < 6; a++) {
      view.setBigUint64(at + 8 + 8 * a, BigInt.asUintN(64, c.args[a] ?? 0n), true);
    }
  });
  return bytes;
}

/** The result field of record `i` among `bytes` (read back from the target). */
export function resultOf(bytes: Uint8Array, i: number): bigint {
  return new DataView(bytes.buffer, bytes.byteOffset).getBigInt64(i * RECORD_SIZE + 56, true);
}
