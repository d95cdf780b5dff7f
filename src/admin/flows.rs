//! `/v1/admin/flows...` and `/v1/admin/tokens/revoke`.

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use serde::Serialize;
use serde_json::json;

use super::{Answer, Caller, ListPage, Query, json};
use crate::app::AppState;
use crate::backend::now_ms;
use crate::engine::RunState;
use crate::error::ApiError;
use crate::flow::Flow;
use crate::inbound::PATH_PREFIX;

/// Runs read per flow for its last run and its counts of the last hour.
const RECENT_RUNS: usize = 250;

/// A flow as the admin API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct FlowView {
    id: String,
    name: String,
    /// The status in force.
    status: &'static str,
    /// `file` or `override` (a pause or unpause stored by ops).
    status_source: &'static str,
    /// The status the flow file gives.
    file_status: &'static str,
    mode: &'static str,
    /// The trigger's path.
    url: String,
    token_generation: u64,
    /// Until when (RFC 3339) tokens of the generation before still work.
    token_grace_until: Option<String>,
    last_run: Option<LastRun>,
    /// Recorded runs accepted in the last hour (at most 250 are counted).
    /// A flow keeping only some records (`keep_runs`) counts only those.
    runs_last_hour: usize,
    /// Of those, how many failed, timed out or were aborted.
    failures_last_hour: usize,
    /// Which ended runs keep their record: `all`, `failed` or `none`.
    keep_runs: &'static str,
    /// Most records kept for the flow; `null`: no cap.
    max_runs: Option<u64>,
    /// The flow file's content hash of the version serving.
    version: String,
    /// When the flow's file has changed and fails validation: its problems
    /// (`path:line: message`); the version before still serves. Empty
    /// otherwise.
    problems: Vec<String>,
}

/// A flow's newest run.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct LastRun {
    id: String,
    at: String,
    #[schema(value_type = String)]
    status: RunState,
}

async fn view(state: &AppState, flow: &Flow) -> Result<FlowView, ApiError> {
    let control = state.control.state();
    let (status, source) = match control.statuses.get(&flow.id) {
        Some(o) => (o.status, "override"),
        None => (flow.status, "file"),
    };
    let generation = control
        .generations
        .get(&flow.id)
        .copied()
        .unwrap_or_default();
    let recent = state.runs.list(&flow.id, RECENT_RUNS).await?;
    let hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    let in_last_hour: Vec<_> = recent
        .iter()
        .filter(|r| humantime::parse_rfc3339_weak(&r.created_at).is_ok_and(|at| at >= hour_ago))
        .collect();
    let failures = in_last_hour
        .iter()
        .filter(|r| {
            matches!(
                r.status,
                RunState::Failed | RunState::TimedOut | RunState::Aborted
            )
        })
        .count();
    Ok(FlowView {
        id: flow.id.clone(),
        name: flow.name.clone(),
        status: status.as_str(),
        status_source: source,
        file_status: flow.status.as_str(),
        mode: flow.trigger.mode.as_str(),
        url: format!("{PATH_PREFIX}{}", flow.id),
        token_generation: generation.current,
        token_grace_until: generation
            .grace_until_ms
            .filter(|until| *until > now_ms())
            .map(|until| {
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + Duration::from_millis(until),
                )
                .to_string()
            }),
        last_run: recent.first().map(|r| LastRun {
            id: r.id.clone(),
            at: r.created_at.clone(),
            status: r.status,
        }),
        runs_last_hour: in_last_hour.len(),
        failures_last_hour: failures,
        keep_runs: flow.records.keep.as_str(),
        max_runs: flow.records.max,
        version: flow.version.clone(),
        problems: state
            .catalog()
            .problems
            .get(&flow.id)
            .cloned()
            .unwrap_or_default(),
    })
}

fn flow(state: &AppState, id: &str) -> Result<Arc<Flow>, ApiError> {
    state
        .catalog()
        .get(id)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("no flow `{id}`")))
}

/// `GET /flows`: by id.
#[utoipa::path(get, path = "/v1/admin/flows", tag = "flows", operation_id = "listFlows",
    description = "Every flow, by id (role: viewer).",
    params(
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 250, description = "page size, 1 to 250, default 50"),
        ("cursor" = Option<String>, Query, description = "the next_cursor of the page before"),
    ),
    responses(
        (status = 200, description = "a page of flows", body = ListPage<FlowView>),
        (status = 401, description = "no valid admin token", body = serde_json::Value),
        (status = 403, description = "the token's role is too low", body = serde_json::Value),
    ))]
pub(super) async fn list(state: &AppState, query: &Query) -> Result<Answer, ApiError> {
    let limit = query.limit()?;
    let after = query.cursor()?;
    let catalog = state.catalog();
    let mut flows: Vec<&Arc<Flow>> = catalog
        .flows
        .values()
        .filter(|f| after.as_ref().is_none_or(|a| f.id.as_str() > a.as_str()))
        .collect();
    flows.sort_by(|a, b| a.id.cmp(&b.id));
    let has_more = flows.len() > limit;
    flows.truncate(limit);
    let mut data = Vec::with_capacity(flows.len());
    for flow in &flows {
        data.push(view(state, flow).await?);
    }
    let next = has_more
        .then(|| flows.last().map(|f| f.id.clone()))
        .flatten();
    json(&ListPage::new(data, next))
}

/// `GET /flows/{id}`.
#[utoipa::path(get, path = "/v1/admin/flows/{id}", tag = "flows", operation_id = "getFlow",
    description = "One flow (role: viewer).",
    params(("id" = String, Path, description = "the flow id")),
    responses(
        (status = 200, description = "the flow", body = FlowView),
        (status = 401, description = "no valid admin token", body = serde_json::Value),
        (status = 403, description = "the token's role is too low", body = serde_json::Value),
        (status = 404, description = "no such flow", body = serde_json::Value),
    ))]
pub(super) async fn get(state: &AppState, id: &str) -> Result<Answer, ApiError> {
    let flow = flow(state, id)?;
    json(&view(state, &flow).await?)
}

/// `POST /flows/{id}/pause`.
#[utoipa::path(post, path = "/v1/admin/flows/{id}/pause", tag = "flows", operation_id = "pauseFlow",
    description = "Pauses the flow on every replica within a second (role: ops).",
    params(("id" = String, Path, description = "the flow id")),
    responses(
        (status = 200, description = "the flow after the change", body = FlowView),
        (status = 401, description = "no valid admin token", body = serde_json::Value),
        (status = 403, description = "the token's role is too low", body = serde_json::Value),
        (status = 404, description = "no such flow", body = serde_json::Value),
    ))]
pub(super) async fn pause(state: &AppState, caller: &Caller, id: &str) -> Result<Answer, ApiError> {
    set_paused(state, caller, id, true).await
}

/// `POST /flows/{id}/unpause`.
#[utoipa::path(post, path = "/v1/admin/flows/{id}/unpause", tag = "flows", operation_id = "unpauseFlow",
    description = "Unpauses the flow: the file's status holds again (role: ops).",
    params(("id" = String, Path, description = "the flow id")),
    responses(
        (status = 200, description = "the flow after the change", body = FlowView),
        (status = 401, description = "no valid admin token", body = serde_json::Value),
        (status = 403, description = "the token's role is too low", body = serde_json::Value),
        (status = 404, description = "no such flow", body = serde_json::Value),
    ))]
pub(super) async fn unpause(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<Answer, ApiError> {
    set_paused(state, caller, id, false).await
}

async fn set_paused(
    state: &AppState,
    caller: &Caller,
    id: &str,
    paused: bool,
) -> Result<Answer, ApiError> {
    let flow = flow(state, id)?;
    state
        .control
        .set_paused(&flow, paused, &caller.actor())
        .await?;
    json(&view(state, &flow).await?)
}

/// `POST /flows/{id}/tokens/rotate` with an optional `{"grace": "24h"}`.
#[utoipa::path(post, path = "/v1/admin/flows/{id}/tokens/rotate", tag = "flows", operation_id = "rotateFlowTokens",
    description = "Moves the flow to its next token generation; with `grace`, tokens of the generation before keep working that long (role: ops).",
    params(("id" = String, Path, description = "the flow id")),
    request_body(content = Option<super::body::RotateTokens>, description = "optional"),
    responses(
        (status = 200, description = "the new generation", body = serde_json::Value),
        (status = 401, description = "no valid admin token", body = serde_json::Value),
        (status = 403, description = "the token's role is too low", body = serde_json::Value),
        (status = 404, description = "no such flow", body = serde_json::Value),
    ))]
pub(super) async fn rotate(
    state: &AppState,
    caller: &Caller,
    id: &str,
    body: &serde_json::Value,
) -> Result<Answer, ApiError> {
    let flow = flow(state, id)?;
    super::body::only_keys(body, &["grace"])?;
    let grace = super::body::FLOW_GRACE.read(body)?;
    let generation = state
        .control
        .rotate(&flow.id, grace, &caller.actor())
        .await?;
    json(&json!({
        "flow": flow.id,
        "token_generation": generation.current,
        "previous_generation_works_for": grace.map(crate::config::readable_duration),
    }))
}

/// `POST /flows/{id}/tokens`: a new token for the flow's senders.
#[utoipa::path(post, path = "/v1/admin/flows/{id}/tokens", tag = "flows", operation_id = "issueFlowToken",
    description = "Mints a token for the flow at its current generation, as `flowgate token issue` does; with `ttl`, it expires after that long. The token is in this answer only (role: ops).",
    params(("id" = String, Path, description = "the flow id")),
    request_body(content = Option<super::body::IssueToken>, description = "optional"),
    responses(
        (status = 200, description = "the token", body = serde_json::Value),
        (status = 400, description = "a bad ttl", body = serde_json::Value),
        (status = 401, description = "no valid admin token", body = serde_json::Value),
        (status = 403, description = "the token's role is too low", body = serde_json::Value),
        (status = 404, description = "no such flow", body = serde_json::Value),
    ))]
pub(super) async fn issue(
    state: &AppState,
    caller: &Caller,
    id: &str,
    body: &serde_json::Value,
) -> Result<Answer, ApiError> {
    let flow = flow(state, id)?;
    super::body::only_keys(body, &["ttl"])?;
    let ttl = super::body::TOKEN_TTL.read(body)?;
    let generation = state.control.generation(&flow.id).current;
    let token = state
        .keys
        .issue(&flow.id, ttl, generation)
        .map_err(|_| ApiError::internal())?;
    // A token nobody can account for is worse than none: no audit entry, no token.
    state
        .control
        .record_issue(&flow.id, generation, ttl, &caller.actor())
        .await?;
    json(&json!({
        "flow": flow.id,
        "token": token,
        "token_generation": generation,
        "expires_in": ttl.map(crate::config::readable_duration),
    }))
}

/// `POST /tokens/revoke` with `{"jti": "..."}` or `{"token": "..."}`.
#[utoipa::path(post, path = "/v1/admin/tokens/revoke", tag = "tokens", operation_id = "revokeAdminToken",
    description = "Refuses an admin token on every replica within a second (role: ops).",
    request_body = super::body::Revoke,
    responses(
        (status = 200, description = "revoked", body = serde_json::Value),
        (status = 400, description = "neither a token nor a jti", body = serde_json::Value),
        (status = 404, description = "the token is not an admin token of this gateway", body = serde_json::Value),
        (status = 401, description = "no valid admin token", body = serde_json::Value),
        (status = 403, description = "the token's role is too low", body = serde_json::Value),
    ))]
pub(super) async fn revoke(
    state: &AppState,
    caller: &Caller,
    body: &serde_json::Value,
) -> Result<Answer, ApiError> {
    super::body::only_keys(body, &["token", "jti"])?;
    let strings = ["token", "jti"]
        .iter()
        .all(|key| body.get(key).is_none_or(serde_json::Value::is_string));
    let named: super::body::Revoke = serde_json::from_value(body.clone())
        .ok()
        .filter(|_| strings)
        .ok_or_else(|| ApiError::bad_request("token and jti must be strings"))?;
    let (jti, until_ms) = match (named.token, named.jti) {
        (Some(token), _) => {
            // A token of no admin of this gateway names nothing to revoke.
            let admin = state
                .keys
                .verify_admin(&token)
                .map_err(|_| ApiError::not_found("token is not an admin token of this gateway"))?;
            let until = admin
                .expires
                .map_or(u64::MAX, |exp| exp.saturating_mul(1000));
            (admin.token_id, until)
        }
        (None, Some(jti))
            if !jti.is_empty()
                && jti.chars().count() <= super::body::MAX_JTI_CHARS
                && !jti.chars().any(char::is_control) =>
        {
            (jti, u64::MAX)
        }
        _ => {
            return Err(ApiError::bad_request(
                "send {\"jti\": \"...\"} (1 to 128 characters, no control characters) or {\"token\": \"...\"}",
            ));
        }
    };
    state
        .control
        .revoke(&jti, until_ms, &caller.actor())
        .await?;
    Ok(json(&json!({ "revoked": jti }))?.with_status(StatusCode::OK))
}

/// `POST /reload`: loads flows and templates again on this replica.
#[utoipa::path(post, path = "/v1/admin/reload", tag = "flows", operation_id = "reloadFlows",
    description = "Loads flows and templates again on this replica; a flow whose change fails keeps its last good version (role: author).",
    responses(
        (status = 200, description = "what changed", body = crate::flow::reload::ReloadSummary),
        (status = 401, description = "no valid admin token", body = serde_json::Value),
        (status = 403, description = "the token's role is too low", body = serde_json::Value),
    ))]
pub(super) async fn reload(state: &AppState, caller: &Caller) -> Result<Answer, ApiError> {
    let Some(reloader) = &state.reloader else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "reload_unavailable",
            "this gateway was not started from flow folders it can reload",
        ));
    };
    let summary = reloader.reload().await;
    let mut audit = crate::control::draft(&caller.actor(), "flows.reload");
    audit.after = serde_json::to_value(&summary).ok();
    if let Err(e) = state
        .control
        .apply(crate::backend::control::Change::Nothing, audit)
        .await
    {
        tracing::warn!(error = %e, "reload not written to the audit log");
    }
    json(&summary)
}
