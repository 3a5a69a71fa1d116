//! The control API (issue 16): `POST /v1/disconnect` ends a user's, a room's, a tenant's
//! sockets, or one socket, on every replica, and answers with how many it reached.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{redis::RedisServer, replica::Replica, *};
use roomcast_gateway::config::Secret;
use serde_json::{Value, json};

const KEY: &str = "control-api-key-0123456789";

async fn disconnect(api: std::net::SocketAddr, key: &str, body: &Value) -> (u16, Value) {
    post_json(api, key, "/v1/disconnect", body).await
}

#[tokio::test]
async fn a_user_is_disconnected_on_every_replica_with_a_receipt() {
    let redis = RedisServer::start();
    let rs = Replica::ready(2, &redis.url(), &[]).await;
    let ada_here = rs[0].connect_user("t1", "ada").await;
    let ada_there = rs[1].connect_user("t1", "ada").await;
    let bob = rs[0].connect_user("t1", "bob").await;
    let other_tenant_ada = rs[1].connect_user("t2", "ada").await;
    subscribed(&redis, "tenant:t1:user:ada", 2).await;

    let started = Instant::now();
    let body = json!({ "tenant": "t1", "user": "ada", "reason": "removed_from_workspace", "message": "bye" });
    let (status, receipt) = disconnect(rs[1].api, replica::API_KEY, &body).await;
    assert_eq!(status, 200, "{receipt}");
    assert_eq!(
        (receipt["sockets"].clone(), receipt["replicas"].clone(), receipt["of"].clone(), receipt["complete"].clone()),
        (json!(2), json!(2), json!(2), json!(true)),
        "{receipt}"
    );
    assert_eq!(receipt["room"], "tenant:t1:user:ada");
    for c in [&ada_here, &ada_there] {
        let notice = kicked(c).await;
        assert_eq!(
            notice,
            json!({ "code": "disconnected", "reason": "removed_from_workspace", "message": "bye", "reconnect": false })
        );
    }
    eprintln!("both of ada's sockets, on two replicas, disconnected {:?} after the request", started.elapsed());
    // Nobody else was touched.
    for c in [&bob, &other_tenant_ada] {
        assert_eq!(c.request("join", json!({ "project": "p1" })).await["ok"], true);
        assert!(c.events("roomcast:disconnect").is_empty());
    }
    // Counted once the disconnect's cleanup ran, just after the close.
    eventually(WAIT, "the disconnect counted", || async {
        (rs[0].metric("roomcast_disconnects_total", r#"reason="disconnected""#).await >= 1.0).then_some(())
    })
    .await;

    // A room's members, wherever they are; then one socket; then nobody.
    let carol = rs[1].connect_user("t1", "carol").await;
    assert_eq!(carol.request("join", json!({ "project": "p1" })).await["ok"], true);
    subscribed(&redis, "tenant:t1:project:p1", 2).await;
    let (status, receipt) = disconnect(rs[0].api, replica::API_KEY, &json!({ "tenant": "t1", "project": "p1" })).await;
    assert_eq!((status, receipt["sockets"].clone(), receipt["of"].clone()), (200, json!(2), json!(2)), "{receipt}");
    for c in [&bob, &carol] {
        assert_eq!(kicked(c).await["reason"], Value::Null, "no reason given: none passed on");
    }
    let dave = rs[0].connect_user("t1", "dave").await;
    let dave_too = rs[0].connect_user("t1", "dave").await;
    subscribed(&redis, "tenant:t1:user:dave", 1).await;
    let one = json!({ "tenant": "t1", "user": "dave", "socket": dave.sid, "reconnect": true });
    let (status, receipt) = disconnect(rs[1].api, replica::API_KEY, &one).await;
    assert_eq!((status, receipt["sockets"].clone()), (200, json!(1)), "{receipt}");
    assert_eq!(kicked(&dave).await["reconnect"], true);
    assert!(dave_too.next_within("roomcast:disconnect", Duration::from_millis(200)).await.is_none());
    let (status, receipt) = disconnect(rs[1].api, replica::API_KEY, &json!({ "tenant": "t1", "user": "nobody" })).await;
    assert_eq!(
        (status, receipt["sockets"].clone(), receipt["of"].clone(), receipt["complete"].clone()),
        (200, json!(0), json!(0), json!(true))
    );
}

#[tokio::test]
async fn a_tenant_is_disconnected_on_a_single_node_and_bad_requests_get_codes() {
    let gw = TestGateway::start_with_tenant_keys(KEY, |_| {}).await;
    let a = gw.connect_user("t1", "ada").await;
    let b = gw.connect_user("t1", "bob").await;
    let other = gw.connect_user("t2", "eve").await;

    for (body, status, code) in [
        (json!({}), 400, "invalid_payload"),
        (json!({ "tenant": "t1", "user": "ada", "project": "p1" }), 400, "invalid_room"),
        (json!({ "tenant": "t:1" }), 400, "invalid_room"),
        (json!({ "tenant": "t1", "reason": "Not A Code" }), 400, "invalid_payload"),
        (json!({ "tenant": "t1", "message": "x".repeat(257) }), 400, "invalid_payload"),
        (json!({ "tenant": "t1", "socket": "not a sid" }), 400, "invalid_payload"),
        (json!({ "tenant": "t1", "everyone": true }), 400, "invalid_payload"),
        (json!({ "tenant": "t1", "message": "x".repeat(5000) }), 413, "payload_too_large"),
    ] {
        let (got, answer) = disconnect(gw.api, KEY, &body).await;
        assert_eq!((got, answer["error"]["code"].as_str().unwrap_or_default()), (status, code), "{body}: {answer}");
    }
    let (status, answer) = disconnect(gw.api, "wrong-key-wrong-key-0123", &json!({ "tenant": "t1" })).await;
    assert_eq!((status, answer["error"]["code"].clone()), (401, json!("unauthorized")));
    let (status, answer) = disconnect(gw.api, TENANT_TWO_KEY, &json!({ "tenant": "t1" })).await;
    assert_eq!((status, answer["error"]["code"].clone()), (403, json!("forbidden")));
    let (status, _) = http(gw.api, "GET", "/v1/disconnect", &[], "").await;
    assert_eq!(status, 405);
    // Nothing happened to anyone so far.
    for c in [&a, &b, &other] {
        assert!(c.next_within("roomcast:disconnect", Duration::from_millis(100)).await.is_none());
    }

    let (status, receipt) = disconnect(gw.api, KEY, &json!({ "tenant": "t1", "reason": "tenant_suspended" })).await;
    assert_eq!(
        (status, receipt["sockets"].clone(), receipt["complete"].clone()),
        (200, json!(2), json!(true)),
        "{receipt}"
    );
    for c in [&a, &b] {
        assert_eq!(kicked(c).await["reason"], "tenant_suspended");
    }
    assert_eq!(other.request("join", json!({ "channel": "c1" })).await["ok"], true, "another tenant is untouched");
    // The tenant-scoped key acts for its own tenant.
    let (status, receipt) = disconnect(gw.api, TENANT_TWO_KEY, &json!({ "tenant": "t2" })).await;
    assert_eq!((status, receipt["sockets"].clone()), (200, json!(1)), "{receipt}");
    kicked(&other).await;
}

/// The SDK sends the same instruction through Redis and reads the same acknowledgements.
#[tokio::test]
async fn the_sdk_disconnects_a_user_through_redis() {
    use roomcast_publisher::{Disconnect, PublishError, Publisher};
    let redis = RedisServer::start();
    let rs = Replica::ready(2, &redis.url(), &[]).await;
    let here = rs[0].connect_user("t1", "ada").await;
    let there = rs[1].connect_user("t1", "ada").await;
    subscribed(&redis, "tenant:t1:user:ada", 2).await;
    let publisher = Publisher::connect(&redis.url()).await.unwrap();
    let how = Disconnect { reason: Some("account_deleted".into()), ..Default::default() };
    let receipt = publisher.user("t1", "ada").disconnect(&how, Duration::from_secs(2)).await.unwrap();
    assert_eq!((receipt.sockets, receipt.replicas, receipt.of), (2, 2, 2));
    for c in [&here, &there] {
        assert_eq!(kicked(c).await["reason"], "account_deleted");
    }
    let bad = Disconnect { reason: Some("Not OK".into()), ..Default::default() };
    let err = publisher.user("t1", "ada").disconnect(&bad, Duration::from_secs(1)).await.unwrap_err();
    assert!(matches!(err, PublishError::InvalidControl(_)), "{err}");
    let err = publisher.user("t1", "a:b").disconnect(&how, Duration::from_secs(1)).await.unwrap_err();
    assert!(matches!(err, PublishError::InvalidId(_)), "{err}");
}

/// A backend removes a user from a project (their sockets leave it on every replica, and may not
/// join it again by themselves), and adds them to one their token does not grant.
#[tokio::test]
async fn a_backend_moves_a_users_sockets_between_rooms_on_every_replica() {
    let redis = RedisServer::start();
    let rs = Replica::ready(2, &redis.url(), &[]).await;
    let ada = [rs[0].connect_user("t1", "ada").await, rs[1].connect_user("t1", "ada").await];
    let bob = rs[0].connect_user("t1", "bob").await;
    for c in ada.iter().chain([&bob]) {
        assert_eq!(c.request("join", json!({ "project": "p1" })).await["ok"], true);
    }
    subscribed(&redis, "tenant:t1:user:ada", 2).await;

    let started = Instant::now();
    let body = json!({ "tenant": "t1", "user": "ada", "room": { "project": "p1" } });
    let (status, receipt) = post_json(rs[1].api, replica::API_KEY, "/v1/leave", &body).await;
    assert_eq!(status, 200, "{receipt}");
    assert_eq!(
        (receipt["sockets"].clone(), receipt["replicas"].clone(), receipt["of"].clone(), receipt["target"].clone()),
        (json!(2), json!(2), json!(2), json!("tenant:t1:project:p1")),
        "{receipt}"
    );
    for c in &ada {
        assert_eq!(c.next("roomcast:left").await[0], json!({ "room": "tenant:t1:project:p1" }));
    }
    eprintln!("ada's sockets on two replicas left the project {:?} after the request", started.elapsed());
    let (status, _) = rs[0].publish(&json!({ "tenant": "t1", "project": "p1", "event": "e", "data": 1 })).await;
    assert_eq!(status, 200);
    bob.next("e").await;
    for c in &ada {
        assert!(c.next_within("e", Duration::from_millis(200)).await.is_none(), "no longer a member");
        let again = c.request("join", json!({ "project": "p1" })).await;
        assert_eq!(again["error"]["code"], "forbidden", "the token grants it, the backend removed it: {again}");
    }

    // Into a project the token does not grant (p9): delivered there, kept across a refresh.
    let body = json!({ "tenant": "t1", "user": "ada", "room": { "project": "p9" } });
    let (status, receipt) = post_json(rs[0].api, replica::API_KEY, "/v1/join", &body).await;
    assert_eq!((status, receipt["sockets"].clone()), (200, json!(2)), "{receipt}");
    for c in &ada {
        assert_eq!(c.next("roomcast:joined").await[0]["room"], "tenant:t1:project:p9");
    }
    subscribed(&redis, "tenant:t1:project:p9", 2).await;
    let refreshed = ada[0].request("auth:refresh", json!({ "token": user_token("t1", "ada") })).await;
    assert_eq!(refreshed["left"], json!([]), "{refreshed}");
    let (status, _) = rs[1].publish(&json!({ "tenant": "t1", "project": "p9", "event": "moved", "data": 2 })).await;
    assert_eq!(status, 200);
    for c in &ada {
        assert_eq!(c.next("moved").await[0], 2);
    }
    assert_eq!(
        bob.request("join", json!({ "project": "p9" })).await["error"]["code"],
        "forbidden",
        "bob was not added"
    );
    // Removed from p1, the socket may not list its members either.
    let listed = ada[0].request("presence:list", json!({ "project": "p1" })).await;
    assert_eq!(listed["error"]["code"], "forbidden", "{listed}");
    assert_eq!(ada[0].request("presence:list", json!({ "project": "p9" })).await["ok"], true);
    // Leaving p9 by itself ends the backend's grant: the token does not grant it.
    assert_eq!(ada[1].request("leave", json!({ "project": "p9" })).await["ok"], true);
    assert_eq!(ada[1].request("join", json!({ "project": "p9" })).await["error"]["code"], "forbidden");
    // One socket only, by id.
    let one = json!({ "tenant": "t1", "user": "ada", "socket": ada[0].sid, "room": { "channel": "c9" } });
    let (status, receipt) = post_json(rs[1].api, replica::API_KEY, "/v1/join", &one).await;
    assert_eq!((status, receipt["sockets"].clone()), (200, json!(1)), "{receipt}");
    assert_eq!(ada[0].next("roomcast:joined").await[0]["room"], "tenant:t1:channel:c9");
    assert!(ada[1].next_within("roomcast:joined", Duration::from_millis(200)).await.is_none());
}

#[tokio::test]
async fn join_and_leave_refuse_bad_requests_with_codes() {
    let gw = TestGateway::start_with_tenant_keys(KEY, |_| {}).await;
    let a = gw.connect_user("t1", "ada").await;
    for path in ["/v1/join", "/v1/leave"] {
        for (body, status, code) in [
            (json!({ "tenant": "t1", "user": "ada" }), 400, "invalid_payload"),
            (json!({ "tenant": "t1", "room": {} }), 400, "invalid_room"),
            (json!({ "tenant": "t1", "room": { "project": "p", "channel": "c" } }), 400, "invalid_room"),
            (json!({ "tenant": "t1", "room": { "user": "bob" } }), 400, "invalid_payload"),
            (json!({ "tenant": "t1", "room": { "project": "a:b" } }), 400, "invalid_room"),
            (
                json!({ "tenant": "t1", "user": "ada", "project": "p1", "room": { "project": "p2" } }),
                400,
                "invalid_room",
            ),
            (json!({ "tenant": "t1", "socket": "not a sid", "room": { "project": "p2" } }), 400, "invalid_payload"),
            (json!({ "tenant": "t1", "room": { "project": "p2" }, "extra": 1 }), 400, "invalid_payload"),
            (json!({ "tenant": "t1", "room": { "project": "x".repeat(5000) } }), 413, "payload_too_large"),
        ] {
            let (got, answer) = post_json(gw.api, KEY, path, &body).await;
            assert_eq!(
                (got, answer["error"]["code"].as_str().unwrap_or_default()),
                (status, code),
                "{path} {body}: {answer}"
            );
        }
        let body = json!({ "tenant": "t1", "room": { "project": "p1" } });
        let (status, answer) = post_json(gw.api, TENANT_TWO_KEY, path, &body).await;
        assert_eq!((status, answer["error"]["code"].clone()), (403, json!("forbidden")), "{path}");
        let (status, _) = http(gw.api, "GET", path, &[], "").await;
        assert_eq!(status, 405);
    }
    assert!(a.next_within("roomcast:joined", Duration::from_millis(100)).await.is_none(), "nothing applied");
    // A whole tenant, on a single node.
    let (status, receipt) =
        post_json(gw.api, KEY, "/v1/join", &json!({ "tenant": "t1", "room": { "channel": "all" } })).await;
    assert_eq!(
        (status, receipt["sockets"].clone(), receipt["complete"].clone()),
        (200, json!(1), json!(true)),
        "{receipt}"
    );
    assert_eq!(a.next("roomcast:joined").await[0]["room"], "tenant:t1:channel:all");
    let (status, receipt) =
        post_json(gw.api, KEY, "/v1/leave", &json!({ "tenant": "t1", "room": { "channel": "all" } })).await;
    assert_eq!((status, receipt["sockets"].clone()), (200, json!(1)), "{receipt}");
    assert_eq!(a.next("roomcast:left").await[0]["room"], "tenant:t1:channel:all");
}

/// The SDK moves sockets through Redis with the same envelope.
#[tokio::test]
async fn the_sdk_moves_a_user_between_rooms_through_redis() {
    use roomcast_publisher::{Publisher, Room};
    let redis = RedisServer::start();
    let rs = Replica::ready(1, &redis.url(), &[]).await;
    let ada = rs[0].connect_user("t1", "ada").await;
    subscribed(&redis, "tenant:t1:user:ada", 1).await;
    let publisher = Publisher::connect(&redis.url()).await.unwrap();
    let room = Room::channel("t1", "launch").unwrap();
    let receipt = publisher.user("t1", "ada").join(&room, Duration::from_secs(2)).await.unwrap();
    assert_eq!((receipt.sockets, receipt.replicas, receipt.of), (1, 1, 1));
    assert_eq!(ada.next("roomcast:joined").await[0]["room"], "tenant:t1:channel:launch");
    let receipt = publisher.user("t1", "ada").leave(&room, Duration::from_secs(2)).await.unwrap();
    assert_eq!(receipt.sockets, 1);
    assert_eq!(ada.next("roomcast:left").await[0]["room"], "tenant:t1:channel:launch");
    let other_tenant = Room::channel("t2", "x").unwrap();
    let err = publisher.user("t1", "ada").join(&other_tenant, Duration::from_secs(1)).await.unwrap_err();
    assert!(matches!(err, roomcast_publisher::PublishError::InvalidControl(_)), "{err}");
}

/// Barring is bounded per socket: past 64 rooms a backend removed it from (rooms its token
/// grants), the socket is disconnected rather than let back into the oldest.
#[tokio::test]
async fn a_socket_barred_from_too_many_rooms_is_disconnected() {
    let gw = TestGateway::start_with(|c| c.api_key = vec![Secret::from(KEY.to_owned())]).await;
    let mut everything = claims("t1", "ada");
    everything["channels"] = json!(["*"]);
    let ada = gw.connect(&token(&everything)).await;
    let bob = gw.connect_user("t1", "bob").await;
    for i in 0..64 {
        let body = json!({ "tenant": "t1", "user": "ada", "room": { "channel": format!("c{i}x") } });
        assert_eq!(post_json(gw.api, KEY, "/v1/leave", &body).await.0, 200);
    }
    assert_eq!(ada.request("join", json!({ "channel": "c0x" })).await["error"]["code"], "forbidden");
    assert_eq!(ada.request("join", json!({ "channel": "free" })).await["ok"], true, "64 barred: still connected");
    // Rooms the token does not grant need no barring (bob's token grants c1, c2 only).
    for i in 0..70 {
        let body = json!({ "tenant": "t1", "user": "bob", "room": { "channel": format!("c{i}x") } });
        assert_eq!(post_json(gw.api, KEY, "/v1/leave", &body).await.0, 200);
    }
    assert_eq!(bob.request("join", json!({ "channel": "c1" })).await["ok"], true);
    let body = json!({ "tenant": "t1", "user": "ada", "room": { "channel": "one-more" } });
    assert_eq!(post_json(gw.api, KEY, "/v1/leave", &body).await.0, 200);
    let notice = kicked(&ada).await;
    assert_eq!((notice["code"].clone(), notice["reconnect"].clone()), (json!("disconnected"), json!(true)));
}
