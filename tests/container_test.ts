/**
 * Containers made by `unshare`: the init of a container (pid 1 of its pid namespace, with its own
 * /proc, host name and IPC namespace, maybe a time namespace and a net namespace wired to a host
 * bridge through a veth) and its child are dumped and restored into fresh namespaces of the same
 * kinds, where they check themselves (container_init.c, container_ipc.c) and answer on their
 * sockets. What is not carried yet (a process that is not the init, a namespace held from outside,
 * a POSIX message queue someone waits to be notified of, a mount that propagates, network devices
 * other than lo and veths, TCP connections inside) is refused at dump time, naming it, and the
 * container runs on; a net namespace held by a mount is left out with `--external net` and
 * joined at restore.
 */
import assert from "node:assert/strict";
import { checkpoint, type PsRow, restore, type RestoreResult } from "../mod.ts";
import {
  CGROUP_PIDS as PIDS,
  CGROUP_UNIFIED as UNIFIED,
  childrenOf,
  cli,
  exists,
  fixture,
  groupOf,
  isAlive,
  killAndReap,
  makeGroup,
  needs,
  notInstalled,
  onPath,
  removeGroup,
  runDeno,
  runningFixtures,
  spawnTarget,
  type Target,
  waitUntil,
} from "./helpers.ts";

const UNSHARE = ["--pid", "--fork", "--mount-proc", "--uts", "--ipc"];

/** NSpid of a process: its pid in each pid namespace, the host's first. */
function nspid(pid: number): number[] {
  const status = Deno.readTextFileSync(`/proc/${pid}/status`);
  return status.match(/^NSpid:\s*(.*)$/m)![1].trim().split(/\s+/).map(Number);
}

/** The namespace of kind `kind` process `pid` lives in. */
const ns = (pid: number, kind: string) => Deno.readLinkSync(`/proc/${pid}/ns/${kind}`);

/** A container running container_init.c, made by `unshare` with `flags`; and its init's host pid. */
interface Container {
  unshare: Target;
  init: number;
  countFile: string;
}

async function startContainer(
  flags = UNSHARE,
  shell?: string,
  env?: Record<string, string>,
  program = "container_init",
): Promise<Container> {
  const countFile = await Deno.makeTempFile({ prefix: "tardigrade-count-" });
  const bin = await fixture(program);
  const args = shell
    ? [...flags, "sh", "-c", `${shell}; exec '${bin}' '${countFile}'`]
    : [...flags, bin, countFile];
  const unshare = await spawnTarget("unshare", args, {
    ready: /^(READY|SETUP FAILED).*$/m,
    append: true, // the restored init writes after what unshare adds when its child dies
    env,
  });
  assert.match(unshare.output(), /^READY /m, `container setup failed:\n${unshare.output()}`);
  const [init] = childrenOf(unshare.pid);
  return { unshare, init, countFile };
}

async function stopContainer(c: Container, restored?: RestoreResult): Promise<void> {
  if (restored) await killAndReap(restored.pid);
  await killAndReap(c.init);
  await killAndReap(c.unshare.pid);
  await Deno.remove(c.countFile).catch(() => {});
}

const missing = notInstalled("unshare", "cc");

Deno.test(
  needs("container: init and child come back as pid 1 and 2 of fresh namespaces", missing),
  async () => {
    const c = await startContainer();
    const bin = await fixture("container_init");
    const dir = await Deno.makeTempDir({ prefix: "tardigrade-container-" });
    let restored: RestoreResult | undefined;
    try {
      assert.equal(await c.unshare.check(c.init), "PASS", c.unshare.output());
      // ps shows the namespaces it lives in apart from the tool, and its cgroups.
      const rows = JSON.parse((await cli("ps", "--json")).stdout) as PsRow[];
      const row = rows.find((r) => r.pid === c.init);
      assert.deepEqual(row?.namespaces, ["pid", "mnt", "uts", "ipc"]);
      assert.ok(row?.cgroups.some((g) => g.hierarchy === "" && g.path.startsWith("/")));
      const dumped = await checkpoint(c.init, `${dir}/image`);
      assert.equal(dumped.processes.length, 2, "the init and its child are dumped");
      await waitUntil(() => !isAlive(c.init), 5000, "the dumped container to end");
      await killAndReap(c.unshare.pid);

      const shown = await cli("inspect", `${dir}/image`);
      assert.match(
        shown.stdout,
        new RegExp(
          "container namespaces: pid, mnt \\+proc on /proc, uts tardibox \\(tardinet\\), " +
            "ipc 1 message queues \\(2 messages\\), 1 semaphore sets",
        ),
      );

      // A restore that fails late leaves nothing: no process, so no namespace it made.
      await assert.rejects(
        () =>
          restore(`${dir}/image`, {
            policy: {
              restoreStage: (stage) => {
                if (stage === "resume") throw new Error("stopped at resume");
              },
            },
          }),
        /stopped at resume/,
      );
      assert.deepEqual(runningFixtures(bin), [], "a process of the failed restore is left");

      restored = await restore(`${dir}/image`);
      const init = restored.pid;
      assert.deepEqual(nspid(init).slice(1), [1], "the init is pid 1 inside");
      assert.equal(restored.namespacePid, 1);
      const [child] = childrenOf(init);
      assert.deepEqual(nspid(child).slice(1), [2], "its child is pid 2 inside");
      for (const kind of ["pid", "mnt", "uts", "ipc"]) {
        assert.notEqual(ns(init, kind), ns(Deno.pid, kind), `a fresh ${kind} namespace`);
        assert.equal(ns(child, kind), ns(init, kind), `the child shares its ${kind} namespace`);
      }
      for (const kind of ["net", "user", "cgroup", "time"]) {
        assert.equal(ns(init, kind), ns(Deno.pid, kind));
      }
      // The fixture checks its pids, its /proc, its names, its child's socket and its count.
      assert.equal(await c.unshare.check(init), "PASS", c.unshare.output());
      assert.equal(await c.unshare.check(init), "PASS", "and it runs on");
    } finally {
      await stopContainer(c, restored);
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
);

Deno.test(
  needs("container: a time namespace comes back with its clock offsets", missing),
  async () => {
    // Ten days ahead on CLOCK_MONOTONIC, twenty on CLOCK_BOOTTIME: a restore into the host's
    // clocks would run them backwards, which the fixture sees.
    const offsets = ["--time", "--monotonic", "864000", "--boottime", "1728000"];
    const c = await startContainer([...UNSHARE, ...offsets]);
    const dir = await Deno.makeTempDir({ prefix: "tardigrade-container-" });
    let restored: RestoreResult | undefined;
    try {
      assert.equal(await c.unshare.check(c.init), "PASS", c.unshare.output());
      await checkpoint(c.init, `${dir}/image`);
      await waitUntil(() => !isAlive(c.init), 5000, "the dumped container to end");
      await killAndReap(c.unshare.pid);
      const shown = await cli("inspect", `${dir}/image`);
      assert.match(shown.stdout, /container namespaces: .*time \+864000 s monotonic, \+1728000 s/);

      restored = await restore(`${dir}/image`);
      const [child] = childrenOf(restored.pid);
      assert.notEqual(ns(restored.pid, "time"), ns(Deno.pid, "time"), "a fresh time namespace");
      assert.equal(ns(child, "time"), ns(restored.pid, "time"));
      assert.match(
        Deno.readTextFileSync(`/proc/${restored.pid}/timens_offsets`),
        /monotonic\s+864000\s+0\s+boottime\s+1728000\s+0/,
      );
      // The fixture checks its offsets and that its clocks did not run backwards.
      assert.equal(await c.unshare.check(restored.pid), "PASS", c.unshare.output());
      assert.equal(await c.unshare.check(restored.pid), "PASS", "and it runs on");
    } finally {
      await stopContainer(c, restored);
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
);

/** Runs `ip` (or another program) with `args`; its output, failing the test when it fails. */
async function run(program: string, ...args: string[]): Promise<string> {
  const out = await new Deno.Command(program, { args, stdout: "piped", stderr: "piped" }).output();
  const text = (b: Uint8Array) => new TextDecoder().decode(b);
  assert.ok(out.success, `${program} ${args.join(" ")}: ${text(out.stderr)}`);
  return text(out.stdout);
}

/** The answer of the container's counter on its TCP listener at `host`: its count. */
async function askCounter(host: string): Promise<number> {
  const conn = await Deno.connect({ hostname: host, port: LISTEN_PORT });
  const answer = new TextDecoder().decode(await new Response(conn.readable).arrayBuffer());
  const m = answer.match(/^count (\d+)$/m);
  assert.ok(m, `the counter answered ${JSON.stringify(answer)}`);
  return Number(m[1]);
}

const LISTEN_PORT = 7777;

/**
 * A container with a net namespace of its own, wired to a bridge of the host through a veth:
 * its loopback up, eth0 with an MTU, IPv4 and IPv6 addresses, routes and sysctls of its own.
 */
async function startNetContainer(shell?: string): Promise<
  Container & { bridge: string; peer: string; ip: string }
> {
  const c = await startContainer([...UNSHARE, "--net"], shell, {
    LISTEN_PORT: String(LISTEN_PORT),
  });
  const net = c.init % 250 + 1;
  const bridge = `tdgb${c.init}`, peer = `tdgh${c.init}`, ip = `10.231.${net}.2`;
  await makeBridge(bridge, `10.231.${net}.1/24`);
  await run(
    "ip",
    "link",
    "add",
    peer,
    "type",
    "veth",
    "peer",
    "name",
    "eth0",
    "netns",
    `${c.init}`,
  );
  await run("ip", "link", "set", peer, "master", bridge, "up");
  const inside = [
    "ip link set lo up",
    "ip link set eth0 mtu 1400 up",
    `ip addr add ${ip}/24 dev eth0`,
    `ip addr add fd00:231:${net}::2/64 dev eth0 nodad`,
    `ip route add default via 10.231.${net}.1`,
    `ip route add 10.99.0.0/16 via 10.231.${net}.1 metric 7`,
    "echo 2 > /proc/sys/net/ipv4/conf/eth0/rp_filter",
    "echo 1 > /proc/sys/net/ipv4/conf/all/arp_ignore",
    "echo 0 > /proc/sys/net/ipv6/conf/eth0/accept_ra",
  ];
  await run("nsenter", `--net=/proc/${c.init}/ns/net`, "sh", "-ec", inside.join("\n"));
  return { ...c, bridge, peer, ip };
}

/** A bridge of the host with address `address`, up. */
async function makeBridge(bridge: string, address: string): Promise<void> {
  await run("ip", "link", "add", bridge, "type", "bridge");
  await run("ip", "addr", "add", address, "dev", bridge);
  await run("ip", "link", "set", bridge, "up");
}

/** Reads a sysctl of the net namespace of `pid`. */
const sysctlOf = (pid: number, path: string) =>
  run("nsenter", `--net=/proc/${pid}/ns/net`, "cat", `/proc/sys/net/${path}`).then((s) => s.trim());

const netMissing = notInstalled("unshare", "nsenter", "ip", "cc");

Deno.test(
  needs(
    "container: a net namespace comes back with its devices, veth, routes and sockets",
    netMissing,
  ),
  async () => {
    const c = await startNetContainer();
    const bin = await fixture("container_init");
    const dir = await Deno.makeTempDir({ prefix: "tardigrade-container-" });
    let restored: RestoreResult | undefined;
    try {
      assert.equal(await c.unshare.check(c.init), "PASS", c.unshare.output());
      const before = await askCounter(c.ip);
      await checkpoint(c.init, `${dir}/image`);
      await waitUntil(() => !isAlive(c.init), 5000, "the dumped container to end");
      await killAndReap(c.unshare.pid); // it held the namespace too

      const shown = await cli("inspect", `${dir}/image`);
      assert.match(shown.stdout, new RegExp(`net lo, eth0 \\(veth to ${c.peer} on ${c.bridge}\\)`));

      // The bridge the outside end was a port of is gone: refused, naming it, nothing left.
      const bridgeAddress = `${c.ip.replace(/\.2$/, ".1")}/24`;
      await run("ip", "link", "del", c.bridge);
      await assert.rejects(
        () => restore(`${dir}/image`),
        new RegExp(`was a port of ${c.bridge}, which tardigrade's network namespace no longer has`),
      );
      assert.deepEqual(runningFixtures(bin), [], "a process of the failed restore is left");
      await makeBridge(c.bridge, bridgeAddress);

      restored = await restore(`${dir}/image`);
      const init = restored.pid;
      assert.notEqual(ns(init, "net"), ns(Deno.pid, "net"), "a fresh net namespace");
      const [child] = childrenOf(init);
      assert.equal(ns(child, "net"), ns(init, "net"));
      // Through the veth and the bridge, its listener answers, counting on (the dump may have
      // frozen it within one tick of the count read before: ask till it moves).
      await waitUntil(
        async () => await askCounter(c.ip) > before,
        10_000,
        "the counter to count on",
      );
      const link = JSON.parse(await run("ip", "-j", "-d", "link", "show", c.peer))[0];
      assert.equal(link.master, c.bridge);
      assert.equal(await sysctlOf(init, "ipv4/conf/eth0/rp_filter"), "2");
      assert.equal(await sysctlOf(init, "ipv4/conf/all/arp_ignore"), "1");
      assert.equal(await sysctlOf(init, "ipv6/conf/eth0/accept_ra"), "0");
      const routes = await run("nsenter", `--net=/proc/${init}/ns/net`, "ip", "route");
      assert.match(routes, /default via 10\.231\.\d+\.1 dev eth0/);
      assert.match(routes, /10\.99\.0\.0\/16 via 10\.231\.\d+\.1 dev eth0 metric 7/);
      const eth0 = JSON.parse(
        await run("nsenter", `--net=/proc/${init}/ns/net`, "ip", "-j", "addr", "show", "eth0"),
      )[0];
      assert.equal(eth0.mtu, 1400);
      assert.ok(eth0.addr_info.some((a: { local: string }) => a.local === c.ip));
      assert.equal(await c.unshare.check(init), "PASS", c.unshare.output());
    } finally {
      await stopContainer(c, restored);
      await run("ip", "link", "del", c.bridge).catch(() => {});
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
);

/** Reads from `conn` until what it read ends with `line`; all it read. */
async function readLine(conn: Deno.Conn, line: string): Promise<string> {
  let text = "";
  const buf = new Uint8Array(256);
  while (!text.endsWith(line)) {
    const n = await conn.read(buf);
    if (n === null) break;
    text += new TextDecoder().decode(buf.subarray(0, n));
  }
  return text;
}

Deno.test(
  needs(
    "container: TCP connections inside its net namespace come back, over lo and to outside",
    notInstalled("unshare", "nsenter", "ip", "busybox", "cc"),
  ),
  async () => {
    const dir = await Deno.makeTempDir({ prefix: "tardigrade-container-" });
    const fifo = `${dir}/to-client`;
    await run("mkfifo", fifo);
    // Children of the init (the shell execs it): an echo server for a peer outside, and a
    // connection over lo whose client sends what is written into the FIFO (held read-write) to
    // a server that prints it.
    const shell = [
      "ip link set lo up",
      "(busybox nc -l -p 9002 -e cat &)",
      "(sleep 600 | busybox nc -l -p 9000 &)",
      "sleep 0.3",
      `(busybox nc 127.0.0.1 9000 <> '${fifo}' &)`,
      "sleep 0.3",
    ].join("; ");
    const c = await startNetContainer(shell);
    let restored: RestoreResult | undefined;
    let outside: Deno.Conn | undefined;
    try {
      outside = await Deno.connect({ hostname: c.ip, port: 9002 });
      await outside.write(new TextEncoder().encode("before\n"));
      assert.equal(await readLine(outside, "before\n"), "before\n");
      await Deno.writeTextFile(fifo, "over lo before\n");
      await c.unshare.waitFor(/^over lo before$/m);
      await checkpoint(c.init, `${dir}/image`);
      await waitUntil(() => !isAlive(c.init), 5000, "the dumped container to end");
      await killAndReap(c.unshare.pid);

      restored = await restore(`${dir}/image`);
      // The connection from outside goes on: the echo server answers on it.
      await outside.write(new TextEncoder().encode("after\n"));
      assert.equal(await readLine(outside, "after\n"), "after\n");
      // And the one over its loopback.
      await Deno.writeTextFile(fifo, "over lo after\n");
      await c.unshare.waitFor(/^over lo after$/m);
      assert.equal(await c.unshare.check(restored.pid), "PASS", c.unshare.output());
    } finally {
      outside?.close();
      await stopContainer(c, restored);
      await run("ip", "link", "del", c.bridge).catch(() => {});
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
);

/** The packets the rule of the nft ruleset `ruleset` for TCP port `port` counted. */
function countedFor(ruleset: string, port: number): number {
  const m = ruleset.match(new RegExp(`tcp dport ${port} counter packets (\\d+)`));
  assert.ok(m, `no counting rule for port ${port} in:\n${ruleset}`);
  return Number(m[1]);
}

/** A ruleset without its counters' values. */
const withoutCounts = (ruleset: string) => ruleset.replace(/ packets \d+ bytes \d+/g, "");

Deno.test(
  needs(
    "container: its firewall ruleset (nft, iptables-nft) comes back with its counters",
    notInstalled("unshare", "nsenter", "ip", "nft", "iptables", "cc"),
  ),
  async () => {
    const c = await startNetContainer();
    const dir = await Deno.makeTempDir({ prefix: "tardigrade-container-" });
    let restored: RestoreResult | undefined;
    const rules = [
      "nft add table inet tdg",
      "nft add chain inet tdg input '{ type filter hook input priority 0; policy accept; }'",
      `nft add rule inet tdg input tcp dport ${LISTEN_PORT} counter accept`,
      `nft add rule inet tdg input tcp dport ${LISTEN_PORT + 1} counter reject with tcp reset`,
      `iptables -A INPUT -p tcp --dport ${LISTEN_PORT + 2} -j REJECT --reject-with tcp-reset`,
    ];
    const inside = (pid: number, ...args: string[]) =>
      run("nsenter", `--net=/proc/${pid}/ns/net`, ...args);
    /** Whether a connection to `port` of the container is refused (reset by a rule). */
    const refused = async (port: number) => {
      try {
        (await Deno.connect({ hostname: c.ip, port })).close();
        return false;
      } catch (err) {
        return err instanceof Deno.errors.ConnectionRefused;
      }
    };
    try {
      await inside(c.init, "sh", "-ec", rules.join("\n"));
      await askCounter(c.ip);
      const before = await inside(c.init, "nft", "list", "ruleset");
      const counted = countedFor(before, LISTEN_PORT);
      assert.ok(counted > 0, "the rule counted the counter's connection");
      await checkpoint(c.init, `${dir}/image`);
      await waitUntil(() => !isAlive(c.init), 5000, "the dumped container to end");
      await killAndReap(c.unshare.pid);
      assert.match((await cli("inspect", `${dir}/image`)).stdout, /routes, firewall of 2 tables/);

      restored = await restore(`${dir}/image`);
      const init = restored.pid;
      const after = await inside(init, "nft", "list", "ruleset");
      assert.equal(withoutCounts(after), withoutCounts(before), "the same ruleset");
      assert.ok(countedFor(after, LISTEN_PORT) >= counted, "its counter kept its count");
      assert.match(await inside(init, "iptables", "-S", "INPUT"), /--dport 7779 .*-j REJECT/);
      // The rules act: the counter answers through the one, the others reset connections.
      await askCounter(c.ip);
      assert.ok(countedFor(await inside(init, "nft", "list", "ruleset"), LISTEN_PORT) > counted);
      assert.ok(await refused(LISTEN_PORT + 1), `port ${LISTEN_PORT + 1} is reset by nft's rule`);
      assert.ok(await refused(LISTEN_PORT + 2), `port ${LISTEN_PORT + 2} by iptables'`);
      assert.equal(await c.unshare.check(init), "PASS", c.unshare.output());
    } finally {
      await stopContainer(c, restored);
      await run("ip", "link", "del", c.bridge).catch(() => {});
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
);

Deno.test(
  needs(
    "container: --external net leaves a named net namespace out, joined at restore",
    netMissing,
  ),
  async () => {
    const name = `tdg-${Deno.pid}-${Date.now() % 100000}`;
    const netns = `/run/netns/${name}`;
    await run("ip", "netns", "add", name);
    const dir = await Deno.makeTempDir({ prefix: "tardigrade-container-" });
    const countFile = await Deno.makeTempFile({ prefix: "tardigrade-count-" });
    // The container runs in the named namespace, which a mount holds, not a process.
    const unshare = await spawnTarget(
      "nsenter",
      [`--net=${netns}`, "unshare", ...UNSHARE, await fixture("container_init"), countFile],
      { ready: /^(READY|SETUP FAILED).*$/m, append: true },
    );
    const [init] = childrenOf(unshare.pid);
    const c: Container = { unshare, init, countFile };
    let restoredPid = 0;
    try {
      assert.match(unshare.output(), /^READY /m, unshare.output());
      await assertRefused(c, init, new RegExp(`also held by a mount on ${netns}`));
      await checkpoint(init, `${dir}/image`, { external: ["net"] });
      await waitUntil(() => !isAlive(init), 5000, "the dumped container to end");
      await killAndReap(unshare.pid);
      const shown = await cli("inspect", `${dir}/image`);
      assert.match(shown.stdout, /net joined at restore \(--external net\)/);
      // Not handed in: refused, naming what to hand in.
      await assert.rejects(() => restore(`${dir}/image`), /hand in the net namespace it joins/);
      const r = await new Deno.Command("sh", {
        args: [
          "-c",
          `exec '${Deno.execPath()}' run -A main.ts restore '${dir}/image' --json ` +
          `--inherit-fd 'fd[3]:net' 3<'${netns}'`,
        ],
        cwd: new URL("../", import.meta.url).pathname,
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).output();
      assert.ok(r.success, new TextDecoder().decode(r.stderr));
      restoredPid = JSON.parse(new TextDecoder().decode(r.stdout)).pid;
      assert.equal(ns(restoredPid, "net"), `net:[${Deno.statSync(netns).ino}]`);
      assert.equal(await unshare.check(restoredPid), "PASS", unshare.output());
    } finally {
      if (restoredPid) await killAndReap(restoredPid);
      await stopContainer(c);
      await run("ip", "netns", "del", name).catch(() => {});
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
);

/** Dumps container `c` expecting a refusal matching `reason`; the container runs on unharmed. */
async function assertRefused(c: Container, pid: number, reason: RegExp): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "tardigrade-container-" });
  try {
    await assert.rejects(() => checkpoint(pid, `${dir}/image`), reason);
    assert.equal(await c.unshare.check(c.init), "PASS", `it runs on:\n${c.unshare.output()}`);
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

const refusalsMissing = notInstalled("unshare", "nsenter", "ip", "nft", "busybox", "cc");

Deno.test(
  needs("container: what is not carried is refused, naming it", refusalsMissing),
  async (t) => {
    await t.step("a network device of a kind not carried", async () => {
      const c = await startContainer([...UNSHARE, "--net"], "ip link add tdg0 type bridge");
      try {
        await assertRefused(
          c,
          c.init,
          new RegExp(`the net namespace of container ${c.init} has a bridge device tdg0`),
        );
      } finally {
        await stopContainer(c);
      }
    });
    await t.step("a veth pair with both ends inside", async () => {
      const c = await startContainer(
        [...UNSHARE, "--net"],
        "ip link add v0 type veth peer name v1",
      );
      try {
        await assertRefused(c, c.init, /the other end of veth v[01] of container \d+ is not in/);
      } finally {
        await stopContainer(c);
      }
    });
    await t.step("a process that is not the container's init", async () => {
      const c = await startContainer();
      try {
        const [child] = childrenOf(c.init);
        await assertRefused(c, child, new RegExp(`process ${child} is pid 2 of its pid namespace`));
      } finally {
        await stopContainer(c);
      }
    });
    await t.step("the init of a pid namespace nested inside with its own /proc", async () => {
      // Inside the container, unshare makes a pid namespace (and a mount namespace with its
      // /proc) whose init is sleep; the subshell leaves unshare a child of the container's init.
      // The container comes back with it (nested_pid_namespace_test.ts); its init alone not.
      const nest = "(unshare --pid --fork --mount-proc sleep 600 >/dev/null 2>&1 &)";
      const c = await startContainer(UNSHARE, nest);
      const comm = (pid: number) => Deno.readTextFileSync(`/proc/${pid}/comm`).trim();
      try {
        let maker = 0, inner = 0;
        await waitUntil(
          () => {
            maker = childrenOf(c.init).find((p) => comm(p) === "unshare") ?? 0;
            inner = maker ? childrenOf(maker)[0] ?? 0 : 0;
            return inner > 0 && ns(inner, "pid") !== ns(maker, "pid");
          },
          5000,
          "the nested pid namespace to be made",
        );
        const nested = ns(inner, "pid").replace(/[[\]]/g, "\\$&");
        await assertRefused(
          c,
          inner,
          new RegExp(
            `process ${inner} \\(sleep\\) lives in a pid namespace nested in another one than ` +
              `tardigrade's \\(innermost first: ${nested}, held by its init ${inner} .*; inside ` +
              `pid:\\[\\d+\\], held by its init ${c.init} .*\\): a container is dumped from the ` +
              `init of the outermost one .*dump ${c.init}`,
          ),
        );
        assert.equal(nspid(inner).length, 3, "a pid in the host's, the container's and its own");
        assert.equal(nspid(inner)[2], 1);
        const status = Deno.readTextFileSync(`/proc/${inner}/status`);
        assert.match(status, /^State:\s+S /m, "the nested init sleeps on, not stopped");
        assert.match(status, /^TracerPid:\s+0$/m, "nor traced");
      } finally {
        await stopContainer(c);
      }
    });
    await t.step("a namespace a process outside the dump holds", async () => {
      const c = await startContainer();
      const holder = new Deno.Command("nsenter", {
        args: ["--target", String(c.init), "--uts", "sleep", "60"],
      }).spawn();
      try {
        await waitUntil(
          () => {
            try {
              return childrenOf(holder.pid).some((p) => ns(p, "uts") === ns(c.init, "uts")) ||
                ns(holder.pid, "uts") === ns(c.init, "uts");
            } catch {
              return false;
            }
          },
          5000,
          "nsenter to enter the container's uts namespace",
        );
        await assertRefused(
          c,
          c.init,
          /the uts namespace of container \d+ is also held by process/,
        );
      } finally {
        holder.kill("SIGKILL");
        await holder.status;
        await stopContainer(c);
      }
    });
    await t.step("a POSIX message queue a process waits to be notified of", async () => {
      const c = await startContainer(IPC_UNSHARE, undefined, { NOTIFY: "1" }, "container_ipc");
      try {
        // The queue read before it (/tardiq) is left as it was: the fixture checks its messages.
        await assertRefused(
          c,
          c.init,
          /process 1 waits to be notified of POSIX message queue \/tardiq2 \(mq_notify\)/,
        );
      } finally {
        await stopContainer(c);
      }
    });
    await t.step("a mount that propagates", async () => {
      const c = await startContainer(
        UNSHARE,
        "mount -t tmpfs scratch /mnt && mount --make-shared /mnt",
      );
      try {
        await assertRefused(c, c.init, /mount \/mnt of container \d+ propagates \(shared:/);
      } finally {
        await stopContainer(c);
      }
    });
  },
);

/** A container with an IPC namespace of its own, and no other but pid and mnt. */
const IPC_UNSHARE = ["--pid", "--fork", "--mount-proc", "--ipc"];

Deno.test(
  needs("container: its shared memory and POSIX message queues come back", missing),
  async () => {
    const c = await startContainer(IPC_UNSHARE, undefined, undefined, "container_ipc");
    const dir = await Deno.makeTempDir({ prefix: "tardigrade-container-" });
    let restored: RestoreResult | undefined;
    try {
      assert.equal(await c.unshare.check(c.init), "PASS", c.unshare.output());
      await checkpoint(c.init, `${dir}/image`);
      await waitUntil(() => !isAlive(c.init), 5000, "the dumped container to end");
      await killAndReap(c.unshare.pid);
      assert.match(
        (await cli("inspect", `${dir}/image`)).stdout,
        /ipc .*, 3 shared memory segments, POSIX message queues \/tardiq \/tardiq2 \(5 messages\)/,
      );

      restored = await restore(`${dir}/image`);
      const [child] = childrenOf(restored.pid);
      assert.notEqual(ns(restored.pid, "ipc"), ns(Deno.pid, "ipc"), "a fresh ipc namespace");
      assert.equal(ns(child, "ipc"), ns(restored.pid, "ipc"));
      // The fixture checks its segments (attached, unattached, removed), its child's count in
      // one, its queues, their messages in priority order, and its namespace's msg_max.
      assert.equal(await c.unshare.check(restored.pid), "PASS", c.unshare.output());
      assert.equal(await c.unshare.check(restored.pid), "PASS", "and it runs on");
    } finally {
      await stopContainer(c, restored);
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
);

Deno.test(
  needs("container: a time namespace without a pid namespace", notInstalled("unshare", "cc")),
  async (t) => {
    // unshare --fork --time: unshare runs in the host's clocks, its child in the new ones.
    const args = ["--fork", "--time", "--monotonic", "864000", await fixture("r_memory")];
    const u = await spawnTarget("unshare", args, { ready: /^READY /m, append: true });
    const [child] = childrenOf(u.pid);
    const dir = await Deno.makeTempDir({ prefix: "tardigrade-container-" });
    let restored: RestoreResult | undefined;
    try {
      await t.step("a process that made it for its children only is refused", async () => {
        await assert.rejects(
          () => checkpoint(u.pid, `${dir}/refused`),
          new RegExp(`process ${u.pid} made a time namespace for its children`),
        );
        assert.equal(await u.check(child), "PASS", u.output());
      });
      await t.step("the process inside it comes back in one with its offsets", async () => {
        await checkpoint(child, `${dir}/image`);
        await waitUntil(() => !isAlive(child), 5000, "the dumped process to end");
        restored = await restore(`${dir}/image`);
        assert.equal(restored.pid, child);
        assert.notEqual(ns(child, "time"), ns(Deno.pid, "time"));
        assert.match(
          Deno.readTextFileSync(`/proc/${child}/timens_offsets`),
          /monotonic\s+864000\s/,
        );
        assert.equal(await u.check(child), "PASS", u.output());
      });
    } finally {
      if (restored) await killAndReap(restored.pid);
      await killAndReap(child).catch(() => {});
      await killAndReap(u.pid);
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
);

Deno.test(
  needs(
    "container: a process that made a pid namespace with its own /proc is refused, also alone",
    notInstalled("unshare", "cc"),
  ),
  async () => {
    // Its /proc (of the nested namespace) would come back showing its own: refused, naming it.
    const args = ["--pid", "--fork", "--mount-proc", await fixture("r_memory")];
    const u = await spawnTarget("unshare", args, { ready: /^READY /m, append: true });
    const [init] = childrenOf(u.pid);
    const dir = await Deno.makeTempDir({ prefix: "tardigrade-container-" });
    try {
      for (const single of [false, true]) {
        await assert.rejects(
          () => checkpoint(u.pid, `${dir}/refused`, { single }),
          single
            // Alone, its mount namespace is held by its child outside the dump.
            ? new RegExp(`the mnt namespace of container ${u.pid} is also held by process ${init}`)
            : new RegExp(
              `container ${u.pid} has .*proc.* showing pid namespace pid:\\[\\d+\\], not its ` +
                `own .*: a /proc of a nested pid namespace is made again only in a mount ` +
                `namespace of that namespace's own .*; dump its init ${init} as a container instead`,
            ),
        );
      }
      assert.equal(await u.check(init), "PASS", u.output());
    } finally {
      await killAndReap(init);
      await killAndReap(u.pid);
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
);

Deno.test(
  needs(
    "container: its cgroups (v1 pids, v2) are made again with their limits, checked, removed on failure",
    missing ??
      (exists(`${PIDS}/cgroup.procs`) && exists(`${UNIFIED}/cgroup.procs`)
        ? undefined
        : "no v1 pids hierarchy and v2 at /sys/fs/cgroup/unified"),
  ),
  async () => {
    const name = `tardigrade-test-${Deno.pid}-${Date.now()}`;
    const groups = [makeGroup(PIDS, name, { "pids.max": "64" }), makeGroup(UNIFIED, name)];
    const c = await startContainer();
    const bin = await fixture("container_init");
    const dir = await Deno.makeTempDir({ prefix: "tardigrade-container-" });
    let restored: RestoreResult | undefined;
    try {
      for (const pid of [c.init, ...childrenOf(c.init)].filter(isAlive)) {
        for (const g of groups) Deno.writeTextFileSync(`${g}/cgroup.procs`, String(pid));
      }
      await checkpoint(c.init, `${dir}/image`);
      await waitUntil(() => !isAlive(c.init), 5000, "the dumped container to end");
      for (const g of groups) await removeGroup(g);

      // A group of the tree that is there with other limits: refused, naming the limit.
      makeGroup(PIDS, name, { "pids.max": "32" });
      await assert.rejects(() => restore(`${dir}/image`), /pids\.max is 32 now, not 64/);
      assert.deepEqual(runningFixtures(bin), []);
      await removeGroup(groups[0]);

      // A restore that fails late removes the groups it made.
      await assert.rejects(
        () =>
          restore(`${dir}/image`, {
            policy: {
              restoreStage: (stage) => {
                if (stage === "resume") throw new Error("stopped at resume");
              },
            },
          }),
        /stopped at resume/,
      );
      assert.deepEqual(runningFixtures(bin), []);
      for (const g of groups) assert.ok(!exists(g), `${g} was left behind`);

      restored = await restore(`${dir}/image`);
      assert.equal(Deno.readTextFileSync(`${groups[0]}/pids.max`).trim(), "64");
      for (const pid of [restored.pid, ...childrenOf(restored.pid)].filter(isAlive)) {
        assert.equal(groupOf(pid, "pids"), `/${name}`);
        assert.equal(groupOf(pid, ""), `/${name}`);
      }
      assert.equal(await c.unshare.check(restored.pid), "PASS", c.unshare.output());
    } finally {
      await stopContainer(c, restored);
      for (const g of groups) await removeGroup(g).catch(() => {});
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
);

Deno.test(
  needs("container: examples/container.ts dumps and restores a container", missing),
  async () => {
    const c = await startContainer();
    let restoredPid = 0;
    try {
      const r = await runDeno(["examples/container.ts", String(c.init)]);
      assert.equal(r.code, 0, r.stderr);
      assert.match(
        r.stdout,
        new RegExp(`container ${c.init} lives in namespaces of its own: .*pid:\\[`),
      );
      const m = r.stdout.match(/restored container: host pid (\d+), pid 1 inside, 2 process\(es\)/);
      assert.ok(m, r.stdout);
      restoredPid = Number(m[1]);
      assert.match(
        r.stdout,
        /in fresh namespaces: .*ipc:\[\d+\].*mnt:\[\d+\].*pid:\[\d+\].*uts:\[/,
      );
      assert.equal(await c.unshare.check(restoredPid), "PASS", c.unshare.output());
    } finally {
      if (restoredPid) await killAndReap(restoredPid);
      await stopContainer(c);
    }
  },
);

Deno.test(
  needs("container: mounts it made (a tmpfs with files, a read-only bind) come back", missing),
  async () => {
    const made = "mount -t tmpfs -o size=1m scratch /mnt && echo hello > /mnt/greeting && " +
      "mkdir /mnt/a /mnt/b && ln -s greeting /mnt/link && mount --bind /mnt/a /mnt/b && " +
      "mount -o remount,bind,ro /mnt/b";
    const c = await startContainer(UNSHARE, made);
    const dir = await Deno.makeTempDir({ prefix: "tardigrade-container-" });
    let restored: RestoreResult | undefined;
    try {
      await checkpoint(c.init, `${dir}/image`);
      await waitUntil(() => !isAlive(c.init), 5000, "the dumped container to end");
      await killAndReap(c.unshare.pid);
      restored = await restore(`${dir}/image`);
      const root = `/proc/${restored.pid}/root`;
      assert.equal(Deno.readTextFileSync(`${root}/mnt/greeting`), "hello\n");
      assert.equal(Deno.readLinkSync(`${root}/mnt/link`), "greeting");
      const mounts = Deno.readTextFileSync(`/proc/${restored.pid}/mountinfo`);
      assert.match(mounts, / \/mnt rw,relatime - tmpfs scratch rw,size=1024k/);
      assert.match(mounts, / \/a \/mnt\/b ro,relatime - tmpfs scratch /);
      assert.equal(await c.unshare.check(restored.pid), "PASS", c.unshare.output());
    } finally {
      await stopContainer(c, restored);
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
);

Deno.test(
  needs("container: an overlay it mounted comes back on the same directories", missing),
  async () => {
    const dir = await Deno.makeTempDir({ prefix: "tardigrade-container-" });
    for (const d of ["lower", "upper", "work", "merged"]) await Deno.mkdir(`${dir}/${d}`);
    await Deno.writeTextFile(`${dir}/lower/greeting`, "from below\n");
    const overlay = `mount -t overlay layered -o lowerdir=${dir}/lower,upperdir=${dir}/upper,` +
      `workdir=${dir}/work ${dir}/merged && echo made inside > ${dir}/merged/inside`;
    const c = await startContainer(UNSHARE, overlay);
    let restored: RestoreResult | undefined;
    try {
      assert.equal(await c.unshare.check(c.init), "PASS", c.unshare.output());
      await checkpoint(c.init, `${dir}/image`);
      await waitUntil(() => !isAlive(c.init), 5000, "the dumped container to end");
      await killAndReap(c.unshare.pid);

      // Its directories must be there at restore: one gone is named, and nothing is left.
      await Deno.rename(`${dir}/work`, `${dir}/work.away`);
      await assert.rejects(
        () => restore(`${dir}/image`),
        new RegExp(`its workdir ${dir}/work is not a directory here any more`),
      );
      await Deno.rename(`${dir}/work.away`, `${dir}/work`);

      restored = await restore(`${dir}/image`);
      const root = `/proc/${restored.pid}/root`;
      assert.equal(Deno.readTextFileSync(`${root}${dir}/merged/greeting`), "from below\n");
      assert.equal(Deno.readTextFileSync(`${root}${dir}/merged/inside`), "made inside\n");
      assert.match(
        Deno.readTextFileSync(`/proc/${restored.pid}/mountinfo`),
        new RegExp(` ${dir}/merged rw,relatime - overlay layered rw,lowerdir=${dir}/lower,`),
      );
      // Written as the container sees it, it lands in the same upper directory.
      Deno.writeTextFileSync(`${root}${dir}/merged/after`, "written after\n");
      assert.equal(Deno.readTextFileSync(`${dir}/upper/after`), "written after\n");
      assert.equal(await c.unshare.check(restored.pid), "PASS", c.unshare.output());
    } finally {
      await stopContainer(c, restored);
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
);

/**
 * A bundle whose rootfs is built from the static busybox, read-only, with a tmpfs on /tmp: its
 * shell counts into /tmp/count every 0.1 s (and appends each count to /tmp/log, which it holds
 * open on fd 3) and busybox httpd serves /tmp on port 7777 of its net
 * namespace. With `userMap`, in a user namespace of its own mapping uids and gids 0-65535 to
 * `userMap` and on (the bundle is then open to everyone: root inside is another uid outside).
 */
async function runcBundle(dir: string, userMap?: number): Promise<void> {
  for (const d of ["bin", "proc", "dev", "sys", "tmp"]) {
    await Deno.mkdir(`${dir}/rootfs/${d}`, { recursive: true });
  }
  await Deno.copyFile(onPath("busybox")!, `${dir}/rootfs/bin/busybox`);
  for (const tool of ["sh", "sleep"]) await Deno.symlink("busybox", `${dir}/rootfs/bin/${tool}`);
  const spec = await new Deno.Command("runc", { args: ["spec"], cwd: dir }).output();
  assert.ok(spec.success, "runc spec");
  const config = JSON.parse(await Deno.readTextFile(`${dir}/config.json`));
  config.process.terminal = false;
  config.process.args = [
    "sh",
    "-c",
    "busybox httpd -f -p 7777 -h /tmp & i=0; exec 3>/tmp/log; " +
    "while :; do i=$((i+1)); echo $i > /tmp/count; echo $i >&3; sleep 0.1; done",
  ];
  config.root.readonly = true;
  config.mounts.push({ destination: "/tmp", type: "tmpfs", source: "tmpfs", options: ["nosuid"] });
  if (userMap !== undefined) {
    config.linux.namespaces.push({ type: "user" });
    const map = [{ containerID: 0, hostID: userMap, size: 65536 }];
    config.linux.uidMappings = map;
    config.linux.gidMappings = map;
    await Deno.chmod(dir, 0o755);
  }
  await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(config));
}

/** The directories of the cgroups of runc container `name` process `pid` is in (made again). */
const runcGroups = (pid: number, name: string) =>
  Deno.readTextFileSync(`/proc/${pid}/cgroup`).split("\n").filter(Boolean)
    .map((l) => l.split(":")).filter((f) => f[2].includes(name))
    .map((f) => `/sys/fs/cgroup/${f[1] ? f[1].replace("name=", "") : "unified"}${f[2]}`);

/** Runs the bundle in `dir` as container `name`, detached: its init's pid, once it counts. */
async function startRunc(dir: string, name: string): Promise<number> {
  // Detached: the container keeps what it inherits open, so nothing of ours is piped to it.
  const ran = await new Deno.Command("runc", {
    args: ["run", "-d", name],
    cwd: dir,
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).output();
  assert.ok(ran.success, "runc run -d");
  const state = await new Deno.Command("runc", { args: ["state", name], stdout: "piped" }).output();
  const init: number = JSON.parse(new TextDecoder().decode(state.stdout)).pid;
  await waitUntil(
    () => {
      try {
        return writtenCount(init) > 2;
      } catch {
        return false;
      }
    },
    10000,
    "the container to count",
  );
  return init;
}

/** The count a runc container's httpd serves from its tmpfs, asked inside its net namespace. */
async function servedCount(pid: number): Promise<number> {
  const got = await run(
    "nsenter",
    `--net=/proc/${pid}/ns/net`,
    "busybox",
    "wget",
    "-qO-",
    "http://127.0.0.1:7777/count",
  );
  return Number(got.trim());
}

/** The count a runc container wrote to its tmpfs, read through its root. */
const writtenCount = (pid: number) =>
  Number(Deno.readTextFileSync(`/proc/${pid}/root/tmp/count`).trim());

Deno.test(
  needs(
    "container: a runc busybox container (read-only pivot_root'ed root, tmpfs, net) round-trips",
    notInstalled("runc", "busybox", "nsenter", "ip"),
  ),
  async () => {
    const dir = await Deno.makeTempDir({ prefix: "tardigrade-runc-" });
    const name = `tardigrade-${Deno.pid}-${Date.now()}`;
    const runc = (...args: string[]) =>
      new Deno.Command("runc", { args, cwd: dir, stdin: "null", stdout: "piped", stderr: "piped" })
        .output();
    let restored: RestoreResult | undefined;
    let groups: string[] = [];
    try {
      await runcBundle(dir);
      const init = await startRunc(dir, name);
      const before = await servedCount(init);
      const mounts = Deno.readTextFileSync(`/proc/${init}/mountinfo`);

      await checkpoint(init, `${dir}/image`);
      await waitUntil(() => !isAlive(init), 5000, "the dumped container to end");
      await runc("delete", "--force", name); // its cgroups go: the restore makes them again

      // Its rootfs is the host's, bound, not made: gone, the restore is refused, naming it.
      await Deno.rename(`${dir}/rootfs`, `${dir}/moved`);
      await assert.rejects(
        () => restore(`${dir}/image`),
        new RegExp(`cannot mount ext4 \\S+ on / \\([^)]*\\) \\(bound from ${dir}/rootfs of`),
      );
      await Deno.rename(`${dir}/moved`, `${dir}/rootfs`);

      restored = await restore(`${dir}/image`);
      const pid = restored.pid;
      assert.deepEqual(nspid(pid).slice(1), [1], "its init is pid 1 again");
      // The same mount tree, its read-only root, its tmpfs, masked paths, cgroups and all.
      const strip = (text: string) =>
        text.split("\n").map((l) => l.split(" ").slice(3).join(" ")).sort().join("\n");
      assert.equal(strip(Deno.readTextFileSync(`/proc/${pid}/mountinfo`)), strip(mounts));
      groups = runcGroups(pid, name);
      // It counts on into its tmpfs, and answers on its socket.
      const after = writtenCount(pid);
      assert.ok(after > before - 1, `it counts from ${after}, was at ${before}`);
      await waitUntil(() => writtenCount(pid) > after, 10000, "it to count on");
      assert.ok(await servedCount(pid) > after, "its httpd serves the count");
      // The file it holds open in its tmpfs is the one there, written on at its position.
      const log = Deno.readTextFileSync(`/proc/${pid}/root/tmp/log`).trim().split("\n");
      assert.deepEqual(log, log.map((_, i) => String(i + 1)), "its log has every count once");
      assert.ok(log.length > after, "it writes on into its log");
    } finally {
      if (restored) await killAndReap(restored.pid);
      await runc("delete", "--force", name);
      for (const g of groups) await removeGroup(g).catch(() => {});
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
);

Deno.test(
  needs(
    "container: a runc busybox container in a user namespace (0-65535 → 100000-) round-trips",
    notInstalled("runc", "busybox", "nsenter", "ip"),
  ),
  async () => {
    const dir = await Deno.makeTempDir({ prefix: "tardigrade-runc-" });
    const name = `tardigrade-${Deno.pid}-${Date.now()}`;
    const runc = (...args: string[]) =>
      new Deno.Command("runc", { args, cwd: dir, stdin: "null", stdout: "null", stderr: "null" })
        .output();
    let restored: RestoreResult | undefined;
    let groups: string[] = [];
    try {
      await runcBundle(dir, 100000);
      const init = await startRunc(dir, name);
      const creds = (pid: number) =>
        Deno.readTextFileSync(`/proc/${pid}/status`).split("\n").filter((l) =>
          /^(Uid|Gid|Groups|Cap\w+):/.test(l)
        );
      const before = { map: Deno.readTextFileSync(`/proc/${init}/uid_map`), creds: creds(init) };
      assert.match(before.creds[0], /^Uid:\t100000\t/, "root inside is 100000 outside");
      const count = await servedCount(init);

      await checkpoint(init, `${dir}/image`);
      await waitUntil(() => !isAlive(init), 5000, "the dumped container to end");
      await runc("delete", "--force", name);

      restored = await restore(`${dir}/image`);
      const pid = restored.pid;
      groups = runcGroups(pid, name);
      assert.notEqual(ns(pid, "user"), ns(Deno.pid, "user"), "a user namespace of its own");
      assert.equal(Deno.readTextFileSync(`/proc/${pid}/uid_map`), before.map);
      assert.deepEqual(creds(pid), before.creds, "root inside, with the container's capabilities");
      const after = writtenCount(pid);
      await waitUntil(() => writtenCount(pid) > after, 10000, "it to count on into its tmpfs");
      assert.ok(await servedCount(pid) >= count, "its httpd serves the count");
    } finally {
      if (restored) await killAndReap(restored.pid);
      await runc("delete", "--force", name);
      for (const g of groups) await removeGroup(g).catch(() => {});
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
);

Deno.test(
  needs(
    "cgroups: a group the process shared with the dumping tool follows the restoring tool",
    exists(`${PIDS}/cgroup.procs`) ? undefined : "no v1 pids hierarchy",
  ),
  async () => {
    const name = `tardigrade-test-${Deno.pid}-${Date.now()}`;
    const restorers = makeGroup(PIDS, name); // where the restoring tool runs
    const t = await spawnTarget(await fixture("r_memory"), [], { ready: /^READY /m });
    const dir = await Deno.makeTempDir({ prefix: "tardigrade-cgroup-" });
    try {
      assert.equal(groupOf(t.pid, "pids"), groupOf(Deno.pid, "pids"), "it starts in ours");
      await checkpoint(t.pid, `${dir}/image`);
      await killAndReap(t.pid);
      // The restoring tool runs in another group: the process comes back in that one, not ours.
      const r = await new Deno.Command("sh", {
        args: [
          "-c",
          `echo $$ > '${restorers}/cgroup.procs' && exec '${Deno.execPath()}' run -A main.ts ` +
          `restore '${dir}/image'`,
        ],
        cwd: new URL("../", import.meta.url).pathname,
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).output();
      assert.ok(r.success, new TextDecoder().decode(r.stderr));
      assert.equal(groupOf(t.pid, "pids"), `/${name}`);
      assert.equal(await t.check(), "PASS", t.output());
    } finally {
      await t.kill();
      await removeGroup(restorers);
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
);
