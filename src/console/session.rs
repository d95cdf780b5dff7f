//! Console sessions: signing in with an admin token or a one-time link,
//! the session cookie, and the check every state-changing request passes.
//!
//! A session is a signed console token (see [`crate::token::ConsoleUse`])
//! in an `HttpOnly`, `SameSite=Strict` cookie scoped to `/console`. It
//! carries the role and name of the admin token it was made from and
//! expires with it (12 hours at most). It is not an admin API bearer.
//!
//! Every session is remembered in the control state with what it was made
//! from ([`crate::backend::control::SessionEntry`]), and a cookie is honoured
//! only while its session is there and open: signing out, revoking the
//! session (`DELETE /v1/admin/sessions/{id}`) or revoking the admin token it
//! was made from ends it on every replica within the control plane's
//! refresh period.
//!
//! Forms carry a token derived from the session (`_csrf`); a POST without
//! it, or from another origin, is refused before anything happens.

use std::time::Duration;

use http::{HeaderMap, HeaderValue, header};
use sha2::{Digest, Sha256};

use crate::admin::Caller;
use crate::app::AppState;
use crate::backend::control::{SessionEntry, SessionSource};
use crate::backend::now_ms;
use crate::error::ApiError;
use crate::token::{AdminPrincipal, ConsoleUse};

/// The session cookie's name.
pub const COOKIE: &str = "flowgate_console";
/// The longest a session lasts.
pub const MAX_SESSION: Duration = Duration::from_secs(12 * 3600);
/// The longest a sign-in link works.
pub const MAX_LINK: Duration = Duration::from_secs(24 * 3600);

/// Where used sign-in links are remembered: the idempotency store, under a
/// name no flow can have. It remembers them for a day, as long as a link
/// can work ([`MAX_LINK`]).
const LINK_CLAIMS: &str = "@console-links";
const _: () = assert!(MAX_LINK.as_secs() <= crate::backend::IDEMPOTENCY_TTL.as_secs());

/// A signed-in user.
pub(crate) struct Session {
    /// The admin identity the console acts as.
    pub caller: Caller,
    /// The value forms must echo back in `_csrf`.
    pub csrf: String,
}

/// The session the request's cookie carries, if it is valid and open.
pub(crate) fn current(state: &AppState, headers: &HeaderMap) -> Option<Session> {
    let token = cookie(headers, COOKIE)?;
    let principal = state.keys.verify_console(token, ConsoleUse::Session).ok()?;
    state.control.session(&principal.token_id)?;
    Some(Session {
        csrf: csrf_for(&principal.token_id),
        caller: Caller { principal },
    })
}

/// The form token of the session with token id `jti`: not the id itself,
/// which revocation entries name.
fn csrf_for(jti: &str) -> String {
    hex::encode(&Sha256::digest(format!("flowgate-console-csrf:{jti}"))[..16])
}

/// Signs in with a pasted admin token or a one-time link token: the
/// session token to set as the cookie, and its lifetime.
pub(crate) async fn sign_in(
    state: &AppState,
    admin_token: Option<&str>,
    link: Option<&str>,
) -> Result<(String, Duration), ApiError> {
    let refused =
        || ApiError::unauthorized("that token is not a valid admin token or sign-in link");
    let principal = match (admin_token, link) {
        (Some(token), _) => state.keys.verify_admin(token).map_err(|_| refused())?,
        (None, Some(link)) => state
            .keys
            .verify_console(link, ConsoleUse::Link)
            .map_err(|_| refused())?,
        (None, None) => return Err(ApiError::bad_request("paste an admin token to sign in")),
    };
    if state.control.is_revoked(&principal.token_id) {
        return Err(ApiError::unauthorized(
            "that token has been revoked, or the sign-in link was used already",
        ));
    }
    if link.is_some() && admin_token.is_none() {
        // One use. Claiming the link's id is atomic in the store, so two
        // sign-ins racing with the same link (on one replica or several)
        // open one session, which the audit log shows as `session.open`.
        // The link's id stays unrevoked: revoking it later (`flowgate
        // token revoke <jti>`) ends the session it opened.
        let claim = state
            .idempotency
            .reserve(LINK_CLAIMS, &principal.token_id, "")
            .await?;
        if claim != crate::backend::Reservation::Reserved {
            return Err(ApiError::unauthorized(
                "that sign-in link was used already; ask for a new one",
            ));
        }
    }
    // A link's own expiry is for the link; the session it opens lasts the
    // longest a session may. A pasted token's session ends with the token.
    let ttl = if admin_token.is_some() {
        lifetime(&principal)
    } else {
        MAX_SESSION
    };
    let (session, id) = state
        .keys
        .issue_session(&principal.name, principal.role, ttl)
        .map_err(|_| ApiError::internal())?;
    let now = now_ms();
    let entry = SessionEntry {
        id,
        subject: principal.name.clone(),
        role: principal.role.as_str().to_owned(),
        created_ms: now,
        expires_ms: now + ttl.as_millis() as u64,
        source: SessionSource {
            kind: if admin_token.is_some() {
                "token"
            } else {
                "link"
            }
            .to_owned(),
            jti: principal.token_id.clone(),
        },
    };
    let actor = Caller {
        principal: principal.clone(),
    }
    .actor();
    state.control.open_session(entry, &actor).await?;
    Ok((session, ttl))
}

/// Ends `session` on every replica.
pub(crate) async fn sign_out(state: &AppState, session: &Session) -> Result<(), ApiError> {
    state
        .control
        .revoke_session(&session.caller.principal.token_id, &session.caller.actor())
        .await
        .map_err(ApiError::from)
}

/// How long a session made from `principal` may last: until its token
/// expires, at most [`MAX_SESSION`].
fn lifetime(principal: &AdminPrincipal) -> Duration {
    let now = now_ms() / 1000;
    principal
        .expires
        .map(|exp| Duration::from_secs(exp.saturating_sub(now)))
        .unwrap_or(MAX_SESSION)
        .min(MAX_SESSION)
}

/// The `Set-Cookie` value for `token` lasting `ttl` (empty `token` and
/// zero `ttl` clear it). `Secure` when the request came over TLS through a
/// proxy (`X-Forwarded-Proto: https`).
pub(crate) fn set_cookie(token: &str, ttl: Duration, headers: &HeaderMap) -> HeaderValue {
    let secure = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"));
    let value = format!(
        "{COOKIE}={token}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={}{}",
        ttl.as_secs(),
        if secure { "; Secure" } else { "" }
    );
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Whether a state-changing request may proceed: it must come from this
/// origin (browsers send `Origin` on every POST; `Sec-Fetch-Site` when they
/// know it) and, once signed in, echo the session's form token.
pub(crate) fn same_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && !matches!(site, "same-origin" | "none")
    {
        return false;
    }
    match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        None => true,
        Some(origin) => {
            let host = headers
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            let origin_host = origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"))
                .unwrap_or_default();
            !host.is_empty() && origin_host.eq_ignore_ascii_case(host)
        }
    }
}

/// Whether the request carries a session cookie, valid or not.
pub(crate) fn has_cookie(headers: &HeaderMap) -> bool {
    cookie(headers, COOKIE).is_some_and(|value| !value.is_empty())
}

/// The value of cookie `name`.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    #[test]
    fn cross_site_posts_are_refused() {
        assert!(same_origin(&headers(&[("host", "gw:8080")])));
        assert!(same_origin(&headers(&[
            ("host", "gw:8080"),
            ("origin", "http://gw:8080")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "gw:8080"),
            ("origin", "http://evil.example")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "gw:8080"),
            ("origin", "null")
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "gw:8080"),
            ("sec-fetch-site", "cross-site")
        ])));
    }

    #[test]
    fn the_cookie_is_read_among_others_and_set_with_its_flags() {
        let map = headers(&[("cookie", "a=1; flowgate_console=tok; b=2")]);
        assert_eq!(cookie(&map, COOKIE), Some("tok"));
        let set = set_cookie("tok", Duration::from_secs(60), &HeaderMap::new());
        assert_eq!(
            set.to_str().unwrap(),
            "flowgate_console=tok; Path=/console; HttpOnly; SameSite=Strict; Max-Age=60"
        );
        let tls = headers(&[("x-forwarded-proto", "https")]);
        assert!(
            set_cookie("tok", Duration::from_secs(60), &tls)
                .to_str()
                .unwrap()
                .ends_with("; Secure")
        );
    }
}
