//! Prometheus metrics: every name, its description and its labels in one place.
//!
//! Conventions: prefix `roomcast_`, base units, `_total` counters, `_seconds` histograms with
//! explicit buckets. Labels are bounded enums (reason codes, room kinds, known event names):
//! never a user, room or socket id, so a busy tenant cannot blow up the series count.

use std::{
    sync::{
        OnceLock,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::Instant,
};

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use roomcast_publisher::RoomKind;

use crate::{backend::BoxFuture, errors::ErrorCode};

/// Latency buckets (seconds) for every `_seconds` histogram: 100 µs to 10 s.
const LATENCY_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Buckets of [`DELIVERY_LATENCY`]: it compares the gateway's clock with the envelope's `ts`,
/// which has millisecond resolution, so finer buckets would only show rounding.
const DELIVERY_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

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
                // A full-name matcher wins over a suffix one (the exporter sorts them).
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(DELIVERY_LATENCY.into()), DELIVERY_BUCKETS))
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
/// `1` while this replica answers `/readyz` with 200.
pub const READY: &str = "roomcast_ready";
/// `1` while a Redis client's connection is up, by `client` (commands, subscriber); only with Redis.
pub const REDIS_CONNECTED: &str = "roomcast_redis_connected";
/// Seconds a Redis operation took, by `op` (publish, subscribe, history, presence, connections),
/// failures included.
pub const REDIS_LATENCY: &str = "roomcast_redis_command_duration_seconds";
/// Seconds to answer an HTTP request on the API and admin listeners, by `listener`, `route`
/// (a known path, else `other`) and `status` class (`2xx`…).
pub const HTTP_LATENCY: &str = "roomcast_http_request_duration_seconds";
/// Tokio worker threads.
pub const TOKIO_WORKERS: &str = "roomcast_tokio_workers";
/// Tokio tasks alive (each socket has a few).
pub const TOKIO_ALIVE_TASKS: &str = "roomcast_tokio_alive_tasks";
/// Tasks waiting in tokio's global queue: a steadily high value means the workers cannot keep up.
pub const TOKIO_GLOBAL_QUEUE: &str = "roomcast_tokio_global_queue_depth";
/// Resident memory, bytes (Prometheus' standard process metric names).
pub const PROCESS_RSS: &str = "process_resident_memory_bytes";
/// Open file descriptors: each socket holds one.
pub const PROCESS_OPEN_FDS: &str = "process_open_fds";
/// The open file descriptor limit (soft).
pub const PROCESS_MAX_FDS: &str = "process_max_fds";
/// CPU time, user and system, seconds.
pub const PROCESS_CPU: &str = "process_cpu_seconds_total";
/// OS threads.
pub const PROCESS_THREADS: &str = "process_threads";
/// Fetches of a JWKS URL, by `jwks` (the issuer, or `default`) and `result` (`updated`,
/// `not_modified`, `error`).
pub const JWKS_FETCHES: &str = "roomcast_jwks_fetches_total";
/// Revocations this replica holds.
pub const REVOCATIONS: &str = "roomcast_revocations";
/// Control API requests (`POST /v1/disconnect`), by `op` and `result` (`ok` or an error code).
pub const CONTROLS: &str = "roomcast_control_requests_total";
/// Keys held from a JWKS URL, by `jwks`.
pub const JWKS_KEYS: &str = "roomcast_jwks_keys";
/// Lifecycle events this replica appended to the event log, by `type`.
pub const EVENTS: &str = "roomcast_events_total";
/// Lifecycle events lost before the event log, by `reason` (`rate_limited`, `queue_full`,
/// `log_unavailable`).
pub const EVENTS_DROPPED: &str = "roomcast_events_dropped_total";
/// Webhook requests, by `result` (`delivered`, `failed`).
pub const WEBHOOK_REQUESTS: &str = "roomcast_webhook_requests_total";
/// Client events forwarded to the backend, by `kind` (`rpc`: RPCs and fire-and-forget events,
/// `publish`: the publish proxy) and `result`: `ok` and the RPC error codes
/// (`rpc_timeout`, `rpc_unavailable`, `rpc_rejected`, `rate_limited`) for RPCs, `forwarded` and
/// `forward_failed` for fire-and-forget events. Socket-level refusals (the socket's RPCs in
/// flight, its event budget) are in roomcast_client_events_total.
pub const RPC_CALLS: &str = "roomcast_rpc_calls_total";
/// Seconds from forwarding a client event to the backend's answer (or the failure), by `kind`
/// and `result`.
pub const RPC_LATENCY: &str = "roomcast_rpc_duration_seconds";
/// Connect proxy answers, by `result`: `hit` (cached), `miss` (asked), `coalesced` (waited for
/// an ask of the same token in flight), `full` (not cached: the cache is full).
pub const CONNECT_PROXY_CACHE: &str = "roomcast_connect_proxy_cache_total";
/// Events delivered to webhooks.
pub const WEBHOOK_EVENTS: &str = "roomcast_webhook_events_total";
/// Events the event log's cap trimmed before a webhook delivered them.
pub const WEBHOOK_DROPPED: &str = "roomcast_webhook_dropped_total";
/// Webhook request latency, seconds.
pub const WEBHOOK_LATENCY: &str = "roomcast_webhook_latency_seconds";

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
    describe_gauge!(READY, "1 while /readyz answers 200 (Redis does not count unless ROOMCAST_READY_REQUIRES_REDIS).");
    describe_gauge!(REDIS_CONNECTED, "1 while a Redis client's connection is up, by client.");
    describe_histogram!(REDIS_LATENCY, "Seconds a Redis operation took, failures included, by op.");
    describe_histogram!(HTTP_LATENCY, "Seconds to answer an HTTP request on the API and admin listeners.");
    describe_gauge!(TOKIO_WORKERS, "Tokio worker threads.");
    describe_gauge!(TOKIO_ALIVE_TASKS, "Tokio tasks alive.");
    describe_gauge!(TOKIO_GLOBAL_QUEUE, "Tasks waiting in tokio's global queue.");
    describe_gauge!(PROCESS_RSS, "Resident memory size in bytes.");
    describe_gauge!(PROCESS_OPEN_FDS, "Number of open file descriptors.");
    describe_gauge!(PROCESS_MAX_FDS, "Maximum number of open file descriptors.");
    describe_gauge!(PROCESS_CPU, "Total user and system CPU time spent in seconds (a counter kept by the OS).");
    describe_gauge!(PROCESS_THREADS, "Number of OS threads.");
    describe_counter!(JWKS_FETCHES, "Fetches of a JWKS URL, by key set and result.");
    describe_counter!(CONTROLS, "Control API requests, by op and result.");
    describe_gauge!(REVOCATIONS, "Token revocations this replica holds.");
    describe_counter!(EVENTS, "Lifecycle events appended to the event log by this replica, by type.");
    describe_counter!(EVENTS_DROPPED, "Lifecycle events lost before the event log, by reason.");
    describe_counter!(WEBHOOK_REQUESTS, "Webhook requests, by result (delivered, failed).");
    describe_counter!(WEBHOOK_EVENTS, "Lifecycle events delivered to webhooks.");
    describe_counter!(WEBHOOK_DROPPED, "Lifecycle events the event log's cap trimmed before a webhook got them.");
    describe_histogram!(WEBHOOK_LATENCY, "Webhook request latency, seconds.");
    describe_counter!(RPC_CALLS, "Client events forwarded to the backend, by result.");
    describe_counter!(CONNECT_PROXY_CACHE, "Connect proxy answers, by result (hit, miss, coalesced, full).");
    describe_histogram!(RPC_LATENCY, "Seconds from forwarding a client event to the backend's answer, by result.");
    describe_gauge!(JWKS_KEYS, "Keys held from a JWKS URL, by key set.");
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
        WEBHOOK_EVENTS,
        WEBHOOK_DROPPED,
    ] {
        counter!(name).increment(0);
    }
    for name in [CONNECTIONS, LOCAL_ROOMS, BUS_SUBSCRIPTIONS, PRESENCE_QUEUE, READY, REVOCATIONS] {
        // `increment(0)`, not `set(0)`: never resets a gauge already in use.
        gauge!(name).increment(0.0);
    }
    let labelled: &[(&str, &str, &[&str])] = &[
        (
            CONNECTIONS_REJECTED,
            "reason",
            &[
                "token_missing",
                "token_invalid",
                "token_expired",
                "forbidden",
                "rate_limited",
                "too_many_connections",
                "token_revoked",
                "headers_too_large",
            ],
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
                "disconnected",
                "token_revoked",
            ],
        ),
        (ROOM_JOINS, "kind", &["tenant", "user", "project", "channel"]),
        (ROOM_LEAVES, "kind", &["tenant", "user", "project", "channel"]),
        (
            EVENTS_EMITTED,
            "event",
            &[
                "event",
                "typing",
                "presence",
                "roomcast:disconnect",
                "auth:expiring",
                "roomcast:joined",
                "roomcast:left",
            ],
        ),
        (
            AUTH_REFRESHES,
            "result",
            &["ok", "invalid_payload", "token_invalid", "token_expired", "forbidden", "token_revoked"],
        ),
        (
            BUS_REJECTED,
            "reason",
            &["malformed", "version", "room", "event_name", "too_large", "typing", "presence", "channel", "control"],
        ),
        (
            REDIS_ERRORS,
            "op",
            &["connection", "publish", "subscribe", "unsubscribe", "history", "presence", "control", "events"],
        ),
        (REDIS_RECONNECTS, "client", &["commands", "subscriber"]),
        (DELIVERIES, "type", &["event", "typing", "presence"]),
        (RESYNCS, "reason", &["gap", "epoch_changed"]),
        (RECOVERIES, "result", &["recovered", "not_recovered"]),
        (EVENTS, "type", &roomcast_publisher::events::types::ALL),
        (EVENTS_DROPPED, "reason", &["rate_limited", "queue_full", "log_unavailable"]),
        (WEBHOOK_REQUESTS, "result", &["delivered", "failed"]),
    ];
    for (name, label, values) in labelled {
        for value in *values {
            counter!(*name, *label => *value).increment(0);
        }
    }
    for event in [
        "join",
        "leave",
        "auth:refresh",
        "typing",
        "presence:list",
        "presence:update",
        "room:occupancy",
        "history",
        "rpc",
        "publish",
    ] {
        counter!(EVENTS_RECEIVED, "event" => event, "result" => "ok").increment(0);
    }
    for result in
        ["ok", "rpc_timeout", "rpc_unavailable", "rpc_rejected", "rate_limited", "forwarded", "forward_failed"]
    {
        counter!(RPC_CALLS, "kind" => "rpc", "result" => result).increment(0);
    }
    for kind in ["publish", "connect", "subscribe"] {
        for result in ["ok", "rpc_timeout", "rpc_unavailable", "rpc_rejected", "rate_limited"] {
            counter!(RPC_CALLS, "kind" => kind, "result" => result).increment(0);
        }
    }
    for result in ["hit", "miss", "coalesced", "full"] {
        counter!(CONNECT_PROXY_CACHE, "result" => result).increment(0);
    }
    for source in ["http", "client_typing", "client"] {
        counter!(PUBLISHES, "source" => source, "result" => "ok").increment(0);
    }
    counter!(CONTROLS, "op" => "disconnect", "result" => "ok").increment(0);
    for op in ["revoke", "join", "leave"] {
        counter!(CONTROLS, "op" => op, "result" => "ok").increment(0);
    }
}

/// What the console's replica list shows of this replica: a few of the figures above, kept
/// where this process can read them back (the Prometheus recorder cannot be read from).
#[derive(Debug)]
struct ReplicaFigures {
    connections: AtomicI64,
    rooms: AtomicU64,
    /// The slowest delivery since the last [`replica_figures`] read, µs after the envelope's `ts`.
    slowest_us: AtomicU64,
    /// Deliveries lost: slow consumers' full buffers, and envelopes the bus reader missed.
    dropped: AtomicU64,
    /// Events emitted to local sockets.
    delivered: AtomicU64,
}

static FIGURES: ReplicaFigures = ReplicaFigures {
    connections: AtomicI64::new(0),
    rooms: AtomicU64::new(0),
    slowest_us: AtomicU64::new(0),
    dropped: AtomicU64::new(0),
    delivered: AtomicU64::new(0),
};

/// This replica's figures for the console: `connections`, `rooms` (with local members),
/// `lag_ms` (the slowest delivery since the last read: how far behind its publisher the
/// replica delivers), `dropped` and `delivered` (totals since start).
pub(crate) fn replica_figures() -> serde_json::Value {
    serde_json::json!({
        "connections": FIGURES.connections.load(Ordering::Relaxed).max(0),
        "rooms": FIGURES.rooms.load(Ordering::Relaxed),
        "lag_ms": FIGURES.slowest_us.swap(0, Ordering::Relaxed) as f64 / 1000.0,
        "dropped": FIGURES.dropped.load(Ordering::Relaxed),
        "delivered": FIGURES.delivered.load(Ordering::Relaxed),
    })
}

pub(crate) fn connection_accepted() {
    counter!(CONNECTIONS_ACCEPTED).increment(1);
    gauge!(CONNECTIONS).increment(1.0);
    FIGURES.connections.fetch_add(1, Ordering::Relaxed);
}

pub(crate) fn connection_rejected(code: ErrorCode) {
    counter!(CONNECTIONS_REJECTED, "reason" => code.as_str()).increment(1);
}

pub(crate) fn disconnected(reason: &'static str) {
    counter!(DISCONNECTS, "reason" => reason).increment(1);
    gauge!(CONNECTIONS).decrement(1.0);
    FIGURES.connections.fetch_sub(1, Ordering::Relaxed);
}

pub(crate) fn room_joined(kind: RoomKind) {
    counter!(ROOM_JOINS, "kind" => kind.as_str()).increment(1);
}

pub(crate) fn room_left(kind: RoomKind) {
    counter!(ROOM_LEAVES, "kind" => kind.as_str()).increment(1);
}

pub(crate) fn local_rooms(count: usize) {
    gauge!(LOCAL_ROOMS).set(count as f64);
    FIGURES.rooms.store(count as u64, Ordering::Relaxed);
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
    FIGURES.dropped.fetch_add(lost, Ordering::Relaxed);
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
    FIGURES.delivered.fetch_add(members, Ordering::Relaxed);
}

/// `age_us`: microseconds since the envelope's `ts` (itself in ms: see [`DELIVERY_BUCKETS`]).
pub(crate) fn delivery_latency(age_us: u64) {
    histogram!(DELIVERY_LATENCY).record(age_us as f64 / 1_000_000.0);
    FIGURES.slowest_us.fetch_max(age_us, Ordering::Relaxed);
}

/// `result`: `updated`, `not_modified` or `error`.
pub(crate) fn jwks_fetched(jwks: &str, result: &'static str) {
    counter!(JWKS_FETCHES, "jwks" => jwks.to_owned(), "result" => result).increment(1);
}

/// Registers a JWKS URL's series at 0, so its first failure shows to `increase()`.
pub(crate) fn jwks_registered(jwks: &str) {
    for result in ["updated", "not_modified", "error"] {
        counter!(JWKS_FETCHES, "jwks" => jwks.to_owned(), "result" => result).increment(0);
    }
    gauge!(JWKS_KEYS, "jwks" => jwks.to_owned()).increment(0.0);
}

pub(crate) fn jwks_keys(jwks: &str, keys: usize) {
    gauge!(JWKS_KEYS, "jwks" => jwks.to_owned()).set(keys as f64);
}

pub(crate) fn revocations(held: usize) {
    gauge!(REVOCATIONS).set(held as f64);
}

/// A lifecycle event of `kind` went into the event log.
pub(crate) fn event_emitted(kind: &str) {
    let kind = roomcast_publisher::events::types::ALL.into_iter().find(|t| *t == kind).unwrap_or("other");
    counter!(EVENTS, "type" => kind).increment(1);
}

/// `n` lifecycle events lost before the log, for `reason`.
pub(crate) fn events_dropped(reason: &'static str, n: u64) {
    counter!(EVENTS_DROPPED, "reason" => reason).increment(n);
}

/// A webhook request ended: `events` delivered, or failed.
pub(crate) fn rpc(kind: &'static str, result: &'static str, start: std::time::Instant) {
    counter!(RPC_CALLS, "kind" => kind, "result" => result).increment(1);
    histogram!(RPC_LATENCY, "kind" => kind, "result" => result).record(start.elapsed().as_secs_f64());
}

pub(crate) fn connect_proxy_cache(result: &'static str) {
    counter!(CONNECT_PROXY_CACHE, "result" => result).increment(1);
}

pub(crate) fn webhook_request(delivered: bool, events: usize, took: std::time::Duration) {
    let result = if delivered { "delivered" } else { "failed" };
    counter!(WEBHOOK_REQUESTS, "result" => result).increment(1);
    histogram!(WEBHOOK_LATENCY).record(took.as_secs_f64());
    if delivered {
        counter!(WEBHOOK_EVENTS).increment(events as u64);
    }
}

/// `n` events the log's cap trimmed before a webhook delivered them.
pub(crate) fn webhook_dropped(n: u64) {
    if n > 0 {
        counter!(WEBHOOK_DROPPED).increment(n);
    }
}

/// Control requests (the control API), by `op` and `result`.
pub(crate) fn control(op: &'static str, result: &'static str) {
    counter!(CONTROLS, "op" => op, "result" => result).increment(1);
}

pub(crate) fn ready(ready: bool) {
    gauge!(READY).set(if ready { 1.0 } else { 0.0 });
}

pub(crate) fn redis_connected(client: &'static str, up: bool) {
    gauge!(REDIS_CONNECTED, "client" => client).set(if up { 1.0 } else { 0.0 });
}

/// `op`, timed into [`REDIS_LATENCY`] (from the first poll to the answer or the failure).
pub(crate) fn redis_timed<'a, T>(op: &'static str, f: impl Future<Output = T> + Send + 'a) -> BoxFuture<'a, T> {
    Box::pin(async move {
        let start = Instant::now();
        let out = f.await;
        histogram!(REDIS_LATENCY, "op" => op).record(start.elapsed().as_secs_f64());
        out
    })
}

/// One HTTP request answered on `listener`.
pub(crate) fn http_request(listener: &'static str, route: &'static str, status: u16, start: Instant) {
    let class = match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    histogram!(HTTP_LATENCY, "listener" => listener, "route" => route, "status" => class)
        .record(start.elapsed().as_secs_f64());
}

/// Refreshes the gauges read at scrape time: the tokio runtime's and the process's.
pub(crate) fn collect_runtime_and_process() {
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        let runtime = handle.metrics();
        gauge!(TOKIO_WORKERS).set(runtime.num_workers() as f64);
        gauge!(TOKIO_ALIVE_TASKS).set(runtime.num_alive_tasks() as f64);
        gauge!(TOKIO_GLOBAL_QUEUE).set(runtime.global_queue_depth() as f64);
    }
    let process = process::read();
    if let Some(rss) = process.rss_bytes {
        gauge!(PROCESS_RSS).set(rss as f64);
    }
    if let Some(fds) = process.open_fds {
        gauge!(PROCESS_OPEN_FDS).set(fds as f64);
    }
    if let Some(max) = process.max_fds {
        gauge!(PROCESS_MAX_FDS).set(max as f64);
    }
    if let Some(cpu) = process.cpu_seconds {
        // A counter the OS keeps, exported as a gauge: the `metrics` crate's counters are whole
        // numbers, and whole seconds are too coarse for `rate()` over a minute.
        gauge!(PROCESS_CPU).set(cpu);
    }
    if let Some(threads) = process.threads {
        gauge!(PROCESS_THREADS).set(threads as f64);
    }
}

/// The process's own figures from `/proc/self` (Linux); `None` where unavailable.
mod process {
    /// Clock ticks per second of `/proc/self/stat`'s times: `USER_HZ`, fixed at 100 by the
    /// Linux ABI on every architecture Roomcast builds for.
    const USER_HZ: f64 = 100.0;

    #[derive(Debug, Default)]
    pub struct Process {
        pub rss_bytes: Option<u64>,
        pub open_fds: Option<u64>,
        pub max_fds: Option<u64>,
        pub cpu_seconds: Option<f64>,
        pub threads: Option<u64>,
    }

    pub fn read() -> Process {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
        Process {
            rss_bytes: status_kb(&status, "VmRSS:").map(|kb| kb * 1024),
            threads: status_kb(&status, "Threads:"),
            // Less the descriptor the listing itself holds open.
            open_fds: std::fs::read_dir("/proc/self/fd").ok().map(|d| (d.count() as u64).saturating_sub(1)),
            max_fds: max_open_files(&limits),
            cpu_seconds: cpu_seconds(&stat),
        }
    }

    /// `VmRSS:    1234 kB` → 1234.
    pub(super) fn status_kb(status: &str, field: &str) -> Option<u64> {
        status.lines().find_map(|l| l.strip_prefix(field))?.split_whitespace().next()?.parse().ok()
    }

    /// `Max open files   20000   20000   files` → the soft limit.
    pub(super) fn max_open_files(limits: &str) -> Option<u64> {
        limits.lines().find_map(|l| l.strip_prefix("Max open files"))?.split_whitespace().next()?.parse().ok()
    }

    /// utime + stime (fields 14 and 15), after the command name, which may hold spaces.
    pub(super) fn cpu_seconds(stat: &str) -> Option<f64> {
        let after_name = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        // `after_name` starts at field 3 (state).
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        Some((utime + stime) as f64 / USER_HZ)
    }
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
    FIGURES.dropped.fetch_add(sockets, Ordering::Relaxed);
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

#[cfg(test)]
mod process_tests {
    use super::process::*;

    #[test]
    fn parses_proc_files() {
        let stat = "1234 (tokio (w) 1) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 100 1000 200";
        assert_eq!(cpu_seconds(stat), Some(3.0));
        assert_eq!(status_kb("Name:\tx\nVmRSS:\t  2048 kB\nThreads:\t9\n", "VmRSS:"), Some(2048));
        let limits =
            "Limit Soft Hard Units\nMax open files            20000                20000                files\n";
        assert_eq!(max_open_files(limits), Some(20000));
        assert_eq!(cpu_seconds("garbage"), None);
    }

    #[test]
    fn reads_this_process() {
        let p = read();
        if cfg!(target_os = "linux") {
            assert!(p.rss_bytes.unwrap() > 0 && p.open_fds.unwrap() > 0 && p.max_fds.unwrap() > 0, "{p:?}");
            assert!(p.threads.unwrap() >= 1 && p.cpu_seconds.is_some(), "{p:?}");
        }
    }
}
