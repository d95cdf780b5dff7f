//! The HTTP server: listener, connection limits and timeouts, routing to
//! the surfaces (trigger, admin API, console, health and metrics), and
//! graceful shutdown.
//!
//! [`serve`] takes an already-bound listener and a shutdown future, so tests
//! bind port 0 and stop the server themselves.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tracing::Instrument;

use crate::app::AppState;
use crate::config::ServerConfig;
use crate::error::{ApiError, Body};
use crate::trigger::Trigger;

/// Longest accepted `X-Request-Id`; longer ones are replaced.
const MAX_REQUEST_ID_LEN: usize = 128;
/// Seconds a caller is asked to wait while the control state loads.
const NOT_LOADED_RETRY_AFTER_SECS: u64 = 1;
/// At most one "connection limit reached" log line per this period.
const LIMIT_LOG_EVERY: Duration = Duration::from_secs(10);

/// A boxed answer future, for the routers [`accept_loop`] serves.
type Answer = Pin<Box<dyn Future<Output = Response<Body>> + Send>>;

/// Serves `state` on `listener` until `shutdown` completes, then waits up to
/// `grace` for in-flight requests.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    let limits = state.server.clone();
    let trigger = Arc::new(Trigger::new(state.clone()));
    let router = move |req: Request<Incoming>| -> Answer {
        let (state, trigger) = (state.clone(), trigger.clone());
        Box::pin(async move { route(&state, &trigger, req).await })
    };
    accept_loop(listener, &limits, router, shutdown, grace).await;
}

/// Accepts connections and serves each with `router` until `shutdown`, under
/// `limits`: header and idle timeouts, HTTP/2 limits, and at most
/// `max_connections` open at once. Then every connection is asked to close
/// once its requests are answered, and in-flight requests get `grace`.
async fn accept_loop<R>(
    listener: TcpListener,
    limits: &ServerConfig,
    router: R,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) where
    R: Fn(Request<Incoming>) -> Answer + Clone + Send + Sync + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Without a timer hyper enforces no timeout at all.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        .keep_alive_interval(limits.http2_keep_alive_interval)
        // A peer that does not answer a ping within the time a request's
        // head may take is gone.
        .keep_alive_timeout(limits.header_read_timeout);
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let (closing, closing_rx) = watch::channel(false);
    let mut last_limit_log: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        let permit = match connections.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if last_limit_log.is_none_or(|at| at.elapsed() >= LIMIT_LOG_EVERY) {
                    last_limit_log = Some(Instant::now());
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        "connection limit reached: not accepting new connections until one closes (server.max_connections)"
                    );
                }
                tokio::select! {
                    permit = connections.clone().acquire_owned() => permit.expect("never closed"),
                    _ = &mut shutdown => break,
                }
            }
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, most often: let some close.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let (builder, router, closing) = (builder.clone(), router.clone(), closing_rx.clone());
        let timeouts = (limits.header_read_timeout, limits.idle_timeout);
        tokio::spawn(async move {
            serve_connection(stream, builder, router, closing, timeouts).await;
            drop(permit);
        });
    }
    drop(listener);
    tracing::info!("shutting down: waiting for in-flight requests");
    let _ = closing.send(true);
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(grace, connections.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!(grace = ?grace, "in-flight requests did not finish within the grace period");
    }
}

/// Requests in progress on one connection, and when the last one ended.
struct Activity {
    opened: Instant,
    active: AtomicUsize,
    last_ms: AtomicU64,
    /// Whether any request has begun: until one does, the connection has
    /// only the time a request's head may take.
    served: std::sync::atomic::AtomicBool,
}

/// Marks a request in progress while it lives.
struct InProgress(Arc<Activity>);

impl Activity {
    fn begin(self: &Arc<Self>) -> InProgress {
        self.served.store(true, Ordering::Relaxed);
        self.active.fetch_add(1, Ordering::Relaxed);
        InProgress(self.clone())
    }

    /// How long the connection has had no request in progress.
    fn idle_for(&self) -> Duration {
        if self.active.load(Ordering::Relaxed) > 0 {
            return Duration::ZERO;
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.opened.elapsed().saturating_sub(last)
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        let now = self.0.opened.elapsed().as_millis() as u64;
        self.0.last_ms.store(now, Ordering::Relaxed);
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves one connection until it ends, it stays idle for `idle_timeout`
/// (or sends no request within `header_read_timeout` of opening), or the
/// server closes; the last ones close it once its requests are answered.
async fn serve_connection<R>(
    stream: TcpStream,
    builder: auto::Builder<TokioExecutor>,
    router: R,
    mut closing: watch::Receiver<bool>,
    (header_read_timeout, idle_timeout): (Duration, Duration),
) where
    R: Fn(Request<Incoming>) -> Answer + Clone + Send + Sync + 'static,
{
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity {
        opened: Instant::now(),
        active: AtomicUsize::new(0),
        last_ms: AtomicU64::new(0),
        served: std::sync::atomic::AtomicBool::new(false),
    });
    let tracked = activity.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let in_progress = tracked.begin();
        let answer = router(req);
        async move {
            let response = answer.await;
            drop(in_progress);
            Ok::<_, Infallible>(response)
        }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(conn);
    loop {
        // Until its first request, a connection that sends nothing (before
        // hyper even knows its HTTP version) is held no longer than a
        // request's head may take.
        let idle_timeout = if activity.served.load(Ordering::Relaxed) {
            idle_timeout
        } else {
            header_read_timeout.min(idle_timeout)
        };
        let idle_left = idle_timeout.saturating_sub(activity.idle_for());
        tokio::select! {
            ended = conn.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = closing.wait_for(|closing| *closing) => break,
            _ = tokio::time::sleep(idle_left.max(Duration::from_millis(10))) => {
                if activity.idle_for() >= idle_timeout {
                    tracing::debug!("closing an idle connection");
                    break;
                }
            }
        }
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

async fn route(state: &AppState, trigger: &Trigger, req: Request<Incoming>) -> Response<Body> {
    let request_id = request_id(&req);
    let span = tracing::info_span!("request", id = %request_id, method = %req.method(), path = %req.uri().path(), flow = tracing::field::Empty);
    let mut response = async {
        let path = req.uri().path().to_owned();
        match path.as_str() {
            "/healthz" => json_ok(r#"{"status":"ok"}"#),
            "/readyz" => readiness(state).await,
            "/metrics" => metrics_response(&state.metrics, state.queue.as_ref()).await,
            // Pauses, token generations and revocations decide every answer
            // below: until they are loaded, none is given (fail closed).
            _ if !state.control.is_loaded() => not_loaded(),
            _ if path.starts_with(crate::admin::PATH_PREFIX) => {
                crate::admin::handle(state, req).await
            }
            _ if path
                .strip_prefix(crate::console::PATH_PREFIX)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/')) =>
            {
                crate::console::handle(state, req).await
            }
            _ => match path.strip_prefix(crate::inbound::PATH_PREFIX) {
                Some(flow_id) if !flow_id.is_empty() && !flow_id.contains('/') => {
                    trigger.handle(req, flow_id, &request_id).await
                }
                _ => ApiError::not_found(format!("no route for {path}")).into_response(),
            },
        }
    }
    .instrument(span)
    .await;
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

/// 503 while the control state has not loaded: the store has not answered
/// since the process started.
fn not_loaded() -> Response<Body> {
    let mut err = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "not_ready",
        "the gateway has not loaded its control state yet (the store does not answer); retry shortly",
    );
    err.retry_after_secs = Some(NOT_LOADED_RETRY_AFTER_SECS);
    err.into_response()
}

/// Ready when flows and the control state are loaded and the queue answers.
async fn readiness(state: &AppState) -> Response<Body> {
    if !state.control.is_loaded() {
        return not_loaded();
    }
    let flows = state.catalog().flows.len();
    queue_readiness(state.queue.as_ref(), &format!(r#""flows":{flows},"#)).await
}

/// `200` with the queue's depth (after the `fields` given, each ending in a
/// comma) when the queue answers, `503` `not_ready` saying why otherwise.
async fn queue_readiness(queue: &dyn crate::backend::RunQueue, fields: &str) -> Response<Body> {
    match queue.depth().await {
        Ok(depth) => json_ok(&format!(
            r#"{{"status":"ready",{fields}"queue_depth":{depth}}}"#
        )),
        Err(e) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", e.to_string())
            .into_response(),
    }
}

fn json_ok(body: &str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_owned())));
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Letters, digits and `. _ : - + / =`: what UUIDs, ULIDs, hex, base64 and
/// tracing ids are made of, and nothing that means anything in HTML, JSON,
/// a log line or a header.
fn is_request_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b".-_:+/=".contains(&b)
}

/// The sender's `X-Request-Id` when it is a sane one (at most
/// [`MAX_REQUEST_ID_LEN`] bytes of [`is_request_id_byte`]), else a new one.
fn request_id<B>(req: &Request<B>) -> String {
    req.headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty() && v.len() <= MAX_REQUEST_ID_LEN && v.bytes().all(is_request_id_byte)
        })
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().simple().to_string())
}

/// The Prometheus text of `metrics`, with the queue's depth when it answers.
async fn metrics_response(
    metrics: &crate::metrics::Metrics,
    queue: &dyn crate::backend::RunQueue,
) -> Response<Body> {
    let depth = queue.depth().await.ok();
    let mut response = Response::new(Full::new(Bytes::from(metrics.render(depth))));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// Serves `/healthz`, `/readyz` (the queue reachable) and `/metrics` for a
/// worker-only process until `shutdown`.
pub async fn serve_worker_metrics(
    listener: TcpListener,
    metrics: Arc<crate::metrics::Metrics>,
    queue: Arc<dyn crate::backend::RunQueue>,
    shutdown: impl Future<Output = ()>,
) {
    let router = move |req: Request<Incoming>| -> Answer {
        let (metrics, queue) = (metrics.clone(), queue.clone());
        Box::pin(async move {
            match req.uri().path() {
                "/healthz" => json_ok(r#"{"status":"ok"}"#),
                "/readyz" => queue_readiness(queue.as_ref(), "").await,
                "/metrics" => metrics_response(&metrics, queue.as_ref()).await,
                path => ApiError::not_found(format!("no route for {path}")).into_response(),
            }
        })
    };
    let limits = ServerConfig::default();
    accept_loop(listener, &limits, router, shutdown, Duration::from_secs(1)).await;
}

/// Completes on SIGINT or SIGTERM: the one shutdown source of the process.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received");
}
