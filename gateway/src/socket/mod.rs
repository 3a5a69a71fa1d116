//! The protocol edge: the Socket.IO surface. Authentication at connect, the events a client
//! may send (one module per event family: `rooms`, `refresh`, `typing`, `presence`),
//! and cleanup at disconnect. The domain modules below know nothing of Socket.IO events and
//! payloads; this is where client input is parsed and answered with a coded error.
//!
//! Handlers are plain functions returning a future: their synchronous part runs while
//! socketioxide reads packets in order, which is where each operation takes its [`Ticket`](crate::conn::Ticket);
//! the asynchronous part waits for its turn. A client's `join` then `leave` therefore always
//! apply in that order, whatever the scheduler does with the spawned tasks.

mod history;
mod payloads;
mod presence;
mod publish;
mod refresh;
mod rooms;
mod rpc;

pub(crate) use rooms::BackendControl;
mod typing;

#[cfg(feature = "fuzzing")]
pub(crate) use payloads::fuzz_payload;

use std::{future::Future, sync::Arc};

use serde_json::Value;
use socketioxide::{
    extract::{AckSender, Event, SocketRef, TryData},
    handler::ConnectHandler,
    socket::DisconnectReason as SioReason,
};
use tracing::Instrument;

use crate::{
    auth::{self, Identity},
    conn::{self, Conn, Lifecycle, Turns},
    errors::{ClientError, DisconnectReason, ErrorCode},
    expiry,
    limits::{EventClass, SharedBucket},
    logging::{Throttled, WARN_EVERY},
    metrics,
    state::Shared,
};
use roomcast_publisher::Room;

/// Most operations one socket may have waiting for their turn. A client that sends faster
/// than the gateway can apply gets `rate_limited` instead of growing an unbounded queue.
pub(super) const MAX_PENDING_OPERATIONS: u64 = 32;

/// The `retryAfterMs` of a refusal for too many operations in flight: their acks are what to
/// wait for, and they usually come within this.
const WAIT_FOR_ACKS: std::time::Duration = std::time::Duration::from_millis(100);

/// Longest a refused socket's reading is paused at once: half the refusal streak gap, so that a
/// client that keeps flooding is still refused often enough to be disconnected after
/// `ROOMCAST_RATE_LIMIT_DISCONNECT` (whatever its budget), well under any ping timeout (pongs
/// are not read meanwhile), and short enough that a client back within budget is read promptly.
const MAX_READ_PAUSE: std::time::Duration =
    std::time::Duration::from_millis(crate::limits::STREAK_GAP.as_millis() as u64 / 2);

/// Installs the handlers on the default namespace. Other namespaces are refused by
/// socketioxide with `connect_error` "Invalid namespace".
///
/// The handlers hold `gw` (not socketioxide's `State`): the server exists before the state
/// that delivers to it.
pub(crate) fn register(io: &socketioxide::SocketIo, gw: Shared) {
    let connect = {
        let gw = gw.clone();
        move |socket: SocketRef| on_connect(socket, gw.clone())
    };
    let authenticate = move |socket: SocketRef, TryData(auth): TryData<Value>| authenticate(socket, auth, gw.clone());
    io.ns("/", connect.with(authenticate));
}

/// The connect middleware: a socket that fails here gets a `connect_error` whose message is the
/// error code, and never reaches [`on_connect`].
async fn authenticate(
    socket: SocketRef,
    auth_payload: Result<Value, socketioxide::ParserError>,
    gw: Shared,
) -> Result<(), ConnectRejection> {
    // First: an observer is no connection of the tenant's, so not even its connect rate's (it
    // is bounded per replica instead) nor a `connection.refused` event.
    if socket.req_parts().extensions.get::<crate::http::ConsoleListener>().is_some() {
        return observe(socket, auth_payload, gw);
    }
    if let Some(Err(_)) = gw.connects.as_ref().map(SharedBucket::take) {
        refused(&gw, ErrorCode::RateLimited);
        tracing::debug!(sid = %socket.id, "connection refused: over ROOMCAST_CONNECT_RATE");
        return Err(ConnectRejection(ErrorCode::RateLimited));
    }
    let parts = socket.req_parts();
    let verified = if gw.config.proxy_only() {
        proxied(&gw, auth_payload.as_ref().ok(), &parts.headers, &parts.uri).await
    } else {
        match auth::find_token(auth_payload.as_ref().ok(), &parts.headers, &parts.uri) {
            Ok(token) => verified(&gw, &token, false, None).await,
            Err(e) => Err(e),
        }
    };
    match verified {
        Ok((identity, proxy_rooms)) => {
            if let Err(code) = gw.presence.connect(&identity.tenant, &identity.user).await {
                refused(&gw, code);
                tracing::info!(sid = %socket.id, tenant = %identity.tenant, user = %identity.user, %code, "connection refused: over a connection cap");
                return Err(ConnectRejection(code));
            }
            // Counted from here: released by the disconnect handler, or when the socket is
            // dropped if that never runs (it closed before socketioxide finished connecting).
            socket.extensions.insert(Arc::new(ConnectionSlot::new(&gw, &identity)));
            socket.extensions.insert(Arc::new(Conn::new(identity, &gw.limits)));
            if !proxy_rooms.is_empty() {
                socket.extensions.insert(Arc::new(ProxyRooms(proxy_rooms)));
            }
            handle(&socket, gw);
            Ok(())
        }
        Err(e) => {
            refused(&gw, e.code);
            tracing::info!(sid = %socket.id, code = %e.code, reason = %e.message, "connection rejected");
            Err(ConnectRejection(e.code))
        }
    }
}

/// Registers the socket's event and disconnect handlers. Called before socketioxide sends
/// CONNECT: it runs the connect handler only after sending it, and an event the client sends
/// in between would find no handler and be dropped.
fn handle(socket: &SocketRef, gw: Shared) {
    let on_event = {
        let gw = gw.clone();
        move |socket: SocketRef, Event(event): Event, TryData(payload): TryData<Value>, ack: AckSender| {
            on_event(socket, event, payload, ack, gw.clone())
        }
    };
    let on_disconnect = move |socket: SocketRef, reason: SioReason| on_disconnect(socket, reason, gw.clone());
    socket.on_fallback(on_event);
    socket.on_disconnect(on_disconnect);
}

/// A connection on the admin listener: only the console's observers connect there, with an
/// observer token (see [`Identity::observer`]). Not a connection of the tenant's: no
/// connection caps, no `connection.refused` event; bounded per replica instead.
fn observe(
    socket: SocketRef,
    auth_payload: Result<Value, socketioxide::ParserError>,
    gw: Shared,
) -> Result<(), ConnectRejection> {
    let parts = socket.req_parts();
    let admitted = auth::find_token(auth_payload.as_ref().ok(), &parts.headers, &parts.uri)
        .and_then(|token| observed(&gw, &token))
        .and_then(|identity| Ok((identity, admit_observer(&gw)?)));
    match admitted {
        Ok((identity, slot)) => {
            socket.extensions.insert(Arc::new(slot));
            socket.extensions.insert(Arc::new(Conn::new(identity, &gw.limits)));
            handle(&socket, gw);
            Ok(())
        }
        Err(e) => {
            metrics::connection_rejected(e.code);
            tracing::info!(sid = %socket.id, code = %e.code, reason = %e.message, "console observer refused");
            Err(ConnectRejection(e.code))
        }
    }
}

/// The observer identity `token` carries (at connect and at `auth:refresh`).
pub(crate) fn observed(gw: &Shared, token: &str) -> Result<Identity, ClientError> {
    let Some(observers) = &gw.observers else {
        return Err(ClientError::new(ErrorCode::TokenInvalid, "the console is off (ROOMCAST_CONSOLE_TOKENS)"));
    };
    observers.verify(token, roomcast_publisher::wire::now_ms() / 1000)
}

/// A place for one more observer connection on this replica.
fn admit_observer(gw: &Shared) -> Result<crate::observers::ObserverSlot, ClientError> {
    gw.observers.as_ref().and_then(|observers| observers.admit()).ok_or_else(|| {
        let message = format!("{} console observers are connected to this replica", crate::observers::MAX_OBSERVERS);
        ClientError::new(ErrorCode::TooManyConnections, message)
    })
}

/// A connection refused with `code`: counted, and a `connection.refused` lifecycle event.
fn refused(gw: &Shared, code: ErrorCode) {
    metrics::connection_rejected(code);
    if let Some(lifecycle) = &gw.lifecycle {
        lifecycle.connection_refused(code);
    }
}

/// One connection counted against the connection caps (`Presence::connect`), released once.
#[derive(Debug)]
struct ConnectionSlot {
    presence: Arc<crate::presence::Presence>,
    tenant: String,
    user: String,
    released: std::sync::atomic::AtomicBool,
}

impl ConnectionSlot {
    fn new(gw: &Shared, identity: &Identity) -> ConnectionSlot {
        ConnectionSlot {
            presence: gw.presence.clone(),
            tenant: identity.tenant.clone(),
            user: identity.user.clone(),
            released: Default::default(),
        }
    }

    /// Releases the slot (the first call only).
    async fn release(&self) {
        if !self.released.swap(true, std::sync::atomic::Ordering::AcqRel) {
            self.presence.disconnect(&self.tenant, &self.user).await;
        }
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        if !*self.released.get_mut()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let (presence, tenant, user) =
                (self.presence.clone(), std::mem::take(&mut self.tenant), std::mem::take(&mut self.user));
            runtime.spawn(async move { presence.disconnect(&tenant, &user).await });
        }
    }
}

/// A refused connection; its `Display` is the bare code, which becomes the client's
/// `connect_error` message.
#[derive(Debug)]
struct ConnectRejection(ErrorCode);

/// The identity `token` carries, if it verifies, is not revoked (`token_revoked`) and the
/// connect proxy, when there is one, admits it (`refresh`: at `auth:refresh`); with the rooms
/// the proxy adds, and its expiry when sooner than the token's.
pub(crate) async fn verified(
    gw: &Shared,
    token: &str,
    refresh: bool,
    cookie: Option<&str>,
) -> Result<(Identity, Vec<Room>), ClientError> {
    if gw.config.proxy_only() {
        let credentials = crate::connect_proxy::Credentials { token: Some(token), cookie };
        return identified(gw, credentials, refresh).await;
    }
    let mut identity = gw.verifier.verify(token).await?;
    if gw.revocations.is_revoked(&identity, roomcast_publisher::wire::now_ms()) {
        return Err(ClientError::new(ErrorCode::TokenRevoked, "this token was revoked; get a new one"));
    }
    let Some(proxy) = &gw.connect_proxy else { return Ok((identity, Vec::new())) };
    match proxy.check(&identity, token, refresh).await.map_err(rpc::client_error)? {
        crate::connect_proxy::Verdict::Admit { rooms, exp } => {
            identity.exp = exp.map_or(identity.exp, |exp| exp.min(identity.exp));
            if identity.exp <= roomcast_publisher::wire::now_ms() / 1000 {
                return Err(ClientError::new(
                    ErrorCode::TokenExpired,
                    "the backend's expiry for this connection has passed",
                ));
            }
            Ok((identity, rooms))
        }
        crate::connect_proxy::Verdict::Refuse(code) => Err(crate::connect_proxy::refused(&code)),
        // Only proxy-only mode asks for an identity.
        crate::connect_proxy::Verdict::Identified { .. } => {
            Err(ClientError::new(ErrorCode::RpcUnavailable, "the connect proxy answered an identity"))
        }
    }
}

/// Proxy-only mode: who the connect proxy says sent these credentials (a token, as for a JWT,
/// and the Cookie header; at least one), and the rooms it adds.
async fn proxied(
    gw: &Shared,
    auth_payload: Option<&Value>,
    headers: &axum::http::HeaderMap,
    uri: &axum::http::Uri,
) -> Result<(Identity, Vec<Room>), ClientError> {
    let token = match auth::find_token(auth_payload, headers, uri) {
        Ok(token) => Some(token),
        Err(e) if e.code == ErrorCode::TokenMissing => None,
        Err(e) => return Err(e),
    };
    let cookie = session_cookie(headers);
    let cookie = cookie.as_deref();
    if token.is_none() && cookie.is_none() {
        return Err(ClientError::new(ErrorCode::TokenMissing, "no token and no cookie to connect with"));
    }
    let credentials = crate::connect_proxy::Credentials { token: token.as_deref(), cookie };
    identified(gw, credentials, false).await
}

/// The request's Cookie headers as one (several are joined with `; `, RFC 9113 §8.2.3).
pub(crate) fn session_cookie(headers: &axum::http::HeaderMap) -> Option<String> {
    let parts: Vec<&str> = headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|c| c.to_str().ok())
        .filter(|c| !c.is_empty())
        .collect();
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// Proxy-only mode: the connect proxy's answer for `credentials`, revocations applied.
async fn identified(
    gw: &Shared,
    credentials: crate::connect_proxy::Credentials<'_>,
    refresh: bool,
) -> Result<(Identity, Vec<Room>), ClientError> {
    let Some(proxy) = &gw.connect_proxy else {
        return Err(ClientError::new(ErrorCode::RpcUnavailable, "no connect proxy is configured"));
    };
    match proxy.identify(credentials, refresh).await.map_err(rpc::client_error)? {
        crate::connect_proxy::Verdict::Identified { identity, rooms } => {
            if gw.revocations.is_revoked(&identity, roomcast_publisher::wire::now_ms()) {
                return Err(ClientError::new(ErrorCode::TokenRevoked, "this user's sessions were revoked"));
            }
            Ok((*identity, rooms))
        }
        crate::connect_proxy::Verdict::Refuse(code) => Err(crate::connect_proxy::refused(&code)),
        crate::connect_proxy::Verdict::Admit { .. } => {
            Err(ClientError::new(ErrorCode::RpcUnavailable, "the connect proxy answered no identity"))
        }
    }
}

/// Rooms the connect proxy put a connecting socket in, joined once it is connected.
#[derive(Debug)]
struct ProxyRooms(Vec<Room>);

impl std::fmt::Display for ConnectRejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.as_str())
    }
}

pub(super) fn conn_of(socket: &SocketRef) -> Option<Arc<Conn>> {
    socket.extensions.get::<Arc<Conn>>()
}

fn span(socket: &SocketRef, identity: &Identity) -> tracing::Span {
    tracing::info_span!("conn", sid = %socket.id, tenant = %identity.tenant, user = %identity.user)
}

fn on_connect(socket: SocketRef, gw: Shared) -> impl Future<Output = ()> + Send {
    let conn = conn_of(&socket);
    // `false` when the socket closed before this handler ran: the disconnect handler then
    // passed the first ticket on and there is nothing to set up.
    let begun = conn.as_ref().is_some_and(|conn| conn.begin_connect());
    // Joined synchronously, right after CONNECT went out: local delivery to the automatic rooms
    // starts now; the async part only waits for the bus to confirm the subscriptions.
    let joined = conn.as_ref().filter(|_| begun).map(|conn| {
        let identity = conn.identity();
        // An observer is no connection of the application's: not in roomcast_connections.
        if !identity.observer {
            metrics::connection_accepted();
        }
        // The verifier only accepts valid ids, so both rooms always build. An observer is no
        // one in the tenant: in neither.
        let auto = if identity.observer {
            Vec::new()
        } else {
            vec![Room::tenant(&identity.tenant), Room::user(&identity.tenant, &identity.user)]
        };
        let mut confirmations = Vec::new();
        for room in auto.iter().flatten() {
            let Some(confirmed) = rooms::enter_now(&socket, conn, &gw.membership, room) else { continue };
            confirmations.push(confirmed);
            // The user's connections are presence in their user room when lifecycle events want
            // them (`user.online`/`offline`); the disconnect's leave of the room ends it. Only
            // once the socket is in it: a socket closed meanwhile never leaves it.
            if room.kind() == roomcast_publisher::RoomKind::User {
                gw.presence.entered(room, &identity.user, conn.status());
            }
        }
        // Checked again now that the socket is in its rooms: a revocation that arrived while it
        // was connecting either is held already (seen here) or comes after this point (its
        // room scan finds the socket). The check at authentication alone leaves a gap.
        if !identity.observer && gw.revocations.is_revoked(&identity, roomcast_publisher::wire::now_ms()) {
            conn::disconnect(socket.clone(), DisconnectReason::TokenRevoked);
        }
        (Turns::first(conn), confirmations)
    });
    async move {
        let Some(conn) = conn else {
            tracing::error!(sid = %socket.id, "connected socket has no state; closing it");
            let _ = socket.disconnect();
            return;
        };
        let Some((ticket, confirmations)) = joined else { return };
        let identity = conn.identity();
        let span = span(&socket, &identity);
        async {
            let _turn = ticket.wait().await;
            for confirmed in confirmations {
                rooms::confirm(confirmed).await;
            }
            if let Some(extra) = socket.extensions.get::<Arc<ProxyRooms>>() {
                for room in &extra.0 {
                    rooms::backend_join(&socket, &gw, &conn, room).await;
                }
            }
            expiry::schedule(&gw, socket.id, &conn, identity.exp);
            tracing::debug!(transport = ?socket.transport_type(), "connected");
        }
        .instrument(span)
        .await
    }
}

/// Every client event goes through here: one handler per socket keeps the per-socket state small,
/// and gives unknown events an error ack instead of silence.
fn on_event(
    socket: SocketRef,
    event: String,
    payload: Result<Value, socketioxide::ParserError>,
    ack: AckSender,
    gw: Shared,
) -> impl Future<Output = ()> + Send {
    let conn = conn_of(&socket);
    // Forwarded to the backend: not a turn of the socket's queue (see `rpc`). Never an
    // observer's: the backend does not know it.
    let observer = conn.as_ref().is_some_and(|conn| conn.identity().observer);
    let forwarder = gw.rpc.clone().filter(|rpc| !observer && rpc.handles(&event));
    // Decided here, in packet order: the budget, then a place in the socket's queue.
    let admitted = conn.map(|conn| {
        if let Err(refused) = conn.take_token(&gw.limits, EventClass::of(&event)) {
            // Inbound backpressure: until a token is back, whatever else the client sends waits
            // in its own TCP buffers instead of costing this replica a parse and a refusal each
            // (a flood would otherwise take CPU from every tenant). vendor/PATCHES.md.
            pause_reading(&socket, &gw, refused.retry_after.min(MAX_READ_PAUSE));
            let error = ClientError::rate_limited("too many events of this kind; wait and retry", refused.retry_after);
            return Err((error, refused.disconnect));
        }
        if forwarder.is_some() {
            return Ok((None, conn));
        }
        if conn.turns.pending() >= MAX_PENDING_OPERATIONS {
            pause_reading(&socket, &gw, WAIT_FOR_ACKS);
            let error = ClientError::rate_limited("too many operations in flight; wait for their acks", WAIT_FOR_ACKS);
            return Err((error, false));
        }
        Ok((Some(Turns::ticket(&conn)), conn))
    });
    async move {
        let name = if forwarder.is_some() { "rpc" } else { known_event(&event) };
        let (ticket, conn) = match admitted {
            Some(Ok(admitted)) => admitted,
            Some(Err((error, disconnect))) => {
                metrics::client_event(name, Err(error.code));
                let _ = ack.send(&error.ack());
                if disconnect && !conn_of(&socket).is_some_and(|c| c.is_closed()) {
                    tracing::info!(sid = %socket.id, event = name, "disconnecting a socket that kept exceeding its rate limits");
                    conn::disconnect(socket, DisconnectReason::RateLimited);
                }
                return;
            }
            None => return,
        };
        let identity = conn.identity();
        let span = span(&socket, &identity);
        let (Some(ticket), None) = (ticket, &forwarder) else {
            let Some(rpc) = forwarder else { return };
            if conn.is_closed() {
                return;
            }
            let outcome = rpc::forward(&socket, &rpc, &conn, &event, payload, ack).instrument(span).await;
            metrics::client_event(name, outcome);
            return;
        };
        async move {
            let _turn = ticket.wait().await;
            if conn.is_closed() {
                // Sent after the socket began closing (its DISCONNECT packet came first): the
                // disconnect cleanup already ran, so acting now would leave state behind.
                tracing::debug!(event = name, "ignored: the connection is closing");
                return;
            }
            if name != "join" {
                // (`join` pauses half-way instead, after it entered the room.)
                debug_pause(&gw).await;
            }
            let payload =
                payload.map_err(|_| ClientError::new(ErrorCode::InvalidPayload, "payload is missing or not JSON"));
            let reply = match name {
                "typing" | "presence:update" | "publish" | "other" if identity.observer => Err(ClientError::new(
                    ErrorCode::Forbidden,
                    "a console observer only watches: join, leave, presence:list, room:occupancy, history, auth:refresh",
                )),
                "join" => rooms::join(&socket, &gw, &conn, payload).await,
                "leave" => rooms::leave(&socket, &gw, &conn, payload).await,
                "auth:refresh" => refresh::refresh(&socket, &gw, &conn, payload).await,
                "typing" => typing::typing(&gw, &conn, payload).await,
                "presence:list" => presence::list(&gw, &conn, payload).await,
                "room:occupancy" => presence::occupancy(&gw, &conn, payload).await,
                "history" => history::history(&gw, &conn, payload).await,
                "presence:update" => presence::update(&gw, &conn, payload),
                "publish" => publish::publish(&socket, &gw, &conn, payload).await,
                _ => {
                    Err(ClientError::new(ErrorCode::UnknownEvent, format!("unknown event {:?}", truncate(&event, 64))))
                }
            };
            metrics::client_event(name, reply.as_ref().map(|_| ()).map_err(|e| e.code));
            // No ack callback on the client side is fine: there is nobody to answer.
            let _ = match reply {
                Ok(body) => ack.send(&payloads::Success::from(body)),
                Err(error) => {
                    tracing::debug!(event = name, code = %error.code, reason = %error.message, "event refused");
                    ack.send(&error.ack())
                }
            };
        }
        .instrument(span)
        .await
    }
}

/// The testing-only pause of `ROOMCAST_DEBUG_OPERATION_DELAY` (see [`crate::Config`]).
pub(super) async fn debug_pause(gw: &Shared) {
    if let Some(delay) = gw.config.debug_operation_delay {
        tokio::time::sleep(delay).await;
    }
}

/// Stops reading `socket` for `pause`, at most half the ping timeout: pongs are not read
/// meanwhile either.
fn pause_reading(socket: &SocketRef, gw: &Shared, pause: std::time::Duration) {
    socket.pause_reading(pause.min(gw.config.ping_timeout / 2));
}

/// The metrics label for an event name: known names, else `other` (labels stay bounded).
fn known_event(event: &str) -> &'static str {
    match event {
        "join" => "join",
        "leave" => "leave",
        "auth:refresh" => "auth:refresh",
        "typing" => "typing",
        "presence:list" => "presence:list",
        "presence:update" => "presence:update",
        "room:occupancy" => "room:occupancy",
        "history" => "history",
        "publish" => "publish",
        _ => "other",
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn on_disconnect(socket: SocketRef, reason: SioReason, gw: Shared) -> impl Future<Output = ()> + Send {
    let conn = conn_of(&socket);
    // Closed synchronously, in packet order: whatever the client sent after this is ignored.
    // Always queued, never rate limited: cleanup must run after the socket's last operation.
    let ticket = conn.as_ref().map(|conn| {
        let was = conn.close();
        if was == Lifecycle::Authenticated {
            // The connect handler never ran and now never will: pass its ticket on for it.
            drop(Turns::first(conn));
        }
        (Turns::ticket(conn), was)
    });
    async move {
        let (Some(conn), Some((ticket, was))) = (conn, ticket) else {
            return;
        };
        let identity = conn.identity();
        let span = span(&socket, &identity);
        async {
            // First: the slot is free the moment the connection is gone, whatever is queued.
            if let Some(slot) = socket.extensions.get::<Arc<ConnectionSlot>>() {
                slot.release().await;
            }
            if let Some(slot) = socket.extensions.get::<Arc<crate::observers::ObserverSlot>>() {
                slot.release();
            }
            let _turn = ticket.wait().await;
            expiry::unschedule(&gw, socket.id, &conn);
            // Roomcast's own record, not `socket.rooms()`: socketioxide may have emptied those
            // already (a second close while this handler waited for its turn).
            for name in conn.rooms() {
                if let Some(room) = Room::parse(&name) {
                    rooms::leave_room(&socket, &gw, &conn, &room).await;
                }
            }
            if was == Lifecycle::Authenticated {
                return;
            }
            let label = disconnect_label(reason, &conn);
            if !identity.observer {
                metrics::disconnected(label);
            }
            tracing::debug!(reason = label, "disconnected");
            if reason == SioReason::SlowConsumer {
                // Once per interval, not per socket: a stalled network can take many at once.
                static SLOW: Throttled = Throttled::new(WARN_EVERY);
                if let Some(held) = SLOW.check() {
                    tracing::warn!(
                        similar_since = held,
                        "disconnected a slow consumer: its send buffer reached ROOMCAST_CLIENT_BUFFER_BYTES or ROOMCAST_CLIENT_BUFFER \
                         (roomcast_disconnects_total{{reason=\"slow_consumer\"}} counts them all)"
                    );
                }
            }
        }
        .instrument(span)
        .await
    }
}

fn disconnect_label(reason: SioReason, conn: &Conn) -> &'static str {
    match reason {
        SioReason::TransportClose => "client_closed",
        SioReason::ClientNSDisconnect => "client_disconnect",
        SioReason::TransportError => "transport_error",
        SioReason::HeartbeatTimeout => "heartbeat_timeout",
        SioReason::MultipleHttpPollingError | SioReason::PacketParsingError => "protocol_error",
        SioReason::ServerNSDisconnect => conn.closing_reason().map_or("server_disconnect", |r| r.code().as_str()),
        SioReason::ClosingServer => "server_shutdown",
        SioReason::SlowConsumer => "slow_consumer",
    }
}
