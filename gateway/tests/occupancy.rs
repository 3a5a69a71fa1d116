//! Occupancy (issue 16): connections and distinct users of a project or channel room,
//! cluster-wide, from presence's counts without a member scan — over HTTP (`GET /v1/occupancy`)
//! and to clients (`room:occupancy`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{redis::RedisServer, replica::Replica, *};
use roomcast_gateway::config::Secret;
use serde_json::{Value, json};

const KEY: &str = "occupancy-api-key-0123456789";

async fn occupancy(api: std::net::SocketAddr, key: &str, query: &str) -> (u16, Value) {
    let auth = format!("Bearer {key}");
    let (status, body) =
        http(api, "GET", &format!("/v1/occupancy?{query}"), &[("Authorization", auth.as_str())], "").await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// Waits until every replica answers `(connections, users)` for project p1 of t1.
async fn counted(rs: &[&Replica], connections: u64, users: u64) {
    eventually(WAIT, &format!("occupancy {connections} connections, {users} users"), || async {
        for r in rs {
            let (status, body) = occupancy(r.api, replica::API_KEY, "tenant=t1&project=p1").await;
            if status != 200
                || (body["connections"].as_u64(), body["users"].as_u64()) != (Some(connections), Some(users))
            {
                return None;
            }
        }
        Some(())
    })
    .await;
}

async fn member(r: &Replica, user: &str) -> Client {
    let c = r.connect_user("t1", user).await;
    assert_eq!(c.request("join", json!({ "project": "p1" })).await["ok"], true);
    c
}

#[tokio::test]
async fn occupancy_stays_exact_across_tabs_disconnects_and_a_killed_replica() {
    let redis = RedisServer::start();
    let env = [("ROOMCAST_PRESENCE_GRACE", "300ms"), ("ROOMCAST_PRESENCE_LEASE_TTL", "2s")];
    let mut rs = Replica::ready(2, &redis.url(), &env).await;
    let ada_tab1 = member(&rs[0], "ada").await;
    let _ada_tab2 = member(&rs[0], "ada").await;
    let _ada_there = member(&rs[1], "ada").await;
    let _bob = member(&rs[1], "bob").await;
    let watcher = rs[0].connect_user("t1", "carol").await; // may join p1, is not in it
    counted(&[&rs[0], &rs[1]], 4, 2).await;
    let ack = watcher.request("room:occupancy", json!({ "project": "p1" })).await;
    assert_eq!(ack, json!({ "ok": true, "room": "tenant:t1:project:p1", "connections": 4, "users": 2 }));
    // The whole tenant, and one user: the connection counts (ada's 3 tabs, bob, carol).
    let (status, tenant) = occupancy(rs[1].api, replica::API_KEY, "tenant=t1").await;
    assert_eq!(
        (status, tenant["room"].clone(), tenant["connections"].clone(), tenant["users"].clone()),
        (200, json!("tenant:t1"), json!(5), json!(3)),
        "{tenant}"
    );
    let (_, ada) = occupancy(rs[0].api, replica::API_KEY, "tenant=t1&user=ada").await;
    assert_eq!((ada["connections"].clone(), ada["users"].clone()), (json!(3), json!(1)), "{ada}");
    let (_, nobody) = occupancy(rs[0].api, replica::API_KEY, "tenant=t1&user=nobody").await;
    assert_eq!((nobody["connections"].clone(), nobody["users"].clone()), (json!(0), json!(0)), "{nobody}");

    // One of ada's tabs closes: one connection less once its grace period is over, same users.
    ada_tab1.close();
    counted(&[&rs[0], &rs[1]], 3, 2).await;
    // The replica holding bob and one of ada's tabs dies: reaped after its lease.
    rs[1].kill9();
    counted(&[&rs[0]], 1, 1).await;
    eventually(WAIT, "the tenant's connections reaped", || async {
        let (_, tenant) = occupancy(rs[0].api, replica::API_KEY, "tenant=t1").await;
        (tenant["connections"] == 2 && tenant["users"] == 2).then_some(())
    })
    .await;
    let ack = watcher.request("room:occupancy", json!({ "project": "p1" })).await;
    assert_eq!((ack["connections"].clone(), ack["users"].clone()), (json!(1), json!(1)), "{ack}");
    // Redis loses everything: the survivor restores its share, and the total with it.
    redis.cli(&["FLUSHALL"]);
    let counts = "roomcast:{tenant:t1:project:p1}:presence";
    eventually(WAIT, "the share restored", || async { (redis.cli(&["HGET", counts, "ada"]) == "1").then_some(()) })
        .await;
    assert_eq!(redis.cli(&["HGET", counts, "#"]), "1", "restored with the total (not only by a read)");
    counted(&[&rs[0]], 1, 1).await;
    // A room nobody is in.
    let (status, body) = occupancy(rs[0].api, replica::API_KEY, "tenant=t1&channel=empty").await;
    assert_eq!((status, body["connections"].clone(), body["users"].clone()), (200, json!(0), json!(0)));
}

/// Presence written before the total existed (an upgrade) is counted once, then kept, whether
/// a read or a change comes first; a total left stale (older replicas changed the counts) is
/// corrected when it cannot be right.
#[tokio::test]
async fn presence_from_before_the_total_is_counted_once_then_kept() {
    let redis = RedisServer::start();
    let rs = Replica::ready(1, &redis.url(), &[]).await;
    let old = |room: &str, users: &[(&str, &str)]| {
        let counts = format!("roomcast:{{tenant:t1:project:{room}}}:presence");
        let since = format!("{counts}:since");
        for (i, (user, n)) in users.iter().enumerate() {
            redis.cli(&["HSET", &counts, user, n]);
            redis.cli(&["ZADD", &since, &(i + 1).to_string(), user]);
        }
        counts
    };
    let api = rs[0].api;
    let ask = |room: &'static str| async move {
        let (status, body) = occupancy(api, replica::API_KEY, &format!("tenant=t1&project={room}")).await;
        assert_eq!(status, 200, "{body}");
        (body["connections"].as_u64().unwrap(), body["users"].as_u64().unwrap())
    };
    // Read first.
    let counts = old("read", &[("u1", "2"), ("u2", "1")]);
    assert_eq!(ask("read").await, (3, 2));
    assert_eq!(redis.cli(&["HGET", &counts, "#"]), "3");
    // A change first: a member joins through this version before anyone asked.
    let counts = old("write", &[("u1", "2"), ("u2", "1")]);
    let mut claims = claims("t1", "ada");
    claims["projects"] = json!(["*"]);
    let ada_all = Client::connect(rs[0].addr, client::Connect::token(&token(&claims))).await.unwrap();
    assert_eq!(ada_all.request("join", json!({ "project": "write" })).await["ok"], true);
    eventually(WAIT, "the join counted", || async { (redis.cli(&["HGET", &counts, "ada"]) == "1").then_some(()) })
        .await;
    assert_eq!(redis.cli(&["HGET", &counts, "#"]), "4", "the old counts summed before adding");
    assert_eq!(ask("write").await, (4, 3));
    // Stale totals: too low for its users, or left in an empty room.
    let counts = old("low", &[("u1", "2"), ("u2", "1")]);
    redis.cli(&["HSET", &counts, "#", "1"]);
    assert_eq!(ask("low").await, (3, 2));
    redis.cli(&["HSET", "roomcast:{tenant:t1:project:empty}:presence", "#", "7"]);
    assert_eq!(ask("empty").await, (0, 0));
    assert_eq!(redis.cli(&["EXISTS", "roomcast:{tenant:t1:project:empty}:presence"]), "0", "nothing left behind");
}

#[tokio::test]
async fn occupancy_on_a_single_node_with_bad_requests() {
    let gw = TestGateway::start_with_tenant_keys(KEY, |c| {
        c.presence_grace = Duration::from_millis(100);
    })
    .await;
    let a = gw.connect_user("t1", "ada").await;
    let b = gw.connect_user("t1", "ada").await;
    for c in [&a, &b] {
        assert_eq!(c.request("join", json!({ "channel": "c1" })).await["ok"], true);
    }
    let (status, body) = occupancy(gw.api, KEY, "tenant=t1&channel=c1").await;
    assert_eq!((status, body["connections"].clone(), body["users"].clone()), (200, json!(2), json!(1)), "{body}");
    let (status, body) = occupancy(gw.api, KEY, "tenant=t1").await;
    assert_eq!((status, body["connections"].clone(), body["users"].clone()), (200, json!(2), json!(1)), "{body}");
    for (query, status, code) in [
        ("tenant=t1&project=p1&channel=c1", 400, "invalid_room"),
        ("tenant=t1&project=a:b", 400, "invalid_room"),
        ("tenant=t1&user=a:b", 400, "invalid_room"),
        ("project=p1", 400, "invalid_payload"),
        ("tenant=t1&project=p1&user=u", 400, "invalid_room"),
        ("tenant=t1&room=x", 400, "invalid_payload"),
    ] {
        let (got, body) = occupancy(gw.api, KEY, query).await;
        assert_eq!((got, body["error"]["code"].as_str().unwrap_or_default()), (status, code), "{query}: {body}");
    }
    let (status, _) = occupancy(gw.api, "wrong-key-wrong-key-0123", "tenant=t1&channel=c1").await;
    assert_eq!(status, 401);
    let (status, body) = occupancy(gw.api, TENANT_TWO_KEY, "tenant=t1&channel=c1").await;
    assert_eq!((status, body["error"]["code"].clone()), (403, json!("forbidden")));
    let (status, _) = http(gw.api, "POST", "/v1/occupancy?tenant=t1&channel=c1", &[], "").await;
    assert_eq!(status, 405);

    // Clients: rooms their token grants (or a backend joined them to), nothing else.
    for (payload, code) in [
        (json!({ "project": "p9" }), "forbidden"),
        (json!({ "channel": "a:b" }), "invalid_room"),
        (json!({}), "invalid_payload"),
        (json!("c1"), "invalid_payload"),
    ] {
        assert_eq!(a.request("room:occupancy", payload.clone()).await["error"]["code"], code, "{payload}");
    }
    let ack = a.request("room:occupancy", json!({ "channel": "c1" })).await;
    assert_eq!((ack["connections"].clone(), ack["users"].clone()), (json!(2), json!(1)), "{ack}");
    b.close();
    eventually(WAIT, "the closed tab uncounted", || async {
        let ack = a.request("room:occupancy", json!({ "channel": "c1" })).await;
        (ack["connections"] == 1).then_some(())
    })
    .await;
    assert_eq!(a.request("leave", json!({ "channel": "c1" })).await["ok"], true);
    eventually(WAIT, "the room empty", || async {
        let (_, body) = occupancy(gw.api, KEY, "tenant=t1&channel=c1").await;
        (body["connections"] == 0 && body["users"] == 0).then_some(())
    })
    .await;
}

async fn list(api: std::net::SocketAddr, key: &str, query: &str) -> (u16, Value) {
    let auth = format!("Bearer {key}");
    let (status, body) = http(api, "GET", &format!("/v1/rooms?{query}"), &[("Authorization", auth.as_str())], "").await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// Every page of a listing, followed by its cursors: (room, connections, users), sorted.
async fn all_pages(api: std::net::SocketAddr, key: &str, query: &str) -> Vec<(String, u64, u64)> {
    let mut rooms = std::collections::BTreeSet::new();
    let mut cursor = String::new();
    for _ in 0..100 {
        let (status, body) = list(api, key, &format!("{query}&cursor={cursor}")).await;
        assert_eq!(status, 200, "{body}");
        for r in body["rooms"].as_array().unwrap() {
            rooms.insert((
                r["room"].as_str().unwrap().to_owned(),
                r["connections"].as_u64().unwrap(),
                r["users"].as_u64().unwrap(),
            ));
        }
        match body["cursor"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => return rooms.into_iter().collect(),
        }
    }
    panic!("the cursor never ended");
}

fn rooms(expected: &[(&str, u64, u64)]) -> Vec<(String, u64, u64)> {
    let mut v: Vec<_> = expected.iter().map(|(r, c, u)| (r.to_string(), *c, *u)).collect();
    v.sort();
    v
}

#[tokio::test]
async fn a_tenants_rooms_with_members_are_listed_across_replicas() {
    let redis = RedisServer::start();
    let rs = Replica::ready(2, &redis.url(), &[("ROOMCAST_PRESENCE_GRACE", "200ms")]).await;

    let ada = rs[0].connect_user("t1", "ada").await;
    let bob = rs[1].connect_user("t1", "bob").await;
    let carol = rs[1].connect_user("t1", "carol").await;
    let eve = rs[0].connect_user("t2", "eve").await;
    assert_eq!(ada.request("join", json!({ "project": "p1" })).await["ok"], true);
    assert_eq!(ada.request("join", json!({ "channel": "c1" })).await["ok"], true);
    assert_eq!(bob.request("join", json!({ "project": "p1" })).await["ok"], true);
    assert_eq!(bob.request("join", json!({ "project": "p2" })).await["ok"], true);
    assert_eq!(carol.request("join", json!({ "channel": "c2" })).await["ok"], true);
    assert_eq!(eve.request("join", json!({ "project": "p1" })).await["ok"], true);
    assert_eq!(carol.request("leave", json!({ "channel": "c2" })).await["ok"], true);
    let everything =
        rooms(&[("tenant:t1:channel:c1", 1, 1), ("tenant:t1:project:p1", 2, 2), ("tenant:t1:project:p2", 1, 1)]);
    eventually(WAIT, "t1's rooms listed", || async {
        (all_pages(rs[1].api, replica::API_KEY, "tenant=t1").await == everything).then_some(())
    })
    .await;
    let projects = all_pages(rs[0].api, replica::API_KEY, "tenant=t1&kind=project&limit=1").await;
    assert_eq!(projects, rooms(&[("tenant:t1:project:p1", 2, 2), ("tenant:t1:project:p2", 1, 1)]));
    let p2 = all_pages(rs[0].api, replica::API_KEY, "tenant=t1&kind=project&prefix=p2").await;
    assert_eq!(p2, rooms(&[("tenant:t1:project:p2", 1, 1)]));
    assert_eq!(all_pages(rs[0].api, replica::API_KEY, "tenant=t2").await, rooms(&[("tenant:t2:project:p1", 1, 1)]));
    let (status, body) = list(rs[0].api, replica::API_KEY, "tenant=t1&cursor=not-a-cursor").await;
    assert_eq!((status, body["error"]["code"].clone()), (400, json!("invalid_payload")), "{body}");
    // A tenant with more rooms than Redis returns in one ZSCAN reply (written as the gateway
    // writes them: an index entry and presence each): the cursor pages through all of them.
    let bulk = r#"for i = 1, 200 do
        local room = 'tenant:t3:channel:bulk' .. i
        redis.call('HSET', 'roomcast:{' .. room .. '}:presence', 'u1', 1, '#', 1)
        redis.call('ZADD', 'roomcast:{' .. room .. '}:presence:since', 1, 'u1')
        redis.call('ZADD', 'roomcast:{tenant:t3}:rooms', ARGV[1], room)
      end"#;
    redis.cli(&["EVAL", bulk, "0", &(now() * 1000).to_string()]);
    let (status, first) = list(rs[0].api, replica::API_KEY, "tenant=t3&limit=20").await;
    assert_eq!(status, 200, "{first}");
    assert!(first["cursor"].is_string(), "more than one page: {}", first["rooms"].as_array().unwrap().len());
    let paged = all_pages(rs[0].api, replica::API_KEY, "tenant=t3&limit=20").await;
    assert_eq!(paged.len(), 200);
    assert!(paged.iter().all(|(_, c, u)| (*c, *u) == (1, 1)));
    // The last member leaves: no longer listed.
    assert_eq!(bob.request("leave", json!({ "project": "p2" })).await["ok"], true);
    eventually(WAIT, "p2 unlisted", || async {
        (all_pages(rs[0].api, replica::API_KEY, "tenant=t1&kind=project").await
            == rooms(&[("tenant:t1:project:p1", 2, 2)]))
        .then_some(())
    })
    .await;
}

#[tokio::test]
async fn room_listing_pages_on_a_single_node_and_refuses_bad_requests() {
    let gw = TestGateway::start_with_tenant_keys(KEY, |_| {}).await;
    let mut all = claims("t1", "ada");
    all["channels"] = json!(["*"]);
    let ada = gw.connect(&token(&all)).await;
    for c in ["a1", "a2", "a3", "b1", "b2"] {
        assert_eq!(ada.request("join", json!({ "channel": c })).await["ok"], true);
    }
    // Presence counts the joins just after their acks.
    eventually(WAIT, "the five rooms listed", || async {
        (all_pages(gw.api, KEY, "tenant=t1").await.len() == 5).then_some(())
    })
    .await;
    let (status, first) = list(gw.api, KEY, "tenant=t1&limit=2").await;
    assert_eq!((status, first["rooms"].as_array().unwrap().len()), (200, 2), "{first}");
    assert!(first["cursor"].is_string(), "{first}");
    let listed = all_pages(gw.api, KEY, "tenant=t1&limit=2").await;
    assert_eq!(listed.len(), 5);
    assert_eq!(all_pages(gw.api, KEY, "tenant=t1&kind=channel&prefix=a").await.len(), 3);
    assert!(all_pages(gw.api, KEY, "tenant=t1&kind=project").await.is_empty());
    for (query, status, code) in [
        ("tenant=t1&kind=user", 400, "invalid_payload"),
        ("tenant=t1&prefix=a", 400, "invalid_payload"),
        ("tenant=t1&kind=channel&prefix=a:b", 400, "invalid_payload"),
        ("tenant=t1&kind=channel&prefix=a*", 400, "invalid_payload"),
        ("tenant=t1&limit=0", 400, "invalid_payload"),
        ("tenant=t1&limit=501", 400, "invalid_payload"),
        ("tenant=t:1", 400, "invalid_room"),
        ("tenant=t1&sort=name", 400, "invalid_payload"),
        ("kind=channel", 400, "invalid_payload"),
        ("tenant=t1&cursor=tenant:t2:channel:a1", 400, "invalid_payload"),
    ] {
        let (got, body) = list(gw.api, KEY, query).await;
        assert_eq!((got, body["error"]["code"].as_str().unwrap_or_default()), (status, code), "{query}: {body}");
    }
    assert_eq!(list(gw.api, "wrong-key-wrong-key-0123", "tenant=t1").await.0, 401);
    let (status, body) = list(gw.api, TENANT_TWO_KEY, "tenant=t1").await;
    assert_eq!((status, body["error"]["code"].clone()), (403, json!("forbidden")));
    assert_eq!(http(gw.api, "DELETE", "/v1/rooms?tenant=t1", &[], "").await.0, 405);
}

/// A tenant's connections are counted only with a connection cap: without, the answer says so.
#[tokio::test]
async fn tenant_occupancy_needs_connection_counting() {
    let gw = TestGateway::start_with(|c| {
        c.api_key = vec![Secret::from(KEY.to_owned())];
        c.max_connections_per_user = 0;
        c.max_connections_per_tenant = 0;
    })
    .await;
    let _ada = gw.connect_user("t1", "ada").await;
    let (status, body) = occupancy(gw.api, KEY, "tenant=t1").await;
    assert_eq!((status, body["error"]["code"].clone()), (404, json!("not_found")), "{body}");
    let (status, _) = occupancy(gw.api, KEY, "tenant=t1&channel=c1").await;
    assert_eq!(status, 200, "rooms are counted by presence all the same");
}
