//! The console: a page on the admin listener (`/console`, its assets embedded in the binary)
//! that watches a tenant's rooms live, and the small API it calls. Off unless
//! `ROOMCAST_CONSOLE_TOKENS` is set: then nothing under `/console` exists (the coded 404).
//!
//! The page signs in with an admin token (`Authorization: Bearer`, kept in the tab's session
//! storage), asks for an observer token for a tenant its admin token may see
//! (`observers.rs`), and connects with `@roomcast/client` to the Socket.IO engine mounted on
//! this listener too, where only observer tokens are accepted. Its actions are the control
//! API's (`control_api.rs`), with the admin token's scope in place of an API key's.

use axum::{
    Json, Router,
    body::Body,
    extract::{Query, Request, State, rejection::QueryRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Deserialize;
use serde_json::json;

use crate::{
    api_keys::KeyScope,
    config::Secret,
    control_api,
    errors::ErrorCode,
    http::{self, Refusal},
    observers::Observers,
    occupancy_api,
    state::Shared,
};

/// The page, and the bundle `clients/js/console/` builds (`npm run build:console`; `scripts/test`
/// checks the committed file is what the sources build).
const INDEX_HTML: &str = include_str!("../console/index.html");
const CONSOLE_JS: &str = include_str!("../console/console.js");

/// The page may load only itself: its script, inline styles, and connections to this origin.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The console's routes and the Socket.IO engine (`socket_io`, the public listener's, shared)
/// for its observers; merged into the admin router when the console is on.
pub fn router<S>(gw: Shared, socket_io: S) -> Router
where
    S: tower::Service<Request, Error = std::convert::Infallible> + Clone + Send + Sync + 'static,
    S::Response: IntoResponse + 'static,
    S::Future: Send + 'static,
{
    // Observer connections are marked so the connect handler accepts only observer tokens
    // here (and the public listener never does: no mark there).
    let observers =
        http::guard_observers(Router::new().route_service(http::SOCKET_IO_PATH_SLASH, socket_io), gw.clone());
    let page = |body: &'static str, content_type: &'static str| {
        get(move || async move {
            let mut response = ([(header::CONTENT_TYPE, content_type)], body).into_response();
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
            headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
            headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            response
        })
        .fallback(http::only_get)
    };
    let api = Router::new()
        .route("/console/api/session", get(session).fallback(http::only_get))
        .route("/console/api/observer", post(observer).fallback(http::only_post))
        .route("/console/api/rooms", get(rooms).fallback(http::only_get))
        .route("/console/api/replicas", get(replicas).fallback(http::only_get))
        .route("/console/api/disconnect", post(disconnect).fallback(http::only_post))
        .route("/console/api/leave", post(leave).fallback(http::only_post))
        .layer(middleware::from_fn(no_store))
        .with_state(gw);
    Router::new()
        .route("/console", page(INDEX_HTML, "text/html; charset=utf-8"))
        .route("/console/", page(INDEX_HTML, "text/html; charset=utf-8"))
        .route("/console/console.js", page(CONSOLE_JS, "text/javascript; charset=utf-8"))
        .merge(api)
        .merge(observers)
}

/// API answers are per session: never cached.
async fn no_store(req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The admin token the request presents, and its scope: 401 `unauthorized` when it is missing
/// or not one of `ROOMCAST_CONSOLE_TOKENS`.
fn signed_in<'a>(gw: &'a Shared, headers: &HeaderMap) -> Result<(&'a Secret, KeyScope), Refusal> {
    let refused =
        || Refusal::Answer(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, "missing or wrong console token".into());
    let observers: &Observers = gw.observers.as_deref().ok_or_else(refused)?;
    let (token, scope) = http::bearer(headers).and_then(|presented| observers.admin(presented)).ok_or_else(refused)?;
    Ok((token, scope.clone()))
}

/// `GET /console/api/session`: whether the token is good, the tenants it may see (`null`: all)
/// and which replica answered.
async fn session(State(gw): State<Shared>, headers: HeaderMap) -> Response {
    match signed_in(&gw, &headers) {
        Ok((_, scope)) => {
            let tenants = match scope {
                KeyScope::All => serde_json::Value::Null,
                KeyScope::Tenants(tenants) => json!(tenants),
            };
            Json(json!({ "ok": true, "tenants": tenants, "replica": gw.delivery.node_id() })).into_response()
        }
        Err(refused) => refused.into_response(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ObserverRequest {
    tenant: String,
}

/// `POST /console/api/observer` `{tenant}`: an observer token for the page's Socket.IO
/// connection, valid for [`crate::observers::OBSERVER_TTL_SECS`]; 403 `forbidden` for a tenant
/// the admin token may not see.
async fn observer(State(gw): State<Shared>, headers: HeaderMap, body: Body) -> Response {
    let minted = async {
        let (admin, scope) = signed_in(&gw, &headers)?;
        let bytes = axum::body::to_bytes(body, 1024).await.map_err(|_| {
            Refusal::Answer(StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::PayloadTooLarge, "body over 1024 bytes".into())
        })?;
        let request: ObserverRequest = serde_json::from_slice(&bytes)
            .map_err(|e| Refusal::bad(ErrorCode::InvalidPayload, format!("expected {{tenant}}: {e}")))?;
        if roomcast_publisher::validate_id(&request.tenant).is_err() {
            return Err(Refusal::bad(ErrorCode::InvalidRoom, "tenant is not an id"));
        }
        allowed(&scope, &request.tenant)?;
        let (token, exp) = Observers::mint(admin, &request.tenant, roomcast_publisher::wire::now_ms() / 1000);
        Ok(json!({ "ok": true, "token": token, "exp": exp }))
    };
    match minted.await {
        Ok(body) => Json(body).into_response(),
        Err(refused) => refused.into_response(),
    }
}

/// 403 `forbidden` unless the console token's `scope` may see `tenant`.
fn allowed(scope: &KeyScope, tenant: &str) -> Result<(), Refusal> {
    if scope.allows(tenant) {
        return Ok(());
    }
    let message = format!("this console token may not see tenant {tenant:?}");
    Err(Refusal::Answer(StatusCode::FORBIDDEN, ErrorCode::Forbidden, message))
}

/// `GET /console/api/rooms`: `GET /v1/rooms` (same query, same answer) with the console token.
async fn rooms(
    State(gw): State<Shared>,
    headers: HeaderMap,
    query: Result<Query<occupancy_api::RoomsQuery>, QueryRejection>,
) -> Response {
    match signed_in(&gw, &headers) {
        Ok((_, scope)) => occupancy_api::rooms_as(&gw, scope, query).await,
        Err(refused) => refused.into_response(),
    }
}

/// `GET /console/api/replicas`: every replica's last status (each reports every
/// [`crate::bus::STATUS_EVERY`]): connections, observers, rooms with local members, the Redis
/// link, lag, lost deliveries. Figures of the shared cluster, no tenant's in particular: any
/// console token reads them.
async fn replicas(State(gw): State<Shared>, headers: HeaderMap) -> Response {
    if let Err(refused) = signed_in(&gw, &headers) {
        return refused.into_response();
    }
    match gw.bus.statuses(roomcast_publisher::wire::now_ms()).await {
        Ok(statuses) => {
            let replicas: Vec<_> = statuses
                .into_iter()
                .map(|(id, mut status)| {
                    if let Some(fields) = status.as_object_mut() {
                        fields.insert("id".into(), id.into());
                    }
                    status
                })
                .collect();
            Json(json!({ "ok": true, "replicas": replicas, "replica": gw.delivery.node_id() })).into_response()
        }
        Err(_) => http::error(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            "replica statuses cannot be read: Redis is unavailable",
        ),
    }
}

/// `POST /console/api/disconnect`: `POST /v1/disconnect` (same body, same answer) with the
/// console token's scope.
async fn disconnect(State(gw): State<Shared>, headers: HeaderMap, body: Body) -> Response {
    let authorized = signed_in(&gw, &headers).map(|(_, scope)| scope);
    control_api::disconnect_as(&gw, authorized, body).await
}

/// `POST /console/api/leave`: `POST /v1/leave` (same body, same answer) with the console
/// token's scope.
async fn leave(State(gw): State<Shared>, headers: HeaderMap, body: Body) -> Response {
    let authorized = signed_in(&gw, &headers).map(|(_, scope)| scope);
    control_api::leave_as(&gw, authorized, body).await
}

/// This replica's status for the console's replica list.
pub fn status(gw: &Shared) -> serde_json::Value {
    let mut status = crate::metrics::replica_figures();
    // `connections` are the application's: observers are not counted there (nor in Prometheus'
    // roomcast_connections), but apart.
    let observers = gw.observers.as_ref().map_or(0, |o| o.connected()) as u64;
    if let Some(fields) = status.as_object_mut() {
        fields.insert("observers".into(), observers.into());
        fields.insert("redis".into(), gw.redis_status().unwrap_or("single_node").into());
        fields.insert("draining".into(), gw.is_draining().into());
        fields.insert("version".into(), env!("CARGO_PKG_VERSION").into());
    }
    status
}
