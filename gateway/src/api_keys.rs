//! The keys backends present to Roomcast's HTTP API (`Authorization: Bearer <key>`).

use crate::config::{Config, ConfigError, Secret, env};

/// The keys that authorize publishing.
#[derive(Clone)]
pub struct ApiKeys(Vec<Secret>);

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} keys)", self.0.len())
    }
}

impl ApiKeys {
    /// Keys from `ROOMCAST_API_KEY` and `ROOMCAST_API_KEY_FILE` (one per line, or
    /// comma-separated as in the variable: a Secret written for either works).
    pub fn from_config(config: &Config) -> Result<ApiKeys, ConfigError> {
        let mut keys: Vec<Secret> = config.api_key.iter().filter(|k| !k.expose().is_empty()).cloned().collect();
        if let Some(path) = &config.api_key_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| ConfigError::new(env::API_KEY_FILE, format!("cannot read {}: {e}", path.display())))?;
            for line in text.lines().flat_map(|l| l.split(',')).map(str::trim).filter(|l| !l.is_empty()) {
                if line.len() < 16 {
                    return Err(ConfigError::new(env::API_KEY_FILE, "every key needs at least 16 characters"));
                }
                keys.push(Secret::from(line.to_owned()));
            }
        }
        Ok(ApiKeys(keys))
    }

    /// Keys given directly (e.g. the one `--dev` generates).
    pub fn new(keys: Vec<Secret>) -> ApiKeys {
        ApiKeys(keys)
    }

    /// Whether publishing over HTTP is enabled at all.
    pub fn is_enabled(&self) -> bool {
        !self.0.is_empty()
    }

    /// Whether `presented` is one of the keys. Every key is compared in full, so the time taken
    /// does not reveal how much of a key matched.
    pub(crate) fn accepts(&self, presented: &[u8]) -> bool {
        self.0.iter().fold(false, |found, key| found | constant_time_eq(key.expose().as_bytes(), presented))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
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
        assert!(keys.accepts(b"0123456789abcdef"));
        assert!(keys.accepts(b"fedcba9876543210"));
        assert!(!keys.accepts(b"0123456789abcdee"));
        assert!(!keys.accepts(b"0123456789abcdef0"));
        assert!(!keys.accepts(b""));
    }
}
