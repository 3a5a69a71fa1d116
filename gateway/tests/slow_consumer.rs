//! Slow consumers (`ROOMCAST_CLIENT_BUFFER_BYTES`, `ROOMCAST_CLIENT_BUFFER`): a client that stops
//! reading is disconnected, by its full send buffer or by the heartbeat, and its connection is
//! really closed, while the clients that read get every event. The reproduction: five
//! non-reading clients stayed connected for over a minute holding +78 MB, with a 5 s heartbeat.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use roomcast_gateway::config::Secret;
use serde_json::{Value, json};

/// A client whose kernel receive buffer is tiny, so that it stalls after a few KB.
async fn stalling_client(gw: &TestGateway, user: &str) -> Client {
    let opts = Connect { recv_buffer: Some(4096), ..Connect::token(&user_token("t1", user)) };
    Client::connect(gw.addr, opts).await.expect("client connects")
}

async fn disconnects(gw: &TestGateway, reason: &str) -> f64 {
    sample(&gw.metrics().await, "roomcast_disconnects_total", &format!("reason=\"{reason}\""))
}

/// Publishes `count` events of `size` bytes to channel `c1` of tenant `t1`, in batches.
async fn publish_big(gw: &TestGateway, first: usize, count: usize, size: usize) {
    let blob = "x".repeat(size);
    let batch: Vec<Value> = (first..first + count)
        .map(|n| json!({ "tenant": "t1", "channel": "c1", "event": "big", "data": { "n": n, "blob": blob } }))
        .collect();
    let (status, body) = gw.publish(&Value::Array(batch)).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn a_client_that_stops_reading_is_disconnected_and_readers_get_every_event() {
    let gw = TestGateway::start_with(|c| {
        c.api_key = vec![Secret::from(replica::API_KEY.to_owned())];
        c.client_buffer_bytes = 256 * 1024;
        // Long enough that only the buffer policy can act here.
        c.ping_interval = Duration::from_secs(60);
        c.ping_timeout = Duration::from_secs(60);
    })
    .await;
    let reader = gw.connect_user("t1", "reader").await;
    assert_eq!(reader.request("join", json!({ "channel": "c1" })).await["ok"], true);
    let mut stalled = Vec::new();
    for i in 0..3 {
        let c = stalling_client(&gw, &format!("stalled{i}")).await;
        assert_eq!(c.request("join", json!({ "channel": "c1" })).await["ok"], true);
        c.stop_reading();
        stalled.push(c);
    }
    let before = disconnects(&gw, "slow_consumer").await;

    // Publish until all three are out: the kernel's buffers take a few hundred KB first.
    // A batch is a burst every member must absorb at once: well under the budget here.
    let (batch, size) = (8, 8 * 1024);
    let mut published = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while disconnects(&gw, "slow_consumer").await < before + 3.0 {
        assert!(tokio::time::Instant::now() < deadline, "stalled clients still connected after {published} events");
        assert!(published < 20_000, "{published} events and the stalled clients are still connected");
        publish_big(&gw, published, batch, size).await;
        published += batch;
    }

    // Their connections are really closed: once they read again, they find the end of stream.
    for c in &stalled {
        c.resume_reading();
        assert!(c.closed().await, "the slow consumer's connection was kept open");
    }
    // The client that reads got every event, in order, and is still connected.
    let got = eventually(WAIT, "the reader gets every event", || async {
        let events = reader.events("big");
        (events.len() >= published).then_some(events)
    })
    .await;
    let ns: Vec<u64> = got.iter().map(|args| args[0]["n"].as_u64().unwrap()).collect();
    assert_eq!(ns, (0..published as u64).collect::<Vec<_>>());
    assert_eq!(reader.request("join", json!({ "channel": "c2" })).await["ok"], true);
}

#[tokio::test]
async fn a_client_that_stops_reading_is_evicted_by_the_heartbeat_even_with_its_writer_blocked() {
    let (interval, timeout) = (Duration::from_millis(300), Duration::from_millis(300));
    let gw = TestGateway::start_with(|c| {
        c.api_key = vec![Secret::from(replica::API_KEY.to_owned())];
        c.ping_interval = interval;
        c.ping_timeout = timeout;
        // Budgets the test never reaches: only the heartbeat can act here.
        c.client_buffer = 100_000;
        c.client_buffer_bytes = 256 << 20;
    })
    .await;
    let c = stalling_client(&gw, "quiet").await;
    assert_eq!(c.request("join", json!({ "channel": "c1" })).await["ok"], true);
    c.stop_reading();
    let before = disconnects(&gw, "heartbeat_timeout").await;
    // Enough to fill the client's receive buffer, the server's send buffer and the WebSocket
    // write buffer: the socket's writer is now blocked in a write the client never reads.
    for first in (0..256).step_by(16) {
        publish_big(&gw, first, 16, 16 * 1024).await;
    }
    let published = tokio::time::Instant::now();
    eventually(WAIT, "the heartbeat evicts the client", || async {
        (disconnects(&gw, "heartbeat_timeout").await > before).then_some(())
    })
    .await;
    // Within ping interval + timeout, + the writer's 1 s grace, + a loaded machine's scheduling.
    let took = published.elapsed();
    assert!(took < interval + timeout + Duration::from_secs(4), "evicted after {took:?}");
    c.resume_reading();
    assert!(c.closed().await, "the evicted client's connection was kept open");
}

#[tokio::test]
async fn a_recovery_replay_longer_than_the_buffer_is_paced_not_taken_for_a_slow_consumer() {
    let gw = TestGateway::start_with(|c| {
        c.api_key = vec![Secret::from(replica::API_KEY.to_owned())];
        c.client_buffer = 16;
        c.history_size = 1_000;
    })
    .await;
    let c = gw.connect_user("t1", "away").await;
    let ack = c.request("join", json!({ "channel": "c1" })).await;
    let (offset, epoch) = (ack["offset"].as_u64().unwrap(), ack["epoch"].as_str().unwrap().to_owned());
    assert_eq!(c.request("leave", json!({ "channel": "c1" })).await["ok"], true);
    // 600 missed events: the replay is 37 times the 16-packet buffer.
    for first in (0..600).step_by(100) {
        publish_big(&gw, first, 100, 16).await;
    }
    let ack = c.request("join", json!({ "channel": "c1", "since": { "offset": offset, "epoch": epoch } })).await;
    assert_eq!(ack["recovered"], true, "{ack}");
    let got: Vec<u64> = c.events("big").iter().map(|args| args[0]["n"].as_u64().unwrap()).collect();
    assert_eq!(got, (0..600).collect::<Vec<u64>>(), "every missed event, in order, before the ack");
    // Still connected (a slow consumer would have lost the ack and been disconnected).
    assert_eq!(c.request("join", json!({ "channel": "c2" })).await["ok"], true);
}
