// Run by way_back_test.ts: freezes PID, runs a syscall in each of its threads (which makes their
// ways back), then a 2-second nanosleep in thread TID, during which the test kills it.
import { freeze } from "../lib/ptrace/freeze.ts";

const [pid, tid] = Deno.args.map(Number);
const frozen = await freeze(pid);
for (const t of frozen.threads) frozen.injectorFor(t.tid).call("getpid");
const inj = frozen.injectorFor(tid);
const sleep = inj.put(new Uint8Array(new BigInt64Array([2n, 0n]).buffer));
console.log("ARMED");
inj.call("nanosleep", sleep, 0);
console.log("SLEPT");
