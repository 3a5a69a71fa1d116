//! `history` `{ project | channel, after?, limit? }`: a joined room's retained events, answered
//! as `GET /v1/history` answers a backend, so a client can render a room's latest activity (or
//! page through it) without a store of its own.

use serde_json::Value;

use super::payloads::{self, Ack, HISTORY_SHAPE};
use crate::{
    conn::Conn,
    errors::{ClientError, ErrorCode},
    state::Shared,
};

pub(super) async fn history(gw: &Shared, conn: &Conn, payload: Result<Value, ClientError>) -> Result<Ack, ClientError> {
    let request: payloads::History = payloads::parse(payload, HISTORY_SHAPE)?;
    // Rooms the socket is in: what it may read is what it receives.
    let room = super::rooms::allowed_room(&request.room, &conn.identity(), conn)?;
    let name = room.to_string();
    if !conn.is_in(&name) {
        return Err(ClientError::new(ErrorCode::Forbidden, format!("join {name} to read its history")));
    }
    let Some(store) = gw.history.as_ref() else {
        return Err(ClientError::new(ErrorCode::NotFound, "history is off (ROOMCAST_HISTORY_SIZE=0)"));
    };
    let retained = gw.config.history_size as u64;
    let limit = request.limit.unwrap_or((crate::history_api::DEFAULT_LIMIT as u64).min(retained));
    if limit == 0 || limit > retained {
        return Err(ClientError::new(ErrorCode::InvalidPayload, format!("limit must be 1 to {retained}")));
    }
    let read = crate::history_api::read(store, &name, request.after, limit as usize)
        .await
        .map_err(|why| ClientError::new(ErrorCode::Unavailable, why))?;
    let mut body = match read {
        Value::Object(body) => body,
        _ => serde_json::Map::new(),
    };
    body.remove("ok");
    trim(&mut body, request.after.is_some(), gw.config.client_buffer_bytes / 2);
    Ok(Ack::History(body))
}

/// Keeps the answer's events within `budget` bytes (an ack is not held to the socket's send
/// buffer bound): the oldest go for "the latest", the newest for "after an offset", at least
/// one stays, and `more` then says there are more to read.
fn trim(body: &mut serde_json::Map<String, Value>, after: bool, budget: usize) {
    let Some(Value::Array(events)) = body.get_mut("events") else { return };
    let sizes: Vec<usize> = events.iter().map(|e| e.to_string().len()).collect();
    let mut kept = 0;
    let mut used = 0;
    let order: Box<dyn Iterator<Item = &usize>> =
        if after { Box::new(sizes.iter()) } else { Box::new(sizes.iter().rev()) };
    for size in order {
        if kept > 0 && used + size > budget {
            break;
        }
        used += size;
        kept += 1;
    }
    if kept == events.len() {
        return;
    }
    if after {
        events.truncate(kept);
    } else {
        events.drain(..events.len() - kept);
    }
    body.insert("more".into(), Value::Bool(true));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(n: usize) -> serde_json::Map<String, Value> {
        let events: Vec<Value> = (1..=n).map(|i| json!({ "offset": i, "data": "x".repeat(90) })).collect();
        json!({ "events": events, "more": false }).as_object().unwrap().clone()
    }

    fn offsets(body: &serde_json::Map<String, Value>) -> Vec<u64> {
        body["events"].as_array().unwrap().iter().map(|e| e["offset"].as_u64().unwrap()).collect()
    }

    #[test]
    fn answers_over_the_budget_keep_the_events_asked_for_first() {
        let mut latest = body(5);
        trim(&mut latest, false, 250);
        assert_eq!((offsets(&latest), latest["more"].clone()), (vec![4, 5], json!(true)), "the newest");
        let mut after = body(5);
        trim(&mut after, true, 250);
        assert_eq!((offsets(&after), after["more"].clone()), (vec![1, 2], json!(true)), "the next ones");
        let mut one = body(3);
        trim(&mut one, true, 10);
        assert_eq!(offsets(&one), vec![1], "at least one");
        let mut fits = body(2);
        trim(&mut fits, true, 10_000);
        assert_eq!((offsets(&fits), fits["more"].clone()), (vec![1, 2], json!(false)));
    }
}
