//! A websocket session is read and written by one task: neither direction may wait on the other.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use engineioxide::{
    Str,
    config::EngineIoConfig,
    handler::EngineIoHandler,
    service::EngineIoService,
    socket::{DisconnectReason, Socket},
};
use futures_util::{SinkExt, StreamExt};
use tokio::{io::DuplexStream, sync::mpsc};
use tokio_tungstenite::{WebSocketStream, tungstenite::Message};

#[derive(Debug, Clone)]
struct Handler {
    sockets: mpsc::UnboundedSender<Arc<Socket<()>>>,
    messages: mpsc::UnboundedSender<Str>,
}

impl EngineIoHandler for Handler {
    type Data = ();
    fn on_connect(self: Arc<Self>, socket: Arc<Socket<()>>) {
        self.sockets.send(socket).unwrap();
    }
    fn on_disconnect(&self, _socket: Arc<Socket<()>>, _reason: DisconnectReason) {}
    fn on_message(self: &Arc<Self>, msg: Str, _socket: Arc<Socket<()>>) {
        self.messages.send(msg).ok();
    }
    fn on_binary(self: &Arc<Self>, _data: Bytes, _socket: Arc<Socket<()>>) {}
}

mod fixture;
use fixture::create_ws_pipe_connection;

const DEADLINE: Duration = Duration::from_secs(10);

/// A websocket session over an in-memory pipe holding `pipe` bytes each way (see
/// [`create_ws_pipe_connection`]).
async fn session(
    pipe: usize,
) -> (
    WebSocketStream<DuplexStream>,
    Arc<Socket<()>>,
    mpsc::UnboundedReceiver<Str>,
) {
    let (sockets_tx, mut sockets) = mpsc::unbounded_channel();
    let (messages_tx, messages) = mpsc::unbounded_channel();
    let handler = Handler {
        sockets: sockets_tx,
        messages: messages_tx,
    };
    let config = EngineIoConfig::builder()
        .ping_interval(Duration::from_secs(60))
        .ping_timeout(Duration::from_secs(60))
        .max_buffer_size(64)
        .build();
    let svc = EngineIoService::with_config(Arc::new(handler), config);
    let client = create_ws_pipe_connection(&svc, pipe).await;
    let socket = sockets.recv().await.unwrap();
    (client, socket, messages)
}

/// A client that stops reading blocks the server's writes; what it sends is still read.
#[tokio::test]
async fn a_client_that_stops_reading_is_still_read() {
    let (mut client, socket, mut messages) = session(4096).await;

    // Fill the pipe and the buffer: the server's writes are blocked from here on.
    let msg = "x".repeat(1024);
    let mut refused = false;
    for _ in 0..10_000 {
        if socket.emit(msg.clone()).is_err() {
            refused = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(
        refused,
        "the buffer of a client that does not read never filled"
    );

    for i in 0..100 {
        client.send(Message::text(format!("4m{i}"))).await.unwrap();
    }
    for i in 0..100 {
        let got = tokio::time::timeout(DEADLINE, messages.recv())
            .await
            .expect("a message from a client whose writes are blocked was not read")
            .unwrap();
        assert_eq!(got.as_str(), format!("m{i}"));
    }
}

/// What is sent to a client goes out while a long run of its messages is being read, not after.
/// (On this single-threaded runtime the order is deterministic: the client's 10,000 messages
/// are all in the pipe before the server's task first runs, and the client is a spawned task,
/// scheduled in turn with the server's: `block_on`'s own future is polled less often.)
#[tokio::test]
async fn a_client_that_floods_still_gets_its_messages() {
    let (mut client, socket, mut messages) = session(1 << 20).await;
    let client = tokio::spawn(async move {
        // Unconstrained: tokio's cooperative budget would otherwise let the server's task run
        // between these writes.
        tokio::task::unconstrained(async {
            for i in 0..10_000 {
                client.feed(Message::text(format!("4f{i}"))).await.unwrap();
            }
            client.flush().await.unwrap();
        })
        .await;
        socket.emit("d").unwrap();

        let got = client.next().await.unwrap().unwrap();
        assert_eq!(got, Message::text("4d"));
        let mut read = 0;
        while messages.try_recv().is_ok() {
            read += 1;
        }
        read
    });
    let read = tokio::time::timeout(DEADLINE, client)
        .await
        .expect("a message to a flooding client was not written")
        .unwrap();
    assert!(
        read < 1_000,
        "the message went out only after {read} of the client's messages were read"
    );
}

/// A session closed by the server: the client gets what was buffered, then the close packet,
/// then the websocket close; nothing comes after the close packet (a message sent right after
/// `close` was written after it before patch 11), and a volatile send is refused from the
/// moment the session is closing.
#[tokio::test]
async fn nothing_follows_the_close_packet() {
    let (mut client, socket, _messages) = session(64 * 1024).await;
    socket.emit("before").unwrap();
    assert!(socket.emit_volatile("volatile before"));
    socket.close(DisconnectReason::ClosingServer);
    // Buffered or refused, it is not written after the close packet.
    socket.emit("after").ok();
    assert!(
        !socket.emit_volatile("volatile after"),
        "a volatile message was accepted after the session closed"
    );

    let mut got = Vec::new();
    loop {
        match tokio::time::timeout(DEADLINE, client.next())
            .await
            .expect("the transport was not closed")
        {
            Some(Ok(Message::Text(t))) => got.push(t.to_string()),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
            Some(Ok(other)) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got.first().map(String::as_str), Some("4before"));
    assert_eq!(
        got.last().map(String::as_str),
        Some("1"),
        "the close packet was not last: {got:?}"
    );
}

/// A paused reader (`Socket::pause_reading`) does not hold back what is sent to the client.
#[tokio::test]
async fn a_paused_reader_does_not_stop_writes() {
    let (mut client, socket, mut messages) = session(64 * 1024).await;
    socket.pause_reading(Duration::from_secs(3600));
    client
        .send(Message::text("4during the pause"))
        .await
        .unwrap();
    for i in 0..10 {
        socket.emit(format!("w{i}")).unwrap();
        let got = tokio::time::timeout(DEADLINE, client.next())
            .await
            .expect("a write was held back by the read pause")
            .unwrap()
            .unwrap();
        assert_eq!(got, Message::text(format!("4w{i}")));
    }
    assert!(
        messages.try_recv().is_err(),
        "a message was read during the pause"
    );
}
