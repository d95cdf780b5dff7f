//! The admin API under `/v1/admin/`: flows (status, pause, unpause, token
//! rotation), runs, the audit log and outbound event webhooks, for ops and authors.
//!
//! Every request carries `Authorization: Bearer <admin token>` (see
//! [`crate::token`]): no valid token is 401, a role too low for the route
//! is 403, both in the error envelope. Roles nest: `viewer` reads, `author`
//! also reloads and replays, `ops` also pauses, unpauses, rotates,
//! revokes tokens and console sessions and manages webhook subscriptions. Lists answer `{"data": [...], "next_cursor", "has_more"}` and
//! take `limit` (default 50, at most 250) and the opaque `cursor` of the
//! page before.
//!
//! [`ROUTES`] lists every route with the role it needs; the router matches
//! against it, so a route cannot exist without its role.

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::Serialize;

pub use self::routes::{Handler, ROUTES, Route};
use self::routes::{allowed_methods, find};
use crate::app::AppState;
use crate::backend::control::Actor;
use crate::error::{ApiError, Body};
use crate::token::AdminPrincipal;

mod audit;
mod body;
mod flows;
pub mod openapi;
mod routes;
mod runs;
mod sessions;
mod webhooks;

/// Where the admin API lives.
pub const PATH_PREFIX: &str = "/v1/admin/";
/// Largest admin request body.
const MAX_BODY_BYTES: usize = 64 * 1024;
/// Longest wait for an admin request body.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Default page size.
const DEFAULT_LIMIT: usize = 50;
/// Largest page size.
const MAX_LIMIT: usize = 250;

/// Who is asking, once authenticated.
pub(crate) struct Caller {
    /// The verified token.
    pub principal: AdminPrincipal,
}

impl Caller {
    /// The caller as the audit log names them.
    pub fn actor(&self) -> Actor {
        Actor {
            name: self.principal.name.clone(),
            role: self.principal.role.as_str().to_owned(),
        }
    }
}

/// Answers an admin request.
pub async fn handle(state: &AppState, req: Request<Incoming>) -> Response<Body> {
    match handle_inner(state, req).await {
        Ok(answer) => answer.into_response(),
        Err(e) => e.into_response(),
    }
}

async fn handle_inner(state: &AppState, req: Request<Incoming>) -> Result<Answer, ApiError> {
    let path = req
        .uri()
        .path()
        .strip_prefix(PATH_PREFIX)
        .unwrap_or_default()
        .to_owned();
    let caller = authenticate(state, &req)?;
    let (route, id) = resolve(req.method(), &path, &caller)?;
    let query = Query::parse(req.uri().query());
    let body = if route.handler.takes_body() {
        read_json(req).await?
    } else {
        serde_json::Value::Null
    };
    dispatch(state, &caller, route.handler, &id, &query, body).await
}

/// Runs the admin route `method` `path` (under [`PATH_PREFIX`], with its
/// `query` string) for `caller`, as the HTTP API would: the same routes, the
/// same role checks, the same answers. The console calls the API this way.
pub(crate) async fn call(
    state: &AppState,
    caller: &Caller,
    method: &Method,
    path: &str,
    query: Option<&str>,
    body: serde_json::Value,
) -> Result<Answer, ApiError> {
    let (route, id) = resolve(method, path, caller)?;
    dispatch(
        state,
        caller,
        route.handler,
        &id,
        &Query::parse(query),
        body,
    )
    .await
}

/// Whether `caller`'s role may call `method` `path` (under [`PATH_PREFIX`]).
pub(crate) fn allows(caller: &Caller, method: &Method, path: &str) -> bool {
    resolve(method, path, caller).is_ok()
}

/// The route for `method` and `path`, once `caller`'s role allows it.
fn resolve(
    method: &Method,
    path: &str,
    caller: &Caller,
) -> Result<(&'static Route, String), ApiError> {
    let (route, id) = match find(method, path) {
        Ok(found) => found,
        Err(true) => {
            let mut refused = ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{method} is not allowed on {PATH_PREFIX}{path}"),
            );
            refused.allow = Some(allowed_methods(path).join(", "));
            return Err(refused);
        }
        Err(false) => {
            return Err(ApiError::not_found(format!(
                "no admin route {PATH_PREFIX}{path}"
            )));
        }
    };
    if caller.principal.role < route.role {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "this needs the {} role; the token has {}",
                route.role.as_str(),
                caller.principal.role.as_str()
            ),
        ));
    }
    Ok((route, id.unwrap_or_default()))
}

async fn dispatch(
    state: &AppState,
    caller: &Caller,
    handler: Handler,
    id: &str,
    query: &Query,
    body: serde_json::Value,
) -> Result<Answer, ApiError> {
    match handler {
        Handler::ListFlows => flows::list(state, query).await,
        Handler::GetFlow => flows::get(state, id).await,
        Handler::PauseFlow => flows::pause(state, caller, id).await,
        Handler::UnpauseFlow => flows::unpause(state, caller, id).await,
        Handler::RotateToken => flows::rotate(state, caller, id, &body).await,
        Handler::IssueToken => flows::issue(state, caller, id, &body).await,
        Handler::RevokeToken => flows::revoke(state, caller, &body).await,
        Handler::ListSessions => sessions::list(state, query).await,
        Handler::RevokeSession => sessions::revoke(state, caller, id).await,
        Handler::Reload => flows::reload(state, caller).await,
        Handler::ListRuns => runs::list(state, query).await,
        Handler::GetRun => runs::get(state, id).await,
        Handler::GetRunValue => runs::value(state, id, query).await,
        Handler::ReplayRun => runs::replay(state, caller, id).await,
        Handler::AbortRun => runs::abort(state, caller, id).await,
        Handler::ListAudit => audit::list(state, query).await,
        Handler::OpenApi => openapi::openapi().await,
        Handler::ListWebhooks => webhooks::list(state, query).await,
        Handler::CreateWebhook => webhooks::create(state, caller, body).await,
        Handler::GetWebhook => webhooks::get(state, id).await,
        Handler::UpdateWebhook => webhooks::update(state, caller, id, body).await,
        Handler::DeleteWebhook => webhooks::delete(state, caller, id).await,
        Handler::EnableWebhook => webhooks::enable(state, caller, id).await,
        Handler::DisableWebhook => webhooks::disable(state, caller, id).await,
        Handler::PingWebhook => webhooks::ping(state, caller, id).await,
        Handler::TestWebhook => webhooks::test(state, caller, id).await,
        Handler::RotateWebhookSecret => webhooks::rotate_secret(state, caller, id, &body).await,
        Handler::RecoverWebhook => webhooks::recover(state, caller, id, &body).await,
        Handler::ListDeliveries => webhooks::deliveries(state, id, query).await,
        Handler::ResendDelivery => webhooks::resend(state, caller, id).await,
    }
}

fn authenticate(state: &AppState, req: &Request<Incoming>) -> Result<Caller, ApiError> {
    const MESSAGE: &str = "missing or invalid admin token: send Authorization: Bearer <admin token> (flowgate token admin --role ROLE)";
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(crate::token::bearer)
        .ok_or_else(|| ApiError::unauthorized(MESSAGE))?;
    let principal = state
        .keys
        .verify_admin(token)
        .map_err(|_| ApiError::unauthorized(MESSAGE))?;
    if state.control.is_revoked(&principal.token_id) {
        return Err(ApiError::unauthorized("this admin token has been revoked"));
    }
    Ok(Caller { principal })
}

/// A request's query parameters.
pub(crate) struct Query(Vec<(String, String)>);

impl Query {
    fn parse(query: Option<&str>) -> Self {
        Self(
            form_urlencoded::parse(query.unwrap_or_default().as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    /// The value of `name`, if given and not empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.given(name).filter(|v| !v.is_empty())
    }

    /// The value of `name`, if given, even empty (a filter that must be
    /// one of some values refuses an empty one).
    pub fn given(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// `limit`: 1 to [`MAX_LIMIT`], default [`DEFAULT_LIMIT`].
    pub fn limit(&self) -> Result<usize, ApiError> {
        match self.given("limit") {
            None => Ok(DEFAULT_LIMIT),
            Some(text) => match text.parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
                _ => Err(ApiError::bad_request(format!(
                    "limit must be a whole number from 1 to {MAX_LIMIT}"
                ))),
            },
        }
    }

    /// `cursor`, decoded.
    pub fn cursor(&self) -> Result<Option<String>, ApiError> {
        self.get("cursor").map(decode_cursor).transpose()
    }

    /// A time parameter (`after`, `before`): RFC 3339, as ms since the epoch.
    pub fn time_ms(&self, name: &str) -> Result<Option<u64>, ApiError> {
        self.given(name)
            .map(|text| {
                rfc3339_ms(text).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "{name} `{}` is not an RFC 3339 time like 2026-01-31T12:00:00Z (in a query, write + as %2B)",
                        text.chars().take(64).collect::<String>()
                    ))
                })
            })
            .transpose()
    }
}

pub(crate) use crate::webhooks::message::rfc3339_ms;

/// A cursor as handed out: opaque to clients.
pub(crate) fn encode_cursor(position: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(position)
}

fn decode_cursor(cursor: &str) -> Result<String, ApiError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(bad_cursor)
}

/// 400: a cursor this API never handed out.
pub(super) fn bad_cursor() -> ApiError {
    ApiError::bad_request("cursor is not one this API handed out")
}

/// A failed page read: a position the store cannot place (the store
/// reads it as corrupt) is the caller's bad cursor; anything else is the
/// store's failure.
pub(super) fn page_refused(e: crate::backend::StorageError) -> ApiError {
    match e {
        crate::backend::StorageError::Corrupt(_) => bad_cursor(),
        other => other.into(),
    }
}

/// A page of a list, as every list answers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ListPage<T: Serialize> {
    /// The entries.
    pub data: Vec<T>,
    /// The cursor of the next page, `null` on the last.
    pub next_cursor: Option<String>,
    /// Whether there is a next page.
    pub has_more: bool,
}

impl<T: Serialize> ListPage<T> {
    /// A page whose next one starts after `next` (a position, not yet encoded).
    pub fn new(data: Vec<T>, next: Option<String>) -> Self {
        Self {
            data,
            has_more: next.is_some(),
            next_cursor: next.as_deref().map(encode_cursor),
        }
    }
}

/// What an admin route answers: a status and a JSON value.
#[derive(Debug)]
pub(crate) struct Answer {
    /// The status, 200 unless the route says otherwise.
    pub status: StatusCode,
    /// The body.
    pub value: serde_json::Value,
}

impl Answer {
    /// The answer with `status` instead of 200.
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// As an HTTP answer: JSON, not to be cached.
    pub fn into_response(self) -> Response<Body> {
        let body = serde_json::to_vec(&self.value).unwrap_or_default();
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = self.status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }
}

/// A 200 JSON answer.
pub(crate) fn json(value: &impl Serialize) -> Result<Answer, ApiError> {
    let value = serde_json::to_value(value).map_err(|_| ApiError::internal())?;
    Ok(Answer {
        status: StatusCode::OK,
        value,
    })
}

/// The request's JSON body; an empty body, or `null`, is `{}`.
async fn read_json(req: Request<Incoming>) -> Result<serde_json::Value, ApiError> {
    let collected = read_body(req, MAX_BODY_BYTES, "admin request bodies").await?;
    if collected.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::json!({}));
    }
    match serde_json::from_slice::<serde_json::Value>(&collected) {
        Ok(value @ serde_json::Value::Object(_)) => Ok(value),
        // `null` says as little as an empty body.
        Ok(serde_json::Value::Null) => Ok(serde_json::json!({})),
        Ok(_) => Err(ApiError::bad_request("the body must be a JSON object")),
        Err(e) => Err(ApiError::bad_request(format!("the body is not JSON: {e}"))),
    }
}

/// A request body of at most `max` bytes (`what` names such bodies in the
/// error), arriving within [`BODY_TIMEOUT`].
pub(crate) async fn read_body(
    req: Request<Incoming>,
    max: usize,
    what: &str,
) -> Result<Bytes, ApiError> {
    Ok(
        tokio::time::timeout(BODY_TIMEOUT, Limited::new(req.into_body(), max).collect())
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "timeout",
                    "the body took too long",
                )
            })?
            .map_err(|_| {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    format!("{what} are at most {max} bytes"),
                )
            })?
            .to_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_handler_has_a_route() {
        use Handler::*;
        let all = [
            ListFlows,
            GetFlow,
            PauseFlow,
            UnpauseFlow,
            RotateToken,
            IssueToken,
            RevokeToken,
            ListSessions,
            RevokeSession,
            Reload,
            GetRun,
            GetRunValue,
            ListAudit,
            ListWebhooks,
            CreateWebhook,
            GetWebhook,
            UpdateWebhook,
            DeleteWebhook,
            EnableWebhook,
            DisableWebhook,
            PingWebhook,
            TestWebhook,
            RotateWebhookSecret,
            RecoverWebhook,
            ListDeliveries,
            ResendDelivery,
        ];
        for handler in all {
            // Exhaustive: a new handler must be listed above.
            match handler {
                ListFlows | GetFlow | PauseFlow | UnpauseFlow | RotateToken | IssueToken
                | RevokeToken | ListSessions | RevokeSession | Reload | ListRuns | GetRun
                | GetRunValue | ReplayRun | AbortRun | ListAudit | OpenApi | ListWebhooks
                | CreateWebhook | GetWebhook | UpdateWebhook | DeleteWebhook | EnableWebhook
                | DisableWebhook | PingWebhook | TestWebhook | RotateWebhookSecret
                | RecoverWebhook | ListDeliveries | ResendDelivery => {}
            }
            assert_eq!(
                ROUTES.iter().filter(|r| r.handler == handler).count(),
                1,
                "{handler:?}"
            );
        }
    }

    #[test]
    fn every_operation_has_its_own_id() {
        let doc = openapi::document();
        let mut ids = Vec::new();
        for item in doc.paths.paths.values() {
            for operation in [&item.get, &item.post, &item.put, &item.delete, &item.patch]
                .into_iter()
                .flatten()
            {
                ids.push(operation.operation_id.clone().expect("an operation id"));
            }
        }
        let count = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), count, "{ids:?}");
        assert!(ids.contains(&"listFlows".to_owned()));
        // Parameters say what the API accepts.
        let text = serde_json::to_string(&doc.paths.paths["/v1/admin/runs"]).unwrap();
        for expected in ["timed_out", "\"minimum\":1", "\"maximum\":250", "date-time"] {
            assert!(text.contains(expected), "{expected}: {text}");
        }
        assert!(!text.contains("\"waiting\""), "the API reads no such state");
        let value = serde_json::to_string(&doc.paths.paths["/v1/admin/runs/{id}/value"]).unwrap();
        assert!(value.contains("\"pattern\":\"^/\""), "{value}");
    }

    #[test]
    fn request_bodies_say_what_their_handlers_read() {
        let doc = serde_json::to_value(openapi::document()).unwrap();
        // A request body with its schema, a reference resolved.
        let body = |path: &str, method: &str| {
            let mut body = doc["paths"][path][method]["requestBody"].clone();
            let schema = &mut body["content"]["application/json"]["schema"];
            if let Some(name) = schema["$ref"].as_str() {
                let name = name.rsplit('/').next().unwrap();
                *schema = doc["components"]["schemas"][name].clone();
            }
            body
        };
        let optional = body("/v1/admin/webhooks/{id}/recover", "post");
        assert_ne!(optional["required"], true, "{optional}");
        let text = serde_json::to_string(&doc).unwrap();
        assert!(text.contains("date-time"), "{text}");
        let create = body("/v1/admin/webhooks", "post");
        assert_eq!(create["required"], true, "{create}");
        let schema = serde_json::to_string(&create).unwrap();
        for expected in ["\"name\"", "\"url\"", "run.ended", "additionalProperties"] {
            assert!(schema.contains(expected), "{expected}: {schema}");
        }
        let rotate = body("/v1/admin/flows/{id}/tokens/rotate", "post");
        assert_ne!(rotate["required"], true, "{rotate}");
        let grace = doc["components"]["schemas"]["RotateTokens"]["properties"]["grace"].clone();
        let pattern = grace["pattern"].as_str().unwrap_or_default();
        assert!(
            pattern.contains("36[0-4]"),
            "the grace bound is in the pattern: {grace}"
        );
    }

    #[test]
    fn the_openapi_document_lists_exactly_the_routes() {
        let doc = openapi::document();
        let mut documented = Vec::new();
        for (path, item) in &doc.paths.paths {
            for (method, operation) in [
                (Method::GET, &item.get),
                (Method::POST, &item.post),
                (Method::PUT, &item.put),
                (Method::DELETE, &item.delete),
                (Method::PATCH, &item.patch),
            ] {
                if operation.is_some() {
                    documented.push(format!("{method} {path}"));
                }
            }
        }
        let mut routed: Vec<String> = ROUTES
            .iter()
            .map(|r| format!("{} {PATH_PREFIX}{}", r.method, r.pattern))
            .collect();
        documented.sort();
        routed.sort();
        assert_eq!(documented, routed);
        // Each operation says the role its route needs.
        for route in ROUTES {
            let item = &doc.paths.paths[&format!("{PATH_PREFIX}{}", route.pattern)];
            let operation = match route.method {
                Method::GET => item.get.as_ref(),
                Method::PATCH => item.patch.as_ref(),
                Method::DELETE => item.delete.as_ref(),
                _ => item.post.as_ref(),
            }
            .unwrap();
            let description = operation.description.as_deref().unwrap_or_default();
            let role = format!("(role: {})", route.role.as_str());
            assert!(
                description.contains(&role),
                "{}: {description}",
                route.pattern
            );
        }
    }

    #[test]
    fn routes_match_their_patterns_only() {
        let (route, id) = find(&Method::POST, "flows/signup/pause").unwrap();
        assert_eq!(route.handler, Handler::PauseFlow);
        assert_eq!(id.as_deref(), Some("signup"));
        assert_eq!(
            find(&Method::GET, "flows/").unwrap().0.handler,
            Handler::ListFlows
        );
        assert!(matches!(
            find(&Method::GET, "flows/signup/pause"),
            Err(true)
        ));
        assert!(matches!(find(&Method::GET, "flows/a/b/c/d"), Err(false)));
        assert!(matches!(find(&Method::GET, "flows//pause"), Err(false)));
    }
}
