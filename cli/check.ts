/** `tardigrade check`: whether this kernel has what the tool needs. */
import { parseVerb, printJson, table, type Verb } from "./common.ts";
import { kernelFeatures } from "../mod.ts";

/** The verb. */
export const check: Verb = {
  name: "check",
  summary: "Check the kernel features tardigrade needs; exit 1 if a required one is missing.",
  usage: "tardigrade check [--json]",
  help: `Probes, in order:
  ptrace               seizes and interrupts a child sleep (required)
  PROCMAP_QUERY        the ioctl on /proc/PID/maps
  PAGEMAP_SCAN         the ioctl on /proc/PID/pagemap
  /proc/PID/map_files  readable (required)
  clone3 set_tid       asked for pid 1: EEXIST proves it (required)
  userfaultfd          for pre-copy's dirty page tracking
  ns_last_pid          /proc/sys/kernel/ns_last_pid
  TCP_REPAIR           for dumping established TCP connections
  pid namespaces       for restore --pid-namespace
  network lock         nft, or iptables, to hold a dump's TCP connections until their restore

options:
  --json   {ok, features: [{name, required, ok, detail}]}; ok is false when a required
           feature is missing`,
  async run(args) {
    const p = parseVerb(this, args, { json: { type: "boolean" } }, { min: 0, max: 0 });
    if (!p) return 0;
    const features = await kernelFeatures();
    const ok = features.every((f) => f.ok || !f.required);
    if (p.values.json) {
      printJson({ ok, features });
    } else {
      console.log(table(
        [{ header: "FEATURE" }, { header: "STATUS" }, { header: "REQUIRED" }, {
          header: "DETAIL",
        }],
        features.map((f) => [f.name, f.ok ? "ok" : "missing", f.required ? "yes" : "no", f.detail]),
      ));
      console.log(ok ? "all required features present" : "a required feature is missing");
    }
    return ok ? 0 : 1;
  },
};
