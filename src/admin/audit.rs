//! `/v1/admin/audit`: who changed what, when.

use http::Response;

use super::{ListPage, Query, json, unavailable};
use crate::backend::control::AuditFilter;
use crate::error::{ApiError, Body};
use crate::trigger::TriggerState;

/// `GET /audit?actor=&action=&flow=&after=&before=`, newest first.
pub(super) async fn list(state: &TriggerState, query: &Query) -> Result<Response<Body>, ApiError> {
    let filter = AuditFilter {
        actor: query.get("actor").map(str::to_owned),
        action: query.get("action").map(str::to_owned),
        flow: query.get("flow").map(str::to_owned),
        after_ms: query.time_ms("after")?,
        before_ms: query.time_ms("before")?,
    };
    let cursor = query.cursor()?;
    let page = state
        .control
        .store()
        .audit(&filter, cursor.as_deref(), query.limit()?)
        .await
        .map_err(unavailable)?;
    json(&ListPage::new(page.data, page.next_cursor))
}
