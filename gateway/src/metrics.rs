//! Prometheus metrics: every name, its description and its labels in one place.
//!
//! Conventions: prefix `roomcast_`, base units, `_total` counters, `_seconds` histograms with
//! explicit buckets. Labels are bounded enums (reason codes, room kinds, known event names):
//! never a user, room or socket id, so a busy tenant cannot blow up the series count.

use std::sync::OnceLock;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use roomcast_publisher::RoomKind;

use crate::errors::ErrorCode;

/// Latency buckets (seconds) for every `_seconds` histogram: 0.5 ms to 10 s.
const LATENCY_BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder (once; later calls return the same handle) and describes
/// every metric.
///
/// The recorder is global because the `metrics` macros are: several gateways in one process
/// (as in tests) share their counters.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .and_then(|b| b.install_recorder())
                // Another recorder already installed (an embedding application's): render
                // through a detached one so /metrics still answers, and say so.
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "a global metrics recorder already exists; /metrics will be empty");
                    PrometheusBuilder::new().build_recorder().handle()
                });
            describe();
            register();
            gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            handle
        })
        .clone()
}

/// `1`, labelled with the running version.
pub const BUILD_INFO: &str = "roomcast_build_info";
/// Currently connected sockets.
pub const CONNECTIONS: &str = "roomcast_connections";
/// Sockets that passed authentication.
pub const CONNECTIONS_ACCEPTED: &str = "roomcast_connections_accepted_total";
/// Connection attempts refused, by `reason` (an error code).
pub const CONNECTIONS_REJECTED: &str = "roomcast_connections_rejected_total";
/// Ended connections, by `reason`.
pub const DISCONNECTS: &str = "roomcast_disconnects_total";
/// Room joins, by room `kind`.
pub const ROOM_JOINS: &str = "roomcast_room_joins_total";
/// Room leaves, by room `kind` (disconnects included).
pub const ROOM_LEAVES: &str = "roomcast_room_leaves_total";
/// Rooms with at least one member on this replica.
pub const LOCAL_ROOMS: &str = "roomcast_local_rooms";
/// Events received from clients, by `event` (known names, else `other`) and `result` (`ok` or an error code).
pub const EVENTS_RECEIVED: &str = "roomcast_client_events_total";
/// Events emitted to clients, one per local member of the room (for typing, the typer's own
/// sockets are counted although they are skipped), by `event` family.
pub const EVENTS_EMITTED: &str = "roomcast_events_emitted_total";
/// Token refresh attempts, by `result`.
pub const AUTH_REFRESHES: &str = "roomcast_auth_refreshes_total";

/// Envelopes this replica received from Redis (every room it is subscribed to).
pub const BUS_RECEIVED: &str = "roomcast_bus_messages_received_total";
/// Inbound envelopes dropped, by `reason`.
pub const BUS_REJECTED: &str = "roomcast_bus_messages_rejected_total";
/// Pub/sub messages lost because the reader fell behind the buffer.
pub const BUS_LAGGED: &str = "roomcast_bus_lagged_messages_total";
/// Rooms this replica is subscribed to.
pub const BUS_SUBSCRIPTIONS: &str = "roomcast_bus_subscriptions";
/// Redis command or connection errors, by `op`.
pub const REDIS_ERRORS: &str = "roomcast_redis_errors_total";
/// Redis reconnections, by `client` (commands, subscriber).
pub const REDIS_RECONNECTS: &str = "roomcast_redis_reconnects_total";
/// Room deliveries on this replica (one per envelope per replica), by `type`.
pub const DELIVERIES: &str = "roomcast_deliveries_total";
/// Time from publish (the envelope's ts) to local emit.
pub const DELIVERY_LATENCY: &str = "roomcast_delivery_latency_seconds";
/// Events not sent to a socket because its send buffer was full.
pub const CLIENT_BUFFER_FULL: &str = "roomcast_client_buffer_full_total";
/// Presence changes waiting to be applied to the store, all tenants together.
pub const PRESENCE_QUEUE: &str = "roomcast_presence_queue_depth";
/// Single node: rooms whose in-memory history was dropped to stay within
/// `ROOMCAST_HISTORY_MAX_ROOMS` / `ROOMCAST_HISTORY_MAX_BYTES`.
pub const HISTORY_EVICTED: &str = "roomcast_history_rooms_evicted_total";
/// Connections admitted without checking the connection caps (the store was unreachable).
pub const CAPS_UNCHECKED: &str = "roomcast_connection_caps_unchecked_total";
/// Publish requests (HTTP API, client typing), by `source` and `result`.
pub const PUBLISHES: &str = "roomcast_publish_requests_total";
/// Presence changes the store could not apply (reconciled when it is back).
pub const PRESENCE_ERRORS: &str = "roomcast_presence_errors_total";
/// Dead replicas whose presence this replica removed.
pub const REPLICAS_REAPED: &str = "roomcast_replicas_reaped_total";
/// Typing indicators turned off because their TTL ran out.
pub const TYPING_EXPIRED: &str = "roomcast_typing_expired_total";
/// Events dropped because this replica had already delivered their offset.
pub const DUPLICATES_DROPPED: &str = "roomcast_duplicates_dropped_total";
/// Rooms that caught up from history (after a gap, a lag or a lost subscription).
pub const CATCH_UPS: &str = "roomcast_catch_ups_total";
/// `roomcast:resync` notices: events lost beyond history, by `reason`.
pub const RESYNCS: &str = "roomcast_resyncs_total";
/// Joins with `since`, by `result` (`recovered` or `not_recovered`).
pub const RECOVERIES: &str = "roomcast_recoveries_total";
/// Events replayed from history to recovering sockets.
pub const REPLAYED: &str = "roomcast_replayed_events_total";

fn describe() {
    describe_counter!(BUS_RECEIVED, "Envelopes received from Redis by this replica.");
    describe_counter!(BUS_REJECTED, "Inbound envelopes dropped as invalid, by reason.");
    describe_counter!(BUS_LAGGED, "Pub/sub messages lost because the reader fell behind its buffer.");
    describe_gauge!(BUS_SUBSCRIPTIONS, "Rooms this replica is subscribed to in Redis.");
    describe_counter!(REDIS_ERRORS, "Redis command and connection errors, by operation.");
    describe_counter!(REDIS_RECONNECTS, "Redis reconnections, by client.");
    describe_counter!(DELIVERIES, "Envelopes delivered to this replica's rooms, by type.");
    describe_histogram!(DELIVERY_LATENCY, "Seconds from publish to local emit (publisher and gateway clocks).");
    describe_counter!(CLIENT_BUFFER_FULL, "Events not sent to a socket because its send buffer was full.");
    describe_gauge!(PRESENCE_QUEUE, "Presence changes waiting to be applied to the store.");
    describe_counter!(HISTORY_EVICTED, "Rooms whose in-memory history was dropped to stay within its limits.");
    describe_counter!(CAPS_UNCHECKED, "Connections admitted without checking the connection caps (store unreachable).");
    describe_counter!(PUBLISHES, "Publish requests, by source and result.");
    describe_counter!(PRESENCE_ERRORS, "Presence changes the store could not apply (reconciled later).");
    describe_counter!(REPLICAS_REAPED, "Dead replicas whose presence this replica removed.");
    describe_counter!(TYPING_EXPIRED, "Typing indicators turned off because their TTL ran out.");
    describe_counter!(DUPLICATES_DROPPED, "Events dropped because their offset was already delivered here.");
    describe_counter!(CATCH_UPS, "Rooms that caught up from history after a gap, a lag or a lost subscription.");
    describe_counter!(RESYNCS, "roomcast:resync notices sent: events lost beyond history, by reason.");
    describe_counter!(RECOVERIES, "Joins with since, by result.");
    describe_counter!(REPLAYED, "Events replayed from history to recovering sockets.");
    describe_gauge!(BUILD_INFO, "Always 1; the version label names the running build.");
    describe_gauge!(CONNECTIONS, "Currently connected Socket.IO sockets.");
    describe_counter!(CONNECTIONS_ACCEPTED, "Sockets that passed authentication.");
    describe_counter!(CONNECTIONS_REJECTED, "Connection attempts refused, by reason.");
    describe_counter!(DISCONNECTS, "Ended connections, by reason.");
    describe_counter!(ROOM_JOINS, "Room joins, by room kind.");
    describe_counter!(ROOM_LEAVES, "Room leaves, by room kind, disconnects included.");
    describe_gauge!(LOCAL_ROOMS, "Rooms with at least one member on this replica.");
    describe_counter!(EVENTS_RECEIVED, "Events received from clients, by event and result.");
    describe_counter!(EVENTS_EMITTED, "Events emitted to clients, one per socket reached, by event family.");
    describe_counter!(AUTH_REFRESHES, "auth:refresh attempts, by result.");
}

/// Creates every counter and gauge, with the label values known up front, at 0: a fresh replica
/// shows 0 rather than "no data" on dashboards and in alert expressions (`rate()` of a series
/// that appears only at its first increment misses that increment).
fn register() {
    for name in [
        CONNECTIONS_ACCEPTED,
        BUS_RECEIVED,
        BUS_LAGGED,
        CLIENT_BUFFER_FULL,
        HISTORY_EVICTED,
        CAPS_UNCHECKED,
        PRESENCE_ERRORS,
        REPLICAS_REAPED,
        TYPING_EXPIRED,
        DUPLICATES_DROPPED,
        CATCH_UPS,
        REPLAYED,
    ] {
        counter!(name).increment(0);
    }
    for name in [CONNECTIONS, LOCAL_ROOMS, BUS_SUBSCRIPTIONS, PRESENCE_QUEUE] {
        // `increment(0)`, not `set(0)`: never resets a gauge already in use.
        gauge!(name).increment(0.0);
    }
    let labelled: &[(&str, &str, &[&str])] = &[
        (
            CONNECTIONS_REJECTED,
            "reason",
            &["token_missing", "token_invalid", "token_expired", "forbidden", "rate_limited", "too_many_connections"],
        ),
        (
            DISCONNECTS,
            "reason",
            &[
                "client_closed",
                "client_disconnect",
                "transport_error",
                "heartbeat_timeout",
                "protocol_error",
                "server_disconnect",
                "server_shutdown",
                "token_expired",
                "rate_limited",
                "slow_consumer",
            ],
        ),
        (ROOM_JOINS, "kind", &["tenant", "user", "project", "channel"]),
        (ROOM_LEAVES, "kind", &["tenant", "user", "project", "channel"]),
        (EVENTS_EMITTED, "event", &["event", "typing", "presence", "roomcast:disconnect", "auth:expiring"]),
        (AUTH_REFRESHES, "result", &["ok", "invalid_payload", "token_invalid", "token_expired", "forbidden"]),
        (
            BUS_REJECTED,
            "reason",
            &["malformed", "version", "room", "event_name", "too_large", "typing", "presence", "channel"],
        ),
        (REDIS_ERRORS, "op", &["connection", "publish", "subscribe", "unsubscribe", "history", "presence"]),
        (REDIS_RECONNECTS, "client", &["commands", "subscriber"]),
        (DELIVERIES, "type", &["event", "typing", "presence"]),
        (RESYNCS, "reason", &["gap", "epoch_changed"]),
        (RECOVERIES, "result", &["recovered", "not_recovered"]),
    ];
    for (name, label, values) in labelled {
        for value in *values {
            counter!(*name, *label => *value).increment(0);
        }
    }
    for event in ["join", "leave", "auth:refresh", "typing", "presence:list", "presence:update"] {
        counter!(EVENTS_RECEIVED, "event" => event, "result" => "ok").increment(0);
    }
    for source in ["http", "client_typing"] {
        counter!(PUBLISHES, "source" => source, "result" => "ok").increment(0);
    }
}

pub(crate) fn connection_accepted() {
    counter!(CONNECTIONS_ACCEPTED).increment(1);
    gauge!(CONNECTIONS).increment(1.0);
}

pub(crate) fn connection_rejected(code: ErrorCode) {
    counter!(CONNECTIONS_REJECTED, "reason" => code.as_str()).increment(1);
}

pub(crate) fn disconnected(reason: &'static str) {
    counter!(DISCONNECTS, "reason" => reason).increment(1);
    gauge!(CONNECTIONS).decrement(1.0);
}

pub(crate) fn room_joined(kind: RoomKind) {
    counter!(ROOM_JOINS, "kind" => kind.as_str()).increment(1);
}

pub(crate) fn room_left(kind: RoomKind) {
    counter!(ROOM_LEAVES, "kind" => kind.as_str()).increment(1);
}

pub(crate) fn local_rooms(count: usize) {
    gauge!(LOCAL_ROOMS).set(count as f64);
}

pub(crate) fn client_event(event: &'static str, result: Result<(), ErrorCode>) {
    let result = match result {
        Ok(()) => "ok",
        Err(code) => code.as_str(),
    };
    counter!(EVENTS_RECEIVED, "event" => event, "result" => result).increment(1);
}

pub(crate) fn emitted(event: &'static str, sockets: u64) {
    counter!(EVENTS_EMITTED, "event" => event).increment(sockets);
}

pub(crate) fn auth_refresh(result: &'static str) {
    counter!(AUTH_REFRESHES, "result" => result).increment(1);
}

pub(crate) fn bus_received() {
    counter!(BUS_RECEIVED).increment(1);
}

pub(crate) fn bus_rejected(reason: &'static str) {
    counter!(BUS_REJECTED, "reason" => reason).increment(1);
}

pub(crate) fn bus_lagged(lost: u64) {
    counter!(BUS_LAGGED).increment(lost);
}

pub(crate) fn bus_subscriptions(rooms: usize) {
    gauge!(BUS_SUBSCRIPTIONS).set(rooms as f64);
}

pub(crate) fn redis_error(op: &'static str) {
    counter!(REDIS_ERRORS, "op" => op).increment(1);
}

pub(crate) fn redis_reconnected(client: &'static str) {
    counter!(REDIS_RECONNECTS, "client" => client).increment(1);
}

/// An envelope delivered to a local room with `members` local sockets.
pub(crate) fn delivered(kind: &'static str, members: u64) {
    counter!(DELIVERIES, "type" => kind).increment(1);
    counter!(EVENTS_EMITTED, "event" => kind).increment(members);
}

pub(crate) fn delivery_latency(ms: u64) {
    histogram!(DELIVERY_LATENCY).record(ms as f64 / 1000.0);
}

pub(crate) fn presence_queue(depth: usize) {
    gauge!(PRESENCE_QUEUE).set(depth as f64);
}

pub(crate) fn connection_caps_unchecked() {
    counter!(CAPS_UNCHECKED).increment(1);
}

pub(crate) fn history_evicted(rooms: u64) {
    counter!(HISTORY_EVICTED).increment(rooms);
}

pub(crate) fn client_buffer_full(sockets: u64) {
    counter!(CLIENT_BUFFER_FULL).increment(sockets);
}

pub(crate) fn publish(source: &'static str, result: Result<(), ErrorCode>) {
    let result = match result {
        Ok(()) => "ok",
        Err(code) => code.as_str(),
    };
    counter!(PUBLISHES, "source" => source, "result" => result).increment(1);
}

pub(crate) fn presence_error() {
    counter!(PRESENCE_ERRORS).increment(1);
}

pub(crate) fn replica_reaped() {
    counter!(REPLICAS_REAPED).increment(1);
}

pub(crate) fn typing_expired() {
    counter!(TYPING_EXPIRED).increment(1);
}

pub(crate) fn duplicate_dropped() {
    counter!(DUPLICATES_DROPPED).increment(1);
}

pub(crate) fn catch_up(rooms: usize) {
    counter!(CATCH_UPS).increment(rooms as u64);
}

pub(crate) fn resync(reason: &'static str) {
    counter!(RESYNCS, "reason" => reason).increment(1);
}

pub(crate) fn recovery(recovered: bool) {
    counter!(RECOVERIES, "result" => if recovered { "recovered" } else { "not_recovered" }).increment(1);
}

pub(crate) fn replayed(events: u64) {
    counter!(REPLAYED).increment(events);
}
