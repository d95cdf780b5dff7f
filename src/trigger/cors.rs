//! CORS for flows that browsers call (`[trigger] cors_origins`): the
//! allowed origin echoed, and preflight requests answered.

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use http_body_util::Full;

use crate::error::Body;
use crate::flow::Flow;

/// How long browsers may cache a CORS preflight answer, in seconds.
const CORS_MAX_AGE_SECS: &str = "600";

/// Whether the request is a CORS preflight.
pub(super) fn is_preflight(parts: &Parts) -> bool {
    parts.method == Method::OPTIONS
        && parts
            .headers
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// The `Access-Control-Allow-Origin` value when the request's origin is allowed.
pub(super) fn origin(flow: &Flow, headers: &HeaderMap) -> Option<HeaderValue> {
    let origin = headers.get(header::ORIGIN)?;
    let text = origin.to_str().ok()?;
    flow.trigger
        .cors_origins
        .iter()
        .any(|o| o == "*" || o == text)
        .then(|| origin.clone())
}

pub(super) fn preflight(flow: &Flow) -> Response<Body> {
    let mut methods: Vec<&str> = flow.trigger.methods.iter().map(Method::as_str).collect();
    methods.push("OPTIONS");
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::NO_CONTENT;
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_str(&methods.join(", ")).expect("method names are valid"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization, content-type, idempotency-key"),
    );
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static(CORS_MAX_AGE_SECS),
    );
    response
}
