//! Storage backends: the traits for every piece of shared state — the run
//! queue ([`RunQueue`]), run records ([`RunStore`]), idempotency keys
//! ([`IdempotencyStore`]), control state ([`ControlStore`]) and webhooks
//! ([`WebhookStore`]) — with the one storage error type and the boxed
//! futures they return. [`redis`] implements them on Redis, [`postgres`]
//! on PostgreSQL, [`sqlite`] in one embedded SQLite file.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub mod control;
pub mod postgres;
mod queue;
pub mod redis;
pub mod sqlite;
mod store;
pub mod webhooks;

pub use self::control::ControlStore;
pub use self::queue::{Buried, Claimed, Delivery, RunQueue};
pub(crate) use self::queue::{claim_within, dead_input};
pub use self::store::{
    IDEMPOTENCY_TTL, IdempotencyStore, Reservation, RunFilter, RunStore, StoredAnswer,
};
pub(crate) use self::store::{key_hash, run_position};
pub use self::webhooks::WebhookStore;

/// A boxed future, so the storage traits can be used as trait objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a backend could not do what was asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    /// The backend is unreachable or refused the command.
    #[error("the run queue is unavailable: {0}")]
    Unavailable(String),
    /// A stored entry could not be decoded.
    #[error("a queued run is corrupt: {0}")]
    Corrupt(String),
}

pub use crate::clock::now_ms;

/// Keeps a replica's copy of some stored state current until the task is
/// dropped: every `every`, `ensure_current` makes the copy at least as new
/// as the store (it reads the store's version, and the state only when that
/// changed). A store that does not answer is logged once per outage, with
/// `consequence`. The control state and the webhook subscriptions both
/// follow the store this way.
pub async fn keep_copy_current<F, Fut>(every: Duration, consequence: &str, mut ensure_current: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), StorageError>>,
{
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        ticker.tick().await;
        match ensure_current().await {
            Ok(()) => failing = false,
            Err(e) if !failing => {
                tracing::warn!(error = %e, "{consequence}");
                failing = true;
            }
            Err(_) => {}
        }
    }
}

impl From<StorageError> for crate::error::Refusal {
    fn from(e: StorageError) -> Self {
        crate::error::Refusal::Unavailable(e.to_string())
    }
}

impl From<StorageError> for crate::error::ApiError {
    fn from(e: StorageError) -> Self {
        crate::error::Refusal::from(e).into()
    }
}

/// The shared state behind the gateway and its workers.
#[derive(Clone)]
pub struct Backends {
    /// Where async runs wait.
    pub queue: Arc<dyn RunQueue>,
    /// Run records.
    pub runs: Arc<dyn RunStore>,
    /// Idempotency keys.
    pub idempotency: Arc<dyn IdempotencyStore>,
    /// Control state: pauses, token generations, revocations, aborts, audit.
    pub control: Arc<dyn ControlStore>,
    /// Webhook subscriptions, their outbox and delivery log.
    pub webhooks: Arc<dyn WebhookStore>,
    /// The records [`Backends::maintain`] prunes (Redis expires its keys
    /// itself).
    pruned: Option<Pruned>,
    /// How Redis was reached, when the backend is Redis: [`Backends::warn_of_risks`]
    /// asks it about its settings.
    redis: Option<redis::Settings>,
    /// The PostgreSQL database, when the backend is PostgreSQL, for the same.
    postgres: Option<postgres::Database>,
}

/// A store whose expired records and idempotency keys are deleted by
/// [`Backends::maintain`].
#[derive(Clone)]
enum Pruned {
    Embedded(sqlite::SqliteStore),
    Postgres(postgres::PostgresStore),
}

impl Pruned {
    async fn prune(&self) -> Result<usize, StorageError> {
        match self {
            Pruned::Embedded(store) => store.prune().await,
            Pruned::Postgres(store) => store.prune().await,
        }
    }
}

/// How long stored history is kept.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Run records.
    pub runs: Duration,
    /// Webhook deliveries and their log.
    pub deliveries: Duration,
}

impl Backends {
    /// Redis (a single one or a cluster) as `settings` say, one connection
    /// pool shared by the queue and the stores; history is kept as
    /// `retention` says.
    pub fn redis(settings: &redis::Settings, retention: Retention) -> Result<Self, StorageError> {
        let pool = redis::connect_with(settings)?;
        let control = redis::RedisControl::new(pool.clone(), &settings.urls)?;
        let webhooks = redis::RedisWebhooks::new(pool.clone(), retention.deliveries);
        let store = Arc::new(redis::RedisStore::with_pool(pool.clone(), retention.runs));
        let queue = redis::RedisQueue::with_pool(pool, (*store).clone());
        Ok(Self {
            queue: Arc::new(queue),
            runs: store.clone(),
            idempotency: store,
            control: Arc::new(control),
            webhooks: Arc::new(webhooks),
            pruned: None,
            redis: Some(settings.clone()),
            postgres: None,
        })
    }

    /// The embedded backend: every store in the SQLite file `db`.
    pub fn embedded(db: &sqlite::Database, retention: Retention) -> Self {
        let store = sqlite::SqliteStore::new(db.clone(), retention.runs);
        let queue = sqlite::SqliteQueue::new(db.clone(), store.clone());
        Self {
            queue: Arc::new(queue),
            runs: Arc::new(store.clone()),
            idempotency: Arc::new(store.clone()),
            control: Arc::new(sqlite::SqliteControl::new(db.clone())),
            webhooks: Arc::new(sqlite::SqliteWebhooks::new(
                db.clone(),
                retention.deliveries,
            )),
            pruned: Some(Pruned::Embedded(store)),
            redis: None,
            postgres: None,
        }
    }

    /// PostgreSQL as `settings` say, one connection pool shared by the
    /// queue and the stores, after applying pending migrations (so a
    /// database that cannot be reached or has a newer schema stops start-up
    /// here); history is kept as `retention` says.
    pub async fn postgres(
        settings: &postgres::Settings,
        retention: Retention,
    ) -> Result<Self, postgres::OpenError> {
        let db = postgres::Database::new(settings)?;
        db.migrate().await?;
        let store = postgres::PostgresStore::new(db.clone(), retention.runs);
        let queue = postgres::PostgresQueue::new(db.clone(), store.clone());
        Ok(Self {
            queue: Arc::new(queue),
            runs: Arc::new(store.clone()),
            idempotency: Arc::new(store.clone()),
            control: Arc::new(postgres::PostgresControl::new(db.clone())),
            webhooks: Arc::new(postgres::PostgresWebhooks::new(
                db.clone(),
                retention.deliveries,
            )),
            pruned: Some(Pruned::Postgres(store)),
            redis: None,
            postgres: Some(db),
        })
    }

    /// Logs a warning for each Redis setting that puts accepted runs at
    /// risk (an eviction policy that may drop keys, a cluster whose slots
    /// disagree with `[redis] partitions`), and each PostgreSQL one
    /// (`synchronous_commit` or `fsync` off); nothing for the embedded backend.
    pub async fn warn_of_risks(&self) {
        if let Some(db) = &self.postgres
            && let Some(risk) = db.durability_risk().await
        {
            tracing::warn!("{risk}");
        }
        let Some(settings) = &self.redis else { return };
        if let Some(risk) = redis::eviction_risk(settings).await {
            tracing::warn!("{risk}");
        }
        if let Some(mismatch) = redis::cluster_mismatch(settings).await {
            tracing::warn!("{mismatch}");
        }
    }

    /// Background upkeep until dropped: the embedded and PostgreSQL
    /// backends delete records and idempotency keys past their time, a
    /// bounded batch at a time so requests never wait behind it.
    pub async fn maintain(self) {
        let Some(store) = self.pruned else {
            return;
        };
        loop {
            match store.prune().await {
                // A full batch: more may be waiting.
                Ok(n) if n >= 1000 => tokio::task::yield_now().await,
                Ok(_) => tokio::time::sleep(Duration::from_secs(30)).await,
                Err(e) => {
                    tracing::warn!(error = %e, "could not prune expired run records");
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
            }
        }
    }
}
