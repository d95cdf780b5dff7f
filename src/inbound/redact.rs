//! Credentials in trigger requests: which headers and query parameters are
//! replaced by [`REDACTED`] before anything else sees the request (templates,
//! run records, logs).
//!
//! `Authorization` and the `access_token` query parameter (any case) are
//! removed outright; the lists here are redacted on top, extended by
//! `server.redact_headers` / `server.redact_query` and per flow by
//! `[trigger] redact_headers` / `redact_query`.
//!
//! Body signatures count as credentials: with the body beside it, a
//! recorded signature lets whoever reads the record send the same request
//! again (for schemes without a signed timestamp, at any time later). The
//! providers' signature headers are redacted, and so is the header a flow's
//! `[trigger.signature]` names.

use crate::flow::Trigger;

/// What a redacted value reads as.
pub const REDACTED: &str = "[redacted]";

/// Headers that carry credentials, always redacted.
pub const DEFAULT_HEADERS: &[&str] = &[
    "cookie",
    "cookie2",
    "set-cookie",
    "set-cookie2",
    "proxy-authorization",
    "x-api-key",
    "api-key",
    "apikey",
    "x-auth-token",
    "x-access-token",
    "x-amz-security-token",
    "x-goog-api-key",
    // Body signatures.
    "webhook-signature",
    "svix-signature",
    "stripe-signature",
    "x-hub-signature",
    "x-hub-signature-256",
    "x-shopify-hmac-sha256",
    "x-slack-signature",
    "x-twilio-signature",
    "x-signature",
];

/// Query parameters that carry credentials, always redacted.
pub const DEFAULT_QUERY: &[&str] = &[
    "token",
    "api_key",
    "apikey",
    "api-key",
    "password",
    "passwd",
    "secret",
    "client_secret",
];

/// The server-wide lists: built-in plus configured.
#[derive(Debug, Clone)]
pub struct Redaction {
    headers: Vec<String>,
    query: Vec<String>,
}

impl Default for Redaction {
    fn default() -> Self {
        Self::new(&[], &[])
    }
}

impl Redaction {
    /// The built-in lists extended by `headers` and `query`.
    pub fn new(headers: &[String], query: &[String]) -> Self {
        let merge = |defaults: &[&str], extra: &[String]| {
            defaults
                .iter()
                .map(|name| name.to_string())
                .chain(extra.iter().map(|name| name.to_ascii_lowercase()))
                .collect()
        };
        Self {
            headers: merge(DEFAULT_HEADERS, headers),
            query: merge(DEFAULT_QUERY, query),
        }
    }

    /// Whether header `name` (lower case, as `http` gives it) is redacted for `trigger`.
    pub fn header(&self, trigger: &Trigger, name: &str) -> bool {
        self.headers.iter().any(|h| h == name)
            || trigger.redact_headers.iter().any(|h| h == name)
            || trigger
                .signature
                .as_ref()
                .is_some_and(|s| s.header.as_str() == name)
    }

    /// Whether query parameter `name` is redacted for `trigger` (any case).
    pub fn query(&self, trigger: &Trigger, name: &str) -> bool {
        let matches = |p: &String| p.eq_ignore_ascii_case(name);
        self.query.iter().any(matches) || trigger.redact_query.iter().any(matches)
    }
}
