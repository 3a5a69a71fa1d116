//! Clients that stop reading: the websocket writer must not hold a closed session forever, and
//! with `max_buffer_bytes` a client whose buffer fills up is closed as a slow consumer.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use engineioxide::{
    ProtocolVersion, Str,
    config::EngineIoConfig,
    handler::EngineIoHandler,
    service::EngineIoService,
    socket::{DisconnectReason, Socket},
};
use futures_util::StreamExt;
use http::Request;
use tokio::{
    io::{AsyncWriteExt, DuplexStream},
    sync::mpsc,
};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{Message, handshake::client::generate_key, protocol::Role},
};

mod fixture;
use fixture::{create_polling_connection, create_ws_pipe_connection, send_req_raw};

#[derive(Debug, Clone)]
struct Handler {
    sockets: mpsc::Sender<Arc<Socket<()>>>,
    reasons: mpsc::Sender<DisconnectReason>,
}

impl EngineIoHandler for Handler {
    type Data = ();
    fn on_connect(self: Arc<Self>, socket: Arc<Socket<()>>) {
        self.sockets.try_send(socket).unwrap();
    }
    fn on_disconnect(&self, _socket: Arc<Socket<()>>, reason: DisconnectReason) {
        self.reasons.try_send(reason).unwrap();
    }
    fn on_message(self: &Arc<Self>, _msg: Str, _socket: Arc<Socket<()>>) {}
    fn on_binary(self: &Arc<Self>, _data: Bytes, _socket: Arc<Socket<()>>) {}
}

struct Server {
    svc: EngineIoService<Handler>,
    sockets: mpsc::Receiver<Arc<Socket<()>>>,
    reasons: mpsc::Receiver<DisconnectReason>,
}

fn server(config: EngineIoConfig) -> Server {
    let (sockets_tx, sockets) = mpsc::channel(8);
    let (reasons_tx, reasons) = mpsc::channel(8);
    let handler = Handler {
        sockets: sockets_tx,
        reasons: reasons_tx,
    };
    Server {
        svc: EngineIoService::with_config(Arc::new(handler), config),
        sockets,
        reasons,
    }
}

/// A websocket session over an in-memory pipe whose buffer holds only `pipe` bytes (see
/// [`create_ws_pipe_connection`]). Returns the client's websocket and the connected server-side
/// socket.
async fn ws_session(
    srv: &mut Server,
    pipe: usize,
) -> (WebSocketStream<DuplexStream>, Arc<Socket<()>>) {
    let client = create_ws_pipe_connection(&srv.svc, pipe).await;
    let socket = srv.sockets.recv().await.unwrap();
    (client, socket)
}

/// Emits 1 KiB messages (yielding, so the writer runs) until one is refused.
async fn emit_until_refused(socket: &Socket<()>) -> usize {
    let msg = "x".repeat(1024);
    for sent in 0..100_000 {
        if socket.emit(msg.clone()).is_err() {
            return sent;
        }
        tokio::task::yield_now().await;
    }
    panic!("100000 messages to a client that does not read were all accepted");
}

/// Whether the server dropped its end of the pipe: a write from the client fails.
async fn transport_dropped(client: &mut WebSocketStream<DuplexStream>) -> bool {
    let io = client.get_mut();
    for _ in 0..200 {
        if io.write_all(&[0u8; 1024]).await.is_err() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// Without the slow-consumer policy, a client that stops reading is still evicted by the
/// heartbeat, and the session really ends: `on_disconnect` runs and the transport is dropped,
/// although the websocket writer is blocked on a full pipe.
#[tokio::test]
async fn ws_client_that_stops_reading_is_evicted_by_the_heartbeat() {
    let config = EngineIoConfig::builder()
        .ping_interval(Duration::from_millis(300))
        .ping_timeout(Duration::from_millis(200))
        .max_buffer_size(64)
        .build();
    let mut srv = server(config);
    let (mut client, socket) = ws_session(&mut srv, 4096).await;

    emit_until_refused(&socket).await;
    let reason = tokio::time::timeout(Duration::from_secs(5), srv.reasons.recv())
        .await
        .expect("on_disconnect did not run: the blocked writer kept the session")
        .unwrap();
    assert_eq!(reason, DisconnectReason::HeartbeatTimeout);
    assert!(
        transport_dropped(&mut client).await,
        "the transport of a closed session was kept"
    );
}

/// With `max_buffer_bytes`, the send that finds the buffer over budget is refused and the socket
/// is closed as a slow consumer right away (not at the next heartbeat).
#[tokio::test]
async fn ws_slow_consumer_is_closed_when_over_max_buffer_bytes() {
    let config = EngineIoConfig::builder()
        .ping_interval(Duration::from_secs(60))
        .ping_timeout(Duration::from_secs(60))
        .max_buffer_size(100_000)
        .max_buffer_bytes(16 * 1024)
        .build();
    let mut srv = server(config);
    let (mut client, socket) = ws_session(&mut srv, 4096).await;

    emit_until_refused(&socket).await;
    // The budget holds: at most the limit plus one message was ever queued.
    assert!(
        socket.buffered_bytes() <= 17 * 1024,
        "{}",
        socket.buffered_bytes()
    );
    let reason = tokio::time::timeout(Duration::from_secs(5), srv.reasons.recv())
        .await
        .expect("the slow consumer was not closed")
        .unwrap();
    assert_eq!(reason, DisconnectReason::SlowConsumer);
    assert!(
        transport_dropped(&mut client).await,
        "the transport of a slow consumer was kept"
    );
}

/// A client that reads everything is never a slow consumer, and the byte count returns to zero
/// (every byte counted in is counted out).
#[tokio::test]
async fn ws_reading_client_is_not_a_slow_consumer() {
    let config = EngineIoConfig::builder()
        .ping_interval(Duration::from_secs(60))
        .ping_timeout(Duration::from_secs(60))
        .max_buffer_bytes(4 * 1024)
        .build();
    let mut srv = server(config);
    let (mut client, socket) = ws_session(&mut srv, 64 * 1024).await;

    let msg = "y".repeat(1000);
    for _ in 0..200 {
        for _ in 0..3 {
            socket.emit(msg.clone()).unwrap();
        }
        let mut got = 0;
        while got < 3 {
            match client.next().await.unwrap().unwrap() {
                Message::Text(t) if t == "2" => {} // the first ping
                m => {
                    assert_eq!(m.len(), 1001); // "4" + message
                    got += 1;
                }
            }
        }
    }
    assert_eq!(socket.buffered_bytes(), 0);
    assert!(srv.reasons.try_recv().is_err());
}

/// Polling: what a poll takes is counted out too.
#[tokio::test]
async fn polling_reading_client_is_not_a_slow_consumer() {
    let config = EngineIoConfig::builder()
        .ping_interval(Duration::from_secs(60))
        .ping_timeout(Duration::from_secs(60))
        .max_buffer_bytes(4 * 1024)
        .build();
    let mut srv = server(config);
    let sid = create_polling_connection(&mut srv.svc).await;
    let socket = srv.sockets.recv().await.unwrap();

    let msg = "z".repeat(1000);
    for _ in 0..50 {
        for _ in 0..3 {
            socket.emit(msg.clone()).unwrap();
        }
        let mut got = 0;
        while got < 3 {
            let body = poll(&mut srv.svc, &sid).await;
            for packet in body.split('\x1e').filter(|p| *p != "2") {
                assert_eq!(packet.len(), 1001); // "4" + message
                got += 1;
            }
        }
        assert_eq!(got, 3);
        assert_eq!(socket.buffered_bytes(), 0);
    }
    assert!(srv.reasons.try_recv().is_err());
}

/// Polling: a client that stops polling is a slow consumer once its buffer is over budget.
#[tokio::test]
async fn polling_slow_consumer_is_closed_when_over_max_buffer_bytes() {
    let config = EngineIoConfig::builder()
        .ping_interval(Duration::from_secs(60))
        .ping_timeout(Duration::from_secs(60))
        .max_buffer_bytes(8 * 1024)
        .build();
    let mut srv = server(config);
    create_polling_connection(&mut srv.svc).await;
    let socket = srv.sockets.recv().await.unwrap();

    let sent = emit_until_refused(&socket).await;
    assert_eq!(
        sent, 9,
        "8 KiB fit, the 9th KiB is admitted, the 10th refused"
    );
    let reason = tokio::time::timeout(Duration::from_secs(5), srv.reasons.recv())
        .await
        .expect("the slow consumer was not closed")
        .unwrap();
    assert_eq!(reason, DisconnectReason::SlowConsumer);
}

async fn poll(svc: &mut EngineIoService<Handler>, sid: &str) -> String {
    send_req_raw(
        svc,
        format!("transport=polling&sid={sid}"),
        http::Method::GET,
        None,
    )
    .await
}

/// `pause_reading`: nothing the client sends is handled before the pause ends.
#[tokio::test]
async fn ws_pause_reading_delays_the_next_message() {
    use futures_util::SinkExt;

    #[derive(Debug, Clone)]
    struct Echo(mpsc::Sender<(Arc<Socket<()>>, tokio::time::Instant)>);
    impl EngineIoHandler for Echo {
        type Data = ();
        fn on_connect(self: Arc<Self>, _socket: Arc<Socket<()>>) {}
        fn on_disconnect(&self, _socket: Arc<Socket<()>>, _reason: DisconnectReason) {}
        fn on_message(self: &Arc<Self>, msg: Str, socket: Arc<Socket<()>>) {
            // As an application refusing a message would: before the next one is read.
            if msg == "first" {
                socket.pause_reading(Duration::from_millis(300));
            }
            self.0
                .try_send((socket, tokio::time::Instant::now()))
                .unwrap();
        }
        fn on_binary(self: &Arc<Self>, _data: Bytes, _socket: Arc<Socket<()>>) {}
    }
    let (tx, mut rx) = mpsc::channel(8);
    let config = EngineIoConfig::builder()
        .ping_interval(Duration::from_secs(60))
        .ping_timeout(Duration::from_secs(60))
        .build();
    let svc = EngineIoService::with_config(Arc::new(Echo(tx)), config);
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let parts = Request::builder()
        .uri("ws://127.0.0.1/engine.io/?EIO=4&transport=websocket")
        .header("Sec-WebSocket-Key", generate_key())
        .body(())
        .unwrap()
        .into_parts()
        .0;
    tokio::spawn(svc.ws_init(server_io, ProtocolVersion::V4, None, parts));
    let mut client = WebSocketStream::from_raw_socket(client_io, Role::Client, None).await;
    client.next().await.unwrap().unwrap(); // open packet

    client.send(Message::text("4first")).await.unwrap();
    let (_, paused) = rx.recv().await.unwrap();
    let sent = tokio::time::Instant::now();
    client.send(Message::text("4second")).await.unwrap();
    let (_, handled) = rx.recv().await.unwrap();
    assert!(
        handled - paused >= Duration::from_millis(300),
        "handled {:?} after the pause began",
        handled - paused
    );
    assert!(handled > sent);
}
