//! HTTP: the operator endpoints on the admin listener, and the guard in front of Socket.IO on
//! the public one.

use axum::{
    Json, Router,
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::{errors::ErrorCode, state::Shared};

/// Path Socket.IO is served on.
pub const SOCKET_IO_PATH: &str = "/socket.io";

/// Which browser origins may connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginPolicy {
    /// No allow-list configured: no CORS headers and no Origin check.
    Unrestricted,
    /// `*`: CORS for any origin.
    Any,
    /// Only these origins; requests from others are refused with 403.
    List(Vec<HeaderValue>),
}

/// `/healthz`, `/readyz` and `/metrics`.
pub fn admin_router(gw: Shared, metrics: PrometheusHandle) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({ "status": "ok" })) }))
        .route("/readyz", get(readyz).with_state(gw))
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move { ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], metrics.render()) }
            }),
        )
}

async fn readyz(State(gw): State<Shared>) -> Response {
    match gw.readiness() {
        Ok(()) => Json(json!({ "status": "ready" })).into_response(),
        Err(reason) => {
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": "not_ready", "reason": reason }))).into_response()
        }
    }
}

/// Wraps the public router (Socket.IO included) in the origin guard, the drain guard and CORS.
pub fn guard_public(router: Router, gw: Shared, origins: OriginPolicy) -> Router {
    let router = router.layer(middleware::from_fn_with_state((gw, origins.clone()), guard));
    let cors = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .max_age(std::time::Duration::from_secs(600));
    match origins {
        OriginPolicy::Unrestricted => router,
        OriginPolicy::Any => router.layer(cors.allow_origin(AllowOrigin::any())),
        OriginPolicy::List(list) => router.layer(cors.allow_origin(AllowOrigin::list(list))),
    }
}

async fn guard(State((gw, origins)): State<(Shared, OriginPolicy)>, mut req: Request, next: Next) -> Response {
    detach_from_read_buffer(&mut req);
    if let (OriginPolicy::List(list), Some(origin)) = (&origins, req.headers().get(header::ORIGIN))
        && !list.contains(origin)
    {
        return error(StatusCode::FORBIDDEN, ErrorCode::Forbidden, "origin not allowed");
    }
    if gw.is_draining() && is_new_socket_io_session(&req) {
        // Existing polling sessions carry their sid and keep working until they are closed.
        return error(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::ServerShutdown, "replica is shutting down");
    }
    next.run(req).await
}

/// Copies the request's header values and URI out of hyper's connection read buffer.
///
/// hyper parses them as slices of that 8–16 KiB buffer, and engineioxide keeps a WebSocket's
/// upgrade request parts for the socket's whole life: a few header bytes would pin the whole
/// buffer per idle connection (BENCHMARKS.md has the measurement). (axum's `OriginalUri`, which
/// would hold the same slice, is not compiled in: the `original-uri` feature is off.)
fn detach_from_read_buffer(req: &mut Request) {
    let headers = std::mem::take(req.headers_mut());
    let mut copied = HeaderMap::with_capacity(headers.len());
    let mut name = None;
    for (next_name, value) in headers {
        // `into_iter` names only the first value of each header.
        if next_name.is_some() {
            name = next_name;
        }
        let Some(name) = name.clone() else { continue };
        // `from_bytes` allocates; the original value was a view into the read buffer.
        if let Ok(mut copy) = HeaderValue::from_bytes(value.as_bytes()) {
            copy.set_sensitive(value.is_sensitive());
            copied.append(name, copy);
        }
    }
    *req.headers_mut() = copied;
    if let Ok(uri) = Uri::try_from(req.uri().to_string()) {
        *req.uri_mut() = uri;
    }
}

fn is_new_socket_io_session(req: &Request) -> bool {
    req.uri().path().starts_with(SOCKET_IO_PATH)
        && !req.uri().query().unwrap_or_default().split('&').any(|pair| pair.starts_with("sid="))
}

/// A JSON error response: `{ "ok": false, "error": { "code", "message" } }`, the shape of an error ack.
pub fn error(status: StatusCode, code: ErrorCode, message: &str) -> Response {
    (status, Json(json!({ "ok": false, "error": { "code": code, "message": message } }))).into_response()
}

/// The response for paths that exist on neither listener.
pub async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, ErrorCode::NotFound, "no such endpoint")
}
