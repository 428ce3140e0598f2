/**
 * Commands run in a container's network namespace: `nsenter --net=/proc/PID/ns/net PROGRAM …`, a
 * short-lived child process of the tool, so the tool itself never enters the namespace. `ip`
 * (iproute2) reads and makes its devices, addresses and routes; a shell reads and writes its
 * sysctls (/proc/sys/net follows the namespace of the process that opens it).
 */

/** The failure of a command, naming it and what it printed. */
export class NetnsCommandError extends Error {}

/**
 * Runs `program` with `args` in the network namespace of process `pid` (null: the tool's own);
 * its standard output. Throws `NetnsCommandError` naming the command when it fails or is missing.
 */
export function runInNetns(pid: number | null, program: string, args: string[]): string {
  const [cmd, argv] = pid === null
    ? [program, args]
    : ["nsenter", [`--net=/proc/${pid}/ns/net`, "--", program, ...args]];
  let out: Deno.CommandOutput;
  try {
    out = new Deno.Command(cmd, { args: argv, stdin: "null", stdout: "piped", stderr: "piped" })
      .outputSync();
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) {
      throw new NetnsCommandError(`${cmd} is not installed (a net namespace needs nsenter and ip)`);
    }
    throw err;
  }
  if (!out.success) {
    const said = new TextDecoder().decode(out.stderr).trim().split("\n")[0];
    throw new NetnsCommandError(
      `${program} ${args.join(" ")} failed: ${said || `exit code ${out.code}`}`,
    );
  }
  return new TextDecoder().decode(out.stdout);
}

/** Whether `program` runs here. */
export function hasProgram(program: string): boolean {
  try {
    return new Deno.Command(program, { args: ["--version"], stdout: "null", stderr: "null" })
      .outputSync().success;
  } catch {
    return false;
  }
}
