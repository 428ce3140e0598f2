/**
 * The sysctls of an IPC namespace (/proc/sys/kernel/{shm,msg,sem}_*, /proc/sys/fs/mqueue/*): the
 * kernel answers for the namespace of the process that opens the file, so they are read and
 * written by syscalls injected into a process of the container, never by the tool.
 */
import { cstring, O } from "../../ffi/mod.ts";
import { DumpError } from "../errors.ts";
import type { Injector } from "../ptrace/inject.ts";

/** Where in the scratch region the path and the value go (clear of the callers' structs). */
const PATH_AT = 1024;
const VALUE_AT = 2048;
const VALUE_MAX = 256;

/** Runs `body` with /proc/sys/`name` open (`flags`) in `inj`'s process, closed after. */
function withSysctl<T>(inj: Injector, name: string, flags: number, body: (fd: bigint) => T): T {
  const path = inj.put(cstring(`/proc/sys/${name}`), PATH_AT);
  const fd = inj.call("openat", -100, path, flags | O.CLOEXEC, 0);
  try {
    return body(fd);
  } finally {
    inj.call("close", fd);
  }
}

/** /proc/sys/`name` as `inj`'s process reads it, trimmed; refuses the dump when it cannot. */
export function readIpcSysctl(inj: Injector, name: string): string {
  try {
    return withSysctl(inj, name, O.RDONLY, (fd) => {
      const at = inj.put(new Uint8Array(VALUE_MAX), VALUE_AT);
      const n = Number(inj.call("read", fd, at, VALUE_MAX));
      return new TextDecoder().decode(inj.get(VALUE_AT, n)).trim();
    });
  } catch (err) {
    throw new DumpError(
      `cannot read ${name.replaceAll("/", ".")} of its IPC namespace inside the container (a ` +
        `/proc is needed there): ${(err as Error).message}`,
    );
  }
}

/** Writes `value` to /proc/sys/`name` inside `inj`'s process. */
export function writeIpcSysctl(inj: Injector, name: string, value: string | number): void {
  withSysctl(inj, name, O.WRONLY, (fd) => {
    const text = new TextEncoder().encode(String(value));
    inj.call("write", fd, inj.put(text, VALUE_AT), text.length);
  });
}
