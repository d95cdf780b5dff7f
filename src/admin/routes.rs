//! Every admin route: its method, path pattern, the role it needs and the
//! handler that answers it, and matching a request against them.

use http::Method;

use crate::token::Role;

/// What a route does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handler {
    /// `GET /flows`
    ListFlows,
    /// `GET /flows/{id}`
    GetFlow,
    /// `POST /flows/{id}/pause`
    PauseFlow,
    /// `POST /flows/{id}/unpause`
    UnpauseFlow,
    /// `POST /flows/{id}/tokens/rotate`
    RotateToken,
    /// `POST /flows/{id}/tokens`
    IssueToken,
    /// `POST /tokens/revoke`
    RevokeToken,
    /// `GET /sessions`
    ListSessions,
    /// `DELETE /sessions/{id}`
    RevokeSession,
    /// `POST /reload`
    Reload,
    /// `GET /runs`
    ListRuns,
    /// `GET /runs/{id}`
    GetRun,
    /// `GET /runs/{id}/value`
    GetRunValue,
    /// `POST /runs/{id}/replay`
    ReplayRun,
    /// `POST /runs/{id}/abort`
    AbortRun,
    /// `GET /audit`
    ListAudit,
    /// `GET /openapi.json`
    OpenApi,
    /// `GET /webhooks`
    ListWebhooks,
    /// `POST /webhooks`
    CreateWebhook,
    /// `GET /webhooks/{id}`
    GetWebhook,
    /// `PATCH /webhooks/{id}`
    UpdateWebhook,
    /// `DELETE /webhooks/{id}`
    DeleteWebhook,
    /// `POST /webhooks/{id}/enable`
    EnableWebhook,
    /// `POST /webhooks/{id}/disable`
    DisableWebhook,
    /// `POST /webhooks/{id}/ping`
    PingWebhook,
    /// `POST /webhooks/{id}/test`
    TestWebhook,
    /// `POST /webhooks/{id}/rotate-secret`
    RotateWebhookSecret,
    /// `POST /webhooks/{id}/recover`
    RecoverWebhook,
    /// `GET /webhooks/{id}/deliveries`
    ListDeliveries,
    /// `POST /deliveries/{id}/resend`
    ResendDelivery,
}

impl Handler {
    /// Whether the route reads a JSON body.
    pub(super) fn takes_body(self) -> bool {
        matches!(
            self,
            Handler::RotateToken
                | Handler::IssueToken
                | Handler::RevokeToken
                | Handler::CreateWebhook
                | Handler::UpdateWebhook
                | Handler::RotateWebhookSecret
                | Handler::RecoverWebhook
        )
    }
}

/// One route: method, path pattern under [`PATH_PREFIX`] (`{id}` matches
/// one segment), the role it needs, and what it does.
#[derive(Debug, Clone)]
pub struct Route {
    /// The method.
    pub method: Method,
    /// The path under `/v1/admin/`, e.g. `flows/{id}/pause`.
    pub pattern: &'static str,
    /// The lowest role allowed.
    pub role: Role,
    /// The handler.
    pub handler: Handler,
}

/// Every admin route.
pub const ROUTES: &[Route] = &[
    route(Method::GET, "flows", Role::Viewer, Handler::ListFlows),
    route(Method::GET, "flows/{id}", Role::Viewer, Handler::GetFlow),
    route(
        Method::POST,
        "flows/{id}/pause",
        Role::Ops,
        Handler::PauseFlow,
    ),
    route(
        Method::POST,
        "flows/{id}/unpause",
        Role::Ops,
        Handler::UnpauseFlow,
    ),
    route(
        Method::POST,
        "flows/{id}/tokens/rotate",
        Role::Ops,
        Handler::RotateToken,
    ),
    route(
        Method::POST,
        "flows/{id}/tokens",
        Role::Ops,
        Handler::IssueToken,
    ),
    route(
        Method::POST,
        "tokens/revoke",
        Role::Ops,
        Handler::RevokeToken,
    ),
    route(Method::GET, "sessions", Role::Ops, Handler::ListSessions),
    route(
        Method::DELETE,
        "sessions/{id}",
        Role::Ops,
        Handler::RevokeSession,
    ),
    route(Method::POST, "reload", Role::Author, Handler::Reload),
    route(Method::GET, "runs", Role::Viewer, Handler::ListRuns),
    route(Method::GET, "runs/{id}", Role::Viewer, Handler::GetRun),
    route(
        Method::GET,
        "runs/{id}/value",
        Role::Viewer,
        Handler::GetRunValue,
    ),
    route(
        Method::POST,
        "runs/{id}/replay",
        Role::Author,
        Handler::ReplayRun,
    ),
    route(
        Method::POST,
        "runs/{id}/abort",
        Role::Ops,
        Handler::AbortRun,
    ),
    route(Method::GET, "audit", Role::Viewer, Handler::ListAudit),
    route(Method::GET, "openapi.json", Role::Viewer, Handler::OpenApi),
    route(Method::GET, "webhooks", Role::Viewer, Handler::ListWebhooks),
    route(Method::POST, "webhooks", Role::Ops, Handler::CreateWebhook),
    route(
        Method::GET,
        "webhooks/{id}",
        Role::Viewer,
        Handler::GetWebhook,
    ),
    route(
        Method::PATCH,
        "webhooks/{id}",
        Role::Ops,
        Handler::UpdateWebhook,
    ),
    route(
        Method::DELETE,
        "webhooks/{id}",
        Role::Ops,
        Handler::DeleteWebhook,
    ),
    route(
        Method::POST,
        "webhooks/{id}/enable",
        Role::Ops,
        Handler::EnableWebhook,
    ),
    route(
        Method::POST,
        "webhooks/{id}/disable",
        Role::Ops,
        Handler::DisableWebhook,
    ),
    route(
        Method::POST,
        "webhooks/{id}/ping",
        Role::Ops,
        Handler::PingWebhook,
    ),
    route(
        Method::POST,
        "webhooks/{id}/test",
        Role::Ops,
        Handler::TestWebhook,
    ),
    route(
        Method::POST,
        "webhooks/{id}/rotate-secret",
        Role::Ops,
        Handler::RotateWebhookSecret,
    ),
    route(
        Method::POST,
        "webhooks/{id}/recover",
        Role::Ops,
        Handler::RecoverWebhook,
    ),
    route(
        Method::GET,
        "webhooks/{id}/deliveries",
        Role::Viewer,
        Handler::ListDeliveries,
    ),
    route(
        Method::POST,
        "deliveries/{id}/resend",
        Role::Ops,
        Handler::ResendDelivery,
    ),
];

const fn route(method: Method, pattern: &'static str, role: Role, handler: Handler) -> Route {
    Route {
        method,
        pattern,
        role,
        handler,
    }
}

/// Finds the route for `method` and `path` (under the prefix), with the
/// `{id}` segment it matched. A path that exists under another method is
/// `Err(true)`.
pub(super) fn find(method: &Method, path: &str) -> Result<(&'static Route, Option<String>), bool> {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let mut path_exists = false;
    for route in ROUTES {
        let pattern: Vec<&str> = route.pattern.split('/').collect();
        if pattern.len() != segments.len() {
            continue;
        }
        let mut id = None;
        let matched = pattern.iter().zip(&segments).all(|(p, s)| match *p {
            "{id}" if !s.is_empty() => {
                id = Some((*s).to_owned());
                true
            }
            p => p == *s,
        });
        if !matched {
            continue;
        }
        if route.method == *method {
            return Ok((route, id));
        }
        path_exists = true;
    }
    Err(path_exists)
}

/// The methods some route answers on `path` (under the prefix), as RFC
/// 9110 asks a `405` to list them.
pub(super) fn allowed_methods(path: &str) -> Vec<&'static str> {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let mut methods: Vec<&'static str> = ROUTES
        .iter()
        .filter(|route| {
            let pattern: Vec<&str> = route.pattern.split('/').collect();
            pattern.len() == segments.len()
                && pattern
                    .iter()
                    .zip(&segments)
                    .all(|(p, s)| (*p == "{id}" && !s.is_empty()) || p == s)
        })
        .map(|route| route.method.as_str())
        .collect();
    methods.sort_unstable();
    methods.dedup();
    methods
}
