//! Per-connection state, kept in the socket's extensions, and ending a connection from the
//! server side (`roomcast:disconnect`, then the close).
//!
//! [`Conn`] is Roomcast's own record of a socket: its identity, where it is in its lifecycle
//! and which rooms it joined. Cleanup reads this record, never what socketioxide still reports:
//! socketioxide empties a socket's rooms as soon as a *second* close arrives (a client's
//! DISCONNECT packet, then its transport closing), while our disconnect handler may still be
//! waiting for the socket's earlier operations to finish.

use std::{
    collections::BTreeSet,
    sync::{
        Arc, Mutex, OnceLock, RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

use roomcast_publisher::{Room, RoomKind};
use socketioxide::extract::SocketRef;

use tokio::{sync::Notify, time::Instant};

use crate::{
    auth::Identity,
    errors::{ClientError, DISCONNECT_EVENT, DisconnectReason, ErrorCode},
    limits::{EventClass, Policy, Refused, SocketLimits},
    metrics,
};

/// What the gateway remembers about one socket.
#[derive(Debug)]
pub struct Conn {
    /// Replaced on `auth:refresh`; readers clone the `Arc`, so a refresh never blocks them.
    identity: RwLock<Arc<Identity>>,
    /// Orders this socket's operations (see [`Turns`]).
    pub turns: Turns,
    /// The token-expiry deadlines currently scheduled for this socket, so a refresh or a
    /// disconnect can unschedule exactly them.
    pub deadlines: Mutex<Option<ExpiryDeadlines>>,
    /// Set when the server ends the connection, so the disconnect handler can count the
    /// disconnect under its real reason.
    closing: OnceLock<DisconnectReason>,
    /// The status this socket set with `presence:update`.
    status: Mutex<Status>,
    /// Channel rooms where this socket's last indicator was `typing: true`, so leaving or
    /// disconnecting can stop them.
    typing_in: Mutex<Vec<String>>,
    /// Lifecycle and rooms, under one lock so a close and a join cannot interleave.
    state: Mutex<ConnState>,
    /// What this socket may still send (per-class token buckets).
    limits: Mutex<SocketLimits>,
    /// RPCs of this socket in flight (see [`Conn::rpc_slot`]).
    rpcs: std::sync::atomic::AtomicUsize,
    /// Woken when the socket closes (see [`Conn::closed`]).
    closed: Notify,
}

/// One RPC of a socket in flight; its place is given back on drop.
#[derive(Debug)]
pub struct RpcSlot<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for RpcSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// A user's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Status {
    /// Active.
    #[default]
    Online,
    /// Idle or in the background.
    Away,
}

impl Status {
    /// The status as clients see it.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Online => "online",
            Status::Away => "away",
        }
    }

    /// Parses a client's status; anything else is `invalid_payload`.
    pub fn parse(s: &str) -> Result<Status, ClientError> {
        match s {
            "online" => Ok(Status::Online),
            "away" => Ok(Status::Away),
            _ => Err(ClientError::new(ErrorCode::InvalidPayload, "status must be \"online\" or \"away\"")),
        }
    }
}

/// Where a socket is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// Passed the connect middleware; the connect handler has not run yet.
    Authenticated,
    /// The connect handler ran (it holds or held the socket's first ticket).
    Connected,
    /// The disconnect handler was called: nothing may enter a room any more.
    Closed,
}

#[derive(Debug)]
struct ConnState {
    lifecycle: Lifecycle,
    /// Canonical names of the rooms this socket is in (automatic, project and channel).
    rooms: BTreeSet<String>,
    /// What a backend decided about this socket's rooms (control `join`/`leave`); boxed and
    /// absent until then, as most sockets never have any.
    backend: Option<Box<BackendRooms>>,
}

/// Rooms a backend put a socket in (kept whatever its token grants, across `auth:refresh`,
/// until it leaves them; at most the rooms a socket may be in) or took it out of (it may not
/// join them again by itself).
#[derive(Debug, Default)]
struct BackendRooms {
    granted: Vec<String>,
    barred: Vec<String>,
}

/// The most rooms a backend may bar one socket from; beyond, the socket is disconnected (a
/// backend that needs more should stop granting them in the token and revoke the old one).
pub const BACKEND_ROOMS: usize = 64;

/// The two token-lifetime deadlines of one socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpiryDeadlines {
    /// When `auth:expiring` is emitted.
    pub notice: Instant,
    /// When the socket is disconnected with `token_expired`.
    pub expire: Instant,
}

impl Conn {
    /// State for a socket that authenticated as `identity`.
    pub fn new(identity: Identity, limits: &Policy) -> Self {
        Conn {
            limits: Mutex::new(SocketLimits::new(limits, Instant::now())),
            identity: RwLock::new(Arc::new(identity)),
            // Ticket 0 is reserved for the connect work (see `Turns::first`).
            turns: Turns { next: AtomicU64::new(1), ..Turns::default() },
            deadlines: Mutex::new(None),
            closing: OnceLock::new(),
            status: Mutex::new(Status::Online),
            typing_in: Mutex::new(Vec::new()),
            state: Mutex::new(ConnState { lifecycle: Lifecycle::Authenticated, rooms: BTreeSet::new(), backend: None }),
            rpcs: Default::default(),
            closed: Notify::new(),
        }
    }

    /// A place for one more RPC in flight, unless `max` are.
    pub fn rpc_slot(&self, max: usize) -> Option<RpcSlot<'_>> {
        use std::sync::atomic::Ordering;
        self.rpcs.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).ok()?;
        Some(RpcSlot(&self.rpcs))
    }

    /// Takes a token for an event of `class` (see [`crate::limits`]).
    pub fn take_token(&self, policy: &Policy, class: EventClass) -> Result<(), Refused> {
        self.limits.lock().unwrap_or_else(|e| e.into_inner()).take(policy, class, Instant::now())
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ConnState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The connect handler starts: `false` if the socket already closed (then the disconnect
    /// handler has passed the first ticket on, and the connect work must not run).
    pub fn begin_connect(&self) -> bool {
        let mut state = self.state();
        match state.lifecycle {
            Lifecycle::Authenticated => {
                state.lifecycle = Lifecycle::Connected;
                true
            }
            _ => false,
        }
    }

    /// The socket is closing; returns where it was. From now on [`Conn::enter`] refuses.
    pub fn close(&self) -> Lifecycle {
        let was = std::mem::replace(&mut self.state().lifecycle, Lifecycle::Closed);
        self.closed.notify_waiters();
        was
    }

    /// Resolves once the socket is closing or closed: work done only for it (an RPC) stops.
    pub async fn closed(&self) {
        let notified = self.closed.notified();
        let mut notified = std::pin::pin!(notified);
        // Registered before the check: a close in between still wakes it.
        notified.as_mut().enable();
        if self.is_closed() {
            return;
        }
        notified.await;
    }

    /// Whether the socket is closing or closed.
    pub fn is_closed(&self) -> bool {
        self.state().lifecycle == Lifecycle::Closed
    }

    /// Records that the socket entered `room`: `false` if it already was there, or is closed.
    pub fn enter(&self, room: &str) -> bool {
        let mut state = self.state();
        state.lifecycle != Lifecycle::Closed && state.rooms.insert(room.to_owned())
    }

    /// Records that the socket left `room`: `false` if it was not there.
    pub fn exit(&self, room: &str) -> bool {
        self.state().rooms.remove(room)
    }

    /// A backend put this socket in `room`: it stays there across `auth:refresh` until the
    /// socket leaves it (bounded by the rooms a socket may be in), and is no longer barred.
    pub fn granted_by_backend_now(&self, room: &str) {
        let mut state = self.state();
        let backend = state.backend.get_or_insert_with(Default::default);
        backend.barred.retain(|r| r != room);
        if !backend.granted.iter().any(|r| r == room) {
            backend.granted.push(room.to_owned());
        }
    }

    /// The socket left `room` (by itself, by a refresh or by a backend): a grant by a backend
    /// ends with it.
    pub fn left_backend_room(&self, room: &str) {
        if let Some(backend) = self.state().backend.as_mut() {
            backend.granted.retain(|r| r != room);
        }
    }

    /// A backend took this socket out of `room`: it may not join it again by itself. `false`
    /// when [`BACKEND_ROOMS`] rooms are barred already (the caller then ends the connection:
    /// forgetting one would let it back in).
    pub fn bar(&self, room: &str) -> bool {
        let mut state = self.state();
        let backend = state.backend.get_or_insert_with(Default::default);
        backend.granted.retain(|r| r != room);
        if backend.barred.iter().any(|r| r == room) {
            return true;
        }
        if backend.barred.len() >= BACKEND_ROOMS {
            return false;
        }
        backend.barred.push(room.to_owned());
        true
    }

    /// Whether a backend put this socket in `room` (and it has not left it since).
    pub fn granted_by_backend(&self, room: &str) -> bool {
        self.state().backend.as_ref().is_some_and(|b| b.granted.iter().any(|r| r == room))
    }

    /// Whether a backend took this socket out of `room` (and did not put it back since).
    pub fn barred_by_backend(&self, room: &str) -> bool {
        self.state().backend.as_ref().is_some_and(|b| b.barred.iter().any(|r| r == room))
    }

    /// Whether the socket is in `room`.
    pub fn is_in(&self, room: &str) -> bool {
        self.state().rooms.contains(room)
    }

    /// The rooms the socket is in.
    pub fn rooms(&self) -> Vec<String> {
        self.state().rooms.iter().cloned().collect()
    }

    /// Number of project and channel rooms the socket is in (the automatic tenant and user
    /// rooms do not count against the cap).
    pub fn explicit_room_count(&self) -> usize {
        self.state()
            .rooms
            .iter()
            .filter(|r| matches!(Room::parse(r).map(|r| r.kind()), Some(RoomKind::Project | RoomKind::Channel)))
            .count()
    }

    /// The socket's presence status.
    pub fn status(&self) -> Status {
        *self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the socket's presence status.
    pub fn set_status(&self, status: Status) {
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = status;
    }

    /// Records the socket's latest indicator in `room`; returns whether it was typing there.
    pub fn set_typing(&self, room: &str, typing: bool) -> bool {
        let mut rooms = self.typing_in.lock().unwrap_or_else(|e| e.into_inner());
        let was = rooms.iter().position(|r| r == room);
        match (was, typing) {
            (None, true) => rooms.push(room.to_owned()),
            (Some(i), false) => {
                rooms.swap_remove(i);
            }
            _ => {}
        }
        was.is_some()
    }

    /// Records why the server is ending this connection (the first reason wins).
    pub fn set_closing_reason(&self, reason: DisconnectReason) {
        let _ = self.closing.set(reason);
    }

    /// Why the server ended this connection, if it did.
    pub fn closing_reason(&self) -> Option<DisconnectReason> {
        self.closing.get().copied()
    }

    /// The current identity.
    pub fn identity(&self) -> Arc<Identity> {
        self.identity.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the identity after a successful token refresh.
    pub fn set_identity(&self, identity: Identity) {
        *self.identity.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(identity);
    }
}

/// Tells the client why the server is ending its connection (`roomcast:disconnect`) and records
/// the reason for the disconnect metric. The shutdown drain stops here and closes transports
/// itself, which is what makes socket.io-client reconnect on its own.
pub(crate) fn notify_closing(socket: &SocketRef, reason: DisconnectReason) {
    if let Some(conn) = socket.extensions.get::<Arc<Conn>>() {
        conn.set_closing_reason(reason);
    }
    if socket.emit(DISCONNECT_EVENT, &reason.payload()).is_ok() {
        metrics::emitted(DISCONNECT_EVENT, 1);
    }
}

/// Whether `socket` is a console observer (see [`Identity::observer`]): the backend's
/// control instructions pass it by.
pub(crate) fn is_observer(socket: &SocketRef) -> bool {
    socket.extensions.get::<Arc<Conn>>().is_some_and(|conn| conn.identity().observer)
}

/// [`disconnect`] with fields added to the `roomcast:disconnect` payload (a backend's `reason`
/// and `message`).
pub(crate) fn disconnect_with(
    socket: SocketRef,
    reason: DisconnectReason,
    extra: &serde_json::Map<String, serde_json::Value>,
) {
    if let Some(conn) = socket.extensions.get::<Arc<Conn>>() {
        conn.set_closing_reason(reason);
    }
    let mut payload = reason.payload();
    if let Some(object) = payload.as_object_mut() {
        object.extend(extra.clone());
    }
    if socket.emit(DISCONNECT_EVENT, &payload).is_ok() {
        metrics::emitted(DISCONNECT_EVENT, 1);
    }
    let _ = socket.disconnect();
}

/// Tells the client why, then ends the connection the way `reason` calls for (see
/// [`DisconnectReason`]).
pub(crate) fn disconnect(socket: SocketRef, reason: DisconnectReason) {
    notify_closing(&socket, reason);
    let _ = socket.disconnect();
}

/// A ticket lock that runs a socket's operations in the order its packets arrived.
///
/// socketioxide spawns a task per incoming event, so without this a `join` followed at once
/// by a `leave` may run in either order. Handlers take a ticket synchronously, while
/// socketioxide is still reading packets in order, and wait for their turn before acting.
#[derive(Debug, Default)]
pub struct Turns {
    next: AtomicU64,
    serving: AtomicU64,
    advanced: Notify,
}

/// A place in a socket's queue of operations; obtained in packet order.
#[derive(Debug)]
#[must_use = "a ticket that is never used blocks every later operation of the socket"]
pub struct Ticket {
    conn: Arc<Conn>,
    number: u64,
    /// Cleared once the ticket became a [`Turn`], which then owns the duty to advance.
    armed: bool,
}

/// Held while an operation runs; the next one starts when it is dropped.
#[derive(Debug)]
pub struct Turn {
    conn: Arc<Conn>,
}

impl Turns {
    /// Operations that took a ticket and have not finished.
    pub fn pending(&self) -> u64 {
        self.next.load(Ordering::Acquire).saturating_sub(self.serving.load(Ordering::Acquire))
    }

    /// The ticket reserved for the connect handler: whatever the client sends, even in the
    /// instant between receiving CONNECT and the connect handler running, waits behind it.
    pub fn first(conn: &Arc<Conn>) -> Ticket {
        Ticket { conn: conn.clone(), number: 0, armed: true }
    }

    /// Takes the next ticket. Call it synchronously, in packet-arrival order.
    pub fn ticket(conn: &Arc<Conn>) -> Ticket {
        let number = conn.turns.next.fetch_add(1, Ordering::AcqRel);
        Ticket { conn: conn.clone(), number, armed: true }
    }
}

impl Ticket {
    /// Waits until every earlier ticket's operation has finished.
    pub async fn wait(mut self) -> Turn {
        let turns = &self.conn.turns;
        loop {
            let advanced = turns.advanced.notified();
            tokio::pin!(advanced);
            advanced.as_mut().enable();
            if turns.serving.load(Ordering::Acquire) == self.number {
                break;
            }
            advanced.await;
        }
        self.armed = false;
        Turn { conn: self.conn.clone() }
    }
}

impl Drop for Ticket {
    /// A ticket dropped before its turn (its task was cancelled) still has to pass the turn
    /// on, or the socket would stall; it waits for its turn in a detached task to do so.
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let conn = self.conn.clone();
        let number = self.number;
        if conn.turns.serving.load(Ordering::Acquire) == number {
            advance(&conn);
        } else if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _turn = Ticket { conn, number, armed: true }.wait().await;
            });
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        advance(&self.conn);
    }
}

fn advance(conn: &Conn) {
    conn.turns.serving.fetch_add(1, Ordering::AcqRel);
    conn.turns.advanced.notify_waiters();
}

/// Which of a socket's two token deadlines came due (the `expiry` module schedules them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Emit `auth:expiring`.
    Notice,
    /// Disconnect with `token_expired`.
    Expire,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Scope;
    use std::time::Duration;

    fn conn() -> Arc<Conn> {
        Arc::new(Conn::new(
            Identity {
                tenant: "t".into(),
                user: "u".into(),
                projects: Scope::All,
                channels: Scope::All,
                publish: Scope::Only(Vec::new()),
                exp: 0,
                jti: None,
                iat: None,
                claims: None,
                observer: false,
            },
            &crate::Config::for_tests("s").rate_limits(),
        ))
    }

    #[tokio::test]
    async fn operations_run_in_ticket_order_whatever_order_tasks_start() {
        let c = conn();
        let log = Arc::new(Mutex::new(Vec::new()));
        let tickets: Vec<_> = std::iter::once(Turns::first(&c)).chain((1..20).map(|_| Turns::ticket(&c))).collect();
        let mut tasks = Vec::new();
        // Start them in reverse, with the earliest ones slowest: order must still hold.
        for (i, ticket) in tickets.into_iter().enumerate().rev() {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                let _turn = ticket.wait().await;
                tokio::time::sleep(Duration::from_millis(if i < 3 { 20 } else { 0 })).await;
                log.lock().unwrap().push(i);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*log.lock().unwrap(), (0..20).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_socket_closed_before_its_connect_handler_ran_still_gets_cleaned_up() {
        // What `on_disconnect` does when the transport closed between the middleware and the
        // connect handler: close, pass the connect ticket on, queue the cleanup.
        let c = conn();
        assert_eq!(c.close(), Lifecycle::Authenticated);
        drop(Turns::first(&c));
        let cleanup = Turns::ticket(&c);
        assert!(!c.begin_connect(), "the connect work must not run after the close");
        assert!(!c.enter("tenant:t"), "a closed socket enters no room");
        tokio::time::timeout(Duration::from_secs(5), cleanup.wait()).await.expect("cleanup got its turn");
    }

    #[test]
    fn the_room_record_is_what_the_socket_joined_and_left() {
        let c = conn();
        assert!(c.begin_connect());
        assert!(c.enter("tenant:t") && c.enter("tenant:t:project:p") && c.enter("tenant:t:channel:c"));
        assert!(!c.enter("tenant:t:project:p"), "already there");
        assert_eq!(c.explicit_room_count(), 2, "the tenant room does not count against the cap");
        assert!(c.exit("tenant:t:project:p") && !c.exit("tenant:t:project:p"));
        assert_eq!(c.close(), Lifecycle::Connected);
        assert!(c.is_closed() && !c.begin_connect());
        assert_eq!(c.rooms(), ["tenant:t", "tenant:t:channel:c"], "kept for the cleanup");
    }

    #[tokio::test]
    async fn a_dropped_ticket_does_not_stall_later_ones() {
        let c = conn();
        let first = Turns::first(&c);
        let second = Turns::ticket(&c);
        let third = Turns::ticket(&c);
        drop(second);
        drop(first.wait().await);
        tokio::time::timeout(Duration::from_secs(5), third.wait()).await.expect("third ticket got its turn");
    }
}
