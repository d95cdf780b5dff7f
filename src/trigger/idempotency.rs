//! Idempotency keys: a repeat of a request within a day, with the same key
//! (`Idempotency-Key` or a provider's delivery id, `[server]
//! idempotency_headers`), starts no run and gets the first answer again.

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::Full;

use super::Trigger;
use crate::backend::{Reservation, StoredAnswer};
use crate::error::{ApiError, Body};
use crate::flow::Flow;
use crate::inbound::{buffered, header_pairs};

/// How often a repeat polls for the answer of a first request still in flight.
const IDEMPOTENCY_POLL: std::time::Duration = std::time::Duration::from_millis(50);
/// Header marking an answer replayed for a repeated idempotency key.
const REPLAYED_HEADER: &str = "idempotent-replayed";

/// The request's idempotency key: the first of `headers` it carries, not empty.
pub(super) fn key_of(parts: &Parts, headers: &[HeaderName]) -> Option<String> {
    parts
        .headers
        .iter()
        .find(|(name, _)| headers.contains(name))
        .and_then(|(_, value)| value.to_str().ok())
        .filter(|key| !key.is_empty())
        .map(str::to_owned)
}

impl Trigger {
    /// Reserves the key for this run, or returns the answer to replay. A store
    /// that cannot be reached does not block the request: it runs without
    /// deduplication (and async runs then fail to queue anyway).
    pub(super) async fn reserve_or_replay(
        &self,
        flow: &Flow,
        key: &str,
        run_id: &str,
    ) -> Result<Option<Response<Body>>, ApiError> {
        // The first request may take up to its run's timeout; wait a little longer.
        let deadline =
            tokio::time::Instant::now() + flow.timeout + std::time::Duration::from_secs(5);
        loop {
            let found = match self.app.idempotency.reserve(&flow.id, key, run_id).await {
                Ok(Reservation::Reserved) => return Ok(None),
                Ok(found) => found,
                Err(e) => {
                    tracing::warn!(error = %e, "idempotency store unavailable; running without deduplication");
                    return Ok(None);
                }
            };
            let mut current = Some(found);
            while let Some(Reservation::InProgress { run_id: first }) = &current {
                if tokio::time::Instant::now() >= deadline {
                    return Err(ApiError::new(
                        StatusCode::CONFLICT,
                        "idempotency_conflict",
                        "a request with this idempotency key is still being processed",
                    )
                    .with_run_id(first));
                }
                tokio::time::sleep(IDEMPOTENCY_POLL).await;
                current = self
                    .app
                    .idempotency
                    .lookup(&flow.id, key)
                    .await
                    .ok()
                    .flatten();
            }
            match current {
                Some(Reservation::Answered(answer)) => return Ok(Some(replay(answer))),
                // The first request gave up the key (it failed): try to take it.
                _ => continue,
            }
        }
    }

    /// Stores the answer for repeats; a server error frees the key instead, so
    /// the sender's retry runs again.
    pub(super) async fn remember(
        &self,
        flow_id: &str,
        key: &str,
        run_id: &str,
        result: Result<Response<Body>, ApiError>,
    ) -> Response<Body> {
        let response = result.unwrap_or_else(ApiError::into_response);
        if response.status().is_server_error() {
            if let Err(e) = self.app.idempotency.release(flow_id, key).await {
                tracing::warn!(error = %e, "could not release an idempotency key");
            }
            return response;
        }
        let (parts, bytes) = buffered(response).await;
        let answer = StoredAnswer {
            run_id: run_id.to_owned(),
            status: parts.status.as_u16(),
            headers: header_pairs(&parts.headers),
            body: String::from_utf8_lossy(&bytes).into_owned(),
        };
        if let Err(e) = self.app.idempotency.complete(flow_id, key, &answer).await {
            tracing::warn!(error = %e, "could not store the answer for an idempotency key");
        }
        Response::from_parts(parts, Full::new(bytes))
    }
}

fn replay(answer: StoredAnswer) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(answer.body)));
    *response.status_mut() = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK);
    for (name, value) in &answer.headers {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            response.headers_mut().insert(name, value);
        }
    }
    response
        .headers_mut()
        .insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    response
}
