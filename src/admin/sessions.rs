//! `/v1/admin/sessions`: the console sessions open on every replica, and
//! ending one.

use http::StatusCode;
use serde_json::json;

use super::{Answer, Caller, ListPage, Query, json};
use crate::app::AppState;
use crate::backend::control::SessionView;
use crate::error::ApiError;

/// `GET /sessions`: open console sessions, newest first.
#[utoipa::path(get, path = "/v1/admin/sessions", tag = "sessions", operation_id = "listSessions",
    description = "Console sessions open on any replica, newest first: who, with which role, since and until when, and the admin token or sign-in link each was made from (role: ops).",
    params(
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 250, description = "page size, 1 to 250, default 50"),
        ("cursor" = Option<String>, Query, description = "the next_cursor of the page before"),
    ),
    responses(
        (status = 200, description = "a page of sessions", body = ListPage<SessionView>),
        (status = 400, description = "a bad limit or cursor", body = serde_json::Value),
        (status = 401, description = "no valid admin token", body = serde_json::Value),
        (status = 403, description = "the token's role is too low", body = serde_json::Value),
    ))]
pub(super) async fn list(state: &AppState, query: &Query) -> Result<Answer, ApiError> {
    let limit = query.limit()?;
    let skip = match query.cursor()? {
        None => 0,
        Some(position) => position.parse::<usize>().map_err(|_| super::bad_cursor())?,
    };
    let open = state.control.sessions();
    let next = (open.len() > skip + limit).then(|| (skip + limit).to_string());
    let page: Vec<SessionView> = open
        .into_iter()
        .skip(skip)
        .take(limit)
        .map(SessionView::from)
        .collect();
    json(&ListPage::new(page, next))
}

/// `DELETE /sessions/{id}`: ends a console session on every replica.
#[utoipa::path(delete, path = "/v1/admin/sessions/{id}", tag = "sessions", operation_id = "revokeSession",
    description = "Ends a console session on every replica within a second; its cookie then signs in no more (role: ops).",
    params(("id" = String, Path, description = "the session's id")),
    responses(
        (status = 200, description = "ended", body = serde_json::Value),
        (status = 401, description = "no valid admin token", body = serde_json::Value),
        (status = 403, description = "the token's role is too low", body = serde_json::Value),
        (status = 404, description = "no open session has that id", body = serde_json::Value),
        (status = 503, description = "the store is unavailable", body = serde_json::Value),
    ))]
pub(super) async fn revoke(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<Answer, ApiError> {
    state.control.revoke_session(id, &caller.actor()).await?;
    Ok(json(&json!({ "revoked": id }))?.with_status(StatusCode::OK))
}
