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
    let (scope, query) =
        match http::authorized_query(&gw, &headers, query, "?tenant=&(project|channel|user)=&after=&limit=") {
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
        .map(|e| {
            let mut event = json!({ "id": e.id, "event": e.event, "data": e.data, "ts": e.ts, "offset": e.offset });
            if let Some(from) = &e.from {
                event["from"] = json!(from);
            }
            event
        })
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
