#!/usr/bin/env python3
"""What lifecycle events cost: the `idle` scenario against 2 Roomcast replicas on a private
Redis, with lifecycle events off, then on (the Redis Stream sink and a webhook to a receiver in
this process), alternating. Each connection is a user of its own, so every connect is a
`user.online` and every close, after the grace period, a `user.offline`.

    python3 loadtests/lifecycle_cost.py --connections 10000 --rounds 3

Prints one JSON line per run: connects/s, replica and Redis CPU per connect (over the connect
and hold phase), and with events on, the events the stream recorded and the webhook received
(after the generator closed every connection). Needs target/release/roomcast-gateway and
roomcast-loadtest (cargo build --release -p roomcast-gateway -p roomcast-loadtest), redis-server.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECRET = "benchmark-secret-0123456789abcdef0123456789abcdef"


def free_port() -> int:
    # Below the ephemeral range: the generator's thousands of closed connections leave ports of
    # that range in TIME_WAIT, where a later redis-server could not bind.
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    while True:
        port = random.randint(10_000, low - 1)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def redis_cli(port: int, *args: str) -> str:
    return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True).stdout.strip()


class Receiver:
    """A webhook receiver counting the events (and distinct ids) of the batches it takes."""

    def __init__(self) -> None:
        self.events, self.requests, self.ids = 0, 0, set()
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with lock:
                    outer.requests += 1
                    for event in json.loads(body)["events"]:
                        outer.events += 1
                        outer.ids.add(event["id"])
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"


def start_replica(redis_port: int, extra: dict[str, str]) -> tuple[subprocess.Popen, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROOMCAST_")}
    env.update(
        {
            "ROOMCAST_JWT_SECRET": SECRET,
            "ROOMCAST_LISTEN": "127.0.0.1:0",
            "ROOMCAST_API_LISTEN": "127.0.0.1:0",
            "ROOMCAST_ADMIN_LISTEN": "127.0.0.1:0",
            "ROOMCAST_LOG_FORMAT": "json",
            "ROOMCAST_REDIS_URL": f"redis://127.0.0.1:{redis_port}",
            "ROOMCAST_PRESENCE_GRACE": "1s",
            # Not what is measured: the caps' counting costs the same either way.
            "ROOMCAST_MAX_CONNECTIONS_PER_USER": "0",
            **extra,
        }
    )
    proc = subprocess.Popen(
        [str(ROOT / "target/release/roomcast-gateway")], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("message") == "listening":
            # Keep draining its log: a full pipe would block the replica.
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc, entry["public"]
    raise RuntimeError("the replica did not start")


def run(events_on: bool, connections: int) -> dict:
    redis_port = free_port()
    redis = subprocess.Popen(
        ["redis-server", "--port", str(redis_port), "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL
    )
    time.sleep(0.3)
    receiver = Receiver() if events_on else None
    extra = (
        {"ROOMCAST_EVENTS_STREAM": "true", "ROOMCAST_WEBHOOK_URL": receiver.url, "ROOMCAST_WEBHOOK_SECRET": "w" * 40}
        if receiver
        else {}
    )
    replicas = [start_replica(redis_port, extra) for _ in range(2)]
    try:
        time.sleep(1.5)
        redis_before = cpu_seconds(redis.pid)
        out = subprocess.run(
            [
                str(ROOT / "target/release/roomcast-loadtest"),
                "idle",
                "--replicas", ",".join(addr for _, addr in replicas),
                "--pids", ",".join(str(p.pid) for p, _ in replicas),
                "--secret", SECRET,
                "--connections", str(connections),
                "--hold", "2s",
                "--redis-url", f"redis://127.0.0.1:{redis_port}",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        idle = json.loads(out.stdout)
        redis_cpu = cpu_seconds(redis.pid) - redis_before
        opened = idle["connections_open"]
        result = {
            "events": events_on,
            "connections": opened,
            "connects_per_second": round(idle["connects_per_second"]),
            "replica_cpu_us_per_connect": round(idle["server_cpu_seconds"] / opened * 1e6, 1),
            "redis_cpu_us_per_connect": round(redis_cpu / opened * 1e6, 1),
        }
        if receiver:
            # The generator closed everything: every user.offline comes after the grace period.
            deadline = time.time() + 60
            while time.time() < deadline and receiver.events < 2 * opened:
                time.sleep(0.25)
            entries = redis_cli(redis_port, "XRANGE", "roomcast:{events}", "-", "+").split("\n")
            types = [entries[i + 1] for i, line in enumerate(entries[:-1]) if line == "type"]
            result |= {
                "stream_user_online": types.count("user.online"),
                "stream_user_offline": types.count("user.offline"),
                "webhook_requests": receiver.requests,
                "webhook_events": receiver.events,
                "webhook_distinct_ids": len(receiver.ids),
            }
        return result
    finally:
        for proc, _ in replicas:
            proc.terminate()
        for proc, _ in replicas:
            proc.wait()
        redis.terminate()
        redis.wait()
        if receiver:
            receiver.server.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for _ in range(args.rounds):
        for events_on in (False, True):
            print(json.dumps(run(events_on, args.connections)), flush=True)


if __name__ == "__main__":
    main()
