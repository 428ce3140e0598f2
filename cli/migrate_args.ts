/** What `serve`, `migrate` and `dump --to` share: an ADDR:PORT and the key file. */
import { UsageError, type Verb } from "./common.ts";

/** `HOST:PORT` (`[V6]:PORT` too) as a hostname and a port. */
export function parseAddress(text: string, verb: Verb): { hostname: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(text);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) throw new UsageError(`not an ADDR:PORT: '${text}'`, verb.usage);
  return { hostname: m[1] ?? m[2], port };
}

/** The shared secret in `path` (`--key FILE`), which both sides must be given. */
export function readKey(path: unknown, verb: Verb): Uint8Array {
  if (typeof path !== "string") {
    throw new UsageError(
      "--key FILE is required: the secret sender and receiver share",
      verb.usage,
    );
  }
  let key: Uint8Array;
  try {
    key = Deno.readFileSync(path);
  } catch (err) {
    throw new UsageError(`cannot read the key file ${path}: ${(err as Error).message}`, verb.usage);
  }
  if (key.length < 16) {
    throw new UsageError(`the key file ${path} holds ${key.length} bytes: 16 at least`, verb.usage);
  }
  return key;
}
