//! Room names.
//!
//! Every event in Roomcast is addressed to one room. A room belongs to exactly one tenant and
//! its canonical name always starts with `tenant:{t}`, so a name can never point into another
//! tenant. The names are part of the wire format: the gateway, this crate and any publisher in
//! another language must build them byte for byte the same way.
//!
//! | kind      | name                          |
//! |-----------|-------------------------------|
//! | tenant    | `tenant:{t}`                  |
//! | user      | `tenant:{t}:user:{u}`         |
//! | project   | `tenant:{t}:project:{p}`      |
//! | channel   | `tenant:{t}:channel:{c}`      |

use std::fmt;

/// Longest identifier accepted, in bytes.
pub const MAX_ID_LEN: usize = 128;

/// Why an identifier (tenant, user, project or channel id) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// The identifier is the empty string.
    #[error("id is empty")]
    Empty,
    /// The identifier is longer than [`MAX_ID_LEN`] bytes.
    #[error("id is longer than {MAX_ID_LEN} bytes")]
    TooLong,
    /// The identifier holds a character outside `A-Z a-z 0-9 _ - . @ | + =`.
    #[error("id contains a character outside A-Z a-z 0-9 _ - . @ | + =")]
    BadCharacter,
}

/// Checks that `id` may be used as a tenant, user, project or channel id.
///
/// Ids are 1 to [`MAX_ID_LEN`] bytes of `A-Z a-z 0-9 _ - . @ | + =`. The set is deliberately
/// narrow: `:` separates the parts of a room name, `{`/`}` delimit Redis Cluster hash tags and
/// `*` means "all" in token claims, so none of them can appear inside an id. It still admits the
/// common shapes of real ids: UUIDs, e-mail addresses, `auth0|abc123`, base64url.
pub fn validate_id(id: &str) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::Empty);
    }
    if id.len() > MAX_ID_LEN {
        return Err(IdError::TooLong);
    }
    let ok =
        id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'@' | b'|' | b'+' | b'='));
    if ok { Ok(()) } else { Err(IdError::BadCharacter) }
}

/// The kind of a room, without its identifiers. Useful as a bounded metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RoomKind {
    /// Every connection of a tenant.
    Tenant,
    /// Every connection of one user.
    User,
    /// Members of a project.
    Project,
    /// Members of a channel.
    Channel,
}

impl RoomKind {
    /// The kind's name as used in room names and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            RoomKind::Tenant => "tenant",
            RoomKind::User => "user",
            RoomKind::Project => "project",
            RoomKind::Channel => "channel",
        }
    }
}

/// A room, addressed by its tenant and (except for the tenant room) one more id.
///
/// Construct it with [`Room::tenant`], [`Room::user`], [`Room::project`] or [`Room::channel`],
/// which validate every id, or parse a canonical name with [`Room::parse`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Room {
    kind: RoomKind,
    tenant: String,
    id: Option<String>,
}

impl Room {
    /// The room holding every connection of tenant `t`.
    pub fn tenant(t: impl Into<String>) -> Result<Room, IdError> {
        Self::build(RoomKind::Tenant, t.into(), None)
    }

    /// The room holding every connection of user `u` in tenant `t`.
    pub fn user(t: impl Into<String>, u: impl Into<String>) -> Result<Room, IdError> {
        Self::build(RoomKind::User, t.into(), Some(u.into()))
    }

    /// The room of project `p` in tenant `t`.
    pub fn project(t: impl Into<String>, p: impl Into<String>) -> Result<Room, IdError> {
        Self::build(RoomKind::Project, t.into(), Some(p.into()))
    }

    /// The room of channel `c` in tenant `t`.
    pub fn channel(t: impl Into<String>, c: impl Into<String>) -> Result<Room, IdError> {
        Self::build(RoomKind::Channel, t.into(), Some(c.into()))
    }

    fn build(kind: RoomKind, tenant: String, id: Option<String>) -> Result<Room, IdError> {
        validate_id(&tenant)?;
        if let Some(id) = &id {
            validate_id(id)?;
        }
        Ok(Room { kind, tenant, id })
    }

    /// Parses a canonical room name such as `tenant:t1:project:p1`.
    ///
    /// Returns `None` for anything that [`Room`]'s `Display` would not have produced.
    pub fn parse(name: &str) -> Option<Room> {
        let mut parts = name.split(':');
        if parts.next()? != "tenant" {
            return None;
        }
        let tenant = parts.next()?.to_owned();
        let room = match (parts.next(), parts.next()) {
            (None, None) => Room::tenant(tenant),
            (Some("user"), Some(id)) => Room::user(tenant, id),
            (Some("project"), Some(id)) => Room::project(tenant, id),
            (Some("channel"), Some(id)) => Room::channel(tenant, id),
            _ => return None,
        };
        if parts.next().is_some() {
            return None;
        }
        room.ok()
    }

    /// The room's kind.
    pub fn kind(&self) -> RoomKind {
        self.kind
    }

    /// The tenant the room belongs to.
    pub fn tenant_id(&self) -> &str {
        &self.tenant
    }

    /// The user, project or channel id; `None` for a tenant room.
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }
}

impl fmt::Display for Room {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.id {
            None => write!(f, "tenant:{}", self.tenant),
            Some(id) => write!(f, "tenant:{}:{}:{}", self.tenant, self.kind.as_str(), id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_names() {
        assert_eq!(Room::tenant("t1").unwrap().to_string(), "tenant:t1");
        assert_eq!(Room::user("t1", "u1").unwrap().to_string(), "tenant:t1:user:u1");
        assert_eq!(Room::project("t1", "p1").unwrap().to_string(), "tenant:t1:project:p1");
        assert_eq!(Room::channel("t1", "c1").unwrap().to_string(), "tenant:t1:channel:c1");
    }

    #[test]
    fn ids_that_would_break_names_or_hash_tags_are_refused() {
        for bad in ["", "a:b", "a{b", "a}b", "*", "a b", "é", "a\nb"] {
            assert!(validate_id(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(validate_id(&"x".repeat(MAX_ID_LEN + 1)), Err(IdError::TooLong));
        for good in ["t1", "auth0|5f7c", "ada@example.com", "0b6f-4c2e", "YWJj+w=="] {
            assert_eq!(validate_id(good), Ok(()), "{good:?} refused");
        }
    }

    #[test]
    fn parse_round_trips_and_rejects_foreign_shapes() {
        for name in ["tenant:t1", "tenant:t1:user:u", "tenant:t1:project:p", "tenant:t1:channel:c"] {
            assert_eq!(Room::parse(name).unwrap().to_string(), name);
        }
        for bad in ["", "tenant", "tenant:", "user:t1", "tenant:t1:group:g", "tenant:t1:user:u:x", "tenant:t1:user"] {
            assert!(Room::parse(bad).is_none(), "{bad:?} parsed");
        }
    }

    /// Property tests (`PROPTEST_CASES=100000 cargo test -p roomcast-publisher prop_` for a long
    /// run): room names come from clients and publishers, so parsing must hold for any input.
    mod prop {
        use super::super::*;
        use proptest::prelude::*;

        fn id() -> impl Strategy<Value = String> {
            "[A-Za-z0-9_.@|+=-]{1,128}"
        }

        proptest! {
            #[test]
            fn prop_any_text_parses_without_panicking_and_what_parses_is_canonical(
                name in prop_oneof![
                    "\\PC{0,300}",
                    // Near-valid names, so the canonical check runs often.
                    "tenant:[a-z=|.@+_-]{0,4}(:(user|project|channel|other|):[a-z:{}* ]{0,4}){0,2}",
                ],
            ) {
                if let Some(room) = Room::parse(&name) {
                    prop_assert_eq!(room.to_string(), name);
                }
            }

            #[test]
            fn prop_rooms_built_from_valid_ids_round_trip(t in id(), x in id(), kind in 0..4u8) {
                let room = match kind {
                    0 => Room::tenant(t.clone()),
                    1 => Room::user(t.clone(), x.clone()),
                    2 => Room::project(t.clone(), x.clone()),
                    _ => Room::channel(t.clone(), x.clone()),
                }
                .unwrap();
                let parsed = Room::parse(&room.to_string()).unwrap();
                prop_assert_eq!(parsed.tenant_id(), t.as_str());
                prop_assert_eq!(parsed.kind(), room.kind());
                prop_assert_eq!(parsed.to_string(), room.to_string());
            }

            #[test]
            fn prop_ids_outside_the_grammar_are_refused(bad in "[A-Za-z0-9]{0,5}[^A-Za-z0-9_.@|+=-][A-Za-z0-9]{0,5}") {
                prop_assert!(Room::project("t", bad).is_err());
            }
        }
    }
}
