//! The web console at `/console`: flows, runs (the flow debugger),
//! outbound webhooks and their delivery log, the audit log and (for ops)
//! open console sessions, for ops and flow authors.
//!
//! Pages are HTML rendered on the server from templates built into the
//! binary (minijinja, auto-escaped), with one small script for what HTML
//! cannot do alone: copy buttons, local times and the sign-in link. No
//! asset comes from elsewhere, and the Content-Security-Policy allows no
//! other: no inline script, no framing.
//!
//! The console is a face on the admin API: every page reads through
//! [`crate::admin::call`] and every button posts to a route of it, with
//! the session's role, so the console can do exactly what the API allows
//! that role and shows no button the role cannot use.

use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use minijinja::value::Serde;
use minijinja::{Environment, Value, context};

use crate::admin::{self, Answer, Caller};
use crate::app::AppState;
use crate::error::{ApiError, Body};

pub mod session;

use self::session::Session;

/// Where the console lives.
pub const PATH_PREFIX: &str = "/console";
/// Largest form body.
const MAX_FORM_BYTES: usize = 64 * 1024;
/// Rows per page of runs, deliveries and audit entries.
const PAGE: usize = 50;

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The templates, built into the binary.
fn templates() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        for (name, source) in [
            ("base.html", include_str!("templates/base.html")),
            ("macros.html", include_str!("templates/macros.html")),
            (
                "webhook-form.html",
                include_str!("templates/webhook-form.html"),
            ),
            ("sign-in.html", include_str!("templates/sign-in.html")),
            ("flows.html", include_str!("templates/flows.html")),
            ("runs.html", include_str!("templates/runs.html")),
            ("run.html", include_str!("templates/run.html")),
            ("webhooks.html", include_str!("templates/webhooks.html")),
            ("webhook.html", include_str!("templates/webhook.html")),
            ("audit.html", include_str!("templates/audit.html")),
            ("sessions.html", include_str!("templates/sessions.html")),
            ("done.html", include_str!("templates/done.html")),
            ("problem.html", include_str!("templates/problem.html")),
        ] {
            env.add_template(name, source)
                .expect("console templates are valid");
        }
        env.add_filter("pretty", pretty);
        env.add_filter("visible", visible);
        env
    })
}

/// `text` with control and bidirectional-control characters shown as
/// U+FFFD, for names that come from tokens: they cannot reorder a page.
fn visible(text: String) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() || crate::telemetry::is_bidi_control(c) {
                '\u{fffd}'
            } else {
                c
            }
        })
        .collect()
}

/// A value as indented JSON, for bodies and step data.
fn pretty(value: Value) -> String {
    serde_json::to_value(&value)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_default()
}

/// Answers a request under `/console`.
pub async fn handle(state: &AppState, req: Request<Incoming>) -> Response<Body> {
    let mut response = match route(state, req).await {
        Ok(response) => response,
        Err(e) => problem(&e, None),
    };
    let headers = response.headers_mut();
    headers.insert("content-security-policy", HeaderValue::from_static(CSP));
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

async fn route(state: &AppState, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let path = req
        .uri()
        .path()
        .strip_prefix(PATH_PREFIX)
        .unwrap_or_default()
        .trim_end_matches('/')
        .to_owned();
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/assets/console.css") => Ok(asset(
            include_str!("assets/console.css"),
            "text/css; charset=utf-8",
        )),
        (Method::GET, "/assets/console.js") => Ok(asset(
            include_str!("assets/console.js"),
            "text/javascript; charset=utf-8",
        )),
        (Method::GET, "/sign-in") => {
            let ended = req
                .uri()
                .query()
                .is_some_and(|q| q.split('&').any(|p| p == "ended"));
            page("sign-in.html", context! { ended => ended }, None)
        }
        (Method::POST, "/sign-in") => sign_in(state, req).await,
        (method, _) => {
            let Some(session) = session::current(state, req.headers()) else {
                // A cookie that no longer opens a session says why on the
                // sign-in page.
                let ended = session::has_cookie(req.headers());
                return Ok(if method == Method::GET {
                    redirect(if ended {
                        "/console/sign-in?ended"
                    } else {
                        "/console/sign-in"
                    })
                } else {
                    problem(
                        &ApiError::unauthorized("sign in again: the session ended"),
                        None,
                    )
                });
            };
            if method == Method::GET {
                let query = req.uri().query().map(str::to_owned);
                view(state, &session, &path, query.as_deref()).await
            } else if method == Method::POST {
                act(state, &session, &path, req).await
            } else {
                Err(ApiError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    "the console answers GET and POST",
                ))
            }
        }
    }
}

/// A signed-in page.
async fn view(
    state: &AppState,
    session: &Session,
    path: &str,
    query: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let caller = &session.caller;
    let get = |api_path: String, query: Option<String>| async move {
        admin::call(
            state,
            caller,
            &Method::GET,
            &api_path,
            query.as_deref(),
            serde_json::Value::Null,
        )
        .await
        .map(|answer| answer.value)
    };
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let (template, data) = match segments.as_slice() {
        [] | [""] => return Ok(redirect("/console/flows")),
        ["flows"] => (
            "flows.html",
            get("flows".into(), Some("limit=250".into())).await?,
        ),
        ["runs"] => ("runs.html", get("runs".into(), Some(paged(query))).await?),
        ["runs", id] => ("run.html", get(format!("runs/{id}"), None).await?),
        ["webhooks"] => (
            "webhooks.html",
            get("webhooks".into(), Some("limit=250".into())).await?,
        ),
        ["webhooks", id] => {
            let subscription = get(format!("webhooks/{id}"), None).await?;
            let mut log = get(format!("webhooks/{id}/deliveries"), Some(paged(query))).await?;
            link_runs(&mut log);
            (
                "webhook.html",
                serde_json::json!({ "subscription": subscription, "log": log }),
            )
        }
        ["audit"] => ("audit.html", get("audit".into(), Some(paged(query))).await?),
        ["sessions"] => (
            "sessions.html",
            get("sessions".into(), Some("limit=250".into())).await?,
        ),
        _ => {
            return Err(ApiError::not_found(format!(
                "no console page {PATH_PREFIX}{path}"
            )));
        }
    };
    let filters: serde_json::Map<String, serde_json::Value> =
        form_urlencoded::parse(query.unwrap_or_default().as_bytes())
            .map(|(k, v)| (k.into_owned(), serde_json::Value::String(v.into_owned())))
            .collect();
    page(
        template,
        context! {
            data => Value::from(Serde(&data)),
            filters => Value::from(Serde(&filters)),
            here => format!("{PATH_PREFIX}{path}"),
        },
        Some(session),
    )
}

/// Gives each attempt of a delivery log page the run its event is about
/// (`run`), read from its payload, so the page can link to it.
fn link_runs(log: &mut serde_json::Value) {
    let Some(attempts) = log.get_mut("data").and_then(|d| d.as_array_mut()) else {
        return;
    };
    for attempt in attempts {
        let run = attempt["payload"]
            .as_str()
            .and_then(|p| serde_json::from_str::<serde_json::Value>(p).ok())
            .and_then(|p| p["data"]["run_id"].as_str().map(str::to_owned));
        if let (Some(run), Some(fields)) = (run, attempt.as_object_mut()) {
            fields.insert("run".into(), serde_json::Value::String(run));
        }
    }
}

/// `query` with the console's page size, for list routes.
fn paged(query: Option<&str>) -> String {
    let mut pairs: Vec<(String, String)> =
        form_urlencoded::parse(query.unwrap_or_default().as_bytes())
            .filter(|(k, v)| k != "limit" && !v.is_empty())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
    pairs.push(("limit".into(), PAGE.to_string()));
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// A button: `POST /console/<admin path>` runs that admin route as the
/// session's user, then goes back to the page it came from (`_back`), or
/// shows what the route answered when it holds something shown once.
async fn act(
    state: &AppState,
    session: &Session,
    path: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let forged = || {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this form did not come from this console; reload the page and try again",
        )
    };
    if !session::same_origin(req.headers()) {
        return Err(forged());
    }
    let form = read_form(req).await?;
    let field = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    if field("_csrf") != Some(session.csrf.as_str()) {
        return Err(forged());
    }
    if path == "/sign-out" {
        session::sign_out(state, session).await?;
        let mut response = redirect("/console/sign-in");
        response.headers_mut().insert(
            header::SET_COOKIE,
            session::set_cookie("", Duration::ZERO, &http::HeaderMap::new()),
        );
        return Ok(response);
    }
    let back = field("_back")
        .filter(|b| b.starts_with("/console/") && !b.starts_with("/console//"))
        .unwrap_or("/console/flows")
        .to_owned();
    let method = match field("_method") {
        Some("DELETE") => Method::DELETE,
        Some("PATCH") => Method::PATCH,
        _ => Method::POST,
    };
    let body = form_body(&form);
    let api_path = path.trim_start_matches('/');
    match admin::call(state, &session.caller, &method, api_path, None, body).await {
        // A replay goes to the run it made.
        Ok(answer) if api_path.ends_with("/replay") && answer.value["run_id"].is_string() => {
            let run = answer.value["run_id"].as_str().unwrap_or_default();
            // A sync replay writes its record just after answering: give it
            // a moment, so the page opens on the run rather than a 404.
            for _ in 0..20 {
                if matches!(state.runs.get(run).await, Ok(Some(_))) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            let to: String = form_urlencoded::byte_serialize(run.as_bytes()).collect();
            Ok(redirect(&format!("/console/runs/{to}")))
        }
        Ok(answer) if shows_once(&answer) => page(
            "done.html",
            context! { data => Value::from(Serde(&answer.value)), back => back },
            Some(session),
        ),
        Ok(_) => Ok(redirect(&back)),
        Err(e) => Ok(problem(&e, Some((session, back.as_str())))),
    }
}

/// Whether an answer holds a secret or token the user sees only now.
fn shows_once(answer: &Answer) -> bool {
    ["secret", "token"]
        .iter()
        .any(|k| answer.value.get(k).is_some_and(|v| !v.is_null()))
}

/// The admin route's JSON body from a form's fields (those not starting
/// with `_`): lists from repeated fields or comma-separated text where the
/// route takes lists, `true`/`false` for checkboxes, empty fields left out.
fn form_body(form: &[(String, String)]) -> serde_json::Value {
    const LISTS: &[&str] = &["events", "flows", "statuses"];
    let mut body = serde_json::Map::new();
    // An edit form names its list fields in `_lists`, so that a list the user
    // emptied (no box checked, an empty text field) is sent as `[]` and
    // clears the filter instead of leaving it as it was.
    for (_, names) in form.iter().filter(|(k, _)| k == "_lists") {
        for name in names.split(',').map(str::trim) {
            if LISTS.contains(&name) {
                body.insert(name.to_owned(), serde_json::Value::Array(Vec::new()));
            }
        }
    }
    for (key, value) in form.iter().filter(|(k, _)| !k.starts_with('_')) {
        let value = value.trim();
        if value.is_empty() {
            continue;
        }
        if LISTS.contains(&key.as_str()) {
            let list = body
                .entry(key.clone())
                .or_insert_with(|| serde_json::Value::Array(Vec::new()));
            if let serde_json::Value::Array(items) = list {
                items.extend(
                    value
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(|s| serde_json::Value::String(s.to_owned())),
                );
            }
        } else if key == "enabled" || (key == "secret" && value == "generate") {
            body.insert(key.clone(), serde_json::Value::Bool(value != "false"));
        } else {
            body.insert(key.clone(), serde_json::Value::String(value.to_owned()));
        }
    }
    serde_json::Value::Object(body)
}

async fn sign_in(state: &AppState, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    if !session::same_origin(req.headers()) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "sign in from this console's own page",
        ));
    }
    let headers = req.headers().clone();
    let form = read_form(req).await?;
    let field = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty())
    };
    match session::sign_in(state, field("token"), field("link")).await {
        Ok((token, ttl)) => {
            let mut response = redirect("/console/flows");
            response.headers_mut().insert(
                header::SET_COOKIE,
                session::set_cookie(&token, ttl, &headers),
            );
            Ok(response)
        }
        Err(e) => {
            let mut response = page("sign-in.html", context! { error => e.message }, None)?;
            *response.status_mut() = e.status;
            Ok(response)
        }
    }
}

async fn read_form(req: Request<Incoming>) -> Result<Vec<(String, String)>, ApiError> {
    let bytes = admin::read_body(req, MAX_FORM_BYTES, "forms").await?;
    Ok(form_urlencoded::parse(&bytes)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect())
}

/// Renders `template` with `ctx`, and the session's user and what their role may do.
fn page(template: &str, ctx: Value, session: Option<&Session>) -> Result<Response<Body>, ApiError> {
    let user = session.map(|s| {
        let principal = &s.caller.principal;
        context! {
            name => principal.name.clone(),
            role => principal.role.as_str(),
            csrf => s.csrf.clone(),
            session => principal.token_id.clone(),
            can => Value::from(Serde(permissions(&s.caller))),
        }
    });
    let html = templates()
        .get_template(template)
        .and_then(|t| t.render(context! { user => user, ..ctx }))
        .map_err(|e| {
            tracing::error!(error = %e, template, "a console page failed to render");
            ApiError::internal()
        })?;
    let mut response = Response::new(Full::new(Bytes::from(html)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    Ok(response)
}

/// What `caller`'s role may do, by the admin routes' own rules.
fn permissions(caller: &Caller) -> std::collections::BTreeMap<&'static str, bool> {
    [
        ("pause", "flows/x/pause"),
        ("rotate", "flows/x/tokens/rotate"),
        ("mint", "flows/x/tokens"),
        ("replay", "runs/x/replay"),
        ("abort", "runs/x/abort"),
        ("webhooks", "webhooks"),
        ("resend", "deliveries/x/resend"),
    ]
    .into_iter()
    .map(|(name, path)| (name, admin::allows(caller, &Method::POST, path)))
    .chain([("sessions", admin::allows(caller, &Method::GET, "sessions"))])
    .collect()
}

/// An error page in the console's frame (a sign-in page's for 401).
fn problem(e: &ApiError, signed_in: Option<(&Session, &str)>) -> Response<Body> {
    let (session, back) = signed_in.map_or((None, None), |(s, b)| (Some(s), Some(b)));
    let rendered = if e.status == StatusCode::UNAUTHORIZED {
        page(
            "sign-in.html",
            context! { error => e.message.clone() },
            None,
        )
    } else {
        page(
            "problem.html",
            context! { status => e.status.as_u16(), kind => e.kind, message => e.message.clone(), back => back },
            session,
        )
    };
    let mut response = rendered.unwrap_or_else(|_| e.clone().into_response());
    *response.status_mut() = e.status;
    if let Some(secs) = e.retry_after_secs {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

fn redirect(to: &str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(location) = HeaderValue::from_str(to) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

fn asset(text: &'static str, content_type: &'static str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=300"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_loads() {
        assert!(templates().templates().count() >= 10);
    }

    #[test]
    fn forms_become_admin_bodies() {
        let form: Vec<(String, String)> = [
            ("_csrf", "x"),
            ("name", " Billing "),
            ("url", "https://hooks.example/in"),
            ("events", "run.ended"),
            ("events", "ping, flow.updated"),
            ("flows", ""),
            ("secret", "generate"),
            ("enabled", "false"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(
            form_body(&form),
            serde_json::json!({
                "name": "Billing",
                "url": "https://hooks.example/in",
                "events": ["run.ended", "ping", "flow.updated"],
                "secret": true,
                "enabled": false,
            })
        );
    }

    #[test]
    fn an_edit_form_clears_the_lists_it_names() {
        let form: Vec<(String, String)> = [
            ("_lists", "events,flows,statuses"),
            ("events", "run.ended"),
            ("flows", " "),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(
            form_body(&form),
            serde_json::json!({"events": ["run.ended"], "flows": [], "statuses": []})
        );
    }
}
