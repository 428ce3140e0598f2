/** `tardigrade inspect DIR`: what an image holds, optionally verifying every checksum. */
import {
  describeDifference,
  ImageError,
  type ImageSummary,
  inspectImage,
  verifyRestored,
} from "../mod.ts";
import { count, errorLine, formatBytes, parseVerb, printJson, table, type Verb } from "./common.ts";

function printHuman(r: ImageSummary, regs: boolean): void {
  const m = r.manifest;
  console.log(
    `image ${r.dir}: format ${m.format}, tardigrade ${m.toolVersion}, kernel ${m.kernel} ` +
      `${m.arch}, created ${m.createdAt}`,
  );
  if (r.parents) console.log(`parents (nearest first): ${r.parents.join(", ")}`);
  for (const p of r.processes) {
    console.log(`\nprocess ${p.pid} (${p.comm}) ppid ${p.ppid}: ${p.cmdline.join(" ")}`);
    console.log(`  exe ${p.exe ?? "-"}  cwd ${p.cwd}`);
    if (p.namespaces) console.log(`  container namespaces: ${p.namespaces.join(", ")}`);
    if (p.terminal) {
      const t = p.terminal;
      const what = [t.foreground ? "foreground" : "background", t.size, t.modes].filter(Boolean);
      console.log(`  terminal ${t.path ?? "(no descriptor open on it)"}: ${what.join(", ")}`);
    }
    if (p.zombies.length) {
      const list = p.zombies.map((z) => `${z.pid} (${z.comm}, ${z.ended})`).join(", ");
      console.log(`  zombie children not waited for: ${list}`);
    }
    console.log("");
    console.log(table(
      [{ header: "TID", right: true }, { header: "RIP" }, { header: "RSP" }, { header: "NAME" }],
      p.threads.map((t) => [String(t.tid), t.rip, t.rsp, t.name]),
    ));
    if (regs) {
      for (const t of p.threads) {
        console.log(`\nregisters of thread ${t.tid}:`);
        const entries = Object.entries(t.regs ?? {});
        for (let i = 0; i < entries.length; i += 4) {
          console.log(
            "  " + entries.slice(i, i + 4).map(([k, v]) => `${k.padEnd(8)} ${v.padEnd(18)}`)
              .join(" ").trimEnd(),
          );
        }
      }
    }
    console.log();
    console.log(table(
      [
        { header: "START" },
        { header: "END" },
        { header: "PERMS" },
        { header: "SIZE", right: true },
        { header: "PAGES", right: true },
        { header: "KIND" },
        { header: "NAME" },
      ],
      p.mappings.map((x) => [
        x.start,
        x.end,
        x.perms,
        formatBytes(x.size),
        formatBytes(x.pageBytes),
        x.kind,
        x.name ?? "",
      ]),
    ));
    console.log();
    console.log(table(
      [{ header: "FD", right: true }, { header: "KIND" }, { header: "FILE", right: true }, {
        header: "PATH",
      }],
      p.fds.map((d) => [String(d.fd), d.kind, String(d.file), d.path ?? ""]),
    ));
    const t = p.totals;
    console.log(
      `\ntotals: ${count(t.threads, "thread")}, ${count(t.mappings, "mapping")} ` +
        `(${formatBytes(t.mappedBytes)}), ${formatBytes(t.pageBytes)} of pages` +
        (t.parentPageBytes !== undefined
          ? ` (and ${formatBytes(t.parentPageBytes)} in parent images)`
          : "") +
        `, ${count(t.fds, "fd")}`,
    );
  }
  if (!r.verified) {
    console.log(
      "\npage data not verified: its checksums were not checked (inspect --verify checks them)",
    );
  } else {
    const chain = r.parents ? ", in this image and every parent" : "";
    console.log(`\nverify: OK (every checksum matches${chain})`);
  }
}

/** The verb. */
export const inspect: Verb = {
  name: "inspect",
  summary: "Show what an image holds: processes, threads, mappings, fds, totals.",
  usage: "tardigrade inspect DIR [--json] [--verify] [--verbose] [--compare]",
  help: `options:
  --compare  compare the image with the live processes that have its pids now (a restored
             tree, or the original of an image dumped with --leave-running): each is frozen
             a moment, read back as a restore reads what it made, and every difference is
             printed (process, object, field, image's value, kernel's); exit 1 if any.
             With --json: {dir, differences: [{pid, object, field, image, kernel}]}
  --verify   check every checksum of the image (and of its parents, for an incremental
             image); exit 1 with the reason if one fails
  --verbose  also show every register of every thread
  --json     {dir, manifest: {format, toolVersion, kernel, arch, createdAt}, parents?,
             verified (false: the page data's checksums were not checked),
             processes: [{pid, ppid, comm, cmdline, exe, cwd, terminal?: {path, foreground,
             size?, modes?}, namespaces? (a container's: "pid", "uts NAME (DOMAIN)" …),
             zombies: [{pid, comm, ended}],
             threads: [{tid, name, rip, rsp, regs?}],
             mappings: [{start, end, size, perms, kind, name, source, pageBytes}],
             fds: [{fd, file, kind, path, closeOnExec}], totals: {threads, mappings,
             mappedBytes, pageBytes, parentPageBytes?, fds}}]}
             (parents: an incremental image's parent images, nearest first; pageBytes: in
             this image's page files, parentPageBytes: in its parents')`,
  async run(args) {
    const p = parseVerb(this, args, {
      json: { type: "boolean" },
      verify: { type: "boolean" },
      compare: { type: "boolean" },
    }, { min: 1, max: 1 });
    if (!p) return 0;
    if (p.values.compare) {
      const differences = await verifyRestored(p.positionals[0]);
      if (p.values.json) printJson({ dir: p.positionals[0], differences });
      else if (differences.length === 0) console.log("the processes match their image");
      else for (const d of differences) console.log(describeDifference(d));
      return differences.length ? 1 : 0;
    }
    const regs = Boolean(p.values.verbose);
    let r;
    try {
      r = await inspectImage(p.positionals[0], { verify: Boolean(p.values.verify), regs });
    } catch (err) {
      if (!(err instanceof ImageError) || !p.values.verify) throw err;
      console.error(errorLine(new Error(`verify failed: ${err.message}`)));
      return 1;
    }
    if (p.values.json) printJson(r);
    else printHuman(r, regs);
    return 0;
  },
};
