//! Lifecycle events: what the gateway tells backends about who is connected (webhooks and the
//! Redis Stream sink, `PROTOCOL.md` "Lifecycle events"), and the webhook signature.
//!
//! A webhook request's body is a [`Batch`]; its `Roomcast-Signature` header is
//! `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>" under the webhook secret>`. Check it
//! with [`verify`] before trusting the body, and deduplicate on [`Event::id`]: delivery is at
//! least once (a batch whose answer was lost is sent again).
//!
//! ```
//! use roomcast_publisher::events::{self, Batch};
//!
//! let secret = b"a webhook secret of 32 bytes or more";
//! let body = br#"{"events":[{"id":"e1","type":"user.online","ts":1,"tenant":"acme","user":"ada"}]}"#;
//! let header = events::sign(secret, 1_700_000_000, body);
//! // In the receiver: the raw body, the header and the current time.
//! events::verify(secret, &header, body, 1_700_000_010, events::DEFAULT_TOLERANCE).unwrap();
//! let batch: Batch = serde_json::from_slice(body).unwrap();
//! assert_eq!(batch.events[0].user.as_deref(), Some("ada"));
//! ```

use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The header carrying a webhook request's signature.
pub const SIGNATURE_HEADER: &str = "Roomcast-Signature";

/// How old a signature [`verify`] accepts by default (and the replay window the README
/// documents): 5 minutes, either way.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// The event types, as they appear in [`Event::kind`].
pub mod types {
    /// A user's first connection in a tenant, cluster-wide.
    pub const USER_ONLINE: &str = "user.online";
    /// A user's last connection in a tenant ended (after the presence grace period).
    pub const USER_OFFLINE: &str = "user.offline";
    /// A project or channel room's first member.
    pub const ROOM_OCCUPIED: &str = "room.occupied";
    /// A project or channel room's last member left (after the grace period).
    pub const ROOM_VACATED: &str = "room.vacated";
    /// A user's first connection in a project or channel room.
    pub const MEMBER_JOINED: &str = "member.joined";
    /// A user's last connection in a project or channel room left (after the grace period).
    pub const MEMBER_LEFT: &str = "member.left";
    /// A socket's `auth:refresh` was refused (`code` says why).
    pub const TOKEN_REFRESH_FAILED: &str = "token.refresh_failed";
    /// A connection was refused at connect (`code` only; rate-bounded per replica).
    pub const CONNECTION_REFUSED: &str = "connection.refused";
    /// Every type.
    pub const ALL: [&str; 8] = [
        USER_ONLINE,
        USER_OFFLINE,
        ROOM_OCCUPIED,
        ROOM_VACATED,
        MEMBER_JOINED,
        MEMBER_LEFT,
        TOKEN_REFRESH_FAILED,
        CONNECTION_REFUSED,
    ];
}

/// One lifecycle event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Unique per event: the same event delivered twice carries the same id.
    pub id: String,
    /// One of [`types`].
    #[serde(rename = "type")]
    pub kind: String,
    /// When the transition happened, ms since the Unix epoch (Redis' clock for presence events).
    pub ts: u64,
    /// The tenant (absent only on `connection.refused` before the token was read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The user (user and member events, `token.refresh_failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The project of room and member events in a project room.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// The channel of room and member events in a channel room.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// The error code of `token.refresh_failed` and `connection.refused`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

/// A webhook request's body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// The events, at most the gateway's batch size.
    pub events: Vec<Event>,
}

/// Why [`verify`] refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The header is not `t=<seconds>,v1=<hex>[,v1=<hex>…]`.
    #[error("malformed Roomcast-Signature header")]
    Malformed,
    /// The timestamp is further from now than the tolerance: a replay, or a clock far off.
    #[error("signature timestamp outside the tolerance")]
    Expired,
    /// No `v1` signature matches the body under the secret.
    #[error("signature does not match")]
    Mismatch,
}

fn mac(secret: &[u8], timestamp: u64, body: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `Roomcast-Signature` header value for `body` sent at `timestamp` (unix seconds).
pub fn sign(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let digest = mac(secret, timestamp, body).finalize().into_bytes();
    let mut hex = String::with_capacity(64);
    for byte in digest {
        hex.push_str(&format!("{byte:02x}"));
    }
    format!("t={timestamp},v1={hex}")
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// Checks `header` (the `Roomcast-Signature` value) against the raw `body`: the timestamp within
/// `tolerance` of `now` (unix seconds) and one `v1` signature matching, compared in constant time.
pub fn verify(secret: &[u8], header: &str, body: &[u8], now: u64, tolerance: Duration) -> Result<(), SignatureError> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = Some(t.parse::<u64>().map_err(|_| SignatureError::Malformed)?),
            Some(("v1", v)) => signatures.push(unhex(v).ok_or(SignatureError::Malformed)?),
            Some(_) => {} // other schemes: ignored, so new ones can be added
            None => return Err(SignatureError::Malformed),
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed);
    }
    if now.abs_diff(timestamp) > tolerance.as_secs() {
        return Err(SignatureError::Expired);
    }
    let expected = mac(secret, timestamp, body);
    if signatures.iter().any(|s| expected.clone().verify_slice(s).is_ok()) {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn a_signature_verifies_and_anything_changed_does_not() {
        let body = br#"{"events":[]}"#;
        let header = sign(SECRET, 1000, body);
        assert!(header.starts_with("t=1000,v1="));
        assert_eq!(verify(SECRET, &header, body, 1000, DEFAULT_TOLERANCE), Ok(()));
        assert_eq!(verify(SECRET, &header, body, 1300, DEFAULT_TOLERANCE), Ok(()));
        assert_eq!(verify(SECRET, &header, body, 1301, DEFAULT_TOLERANCE), Err(SignatureError::Expired));
        assert_eq!(
            verify(SECRET, &header, b"{\"events\":[1]}", 1000, DEFAULT_TOLERANCE),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(verify(b"another secret", &header, body, 1000, DEFAULT_TOLERANCE), Err(SignatureError::Mismatch));
        // The timestamp is signed: moving it breaks the signature.
        let moved = header.replacen("t=1000", "t=1001", 1);
        assert_eq!(verify(SECRET, &moved, body, 1000, DEFAULT_TOLERANCE), Err(SignatureError::Mismatch));
        // Several v1 (a rotation): one match is enough.
        let rotated = format!("{},v1={}", sign(b"old", 1000, body), &header[header.find("v1=").unwrap() + 3..]);
        assert_eq!(verify(SECRET, &rotated, body, 1000, DEFAULT_TOLERANCE), Ok(()));
    }

    #[test]
    fn malformed_headers_are_refused() {
        for header in ["", "t=1", "v1=00", "t=x,v1=00", "t=1,v1=0g", "t=1,v1=abc", "garbage", "t=1,v1"] {
            assert_eq!(verify(SECRET, header, b"", 1, DEFAULT_TOLERANCE), Err(SignatureError::Malformed), "{header}");
        }
    }

    #[test]
    fn events_read_as_documented() {
        let json = r#"{"id":"a-1","type":"member.left","ts":5,"tenant":"t","user":"u","project":"p","extra":1}"#;
        let event: Event = serde_json::from_str(json).unwrap();
        assert_eq!(event.kind, types::MEMBER_LEFT);
        assert_eq!(event.project.as_deref(), Some("p"));
        assert_eq!(event.channel, None);
        let back = serde_json::to_string(&event).unwrap();
        assert_eq!(back, r#"{"id":"a-1","type":"member.left","ts":5,"tenant":"t","user":"u","project":"p"}"#);
    }
}
