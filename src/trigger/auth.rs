//! Who sent a trigger request: a flow token (`Authorization: Bearer`, or
//! the `access_token` query parameter where the flow allows it) or a body
//! signature. Every refusal reads alike, whatever the flow or the failure.

use http::header;
use http::request::Parts;

use super::read::{BodyState, declared_length};
use super::{Principal, Trigger};
use crate::error::ApiError;
use crate::flow::Flow;
use crate::inbound::signature;
use crate::token::{MAX_TOKEN_BYTES, TokenError};

/// The one message of every 401, whatever the flow or the failure, so a
/// refusal reveals neither whether the flow exists nor how it authenticates.
/// The same for every flow and every failure, so it names no scheme: a
/// signature-only flow and an unknown one must read alike.
const UNAUTHORIZED_MESSAGE: &str = "missing or invalid credentials";

impl Trigger {
    /// Who sent the request: a flow token in the header or the query, or a
    /// body signature; 401 with one message for every failure.
    pub(super) async fn authenticate(
        &self,
        flow: Option<&Flow>,
        parts: &Parts,
        body: &mut BodyState,
        flow_id: &str,
    ) -> Result<Principal, ApiError> {
        // The oldest token generation still accepted: the current one, or the
        // one before it during a rotation's grace period.
        let generation = self
            .app
            .control
            .generation(flow_id)
            .oldest_accepted(crate::backend::now_ms());
        let bearer_allowed = flow.is_none_or(|f| f.trigger.bearer);
        let mut token_error: Option<TokenError> = None;
        if let Some(value) = parts
            .headers
            .get(header::AUTHORIZATION)
            .filter(|_| bearer_allowed)
        {
            match crate::token::bearer(value).map(|t| self.app.keys.verify(t, flow_id, generation))
            {
                Some(Ok(p)) => return Ok(Principal::Token(p)),
                Some(Err(e)) => token_error = Some(e),
                None => token_error = Some(TokenError::Malformed),
            }
        }
        let query_token = flow
            .filter(|f| f.trigger.query_token)
            .and_then(|_| query_param(parts.uri.query(), crate::inbound::QUERY_TOKEN_PARAM));
        if let Some(token) = query_token {
            let verified = match token.len() <= MAX_TOKEN_BYTES {
                true => self.app.keys.verify(&token, flow_id, generation),
                false => Err(TokenError::Malformed),
            };
            match verified {
                Ok(p) => return Ok(Principal::Token(p)),
                Err(e) => token_error = Some(e),
            }
        }
        let signature = flow.and_then(|f| f.trigger.signature.as_ref());
        // A signature flow reads the body to verify it, which answers
        // `Expect: 100-continue` with `100 Continue` and takes as long as the
        // body takes to arrive. Every request with a body that its headers do
        // not authenticate, to any flow or none, is read the same way (same
        // budget, same timeout), so neither can tell which flows exist or how
        // they authenticate.
        let read = if signature.is_some()
            || expects_continue(&parts.headers)
            || declares_body(&parts.headers)
        {
            self.read_unauthenticated(parts, body).await?
        } else {
            None
        };
        if let (Some(config), Some(raw)) = (signature, read) {
            // A body that cannot be read cannot be verified: it stays unauthenticated.
            match signature::verify(config, &parts.headers, &raw, crate::clock::unix_now()) {
                Ok(()) => return Ok(Principal::Signature),
                Err(e) => tracing::info!(reason = %e, "signature refused"),
            }
        }
        // The reason is for the gateway's log only.
        match token_error {
            Some(e) => tracing::info!(reason = %e, "token refused"),
            None => tracing::info!("no credentials"),
        }
        Err(ApiError::unauthorized(UNAUTHORIZED_MESSAGE))
    }
}

/// Whether the request says it carries a body.
fn declares_body(headers: &http::HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || declared_length(headers).is_some_and(|length| length > 0)
}

/// Whether the sender waits for `100 Continue` before sending its body.
fn expects_continue(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("100-continue"))
}

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}
