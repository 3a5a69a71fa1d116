//! Client events forwarded to the backend (`crate::rpc`): an RPC when the client emitted with an
//! ack callback (the backend's answer is the ack), a fire-and-forget client event otherwise.
//!
//! RPCs do not take the socket's turn: they are independent of its room operations and of each
//! other, so a slow backend never holds up a `join`, and a socket may have several in flight
//! (`ROOMCAST_RPC_SOCKET_CONCURRENCY`).

use std::sync::Arc;

use serde_json::Value;
use socketioxide::extract::{AckSender, SocketRef};

use crate::{
    conn::Conn,
    errors::{ClientError, ErrorCode},
    rpc::{Identity, Kind, Rpc, RpcError},
};

/// How long a client refused for RPCs in flight should wait: about one answer's time.
const RETRY_BUSY: std::time::Duration = std::time::Duration::from_millis(100);

/// Forwards `event` and acks the outcome (when the client asked for an ack).
pub(super) async fn forward(
    socket: &SocketRef,
    rpc: &Arc<Rpc>,
    conn: &Arc<Conn>,
    event: &str,
    payload: Result<Value, socketioxide::ParserError>,
    ack: AckSender,
) -> Result<(), ErrorCode> {
    let expects_answer = ack.has_ack();
    // A call whose socket went away is dropped, and its places (socket, tenant, replica) with
    // it: otherwise reconnecting would get around the socket's bound.
    let outcome = tokio::select! {
        outcome = call(socket, rpc, conn, event, payload, expects_answer) => outcome,
        () = conn.closed() => return Ok(()),
    };
    let code = outcome.as_ref().err().map(|e| e.code);
    if expects_answer {
        let _ = match outcome {
            Ok(result) => ack.send(&serde_json::json!({ "ok": true, "result": result })),
            Err(error) => ack.send(&error.ack()),
        };
    }
    code.map_or(Ok(()), Err)
}

async fn call(
    socket: &SocketRef,
    rpc: &Arc<Rpc>,
    conn: &Arc<Conn>,
    event: &str,
    payload: Result<Value, socketioxide::ParserError>,
    expects_answer: bool,
) -> Result<Value, ClientError> {
    let data = match payload {
        Ok(data) => data,
        // An event with no argument at all (`socket.emit("ping")`): socketioxide's first-element
        // decoder has no other way to say so. The backend gets `data: null`.
        Err(e) if e.to_string().starts_with("first element not found") => Value::Null,
        Err(_) => return Err(ClientError::new(ErrorCode::InvalidPayload, "the payload is not JSON")),
    };
    let Some(_slot) = conn.rpc_slot(rpc.settings().per_socket) else {
        return Err(ClientError::rate_limited(
            "too many RPCs in flight on this socket; wait for their acks",
            RETRY_BUSY,
        ));
    };
    let identity = conn.identity();
    let kind = if expects_answer { Kind::Rpc } else { Kind::Event };
    let admitted = rpc.admit(&identity.tenant, kind).map_err(client_error)?;
    let sender = Identity::of(&identity);
    rpc.call(&admitted, kind, event, &data, Some(sender), socket.id.as_str()).await.map_err(client_error)
}

/// The coded error the client gets.
pub(super) fn client_error(error: RpcError) -> ClientError {
    match error {
        RpcError::Timeout => ClientError::new(
            ErrorCode::RpcTimeout,
            "the backend did not answer in time; it may still have acted on the call",
        ),
        RpcError::Unavailable(why) => ClientError::new(ErrorCode::RpcUnavailable, why),
        RpcError::Rejected(backend) => {
            let message = if backend.message.is_empty() {
                "the backend refused the call".to_owned()
            } else {
                backend.message.clone()
            };
            ClientError { backend: Some(Box::new(backend)), ..ClientError::new(ErrorCode::RpcRejected, message) }
        }
        RpcError::Busy(why) => ClientError::rate_limited(why, RETRY_BUSY),
    }
}
