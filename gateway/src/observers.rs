//! The console's credentials: the admin tokens of `ROOMCAST_CONSOLE_TOKENS`, each scoped to
//! tenants or not, and the short-lived observer tokens the console mints with them for its own
//! Socket.IO connection.
//!
//! An observer token is `rco1.{exp}.{nonce}.{mac}.{tenant}`: `mac` is the HMAC-SHA256, keyed
//! with the admin token that minted it, of the rest. Every replica has the same admin tokens,
//! so any replica verifies a token another minted, with no shared state; a token whose admin
//! token was removed from the configuration stops verifying (at the next connect or refresh).
//! The tenant goes last because tenant ids may contain dots.

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicUsize, Ordering},
};

use crate::{
    api_keys::{KeyScope, constant_time_eq},
    auth::{Identity, Scope},
    config::{Config, ConfigError, Secret},
    errors::{ClientError, ErrorCode},
};

/// How long an observer token lives: the console asks for a new one on `auth:expiring`.
pub const OBSERVER_TTL_SECS: u64 = 600;

/// Most observer connections one replica holds at once; more are refused with
/// `too_many_connections` (a console tab holds one).
pub const MAX_OBSERVERS: usize = 64;

const PREFIX: &str = "rco1";

/// The console's admin tokens and this replica's observer connections.
pub struct Observers {
    tokens: Vec<(Secret, KeyScope)>,
    connected: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Observers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Observers({} tokens, {} connected)", self.tokens.len(), self.connected.load(Ordering::Relaxed))
    }
}

impl Observers {
    /// The console's credentials, or `None` when `ROOMCAST_CONSOLE_TOKENS` is unset (no console).
    pub fn from_config(config: &Config) -> Result<Option<Observers>, ConfigError> {
        let tokens: Vec<(Secret, KeyScope)> = config
            .console_tokens()?
            .into_iter()
            .map(|(token, tenants)| (token, tenants.map_or(KeyScope::All, KeyScope::Tenants)))
            .collect();
        Ok((!tokens.is_empty()).then(|| Observers::new(tokens)))
    }

    /// From tokens given directly (`--dev` generates one).
    pub fn new(tokens: Vec<(Secret, KeyScope)>) -> Observers {
        Observers { tokens, connected: Default::default() }
    }

    /// The admin token `presented` is, with its scope. Every token is compared in full.
    pub fn admin(&self, presented: &str) -> Option<(&Secret, &KeyScope)> {
        let mut found = None;
        for (token, scope) in &self.tokens {
            if constant_time_eq(token.expose().as_bytes(), presented.as_bytes()) && found.is_none() {
                found = Some((token, scope));
            }
        }
        found
    }

    /// An observer token for `tenant`, minted with `admin` (the caller checked its scope),
    /// valid until `now_secs` + [`OBSERVER_TTL_SECS`]; with that expiry.
    pub fn mint(admin: &Secret, tenant: &str, now_secs: u64) -> (String, u64) {
        let exp = now_secs + OBSERVER_TTL_SECS;
        let nonce = crate::auth::random_hex(8);
        let mac = mac(admin, exp, &nonce, tenant);
        (format!("{PREFIX}.{exp}.{nonce}.{mac}.{tenant}"), exp)
    }

    /// The observer identity `token` carries: minted by one of the admin tokens whose scope
    /// still allows its tenant, and not expired at `now_secs`.
    pub fn verify(&self, token: &str, now_secs: u64) -> Result<Identity, ClientError> {
        let invalid = || ClientError::new(ErrorCode::TokenInvalid, "not an observer token the console minted");
        let mut parts = token.splitn(5, '.');
        let (Some(PREFIX), Some(exp), Some(nonce), Some(presented), Some(tenant)) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid());
        };
        // One spelling per token: digits without a leading zero (`parse` also takes `+600`
        // and `0600`, which the MAC, over the number, would accept too) and a lowercase hex nonce.
        let canonical_exp = !exp.is_empty() && !exp.starts_with('0') && exp.bytes().all(|b| b.is_ascii_digit());
        let hex_nonce = nonce.len() == 16 && nonce.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !canonical_exp || !hex_nonce || roomcast_publisher::validate_id(tenant).is_err() {
            return Err(invalid());
        }
        let exp: u64 = exp.parse().map_err(|_| invalid())?;
        let mut minted = false;
        for (admin, scope) in &self.tokens {
            let matches = constant_time_eq(mac(admin, exp, nonce, tenant).as_bytes(), presented.as_bytes());
            minted |= matches && scope.allows(tenant);
        }
        if !minted {
            return Err(invalid());
        }
        if exp <= now_secs {
            return Err(ClientError::new(
                ErrorCode::TokenExpired,
                "the observer token has expired; ask the console for another",
            ));
        }
        Ok(Identity {
            tenant: tenant.to_owned(),
            user: "console".to_owned(),
            projects: Scope::All,
            channels: Scope::All,
            publish: Scope::Only(Vec::new()),
            exp,
            jti: None,
            iat: None,
            claims: None,
            observer: true,
        })
    }

    /// A place for one more observer connection on this replica, held until dropped; `None` at
    /// [`MAX_OBSERVERS`].
    pub fn admit(&self) -> Option<ObserverSlot> {
        let admitted =
            self.connected.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < MAX_OBSERVERS).then_some(n + 1));
        admitted.is_ok().then(|| ObserverSlot { connected: self.connected.clone(), released: AtomicBool::new(false) })
    }

    /// Observer connections on this replica.
    pub fn connected(&self) -> usize {
        self.connected.load(Ordering::Acquire)
    }
}

/// One observer connection counted against [`MAX_OBSERVERS`]: released by the disconnect
/// handler, or when dropped with the socket if that never ran.
#[derive(Debug)]
pub struct ObserverSlot {
    connected: Arc<AtomicUsize>,
    released: AtomicBool,
}

impl ObserverSlot {
    /// Releases the place (the first call only).
    pub fn release(&self) {
        if !self.released.swap(true, Ordering::AcqRel) {
            self.connected.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for ObserverSlot {
    fn drop(&mut self) {
        self.release();
    }
}

fn mac(admin: &Secret, exp: u64, nonce: &str, tenant: &str) -> String {
    let message = format!("roomcast-observer.{exp}.{nonce}.{tenant}");
    let signed = roomcast_publisher::events::sign(admin.expose().as_bytes(), exp, message.as_bytes());
    // `t={exp},v1={hex}`: the hex digest.
    signed.rsplit_once("v1=").map(|(_, hex)| hex.to_owned()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observers() -> Observers {
        Observers::new(vec![
            (Secret::from("a".repeat(32)), KeyScope::All),
            (Secret::from("s".repeat(32)), KeyScope::Tenants(vec!["acme".into(), "a.b".into()])),
        ])
    }

    #[test]
    fn tokens_verify_only_as_minted_and_in_scope() {
        let o = observers();
        let (all, scoped) = (Secret::from("a".repeat(32)), Secret::from("s".repeat(32)));
        let (token, exp) = Observers::mint(&scoped, "a.b", 1_000);
        let identity = o.verify(&token, 1_000).unwrap();
        assert_eq!((identity.tenant.as_str(), identity.exp, identity.observer), ("a.b", exp, true));
        assert!(identity.publish == Scope::Only(Vec::new()));
        // Expired.
        assert_eq!(o.verify(&token, exp).unwrap_err().code, ErrorCode::TokenExpired);
        // Another tenant, exp or nonce under the same mac.
        let swap = |from: &str, to: &str| token.replacen(from, to, 1);
        for forged in [
            swap(".a.b", ".acme"),
            swap(&exp.to_string(), &(exp + 1).to_string()),
            token[..token.len() - 1].to_owned(),
            swap(&format!(".{exp}."), &format!(".+{exp}.")),
            swap(&format!(".{exp}."), &format!(".0{exp}.")),
            format!("x{token}"),
            String::new(),
            "rco1....".to_owned(),
        ] {
            assert_eq!(o.verify(&forged, 1_000).unwrap_err().code, ErrorCode::TokenInvalid, "{forged}");
        }
        // A scoped admin token's mac over a tenant outside its scope does not verify.
        let (outside, _) = Observers::mint(&scoped, "globex", 1_000);
        assert_eq!(o.verify(&outside, 1_000).unwrap_err().code, ErrorCode::TokenInvalid);
        // Removed from the configuration: its tokens stop verifying.
        let (by_all, _) = Observers::mint(&all, "globex", 1_000);
        assert!(o.verify(&by_all, 1_000).is_ok());
        let fewer = Observers::new(vec![(scoped, KeyScope::Tenants(vec!["acme".into()]))]);
        assert_eq!(fewer.verify(&by_all, 1_000).unwrap_err().code, ErrorCode::TokenInvalid);
    }

    #[test]
    fn observer_slots_are_bounded_and_released() {
        let o = observers();
        let slots: Vec<_> = (0..MAX_OBSERVERS).map(|_| o.admit().expect("a place")).collect();
        assert!(o.admit().is_none());
        slots[0].release();
        slots[0].release();
        assert_eq!(o.connected(), MAX_OBSERVERS - 1, "released once");
        drop(slots);
        assert_eq!(o.connected(), 0);
        assert!(o.admit().is_some());
    }
}
