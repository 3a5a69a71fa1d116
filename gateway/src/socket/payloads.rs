//! The payloads of client events and of their acks, as types: what a client may send is
//! defined here once, and a payload that does not fit gets `invalid_payload` with the shape it
//! should have had. Ids and grants are checked by the handlers (`invalid_room`, `forbidden`).

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;

use crate::{
    errors::{ClientError, ErrorCode},
    presence::PresentUser,
};

/// Parses `payload` as `T`, or answers `invalid_payload` with `shape`.
pub(super) fn parse<T: DeserializeOwned>(payload: Result<Value, ClientError>, shape: &str) -> Result<T, ClientError> {
    serde_json::from_value(payload?).map_err(|_| ClientError::new(ErrorCode::InvalidPayload, shape.to_owned()))
}

/// A room named by a request: `{ project: "<id>" }` or `{ channel: "<id>" }`. The tenant
/// always comes from the token, so a client can never name a room of another tenant.
#[derive(Debug, Deserialize)]
pub(super) struct RoomRef {
    pub project: Option<String>,
    pub channel: Option<String>,
}

/// What every room request says when it does not fit.
pub(super) const ROOM_SHAPE: &str = "payload must be an object: { project: \"<id>\" } or { channel: \"<id>\" }";

/// `join` `{ project | channel, since? }`.
#[derive(Debug, Deserialize)]
pub(super) struct Join {
    #[serde(flatten)]
    pub room: RoomRef,
    #[serde(default)]
    pub since: Option<Since>,
}

pub(super) const JOIN_SHAPE: &str = "payload must be { project | channel: \"<id>\", since?: { offset: <non-negative \
                                     integer>, epoch: \"<string>\" } }";

/// Where a rejoining client's history stopped: the last `offset` it saw in `epoch`.
#[derive(Debug, Deserialize)]
pub(super) struct Since {
    pub offset: u64,
    pub epoch: String,
}

/// `leave` `{ project | channel }`.
#[derive(Debug, Deserialize)]
pub(super) struct Leave {
    #[serde(flatten)]
    pub room: RoomRef,
}

/// `auth:refresh` `{ token }`.
#[derive(Debug, Deserialize)]
pub(super) struct Refresh {
    pub token: String,
}

pub(super) const REFRESH_SHAPE: &str = "payload must be { token: \"<jwt>\" }";

/// `typing` `{ channel, typing }`.
#[derive(Debug, Deserialize)]
pub(super) struct Typing {
    pub channel: String,
    pub typing: bool,
}

pub(super) const TYPING_SHAPE: &str = "payload must be { channel: \"<id>\", typing: true|false }";

/// `presence:list` `{ project | channel, offset?, limit? }`.
#[derive(Debug, Deserialize)]
pub(super) struct PresenceList {
    #[serde(flatten)]
    pub room: RoomRef,
    #[serde(default)]
    pub offset: Option<u64>,
    #[serde(default)]
    pub limit: Option<u64>,
}

pub(super) const PRESENCE_LIST_SHAPE: &str =
    "payload must be { project | channel: \"<id>\", offset?: <non-negative integer>, limit?: <non-negative integer> }";

/// `presence:update` `{ status }`.
#[derive(Debug, Deserialize)]
pub(super) struct PresenceUpdate {
    pub status: String,
}

pub(super) const PRESENCE_UPDATE_SHAPE: &str = "payload must be { status: \"online\" | \"away\" }";

/// A successful ack, `{ ok: true, ...ack }`; failures are [`ClientError::ack`].
#[derive(Debug, Serialize)]
pub(super) struct Success {
    ok: bool,
    #[serde(flatten)]
    ack: Ack,
}

impl From<Ack> for Success {
    fn from(ack: Ack) -> Self {
        Success { ok: true, ack }
    }
}

/// What a successful operation answers, besides `ok: true`.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub(super) enum Ack {
    /// `join`: the room and, with history, its position and whether `since` was recovered.
    Joined {
        room: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
        #[serde(skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        epoch: Option<String>,
    },
    /// `leave`.
    Left { room: String },
    /// `auth:refresh`: the new expiry and the rooms the new token no longer grants.
    Refreshed { exp: u64, left: Vec<String> },
    /// `typing`: `throttled` when the indicator was recorded but not sent again yet.
    Typing {
        #[serde(skip_serializing_if = "Option::is_none")]
        throttled: Option<bool>,
    },
    /// `presence:list`: a page of users, the total and the next page's offset.
    PresencePage { room: String, users: Vec<PresentUser>, total: u64, next: Option<u64> },
    /// `presence:update`.
    Status { status: &'static str },
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn payloads_that_do_not_fit_say_the_shape() {
        let code = |v: Value| parse::<Join>(Ok(v), JOIN_SHAPE).unwrap_err();
        for bad in [
            json!("p1"),
            Value::Null,
            json!({"project": 7}),
            json!({"project": "p", "since": {"offset": -1, "epoch": "e"}}),
            json!({"project": "p", "since": {"offset": 1}}),
        ] {
            let err = code(bad.clone());
            assert_eq!((err.code, err.message.as_str()), (ErrorCode::InvalidPayload, JOIN_SHAPE), "{bad}");
        }
        let join: Join = parse(Ok(json!({"channel": "c", "since": null, "extra": 1})), JOIN_SHAPE).unwrap();
        assert_eq!((join.room.channel.as_deref(), join.room.project, join.since.is_none()), (Some("c"), None, true));
        assert!(parse::<Typing>(Ok(json!({"channel": "c", "typing": "yes"})), TYPING_SHAPE).is_err());
        assert!(parse::<PresenceList>(Ok(json!({"channel": "c", "limit": 1.5})), PRESENCE_LIST_SHAPE).is_err());
        let missing = ClientError::new(ErrorCode::InvalidPayload, "payload is missing or not JSON");
        assert_eq!(
            parse::<Refresh>(Err(missing), REFRESH_SHAPE).unwrap_err().message,
            "payload is missing or not JSON"
        );
    }

    #[test]
    fn acks_keep_their_documented_shape() {
        let joined = Ack::Joined { room: "r".into(), recovered: None, offset: Some(3), epoch: Some("e".into()) };
        assert_eq!(
            serde_json::to_value(Success::from(joined)).unwrap(),
            json!({"ok": true, "room": "r", "offset": 3, "epoch": "e"})
        );
        let typing = Ack::Typing { throttled: None };
        assert_eq!(serde_json::to_value(Success::from(typing)).unwrap(), json!({"ok": true}));
        let page = Ack::PresencePage { room: "r".into(), users: vec![], total: 0, next: None };
        assert_eq!(
            serde_json::to_value(Success::from(page)).unwrap(),
            json!({"ok": true, "room": "r", "users": [], "total": 0, "next": null})
        );
    }
}
