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
