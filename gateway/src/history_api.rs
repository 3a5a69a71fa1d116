//! `GET /v1/history`: a room's recent events with its epoch and offset, so a backend can render
//! a room's latest activity (or page through what history retains) without a store of its own.
//!
//! On the API listener, with the API key (a tenant-scoped key reads only its tenants). What it
//! can return is what history retains: `ROOMCAST_HISTORY_SIZE` events per room, for
//! `ROOMCAST_HISTORY_TTL`.

use std::sync::Arc;

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

use crate::{errors::ErrorCode, history::History, http, state::Shared};

/// The history endpoint's path.
pub const HISTORY_PATH: &str = "/v1/history";

/// Events returned when the request names no `limit`.
pub(crate) const DEFAULT_LIMIT: usize = 50;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    tenant: String,
    #[serde(default)]
    project: Option<String>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    user: Option<String>,
    /// Events after this offset, oldest first; absent: the latest `limit` events.
    #[serde(default)]
    after: Option<u64>,
    #[serde(default)]
    limit: Option<usize>,
}

/// The history route of the backend API.
pub fn router(gw: Shared) -> Router {
    Router::new().route(HISTORY_PATH, get(history).fallback(http::only_get)).with_state(gw)
}

async fn history(
    State(gw): State<Shared>,
    headers: HeaderMap,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Response {
    let scope = match http::authorize(&gw, &headers) {
        Ok(scope) => scope,
        Err(refused) => return refused.into_response(),
    };
    let Query(query) = match query {
        Ok(q) => q,
        Err(e) => {
            let message = format!("expected ?tenant=&(project|channel|user)=&after=&limit=: {}", e.body_text());
            return http::error(StatusCode::BAD_REQUEST, ErrorCode::InvalidPayload, &message);
        }
    };
    let room = match (&query.project, &query.channel, &query.user) {
        (None, None, None) => Room::tenant(&query.tenant),
        (Some(p), None, None) => Room::project(&query.tenant, p),
        (None, Some(c), None) => Room::channel(&query.tenant, c),
        (None, None, Some(u)) => Room::user(&query.tenant, u),
        _ => {
            return http::error(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidRoom,
                "name at most one of project, channel and user",
            );
        }
    };
    let room = match room {
        Ok(room) => room,
        Err(e) => return http::error(StatusCode::BAD_REQUEST, ErrorCode::InvalidRoom, &format!("invalid id: {e}")),
    };
    if !scope.allows(&query.tenant) {
        let message = format!("this API key may not act for tenant {:?}", query.tenant);
        return http::error(StatusCode::FORBIDDEN, ErrorCode::Forbidden, &message);
    }
    let Some(store) = gw.history.as_ref() else {
        return http::error(StatusCode::NOT_FOUND, ErrorCode::NotFound, "history is off (ROOMCAST_HISTORY_SIZE=0)");
    };
    let retained = gw.config.history_size as usize;
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT.min(retained));
    if limit == 0 || limit > retained {
        let message = format!("limit must be 1 to {retained} (ROOMCAST_HISTORY_SIZE)");
        return http::error(StatusCode::BAD_REQUEST, ErrorCode::InvalidPayload, &message);
    }
    match read(store, &room.to_string(), query.after, limit).await {
        Ok(body) => (StatusCode::OK, Json(body)).into_response(),
        Err(why) => http::error(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable, &why),
    }
}

/// The answer: the room's position, its events (after `after`, or the latest), and whether more
/// are retained beyond them. Clients' `history` ack answers the same.
pub(crate) async fn read(
    store: &Arc<dyn History>,
    room: &str,
    after: Option<u64>,
    limit: usize,
) -> Result<serde_json::Value, String> {
    let unavailable = |_| "history cannot be read: Redis is unavailable".to_owned();
    let (read, events, more) = match after {
        Some(after) => {
            let read = store.read(room, after, limit).await.map_err(unavailable)?;
            let last = read.events.last().and_then(|e| e.offset).unwrap_or(after);
            let more = read.events.len() == limit && last < read.position.offset;
            let events = read.events.clone();
            (read, events, more)
        }
        None => {
            // The position first (no events), then the last `limit` offsets and one more, whose
            // presence says older events are retained. Reading from the start and keeping the
            // tail would return the oldest events when the stream holds more than expected.
            let tail = store.read(room, u64::MAX, 0).await.map_err(unavailable)?.position.offset;
            let from = tail.saturating_sub(limit as u64 + 1);
            let read = store.read(room, from, limit + 1).await.map_err(unavailable)?;
            let skip = read.events.len().saturating_sub(limit);
            let events = read.events[skip..].to_vec();
            (read, events, skip > 0)
        }
    };
    let events: Vec<serde_json::Value> = events
        .iter()
        .map(|e| json!({ "id": e.id, "event": e.event, "data": e.data, "ts": e.ts, "offset": e.offset }))
        .collect();
    Ok(json!({
        "ok": true,
        "room": room,
        "epoch": read.position.epoch,
        "offset": read.position.offset,
        "events": events,
        "more": more,
    }))
}
