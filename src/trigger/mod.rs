//! The trigger endpoint: `<METHOD> /v1/flow-webhook/<flow_id>`.
//!
//! Order of checks (docs/flows.md, "The trigger endpoint"): authenticate first, so
//! that nothing reveals whether a flow exists; then unknown flow 404,
//! method 405, paused (the fixed `biz_logic` answer, nothing recorded),
//! body limit 413, body parsing 400/415; then run and render the answer.
//!
//! - [`auth`]: tokens in the header or the query, and body signatures.
//! - [`read`]: reading the body within the flow's and the server's limits.
//! - [`idempotency`]: a repeated key replays the first answer.
//! - [`accept`]: an async run queued, answered at once.
//! - [`cors`]: browser senders.
//!
//! The pieces shared with replays and `flowgate render` (body parsing, the
//! `request` object, a sync run and its answer) are in [`crate::inbound`].

use std::sync::Arc;

use http::request::Parts;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use serde_json::Value;

use self::read::{BodyState, TriggerLimits, declared_length, too_large};
use crate::app::AppState;
use crate::error::{self, ApiError, Body};
use crate::flow::{Catalog, Flow, FlowStatus, Mode};
use crate::inbound::{self, body};
use crate::token::FlowPrincipal;

mod accept;
mod auth;
mod cors;
mod idempotency;
mod read;

/// The trigger endpoint of one server: the app's state, and the slots that
/// bound the requests it handles at once.
pub struct Trigger {
    app: Arc<AppState>,
    limits: TriggerLimits,
}

/// How the sender proved who they are.
#[derive(Debug, Clone)]
pub enum Principal {
    /// A flow token, in the header or the query.
    Token(FlowPrincipal),
    /// A valid body signature.
    Signature,
}

impl Trigger {
    /// The trigger of `app`, under its `[server]` limits.
    pub fn new(app: Arc<AppState>) -> Self {
        let limits = TriggerLimits::new(&app.server);
        Self { app, limits }
    }

    /// Handles one trigger request.
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        flow_id: &str,
        request_id: &str,
    ) -> Response<Body> {
        let catalog = self.app.catalog();
        let flow = catalog.get(flow_id).cloned();
        let cors = flow.as_deref().and_then(|f| cors::origin(f, req.headers()));
        let route = Route {
            flow_id,
            request_id,
            cors_allowed: cors.is_some(),
        };
        let mut response = match self.handle_inner(&catalog, flow, req, &route).await {
            Ok(response) => response,
            Err(err) => {
                if err.status.is_server_error() {
                    tracing::error!(error = %err, "trigger failed");
                } else {
                    tracing::info!(status = err.status.as_u16(), kind = err.kind, message = %err.message, "trigger refused");
                }
                err.into_response()
            }
        };
        // Only loaded flows get their own label, so unknown ids cannot grow the metrics.
        let label = if catalog.get(flow_id).is_some() {
            flow_id
        } else {
            "unknown"
        };
        self.app.metrics.request(label, response.status().as_u16());
        if let Some(origin) = cors {
            let headers = response.headers_mut();
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            headers.insert(header::VARY, HeaderValue::from_static("Origin"));
        }
        response
    }

    async fn handle_inner(
        &self,
        catalog: &Catalog,
        flow: Option<Arc<Flow>>,
        req: Request<Incoming>,
        route: &Route<'_>,
    ) -> Result<Response<Body>, ApiError> {
        let flow_id = route.flow_id;
        let (parts, incoming) = req.into_parts();
        if route.cors_allowed && cors::is_preflight(&parts) {
            return Ok(cors::preflight(
                flow.as_deref().expect("cors implies a flow"),
            ));
        }
        let mut body = BodyState::Unread(incoming);
        let principal = self
            .authenticate(flow.as_deref(), &parts, &mut body, flow_id)
            .await?;
        tracing::Span::current().record("flow", flow_id);
        tracing::debug!(?principal, "authenticated");
        let _slot = self.limits.request_slot().await?;

        let flow = flow.ok_or_else(|| ApiError::not_found(format!("no flow `{flow_id}`")))?;
        if !flow.trigger.methods.contains(&parts.method) {
            return Ok(method_not_allowed(&flow));
        }
        let status = self.app.control.status(&flow);
        if status == FlowStatus::Paused {
            return Ok(error::paused_response());
        }
        let (raw, parsed) = self.read_body(&flow, &parts, body).await?;
        let run_id = uuid::Uuid::now_v7().to_string();
        // An unpaused flow whose file says `paused` runs as live.
        let input = inbound::run_input(
            &flow,
            status,
            &parts,
            &raw,
            parsed,
            run_id.clone(),
            route.request_id,
            &self.app.redaction,
        );
        let key = idempotency::key_of(&parts, &self.app.server.idempotency_headers);
        if let Some(key) = &key
            && let Some(replay) = self.reserve_or_replay(&flow, key, &run_id).await?
        {
            return Ok(replay);
        }
        let result = match flow.trigger.mode {
            Mode::Async => self.accept_async(catalog, &flow, &input).await,
            Mode::Sync => {
                let app = &self.app;
                let (engine, transitions) = (&app.engine, &app.transitions);
                Ok(
                    inbound::run_sync(engine, transitions, catalog, &flow, &input)
                        .await
                        .0,
                )
            }
        };
        match key {
            Some(key) => Ok(self.remember(&flow.id, &key, &run_id, result).await),
            None => result,
        }
    }

    /// The body as sent (decoded when it came compressed) and as parsed,
    /// within the flow's limit: 413 over it, 400/415 when it cannot be parsed.
    async fn read_body(
        &self,
        flow: &Flow,
        parts: &Parts,
        mut body: BodyState,
    ) -> Result<(bytes::Bytes, (Value, bool)), ApiError> {
        let limit = flow.trigger.max_body_bytes;
        if declared_length(&parts.headers).is_some_and(|length| length > limit as u64) {
            // Refused before reading, so `Expect: 100-continue` gets this, not 100.
            return Err(too_large(limit));
        }
        let timeout = self.app.server.body_read_timeout;
        // Signatures were checked over the bytes as sent; the flow sees them decoded.
        let encoding = parts
            .headers
            .get(header::CONTENT_ENCODING)
            .map(|v| v.to_str().unwrap_or("?"));
        let raw = body::decode(encoding, body.read(limit, timeout).await?, limit)?;
        let content_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let parsed = body::parse_with_kind(content_type, &raw, flow.trigger.accept_any)?;
        Ok((raw, parsed))
    }
}

/// Where a trigger request goes, and what identifies it.
struct Route<'a> {
    flow_id: &'a str,
    request_id: &'a str,
    /// The request's origin may call this flow from a browser.
    cors_allowed: bool,
}

/// 405 with `Allow`: the flow takes other methods.
fn method_not_allowed(flow: &Flow) -> Response<Body> {
    let allow = flow
        .trigger
        .methods
        .iter()
        .map(Method::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    let mut response = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("flow `{}` accepts {allow}", flow.id),
    )
    .into_response();
    response.headers_mut().insert(
        header::ALLOW,
        HeaderValue::from_str(&allow).expect("method names are valid"),
    );
    response
}
