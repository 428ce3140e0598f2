/** `tardigrade restore DIR`: bring a checkpointed process back. */
import { describeDifference, restore as sdkRestore, type RestoreResult } from "../mod.ts";
import { parseVerb, toJson, UsageError, type Verb } from "./common.ts";
import { type ShellJobEnd, waitLikeFg } from "./job_control.ts";
import { ProgressBar } from "./progress.ts";

/** Signal names for the line printed when a shell job stops. */
const STOP_SIGNALS: Record<number, string> = {
  19: "SIGSTOP",
  20: "SIGTSTP",
  21: "SIGTTIN",
  22: "SIGTTOU",
};

/** Waits for a shell job like `fg`; resolves to how it ended. */
async function waitForJob(result: RestoreResult): Promise<ShellJobEnd> {
  const job = result.job!;
  return await waitLikeFg(job, ({ signal, withTool }) => {
    const how = STOP_SIGNALS[signal] ?? `signal ${signal}`;
    console.error(
      withTool
        ? `[tardigrade] ${job.pid} stopped (${how}); tardigrade stops with it: fg or bg continues both`
        : `[tardigrade] ${job.pid} stopped (${how}): \`kill -CONT ${job.pid}\` to resume`,
    );
  });
}

/** With --pid-namespace, for --json: the pids as the processes see them, and the init. */
function namespaceJson(r: RestoreResult): Record<string, unknown> {
  if (r.namespaceInit === undefined) return {};
  return {
    namespacePid: r.namespacePid,
    namespaceInit: r.namespaceInit,
    pidMap: Object.fromEntries(r.pidMap),
  };
}

/**
 * `--inherit-fd` arguments as key → fd: CRIU's `fd[N]:KEY`, or `N=KEY`. A key given twice is a
 * usage error: one file is handed in per key.
 */
function inheritFds(args: string[], usage: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const arg of args) {
    const m = /^fd\[(\d+)\]:(.+)$/.exec(arg) ?? /^(\d+)=(.+)$/.exec(arg);
    if (!m) throw new UsageError(`--inherit-fd '${arg}' is not fd[N]:KEY (or N=KEY)`, usage);
    if (m[2] in out) throw new UsageError(`--inherit-fd: ${m[2]} is handed in twice`, usage);
    out[m[2]] = Number(m[1]);
  }
  return out;
}

/** The verb. */
export const restore: Verb = {
  name: "restore",
  summary: "Restore a process from an image directory; prints its pid and returns.",
  usage: "tardigrade restore DIR [--shell-job] [--pid-namespace] [--allow-differences] " +
    "[--inherit-fd fd[N]:KEY]... [--lazy [--lazy-log FILE]] [--pidfile FILE] [--json]",
  help: `The process gets its dumped pid back and runs detached from this tool. Things that
could not be restored exactly are printed as warnings on stderr.

options:
  --shell-job     for a program run from an interactive shell: it comes back on this
                  terminal (descriptors on its old terminal are opened on this one), in this
                  shell's session, as a process group of its own. If it was the foreground
                  job, it gets the terminal, in the modes it had (raw for an editor), and
                  restore waits for it like \`fg\` (^C and ^Z reach it, not this tool), then
                  puts this terminal's modes back and exits with its exit code (128 + signal
                  when a signal ended it); when it stops, restore stops too, so the shell's fg
                  and bg continue both. A background job stays in the background; restore
                  prints its pid and returns.
  --pid-namespace restore into a new pid namespace (with a mount namespace of its own for
                  its /proc), where the processes get their dumped pids and tids whatever
                  the host uses them for: a process dumped with --leave-running can be
                  restored beside the original, as often as wanted. Its parent is the
                  namespace's init (pid 1 inside); \`kill -9\` of the init ends the copy.
                  The pid printed (and written to --pidfile) is the host's.
  --allow-differences
                  restore even when the restored processes, read back from the kernel
                  before they run, differ from the image (each difference is printed as a
                  warning); without it such a restore fails, naming the difference, and
                  leaves nothing behind
  --inherit-fd fd[N]:KEY
                  hand in this process's fd N for the image's external file KEY (dumped
                  with --external KEY), as CRIU's --inherit-fd (N=KEY works too); every
                  descriptor of that file gets this very open file, with its dumped status
                  flags: \`restore DIR --inherit-fd 'fd[1]:pipe:[12345]' | tee log\` gives
                  the restored writer the pipe to this tee. An external file not handed in,
                  or a KEY the image does not have, is refused before anything is made.
                  fd[N]:net hands in the net namespace a container dumped with --external
                  net joins (\`restore DIR --inherit-fd fd[3]:net 3</run/netns/NAME\`),
                  fd[N]:user the user namespace one dumped with --external user joins
                  (N open on /proc/PID/ns/user of a process in it).
                  With fd 1 handed in, what restore prints goes to stderr: stdout is the
                  restored process's
  --lazy          post-copy: the process runs as soon as it is made, its private anonymous
                  memory (heap, stacks, anonymous mappings) filled as it touches it and in
                  the background by a detached page server, which ends once every page is
                  in (or the process is gone); the rest of its memory is written first. The
                  image must stay readable until then: if it cannot be read, the process is
                  killed and the log says why. One process only (it may fork meanwhile);
                  not with --shell-job or --pid-namespace
  --lazy-log FILE the page server's log (default $TMPDIR/tardigrade-lazy-PID.log)
  --pidfile FILE  also write the pid (and a newline) to FILE
  --json          {pid, threads, pageBytes, warnings[], differences[]} (with a waited-for --shell-job also
                  exitCode and signal, printed when it ends; with --pid-namespace also
                  namespacePid: the dumped pid, namespaceInit: the init's host pid, and
                  pidMap: {dumped pid or tid: host pid or tid}; with --lazy also lazy:
                  {server: its pid, log, bytes: bytes it serves})

A progress bar goes to stderr when it is a terminal.`,
  async run(args) {
    const p = parseVerb(this, args, {
      "shell-job": { type: "boolean" },
      "pid-namespace": { type: "boolean" },
      "allow-differences": { type: "boolean" },
      "inherit-fd": { type: "string", multiple: true },
      pidfile: { type: "string" },
      json: { type: "boolean" },
      lazy: { type: "boolean" },
      "lazy-log": { type: "string" },
    }, { min: 1, max: 1 });
    if (!p) return 0;
    if (p.values["lazy-log"] !== undefined && !p.values.lazy) {
      throw new UsageError("--lazy-log goes with --lazy", this.usage);
    }
    const inherit = inheritFds((p.values["inherit-fd"] as string[] | undefined) ?? [], this.usage);
    // Stdout handed in is the restored process's: nothing of ours goes into its stream.
    const say = Object.values(inherit).includes(1)
      ? (text: string) => console.error(text)
      : (text: string) => console.log(text);
    let bar: ProgressBar | undefined;
    // The bar ends before a shell job gets the terminal: nothing of ours is drawn over it.
    const endBar = () => {
      bar?.finish();
      bar = undefined;
    };
    const result = await sdkRestore(p.positionals[0], {
      shellJob: Boolean(p.values["shell-job"]),
      pidNamespace: Boolean(p.values["pid-namespace"]),
      allowDifferences: Boolean(p.values["allow-differences"]),
      inheritFds: inherit,
      lazy: Boolean(p.values.lazy),
      ...(typeof p.values["lazy-log"] === "string" ? { lazyLog: p.values["lazy-log"] } : {}),
      policy: {
        restoreStage: (stage) => {
          if (stage === "resume") endBar();
        },
      },
      onProgress: (bytes, total) => {
        bar ??= new ProgressBar("restore", total);
        bar.update(bytes);
      },
    });
    endBar();
    if (typeof p.values.pidfile === "string") {
      await Deno.writeTextFile(p.values.pidfile, `${result.pid}\n`);
    }
    const { pid, threads, pageBytes, differences } = result;
    // Allowed differences are said, as warnings are: the process is not exactly its image.
    const warnings = [...result.warnings, ...differences.map(describeDifference)];
    if (result.job?.foreground) {
      // The job has the terminal: say nothing until it is ours again.
      const end = await waitForJob(result);
      for (const w of warnings) console.error(`tardigrade: warning: ${w}`);
      if (p.values.json) {
        say(toJson({
          pid,
          threads,
          pageBytes,
          warnings: result.warnings,
          differences,
          exitCode: end.exitCode,
          signal: end.signal,
        }));
      }
      return end.status;
    }
    if (p.values.json) {
      say(toJson({
        pid,
        ...namespaceJson(result),
        threads,
        pageBytes,
        warnings: result.warnings,
        differences,
        ...(result.lazy ? { lazy: result.lazy } : {}),
      }));
    } else {
      for (const w of warnings) console.error(`tardigrade: warning: ${w}`);
      if (result.job) {
        console.error(`tardigrade: ${pid} was a background job: it runs in the background`);
      }
      if (result.lazy) {
        const { server, log, bytes } = result.lazy;
        console.error(
          `tardigrade: ${
            (bytes / 1048576).toFixed(1)
          } MiB served lazily by page server ${server} ` +
            `(log: ${log})`,
        );
      }
      say(String(pid));
    }
    return 0;
  },
};
