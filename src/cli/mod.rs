//! The `flowgate` command line.
//!
//! Exit codes: 0 success, 1 failure (invalid flows, a failed render, an
//! unknown flow), 64 bad configuration.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::app::{App, Settings};
use crate::backend::Backends;
use crate::config::{Config, ConfigError};
use crate::engine::{Engine, HttpClient, RunOptions};
use crate::flow::{LoadOptions, LoadReport, SharedCatalog, load_catalog};
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;
use crate::token::TokenKeys;

mod control;
mod webhooks;

use self::control::{AuditArgs, FlowsCommand};
use self::webhooks::WebhooksCommand;

/// Exit code for a bad configuration.
const EXIT_BAD_CONFIG: u8 = 64;

/// flowgate: a webhook gateway that runs flows.
#[derive(Debug, Parser)]
#[command(name = "flowgate", version, about, long_about = None)]
pub struct Cli {
    /// Config file; defaults to ./config.toml when present. Keys can be
    /// overridden by FLOWGATE_SECTION__KEY (e.g. FLOWGATE_SERVER__LISTEN) environment variables.
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway: serve every valid flow on /v1/flow-webhook/<flow_id>,
    /// with workers for async runs in the same process.
    Serve {
        /// Do not execute async runs here (run `flowgate worker` elsewhere).
        #[arg(long)]
        no_worker: bool,
    },
    /// Execute queued async runs only; start as many as you need on one Redis.
    Worker {
        /// Serve /healthz and /metrics (queue lag, run outcomes) on this address.
        #[arg(long, value_name = "HOST:PORT")]
        metrics_listen: Option<std::net::SocketAddr>,
    },
    /// Validate flows and templates; print `path:line: message` for each problem, exit 1 if any.
    Check,
    /// Render a flow's response for a sample body, without side effects
    /// (http steps are not called, delays do not wait).
    Render {
        /// The flow id.
        flow: String,
        /// File holding the sample request body.
        #[arg(long, value_name = "FILE")]
        body: PathBuf,
        /// Content type of the sample; guessed from the file extension by default.
        #[arg(long, value_name = "TYPE")]
        content_type: Option<String>,
    },
    /// Read the run history (the flow debugger).
    Runs {
        /// What to read.
        #[command(subcommand)]
        command: RunsCommand,
    },
    /// Mint, rotate and revoke tokens.
    Token {
        /// Which token.
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// See flows' status and token generation; pause and unpause them on every replica.
    Flows {
        /// What to do.
        #[command(subcommand)]
        command: FlowsCommand,
    },
    /// Read the audit log of admin changes, newest first.
    Audit(AuditArgs),
    /// Copy the embedded database to PATH while the server runs (a consistent snapshot).
    Backup {
        /// Where to write the copy; it must not exist.
        path: PathBuf,
    },
    /// Print a one-time sign-in link to the web console (/console).
    ConsoleLink {
        /// ops, author or viewer: what the session may do.
        #[arg(long)]
        role: String,
        /// Who signs in, as the audit log names them; defaults to cli:USER (the OS user).
        #[arg(long, value_name = "NAME")]
        sub: Option<String>,
        /// How long the link works, at most 24h; the session it opens lasts up to 12h.
        #[arg(long, value_name = "DURATION", default_value = "15m")]
        ttl: humantime::Duration,
        /// The console's address as the browser reaches it; defaults to http://<server.listen>.
        #[arg(long, value_name = "URL")]
        url: Option<String>,
    },
    /// List open console sessions and end them on every replica.
    Sessions {
        /// What to do.
        #[command(subcommand)]
        command: control::SessionsCommand,
    },
    /// Manage outbound event webhook subscriptions and read their delivery log.
    Webhooks {
        /// What to do.
        #[command(subcommand)]
        command: WebhooksCommand,
    },
}

/// `flowgate runs ...`
#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// The newest runs of a flow, newest first.
    List {
        /// The flow id.
        flow: String,
        /// How many runs.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Print the records as JSON, one per line.
        #[arg(long)]
        json: bool,
    },
    /// One run: request, each step's input, output, error and timing, answer.
    Show {
        /// The run id.
        run_id: String,
        /// Print the whole record as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run a recorded run's request again against the current flow, as a new linked run.
    Replay {
        /// The run id.
        run_id: String,
    },
    /// Abort a queued, waiting or running run (on whichever replica runs it).
    Abort {
        /// The run id.
        run_id: String,
    },
}

/// `flowgate token ...`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a Bearer token for a flow on stdout: TOKEN=$(flowgate token issue my-flow).
    Issue {
        /// The flow id.
        flow: String,
        /// Lifetime, e.g. 90d or 12h; tokens without one do not expire.
        #[arg(long, value_name = "DURATION")]
        ttl: Option<humantime::Duration>,
    },
    /// Move a flow to its next token generation: older tokens are refused on every replica.
    Rotate {
        /// The flow id.
        flow: String,
        /// Keep the previous generation working this long, e.g. 24h.
        #[arg(long, value_name = "DURATION")]
        grace: Option<humantime::Duration>,
    },
    /// Print an admin token for /v1/admin/.
    Admin {
        /// ops, author or viewer.
        #[arg(long)]
        role: String,
        /// Who the token is for, as the audit log names them; defaults to cli:USER (the OS user).
        #[arg(long, value_name = "NAME")]
        sub: Option<String>,
        /// Lifetime, e.g. 30d; tokens without one do not expire.
        #[arg(long, value_name = "DURATION")]
        ttl: Option<humantime::Duration>,
    },
    /// Refuse an admin token on every replica (give the token, or its jti).
    Revoke {
        /// The admin token, or its `jti`.
        token: String,
    },
}

/// Runs the command; returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    crate::telemetry::init();
    if cli.config.is_none() && !std::path::Path::new("config.toml").exists() {
        // Otherwise a command run from another folder quietly reads (and
        // creates) a store of its own there.
        eprintln!(
            "note: no config.toml in this folder; using the built-in defaults (give --config PATH to use a project's)"
        );
    }
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(e) => return bad_config(&e),
    };
    let result = match cli.command {
        Command::Serve { no_worker } => serve(config, !no_worker),
        Command::Worker { metrics_listen } => worker_only(config, metrics_listen),
        Command::Check => Ok(check(&config)),
        Command::Render {
            flow,
            body,
            content_type,
        } => render(&config, &flow, &body, content_type.as_deref()),
        Command::Token { command } => match command {
            TokenCommand::Issue { flow, ttl } => {
                control::issue(&config, &flow, ttl.map(Into::into))
            }
            TokenCommand::Rotate { flow, grace } => {
                control::rotate(&config, &flow, grace.map(Into::into))
            }
            TokenCommand::Admin { role, sub, ttl } => {
                control::admin(&config, &role, sub.as_deref(), ttl.map(Into::into))
            }
            TokenCommand::Revoke { token } => control::revoke(&config, &token),
        },
        Command::Runs { command } => runs(&config, command),
        Command::Flows { command } => control::flows(&config, command),
        Command::Audit(args) => control::audit(&config, args),
        Command::Sessions { command } => control::sessions(&config, command),
        Command::Webhooks { command } => webhooks::webhooks(&config, command),
        Command::Backup { path } => backup(&config, &path),
        Command::ConsoleLink {
            role,
            sub,
            ttl,
            url,
        } => control::console_link(&config, &role, sub.as_deref(), ttl.into(), url.as_deref()),
    };
    match result {
        Ok(code) => code,
        Err(e) => match e.downcast_ref::<ConfigError>() {
            Some(config_error) => bad_config(config_error),
            None => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn bad_config(e: &ConfigError) -> ExitCode {
    eprintln!("flowgate: bad config: {e}");
    ExitCode::from(EXIT_BAD_CONFIG)
}

fn load_options(config: &Config) -> LoadOptions {
    LoadOptions {
        flows_dir: config.flows_dir(),
        templates_dir: config.templates_dir(),
        default_max_body_bytes: config.server.max_body_bytes,
        default_records: config.runs.records(),
        secrets: Default::default(),
        render: config.templates.budget(),
    }
}

fn load(config: &Config) -> LoadReport {
    load_catalog(&load_options(config))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
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
fn build_app(config: &Config, own: bool) -> anyhow::Result<App> {
    let mut settings = Settings::from_config(config);
    settings.webhooks.load_ca(config)?;
    let keys = TokenKeys::new(&config.signing_key()?);
    let lifecycle = Arc::new(Lifecycle::new(Arc::new(Metrics::default())));
    let backends = open_backends(config, &lifecycle, own)?;
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
fn backends(config: &Config, lifecycle: &Arc<Lifecycle>) -> anyhow::Result<Backends> {
    open_backends(config, lifecycle, false)
}

/// The configured storage backends; with `own`, this process takes the
/// embedded database file for itself (serve and worker do; the CLI reads
/// and writes beside them).
fn open_backends(
    config: &Config,
    lifecycle: &Arc<Lifecycle>,
    own: bool,
) -> anyhow::Result<Backends> {
    let retention = crate::backend::Retention {
        runs: config.runs.retention,
        deliveries: config.webhooks.delivery_retention,
    };
    match config.storage.backend {
        crate::config::StorageBackend::Redis => {
            Backends::redis(&config.redis.settings(), retention, lifecycle)
                .map_err(|e| ConfigError(format!("redis.url: {e}")).into())
        }
        crate::config::StorageBackend::Embedded => {
            let path = config.resolve(&config.storage.path);
            let db = crate::backend::sqlite::Database::open(&path, own)?;
            Ok(Backends::embedded(&db, retention, lifecycle))
        }
    }
}

/// `flowgate backup PATH`: a consistent copy of the embedded database.
fn backup(config: &Config, path: &Path) -> anyhow::Result<ExitCode> {
    if config.storage.backend != crate::config::StorageBackend::Embedded {
        anyhow::bail!(
            "backup copies the embedded database; with storage.backend = \"redis\" use Redis's own persistence (RDB or AOF)"
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
        let _ = tx.send(true);
    });
    rx
}

async fn shutdown_requested(mut rx: tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// What every serving process runs beside its work: the control state kept
/// current, outbound event webhooks, and flows reloaded on file changes and SIGHUP.
fn start_background(app: &App, config: &Config) {
    if config.storage.backend == crate::config::StorageBackend::Redis {
        let settings = config.redis.settings();
        tokio::spawn(async move {
            if let Some(risk) = crate::backend::redis::eviction_risk(&settings).await {
                tracing::warn!("{risk}");
            }
            if let Some(mismatch) = crate::backend::redis::cluster_mismatch(&settings).await {
                tracing::warn!("{mismatch}");
            }
        });
    }
    tokio::spawn(app.control().clone().keep_current());
    tokio::spawn(app.backends().clone().maintain());
    app.start_webhooks();
    if let Some(reloader) = app.reloader() {
        tokio::spawn(reloader.clone().watch());
        tokio::spawn(reloader.clone().on_hangup());
    }
}

fn spawn_worker(
    app: &App,
    grace: Duration,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let worker = app.worker();
    tokio::spawn(async move { worker.run(shutdown_requested(shutdown), grace).await })
}

fn serve(config: Config, with_worker: bool) -> anyhow::Result<ExitCode> {
    let addr = config.server.listen;
    let grace = config.server.shutdown_grace;
    let app = build_app(&config, true)?;
    let rt = runtime()?;
    let served = rt.block_on(async move {
        let shutdown = shutdown_channel();
        start_background(&app, &config);
        let worker = with_worker.then(|| spawn_worker(&app, grace, shutdown.clone()));
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        tracing::info!(address = %listener.local_addr()?, workers = with_worker, "flowgate listening");
        crate::server::serve(listener, app.gateway(), shutdown_requested(shutdown), grace).await;
        if let Some(worker) = worker {
            let _ = worker.await;
        }
        Ok(ExitCode::SUCCESS)
    });
    leave(rt);
    served
}

/// Drops `rt` without waiting on a template render still under way on its
/// blocking threads: a render cannot be stopped before its fuel runs out,
/// and whatever it renders now has no one to answer.
fn leave(rt: tokio::runtime::Runtime) {
    rt.shutdown_timeout(Duration::from_secs(1));
}

fn worker_only(
    config: Config,
    metrics_listen: Option<std::net::SocketAddr>,
) -> anyhow::Result<ExitCode> {
    let grace = config.server.shutdown_grace;
    let app = build_app(&config, true)?;
    let rt = runtime()?;
    let worked = rt.block_on(async move {
        let shutdown = shutdown_channel();
        start_background(&app, &config);
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
        let _ = spawn_worker(&app, grace, shutdown).await;
        Ok(ExitCode::SUCCESS)
    });
    leave(rt);
    worked
}

fn check(config: &Config) -> ExitCode {
    let report = load(config);
    for warning in &report.warnings {
        eprintln!("warning: {warning}");
    }
    for problem in &report.problems {
        println!("{problem}");
    }
    let mut ids: Vec<&String> = report.catalog.flows.keys().collect();
    ids.sort();
    if report.is_clean() {
        let list = ids
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        println!("ok: {} flow(s) valid: {list}", ids.len());
        ExitCode::SUCCESS
    } else {
        println!(
            "{} problem(s); flows not served: {}",
            report.problems.len(),
            report.skipped.join(", ")
        );
        ExitCode::FAILURE
    }
}

fn render(
    config: &Config,
    flow_id: &str,
    body_path: &Path,
    content_type: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let report = load(config);
    let Some(flow) = report.catalog.get(flow_id).cloned() else {
        for problem in &report.problems {
            eprintln!("{problem}");
        }
        anyhow::bail!(
            "no valid flow `{flow_id}` in {}",
            config.flows_dir().display()
        );
    };
    let raw =
        std::fs::read(body_path).with_context(|| format!("cannot read {}", body_path.display()))?;
    let content_type =
        content_type.unwrap_or(match body_path.extension().and_then(|e| e.to_str()) {
            Some("json") => "application/json",
            Some("xml") => "application/xml",
            Some("form") => "application/x-www-form-urlencoded",
            _ => "text/plain",
        });
    let body =
        crate::trigger::body::parse_with_kind(Some(content_type), &raw, flow.trigger.accept_any)
            .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    let run_id = "render".to_owned();
    // As if POSTed to the flow's URL, so templates see what a sender's request gives them.
    let (parts, ()) = http::Request::post(format!("{}{}", crate::trigger::PATH_PREFIX, flow.id))
        .header(http::header::CONTENT_TYPE, content_type)
        .body(())
        .context("the content type is not a valid header value")?
        .into_parts();
    let input = crate::trigger::run_input(
        &flow,
        flow.status,
        &parts,
        &raw,
        body,
        run_id.clone(),
        "render",
        &Settings::from_config(config).redaction,
    );
    let catalog = report.catalog;
    let engine = Engine::new(HttpClient::new(false));
    let runtime = runtime()?;
    let run = runtime.block_on(engine.run(
        &catalog,
        &flow,
        &input,
        RunOptions {
            dry_run: true,
            retry_later: false,
        },
    ));
    let skipped: Vec<&str> = run
        .steps
        .iter()
        .filter(|s| s.kind == "http" && s.status != crate::engine::StepState::Skipped)
        .map(|s| s.path.as_str())
        .collect();
    if !skipped.is_empty() {
        eprintln!(
            "note: dry run: http steps were not called ({}); their output is {{\"status\": null, \"dry_run\": true}}",
            skipped.join(", ")
        );
    }
    for step in &run.steps {
        eprintln!(
            "step {} ({}): {}{}",
            step.path,
            step.kind,
            step.status,
            step.error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        );
    }
    let response = match runtime.block_on(crate::trigger::answer(&catalog, &flow, &run_id, &run)) {
        Ok(response) => response,
        Err(e) => e.into_response(),
    };
    let status = response.status().as_u16();
    println!("HTTP {status}");
    for (name, value) in response.headers() {
        println!("{name}: {}", value.to_str().unwrap_or("<binary>"));
    }
    println!();
    let body = runtime
        .block_on(http_body_util::BodyExt::collect(response.into_body()))?
        .to_bytes();
    println!("{}", String::from_utf8_lossy(&body));
    // An answer that failed to render fails the command too.
    Ok(
        if run.status == crate::engine::RunState::Succeeded && status < 500 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        },
    )
}

/// Longest preview of a JSON value in `runs show`.
const PREVIEW_CHARS: usize = 240;

/// A JSON value on one line: strings as their text, the rest as JSON.
fn preview(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => preview_text(s),
        other => preview_text(&other.to_string()),
    }
}

fn preview_text(text: &str) -> String {
    match text.char_indices().nth(PREVIEW_CHARS) {
        None => text.to_owned(),
        Some((cut, _)) => format!("{}…", &text[..cut]),
    }
}

fn runs(config: &Config, command: RunsCommand) -> anyhow::Result<ExitCode> {
    let store = backends(
        config,
        &Arc::new(Lifecycle::new(Arc::new(Metrics::default()))),
    )?
    .runs;
    let rt = runtime()?;
    match command {
        RunsCommand::Replay { run_id } => control::replay(config, &run_id),
        RunsCommand::Abort { run_id } => control::abort(config, &run_id),
        RunsCommand::List { flow, limit, json } => {
            let records = rt.block_on(store.list(&flow, limit))?;
            if json {
                for record in &records {
                    println!("{}", serde_json::to_string(record)?);
                }
                return Ok(ExitCode::SUCCESS);
            }
            if records.is_empty() {
                println!("no runs recorded for `{flow}`");
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<36}  {:<9}  {:<5}  {:>7}  {:<24}  {:>8}  ERROR",
                "RUN ID", "STATUS", "MODE", "ATTEMPT", "CREATED", "MS"
            );
            for r in &records {
                let duration = r
                    .duration_ms
                    .map(|d| d.to_string())
                    .unwrap_or_else(|| "-".into());
                let error = r.error.as_ref().map(|e| e.message.as_str()).unwrap_or("");
                println!(
                    "{:<36}  {:<9}  {:<5}  {:>7}  {:<24}  {:>8}  {}",
                    r.id,
                    r.status,
                    r.mode,
                    r.attempt,
                    r.created_at,
                    duration,
                    preview_text(error)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        RunsCommand::Show { run_id, json } => {
            let Some(r) = rt.block_on(store.get(&run_id))? else {
                anyhow::bail!(
                    "no run `{run_id}` (runs are kept for {})",
                    crate::config::readable_duration(config.runs.retention)
                );
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
                return Ok(ExitCode::SUCCESS);
            }
            let kind = if r.live { "live" } else { "draft" };
            println!("run       {}", r.id);
            println!(
                "flow      {} (version {}, {kind}, {})",
                r.flow, r.flow_version, r.mode
            );
            println!("status    {} (attempt {})", r.status, r.attempt);
            println!("created   {}", r.created_at);
            println!("started   {}", r.started_at.as_deref().unwrap_or("-"));
            println!(
                "ended     {}{}",
                r.ended_at.as_deref().unwrap_or("-"),
                r.duration_ms
                    .map(|d| format!(" ({d} ms)"))
                    .unwrap_or_default()
            );
            println!(
                "request   {} {}",
                r.request["method"].as_str().unwrap_or("?"),
                r.request["path"].as_str().unwrap_or("?")
            );
            println!("body      {}", preview(&r.body));
            if let Some(error) = &r.error {
                println!(
                    "error     {}{}",
                    error
                        .step
                        .as_deref()
                        .map(|s| format!("step `{s}`: "))
                        .unwrap_or_default(),
                    error.message
                );
            }
            if !r.cut.is_empty() {
                let bytes: usize = r.cut.iter().map(|c| c.bytes).sum();
                println!(
                    "cut       {} value(s), {bytes} bytes, to keep the record within runs.max_record_bytes:",
                    r.cut.len()
                );
                for cut in &r.cut {
                    println!("          {} ({} bytes)", cut.at, cut.bytes);
                }
            }
            println!();
            println!("steps");
            for step in &r.steps {
                println!(
                    "  {} ({}) {} in {} ms, {} attempt(s)",
                    step.path, step.kind, step.status, step.duration_ms, step.attempts
                );
                if !step.input.is_null() {
                    println!("    input   {}", preview(&step.input));
                }
                println!("    output  {}", preview(&step.output));
                if let Some(error) = &step.error {
                    println!("    error   {error}");
                }
            }
            for log in &r.logs {
                println!("log       {log}");
            }
            if let Some(response) = &r.response {
                println!();
                println!(
                    "response  {} {}",
                    response.status,
                    preview_text(&response.body)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
