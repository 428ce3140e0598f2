/**
 * PostgreSQL through a dump and a restore: a postmaster with its five children, shared buffers in
 * shared anonymous memory, a System V interlock segment, listening TCP and UNIX sockets, the
 * postmaster-death pipe and latches. The restored server must answer queries with the rows it
 * had, take new ones, and shut down cleanly (which needs its children back as its children).
 * Skipped where PostgreSQL is not installed.
 */
import assert from "node:assert/strict";
import { checkpoint, restore } from "../mod.ts";
import { isAlive, spawnTarget } from "./helpers.ts";

const BIN = "/usr/lib/postgresql/15/bin";
const installed = ["postgres", "initdb"].every((b) => {
  try {
    return Deno.statSync(`${BIN}/${b}`).isFile;
  } catch {
    return false;
  }
}) && (() => {
  try {
    return Deno.statSync("/usr/bin/psql").isFile;
  } catch {
    return false;
  }
})();

/** PostgreSQL refuses to run as root: it runs as nobody. */
const asNobody = ["--reuid=nobody", "--regid=nogroup", "--clear-groups"];

function run(cmd: string, args: string[]): string {
  const out = new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).outputSync();
  const text = new TextDecoder().decode(out.stdout);
  if (!out.success) {
    throw new Error(`${cmd} ${args.join(" ")}: ${new TextDecoder().decode(out.stderr)}${text}`);
  }
  return text.trim();
}

function childrenOf(pid: number): number[] {
  try {
    return Deno.readTextFileSync(`/proc/${pid}/task/${pid}/children`).trim().split(/\s+/)
      .filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

/** The server's own five children, once the backend that served the last query has gone. */
async function serverChildren(pid: number): Promise<number[]> {
  for (let i = 0; i < 300; i++) {
    const children = childrenOf(pid);
    if (children.length === 5) return children.sort();
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error(`postmaster ${pid} has children ${childrenOf(pid).join(" ")}, not five`);
}

Deno.test({
  name: "postgres: a server with rows restores, takes more, and shuts down cleanly",
  ignore: !installed,
  async fn() {
    const dir = Deno.makeTempDirSync({ prefix: "tardigrade-pg-" });
    const nobody = Number(run("id", ["-u", "nobody"]));
    Deno.chownSync(dir, nobody, null);
    const data = `${dir}/data`;
    run("setpriv", [...asNobody, `${BIN}/initdb`, "-D", data, "-A", "trust", "-U", "tg"]);
    const port = String(20000 + Math.floor(Math.random() * 20000));
    const sql = (q: string) =>
      run("psql", ["-h", dir, "-p", port, "-U", "tg", "-d", "postgres", "-Atc", q]);
    const pg = await spawnTarget("setpriv", [
      ...asNobody,
      `${BIN}/postgres`,
      "-D",
      data,
      "-p",
      port,
      "-k",
      dir,
      "-c",
      "listen_addresses=127.0.0.1",
    ], { ready: /ready to accept connections/ });
    const img = `${dir}/image`;
    let children: number[] = [];
    try {
      sql("create table t (i int); insert into t select generate_series(1, 1000)");
      children = await serverChildren(pg.pid);
      await checkpoint(pg.pid, { dir: img });
      assert.ok(!isAlive(pg.pid), "the dumped postmaster still runs");
      const r = await restore(img);
      assert.equal(r.pid, pg.pid);
      assert.deepEqual(childrenOf(pg.pid).sort(), children, "children not back");
      assert.equal(sql("select count(*), sum(i) from t"), "1000|500500");
      sql("insert into t values (1001)");
      assert.equal(
        run("psql", [
          "-h",
          "127.0.0.1",
          "-p",
          port,
          "-U",
          "tg",
          "-d",
          "postgres",
          "-Atc",
          "select max(i) from t",
        ]),
        "1001",
      );
      // A fast shutdown: the postmaster signals its children and waits for them.
      Deno.kill(pg.pid, "SIGINT");
      for (let i = 0; i < 500 && isAlive(pg.pid); i++) await new Promise((r) => setTimeout(r, 10));
      assert.ok(!isAlive(pg.pid), "the restored postmaster did not shut down");
      assert.match(pg.output(), /database system is shut down/);
    } finally {
      for (const pid of [pg.pid, ...children]) {
        try {
          Deno.kill(pid, "SIGKILL");
        } catch { /* gone */ }
      }
      await pg.kill();
      // The interlock segment outlives a killed server.
      for (const line of run("ipcs", ["-m"]).split("\n")) {
        const [, id, owner] = line.trim().split(/\s+/);
        if (owner === "nobody") run("ipcrm", ["-m", id]);
      }
      Deno.removeSync(dir, { recursive: true });
    }
  },
});
