/** `tardigrade serve`: receive migrations (and streamed images) from `migrate` and `dump --to`. */
import { parseVerb, type Verb } from "./common.ts";
import { parseAddress, readKey } from "./migrate_args.ts";
import { serve as serveMigrations } from "../mod.ts";

/** The verb. */
export const serve: Verb = {
  name: "serve",
  summary: "Receive migrations and images from `migrate` and `dump --to` (authenticated).",
  usage: "tardigrade serve --listen ADDR:PORT --key FILE [--dir DIR] [--once]",
  help: `Listens for senders that prove they hold the same key (a file of 16 bytes or more);
others are refused. Each sender's image is written into a new directory under DIR (a
temporary one if omitted) as it streams in, every frame checked; a migration is then
restored here and the sender told the pid (the sender's process ends only then).
Port 0 picks a free port; the address is printed first ("listening on ADDR:PORT").

options:
  --listen ADDR:PORT  where to listen (e.g. 0.0.0.0:7070)
  --key FILE          the shared secret
  --dir DIR           where received images are kept
  --once              serve one sender, then exit (1 if its migration failed)`,
  async run(args) {
    const p = parseVerb(this, args, {
      listen: { type: "string" },
      key: { type: "string" },
      dir: { type: "string" },
      once: { type: "boolean" },
    }, { min: 0, max: 0 });
    if (!p) return 0;
    const key = readKey(p.values.key, this);
    const { hostname, port } = parseAddress(String(p.values.listen ?? ""), this);
    const dir = typeof p.values.dir === "string" ? p.values.dir : undefined;
    if (dir) Deno.mkdirSync(dir, { recursive: true });
    const sessions = await serveMigrations({
      hostname,
      port,
      key,
      dir,
      once: Boolean(p.values.once),
      log: (line) => console.log(line),
      onListening: (a) => console.log(`listening on ${a.hostname}:${a.port}`),
    });
    return sessions.some((s) => s.error) ? 1 : 0;
  },
};
