//! What travels on a room's channel, as replicas read and write it: the publishers' envelopes
//! (events and typing indicators, defined by the wire format in `roomcast_publisher::wire` and
//! PROTOCOL.md) and what only replicas send each other — presence changes, and the replica a
//! typing indicator came from. Those are defined here, so how replicas talk among themselves
//! can change without a semver change of the publisher crate.

use roomcast_publisher::wire::{self, ControlEnvelope, TypingEnvelope};
use serde::{Deserialize, Serialize};

pub use roomcast_publisher::wire::{EventEnvelope, VERSION};

/// One message on a room's channel.
///
/// Serialized with a `"type"` tag like the publishers' envelopes; parse with
/// [`Envelope::from_json`].
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Envelope {
    /// An application event for the room's members.
    Event(EventEnvelope),
    /// A typing indicator for a channel room.
    Typing(Typing),
    /// A presence change in a project or channel room; only replicas send these.
    Presence(PresenceEnvelope),
    /// An instruction about the room's sockets (the control API).
    Control(ControlEnvelope),
}

/// A typing indicator, with the replica that sent it when a replica did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Typing {
    /// The indicator as publishers send it.
    #[serde(flatten)]
    pub indicator: TypingEnvelope,
    /// Replica that already delivered this indicator to its own sockets; absent for publishers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

/// What happened to a user's presence in a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceAction {
    /// The user's first connection anywhere entered the room.
    Join,
    /// The user's last connection anywhere left the room.
    Leave,
    /// The user changed status.
    Update,
}

impl PresenceAction {
    /// The Socket.IO event clients receive: `presence:join`, `presence:leave`, `presence:update`.
    pub fn event(self) -> &'static str {
        match self {
            PresenceAction::Join => "presence:join",
            PresenceAction::Leave => "presence:leave",
            PresenceAction::Update => "presence:update",
        }
    }
}

/// A presence change, as replicas publish it on the room's channel.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PresenceEnvelope {
    /// Format version, [`VERSION`].
    pub v: u8,
    /// Canonical name of a project or channel room.
    pub room: String,
    /// Join, leave or update.
    pub action: PresenceAction,
    /// The user.
    pub user: String,
    /// The user's status (join and update).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// When the user's presence in the room began, ms since the Unix epoch (join).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
    /// When this was published, ms since the Unix epoch.
    pub ts: u64,
}

impl From<wire::Envelope> for Envelope {
    /// What a publisher sends, as this replica sends it (a typing indicator without origin).
    fn from(envelope: wire::Envelope) -> Self {
        match envelope {
            wire::Envelope::Event(event) => Envelope::Event(event),
            wire::Envelope::Typing(indicator) => Envelope::Typing(Typing { indicator, origin: None }),
            wire::Envelope::Control(control) => Envelope::Control(control),
        }
    }
}

/// The tag alone, read first so the body can be parsed straight into its struct (serde cannot
/// hand a raw `data` through an internally tagged enum).
#[derive(Deserialize)]
struct Tag {
    #[serde(rename = "type")]
    kind: Kind,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum Kind {
    Event,
    Typing,
    Presence,
    Control,
}

impl Envelope {
    /// Parses a message from its JSON text.
    pub fn from_json(json: &str) -> Result<Envelope, serde_json::Error> {
        let Tag { kind } = serde_json::from_str(json)?;
        Ok(match kind {
            Kind::Event => Envelope::Event(serde_json::from_str(json)?),
            Kind::Typing => Envelope::Typing(serde_json::from_str(json)?),
            Kind::Presence => Envelope::Presence(serde_json::from_str(json)?),
            Kind::Control => Envelope::Control(serde_json::from_str(json)?),
        })
    }

    /// A typing indicator this replica (`origin`) sends.
    pub fn typing(room: String, user: String, typing: bool, origin: &str) -> Envelope {
        Envelope::Typing(Typing {
            indicator: TypingEnvelope { v: VERSION, room, user, typing, ts: wire::now_ms() },
            origin: Some(origin.to_owned()),
        })
    }

    /// The room the message is addressed to.
    pub fn room(&self) -> &str {
        match self {
            Envelope::Event(e) => &e.room,
            Envelope::Typing(t) => &t.indicator.room,
            Envelope::Presence(p) => &p.room,
            Envelope::Control(c) => &c.room,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_read_what_publishers_and_replicas_send() {
        let typing = r#"{"type":"typing","v":1,"room":"tenant:t:channel:c","user":"bot","typing":true,"ts":1}"#;
        let Envelope::Typing(t) = Envelope::from_json(typing).unwrap() else { panic!("not typing") };
        assert_eq!((t.indicator.user.as_str(), t.indicator.typing, t.origin), ("bot", true, None));

        let sent = Envelope::typing("tenant:t:channel:c".into(), "u1".into(), false, "node-a");
        let json = serde_json::to_string(&sent).unwrap();
        assert!(json.starts_with(r#"{"type":"typing","v":1,"room":"tenant:t:channel:c","user":"u1""#), "{json}");
        let Envelope::Typing(back) = Envelope::from_json(&json).unwrap() else { panic!("not typing") };
        assert_eq!(back.origin.as_deref(), Some("node-a"));
        // What a replica sends is still a valid publisher envelope for anyone reading the channel.
        assert!(roomcast_publisher::wire::Envelope::from_json(&json).is_ok());

        let presence = r#"{"type":"presence","v":1,"room":"tenant:t:project:p","action":"join","user":"u","ts":2}"#;
        let Envelope::Presence(p) = Envelope::from_json(presence).unwrap() else { panic!("not presence") };
        assert_eq!((p.action, p.status), (PresenceAction::Join, None));

        let event = r#"{"type":"event","v":1,"id":"e","room":"tenant:t","event":"x","data":{"a":1},"ts":3}"#;
        let Envelope::Event(e) = Envelope::from_json(event).unwrap() else { panic!("not an event") };
        assert_eq!(e.data.get(), r#"{"a":1}"#);

        for bad in ["", "{}", r#"{"type":"other"}"#, r#"{"type":"presence","v":1}"#, "[1]"] {
            assert!(Envelope::from_json(bad).is_err(), "{bad:?}");
        }
    }

    mod prop {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            /// What arrives on a room's channel comes from any publisher.
            #[test]
            fn prop_any_message_parses_or_is_refused_without_panicking(
                text in "\\PC{0,300}",
                value in crate::prop::json(),
                kind in prop_oneof![Just("event"), Just("typing"), Just("presence")],
            ) {
                let _ = Envelope::from_json(&text);
                let mut tagged = value;
                if let serde_json::Value::Object(map) = &mut tagged {
                    map.insert("type".into(), kind.into());
                }
                if let Ok(envelope) = Envelope::from_json(&tagged.to_string()) {
                    let _ = envelope.room();
                }
            }
        }
    }
}
