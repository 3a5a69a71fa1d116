#!/usr/bin/env python3
"""Writes helm/roomcast/dashboards/roomcast.json, the Roomcast Grafana dashboard.

The dashboard is generated so its panels stay uniform; edit this file, run it, commit both.
Per-replica series are split by `instance` (Prometheus' target label, present both in the
compose cluster and with the chart's ServiceMonitor).
"""
import json
import pathlib
import sys

DS = {"type": "prometheus", "uid": "${datasource}"}


def panel(title, exprs, unit="short", x=0, y=0, w=12, h=8, description=""):
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]}},
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": DS, "expr": expr, "legendFormat": legend}
            for i, (expr, legend) in enumerate(exprs)
        ],
    }


rows = [
    ("Connections per replica", [("sum by (instance) (roomcast_connections)", "{{instance}}")], "short",
     "Connected Socket.IO sockets."),
    ("Connections accepted / rejected per second", [
        ("sum by (instance) (rate(roomcast_connections_accepted_total[1m]))", "accepted {{instance}}"),
        ("sum by (reason) (rate(roomcast_connections_rejected_total[1m]))", "rejected: {{reason}}"),
    ], "ops", "Rejections by code (token_missing, token_invalid, token_expired, forbidden)."),
    ("Disconnects per second by reason", [
        ("sum by (reason) (rate(roomcast_disconnects_total[1m]))", "{{reason}}"),
    ], "ops", ""),
    ("Room joins / leaves per second", [
        ("sum by (instance) (rate(roomcast_room_joins_total[1m]))", "joins {{instance}}"),
        ("sum by (instance) (rate(roomcast_room_leaves_total[1m]))", "leaves {{instance}}"),
    ], "ops", ""),
    ("Events in per second", [
        ("sum by (source) (rate(roomcast_publish_requests_total[1m]))", "published: {{source}}"),
        ("sum by (instance) (rate(roomcast_bus_messages_received_total[1m]))", "from Redis: {{instance}}"),
        ("sum by (event) (rate(roomcast_client_events_total[1m]))", "client: {{event}}"),
    ], "ops", "Publishes (HTTP, client typing), envelopes each replica received from Redis, client events."),
    ("Events out per second", [
        ("sum by (instance) (rate(roomcast_events_emitted_total[1m]))", "{{instance}}"),
    ], "ops", "Events emitted to sockets (one per local member of the room)."),
    ("Delivery latency (publish → local emit)", [
        ("histogram_quantile(0.5, sum by (instance, le) (rate(roomcast_delivery_latency_seconds_bucket[1m])))", "p50 {{instance}}"),
        ("histogram_quantile(0.99, sum by (instance, le) (rate(roomcast_delivery_latency_seconds_bucket[1m])))", "p99 {{instance}}"),
    ], "s", "From the publisher's timestamp to the replica's emit (includes clock skew between hosts)."),
    ("Redis errors and reconnects", [
        ("sum by (instance, op) (rate(roomcast_redis_errors_total[1m]))", "errors {{op}} {{instance}}"),
        ("sum by (instance, client) (increase(roomcast_redis_reconnects_total[5m]))", "reconnects {{client}} {{instance}}"),
    ], "short", ""),
    ("Loss signals (should stay at 0)", [
        ("sum by (instance) (increase(roomcast_bus_lagged_messages_total[5m]))", "reader lag {{instance}}"),
        ("sum by (instance) (increase(roomcast_client_buffer_full_total[5m]))", "client buffer full {{instance}}"),
        ("sum by (reason) (increase(roomcast_resyncs_total[5m]))", "resync: {{reason}}"),
    ], "short", "Lagged reader messages are recovered from history; resyncs are losses beyond history."),
    ("Recovery", [
        ("sum by (result) (increase(roomcast_recoveries_total[5m]))", "join with since: {{result}}"),
        ("sum by (instance) (increase(roomcast_catch_ups_total[5m]))", "catch-ups {{instance}}"),
        ("sum by (instance) (increase(roomcast_duplicates_dropped_total[5m]))", "duplicates dropped {{instance}}"),
    ], "short", ""),
    ("Rooms and subscriptions per replica", [
        ("sum by (instance) (roomcast_local_rooms)", "local rooms {{instance}}"),
        ("sum by (instance) (roomcast_bus_subscriptions)", "Redis subscriptions {{instance}}"),
    ], "short", ""),
    ("Presence and typing", [
        ("sum(increase(roomcast_replicas_reaped_total[5m]))", "dead replicas reaped"),
        ("sum by (instance) (increase(roomcast_presence_errors_total[5m]))", "presence errors {{instance}}"),
        ("sum by (instance) (increase(roomcast_typing_expired_total[5m]))", "typing expired {{instance}}"),
    ], "short", ""),
]

panels = []
for i, (title, exprs, unit, description) in enumerate(rows):
    p = panel(title, exprs, unit, x=(i % 2) * 12, y=(i // 2) * 8, description=description)
    p["id"] = i + 1
    panels.append(p)

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
        "list": [{"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source"}]
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
