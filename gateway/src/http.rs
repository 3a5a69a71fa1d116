//! HTTP: the operator endpoints on the admin listener, the backend API's routes on the API
//! listener, and the guards in front of Socket.IO on the public one and of the API.

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

/// The path Socket.IO clients request (`/socket.io/?EIO=4…`).
pub const SOCKET_IO_PATH_SLASH: &str = "/socket.io/";

/// Marks a request that came through the admin listener's Socket.IO route, where only the
/// console's observers connect (see `console.rs`).
#[derive(Debug, Clone, Copy)]
pub struct ConsoleListener;

/// What hyper may buffer of a request head beyond `ROOMCAST_MAX_HEADER_BYTES` (which the guard
/// answers with a coded 431), for requests after a connection's first ([`first_head`] bounds
/// that one): the request line and framing. Past it hyper answers a bare 431 itself, without
/// reading on: by default it buffers up to ~400 KB per request, so huge headers cost CPU and
/// memory before any check could run (BENCHMARKS.md, noisy neighbour).
const HEAD_SLACK: usize = 16 * 1024;

/// Serves `router` on `listener` (HTTP/1.1, WebSocket upgrades included) until `stop` turns
/// true, then stops accepting and waits for its connections to finish (upgraded ones are
/// handed off and do not count). What `axum::serve` does (no header-read timeout, so idle
/// keep-alive connections are left to the load balancer, as before), plus the first request's
/// head read by [`first_head`], a cap on hyper's read buffer of `max_head` + [`HEAD_SLACK`], and
/// TCP_NODELAY: Nagle's algorithm would hold a small
/// packet written right after another (an ack, then an event) until the client's delayed ACK,
/// 40 ms tails on Linux.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    max_head: usize,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    // hyper's 30 s header-read timeout also closes idle keep-alive connections after 30 s, below
    // common load balancer idle timeouts (60 s): 502s. axum::serve ran without it.
    builder.max_buf_size((max_head + HEAD_SLACK).max(8192)).header_read_timeout(None);
    // Each connection's task holds a receiver: all are gone once every connection finished.
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionRefused
                ) => continue, // that connection's problem, not the listener's
                Err(e) => {
                    // Out of descriptors, typically: wait instead of spinning on the error.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    continue;
                }
            },
            _ = async { stop.wait_for(|s| *s).await.map(|_| ()) } => break,
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        let (service, builder) = (hyper_util::service::TowerToHyperService::new(router.clone()), builder.clone());
        let mut shutdown = shutdown_rx.clone();
        tokio::spawn(async move {
            let mut tcp = tcp;
            let head = tokio::select! {
                head = first_head(&mut tcp, max_head + FIRST_HEAD_SLACK) => head,
                _ = async { shutdown.wait_for(|s| *s).await.map(|_| ()) } => return,
            };
            let head = match head {
                Ok(FirstHead::Complete(head)) => head,
                Ok(FirstHead::TooLarge) => return refuse_head(tcp, max_head).await,
                Ok(FirstHead::Closed) | Err(_) => return,
            };
            let io = hyper_util::rt::TokioIo::new(Prefixed::new(head, tcp));
            let conn = builder.serve_connection(io, service).with_upgrades();
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = async { shutdown.wait_for(|s| *s).await.map(|_| ()) } => conn.as_mut().graceful_shutdown(),
            }
            let _ = conn.await;
        });
    }
    drop(listener);
    let _ = shutdown_tx.send(true);
    drop(shutdown_rx);
    shutdown_tx.closed().await;
}

/// How far past `ROOMCAST_MAX_HEADER_BYTES` [`first_head`] reads before refusing: the raw head
/// also holds the method, the version, line ends and the blank line, which the guard's count
/// (target and headers) leaves out. Heads in between are answered by the guard, with the same
/// coded 431.
const FIRST_HEAD_SLACK: usize = 1024;

/// A connection's first request head, as [`first_head`] read it.
enum FirstHead {
    /// Everything read up to and including the blank line (and whatever came with it).
    Complete(Vec<u8>),
    /// No blank line within the limit.
    TooLarge,
    /// The peer closed before a head was complete.
    Closed,
}

/// Reads a connection's first request head, up to `limit` bytes, before hyper sees it: hyper
/// looks for the head's end one byte at a time from where its last read stopped, and copies
/// what it read into buffers growing up to its own cap, so oversized heads (a flood of
/// upgrades with a 400 KB header) cost the replica ~70 µs each, 18 % of its CPU in a bare
/// scan (BENCHMARKS.md, noisy neighbour). Here the end is found with `memchr` on what arrived,
/// and a head over the limit is refused without hyper, its parser or the router. A complete
/// head then reaches hyper in one piece, so it is parsed once. Keep-alive requests after the
/// first are bounded by hyper's buffer cap and answered by the guards.
async fn first_head(tcp: &mut tokio::net::TcpStream, limit: usize) -> std::io::Result<FirstHead> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut scanned = 0;
    loop {
        if buf.len() > limit {
            return Ok(FirstHead::TooLarge);
        }
        // Grow like hyper does (from 8 KiB, doubling), never past one byte over the limit.
        let want = buf.len().max(8 * 1024).min(limit + 1 - buf.len());
        buf.reserve_exact(want);
        if (&mut *tcp).take(want as u64).read_buf(&mut buf).await? == 0 {
            return Ok(FirstHead::Closed);
        }
        if head_end(&buf, scanned).is_some() {
            return Ok(FirstHead::Complete(buf));
        }
        scanned = buf.len();
    }
}

/// Where the head in `buf` ends (just past its blank line), looking at what follows `from`
/// (the length already looked at, which held no end). Like hyper, a bare `\n` ends a line too.
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    // A blank line is at most 3 bytes: it may have begun in what was looked at before.
    let start = from.saturating_sub(2);
    memchr::memchr_iter(b'\n', &buf[start..]).map(|i| start + i).find_map(|i| match &buf[i + 1..] {
        [b'\n', ..] => Some(i + 2),
        [b'\r', b'\n', ..] => Some(i + 3),
        _ => None,
    })
}

/// Answers a first head over the limit with the coded 431 the guards send, then closes.
async fn refuse_head(mut tcp: tokio::net::TcpStream, max_head: usize) {
    use tokio::io::AsyncWriteExt;
    crate::metrics::connection_rejected(ErrorCode::HeadersTooLarge);
    let body = json!({ "ok": false, "error": { "code": ErrorCode::HeadersTooLarge, "message":
        format!("request line and headers are over {max_head} bytes; the limit is {max_head}") } })
    .to_string();
    let response = format!(
        "HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    // Best effort: a peer still sending its head may see a reset instead.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
        tcp.write_all(response.as_bytes()).await?;
        tcp.shutdown().await
    })
    .await;
}

/// An IO that first serves `prefix` (what [`first_head`] read), then its inner stream. The
/// prefix is freed once served: an upgraded socket keeps this wrapper for its life.
struct Prefixed<T> {
    prefix: Vec<u8>,
    served: usize,
    inner: T,
}

impl<T> Prefixed<T> {
    fn new(prefix: Vec<u8>, inner: T) -> Self {
        Self { prefix, served: 0, inner }
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Prefixed<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        out: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.served < this.prefix.len() {
            let n = out.remaining().min(this.prefix.len() - this.served);
            out.put_slice(&this.prefix[this.served..this.served + n]);
            this.served += n;
            if this.served == this.prefix.len() {
                this.prefix = Vec::new();
                this.served = 0;
            }
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut this.inner).poll_read(cx, out)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Prefixed<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

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

/// The OpenAPI document's path.
pub const OPENAPI_PATH: &str = "/openapi.json";

/// `/healthz`, `/readyz`, `/metrics` and, when it is on, the console's routes; anything else
/// is the coded 404.
pub fn admin_router(gw: Shared, metrics: PrometheusHandle, console: Option<Router>) -> Router {
    console
        .unwrap_or_default()
        .route("/healthz", get(|| async { Json(json!({ "status": "ok" })) }))
        .route("/readyz", get(readyz).with_state(gw))
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    // /proc reads (one directory entry per socket): off the runtime's workers.
                    let _ = tokio::task::spawn_blocking(crate::metrics::collect_runtime_and_process).await;
                    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], metrics.render())
                }
            }),
        )
        .fallback(not_found)
        .layer(middleware::from_fn(|req: Request, next: Next| timed("admin", req, next)))
}

/// The admin listener's paths (the console's among them).
const ADMIN_PATHS: [&str; 11] = [
    "/healthz",
    "/readyz",
    "/metrics",
    "/console",
    "/console/console.js",
    "/console/api/session",
    "/console/api/observer",
    "/console/api/rooms",
    "/console/api/replicas",
    "/console/api/disconnect",
    "/console/api/leave",
];

/// Records how long `listener` took to answer. The `route` label is a known path, else `other`,
/// so it stays bounded.
async fn timed(listener: &'static str, req: Request, next: Next) -> Response {
    let start = std::time::Instant::now();
    let path = req.uri().path();
    let route = crate::API_PATHS.iter().chain(ADMIN_PATHS.iter()).copied().find(|r| *r == path).unwrap_or("other");
    let response = next.run(req).await;
    crate::metrics::http_request(listener, route, response.status().as_u16(), start);
    response
}

async fn readyz(State(gw): State<Shared>) -> Response {
    let ready = gw.readiness();
    crate::metrics::ready(ready.is_ok());
    let (status, mut body) = match ready {
        Ok(()) => (StatusCode::OK, json!({ "status": "ready" })),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, json!({ "status": "not_ready", "reason": reason })),
    };
    if let Some(redis) = gw.redis_status() {
        body["redis"] = json!(redis);
    }
    (status, Json(body)).into_response()
}

/// The OpenAPI document of the backend API, served at `/openapi.json`; a test checks it
/// against the routes below.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// `GET /openapi.json`, merged into the backend API's router.
pub fn openapi_route() -> Router {
    Router::new().route(
        OPENAPI_PATH,
        get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }).fallback(only_get),
    )
}

/// Any other method on a POST-only path: 405 with the JSON error every client-visible error has.
pub async fn only_post() -> Response {
    let mut response = error(StatusCode::METHOD_NOT_ALLOWED, ErrorCode::MethodNotAllowed, "use POST");
    response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST"));
    response
}

/// Any other method on a GET-only path: 405 with the JSON error every client-visible error has.
pub async fn only_get() -> Response {
    let mut response = error(StatusCode::METHOD_NOT_ALLOWED, ErrorCode::MethodNotAllowed, "use GET");
    response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET"));
    response
}

/// Wraps the API router in the header limit, answered with the coded 431 as on the public
/// listener. No drain guard: a draining replica still publishes (to Redis) until it stops.
pub fn guard_api(router: Router, gw: Shared) -> Router {
    router
        .layer(middleware::from_fn_with_state(gw, guard_api_request))
        .layer(middleware::from_fn(|req: Request, next: Next| timed("api", req, next)))
}

async fn guard_api_request(State(gw): State<Shared>, req: Request, next: Next) -> Response {
    let head = head_bytes(&req);
    if head > gw.config.max_header_bytes {
        return error(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ErrorCode::HeadersTooLarge,
            &format!("request line and headers are {head} bytes; the limit is {}", gw.config.max_header_bytes),
        );
    }
    next.run(req).await
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
    if let (OriginPolicy::List(list), Some(origin)) = (&origins, req.headers().get(header::ORIGIN))
        && !list.contains(origin)
    {
        return error(StatusCode::FORBIDDEN, ErrorCode::Forbidden, "origin not allowed");
    }
    if let Some(refused) = refused_session(&gw, &req) {
        return refused;
    }
    if req.uri().path().starts_with(SOCKET_IO_PATH) {
        // Proxy-only mode: the connect proxy gets the Cookie header (kept for the session, as
        // engineioxide keeps the request's parts).
        keep_only_what_sessions_read(&mut req, gw.config.proxy_only());
    }
    next.run(req).await
}

/// What both Socket.IO routes refuse before the engine sees a request: a head over
/// `ROOMCAST_MAX_HEADER_BYTES` (431), and a new session while draining (503; existing polling
/// sessions carry their sid and keep working until they are closed).
fn refused_session(gw: &Shared, req: &Request) -> Option<Response> {
    let head = head_bytes(req);
    if head > gw.config.max_header_bytes {
        crate::metrics::connection_rejected(ErrorCode::HeadersTooLarge);
        return Some(error(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ErrorCode::HeadersTooLarge,
            &format!("request line and headers are {head} bytes; the limit is {}", gw.config.max_header_bytes),
        ));
    }
    if gw.is_draining() && is_new_socket_io_session(req) {
        return Some(error(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::ServerShutdown, "replica is shutting down"));
    }
    None
}

/// Wraps the admin listener's Socket.IO route (the console's observers): the public guard's
/// header limit, drain and trimming of what a session keeps, and the [`ConsoleListener`] mark
/// the connect handler reads. No origin check: the console's page is served from here.
pub fn guard_observers(router: Router, gw: Shared) -> Router {
    router.layer(middleware::from_fn_with_state(gw, guard_observer))
}

async fn guard_observer(State(gw): State<Shared>, mut req: Request, next: Next) -> Response {
    if let Some(refused) = refused_session(&gw, &req) {
        return refused;
    }
    keep_only_what_sessions_read(&mut req, false);
    req.extensions_mut().insert(ConsoleListener);
    next.run(req).await
}

/// Bytes of the request's target and headers, as sent (`name: value\r\n` each).
fn head_bytes(req: &Request) -> usize {
    // The whole target: an absolute-form one (`GET http://host/…`) carries its authority too.
    let uri = req.uri();
    let target = uri.scheme_str().map_or(0, str::len)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    target + req.headers().iter().map(|(name, value)| name.as_str().len() + value.len() + 4).sum::<usize>()
}

/// The request headers anything behind this guard reads: the token (`socket::authenticate`),
/// the WebSocket key (engineioxide's upgrade response) and the polling body's content type
/// (engineioxide). CORS and the origin check run before this. Add a header here before reading
/// it from a socket's request parts.
const SESSION_HEADERS: [header::HeaderName; 3] =
    [header::AUTHORIZATION, header::SEC_WEBSOCKET_KEY, header::CONTENT_TYPE];

/// Strips an Engine.IO request down to [`SESSION_HEADERS`] and copies what is kept, and the URI,
/// out of hyper's connection read buffer.
///
/// engineioxide keeps a WebSocket's upgrade request parts for the socket's whole life. hyper
/// parses header values and the URI as slices of its 8–16 KiB read buffer, so a few header bytes
/// would pin that whole buffer per idle connection; and a browser's upgrade request carries a
/// kilobyte or more of headers nothing reads (cookies, user agent, `Sec-Fetch-*`, languages).
/// BENCHMARKS.md has the measurements. (axum's `OriginalUri`, which would hold another slice of
/// the buffer, is not compiled in: the `original-uri` feature is off.)
fn keep_only_what_sessions_read(req: &mut Request, keep_cookie: bool) {
    let headers = std::mem::take(req.headers_mut());
    let mut kept = HeaderMap::with_capacity(2);
    let cookie = keep_cookie.then_some(header::COOKIE);
    for name in SESSION_HEADERS.into_iter().chain(cookie) {
        for value in headers.get_all(&name) {
            // `from_bytes` allocates; the original value was a view into the read buffer.
            if let Ok(mut copy) = HeaderValue::from_bytes(value.as_bytes()) {
                copy.set_sensitive(value.is_sensitive());
                kept.append(name.clone(), copy);
            }
        }
    }
    *req.headers_mut() = kept;
    // Only the query parameters the engine and authentication read: the rest (a client may add
    // any, up to ROOMCAST_MAX_HEADER_BYTES) would stay in memory for the socket's life too.
    let uri = req.uri();
    let query: Vec<&str> = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|pair| SESSION_QUERY.iter().any(|name| pair.split('=').next() == Some(*name)))
        .collect();
    let kept = if query.is_empty() { uri.path().to_owned() } else { format!("{}?{}", uri.path(), query.join("&")) };
    if let Ok(uri) = Uri::try_from(kept) {
        *req.uri_mut() = uri;
    }
}

/// The query parameters kept with an Engine.IO session: the engine's (`EIO`, `transport`, `sid`,
/// `b64`) and the token (`auth::find_token`).
const SESSION_QUERY: [&str; 5] = ["EIO", "transport", "sid", "b64", "token"];

fn is_new_socket_io_session(req: &Request) -> bool {
    req.uri().path().starts_with(SOCKET_IO_PATH)
        && !req.uri().query().unwrap_or_default().split('&').any(|pair| pair.starts_with("sid="))
}

/// Why a backend API request was refused: its answer, and the code it is counted under.
#[derive(Debug)]
pub enum Refusal {
    /// The API key (404 or 401).
    Key(KeyRefused),
    /// Any other refusal.
    Answer(StatusCode, ErrorCode, String),
}

impl Refusal {
    /// 400 with `code`.
    pub fn bad(code: ErrorCode, message: impl Into<String>) -> Refusal {
        Refusal::Answer(StatusCode::BAD_REQUEST, code, message.into())
    }

    /// The code the answer carries.
    pub fn code(&self) -> ErrorCode {
        match self {
            Refusal::Key(refused) => refused.code(),
            Refusal::Answer(_, code, _) => *code,
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::Key(refused) => refused.into_response(),
            Refusal::Answer(status, code, message) => error(status, code, &message),
        }
    }
}

/// The key's scope and the query of a backend API `GET` (`shape` says what was expected).
pub fn authorized_query<T>(
    gw: &Shared,
    headers: &HeaderMap,
    query: Result<axum::extract::Query<T>, axum::extract::rejection::QueryRejection>,
    shape: &str,
) -> Result<(crate::api_keys::KeyScope, T), Refusal> {
    let scope = authorize(gw, headers).map_err(Refusal::Key)?;
    let axum::extract::Query(query) =
        query.map_err(|e| Refusal::bad(ErrorCode::InvalidPayload, format!("expected {shape}: {}", e.body_text())))?;
    Ok((scope, query))
}

/// 403 `forbidden` unless the key's `scope` acts for `tenant`.
pub fn tenant_allowed(scope: &crate::api_keys::KeyScope, tenant: &str) -> Result<(), Refusal> {
    if scope.allows(tenant) {
        return Ok(());
    }
    let message = format!("this API key may not act for tenant {tenant:?}");
    Err(Refusal::Answer(StatusCode::FORBIDDEN, ErrorCode::Forbidden, message))
}

/// The room of `tenant` a request names with at most one of `project`, `channel` and `user`
/// (none: the tenant's own room).
pub fn named_room(
    tenant: &str,
    project: Option<&str>,
    channel: Option<&str>,
    user: Option<&str>,
) -> Result<roomcast_publisher::Room, Refusal> {
    use roomcast_publisher::Room;
    let room = match (project, channel, user) {
        (None, None, None) => Room::tenant(tenant),
        (Some(p), None, None) => Room::project(tenant, p),
        (None, Some(c), None) => Room::channel(tenant, c),
        (None, None, Some(u)) => Room::user(tenant, u),
        _ => return Err(Refusal::bad(ErrorCode::InvalidRoom, "name at most one of project, channel and user")),
    };
    room.map_err(|e| Refusal::bad(ErrorCode::InvalidRoom, format!("invalid id: {e}")))
}

/// A JSON error response: `{ "ok": false, "error": { "code", "message" } }`, the shape of an error ack.
pub fn error(status: StatusCode, code: ErrorCode, message: &str) -> Response {
    (status, Json(json!({ "ok": false, "error": { "code": code, "message": message } }))).into_response()
}

/// Why a request's API key was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRefused {
    /// No key is configured: the backend API is off (404 `not_found`).
    Disabled,
    /// Missing or wrong (401 `unauthorized`).
    Unauthorized,
}

impl KeyRefused {
    /// The code the answer carries.
    pub fn code(self) -> ErrorCode {
        match self {
            KeyRefused::Disabled => ErrorCode::NotFound,
            KeyRefused::Unauthorized => ErrorCode::Unauthorized,
        }
    }
}

impl IntoResponse for KeyRefused {
    fn into_response(self) -> Response {
        match self {
            KeyRefused::Disabled => {
                error(StatusCode::NOT_FOUND, ErrorCode::NotFound, "the backend API is disabled: set ROOMCAST_API_KEY")
            }
            KeyRefused::Unauthorized => unauthorized(),
        }
    }
}

/// The scope of the request's API key (`Authorization: Bearer <key>`).
pub fn authorize(gw: &Shared, headers: &HeaderMap) -> Result<crate::api_keys::KeyScope, KeyRefused> {
    if !gw.api_keys.is_enabled() {
        return Err(KeyRefused::Disabled);
    }
    bearer(headers).and_then(|key| gw.api_keys.accepts(key.as_bytes())).ok_or(KeyRefused::Unauthorized)
}

/// The credential of an `Authorization: Bearer …` header, if the request has one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
}

/// 401 `unauthorized` with `WWW-Authenticate: Bearer`: the API key is missing or wrong.
pub fn unauthorized() -> Response {
    let mut response = error(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, "missing or wrong API key");
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// The response for paths that exist on neither listener.
pub async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, ErrorCode::NotFound, "no such endpoint")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The end of a head, found however the head arrived: every split of it into a first part
    /// (looked at, no end in it) and the rest gives the same end, CRLF or bare LF, and nothing
    /// short of the blank line is taken for one.
    #[test]
    fn a_head_end_is_found_across_any_split_and_only_at_the_blank_line() {
        for (head, end) in [
            (&b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody"[..], 27),
            (b"GET / HTTP/1.1\nHost: a\n\nbody", 24),
            (b"GET / HTTP/1.1\r\nHost: a\n\r\n", 26),
        ] {
            for looked in 0..end {
                // What was looked at before held no end; this call sees what came since.
                assert!(head_end(&head[..looked], 0).is_none(), "{head:?} cut at {looked}");
                assert_eq!(head_end(head, looked), Some(end), "{head:?} looked at {looked}");
            }
        }
        for partial in [&b"GET / HTTP/1.1\r\nHost: a\r\n\r"[..], b"GET / HTTP/1.1\r\n", b"\r\r\n", b""] {
            assert_eq!(head_end(partial, 0), None, "{partial:?}");
        }
    }

    #[test]
    fn an_engine_io_request_keeps_only_the_headers_sessions_read() {
        let mut req = Request::builder()
            .uri("/socket.io/?EIO=4&transport=websocket")
            .header(header::COOKIE, "session=".to_string() + &"x".repeat(2000))
            .header(header::USER_AGENT, "Mozilla/5.0")
            .header(header::AUTHORIZATION, "Bearer t")
            .header(header::SEC_WEBSOCKET_KEY, "dGhlIHNhbXBsZSBub25jZQ==")
            .header(header::CONTENT_TYPE, "text/plain")
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(axum::body::Body::empty())
            .unwrap();
        keep_only_what_sessions_read(&mut req, false);
        let names: Vec<_> = req.headers().keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["authorization", "sec-websocket-key", "content-type"]);
        assert_eq!(req.headers().get_all(header::CONTENT_TYPE).iter().count(), 2, "repeated values are kept");
        assert_eq!(req.headers()[header::AUTHORIZATION], "Bearer t");
        assert_eq!(req.uri(), "/socket.io/?EIO=4&transport=websocket");
    }

    #[test]
    fn an_engine_io_request_keeps_only_the_query_parameters_sessions_read() {
        let padding = "p".repeat(8000);
        let mut req = Request::builder()
            .uri(format!("/socket.io/?EIO=4&t=PxQ1&transport=polling&custom={padding}&sid=abc&token=a%2Eb&EIOx=1"))
            .body(axum::body::Body::empty())
            .unwrap();
        keep_only_what_sessions_read(&mut req, false);
        assert_eq!(req.uri(), "/socket.io/?EIO=4&transport=polling&sid=abc&token=a%2Eb");
        let mut bare = Request::builder().uri("/socket.io/?x=1").body(axum::body::Body::empty()).unwrap();
        keep_only_what_sessions_read(&mut bare, false);
        assert_eq!(bare.uri(), "/socket.io/");
    }
}
