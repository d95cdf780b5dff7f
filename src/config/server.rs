//! `[server]`: the listener's limits and timeouts.

use std::net::SocketAddr;
use std::time::Duration;

use http::HeaderName;
use serde::Deserialize;

use super::parse;

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on, `host:port`.
    #[serde(deserialize_with = "parse::socket_addr")]
    pub listen: SocketAddr,
    /// Default request body limit in bytes; a flow may set its own `[trigger] max_body_bytes`.
    pub max_body_bytes: usize,
    /// How long `serve` waits for in-flight requests after SIGTERM/SIGINT, e.g. `"30s"`.
    #[serde(deserialize_with = "parse::duration")]
    pub shutdown_grace: Duration,
    /// Request headers carrying an idempotency key, first match wins: a
    /// repeat within 24 h for the same flow starts no run and gets the first answer.
    #[serde(deserialize_with = "parse::header_names")]
    pub idempotency_headers: Vec<HeaderName>,
    /// A request's head must arrive within this, e.g. `"10s"`; an idle HTTP/1
    /// keep-alive connection waiting for its next request is closed after it too.
    #[serde(deserialize_with = "parse::positive_duration")]
    pub header_read_timeout: Duration,
    /// A request's whole body must arrive within this, e.g. `"30s"`; a slower
    /// sender gets 408.
    #[serde(deserialize_with = "parse::positive_duration")]
    pub body_read_timeout: Duration,
    /// A connection with no request in progress for this long is closed
    /// (HTTP/2 connections included), e.g. `"60s"`.
    #[serde(deserialize_with = "parse::positive_duration")]
    pub idle_timeout: Duration,
    /// Open connections at most; at the limit the gateway stops accepting
    /// until one closes (and logs it). Keep it under the process's file limit.
    pub max_connections: usize,
    /// Authenticated trigger requests handled at once; more wait for a slot.
    /// Health, readiness and metrics never wait for one.
    pub max_requests: usize,
    /// Bodies read at once before their sender is authenticated (flows with
    /// `[trigger.signature]`); beyond it such requests get 503 with `Retry-After`.
    pub max_unauthenticated_reads: usize,
    /// Bytes all bodies read before their sender is authenticated may hold
    /// together; each read reserves its `Content-Length` (or `max_body_bytes`).
    pub unauthenticated_body_budget: usize,
    /// Streams one HTTP/2 connection may have open at once.
    pub http2_max_concurrent_streams: u32,
    /// How often an HTTP/2 connection is pinged; a peer that does not answer
    /// within the same time is disconnected, e.g. `"20s"`.
    #[serde(deserialize_with = "parse::positive_duration")]
    pub http2_keep_alive_interval: Duration,
    /// Request headers whose values are replaced by `[redacted]` in what
    /// templates see, run records and logs, on top of the built-in list
    /// (`authorization`, `cookie`, `proxy-authorization`, `x-api-key`, ...).
    pub redact_headers: Vec<String>,
    /// Query parameters redacted the same way, on top of the built-in list
    /// (`access_token`, `token`, `api_key`, `password`, ...).
    pub redact_query: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 1024 * 1024,
            shutdown_grace: Duration::from_secs(30),
            idempotency_headers: [
                "idempotency-key",
                "webhook-id",
                "x-github-delivery",
                "x-shopify-webhook-id",
            ]
            .map(HeaderName::from_static)
            .to_vec(),
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            max_requests: 4096,
            max_unauthenticated_reads: 256,
            unauthenticated_body_budget: 64 * 1024 * 1024,
            http2_max_concurrent_streams: 100,
            http2_keep_alive_interval: Duration::from_secs(20),
            redact_headers: Vec::new(),
            redact_query: Vec::new(),
        }
    }
}
