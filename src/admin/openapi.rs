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
    modifiers(&AdminToken, &ErrorAnswers),
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

/// Documents the error answers every route can give, in the error
/// envelope (`components.schemas.Error`): `400`, `401`, `403` and `503`
/// everywhere, `404` on a path naming an id, and on routes that change
/// something `408` and `413` (the body), `409` and `422`.
struct ErrorAnswers;

impl Modify for ErrorAnswers {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        use utoipa::openapi::{RefOr, ResponseBuilder, content::ContentBuilder};
        let envelope = ObjectBuilder::new()
            .property("status", ObjectBuilder::new().schema_type(Type::Integer))
            .property("error", ObjectBuilder::new().schema_type(Type::String))
            .property("message", ObjectBuilder::new().schema_type(Type::String))
            .property(
                "data",
                ObjectBuilder::new().schema_type(utoipa::openapi::schema::SchemaType::AnyValue),
            )
            .required("status")
            .required("error")
            .required("message")
            .description(Some("The error envelope every error answer uses."))
            .build();
        doc.components
            .get_or_insert_with(Default::default)
            .schemas
            .insert("Error".into(), RefOr::T(envelope.into()));
        let answer = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(utoipa::openapi::Ref::from_schema_name("Error")))
                        .build(),
                )
                .build()
        };
        for (path, item) in doc.paths.paths.iter_mut() {
            let names_id = path.contains("{id}");
            for (changes, operation) in [
                (false, &mut item.get),
                (true, &mut item.post),
                (true, &mut item.put),
                (true, &mut item.patch),
                (true, &mut item.delete),
            ] {
                let Some(operation) = operation else { continue };
                let mut codes = vec![
                    ("400", "a bad parameter or body"),
                    ("401", "no valid admin token"),
                    ("403", "the token's role is too low"),
                    ("503", "the store is unavailable; retry"),
                ];
                if names_id {
                    codes.push(("404", "nothing has that id"));
                }
                if changes {
                    codes.extend([
                        ("408", "the body took too long"),
                        ("409", "the change conflicts with the current state"),
                        ("413", "the body is too large"),
                        ("422", "the body is well-formed but not acceptable"),
                    ]);
                }
                for (code, description) in codes {
                    // The route's own description of a status wins, with the
                    // envelope as its schema.
                    let response = operation
                        .responses
                        .responses
                        .entry(code.to_owned())
                        .or_insert_with(|| RefOr::T(answer(description)));
                    if let RefOr::T(response) = response
                        && response.content.is_empty()
                    {
                        *response = answer(&response.description.clone());
                    }
                }
            }
        }
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
