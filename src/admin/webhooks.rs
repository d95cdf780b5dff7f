//! `/v1/admin/webhooks...` and `/v1/admin/deliveries/{id}/resend`:
//! outbound event webhook subscriptions and their delivery log.

use http::StatusCode;
use serde::Serialize;
use serde_json::{Value, json};

use super::{Answer, Caller, ListPage, Query, json};
use crate::app::AppState;
use crate::backend::webhooks::Attempt;
use crate::error::ApiError;
use crate::webhooks::input::SubscriptionInput;
use crate::webhooks::{DEFAULT_ROTATION_GRACE, SubscriptionView};

/// A subscription just created, with its secret (shown this once).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct Created {
    #[serde(flatten)]
    subscription: SubscriptionView,
    /// The signing secret, `whsec_…`: store it now, it is not shown again.
    secret: Option<String>,
}

fn known_flows(state: &AppState) -> Vec<String> {
    state.catalog().flows.keys().cloned().collect()
}

fn input(body: Value) -> Result<SubscriptionInput, ApiError> {
    SubscriptionInput::from_json(body)
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_subscription", e))
}

/// `GET /webhooks`.
#[utoipa::path(get, path = "/v1/admin/webhooks", tag = "webhooks", operation_id = "listWebhooks",
    description = "Every subscription, oldest first; secrets are never listed (role: viewer).",
    params(
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 250, description = "page size, 1 to 250, default 50"),
        ("cursor" = Option<String>, Query, description = "the next_cursor of the page before"),
    ),
    responses((status = 200, description = "a page of subscriptions", body = ListPage<SubscriptionView>)))]
pub(super) async fn list(state: &AppState, query: &Query) -> Result<Answer, ApiError> {
    let limit = query.limit()?;
    let after = query.cursor()?;
    let all = state.webhooks.list().await?;
    let start = match &after {
        Some(id) => all.iter().position(|s| s.id == *id).map_or(0, |i| i + 1),
        None => 0,
    };
    let page: Vec<SubscriptionView> = all.into_iter().skip(start).take(limit + 1).collect();
    let (data, next) = if page.len() > limit {
        let data: Vec<_> = page.into_iter().take(limit).collect();
        let next = data.last().map(|s| s.id.clone());
        (data, next)
    } else {
        (page, None)
    };
    json(&ListPage::new(data, next))
}

/// `POST /webhooks`.
#[utoipa::path(post, path = "/v1/admin/webhooks", tag = "webhooks", operation_id = "createWebhook",
    description = "Creates a subscription and sends it a ping. Body: `name`, `url` (https), optional `secret` (`whsec_…`, or `true` to generate one), `events` (default `[\"*\"]`), `flows`, `statuses`, `format` (`json` | `xml`), `enabled` (default true). At most 5 subscriptions may name one flow: 409 `too_many_subscriptions` (role: ops).",
    request_body = super::body::NewSubscription,
    responses(
        (status = 201, description = "created; the secret is shown this once", body = Created),
        (status = 409, description = "a flow already has 5 subscriptions", body = Value),
        (status = 422, description = "a field is not valid", body = Value),
    ))]
pub(super) async fn create(
    state: &AppState,
    caller: &Caller,
    body: Value,
) -> Result<Answer, ApiError> {
    let (subscription, secret) = state
        .webhooks
        .create(input(body)?, &known_flows(state), &caller.actor())
        .await?;
    Ok(json(&Created {
        subscription,
        secret,
    })?
    .with_status(StatusCode::CREATED))
}

/// `GET /webhooks/{id}`.
#[utoipa::path(get, path = "/v1/admin/webhooks/{id}", tag = "webhooks", operation_id = "getWebhook",
    description = "One subscription, with its failure count and why it was disabled (role: viewer).",
    params(("id" = String, Path, description = "the subscription id")),
    responses(
        (status = 200, description = "the subscription", body = SubscriptionView),
        (status = 404, description = "no such subscription", body = Value),
    ))]
pub(super) async fn get(state: &AppState, id: &str) -> Result<Answer, ApiError> {
    json(&state.webhooks.get(id).await?)
}

/// `PATCH /webhooks/{id}`.
#[utoipa::path(patch, path = "/v1/admin/webhooks/{id}", tag = "webhooks", operation_id = "updateWebhook",
    description = "Changes the fields given (any of `name`, `url`, `events`, `flows`, `statuses`, `format`, `enabled`); the secret changes only through rotate-secret (role: ops).",
    params(("id" = String, Path, description = "the subscription id")),
    request_body = super::body::SubscriptionChange,
    responses(
        (status = 200, description = "the subscription now", body = SubscriptionView),
        (status = 404, description = "no such subscription", body = Value),
        (status = 409, description = "a flow would have more than 5 subscriptions", body = Value),
        (status = 422, description = "a field is not valid", body = Value),
    ))]
pub(super) async fn update(
    state: &AppState,
    caller: &Caller,
    id: &str,
    body: Value,
) -> Result<Answer, ApiError> {
    let view = state
        .webhooks
        .update(id, input(body)?, &known_flows(state), &caller.actor())
        .await?;
    json(&view)
}

/// `DELETE /webhooks/{id}`.
#[utoipa::path(delete, path = "/v1/admin/webhooks/{id}", tag = "webhooks", operation_id = "deleteWebhook",
    description = "Deletes a disabled subscription and its delivery log; an enabled one is refused with 409 `subscription_enabled` (role: ops).",
    params(("id" = String, Path, description = "the subscription id")),
    responses(
        (status = 200, description = "deleted", body = Value),
        (status = 404, description = "no such subscription", body = Value),
        (status = 409, description = "the subscription is enabled: disable it first", body = Value),
    ))]
pub(super) async fn delete(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<Answer, ApiError> {
    state.webhooks.delete(id, &caller.actor()).await?;
    json(&json!({ "id": id, "deleted": true }))
}

/// `POST /webhooks/{id}/enable`.
#[utoipa::path(post, path = "/v1/admin/webhooks/{id}/enable", tag = "webhooks", operation_id = "enableWebhook",
    description = "Enables a subscription and resets its failure count; events skipped meanwhile wait for a recover (role: ops).",
    params(("id" = String, Path, description = "the subscription id")),
    responses((status = 200, description = "the subscription now", body = SubscriptionView)))]
pub(super) async fn enable(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<Answer, ApiError> {
    json(
        &state
            .webhooks
            .set_enabled(id, true, &caller.actor())
            .await?,
    )
}

/// `POST /webhooks/{id}/disable`.
#[utoipa::path(post, path = "/v1/admin/webhooks/{id}/disable", tag = "webhooks", operation_id = "disableWebhook",
    description = "Disables a subscription: its events are logged as skipped until it is enabled and recovered (role: ops).",
    params(("id" = String, Path, description = "the subscription id")),
    responses((status = 200, description = "the subscription now", body = SubscriptionView)))]
pub(super) async fn disable(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<Answer, ApiError> {
    json(
        &state
            .webhooks
            .set_enabled(id, false, &caller.actor())
            .await?,
    )
}

/// `POST /webhooks/{id}/ping`.
#[utoipa::path(post, path = "/v1/admin/webhooks/{id}/ping", tag = "webhooks", operation_id = "pingWebhook",
    description = "Sends the subscription a `ping` now (role: ops).",
    params(("id" = String, Path, description = "the subscription id")),
    responses((status = 202, description = "queued; see the delivery log", body = Value)))]
pub(super) async fn ping(state: &AppState, caller: &Caller, id: &str) -> Result<Answer, ApiError> {
    accepted(state.webhooks.send(id, false, &caller.actor()).await?)
}

/// `POST /webhooks/{id}/test`.
#[utoipa::path(post, path = "/v1/admin/webhooks/{id}/test", tag = "webhooks", operation_id = "testWebhook",
    description = "Sends the subscription a `test` event: a realistic `run.ended` of a made-up run, with `live_mode` false (role: ops).",
    params(("id" = String, Path, description = "the subscription id")),
    responses((status = 202, description = "queued; see the delivery log", body = Value)))]
pub(super) async fn test(state: &AppState, caller: &Caller, id: &str) -> Result<Answer, ApiError> {
    accepted(state.webhooks.send(id, true, &caller.actor()).await?)
}

fn accepted(delivery_id: String) -> Result<Answer, ApiError> {
    Ok(json(&json!({ "delivery_id": delivery_id }))?.with_status(StatusCode::ACCEPTED))
}

/// `POST /webhooks/{id}/rotate-secret`.
#[utoipa::path(post, path = "/v1/admin/webhooks/{id}/rotate-secret", tag = "webhooks", operation_id = "rotateWebhookSecret",
    description = "A new signing secret (`{\"secret\": \"whsec_…\"}` to choose it, else generated). The previous one keeps signing alongside for `grace` (default `24h`, at most `7d`); `{\"grace\": \"0s\"}` stops it at once (role: ops).",
    params(("id" = String, Path, description = "the subscription id")),
    request_body(content = Option<super::body::RotateSecret>, description = "optional"),
    responses((status = 200, description = "the new secret, shown this once", body = Value)))]
pub(super) async fn rotate_secret(
    state: &AppState,
    caller: &Caller,
    id: &str,
    body: &Value,
) -> Result<Answer, ApiError> {
    super::body::only_keys(body, &["grace", "secret"])?;
    let grace = super::body::SECRET_GRACE
        .read(body)?
        .unwrap_or(DEFAULT_ROTATION_GRACE);
    let secret = match body.get("secret") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(text.as_str()),
        Some(_) => return Err(ApiError::bad_request("secret must be a whsec_ string")),
    };
    let (secret, previous_until) = state
        .webhooks
        .rotate_secret(id, secret, grace, &caller.actor())
        .await?;
    json(&json!({ "secret": secret, "previous_secret_expires_at": previous_until }))
}

/// `POST /webhooks/{id}/recover`.
#[utoipa::path(post, path = "/v1/admin/webhooks/{id}/recover", tag = "webhooks", operation_id = "recoverWebhook",
    description = "Sends again the events skipped while the subscription was disabled, since `since` (RFC 3339; default: the delivery retention) (role: ops).",
    params(("id" = String, Path, description = "the subscription id")),
    request_body(content = Option<super::body::Recover>, description = "optional"),
    responses((status = 202, description = "how many deliveries were queued", body = Value)))]
pub(super) async fn recover(
    state: &AppState,
    caller: &Caller,
    id: &str,
    body: &Value,
) -> Result<Answer, ApiError> {
    let since_ms = super::body::read_since(body)?;
    let n = state
        .webhooks
        .recover(id, since_ms, &caller.actor())
        .await?;
    Ok(json(&json!({ "recovered": n }))?.with_status(StatusCode::ACCEPTED))
}

/// `GET /webhooks/{id}/deliveries`.
#[utoipa::path(get, path = "/v1/admin/webhooks/{id}/deliveries", tag = "webhooks", operation_id = "listDeliveries",
    description = "The subscription's delivery log, newest first: every attempt with its request (signature removed) and response (body cut at 64 KiB) (role: viewer).",
    params(
        ("id" = String, Path, description = "the subscription id"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 250, description = "page size, 1 to 250, default 50"),
        ("cursor" = Option<String>, Query, description = "the next_cursor of the page before"),
    ),
    responses((status = 200, description = "a page of attempts", body = ListPage<Attempt>)))]
pub(super) async fn deliveries(
    state: &AppState,
    id: &str,
    query: &Query,
) -> Result<Answer, ApiError> {
    let cursor = query.cursor()?;
    let page = state
        .webhooks
        .attempts(id, cursor.as_deref(), query.limit()?)
        .await?;
    json(&ListPage::new(page.data, page.next_cursor))
}

/// `POST /deliveries/{id}/resend`.
#[utoipa::path(post, path = "/v1/admin/deliveries/{id}/resend", tag = "webhooks", operation_id = "resendDelivery",
    description = "Sends a delivery again now, as a manual attempt (role: ops).",
    params(("id" = String, Path, description = "the delivery id (from the delivery log)")),
    responses(
        (status = 202, description = "queued", body = Value),
        (status = 404, description = "no such delivery, or it is past the retention", body = Value),
    ))]
pub(super) async fn resend(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<Answer, ApiError> {
    state.webhooks.resend(id, &caller.actor()).await?;
    accepted(id.to_owned())
}
