//! The HTTP server: listener, routing, tower layers and graceful shutdown.
//!
//! [`serve`] takes an already-bound listener and a shutdown future, so tests
//! bind port 0 and stop the server themselves.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tracing::Instrument;

use crate::error::{ApiError, Body};
use crate::trigger::{self, TriggerState};

/// Requests handled at once by one gateway; more wait for a slot. Bounds
/// memory (each may hold a body up to its flow's limit) and outbound load.
const MAX_CONCURRENT_REQUESTS: usize = 4096;
/// Longest accepted `X-Request-Id`; longer ones are replaced.
const MAX_REQUEST_ID_LEN: usize = 128;

/// Shared state of a running gateway.
pub type AppState = TriggerState;

/// Serves `state` on `listener` until `shutdown` completes, then waits up to
/// `grace` for in-flight requests.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    let service = ServiceBuilder::new()
        .concurrency_limit(MAX_CONCURRENT_REQUESTS)
        .service_fn(move |req| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(route(&state, req).await) }
        });
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let conn = builder.serve_connection_with_upgrades(
                    TokioIo::new(stream),
                    TowerToHyperService::new(service.clone()),
                );
                let conn = graceful.watch(conn.into_owned());
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!("shutting down: waiting for in-flight requests");
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(grace = ?grace, "in-flight requests did not finish within the grace period");
    }
}

async fn route(state: &AppState, req: Request<Incoming>) -> Response<Body> {
    let request_id = request_id(&req);
    let span = tracing::info_span!("request", id = %request_id, method = %req.method(), path = %req.uri().path(), flow = tracing::field::Empty);
    let mut response = async {
        let path = req.uri().path().to_owned();
        match path.as_str() {
            "/healthz" => json_ok(r#"{"status":"ok"}"#),
            "/readyz" => readiness(state).await,
            "/metrics" => metrics_response(&state.metrics, state.queue.as_ref()).await,
            _ => match path.strip_prefix(trigger::PATH_PREFIX) {
                Some(flow_id) if !flow_id.is_empty() && !flow_id.contains('/') => {
                    trigger::handle(state, req, flow_id, &request_id).await
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

/// Ready when flows are loaded and the queue answers.
async fn readiness(state: &AppState) -> Response<Body> {
    let flows = state.catalog().flows.len();
    match state.queue.depth().await {
        Ok(depth) => json_ok(&format!(
            r#"{{"status":"ready","flows":{flows},"queue_depth":{depth}}}"#
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

/// The sender's `X-Request-Id` when it is sane, else a new one.
fn request_id<B>(req: &Request<B>) -> String {
    req.headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= MAX_REQUEST_ID_LEN
                && v.bytes().all(|b| b.is_ascii_graphic())
        })
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().simple().to_string())
}

/// The Prometheus text of `metrics`, with the queue's depth when it answers.
async fn metrics_response(
    metrics: &crate::metrics::Metrics,
    queue: &dyn crate::queue::RunQueue,
) -> Response<Body> {
    let depth = queue.depth().await.ok();
    let mut response = Response::new(Full::new(Bytes::from(metrics.render(depth))));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// Serves `/healthz` and `/metrics` for a worker-only process until `shutdown`.
pub async fn serve_worker_metrics(
    listener: TcpListener,
    metrics: Arc<crate::metrics::Metrics>,
    queue: Arc<dyn crate::queue::RunQueue>,
    shutdown: impl Future<Output = ()>,
) {
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let (metrics, queue) = (metrics.clone(), queue.clone());
        async move {
            let response = match req.uri().path() {
                "/healthz" => json_ok(r#"{"status":"ok"}"#),
                "/metrics" => metrics_response(&metrics, queue.as_ref()).await,
                path => ApiError::not_found(format!("no route for {path}")).into_response(),
            };
            Ok::<_, Infallible>(response)
        }
    });
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let service = service.clone();
                tokio::spawn(async move {
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            _ = &mut shutdown => return,
        }
    }
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
