//! `GET /v1/occupancy`: how many connections and distinct users a project or channel room has,
//! cluster-wide, read from presence's counts in O(1) (no member scan). "12 people viewing".
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
use roomcast_publisher::Room;
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
}

/// The occupancy route of the backend API.
pub fn router(gw: Shared) -> Router {
    Router::new().route(OCCUPANCY_PATH, get(occupancy).fallback(http::only_get)).with_state(gw)
}

async fn occupancy(
    State(gw): State<Shared>,
    headers: HeaderMap,
    query: Result<Query<OccupancyQuery>, QueryRejection>,
) -> Response {
    let scope = match http::authorize(&gw, &headers) {
        Ok(scope) => scope,
        Err(refused) => return refused.into_response(),
    };
    let Query(query) = match query {
        Ok(q) => q,
        Err(e) => {
            let message = format!("expected ?tenant=&(project|channel)=: {}", e.body_text());
            return http::error(StatusCode::BAD_REQUEST, ErrorCode::InvalidPayload, &message);
        }
    };
    let room = match (&query.project, &query.channel) {
        (Some(p), None) => Room::project(&query.tenant, p),
        (None, Some(c)) => Room::channel(&query.tenant, c),
        _ => return http::error(StatusCode::BAD_REQUEST, ErrorCode::InvalidRoom, "name either a project or a channel"),
    };
    let room = match room {
        Ok(room) => room,
        Err(e) => return http::error(StatusCode::BAD_REQUEST, ErrorCode::InvalidRoom, &format!("invalid id: {e}")),
    };
    if !scope.allows(&query.tenant) {
        let message = format!("this API key may not act for tenant {:?}", query.tenant);
        return http::error(StatusCode::FORBIDDEN, ErrorCode::Forbidden, &message);
    }
    match gw.presence.occupancy(&room).await {
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
