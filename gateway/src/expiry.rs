//! Live sockets do not outlive their token: `auth:expiring` shortly before `exp`, then a
//! disconnect with `token_expired` unless an `auth:refresh` moved `exp` on.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;
use socketioxide::socket::Sid;
use tokio::time::Instant;

use crate::{
    conn::{Conn, ExpiryDeadlines, Phase},
    errors::DisconnectReason,
    metrics,
    state::Shared,
};

/// Name of the event warning that the token is about to expire.
pub const EXPIRING_EVENT: &str = "auth:expiring";

fn now_unix() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}

/// Deadlines further away than this are capped to it: a token may say it expires in the year
/// 500 billion, and an `Instant` that far away does not exist (adding it panics).
const FAR_FUTURE: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// The instant a token with `exp` stops being accepted: `exp` plus the leeway the verifier grants.
fn expire_instant(gw: &Shared, exp: u64) -> Instant {
    Instant::now() + time_left(exp, gw.verifier.leeway(), now_unix())
}

/// How long from `now` (since the Unix epoch) until `exp` (seconds since the epoch) plus
/// `leeway`, saturating: any `exp` a signed token can carry gives a deadline.
fn time_left(exp: u64, leeway: Duration, now: Duration) -> Duration {
    Duration::from_secs(exp).saturating_add(leeway).saturating_sub(now).min(FAR_FUTURE)
}

/// (Re)schedules `sid`'s deadlines for a token expiring at `exp` (seconds since the epoch).
pub fn schedule(gw: &Shared, sid: Sid, conn: &Conn, exp: u64) {
    let expire = expire_instant(gw, exp);
    let notice = expire.checked_sub(gw.config.auth_expiring_notice).unwrap_or(expire).max(Instant::now());
    let new = ExpiryDeadlines { notice, expire };
    let old = conn.deadlines.lock().unwrap_or_else(|e| e.into_inner()).replace(new);
    if let Some(old) = old {
        gw.expiry.remove(old.notice, &(sid, Phase::Notice));
        gw.expiry.remove(old.expire, &(sid, Phase::Expire));
    }
    gw.expiry.insert(new.notice, (sid, Phase::Notice));
    gw.expiry.insert(new.expire, (sid, Phase::Expire));
}

/// Drops `sid`'s deadlines (it disconnected).
pub fn unschedule(gw: &Shared, sid: Sid, conn: &Conn) {
    if let Some(old) = conn.deadlines.lock().unwrap_or_else(|e| e.into_inner()).take() {
        gw.expiry.remove(old.notice, &(sid, Phase::Notice));
        gw.expiry.remove(old.expire, &(sid, Phase::Expire));
    }
}

/// Acts on deadlines as they come due. Runs for the gateway's lifetime.
pub async fn run(gw: Shared) {
    loop {
        for (sid, phase) in gw.expiry.next_due().await {
            let Some(socket) = gw.delivery.local().socket(sid) else {
                continue;
            };
            let Some(conn) = socket.extensions.get::<std::sync::Arc<Conn>>() else {
                continue;
            };
            let exp = conn.identity().exp;
            match phase {
                Phase::Notice => {
                    let expires_at_ms = exp.saturating_mul(1000);
                    let in_ms = expires_at_ms.saturating_sub(now_unix().as_millis() as u64);
                    if socket.emit(EXPIRING_EVENT, &json!({ "exp": exp, "expiresInMs": in_ms })).is_ok() {
                        metrics::emitted(EXPIRING_EVENT, 1);
                    }
                }
                Phase::Expire => {
                    // A refresh may have raced with this deadline coming due; trust the token.
                    if expire_instant(&gw, exp) > Instant::now() {
                        continue;
                    }
                    tracing::info!(sid = %sid, "token expired; disconnecting");
                    crate::conn::disconnect(socket, DisconnectReason::TokenExpired);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_exp_gives_a_deadline_without_overflow() {
        let now = Duration::from_secs(1_700_000_000);
        let leeway = Duration::from_secs(5);
        assert_eq!(time_left(1_700_000_060, leeway, now), Duration::from_secs(65));
        assert_eq!(time_left(0, leeway, now), Duration::ZERO, "long expired");
        assert_eq!(time_left(u64::MAX, Duration::MAX, now), FAR_FUTURE);
        let _ = Instant::now() + time_left(u64::MAX, leeway, now);
    }
}
