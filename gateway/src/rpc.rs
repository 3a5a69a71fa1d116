//! Client RPC to backends: a client event in `ROOMCAST_RPC_EVENTS` emitted with an ack callback
//! is POSTed to the backend (`ROOMCAST_RPC_URL`, or the URL of its longest matching prefix in
//! `ROOMCAST_RPC_ROUTES`), signed like webhooks, and the backend's answer becomes the ack.
//! Without a callback the event is POSTed once as a fire-and-forget client event.
//!
//! The wire format (README, "RPC"): the request is [`Request`] with the `Roomcast-Signature`
//! header (`roomcast_publisher::events::sign`); the answer is `{"result": …}` (any status 2xx)
//! or `{"error": {"code", "message"?, "data"?}}` (any status), which the client gets as
//! `rpc_rejected` with the backend's error under `backend`. Anything else is `rpc_unavailable`,
//! and no answer by the deadline is `rpc_timeout`.
//!
//! Bounded work: RPCs in flight per socket (the edge counts those), per tenant and per replica
//! ([`Rpc::admit`]); answers are read up to the client payload limit.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde::Serialize;
use serde_json::Value;

pub use crate::errors::BackendError;
use crate::{
    config::{Backends, EventPattern, Secret},
    metrics,
};

/// Longest backend error code passed to the client.
const MAX_CODE: usize = 64;
/// Longest backend error message passed to the client, in characters.
const MAX_MESSAGE: usize = 1024;

/// What the backend gets, as JSON.
#[derive(Debug, Serialize)]
pub struct Request<'a> {
    /// Unique per call (`<replica>:<n>`): a backend can log and dedupe by it.
    pub id: String,
    /// `rpc` (an answer is awaited), `event` (fire-and-forget) or `publish` (the publish
    /// proxy: approve, refuse or rewrite).
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The client's event name.
    pub event: &'a str,
    /// `publish`: the channel it is for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<&'a str>,
    /// `subscribe`: the room the socket asks to join (`tenant:t:project:p`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room: Option<&'a str>,
    /// Its first argument (`null` when it sent none).
    pub data: &'a Value,
    /// Who sent it, from the verified token (absent for a proxy-only connect: the backend
    /// tells who it is).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<Identity<'a>>,
    /// The Socket.IO socket id (a backend publish can exclude it).
    pub socket: &'a str,
    /// The replica that forwarded it.
    pub replica: &'a str,
    /// When it was forwarded (ms since the epoch).
    pub ts: u64,
    /// When the gateway stops waiting for the answer (ms since the epoch); not for `event`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline: Option<u64>,
}

/// The sender's identity, as the gateway verified it.
#[derive(Debug, Serialize)]
pub struct Identity<'a> {
    pub tenant: &'a str,
    pub user: &'a str,
    /// The token's claims named in `ROOMCAST_RPC_CLAIMS`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claims: Option<&'a serde_json::Map<String, Value>>,
}

impl<'a> Identity<'a> {
    /// What the backend learns of `identity`.
    pub fn of(identity: &'a crate::auth::Identity) -> Self {
        Identity { tenant: &identity.tenant, user: &identity.user, claims: identity.claims.as_deref() }
    }
}

/// What is asked of the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind<'a> {
    /// A client RPC: its answer is the ack.
    Rpc,
    /// A client event without an ack callback: fire-and-forget.
    Event,
    /// A client publish to `channel`, for the publish proxy to approve, refuse or rewrite.
    Publish { channel: &'a str },
    /// A connect (`refresh`: an `auth:refresh`), for the connect proxy to admit or refuse.
    Connect { refresh: bool },
    /// A `join` of `room`, which the token does not grant, for the subscribe proxy.
    Subscribe { room: &'a str },
}

impl<'a> Kind<'a> {
    /// The request's `type`.
    pub fn wire_type(self) -> &'static str {
        match self {
            Kind::Rpc => "rpc",
            Kind::Event => "event",
            Kind::Publish { .. } => "publish",
            Kind::Connect { refresh: false } => "connect",
            Kind::Connect { refresh: true } => "refresh",
            Kind::Subscribe { .. } => "subscribe",
        }
    }

    /// The request's `channel` (a publish's) and `room` (a subscribe's).
    fn target(self) -> (Option<&'a str>, Option<&'a str>) {
        match self {
            Kind::Publish { channel } => (Some(channel), None),
            Kind::Subscribe { room } => (None, Some(room)),
            Kind::Rpc | Kind::Event | Kind::Connect { .. } => (None, None),
        }
    }

    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Rpc | Kind::Event => "rpc",
            Kind::Publish { .. } => "publish",
            Kind::Connect { .. } => "connect",
            Kind::Subscribe { .. } => "subscribe",
        }
    }
}

/// Why a call has no result.
#[derive(Debug, Clone, PartialEq)]
pub enum RpcError {
    /// No answer by the deadline: the outcome is unknown (the backend may have acted).
    Timeout,
    /// The backend could not be reached or did not answer in the documented format.
    Unavailable(String),
    /// The backend refused, with its own code.
    Rejected(BackendError),
    /// Too many RPCs in flight (for the tenant or the replica): retry after a short wait.
    Busy(&'static str),
}

impl RpcError {
    /// The metrics label.
    pub fn label(&self) -> &'static str {
        match self {
            RpcError::Timeout => "rpc_timeout",
            RpcError::Unavailable(_) => "rpc_unavailable",
            RpcError::Rejected(_) => "rpc_rejected",
            RpcError::Busy(_) => "rate_limited",
        }
    }
}

/// The RPC settings, validated (`Config::rpc`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where each kind of call goes.
    pub backends: Backends,
    pub events: EventPattern,
    pub secret: Secret,
    pub timeout: Duration,
    pub per_socket: usize,
    pub per_tenant: usize,
    pub per_replica: usize,
    /// Largest answer read, in bytes (the client payload limit).
    pub max_answer: usize,
}

/// The RPC forwarder of a replica.
#[derive(Debug)]
pub struct Rpc {
    settings: Settings,
    client: reqwest::Client,
    node: Arc<str>,
    calls: AtomicU64,
    /// RPCs in flight: per tenant (entries at zero are removed), and the replica's total.
    in_flight: Mutex<(HashMap<String, usize>, usize)>,
}

/// A place among the RPCs in flight, given back on drop.
#[derive(Debug)]
pub struct Admitted {
    rpc: Arc<Rpc>,
    tenant: String,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut in_flight = self.rpc.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        let (tenants, total) = &mut *in_flight;
        *total -= 1;
        if let Some(n) = tenants.get_mut(&self.tenant) {
            *n -= 1;
            if *n == 0 {
                tenants.remove(&self.tenant);
            }
        }
    }
}

impl Rpc {
    /// A forwarder with `settings`, for replica `node`.
    pub fn new(settings: Settings, node: Arc<str>) -> Result<Rpc, reqwest::Error> {
        // reqwest is built without a default TLS provider (one crate-wide choice: ring).
        let _ = rustls::crypto::ring::default_provider().install_default();
        // The deadline is enforced around each call; this is the backstop for a stuck body.
        let client = reqwest::Client::builder()
            .timeout(settings.timeout + Duration::from_secs(1))
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            // A redirect would re-send the signed body wherever it points: an error instead.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Rpc { settings, client, node, calls: AtomicU64::new(0), in_flight: Mutex::new((HashMap::new(), 0)) })
    }

    /// The settings it runs with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Whether client event `event` goes to the backend.
    pub fn handles(&self, event: &str) -> bool {
        self.url_for(event).is_some() && self.settings.events.matches(event)
    }

    /// Where `event` goes: the longest matching route, else the default URL.
    fn url_for(&self, event: &str) -> Option<&reqwest::Url> {
        let backends = &self.settings.backends;
        backends
            .routes
            .iter()
            .find(|(prefix, _)| event.starts_with(prefix.as_str()))
            .map(|(_, url)| url)
            .or(backends.url.as_ref())
    }

    /// A place for one more call of `kind` for `tenant`, unless the tenant or the replica is at
    /// its bound (counted as `rate_limited` for that kind).
    pub fn admit(self: &Arc<Self>, tenant: &str, kind: Kind<'_>) -> Result<Admitted, RpcError> {
        let refused = |why| {
            metrics::rpc(kind.label(), "rate_limited", Instant::now());
            Err(RpcError::Busy(why))
        };
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        let (tenants, total) = &mut *in_flight;
        if *total >= self.settings.per_replica {
            return refused("too many RPCs in flight on this replica");
        }
        let n = tenants.entry(tenant.to_owned()).or_default();
        if *n >= self.settings.per_tenant {
            return refused("too many RPCs in flight for this tenant");
        }
        *n += 1;
        *total += 1;
        Ok(Admitted { rpc: self.clone(), tenant: tenant.to_owned() })
    }

    /// Forwards one client event and returns the backend's `result` (`expects_answer`), or
    /// forwards it fire-and-forget (`Ok(Value::Null)` once the backend took it).
    pub async fn call(
        &self,
        _admitted: &Admitted,
        kind: Kind<'_>,
        event: &str,
        data: &Value,
        identity: Option<Identity<'_>>,
        socket: &str,
    ) -> Result<Value, RpcError> {
        let start = Instant::now();
        let expects_answer = kind != Kind::Event;
        let result = async {
            let url = match kind {
                Kind::Publish { .. } => self.settings.backends.publish_proxy.as_ref(),
                Kind::Connect { .. } => self.settings.backends.connect_proxy.as_ref(),
                Kind::Subscribe { .. } => self.settings.backends.subscribe_proxy.as_ref(),
                Kind::Rpc | Kind::Event => self.url_for(event),
            }
            .ok_or_else(|| RpcError::Unavailable("no backend URL for this event".into()))?;
            let now = roomcast_publisher::wire::now_ms();
            let timeout_ms = u64::try_from(self.settings.timeout.as_millis()).unwrap_or(u64::MAX);
            let request = Request {
                id: format!("{}:{}", self.node, self.calls.fetch_add(1, Ordering::Relaxed)),
                kind: kind.wire_type(),
                event,
                channel: kind.target().0,
                room: kind.target().1,
                data,
                identity,
                socket,
                replica: &self.node,
                ts: now,
                deadline: expects_answer.then(|| now.saturating_add(timeout_ms)),
            };
            let body =
                serde_json::to_vec(&request).map_err(|e| RpcError::Unavailable(format!("request not encoded: {e}")))?;
            let signature =
                roomcast_publisher::events::sign(self.settings.secret.expose().as_bytes(), now / 1000, &body);
            let exchange = async {
                let response = self
                    .client
                    .post(url.clone())
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .header(roomcast_publisher::events::SIGNATURE_HEADER, signature)
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| RpcError::Unavailable(unreachable(&e)))?;
                let status = response.status();
                if !expects_answer {
                    // Fire-and-forget: the status says whether it was taken; the body is not read.
                    return Ok((status, Vec::new()));
                }
                let answer = read_bounded(response, self.settings.max_answer).await?;
                Ok::<_, RpcError>((status, answer))
            };
            let (status, answer) =
                tokio::time::timeout(self.settings.timeout, exchange).await.map_err(|_| RpcError::Timeout)??;
            if !expects_answer {
                return if status.is_success() {
                    Ok(Value::Null)
                } else {
                    Err(RpcError::Unavailable(format!("the backend answered {}", status.as_u16())))
                };
            }
            interpret(status, &answer)
        }
        .await;
        let label = match (&result, kind) {
            (Ok(_), Kind::Event) => "forwarded",
            (Err(_), Kind::Event) => "forward_failed",
            (Ok(_), _) => "ok",
            (Err(e), _) => e.label(),
        };
        metrics::rpc(kind.label(), label, start);
        result
    }
}

/// What the client may learn of a failed request: the kind of failure, never the URL.
fn unreachable(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "the backend did not answer in time".into()
    } else if e.is_connect() {
        "the backend could not be reached".into()
    } else {
        "the request to the backend failed".into()
    }
}

/// Reads at most `limit` bytes of `response`'s body.
async fn read_bounded(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, RpcError> {
    let mut body = Vec::new();
    while let Some(chunk) =
        response.chunk().await.map_err(|_| RpcError::Unavailable("the backend's answer was cut off".into()))?
    {
        if body.len() + chunk.len() > limit {
            return Err(RpcError::Unavailable(format!("the backend's answer is over {limit} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The backend's answer: `{"result": …}` with a 2xx, or `{"error": {"code", …}}` with any
/// status; an empty 2xx body is a `null` result.
pub fn interpret(status: reqwest::StatusCode, body: &[u8]) -> Result<Value, RpcError> {
    if status.is_success() && body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    let answer: Option<serde_json::Map<String, Value>> = serde_json::from_slice(body).ok();
    match answer {
        Some(mut answer) if answer.contains_key("error") => {
            let error = answer.remove("error").and_then(|e| serde_json::from_value::<BackendError>(e).ok());
            match error {
                Some(error) if valid_code(&error.code) => Err(RpcError::Rejected(BackendError {
                    message: truncate(&error.message, MAX_MESSAGE).to_owned(),
                    ..error
                })),
                _ => Err(RpcError::Unavailable(format!(
                    "the backend answered {} with an error that is not {{\"code\": \"…\"}} (a code of 1 to {MAX_CODE} letters, digits or ._:-)",
                    status.as_u16()
                ))),
            }
        }
        Some(mut answer) if status.is_success() && answer.contains_key("result") => {
            Ok(answer.remove("result").unwrap_or(Value::Null))
        }
        _ => Err(RpcError::Unavailable(format!(
            "the backend answered {} without {{\"result\"}} or {{\"error\"}}",
            status.as_u16()
        ))),
    }
}

fn valid_code(code: &str) -> bool {
    (1..=MAX_CODE).contains(&code.len())
        && code.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::StatusCode;
    use serde_json::json;

    #[test]
    fn answers_are_results_refusals_or_unavailable() {
        let ok = StatusCode::OK;
        assert_eq!(interpret(ok, br#"{"result":{"id":1}}"#), Ok(json!({"id": 1})));
        assert_eq!(interpret(ok, br#"{"result":null}"#), Ok(Value::Null));
        assert_eq!(interpret(StatusCode::NO_CONTENT, b""), Ok(Value::Null));
        let refused = interpret(StatusCode::FORBIDDEN, br#"{"error":{"code":"not_member","message":"no","data":[1]}}"#);
        assert_eq!(
            refused,
            Err(RpcError::Rejected(BackendError {
                code: "not_member".into(),
                message: "no".into(),
                data: Some(json!([1]))
            }))
        );
        // A 2xx carrying an error is a refusal too.
        assert!(matches!(interpret(ok, br#"{"error":{"code":"x"}}"#), Err(RpcError::Rejected(_))));
        let long = "é".repeat(5000);
        let Err(RpcError::Rejected(e)) =
            interpret(ok, json!({"error": {"code": "x", "message": long}}).to_string().as_bytes())
        else {
            panic!()
        };
        assert_eq!(e.message.chars().count(), MAX_MESSAGE);
        for (status, body) in [
            (StatusCode::INTERNAL_SERVER_ERROR, &b"oops"[..]),
            (StatusCode::NOT_FOUND, b""),
            (ok, b"[1,2]"),
            (ok, b"{\"other\":1}"),
            (ok, b"not json"),
            (StatusCode::BAD_REQUEST, br#"{"result":1}"#),
            (ok, br#"{"error":"text"}"#),
            (ok, br#"{"error":{"code":""}}"#),
            (ok, br#"{"error":{"code":"has space"}}"#),
            (ok, br#"{"error":{"message":"no code"}}"#),
        ] {
            assert!(matches!(interpret(status, body), Err(RpcError::Unavailable(_))), "{status} {body:?}");
        }
        assert!(valid_code(&"a".repeat(MAX_CODE)) && !valid_code(&"a".repeat(MAX_CODE + 1)));
    }
}
