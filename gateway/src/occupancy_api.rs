//! `GET /v1/occupancy`: how many connections and distinct users a project or channel room has,
//! cluster-wide, read from presence's counts in O(1) (no member scan). "12 people viewing".
//! For a whole tenant, or one user, the connection caps' counters answer (when caps are on).
//!
//! On the API listener, with the API key (a tenant-scoped key reads only its tenants). The
//! counts are presence's: a connection in its grace period still counts.

use axum::{
    Json, Router,
    extract::{Query, State, rejection::QueryRejection},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
};
use futures_util::StreamExt;
use roomcast_publisher::{Room, RoomKind};
use serde::Deserialize;
use serde_json::json;

use crate::{errors::ErrorCode, http, state::Shared};

/// The occupancy endpoint's path.
pub const OCCUPANCY_PATH: &str = "/v1/occupancy";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OccupancyQuery {
    tenant: String,
    #[serde(default)]
    project: Option<String>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    user: Option<String>,
}

/// The room listing's path.
pub const ROOMS_PATH: &str = "/v1/rooms";

/// The occupancy and room listing routes of the backend API.
pub fn router(gw: Shared) -> Router {
    Router::new()
        .route(OCCUPANCY_PATH, get(occupancy).fallback(http::only_get))
        .route(ROOMS_PATH, get(rooms).fallback(http::only_get))
        .with_state(gw)
}

/// `GET /v1/rooms`' query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RoomsQuery {
    tenant: String,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    cursor: Option<String>,
    #[serde(default)]
    limit: Option<u64>,
}

/// Rooms a page holds unless the request says otherwise, and at most.
const DEFAULT_ROOMS: u64 = 100;
const MAX_ROOMS: u64 = 500;

/// `GET /v1/rooms`: a tenant's project and channel rooms with members, cluster-wide, each with
/// its occupancy, a page at a time (`cursor`). From the tenant's room index, which replicas
/// keep (a room is listed from its first member, and at most a little while after its last).
async fn rooms(
    State(gw): State<Shared>,
    headers: HeaderMap,
    query: Result<Query<RoomsQuery>, QueryRejection>,
) -> Response {
    let scope = match http::authorize(&gw, &headers) {
        Ok(scope) => scope,
        Err(refused) => return refused.into_response(),
    };
    rooms_as(&gw, scope, query).await
}

/// `GET /v1/rooms` for a caller with `scope` (an API key's, or the console token's).
pub(crate) async fn rooms_as(
    gw: &Shared,
    scope: crate::api_keys::KeyScope,
    query: Result<Query<RoomsQuery>, QueryRejection>,
) -> Response {
    let query = match query {
        Ok(Query(query)) => query,
        Err(e) => {
            let message = format!("expected ?tenant=&kind=project|channel&prefix=&cursor=&limit=: {}", e.body_text());
            return http::error(StatusCode::BAD_REQUEST, ErrorCode::InvalidPayload, &message);
        }
    };
    let bad = |message: &str| http::error(StatusCode::BAD_REQUEST, ErrorCode::InvalidPayload, message);
    if Room::tenant(&query.tenant).is_err() {
        return http::error(StatusCode::BAD_REQUEST, ErrorCode::InvalidRoom, "tenant is not an id");
    }
    let kind = match query.kind.as_deref() {
        None => None,
        Some(kind @ ("project" | "channel")) => Some(kind),
        Some(_) => return bad("kind is project or channel"),
    };
    let prefix = query.prefix.unwrap_or_default();
    let id_chars = |c: char| c.is_ascii_alphanumeric() || "_-.@|+=".contains(c);
    if prefix.len() > 128 || !prefix.chars().all(id_chars) {
        return bad("prefix is the start of an id (up to 128 of A-Z a-z 0-9 _ - . @ | + =)");
    }
    if !prefix.is_empty() && kind.is_none() {
        return bad("a prefix needs a kind");
    }
    let limit = query.limit.unwrap_or(DEFAULT_ROOMS);
    if !(1..=MAX_ROOMS).contains(&limit) {
        return bad(&format!("limit must be 1 to {MAX_ROOMS}"));
    }
    let cursor = query.cursor.unwrap_or_default();
    if cursor.len() > 512 {
        return bad("cursor is not one this API returned");
    }
    if let Err(refused) = http::tenant_allowed(&scope, &query.tenant) {
        return refused.into_response();
    }
    let room_prefix = match kind {
        Some(kind) => format!("tenant:{}:{kind}:{prefix}", query.tenant),
        None => format!("tenant:{}:", query.tenant),
    };
    let now = roomcast_publisher::wire::now_ms();
    let unavailable = || {
        http::error(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            "rooms cannot be listed: Redis is unavailable",
        )
    };
    let (next, names) = match gw.bus.indexed_rooms(&query.tenant, &room_prefix, &cursor, limit, now).await {
        Ok(Some(page)) => page,
        Ok(None) => return bad("cursor is not one this API returned"),
        Err(_) => return unavailable(),
    };
    let rooms: Vec<Room> = names.iter().filter_map(|name| Room::parse(name)).collect();
    // At most 32 reads in flight: a page from Redis can hold more rooms than `limit` asked.
    let reads = rooms.iter().cloned().map(|room| {
        let presence = gw.presence.clone();
        async move { presence.occupancy(&room).await }
    });
    let counts: Vec<_> = futures_util::stream::iter(reads).buffered(32).collect().await;
    let mut listed = Vec::new();
    for (room, counted) in rooms.iter().zip(counts) {
        let Ok(o) = counted else { return unavailable() };
        // Listed for a while after its last member left: only rooms with someone in them.
        if o.users > 0 {
            listed.push(json!({
                "room": room.to_string(),
                "kind": room.kind().as_str(),
                "id": room.id(),
                "connections": o.connections,
                "users": o.users,
            }));
        }
    }
    let cursor = if next.is_empty() { serde_json::Value::Null } else { next.into() };
    (StatusCode::OK, Json(json!({ "ok": true, "rooms": listed, "cursor": cursor }))).into_response()
}

async fn occupancy(
    State(gw): State<Shared>,
    headers: HeaderMap,
    query: Result<Query<OccupancyQuery>, QueryRejection>,
) -> Response {
    let (scope, query) = match http::authorized_query(&gw, &headers, query, "?tenant=&(project|channel|user)=") {
        Ok(read) => read,
        Err(refused) => return refused.into_response(),
    };
    let room = match http::named_room(
        &query.tenant,
        query.project.as_deref(),
        query.channel.as_deref(),
        query.user.as_deref(),
    ) {
        Ok(room) => room,
        Err(refused) => return refused.into_response(),
    };
    if let Err(refused) = http::tenant_allowed(&scope, &query.tenant) {
        return refused.into_response();
    }
    let counted = match room.kind() {
        // A tenant's or a user's connections: the connection caps' counters.
        RoomKind::Tenant | RoomKind::User => match gw.presence.connected(&query.tenant, query.user.as_deref()).await {
            Some(counted) => counted,
            None => {
                let message = "connections are not counted: set ROOMCAST_MAX_CONNECTIONS_PER_USER or _PER_TENANT";
                return http::error(StatusCode::NOT_FOUND, ErrorCode::NotFound, message);
            }
        },
        _ => gw.presence.occupancy(&room).await,
    };
    match counted {
        Ok(o) => {
            let body = json!({ "ok": true, "room": room.to_string(), "connections": o.connections, "users": o.users });
            (StatusCode::OK, Json(body)).into_response()
        }
        Err(_) => http::error(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            "occupancy cannot be read: Redis is unavailable",
        ),
    }
}
