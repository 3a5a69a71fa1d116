//! The console (issue 19): `/console` on the admin listener, off unless
//! `ROOMCAST_CONSOLE_TOKENS` is set; its API needs a console token and a scoped one sees only
//! its tenants; its observers watch rooms without being anyone in them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;

use common::{
    client::{ConnectFailure, WAIT},
    redis::RedisServer,
    replica::Replica,
    *,
};
use roomcast_gateway::{LocalCluster, config::Secret};
use serde_json::{Value, json};

/// Sees every tenant.
const ALL: &str = "console-all-0123456789abcdef0123456789";
/// Sees tenants t1 and `a.b` only.
const SCOPED: &str = "console-scoped-0123456789abcdef012345";

fn console_tokens() -> Vec<Secret> {
    vec![Secret::from(ALL.to_owned()), Secret::from(format!("{SCOPED}:t1;a.b"))]
}

async fn start() -> TestGateway {
    TestGateway::start_with(|c| {
        c.console_tokens = console_tokens();
        c.api_key = vec![Secret::from(replica::API_KEY.to_owned())];
    })
    .await
}

/// `method path` on the admin listener with console token `token` (empty: none).
async fn console(admin: SocketAddr, token: &str, method: &str, path: &str, body: &Value) -> (u16, Value) {
    let auth = format!("Bearer {token}");
    let mut headers = vec![("Content-Type", "application/json")];
    if !token.is_empty() {
        headers.push(("Authorization", auth.as_str()));
    }
    let body = if body.is_null() { String::new() } else { body.to_string() };
    let (status, answer) = http(admin, method, path, &headers, &body).await;
    (status, serde_json::from_str(&answer).unwrap_or(Value::Null))
}

async fn observer_token(admin: SocketAddr, token: &str, tenant: &str) -> String {
    let (status, body) = console(admin, token, "POST", "/console/api/observer", &json!({ "tenant": tenant })).await;
    assert_eq!(status, 200, "{body}");
    body["token"].as_str().unwrap().to_owned()
}

async fn observe(admin: SocketAddr, token: &str) -> Result<Client, ConnectFailure> {
    Client::connect(admin, client::Connect::token(token)).await
}

#[tokio::test]
async fn nothing_is_served_when_the_console_is_off() {
    let gw = TestGateway::start_with(|c| c.api_key = vec![Secret::from(replica::API_KEY.to_owned())]).await;
    for (method, path) in [
        ("GET", "/console"),
        ("GET", "/console/"),
        ("GET", "/console/console.js"),
        ("GET", "/console/api/session"),
        ("POST", "/console/api/observer"),
        ("GET", "/console/api/rooms?tenant=t1"),
        ("GET", "/console/api/replicas"),
        ("POST", "/console/api/disconnect"),
        ("GET", "/socket.io/?EIO=4&transport=polling"),
    ] {
        // Not even with what would be a console token, nor the API key.
        for token in [ALL, replica::API_KEY, ""] {
            let (status, body) = console(gw.admin, token, method, path, &json!({ "tenant": "t1" })).await;
            assert_eq!((status, code(&body)), (404, "not_found"), "{method} {path}: {body}");
        }
    }
    // The public listener has no console either.
    let (status, _) = http(gw.addr, "GET", "/console", &[], "").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn the_console_needs_its_token() {
    let gw = start().await;
    // The page and its script are static and hold nothing: served to anyone, locked down.
    let (status, page) = http(gw.admin, "GET", "/console", &[], "").await;
    assert_eq!(status, 200);
    assert!(page.contains("/console/console.js"), "{page}");
    let head = raw_head(gw.admin, "/console").await;
    assert!(head.contains("content-security-policy: default-src 'none'"), "{head}");
    let (status, script) = http(gw.admin, "GET", "/console/console.js", &[], "").await;
    assert_eq!(status, 200);
    assert!(script.len() > 10_000, "the console's bundle is embedded ({} bytes)", script.len());
    // The API: no token, a wrong one, the backend's API key, a console token as an API key.
    for token in ["", "console-all-0123456789abcdef012345678X", replica::API_KEY] {
        for (method, path) in [
            ("GET", "/console/api/session"),
            ("POST", "/console/api/observer"),
            ("GET", "/console/api/rooms?tenant=t1"),
            ("GET", "/console/api/replicas"),
            ("POST", "/console/api/disconnect"),
            ("POST", "/console/api/leave"),
        ] {
            let (status, body) = console(gw.admin, token, method, path, &json!({ "tenant": "t1" })).await;
            assert_eq!((status, code(&body)), (401, "unauthorized"), "{token:?} {method} {path}: {body}");
        }
    }
    let (status, body) = post_json(gw.api, ALL, "/v1/disconnect", &json!({ "tenant": "t1" })).await;
    assert_eq!((status, code(&body)), (401, "unauthorized"), "a console token is no API key: {body}");
    let (status, body) = console(gw.admin, ALL, "GET", "/console/api/session", &Value::Null).await;
    assert_eq!((status, &body["tenants"]), (200, &Value::Null), "{body}");
    // Bad input to the API gets coded answers.
    for (body, expected) in [
        (json!({ "tenant": "no spaces" }), "invalid_room"),
        (json!({ "tenant": 1 }), "invalid_payload"),
        (json!({ "tenant": "t1", "more": 1 }), "invalid_payload"),
        (json!([]), "invalid_payload"),
    ] {
        let (status, answer) = console(gw.admin, ALL, "POST", "/console/api/observer", &body).await;
        assert_eq!((status, code(&answer)), (400, expected), "{body}: {answer}");
    }
    let big = json!({ "tenant": "x".repeat(2000) });
    let (status, answer) = console(gw.admin, ALL, "POST", "/console/api/observer", &big).await;
    assert_eq!((status, code(&answer)), (413, "payload_too_large"), "{answer}");
    let (status, answer) = console(gw.admin, ALL, "GET", "/console/api/observer", &Value::Null).await;
    assert_eq!((status, code(&answer)), (405, "method_not_allowed"), "{answer}");
    let (status, answer) = console(gw.admin, ALL, "GET", "/console/api/nothing", &Value::Null).await;
    assert_eq!((status, code(&answer)), (404, "not_found"), "{answer}");
}

#[tokio::test]
async fn a_scoped_token_cannot_see_other_tenants() {
    let gw = start().await;
    let (status, body) = console(gw.admin, SCOPED, "GET", "/console/api/session", &Value::Null).await;
    assert_eq!((status, &body["tenants"]), (200, &json!(["t1", "a.b"])), "{body}");
    let _ada = gw.connect_user("t2", "ada").await;
    for (method, path, body) in [
        ("POST", "/console/api/observer", json!({ "tenant": "t2" })),
        ("GET", "/console/api/rooms?tenant=t2", Value::Null),
        ("POST", "/console/api/disconnect", json!({ "tenant": "t2", "user": "ada" })),
        ("POST", "/console/api/disconnect", json!({ "tenant": "t2" })),
        ("POST", "/console/api/leave", json!({ "tenant": "t2", "user": "ada", "room": { "project": "p1" } })),
    ] {
        let (status, answer) = console(gw.admin, SCOPED, method, path, &body).await;
        assert_eq!((status, code(&answer)), (403, "forbidden"), "{method} {path} {body}: {answer}");
    }
    assert!(!_ada.got_server_disconnect(), "ada of t2 was not disconnected");
    // Its own tenants: yes (a tenant id with a dot too).
    for tenant in ["t1", "a.b"] {
        let token = observer_token(gw.admin, SCOPED, tenant).await;
        let observer = observe(gw.admin, &token).await.expect("an observer connects");
        let ack = observer.request("join", json!({ "project": "p1" })).await;
        assert_eq!(ack["room"], format!("tenant:{tenant}:project:p1"), "{ack}");
    }
    // An observer token is for its tenant only: changing the tenant breaks it.
    let token = observer_token(gw.admin, SCOPED, "t1").await;
    let forged = format!("{}t2", token.strip_suffix("t1").unwrap());
    assert_eq!(observe(gw.admin, &forged).await.err(), Some(ConnectFailure::Rejected("token_invalid".into())));
    // Minted by the unscoped token, a t2 observer cannot pass for the scoped token's either:
    // tokens carry no scope, the admin token that minted them does.
    let t2 = observer_token(gw.admin, ALL, "t2").await;
    let observer = observe(gw.admin, &t2).await.expect("the unscoped token's observer connects");
    let ack = observer.request("join", json!({ "channel": "general" })).await;
    assert_eq!(ack["room"], "tenant:t2:channel:general", "{ack}");
}

#[tokio::test]
async fn an_observer_watches_without_being_anyone() {
    let gw = start().await;
    let ada = gw.connect_user("t1", "ada").await;
    assert_eq!(ada.request("join", json!({ "channel": "c1" })).await["ok"], true);
    let token = observer_token(gw.admin, ALL, "t1").await;
    // Only on the admin listener; a user's token is refused there.
    assert_eq!(
        Client::connect(gw.addr, client::Connect::token(&token)).await.err(),
        Some(ConnectFailure::Rejected("token_invalid".into())),
        "an observer token on the public listener"
    );
    assert_eq!(
        observe(gw.admin, &user_token("t1", "mallory")).await.err(),
        Some(ConnectFailure::Rejected("token_invalid".into())),
        "a user token on the admin listener"
    );
    let observer = observe(gw.admin, &token).await.expect("the observer connects");
    let ack = observer.request("join", json!({ "channel": "c1" })).await;
    assert_eq!((ack["ok"].clone(), ack["room"].clone()), (json!(true), json!("tenant:t1:channel:c1")), "{ack}");
    // It sees the room's events, presence, typing and occupancy...
    let (status, _) =
        gw.publish(&json!({ "tenant": "t1", "channel": "c1", "event": "note", "data": { "n": 1 } })).await;
    assert_eq!(status, 200);
    assert_eq!(observer.next("note").await[0], json!({ "n": 1 }));
    assert_eq!(ada.request("typing", json!({ "channel": "c1", "typing": true })).await["ok"], true);
    assert_eq!(observer.next("typing").await[0]["userId"], "ada");
    let list = request_politely(&observer, "presence:list", json!({ "channel": "c1" })).await;
    let users: Vec<&str> = list["users"].as_array().unwrap().iter().map(|u| u["userId"].as_str().unwrap()).collect();
    assert_eq!(users, ["ada"], "{list}");
    // ...and is not in them: not in presence, not counted, no presence events for anyone.
    let list = request_politely(&ada, "presence:list", json!({ "channel": "c1" })).await;
    assert_eq!(list["users"].as_array().unwrap().len(), 1, "{list}");
    let occupancy = ada.request("room:occupancy", json!({ "channel": "c1" })).await;
    assert_eq!((occupancy["connections"].clone(), occupancy["users"].clone()), (json!(1), json!(1)), "{occupancy}");
    // Presence events go out in order: once carol's join reached ada, an observer's would have.
    let carol = gw.connect_user("t1", "carol").await;
    assert_eq!(carol.request("join", json!({ "channel": "c1" })).await["ok"], true);
    eventually(WAIT, "ada to see carol join", || async {
        ada.events("presence:join").iter().any(|j| j[0]["userId"] == "carol").then_some(())
    })
    .await;
    let joins = ada.events("presence:join");
    assert!(joins.iter().all(|j| j[0]["userId"] != "console"), "no presence for the observer: {joins:?}");
    carol.close();
    // It only watches.
    for (event, data) in [
        ("typing", json!({ "channel": "c1", "typing": true })),
        ("publish", json!({ "channel": "c", "event": "x", "data": {} })),
        ("presence:update", json!({ "status": "away" })),
        ("anything", json!({})),
    ] {
        let answer = observer.request(event, data).await;
        assert_eq!(code(&answer), "forbidden", "{event}: {answer}");
    }
    // Its token is refreshed like any (the console asks for another before it expires).
    let fresh = observer_token(gw.admin, ALL, "t1").await;
    let ack = observer.request("auth:refresh", json!({ "token": fresh })).await;
    assert_eq!(ack["ok"], true, "{ack}");
    let other = observer_token(gw.admin, ALL, "t2").await;
    let ack = observer.request("auth:refresh", json!({ "token": other })).await;
    assert_eq!(code(&ack), "forbidden", "another tenant's: {ack}");
    let ack = observer.request("auth:refresh", json!({ "token": user_token("t1", "console") })).await;
    assert_eq!(code(&ack), "token_invalid", "a user's token: {ack}");
    // The backend's control instructions pass it by; the console's actions reach users.
    let moved = json!({ "tenant": "t1", "channel": "c1", "room": { "channel": "c2" } });
    let (status, body) = post_json(gw.api, replica::API_KEY, "/v1/join", &moved).await;
    assert_eq!((status, body["sockets"].clone()), (200, json!(1)), "only ada moves: {body}");
    assert!(observer.next_within("roomcast:joined", std::time::Duration::from_millis(300)).await.is_none());
    let (status, body) =
        post_json(gw.api, replica::API_KEY, "/v1/disconnect", &json!({ "tenant": "t1", "channel": "c1" })).await;
    assert_eq!((status, body["sockets"].clone()), (200, json!(1)), "only ada: {body}");
    assert!(ada.server_disconnect().await);
    let bob = gw.connect_user("t1", "bob").await;
    assert_eq!(bob.request("join", json!({ "channel": "c1" })).await["ok"], true);
    let leave = json!({ "tenant": "t1", "user": "bob", "room": { "channel": "c1" } });
    let (status, body) = console(gw.admin, ALL, "POST", "/console/api/leave", &leave).await;
    assert_eq!((status, body["sockets"].clone()), (200, json!(1)), "{body}");
    assert_eq!(bob.next("roomcast:left").await[0]["room"], "tenant:t1:channel:c1");
    let (status, body) =
        console(gw.admin, ALL, "POST", "/console/api/disconnect", &json!({ "tenant": "t1", "user": "bob" })).await;
    assert_eq!((status, body["sockets"].clone()), (200, json!(1)), "{body}");
    assert!(bob.server_disconnect().await);
    assert!(!observer.got_server_disconnect());
    let ack = observer.request("presence:list", json!({ "channel": "c1" })).await;
    assert_eq!(ack["ok"], true, "the observer is still connected: {ack}");
}

#[tokio::test]
async fn observers_are_bounded_per_replica_and_not_counted_as_connections() {
    let gw = TestGateway::start_with(|c| {
        c.console_tokens = console_tokens();
        c.api_key = vec![Secret::from(replica::API_KEY.to_owned())];
        c.max_connections_per_tenant = 1;
    })
    .await;
    let token = observer_token(gw.admin, ALL, "t1").await;
    let mut observers = Vec::new();
    for _ in 0..64 {
        observers.push(observe(gw.admin, &token).await.expect("an observer connects"));
    }
    assert_eq!(
        observe(gw.admin, &token).await.err(),
        Some(ConnectFailure::Rejected("too_many_connections".into())),
        "the 65th"
    );
    // A refresh at the cap is no new connection.
    let fresh = observer_token(gw.admin, ALL, "t1").await;
    assert_eq!(observers[0].request("auth:refresh", json!({ "token": fresh })).await["ok"], true);
    // Not the tenant's connections: its one connection allowed is still there for a user.
    let ada = gw.connect_user("t1", "ada").await;
    let auth = format!("Bearer {}", replica::API_KEY);
    let (status, body) = http(gw.api, "GET", "/v1/occupancy?tenant=t1", &[("Authorization", auth.as_str())], "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["connections"], 1, "{body}");
    drop(ada);
    // A place comes back when its observer goes.
    observers.pop().unwrap().close();
    eventually(WAIT, "a place for an observer again", || async { observe(gw.admin, &token).await.ok() }).await;
}

#[tokio::test]
async fn the_console_lists_every_replica_of_a_cluster() {
    let redis = RedisServer::start();
    let tokens = format!("{ALL},{SCOPED}:t1");
    let rs = Replica::ready(2, &redis.url(), &[("ROOMCAST_CONSOLE_TOKENS", tokens.as_str())]).await;
    let _ada = rs[0].connect_user("t1", "ada").await;
    let _bob = rs[1].connect_user("t1", "bob").await;
    let _carol = rs[1].connect_user("t1", "carol").await;
    // Either replica answers for both: each reports to Redis every 2 s.
    let replicas = eventually(WAIT, "both replicas listed with their connections", || async {
        let (status, body) = console(rs[0].admin, SCOPED, "GET", "/console/api/replicas", &Value::Null).await;
        let replicas = body["replicas"].as_array()?.clone();
        let mut connections: Vec<u64> = replicas.iter().filter_map(|r| r["connections"].as_u64()).collect();
        connections.sort();
        (status == 200 && connections == [1, 2]).then_some(replicas)
    })
    .await;
    for replica in &replicas {
        assert_eq!(replica["redis"], "ok", "{replica}");
        for field in ["id", "rooms", "lag_ms", "dropped", "delivered", "observers", "version"] {
            assert!(!replica[field].is_null(), "{field} in {replica}");
        }
    }
    // An observer on one replica sees what is published through the other.
    let token = observer_token(rs[1].admin, SCOPED, "t1").await;
    let observer = observe(rs[0].admin, &token).await.expect("another replica verifies the token");
    assert_eq!(observer.request("join", json!({ "channel": "general" })).await["ok"], true);
    let (status, _) = rs[1].publish(&json!({ "tenant": "t1", "channel": "general", "event": "hi", "data": 1 })).await;
    assert_eq!(status, 200);
    assert_eq!(observer.next("hi").await[0], json!(1));
}

#[tokio::test]
async fn a_local_cluster_lists_its_nodes() {
    let cluster = LocalCluster::new(Some(roomcast_publisher::wire::HistoryPolicy::default()));
    let configure = |c: &mut roomcast_gateway::Config| c.console_tokens = console_tokens();
    let a = TestGateway::start_local(&cluster, configure).await;
    let _b = TestGateway::start_local(&cluster, configure).await;
    eventually(WAIT, "two nodes listed", || async {
        let (status, body) = console(a.admin, ALL, "GET", "/console/api/replicas", &Value::Null).await;
        (status == 200 && body["replicas"].as_array()?.len() == 2).then_some(())
    })
    .await;
}

/// The response head of `GET path`, lowercased.
async fn raw_head(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tcp.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).to_lowercase();
    text.split("\r\n\r\n").next().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn the_admin_socket_io_route_has_the_public_guards() {
    let mut gw = TestGateway::start_with(|c| {
        c.console_tokens = console_tokens();
        c.max_header_bytes = 4096;
        c.drain_delay = std::time::Duration::from_secs(2);
    })
    .await;
    let handshake = "/socket.io/?EIO=4&transport=polling";
    let (status, _) = http(gw.admin, "GET", handshake, &[], "").await;
    assert_eq!(status, 200, "a session opens");
    let big = "x".repeat(5000);
    let (status, body) = http(gw.admin, "GET", handshake, &[("X-Big", big.as_str())], "").await;
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    assert_eq!((status, code(&body)), (431, "headers_too_large"), "{body}");
    // Draining: no new sessions here either (the drain delay keeps the listener up meanwhile).
    gw.begin_shutdown();
    eventually(WAIT, "new sessions refused", || async {
        let (status, body) = http(gw.admin, "GET", handshake, &[], "").await;
        let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        (status == 503 && code(&body) == "server_shutdown").then_some(())
    })
    .await;
}
