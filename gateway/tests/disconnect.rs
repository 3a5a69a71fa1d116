//! A disconnect cleans up everything the socket had, whatever it was doing at that moment:
//! local rooms, Redis subscriptions, presence and the metrics all return to zero.
//!
//! The races are made deterministic with `ROOMCAST_DEBUG_OPERATION_DELAY`: every operation
//! pauses once under way, and the client disconnects inside that pause. A client's
//! `socket.disconnect()` sends a Socket.IO DISCONNECT and then closes the transport; the second
//! close made socketioxide empty the socket's rooms while Roomcast's disconnect handler was
//! still waiting for the operation, which left rooms, subscriptions and presence behind forever.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{redis::*, replica::*, *};
use serde_json::{Value, json};

/// Long enough that the client's disconnect always lands inside it, even on a loaded machine:
/// the test does not send the disconnect *after* a sleep, it sends it at once, so only the
/// gateway reading two already-sent frames has to fit in this window.
const DELAY: &str = "400ms";

/// What a client does just before it disconnects.
#[derive(Debug, Clone, Copy)]
enum Op {
    Join,
    Leave,
    Refresh,
    PresenceUpdate,
}

const OPS: [Op; 4] = [Op::Join, Op::Leave, Op::Refresh, Op::PresenceUpdate];

/// How the client goes away.
#[derive(Debug, Clone, Copy)]
enum Exit {
    /// `socket.disconnect()`: a DISCONNECT packet, then the transport closes.
    Disconnect,
    /// The tab closes: the transport closes without a DISCONNECT packet.
    Close,
    /// A DISCONNECT packet, then (misbehaving) one more `join`, then the transport closes.
    DisconnectThenJoin,
}

fn env() -> Vec<(&'static str, &'static str)> {
    vec![("ROOMCAST_DEBUG_OPERATION_DELAY", DELAY), ("ROOMCAST_PRESENCE_GRACE", "50ms")]
}

/// One connect / operation / disconnect cycle of user `u` in `tenant`, on `r`.
async fn cycle(r: &Replica, tenant: String, op: Op, exit: Exit) {
    let c = r.connect_user(&tenant, "u").await;
    if !matches!(op, Op::Join) {
        let ack = c.request("join", json!({ "project": "p1" })).await;
        assert_eq!(ack["ok"], true, "{ack}");
    }
    let _pending = match op {
        Op::Join => c.send_request("join", json!({ "project": "p2" })),
        Op::Leave => c.send_request("leave", json!({ "project": "p1" })),
        Op::Refresh => c.send_request("auth:refresh", json!({ "token": user_token(&tenant, "u") })),
        Op::PresenceUpdate => c.send_request("presence:update", json!({ "status": "away" })),
    };
    match exit {
        Exit::Disconnect => c.disconnect(),
        Exit::Close => c.close(),
        Exit::DisconnectThenJoin => {
            c.send_raw("41");
            c.emit("join", json!({ "channel": "c1" }));
            c.close();
        }
    }
    assert!(c.closed().await, "the connection closed");
}

/// Runs every (operation, exit) pair `per_pair` times at once, each in its own tenant
/// (`{prefix}{n}`); returns the tenants.
async fn churn(r: &Replica, prefix: &str, per_pair: usize) -> Vec<String> {
    let mut cycles = Vec::new();
    let mut tenants = Vec::new();
    for op in OPS {
        for exit in [Exit::Disconnect, Exit::Close, Exit::DisconnectThenJoin] {
            for _ in 0..per_pair {
                let tenant = format!("{prefix}{}", tenants.len());
                tenants.push(tenant.clone());
                cycles.push(cycle(r, tenant, op, exit));
            }
        }
    }
    futures_util::future::join_all(cycles).await;
    tenants
}

/// Waits until `r` reports no connection and no local room; the panic says what was left.
async fn empty(r: &Replica) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let scrape = r.metrics().await;
        let (conns, rooms) = (sample(&scrape, "roomcast_connections", ""), sample(&scrape, "roomcast_local_rooms", ""));
        if conns == 0.0 && rooms == 0.0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "left behind after every client disconnected: {conns} connections, {rooms} local rooms"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The sum of every series of `name`.
fn total(scrape: &str, name: &str) -> f64 {
    scrape
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Nobody is listed in p1 or p2 of any of `tenants`, asked through a fresh client on `r`.
async fn nobody_present(r: &Replica, tenants: &[String]) {
    futures_util::future::join_all(tenants.iter().map(|tenant| async move {
        let observer = r.connect_user(tenant, "observer").await;
        for room in [json!({ "project": "p1" }), json!({ "project": "p2" })] {
            eventually(WAIT, &format!("{tenant} {room} empty"), || {
                let room = room.clone();
                let observer = &observer;
                async move {
                    let ack = request_politely(observer, "presence:list", room).await;
                    assert_eq!(ack["ok"], true, "{ack}");
                    (ack["users"] == Value::Array(vec![])).then_some(())
                }
            })
            .await;
        }
        observer.disconnect();
    }))
    .await;
}

#[tokio::test]
async fn a_disconnect_during_any_operation_leaves_nothing_behind_on_a_single_node() {
    let r = Replica::spawn(None, &env()).await;
    let tenants = churn(&r, "solo", 3).await;
    empty(&r).await;
    let scrape = r.metrics().await;
    assert_eq!(total(&scrape, "roomcast_room_joins_total"), total(&scrape, "roomcast_room_leaves_total"));
    nobody_present(&r, &tenants).await;
}

#[tokio::test]
async fn a_disconnect_during_any_operation_leaves_nothing_behind_across_replicas() {
    let redis = RedisServer::start();
    let a = Replica::spawn(Some(&redis.url()), &env()).await;
    let b = Replica::spawn(Some(&redis.url()), &env()).await;
    for r in [&a, &b] {
        eventually(WAIT, "replica ready", || async { r.redis_ok().await.then_some(()) }).await;
    }
    let tenants = churn(&a, "multi", 3).await;
    empty(&a).await;
    // No subscription of any churned room is left in Redis.
    eventually(WAIT, "no channel of a churned tenant subscribed", || async {
        let channels = redis.cli(&["PUBSUB", "CHANNELS", "*multi*"]);
        channels.is_empty().then_some(())
    })
    .await;
    // Presence is read from the other replica: what Redis holds, not what A remembers.
    nobody_present(&b, &tenants).await;
}
