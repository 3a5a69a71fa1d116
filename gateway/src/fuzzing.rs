//! Entry points of the cargo-fuzz targets in `fuzz/` (built only with the `fuzzing` feature):
//! each takes the fuzzer's bytes as what a client, a publisher or a token holder could send, and
//! panics only where a property breaks. The proptest properties in the same modules check
//! related things on every `cargo test`; `scripts/test` runs each target for a few seconds from
//! the seeds in `fuzz/seeds/`, and `fuzz/README.md` says how to run them long.

use serde_json::{Map, Value};

use crate::{Config, Verifier, envelope::Envelope, errors::ErrorCode};

/// What arrives on a room's channel (from any publisher or replica): parsed or refused, never a
/// panic; the checks delivery makes run on what parses; and what parses is written back the
/// same way (a replica forwards and re-reads envelopes: what it writes, it reads as written).
pub fn envelope(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(envelope) = Envelope::from_json(text) else { return };
    let _ = roomcast_publisher::Room::parse(envelope.room());
    if let Envelope::Control(c) = &envelope {
        let _ = c.validate();
        if let Some(revocation) = &c.revocation {
            let _ = revocation.validate(roomcast_publisher::wire::now_ms());
            let _ = revocation.room();
        }
    }
    // Written as a `kind` envelope, read back, and written again: the same text.
    let (kind, first) = written(&envelope);
    let body = first.strip_prefix('{').expect("an object");
    let tagged = if body == "}" { format!("{{\"type\":\"{kind}\"}}") } else { format!("{{\"type\":\"{kind}\",{body}") };
    let again = Envelope::from_json(&tagged).unwrap_or_else(|e| panic!("{tagged} does not parse again: {e}"));
    assert_eq!(written(&again), (kind, first), "envelope changed on a round trip");
}

/// An envelope's `type` and its body as a replica writes it (without the tag).
fn written(envelope: &Envelope) -> (&'static str, String) {
    let (kind, body) = match envelope {
        Envelope::Event(e) => ("event", serde_json::to_string(e)),
        Envelope::Typing(t) => ("typing", serde_json::to_string(t)),
        Envelope::Presence(p) => ("presence", serde_json::to_string(p)),
        Envelope::Control(c) => ("control", serde_json::to_string(c)),
    };
    (kind, body.expect("a parsed envelope serializes"))
}

/// A client event's payload (JSON): a typed request or `invalid_payload`; a joined room is the
/// one named, in the token's tenant, exactly when the token grants it.
pub fn payloads(data: &[u8]) {
    if let Ok(payload) = serde_json::from_slice::<Value>(data) {
        crate::socket::fuzz_payload(payload);
    }
}

/// A room name: parsed only if canonical, and then it prints back to the same name.
pub fn room(data: &[u8]) {
    let Ok(name) = std::str::from_utf8(data) else { return };
    if let Some(room) = roomcast_publisher::Room::parse(name) {
        assert_eq!(room.to_string(), name);
        assert!(roomcast_publisher::validate_id(room.tenant_id()).is_ok());
    }
}

/// The secret the `token` target's verifier checks signatures with.
const SECRET: &str = "fuzzing-secret-0123456789abcdef0123";

/// Tokens. The first byte picks what the rest is.
/// - Bit 0 clear: the token's text. Refused with one of the token codes (it cannot be signed).
/// - Bit 0 set: JSON claims, signed with the verifier's key. Bit 1 sets `exp` to a time around
///   now (the second byte picks it: from 10 minutes ago to 4 hours ahead), so the gateway's
///   own claim handling is reached and not only the signature library's; bit 2 puts valid
///   `sub` and `tenant` claims where the input has none. An identity that comes out agrees with
///   a model of the claims: its user, tenant and expiry, and its project and channel scopes.
pub fn token(data: &[u8]) {
    use std::sync::OnceLock;
    static VERIFIER: OnceLock<Verifier> = OnceLock::new();
    let verifier = VERIFIER.get_or_init(|| {
        use clap::Parser;
        let config = Config::try_parse_from(["roomcast-gateway", "--jwt-secret", SECRET]).expect("config");
        Verifier::from_config(&config).expect("verifier")
    });
    let verify = |token: &str| {
        use futures_util::FutureExt;
        verifier.verify(token).now_or_never().expect("a shared secret needs no fetch")
    };
    let Some((&mode, rest)) = data.split_first() else { return };
    let token_code = |code: ErrorCode| {
        assert!(matches!(code, ErrorCode::TokenInvalid | ErrorCode::TokenExpired | ErrorCode::Forbidden), "{code:?}")
    };
    if mode & 1 == 0 {
        let Ok(text) = std::str::from_utf8(rest) else { return };
        return token_code(verify(text).expect_err("an unsigned text is not a token").code);
    }
    let Some((&when, rest)) = rest.split_first() else { return };
    let Ok(Value::Object(mut claims)) = serde_json::from_slice::<Value>(rest) else { return };
    if mode & 2 != 0 {
        let now = jsonwebtoken::get_current_timestamp() as i64;
        claims.insert("exp".into(), Value::from(now - 600 + i64::from(when) * 60));
    }
    if mode & 4 != 0 {
        claims.entry("sub").or_insert_with(|| Value::from("u1"));
        claims.entry("tenant").or_insert_with(|| Value::from("t1"));
    }
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    let Ok(token) = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key) else { return };
    let identity = match verify(&token) {
        Ok(identity) => identity,
        Err(error) => return token_code(error.code),
    };
    assert_eq!(Some(identity.user.as_str()), claims.get("sub").and_then(Value::as_str));
    assert_eq!(Some(identity.tenant.as_str()), claims.get("tenant").and_then(Value::as_str));
    assert_eq!(Some(identity.exp), claims.get("exp").and_then(Value::as_u64));
    let scopes = [("projects", &identity.projects), ("channels", &identity.channels), ("publish", &identity.publish)];
    for (name, scope) in scopes {
        match scope_model(&claims, name) {
            None => panic!("an identity came out of a malformed {name:?} claim: {:?}", claims.get(name)),
            Some(Model::All) => assert!(matches!(scope, crate::auth::Scope::All), "{name}"),
            Some(Model::Only(ids)) => {
                assert!(matches!(scope, crate::auth::Scope::Only(_)), "{name}");
                let listed = claims.get(name).and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str);
                for id in listed.chain(["p1", "c1", "*", ""]) {
                    assert_eq!(scope.allows(id), ids.contains(&id), "{name} allows {id:?}");
                }
            }
        }
    }
}

/// What a scope claim grants, as the README states it: absent, none; an array of strings, its
/// valid ids, or everything once `"*"` is reached; anything else refuses the token (`None`).
enum Model<'a> {
    All,
    Only(Vec<&'a str>),
}

fn scope_model<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<Model<'a>> {
    let Some(value) = claims.get(name) else { return Some(Model::Only(Vec::new())) };
    let mut ids = Vec::new();
    for item in value.as_array()? {
        match item.as_str()? {
            "*" => return Some(Model::All),
            id if roomcast_publisher::validate_id(id).is_ok() => ids.push(id),
            _ => {}
        }
    }
    Some(Model::Only(ids))
}
