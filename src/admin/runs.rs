//! `/v1/admin/runs...`: run records, the flow debugger.

use http::Response;

use super::{json, unavailable};
use crate::error::{ApiError, Body};
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
