//! Joining and leaving rooms: what the token allows, what is refused and with which code,
//! bad input, and the order of a socket's operations.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn a_socket_joins_and_leaves_the_rooms_its_token_allows() {
    let gw = TestGateway::start().await;
    let c = gw.connect_user("t1", "u1").await;
    let ack = c.request("join", json!({ "project": "p1" })).await;
    assert_eq!((ack["ok"].clone(), ack["room"].clone()), (json!(true), json!("tenant:t1:project:p1")));
    // The room's history position: nothing published yet, in an epoch the room keeps.
    assert_eq!(ack["offset"], 0, "{ack}");
    assert!(ack["epoch"].as_str().is_some_and(|e| !e.is_empty()), "{ack}");
    let ack = c.request("join", json!({ "channel": "c2" })).await;
    assert_eq!(ack["room"], "tenant:t1:channel:c2");
    // Idempotent: joining again or leaving twice is fine.
    assert_eq!(c.request("join", json!({ "project": "p1" })).await["ok"], true);
    assert_eq!(
        c.request("leave", json!({ "project": "p1" })).await,
        json!({ "ok": true, "room": "tenant:t1:project:p1" })
    );
    assert_eq!(c.request("leave", json!({ "project": "p1" })).await["ok"], true);
}

#[tokio::test]
async fn rooms_outside_the_token_are_forbidden_and_ids_are_validated() {
    let gw = TestGateway::start().await;
    let c = gw.connect_user("t1", "u1").await;
    assert_eq!(code(&c.request("join", json!({ "project": "p3" })).await), "forbidden");
    assert_eq!(code(&c.request("join", json!({ "channel": "c9" })).await), "forbidden");
    // The tenant comes from the token: there is no way to name another tenant's room.
    let ack = c.request("join", json!({ "project": "p1", "tenant": "t2" })).await;
    assert_eq!(ack["room"], "tenant:t1:project:p1", "a tenant field is ignored: {ack}");
    for bad in ["", "a:b", "{p1}", "p 1", "é"] {
        assert_eq!(code(&c.request("join", json!({ "project": bad })).await), "invalid_room", "{bad:?}");
    }
    assert_eq!(code(&c.request("join", json!({ "channel": "x".repeat(129) })).await), "invalid_room");
}

#[tokio::test]
async fn a_wildcard_claim_grants_every_room_of_the_tenant() {
    let gw = TestGateway::start().await;
    let mut all = claims("t1", "u1");
    all["projects"] = json!(["*"]);
    let c = gw.connect(&token(&all)).await;
    assert_eq!(c.request("join", json!({ "project": "anything" })).await["room"], "tenant:t1:project:anything");
    assert_eq!(code(&c.request("join", json!({ "channel": "c9" })).await), "forbidden");
}

#[tokio::test]
async fn malformed_payloads_get_invalid_payload() {
    let gw = TestGateway::start().await;
    let c = gw.connect_user("t1", "u1").await;
    for bad in [
        json!("p1"),
        json!(42),
        json!(null),
        json!([{ "project": "p1" }]),
        json!({}),
        json!({ "project": 1 }),
        json!({ "project": null }),
        json!({ "project": "p1", "channel": "c1" }),
    ] {
        assert_eq!(code(&c.request("join", bad.clone()).await), "invalid_payload", "join {bad}");
        assert_eq!(code(&c.request("leave", bad.clone()).await), "invalid_payload", "leave {bad}");
    }
    // No argument at all.
    let rx = {
        c.send_raw("421[\"join\"]");
        c.request("join", json!({ "project": "p1" }))
    };
    assert_eq!(rx.await["ok"], true, "the socket still works after an argument-less event");
}

#[tokio::test]
async fn unknown_events_are_answered_not_ignored() {
    let gw = TestGateway::start().await;
    let c = gw.connect_user("t1", "u1").await;
    assert_eq!(code(&c.request("subscribe", json!({ "room": "x" })).await), "unknown_event");
}

#[tokio::test]
async fn the_room_cap_is_enforced_and_frees_up_on_leave() {
    let gw = TestGateway::start_with(|c| c.max_rooms_per_socket = 2).await;
    let c = gw.connect_user("t1", "u1").await;
    assert_eq!(c.request("join", json!({ "project": "p1" })).await["ok"], true);
    assert_eq!(c.request("join", json!({ "channel": "c1" })).await["ok"], true);
    assert_eq!(code(&c.request("join", json!({ "project": "p2" })).await), "too_many_rooms");
    assert_eq!(c.request("leave", json!({ "channel": "c1" })).await["ok"], true);
    assert_eq!(c.request("join", json!({ "project": "p2" })).await["ok"], true);
}

#[tokio::test]
async fn pipelined_operations_apply_in_the_order_they_were_sent() {
    // With a cap of one room, join A / leave A / join B only all succeed in this order. (80
    // operations at once: beyond a client's budget, which is not what this is about.)
    let gw = TestGateway::start_with(|c| {
        c.max_rooms_per_socket = 1;
        c.rate_rooms = "100000/s:100000".parse().unwrap();
    })
    .await;
    let c = gw.connect_user("t1", "u1").await;
    for _ in 0..20 {
        let acks = [
            c.send_request("join", json!({ "project": "p1" })),
            c.send_request("leave", json!({ "project": "p1" })),
            c.send_request("join", json!({ "project": "p2" })),
            c.send_request("leave", json!({ "project": "p2" })),
        ];
        for ack in acks {
            let ack = tokio::time::timeout(WAIT, ack).await.unwrap().unwrap();
            assert_eq!(ack[0]["ok"], true, "{ack:?}");
        }
    }
}

#[tokio::test]
async fn oversized_and_garbled_packets_close_only_that_connection() {
    let gw = TestGateway::start_with(|c| c.max_payload = 16 * 1024).await;
    let c = gw.connect_user("t1", "u1").await;
    // A big id inside the payload limit is an ordinary invalid room.
    assert_eq!(code(&c.request("join", json!({ "project": "x".repeat(8 * 1024) })).await), "invalid_room");

    // Over the Engine.IO payload limit: the transport is closed, as socket.io does.
    c.emit("join", json!({ "project": "x".repeat(64 * 1024) }));
    assert!(c.closed().await);

    let c = gw.connect_user("t1", "u1").await;
    c.send_raw("4299[\"join\", {broken");
    c.send_raw("4\u{0}\u{1}garbage");
    c.send_raw("");
    // Whatever the parser makes of these, the connection either answers or is closed; the
    // process must not be affected (checked below).
    let _ = c.try_request("join", json!({ "project": "p1" })).await;

    // The gateway is unharmed.
    let d = gw.connect_user("t1", "u2").await;
    assert_eq!(d.request("join", json!({ "project": "p1" })).await["ok"], true);
}

#[tokio::test]
async fn joins_leaves_and_local_rooms_are_counted_in_metrics() {
    let gw = TestGateway::start().await;
    let c = gw.connect_user("metrics-tenant", "u1").await;
    assert_eq!(c.request("join", json!({ "project": "p1" })).await["ok"], true);
    let scrape = gw.metrics().await;
    for kind in ["tenant", "user", "project"] {
        assert!(sample(&scrape, "roomcast_room_joins_total", &format!("kind=\"{kind}\"")) >= 1.0, "{kind}");
    }
    assert!(sample(&scrape, "roomcast_client_events_total", "event=\"join\",result=\"ok\"") >= 1.0);
    c.disconnect();
    eventually(WAIT, "the disconnect to be counted", || async {
        let scrape = gw.metrics().await;
        (sample(&scrape, "roomcast_disconnects_total", "reason=\"client_disconnect\"") >= 1.0
            && sample(&scrape, "roomcast_room_leaves_total", "kind=\"project\"") >= 1.0)
            .then_some(())
    })
    .await;
}
