//! ## A [`Socket`] represents a client connection to the server
//!
//! It can be used to :
//! * Emit binary or string data
//! * Get a reference to the request made to connect to the socket.io server
//! * Close the connection
//!
//! #### Example :
//! ```rust
//! # use bytes::Bytes;
//! # use engineioxide::service::EngineIoService;
//! # use engineioxide::handler::EngineIoHandler;
//! # use engineioxide::{Socket, DisconnectReason, Str};
//! # use std::sync::{Mutex, Arc};
//! # use std::sync::atomic::{AtomicUsize, Ordering};
//! // Global state
//! #[derive(Debug, Default)]
//! struct MyHandler {
//!     user_cnt: AtomicUsize,
//! }
//!
//! // Socket state
//! #[derive(Debug, Default)]
//! struct SocketState {
//!     id: Mutex<String>,
//! }
//!
//! impl EngineIoHandler for MyHandler {
//!     type Data = SocketState;
//!
//!     fn on_connect(self: Arc<Self>, socket: Arc<Socket<SocketState>>) {
//!         // Get the request made to initialize the connection
//!         // and check that the authorization header is correct
//!         let connected = socket.req_parts.headers.get("Authorization")
//!             .map(|a| a == "mysuperpassword!").unwrap_or_default();
//!         // Close the socket if the authentication is invalid
//!         if !connected {
//!             socket.close(DisconnectReason::TransportError);
//!             return;
//!         }
//!
//!         let cnt = self.user_cnt.fetch_add(1, Ordering::Relaxed) + 1;
//!         // Emit string data to the client
//!         socket.emit(cnt.to_string()).ok();
//!     }
//!     fn on_disconnect(&self, socket: Arc<Socket<SocketState>>, reason: DisconnectReason) {
//!         let cnt = self.user_cnt.fetch_sub(1, Ordering::Relaxed) - 1;
//!     }
//!     fn on_message(self: &Arc<Self>, msg: Str, socket: Arc<Socket<SocketState>>) {
//!         *socket.data.id.lock().unwrap() = msg.into(); // bind a provided user id to a socket
//!     }
//!     fn on_binary(self: &Arc<Self>, data: Bytes, socket: Arc<Socket<SocketState>>) { }
//! }
//!
//! let svc = EngineIoService::new(Arc::new(MyHandler::default()));
//! ```
#[cfg(any(feature = "v3", feature = "__test_harness"))]
use std::sync::Arc;
use std::{
    collections::VecDeque,
    fmt::Debug,
    sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering},
    time::Duration,
};

use crate::{config::EngineIoConfig, errors::Error};
use bytes::Bytes;
use engineioxide_core::{Packet, PacketBuf, ProtocolVersion, Str, TransportType};
#[cfg(feature = "v3")]
use futures_util::FutureExt;
use futures_util::task::AtomicWaker;
use http::request::Parts;
use smallvec::{SmallVec, smallvec};
#[cfg(any(feature = "v3", feature = "__test_harness"))]
use tokio::sync::mpsc;
#[cfg(feature = "v3")]
use tokio::sync::mpsc::Receiver;
use tokio::sync::{Mutex, mpsc::error::TrySendError};

use crate::queue;

pub use engineioxide_core::Sid;
use tokio_util::sync::CancellationToken;

/// A [`DisconnectReason`] represents the reason why a [`Socket`] was closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The client gracefully closed the connection
    TransportClose,
    /// The client sent multiple polling requests at the same time (it is forbidden according to the engine.io protocol)
    MultipleHttpPollingError,
    /// The client sent a bad request / the packet could not be parsed correctly
    PacketParsingError,
    /// An error occured in the transport layer
    /// (e.g. the client closed the connection without sending a close packet)
    TransportError,
    /// The client did not respond to the heartbeat
    HeartbeatTimeout,
    /// The server is being closed
    ClosingServer,
    /// The client read slower than the server wrote: its outgoing buffer was full
    /// (see [`EngineIoConfig::max_buffer_bytes`])
    SlowConsumer,
}

/// Convert an [`Error`] to a [`DisconnectReason`] if possible
/// This is used to notify the [`Handler`](crate::handler::EngineIoHandler) of the reason why a [`Socket`] was closed
/// If the error cannot be converted to a [`DisconnectReason`] it means that the error was not fatal and the [`Socket`] can be kept alive
impl From<&Error> for Option<DisconnectReason> {
    fn from(err: &Error) -> Self {
        use Error::*;
        match err {
            WsTransport(_) => Some(DisconnectReason::TransportError),
            BadPacket(_) | PacketParse(_) => Some(DisconnectReason::PacketParsingError),
            HeartbeatTimeout => Some(DisconnectReason::HeartbeatTimeout),
            _ => None,
        }
    }
}

/// A permit to emit a message to the client.
/// A permit holds a place in the internal channel to send one packet to the client.
pub struct Permit<'a> {
    inner: queue::Permit<'a, PacketBuf>,
    queued_bytes: &'a AtomicUsize,
}
impl Permit<'_> {
    #[inline]
    fn send(self, packets: PacketBuf) {
        self.queued_bytes
            .fetch_add(buffered_len(&packets), Ordering::Relaxed);
        self.inner.send(packets);
    }
    /// Consume the permit and emit a message to the client.
    #[inline]
    pub fn emit(self, msg: Str) {
        self.send(smallvec![Packet::Message(msg)]);
    }
    /// Consume the permit and emit a binary message to the client.
    #[inline]
    pub fn emit_binary(self, data: Bytes) {
        self.send(smallvec![Packet::Binary(data)]);
    }

    /// Consume the permit and emit a message with multiple binary data to the client.
    ///
    /// It can be used to ensure atomicity when sending a string packet with adjacent binary packets.
    pub fn emit_many(self, msg: Str, data: VecDeque<Bytes>) {
        let mut packets = SmallVec::with_capacity(data.len() + 1);
        packets.push(Packet::Message(msg));
        for d in data {
            packets.push(Packet::Binary(d));
        }
        self.send(packets);
    }

    /// Consume the permit and emit a message with multiple binary data to the client.
    ///
    /// It can be used to ensure atomicity when sending a string packet with adjacent binary packets.
    pub fn emit_many_binary(self, bin: Bytes, data: Vec<Bytes>) {
        let mut packets = SmallVec::with_capacity(data.len() + 1);
        packets.push(Packet::Binary(bin));
        for d in data {
            packets.push(Packet::Binary(d));
        }
        self.send(packets);
    }
}

/// Bytes of message data in `packets`: what [`EngineIoConfig::max_buffer_bytes`] counts.
/// Control packets (ping, close, noop…) are a few bytes and bounded by the packet count.
pub(crate) fn buffered_len(packets: &PacketBuf) -> usize {
    packets
        .iter()
        .map(|packet| match packet {
            Packet::Message(msg) => msg.len(),
            Packet::Binary(bin) | Packet::BinaryV3(bin) => bin.len(),
            _ => 0,
        })
        .sum()
}

#[derive(Debug)]
pub(crate) struct InternalRx {
    pub buffered_rx: queue::Receiver<PacketBuf>,
    pub peeked_packet: Option<PacketBuf>,
}

impl InternalRx {
    fn new(buffered_rx: queue::Receiver<PacketBuf>) -> Self {
        Self {
            buffered_rx,
            peeked_packet: None,
        }
    }
}

/// The latest volatile [`PacketBuf`] not yet taken by the transport: a new one replaces it.
///
/// Taken only by the holder of the socket's `internal_rx` lock, so one waker is enough. (A
/// `tokio::sync::watch` channel did this before, at 432 bytes per socket in its own
/// allocation: it is built for many receivers.)
#[derive(Debug, Default)]
pub(crate) struct VolatileSlot {
    packets: std::sync::Mutex<Option<PacketBuf>>,
    waker: AtomicWaker,
}

impl VolatileSlot {
    fn put(&self, packets: PacketBuf) {
        *self.lock() = Some(packets);
        self.waker.wake();
    }

    /// The packets put since the last take; otherwise the task is woken by the next put.
    pub(crate) fn poll_take(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<PacketBuf> {
        if let Some(packets) = self.lock().take() {
            return std::task::Poll::Ready(packets);
        }
        self.waker.register(cx.waker());
        // A put between the first look and the registration woke the previous waker, if any.
        match self.lock().take() {
            Some(packets) => std::task::Poll::Ready(packets),
            None => std::task::Poll::Pending,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<PacketBuf>> {
        self.packets.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A [`Socket`] represents a client connection to the server.
/// It is agnostic to the [`TransportType`].
///
/// It handles :
/// * the packet communication between with the `Engine`
///   and the user defined [`Handler`](crate::handler::EngineIoHandler).
/// * the user defined [`Data`](crate::handler::EngineIoHandler::Data) bound to the socket.
/// * the heartbeat job that verify that the connection is still up by sending packets periodically.
pub struct Socket<D>
where
    D: Default + Send + Sync + 'static,
{
    /// The socket id
    pub id: Sid,

    /// The protocol version used by the socket
    pub protocol: ProtocolVersion,

    /// The transport type represented as a bitfield
    /// It is represented as a bitfield to allow the use of an [`AtomicU8`] so it can be shared between threads
    /// without any mutex
    transport: AtomicU8,

    /// Whether the socket is currently upgrading to a new transport.
    upgrading: AtomicBool,

    /// Channel to send [`PacketBuf`] to the connection
    ///
    /// It is used and managed by the [`EngineIo`](crate::engine) struct depending on the transport type
    ///
    /// It is locked if [`EngineIo`](crate::engine) is currently reading from it :
    /// * In case of polling transport it will be locked and released for each request
    /// * In case of websocket transport it will always be locked until the connection is closed
    ///
    /// Closing behavior is driven by the [`Socket::cancellation_token`].
    ///
    /// The channel is made of a [`SmallVec`] of [`Packet`]s so that adjacent packets can be sent atomically.
    pub(crate) internal_rx: Mutex<InternalRx>,

    /// Channel to send [PacketBuf] to the internal connection
    pub(crate) internal_tx: queue::Sender<PacketBuf>,

    /// Bytes of messages in `internal_tx` that no transport has taken yet.
    queued_bytes: AtomicUsize,
    /// [`EngineIoConfig::max_buffer_bytes`]: when set, a full buffer closes the socket.
    max_buffer_bytes: Option<usize>,
    /// Set once the socket was found to be a slow consumer, so that it is closed only once.
    slow: AtomicBool,
    /// Until when the websocket transport stops reading this socket's messages
    /// ([`Socket::pause_reading`]).
    read_paused_until: std::sync::Mutex<Option<tokio::time::Instant>>,

    /// Volatile [PacketBuf]s, which bypass the internal buffer: only the latest one is
    /// retained; subsequent volatile sends overwrite the previous one.
    pub(crate) volatile: VolatileSlot,

    /// Set by every pong (v4), cleared when a ping is sent: the engine's heartbeat driver
    /// ([`crate::heartbeat`]) checks it when the pong is due.
    pub(crate) pong: AtomicBool,
    /// This socket's entry in the heartbeat driver's queue, while it has one.
    pub(crate) heartbeat_key: std::sync::Mutex<Option<tokio_util::time::delay_queue::Key>>,

    /// Internal channel to receive Ping [`Packets`](Packet) (v3 protocol) in the v3 heartbeat job,
    /// which is running in a separate task
    #[cfg(feature = "v3")]
    heartbeat_rx: Mutex<Receiver<()>>,
    /// Channel to send Ping [`Packets`](Packet) (v3 protocol) from the connexion to the heartbeat job
    /// which is running in a separate task
    #[cfg(feature = "v3")]
    pub(crate) heartbeat_tx: mpsc::Sender<()>,

    /// A cancellation token that will be triggered when the socket is being closed.
    pub(crate) cancellation_token: CancellationToken,

    /// Function to call when the socket is closed
    close_fn: Box<dyn Fn(Sid, DisconnectReason) + Send + Sync>,
    /// User data bound to the socket
    pub data: D,

    /// Http Request data used to create a socket
    pub req_parts: Parts,

    /// If the client supports binary packets (via polling XHR2)
    pub(crate) supports_binary: bool,
}

impl<D> Socket<D>
where
    D: Default + Send + Sync + 'static,
{
    pub(crate) fn new(
        protocol: ProtocolVersion,
        transport: TransportType,
        config: &EngineIoConfig,
        req_parts: Parts,
        close_fn: Box<dyn Fn(Sid, DisconnectReason) + Send + Sync>,
        supports_binary: bool,
    ) -> Self {
        let (internal_tx, internal_rx) = queue::channel(config.max_buffer_size);
        #[cfg(feature = "v3")]
        let (heartbeat_tx, heartbeat_rx) = mpsc::channel(1);

        Self {
            id: Sid::new(),
            protocol,
            transport: AtomicU8::new(transport as u8),
            upgrading: AtomicBool::new(false),

            internal_rx: Mutex::new(InternalRx::new(internal_rx)),
            internal_tx,
            queued_bytes: AtomicUsize::new(0),
            max_buffer_bytes: config.max_buffer_bytes,
            slow: AtomicBool::new(false),
            read_paused_until: std::sync::Mutex::new(None),

            volatile: VolatileSlot::default(),

            pong: AtomicBool::new(false),
            heartbeat_key: std::sync::Mutex::new(None),
            #[cfg(feature = "v3")]
            heartbeat_rx: Mutex::new(heartbeat_rx),
            #[cfg(feature = "v3")]
            heartbeat_tx,
            cancellation_token: CancellationToken::new(),

            close_fn,

            data: D::default(),
            req_parts,

            supports_binary,
        }
    }

    /// Sends a packet to the connection.
    pub(crate) fn send(&self, packet: Packet) -> Result<(), TrySendError<Packet>> {
        #[cfg(feature = "tracing")]
        tracing::debug!(?packet, "sending packet");

        let mut packets: PacketBuf = smallvec![packet];
        let len = buffered_len(&packets);
        if len > 0 && self.over_budget() {
            return Err(TrySendError::Full(packets.pop().unwrap()));
        }
        self.queued_bytes.fetch_add(len, Ordering::Relaxed);
        self.internal_tx.try_send(packets).map_err(|p| {
            self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
            match p {
                TrySendError::Full(mut p) => {
                    if len > 0 {
                        self.slow_consumer();
                    }
                    TrySendError::Full(p.pop().unwrap())
                }
                TrySendError::Closed(mut p) => TrySendError::Closed(p.pop().unwrap()),
            }
        })?;
        Ok(())
    }

    /// Whether the slow-consumer budget is exceeded; if so, the socket is being closed.
    /// A message is admitted while the buffer holds at most `max_buffer_bytes`, so the buffer
    /// never holds more than that plus one message per concurrent sender.
    fn over_budget(&self) -> bool {
        if self.slow.load(Ordering::Relaxed) {
            return true;
        }
        match self.max_buffer_bytes {
            Some(max) if self.queued_bytes.load(Ordering::Relaxed) > max => {
                self.slow_consumer();
                true
            }
            _ => false,
        }
    }

    /// Closes the socket as a slow consumer (once), when the policy is on.
    fn slow_consumer(&self) {
        if self.max_buffer_bytes.is_some() && !self.slow.swap(true, Ordering::Relaxed) {
            #[cfg(feature = "tracing")]
            tracing::debug!(sid = ?self.id, queued_bytes = self.buffered_bytes(), "slow consumer, closing");
            self.close(DisconnectReason::SlowConsumer);
        }
    }

    /// Bytes of messages waiting in this socket's outgoing buffer (not yet taken by the
    /// transport). The transport's own write buffer and the kernel's are not counted.
    pub fn buffered_bytes(&self) -> usize {
        self.queued_bytes.load(Ordering::Relaxed)
    }

    /// Packets waiting in this socket's outgoing buffer (out of
    /// [`EngineIoConfig::max_buffer_size`]): with [`Socket::buffered_bytes`], what a sender
    /// that must not overflow the buffer (a replay of many messages) can pace itself by.
    pub fn buffered_packets(&self) -> usize {
        self.internal_tx.max_capacity() - self.internal_tx.capacity()
    }

    /// Stops reading this socket's incoming messages for `duration` (from now, or longer if a
    /// pause is already running): inbound backpressure for a client that sends faster than
    /// the application accepts. Its messages wait in the kernel's buffers and then in the
    /// client's, instead of costing the server a parse and a refusal each. Applies to the
    /// websocket transport (a polling client's next POST is bounded by `max_payload`); keep
    /// pauses well under the ping timeout, as pongs are not read meanwhile either.
    pub fn pause_reading(&self, duration: Duration) {
        let until = tokio::time::Instant::now() + duration;
        let mut paused = self
            .read_paused_until
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if paused.is_none_or(|current| current < until) {
            *paused = Some(until);
        }
    }

    /// The end of a pause set by [`Socket::pause_reading`], if one is running (and clears it).
    pub(crate) fn take_read_pause(&self) -> Option<tokio::time::Instant> {
        self.read_paused_until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// Called by the transports for each [`PacketBuf`] taken from `internal_rx.buffered_rx`.
    pub(crate) fn dequeued(&self, packets: &PacketBuf) {
        let len = buffered_len(packets);
        if len > 0 {
            self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
        }
    }
    pub(crate) fn is_upgrading(&self) -> bool {
        self.upgrading.load(Ordering::Relaxed)
    }
    pub(crate) fn start_upgrade(&self) {
        self.upgrading.store(true, Ordering::Relaxed);
    }

    /// A pong (v4) or a ping (v3) from the client: it is alive.
    pub(crate) fn heartbeat_received(&self) {
        self.pong.store(true, Ordering::Relaxed);
        // A full channel means that the client is already known to be alive.
        #[cfg(feature = "v3")]
        self.heartbeat_tx.try_send(()).ok();
    }

    /// Spawn the v3 heartbeat job (v3 clients ping, the server answers; v4 sessions are
    /// driven by the engine's [`Heartbeats`](crate::heartbeat::Heartbeats) instead).
    ///
    /// Keep a handle to the job so that it can be aborted when the socket is closed
    #[cfg(feature = "v3")]
    pub(crate) fn spawn_heartbeat_v3(self: Arc<Self>, interval: Duration, timeout: Duration) {
        let cancellation_token = self.cancellation_token.clone();

        tokio::spawn(
            cancellation_token
                .run_until_cancelled_owned(async move {
                    if let Err(_e) = self.heartbeat_job_v3(interval, timeout).await {
                        self.close(DisconnectReason::HeartbeatTimeout);
                        #[cfg(feature = "tracing")]
                        tracing::debug!(id = ?self.id, "heartbeat error: {_e}");
                    }
                })
                .inspect(|_v| {
                    #[cfg(feature = "tracing")]
                    tracing::debug!(aborted = _v.is_none(), "heartbeat job completed");
                }),
        );
    }

    #[cfg(feature = "v3")]
    async fn heartbeat_job_v3(&self, interval: Duration, timeout: Duration) -> Result<(), Error> {
        let mut heartbeat_rx = self
            .heartbeat_rx
            .try_lock()
            .expect("Pong rx should be locked only once");

        #[cfg(feature = "tracing")]
        tracing::debug!(sid = ?self.id, "heartbeat receiver routine started");

        loop {
            tokio::time::timeout(interval + timeout, heartbeat_rx.recv())
                .await
                .map_err(|_| Error::HeartbeatTimeout)?
                .ok_or(Error::HeartbeatTimeout)?;

            #[cfg(feature = "tracing")]
            tracing::trace!(sid = ?self.id, "ping received, sending pong");
            self.internal_tx
                .try_send(smallvec![Packet::Pong])
                .map_err(|_| Error::HeartbeatTimeout)?;
        }
    }

    /// Returns true if the [`Socket`] has a websocket [`TransportType`]
    pub(crate) fn is_ws(&self) -> bool {
        self.transport.load(Ordering::Relaxed) == TransportType::Websocket as u8
    }
    /// returns true if the [`Socket`] has an HTTP [`TransportType`]
    pub(crate) fn is_http(&self) -> bool {
        self.transport.load(Ordering::Relaxed) == TransportType::Polling as u8
    }

    /// Sets the [`TransportType`] to WebSocket
    /// Used when the client upgrade the connection from HTTP to WebSocket
    pub(crate) fn upgrade_to_websocket(&self) {
        self.upgrading.store(false, Ordering::Relaxed);
        self.transport
            .store(TransportType::Websocket as u8, Ordering::Relaxed);
    }

    /// Returns the current [`TransportType`] of the [`Socket`]
    pub fn transport_type(&self) -> TransportType {
        TransportType::from(self.transport.load(Ordering::Relaxed))
    }

    /// Reserve `n` permits to emit multiple messages and ensure that there is enough
    /// space in the internal chan.
    ///
    /// If the internal chan is full, the function will return a [`TrySendError::Full`] error.
    /// If the socket is closed, the function will return a [`TrySendError::Closed`] error.
    #[inline]
    pub fn reserve(&self) -> Result<Permit<'_>, TrySendError<()>> {
        if self.slow.load(Ordering::Relaxed) {
            // Closed as a slow consumer: what follows is not "full", the socket is going away.
            return Err(TrySendError::Closed(()));
        }
        if self.over_budget() {
            return Err(TrySendError::Full(()));
        }
        let permit = self.internal_tx.try_reserve().inspect_err(|e| {
            if matches!(e, TrySendError::Full(())) {
                self.slow_consumer();
            }
        })?;
        Ok(Permit {
            inner: permit,
            queued_bytes: &self.queued_bytes,
        })
    }

    /// Emits a message to the client.
    ///
    /// If the transport is in websocket mode, the message is directly sent as a text frame.
    ///
    /// If the transport is in polling mode, the message is buffered and sent as a text frame to the next polling request.
    ///
    /// ⚠️ If the buffer is full or the socket is disconnected, an error will be returned with the original data
    pub fn emit(&self, msg: impl Into<Str>) -> Result<(), TrySendError<Str>> {
        self.send(Packet::Message(msg.into())).map_err(|e| match e {
            TrySendError::Full(p) => TrySendError::Full(p.into_message()),
            TrySendError::Closed(p) => TrySendError::Closed(p.into_message()),
        })
    }

    /// Immediately closes the socket and the underlying connection.
    /// The socket will be removed from the `Engine` and the [`Handler`](crate::handler::EngineIoHandler) will be notified.
    #[cfg_attr(feature = "tracing", tracing::instrument(skip(self)))]
    pub fn close(&self, reason: DisconnectReason) {
        // Try to send a close packet is the connection is still operational.
        // (Straight to the channel: a control packet, outside the slow-consumer budget.)
        self.internal_tx.try_send(smallvec![Packet::Close]).ok();

        (self.close_fn)(self.id, reason);
    }

    /// Returns true if the socket is closed
    /// It means that no more packets can be sent to the client
    pub fn is_closed(&self) -> bool {
        self.internal_tx.is_closed()
    }

    /// Wait for the socket to be fully closed
    pub async fn closed(&self) {
        self.internal_tx.closed().await
    }

    /// Emits a binary message to the client.
    ///
    /// If the transport is in websocket mode, the message is directly sent as a binary frame.
    ///
    /// If the transport is in polling mode, the message is buffered and sent as a text frame **encoded in base64** to the next polling request.
    ///
    /// ⚠️ If the buffer is full or the socket is disconnected, an error will be returned with the original data
    pub fn emit_binary<B: Into<Bytes>>(&self, data: B) -> Result<(), TrySendError<Bytes>> {
        if self.protocol == ProtocolVersion::V3 {
            self.send(Packet::BinaryV3(data.into()))
        } else {
            self.send(Packet::Binary(data.into()))
        }
        .map_err(|e| match e {
            TrySendError::Full(p) => TrySendError::Full(p.into_binary()),
            TrySendError::Closed(p) => TrySendError::Closed(p.into_binary()),
        })
    }

    /// Try to send a volatile message bypassing the internal buffer channel.
    /// Volatile messages may be dropped if the transport is not ready to
    /// receive them.
    ///
    /// Because volatile messages bypass the main mpsc buffer queue, they may
    /// arrive out of order relative to regular messages.
    ///
    /// Returns `true` if the message was queued for sending, `false` if it
    /// was dropped (channel full or transport shutting down).
    #[inline]
    pub fn emit_volatile(&self, msg: impl Into<Str>) -> bool {
        self.send_volatile(smallvec![Packet::Message(msg.into())])
    }

    /// Try to send a volatile binary message bypassing the internal buffer channel.
    /// Volatile messages may be dropped if the transport is not ready to
    /// receive them.
    ///
    /// Returns `true` if the message was queued for sending, `false` if it
    /// was dropped.
    #[inline]
    pub fn emit_binary_volatile<B: Into<Bytes>>(&self, data: B) -> bool {
        if self.protocol == ProtocolVersion::V3 {
            self.send_volatile(smallvec![Packet::BinaryV3(data.into())])
        } else {
            self.send_volatile(smallvec![Packet::Binary(data.into())])
        }
    }

    /// Try to send a volatile message with multiple adjacent binary payloads.
    /// The message and all binary payloads are sent atomically as a single
    /// volatile write.
    ///
    /// Returns `true` if the message was queued for sending, `false` if it
    /// was dropped.
    #[inline]
    pub fn emit_many_volatile(&self, msg: Str, data: VecDeque<Bytes>) -> bool {
        let mut packets = SmallVec::with_capacity(1 + data.len());
        packets.push(Packet::Message(msg));
        for bin in data {
            packets.push(Packet::Binary(bin));
        }
        self.send_volatile(packets)
    }

    /// `false` once the socket is closing: the transport then writes what is buffered, its
    /// close packet last, and nothing volatile.
    pub(crate) fn send_volatile(&self, packets: PacketBuf) -> bool {
        if self.cancellation_token.is_cancelled() || self.is_closed() {
            return false;
        }
        self.volatile.put(packets);
        true
    }
}

impl<D: Default + Send + Sync + 'static> std::fmt::Debug for Socket<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Socket")
            .field("sid", &self.id)
            .field("protocol", &self.protocol)
            .field("conn", &self.transport)
            .field("internal_rx", &self.internal_rx)
            .field("internal_tx", &self.internal_tx)
            .field("pong", &self.pong)
            .field("cancellation_token", &self.cancellation_token)
            .field("req_data", &self.req_parts)
            .finish()
    }
}

#[doc(hidden)]
#[cfg(feature = "__test_harness")]
impl<D> Drop for Socket<D>
where
    D: Default + Send + Sync + 'static,
{
    fn drop(&mut self) {
        #[cfg(feature = "tracing")]
        tracing::debug!("[sid={}] dropping socket", self.id);
    }
}

#[doc(hidden)]
#[cfg(feature = "__test_harness")]
impl<D> Socket<D>
where
    D: Default + Send + Sync + 'static,
{
    /// Create a dummy socket for testing purpose
    pub fn new_dummy(
        sid: Sid,
        close_fn: Box<dyn Fn(Sid, DisconnectReason) + Send + Sync>,
    ) -> Arc<Socket<D>> {
        let (s, mut rx) = Socket::new_dummy_piped(sid, close_fn, 1024);
        tokio::spawn(async move {
            while let Some(_el) = rx.recv().await {
                #[cfg(feature = "tracing")]
                tracing::debug!(?sid, ?_el, "emitting eio msg");
            }
        });
        s
    }

    /// Create a dummy socket for testing purpose with a
    /// receiver to get the packets sent to the client
    pub fn new_dummy_piped(
        sid: Sid,
        close_fn: Box<dyn Fn(Sid, DisconnectReason) + Send + Sync>,
        buffer_size: usize,
    ) -> (Arc<Socket<D>>, tokio::sync::mpsc::Receiver<Packet>) {
        let (internal_tx, internal_rx) = queue::channel(buffer_size);
        #[cfg(feature = "v3")]
        let (heartbeat_tx, heartbeat_rx) = mpsc::channel(1);

        let sock = Self {
            id: sid,
            protocol: ProtocolVersion::V4,
            transport: AtomicU8::new(TransportType::Websocket as u8),
            upgrading: AtomicBool::new(false),

            internal_rx: Mutex::new(InternalRx::new(internal_rx)),
            internal_tx,
            queued_bytes: AtomicUsize::new(0),
            max_buffer_bytes: None,
            slow: AtomicBool::new(false),
            read_paused_until: std::sync::Mutex::new(None),

            volatile: VolatileSlot::default(),

            pong: AtomicBool::new(false),
            heartbeat_key: std::sync::Mutex::new(None),
            #[cfg(feature = "v3")]
            heartbeat_rx: Mutex::new(heartbeat_rx),
            #[cfg(feature = "v3")]
            heartbeat_tx,
            cancellation_token: CancellationToken::new(),
            close_fn,

            data: D::default(),
            req_parts: http::Request::<()>::default().into_parts().0,

            supports_binary: true,
        };
        let sock = Arc::new(sock);

        let (tx, rx) = mpsc::channel(buffer_size);
        let sock_clone = sock.clone();
        tokio::spawn(async move {
            let mut internal_rx = sock_clone.internal_rx.try_lock().unwrap();
            while let Some(packets) = internal_rx.buffered_rx.recv().await {
                sock_clone.dequeued(&packets);
                for packet in packets {
                    tx.send(packet).await.unwrap();
                }
            }
        });

        (sock, rx)
    }
}
