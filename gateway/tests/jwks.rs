//! Keys from identity providers (issue 15): a JWKS URL served by the test rotates its keys and
//! the gateway follows, survives the provider going down with the last good keys, rate-limits
//! the refetches unknown `kid`s cause; several trusted issuers, each with its own keys and
//! tenants.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// The public JWK of `kid` from the fixtures' JWKS.
fn jwk(kid: &str) -> Value {
    let set: Value = serde_json::from_str(&std::fs::read_to_string(fixture("jwks.json")).unwrap()).unwrap();
    set["keys"].as_array().unwrap().iter().find(|k| k["kid"] == kid).unwrap().clone()
}

/// A token signed with the fixture key of `kid`, naming `kid` (which may be made up).
fn signed(kid: &str, claims: &Value) -> String {
    let pem = match kid {
        "rsa-2026-06" => "rsa2-private.pem",
        _ => "rsa-private.pem",
    };
    let key = EncodingKey::from_rsa_pem(&std::fs::read(fixture(pem)).unwrap()).unwrap();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

/// An identity provider's JWKS endpoint: serves `keys` with an ETag (answering a matching
/// `If-None-Match` with 304), or 503 while `down`; counts requests and 304s.
#[derive(Clone, Default)]
struct Idp {
    keys: Arc<Mutex<Vec<Value>>>,
    down: Arc<AtomicBool>,
    requests: Arc<AtomicUsize>,
    not_modified: Arc<AtomicUsize>,
}

impl Idp {
    async fn serve(&self) -> String {
        async fn jwks(State(idp): State<Idp>, headers: axum::http::HeaderMap) -> axum::response::Response {
            idp.requests.fetch_add(1, Ordering::SeqCst);
            if idp.down.load(Ordering::SeqCst) {
                return (StatusCode::SERVICE_UNAVAILABLE, "down").into_response();
            }
            let keys = idp.keys.lock().unwrap().clone();
            let etag = format!("\"{}\"", keys.iter().map(|k| k["kid"].as_str().unwrap()).collect::<Vec<_>>().join("+"));
            if headers.get("if-none-match").is_some_and(|v| v.as_bytes() == etag.as_bytes()) {
                idp.not_modified.fetch_add(1, Ordering::SeqCst);
                return StatusCode::NOT_MODIFIED.into_response();
            }
            let headers = [("cache-control", "public, max-age=3600".to_owned()), ("etag", etag)];
            (headers, axum::Json(json!({ "keys": keys }))).into_response()
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route("/.well-known/jwks.json", get(jwks)).with_state(self.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}/.well-known/jwks.json")
    }

    fn set(&self, kids: &[&str]) {
        *self.keys.lock().unwrap() = kids.iter().map(|k| jwk(k)).collect();
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

async fn outcome(gw: &TestGateway, token: &str) -> Result<(), String> {
    match Client::connect(gw.addr, Connect::token(token)).await {
        Ok(_) => Ok(()),
        Err(ConnectFailure::Rejected(code)) => Err(code),
        Err(other) => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_jwks_url_is_followed_through_rotation_kept_through_an_outage_and_refetched_at_a_bounded_rate() {
    let idp = Idp::default();
    idp.set(&["rsa-2026-01"]);
    let url = idp.serve().await;
    let min_interval = Duration::from_secs(1);
    let gw = TestGateway::start_with(|c| {
        c.jwt_secret = None;
        c.jwt_jwks_url = Some(url.clone());
        c.jwt_jwks_min_interval = min_interval;
        // Refreshes are left to unknown kids and retries here: the provider says max-age 3600.
        c.jwt_jwks_refresh = Duration::from_secs(3600);
    })
    .await;
    assert_eq!(idp.requests(), 1, "fetched once at startup");
    let old = claims("t1", "ada");
    assert_eq!(outcome(&gw, &signed("rsa-2026-01", &old)).await, Ok(()));

    // Rotation: the provider publishes the new key and retires the old one. A token with the
    // new kid is accepted at once (an unknown kid triggers a refetch).
    tokio::time::sleep(min_interval).await;
    idp.set(&["rsa-2026-06"]);
    assert_eq!(outcome(&gw, &signed("rsa-2026-06", &claims("t1", "bob"))).await, Ok(()));
    assert_eq!(idp.requests(), 2);
    assert_eq!(outcome(&gw, &signed("rsa-2026-01", &old)).await, Err("token_invalid".into()), "retired key");

    // Made-up kids, all at once: the provider is asked at most once per interval (the first
    // refetch; the others wait for it, or find it too recent).
    tokio::time::sleep(min_interval).await;
    let before = idp.requests();
    let started = std::time::Instant::now();
    let forged: Vec<String> = (0..30).map(|i| signed(&format!("made-up-{i}"), &claims("t1", "eve"))).collect();
    let outcomes = futures_util::future::join_all(forged.iter().map(|t| outcome(&gw, t))).await;
    assert!(outcomes.iter().all(|o| o.as_ref().err().map(String::as_str) == Some("token_invalid")), "{outcomes:?}");
    let allowed = 1 + (started.elapsed().as_millis() / min_interval.as_millis()) as usize;
    let made = idp.requests() - before;
    assert!(made >= 1, "an unknown kid triggers a refetch");
    assert!(made <= allowed, "{made} fetches for 30 unknown kids in {:?}; at most {allowed}", started.elapsed());
    // Nothing changed at the provider: the refetch was answered 304 (If-None-Match).
    assert!(idp.not_modified.load(Ordering::SeqCst) >= 1);

    // The provider goes down: refetches fail, the last good keys stay.
    idp.down.store(true, Ordering::SeqCst);
    tokio::time::sleep(min_interval).await;
    let before = idp.requests();
    let forged = signed("made-up-while-down", &claims("t1", "eve"));
    assert_eq!(outcome(&gw, &forged).await, Err("token_invalid".into()));
    assert!(idp.requests() > before, "a refetch was tried, and failed");
    assert_eq!(outcome(&gw, &signed("rsa-2026-06", &claims("t1", "cy"))).await, Ok(()), "last good keys kept");
    let scrape = gw.metrics().await;
    assert!(sample(&scrape, "roomcast_jwks_fetches_total", r#"jwks="default",result="error""#) >= 1.0, "{scrape}");
    assert!(sample(&scrape, "roomcast_jwks_keys", r#"jwks="default""#) >= 1.0, "{scrape}");

    // Back up: the retry loop picks it up by itself (backoff from the minimum interval).
    idp.set(&["rsa-2026-06", "rsa-2026-01"]);
    idp.down.store(false, Ordering::SeqCst);
    eventually(WAIT, "the old key back after a background retry", || async {
        (sample(&gw.metrics().await, "roomcast_jwks_keys", r#"jwks="default""#) == 2.0).then_some(())
    })
    .await;
    assert_eq!(outcome(&gw, &signed("rsa-2026-01", &old)).await, Ok(()));
}

#[tokio::test]
async fn a_provider_down_at_startup_does_not_stop_the_gateway() {
    let idp = Idp::default();
    idp.set(&["rsa-2026-01"]);
    idp.down.store(true, Ordering::SeqCst);
    let url = idp.serve().await;
    let gw = TestGateway::start_with(|c| {
        c.jwt_secret = None;
        c.jwt_jwks_url = Some(url.clone());
        c.jwt_jwks_min_interval = Duration::from_millis(200);
    })
    .await;
    let token = signed("rsa-2026-01", &claims("t1", "ada"));
    assert_eq!(outcome(&gw, &token).await, Err("token_invalid".into()));
    idp.down.store(false, Ordering::SeqCst);
    eventually(WAIT, "keys fetched once the provider is up", || async { outcome(&gw, &token).await.ok() }).await;
}

#[tokio::test]
async fn each_trusted_issuer_verifies_its_own_tokens_for_its_own_tenants() {
    let idp = Idp::default();
    idp.set(&["rsa-2026-01"]);
    let url = idp.serve().await;
    let dir = tempdir();
    let issuers = dir.join("issuers.json");
    // Issuer A (a URL, key rsa-2026-01) may vouch for tenant acme only; issuer B (a JWKS file,
    // key rsa-2026-06) for any tenant.
    let b_keys = dir.join("b-jwks.json");
    std::fs::write(&b_keys, json!({ "keys": [jwk("rsa-2026-06")] }).to_string()).unwrap();
    let file = json!({ "issuers": [
        { "issuer": "https://a.example/", "jwks_url": url, "tenants": ["acme"] },
        { "issuer": "https://b.example/", "jwks_file": b_keys, "audiences": ["roomcast"], "tenants": ["*"] },
    ]});
    std::fs::write(&issuers, file.to_string()).unwrap();
    let gw = TestGateway::start_with(|c| {
        c.jwt_secret = None;
        c.jwt_issuers_file = Some(issuers.clone());
    })
    .await;
    let with = |iss: &str, tenant: &str, extra: Value| {
        let mut c = claims(tenant, "ada");
        c["iss"] = json!(iss);
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let a = "https://a.example/";
    let b = "https://b.example/";
    assert_eq!(outcome(&gw, &signed("rsa-2026-01", &with(a, "acme", json!({})))).await, Ok(()));
    assert_eq!(
        outcome(&gw, &signed("rsa-2026-01", &with(a, "globex", json!({})))).await,
        Err("forbidden".into()),
        "issuer A may not vouch for another tenant"
    );
    // B's keys hold rsa-2026-06; A's set does not, and B requires its audience.
    let for_b = with(b, "globex", json!({ "aud": "roomcast" }));
    assert_eq!(outcome(&gw, &signed("rsa-2026-06", &for_b)).await, Ok(()));
    assert_eq!(outcome(&gw, &signed("rsa-2026-06", &with(b, "globex", json!({})))).await, Err("token_invalid".into()));
    assert_eq!(
        outcome(&gw, &signed("rsa-2026-06", &with(a, "acme", json!({})))).await,
        Err("token_invalid".into()),
        "a token claiming A but signed with B's key"
    );
    assert_eq!(
        outcome(&gw, &signed("rsa-2026-01", &for_b)).await,
        Err("token_invalid".into()),
        "a token claiming B but signed with A's key"
    );
    // No default key source: an unknown or absent issuer is refused.
    for iss in [json!("https://evil.example/"), Value::Null] {
        let mut c = with(a, "acme", json!({}));
        c["iss"] = iss;
        assert_eq!(outcome(&gw, &signed("rsa-2026-01", &c)).await, Err("token_invalid".into()));
    }
    // An HMAC token (the test secret) finds no key either.
    assert_eq!(outcome(&gw, &user_token("acme", "ada")).await, Err("token_invalid".into()));
}

/// A fresh folder under the system's temporary directory.
fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("roomcast-jwks-{}-{}", std::process::id(), rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

/// With trusted issuers and a default key, the default takes tokens without `iss` (or with one
/// `ROOMCAST_JWT_ISSUER` pins), never an unlisted issuer's.
#[tokio::test]
async fn the_default_key_takes_no_unlisted_issuer() {
    let dir = tempdir();
    let issuers = dir.join("issuers.json");
    let file =
        json!({ "issuers": [{ "issuer": "https://b.example/", "jwks_file": fixture("jwks.json"), "tenants": ["*"] }] });
    std::fs::write(&issuers, file.to_string()).unwrap();
    let gw = TestGateway::start_with(|c| c.jwt_issuers_file = Some(issuers.clone())).await;
    assert_eq!(outcome(&gw, &user_token("t1", "own")).await, Ok(()), "the default key, no iss");
    let mut unlisted = claims("t1", "eve");
    unlisted["iss"] = json!("https://elsewhere.example/");
    assert_eq!(outcome(&gw, &token(&unlisted)).await, Err("token_invalid".into()));
    let pinned = TestGateway::start_with(|c| {
        c.jwt_issuers_file = Some(issuers.clone());
        c.jwt_issuer = vec!["https://elsewhere.example/".into()];
    })
    .await;
    assert_eq!(outcome(&pinned, &token(&unlisted)).await, Ok(()), "pinned by ROOMCAST_JWT_ISSUER");
}
