//! The trigger endpoint: `<METHOD> /v1/flow-webhook/<flow_id>`.
//!
//! Order of checks (SPEC §5): authenticate first, so that nothing reveals
//! whether a flow exists; then unknown flow 404, method 405, paused (the fixed
//! `biz_logic` answer, nothing recorded), body limit 413, body parsing
//! 400/415; then run and render the answer.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::{Map, Value, json};

pub use self::read::TriggerLimits;
use self::read::{BodyState, declared_length, read_unauthenticated, too_large};
use crate::backend::RunQueue;
use crate::backend::{IdempotencyStore, Reservation, StoredAnswer};
use crate::engine::{Engine, RunInput, RunOptions, RunReport, RunState};
use crate::error::{self, ApiError, Body};
use crate::flow::{Catalog, Flow, FlowStatus, Mode, SharedCatalog};
use crate::metrics::Metrics;
use crate::record::RunRecord;
use crate::token::{FlowPrincipal, TokenError, TokenKeys};
use crate::transition::Transitions;

pub mod body;
mod read;
pub mod redact;
pub mod response;
pub mod signature;

/// Path prefix of trigger URLs.
pub const PATH_PREFIX: &str = "/v1/flow-webhook/";
/// Query parameter carrying a token for `query_token` auth.
const QUERY_TOKEN_PARAM: &str = "access_token";
/// Longest token looked at; flowgate's own are a few hundred bytes.
const MAX_TOKEN_BYTES: usize = 4096;
/// The one message of every 401, whatever the flow or the failure, so a
/// refusal reveals neither whether the flow exists nor how it authenticates.
/// The same for every flow and every failure, so it names no scheme: a
/// signature-only flow and an unknown one must read alike.
const UNAUTHORIZED_MESSAGE: &str = "missing or invalid credentials";
/// How long browsers may cache a CORS preflight answer, in seconds.
const CORS_MAX_AGE_SECS: &str = "600";

/// Seconds a sender is asked to wait when the queue cannot take a run.
const QUEUE_RETRY_AFTER_SECS: u64 = 5;

/// How often a repeat polls for the answer of a first request still in flight.
const IDEMPOTENCY_POLL: std::time::Duration = std::time::Duration::from_millis(50);
/// Header marking an answer replayed for a repeated idempotency key.
const REPLAYED_HEADER: &str = "idempotent-replayed";

/// What the trigger needs from the server.
pub struct TriggerState {
    /// Verifies flow tokens.
    pub keys: TokenKeys,
    /// Runs sync flows.
    pub engine: Engine,
    /// The current catalog.
    pub catalog: SharedCatalog,
    /// Where async runs go.
    pub queue: Arc<dyn RunQueue>,
    /// Remembers idempotency keys.
    pub idempotency: Arc<dyn IdempotencyStore>,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Moves runs along: records, queue, announcements.
    pub transitions: Arc<Transitions>,
    /// Run records, for the admin API.
    pub runs: Arc<dyn crate::backend::RunStore>,
    /// Reloads the flows, for the admin API.
    pub reloader: Option<Arc<crate::reloader::Reloader>>,
    /// Pauses and token generations, as this replica knows them.
    pub control: Arc<crate::control::Control>,
    /// Outbound event webhooks, for the admin API.
    pub webhooks: Arc<crate::webhooks::Webhooks>,
    /// Headers carrying an idempotency key, first match wins
    /// (`Idempotency-Key`, provider delivery ids).
    pub idempotency_headers: Vec<http::HeaderName>,
    /// Limits on requests, before and after authentication.
    pub limits: TriggerLimits,
    /// Credentials redacted from the request before anything sees it.
    pub redaction: redact::Redaction,
}

impl TriggerState {
    /// A consistent snapshot of the loaded flows.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.get()
    }
}

/// How the sender proved who they are.
#[derive(Debug, Clone)]
pub enum Principal {
    /// A flow token, in the header or the query.
    Token(FlowPrincipal),
    /// A valid body signature.
    Signature,
}

/// Handles one trigger request.
pub async fn handle(
    state: &TriggerState,
    req: Request<Incoming>,
    flow_id: &str,
    request_id: &str,
) -> Response<Body> {
    let catalog = state.catalog();
    let flow = catalog.get(flow_id).cloned();
    let cors = flow.as_deref().and_then(|f| cors_origin(f, req.headers()));
    let mut response = match handle_inner(
        state,
        &catalog,
        flow,
        req,
        flow_id,
        request_id,
        cors.is_some(),
    )
    .await
    {
        Ok(response) => response,
        Err(err) => {
            if err.status.is_server_error() {
                tracing::error!(error = %err, "trigger failed");
            } else {
                tracing::info!(status = err.status.as_u16(), kind = err.kind, message = %err.message, "trigger refused");
            }
            err.into_response()
        }
    };
    // Only loaded flows get their own label, so unknown ids cannot grow the metrics.
    let label = if catalog.get(flow_id).is_some() {
        flow_id
    } else {
        "unknown"
    };
    state.metrics.request(label, response.status().as_u16());
    if let Some(origin) = cors {
        let headers = response.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    response
}

async fn handle_inner(
    state: &TriggerState,
    catalog: &Catalog,
    flow: Option<Arc<Flow>>,
    req: Request<Incoming>,
    flow_id: &str,
    request_id: &str,
    cors_allowed: bool,
) -> Result<Response<Body>, ApiError> {
    let (parts, incoming) = req.into_parts();
    if cors_allowed
        && parts.method == Method::OPTIONS
        && parts
            .headers
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        return Ok(preflight(flow.as_deref().expect("cors implies a flow")));
    }
    let timeout = state.limits.server.body_read_timeout;
    let mut body = BodyState::Unread(incoming);
    let principal = authenticate(state, flow.as_deref(), &parts, &mut body, flow_id).await?;
    tracing::Span::current().record("flow", flow_id);
    tracing::debug!(?principal, "authenticated");
    let _slot = state.limits.request_slot().await?;

    let flow = flow.ok_or_else(|| ApiError::not_found(format!("no flow `{flow_id}`")))?;
    let limit = flow.trigger.max_body_bytes;
    if !flow.trigger.methods.contains(&parts.method) {
        let allow = flow
            .trigger
            .methods
            .iter()
            .map(Method::as_str)
            .collect::<Vec<_>>()
            .join(", ");
        let mut response = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("flow `{flow_id}` accepts {allow}"),
        )
        .into_response();
        response.headers_mut().insert(
            header::ALLOW,
            HeaderValue::from_str(&allow).expect("method names are valid"),
        );
        return Ok(response);
    }
    let status = state.control.status(&flow);
    if status == FlowStatus::Paused {
        return Ok(error::paused_response());
    }
    if declared_length(&parts.headers).is_some_and(|length| length > limit as u64) {
        // Refused before reading, so `Expect: 100-continue` gets this, not 100.
        return Err(too_large(limit));
    }
    // Signatures were checked over the bytes as sent; the flow sees them decoded.
    let raw = body::decode(
        parts
            .headers
            .get(header::CONTENT_ENCODING)
            .map(|v| v.to_str().unwrap_or("?")),
        body.read(limit, timeout).await?,
        limit,
    )?;
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let parsed = body::parse_with_kind(content_type, &raw, flow.trigger.accept_any)?;
    let run_id = uuid::Uuid::now_v7().to_string();
    // An unpaused flow whose file says `paused` runs as live.
    let input = run_input(
        &flow,
        status,
        &parts,
        &raw,
        parsed,
        run_id.clone(),
        request_id,
        &state.redaction,
    );
    let idempotency_key = parts
        .headers
        .iter()
        .find(|(name, _)| state.idempotency_headers.contains(name))
        .and_then(|(_, value)| value.to_str().ok())
        .filter(|key| !key.is_empty())
        .map(str::to_owned);
    let mut reserved = false;
    if let Some(key) = &idempotency_key {
        match reserve_or_replay(state, &flow, key, &run_id).await? {
            Some(replay) => return Ok(replay),
            None => reserved = true,
        }
    }
    let result = match flow.trigger.mode {
        Mode::Async => accept_async(state, catalog, &flow, &input).await,
        Mode::Sync => Ok(run_sync(state, catalog, &flow, &input).await.0),
    };
    match (idempotency_key, reserved) {
        (Some(key), true) => Ok(remember(state, &flow.id, &key, &run_id, result).await),
        _ => result,
    }
}

/// Runs a sync flow and records it: the answer, and how the run ended. A
/// failed run still has an answer (its `on_error` one, or the envelope).
pub(crate) async fn run_sync(
    state: &TriggerState,
    catalog: &Catalog,
    flow: &Flow,
    input: &RunInput,
) -> (Response<Body>, RunState) {
    let run_id = &input.run_id;
    let journal = state.transitions.started_in_request(run_id, &flow.id);
    let report = state
        .engine
        .run_observed(
            catalog,
            flow,
            input,
            RunOptions::default(),
            &state.transitions.steps(run_id, &flow.id, &journal),
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
    state
        .transitions
        .ended_in_request(recorded, &report, &journal)
        .await;
    (response, report.status)
}

fn set_run_id_header(response: &mut Response<Body>, run_id: &str) {
    response.headers_mut().insert(
        "x-flowgate-run-id",
        HeaderValue::from_str(run_id).expect("uuids are valid header values"),
    );
}

/// The answer's head and body bytes, to keep a copy of it and still send it.
async fn buffered(response: Response<Body>) -> (http::response::Parts, Bytes) {
    let (parts, body) = response.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    (parts, bytes)
}

/// Headers with text values, as stored in records and idempotency answers.
fn header_pairs(headers: &HeaderMap) -> Vec<(String, String)> {
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
async fn record_response(
    mut record: RunRecord,
    response: Response<Body>,
) -> (Response<Body>, RunRecord) {
    let (parts, bytes) = buffered(response).await;
    record.set_response(parts.status.as_u16(), header_pairs(&parts.headers), &bytes);
    (Response::from_parts(parts, Full::new(bytes)), record)
}

/// Reserves the key for this run, or returns the answer to replay. A store
/// that cannot be reached does not block the request: it runs without
/// deduplication (and async runs then fail to queue anyway).
async fn reserve_or_replay(
    state: &TriggerState,
    flow: &Flow,
    key: &str,
    run_id: &str,
) -> Result<Option<Response<Body>>, ApiError> {
    // The first request may take up to its run's timeout; wait a little longer.
    let deadline = tokio::time::Instant::now() + flow.timeout + std::time::Duration::from_secs(5);
    loop {
        let found = match state.idempotency.reserve(&flow.id, key, run_id).await {
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
            current = state.idempotency.lookup(&flow.id, key).await.ok().flatten();
        }
        match current {
            Some(Reservation::Answered(answer)) => return Ok(Some(replay(answer))),
            // The first request gave up the key (it failed): try to take it.
            _ => continue,
        }
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

/// Stores the answer for repeats; a server error frees the key instead, so
/// the sender's retry runs again.
async fn remember(
    state: &TriggerState,
    flow_id: &str,
    key: &str,
    run_id: &str,
    result: Result<Response<Body>, ApiError>,
) -> Response<Body> {
    let response = result.unwrap_or_else(ApiError::into_response);
    if response.status().is_server_error() {
        if let Err(e) = state.idempotency.release(flow_id, key).await {
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
    if let Err(e) = state.idempotency.complete(flow_id, key, &answer).await {
        tracing::warn!(error = %e, "could not store the answer for an idempotency key");
    }
    Response::from_parts(parts, Full::new(bytes))
}

/// Queues an async run, then answers; nothing is answered as accepted
/// unless the queue stored the run.
async fn accept_async(
    state: &TriggerState,
    catalog: &Catalog,
    flow: &Flow,
    input: &RunInput,
) -> Result<Response<Body>, ApiError> {
    // The answer sees no step output, so it is rendered first and stored with
    // the run; nothing is sent before the queue holds the run.
    let scope = Engine::initial_scope(flow, input, RunState::Queued);
    let mut response = response::render(
        &flow.response,
        catalog.env_of(&flow.id),
        &scope.context(),
        || json!({ "run_id": input.run_id, "status": "queued" }).to_string(),
    )
    .await
    .map_err(|e| e.with_run_id(&input.run_id))?;
    set_run_id_header(&mut response, &input.run_id);
    let (response, record) =
        record_response(RunRecord::accepted(flow, input, RunState::Queued), response).await;
    if let Err(e) = state.transitions.queued(input, &record).await {
        tracing::error!(error = %e, run_id = %input.run_id, "async run refused: queue unavailable");
        return Err(ApiError::queue_unavailable(QUEUE_RETRY_AFTER_SECS));
    }
    Ok(response)
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

async fn authenticate(
    state: &TriggerState,
    flow: Option<&Flow>,
    parts: &Parts,
    body: &mut BodyState,
    flow_id: &str,
) -> Result<Principal, ApiError> {
    // The oldest token generation still accepted: the current one, or the
    // one before it during a rotation's grace period.
    let generation = state
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
        let token = value
            .to_str()
            .ok()
            .and_then(bearer_token)
            .filter(|t| t.len() <= MAX_TOKEN_BYTES);
        match token.map(|t| state.keys.verify(t, flow_id, generation)) {
            Some(Ok(p)) => return Ok(Principal::Token(p)),
            Some(Err(e)) => token_error = Some(e),
            None => token_error = Some(TokenError::Malformed),
        }
    }
    let query_token = flow
        .filter(|f| f.trigger.query_token)
        .and_then(|_| query_param(parts.uri.query(), QUERY_TOKEN_PARAM));
    if let Some(token) = query_token {
        let verified = match token.len() <= MAX_TOKEN_BYTES {
            true => state.keys.verify(&token, flow_id, generation),
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
    let read =
        if signature.is_some() || expects_continue(&parts.headers) || declares_body(&parts.headers)
        {
            read_unauthenticated(state, parts, body).await?
        } else {
            None
        };
    if let (Some(config), Some(raw)) = (signature, read) {
        // A body that cannot be read cannot be verified: it stays unauthenticated.
        match signature::verify(config, &parts.headers, &raw, unix_now()) {
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

fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
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
        if k == QUERY_TOKEN_PARAM {
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

/// The `Access-Control-Allow-Origin` value when the request's origin is allowed.
fn cors_origin(flow: &Flow, headers: &HeaderMap) -> Option<HeaderValue> {
    let origin = headers.get(header::ORIGIN)?;
    let text = origin.to_str().ok()?;
    flow.trigger
        .cors_origins
        .iter()
        .any(|o| o == "*" || o == text)
        .then(|| origin.clone())
}

fn preflight(flow: &Flow) -> Response<Body> {
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
