//! The backend API's listener: it serves `/v1/...` and the OpenAPI document, the public
//! listener does not (unless `ROOMCAST_PUBLIC_API`), and the document matches what is served.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{collections::BTreeSet, net::SocketAddr};

use common::*;
use roomcast_gateway::{config::Secret, errors::ErrorCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const KEY: &str = "api-listener-key-0123456";
const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

async fn gateway(public_api: bool) -> TestGateway {
    TestGateway::start_with(|c| {
        c.api_key = vec![Secret::from(KEY.to_owned())];
        c.public_api = public_api;
    })
    .await
}

/// One request; the status, the head (lowercased) and the body.
async fn request(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = format!("Bearer {KEY}");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: {auth}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut raw)).await.expect("response in time").unwrap();
    let raw = String::from_utf8_lossy(&raw).to_string();
    let status = raw.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    (status, head.to_ascii_lowercase(), body.to_owned())
}

fn publish_body() -> String {
    json!({ "tenant": "t1", "channel": "c1", "event": "hello", "data": { "n": 1 } }).to_string()
}

fn code(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

#[tokio::test]
async fn publish_is_served_on_the_api_listener_and_not_on_the_public_one() {
    let gw = gateway(false).await;
    let c = gw.connect_user("t1", "u1").await;
    assert_eq!(c.request("join", json!({ "channel": "c1" })).await["ok"], true);

    let (status, _, body) = request(gw.api, "POST", "/v1/publish", &publish_body()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(c.next("hello").await[0]["n"], 1);

    for (method, path) in [("POST", "/v1/publish"), ("GET", "/openapi.json")] {
        let (status, _, body) = request(gw.addr, method, path, &publish_body()).await;
        assert_eq!((status, code(&body).as_str()), (404, "not_found"), "public {method} {path}: {body}");
    }
    // Socket.IO stays on the public listener only.
    let (status, _, _) = request(gw.api, "GET", "/socket.io/?EIO=4&transport=polling", "").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn with_public_api_the_public_listener_serves_it_too() {
    let gw = gateway(true).await;
    let c = gw.connect_user("t1", "u1").await;
    assert_eq!(c.request("join", json!({ "channel": "c1" })).await["ok"], true);
    for addr in [gw.addr, gw.api] {
        let (status, _, body) = request(addr, "POST", "/v1/publish", &publish_body()).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(c.next("hello").await[0]["n"], 1);
    }
}

/// Every documented path answers every documented method (not with the generic 404 nor a
/// 405), every other method with 405 and an `Allow` header naming exactly the documented ones;
/// the served document is the file; its error codes are the gateway's.
#[tokio::test]
async fn the_openapi_document_matches_the_routes() {
    let gw = gateway(false).await;
    let (status, head, served) = request(gw.api, "GET", "/openapi.json", "").await;
    assert_eq!(status, 200);
    assert!(head.contains("content-type: application/json"), "{head}");
    let doc: Value = serde_json::from_str(&served).expect("the document is JSON");
    let file: Value = serde_json::from_str(include_str!("../openapi.json")).unwrap();
    assert_eq!(doc, file, "served document is gateway/openapi.json");

    let paths = doc["paths"].as_object().expect("paths");
    let documented_paths: BTreeSet<&str> = paths.keys().map(String::as_str).collect();
    let served: BTreeSet<&str> = roomcast_gateway::API_PATHS.into_iter().collect();
    assert_eq!(documented_paths, served, "the document's paths are the API's (roomcast_gateway::API_PATHS)");
    for (path, operations) in paths {
        let documented: BTreeSet<String> =
            operations.as_object().unwrap().keys().map(|m| m.to_ascii_uppercase()).collect();
        for method in METHODS {
            // HEAD is implied by GET in axum and in HTTP.
            let expected = documented.contains(method) || (method == "HEAD" && documented.contains("GET"));
            let (status, head, body) = request(gw.api, method, path, &publish_body()).await;
            if expected {
                assert!(status != 404 && status != 405, "{method} {path} is documented but answered {status}: {body}");
                let responses = &operations[method.to_ascii_lowercase()]["responses"];
                if method != "HEAD" {
                    assert!(
                        responses.get(status.to_string()).is_some(),
                        "{method} {path} answered {status}, which is not documented"
                    );
                }
            } else {
                assert_eq!(status, 405, "{method} {path}");
                if method != "HEAD" {
                    assert_eq!(code(&body), "method_not_allowed", "{method} {path}");
                }
                let allow = head.lines().find_map(|l| l.strip_prefix("allow: ")).unwrap_or_default();
                let allowed: BTreeSet<String> = allow.split(',').map(|m| m.trim().to_ascii_uppercase()).collect();
                assert_eq!(allowed, documented, "{method} {path}: Allow header");
            }
        }
    }
    // Paths the document does not have are the generic 404.
    for path in ["/v1", "/v1/publish/x", "/v1/nope", "/"] {
        let (status, _, body) = request(gw.api, "GET", path, "").await;
        assert_eq!((status, code(&body).as_str()), (404, "not_found"), "{path}");
    }

    let codes: BTreeSet<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    let documented = doc["components"]["schemas"]["ErrorBody"]["properties"]["code"]["enum"].as_array().unwrap();
    for code in documented {
        assert!(codes.contains(code.as_str().unwrap()), "{code} is not an ErrorCode");
    }
    // The codes the publish endpoint is known to answer with are documented.
    for code in [
        "unauthorized",
        "invalid_payload",
        "invalid_room",
        "invalid_event",
        "payload_too_large",
        "unavailable",
        "timeout",
    ] {
        assert!(documented.iter().any(|c| c == code), "{code} missing from the document");
    }
}

/// `GET` on the API listener with `key`.
async fn get(addr: SocketAddr, path: &str, key: Option<&str>) -> (u16, Value) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = key.map(|k| format!("Authorization: Bearer {k}\r\n")).unwrap_or_default();
    let head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut raw)).await.expect("response in time").unwrap();
    let raw = String::from_utf8_lossy(&raw).to_string();
    let status = raw.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

async fn post_with(addr: SocketAddr, key: &str, body: &Value) -> (u16, Value) {
    let auth = format!("Bearer {key}");
    let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
    let (status, body) = http(addr, "POST", "/v1/publish", &headers, &body.to_string()).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn offsets(body: &Value) -> Vec<u64> {
    body["events"].as_array().unwrap().iter().map(|e| e["offset"].as_u64().unwrap()).collect()
}

#[tokio::test]
async fn history_returns_the_latest_events_or_those_after_an_offset() {
    let gw = gateway(false).await;
    for n in 1..=5 {
        let event = json!({ "tenant": "t1", "channel": "c1", "event": "msg", "data": { "n": n } });
        assert_eq!(post_with(gw.api, KEY, &event).await.0, 200);
    }
    let (status, latest) = get(gw.api, "/v1/history?tenant=t1&channel=c1&limit=3", Some(KEY)).await;
    assert_eq!(status, 200, "{latest}");
    assert_eq!(
        (offsets(&latest), latest["more"].clone(), latest["offset"].clone()),
        (vec![3, 4, 5], json!(true), json!(5))
    );
    assert_eq!(latest["room"], "tenant:t1:channel:c1");
    assert!(latest["epoch"].as_str().is_some_and(|e| !e.is_empty()));
    assert_eq!(
        (latest["events"][2]["event"].clone(), latest["events"][2]["data"].clone()),
        (json!("msg"), json!({ "n": 5 }))
    );
    let (_, page) = get(gw.api, "/v1/history?tenant=t1&channel=c1&after=1&limit=2", Some(KEY)).await;
    assert_eq!((offsets(&page), page["more"].clone()), (vec![2, 3], json!(true)));
    let (_, last) = get(gw.api, "/v1/history?tenant=t1&channel=c1&after=3&limit=2", Some(KEY)).await;
    assert_eq!((offsets(&last), last["more"].clone()), (vec![4, 5], json!(false)));
    let (_, none) = get(gw.api, "/v1/history?tenant=t1&channel=c1&after=5", Some(KEY)).await;
    assert_eq!((offsets(&none), none["more"].clone()), (vec![], json!(false)));
    // A room nobody published to: position 0, no events.
    let (status, empty) = get(gw.api, "/v1/history?tenant=t1&project=quiet", Some(KEY)).await;
    assert_eq!((status, offsets(&empty), empty["offset"].clone()), (200, vec![], json!(0)));
}

/// Clients read a joined room's history with the `history` ack: the same answer as the HTTP API.
#[tokio::test]
async fn a_client_reads_a_joined_rooms_history() {
    let gw = gateway(false).await;
    let client = gw.connect_user("t1", "ada").await;
    assert_eq!(client.request("join", json!({ "channel": "c1" })).await["ok"], true);
    for n in 1..=5 {
        let event = json!({ "tenant": "t1", "channel": "c1", "event": "msg", "data": { "n": n } });
        assert_eq!(post_with(gw.api, KEY, &event).await.0, 200);
    }
    let ack = client.request("history", json!({ "channel": "c1", "limit": 3 })).await;
    assert_eq!(
        (offsets(&ack), ack["more"].clone(), ack["ok"].clone()),
        (vec![3, 4, 5], json!(true), json!(true)),
        "{ack}"
    );
    let (_, http) = get(gw.api, "/v1/history?tenant=t1&channel=c1&limit=3", Some(KEY)).await;
    assert_eq!(ack, http, "one answer, two ways");
    let page = client.request("history", json!({ "channel": "c1", "after": 1, "limit": 2 })).await;
    assert_eq!((offsets(&page), page["more"].clone()), (vec![2, 3], json!(true)));
    // Refusals on another socket of the same user: each socket has its own read budget.
    let client = gw.connect_user("t1", "ada").await;
    assert_eq!(client.request("join", json!({ "channel": "c1" })).await["ok"], true);
    for (payload, code) in [
        (json!({ "channel": "c2" }), "forbidden"),
        (json!({ "project": "p9" }), "forbidden"),
        (json!({ "channel": "c1", "limit": 0 }), "invalid_payload"),
        (json!({ "channel": "c1", "limit": 1000 }), "invalid_payload"),
        (json!({ "channel": "c1", "after": -1 }), "invalid_payload"),
        (json!({ "channel": "a:b" }), "invalid_room"),
        (json!([]), "invalid_payload"),
    ] {
        let ack = client.request("history", payload.clone()).await;
        assert_eq!(ack["error"]["code"], code, "{payload}: {ack}");
    }
}

#[tokio::test]
async fn history_refuses_bad_requests_with_codes() {
    let gw = gateway(false).await;
    for (path, status, expected) in [
        ("/v1/history", 400, "invalid_payload"),
        ("/v1/history?channel=c1", 400, "invalid_payload"),
        ("/v1/history?tenant=t1&channel=c1&project=p1", 400, "invalid_room"),
        ("/v1/history?tenant=t%3A1&channel=c1", 400, "invalid_room"),
        ("/v1/history?tenant=t1&channel=c1&limit=0", 400, "invalid_payload"),
        ("/v1/history?tenant=t1&channel=c1&limit=101", 400, "invalid_payload"),
        ("/v1/history?tenant=t1&channel=c1&after=-1", 400, "invalid_payload"),
        ("/v1/history?tenant=t1&channel=c1&limit=ten", 400, "invalid_payload"),
        ("/v1/history?tenant=t1&channel=c1&evil=1", 400, "invalid_payload"),
    ] {
        let (got, body) = get(gw.api, path, Some(KEY)).await;
        assert_eq!((got, body["error"]["code"].as_str().unwrap_or_default()), (status, expected), "{path}: {body}");
    }
    let (status, body) = get(gw.api, "/v1/history?tenant=t1&channel=c1", None).await;
    assert_eq!((status, body["error"]["code"].clone()), (401, json!("unauthorized")));
    let (status, body) = get(gw.api, "/v1/history?tenant=t1&channel=c1", Some("wrong-key-wrong-key")).await;
    assert_eq!((status, body["error"]["code"].clone()), (401, json!("unauthorized")));
    // History off: nothing to read.
    let off = TestGateway::start_with(|c| {
        c.api_key = vec![Secret::from(KEY.to_owned())];
        c.history_size = 0;
    })
    .await;
    let (status, body) = get(off.api, "/v1/history?tenant=t1&channel=c1", Some(KEY)).await;
    assert_eq!((status, body["error"]["code"].clone()), (404, json!("not_found")), "{body}");
}

/// Per-tenant keys (`ROOMCAST_TENANT_API_KEYS_FILE`): a key for t1 publishes to and reads t1
/// only; a batch with one item of another tenant publishes nothing; the global key acts for all.
#[tokio::test]
async fn a_tenant_scoped_key_acts_for_its_tenants_only() {
    const T1_KEY: &str = "tenant-one-key-0123456789";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tenant-keys.json");
    std::fs::write(&file, json!({ "keys": [{ "key": T1_KEY, "tenants": ["t1"] }] }).to_string()).unwrap();
    let gw = TestGateway::start_with(|c| {
        c.api_key = vec![Secret::from(KEY.to_owned())];
        c.tenant_api_keys_file = Some(file.clone());
    })
    .await;
    let member = gw.connect_user("t2", "bob").await;
    assert_eq!(member.request("join", json!({ "channel": "c1" })).await["ok"], true);

    let own = json!({ "tenant": "t1", "channel": "c1", "event": "e", "data": 1 });
    assert_eq!(post_with(gw.api, T1_KEY, &own).await.0, 200);
    let other = json!({ "tenant": "t2", "channel": "c1", "event": "e", "data": 2 });
    let (status, body) = post_with(gw.api, T1_KEY, &other).await;
    assert_eq!((status, body["error"]["code"].clone()), (403, json!("forbidden")), "{body}");
    let (status, body) = post_with(gw.api, T1_KEY, &json!([own, other])).await;
    assert_eq!((status, body["error"]["code"].clone()), (403, json!("forbidden")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().starts_with("item 1"), "{body}");
    let (status, body) = get(gw.api, "/v1/history?tenant=t2&channel=c1", Some(T1_KEY)).await;
    assert_eq!((status, body["error"]["code"].clone()), (403, json!("forbidden")), "{body}");
    assert_eq!(get(gw.api, "/v1/history?tenant=t1&channel=c1", Some(T1_KEY)).await.0, 200);
    // Nothing reached tenant t2's member; the global key still acts for t2.
    assert!(member.next_within("e", std::time::Duration::from_millis(200)).await.is_none());
    assert_eq!(post_with(gw.api, KEY, &other).await.0, 200);
    assert_eq!(member.next("e").await[0], 2);
}

/// Bad tenant key files stop startup naming the option.
#[test]
fn a_bad_tenant_keys_file_stops_startup() {
    let dir = tempfile::tempdir().unwrap();
    for (content, expected) in [
        ("not json", "expected"),
        (r#"{"keys": [{"key": "short", "tenants": ["t1"]}]}"#, "16 characters"),
        (r#"{"keys": [{"key": "long-enough-key-0123", "tenants": []}]}"#, "empty"),
        (r#"{"keys": [{"key": "long-enough-key-0123", "tenants": ["a b"]}]}"#, "not a tenant id"),
        (r#"{"keys": [{"key": "long-enough-key-0123", "tenants": ["t1"], "admin": true}]}"#, "unknown field"),
        (
            r#"{"keys": [{"key": "long-enough-key-0123", "tenants": ["t1"]}, {"key": "long-enough-key-0123", "tenants": ["t2"]}]}"#,
            "listed twice",
        ),
    ] {
        let file = dir.path().join("keys.json");
        std::fs::write(&file, content).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_roomcast-gateway"))
            .env_clear()
            .env("ROOMCAST_JWT_SECRET", SECRET)
            .env("ROOMCAST_LISTEN", "127.0.0.1:0")
            .env("ROOMCAST_API_LISTEN", "127.0.0.1:0")
            .env("ROOMCAST_ADMIN_LISTEN", "127.0.0.1:0")
            .env("ROOMCAST_TENANT_API_KEYS_FILE", &file)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{content}: {stderr}");
        assert!(stderr.contains("ROOMCAST_TENANT_API_KEYS_FILE") && stderr.contains(expected), "{content}: {stderr}");
    }
}

/// With Redis, history is read from Redis: what one replica took is read on another.
#[tokio::test]
async fn history_is_read_from_redis_on_any_replica() {
    let redis = common::redis::RedisServer::start();
    let rs = common::replica::Replica::ready(2, &redis.url(), &[]).await;
    for n in 1..=3 {
        assert_eq!(rs[0].publish(&json!({ "tenant": "t1", "project": "p1", "event": "e", "data": n })).await.0, 200);
    }
    let (status, body) =
        get(rs[1].api, "/v1/history?tenant=t1&project=p1&limit=2", Some(common::replica::API_KEY)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((offsets(&body), body["more"].clone()), (vec![2, 3], json!(true)));
    assert_eq!(body["events"][1]["data"], 3);

    // A stream longer than this gateway's history size (a publisher with a larger policy):
    // "latest" is still the latest, not the oldest the size would reach.
    let small = common::replica::Replica::spawn(Some(&redis.url()), &[("ROOMCAST_HISTORY_SIZE", "20")]).await;
    let publisher = roomcast_publisher::Publisher::connect(&redis.url()).await.unwrap();
    for n in 1..=30 {
        publisher.channel("t1", "long").emit("e", &n).await.unwrap();
    }
    let (status, body) =
        get(small.api, "/v1/history?tenant=t1&channel=long&limit=3", Some(common::replica::API_KEY)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (offsets(&body), body["more"].clone(), body["offset"].clone()),
        (vec![28, 29, 30], json!(true), json!(30))
    );
}
