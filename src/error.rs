//! The error envelope: the one shape of every answer flowgate itself produces
//! for an error, `{"status":<code>,"error":"<kind>","message":"<text>","data":null}`.
//!
//! Errors become HTTP answers here and nowhere else: a module whose errors
//! reach a caller expresses them as a [`Refusal`] (a storage failure is
//! [`Refusal::Unavailable`]), and [`ApiError`]'s `From<Refusal>` picks the
//! status. Server-side failures are logged with their cause and tell the
//! sender nothing internal.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use serde::Serialize;

/// The body type of every answer.
pub type Body = Full<Bytes>;

/// The exact answer for a paused flow (docs/flows.md, "The trigger endpoint"), byte for byte.
pub const PAUSED_BODY: &str = r#"{"status":200,"error":"biz_logic","message":"Flow status is `paused`. Unpause to run this flow using a webhook","data":null}"#;

/// Why an operation was refused, in the terms every surface answers with:
/// the admin API, the console and the CLI alike.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No such thing (404).
    #[error("{0}")]
    NotFound(String),
    /// The change conflicts with the stored state (409).
    #[error("{message}")]
    Conflict {
        /// A short machine-readable reason, e.g. `too_many_subscriptions`.
        code: &'static str,
        /// What to do about it.
        message: String,
    },
    /// The input is not valid for this operation (422).
    #[error("{message}")]
    Invalid {
        /// A short machine-readable reason, e.g. `invalid_subscription`.
        code: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A limit on what may exist at once is reached (503): retry later.
    #[error("{message}")]
    Busy {
        /// A short machine-readable reason, e.g. `too_many_sessions`.
        code: &'static str,
        /// What to do about it.
        message: String,
    },
    /// The store did not answer (503); the cause is logged, never sent.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::NotFound(message) => ApiError::not_found(message),
            Refusal::Conflict { code, message } => {
                ApiError::new(StatusCode::CONFLICT, code, message)
            }
            Refusal::Invalid { code, message } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
            }
            Refusal::Busy { code, message } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
            }
            Refusal::Unavailable(cause) => {
                tracing::warn!(error = %cause, "request failed: storage unavailable");
                let mut err = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the store is unavailable; try again",
                );
                err.retry_after_secs = Some(5);
                err
            }
        }
    }
}

/// An error answer in the envelope.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status code.
    pub status: StatusCode,
    /// Machine-readable kind, e.g. `unauthorized`.
    pub kind: &'static str,
    /// Human-readable explanation.
    pub message: String,
    /// Extra data (e.g. the run id); `null` when absent.
    pub data: Option<Box<serde_json::Value>>,
    /// Seconds for a `Retry-After` header.
    pub retry_after_secs: Option<u64>,
    /// The methods a `405` names in its `Allow` header.
    pub allow: Option<String>,
}

#[derive(Serialize)]
struct Envelope<'a> {
    status: u16,
    error: &'a str,
    message: &'a str,
    data: &'a Option<Box<serde_json::Value>>,
}

impl ApiError {
    /// An error with no data.
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
            data: None,
            retry_after_secs: None,
            allow: None,
        }
    }

    /// 401: missing or invalid credentials.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 400: a body that does not parse as its content type says.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 500 that says nothing internal; log the cause before calling.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the gateway logs",
        )
    }

    /// 503 for a queue that cannot take a run, with `Retry-After`.
    pub fn queue_unavailable(retry_after_secs: u64) -> Self {
        let mut err = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "queue_unavailable",
            "the run could not be queued; nothing was accepted, retry later",
        );
        err.retry_after_secs = Some(retry_after_secs);
        err
    }

    /// Attaches `data.run_id`.
    pub fn with_run_id(mut self, run_id: &str) -> Self {
        self.data = Some(Box::new(serde_json::json!({ "run_id": run_id })));
        self
    }

    /// The envelope as JSON text.
    pub fn body_json(&self) -> String {
        serde_json::to_string(&Envelope {
            status: self.status.as_u16(),
            error: self.kind,
            message: &self.message,
            data: &self.data,
        })
        .expect("the envelope always serializes")
    }

    /// The HTTP answer.
    pub fn into_response(self) -> Response<Body> {
        let mut response = Response::new(Full::new(Bytes::from(self.body_json())));
        *response.status_mut() = self.status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(allow) = self
            .allow
            .as_deref()
            .and_then(|a| HeaderValue::from_str(a).ok())
        {
            response.headers_mut().insert(header::ALLOW, allow);
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.kind,
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

/// The paused answer: 200 with [`PAUSED_BODY`].
pub fn paused_response() -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from_static(PAUSED_BODY.as_bytes())));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_has_the_paused_shape() {
        let err = ApiError::not_found("no flow `x`");
        assert_eq!(
            err.body_json(),
            r#"{"status":404,"error":"not_found","message":"no flow `x`","data":null}"#
        );
        let with_run = ApiError::internal().with_run_id("r1");
        assert!(with_run.body_json().ends_with(r#""data":{"run_id":"r1"}}"#));
        // The paused answer is the envelope, byte for byte.
        let paused = ApiError::new(
            StatusCode::OK,
            "biz_logic",
            "Flow status is `paused`. Unpause to run this flow using a webhook",
        );
        assert_eq!(paused.body_json(), PAUSED_BODY);
    }
}
