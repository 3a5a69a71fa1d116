//! Token revocation (issue 16): `POST /v1/revoke` by `jti`, or every token of a user issued
//! before a time. Live sockets holding such a token are disconnected with `token_revoked`, and
//! the token is refused at connect and at `auth:refresh` on every replica.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{client::ConnectFailure, redis::RedisServer, replica::Replica, *};
use serde_json::{Value, json};

const KEY: &str = "revoke-api-key-0123456789";

async fn revoke(api: std::net::SocketAddr, key: &str, body: &Value) -> (u16, Value) {
    post_json(api, key, "/v1/revoke", body).await
}

/// A token of `user` in `tenant` with `jti` and `iat` (seconds ago).
fn token_with(tenant: &str, user: &str, jti: &str, issued_ago: i64) -> String {
    let mut c = claims(tenant, user);
    c["jti"] = json!(jti);
    c["iat"] = json!(now() as i64 - issued_ago);
    token(&c)
}

/// Records `member` of `tenant` until `until` (ms) with at most `most` per tenant, with
/// redis-cli and the script as PROTOCOL.md documents; what the script answered.
fn record(redis: &RedisServer, member: &str, tenant: &str, until: u64, most: u64) -> String {
    redis.cli(&[
        "EVAL",
        roomcast_publisher::wire::REVOKE_SCRIPT,
        "3",
        "roomcast:{revocations}",
        "roomcast:{revocations}:tenants",
        "roomcast:{revocations}:version",
        member,
        tenant,
        &until.to_string(),
        &most.to_string(),
        &roomcast_publisher::wire::new_event_id(),
    ])
}

/// What connecting with `token` to `addr` gives: the sid, or the refusal's code.
async fn connect(addr: std::net::SocketAddr, token: &str) -> Result<Client, String> {
    match Client::connect(addr, client::Connect::token(token)).await {
        Ok(c) => Ok(c),
        Err(ConnectFailure::Rejected(code)) => Err(code),
        Err(e) => panic!("unexpected failure {e:?}"),
    }
}

/// Waits until connecting to `addr` with `token` is refused with `token_revoked`.
async fn refused_at(addr: std::net::SocketAddr, token: &str) {
    eventually(WAIT, "the token refused", || async {
        match connect(addr, token).await {
            Err(code) if code == "token_revoked" => Some(()),
            Err(code) => panic!("refused with {code}"),
            Ok(c) => {
                c.close();
                None
            }
        }
    })
    .await;
}

#[tokio::test]
async fn revoked_tokens_are_disconnected_and_refused_on_every_replica() {
    let redis = RedisServer::start();
    let rs = Replica::ready(3, &redis.url(), &[]).await;
    let (ada1, ada2, bob) = (
        token_with("t1", "ada", "ada-1", 100),
        token_with("t1", "ada", "ada-2", 100),
        token_with("t1", "bob", "bob-1", 100),
    );
    let ada_here = connect(rs[0].addr, &ada1).await.unwrap();
    let ada_there = connect(rs[1].addr, &ada2).await.unwrap();
    let bob_here = connect(rs[0].addr, &bob).await.unwrap();
    // The same jti in another tenant is another token.
    let other_tenant = connect(rs[1].addr, &token_with("t2", "ada", "ada-1", 100)).await.unwrap();
    // rs[2] holds no socket of t1: it learns from the shared list.
    subscribed(&redis, "tenant:t1", 2).await;

    let started = Instant::now();
    let (status, receipt) = revoke(rs[1].api, replica::API_KEY, &json!({ "tenant": "t1", "jti": "ada-1" })).await;
    assert_eq!(status, 200, "{receipt}");
    assert_eq!(
        (receipt["sockets"].clone(), receipt["replicas"].clone(), receipt["of"].clone(), receipt["complete"].clone()),
        (json!(1), json!(2), json!(2), json!(true)),
        "{receipt}"
    );
    assert_eq!(receipt["room"], "tenant:t1");
    assert!(receipt["until"].as_u64().unwrap() > now() * 1000 + 23 * 3600 * 1000, "kept for the token lifetime");
    let notice = kicked(&ada_here).await;
    assert_eq!(notice["code"], "token_revoked");
    assert_eq!(notice["reconnect"], false);
    eprintln!("the revoked token's socket was disconnected {:?} after the request", started.elapsed());
    for c in [&ada_there, &bob_here, &other_tenant] {
        assert_eq!(c.request("join", json!({ "project": "p1" })).await["ok"], true);
        assert!(c.events("roomcast:disconnect").is_empty());
    }
    // Refused at once where the envelope went, within a second elsewhere.
    for r in &rs[..2] {
        assert_eq!(connect(r.addr, &ada1).await.err().as_deref(), Some("token_revoked"));
    }
    let waited = Instant::now();
    refused_at(rs[2].addr, &ada1).await;
    eprintln!("a replica without the tenant's sockets refused it {:?} later", waited.elapsed());
    // And at auth:refresh; the other tokens are fine.
    let ack = ada_there.request("auth:refresh", json!({ "token": ada1 })).await;
    assert_eq!(ack["error"]["code"], "token_revoked", "{ack}");
    assert_eq!(ada_there.request("auth:refresh", json!({ "token": ada2 })).await["ok"], true);
    let ada_far = connect(rs[2].addr, &ada2).await.unwrap();

    // Every token of ada issued before now: both old ones, wherever they are; a newer one is fine.
    subscribed(&redis, "tenant:t1:user:ada", 2).await;
    let (status, receipt) = revoke(rs[2].api, replica::API_KEY, &json!({ "tenant": "t1", "user": "ada" })).await;
    assert_eq!(status, 200, "{receipt}");
    assert_eq!(
        (receipt["room"].clone(), receipt["sockets"].clone()),
        (json!("tenant:t1:user:ada"), json!(2)),
        "{receipt}"
    );
    for c in [&ada_there, &ada_far] {
        assert_eq!(kicked(c).await["code"], "token_revoked");
    }
    for r in &rs {
        refused_at(r.addr, &ada2).await;
    }
    let mut no_iat = claims("t1", "ada");
    no_iat["jti"] = json!("no-iat");
    assert_eq!(connect(rs[0].addr, &token(&no_iat)).await.err().as_deref(), Some("token_revoked"), "no iat: revoked");
    let fresh = token_with("t1", "ada", "ada-3", -1);
    connect(rs[0].addr, &fresh).await.unwrap();
    assert_eq!(bob_here.request("join", json!({ "channel": "c1" })).await["ok"], true, "bob is untouched");

    eventually(WAIT, "metrics", || async {
        let held = rs[2].metric("roomcast_revocations", "").await;
        let kicked = rs[0].metric("roomcast_disconnects_total", r#"reason="token_revoked""#).await;
        let refused = rs[2].metric("roomcast_connections_rejected_total", r#"reason="token_revoked""#).await;
        (held == 2.0 && kicked >= 1.0 && refused >= 1.0).then_some(())
    })
    .await;
}

/// A revocation recorded straight in Redis in the documented format (PROTOCOL.md), without the
/// control envelope, as a replica that missed the envelope sees it: the replicas still
/// disconnect the sockets holding the token within a second of reading the list.
#[tokio::test]
async fn a_revocation_read_from_the_shared_list_disconnects_the_sockets_holding_it() {
    let redis = RedisServer::start();
    let rs = Replica::ready(2, &redis.url(), &[]).await;
    let held = token_with("t1", "ada", "missed", 10);
    let clients = [connect(rs[0].addr, &held).await.unwrap(), connect(rs[1].addr, &held).await.unwrap()];
    let other = connect(rs[1].addr, &token_with("t1", "ada", "kept", 10)).await.unwrap();
    let until = (now() + 3600) * 1000;
    let version = record(&redis, r#"{"tenant":"t1","jti":"missed"}"#, "t1", until, 10);
    assert_eq!(version.trim(), "1");
    let started = Instant::now();
    for c in &clients {
        assert_eq!(kicked(c).await["code"], "token_revoked");
    }
    eprintln!("disconnected {:?} after the list changed", started.elapsed());
    assert_eq!(other.request("join", json!({ "project": "p1" })).await["ok"], true);
    assert_eq!(redis.cli(&["ZCARD", "roomcast:{revocations}"]).trim(), "1");
}

#[tokio::test]
async fn revocations_on_a_single_node_with_bad_requests_limits_and_lifetimes() {
    let gw = TestGateway::start_with_tenant_keys(KEY, |c| {
        c.max_revocations_per_tenant = 2;
    })
    .await;
    let ada = gw.connect(&token_with("t1", "ada", "a1", 10)).await;

    let future = now() + 3600;
    for (body, status, code) in [
        (json!({}), 400, "invalid_payload"),
        (json!({ "tenant": "t1" }), 400, "invalid_payload"),
        (json!({ "tenant": "t1", "jti": "a1", "user": "ada" }), 400, "invalid_payload"),
        (json!({ "tenant": "t1", "jti": "a1", "before": 10 }), 400, "invalid_payload"),
        (json!({ "tenant": "t1", "jti": "not an id" }), 400, "invalid_payload"),
        (json!({ "tenant": "t1", "jti": "" }), 400, "invalid_payload"),
        (json!({ "tenant": "t:1", "jti": "a1" }), 400, "invalid_payload"),
        (json!({ "tenant": "t1", "user": "ada", "before": future }), 400, "invalid_payload"),
        (json!({ "tenant": "t1", "user": "ada", "before": -1 }), 400, "invalid_payload"),
        (json!({ "tenant": "t1", "jti": "a1", "everyone": true }), 400, "invalid_payload"),
        (json!({ "tenant": "t1", "jti": "x".repeat(5000) }), 413, "payload_too_large"),
    ] {
        let (got, answer) = revoke(gw.api, KEY, &body).await;
        assert_eq!((got, answer["error"]["code"].as_str().unwrap_or_default()), (status, code), "{body}: {answer}");
    }
    let (status, answer) = revoke(gw.api, "wrong-key-wrong-key-0123", &json!({ "tenant": "t1", "jti": "a1" })).await;
    assert_eq!((status, answer["error"]["code"].clone()), (401, json!("unauthorized")));
    let (status, answer) = revoke(gw.api, TENANT_TWO_KEY, &json!({ "tenant": "t1", "jti": "a1" })).await;
    assert_eq!((status, answer["error"]["code"].clone()), (403, json!("forbidden")));
    let (status, _) = http(gw.api, "GET", "/v1/revoke", &[], "").await;
    assert_eq!(status, 405);
    assert!(ada.next_within("roomcast:disconnect", Duration::from_millis(100)).await.is_none(), "nothing revoked yet");

    // Two per tenant here: a third is refused, the same one again is not, another tenant's is not.
    let (status, receipt) = revoke(gw.api, KEY, &json!({ "tenant": "t1", "jti": "a1" })).await;
    assert_eq!(
        (status, receipt["sockets"].clone(), receipt["complete"].clone()),
        (200, json!(1), json!(true)),
        "{receipt}"
    );
    assert_eq!(kicked(&ada).await["code"], "token_revoked");
    assert_eq!(revoke(gw.api, KEY, &json!({ "tenant": "t1", "user": "bob", "before": 1 })).await.0, 200);
    let (status, answer) = revoke(gw.api, KEY, &json!({ "tenant": "t1", "jti": "a2" })).await;
    assert_eq!((status, answer["error"]["code"].clone()), (429, json!("too_many_revocations")), "{answer}");
    assert_eq!(revoke(gw.api, KEY, &json!({ "tenant": "t1", "jti": "a1" })).await.0, 200, "again: harmless");
    let (status, _) = revoke(gw.api, TENANT_TWO_KEY, &json!({ "tenant": "t2", "jti": "a2" })).await;
    assert_eq!(status, 200, "the other tenant's own allowance");
    assert_eq!(connect(gw.addr, &token_with("t1", "ada", "a1", 10)).await.err().as_deref(), Some("token_revoked"));
    connect(gw.addr, &token_with("t1", "ada", "a2", 10)).await.unwrap();
    // bob's tokens issued before 1970 + 1 s: none of the usual ones.
    connect(gw.addr, &token_with("t1", "bob", "b1", 10)).await.unwrap();

    // A token valid for longer than ROOMCAST_MAX_TOKEN_LIFETIME (24 h) could outlive its
    // revocation: refused. One just inside it is fine.
    let mut long = claims("t1", "ada");
    long["exp"] = json!(now() + 2 * 24 * 3600);
    assert_eq!(connect(gw.addr, &token(&long)).await.err().as_deref(), Some("token_invalid"));
    long["exp"] = json!(now() + 24 * 3600 - 60);
    connect(gw.addr, &token(&long)).await.unwrap();
    // Measured from iat too: issued two days ago, valid another hour, is 49 h long.
    long["iat"] = json!(now() - 2 * 24 * 3600);
    long["exp"] = json!(now() + 3600);
    assert_eq!(connect(gw.addr, &token(&long)).await.err().as_deref(), Some("token_invalid"));
    long["iat"] = json!(now() - 3600);
    connect(gw.addr, &token(&long)).await.unwrap();

    // A jti is whatever the identity provider chose: base64 with / and + is fine.
    let odd = token_with("t2", "eve", "a/b+c==", 10);
    let eve = connect(gw.addr, &odd).await.unwrap();
    let (status, receipt) = revoke(gw.api, KEY, &json!({ "tenant": "t2", "jti": "a/b+c==" })).await;
    assert_eq!((status, receipt["sockets"].clone()), (200, json!(1)), "{receipt}");
    assert_eq!(kicked(&eve).await["code"], "token_revoked");
}

/// The SDK records the same revocation and sends the same envelope; a replica without the
/// user's sockets learns it from the list.
#[tokio::test]
async fn the_sdk_revokes_a_users_tokens_through_redis() {
    use roomcast_publisher::{PublishError, Publisher, Revoke, wire::Revocation};
    let redis = RedisServer::start();
    let rs = Replica::ready(2, &redis.url(), &[]).await;
    let old = token_with("t1", "ada", "old", 30);
    let here = connect(rs[0].addr, &old).await.unwrap();
    subscribed(&redis, "tenant:t1:user:ada", 1).await;
    let publisher = Publisher::connect(&redis.url()).await.unwrap();
    let everywhere = Revocation { tenant: "t1".into(), jti: None, user: Some("ada".into()), before: Some(now() - 1) };
    let receipt = publisher.revoke(&everywhere, &Revoke::default()).await.unwrap();
    assert_eq!((receipt.sockets, receipt.replicas, receipt.of), (1, 1, 1));
    assert_eq!(kicked(&here).await["code"], "token_revoked");
    refused_at(rs[1].addr, &old).await;
    connect(rs[1].addr, &token_with("t1", "ada", "new", 0)).await.unwrap();

    let tight = Revoke { max_per_tenant: 1, ..Default::default() };
    let another = Revocation { tenant: "t1".into(), jti: Some("j9".into()), user: None, before: None };
    let err = publisher.revoke(&another, &tight).await.unwrap_err();
    assert!(matches!(err, PublishError::TooManyRevocations(1)), "{err}");
    let shapeless = Revocation { tenant: "t1".into(), jti: Some("j9".into()), user: Some("ada".into()), before: None };
    let err = publisher.revoke(&shapeless, &Revoke::default()).await.unwrap_err();
    assert!(matches!(err, PublishError::InvalidRevocation(_)), "{err}");
}

/// The script's own bookkeeping, by the server's clock: the per-tenant count, expired ones
/// forgotten (and uncounted) on the next call, arguments out of range refused before any write.
#[tokio::test]
async fn the_revocation_script_counts_per_tenant_and_forgets_expired_ones() {
    let redis = RedisServer::start();
    let soon = (now() + 2) * 1000;
    assert_eq!(record(&redis, r#"{"tenant":"tx","jti":"a"}"#, "tx", soon, 2), "1");
    assert_eq!(record(&redis, r#"{"tenant":"tx","jti":"b"}"#, "tx", soon, 2), "1");
    assert_eq!(record(&redis, r#"{"tenant":"tx","jti":"a"}"#, "tx", soon, 2), "1", "again: harmless");
    let later = (now() + 3600) * 1000;
    assert_eq!(record(&redis, r#"{"tenant":"tx","jti":"c"}"#, "tx", later, 2), "0", "full");
    assert_eq!(record(&redis, r#"{"tenant":"ty","jti":"c"}"#, "ty", later, 2), "1", "another tenant's own");
    assert_eq!(redis.cli(&["HGET", "roomcast:{revocations}:tenants", "tx"]), "2");
    // Once a and b expired, the next call forgets them: c fits.
    eventually(WAIT, "the expired ones forgotten", || async {
        (record(&redis, r#"{"tenant":"tx","jti":"c"}"#, "tx", later, 2) == "1").then_some(())
    })
    .await;
    assert_eq!(redis.cli(&["HGET", "roomcast:{revocations}:tenants", "tx"]), "1");
    assert_eq!(redis.cli(&["ZCARD", "roomcast:{revocations}"]), "2");
    let ttl: i64 = redis.cli(&["PTTL", "roomcast:{revocations}:version"]).parse().unwrap();
    assert!(ttl > 3_500_000, "the keys live as long as the last revocation: {ttl}");
    let version = redis.cli(&["GET", "roomcast:{revocations}:version"]);
    for (until, most) in [(u64::MAX, 2), ((now() + 40 * 86400) * 1000, 2), ((now() - 1) * 1000, 2), (later, 0)] {
        let refused = record(&redis, r#"{"tenant":"tz","jti":"d"}"#, "tz", until, most);
        assert!(refused.contains("out of range"), "{until} {most}: {refused}");
    }
    assert_eq!(redis.cli(&["HGET", "roomcast:{revocations}:tenants", "tz"]), "", "nothing written");
    assert_eq!(redis.cli(&["GET", "roomcast:{revocations}:version"]), version);
}
