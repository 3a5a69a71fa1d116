//! The server's first ping goes out one `ping_interval` after the session opens, as the
//! Engine.IO protocol says, not with the handshake: a ping at once costs every new connection a
//! round trip, and answers a polling client's first poll at once (the official protocol test
//! suite's "should forcefully close the session" over polling expects that poll to get the
//! `6` noop, not a `2`).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use engineioxide::{
    Str, config::EngineIoConfig, handler::EngineIoHandler, service::EngineIoService, socket::Socket,
};
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

mod fixture;
use fixture::{create_polling_connection, create_ws_connection, send_req};

#[derive(Debug)]
struct Handler;

impl EngineIoHandler for Handler {
    type Data = ();
    fn on_connect(self: Arc<Self>, _: Arc<Socket<()>>) {}
    fn on_disconnect(&self, _: Arc<Socket<()>>, _: engineioxide::socket::DisconnectReason) {}
    fn on_message(self: &Arc<Self>, _: Str, _: Arc<Socket<()>>) {}
    fn on_binary(self: &Arc<Self>, _: Bytes, _: Arc<Socket<()>>) {}
}

fn server(interval: Duration) -> EngineIoService<Handler> {
    let config = EngineIoConfig::builder()
        .ping_interval(interval)
        .ping_timeout(Duration::from_secs(60))
        .build();
    EngineIoService::with_config(Arc::new(Handler), config)
}

#[tokio::test]
async fn ws_no_ping_before_the_interval() {
    let mut svc = server(Duration::from_secs(60));
    let mut ws = create_ws_connection(&mut svc).await;
    let open = ws.next().await.unwrap().unwrap();
    assert!(
        matches!(&open, Message::Text(t) if t.starts_with('0')),
        "{open:?}"
    );
    let early = tokio::time::timeout(Duration::from_millis(300), ws.next()).await;
    assert!(
        early.is_err(),
        "a packet before the ping interval: {early:?}"
    );
}

#[tokio::test]
async fn ws_first_ping_after_the_interval() {
    let interval = Duration::from_millis(300);
    let mut svc = server(interval);
    let mut ws = create_ws_connection(&mut svc).await;
    ws.next().await.unwrap().unwrap(); // open packet
    let opened = Instant::now();
    let ping = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("no ping within 5 s")
        .unwrap()
        .unwrap();
    assert_eq!(ping, Message::text("2"));
    // Later is only a slow machine; earlier is the bug.
    assert!(
        opened.elapsed() >= interval - Duration::from_millis(20),
        "ping after {:?}",
        opened.elapsed()
    );
}

#[tokio::test]
async fn polling_first_poll_waits_for_the_interval() {
    let mut svc = server(Duration::from_secs(60));
    let sid = create_polling_connection(&mut svc).await;
    let poll = send_req(
        &mut svc,
        format!("transport=polling&sid={sid}"),
        http::Method::GET,
        None,
    );
    let early = tokio::time::timeout(Duration::from_millis(300), poll).await;
    assert!(
        early.is_err(),
        "the first poll was answered at once: {early:?}"
    );
}
