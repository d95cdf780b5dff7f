//! `http`: an outbound request through the SSRF-guarded client.
//!
//! ```toml
//! [[steps]]
//! ref = "notify"
//! kind = "http"
//! method = "POST"                      # default POST
//! url = "https://crm.example.com/companies/{{ web1.company_id }}"
//! headers = { authorization = "Bearer {{ env.CRM_TOKEN }}" }
//! query = { source = "flowgate" }
//! body = { id = "{{ web1.company_id }}" }   # object or list: JSON; string: text
//! expect = [200, "2xx"]                # default "2xx"
//! ```
//!
//! The output is `{"status", "headers", "body"}`. An answer `expect` does not
//! accept fails the step; 5xx, 429, timeouts and connection errors may be
//! retried. A dry run renders the request and sends nothing.

use std::time::Duration;

use bytes::Bytes;
use http::Method;
use serde_json::{Value, json};
use toml::Spanned;

use super::{Call, Keys, Kind, Runner, Site, StepFailure};
use crate::flow::load::FlowBuilder;
use crate::flow::spec::Node;
use crate::template::TemplateValue;

/// Default limit of one attempt, when the step sets no `timeout`.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// An `http` step's config.
#[derive(Debug)]
pub struct Http {
    /// Request method.
    pub method: Method,
    /// URL template.
    pub url: TemplateValue,
    /// Header templates (an object).
    pub headers: TemplateValue,
    /// Query templates (an object).
    pub query: TemplateValue,
    /// Body: an object or list is sent as JSON, a string as text.
    pub body: Option<TemplateValue>,
    /// Statuses that count as success.
    pub expect: Vec<StatusMatch>,
    /// Limit of one attempt.
    pub timeout: Duration,
}

/// One entry of `expect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusMatch {
    /// Exactly this status.
    Exact(u16),
    /// A class: `2` for `2xx`.
    Class(u16),
}

impl StatusMatch {
    /// Does `status` match?
    pub fn matches(self, status: u16) -> bool {
        match self {
            StatusMatch::Exact(s) => s == status,
            StatusMatch::Class(c) => status / 100 == c,
        }
    }
}

impl Kind for Http {
    fn load(b: &mut FlowBuilder<'_>, keys: &mut Keys, site: &mut Site<'_>) -> Self {
        let pointer = &site.pointer;
        let method = match keys.string(b, "method") {
            None => Method::POST,
            Some(m) => match Method::from_bytes(m.get_ref().to_ascii_uppercase().as_bytes()) {
                Ok(method) => method,
                Err(_) => {
                    b.problem(
                        m.span().start,
                        format!("`{}` is not an HTTP method", m.get_ref()),
                    );
                    Method::POST
                }
            },
        };
        let url = match keys.required_node(b, "url") {
            Some(u) if matches!(u.get_ref(), Node::Str(_)) => {
                b.template_value(&u, &format!("{pointer}.url"), site.allowed)
            }
            Some(u) => {
                b.problem(u.span().start, "url must be a string");
                TemplateValue::Literal(Value::Null)
            }
            None => TemplateValue::Literal(Value::Null),
        };
        let headers = b.object_value(&keys.node("headers"), "headers", pointer, site.allowed);
        let query = b.object_value(&keys.node("query"), "query", pointer, site.allowed);
        let body = keys
            .node("body")
            .map(|body| b.template_value(&body, &format!("{pointer}.body"), site.allowed));
        let expect = match keys.node("expect") {
            None => vec![StatusMatch::Class(2)],
            Some(node) => expect(b, &node),
        };
        Self {
            method,
            url,
            headers,
            query,
            body,
            expect,
            timeout: site.timeout.unwrap_or(DEFAULT_TIMEOUT),
        }
    }

    async fn run<R: Runner>(&self, runner: &mut R, call: Call<'_>) -> Result<Value, StepFailure> {
        let (url, headers, query, body) = {
            let ctx = call.scope.context();
            let env = runner.env();
            let render = async |v: &TemplateValue| {
                env.render(v, &ctx).await.map_err(StepFailure::template)
            };
            let url = match render(&self.url).await? {
                Value::String(s) => s,
                other => other.to_string(),
            };
            let headers = string_pairs(render(&self.headers).await?);
            let query = string_pairs(render(&self.query).await?);
            let body = match &self.body {
                Some(body) => Some(render(body).await?),
                None => None,
            };
            (url, headers, query, body)
        };
        *call.input = json!({
            "method": self.method.as_str(),
            "url": url,
            "headers": headers.iter().cloned().collect::<serde_json::Map<_, _>>(),
            "query": query.iter().cloned().collect::<serde_json::Map<_, _>>(),
            "body": body,
        });
        if runner.dry_run() {
            return Ok(json!({ "status": null, "headers": {}, "body": null, "dry_run": true }));
        }
        let header_pairs: Vec<(String, String)> = headers
            .into_iter()
            .map(|(k, v)| (k, json_text(v)))
            .collect();
        let query_pairs: Vec<(String, String)> =
            query.into_iter().map(|(k, v)| (k, json_text(v))).collect();
        let payload = body.map(|b| match b {
            Value::String(text) => (Bytes::from(text), "text/plain; charset=utf-8"),
            other => (Bytes::from(other.to_string()), "application/json"),
        });
        let response = runner
            .http()
            .send(
                self.method.clone(),
                &url,
                &header_pairs,
                &query_pairs,
                payload,
                self.timeout,
            )
            .await
            .map_err(|e| StepFailure {
                retryable: e.is_retryable(),
                message: format!("{} {url}: {e}", self.method),
                output: Value::Null,
            })?;
        let output = json!({
            "status": response.status,
            "headers": response.headers,
            "body": response.body,
        });
        if !self.expect.iter().any(|m| m.matches(response.status)) {
            return Err(StepFailure {
                message: format!(
                    "{} {url} answered {}, which `expect` does not accept",
                    self.method, response.status
                ),
                retryable: response.status >= 500 || response.status == 429,
                output,
            });
        }
        Ok(output)
    }
}

/// `expect`: one entry or a list of statuses (`200`) and classes (`"2xx"`).
fn expect(b: &mut FlowBuilder<'_>, node: &Spanned<Node>) -> Vec<StatusMatch> {
    let items: Vec<&Spanned<Node>> = match node.get_ref() {
        Node::List(items) => items.iter().collect(),
        _ => vec![node],
    };
    let mut matches = Vec::new();
    for item in items {
        let parsed = match item.get_ref() {
            Node::Int(n) if (100..=599).contains(n) => Some(StatusMatch::Exact(*n as u16)),
            Node::Str(s) => {
                let s = s.trim().to_ascii_lowercase();
                match s.strip_suffix("xx").and_then(|c| c.parse::<u16>().ok()) {
                    Some(c) if (1..=5).contains(&c) => Some(StatusMatch::Class(c)),
                    _ => None,
                }
            }
            _ => None,
        };
        match parsed {
            Some(m) => matches.push(m),
            None => b.problem(
                item.span().start,
                "expect entries must be statuses (200) or classes (\"2xx\")",
            ),
        }
    }
    matches
}

/// A header or query value as sent: strings as they are, null as empty.
fn json_text(value: Value) -> String {
    match value {
        Value::String(s) => s,
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The entries of a rendered object; nothing for anything else.
fn string_pairs(value: Value) -> Vec<(String, Value)> {
    match value {
        Value::Object(map) => map.into_iter().collect(),
        _ => Vec::new(),
    }
}
