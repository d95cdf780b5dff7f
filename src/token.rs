//! Flow tokens: the JWTs senders present as `Authorization: Bearer <token>`.
//!
//! A token is HS256-signed with the gateway's signing key and carries `sub`
//! (the flow id), `iat`, `jti`, an optional `exp` and `ver`, the flow's token
//! generation: bumping the generation makes every older token fail.
//!
//! Admin tokens, for `/v1/admin/`, are signed with the same key and carry a
//! `role` (`ops`, `author` or `viewer`) and the admin's name as `sub`. A
//! token with a role is never accepted on a trigger, and one without is
//! never accepted on the admin API.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// Clock skew tolerated on `exp`, in seconds.
const EXP_LEEWAY_SECS: u64 = 30;

/// The longest lifetime a minted token may have: ten years.
pub const MAX_TTL: std::time::Duration = std::time::Duration::from_secs(3650 * 86_400);
/// Verified tokens remembered so repeat senders skip JWT decoding; the cache
/// is emptied when full.
const VERIFIED_CACHE_CAPACITY: usize = 10_000;

/// The claims of a flow token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FlowClaims {
    /// The flow id the token is for.
    pub sub: String,
    /// Issued at, seconds since the epoch.
    pub iat: u64,
    /// Unique token id.
    pub jti: String,
    /// Expiry, seconds since the epoch; absent for tokens that do not expire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    /// The flow's token generation when the token was minted.
    pub ver: u64,
    /// Present on admin tokens, which are never valid on a trigger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Present on the console's tokens (see [`ConsoleUse`]), which are
    /// never valid on the admin API.
    #[serde(default, rename = "use", skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
}

/// What a console token is for. Neither is accepted as an admin API bearer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleUse {
    /// A one-time sign-in link, exchanged for a session.
    Link,
    /// A signed-in console session, carried in its cookie.
    Session,
}

impl ConsoleUse {
    fn as_str(self) -> &'static str {
        match self {
            ConsoleUse::Link => "console-link",
            ConsoleUse::Session => "console-session",
        }
    }
}

/// Why a token was refused. The messages are safe to show the sender: none
/// depends on whether the flow exists.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a JWT, or claims of the wrong shape.
    #[error("the bearer token is malformed")]
    Malformed,
    /// Signed with another key, or with an algorithm other than HS256.
    #[error("the bearer token's signature is not valid")]
    BadSignature,
    /// `exp` is in the past.
    #[error("the bearer token has expired")]
    Expired,
    /// `sub` names another flow, the token is an admin token on a trigger,
    /// or a flow token on the admin API.
    #[error("the bearer token is not valid for this flow")]
    WrongFlow,
    /// `ver` is older than the flow's current token generation.
    #[error("the bearer token has been revoked by a token rotation")]
    Rotated,
    /// Minting failed.
    #[error("cannot sign the token: {0}")]
    Signing(String),
}

/// What an admin token allows; each role can do everything the ones
/// before it can.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Reads flows, runs and the audit log.
    Viewer,
    /// Also reloads flows and replays runs.
    Author,
    /// Also pauses, unpauses, rotates and revokes tokens, and aborts runs.
    Ops,
}

impl Role {
    /// Parses `ops`, `author` or `viewer`.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "viewer" => Role::Viewer,
            "author" => Role::Author,
            "ops" => Role::Ops,
            _ => return None,
        })
    }

    /// The role as written in tokens.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Author => "author",
            Role::Ops => "ops",
        }
    }
}

/// The identity a verified admin token proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminPrincipal {
    /// Who: the token's `sub`.
    pub name: String,
    /// What they may do.
    pub role: Role,
    /// The token's `jti`, by which it can be revoked.
    pub token_id: String,
    /// When the token expires (seconds since the epoch), if it does.
    pub expires: Option<u64>,
}

/// The identity a verified flow token proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowPrincipal {
    /// The flow the token is for.
    pub flow_id: String,
    /// The token's `jti`.
    pub token_id: String,
}

/// Signs and verifies flow tokens with the gateway's key.
///
/// Signature checks are cached per exact token string: a sender reusing its
/// token costs one map lookup. Expiry, flow and generation are checked on
/// every use, cached or not.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    verified: Arc<RwLock<HashMap<String, Arc<FlowClaims>>>>,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKeys([redacted])")
    }
}

impl TokenKeys {
    /// Keys from the gateway's signing secret.
    pub fn new(secret: &Secret<Vec<u8>>) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["sub"]);
        validation.leeway = EXP_LEEWAY_SECS;
        validation.validate_exp = true;
        // A token not valid yet (`nbf` ahead, beyond the leeway) is refused.
        validation.validate_nbf = true;
        Self {
            encoding: EncodingKey::from_secret(secret.expose()),
            decoding: DecodingKey::from_secret(secret.expose()),
            validation,
            verified: Arc::default(),
        }
    }

    /// Mints a token for `flow_id` at generation `ver`, expiring after `ttl` when given.
    pub fn issue(
        &self,
        flow_id: &str,
        ttl: Option<Duration>,
        ver: u64,
    ) -> Result<String, TokenError> {
        self.mint(flow_id, ttl, ver, None, None)
    }

    /// Mints an admin token for `name` with `role`, expiring after `ttl` when given.
    pub fn issue_admin(
        &self,
        name: &str,
        role: Role,
        ttl: Option<Duration>,
    ) -> Result<String, TokenError> {
        self.mint(name, ttl, 0, Some(role), None)
    }

    /// Mints a console token for `name` with `role`, for `purpose`, expiring
    /// after `ttl`.
    pub fn issue_console(
        &self,
        name: &str,
        role: Role,
        ttl: Duration,
        purpose: ConsoleUse,
    ) -> Result<String, TokenError> {
        self.mint(name, Some(ttl), 0, Some(role), Some(purpose))
    }

    /// Mints a console session token for `name` with `role`, expiring after
    /// `ttl`: the token and its id (`jti`), by which it is listed and revoked.
    pub fn issue_session(
        &self,
        name: &str,
        role: Role,
        ttl: Duration,
    ) -> Result<(String, String), TokenError> {
        self.mint_with_id(name, Some(ttl), 0, Some(role), Some(ConsoleUse::Session))
    }

    fn mint(
        &self,
        sub: &str,
        ttl: Option<Duration>,
        ver: u64,
        role: Option<Role>,
        purpose: Option<ConsoleUse>,
    ) -> Result<String, TokenError> {
        Ok(self.mint_with_id(sub, ttl, ver, role, purpose)?.0)
    }

    /// A new token and its id.
    fn mint_with_id(
        &self,
        sub: &str,
        ttl: Option<Duration>,
        ver: u64,
        role: Option<Role>,
        purpose: Option<ConsoleUse>,
    ) -> Result<(String, String), TokenError> {
        let jti = uuid::Uuid::new_v4().simple().to_string();
        let now = unix_now();
        let claims = FlowClaims {
            sub: sub.to_owned(),
            iat: now,
            jti: jti.clone(),
            exp: ttl.map(|ttl| now + ttl.as_secs()),
            ver,
            role: role.map(|r| r.as_str().to_owned()),
            use_: purpose.map(|p| p.as_str().to_owned()),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| TokenError::Signing(e.to_string()))?;
        Ok((token, jti))
    }

    /// Verifies an admin token: signed with this key, not expired, and
    /// carrying a known role (a flow token carries none). Revocation is the
    /// caller's check.
    pub fn verify_admin(&self, token: &str) -> Result<AdminPrincipal, TokenError> {
        self.verify_admin_for(token, None)
    }

    /// Verifies a console token made for `purpose`, as [`TokenKeys::verify_admin`].
    pub fn verify_console(
        &self,
        token: &str,
        purpose: ConsoleUse,
    ) -> Result<AdminPrincipal, TokenError> {
        self.verify_admin_for(token, Some(purpose))
    }

    fn verify_admin_for(
        &self,
        token: &str,
        purpose: Option<ConsoleUse>,
    ) -> Result<AdminPrincipal, TokenError> {
        let claims = self.decode(token)?;
        if claims.use_.as_deref() != purpose.map(ConsoleUse::as_str) {
            return Err(TokenError::WrongFlow);
        }
        let role = claims
            .role
            .as_deref()
            .and_then(Role::parse)
            .ok_or(TokenError::WrongFlow)?;
        Ok(AdminPrincipal {
            name: claims.sub,
            role,
            token_id: claims.jti,
            expires: claims.exp,
        })
    }

    /// Verifies `token` for `flow_id` whose current token generation is `current_ver`.
    pub fn verify(
        &self,
        token: &str,
        flow_id: &str,
        current_ver: u64,
    ) -> Result<FlowPrincipal, TokenError> {
        let cached = self
            .verified
            .read()
            .expect("token cache lock poisoned")
            .get(token)
            .cloned();
        let claims = match cached {
            Some(claims) => {
                let expired = claims
                    .exp
                    .is_some_and(|exp| unix_now() > exp + EXP_LEEWAY_SECS);
                if expired {
                    return Err(TokenError::Expired);
                }
                claims
            }
            None => {
                let claims = Arc::new(self.decode(token)?);
                let mut cache = self.verified.write().expect("token cache lock poisoned");
                if cache.len() >= VERIFIED_CACHE_CAPACITY {
                    cache.clear();
                }
                cache.insert(token.to_owned(), claims.clone());
                claims
            }
        };
        if claims.sub != flow_id || claims.role.is_some() {
            return Err(TokenError::WrongFlow);
        }
        if claims.ver < current_ver {
            return Err(TokenError::Rotated);
        }
        Ok(FlowPrincipal {
            flow_id: claims.sub.clone(),
            token_id: claims.jti.clone(),
        })
    }

    fn decode(&self, token: &str) -> Result<FlowClaims, TokenError> {
        jsonwebtoken::decode::<FlowClaims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => {
                    TokenError::BadSignature
                }
                _ => TokenError::Malformed,
            })
    }
}

use crate::clock::unix_now;

/// Longest token looked at; flowgate's own are a few hundred bytes.
pub const MAX_TOKEN_BYTES: usize = 4096;

/// The token of an `Authorization` header value `Bearer <token>`: the
/// scheme in any case, spaces around the token ignored. `None` for another
/// scheme, an empty token, or one over [`MAX_TOKEN_BYTES`]. The trigger and
/// the admin API both read their tokens with it.
pub fn bearer(value: &http::HeaderValue) -> Option<&str> {
    let (scheme, token) = value.to_str().ok()?.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && token.len() <= MAX_TOKEN_BYTES)
        .then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(secret: &str) -> TokenKeys {
        TokenKeys::new(&Secret::new(secret.as_bytes().to_vec()))
    }

    #[test]
    fn issued_tokens_verify_for_their_flow_only() {
        let k = keys("0123456789abcdef0123456789abcdef");
        let token = k.issue("signup", None, 0).unwrap();
        assert!(token.starts_with("ey") && token.len() > 50);
        assert_eq!(k.verify(&token, "signup", 0).unwrap().flow_id, "signup");
        assert_eq!(k.verify(&token, "other", 0), Err(TokenError::WrongFlow));
        assert_eq!(k.verify(&token, "signup", 1), Err(TokenError::Rotated));
        let other = keys("another-key-another-key-another-key");
        assert_eq!(
            other.verify(&token, "signup", 0),
            Err(TokenError::BadSignature)
        );
        assert_eq!(k.verify("garbage", "signup", 0), Err(TokenError::Malformed));
        // Cached verifications still check flow and generation.
        assert_eq!(k.verify(&token, "signup", 0).unwrap().flow_id, "signup");
        assert_eq!(k.verify(&token, "other", 0), Err(TokenError::WrongFlow));
        assert_eq!(k.verify(&token, "signup", 1), Err(TokenError::Rotated));
    }

    #[test]
    fn console_tokens_are_for_the_console_only() {
        let k = keys("0123456789abcdef0123456789abcdef");
        let hour = Duration::from_secs(3600);
        let link = k
            .issue_console("alice", Role::Ops, hour, ConsoleUse::Link)
            .unwrap();
        let session = k
            .issue_console("alice", Role::Ops, hour, ConsoleUse::Session)
            .unwrap();
        let admin = k.issue_admin("alice", Role::Ops, None).unwrap();
        let principal = k.verify_console(&link, ConsoleUse::Link).unwrap();
        assert_eq!(
            (principal.name.as_str(), principal.role),
            ("alice", Role::Ops)
        );
        assert!(principal.expires.is_some());
        assert!(k.verify_console(&session, ConsoleUse::Session).is_ok());
        // Neither is an admin API bearer, nor the other's kind, nor a flow token.
        for token in [&link, &session] {
            assert_eq!(k.verify_admin(token), Err(TokenError::WrongFlow));
            assert_eq!(k.verify(token, "alice", 0), Err(TokenError::WrongFlow));
        }
        assert!(k.verify_console(&link, ConsoleUse::Session).is_err());
        assert!(k.verify_console(&session, ConsoleUse::Link).is_err());
        assert!(k.verify_console(&admin, ConsoleUse::Session).is_err());
    }

    #[test]
    fn cached_tokens_still_expire() {
        let k = keys("0123456789abcdef0123456789abcdef");
        let mut claims = FlowClaims {
            sub: "f".into(),
            iat: unix_now(),
            jti: "j".into(),
            exp: Some(unix_now() + 3600),
            ver: 0,
            role: None,
            use_: None,
        };
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &k.encoding).unwrap();
        assert!(k.verify(&token, "f", 0).is_ok());
        // Pretend time passed: the cached entry now holds an expiry in the past.
        claims.exp = Some(unix_now() - EXP_LEEWAY_SECS - 1);
        k.verified
            .write()
            .unwrap()
            .insert(token.clone(), Arc::new(claims));
        assert_eq!(k.verify(&token, "f", 0), Err(TokenError::Expired));
    }
}
