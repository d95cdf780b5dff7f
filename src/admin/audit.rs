//! `/v1/admin/audit`: who changed what, when.

use super::{Answer, ListPage, Query, json};
use crate::app::AppState;
use crate::backend::control::AuditFilter;
use crate::error::ApiError;

/// `GET /audit?actor=&action=&flow=&after=&before=`, newest first.
#[utoipa::path(get, path = "/v1/admin/audit", tag = "audit", operation_id = "listAudit",
    description = "Who changed what, when, newest first (role: viewer).",
    params(
        ("actor" = Option<String>, Query, description = "only this actor's changes"),
        ("action" = Option<String>, Query, description = "only this action, e.g. flow.pause"),
        ("flow" = Option<String>, Query, description = "only changes to this flow"),
        ("after" = Option<String>, Query, format = DateTime, description = "written at or after this RFC 3339 time"),
        ("before" = Option<String>, Query, format = DateTime, description = "written before this RFC 3339 time"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 250, description = "page size, 1 to 250, default 50"),
        ("cursor" = Option<String>, Query, description = "the next_cursor of the page before"),
    ),
    responses(
        (status = 200, description = "a page of audit entries", body = ListPage<crate::backend::control::AuditEntry>),
        (status = 401, description = "no valid admin token", body = serde_json::Value),
        (status = 403, description = "the token's role is too low", body = serde_json::Value),
    ))]
pub(super) async fn list(state: &AppState, query: &Query) -> Result<Answer, ApiError> {
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
        .map_err(super::page_refused)?;
    json(&ListPage::new(page.data, page.next_cursor))
}
