/**
 * PostgreSQL through a dump and a restore: a postmaster with its five children, shared buffers in
 * shared anonymous memory, a System V interlock segment, listening TCP and UNIX sockets, the
 * postmaster-death pipe and latches. The restored server must answer queries with the rows it
 * had, take new ones, and shut down cleanly (which needs its children back as its children).
 * Ignored, with the reason, where PostgreSQL is not installed.
 */
import assert from "node:assert/strict";
import { checkpoint, restore } from "../mod.ts";
import {
  childrenOf,
  isAlive,
  needs,
  notInstalled,
  onPath,
  spawnTarget,
  waitUntil,
} from "./helpers.ts";

/** `pg_config --bindir`, or undefined without a pg_config that answers. */
function pgConfigBindir(): string | undefined {
  try {
    const pgConfig = new Deno.Command("pg_config", { args: ["--bindir"], stderr: "null" });
    const out = pgConfig.outputSync();
    return out.success ? new TextDecoder().decode(out.stdout).trim() : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The directory of the server's programs, `postgres` and `initdb`: where the `postgres` on PATH
 * really is, else `pg_config --bindir` (Debian keeps them off PATH, in a directory per major
 * version; its pg_config names the newest).
 */
function serverBindir(): string | undefined {
  const onPATH = onPath("postgres");
  const dirs = [onPATH && Deno.realPathSync(onPATH).replace(/\/[^/]*$/, ""), pgConfigBindir()];
  return dirs.find((dir) =>
    dir && ["postgres", "initdb"].every((p) => {
      try {
        return Deno.statSync(`${dir}/${p}`).isFile;
      } catch {
        return false;
      }
    })
  );
}

const BIN = serverBindir();

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

/** The server's own five children, once the backend that served the last query has gone. */
async function serverChildren(pid: number): Promise<number[]> {
  await waitUntil(
    () => childrenOf(pid).length === 5,
    3000,
    () => `five children of postmaster ${pid}, not ${childrenOf(pid).join(" ")}`,
  );
  return childrenOf(pid).sort();
}

Deno.test({
  ...needs(
    "postgres: a server with rows restores, takes more, and shuts down cleanly",
    BIN
      ? notInstalled("psql", "setpriv", "ipcs", "ipcrm")
      : "not installed: postgres, initdb (not on PATH nor in pg_config --bindir)",
  ),
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
      await checkpoint(pg.pid, img);
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
      await waitUntil(() => !isAlive(pg.pid), 5000, "the restored postmaster to shut down");
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
