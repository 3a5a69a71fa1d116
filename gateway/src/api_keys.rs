//! The keys backends present to Roomcast's HTTP API (`Authorization: Bearer <key>`).

use crate::config::{Config, ConfigError, Secret, env};

/// What a key may act for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyScope {
    /// Every tenant: the keys of `ROOMCAST_API_KEY` / `ROOMCAST_API_KEY_FILE` (admin keys).
    All,
    /// Only these tenants (`ROOMCAST_TENANT_API_KEYS_FILE`).
    Tenants(Vec<String>),
}

impl KeyScope {
    /// Whether the key may publish to, read or control `tenant`.
    pub fn allows(&self, tenant: &str) -> bool {
        match self {
            KeyScope::All => true,
            KeyScope::Tenants(tenants) => tenants.iter().any(|t| t == tenant),
        }
    }
}

/// The keys that authorize the backend API, each with its scope.
#[derive(Clone)]
pub struct ApiKeys(Vec<(Secret, KeyScope)>);

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} keys)", self.0.len())
    }
}

/// `ROOMCAST_TENANT_API_KEYS_FILE`: `{"keys": [{"key": "...", "tenants": ["acme"]}]}`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantKeysFile {
    keys: Vec<TenantKey>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantKey {
    key: String,
    tenants: Vec<String>,
}

impl ApiKeys {
    /// Keys from `ROOMCAST_API_KEY` and `ROOMCAST_API_KEY_FILE` (one per line, or
    /// comma-separated as in the variable: a Secret written for either works), which act for
    /// every tenant, and the tenant-scoped keys of `ROOMCAST_TENANT_API_KEYS_FILE`.
    pub fn from_config(config: &Config) -> Result<ApiKeys, ConfigError> {
        let mut keys: Vec<(Secret, KeyScope)> =
            config.api_key.iter().filter(|k| !k.expose().is_empty()).map(|k| (k.clone(), KeyScope::All)).collect();
        if let Some(path) = &config.api_key_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| ConfigError::new(env::API_KEY_FILE, format!("cannot read {}: {e}", path.display())))?;
            for line in text.lines().flat_map(|l| l.split(',')).map(str::trim).filter(|l| !l.is_empty()) {
                if line.len() < 16 {
                    return Err(ConfigError::new(env::API_KEY_FILE, "every key needs at least 16 characters"));
                }
                keys.push((Secret::from(line.to_owned()), KeyScope::All));
            }
        }
        if let Some(path) = &config.tenant_api_keys_file {
            for (key, scope) in tenant_keys(path)? {
                // A key listed twice would take the first entry's scope, silently.
                if keys.iter().any(|(known, _)| known.expose() == key.expose()) {
                    return Err(ConfigError::new(
                        env::TENANT_API_KEYS_FILE,
                        "a key is listed twice (here, or also as a ROOMCAST_API_KEY): each key has one scope",
                    ));
                }
                keys.push((key, scope));
            }
        }
        Ok(ApiKeys(keys))
    }

    /// Keys given directly (e.g. the one `--dev` generates), acting for every tenant.
    pub fn new(keys: Vec<Secret>) -> ApiKeys {
        ApiKeys(keys.into_iter().map(|k| (k, KeyScope::All)).collect())
    }

    /// Whether the backend API is enabled at all.
    pub fn is_enabled(&self) -> bool {
        !self.0.is_empty()
    }

    /// The scope of `presented`, if it is one of the keys. Every key is compared in full, so
    /// the time taken does not reveal how much of a key matched.
    pub(crate) fn accepts(&self, presented: &[u8]) -> Option<KeyScope> {
        let mut found = None;
        for (key, scope) in &self.0 {
            if constant_time_eq(key.expose().as_bytes(), presented) && found.is_none() {
                found = Some(scope.clone());
            }
        }
        found
    }
}

fn tenant_keys(path: &std::path::Path) -> Result<Vec<(Secret, KeyScope)>, ConfigError> {
    const OPTION: &str = env::TENANT_API_KEYS_FILE;
    let raw =
        std::fs::read(path).map_err(|e| ConfigError::new(OPTION, format!("cannot read {}: {e}", path.display())))?;
    let file: TenantKeysFile = serde_json::from_slice(&raw)
        .map_err(|e| ConfigError::new(OPTION, format!("expected {{\"keys\": [{{\"key\", \"tenants\"}}]}}: {e}")))?;
    let mut keys = Vec::with_capacity(file.keys.len());
    for (i, entry) in file.keys.into_iter().enumerate() {
        if entry.key.len() < 16 {
            return Err(ConfigError::new(OPTION, format!("key #{i}: every key needs at least 16 characters")));
        }
        if entry.tenants.is_empty() {
            return Err(ConfigError::new(OPTION, format!("key #{i}: \"tenants\" is empty")));
        }
        if let Some(bad) = entry.tenants.iter().find(|t| roomcast_publisher::validate_id(t).is_err()) {
            return Err(ConfigError::new(OPTION, format!("key #{i}: {bad:?} is not a tenant id")));
        }
        keys.push((Secret::from(entry.key), KeyScope::Tenants(entry.tenants)));
    }
    Ok(keys)
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // The length is not secret (keys have a known format); the content is.
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_compared_in_full() {
        let keys = ApiKeys::new(vec![
            Secret::from("0123456789abcdef".to_owned()),
            Secret::from("fedcba9876543210".to_owned()),
        ]);
        assert_eq!(keys.accepts(b"0123456789abcdef"), Some(KeyScope::All));
        assert_eq!(keys.accepts(b"fedcba9876543210"), Some(KeyScope::All));
        assert_eq!(keys.accepts(b"0123456789abcdee"), None);
        assert_eq!(keys.accepts(b"0123456789abcdef0"), None);
        assert_eq!(keys.accepts(b""), None);
    }
}
