//! The ws transport module is responsible for handling websocket connections
//! The only public function is [`new_req`] which is used to upgrade a http request to a websocket connection
//!
//! Other functions are used internally to handle the websocket connection through tasks and channels
//! and to handle upgrade from polling to ws

use std::{
    ops::ControlFlow,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use futures_util::{SinkExt, StreamExt};
use http::{HeaderValue, Request, Response, StatusCode, request::Parts};
use smallvec::smallvec;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        self, Message,
        handshake::derive_accept_key,
        protocol::{Role, WebSocketConfig},
    },
};
use tokio_util::future::FutureExt as _;

use engineioxide_core::{Packet, PacketBuf, ProtocolVersion, Sid, Str, TransportType};

use crate::{
    DisconnectReason, Socket,
    body::ResponseBody,
    config::EngineIoConfig,
    engine::EngineIo,
    errors::Error,
    handler::EngineIoHandler,
    socket::InternalRx,
    transport::{make_open_packet, polling::rx_stream::EncoderStream},
};

/// Create a response for websocket upgrade
fn ws_response<B>(ws_key: &HeaderValue) -> Response<ResponseBody<B>> {
    let derived = derive_accept_key(ws_key.as_bytes());
    let sec = derived.parse::<HeaderValue>().unwrap();
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(http::header::UPGRADE, HeaderValue::from_static("websocket"))
        .header(
            http::header::CONNECTION,
            HeaderValue::from_static("Upgrade"),
        )
        .header(http::header::SEC_WEBSOCKET_ACCEPT, sec)
        .body(ResponseBody::empty_response())
        .unwrap() // we are only using constants
}

/// Upgrade a websocket request to create a websocket connection.
///
/// If a sid is provided in the query it means that is is upgraded from an existing HTTP polling request.
/// In this case the http polling request is closed and the SID is kept for the websocket
pub fn new_req<R: Send + 'static, B, H: EngineIoHandler>(
    engine: Arc<EngineIo<H>>,
    protocol: ProtocolVersion,
    sid: Option<Sid>,
    req: Request<R>,
) -> Result<Response<ResponseBody<B>>, Error> {
    let (parts, body) = req.into_parts();
    let req = Request::from_parts(parts.clone(), body);

    let ws_key = parts
        .headers
        .get("Sec-WebSocket-Key")
        .ok_or(Error::InvalidWebSocketKey)?
        .clone();

    tokio::spawn(upgraded(engine, Box::new((req, parts)), protocol, sid));

    Ok(ws_response(&ws_key))
}

/// The task of an upgraded HTTP connection: the websocket session's whole life.
///
/// The request and its parts come boxed, and this is not an `async fn`: a future keeps its
/// arguments (an async block, what it captures) for as long as it lives, even once moved out,
/// and this task lives as long as the connection.
#[allow(clippy::manual_async_fn)] // on purpose, as said above
fn upgraded<H: EngineIoHandler, R: Send + 'static>(
    engine: Arc<EngineIo<H>>,
    init: Box<(Request<R>, Parts)>,
    protocol: ProtocolVersion,
    sid: Option<Sid>,
) -> impl Future<Output = ()> + Send + 'static {
    async move {
        let (req, parts) = *init;
        let conn = hyper::upgrade::on(req)
            .await
            .map(hyper_util::rt::TokioIo::new);

        let res = match conn {
            Ok(conn) => on_init(engine.clone(), conn, protocol, sid, parts).await,
            Err(_e) => {
                #[cfg(feature = "tracing")]
                tracing::debug!("ws upgrade error: {}", _e);
                return;
            }
        };

        // A failed handshake has closed its session already (`handshake`).
        match res {
            Ok(_) => {
                #[cfg(feature = "tracing")]
                tracing::debug!(?sid, "ws closed")
            }
            Err(Error::MultipleWebsocketRequests) => {}
            Err(_e) => {
                #[cfg(feature = "tracing")]
                tracing::debug!(?sid, "ws closed with error: {_e}");
            }
        }
    }
}

/// Handle a websocket connection upgrade
///
/// Sends an open packet if it is not an upgrade from a polling request
///
/// Then reads and writes the websocket in this one future (see [`run`]) until the session closes.
pub fn on_init<H: EngineIoHandler, S>(
    engine: Arc<EngineIo<H>>,
    conn: S,
    protocol: ProtocolVersion,
    sid: Option<Sid>,
    req_data: Parts,
) -> impl Future<Output = Result<(), Error>> + Send + 'static
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // The handshake is boxed, and the future below captures only it and the engine: a future is
    // as large as its largest state plus all it captures, and the handshakes' states (the
    // upgrade's above all) and the request's parts are far larger than a connection's steady
    // state. Unboxed, every connection's task would keep that size for its whole life.
    let handshake = Box::pin(handshake(engine.clone(), conn, protocol, sid, req_data));
    async move {
        let (socket, ws) = handshake.await?;
        run(&engine, &socket, ws).await;
        Ok(())
    }
}

/// A session whose websocket is ready: the socket and its transport.
type Session<H, S> = (
    Arc<Socket<<H as EngineIoHandler>::Data>>,
    WebSocketStream<S>,
);

/// The open handshake of a new session, or the upgrade handshake of a polling session.
#[cfg_attr(
    feature = "tracing",
    tracing::instrument(level = "trace", name = "init_websocket", skip(engine, conn, req_data))
)]
async fn handshake<H: EngineIoHandler, S>(
    engine: Arc<EngineIo<H>>,
    conn: S,
    protocol: ProtocolVersion,
    sid: Option<Sid>,
    req_data: Parts,
) -> Result<Session<H, S>, Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(engine.config.ws_read_buffer_size)
        .max_message_size(Some(engine.config.ws_max_message_size))
        .max_frame_size(Some(engine.config.ws_max_frame_size));

    let ws_init = move || WebSocketStream::from_raw_socket(conn, Role::Server, Some(ws_config));
    if let Some(sid) = sid {
        match engine.get_socket(sid) {
            None => Err(Error::UnknownSessionID(sid)),
            Some(socket) if socket.is_ws() => Err(Error::MultipleWebsocketRequests),
            Some(socket) => {
                let mut ws = ws_init().await;

                let upgrade_fut = upgrade_handshake::<H, S>(&socket, &mut ws);
                match tokio::time::timeout(engine.config.upgrade_timeout, upgrade_fut)
                    .with_cancellation_token(&socket.cancellation_token)
                    .await
                {
                    Some(Ok(Ok(()))) => Ok((socket, ws)),
                    Some(Ok(Err(e))) => {
                        #[cfg(feature = "tracing")]
                        tracing::debug!(?sid, "ws upgrade failed, closing session: {e}");
                        engine.close_session(sid, DisconnectReason::TransportError);
                        Err(e)
                    }
                    Some(Err(_)) => {
                        #[cfg(feature = "tracing")]
                        tracing::debug!(?sid, "ws upgrade timed out, closing session");
                        engine.close_session(socket.id, DisconnectReason::TransportError);
                        Err(Error::Upgrade)
                    }
                    None => {
                        #[cfg(feature = "tracing")]
                        tracing::debug!(?sid, "socket is being closed");
                        Err(Error::Upgrade)
                    }
                }
            }
        }
    } else {
        let socket = engine.create_session(protocol, TransportType::Websocket, req_data, false);

        #[cfg(feature = "tracing")]
        tracing::debug!("new websocket connection");

        let mut ws = ws_init().await;
        if let Err(e) = init_handshake(socket.id, &mut ws, &engine.config).await {
            engine.close_session(socket.id, DisconnectReason::TransportError);
            return Err(e);
        }
        engine.start_heartbeat(&socket);
        Ok((socket, ws))
    }
}

/// Why [`run`]'s duplex loop stopped.
enum End {
    /// The session was closed (by the heartbeat, the application, a slow-consumer policy…).
    Cancelled,
    /// The client closed the websocket, or sent something that ends the session.
    Read(Result<(), Error>),
}

/// Reads and writes a websocket session in one future, so that a session costs one task.
///
/// Reading hands each packet to the handler; writing forwards what the socket's buffer
/// (and its volatile slot) holds, flushing once the buffer is drained. Each direction only
/// waits on its own readiness, so a peer that stops reading does not stop its pongs and
/// messages from being read, and a peer that stops writing does not delay its deliveries.
///
/// Once the session is closed, what is still buffered (its close packet included) gets
/// `CLOSE_GRACE` to be written; then the transport is dropped, so a peer that stopped reading
/// cannot keep the connection, its buffers and the `internal_rx` lock (which `on_disconnect`
/// waits for).
///
/// Not an `async fn`: an async fn moves its arguments into its body, and the websocket would be
/// held twice (as argument and as local) for the connection's whole life.
#[allow(clippy::manual_async_fn)] // on purpose, as said above
fn run<'a, H: EngineIoHandler, S>(
    engine: &'a Arc<EngineIo<H>>,
    socket: &'a Arc<Socket<H::Data>>,
    mut ws: WebSocketStream<S>,
) -> impl Future<Output = ()> + Send + 'a
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async move {
        // A polling request that was in progress during the upgrade may still hold the lock.
        let lock = socket.internal_rx.lock();
        let Some(mut internal_rx) = lock
            .with_cancellation_token(&socket.cancellation_token)
            .await
        else {
            #[cfg(feature = "tracing")]
            tracing::debug!(sid = %socket.id, "session closed before starting the ws transport");
            return;
        };
        let InternalRx { buffered_rx, .. } = &mut *internal_rx;
        let dequeued = |packets: &PacketBuf| socket.dequeued(packets);
        let mut outgoing = EncoderStream::new(buffered_rx, &socket.volatile, &dequeued);
        let mut reader = Reader { pause: None };
        let mut writer = Writer::default();

        let cancelled = socket.cancellation_token.cancelled();
        tokio::pin!(cancelled);
        let end = std::future::poll_fn(|cx| {
            if cancelled.as_mut().poll(cx).is_ready() {
                return Poll::Ready(End::Cancelled);
            }
            if let Poll::Ready(res) = reader.poll(cx, engine, socket, &mut ws) {
                return Poll::Ready(End::Read(res));
            }
            // Ready once the buffer is written and flushed; either way, a wake-up is registered
            // for what comes next.
            let _ = writer.poll_write(cx, socket, &mut ws, &mut outgoing);
            Poll::Pending
        })
        .await;

        match end {
            End::Cancelled => {
                #[cfg(feature = "tracing")]
                tracing::debug!(sid = %socket.id, "socket is closing");
            }
            End::Read(Ok(())) => {
                #[cfg(feature = "tracing")]
                tracing::debug!(sid = %socket.id, "ws transport was closed");
                engine.close_session(socket.id, DisconnectReason::TransportClose);
            }
            End::Read(Err(e)) => {
                #[cfg(feature = "tracing")]
                tracing::debug!("error when handling packet: {:?}", e);
                let reason = Option::<DisconnectReason>::from(&e)
                    .unwrap_or(DisconnectReason::TransportError);
                engine.close_session(socket.id, reason);
            }
        }

        // Write what is still buffered (the close packet last: nothing volatile after it), then
        // the websocket close frame.
        outgoing.buffered_only();
        let drained = std::future::poll_fn(|cx| {
            if writer
                .poll_write(cx, socket, &mut ws, &mut outgoing)
                .is_pending()
            {
                return Poll::Pending;
            }
            ws.poll_close_unpin(cx).map(drop)
        });
        if tokio::time::timeout(CLOSE_GRACE, drained).await.is_err() {
            #[cfg(feature = "tracing")]
            tracing::debug!(sid = %socket.id, "ws writer still blocked after the session closed, dropping the transport");
        }
    }
}

/// How long a closed session's websocket writer may still flush before the transport is dropped.
const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// The most packets [`Writer::poll_write`] takes from the buffer before it lets the reader and
/// the cancellation run (tungstenite writes to the socket only once 128 KiB are buffered, so
/// a buffer that keeps being refilled would not use up tokio's cooperative budget).
const WRITE_BATCH: usize = 256;

/// The most messages [`Reader::poll`] hands to the handler before it lets the writer run.
const READ_BATCH: usize = 64;

/// The reading half of [`run`].
struct Reader {
    /// A running [`Socket::pause_reading`] (boxed: a timer is large, and pauses are rare).
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Reader {
    /// Hands the client's messages to the handler until none is ready; `Ready` once the
    /// session must end (the client closed it, or sent a bad packet).
    fn poll<H: EngineIoHandler, S>(
        &mut self,
        cx: &mut Context<'_>,
        engine: &Arc<EngineIo<H>>,
        socket: &Arc<Socket<H::Data>>,
        ws: &mut WebSocketStream<S>,
    ) -> Poll<Result<(), Error>>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        for _ in 0..READ_BATCH {
            // Inbound backpressure (`Socket::pause_reading`): not reading leaves the client's
            // messages in the kernel's buffers, then in its own.
            if let Some(pause) = &mut self.pause {
                ready!(pause.as_mut().poll(cx));
                self.pause = None;
            }
            if let Some(until) = socket.take_read_pause() {
                self.pause = Some(Box::pin(tokio::time::sleep_until(until)));
                continue;
            }
            let msg = match ready!(ws.poll_next_unpin(cx)) {
                Some(Ok(msg)) => msg,
                Some(Err(e)) => return Poll::Ready(Err(e.into())),
                None => return Poll::Ready(Ok(())),
            };
            if on_message(engine, socket, msg)?.is_break() {
                return Poll::Ready(Ok(()));
            }
            // The message may have closed the session: its cancellation woke this task, and
            // `run` sees it first on the next poll. (Checked here, not at each turn: most
            // wake-ups are for writes and read nothing.)
            if socket.cancellation_token.is_cancelled() {
                return Poll::Pending;
            }
        }
        // More may be ready: come back after the writer had its turn.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Hands one websocket message to the handler; `Break` when it ends the session.
fn on_message<H: EngineIoHandler>(
    engine: &Arc<EngineIo<H>>,
    socket: &Arc<Socket<H::Data>>,
    msg: Message,
) -> Result<ControlFlow<()>, Error> {
    match msg {
        Message::Text(msg) => match Packet::parse(socket.protocol, ws_bytes_to_str(msg))? {
            Packet::Close => {
                #[cfg(feature = "tracing")]
                tracing::debug!("[sid={}] closing session", socket.id);
                engine.close_session(socket.id, DisconnectReason::TransportClose);
                return Ok(ControlFlow::Break(()));
            }
            Packet::Pong | Packet::Ping => socket.heartbeat_received(),
            Packet::Message(msg) => engine.handler.on_message(msg, socket.clone()),
            p => return Err(Error::BadPacket(p)),
        },
        Message::Binary(mut data) => {
            if socket.protocol == ProtocolVersion::V3 && !data.is_empty() {
                // The first byte is the message type, which we don't need.
                data = data.split_off(1);
            }
            engine.handler.on_binary(data, socket.clone());
        }
        Message::Close(_) => {
            #[cfg(feature = "tracing")]
            tracing::debug!("websocket closed, closing session");
            engine.close_session(socket.id, DisconnectReason::TransportClose);
            return Ok(ControlFlow::Break(()));
        }
        _ => {
            #[cfg(feature = "tracing")]
            tracing::debug!(sid = ?socket.id, "unexpected ws message");
        }
    }
    Ok(ControlFlow::Continue(()))
}

/// The writing half of [`run`]: forwards the socket's buffered packets to the websocket,
/// flushing once the buffer is drained.
#[derive(Default)]
struct Writer {
    /// The rest of the [`PacketBuf`] being written.
    packets: Option<smallvec::IntoIter<[Packet; 2]>>,
    /// Something was written since the last flush.
    unflushed: bool,
    /// Writing failed: the transport is broken. What is buffered is dropped from then on, and
    /// the reader (or the heartbeat) ends the session.
    failed: bool,
    /// The close packet was written: what was buffered after it (a send racing the close) is
    /// dropped, as the client takes nothing more from this session.
    closed: bool,
}

impl Writer {
    /// Writes until the buffer is empty and flushed (`Ready`) or the websocket cannot take more
    /// (`Pending`).
    fn poll_write<S>(
        &mut self,
        cx: &mut Context<'_>,
        socket: &Socket<impl Default + Send + Sync + 'static>,
        ws: &mut WebSocketStream<S>,
        outgoing: &mut EncoderStream<'_>,
    ) -> Poll<()>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut taken = 0;
        loop {
            if taken == WRITE_BATCH {
                // More may be ready: come back after the reader had its turn.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            // Room for a message first, so that a packet leaves the buffer only when the
            // websocket can take it.
            if !self.failed {
                match ws.poll_ready_unpin(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => self.fail(socket, e),
                }
            }
            let packet = match self.packets.as_mut().and_then(Iterator::next) {
                Some(packet) => packet,
                None => match outgoing.poll_next_unpin(cx) {
                    Poll::Ready(Some(packets)) => {
                        self.packets = Some(packets.into_iter());
                        continue;
                    }
                    // `None`: the buffer was closed, nothing more will come.
                    Poll::Ready(None) | Poll::Pending => break,
                },
            };
            taken += 1;
            if self.failed || self.closed {
                continue;
            }
            self.closed = matches!(packet, Packet::Close);
            if let Some(message) = to_message(packet, socket.protocol) {
                match ws.start_send_unpin(message) {
                    Ok(()) => self.unflushed = true,
                    Err(e) => self.fail(socket, e),
                }
            }
        }
        if self.unflushed {
            match ws.poll_flush_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => self.fail(socket, e),
            }
            self.unflushed = false;
        }
        Poll::Ready(())
    }

    fn fail(
        &mut self,
        _socket: &Socket<impl Default + Send + Sync + 'static>,
        _e: tungstenite::Error,
    ) {
        #[cfg(feature = "tracing")]
        tracing::debug!("[sid={}] error sending packet: {}", _socket.id, _e);
        self.failed = true;
        self.unflushed = false;
    }
}

/// The websocket message of a packet (`None` for packets that are not written).
fn to_message(packet: Packet, protocol: ProtocolVersion) -> Option<Message> {
    Some(match packet {
        Packet::Binary(bin) | Packet::BinaryV3(bin) => {
            if protocol == ProtocolVersion::V3 {
                // v3 protocol requires packet type as the first byte.
                // This requires a new buffer. This is OK as it is only for the V3 protocol.
                let mut buff = Vec::with_capacity(bin.len() + 1);
                buff.push(0x04);
                buff.extend(bin);
                Message::Binary(buff.into())
            } else {
                Message::Binary(bin)
            }
        }
        // A Noop Packet maybe sent by the server to upgrade from a polling connection
        // In the case that the packet was not poll in time it will remain in the buffer and therefore
        // it should be discarded here
        Packet::Noop => return None,
        packet => Message::Text(String::from(packet).into()),
    })
}

/// Send a Engine.IO [`OpenPacket`] to initiate a websocket connection
async fn init_handshake<S>(
    sid: Sid,
    ws: &mut WebSocketStream<S>,
    config: &EngineIoConfig,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let packet = Packet::Open(Box::new(make_open_packet(
        TransportType::Websocket,
        sid,
        config,
    )));
    let packet: String = packet.into();
    ws.send(Message::Text(packet.into())).await?;
    Ok(())
}

/// Upgrade a session from a polling request to a websocket request.
///
/// Before upgrading the session the server should send a NOOP packet to any pending polling request.
///
/// ## Handshake :
/// ```text
/// CLIENT                                                 SERVER
///│                                                      │
///│   GET /engine.io/?EIO=4&transport=websocket&sid=...  │
///│ ───────────────────────────────────────────────────► │
///│  ◄─────────────────────────────────────────────────┘ │
///│            HTTP 101 (WebSocket handshake)            │
///│                                                      │
///│            -----  WebSocket frames -----             │
///│  ─────────────────────────────────────────────────►  │
///│                         2probe                       │ (ping packet)
///│  ◄─────────────────────────────────────────────────  │
///│                         3probe                       │ (pong packet)
///│  ─────────────────────────────────────────────────►  │
///│                         5                            │ (upgrade packet)
///│                                                      │
///│            -----  WebSocket frames -----             │
/// ```
#[cfg_attr(
    feature = "tracing",
    tracing::instrument(level = "trace", skip(socket, ws))
)]
async fn upgrade_handshake<H: EngineIoHandler, S>(
    socket: &Arc<Socket<H::Data>>,
    ws: &mut WebSocketStream<S>,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    #[cfg(feature = "tracing")]
    tracing::debug!("starting websocket connection upgrade");

    // The socket is upgrading, from now on all polling
    // request will return a `Packet::Noop`
    socket.start_upgrade();

    // We send a last Noop request to close a potential waiting polling request.
    socket
        .internal_tx
        .send(smallvec![Packet::Noop])
        .await
        .map_err(|_| Error::Upgrade)?;

    // wait for any current polling connection to finish by waiting for the socket to be unlocked
    // All other polling connection will be immediately closed with a NOOP packet.
    let _lock = socket.internal_rx.lock().await;

    // Fetch the next packet from the ws stream, it should be a PingUpgrade packet
    let msg = match ws.next().await {
        Some(Ok(Message::Text(d))) => d,
        _ => Err(Error::Upgrade)?,
    };
    match Packet::parse(socket.protocol, ws_bytes_to_str(msg))? {
        Packet::PingUpgrade => {
            #[cfg(feature = "tracing")]
            tracing::debug!("received first ping upgrade");
            // Respond with a PongUpgrade packet
            ws.send(Message::Text(String::from(Packet::PongUpgrade).into()))
                .await?;
        }
        p => Err(Error::BadPacket(p))?,
    };

    // Fetch the next packet from the ws stream, it should be an Upgrade packet
    let msg = match ws.next().await {
        Some(Ok(Message::Text(d))) => d,
        Some(Ok(Message::Close(_))) => {
            #[cfg(feature = "tracing")]
            tracing::debug!("ws stream closed before upgrade");
            Err(Error::Upgrade)?
        }
        _ => {
            #[cfg(feature = "tracing")]
            tracing::debug!("unexpected ws message before upgrade");
            Err(Error::Upgrade)?
        }
    };
    match Packet::parse(socket.protocol, ws_bytes_to_str(msg))? {
        Packet::Upgrade => {
            #[cfg(feature = "tracing")]
            tracing::debug!("ws upgraded successfully")
        }
        p => Err(Error::BadPacket(p))?,
    };

    socket.upgrade_to_websocket();
    Ok(())
}

fn ws_bytes_to_str(bytes: tungstenite::Utf8Bytes) -> Str {
    // SAFETY: the bytes are guaranteed to be valid UTF-8 by the tungstenite parser
    unsafe { Str::from_bytes_unchecked(bytes.into()) }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use futures_util::StreamExt;
    use http::Request;
    use tokio::io::DuplexStream;

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(1);

    #[derive(Debug)]
    struct StubHandler;
    impl EngineIoHandler for StubHandler {
        type Data = ();
        fn on_connect(self: Arc<Self>, _: Arc<Socket<()>>) {}
        fn on_disconnect(&self, _: Arc<Socket<()>>, _: DisconnectReason) {}
        fn on_message(self: &Arc<Self>, _: Str, _: Arc<Socket<()>>) {}
        fn on_binary(self: &Arc<Self>, _: Bytes, _: Arc<Socket<()>>) {}
    }

    fn socket() -> Arc<Socket<()>> {
        Arc::new(Socket::new(
            ProtocolVersion::V4,
            TransportType::Websocket,
            &EngineIoConfig::default(),
            Request::<()>::default().into_parts().0,
            Box::new(|_, _| ()),
            false,
        ))
    }

    async fn run_owned(socket: Arc<Socket<()>>, ws: WebSocketStream<DuplexStream>) {
        let engine = Arc::new(EngineIo::new(
            Arc::new(StubHandler),
            EngineIoConfig::default(),
        ));
        run(&engine, &socket, ws).await
    }

    async fn ws_pair() -> (WebSocketStream<DuplexStream>, WebSocketStream<DuplexStream>) {
        let (server, client) = tokio::io::duplex(1024);
        (
            WebSocketStream::from_raw_socket(server, Role::Server, None).await,
            WebSocketStream::from_raw_socket(client, Role::Client, None).await,
        )
    }

    /// A polling request can still hold the lock at the end of an upgrade.
    #[tokio::test]
    async fn writer_waits_for_the_lock_of_a_polling_request() {
        let socket = socket();
        let (server, mut client) = ws_pair().await;

        let polling = socket.internal_rx.lock().await;
        let writer = tokio::spawn(run_owned(socket.clone(), server));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!writer.is_finished(), "the writer should wait for the lock");

        drop(polling);
        socket.emit(Str::from("hello")).unwrap();
        let msg = tokio::time::timeout(TIMEOUT, client.next())
            .await
            .expect("the writer should send the packet")
            .unwrap()
            .unwrap();
        assert_eq!(msg, Message::text("4hello"));
    }

    #[tokio::test]
    async fn writer_waiting_for_the_lock_stops_with_the_session() {
        let socket = socket();
        let (server, _client) = ws_pair().await;

        let _polling = socket.internal_rx.lock().await;
        let writer = tokio::spawn(run_owned(socket.clone(), server));
        tokio::time::sleep(Duration::from_millis(20)).await;

        socket.cancellation_token.cancel();
        tokio::time::timeout(TIMEOUT, writer)
            .await
            .expect("the writer should stop")
            .unwrap();
    }

    /// A websocket session's whole life is one task running the future of [`upgraded`], and
    /// every idle connection pays for that future's largest state. It was a connection task
    /// (handshake, then reader; its `on_init` future alone 1,992 bytes) and a 1,832-byte writer
    /// task; now 960 bytes. If this fails, look for a large state or a capture that came back
    /// (`-Zprint-type-sizes` shows them).
    #[tokio::test]
    async fn a_session_is_one_small_future() {
        let engine = Arc::new(EngineIo::new(
            Arc::new(StubHandler),
            EngineIoConfig::default(),
        ));
        let parts = Request::<()>::default().into_parts().0;
        let session = upgraded(
            engine,
            Box::new((Request::new(()), parts)),
            ProtocolVersion::V4,
            None,
        );
        let size = std::mem::size_of_val(&session);
        assert!(size <= 1024, "{size} bytes");
    }
}
