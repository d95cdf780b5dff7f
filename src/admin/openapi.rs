//! `GET /v1/admin/openapi.json`: the admin API described by the handlers'
//! own annotations and types (through `utoipa`), so the document cannot
//! drift from the routes; a test checks both ways.

use std::sync::OnceLock;

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{Answer, audit, flows, json, runs, sessions, webhooks};
use crate::error::ApiError;

/// The admin API's OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "flowgate admin API",
        description = "Flows, pauses, token rotation, console sessions, runs, the audit log and outbound event webhooks. Every route takes `Authorization: Bearer <admin token>` (`flowgate token admin --role ops|author|viewer`); roles nest: viewer < author < ops. Errors use the envelope `{\"status\", \"error\", \"message\", \"data\"}`. Lists answer `{\"data\", \"next_cursor\", \"has_more\"}`."
    ),
    paths(
        flows::list,
        flows::get,
        flows::pause,
        flows::unpause,
        flows::rotate,
        flows::issue,
        flows::revoke,
        flows::reload,
        sessions::list,
        sessions::revoke,
        runs::list,
        runs::get,
        runs::value,
        runs::replay,
        runs::abort,
        audit::list,
        webhooks::list,
        webhooks::create,
        webhooks::get,
        webhooks::update,
        webhooks::delete,
        webhooks::enable,
        webhooks::disable,
        webhooks::ping,
        webhooks::test,
        webhooks::rotate_secret,
        webhooks::recover,
        webhooks::deliveries,
        webhooks::resend,
        openapi,
    ),
    modifiers(&AdminToken),
    security(("admin_token" = []))
)]
pub struct AdminApi;

struct AdminToken;

impl Modify for AdminToken {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The document, built once.
pub fn document() -> &'static utoipa::openapi::OpenApi {
    static DOCUMENT: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    DOCUMENT.get_or_init(AdminApi::openapi)
}

/// `GET /openapi.json`.
#[utoipa::path(get, path = "/v1/admin/openapi.json", tag = "meta", operation_id = "getOpenApi",
    description = "This document (role: viewer).",
    responses((status = 200, description = "the OpenAPI 3.1 document", body = serde_json::Value)))]
pub(super) async fn openapi() -> Result<Answer, ApiError> {
    json(document())
}
