//! Cluster semantics in one process, in seconds: several gateways on one [`LocalCluster`] (an
//! in-memory bus, history and presence shared as Redis shares them between replicas). What
//! Redis itself does — restarts, lag, sharded pub/sub, crashed replicas — is tested against real
//! servers and processes in `cluster.rs`, `presence.rs` and `recovery.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{replica::API_KEY, *};
use roomcast_gateway::{HistoryPolicy, LocalCluster, config::Secret};
use serde_json::{Value, json};

/// `n` gateways on one new cluster (history on), accepting the test API key.
async fn gateways(n: usize, grace: Duration) -> (LocalCluster, Vec<TestGateway>) {
    let cluster = LocalCluster::new(Some(HistoryPolicy::default()));
    let mut all = Vec::new();
    for _ in 0..n {
        all.push(
            TestGateway::start_local(&cluster, |c| {
                c.api_key = vec![Secret::from(API_KEY.to_owned())];
                c.presence_grace = grace;
            })
            .await,
        );
    }
    (cluster, all)
}

async fn member(gw: &TestGateway, user: &str, room: Value) -> Client {
    let c = gw.connect_user("t1", user).await;
    let ack = c.request("join", room.clone()).await;
    assert_eq!(ack["ok"], true, "join {room}: {ack}");
    c
}

async fn publish(gw: &TestGateway, body: Value) -> Value {
    let (status, receipt) = gw.publish(&body).await;
    assert_eq!(status, 200, "{receipt}");
    receipt
}

/// Publishes marker `n` to `room` from `gw` and waits for `c` to get it: everything published
/// on the hub before it has reached `c` too (one delivery task, in publish order).
async fn barrier(gw: &TestGateway, c: &Client, room: Value, n: u64) {
    let mut body = json!({ "tenant": "t1", "event": "marker", "data": n });
    body.as_object_mut().unwrap().extend(room.as_object().unwrap().clone());
    publish(gw, body).await;
    while c.next("marker").await[0] != n {}
}

const P1: fn() -> Value = || json!({ "project": "p1" });
const C1: fn() -> Value = || json!({ "channel": "c1" });

#[tokio::test]
async fn a_publish_reaches_exactly_the_right_sockets_on_every_gateway_once() {
    let (cluster, gws) = gateways(3, Duration::from_secs(3)).await;
    let mut project = Vec::new();
    let mut others = Vec::new();
    for (i, gw) in gws.iter().enumerate() {
        project.push(member(gw, &format!("a{i}"), P1()).await);
        others.push(member(gw, &format!("b{i}"), C1()).await);
        others.push(gw.connect_user("t2", &format!("a{i}")).await);
    }
    let a1_tab = gws[2].connect_user("t1", "a1").await;
    assert_eq!(cluster.subscribers("tenant:t1:project:p1"), 3);

    let receipt = publish(&gws[0], json!({ "tenant": "t1", "project": "p1", "event": "task", "data": {"n": 1} })).await;
    assert_eq!((receipt["replicas"].clone(), receipt["offset"].clone()), (json!(3), json!(1)), "{receipt}");
    publish(&gws[1], json!({ "tenant": "t1", "user": "a1", "event": "note", "data": {} })).await;
    for gw_tenant in ["t1", "t2"] {
        publish(&gws[2], json!({ "tenant": gw_tenant, "event": "done", "data": 1 })).await;
    }
    for c in project.iter().chain(&others).chain([&a1_tab]) {
        c.next("done").await;
    }
    for (i, a) in project.iter().enumerate() {
        let got = a.events("task");
        assert_eq!(got.len(), 1, "project member on gateway {i}: {got:?}");
        assert_eq!((got[0][1]["room"].clone(), got[0][1]["offset"].clone()), (json!("tenant:t1:project:p1"), json!(1)));
        assert_eq!(a.events("note").len(), usize::from(i == 1), "only user a1 gets their notification");
    }
    assert_eq!(a1_tab.events("note").len(), 1, "the user's other tab, on another gateway");
    for c in others.iter().chain([&a1_tab]) {
        assert!(c.events("task").is_empty(), "not in p1");
    }
}

#[tokio::test]
async fn subscriptions_follow_membership_across_gateways() {
    let (cluster, gws) = gateways(2, Duration::from_secs(3)).await;
    let room = "tenant:t1:channel:c1";
    let a = member(&gws[0], "a", C1()).await;
    assert_eq!(cluster.subscribers(room), 1);
    let b = member(&gws[1], "b", C1()).await;
    assert_eq!(cluster.subscribers(room), 2);
    assert_eq!(a.request("leave", C1()).await["ok"], true);
    assert_eq!(cluster.subscribers(room), 1, "the last member on gateway 0 left");
    b.close();
    eventually(WAIT, "gateway 1 unsubscribed after its member disconnected", || async {
        (cluster.subscribers(room) == 0).then_some(())
    })
    .await;
    // Nobody anywhere: a publish reaches no gateway.
    let receipt = publish(&gws[0], json!({ "tenant": "t1", "channel": "c1", "event": "x", "data": 1 })).await;
    assert_eq!(receipt["replicas"], 0);
}

#[tokio::test]
async fn tabs_on_two_gateways_make_one_join_and_one_leave_and_status_crosses() {
    let (_cluster, gws) = gateways(2, Duration::from_millis(200)).await;
    let observer = member(&gws[0], "observer", P1()).await;
    assert_eq!(observer.next("presence:join").await[0]["userId"], "observer");
    let tab1 = member(&gws[0], "ada", P1()).await;
    assert_eq!(observer.next("presence:join").await[0]["userId"], "ada");
    let tab2 = member(&gws[1], "ada", P1()).await;
    connections_become(&observer, "ada", 2).await;

    assert_eq!(tab2.request("presence:update", json!({ "status": "away" })).await["ok"], true);
    let update = observer.next("presence:update").await;
    assert_eq!(update[0], json!({ "project": "p1", "userId": "ada", "status": "away" }));

    tab1.close();
    // Counted out after the grace period: a leave, if any, would have been published by then.
    connections_become(&observer, "ada", 1).await;
    barrier(&gws[1], &observer, P1(), 2).await;
    assert!(observer.events("presence:leave").is_empty(), "closing one tab is not a leave");
    assert!(observer.events("presence:join").is_empty(), "a second tab is not a second join");

    tab2.close();
    assert_eq!(observer.next("presence:leave").await[0], json!({ "project": "p1", "userId": "ada" }));
    barrier(&gws[0], &observer, P1(), 3).await;
    assert!(observer.events("presence:leave").is_empty(), "exactly one leave");
}

/// Waits until `c`'s presence list of p1 counts `want` connections of `user`.
async fn connections_become(c: &Client, user: &str, want: u64) {
    eventually(WAIT, &format!("{user} with {want} connections"), || async {
        let listed = request_politely(c, "presence:list", P1()).await;
        let users = listed["users"].as_array()?.clone();
        users.iter().any(|u| u["userId"] == user && u["connections"] == want).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_gateway_that_stops_takes_its_users_presence_with_it() {
    let (_cluster, mut gws) = gateways(2, Duration::from_millis(200)).await;
    let observer = member(&gws[0], "observer", P1()).await;
    let _ada = member(&gws[1], "ada", P1()).await;
    connections_become(&observer, "ada", 1).await;
    gws[1].begin_shutdown();
    gws[1].stopped_within(Duration::from_secs(10)).await;
    assert_eq!(observer.next("presence:leave").await[0], json!({ "project": "p1", "userId": "ada" }));
    let listed = request_politely(&observer, "presence:list", P1()).await;
    assert_eq!(listed["total"], 1, "only the observer is left: {listed}");
}

#[tokio::test]
async fn typing_crosses_gateways_skips_the_typists_tabs_and_stops_on_disconnect() {
    let (_cluster, gws) = gateways(2, Duration::from_secs(3)).await;
    let bob = member(&gws[1], "bob", C1()).await;
    let ada = member(&gws[0], "ada", C1()).await;
    let ada_tab = member(&gws[1], "ada", C1()).await;
    assert_eq!(ada.request("typing", json!({ "channel": "c1", "typing": true })).await, json!({ "ok": true }));
    assert_eq!(bob.next("typing").await[0], json!({ "channel": "c1", "userId": "ada", "typing": true, "ttlMs": 6000 }));
    let started = Instant::now();
    ada.close();
    assert_eq!(bob.next("typing").await[0]["typing"], false);
    assert!(started.elapsed() < Duration::from_secs(3), "stopped by the disconnect, not by the 6 s TTL");
    barrier(&gws[0], &ada_tab, C1(), 1).await;
    assert!(ada_tab.events("typing").is_empty(), "the typing user's other tab sees nothing");
}

#[tokio::test]
async fn a_client_rejoining_on_another_gateway_gets_exactly_what_it_missed() {
    let (_cluster, gws) = gateways(2, Duration::from_secs(3)).await;
    let send = |n: u64| publish(&gws[0], json!({ "tenant": "t1", "project": "p1", "event": "n", "data": n }));
    for n in 1..=3 {
        send(n).await;
    }
    let c = gws[0].connect_user("t1", "ada").await;
    let ack = c.request("join", P1()).await;
    assert_eq!(ack["offset"], 3, "{ack}");
    let epoch = ack["epoch"].clone();
    send(4).await;
    let got = c.next("n").await;
    assert_eq!((got[0].clone(), got[1]["offset"].clone()), (json!(4), json!(4)));
    c.close();
    for n in 5..=7 {
        send(n).await;
    }
    let again = gws[1].connect_user("t1", "ada").await;
    let ack = again.request("join", json!({ "project": "p1", "since": { "offset": 4, "epoch": epoch } })).await;
    assert_eq!((ack["recovered"].clone(), ack["offset"].clone()), (json!(true), json!(7)), "{ack}");
    send(8).await;
    let mut seen = Vec::new();
    while seen.last() != Some(&8) {
        seen.push(again.next("n").await[0].as_u64().unwrap());
    }
    assert_eq!(seen, [5, 6, 7, 8], "the missed events once, in order, then live");
}
