//! Revoked tokens, as this replica knows them: checked at connect and at `auth:refresh` without
//! a Redis round trip.
//!
//! A revocation ([`Revocation`], the wire format's) names a token by `jti`, or every token of a
//! user issued before a time. Each lives as long as the longest token the gateway accepts
//! (`ROOMCAST_MAX_TOKEN_LIFETIME` plus the leeway): a token older than that is refused anyway.
//! Replicas learn one from the control envelope that also disconnects the live sockets (those
//! with a member of the room receive it at once), and from the shared list, read when its
//! version changes (checked every second).

use std::{collections::HashMap, sync::Mutex};

use roomcast_publisher::wire::Revocation;

use crate::auth::Identity;

/// Whether `revocation` revokes the token behind `identity`.
pub fn revokes(revocation: &Revocation, identity: &Identity) -> bool {
    if revocation.tenant != identity.tenant {
        return false;
    }
    if let Some(jti) = &revocation.jti {
        return identity.jti.as_deref() == Some(jti.as_str());
    }
    match (&revocation.user, revocation.before) {
        // A token without `iat` cannot show it is newer.
        (Some(user), Some(before)) => *user == identity.user && identity.iat.is_none_or(|iat| iat < before),
        _ => false,
    }
}

/// One tenant's revocations, indexed so a check is two hash lookups.
#[derive(Debug, Default)]
struct Tenant {
    /// `jti` → until (ms).
    jtis: HashMap<String, u64>,
    /// user → (before (s), until (ms)); several if revoked several times.
    users: HashMap<String, Vec<(u64, u64)>>,
}

/// The revocations in force, by tenant; `roomcast_revocations` follows their number.
#[derive(Debug, Default)]
pub struct Revocations {
    by_tenant: Mutex<HashMap<String, Tenant>>,
}

impl Revocations {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Tenant>> {
        self.by_tenant.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the token behind `identity` is revoked (at `now_ms`).
    pub fn is_revoked(&self, identity: &Identity, now_ms: u64) -> bool {
        let all = self.lock();
        let Some(tenant) = all.get(&identity.tenant) else { return false };
        let by_jti = identity.jti.as_ref().and_then(|jti| tenant.jtis.get(jti)).is_some_and(|until| *until > now_ms);
        by_jti
            || tenant.users.get(&identity.user).is_some_and(|list| {
                list.iter().any(|(before, until)| *until > now_ms && identity.iat.is_none_or(|iat| iat < *before))
            })
    }

    /// Adds `revocation`, in force until `until` (ms); whether it was new (not held already).
    pub fn add(&self, revocation: &Revocation, until: u64) -> bool {
        let new = self.insert(revocation, until);
        crate::metrics::revocations(self.len());
        new
    }

    fn insert(&self, revocation: &Revocation, until: u64) -> bool {
        let mut all = self.lock();
        let tenant = all.entry(revocation.tenant.clone()).or_default();
        match (&revocation.jti, &revocation.user, revocation.before) {
            (Some(jti), _, _) => {
                let held = tenant.jtis.entry(jti.clone()).or_insert(0);
                let new = *held == 0;
                *held = (*held).max(until);
                new
            }
            (None, Some(user), Some(before)) => {
                let list = tenant.users.entry(user.clone()).or_default();
                // One revoking as much for as long already covers it; it replaces those it
                // covers. What is left is usually one entry per user, however often revoked.
                if list.iter().any(|(b, u)| *b >= before && *u >= until) {
                    return false;
                }
                list.retain(|(b, u)| !(before >= *b && until >= *u));
                list.push((before, until));
                true
            }
            _ => false,
        }
    }

    /// Adds the shared list's revocations (`current`, each with its until) and forgets the
    /// expired ones; returns those that were new here. What this replica learnt from a control
    /// envelope but is not in `current` yet stays: revocations only expire.
    pub fn merge(&self, current: Vec<(Revocation, u64)>, now_ms: u64) -> Vec<Revocation> {
        // Forget first: an expired one still held would hide the same one recorded again.
        {
            let mut all = self.lock();
            for tenant in all.values_mut() {
                tenant.jtis.retain(|_, until| *until > now_ms);
                tenant.users.retain(|_, list| {
                    list.retain(|(_, until)| *until > now_ms);
                    !list.is_empty()
                });
            }
            all.retain(|_, t| !t.jtis.is_empty() || !t.users.is_empty());
        }
        let fresh = current
            .into_iter()
            .filter(|(r, until)| *until > now_ms && self.insert(r, *until))
            .map(|(r, _)| r)
            .collect();
        crate::metrics::revocations(self.len());
        fresh
    }

    /// How many are held.
    pub fn len(&self) -> usize {
        self.lock().values().map(|t| t.jtis.len() + t.users.values().map(Vec::len).sum::<usize>()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Scope;

    fn identity(user: &str, jti: Option<&str>, iat: Option<u64>) -> Identity {
        Identity {
            tenant: "t".into(),
            user: user.into(),
            projects: Scope::All,
            channels: Scope::All,
            publish: Scope::Only(Vec::new()),
            exp: 0,
            jti: jti.map(str::to_owned),
            iat,
            claims: None,
            observer: false,
        }
    }

    fn by_jti(jti: &str) -> Revocation {
        Revocation { tenant: "t".into(), jti: Some(jti.into()), user: None, before: None }
    }

    fn by_user(user: &str, before: u64) -> Revocation {
        Revocation { tenant: "t".into(), jti: None, user: Some(user.into()), before: Some(before) }
    }

    #[test]
    fn a_jti_or_a_user_before_a_time_and_only_while_in_force() {
        let r = Revocations::default();
        assert!(r.add(&by_jti("j1"), 1000));
        assert!(r.add(&by_user("ada", 50), 1000));
        assert!(!r.add(&by_jti("j1"), 900), "held already");
        assert!(r.is_revoked(&identity("bob", Some("j1"), Some(10)), 500));
        assert!(!r.is_revoked(&identity("bob", Some("j2"), Some(10)), 500));
        assert!(r.is_revoked(&identity("ada", None, Some(49)), 500));
        assert!(r.is_revoked(&identity("ada", None, None), 500), "no iat: cannot be shown newer");
        assert!(!r.is_revoked(&identity("ada", None, Some(50)), 500), "issued at or after: fine");
        assert!(!r.is_revoked(&identity("ada", Some("j1"), Some(10)), 1000), "expired");
        let mut other = identity("ada", Some("j1"), Some(1));
        other.tenant = "t2".into();
        assert!(!r.is_revoked(&other, 500), "another tenant");
        for (revocation, id) in
            [(by_jti("j1"), identity("bob", Some("j1"), None)), (by_user("ada", 50), identity("ada", None, None))]
        {
            assert!(revokes(&revocation, &id));
        }
        assert!(!revokes(&by_user("ada", 50), &identity("bob", None, None)));
    }

    #[test]
    fn a_users_revocations_stay_few_however_often_repeated() {
        let r = Revocations::default();
        for i in 0..1000 {
            r.add(&by_user("ada", 100 + i), 10_000 + i);
        }
        assert_eq!(r.len(), 1, "each later one covers the earlier ones");
        assert!(!r.add(&by_user("ada", 50), 5_000), "covered");
        assert!(r.add(&by_user("ada", 50), 20_000), "revokes less but for longer: kept beside");
        assert_eq!(r.len(), 2);
        assert!(r.is_revoked(&identity("ada", None, Some(1000)), 10_500));
        assert!(!r.is_revoked(&identity("ada", None, Some(1000)), 11_000), "the wider one expired");
        assert!(r.is_revoked(&identity("ada", None, Some(49)), 19_000));
    }

    #[test]
    fn merging_the_shared_list_reports_what_is_new_and_forgets_what_expired() {
        let r = Revocations::default();
        r.add(&by_jti("from-envelope"), 2000);
        let fresh =
            r.merge(vec![(by_jti("from-envelope"), 2000), (by_user("ada", 50), 3000), (by_jti("old"), 10)], 100);
        assert_eq!(fresh, vec![by_user("ada", 50)], "the envelope's was known; the expired one is not news");
        assert_eq!(r.len(), 2);
        assert!(r.merge(Vec::new(), 2500).is_empty());
        assert_eq!(r.len(), 1, "kept until its own time even when the list no longer has it");
        r.merge(Vec::new(), 3000);
        assert_eq!(r.len(), 0);
        r.add(&by_jti("again"), 3100);
        assert_eq!(r.merge(vec![(by_jti("again"), 9000)], 3200), vec![by_jti("again")], "expired, then recorded again");
    }
}
