#!/usr/bin/env python3
"""Runs Roomcast and the Node reference stack with the same parameters on this machine, one
after the other, and prints each figure for both and the ratio.

    loadtests/compare.py                 # the full comparison (BENCHMARKS.md), ~10 minutes
    loadtests/compare.py --smoke         # a few seconds per scenario; what CI runs
    loadtests/compare.py --only idle --idle-connections 50000 --stacks roomcast
    loadtests/compare.py --only idle-cluster   # 3 replicas x 19,000 idle connections at once
    loadtests/compare.py --only churn    # Roomcast only: what disconnecting clients leave (must be 0)
    loadtests/compare.py --only noisy-neighbour   # Roomcast only: one tenant's abuse vs another's latency
    loadtests/compare.py --only outbox   # Roomcast only: Postgres outbox -> relay -> clients (rows/s, latency)

Each run gets a private redis-server, fresh replicas on free loopback ports, and the load
generator (target/release/roomcast-loadtest); JSON results go to --out (default
target/bench/results.json). Needs: cargo, node + npm, redis-server.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEER = ROOT / "loadtests" / "peers" / "node"
SECRET = "benchmark-secret-0123456789abcdef0123456789abcdef"
# Scenarios that read Roomcast's own metrics (they get --admin); the Node peer has nothing to compare.
ROOMCAST_ONLY = {"churn", "noisy-neighbour", "rpc", "outbox"}
# Every abuse, then the control: the header flood sent to a gateway B does not use.
NOISY_ABUSES = "presence-flood,typing-flood,join-churn,non-reading,big-headers,header-flood,header-flood-elsewhere"
NEEDS_ADMIN = {"churn"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def redis_ok(readyz: str) -> bool:
    """Ready and connected to Redis with every room subscribed: /readyz answers 200 either way
    (readiness does not follow Redis), its body says how Redis is."""
    try:
        with urllib.request.urlopen(readyz, timeout=1) as r:
            return r.status == 200 and json.loads(r.read()).get("redis") == "ok"
    except (OSError, ValueError):
        return False


def raise_fd_limit() -> int:
    """Tens of thousands of sockets need as many descriptors, in the replicas and the generator.
    Returns the limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 1_048_576
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# `--server-cpus` / `--generator-cpus`: CPU lists (taskset -c) for Redis and the replicas, and for
# the load generator, so that a scenario's own clients do not take the servers' CPU.
SERVER_CPUS: str | None = None
GENERATOR_CPUS: str | None = None
# `--attackers`: the noisy-neighbour's `--attacker-runtime`.
ATTACKERS = "niced"


def pinned(cmd: list, cpus: str | None) -> list:
    return ["taskset", "-c", cpus, *map(str, cmd)] if cpus else cmd


class Stack:
    """A private Redis and `replicas` server processes of one stack."""

    def __init__(self, kind: str, replicas: int, profile: str, log_dir: Path, extra_env: dict | None = None) -> None:
        self.kind, self.procs, self.ports, self.admin_ports = kind, [], [], []
        self.redis_port = free_port()
        self.redis = subprocess.Popen(
            pinned(["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], SERVER_CPUS),
            stdout=subprocess.DEVNULL,
        )
        wait_for(lambda: port_open(self.redis_port), "redis-server")
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}"
        for i in range(replicas):
            port = free_port()
            log = open(log_dir / f"{kind}-{i}.log", "w")
            if kind == "roomcast":
                admin = free_port()
                self.admin_ports.append(admin)
                env = os.environ | {
                    "ROOMCAST_JWT_SECRET": SECRET,
                    "ROOMCAST_REDIS_URL": self.redis_url,
                    "ROOMCAST_LISTEN": f"127.0.0.1:{port}",
                    "ROOMCAST_ADMIN_LISTEN": f"127.0.0.1:{admin}",
                    "ROOMCAST_API_LISTEN": "127.0.0.1:0",
                    "ROOMCAST_LOG": "warn",
                    # The typing storm toggles every 500 ms; the default 2 s throttle would
                    # (rightly) swallow most toggles.
                    "ROOMCAST_TYPING_THROTTLE": "100ms",
                } | (extra_env or {})
                proc = subprocess.Popen(pinned([ROOT / "target" / profile / "roomcast-gateway"], SERVER_CPUS), env=env, stdout=log, stderr=log)
                ready = lambda a=admin: redis_ok(f"http://127.0.0.1:{a}/readyz")
            else:
                env = os.environ | {
                    "PORT": str(port),
                    "REDIS_URL": self.redis_url,
                    "JWT_SECRET": SECRET,
                    "NODE_ENV": "production",
                }
                proc = subprocess.Popen(pinned(["node", "server.js"], SERVER_CPUS), cwd=PEER, env=env, stdout=log, stderr=log)
                ready = lambda p=port: port_open(p)
            self.procs.append(proc)
            self.ports.append(port)
            wait_for(lambda: proc.poll() is None and ready(), f"{kind} replica {i}")

    def args(self, only: int | None = None) -> list[str]:
        """The load generator's target options: every replica, or replica `only`."""
        picked = range(len(self.ports)) if only is None else [only]
        return [
            "--stack", self.kind,
            "--replicas", ",".join(f"127.0.0.1:{self.ports[i]}" for i in picked),
            "--pids", ",".join(str(self.procs[i].pid) for i in picked),
            "--redis-url", self.redis_url,
            "--secret", SECRET,
            "--node-publisher", f"node {PEER / 'publisher.js'}",
        ]

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
            p.wait()
        self.redis.kill()
        self.redis.wait()


def postgres_bin() -> Path | None:
    """Debian's PostgreSQL server programs (newest major), or the PATH's initdb's folder."""
    majors = sorted((p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "initdb").exists()), key=lambda p: int(p.parent.name))
    if majors:
        return majors[-1]
    found = shutil.which("initdb")
    return Path(found).parent if found else None


class Postgres:
    """A throwaway PostgreSQL server (initdb on a free port, default durability: fsync and
    synchronous commit on, as an application's database runs), pinned like the replicas. As
    root, its programs run as the `postgres` user (initdb refuses root)."""

    def __init__(self, log_dir: Path) -> None:
        import pwd
        import tempfile

        bin_dir = postgres_bin()
        if bin_dir is None:
            raise SystemExit("outbox: PostgreSQL's initdb is not installed (Debian: apt-get install postgresql)")
        self.dir = Path(tempfile.mkdtemp(prefix="roomcast-bench-pg-"))
        prefix: list[str] = []
        if os.getuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            prefix = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups", "--"]
        data = self.dir / "data"
        subprocess.run([*prefix, bin_dir / "initdb", "-D", data, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C"],
                       check=True, stdout=subprocess.DEVNULL)
        self.port = free_port()
        log = open(log_dir / "postgres.log", "w")
        self.proc = subprocess.Popen(
            pinned([*prefix, bin_dir / "postgres", "-D", data, "-p", str(self.port), "-k", self.dir, "-c", "listen_addresses=127.0.0.1"], SERVER_CPUS),
            stdout=log,
            stderr=log,
        )
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/postgres"
        wait_for(lambda: self.proc.poll() is None and port_open(self.port), "postgres")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def run_outbox(stack: Stack, extra: list[str], profile: str, log_dir: Path) -> dict:
    """The outbox path end to end: a Postgres, one relay (pinned like the replicas), the stack's
    gateway; the generator inserts rows and its members receive them."""
    postgres = Postgres(log_dir)
    relay = None
    try:
        admin = free_port()
        env = os.environ | {
            "ROOMCAST_RELAY_DATABASE_URL": postgres.url,
            "ROOMCAST_REDIS_URL": stack.redis_url,
            "ROOMCAST_RELAY_ADMIN_LISTEN": f"127.0.0.1:{admin}",
            # ROOMCAST_RELAY_BENCH_LOG=roomcast_relay=debug logs each batch's claim, publish and
            # commit times (target/bench/logs/relay.log).
            "ROOMCAST_LOG": os.environ.get("ROOMCAST_RELAY_BENCH_LOG", "warn"),
        }
        cmd = [str(ROOT / "target" / profile / "roomcast-loadtest"), "outbox", *stack.args(), *extra,
               "--database-url", postgres.url, "--relay-admin", f"127.0.0.1:{admin}"]
        # The generator applies the migration before it inserts; the relay backs off until then.
        log = open(log_dir / "relay.log", "w")
        relay = subprocess.Popen(pinned([ROOT / "target" / profile / "roomcast-relay"], SERVER_CPUS), env=env, stdout=log, stderr=log)
        wait_for(lambda: relay.poll() is None and port_open(admin), "the relay")
        out = subprocess.run(pinned([*cmd, "--relay-pid", str(relay.pid)], GENERATOR_CPUS), stdout=subprocess.PIPE, check=True, text=True).stdout
        return json.loads(out)
    finally:
        if relay:
            relay.kill()
            relay.wait()
        postgres.stop()


def start_sink(profile: str, log_dir: Path) -> tuple[subprocess.Popen, int]:
    """A single-node gateway none of B's clients use: the `header-flood-elsewhere` control sends
    A's oversized upgrades to it, on the generator's CPUs, so that the attack costs the machine
    what it costs without reaching B's replicas."""
    port, admin = free_port(), free_port()
    env = os.environ | {
        "ROOMCAST_JWT_SECRET": SECRET,
        "ROOMCAST_LISTEN": f"127.0.0.1:{port}",
        "ROOMCAST_ADMIN_LISTEN": f"127.0.0.1:{admin}",
        "ROOMCAST_API_LISTEN": "127.0.0.1:0",
        "ROOMCAST_LOG": "warn",
    }
    log = open(log_dir / "sink.log", "w")
    # A niced attacker stands for one on other hardware: the server it attacks in the control
    # must not take B's CPU either.
    niced = ["nice", "-n", "19"] if ATTACKERS == "niced" else []
    proc = subprocess.Popen(pinned([*niced, ROOT / "target" / profile / "roomcast-gateway"], GENERATOR_CPUS), env=env, stdout=log, stderr=log)
    wait_for(lambda: proc.poll() is None and port_open(admin), "the sink gateway")
    return proc, port


def run_scenario(kind: str, scenario: str, replicas: int, extra: list[str], profile: str, log_dir: Path) -> dict:
    extra_env, backend_port = None, None
    if scenario == "rpc":
        # The loadtest runs the backend; each socket's RPCs are bounded by the benchmark's own
        # concurrency, not by the per-socket event budget.
        backend_port = free_port()
        extra_env = {
            "ROOMCAST_RPC_URL": f"http://127.0.0.1:{backend_port}/rpc",
            "ROOMCAST_RPC_SECRET": "benchmark-rpc-secret-0123456789abcdef",
            "ROOMCAST_RATE_OTHER": "1000000/s:1000000",
        }
    stack = Stack(kind, replicas, profile, log_dir, extra_env)
    sink = None
    try:
        subcommand = scenario.removesuffix("-browser")
        cmd = [str(ROOT / "target" / profile / "roomcast-loadtest"), subcommand, *stack.args(), *extra]
        if scenario in NEEDS_ADMIN:
            cmd += ["--admin", ",".join(f"127.0.0.1:{p}" for p in stack.admin_ports)]
        if backend_port:
            cmd += ["--backend-port", str(backend_port)]
        if scenario == "noisy-neighbour":
            sink, sink_port = start_sink(profile, log_dir)
            cmd += ["--flood-target", f"127.0.0.1:{sink_port}", "--abuses", NOISY_ABUSES, "--attacker-runtime", ATTACKERS]
        print(f"\n### {scenario} on {kind} ({replicas} replica(s))", file=sys.stderr, flush=True)
        if scenario == "idle-cluster":
            return run_idle_cluster(stack, extra, profile)
        if scenario == "outbox":
            return run_outbox(stack, extra, profile, log_dir)
        out = subprocess.run(pinned(cmd, GENERATOR_CPUS), stdout=subprocess.PIPE, check=True, text=True).stdout
        return json.loads(out)
    finally:
        stack.stop()
        if sink:
            sink.kill()
            sink.wait()


def run_idle_cluster(stack: Stack, extra: list[str], profile: str) -> dict:
    """Every replica of the stack loaded at once, each by its own generator process: one process
    cannot hold more connections than the descriptor limit, and a replica's share must stay
    under it too. Per-connection figures are over all replicas."""
    procs = [
        subprocess.Popen(
            pinned([str(ROOT / "target" / profile / "roomcast-loadtest"), "idle", *stack.args(only=i), *extra], GENERATOR_CPUS),
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(len(stack.procs))
    ]
    outs = [p.communicate()[0] for p in procs]
    if any(p.returncode != 0 for p in procs):
        raise SystemExit(f"idle-cluster: a generator failed ({[p.returncode for p in procs]})")
    each = [json.loads(o) for o in outs]
    open_ = sum(r["connections_open"] for r in each)

    def per_connection(key: str) -> float:
        return sum(r[key] * r["connections_open"] for r in each) / max(open_, 1)

    return {
        "scenario": "idle-cluster",
        "replicas": len(each),
        "connections_open": open_,
        "rss_per_connection_bytes": per_connection("rss_per_connection_bytes"),
        "hold_cpu_us_per_connection_second": per_connection("hold_cpu_us_per_connection_second"),
        "per_replica": each,
    }


def run_floor(extra: list[str], profile: str) -> dict:
    """The fan-out floor: no stack, the loadtest's own minimal server (pinned like the replicas)."""
    cmd = [str(ROOT / "target" / profile / "roomcast-loadtest"), "floor", *extra]
    if SERVER_CPUS:
        cmd += ["--server-cpus", SERVER_CPUS]
    print("\n### floor (the loadtest's minimal server)", file=sys.stderr, flush=True)
    out = subprocess.run(pinned(cmd, GENERATOR_CPUS), stdout=subprocess.PIPE, check=True, text=True).stdout
    return json.loads(out)


def fmt(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, str):
        return v
    if isinstance(v, float):
        return f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}"
    return f"{v:,}"


def ratio(a, b, higher_is_better: bool) -> str:
    if not a or not b:
        return "—"
    r = a / b if higher_is_better else b / a
    return f"{r:.1f}×"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny runs, debug binaries: checks the tooling, not performance")
    ap.add_argument(
        "--only", action="append", choices=["idle", "idle-browser", "idle-cluster", "fanout", "floor", "typing", "reconnect", "churn", "noisy-neighbour", "rpc", "outbox"]
    )
    ap.add_argument("--stacks", default="roomcast,node")
    ap.add_argument(
        "--idle-connections",
        type=int,
        help="default: 50,000, or what the descriptor limit allows (each connection is one descriptor in the replica)",
    )
    ap.add_argument(
        "--cluster-replicas",
        type=int,
        default=3,
        help="idle-cluster: replicas loaded at once, each with --idle-connections by its own generator",
    )
    ap.add_argument("--fanout-rooms", type=int, default=100)
    ap.add_argument("--fanout-room-size", type=int, default=50)
    ap.add_argument("--fanout-rates", default="200,500,1000,2000,3000,4000,6000,8000,12000,16000")
    ap.add_argument("--step", default="8s")
    ap.add_argument("--out", type=Path, default=ROOT / "target" / "bench" / "results.json")
    ap.add_argument("--server-cpus", help="taskset CPU list for Redis and the replicas, e.g. 0")
    ap.add_argument("--generator-cpus", help="taskset CPU list for the load generator, e.g. 1")
    ap.add_argument(
        "--attackers",
        choices=["shared", "own", "niced"],
        default="niced",
        help="noisy-neighbour: where tenant A's attackers run (loadtest --attacker-runtime). The "
        "default, `niced` (nice 19, the control's gateway too), keeps the attack's own CPU from "
        "delaying B's clients on this machine, as an attacker on other hardware could not; "
        "`shared` runs them in B's clients' runtime (BENCHMARKS.md, noisy neighbour)",
    )
    args = ap.parse_args()
    global SERVER_CPUS, GENERATOR_CPUS, ATTACKERS
    SERVER_CPUS, GENERATOR_CPUS, ATTACKERS = args.server_cpus, args.generator_cpus, args.attackers

    profile = "debug" if args.smoke else "release"
    build = ["cargo", "build", "--locked", "-p", "roomcast-gateway", "-p", "roomcast-relay", "-p", "roomcast-loadtest"]
    subprocess.run(build + ([] if args.smoke else ["--release"]), cwd=ROOT, check=True)
    if "node" in args.stacks and not (PEER / "node_modules").exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=PEER, check=True)
    fd_limit = raise_fd_limit()
    if args.idle_connections is None:
        # Room for the replica's own descriptors (listeners, Redis, logs) under the limit.
        args.idle_connections = min(50_000, fd_limit - 1_000)
        if args.idle_connections < 50_000 and not args.smoke:
            print(f"idle: {args.idle_connections} connections: the descriptor limit here is {fd_limit}", file=sys.stderr)
    log_dir = args.out.parent / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)

    # The rooms and rates of a fan-out run; the floor runs the same (fanout::Shape).
    if args.smoke:
        shape = ["--rooms", "5", "--room-size", "6", "--rates", "50,100", "--step", "1s"]
    else:
        shape = ["--rooms", str(args.fanout_rooms), "--room-size", str(args.fanout_room_size), "--rates", args.fanout_rates, "--step", args.step]
    if args.smoke:
        plan = {
            "idle": (1, ["--connections", "200", "--hold", "1s"]),
            "idle-browser": (1, ["--connections", "200", "--hold", "1s", "--browser-headers"]),
            "idle-cluster": (2, ["--connections", "100", "--hold", "1s"]),
            "fanout": (2, [*shape, "--all-steps"]),
            "floor": (0, shape),
            "typing": (2, ["--rooms", "4", "--room-size", "4", "--typists", "2", "--duration", "2s"]),
            "reconnect": (3, ["--rooms", "4", "--room-size", "6", "--rate", "50", "--before", "1s", "--after", "3s"]),
            "churn": (2, ["--cycles", "200", "--concurrency", "32", "--rooms", "5"]),
            "noisy-neighbour": (
                2,
                ["--members", "10", "--rate", "50", "--phase", "1s", "--attackers", "2", "--sink-rate", "200", "--probe-every", "200ms"],
            ),
            "rpc": (1, ["--concurrency", "1,4", "--duration", "1s"]),
            "outbox": (1, ["--rooms", "2", "--members", "1", "--rates", "50", "--step", "1s", "--writers", "2", "--drain-rows", "200"]),
        }
    else:
        plan = {
            "idle": (1, ["--connections", str(args.idle_connections), "--hold", "10s"]),
            # The same with the upgrade headers a browser sends, which a server may keep.
            "idle-browser": (1, ["--connections", str(args.idle_connections), "--hold", "10s", "--browser-headers"]),
            # Several replicas loaded at once, each to the descriptor limit (a 50k/100k replica
            # cannot be run here); held through two default (25 s) ping intervals.
            "idle-cluster": (args.cluster_replicas, ["--connections", str(args.idle_connections), "--hold", "60s"]),
            "fanout": (2, shape),
            # The kernel's share of fan-out: the same sockets and rates, frames written as is.
            "floor": (0, shape),
            "typing": (2, ["--rooms", "100", "--room-size", "20", "--typists", "4", "--interval", "500ms", "--duration", "20s"]),
            "reconnect": (3, ["--rooms", "50", "--room-size", "60", "--rate", "500", "--before", "3s", "--after", "10s"]),
            "churn": (2, ["--cycles", "5000", "--concurrency", "128", "--rooms", "50"]),
            # 20 s phases with a probe every 10 ms: ~2,000 presence-join samples per phase,
            # so a p99 is the 20th worst, not the 5th (with 500, runs of the same build moved
            # 0.8–2.5× in quiet phases).
            "noisy-neighbour": (2, ["--members", "50", "--rate", "200", "--phase", "20s", "--attackers", "8", "--probe-every", "10ms"]),
            "rpc": (1, ["--concurrency", "1,16,64", "--duration", "5s"]),
            "outbox": (1, ["--rooms", "20", "--members", "2", "--rates", "200,500,1000,2000,4000", "--step", "10s", "--drain-rows", "50000"]),
        }
    scenarios = args.only or list(plan)
    stacks = args.stacks.split(",")
    results: dict[str, dict[str, dict]] = {}
    for scenario in scenarios:
        replicas, extra = plan[scenario]
        if scenario == "floor":
            results["floor"] = {"floor": run_floor(extra, profile)}
            continue
        for kind in stacks:
            if scenario in ROOMCAST_ONLY and kind != "roomcast":
                continue
            results.setdefault(scenario, {})[kind] = run_scenario(kind, scenario, replicas, extra, profile, log_dir)
    args.out.write_text(json.dumps(results, indent=2))

    # The table: each figure for both stacks and how many times better Roomcast is.
    rows = []

    def row(name, scenario, path, higher_is_better):
        vals = {}
        for kind in stacks:
            v = results.get(scenario, {}).get(kind)
            for key in path:
                v = v.get(key) if isinstance(v, dict) else None
            vals[kind] = v
        rows.append((name, vals.get("roomcast"), vals.get("node"), ratio(vals.get("roomcast"), vals.get("node"), higher_is_better), None))

    row("idle: RSS per connection (bytes)", "idle", ["rss_per_connection_bytes"], False)
    row("idle: connects/s", "idle", ["connects_per_second"], True)
    row("idle, browser headers: RSS per connection (bytes)", "idle-browser", ["rss_per_connection_bytes"], False)
    row("idle cluster: connections over all replicas", "idle-cluster", ["connections_open"], True)
    row("idle cluster: RSS per connection (bytes)", "idle-cluster", ["rss_per_connection_bytes"], False)
    row("idle cluster: CPU per connection per second, holding (µs)", "idle-cluster", ["hold_cpu_us_per_connection_second"], False)
    row("fanout: sustainable publish rate (events/s)", "fanout", ["sustainable_publish_rate"], True)
    row("fanout: sustainable deliveries/s", "fanout", ["sustainable_delivery_rate"], True)
    # p99 and CPU at the Node stack's sustainable rate, from each stack's step at that rate (and
    # the floor's step at the same rate: what writing the frames alone costs).
    node_rate = results.get("fanout", {}).get("node", {}).get("sustainable_publish_rate")
    at_rate = {}
    for kind in [*stacks, "floor"]:
        steps = results.get("floor" if kind == "floor" else "fanout", {}).get(kind, {}).get("steps", [])
        at_rate[kind] = next((s for s in steps if s["target_rate"] == node_rate), None)

    def at(kind, *path):
        v = at_rate.get(kind)
        for key in path:
            v = v.get(key) if isinstance(v, dict) else None
        return v

    def split(kind):
        user, kernel = at(kind, "server_user_us_per_delivery"), at(kind, "server_kernel_us_per_delivery")
        return None if user is None or kernel is None else f"{user:.2f} / {kernel:.2f}"

    results["_p99_at_node_rate"] = {k: at(k, "latency", "p99_ms") for k in at_rate}
    results["_cpu_at_node_rate"] = {k: at(k, "server_cpu_us_per_delivery") for k in at_rate}
    p99, cpu = results["_p99_at_node_rate"], results["_cpu_at_node_rate"]
    rows.append((f"fanout: p99 ms at {fmt(node_rate)} events/s (Node's sustainable)", p99.get("roomcast"), p99.get("node"), ratio(p99.get("roomcast"), p99.get("node"), False), p99.get("floor")))
    rows.append(("fanout: server CPU µs per delivery at that rate", cpu.get("roomcast"), cpu.get("node"), ratio(cpu.get("roomcast"), cpu.get("node"), False), cpu.get("floor")))
    rows.append(("fanout: of which user / kernel µs", split("roomcast"), split("node"), "", split("floor")))
    row("fanout: events lost", "fanout", ["total_lost"], False)
    row("typing: indicators delivered/s", "typing", ["indicators_per_second"], True)
    row("typing: p99 ms", "typing", ["latency", "p99_ms"], False)
    row("typing: indicators missing", "typing", ["missing"], False)
    row("reconnect: seconds until all clients back", "reconnect", ["seconds_until_all_back"], False)
    row("reconnect: deliveries lost", "reconnect", ["lost"], False)
    row("reconnect: duplicates", "reconnect", ["duplicates"], False)
    row("churn: leaked local rooms (must be 0)", "churn", ["leaked_local_rooms"], False)
    row("churn: leaked Redis subscriptions (must be 0)", "churn", ["leaked_subscriptions"], False)
    row("churn: leaked presence entries (must be 0)", "churn", ["leaked_presence_entries"], False)
    row("noisy-neighbour: worst B delivery p99 / baseline", "noisy-neighbour", ["worst_delivery_p99_ratio"], False)
    row("noisy-neighbour: worst B presence-join p99 / baseline", "noisy-neighbour", ["worst_presence_join_p99_ratio"], False)
    row("noisy-neighbour: control, header flood elsewhere: B delivery p99 / baseline", "noisy-neighbour", ["control_delivery_p99_ratio"], False)
    row("noisy-neighbour: control, header flood elsewhere: B presence-join p99 / baseline", "noisy-neighbour", ["control_presence_join_p99_ratio"], False)
    row("outbox: sustainable insert rate, rows/s (all delivered, p99 < 1 s)", "outbox", ["sustainable_rows_per_second"], True)
    row("outbox: drain, rows/s end to end", "outbox", ["drain", "rows_per_second"], True)
    row("outbox: deliveries out of order or twice (must be 0)", "outbox", ["out_of_order"], False)
    row("outbox: deliveries missing (must be 0)", "outbox", ["missing"], False)
    row("noisy-neighbour: replicas' RSS baseline (bytes)", "noisy-neighbour", ["rss_baseline_bytes"], False)
    row("noisy-neighbour: replicas' largest RSS (bytes)", "noisy-neighbour", ["rss_max_bytes"], False)
    args.out.write_text(json.dumps(results, indent=2))

    width = max(len(r[0]) for r in rows)
    print(f"\n{'figure':<{width}} | {'Roomcast':>13} | {'Node':>13} | {'better by':>9} | floor (fan-out)")
    print(f"{'-' * width}-|-{'-' * 13}-|-{'-' * 13}-|-{'-' * 9}-|----------------")
    for name, a, b, r, floor in rows:
        print(f"{name:<{width}} | {fmt(a):>13} | {fmt(b):>13} | {r:>9} | {fmt(floor) if floor is not None else ''}")
    print(f"\nJSON: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
