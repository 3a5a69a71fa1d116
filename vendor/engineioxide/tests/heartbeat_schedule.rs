//! The heartbeat's schedule: a ping every `ping_interval` for a client that answers, whatever
//! the timeout; a client that stops answering is closed once `ping_timeout` has passed since
//! the unanswered ping, whichever of the two is longer.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use engineioxide::{
    Str,
    config::EngineIoConfig,
    handler::EngineIoHandler,
    service::EngineIoService,
    socket::{DisconnectReason, Socket},
};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

mod fixture;
use fixture::create_ws_connection;

#[derive(Debug)]
struct Handler {
    disconnect_tx: mpsc::UnboundedSender<(DisconnectReason, Instant)>,
}

impl EngineIoHandler for Handler {
    type Data = ();
    fn on_connect(self: Arc<Self>, _: Arc<Socket<()>>) {}
    fn on_disconnect(&self, _: Arc<Socket<()>>, reason: DisconnectReason) {
        self.disconnect_tx.send((reason, Instant::now())).unwrap();
    }
    fn on_message(self: &Arc<Self>, _: Str, _: Arc<Socket<()>>) {}
    fn on_binary(self: &Arc<Self>, _: Bytes, _: Arc<Socket<()>>) {}
}

fn server(
    interval: Duration,
    timeout: Duration,
) -> (
    EngineIoService<Handler>,
    mpsc::UnboundedReceiver<(DisconnectReason, Instant)>,
) {
    let (disconnect_tx, disconnect_rx) = mpsc::unbounded_channel();
    let config = EngineIoConfig::builder()
        .ping_interval(interval)
        .ping_timeout(timeout)
        .build();
    let svc = EngineIoService::with_config(Arc::new(Handler { disconnect_tx }), config);
    (svc, disconnect_rx)
}

#[tokio::test]
async fn an_answering_client_is_pinged_every_interval_with_a_longer_timeout() {
    // 100 ms interval, 2 s timeout: five pings take ~500 ms. A schedule that waited for the
    // timeout before the next ping would take over 8 s.
    let (mut svc, mut disconnect_rx) = server(Duration::from_millis(100), Duration::from_secs(2));
    let mut ws = create_ws_connection(&mut svc).await;
    ws.next().await.unwrap().unwrap(); // open packet
    let started = Instant::now();
    for _ in 0..5 {
        let ping = tokio::time::timeout(Duration::from_secs(4), ws.next())
            .await
            .expect("the next ping did not come")
            .unwrap()
            .unwrap();
        assert_eq!(ping, Message::text("2"));
        ws.send(Message::text("3")).await.unwrap();
    }
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "five pings took {:?}",
        started.elapsed()
    );
    assert!(disconnect_rx.try_recv().is_err(), "closed while answering");
}

#[tokio::test]
async fn a_silent_client_is_closed_after_the_timeout_not_the_interval() {
    // 100 ms interval, 600 ms timeout: the first ping at 100 ms is never answered; the session
    // must live until 700 ms (not be closed at the 200 ms mark of the next interval) and then go.
    let (mut svc, mut disconnect_rx) =
        server(Duration::from_millis(100), Duration::from_millis(600));
    let opened = Instant::now();
    let _ws = create_ws_connection(&mut svc).await;
    let (reason, at) = tokio::time::timeout(Duration::from_secs(5), disconnect_rx.recv())
        .await
        .expect("the silent session was not closed")
        .unwrap();
    assert_eq!(reason, DisconnectReason::HeartbeatTimeout);
    let lived = at - opened;
    assert!(
        lived >= Duration::from_millis(680),
        "closed after {lived:?}"
    );
}
