//! `/v1/admin/runs...`: run records, the flow debugger.

use super::{Answer, Caller, ListPage, Query, json};
use crate::app::AppState;
use crate::backend::RunFilter;
use crate::engine::RunState;
use crate::error::ApiError;
use crate::operations;
use crate::record::RunRecord;

/// Values larger than this (as JSON) are cut in run lists, with where to
/// fetch them whole.
pub const LIST_VALUE_BYTES: usize = 1024;
/// Step traces and log lines a run list shows of each run; the rest are
/// counted (`steps_not_listed`, `logs_not_listed`). With the values cut,
/// a page of 250 runs stays a few megabytes at most.
pub const LIST_STEPS: usize = 10;

/// `record` as a run list shows it: its first [`LIST_STEPS`] step traces
/// and log lines, values over [`LIST_VALUE_BYTES`] a marker naming the
/// request that fetches them.
fn listed(record: &RunRecord) -> serde_json::Value {
    let mut value = serde_json::to_value(record).unwrap_or_default();
    for (list, count) in [
        ("steps", "steps_not_listed"),
        ("logs", "logs_not_listed"),
        ("cut", "cut_not_listed"),
    ] {
        if let Some(items) = value.get_mut(list).and_then(|v| v.as_array_mut())
            && items.len() > LIST_STEPS
        {
            let left_out = items.len() - LIST_STEPS;
            items.truncate(LIST_STEPS);
            value[count] = serde_json::Value::from(left_out);
        }
    }
    let mut places = vec!["/body".to_owned(), "/request/raw".to_owned()];
    places.push("/response/body".to_owned());
    places.extend((0..record.logs.len().min(LIST_STEPS)).map(|i| format!("/logs/{i}")));
    for i in 0..record.steps.len().min(LIST_STEPS) {
        places.push(format!("/steps/{i}/input"));
        places.push(format!("/steps/{i}/output"));
    }
    places.push("/request/headers".to_owned());
    places.push("/error/message".to_owned());
    for at in places {
        if let Some(slot) = value.pointer_mut(&at) {
            let size = serde_json::to_vec(slot).map_or(0, |v| v.len());
            if size > LIST_VALUE_BYTES {
                *slot = serde_json::Value::String(format!(
                    "…[cut: {size} bytes; GET /v1/admin/runs/{}/value?at={at}]",
                    record.id
                ));
            }
        }
    }
    value
}

/// `GET /runs/{id}/value?at=`: one value of a record, whole.
#[utoipa::path(get, path = "/v1/admin/runs/{id}/value", tag = "runs", operation_id = "getRunValue",
    description = "One value of a run record, whole, where a run list showed it cut: `at` is a JSON pointer into the record such as /steps/2/output (role: viewer).",
    params(
        ("id" = String, Path, description = "the run id"),
        ("at" = String, Query, pattern = "^/", description = "a JSON pointer into the record, e.g. /steps/2/output"),
    ),
    responses(
        (status = 200, description = "`{\"run_id\", \"at\", \"value\"}`", body = serde_json::Value),
        (status = 400, description = "no `at`, or not a JSON pointer", body = serde_json::Value),
        (status = 401, description = "no valid admin token", body = serde_json::Value),
        (status = 403, description = "the token's role is too low", body = serde_json::Value),
        (status = 404, description = "no such run, or nothing at that place", body = serde_json::Value),
    ))]
pub(super) async fn value(state: &AppState, id: &str, query: &Query) -> Result<Answer, ApiError> {
    let at = query
        .get("at")
        .filter(|at| at.starts_with('/'))
        .ok_or_else(|| ApiError::bad_request("give at=, a JSON pointer such as /steps/0/output"))?;
    let Some(record) = state.runs.get(id).await? else {
        return Err(ApiError::not_found(format!(
            "no run `{id}` (runs are kept for the configured retention)"
        )));
    };
    let whole = serde_json::to_value(&record).unwrap_or_default();
    match whole.pointer(at) {
        Some(found) => json(&serde_json::json!({ "run_id": id, "at": at, "value": found })),
        None => Err(ApiError::not_found(format!(
            "run `{id}` has nothing at {at}"
        ))),
    }
}

/// `GET /runs/{id}`: the whole record.
#[utoipa::path(get, path = "/v1/admin/runs/{id}", tag = "runs", operation_id = "getRun",
    description = "The whole run record: request, steps, answer (role: viewer).",
    params(("id" = String, Path, description = "the run id")),
    responses(
        (status = 200, description = "the run record", body = serde_json::Value),
        (status = 401, description = "no valid admin token", body = serde_json::Value),
        (status = 403, description = "the token's role is too low", body = serde_json::Value),
        (status = 404, description = "no such run", body = serde_json::Value),
    ))]
pub(super) async fn get(state: &AppState, id: &str) -> Result<Answer, ApiError> {
    match state.runs.get(id).await? {
        Some(record) => json(&record),
        None => Err(ApiError::not_found(format!(
            "no run `{id}` (runs are kept for the configured retention)"
        ))),
    }
}

/// `GET /runs?flow=&status=&after=&before=`: newest first.
#[utoipa::path(get, path = "/v1/admin/runs", tag = "runs", operation_id = "listRuns",
    description = "Run records, newest first (role: viewer).",
    params(
        ("flow" = Option<String>, Query, description = "only this flow's runs"),
        ("status" = inline(Option<RunState>), Query, description = "only runs in this state"),
        ("after" = Option<String>, Query, format = DateTime, description = "accepted at or after this RFC 3339 time"),
        ("before" = Option<String>, Query, format = DateTime, description = "accepted before this RFC 3339 time"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 250, description = "page size, 1 to 250, default 50"),
        ("cursor" = Option<String>, Query, description = "the next_cursor of the page before"),
    ),
    responses(
        (status = 200, description = "a page of run records", body = ListPage<serde_json::Value>),
        (status = 400, description = "a bad filter or cursor", body = serde_json::Value),
        (status = 401, description = "no valid admin token", body = serde_json::Value),
        (status = 403, description = "the token's role is too low", body = serde_json::Value),
    ))]
pub(super) async fn list(state: &AppState, query: &Query) -> Result<Answer, ApiError> {
    let status = query
        .given("status")
        .map(|s| {
            RunState::parse(s).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "status `{s}` must be one of {}",
                    RunState::NAMES.join(", ")
                ))
            })
        })
        .transpose()?;
    let filter = RunFilter {
        flow: query.get("flow").map(str::to_owned),
        status,
        after_ms: query.time_ms("after")?,
        before_ms: query.time_ms("before")?,
    };
    let cursor = query.cursor()?;
    let page = state
        .runs
        .page(&filter, cursor.as_deref(), query.limit()?)
        .await
        .map_err(super::page_refused)?;
    let listed: Vec<serde_json::Value> = page.data.iter().map(listed).collect();
    json(&ListPage::new(listed, page.next_cursor))
}

/// `POST /runs/{id}/replay`: a new run of the recorded request.
#[utoipa::path(post, path = "/v1/admin/runs/{id}/replay", tag = "runs", operation_id = "replayRun",
    description = "Runs the recorded request again against the current flow, as a new run linked by `replay_of` (role: author).",
    params(("id" = String, Path, description = "the run id")),
    responses(
        (status = 200, description = "the new run", body = crate::operations::Replayed),
        (status = 401, description = "no valid admin token", body = serde_json::Value),
        (status = 403, description = "the token's role is too low", body = serde_json::Value),
        (status = 404, description = "no such run", body = serde_json::Value),
        (status = 409, description = "the flow is paused or gone, or the record was cut", body = serde_json::Value),
    ))]
pub(super) async fn replay(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<Answer, ApiError> {
    let replayed = operations::replay(state, id, &caller.actor()).await?;
    json(&replayed)
}

/// `POST /runs/{id}/abort`.
#[utoipa::path(post, path = "/v1/admin/runs/{id}/abort", tag = "runs", operation_id = "abortRun",
    description = "Aborts a queued, waiting or running run, on whichever replica holds it (role: ops).",
    params(("id" = String, Path, description = "the run id")),
    responses(
        (status = 200, description = "aborted", body = serde_json::Value),
        (status = 401, description = "no valid admin token", body = serde_json::Value),
        (status = 403, description = "the token's role is too low", body = serde_json::Value),
        (status = 404, description = "no such run", body = serde_json::Value),
        (status = 409, description = "the run already ended", body = serde_json::Value),
    ))]
pub(super) async fn abort(state: &AppState, caller: &Caller, id: &str) -> Result<Answer, ApiError> {
    let before = operations::abort(state, id, &caller.actor()).await?;
    json(&serde_json::json!({ "run_id": id, "was": before, "status": "aborted" }))
}
