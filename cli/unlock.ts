/** `tardigrade unlock DIR`: remove the network lock of an image that is not to be restored. */
import { parseVerb, printJson, type Verb } from "./common.ts";
import { unlockNetwork } from "../mod.ts";

/** The verb. */
export const unlock: Verb = {
  name: "unlock",
  summary: "Remove the network lock of an image directory (its TCP connections' drop rules).",
  usage: "tardigrade unlock DIR [--json]",
  help: `A dump that ends processes with TCP connections leaves netfilter dropping those
connections' packets (an nft table, or an iptables chain where nft is missing, named
tardigrade-HASH after DIR), so that their peers retransmit instead of getting a reset until
the restore, which removes it. unlock removes it without a restore: the one the image in DIR
records, and the one a dump into DIR killed before it wrote its image left. No other rule is
touched. A lock that is not there is not an error.

options:
  --json   {removed: ["NAME (METHOD)", ...]}`,
  async run(args) {
    const p = parseVerb(this, args, { json: { type: "boolean" } }, { min: 1, max: 1 });
    if (!p) return 0;
    const result = await unlockNetwork(p.positionals[0]);
    if (p.values.json) printJson(result);
    else if (!result.removed.length) console.log(`no network lock of ${p.positionals[0]}`);
    else for (const what of result.removed) console.log(`removed the network lock ${what}`);
    return 0;
  },
};
