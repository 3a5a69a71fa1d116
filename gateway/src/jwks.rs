//! Key sets: a JWKS document parsed into keys by `kid`, and key sets fetched from an identity
//! provider's URL and kept fresh.
//!
//! A remote set ([`RemoteJwks`]) is fetched at startup, refreshed in the background (on the
//! provider's `Cache-Control: max-age`, kept between `ROOMCAST_JWT_JWKS_MIN_INTERVAL` and
//! `ROOMCAST_JWT_JWKS_REFRESH`, with `If-None-Match`), and refetched when a token names a `kid`
//! it does not hold, which is how rotations reach the gateway before the next refresh. Fetches
//! of one set are never closer than the minimum interval, whatever triggers them, so a flood of
//! tokens with made-up `kid`s costs the provider one request per interval. A failed fetch keeps
//! the last good set: a provider outage does not log anybody out.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use jsonwebtoken::{
    Algorithm, DecodingKey,
    jwk::{JwkSet, PublicKeyUse},
};
use tokio::time::Instant;

/// Keys by `kid`, each with the algorithms it verifies.
pub type KidMap = HashMap<String, (DecodingKey, Vec<Algorithm>)>;

/// The largest JWKS document accepted from a provider.
const MAX_DOCUMENT: usize = 1024 * 1024;

/// How long one fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Parses a JWKS document. Keys meant for encryption (`"use": "enc"`, as Keycloak publishes
/// beside its signing keys) and keys whose algorithm cannot verify a JWT are skipped and named in
/// the second value; a key without `kid`, two keys with one `kid`, or no usable key at all is an
/// error.
pub fn parse(raw: &[u8]) -> Result<(KidMap, Vec<String>), String> {
    let set: JwkSet =
        serde_json::from_slice(raw).map_err(|e| format!("not a JWKS document ({{\"keys\": [...]}}): {e}"))?;
    let mut map = HashMap::new();
    let mut skipped = Vec::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        let kid = jwk.common.key_id.clone().ok_or_else(|| format!("key #{i} has no \"kid\"; every key needs one"))?;
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            skipped.push(format!("{kid} (use: enc)"));
            continue;
        }
        let algs = match jwk.common.key_algorithm.map(Algorithm::try_from) {
            Some(Ok(alg)) => vec![alg],
            Some(Err(_)) => {
                skipped.push(format!("{kid} (alg cannot sign a JWT)"));
                continue;
            }
            None => Vec::new(),
        };
        let key = match DecodingKey::from_jwk(jwk) {
            Ok(key) => key,
            Err(e) => {
                skipped.push(format!("{kid} ({e})"));
                continue;
            }
        };
        let algs = if algs.is_empty() { key.family().algorithms().to_vec() } else { algs };
        if map.insert(kid.clone(), (key, algs)).is_some() {
            return Err(format!("two keys share kid {kid:?}"));
        }
    }
    if map.is_empty() {
        return Err(format!("the JWKS holds no usable signing key (skipped: {})", skipped.join(", ")));
    }
    Ok((map, skipped))
}

/// How a remote set is kept fresh.
#[derive(Debug, Clone, Copy)]
pub struct Freshness {
    /// `ROOMCAST_JWT_JWKS_REFRESH`: the longest a fetched set is used without fetching again.
    pub refresh: Duration,
    /// `ROOMCAST_JWT_JWKS_MIN_INTERVAL`: the least time between two fetches.
    pub min_interval: Duration,
}

/// What the fetch loop knows between fetches.
#[derive(Debug, Default)]
struct FetchState {
    /// When the last fetch began (successful or not).
    last_attempt: Option<Instant>,
    /// The provider's `ETag` for the set held.
    etag: Option<String>,
    /// When the set held should be fetched again.
    next_refresh: Option<Instant>,
    /// Consecutive failures, for the retry backoff.
    failures: u32,
}

/// A key set fetched from an identity provider.
pub struct RemoteJwks {
    url: String,
    /// Names the set in logs and metrics: the issuer, or `default`.
    label: String,
    client: reqwest::Client,
    freshness: Freshness,
    keys: RwLock<Arc<KidMap>>,
    state: Mutex<FetchState>,
    /// One fetch at a time; tokens waiting for a refetch wait for the one in flight.
    fetching: tokio::sync::Mutex<()>,
    /// Each fetch's end: the refresh loop recomputes when the next one is due (a failed
    /// unknown-kid refetch makes a retry due long before the next refresh).
    fetched: tokio::sync::Notify,
}

impl std::fmt::Debug for RemoteJwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteJwks").field("url", &self.url).field("label", &self.label).finish_non_exhaustive()
    }
}

/// The outcome of one fetch, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetched {
    /// A new set replaced the one held.
    Updated,
    /// `304 Not Modified`: the set held is current.
    NotModified,
}

impl RemoteJwks {
    /// A set fetched from `url` (not fetched yet: see [`RemoteJwks::fetch`]).
    pub fn new(url: &str, label: &str, freshness: Freshness) -> Result<RemoteJwks, String> {
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
        if !secure(&parsed) {
            return Err("expected an https:// URL (http:// only to a loopback address): whoever can \
                        change the keys in transit can sign any token"
                .into());
        }
        // reqwest's rustls takes the process's default provider: ring, as fred's TLS uses.
        let _ = rustls::crypto::ring::default_provider().install_default();
        // Redirects are followed only to where the URL itself could point (https, or loopback).
        let redirects = reqwest::redirect::Policy::custom(|attempt| {
            if attempt.previous().len() >= 5 {
                attempt.error("more than 5 redirects")
            } else if secure(attempt.url()) {
                attempt.follow()
            } else {
                attempt.error("a redirect away from https")
            }
        });
        let client = reqwest::Client::builder()
            .redirect(redirects)
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(FETCH_TIMEOUT)
            .user_agent(concat!("roomcast-gateway/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
        crate::metrics::jwks_registered(label);
        Ok(RemoteJwks {
            url: url.to_owned(),
            label: label.to_owned(),
            client,
            freshness,
            keys: RwLock::new(Arc::new(HashMap::new())),
            state: Mutex::new(FetchState::default()),
            fetching: tokio::sync::Mutex::new(()),
            fetched: tokio::sync::Notify::new(),
        })
    }

    /// The key `kid` names, from the set held. Without a `kid`, the only key when there is one.
    pub fn key(&self, kid: Option<&str>) -> Option<(DecodingKey, Vec<Algorithm>)> {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner()).clone();
        match kid {
            Some(kid) => keys.get(kid).cloned(),
            None if keys.len() == 1 => keys.values().next().cloned(),
            None => None,
        }
    }

    /// The key `kid` names; when the set held has none, fetches the set again first, unless
    /// the last fetch was less than the minimum interval ago.
    pub async fn key_or_refetch(&self, kid: Option<&str>) -> Option<(DecodingKey, Vec<Algorithm>)> {
        if let Some(found) = self.key(kid) {
            return Some(found);
        }
        let _ = self.fetch_at_most_every_interval().await;
        self.key(kid)
    }

    /// Fetches unless a fetch began less than the minimum interval ago; waits for one in flight.
    async fn fetch_at_most_every_interval(&self) -> Result<Option<Fetched>, String> {
        let started_before = self.lock_state().last_attempt;
        let _turn = self.fetching.lock().await;
        // A fetch that ran while this one waited is as good as its own.
        let last = self.lock_state().last_attempt;
        if last != started_before {
            return Ok(None);
        }
        if last.is_some_and(|at| at.elapsed() < self.freshness.min_interval) {
            return Ok(None);
        }
        self.fetch_now().await.map(Some)
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, FetchState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fetches the set once (callers hold `fetching`); replaces the set held on success.
    async fn fetch_now(&self) -> Result<Fetched, String> {
        let etag = {
            let mut state = self.lock_state();
            state.last_attempt = Some(Instant::now());
            state.etag.clone()
        };
        let result = self.get(etag.as_deref()).await;
        // The refresh loop is woken once the outcome is recorded (the guard drops first).
        let _wake = Wake(&self.fetched);
        let mut state = self.lock_state();
        match result {
            Ok((fetched, max_age, new_etag)) => {
                state.failures = 0;
                if fetched == Fetched::Updated {
                    state.etag = new_etag;
                }
                let wait = max_age.unwrap_or(self.freshness.refresh);
                let wait =
                    wait.clamp(self.freshness.min_interval, self.freshness.refresh.max(self.freshness.min_interval));
                state.next_refresh = Some(Instant::now() + wait);
                let result = if fetched == Fetched::Updated { "updated" } else { "not_modified" };
                crate::metrics::jwks_fetched(&self.label, result);
                Ok(fetched)
            }
            Err(e) => {
                state.failures = state.failures.saturating_add(1);
                crate::metrics::jwks_fetched(&self.label, "error");
                Err(e)
            }
        }
    }

    /// One GET; the outcome, the provider's max-age and ETag.
    async fn get(&self, etag: Option<&str>) -> Result<(Fetched, Option<Duration>, Option<String>), String> {
        let mut request = self.client.get(&self.url).header(reqwest::header::ACCEPT, "application/json");
        if let Some(etag) = etag {
            request = request.header(reqwest::header::IF_NONE_MATCH, etag);
        }
        let mut response = request.send().await.map_err(|e| format!("request failed: {e}"))?;
        let status = response.status();
        let max_age =
            response.headers().get(reqwest::header::CACHE_CONTROL).and_then(|v| v.to_str().ok()).and_then(max_age);
        if status == reqwest::StatusCode::NOT_MODIFIED {
            return Ok((Fetched::NotModified, max_age, None));
        }
        if !status.is_success() {
            return Err(format!("the provider answered {status}"));
        }
        let etag = response.headers().get(reqwest::header::ETAG).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| format!("reading the answer failed: {e}"))? {
            if body.len() + chunk.len() > MAX_DOCUMENT {
                return Err(format!("the document is over {MAX_DOCUMENT} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        let (keys, skipped) = parse(&body)?;
        if !skipped.is_empty() {
            tracing::debug!(jwks = %self.label, skipped = ?skipped, "JWKS keys skipped");
        }
        crate::metrics::jwks_keys(&self.label, keys.len());
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
        Ok((Fetched::Updated, max_age, etag))
    }

    /// Whether a set is held (a fetch has succeeded once).
    pub fn has_keys(&self) -> bool {
        !self.keys.read().unwrap_or_else(|e| e.into_inner()).is_empty()
    }

    /// Fetches once, for startup (bounded by the fetch timeout). A failure is logged; the
    /// refresh loop retries.
    pub async fn fetch_at_start(&self) {
        let _turn = self.fetching.lock().await;
        match self.fetch_now().await {
            Ok(_) => tracing::info!(jwks = %self.label, keys = self.key_count(), "JWKS fetched"),
            Err(e) => {
                tracing::error!(jwks = %self.label, error = %e, "JWKS fetch failed; tokens it signs are refused until a fetch succeeds")
            }
        }
    }

    fn key_count(&self) -> usize {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// When the set is due for a fetch: at its refresh time, or after a failure at the minimum
    /// interval, doubling with each failure up to the refresh period.
    fn next_due(&self) -> Instant {
        let state = self.lock_state();
        match (state.last_attempt, state.failures, state.next_refresh) {
            (None, _, _) => Instant::now(),
            (Some(_), 0, Some(next)) => next,
            (Some(last), failures, _) => {
                let ceiling = self.freshness.refresh.max(self.freshness.min_interval);
                let backoff = self.freshness.min_interval.saturating_mul(1 << failures.saturating_sub(1).min(10));
                last + backoff.min(ceiling)
            }
        }
    }

    /// Keeps the set fresh until the task is aborted.
    pub async fn refresh_forever(self: Arc<Self>) {
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(self.next_due()) => {}
                () = self.fetched.notified() => continue,
            }
            let _turn = self.fetching.lock().await;
            if self.next_due() > Instant::now() {
                continue; // an unknown-kid refetch ran meanwhile
            }
            if let Err(e) = self.fetch_now().await {
                static WARNED: crate::logging::Throttled = crate::logging::Throttled::new(crate::logging::WARN_EVERY);
                if let Some(held) = WARNED.check() {
                    tracing::warn!(jwks = %self.label, error = %e, similar_since = held, "JWKS refresh failed; keeping the last good keys");
                }
            }
        }
    }
}

/// Notifies on drop: after the code that holds it (and its guards, declared later) is done.
struct Wake<'a>(&'a tokio::sync::Notify);

impl Drop for Wake<'_> {
    fn drop(&mut self) {
        self.0.notify_one();
    }
}

/// Whether keys may be fetched from `url`: https, or http to a loopback address (a sidecar, tests).
fn secure(url: &reqwest::Url) -> bool {
    let host = url.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
    match url.scheme() {
        "https" => true,
        "http" => host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()),
        _ => false,
    }
}

/// `max-age=N` of a Cache-Control value (`no-store`/`no-cache`: zero, so the minimum interval).
fn max_age(value: &str) -> Option<Duration> {
    let mut age = None;
    for directive in value.split(',').map(str::trim) {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-store" || lower == "no-cache" {
            return Some(Duration::ZERO);
        }
        if let Some(n) = lower.strip_prefix("max-age=") {
            age = n.trim_matches('"').parse().ok().map(Duration::from_secs);
        }
    }
    age
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_over_https_or_from_loopback() {
        let ok = |u: &str| secure(&reqwest::Url::parse(u).unwrap());
        assert!(ok("https://idp.example/jwks") && ok("http://127.0.0.1:8080/jwks") && ok("http://[::1]/jwks"));
        assert!(ok("http://localhost/jwks"));
        assert!(!ok("http://idp.example/jwks") && !ok("http://10.0.0.1/jwks") && !ok("ftp://idp.example/jwks"));
        assert!(!ok("http://127.0.0.1.evil.example/jwks"));
        assert!(RemoteJwks::new("http://idp.example/jwks", "x", FRESH).unwrap_err().contains("https"));
        assert!(RemoteJwks::new("not a url", "x", FRESH).unwrap_err().contains("not a URL"));
    }

    const FRESH: Freshness = Freshness { refresh: Duration::from_secs(300), min_interval: Duration::from_secs(10) };

    #[test]
    fn cache_control() {
        assert_eq!(max_age("public, max-age=600"), Some(Duration::from_secs(600)));
        assert_eq!(max_age("max-age=\"60\", must-revalidate"), Some(Duration::from_secs(60)));
        assert_eq!(max_age("no-cache"), Some(Duration::ZERO));
        assert_eq!(max_age("public"), None);
        assert_eq!(max_age("max-age=abc"), None);
    }

    #[test]
    fn encryption_keys_are_skipped_and_a_set_without_signing_keys_is_refused() {
        let rsa = r#"{"kty":"RSA","kid":"sig","use":"sig","alg":"RS256","n":"sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw","e":"AQAB"}"#;
        let enc = r#"{"kty":"RSA","kid":"enc","use":"enc","alg":"RSA-OAEP","n":"sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw","e":"AQAB"}"#;
        let (keys, skipped) = parse(format!(r#"{{"keys":[{rsa},{enc}]}}"#).as_bytes()).unwrap();
        assert!(keys.contains_key("sig") && !keys.contains_key("enc"));
        assert_eq!(skipped, vec!["enc (use: enc)".to_owned()]);
        assert!(parse(format!(r#"{{"keys":[{enc}]}}"#).as_bytes()).unwrap_err().contains("no usable signing key"));
        assert!(parse(br#"{"keys":[]}"#).is_err());
        assert!(parse(b"not json").unwrap_err().contains("not a JWKS"));
        assert!(parse(format!(r#"{{"keys":[{rsa},{rsa}]}}"#).as_bytes()).unwrap_err().contains("two keys share"));
    }
}
