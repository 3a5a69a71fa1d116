//! Entry points of the cargo-fuzz targets in `fuzz/` (built only with the `fuzzing` feature):
//! each takes the fuzzer's bytes as what a client, a publisher or a token holder could send, and
//! panics only where a property breaks. The proptest properties in the same modules check the
//! same things on every `cargo test`; `scripts/test` runs each target for a few seconds, and
//! `fuzz/README.md` says how to run them long.

use serde_json::Value;

use crate::{Config, Verifier, envelope::Envelope, errors::ErrorCode};

/// What arrives on a room's channel (from any publisher): parsed or refused, never a panic.
pub fn envelope(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(envelope) = Envelope::from_json(text) {
        let _ = envelope.room();
    }
}

/// A client event's payload (JSON): a typed request or `invalid_payload`; a room it names is
/// in the token's tenant.
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

/// Tokens: the first byte picks what the rest is. Even: the token's text, refused with a code
/// unless it happens to be validly signed (it cannot be). Odd: JSON claims, signed with the
/// verifier's key, which give an identity with valid ids or a coded refusal.
pub fn token(data: &[u8]) {
    use std::sync::OnceLock;
    static VERIFIER: OnceLock<Verifier> = OnceLock::new();
    let verifier = VERIFIER.get_or_init(|| {
        use clap::Parser;
        let config = Config::try_parse_from(["roomcast-gateway", "--jwt-secret", SECRET]).expect("config");
        Verifier::from_config(&config).expect("verifier")
    });
    let Some((&first, rest)) = data.split_first() else { return };
    let verify = |token: &str| {
        use futures_util::FutureExt;
        verifier.verify(token).now_or_never().expect("a shared secret needs no fetch")
    };
    if first % 2 == 0 {
        let Ok(text) = std::str::from_utf8(rest) else { return };
        let error = verify(text).expect_err("an unsigned text is not a token");
        assert!(matches!(error.code, ErrorCode::TokenInvalid | ErrorCode::TokenExpired | ErrorCode::Forbidden));
    } else {
        let Ok(claims @ Value::Object(_)) = serde_json::from_slice::<Value>(rest) else { return };
        let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
        let Ok(token) = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key) else { return };
        match verify(&token) {
            Ok(identity) => {
                assert!(roomcast_publisher::validate_id(&identity.tenant).is_ok());
                assert!(roomcast_publisher::validate_id(&identity.user).is_ok());
            }
            Err(error) => {
                assert!(matches!(error.code, ErrorCode::TokenInvalid | ErrorCode::TokenExpired | ErrorCode::Forbidden))
            }
        }
    }
}
