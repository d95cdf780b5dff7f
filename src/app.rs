//! Assembling flowgate: the one place that builds the app's state and its
//! workers from typed settings, the loaded flows and the storage backends,
//! and the one place that starts what runs beside them. `flowgate serve`,
//! `flowgate worker` and the integration tests all go through [`App`]:
//! [`App::new`], then [`App::start`], then [`App::state`] to serve and
//! [`App::worker`] to execute queued runs.

use std::sync::Arc;

use crate::backend::{Backends, IdempotencyStore, RunQueue, RunStore, StorageError};
use crate::config::{Config, ServerConfig};
use crate::control::Control;
use crate::engine::{Engine, HttpClient};
use crate::flow::{Catalog, LoadOptions, SharedCatalog};
use crate::inbound::redact::Redaction;
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;
use crate::reloader::Reloader;
use crate::token::TokenKeys;
use crate::transition::Transitions;
use crate::webhooks::dispatch::Dispatcher;
use crate::webhooks::outbox::Outbox;
use crate::webhooks::{WebhookSettings, Webhooks};
use crate::worker::{Worker, WorkerSettings};

/// Everything [`App`] needs besides flows and backends, parsed and typed.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The `[server]` section: limits, timeouts, idempotency headers.
    pub server: ServerConfig,
    /// Credentials redacted from trigger requests.
    pub redaction: Redaction,
    /// How workers behave.
    pub worker: WorkerSettings,
    /// Let `http` steps reach loopback and private addresses.
    pub allow_private_networks: bool,
    /// How outbound event webhooks are delivered.
    pub webhooks: WebhookSettings,
}

impl Settings {
    /// The settings `config` describes.
    pub fn from_config(config: &Config) -> Self {
        Self {
            server: config.server.clone(),
            redaction: Redaction::new(&config.server.redact_headers, &config.server.redact_query),
            worker: WorkerSettings {
                concurrency: config.worker.concurrency,
                reclaim_after: config.worker.reclaim_after,
                ..WorkerSettings::default()
            },
            allow_private_networks: config.http.allow_private_networks,
            webhooks: WebhookSettings::from_config(config),
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self::from_config(&Config::default())
    }
}

/// The state requests are served with, shared by every surface: the
/// trigger ([`crate::trigger`]) verifies, runs and queues with it, the
/// admin API ([`crate::admin`]) and the console ([`crate::console`]) read
/// and change it. Each takes the parts it uses; none owns any of it.
pub struct AppState {
    /// Verifies flow and admin tokens.
    pub keys: TokenKeys,
    /// Runs sync flows.
    pub engine: Engine,
    /// The loaded flows.
    pub catalog: SharedCatalog,
    /// Where async runs wait.
    pub queue: Arc<dyn RunQueue>,
    /// Run records.
    pub runs: Arc<dyn RunStore>,
    /// Remembers idempotency keys.
    pub idempotency: Arc<dyn IdempotencyStore>,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Moves runs along: records, queue, announcements.
    pub transitions: Arc<Transitions>,
    /// Pauses, token generations, revocations and aborts, as this replica
    /// knows them.
    pub control: Arc<Control>,
    /// Outbound event webhooks.
    pub webhooks: Arc<Webhooks>,
    /// Reloads the flows, when the app has a folder to reload them from.
    pub reloader: Option<Arc<Reloader>>,
    /// The `[server]` section: limits, timeouts, idempotency headers.
    pub server: ServerConfig,
    /// Credentials redacted from the request before anything sees it.
    pub redaction: Redaction,
}

impl AppState {
    /// A consistent snapshot of the loaded flows.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.get()
    }
}

/// What [`App::start`] starts besides the control state and upkeep.
#[derive(Debug, Clone, Copy)]
pub struct Start {
    /// Deliver outbound event webhooks from this process (every `serve`
    /// and `worker` does; a test may leave it to another process).
    pub webhooks: bool,
}

impl Default for Start {
    fn default() -> Self {
        Self { webhooks: true }
    }
}

/// A built flowgate: hands out the gateway's state and workers, all sharing
/// the same flows, engine, backends and metrics.
pub struct App {
    settings: Settings,
    keys: TokenKeys,
    catalog: SharedCatalog,
    engine: Engine,
    backends: Backends,
    transitions: Arc<Transitions>,
    control: Arc<Control>,
    webhooks: Arc<Webhooks>,
    reloader: Option<Arc<Reloader>>,
}

/// How often the webhook delivery log is pruned.
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

impl App {
    /// Assembles an app; `keys` verify flow tokens.
    pub fn new(
        settings: Settings,
        keys: TokenKeys,
        catalog: SharedCatalog,
        backends: Backends,
        lifecycle: Arc<Lifecycle>,
    ) -> Self {
        let control =
            Control::new(backends.control.clone()).with_events(lifecycle.clone(), catalog.clone());
        let webhooks = Webhooks::new(
            backends.webhooks.clone(),
            backends.control.clone(),
            settings.webhooks.clone(),
            lifecycle.metrics().clone(),
        );
        let webhooks = Arc::new(webhooks);
        let outbox = Arc::new(Outbox::new(webhooks.clone(), catalog.clone()));
        let flow_events = outbox.clone();
        lifecycle.on_flow_event(Box::new(move |change| flow_events.flow_event(change)));
        Self {
            webhooks,
            engine: Engine::new(HttpClient::new(settings.allow_private_networks)),
            settings,
            keys,
            catalog,
            transitions: Arc::new(Transitions::new(lifecycle, &backends).with_outbox(outbox)),
            control: Arc::new(control),
            reloader: None,
            backends,
        }
    }

    /// Reloads the flows from the folders in `options` on request (SIGHUP,
    /// `POST /v1/admin/reload`, or [`Reloader::watch`]).
    pub fn with_reloader(mut self, options: LoadOptions) -> Self {
        self.reloader = Some(Arc::new(Reloader::new(
            self.catalog.clone(),
            options,
            self.transitions.lifecycle().clone(),
        )));
        self
    }

    /// The reloader, when the app has one.
    pub fn reloader(&self) -> Option<&Arc<Reloader>> {
        self.reloader.as_ref()
    }

    /// The state every surface serves requests with.
    pub fn state(&self) -> Arc<AppState> {
        Arc::new(AppState {
            keys: self.keys.clone(),
            engine: self.engine.clone(),
            catalog: self.catalog.clone(),
            queue: self.backends.queue.clone(),
            runs: self.backends.runs.clone(),
            idempotency: self.backends.idempotency.clone(),
            metrics: self.metrics().clone(),
            transitions: self.transitions.clone(),
            control: self.control.clone(),
            webhooks: self.webhooks.clone(),
            reloader: self.reloader.clone(),
            server: self.settings.server.clone(),
            redaction: self.settings.redaction.clone(),
        })
    }

    /// A worker with a consumer name unique to it, using `settings`.
    pub fn worker_with(&self, settings: WorkerSettings) -> Arc<Worker> {
        Arc::new(Worker::new(
            &self.backends,
            self.engine.clone(),
            self.catalog.clone(),
            Worker::unique_consumer_name(),
            settings,
            self.transitions.clone(),
            self.control.clone(),
        ))
    }

    /// A worker with the configured settings.
    pub fn worker(&self) -> Arc<Worker> {
        self.worker_with(self.settings.worker.clone())
    }

    /// The backends.
    pub fn backends(&self) -> &Backends {
        &self.backends
    }

    /// The metrics every part counts into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        self.transitions.lifecycle().metrics()
    }

    /// Where run transitions are announced; subscribe to its events.
    pub fn lifecycle(&self) -> &Arc<Lifecycle> {
        self.transitions.lifecycle()
    }

    /// This process's copy of the control state (pauses, token generations).
    /// Start [`Control::keep_current`] in a task wherever the app serves.
    pub fn control(&self) -> &Arc<Control> {
        &self.control
    }

    /// The flows.
    pub fn catalog(&self) -> &SharedCatalog {
        &self.catalog
    }

    /// Outbound event webhooks: subscriptions, deliveries.
    pub fn webhooks(&self) -> &Arc<Webhooks> {
        &self.webhooks
    }

    /// Starts what every process that serves or works runs beside it, in
    /// background tasks until the runtime stops: the control state loaded,
    /// then kept current (pauses on every replica within a second), the
    /// storage's upkeep, warnings about risky Redis settings, flows reloaded
    /// on file changes and SIGHUP (when the app has a reloader) and, as
    /// `start` says, outbound event webhooks. The error says the control
    /// state or the subscriptions could not be read yet; everything is
    /// started anyway, and until the control state loads the server answers
    /// `503 not_ready` and workers take no run.
    pub async fn start(&self, start: Start) -> Result<(), StorageError> {
        // Started whatever the load says: keeping the copies current loads
        // them once the store answers; until then requests are refused.
        let loaded = self.load().await;
        tokio::spawn(self.control.clone().keep_current());
        tokio::spawn(self.backends.clone().maintain());
        let backends = self.backends.clone();
        tokio::spawn(async move { backends.warn_of_risks().await });
        if start.webhooks {
            self.start_webhooks();
        }
        if let Some(reloader) = &self.reloader {
            tokio::spawn(reloader.clone().watch());
            tokio::spawn(reloader.clone().on_hangup());
        }
        loaded
    }

    /// Reads what this process keeps a copy of from the store: the control
    /// state and the webhook subscriptions (without them a run would be
    /// refused as paused wrongly, or end without the events subscribers
    /// want). [`App::start`] does it first; a one-shot command that runs
    /// flows (a replay from the CLI) does it instead.
    pub async fn load(&self) -> Result<(), StorageError> {
        self.control.refresh().await?;
        self.webhooks.refresh().await
    }

    /// Delivers outbound event webhooks from this process, in background
    /// tasks: the subscriptions kept current, stored events (any
    /// process's) turned into deliveries, a dispatcher attempting due ones
    /// (any process's), and the delivery log pruned.
    fn start_webhooks(&self) {
        tokio::spawn(self.webhooks.clone().keep_current());
        tokio::spawn(crate::webhooks::outbox::fan_out(self.webhooks.clone()));
        tokio::spawn(Arc::new(Dispatcher::new(self.webhooks.clone())).run());
        tokio::spawn(self.webhooks.clone().keep_pruned(PRUNE_EVERY));
    }
}
