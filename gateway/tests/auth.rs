//! Connection authentication as a client sees it: token sources, rejection codes, key types,
//! token expiry and refresh on live sockets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{path::PathBuf, time::Duration};

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

async fn rejection(gw: &TestGateway, opts: Connect) -> String {
    match Client::connect(gw.addr, opts).await {
        Err(ConnectFailure::Rejected(code)) => code,
        Err(other) => panic!("expected a connect_error, got {other:?}"),
        Ok(_) => panic!("expected a connect_error, got a connection"),
    }
}

#[tokio::test]
async fn a_token_is_accepted_from_auth_header_or_query() {
    let gw = TestGateway::start().await;
    let t = user_token("t1", "u1");
    Client::connect(gw.addr, Connect::token(&t)).await.expect("auth.token");
    Client::connect(gw.addr, Connect { headers: vec![("authorization", format!("Bearer {t}"))], ..Default::default() })
        .await
        .expect("Authorization header");
    Client::connect(gw.addr, Connect { query: Some(format!("token={t}")), ..Default::default() }).await.expect("query");
}

#[tokio::test]
async fn auth_token_takes_precedence_over_header_and_query() {
    let gw = TestGateway::start().await;
    let good = user_token("t1", "u1");
    let opts = Connect {
        auth: Some(json!({ "token": "garbage" })),
        headers: vec![("authorization", format!("Bearer {good}"))],
        query: Some(format!("token={good}")),
        ..Default::default()
    };
    assert_eq!(rejection(&gw, opts).await, "token_invalid");
}

#[tokio::test]
async fn each_rejection_has_its_code() {
    let gw = TestGateway::start_with(|c| c.jwt_leeway = Duration::ZERO).await;
    assert_eq!(rejection(&gw, Connect::default()).await, "token_missing");
    assert_eq!(rejection(&gw, Connect { auth: Some(json!({})), ..Default::default() }).await, "token_missing");
    assert_eq!(rejection(&gw, Connect::token("not-a-jwt")).await, "token_invalid");
    let mut wrong_key = claims("t1", "u1");
    wrong_key["exp"] = json!(now() + 60);
    let forged = jsonwebtoken::encode(
        &Header::default(),
        &wrong_key,
        &EncodingKey::from_secret(b"some-other-secret-some-other-secret"),
    )
    .unwrap();
    assert_eq!(rejection(&gw, Connect::token(&forged)).await, "token_invalid");
    let mut expired = claims("t1", "u1");
    expired["exp"] = json!(now() - 30);
    assert_eq!(rejection(&gw, Connect::token(&token(&expired))).await, "token_expired");
    let no_tenant = json!({ "sub": "u1", "exp": now() + 60 });
    assert_eq!(rejection(&gw, Connect::token(&token(&no_tenant))).await, "forbidden");
    let bad_header = Connect { headers: vec![("authorization", "Basic abc".into())], ..Default::default() };
    assert_eq!(rejection(&gw, bad_header).await, "token_invalid");

    let scrape = gw.metrics().await;
    for reason in ["token_missing", "token_invalid", "token_expired", "forbidden"] {
        assert!(
            sample(&scrape, "roomcast_connections_rejected_total", &format!("reason=\"{reason}\"")) >= 1.0,
            "no rejection counted for {reason}"
        );
    }
}

#[tokio::test]
async fn issuer_and_audience_are_checked_when_configured() {
    let gw = TestGateway::start_with(|c| {
        c.jwt_issuer = vec!["https://idp.example".into()];
        c.jwt_audience = vec!["roomcast".into()];
    })
    .await;
    let mut ok = claims("t1", "u1");
    ok["iss"] = json!("https://idp.example");
    ok["aud"] = json!(["other", "roomcast"]);
    gw.connect(&token(&ok)).await;
    let mut wrong_iss = ok.clone();
    wrong_iss["iss"] = json!("https://evil.example");
    assert_eq!(rejection(&gw, Connect::token(&token(&wrong_iss))).await, "token_invalid");
    let mut no_aud = ok.clone();
    no_aud.as_object_mut().unwrap().remove("aud");
    assert_eq!(rejection(&gw, Connect::token(&token(&no_aud))).await, "token_invalid");
}

fn signed(alg: Algorithm, kid: Option<&str>, key_file: &str, claims: &Value) -> String {
    let pem = std::fs::read(fixture(key_file)).unwrap();
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
        _ => EncodingKey::from_ed_pem(&pem),
    }
    .unwrap();
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

#[tokio::test]
async fn public_keys_of_each_family_verify_their_tokens() {
    for (alg, private, public) in [
        (Algorithm::RS256, "rsa-private.pem", "rsa-public.pem"),
        (Algorithm::ES256, "ec-private.pem", "ec-public.pem"),
        (Algorithm::EdDSA, "ed-private.pem", "ed-public.pem"),
    ] {
        let gw = TestGateway::start_with(|c| {
            c.jwt_secret = None;
            c.jwt_public_key_file = Some(fixture(public));
        })
        .await;
        gw.connect(&signed(alg, None, private, &claims("t1", "u1"))).await;
        // An HMAC token signed with the public key's bytes must not pass (algorithm confusion).
        let pem = std::fs::read(fixture(public)).unwrap();
        let confused =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims("t1", "u1"), &EncodingKey::from_secret(&pem))
                .unwrap();
        assert_eq!(rejection(&gw, Connect::token(&confused)).await, "token_invalid", "{alg:?}");
    }
}

#[tokio::test]
async fn a_jwks_selects_the_key_by_kid_so_keys_can_rotate() {
    let gw = TestGateway::start_with(|c| {
        c.jwt_secret = None;
        c.jwks_file = Some(fixture("jwks.json"));
    })
    .await;
    let c = claims("t1", "u1");
    gw.connect(&signed(Algorithm::RS256, Some("rsa-2026-01"), "rsa-private.pem", &c)).await;
    gw.connect(&signed(Algorithm::RS256, Some("rsa-2026-06"), "rsa2-private.pem", &c)).await;
    // Right key, wrong kid: the kid picks the other key and the signature fails.
    let mismatched = signed(Algorithm::RS256, Some("rsa-2026-06"), "rsa-private.pem", &c);
    assert_eq!(rejection(&gw, Connect::token(&mismatched)).await, "token_invalid");
    let unknown = signed(Algorithm::RS256, Some("retired"), "rsa-private.pem", &c);
    assert_eq!(rejection(&gw, Connect::token(&unknown)).await, "token_invalid");
    let no_kid = signed(Algorithm::RS256, None, "rsa-private.pem", &c);
    assert_eq!(rejection(&gw, Connect::token(&no_kid)).await, "token_invalid");
}

#[tokio::test]
async fn a_socket_is_warned_then_disconnected_when_its_token_expires() {
    let gw = TestGateway::start_with(|c| {
        c.jwt_leeway = Duration::ZERO;
        c.auth_expiring_notice = Duration::from_secs(60);
    })
    .await;
    let mut c = claims("t1", "u1");
    c["exp"] = json!(now() + 2);
    let client = gw.connect(&token(&c)).await;
    // The notice period is longer than the token's life, so the warning comes at once.
    let warning = client.next("auth:expiring").await;
    assert_eq!(warning[0]["exp"], c["exp"]);
    let reason = client.next("roomcast:disconnect").await;
    assert_eq!(reason[0], json!({ "code": "token_expired", "message": reason[0]["message"], "reconnect": false }));
    // A Socket.IO disconnect packet ("io server disconnect"), so socket.io-client does not
    // reconnect with the dead token; it closes its transport itself.
    assert!(client.server_disconnect().await);
    assert!(sample(&gw.metrics().await, "roomcast_disconnects_total", "reason=\"token_expired\"") >= 1.0);
}

#[tokio::test]
async fn a_refreshed_token_keeps_the_socket_alive_past_the_old_expiry() {
    let gw = TestGateway::start_with(|c| c.jwt_leeway = Duration::ZERO).await;
    let mut c = claims("t1", "u1");
    let old_exp = now() + 2;
    c["exp"] = json!(old_exp);
    let client = gw.connect(&token(&c)).await;

    let mut fresh = claims("t1", "u1");
    fresh["exp"] = json!(now() + 3600);
    let ack = client.request("auth:refresh", json!({ "token": token(&fresh) })).await;
    assert_eq!(ack["ok"], true, "{ack}");
    assert_eq!(ack["exp"], fresh["exp"]);

    // Wait out the old expiry (a deadline, not a guess), then prove the socket still works.
    let past_old_exp = Duration::from_secs(old_exp + 1 - now().min(old_exp + 1)) + Duration::from_millis(500);
    assert!(client.next_within("roomcast:disconnect", past_old_exp).await.is_none());
    assert_eq!(client.request("join", json!({ "project": "p1" })).await["ok"], true);
    assert!(!client.got_server_disconnect());
}

#[tokio::test]
async fn a_refresh_must_be_a_valid_token_of_the_same_user() {
    let gw = TestGateway::start().await;
    let client = gw.connect_user("t1", "u1").await;
    let code = |ack: Value| ack["error"]["code"].as_str().unwrap().to_owned();
    assert_eq!(code(client.request("auth:refresh", json!({ "token": user_token("t1", "u2") })).await), "forbidden");
    assert_eq!(code(client.request("auth:refresh", json!({ "token": user_token("t2", "u1") })).await), "forbidden");
    assert_eq!(code(client.request("auth:refresh", json!({ "token": "nope" })).await), "token_invalid");
    let mut expired = claims("t1", "u1");
    expired["exp"] = json!(now() - 120);
    assert_eq!(code(client.request("auth:refresh", json!({ "token": token(&expired) })).await), "token_expired");
    assert_eq!(code(client.request("auth:refresh", json!({ "tok": "x" })).await), "invalid_payload");
    assert_eq!(code(client.request("auth:refresh", json!("just-a-string")).await), "invalid_payload");
}

#[tokio::test]
async fn a_refresh_that_narrows_access_leaves_the_rooms_it_no_longer_grants() {
    let gw = TestGateway::start().await;
    let client = gw.connect_user("t1", "u1").await;
    assert_eq!(client.request("join", json!({ "project": "p1" })).await["ok"], true);
    assert_eq!(client.request("join", json!({ "project": "p2" })).await["ok"], true);
    let mut narrower = claims("t1", "u1");
    narrower["projects"] = json!(["p2"]);
    let ack = client.request("auth:refresh", json!({ "token": token(&narrower) })).await;
    assert_eq!(ack["left"], json!(["tenant:t1:project:p1"]), "{ack}");
    assert_eq!(client.request("join", json!({ "project": "p1" })).await["error"]["code"], "forbidden");
}

/// Issue 14: a validly signed token with `exp` near `u64::MAX` panicked the expiry arithmetic
/// (caught by the runtime, but the socket then never expired and its setup never finished).
/// Since issue 16 such a token is refused (it would outlive any revocation of it), at connect
/// and at refresh, and the gateway goes on serving.
#[tokio::test]
async fn a_token_expiring_at_the_end_of_time_is_refused_and_nothing_breaks() {
    let gw = TestGateway::start_with(|c| c.max_token_lifetime = Duration::from_secs(30 * 24 * 3600)).await;
    let client = gw.connect(&token(&claims("t1", "ok"))).await;
    for exp in [u64::MAX, u64::MAX / 1000, u64::MAX - 5, i64::MAX as u64] {
        let mut c = claims("t1", "forever");
        c["exp"] = json!(exp);
        assert_eq!(rejection(&gw, Connect::token(&token(&c))).await, "token_invalid", "exp {exp}");
        let mut refresh = claims("t1", "ok");
        refresh["exp"] = json!(exp);
        let ack = client.request("auth:refresh", json!({ "token": token(&refresh) })).await;
        assert_eq!(ack["error"]["code"], "token_invalid", "exp {exp}: {ack}");
    }
    assert_eq!(client.request("join", json!({ "project": "p1" })).await["ok"], true);
    gw.connect(&token(&claims("t1", "another"))).await;
}
