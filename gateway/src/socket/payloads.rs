//! The payloads of client events and of their acks, as types: what a client may send is
//! defined here once, and a payload that does not fit gets `invalid_payload` with the shape it
//! should have had. Ids and grants are checked by the handlers (`invalid_room`, `forbidden`).

use serde::{
    Deserialize, Deserializer, Serialize,
    de::{DeserializeOwned, Error as _},
};
use serde_json::Value;

use crate::{
    errors::{ClientError, ErrorCode},
    presence::PresentUser,
};

/// Parses `payload`, which must be an object, as `T`, or answers `invalid_payload` with
/// `shape`. (serde would also fill a struct from an array, field by field.)
pub(super) fn parse<T: DeserializeOwned>(payload: Result<Value, ClientError>, shape: &str) -> Result<T, ClientError> {
    let invalid = || ClientError::new(ErrorCode::InvalidPayload, shape.to_owned());
    let payload = payload?;
    if !payload.is_object() {
        return Err(invalid());
    }
    serde_json::from_value(payload).map_err(|_| invalid())
}

/// A room named by a request: `{ project: "<id>" }` or `{ channel: "<id>" }`. The tenant
/// always comes from the token, so a client can never name a room of another tenant.
///
/// `Some(None)` is a field given as `null`: named, but not a valid id.
#[derive(Debug, Deserialize)]
pub(super) struct RoomRef {
    #[serde(default, deserialize_with = "present")]
    pub project: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    pub channel: Option<Option<String>>,
}

/// A field that is there, even as `null`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// `since`, which must be an object (or null) like the payload itself.
fn since_object<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Since>, D::Error> {
    match Option::<serde_json::Map<String, Value>>::deserialize(d)? {
        None => Ok(None),
        Some(map) => serde_json::from_value(Value::Object(map)).map(Some).map_err(D::Error::custom),
    }
}

/// What every room request says when it does not fit.
pub(super) const ROOM_SHAPE: &str = "payload must be an object: { project: \"<id>\" } or { channel: \"<id>\" }";

/// `join` `{ project | channel, since? }`.
#[derive(Debug, Deserialize)]
pub(super) struct Join {
    #[serde(flatten)]
    pub room: RoomRef,
    #[serde(default, deserialize_with = "since_object")]
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

/// `history` `{ project | channel, after?, limit? }`.
#[derive(Debug, Deserialize)]
pub(super) struct History {
    #[serde(flatten)]
    pub room: RoomRef,
    #[serde(default)]
    pub after: Option<u64>,
    #[serde(default)]
    pub limit: Option<u64>,
}

pub(super) const HISTORY_SHAPE: &str =
    "payload must be { project | channel: \"<id>\", after?: <non-negative integer>, limit?: <positive integer> }";

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
    /// `history`: the room's epoch and offset, events and `more` (as `GET /v1/history`).
    History(serde_json::Map<String, Value>),
    /// `room:occupancy`: connections and distinct users, cluster-wide.
    Occupancy { room: String, connections: u64, users: u64 },
    /// `publish`: the receipt, as `POST /v1/publish` answers it.
    Published {
        id: String,
        room: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        epoch: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        duplicate: Option<bool>,
    },
}

/// `fuzz/`'s `payloads` target: whatever a client sends as a payload gives a typed request or
/// `invalid_payload`, never a panic; a join names exactly the room the payload names, in the
/// token's tenant, and succeeds exactly when that id is valid and granted.
#[cfg(feature = "fuzzing")]
pub(crate) fn fuzz_payload(payload: Value) {
    use crate::auth::{Identity, Scope};
    // What the token grants (sorted, as a scope keeps them), and the model checked against it.
    const PROJECTS: [&str; 2] = ["a", "p1"];
    const CHANNELS: [&str; 2] = ["b", "c1"];
    let identity = Identity {
        tenant: "t1".into(),
        user: "u".into(),
        projects: Scope::Only(PROJECTS.map(String::from).to_vec()),
        channels: Scope::Only(CHANNELS.map(String::from).to_vec()),
        publish: Scope::Only(Vec::new()),
        exp: 0,
        jti: None,
        iat: None,
        claims: None,
        observer: false,
    };
    if let Ok(join) = parse::<Join>(Ok(payload.clone()), JOIN_SHAPE) {
        let named = match (&join.room.project, &join.room.channel) {
            (Some(Some(id)), None) => Some((roomcast_publisher::RoomKind::Project, id.as_str(), PROJECTS)),
            (None, Some(Some(id))) => Some((roomcast_publisher::RoomKind::Channel, id.as_str(), CHANNELS)),
            _ => None,
        };
        match (crate::socket::rooms::requested_room(&join.room, &identity), named) {
            (Ok(room), Some((kind, id, granted))) => {
                assert_eq!((room.tenant_id(), room.kind(), room.id()), ("t1", kind, Some(id)));
                assert!(granted.contains(&id), "{id:?} is not granted");
            }
            (Ok(room), None) => panic!("joined {room} from a payload naming no single room"),
            (Err(e), Some((_, id, granted))) => {
                let valid = roomcast_publisher::validate_id(id).is_ok();
                assert!(!valid || !granted.contains(&id), "{id:?} refused: {e:?}");
                assert_eq!(e.code, if valid { ErrorCode::Forbidden } else { ErrorCode::InvalidRoom });
            }
            (Err(e), None) => assert_eq!(e.code, ErrorCode::InvalidPayload),
        }
    }
    let refused = [
        parse::<Leave>(Ok(payload.clone()), ROOM_SHAPE).err(),
        parse::<Refresh>(Ok(payload.clone()), REFRESH_SHAPE).err(),
        parse::<Typing>(Ok(payload.clone()), TYPING_SHAPE).err(),
        parse::<PresenceList>(Ok(payload.clone()), PRESENCE_LIST_SHAPE).err(),
        parse::<History>(Ok(payload.clone()), HISTORY_SHAPE).err(),
        parse::<PresenceUpdate>(Ok(payload), PRESENCE_UPDATE_SHAPE).err(),
    ];
    for error in refused.into_iter().flatten() {
        assert_eq!(error.code, ErrorCode::InvalidPayload);
    }
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
            json!({"project": "p", "since": [4, "e"]}),
            json!(["p"]),
        ] {
            let err = code(bad.clone());
            assert_eq!((err.code, err.message.as_str()), (ErrorCode::InvalidPayload, JOIN_SHAPE), "{bad}");
        }
        let join: Join = parse(Ok(json!({"channel": "c", "since": null, "extra": 1})), JOIN_SHAPE).unwrap();
        assert_eq!((join.room.channel, join.room.project, join.since.is_none()), (Some(Some("c".into())), None, true));
        let join: Join = parse(Ok(json!({"project": "p", "since": {"offset": 2, "epoch": "e"}})), JOIN_SHAPE).unwrap();
        assert_eq!(join.since.map(|s| (s.offset, s.epoch)), Some((2, "e".to_owned())));
        assert!(parse::<Typing>(Ok(json!({"channel": "c", "typing": "yes"})), TYPING_SHAPE).is_err());
        // Arrays are not objects, though serde would fill a struct from one.
        assert!(parse::<Typing>(Ok(json!(["c", true])), TYPING_SHAPE).is_err());
        assert!(parse::<Refresh>(Ok(json!(["jwt"])), REFRESH_SHAPE).is_err());
        assert!(parse::<PresenceUpdate>(Ok(json!(["away"])), PRESENCE_UPDATE_SHAPE).is_err());
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

    mod prop {
        use super::super::*;
        use crate::auth::{Identity, Scope};
        use proptest::prelude::*;

        proptest! {
            /// Whatever a client sends as a payload: a typed request or `invalid_payload`, never
            /// a panic; and a room it names is always in the token's tenant.
            #[test]
            fn prop_any_payload_is_parsed_or_refused_with_a_code(payload in crate::prop::json()) {
                let identity = Identity {
                    tenant: "t1".into(),
                    user: "u".into(),
                    projects: Scope::All,
                    channels: Scope::All,
                    publish: Scope::Only(Vec::new()),
                    exp: 0, jti: None, iat: None, claims: None, observer: false,
                };
                if let Ok(join) = parse::<Join>(Ok(payload.clone()), JOIN_SHAPE)
                    && let Ok(room) = crate::socket::rooms::requested_room(&join.room, &identity)
                {
                    prop_assert_eq!(room.tenant_id(), "t1");
                }
                let refused = [
                    parse::<Leave>(Ok(payload.clone()), ROOM_SHAPE).err(),
                    parse::<Refresh>(Ok(payload.clone()), REFRESH_SHAPE).err(),
                    parse::<Typing>(Ok(payload.clone()), TYPING_SHAPE).err(),
                    parse::<PresenceList>(Ok(payload.clone()), PRESENCE_LIST_SHAPE).err(),
                    parse::<PresenceUpdate>(Ok(payload), PRESENCE_UPDATE_SHAPE).err(),
                ];
                for error in refused.into_iter().flatten() {
                    prop_assert_eq!(error.code, ErrorCode::InvalidPayload);
                }
            }
        }
    }
}
