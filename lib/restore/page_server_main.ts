/**
 * The page server's process (started by page_server_process.ts): reads what to serve from its
 * stdin, takes the userfaultfd from the restoring tool, says "ready" on its stdout and serves
 * until every page is in or the process is gone. It logs to the file it is given; SIGINT,
 * SIGTERM and SIGHUP are logged and ignored while pages are missing (ending now would leave the
 * process reading zeros where its data was), and the OOM killer is asked to spare it.
 */
import { close, pidfdGetfd, pidfdOpen } from "../../ffi/mod.ts";
import { ImageReader, type PageExtent } from "../image/mod.ts";
import { PageServer, type ServedProcess, warmUpPageServer } from "../memory/page_server.ts";
import { type PageServerSpec, specRuns } from "./page_server_process.ts";
import { extentIn, type LateRanges, without } from "./late_pages.ts";

const MiB = 1024 * 1024;

/** The lines of stdin one at a time (null at its end). */
function stdinLines(): () => Promise<string | null> {
  const reader = Deno.stdin.readable.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  return async () => {
    while (!text.includes("\n")) {
      const { value, done } = await reader.read();
      if (done) return null;
      text += value;
    }
    const line = text.slice(0, text.indexOf("\n"));
    text = text.slice(line.length + 1);
    return line;
  };
}

function logger(path: string): (line: string) => void {
  const file = Deno.openSync(path, { write: true, create: true, append: true });
  const enc = new TextEncoder();
  return (line) => {
    file.writeSync(enc.encode(`${new Date().toISOString()} lazy-pages[${Deno.pid}]: ${line}\n`));
  };
}

async function main(): Promise<number> {
  const say = (line: string) => Deno.stdout.writeSync(new TextEncoder().encode(line + "\n"));
  const nextLine = stdinLines();
  let spec: PageServerSpec;
  let log: (line: string) => void;
  const served: ServedProcess[] = [];
  let reader: ImageReader;
  try {
    warmUpPageServer(); // while the restore it serves is still to come
    spec = JSON.parse((await nextLine()) ?? "");
    log = logger(spec.log);
    reader = await ImageReader.open(spec.dir);
    for (const p of spec.processes) {
      const pidfd = pidfdOpen(p.from.pid);
      try {
        const uffd = pidfdGetfd(pidfd, p.from.fd);
        served.push({ pid: p.pid, uffd, pending: specRuns(p), extents: p.extents });
      } finally {
        close(pidfd);
      }
    }
  } catch (err) {
    say(err instanceof Error ? err.message : String(err));
    return 1;
  }
  const bytes = served.reduce((n, p) => n + p.pending.reduce((k, r) => k + r.end - r.start, 0), 0);
  const pids = served.map((p) => p.pid).join(", ");
  log(`serving ${(bytes / MiB).toFixed(1)} MiB of process(es) ${pids} from ${spec.dir}`);
  for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
    Deno.addSignalListener(sig, () => log(`${sig} ignored: pages are still missing`));
  }
  // Killed by the OOM killer, it would leave the process reading zeros where its data was.
  try {
    Deno.writeTextFileSync("/proc/self/oom_score_adj", "-1000");
  } catch { /* not privileged: as it is */ }
  say("ready");
  // The restore arms the processes meanwhile: nothing is served before it says so.
  if ((await nextLine()) !== "go") {
    log("the restore did not go on (it failed): nothing to serve");
    return 1;
  }
  const started = performance.now();
  const ready = spec.late ? followLate(spec.late, nextLine, log) : undefined;
  const server = new PageServer(served, reader, log, ready);
  try {
    using _discard = discarded(spec, reader, log);
    const s = await server.run();
    const secs = ((performance.now() - started) / 1000).toFixed(2);
    log(
      `done in ${secs} s: ${(s.bytes / MiB).toFixed(1)} MiB filled, ${s.faults} faults, ` +
        `${s.processes} process(es), ${(s.dropped / MiB).toFixed(1)} MiB dropped or not needed`,
    );
    return 0;
  } catch (err) {
    log(
      `cannot serve the pages of process(es) ${pids}, so they were killed: ` +
        (err instanceof Error ? err.message : String(err)),
    );
    return 1;
  }
}

/** With `discard`: removes the image once the server is done with it, served or not. */
function discarded(spec: PageServerSpec, reader: ImageReader, log: (line: string) => void) {
  return {
    [Symbol.dispose]() {
      if (!spec.discard) return;
      reader.close();
      try {
        Deno.removeSync(spec.dir, { recursive: true });
        log(`removed ${spec.dir}`);
      } catch (err) {
        log(`cannot remove ${spec.dir}: ${err instanceof Error ? err.message : err}`);
      }
    },
  };
}

/**
 * Post-copy: follows the stdin lines that say which late bytes are in; the returned check says
 * whether an extent is, and throws once they never will be (the server then kills the
 * processes: better than leaving them waiting on a fault, or reading zeros).
 */
function followLate(
  late: LateRanges,
  nextLine: () => Promise<string | null>,
  log: (line: string) => void,
): (extent: PageExtent) => boolean {
  const missing = structuredClone(late);
  let lost: string | undefined;
  (async () => {
    for (;;) {
      const line = await nextLine();
      if (line === "all") return log("every late page is in");
      if (line === null) throw new Error("the receiver ended before every late page came");
      if (line.startsWith("lost ")) throw new Error(line.slice(5));
      const [what, file, start, end] = line.split(" ");
      if (what !== "in" || !missing[file]) throw new Error(`a message that is not one: ${line}`);
      missing[file] = without(missing[file], Number(start), Number(end));
    }
  })().catch((err) => {
    lost = `the pages written last never came from the sender (${err.message})`;
    log(lost);
  });
  return (extent) => {
    if (extentIn(missing, extent)) return true;
    if (lost) throw new Error(lost);
    return false;
  };
}

if (import.meta.main) Deno.exit(await main());
