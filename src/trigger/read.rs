//! Reading a trigger request's body within limits: the flow's once the
//! sender is authenticated, the server's (which apply alike to every flow,
//! known or not) before; and the slots that keep unauthenticated work from
//! crowding out authenticated senders.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::Trigger;
use crate::config::ServerConfig;
use crate::error::ApiError;

/// Seconds a sender is asked to wait when the gateway is at a limit.
const BUSY_RETRY_AFTER_SECS: u64 = 1;
/// Longest wait of an authenticated request for a slot before it gets 503.
const SLOT_WAIT: Duration = Duration::from_secs(30);

/// What a request may take. Unauthenticated work (reading a body to check
/// its signature) has its own small budget, so senders who cannot
/// authenticate never take the slots of those who can.
pub(super) struct TriggerLimits {
    /// Slots for authenticated requests.
    requests: Arc<Semaphore>,
    /// Slots for bodies read before authentication.
    unauthenticated_reads: Arc<Semaphore>,
    /// KiB those bodies may hold together.
    unauthenticated_kib: Arc<Semaphore>,
}

impl TriggerLimits {
    /// Limits as `[server]` sets them.
    pub(super) fn new(server: &ServerConfig) -> Self {
        Self {
            requests: Arc::new(Semaphore::new(server.max_requests)),
            unauthenticated_reads: Arc::new(Semaphore::new(server.max_unauthenticated_reads)),
            unauthenticated_kib: Arc::new(Semaphore::new(
                server.unauthenticated_body_budget.div_ceil(1024),
            )),
        }
    }
}

/// Room taken from the unauthenticated budget while a body is read.
struct UnauthenticatedRead {
    _read: OwnedSemaphorePermit,
    _kib: OwnedSemaphorePermit,
}

impl TriggerLimits {
    /// A slot for an authenticated request, held while it lives; 503 when
    /// none frees up in time.
    pub(super) async fn request_slot(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        // A free slot needs no timer.
        if let Ok(permit) = self.requests.clone().try_acquire_owned() {
            return Ok(permit);
        }
        tokio::time::timeout(SLOT_WAIT, self.requests.clone().acquire_owned())
            .await
            .map(|permit| permit.expect("never closed"))
            .map_err(|_| busy("the gateway is at its limit of requests in progress"))
    }
}

/// 503 with `Retry-After`: the gateway is at a limit.
fn busy(message: &str) -> ApiError {
    let mut err = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", message);
    err.retry_after_secs = Some(BUSY_RETRY_AFTER_SECS);
    err
}

pub(super) fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("the body is over this flow's limit of {limit} bytes"),
    )
}

/// The `Content-Length` the sender announced.
pub(super) fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

pub(super) enum BodyState {
    Unread(Incoming),
    Read(Bytes),
    /// Over the limit it was read with, or failed: never read again.
    Unreadable,
}

impl BodyState {
    /// The body, read at most once: up to `limit` bytes within `timeout`.
    pub(super) async fn read(
        &mut self,
        limit: usize,
        timeout: Duration,
    ) -> Result<Bytes, ApiError> {
        if let BodyState::Unread(_) = self {
            let BodyState::Unread(incoming) = std::mem::replace(self, BodyState::Unreadable) else {
                unreachable!()
            };
            let collected = tokio::time::timeout(timeout, Limited::new(incoming, limit).collect())
                .await
                .map_err(|_| {
                    ApiError::new(
                        StatusCode::REQUEST_TIMEOUT,
                        "body_timeout",
                        format!(
                            "the body did not arrive within {}",
                            crate::config::readable_duration(timeout)
                        ),
                    )
                })?;
            match collected {
                Ok(collected) => *self = BodyState::Read(collected.to_bytes()),
                Err(e)
                    if e.downcast_ref::<http_body_util::LengthLimitError>()
                        .is_some() => {}
                Err(e) => {
                    return Err(ApiError::bad_request(format!(
                        "could not read the request body: {e}"
                    )));
                }
            }
        }
        match self {
            BodyState::Read(bytes) if bytes.len() <= limit => Ok(bytes.clone()),
            _ => Err(too_large(limit)),
        }
    }
}

impl Trigger {
    /// Reads the body of a request not authenticated yet, within the server-wide
    /// limits that apply alike to every flow, known or not: `None` when it
    /// cannot be read (announced or found over `server.max_body_bytes`, too
    /// slow), so the request stays unauthenticated.
    pub(super) async fn read_unauthenticated(
        &self,
        parts: &Parts,
        body: &mut BodyState,
    ) -> Result<Option<Bytes>, ApiError> {
        let server = &self.app.server;
        let announced = declared_length(&parts.headers);
        if announced.is_some_and(|length| length > server.max_body_bytes as u64) {
            return Ok(None);
        }
        let reserve = announced.map_or(server.max_body_bytes, |length| length as usize);
        let kib = u32::try_from(reserve.div_ceil(1024).max(1)).unwrap_or(u32::MAX);
        let (Ok(read), Ok(kib)) = (
            self.limits
                .unauthenticated_reads
                .clone()
                .try_acquire_owned(),
            self.limits
                .unauthenticated_kib
                .clone()
                .try_acquire_many_owned(kib),
        ) else {
            tracing::warn!(
                "unauthenticated body budget exhausted (server.max_unauthenticated_reads, server.unauthenticated_body_budget)"
            );
            return Err(busy("too many requests are being verified; retry shortly"));
        };
        let _room = UnauthenticatedRead {
            _read: read,
            _kib: kib,
        };
        Ok(body
            .read(server.max_body_bytes, server.body_read_timeout)
            .await
            .ok())
    }
}
