//! `/v1/admin/runs...`: run records, the flow debugger.

use http::Response;

use super::{Caller, ListPage, Query, json, unavailable};
use crate::backend::RunFilter;
use crate::engine::RunState;
use crate::error::{ApiError, Body};
use crate::operations::{self, OperationError};
use crate::trigger::TriggerState;

/// `GET /runs/{id}`: the whole record.
pub(super) async fn get(state: &TriggerState, id: &str) -> Result<Response<Body>, ApiError> {
    match state.runs.get(id).await.map_err(unavailable)? {
        Some(record) => json(&record),
        None => Err(ApiError::not_found(format!(
            "no run `{id}` (runs are kept for the configured retention)"
        ))),
    }
}

/// `GET /runs?flow=&status=&after=&before=`: newest first.
pub(super) async fn list(state: &TriggerState, query: &Query) -> Result<Response<Body>, ApiError> {
    let status = query
        .get("status")
        .map(|s| {
            RunState::parse(s).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "status `{s}` must be one of queued, running, waiting, succeeded, failed, timed_out, aborted"
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
        .map_err(|e| match e {
            crate::backend::StorageError::Corrupt(_) => {
                ApiError::bad_request("cursor is not one this API handed out")
            }
            other => unavailable(other),
        })?;
    json(&ListPage::new(page.data, page.next_cursor))
}

fn refused(e: OperationError) -> ApiError {
    match e {
        OperationError::NotFound(_) => ApiError::not_found(e.to_string()),
        OperationError::Conflict(message) => {
            ApiError::new(http::StatusCode::CONFLICT, "conflict", message)
        }
        OperationError::Storage(e) => unavailable(e),
    }
}

/// `POST /runs/{id}/replay`: a new run of the recorded request.
pub(super) async fn replay(
    state: &TriggerState,
    caller: &Caller,
    id: &str,
) -> Result<Response<Body>, ApiError> {
    let replayed = operations::replay(state, id, &caller.actor())
        .await
        .map_err(refused)?;
    json(&replayed)
}

/// `POST /runs/{id}/abort`.
pub(super) async fn abort(
    state: &TriggerState,
    caller: &Caller,
    id: &str,
) -> Result<Response<Body>, ApiError> {
    let before = operations::abort(state, id, &caller.actor())
        .await
        .map_err(refused)?;
    json(&serde_json::json!({ "run_id": id, "was": before, "status": "aborted" }))
}
