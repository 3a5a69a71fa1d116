//! The connect proxy (`ROOMCAST_CONNECT_PROXY_URL`): at connect and at `auth:refresh`, after
//! the token verified, the backend is asked whether this identity may connect. It admits
//! (optionally putting the socket in more rooms, or ending it sooner) or refuses.
//!
//! Answers are cached per token (by its SHA-256) for `ROOMCAST_CONNECT_PROXY_CACHE_TTL`, in at
//! most `ROOMCAST_CONNECT_PROXY_CACHE_SIZE` entries, and concurrent asks for one token share
//! one call: a reconnect storm costs the backend at most one call per token per TTL. A backend
//! that cannot answer refuses the connection (`ROOMCAST_CONNECT_PROXY_FAILURE=closed`, the
//! default) or admits it on the token alone (`open`); failures are not cached.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures_util::{
    FutureExt,
    future::{BoxFuture, Shared},
};
use roomcast_publisher::Room;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::{
    auth::Identity,
    errors::{ClientError, ErrorCode},
    metrics,
    rpc::{self, Kind, Rpc, RpcError},
};

/// What the backend decided for a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Connect, also in `rooms`, until `exp` (seconds since the epoch) if sooner than the token's.
    Admit { rooms: Vec<Room>, exp: Option<u64> },
    /// Refused, with the backend's code (the client gets `forbidden`, the code in its message).
    Refuse(String),
    /// Proxy-only mode: the backend says who connects (there is no token to verify).
    Identified { identity: Box<Identity>, rooms: Vec<Room> },
}

/// What a client sent to connect in proxy-only mode: its token (any string, not a JWT) and its
/// `Cookie` header, each as sent.
#[derive(Debug, Clone, Copy)]
pub struct Credentials<'a> {
    pub token: Option<&'a str>,
    pub cookie: Option<&'a str>,
}

/// The answer's `result`: `{ rooms?: [{ project } | { channel }], exp? }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Admission {
    #[serde(default)]
    rooms: Vec<RoomName>,
    #[serde(default)]
    exp: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoomName {
    #[serde(default)]
    project: Option<String>,
    #[serde(default)]
    channel: Option<String>,
}

/// How often a full cache may be scanned for expired answers.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Most rooms one answer may add.
const MAX_ROOMS: usize = 100;

/// What a failed ask does to the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// Refuse it (`rpc_unavailable` / `rpc_timeout`).
    Closed,
    /// Admit it on the token's own grants.
    Open,
}

type Pending = Shared<BoxFuture<'static, Result<Verdict, RpcError>>>;

/// Cached answers by token hash, with when each expires.
type Answers = HashMap<[u8; 32], (Instant, Verdict)>;

/// The connect proxy of a replica.
pub struct ConnectProxy {
    rpc: Arc<Rpc>,
    ttl: Duration,
    /// `ROOMCAST_MAX_TOKEN_LIFETIME`: the longest a proxy-only identity lasts.
    max_lifetime: Duration,
    on_failure: OnFailure,
    /// Answers by key (the token's hash), shared with the asks in flight.
    cache: Arc<Cache>,
    /// Asks in flight by token hash: later asks for the same token wait for the first.
    pending: Mutex<HashMap<[u8; 32], Pending>>,
}

impl std::fmt::Debug for ConnectProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectProxy").field("ttl", &self.ttl).field("on_failure", &self.on_failure).finish()
    }
}

impl ConnectProxy {
    pub fn new(rpc: Arc<Rpc>, ttl: Duration, capacity: usize, on_failure: OnFailure, max_lifetime: Duration) -> Self {
        ConnectProxy {
            rpc,
            ttl,
            max_lifetime,
            on_failure,
            cache: Arc::new(Cache { ttl, capacity, answers: Mutex::new((HashMap::new(), Instant::now())) }),
            pending: Mutex::new(HashMap::new()),
        }
    }

    /// Asks (or recalls) whether `identity`, holding `token`, may connect (`refresh`: at
    /// `auth:refresh`). A failure is `Err` only when failures close (the default).
    pub async fn check(&self, identity: &Identity, token: &str, refresh: bool) -> Result<Verdict, RpcError> {
        if refresh {
            // Asked every time: a refresh is the moment a backend can end what it admitted.
            let answer = ask(self.rpc.clone(), identity.clone(), true).await;
            return self.on_failure(answer);
        }
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let (rpc, identity) = (self.rpc.clone(), identity.clone());
        let answer = self.cached(key, move || ask(rpc, identity, false).boxed(), true).await;
        self.on_failure(answer)
    }

    /// Proxy-only mode: who `credentials` belong to, as the backend says (cached like
    /// [`ConnectProxy::check`]; a refresh always asks). A failure always refuses: there is no
    /// token to fall back on.
    pub async fn identify(&self, credentials: Credentials<'_>, refresh: bool) -> Result<Verdict, RpcError> {
        let data = serde_json::json!({ "token": credentials.token, "cookie": credentials.cookie });
        if refresh {
            return ask_identity(self.rpc.clone(), data, self.max_lifetime, true).await;
        }
        let key: [u8; 32] = Sha256::new()
            .chain_update(credentials.token.unwrap_or_default().as_bytes())
            .chain_update([0])
            .chain_update(credentials.cookie.unwrap_or_default().as_bytes())
            .finalize()
            .into();
        // Refusals of anonymous credentials are not kept: a flood of made-up tokens would fill
        // the cache and push real sessions out.
        self.cached(key, || ask_identity(self.rpc.clone(), data, self.max_lifetime, false).boxed(), false).await
    }

    /// The cached answer for `key`, or the one asked now by `ask` (one ask per key in flight).
    async fn cached(
        &self,
        key: [u8; 32],
        ask: impl FnOnce() -> BoxFuture<'static, Result<Verdict, RpcError>>,
        keep_refusals: bool,
    ) -> Result<Verdict, RpcError> {
        let now = Instant::now();
        if let Some((expires, verdict)) = self.cache.answers.lock().unwrap_or_else(|e| e.into_inner()).0.get(&key)
            && *expires > now
        {
            metrics::connect_proxy_cache("hit");
            return Ok(verdict.clone());
        }
        let (ask, first) = {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            match pending.get(&key) {
                Some(ask) => (ask.clone(), false),
                None => {
                    // The ask keeps its own answer, whoever drives it to the end: the first
                    // asker may be gone by then (its client left) while others wait on it.
                    let (cache, ask) = (self.cache.clone(), ask());
                    let ask = async move {
                        let answer = ask.await;
                        if let Ok(verdict) = &answer
                            && (keep_refusals || !matches!(verdict, Verdict::Refuse(_)))
                        {
                            cache.remember(key, verdict.clone());
                        }
                        answer
                    }
                    .boxed()
                    .shared();
                    pending.insert(key, ask.clone());
                    (ask, true)
                }
            }
        };
        metrics::connect_proxy_cache(if first { "miss" } else { "coalesced" });
        // The first asker removes the entry even if its connection goes away meanwhile.
        let _done = first.then(|| Done { proxy: self, key });
        ask.await
    }

    /// A failed ask under `ROOMCAST_CONNECT_PROXY_FAILURE`.
    fn on_failure(&self, answer: Result<Verdict, RpcError>) -> Result<Verdict, RpcError> {
        match answer {
            Err(e) if self.on_failure == OnFailure::Open => {
                tracing::warn!(error = ?e, "the connect proxy failed; admitting on the token alone (ROOMCAST_CONNECT_PROXY_FAILURE=open)");
                Ok(Verdict::Admit { rooms: Vec::new(), exp: None })
            }
            answer => answer,
        }
    }
}

/// Cached answers, shared with the asks in flight (which keep their own answers).
struct Cache {
    ttl: Duration,
    capacity: usize,
    /// Answers by key, and when expired ones were last dropped.
    answers: Mutex<(Answers, Instant)>,
}

impl Cache {
    /// Keeps `verdict` for the TTL, or until the expiry it gives if sooner.
    fn remember(&self, key: [u8; 32], verdict: Verdict) {
        let mut ttl = self.ttl;
        let exp = match &verdict {
            Verdict::Admit { exp, .. } => *exp,
            Verdict::Identified { identity, .. } => Some(identity.exp),
            Verdict::Refuse(_) => None,
        };
        if let Some(exp) = exp {
            let left = exp.saturating_sub(roomcast_publisher::wire::now_ms() / 1000);
            ttl = ttl.min(Duration::from_secs(left));
        }
        if ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut cache = self.answers.lock().unwrap_or_else(|e| e.into_inner());
        let (map, swept) = &mut *cache;
        // A full cache drops what expired, at most once a second (a scan of every entry).
        if map.len() >= self.capacity && now.saturating_duration_since(*swept) >= SWEEP_EVERY {
            map.retain(|_, (expires, _)| *expires > now);
            *swept = now;
        }
        if map.len() < self.capacity {
            map.insert(key, (now + ttl, verdict));
        } else {
            metrics::connect_proxy_cache("full");
        }
    }
}

/// Removes an ask from the in-flight map when its first asker is done with it.
struct Done<'a> {
    proxy: &'a ConnectProxy,
    key: [u8; 32],
}

impl Drop for Done<'_> {
    fn drop(&mut self) {
        self.proxy.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.key);
    }
}

/// One ask of the backend.
async fn ask(rpc: Arc<Rpc>, identity: Identity, refresh: bool) -> Result<Verdict, RpcError> {
    let admitted = rpc.admit(&identity.tenant, Kind::Connect { refresh })?;
    let sender = rpc::Identity::of(&identity);
    let data = serde_json::json!({ "exp": identity.exp, "jti": identity.jti });
    let kind = Kind::Connect { refresh };
    let answer = rpc.call(&admitted, kind, kind.wire_type(), &data, Some(sender), "").await;
    match answer {
        Ok(result) => admission(&identity, result),
        Err(RpcError::Rejected(backend)) => Ok(Verdict::Refuse(backend.code)),
        Err(e) => Err(e),
    }
}

/// One proxy-only ask: the backend gets the credentials (no identity) and answers with one.
async fn ask_identity(
    rpc: Arc<Rpc>,
    credentials: Value,
    max_lifetime: Duration,
    refresh: bool,
) -> Result<Verdict, RpcError> {
    // Nobody is known yet: every proxy-only ask counts under one pseudo-tenant (NUL is in no
    // tenant id), so together they take at most ROOMCAST_RPC_TENANT_CONCURRENCY of the replica's
    // RPC places and leave the rest to the tenants' RPCs.
    let admitted = rpc.admit("\u{0}proxy-only", Kind::Connect { refresh })?;
    let asked_at = roomcast_publisher::wire::now_ms() / 1000;
    let kind = Kind::Connect { refresh };
    let answer = rpc.call(&admitted, kind, kind.wire_type(), &credentials, None, "").await;
    match answer {
        Ok(Value::Object(result)) => {
            let identity = crate::auth::proxied_identity(&result, max_lifetime, asked_at)
                .map_err(|why| RpcError::Unavailable(format!("the connect proxy's identity {why}")))?;
            // The rest of the answer is the identity: only its rooms are an admission's.
            let rooms =
                serde_json::json!({ "rooms": result.get("rooms").cloned().unwrap_or(Value::Array(Vec::new())) });
            match admission(&identity, rooms)? {
                Verdict::Admit { rooms, .. } => Ok(Verdict::Identified { identity: Box::new(identity), rooms }),
                other => Ok(other),
            }
        }
        Ok(_) => Err(RpcError::Unavailable("the connect proxy answered no identity (proxy-only mode)".into())),
        Err(RpcError::Rejected(backend)) => Ok(Verdict::Refuse(backend.code)),
        Err(e) => Err(e),
    }
}

/// Reads an admitting answer: rooms of the identity's tenant, an expiry.
fn admission(identity: &Identity, result: Value) -> Result<Verdict, RpcError> {
    let bad = |why: String| RpcError::Unavailable(format!("the connect proxy's answer {why}"));
    let admission: Admission = if result.is_null() {
        Admission::default()
    } else {
        serde_json::from_value(result).map_err(|e| bad(format!("is not {{rooms?, exp?}}: {e}")))?
    };
    if admission.rooms.len() > MAX_ROOMS {
        return Err(bad(format!("has more than {MAX_ROOMS} rooms")));
    }
    let rooms = admission
        .rooms
        .iter()
        .map(|r| match (&r.project, &r.channel) {
            (Some(p), None) => Room::project(&identity.tenant, p).map_err(|e| bad(format!("names a bad room: {e}"))),
            (None, Some(c)) => Room::channel(&identity.tenant, c).map_err(|e| bad(format!("names a bad room: {e}"))),
            _ => Err(bad("names a room with neither or both of project and channel".into())),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Verdict::Admit { rooms, exp: admission.exp })
}

/// The refusal a client gets for a backend's refusal.
pub fn refused(code: &str) -> ClientError {
    ClientError::new(ErrorCode::Forbidden, format!("the backend refused the connection ({code})"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Scope;
    use serde_json::json;

    fn identity() -> Identity {
        Identity {
            tenant: "t1".into(),
            user: "u".into(),
            projects: Scope::All,
            channels: Scope::All,
            publish: Scope::Only(Vec::new()),
            exp: 2_000_000_000,
            jti: None,
            iat: None,
            claims: None,
            observer: false,
        }
    }

    #[test]
    fn an_admission_names_rooms_of_the_tenant_and_an_expiry_or_is_refused_whole() {
        let id = identity();
        assert_eq!(admission(&id, Value::Null), Ok(Verdict::Admit { rooms: vec![], exp: None }));
        let admitted = admission(&id, json!({"rooms": [{"channel": "lobby"}, {"project": "p"}], "exp": 5})).unwrap();
        let rooms = vec![Room::channel("t1", "lobby").unwrap(), Room::project("t1", "p").unwrap()];
        assert_eq!(admitted, Verdict::Admit { rooms, exp: Some(5) });
        let too_many: Vec<Value> = (0..=MAX_ROOMS).map(|i| json!({"channel": format!("c{i}")})).collect();
        for bad in [
            json!({"rooms": [{"channel": "bad room!"}]}),
            json!({"rooms": [{"channel": "a", "project": "b"}]}),
            json!({"rooms": [{}]}),
            json!({"rooms": "lobby"}),
            json!({"exp": -1}),
            json!({"tenant": "other"}),
            json!([1]),
            json!({"rooms": too_many}),
        ] {
            assert!(matches!(admission(&id, bad.clone()), Err(RpcError::Unavailable(_))), "{bad}");
        }
    }
}
