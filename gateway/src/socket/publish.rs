//! `publish` `{ channel, event, data?, id?, except? }`: a client publishes to a channel its
//! token grants in the publish claim (`ROOMCAST_JWT_PUBLISH_CLAIM`), exactly as a backend
//! publish does (every replica, offsets, history, recovery), with the publisher's user id in
//! the meta (`from`). `except: "self"` skips the publisher's own socket in live delivery. With
//! `ROOMCAST_PUBLISH_PROXY_URL`, the backend approves, refuses or rewrites it first.

use roomcast_publisher::{Room, wire};
use serde::Deserialize;
use serde_json::{Value, value::RawValue};
use socketioxide::extract::SocketRef;

use super::payloads::{Ack, parse};
use crate::{
    backend::BusError,
    conn::Conn,
    errors::{ClientError, ErrorCode},
    metrics,
    rpc::{Identity, Kind},
    state::Shared,
};

/// What `publish` says when its payload does not fit.
pub(super) const PUBLISH_SHAPE: &str = "payload must be an object: { channel: \"<id>\", event: \"<name>\", data?: <any>, \
     id?: \"<id>\", except?: \"self\" }";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Publish {
    channel: String,
    event: String,
    #[serde(default)]
    data: Value,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    except: Option<Except>,
}

/// Who live delivery skips.
#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Except {
    /// The publishing socket.
    #[serde(rename = "self")]
    Myself,
}

/// The event id of a client's chosen `id`: its own namespace (the user's), so a client cannot
/// take an id a backend or another user will publish with and have theirs dropped as a
/// duplicate. `c.` and 40 hex digits of SHA-256(user, id).
fn client_id(user: &str, id: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new().chain_update(user.as_bytes()).chain_update([0]).chain_update(id.as_bytes()).finalize();
    let hex: String = digest.iter().take(20).map(|b| format!("{b:02x}")).collect();
    format!("c.{hex}")
}

/// `data` as raw JSON, at most `max` bytes.
fn raw_data(data: Value, max: usize) -> Result<Box<RawValue>, ClientError> {
    let data = RawValue::from_string(data.to_string())
        .map_err(|_| ClientError::new(ErrorCode::InvalidPayload, "data is not JSON"))?;
    if data.get().len() > max {
        return Err(ClientError::new(
            ErrorCode::PayloadTooLarge,
            format!("data is {} bytes; the limit is {max}", data.get().len()),
        ));
    }
    Ok(data)
}

/// Publishes for the client; the ack is the receipt `{ id, room, offset?, epoch?, duplicate? }`.
pub(super) async fn publish(
    socket: &SocketRef,
    gw: &Shared,
    conn: &Conn,
    payload: Result<Value, ClientError>,
) -> Result<Ack, ClientError> {
    let result = publish_inner(socket, gw, conn, payload).await;
    metrics::publish("client", result.as_ref().map(|_| ()).map_err(|e| e.code));
    result
}

async fn publish_inner(
    socket: &SocketRef,
    gw: &Shared,
    conn: &Conn,
    payload: Result<Value, ClientError>,
) -> Result<Ack, ClientError> {
    let request: Publish = parse(payload, PUBLISH_SHAPE)?;
    let identity = conn.identity();
    let room = Room::channel(&identity.tenant, &request.channel)
        .map_err(|e| ClientError::new(ErrorCode::InvalidRoom, format!("channel: {e}")))?;
    if !identity.publish.allows(&request.channel) {
        return Err(ClientError::new(
            ErrorCode::Forbidden,
            format!("the token does not grant publish on channel {:?}", request.channel),
        ));
    }
    wire::validate_event_name(&request.event).map_err(|e| {
        let message = match e {
            wire::EventNameError::Reserved(name) => format!("event name {name:?} is reserved"),
            other => other.to_string(),
        };
        ClientError::new(ErrorCode::InvalidEvent, message)
    })?;
    // Checked before the proxy is asked: a publish that cannot go out costs it nothing.
    let (id, dedupe) = match &request.id {
        Some(id) => {
            roomcast_publisher::validate_id(id)
                .map_err(|e| ClientError::new(ErrorCode::InvalidPayload, format!("id: {e}")))?;
            (client_id(&identity.user, id), Some(gw.config.publish_dedupe_window))
        }
        None => (wire::new_event_id(), None),
    };
    let mut data = raw_data(request.data, gw.config.publish_max_payload)?;
    if let Some(rpc) = gw.rpc.as_ref().filter(|rpc| rpc.settings().backends.publish_proxy.is_some()) {
        // The backend approves (`{"result": null}` or `{}`), rewrites (`{"result": {"data": …}}`)
        // or refuses (`rpc_rejected`); unreachable or late, nothing is published.
        let kind = Kind::Publish { channel: &request.channel };
        let admitted = rpc.admit(&identity.tenant, kind).map_err(super::rpc::client_error)?;
        let sender = Identity::of(&identity);
        let sent: Value = serde_json::from_str(data.get()).unwrap_or(Value::Null);
        let answer = tokio::select! {
            answer = rpc.call(&admitted, kind, &request.event, &sent, Some(sender), socket.id.as_str()) => answer,
            // Nobody is left to publish for (nor to ack).
            () = conn.closed() => return Err(ClientError::new(ErrorCode::Unavailable, "not published: the socket closed")),
        }
        .map_err(super::rpc::client_error)?;
        if let Value::Object(mut answer) = answer
            && let Some(rewritten) = answer.remove("data")
        {
            data = raw_data(rewritten, gw.config.publish_max_payload)?;
        }
        // The wait may have outlived the token.
        if gw.revocations.is_revoked(&conn.identity(), wire::now_ms()) {
            return Err(ClientError::new(ErrorCode::TokenRevoked, "this token was revoked; get a new one"));
        }
    }
    let mut envelope = wire::event_envelope(&room, &request.event, data, id.clone(), wire::now_ms());
    if let wire::Envelope::Event(e) = &mut envelope {
        e.from = Some(identity.user.clone());
        e.except = (request.except == Some(Except::Myself)).then(|| socket.id.to_string());
    }
    let published = match gw.bus.publish(vec![envelope.into()], dedupe).await {
        Ok(mut results) if results.len() == 1 => results.remove(0),
        Ok(_) => Err(BusError::Uncertain("no receipt".into())),
        Err(e) => Err(e),
    };
    match published {
        Ok(p) => Ok(Ack::Published {
            id,
            room: room.to_string(),
            offset: p.offset,
            epoch: p.epoch,
            duplicate: p.duplicate.then_some(true),
        }),
        Err(BusError::Unavailable(_)) => {
            Err(ClientError::new(ErrorCode::Unavailable, "not published: the cluster's bus is unreachable; retry"))
        }
        Err(BusError::Uncertain(_)) => {
            Err(ClientError::new(ErrorCode::Timeout, "it may or may not have been published; retry with the same id"))
        }
    }
}
