#!/usr/bin/env python3
"""Writes helm/roomcast/dashboards/roomcast.json, the Roomcast Grafana dashboard.

The dashboard is generated so its panels stay uniform; edit this file, run it, commit both.
The chart ships the file as a ConfigMap (grafanaDashboard.enabled) and docker-compose.yml
mounts the same file into its Grafana; `--check` (deploy/tests) fails when the file is stale.

Every query goes through `sel()`, so each selector carries the dashboard's variables:
`$job` and `$namespace` pick the installation (the chart's ServiceMonitor gives job = the
Service's name and the pods' namespace; the compose cluster has job "roomcast" and no namespace
label, which the namespace variable's ".*" all-value matches), `$instance` the replicas.
Ranges are `$__rate_interval`, which Grafana derives from the scrape interval and the zoom
level; a hard-coded window either misses samples or hides spikes.
Per-replica series are split by `instance` (Prometheus' target label, present both in the
compose cluster and with the ServiceMonitor).
"""
import json
import pathlib
import sys

DS = {"type": "prometheus", "uid": "${datasource}"}
VARIABLES = 'job=~"$job", namespace=~"$namespace", instance=~"$instance"'
RANGE = "[$__rate_interval]"


def sel(metric: str, extra: str = "") -> str:
    """`metric{extra, <the dashboard's variables>}`."""
    return f"{metric}{{{extra + ', ' if extra else ''}{VARIABLES}}}"


def rate(metric: str, extra: str = "") -> str:
    return f"rate({sel(metric, extra)}{RANGE})"


def increase(metric: str, extra: str = "") -> str:
    return f"increase({sel(metric, extra)}{RANGE})"


def quantile(q: float, metric: str, by: str, extra: str = "") -> str:
    return f"histogram_quantile({q}, sum by ({by}, le) ({rate(metric + '_bucket', extra)}))"


def panel(title, exprs, unit="short", description="", defaults=None):
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DS,
        "fieldConfig": {"defaults": {"unit": unit, **(defaults or {})}, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]}},
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": DS, "expr": expr, "legendFormat": legend}
            for i, (expr, legend) in enumerate(exprs)
        ],
    }


sections = [
    ("Clients", [
        panel("Connections per replica", [(f"sum by (instance) ({sel('roomcast_connections')})", "{{instance}}")],
              description="Connected Socket.IO sockets."),
        panel("Connections accepted / rejected per second", [
            (f"sum by (instance) ({rate('roomcast_connections_accepted_total')})", "accepted {{instance}}"),
            (f"sum by (reason) ({rate('roomcast_connections_rejected_total')})", "rejected: {{reason}}"),
        ], "ops", "Rejections by code (token_missing, token_invalid, token_expired, forbidden, rate_limited, too_many_connections)."),
        panel("Disconnects per second by reason", [
            (f"sum by (reason) ({rate('roomcast_disconnects_total')})", "{{reason}}"),
        ], "ops"),
        panel("Room joins / leaves per second", [
            (f"sum by (instance) ({rate('roomcast_room_joins_total')})", "joins {{instance}}"),
            (f"sum by (instance) ({rate('roomcast_room_leaves_total')})", "leaves {{instance}}"),
        ], "ops"),
        panel("JWKS fetches and keys", [
            (f"sum by (jwks, result) ({increase('roomcast_jwks_fetches_total')})", "fetches {{result}}: {{jwks}}"),
            (f"min by (jwks, instance) ({sel('roomcast_jwks_keys')})", "keys held {{jwks}} {{instance}}"),
        ], "short", "Fetches of each JWKS URL (auth.jwksUrl: default; trusted issuers: their iss) per rate interval, by "
                    "result, and the keys each replica holds from it. A failed refresh keeps the last keys; "
                    "0 keys held means that provider's tokens are refused. Empty without a JWKS URL."),
    ]),
    ("Events", [
        panel("Events in per second", [
            (f"sum by (source) ({rate('roomcast_publish_requests_total')})", "published: {{source}}"),
            (f"sum by (instance) ({rate('roomcast_bus_messages_received_total')})", "from Redis: {{instance}}"),
            (f"sum by (event) ({rate('roomcast_client_events_total')})", "client: {{event}}"),
        ], "ops", "Publishes (HTTP, client typing), envelopes each replica received from Redis, client events."),
        panel("Events out per second", [
            (f"sum by (instance) ({rate('roomcast_events_emitted_total')})", "{{instance}}"),
        ], "ops", "Events emitted to sockets (one per local member of the room)."),
        panel("Delivery latency (publish → local emit)", [
            (quantile(0.5, "roomcast_delivery_latency_seconds", "instance"), "p50 {{instance}}"),
            (quantile(0.99, "roomcast_delivery_latency_seconds", "instance"), "p99 {{instance}}"),
        ], "s", "From the publisher's timestamp to the replica's emit (includes clock skew between hosts)."),
        panel("Loss signals (should stay at 0)", [
            (f"sum by (instance) ({increase('roomcast_bus_lagged_messages_total')})", "reader lag {{instance}}"),
            (f"sum by (instance) ({increase('roomcast_client_buffer_full_total')})", "client buffer full {{instance}}"),
            (f"sum by (reason) ({increase('roomcast_resyncs_total')})", "resync: {{reason}}"),
        ], "short", "Per rate interval. Lagged reader messages are recovered from history; resyncs are losses beyond history."),
        panel("Recovery", [
            (f"sum by (result) ({increase('roomcast_recoveries_total')})", "join with since: {{result}}"),
            (f"sum by (instance) ({increase('roomcast_catch_ups_total')})", "catch-ups {{instance}}"),
            (f"sum by (instance) ({increase('roomcast_duplicates_dropped_total')})", "duplicates dropped {{instance}}"),
        ], "short", "Per rate interval."),
        panel("Presence and typing", [
            (f"sum({increase('roomcast_replicas_reaped_total')})", "dead replicas reaped"),
            (f"sum by (instance) ({increase('roomcast_presence_errors_total')})", "presence errors {{instance}}"),
            (f"sum by (instance) ({increase('roomcast_typing_expired_total')})", "typing expired {{instance}}"),
            (f"sum by (instance) ({sel('roomcast_presence_queue_depth')})", "presence queue {{instance}}"),
        ], "short", "Counts per rate interval; the queue is changes waiting for the store."),
    ]),
    ("Redis", [
        panel("Readiness and Redis connections", [
            (f"min by (instance) ({sel('roomcast_ready')})", "ready {{instance}}"),
            (f"min by (instance, client) ({sel('roomcast_redis_connected')})", "redis {{client}} {{instance}}"),
        ], "short", "1 = ready / connected. A replica without its subscriber connection receives no events from other replicas.",
              {"min": 0, "max": 1, "decimals": 0}),
        panel("Redis command latency", [
            (quantile(0.5, "roomcast_redis_command_duration_seconds", "op"), "p50 {{op}}"),
            (quantile(0.99, "roomcast_redis_command_duration_seconds", "op"), "p99 {{op}}"),
        ], "s", "All selected replicas together, by operation."),
        panel("Redis errors and reconnects", [
            (f"sum by (instance, op) ({rate('roomcast_redis_errors_total')})", "errors/s {{op}} {{instance}}"),
            (f"sum by (instance, client) ({increase('roomcast_redis_reconnects_total')})", "reconnects {{client}} {{instance}}"),
        ], "short", "Errors per second; reconnects per rate interval."),
        panel("Rooms and subscriptions per replica", [
            (f"sum by (instance) ({sel('roomcast_local_rooms')})", "local rooms {{instance}}"),
            (f"sum by (instance) ({sel('roomcast_bus_subscriptions')})", "Redis subscriptions {{instance}}"),
        ]),
    ]),
    ("HTTP", [
        panel("HTTP requests per second", [
            (f"sum by (listener, route, status) ({rate('roomcast_http_request_duration_seconds_count')})",
             "{{listener}} {{route}} {{status}}"),
        ], "reqps", "Public (Socket.IO handshakes and polling), api (publish) and admin (probes, metrics) listeners, by status class."),
        panel("HTTP API latency", [
            (quantile(0.5, "roomcast_http_request_duration_seconds", "route", 'listener="api"'), "p50 {{route}}"),
            (quantile(0.99, "roomcast_http_request_duration_seconds", "route", 'listener="api"'), "p99 {{route}}"),
        ], "s", "The publish API, by route."),
    ]),
    ("Process and runtime", [
        panel("Resident memory per replica", [
            (f"sum by (instance) ({sel('process_resident_memory_bytes')})", "{{instance}}"),
        ], "bytes"),
        panel("CPU per replica", [
            (f"sum by (instance) ({rate('process_cpu_seconds_total')})", "{{instance}}"),
        ], "short", "Cores in use."),
        panel("Open file descriptors per replica", [
            (f"sum by (instance) ({sel('process_open_fds')})", "open {{instance}}"),
            (f"max by (instance) ({sel('process_max_fds')})", "limit {{instance}}"),
        ], "short", "Every client socket holds one; at the limit new connections fail."),
        panel("Tokio tasks per replica", [
            (f"sum by (instance) ({sel('roomcast_tokio_alive_tasks')})", "alive tasks {{instance}}"),
        ], "short", "Tasks alive in the gateway's runtime: a steady climb while connections stay level is a leak."),
        panel("Tokio scheduler", [
            (f"max by (instance) ({sel('roomcast_tokio_workers')})", "workers {{instance}}"),
            (f"sum by (instance) ({sel('roomcast_tokio_global_queue_depth')})", "global queue {{instance}}"),
        ], "short", "Tasks waiting in the global queue: a growing queue means the workers cannot keep up (CPU-bound)."),
    ]),
]

panels = []
y = 0
for title, section in sections:
    panels.append({"type": "row", "title": title, "collapsed": False, "gridPos": {"x": 0, "y": y, "w": 24, "h": 1}, "panels": []})
    y += 1
    for i, p in enumerate(section):
        p["gridPos"] = {"x": (i % 2) * 12, "y": y + (i // 2) * 8, "w": 12, "h": 8}
        panels.append(p)
    y += (len(section) + 1) // 2 * 8
for i, p in enumerate(panels):
    p["id"] = i + 1


def query_variable(name, label, query, all_value=None):
    variable = {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "query": query,
        "definition": query,
        "refresh": 2,
        "sort": 1,
        "multi": True,
        "includeAll": True,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
    }
    if all_value is not None:
        # "All" as a regex rather than the list of values: matches series without the label
        # (compose has no namespace) and keeps the queries short with many replicas.
        variable["allValue"] = all_value
    return variable


dashboard = {
    "uid": "roomcast",
    "title": "Roomcast",
    "tags": ["roomcast", "socket.io"],
    "timezone": "browser",
    "schemaVersion": 39,
    "version": 1,
    "refresh": "10s",
    "time": {"from": "now-1h", "to": "now"},
    "templating": {
        "list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source"},
            # roomcast_build_info: every replica exports it from start-up, so each variable
            # lists every installation, namespace and replica, even idle ones.
            query_variable("job", "Job", "label_values(roomcast_build_info, job)"),
            query_variable("namespace", "Namespace", 'label_values(roomcast_build_info{job=~"$job"}, namespace)', ".*"),
            query_variable(
                "instance", "Instance", 'label_values(roomcast_build_info{job=~"$job", namespace=~"$namespace"}, instance)', ".*"
            ),
        ]
    },
    "panels": panels,
}

out = pathlib.Path(__file__).resolve().parents[2] / "helm/roomcast/dashboards/roomcast.json"
text = json.dumps(dashboard, indent=2) + "\n"
if sys.argv[1:] == ["--check"]:
    # deploy/tests: the committed JSON is what this script generates.
    sys.exit(0 if out.read_text() == text else f"{out} is stale: run {sys.argv[0]}")
out.write_text(text)
print(f"wrote {out}")
