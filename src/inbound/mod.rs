//! From an HTTP request to a run and back, for every path that starts runs
//! from requests: the trigger endpoint, a replay from the admin API, and
//! `flowgate render`. Bodies are decoded and parsed ([`body`]), credentials
//! redacted ([`redact`]), sender signatures checked ([`signature`]), the
//! `request` object templates see built ([`run_input`]), a sync run
//! executed and recorded ([`run_sync`]) and its answer rendered
//! ([`answer`], [`response`]).

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use serde_json::{Map, Value, json};

use crate::engine::{Engine, RunInput, RunOptions, RunReport, RunState};
use crate::error::{ApiError, Body};
use crate::flow::{Catalog, Flow, FlowStatus};
use crate::record::RunRecord;
use crate::transition::Transitions;

pub mod body;
pub mod redact;
pub mod response;
pub mod signature;

/// Path prefix of trigger URLs: `/v1/flow-webhook/<flow_id>`.
pub const PATH_PREFIX: &str = "/v1/flow-webhook/";

/// Query parameter carrying a token for `query_token` auth; never shown to
/// templates.
pub const QUERY_TOKEN_PARAM: &str = "access_token";

/// Runs a sync flow and records it: the answer, and how the run ended. A
/// failed run still has an answer (its `on_error` one, or the envelope).
pub async fn run_sync(
    engine: &Engine,
    transitions: &Transitions,
    catalog: &Catalog,
    flow: &Flow,
    input: &RunInput,
) -> (Response<Body>, RunState) {
    let run_id = &input.run_id;
    let journal = transitions.started_in_request(run_id, &flow.id);
    let report = engine
        .run_observed(
            catalog,
            flow,
            input,
            RunOptions::default(),
            &transitions.steps(run_id, &flow.id, &journal),
        )
        .await;
    let mut response = answer(catalog, flow, run_id, &report)
        .await
        .unwrap_or_else(|e| {
            if e.status.is_server_error() {
                tracing::warn!(run_id = %run_id, error = %e, "run answered with an error");
            }
            e.into_response()
        });
    set_run_id_header(&mut response, run_id);
    let mut record = RunRecord::accepted(flow, input, RunState::Running);
    record.finish(&report);
    let (response, recorded) = record_response(record, response).await;
    transitions
        .ended_in_request(recorded, &report, &journal)
        .await;
    (response, report.status)
}

pub fn set_run_id_header(response: &mut Response<Body>, run_id: &str) {
    response.headers_mut().insert(
        "x-flowgate-run-id",
        HeaderValue::from_str(run_id).expect("uuids are valid header values"),
    );
}

/// The answer's head and body bytes, to keep a copy of it and still send it.
pub async fn buffered(response: Response<Body>) -> (http::response::Parts, Bytes) {
    let (parts, body) = response.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    (parts, bytes)
}

/// Headers with text values, as stored in records and idempotency answers.
pub fn header_pairs(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter_map(|(n, v)| {
            v.to_str()
                .ok()
                .map(|v| (n.as_str().to_owned(), v.to_owned()))
        })
        .collect()
}

/// Copies the answer into the record, returning the answer unchanged.
pub async fn record_response(
    mut record: RunRecord,
    response: Response<Body>,
) -> (Response<Body>, RunRecord) {
    let (parts, bytes) = buffered(response).await;
    record.set_response(parts.status.as_u16(), header_pairs(&parts.headers), &bytes);
    (Response::from_parts(parts, Full::new(bytes)), record)
}

/// Renders the answer for a finished sync run.
pub async fn answer(
    catalog: &Catalog,
    flow: &Flow,
    run_id: &str,
    report: &RunReport,
) -> Result<Response<Body>, ApiError> {
    let env = catalog.env_of(&flow.id);
    match report.status {
        // Sync runs retry in place and never wait outside the request.
        // Sync runs retry in place and never wait outside the request, nor
        // end in the states only queued runs have.
        RunState::Waiting | RunState::Queued | RunState::Running | RunState::Aborted => {
            Err(ApiError::internal().with_run_id(run_id))
        }
        RunState::Succeeded => {
            let ctx = report.scope.context();
            response::render(&flow.response, env, &ctx, || {
                json!({ "run_id": run_id, "status": "succeeded" }).to_string()
            })
            .await
            .map_err(|e| e.with_run_id(run_id))
        }
        RunState::Failed => {
            let error = report
                .error
                .clone()
                .unwrap_or_else(|| crate::engine::RunError {
                    step: None,
                    message: "the run failed".into(),
                });
            let failure = ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "run_failed",
                match &error.step {
                    Some(step) => format!("step `{step}` failed: {}", error.message),
                    None => error.message.clone(),
                },
            )
            .with_run_id(run_id);
            match &flow.response.on_error {
                Some(spec) => {
                    let mut scope = report.scope.clone();
                    scope.set_json(
                        "error",
                        json!({ "step": error.step, "message": error.message }),
                    );
                    response::render(spec, env, &scope.context(), || failure.body_json())
                        .await
                        .map_err(|e| e.with_run_id(run_id))
                }
                None => Err(failure),
            }
        }
        RunState::TimedOut => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "run_timed_out",
            report
                .error
                .as_ref()
                .map(|e| e.message.clone())
                .unwrap_or_default(),
        )
        .with_run_id(run_id)),
    }
}

/// The run a trigger request starts, from the request's head, its body as
/// received and as parsed (with whether it was parsed as JSON, from
/// [`body::parse_with_kind`]): the one place a [`RunInput`] comes from HTTP.
/// `status` is the flow's status in force (the file's, or an override).
#[allow(clippy::too_many_arguments)]
pub fn run_input(
    flow: &Flow,
    status: FlowStatus,
    parts: &Parts,
    raw: &[u8],
    (body, raw_is_body): (Value, bool),
    run_id: String,
    request_id: &str,
    redaction: &redact::Redaction,
) -> RunInput {
    RunInput {
        run_id,
        flow_id: flow.id.clone(),
        mode: flow.trigger.mode.as_str().to_owned(),
        live: status == FlowStatus::Live,
        body: Arc::new(body),
        raw_is_body,
        request: Arc::new(request_object(
            parts,
            raw,
            request_id,
            redaction,
            &flow.trigger,
        )),
        resume: None,
        replay_of: None,
    }
}

/// The `request` object templates see. `authorization` and a query token
/// are left out, and credential-bearing headers and query parameters read
/// [`redact::REDACTED`].
fn request_object(
    parts: &Parts,
    raw: &[u8],
    request_id: &str,
    redaction: &redact::Redaction,
    trigger: &crate::flow::Trigger,
) -> Value {
    let mut headers = Map::new();
    for (name, value) in &parts.headers {
        if name == header::AUTHORIZATION {
            continue;
        }
        let value = match redaction.header(trigger, name.as_str()) {
            true => redact::REDACTED.to_owned(),
            false => String::from_utf8_lossy(value.as_bytes()).into_owned(),
        };
        headers.insert(name.as_str().to_owned(), Value::String(value));
    }
    let mut query = Map::new();
    for (k, v) in form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes()) {
        if k.eq_ignore_ascii_case(QUERY_TOKEN_PARAM) {
            continue;
        }
        let v = match redaction.query(trigger, &k) {
            true => redact::REDACTED.into(),
            false => v,
        };
        query.insert(k.into_owned(), Value::String(v.into_owned()));
    }
    json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": query,
        "headers": headers,
        "raw": String::from_utf8_lossy(raw),
        "received_at": humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        "id": request_id,
    })
}
