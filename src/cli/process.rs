//! The processes `flowgate serve` and `flowgate worker` start: the app
//! built from the config (flows loaded, backends opened), started through
//! [`App::start`], and stopped on SIGTERM or SIGINT; plus `flowgate backup`.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use super::runtime;
use crate::app::{App, Settings, Start};
use crate::backend::Backends;
use crate::backend::redis::Settings as RedisSettings;
use crate::config::{Config, ConfigError};
use crate::flow::{LoadOptions, LoadReport, SharedCatalog, load_catalog};
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;
use crate::token::TokenKeys;

pub(super) fn load_options(config: &Config) -> LoadOptions {
    LoadOptions {
        flows_dir: config.flows_dir(),
        templates_dir: config.templates_dir(),
        default_max_body_bytes: config.server.max_body_bytes,
        default_records: config.runs.records(),
        secrets: Default::default(),
        render: config.templates.budget(),
    }
}

pub(super) fn load(config: &Config) -> LoadReport {
    load_catalog(&load_options(config))
}

/// Loads flows, logging every problem; invalid flows are left out.
fn load_for_serving(config: &Config) -> SharedCatalog {
    let report = load(config);
    for warning in &report.warnings {
        tracing::warn!("{warning}");
    }
    for problem in &report.problems {
        tracing::error!("{problem}");
    }
    if !report.skipped.is_empty() {
        tracing::warn!(skipped = ?report.skipped, "flows with problems are not served; run `flowgate check`");
    }
    let mut ids: Vec<&String> = report.catalog.flows.keys().collect();
    ids.sort();
    tracing::info!(flows = ?ids, "flows loaded");
    SharedCatalog::new(report.catalog)
}

/// The app on the configured backends, with the flows loaded for serving;
/// `own` as for [`open_backends`]: serve and worker own an embedded
/// database, CLI operations work beside them.
pub(super) fn build_app(config: &Config, own: bool) -> anyhow::Result<App> {
    let mut settings = Settings::from_config(config);
    settings.webhooks.load_ca(config)?;
    let keys = TokenKeys::new(&config.signing_key()?);
    let lifecycle = Arc::new(Lifecycle::new(Arc::new(Metrics::default())));
    let backends = open_backends(config, own)?;
    Ok(App::new(
        settings,
        keys,
        load_for_serving(config),
        backends,
        lifecycle,
    )
    .with_reloader(load_options(config)))
}

/// The configured storage backends.
pub(super) fn backends(config: &Config) -> anyhow::Result<Backends> {
    open_backends(config, false)
}

/// The configured storage backends; with `own`, this process takes the
/// embedded database file for itself (serve and worker do; the CLI reads
/// and writes beside them).
fn open_backends(config: &Config, own: bool) -> anyhow::Result<Backends> {
    let retention = crate::backend::Retention {
        runs: config.runs.retention,
        deliveries: config.webhooks.delivery_retention,
    };
    match config.storage.backend {
        crate::config::StorageBackend::Redis => {
            Backends::redis(&RedisSettings::from_config(&config.redis), retention)
                .map_err(|e| ConfigError(format!("redis.url: {e}")).into())
        }
        crate::config::StorageBackend::Embedded => {
            let path = config.resolve(&config.storage.path);
            let db = crate::backend::sqlite::Database::open(&path, own)?;
            Ok(Backends::embedded(&db, retention))
        }
        crate::config::StorageBackend::Postgres => {
            // Its own runtime, for the migrations only: the pool's
            // connections are made afresh on the one that serves.
            let settings = postgres_settings(config);
            runtime()?
                .block_on(Backends::postgres(&settings, retention))
                .map_err(postgres_error)
        }
    }
}

fn postgres_settings(config: &Config) -> crate::backend::postgres::Settings {
    crate::backend::postgres::Settings {
        url: config.postgres.url.clone(),
        pool_size: config.postgres.pool_size,
    }
}

/// A bad `postgres.url` is a configuration error (exit 64); a database
/// that cannot be reached or is too new, a failure (exit 1).
fn postgres_error(e: crate::backend::postgres::OpenError) -> anyhow::Error {
    match e {
        crate::backend::postgres::OpenError::Config(_) => ConfigError(e.to_string()).into(),
        other => anyhow::Error::new(other),
    }
}

/// `flowgate migrate`: brings the configured store's schema up to date
/// without serving (serve and worker do it too, at start).
pub(super) fn migrate(config: &Config) -> anyhow::Result<ExitCode> {
    match config.storage.backend {
        crate::config::StorageBackend::Postgres => {
            let db = crate::backend::postgres::Database::new(&postgres_settings(config))
                .map_err(postgres_error)?;
            let applied = runtime()?.block_on(db.migrate()).map_err(postgres_error)?;
            println!(
                "PostgreSQL at {}: {applied} migration(s) applied; the schema is current",
                db.describe()
            );
        }
        crate::config::StorageBackend::Embedded => {
            let path = config.resolve(&config.storage.path);
            crate::backend::sqlite::Database::open(&path, false)?;
            println!("{}: the schema is current", path.display());
        }
        crate::config::StorageBackend::Redis => {
            println!("Redis has no schema to migrate");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `flowgate backup PATH`: a consistent copy of the embedded database.
pub(super) fn backup(config: &Config, path: &Path) -> anyhow::Result<ExitCode> {
    if config.storage.backend != crate::config::StorageBackend::Embedded {
        anyhow::bail!(
            "backup copies the embedded database; with storage.backend = \"redis\" use Redis's own persistence (RDB or AOF), with \"postgres\" pg_dump or your database's backups"
        );
    }
    if path.exists() {
        anyhow::bail!("{} exists; give a new file", path.display());
    }
    let db = crate::backend::sqlite::Database::open(&config.resolve(&config.storage.path), false)?;
    runtime()?.block_on(db.backup(path))?;
    println!("{}", path.display());
    Ok(ExitCode::SUCCESS)
}

/// One shutdown source for the whole process: SIGINT or SIGTERM.
fn shutdown_channel() -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        crate::server::shutdown_signal().await;
        tell_service_manager(&[sd_notify::NotifyState::Stopping]);
        let _ = tx.send(true);
    });
    rx
}

/// Tells systemd (a `Type=notify` unit, through `$NOTIFY_SOCKET`) that the
/// process is ready or stopping; nothing when not started by systemd.
fn tell_service_manager(state: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!(error = %e, "cannot notify the service manager");
    }
}

async fn shutdown_requested(mut rx: tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

fn spawn_worker(
    app: &App,
    grace: Duration,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let worker = app.worker();
    tokio::spawn(async move { worker.run(shutdown_requested(shutdown), grace).await })
}

/// Open files a process needs beside its connections: the store's, the
/// outbound calls', the flow files'.
const FILES_BESIDE_CONNECTIONS: u64 = 256;

/// Raises the soft open-files limit (often 1024 in containers) toward
/// `server.max_connections` plus [`FILES_BESIDE_CONNECTIONS`], as far as
/// the hard limit allows; warns when that stops it short, since accepting
/// then fails with "Too many open files" before the connection limit.
fn raise_file_limit(max_connections: usize) {
    let wanted = max_connections as u64 + FILES_BESIDE_CONNECTIONS;
    match rlimit::increase_nofile_limit(wanted) {
        Ok(limit) if limit < wanted => tracing::warn!(
            limit,
            max_connections,
            "the open-files limit is below server.max_connections plus {FILES_BESIDE_CONNECTIONS}: raise it (LimitNOFILE=, --ulimit nofile=) or lower max_connections"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-files limit"),
    }
}

pub(super) fn serve(config: Config, with_worker: bool) -> anyhow::Result<ExitCode> {
    raise_file_limit(config.server.max_connections);
    let addr = config.server.listen;
    let grace = config.server.shutdown_grace;
    let app = build_app(&config, true)?;
    let rt = runtime()?;
    let served = rt.block_on(async move {
        let shutdown = shutdown_channel();
        start(&app).await;
        let worker = with_worker.then(|| spawn_worker(&app, grace, shutdown.clone()));
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        tracing::info!(address = %listener.local_addr()?, workers = with_worker, "flowgate listening");
        tell_service_manager(&[sd_notify::NotifyState::Ready]);
        crate::server::serve(listener, app.state(), shutdown_requested(shutdown), grace).await;
        if let Some(worker) = worker {
            let _ = worker.await;
        }
        Ok(ExitCode::SUCCESS)
    });
    leave(rt);
    served
}

/// Starts what runs beside the work ([`App::start`]); a store that cannot
/// be read yet is logged, and the background tasks keep trying.
async fn start(app: &App) {
    if let Err(e) = app.start(Start::default()).await {
        tracing::warn!(error = %e, "cannot read the control state or the webhook subscriptions yet; they load once the store answers");
    }
}

/// Drops `rt` without waiting on a template render still under way on its
/// blocking threads: a render cannot be stopped before its fuel runs out,
/// and whatever it renders now has no one to answer.
fn leave(rt: tokio::runtime::Runtime) {
    rt.shutdown_timeout(Duration::from_secs(1));
}

pub(super) fn worker_only(
    config: Config,
    metrics_listen: Option<std::net::SocketAddr>,
) -> anyhow::Result<ExitCode> {
    raise_file_limit(config.server.max_connections);
    let grace = config.server.shutdown_grace;
    let app = build_app(&config, true)?;
    let rt = runtime()?;
    let worked = rt.block_on(async move {
        let shutdown = shutdown_channel();
        start(&app).await;
        if let Some(addr) = metrics_listen {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            tracing::info!(address = %listener.local_addr()?, "worker metrics listening");
            tokio::spawn(crate::server::serve_worker_metrics(
                listener,
                app.metrics().clone(),
                app.backends().queue.clone(),
                shutdown_requested(shutdown.clone()),
            ));
        }
        tell_service_manager(&[sd_notify::NotifyState::Ready]);
        let _ = spawn_worker(&app, grace, shutdown).await;
        Ok(ExitCode::SUCCESS)
    });
    leave(rt);
    worked
}

/// `flowgate healthcheck`: GET `url` (by default `path` on
/// `server.listen`, an unspecified address probed on loopback) and exit 0 on
/// a `200`, 1 on anything else, within `timeout`. Needs no shell tools, so a
/// container image's `HEALTHCHECK` can run it.
pub(super) fn healthcheck(
    config: &Config,
    url: Option<&str>,
    path: &str,
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    let url = match url {
        Some(url) => url.to_owned(),
        None => {
            let mut addr = config.server.listen;
            if addr.ip().is_unspecified() {
                addr.set_ip(match addr {
                    std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                    std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
                });
            }
            format!("http://{addr}{path}")
        }
    };
    let client = reqwest::Client::builder()
        .timeout(timeout)
        // The probe is of this host: a proxy answering would hide a dead gateway.
        .no_proxy()
        .build()
        .context("cannot build an HTTP client")?;
    let status = runtime()?.block_on(async { client.get(&url).send().await.map(|r| r.status()) });
    Ok(match status {
        Ok(status) if status == reqwest::StatusCode::OK => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("unhealthy: {url} answered {status}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("unhealthy: {url}: {e}");
            ExitCode::FAILURE
        }
    })
}
