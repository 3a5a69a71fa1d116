//! Who a connection is: finding its token, verifying it, and turning its claims into an
//! [`Identity`] the room layer can authorize against.
//!
//! Keys are loaded at startup ([`Verifier::from_config`]); a bad key file stops the process
//! with a [`ConfigError`] naming the option. Key sets at an identity provider's URL are
//! fetched and kept fresh by [`crate::jwks::RemoteJwks`]; with `ROOMCAST_JWT_ISSUERS_FILE` each
//! trusted issuer has its own keys, audiences and tenants, and a token's `iss` picks them. Verification failures map onto the stable
//! codes of [`ErrorCode`]; their human messages never contain the token.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use axum::http::{HeaderMap, Uri, header::AUTHORIZATION};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::{
    config::{Config, ConfigError, KeySource, MIN_SECRET_LEN, Secret, env},
    errors::{ClientError, ErrorCode},
    jwks::{Freshness, KidMap, RemoteJwks},
};
use roomcast_publisher::{Room, RoomKind, validate_id};

/// The rooms of one kind a token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// `"*"`: every room of this kind in the tenant.
    All,
    /// Exactly these ids, sorted for binary search.
    Only(Vec<String>),
}

impl Scope {
    /// Whether the scope grants `id`.
    pub fn allows(&self, id: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Only(ids) => ids.binary_search_by(|probe| probe.as_str().cmp(id)).is_ok(),
        }
    }
}

/// A verified connection identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Tenant id; every room the connection can reach is inside it.
    pub tenant: String,
    /// User id.
    pub user: String,
    /// Projects the user may join.
    pub projects: Scope,
    /// Channels the user may join.
    pub channels: Scope,
    /// Channels the user may `publish` to from a client.
    pub publish: Scope,
    /// The token's `exp`, in seconds since the Unix epoch.
    pub exp: u64,
    /// The token's `jti` (revocable by it), when it has one.
    pub jti: Option<String>,
    /// The token's `iat`, when it has one (revocations "issued before T" compare it).
    pub iat: Option<u64>,
    /// The claims `ROOMCAST_RPC_CLAIMS` names, for the backend (`None`: none are configured).
    pub claims: Option<Arc<Map<String, Value>>>,
    /// A console observer (a token the console minted, on the admin listener): it watches rooms
    /// of its tenant without being anyone in them — no tenant or user room, no presence, not
    /// counted by the connection caps, no typing, publishing or RPC, unmoved by the backend's
    /// control instructions.
    pub observer: bool,
}

impl Identity {
    /// Whether the token grants `room`: a project or channel its scopes allow. (Its tenant and
    /// user rooms are the identity's own; a room of another tenant is never built for it.)
    pub fn grants(&self, room: &Room) -> bool {
        match (room.kind(), room.id()) {
            (RoomKind::Project, Some(id)) => self.projects.allows(id),
            (RoomKind::Channel, Some(id)) => self.channels.allows(id),
            _ => true,
        }
    }
}

/// Claim names, from the configuration.
#[derive(Debug, Clone)]
struct ClaimNames {
    user: String,
    tenant: String,
    projects: String,
    channels: String,
    publish: String,
}

/// Keys accepted for verification.
enum Keys {
    /// One key (secret or PEM public key) and the algorithms of its family.
    Single(DecodingKey, Vec<Algorithm>),
    /// A JWKS file: the token's `kid` picks the key.
    ByKid(KidMap),
    /// A JWKS at an identity provider's URL.
    Remote(Arc<RemoteJwks>),
}

/// A signer the gateway trusts, and what for.
struct Trust {
    keys: Keys,
    /// Accepted `iss` values; empty: not checked.
    issuers: Vec<String>,
    /// Accepted `aud` values; empty: not checked.
    audiences: Vec<String>,
    /// The tenants this signer may vouch for; empty: any.
    tenants: Vec<String>,
}

/// Verifies tokens and extracts identities. Cheap to share behind an `Arc`.
pub struct Verifier {
    /// The configured key source (`ROOMCAST_JWT_SECRET`…), for tokens no trusted issuer claims.
    default: Option<Trust>,
    /// `ROOMCAST_JWT_ISSUERS_FILE`, by `iss`.
    by_issuer: HashMap<String, Trust>,
    claims: ClaimNames,
    leeway: Duration,
    /// `ROOMCAST_MAX_TOKEN_LIFETIME`: a token valid for longer than this from now is refused.
    max_lifetime: Duration,
    /// The HMAC secret, when tokens are HMAC-signed: mints the `--dev` and `--print-token` tokens.
    hmac_secret: Option<Secret>,
    /// `ROOMCAST_RPC_CLAIMS`.
    forward_claims: Vec<String>,
}

/// Most bytes of claims (as JSON) kept per connection for the backend.
const MAX_FORWARDED_CLAIMS: usize = 4096;

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys = match self.default.as_ref().map(|t| &t.keys) {
            Some(Keys::Single(_, algs)) => format!("single key ({algs:?})"),
            Some(Keys::ByKid(map)) => format!("{} keys by kid", map.len()),
            Some(Keys::Remote(remote)) => format!("{remote:?}"),
            None => "none".to_owned(),
        };
        f.debug_struct("Verifier")
            .field("keys", &keys)
            .field("issuers", &self.by_issuer.keys().collect::<Vec<_>>())
            .field("claims", &self.claims)
            .finish_non_exhaustive()
    }
}

/// An entry of `ROOMCAST_JWT_ISSUERS_FILE`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IssuerEntry {
    issuer: String,
    #[serde(default)]
    jwks_url: Option<String>,
    #[serde(default)]
    jwks_file: Option<PathBuf>,
    #[serde(default)]
    public_key_file: Option<PathBuf>,
    #[serde(default)]
    audiences: Vec<String>,
    /// Required: the tenants this issuer may vouch for, or `["*"]` for any.
    tenants: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IssuersFile {
    issuers: Vec<IssuerEntry>,
}

/// Just the `iss` of a token, read before its signature is checked: it picks the keys that
/// check it.
#[derive(Deserialize)]
struct IssOnly {
    #[serde(default)]
    iss: Option<String>,
}

impl Verifier {
    /// Loads the configured key material (key sets at URLs are fetched later: see
    /// [`Verifier::remote_key_sets`]). Errors name the option to fix.
    pub fn from_config(config: &Config) -> Result<Verifier, ConfigError> {
        let hmac = |option: &'static str, secret: Secret| -> Result<(Option<Keys>, Option<Secret>), ConfigError> {
            Ok((Some(hmac_keys(option, secret.expose().as_bytes())?), Some(secret)))
        };
        let freshness = Freshness { refresh: config.jwt_jwks_refresh, min_interval: config.jwt_jwks_min_interval };
        let (keys, hmac_secret) = match config.key_source()? {
            KeySource::Secret(secret) => hmac(env::JWT_SECRET, secret.clone())?,
            KeySource::SecretFile(path) => {
                let raw = read_file(env::JWT_SECRET_FILE, path)?;
                let text = String::from_utf8(raw)
                    .map_err(|_| ConfigError::new(env::JWT_SECRET_FILE, "the secret file is not UTF-8 text"))?;
                hmac(env::JWT_SECRET_FILE, Secret::from(text.trim_end_matches(['\r', '\n']).to_owned()))?
            }
            KeySource::PublicKeyFile(path) => {
                (Some(pem_keys(env::JWT_PUBLIC_KEY_FILE, &read_file(env::JWT_PUBLIC_KEY_FILE, path)?)?), None)
            }
            KeySource::JwksFile(path) => (Some(jwks_keys(env::JWKS_FILE, &read_file(env::JWKS_FILE, path)?)?), None),
            KeySource::JwksUrl(url) => {
                let remote =
                    RemoteJwks::new(url, "default", freshness).map_err(|e| ConfigError::new(env::JWKS_URL, e))?;
                (Some(Keys::Remote(Arc::new(remote))), None)
            }
            KeySource::IssuersOnly => (None, None),
            KeySource::DevGenerated => hmac("--dev", dev_secret()?.0)?,
        };
        let audiences: Vec<String> = config.jwt_audience.iter().filter(|s| !s.is_empty()).cloned().collect();
        let default = keys.map(|keys| Trust {
            keys,
            issuers: config.jwt_issuer.iter().filter(|s| !s.is_empty()).cloned().collect(),
            audiences: audiences.clone(),
            tenants: Vec::new(),
        });
        let by_issuer = match &config.jwt_issuers_file {
            Some(path) => trusted_issuers(&read_file(env::ISSUERS_FILE, path)?, &audiences, freshness)?,
            None => HashMap::new(),
        };
        Ok(Verifier {
            default,
            by_issuer,
            claims: ClaimNames {
                user: config.jwt_user_claim.clone(),
                tenant: config.jwt_tenant_claim.clone(),
                projects: config.jwt_projects_claim.clone(),
                channels: config.jwt_channels_claim.clone(),
                publish: config.jwt_publish_claim.clone(),
            },
            leeway: config.jwt_leeway,
            max_lifetime: config.max_token_lifetime,
            hmac_secret,
            forward_claims: config.rpc_claims.iter().map(|c| c.trim().to_owned()).filter(|c| !c.is_empty()).collect(),
        })
    }

    /// The key sets fetched from URLs: the gateway fetches them at startup and keeps them fresh.
    pub fn remote_key_sets(&self) -> Vec<Arc<RemoteJwks>> {
        self.default
            .iter()
            .chain(self.by_issuer.values())
            .filter_map(|t| match &t.keys {
                Keys::Remote(remote) => Some(remote.clone()),
                _ => None,
            })
            .collect()
    }

    /// Who vouches for `token`: the trusted issuer its `iss` names, else the default source.
    ///
    /// With trusted issuers, the default source takes only tokens without `iss` or with one
    /// `ROOMCAST_JWT_ISSUER` lists: a default key shared by many parties (a big IdP's common
    /// keys) would otherwise admit any issuer that IdP serves, with no tenant limit.
    fn trust_for(&self, token: &str) -> Result<&Trust, ClientError> {
        let untrusted = || ClientError::new(ErrorCode::TokenInvalid, "token issuer is not trusted");
        if !self.by_issuer.is_empty() {
            let iss = jsonwebtoken::dangerous::insecure_decode_claims::<IssOnly>(token).ok().and_then(|c| c.iss);
            if let Some(iss) = iss {
                if let Some(trust) = self.by_issuer.get(&iss) {
                    return Ok(trust);
                }
                if self.default.as_ref().is_some_and(|d| d.issuers.is_empty()) {
                    return Err(untrusted());
                }
            }
        }
        self.default.as_ref().ok_or_else(untrusted)
    }

    /// Clock skew tolerated on `exp` and `nbf`.
    pub fn leeway(&self) -> Duration {
        self.leeway
    }

    /// Verifies `token` and returns the identity it carries. Waits only when the token names a
    /// `kid` a fetched key set does not hold, for one rate-limited refetch.
    pub async fn verify(&self, token: &str) -> Result<Identity, ClientError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| ClientError::new(ErrorCode::TokenInvalid, "token is not a well-formed JWT"))?;
        let trust = self.trust_for(token)?;
        let no_key = || ClientError::new(ErrorCode::TokenInvalid, "token's kid matches no configured key");
        let fetched;
        let (key, algorithms) = match &trust.keys {
            Keys::Single(key, algs) => (key, algs),
            Keys::ByKid(map) => {
                let entry = match header.kid.as_deref() {
                    Some(kid) => map.get(kid),
                    // Without a kid we can only pick when there is no choice to make.
                    None if map.len() == 1 => map.values().next(),
                    None => None,
                };
                let (key, algs) = entry.ok_or_else(no_key)?;
                (key, algs)
            }
            Keys::Remote(remote) => {
                fetched = remote.key_or_refetch(header.kid.as_deref()).await.ok_or_else(no_key)?;
                (&fetched.0, &fetched.1)
            }
        };
        let mut validation = Validation::new(header.alg);
        validation.algorithms = algorithms.clone();
        validation.leeway = self.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        if !trust.issuers.is_empty() {
            validation.set_issuer(&trust.issuers);
            validation.required_spec_claims.insert("iss".into());
        }
        if trust.audiences.is_empty() {
            // Without a configured audience we cannot judge one; do not reject tokens that carry it.
            validation.validate_aud = false;
        } else {
            validation.set_audience(&trust.audiences);
            validation.required_spec_claims.insert("aud".into());
        }
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, key, &validation).map_err(|e| {
            let message = match e.kind() {
                ErrorKind::ExpiredSignature => {
                    return ClientError::new(ErrorCode::TokenExpired, "token has expired");
                }
                ErrorKind::InvalidSignature => "token signature does not verify",
                ErrorKind::InvalidAlgorithm => "token algorithm is not accepted for the configured key",
                ErrorKind::InvalidIssuer => "token issuer is not accepted",
                ErrorKind::InvalidAudience => "token audience is not accepted",
                ErrorKind::ImmatureSignature => "token is not valid yet (nbf)",
                ErrorKind::MissingRequiredClaim(c) if c == "exp" => "token has no exp claim",
                ErrorKind::MissingRequiredClaim(c) if c == "iss" => "token has no iss claim",
                ErrorKind::MissingRequiredClaim(c) if c == "aud" => "token has no aud claim",
                ErrorKind::InvalidClaimFormat(_) => "token has a mistyped registered claim",
                _ => "token cannot be verified",
            };
            ClientError::new(ErrorCode::TokenInvalid, message)
        })?;
        let identity = self.identity(&data.claims)?;
        // Revocations are kept for the longest lifetime accepted: a token living longer could
        // outlive its revocation. Bounded from its issue (`iat`) when it has one — a token
        // revoked before it became acceptable must not become acceptable after the revocation
        // is forgotten — and from now in any case.
        let lifetime = self.max_lifetime.as_secs().saturating_add(self.leeway.as_secs());
        let latest = jsonwebtoken::get_current_timestamp().saturating_add(lifetime);
        let issued_long = identity.iat.is_some_and(|iat| identity.exp.saturating_sub(iat) > lifetime);
        if identity.exp > latest || issued_long {
            return Err(ClientError::new(
                ErrorCode::TokenInvalid,
                "token is valid for longer than ROOMCAST_MAX_TOKEN_LIFETIME allows",
            ));
        }
        if !trust.tenants.is_empty() && !trust.tenants.contains(&identity.tenant) {
            return Err(ClientError::new(ErrorCode::Forbidden, "the token's issuer may not vouch for this tenant"));
        }
        Ok(identity)
    }

    fn identity(&self, claims: &Map<String, Value>) -> Result<Identity, ClientError> {
        let id_claim = |name: &str| -> Result<String, ClientError> {
            let value = claims
                .get(name)
                .and_then(Value::as_str)
                .ok_or_else(|| ClientError::new(ErrorCode::Forbidden, format!("token has no string claim {name:?}")))?;
            validate_id(value).map_err(|e| ClientError::new(ErrorCode::Forbidden, format!("claim {name:?}: {e}")))?;
            Ok(value.to_owned())
        };
        let exp = claims
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or_else(|| ClientError::new(ErrorCode::TokenInvalid, "token has no exp claim"))?;
        Ok(Identity {
            user: id_claim(&self.claims.user)?,
            tenant: id_claim(&self.claims.tenant)?,
            projects: scope(claims, &self.claims.projects)?,
            channels: scope(claims, &self.claims.channels)?,
            publish: scope(claims, &self.claims.publish)?,
            exp,
            jti: claims.get("jti").and_then(Value::as_str).map(str::to_owned),
            // NumericDate may be fractional; negative or absurd values count as absent.
            iat: claims.get("iat").and_then(Value::as_f64).filter(|t| (0.0..1e15).contains(t)).map(|t| t as u64),
            claims: self.forwarded_claims(claims),
            observer: false,
        })
    }

    /// The claims to forward to the backend, in at most [`MAX_FORWARDED_CLAIMS`] bytes of JSON.
    fn forwarded_claims(&self, claims: &Map<String, Value>) -> Option<Arc<Map<String, Value>>> {
        if self.forward_claims.is_empty() {
            return None;
        }
        let mut kept = Map::new();
        let mut size = 2;
        for name in &self.forward_claims {
            let Some(value) = claims.get(name) else { continue };
            let cost = name.len() + value.to_string().len() + 4;
            if size + cost <= MAX_FORWARDED_CLAIMS {
                size += cost;
                kept.insert(name.clone(), value.clone());
            }
        }
        Some(Arc::new(kept))
    }

    /// A token for `user` of `tenant` with every project and channel, valid for `ttl`, signed
    /// with the configured HMAC secret; `None` when tokens are not HMAC-signed.
    pub fn mint_token(&self, tenant: &str, user: &str, ttl: Duration) -> Option<String> {
        let secret = self.hmac_secret.as_ref()?;
        let exp = jsonwebtoken::get_current_timestamp() + ttl.as_secs();
        let mut claims = Map::new();
        claims.insert(self.claims.user.clone(), user.into());
        claims.insert(self.claims.tenant.clone(), tenant.into());
        claims.insert(self.claims.projects.clone(), serde_json::json!(["*"]));
        claims.insert(self.claims.channels.clone(), serde_json::json!(["*"]));
        claims.insert(self.claims.publish.clone(), serde_json::json!(["*"]));
        claims.insert("exp".to_owned(), exp.into());
        // Revocable like any token: by jti, or as issued before a time.
        claims.insert("iat".to_owned(), jsonwebtoken::get_current_timestamp().into());
        claims.insert("jti".to_owned(), roomcast_publisher::wire::new_event_id().into());
        let key = EncodingKey::from_secret(secret.expose().as_bytes());
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).ok()
    }
}

/// The identity a connect proxy in proxy-only mode answered (`{tenant, user, projects?,
/// channels?, publish?, exp?}`, the token's claim names not applying): ids checked as a token's,
/// `exp` at most `max_lifetime` from now (its default).
pub fn proxied_identity(
    answer: &Map<String, Value>,
    max_lifetime: Duration,
    asked_at: u64,
) -> Result<Identity, String> {
    // A backend that writes absent fields as null means them absent.
    let answer: Map<String, Value> =
        answer.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.clone(), v.clone())).collect();
    let answer = &answer;
    let id = |name: &str| -> Result<String, String> {
        let value = answer.get(name).and_then(Value::as_str).ok_or_else(|| format!("has no string {name:?}"))?;
        validate_id(value).map_err(|e| format!("{name:?}: {e}"))?;
        Ok(value.to_owned())
    };
    let scope = |name: &str| scope(answer, name).map_err(|e| e.message);
    let now = jsonwebtoken::get_current_timestamp();
    let latest = now.saturating_add(max_lifetime.as_secs());
    let exp = match answer.get("exp") {
        None | Some(Value::Null) => latest,
        Some(exp) => exp.as_u64().ok_or("\"exp\" must be seconds since the epoch")?.min(latest),
    };
    if exp <= now {
        return Err("has an \"exp\" already past".into());
    }
    Ok(Identity {
        tenant: id("tenant")?,
        user: id("user")?,
        projects: scope("projects")?,
        channels: scope("channels")?,
        publish: scope("publish")?,
        exp,
        jti: None,
        // When it was asked, not answered: a user revocation made meanwhile covers it.
        iat: Some(asked_at),
        claims: None,
        observer: false,
    })
}

fn scope(claims: &Map<String, Value>, name: &str) -> Result<Scope, ClientError> {
    let bad = || ClientError::new(ErrorCode::Forbidden, format!("claim {name:?} must be an array of ids"));
    let Some(value) = claims.get(name) else {
        return Ok(Scope::Only(Vec::new()));
    };
    let items = value.as_array().ok_or_else(bad)?;
    let mut ids = Vec::with_capacity(items.len());
    for item in items {
        let id = item.as_str().ok_or_else(bad)?;
        if id == "*" {
            return Ok(Scope::All);
        }
        // An invalid id could never name a room; dropping it is safer than refusing the user.
        if validate_id(id).is_ok() {
            ids.push(id.to_owned());
        }
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(Scope::Only(ids))
}

fn read_file(option: &'static str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    fs::read(path).map_err(|e| ConfigError::new(option, format!("cannot read {}: {e}", path.display())))
}

fn hmac_keys(option: &'static str, secret: &[u8]) -> Result<Keys, ConfigError> {
    if secret.len() < MIN_SECRET_LEN {
        return Err(ConfigError::new(
            option,
            format!("secret is {} bytes; use at least {MIN_SECRET_LEN} (e.g. `openssl rand -hex 32`)", secret.len()),
        ));
    }
    Ok(Keys::Single(DecodingKey::from_secret(secret), vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512]))
}

fn pem_keys(option: &'static str, pem: &[u8]) -> Result<Keys, ConfigError> {
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        let algs = vec![
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ];
        return Ok(Keys::Single(key, algs));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        return Ok(Keys::Single(key, vec![Algorithm::ES256, Algorithm::ES384]));
    }
    if let Ok(key) = DecodingKey::from_ed_pem(pem) {
        return Ok(Keys::Single(key, vec![Algorithm::EdDSA]));
    }
    Err(ConfigError::new(option, "not a PEM-encoded RSA, EC (P-256/P-384) or Ed25519 public key"))
}

fn jwks_keys(option: &'static str, raw: &[u8]) -> Result<Keys, ConfigError> {
    let (map, skipped) = crate::jwks::parse(raw).map_err(|e| ConfigError::new(option, e))?;
    if !skipped.is_empty() {
        tracing::info!(option, skipped = ?skipped, "JWKS keys that cannot verify a JWT are skipped");
    }
    Ok(Keys::ByKid(map))
}

/// The trusted issuers of `ROOMCAST_JWT_ISSUERS_FILE`; `audiences` (`ROOMCAST_JWT_AUDIENCE`)
/// apply to an issuer that names none.
fn trusted_issuers(
    raw: &[u8],
    audiences: &[String],
    freshness: Freshness,
) -> Result<HashMap<String, Trust>, ConfigError> {
    const OPTION: &str = env::ISSUERS_FILE;
    let file: IssuersFile = serde_json::from_slice(raw).map_err(|e| {
        ConfigError::new(OPTION, format!("expected {{\"issuers\": [{{\"issuer\", \"jwks_url\" | \"jwks_file\" | \"public_key_file\", \"audiences\", \"tenants\"}}]}}: {e}"))
    })?;
    if file.issuers.is_empty() {
        return Err(ConfigError::new(OPTION, "the file lists no issuer"));
    }
    let mut by_issuer = HashMap::new();
    for (i, entry) in file.issuers.into_iter().enumerate() {
        let at = |why: String| ConfigError::new(OPTION, format!("issuer #{i} ({:?}): {why}", entry.issuer));
        if entry.issuer.is_empty() {
            return Err(at("\"issuer\" is empty".into()));
        }
        if entry.tenants.is_empty() {
            return Err(at(
                "\"tenants\" is empty: list the tenants this issuer may vouch for, or [\"*\"] for any".into()
            ));
        }
        if let Some(bad) = entry.tenants.iter().find(|t| *t != "*" && validate_id(t).is_err()) {
            return Err(at(format!("{bad:?} is not a tenant id")));
        }
        if entry.audiences.iter().any(String::is_empty) {
            return Err(at("an audience is empty".into()));
        }
        let keys = match (&entry.jwks_url, &entry.jwks_file, &entry.public_key_file) {
            (Some(url), None, None) => {
                Keys::Remote(Arc::new(RemoteJwks::new(url, &entry.issuer, freshness).map_err(at)?))
            }
            (None, Some(path), None) => {
                let raw = fs::read(path).map_err(|e| at(format!("cannot read {}: {e}", path.display())))?;
                jwks_keys(OPTION, &raw).map_err(|e| at(e.message))?
            }
            (None, None, Some(path)) => {
                let raw = fs::read(path).map_err(|e| at(format!("cannot read {}: {e}", path.display())))?;
                pem_keys(OPTION, &raw).map_err(|e| at(e.message))?
            }
            _ => return Err(at("name exactly one of \"jwks_url\", \"jwks_file\" and \"public_key_file\"".into())),
        };
        let trust = Trust {
            keys,
            issuers: vec![entry.issuer.clone()],
            audiences: if entry.audiences.is_empty() { audiences.to_vec() } else { entry.audiences.clone() },
            // `["*"]` (alone or not): any tenant, which the empty list means below.
            tenants: if entry.tenants.iter().any(|t| t == "*") { Vec::new() } else { entry.tenants.clone() },
        };
        if by_issuer.insert(entry.issuer.clone(), trust).is_some() {
            return Err(ConfigError::new(OPTION, format!("issuer {:?} is listed twice", entry.issuer)));
        }
    }
    Ok(by_issuer)
}

/// Where `--dev` keeps its signing secret across runs, so a token minted with
/// `--dev --print-token` (or by a second `--dev` process) works against a running `--dev`
/// gateway: `$XDG_CACHE_HOME/roomcast/dev-secret`, else `$HOME/.cache/roomcast/dev-secret`.
pub fn dev_secret_path() -> Option<PathBuf> {
    let cache = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").filter(|v| !v.is_empty())?).join(".cache"),
    };
    Some(cache.join("roomcast").join("dev-secret"))
}

/// The `--dev` signing secret, from [`dev_secret_path`] (created there, readable by this user
/// only, on first use) and that path; a secret for this run only, and `None`, when there is no
/// place to keep it.
pub fn dev_secret() -> Result<(Secret, Option<PathBuf>), ConfigError> {
    let Some(path) = dev_secret_path() else {
        return Ok((Secret::from(random_hex(32)), None));
    };
    let invalid =
        |why: String| ConfigError::new("--dev", format!("{}: {why}; delete it to start afresh", path.display()));
    match fs::read_to_string(&path) {
        Ok(text) => {
            let secret = text.trim();
            if secret.len() < MIN_SECRET_LEN {
                return Err(invalid(format!("holds no secret of at least {MIN_SECRET_LEN} characters")));
            }
            Ok((Secret::from(secret.to_owned()), Some(path)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let secret = random_hex(32);
            match write_private(&path, &secret) {
                Ok(()) => Ok((Secret::from(secret), Some(path))),
                // Another --dev process created it first: use theirs.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => dev_secret(),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot keep the --dev secret; it lasts for this run only");
                    Ok((Secret::from(secret), None))
                }
            }
        }
        Err(e) => Err(invalid(e.to_string())),
    }
}

/// Creates `path` (and its folder) with `contents`, readable and writable by this user only.
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(contents.as_bytes())
}

/// `bytes` random bytes as lowercase hex (secrets, replica ids).
pub(crate) fn random_hex(bytes: usize) -> String {
    use std::fmt::Write;
    let mut buf = vec![0u8; bytes];
    rand::fill(&mut buf[..]);
    buf.iter().fold(String::with_capacity(bytes * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Finds a connection's token: handshake `auth.token`, then `Authorization: Bearer`, then the
/// `token` query parameter. A present but unusable `auth.token` is an error rather than a
/// reason to look further, so a client bug is reported instead of masked.
pub fn find_token(auth: Option<&Value>, headers: &HeaderMap, uri: &Uri) -> Result<String, ClientError> {
    if let Some(token) = auth.and_then(|a| a.get("token")) {
        return match token.as_str() {
            Some(t) if !t.is_empty() => Ok(t.to_owned()),
            _ => Err(ClientError::new(ErrorCode::TokenInvalid, "auth.token must be a non-empty string")),
        };
    }
    if let Some(value) = headers.get(AUTHORIZATION) {
        let value = value.to_str().unwrap_or_default();
        let mut parts = value.splitn(2, ' ');
        return match (parts.next(), parts.next()) {
            (Some(scheme), Some(t)) if scheme.eq_ignore_ascii_case("bearer") && !t.trim().is_empty() => {
                Ok(t.trim().to_owned())
            }
            _ => Err(ClientError::new(ErrorCode::TokenInvalid, "Authorization header must be `Bearer <token>`")),
        };
    }
    if let Some(query) = uri.query() {
        for pair in query.split('&') {
            if let Some(raw) = pair.strip_prefix("token=") {
                return percent_decode(raw)
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| ClientError::new(ErrorCode::TokenInvalid, "token query parameter is malformed"));
            }
        }
    }
    Err(ClientError::new(
        ErrorCode::TokenMissing,
        "no token: send it as auth.token, an Authorization: Bearer header or a token query parameter",
    ))
}

/// Decodes `%XX` escapes and `+`; `None` for broken escapes or non-UTF-8 results.
fn percent_decode(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = raw.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    /// [`Verifier::verify`] for keys that need no fetch.
    trait VerifyNow {
        fn verify_now(&self, token: &str) -> Result<Identity, ClientError>;
    }

    impl VerifyNow for Verifier {
        fn verify_now(&self, token: &str) -> Result<Identity, ClientError> {
            use futures_util::FutureExt;
            self.verify(token).now_or_never().expect("no fetch needed")
        }
    }

    #[test]
    fn a_bad_issuers_file_is_refused_naming_the_entry() {
        let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwks.json");
        let freshness = Freshness { refresh: Duration::from_secs(300), min_interval: Duration::from_secs(10) };
        let error = |file: Value| match trusted_issuers(file.to_string().as_bytes(), &[], freshness) {
            Ok(_) => panic!("accepted {file}"),
            Err(e) => {
                assert_eq!(e.option, env::ISSUERS_FILE);
                e.message
            }
        };
        let entry = |extra: Value| {
            let mut e = json!({ "issuer": "https://a/", "jwks_file": fixture, "tenants": ["acme"] });
            for (k, v) in extra.as_object().unwrap() {
                if v.is_null() {
                    e.as_object_mut().unwrap().remove(k);
                } else {
                    e[k] = v.clone();
                }
            }
            json!({ "issuers": [e] })
        };
        assert!(trusted_issuers(entry(json!({})).to_string().as_bytes(), &[], freshness).is_ok());
        assert!(error(json!({ "issuers": [] })).contains("no issuer"));
        assert!(error(json!("not an object")).contains("expected"));
        assert!(error(entry(json!({ "jwks_url": "https://a/jwks" }))).contains("exactly one"));
        assert!(error(entry(json!({ "jwks_file": null }))).contains("exactly one"));
        assert!(error(entry(json!({ "unknown": 1 }))).contains("unknown field"));
        assert!(error(entry(json!({ "issuer": "" }))).contains("empty"));
        assert!(error(entry(json!({ "tenants": null }))).contains("tenants"));
        assert!(error(entry(json!({ "tenants": [] }))).contains("[\"*\"]"));
        assert!(error(entry(json!({ "tenants": ["no spaces"] }))).contains("not a tenant id"));
        assert!(error(entry(json!({ "audiences": [""] }))).contains("audience is empty"));
        assert!(error(entry(json!({ "jwks_file": "/nonexistent.json" }))).contains("cannot read"));
        assert!(error(entry(json!({ "jwks_file": null, "jwks_url": "ftp://a/jwks" }))).contains("https"));
        assert!(error(entry(json!({ "jwks_file": null, "jwks_url": "http://idp.example/jwks" }))).contains("https"));
        let twice = json!({ "issuers": [entry(json!({}))["issuers"][0], entry(json!({}))["issuers"][0]] });
        assert!(error(twice).contains("listed twice"));
    }

    fn verifier(args: &[&str]) -> Verifier {
        use clap::Parser;
        let mut all = vec!["roomcast-gateway", "--jwt-secret", SECRET];
        all.extend_from_slice(args);
        Verifier::from_config(&Config::try_parse_from(all).unwrap()).unwrap()
    }

    fn token(claims: Value) -> String {
        jsonwebtoken::encode(&Header::default(), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
    }

    fn exp_in(secs: i64) -> i64 {
        jsonwebtoken::get_current_timestamp() as i64 + secs
    }

    #[test]
    fn claims_become_an_identity() {
        let id = verifier(&[])
            .verify_now(&token(
                json!({"sub": "u1", "tenant": "t1", "projects": ["p2", "p1"], "channels": ["*"], "exp": exp_in(60)}),
            ))
            .unwrap();
        assert_eq!((id.tenant.as_str(), id.user.as_str()), ("t1", "u1"));
        assert!(id.projects.allows("p1") && id.projects.allows("p2") && !id.projects.allows("p3"));
        assert_eq!(id.channels, Scope::All);
    }

    #[test]
    fn rejection_codes() {
        let v = verifier(&["--jwt-leeway", "0s"]);
        let code = |claims: Value| v.verify_now(&token(claims)).unwrap_err().code;
        assert_eq!(code(json!({"sub": "u", "tenant": "t", "exp": exp_in(-10)})), ErrorCode::TokenExpired);
        assert_eq!(code(json!({"sub": "u", "tenant": "t"})), ErrorCode::TokenInvalid);
        assert_eq!(
            code(json!({"sub": "u", "tenant": "t", "exp": exp_in(60), "nbf": exp_in(60)})),
            ErrorCode::TokenInvalid
        );
        assert_eq!(code(json!({"sub": "u", "exp": exp_in(60)})), ErrorCode::Forbidden);
        assert_eq!(code(json!({"sub": "u", "tenant": "a:b", "exp": exp_in(60)})), ErrorCode::Forbidden);
        assert_eq!(code(json!({"sub": "u", "tenant": "t", "projects": "p1", "exp": exp_in(60)})), ErrorCode::Forbidden);
        assert_eq!(v.verify_now("not.a.jwt").unwrap_err().code, ErrorCode::TokenInvalid);
        let other = jsonwebtoken::encode(
            &Header::default(),
            &json!({"sub": "u", "tenant": "t", "exp": exp_in(60)}),
            &EncodingKey::from_secret(b"another-secret-another-secret-xx"),
        )
        .unwrap();
        assert_eq!(v.verify_now(&other).unwrap_err().code, ErrorCode::TokenInvalid);
    }

    #[test]
    fn issuer_and_audience_are_enforced_when_configured() {
        let v = verifier(&["--jwt-issuer", "https://idp", "--jwt-audience", "roomcast"]);
        let ok = json!({"sub": "u", "tenant": "t", "exp": exp_in(60), "iss": "https://idp", "aud": "roomcast"});
        assert!(v.verify_now(&token(ok)).is_ok());
        for bad in [
            json!({"sub": "u", "tenant": "t", "exp": exp_in(60), "iss": "https://evil", "aud": "roomcast"}),
            json!({"sub": "u", "tenant": "t", "exp": exp_in(60), "aud": "roomcast"}),
            json!({"sub": "u", "tenant": "t", "exp": exp_in(60), "iss": "https://idp", "aud": "other"}),
        ] {
            assert_eq!(v.verify_now(&token(bad)).unwrap_err().code, ErrorCode::TokenInvalid);
        }
    }

    #[test]
    fn custom_claim_names() {
        let v = verifier(&["--jwt-user-claim", "uid", "--jwt-tenant-claim", "org", "--jwt-projects-claim", "prj"]);
        let id = v.verify_now(&token(json!({"uid": "u9", "org": "o1", "prj": ["x"], "exp": exp_in(60)}))).unwrap();
        assert_eq!((id.user.as_str(), id.tenant.as_str()), ("u9", "o1"));
        assert!(id.projects.allows("x"));
    }

    #[test]
    fn short_secrets_are_refused() {
        use clap::Parser;
        let config = Config::try_parse_from(["roomcast-gateway", "--jwt-secret", "short"]).unwrap();
        let err = Verifier::from_config(&config).unwrap_err();
        assert_eq!(err.option, env::JWT_SECRET);
    }

    #[test]
    fn token_sources_in_order() {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, "Bearer from-header".parse().unwrap());
        let uri: Uri = "/socket.io/?EIO=4&token=from%2Dquery".parse().unwrap();
        let auth = json!({"token": "from-auth"});
        assert_eq!(find_token(Some(&auth), &headers, &uri).unwrap(), "from-auth");
        assert_eq!(find_token(None, &headers, &uri).unwrap(), "from-header");
        assert_eq!(find_token(None, &HeaderMap::new(), &uri).unwrap(), "from-query");
        let none: Uri = "/socket.io/?EIO=4".parse().unwrap();
        assert_eq!(find_token(None, &HeaderMap::new(), &none).unwrap_err().code, ErrorCode::TokenMissing);
        assert_eq!(find_token(Some(&json!({"token": 42})), &headers, &uri).unwrap_err().code, ErrorCode::TokenInvalid);
        let bad_query: Uri = "/socket.io/?token=%zz".parse().unwrap();
        assert_eq!(find_token(None, &HeaderMap::new(), &bad_query).unwrap_err().code, ErrorCode::TokenInvalid);
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Tokens come from anyone: any text is refused with a code, and any claims a holder
            /// of the key signs give an identity or a coded refusal, never a panic.
            #[test]
            fn prop_any_token_text_is_refused_with_a_code(text in "\\PC{0,300}") {
                let error = verifier(&[]).verify_now(&text).unwrap_err();
                prop_assert!(matches!(error.code, ErrorCode::TokenInvalid | ErrorCode::TokenExpired | ErrorCode::Forbidden));
            }

            #[test]
            fn prop_any_signed_claims_give_an_identity_or_a_code(
                claims in crate::prop::json(),
                sub in prop_oneof![Just(Value::from("u1")), crate::prop::json()],
                tenant in prop_oneof![Just(Value::from("t1")), crate::prop::json()],
                exp in prop_oneof![Just(Value::from(exp_in(3600))), any::<u64>().prop_map(Value::from), crate::prop::json()],
            ) {
                let mut claims = match claims {
                    Value::Object(map) => Value::Object(map),
                    _ => json!({}),
                };
                claims["sub"] = sub;
                claims["tenant"] = tenant;
                claims["exp"] = exp;
                if let Ok(identity) = verifier(&[]).verify_now(&token(claims)) {
                    prop_assert!(roomcast_publisher::validate_id(&identity.tenant).is_ok());
                    prop_assert!(roomcast_publisher::validate_id(&identity.user).is_ok());
                }
            }
        }
    }
}
