//! Per-socket rate limits on client events (`ROOMCAST_RATE_*`): refused with `rate_limited` and
//! `retryAfterMs`, per class of event, and a socket that keeps flooding is disconnected, while
//! the other sockets on the replica carry on.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

#[tokio::test]
async fn an_event_over_its_budget_is_refused_with_when_to_retry_and_other_classes_still_pass() {
    let gw = TestGateway::start_with(|c| c.rate_presence_update = "2/s:5".parse().unwrap()).await;
    let c = gw.connect_user("t1", "ada").await;
    assert_eq!(c.request("join", json!({ "channel": "c1" })).await["ok"], true);
    // Sent at once (not one round trip each), so the bucket barely refills meanwhile.
    let acks: Vec<_> = (0..6).map(|_| c.send_request("presence:update", json!({ "status": "away" }))).collect();
    let mut acks: Vec<serde_json::Value> =
        futures_util::future::join_all(acks).await.into_iter().map(|a| a.unwrap()[0].clone()).collect();
    let refused = acks.pop().unwrap();
    for (i, ack) in acks.iter().enumerate() {
        assert_eq!(ack["ok"], true, "update {i} is within the burst: {ack}");
    }
    assert_eq!(code(&refused), "rate_limited", "{refused}");
    let retry = refused["error"]["retryAfterMs"].as_u64().unwrap();
    assert!((1..=500).contains(&retry), "a token comes back within 1/2 s at 2/s: {retry}");
    // Its own budget per class: joining, listing and leaving still work.
    assert_eq!(c.request("join", json!({ "channel": "c2" })).await["ok"], true);
    assert_eq!(c.request("presence:list", json!({ "channel": "c1" })).await["ok"], true);
    // After the wait it said, the same event passes again.
    tokio::time::sleep(Duration::from_millis(retry)).await;
    let ack = c.request("presence:update", json!({ "status": "online" })).await;
    assert_eq!(ack["ok"], true, "{ack}");
}

#[tokio::test]
async fn a_socket_that_keeps_flooding_is_disconnected_and_the_others_carry_on() {
    let gw = TestGateway::start_with(|c| {
        c.rate_other = "5/s:5".parse().unwrap();
        c.rate_limit_disconnect = Duration::from_secs(1);
    })
    .await;
    let calm = gw.connect_user("t1", "calm").await;
    let flood = gw.connect_user("t1", "flood").await;
    // Unknown events cost a dispatch and an error ack: they have a budget too.
    let first = flood.request("no:such:event", json!({})).await;
    assert_eq!(code(&first), "unknown_event");
    flood_until_disconnected(&flood).await;
    let reason = flood.next("roomcast:disconnect").await;
    assert_eq!(reason[0]["code"], "rate_limited");
    assert_eq!(reason[0]["reconnect"], false);
    assert!(flood.server_disconnect().await, "a Socket.IO disconnect: no automatic reconnect");
    // The other socket was never limited.
    assert_eq!(calm.request("join", json!({ "channel": "c1" })).await["ok"], true);
    let scrape = gw.metrics().await;
    assert!(sample(&scrape, "roomcast_client_events_total", "result=\"rate_limited\"") > 0.0);
    assert!(sample(&scrape, "roomcast_disconnects_total", "reason=\"rate_limited\"") >= 1.0, "{scrape}");
}

#[tokio::test]
async fn a_budget_that_is_not_a_rate_stops_the_gateway_at_startup_naming_the_option() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_roomcast-gateway"))
        .env("ROOMCAST_JWT_SECRET", SECRET)
        .env("ROOMCAST_RATE_TYPING", "lots")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("ROOMCAST_RATE_TYPING") || stderr.contains("--rate-typing"), "{stderr}");
    assert!(stderr.contains("N/s"), "says how to write it: {stderr}");
}

#[tokio::test]
async fn new_connections_over_the_replica_connect_rate_are_refused_with_a_code() {
    // 0.01/s: no token comes back during the test, whatever the machine's load.
    let gw = TestGateway::start_with(|c| c.connect_rate = Some("0.01/s:3".parse().unwrap())).await;
    let mut connected = Vec::new();
    for i in 0..3 {
        connected.push(gw.connect_user("t1", &format!("u{i}")).await);
    }
    let refused = Client::connect(gw.addr, Connect::token(&user_token("t1", "late"))).await;
    assert_eq!(refused.err(), Some(ConnectFailure::Rejected("rate_limited".into())));
    // Those already connected are unaffected.
    assert_eq!(connected[0].request("join", json!({ "project": "p1" })).await["ok"], true);
    let scrape = gw.metrics().await;
    assert!(sample(&scrape, "roomcast_connections_rejected_total", "reason=\"rate_limited\"") >= 1.0);
}

/// The read pause (a refused socket is not read until its next token) must not hide a flood
/// from the disconnect: with a budget slower than one event a second, the pause is capped so
/// that refusals stay close enough together to count as one sustained flood.
#[tokio::test]
async fn a_flood_over_a_slow_budget_is_still_disconnected_despite_the_read_pause() {
    let gw = TestGateway::start_with(|c| {
        c.rate_other = "0.5/s:1".parse().unwrap();
        c.rate_limit_disconnect = Duration::from_secs(2);
    })
    .await;
    let flood = gw.connect_user("t1", "flood").await;
    flood_until_disconnected(&flood).await;
    let reason = flood.next("roomcast:disconnect").await;
    assert_eq!(reason[0]["code"], "rate_limited");
}

/// Sends unknown events every 20 ms until the server disconnects the client (or `WAIT` passes).
async fn flood_until_disconnected(flood: &Client) {
    let disconnected = async {
        loop {
            flood.emit("no:such:event", json!({}));
            if flood.got_server_disconnect() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(WAIT, disconnected).await.expect("the flood is disconnected");
}
