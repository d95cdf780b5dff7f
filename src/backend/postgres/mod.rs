//! The PostgreSQL backend: every store in tables of one PostgreSQL
//! database (the schema `flowgate`), shared by any number of `serve` and
//! `worker` processes.
//!
//! [`Database`] is a pool of connections (`tokio-postgres` through
//! `deadpool-postgres`, TLS by rustls as the URL's `sslmode` says, with
//! libpq's meanings: see [`tls`]). Every
//! write that promises something (an accepted run, a stored answer, an
//! operator's change) commits before its caller hears of it; concurrent
//! commits share the server's WAL flushes, so throughput does not fall to
//! one disk flush per request. Workers claim runs with `FOR UPDATE SKIP
//! LOCKED`, so any number of them share the queue without a coordinator.
//!
//! The schema is created and changed by numbered migrations, applied at
//! start (and by `flowgate migrate`) under an advisory lock, so replicas
//! starting together apply each once; a database whose schema is newer
//! than this build knows is refused.
//!
//! Every statement is bounded on the server ([`SERVER_TIMEOUT`], as
//! `statement_timeout` and `lock_timeout` on every connection), so a write
//! that takes too long is cancelled and rolled back by PostgreSQL itself:
//! when flowgate answers `503`, nothing was stored. Waiting for a pooled
//! connection, or for a turn at the group commit, is bounded by
//! [`WAIT_TIMEOUT`], before anything is sent. [`OPERATION_TIMEOUT`], longer
//! than both together, only catches a server that stopped answering at all
//! (then, as with any store, a write whose answer was lost may have been
//! stored: at least once).

use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::mpsc;

use super::StorageError;

mod batch;
mod control;
mod queue;
mod store;
mod tls;
mod webhooks;

pub use self::control::PostgresControl;
pub use self::queue::PostgresQueue;
pub use self::store::PostgresStore;
pub use self::webhooks::PostgresWebhooks;

/// Longest one statement may run (or wait for a lock) on the server before
/// PostgreSQL cancels it.
pub const SERVER_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a write waits for a pooled connection or its group commit's turn.
pub const WAIT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest any one store operation may take, all waits included: past it,
/// the server is taken for gone.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The advisory lock migrations hold ("flowgate" in ASCII).
const MIGRATION_LOCK: i64 = 0x666c_6f77_6761_7465;

/// The schema, one migration per entry; entry `n` is version `n + 1`.
const MIGRATIONS: &[&str] = &[r"
CREATE TABLE flowgate.queue (
    seq         BIGSERIAL PRIMARY KEY,
    run_id      TEXT    NOT NULL,
    input       TEXT    NOT NULL,
    raw         TEXT,
    accepted_at BIGINT  NOT NULL,
    answer      TEXT,
    waiting     BOOLEAN NOT NULL DEFAULT false,
    due_at      BIGINT  NOT NULL,
    consumer    TEXT,
    lease_at    BIGINT
);
CREATE INDEX queue_ready ON flowgate.queue (seq) WHERE consumer IS NULL AND NOT waiting;
CREATE INDEX queue_leased ON flowgate.queue (lease_at) WHERE consumer IS NOT NULL;
CREATE INDEX queue_due ON flowgate.queue (due_at) WHERE waiting;
CREATE TABLE flowgate.dead_letters (
    seq    BIGSERIAL PRIMARY KEY,
    run_id TEXT   NOT NULL,
    reason TEXT   NOT NULL,
    input  TEXT   NOT NULL,
    at     BIGINT NOT NULL
);
CREATE TABLE flowgate.runs (
    id          TEXT   PRIMARY KEY,
    flow        TEXT   NOT NULL,
    accepted_at BIGINT NOT NULL,
    status      TEXT   NOT NULL,
    record      TEXT   NOT NULL,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX runs_by_time ON flowgate.runs (accepted_at DESC, id DESC);
CREATE INDEX runs_by_flow ON flowgate.runs (flow, accepted_at DESC, id DESC);
CREATE INDEX runs_not_succeeded ON flowgate.runs (status, accepted_at DESC, id DESC)
    WHERE status <> 'succeeded';
CREATE INDEX runs_expiry ON flowgate.runs (expires_at);
CREATE TABLE flowgate.idempotency (
    flow       TEXT   NOT NULL,
    key_hash   TEXT   NOT NULL,
    run_id     TEXT   NOT NULL,
    answer     TEXT,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (flow, key_hash)
);
CREATE INDEX idempotency_expiry ON flowgate.idempotency (expires_at);
CREATE TABLE flowgate.versions (name TEXT PRIMARY KEY, version BIGINT NOT NULL);
INSERT INTO flowgate.versions (name, version) VALUES ('control', 0), ('webhooks', 0);
CREATE TABLE flowgate.flow_status (flow TEXT PRIMARY KEY, override TEXT NOT NULL);
CREATE TABLE flowgate.generations (
    flow        TEXT   PRIMARY KEY,
    current     BIGINT NOT NULL,
    grace_until BIGINT
);
CREATE TABLE flowgate.revoked (jti TEXT PRIMARY KEY, until_ms BIGINT NOT NULL);
CREATE TABLE flowgate.aborted (run_id TEXT PRIMARY KEY, at BIGINT NOT NULL);
CREATE TABLE flowgate.audit (
    seq   BIGSERIAL PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    entry TEXT   NOT NULL
);
CREATE INDEX audit_by_time ON flowgate.audit (at_ms);
CREATE TABLE flowgate.sessions (id TEXT PRIMARY KEY, expires_ms BIGINT NOT NULL, entry TEXT NOT NULL);
CREATE TABLE flowgate.subscriptions (
    id       TEXT   PRIMARY KEY,
    body     TEXT   NOT NULL,
    failures BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE flowgate.deliveries (
    id           TEXT   PRIMARY KEY,
    subscription TEXT   NOT NULL,
    body         TEXT   NOT NULL,
    state        TEXT   NOT NULL,
    due_at       BIGINT NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL
);
CREATE INDEX deliveries_due ON flowgate.deliveries (due_at) WHERE state = 'pending';
CREATE INDEX deliveries_skipped ON flowgate.deliveries (subscription, created_at)
    WHERE state = 'skipped';
CREATE INDEX deliveries_expiry ON flowgate.deliveries (expires_at);
CREATE TABLE flowgate.delivery_log (
    seq          BIGSERIAL PRIMARY KEY,
    subscription TEXT   NOT NULL,
    at_ms        BIGINT NOT NULL,
    entry        TEXT   NOT NULL
);
CREATE INDEX delivery_log_by_subscription ON flowgate.delivery_log (subscription, seq);
CREATE INDEX delivery_log_by_time ON flowgate.delivery_log (at_ms);
CREATE TABLE flowgate.events (id TEXT PRIMARY KEY, message TEXT NOT NULL, due_at BIGINT NOT NULL);
CREATE INDEX events_due ON flowgate.events (due_at);
"];

/// How to reach PostgreSQL.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `postgres://user[:password]@host[:port]/database[?sslmode=...]`.
    pub url: String,
    /// Connections per process at most.
    pub pool_size: usize,
}

impl From<tokio_postgres::Error> for StorageError {
    fn from(e: tokio_postgres::Error) -> Self {
        StorageError::Unavailable(format!("PostgreSQL: {}", explain(&e)))
    }
}

impl From<deadpool_postgres::PoolError> for StorageError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            deadpool_postgres::PoolError::Timeout(_) => StorageError::Unavailable(
                "PostgreSQL: no connection could be made or freed in time".into(),
            ),
            other => StorageError::Unavailable(format!("PostgreSQL: {other}")),
        }
    }
}

/// `e` with the server's own message when it sent one (tokio-postgres's
/// display of a server error is only "db error").
fn explain(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{}: {}", db.severity(), db.message());
    }
    // The cause (a refused connection, a certificate not trusted) is in
    // the sources.
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// A pool error as a line for the operator, without the storage prefix.
fn explain_pool(e: deadpool_postgres::PoolError) -> String {
    match e {
        deadpool_postgres::PoolError::Backend(e) => explain(&e),
        other => match StorageError::from(other) {
            StorageError::Unavailable(text) | StorageError::Corrupt(text) => text,
        },
    }
}

/// A stored value that cannot be read back.
fn corrupt(what: &str, e: impl std::fmt::Display) -> StorageError {
    StorageError::Corrupt(format!("{what}: {e}"))
}

/// A value as the JSON text the database stores.
fn encode(value: &impl serde::Serialize) -> Result<String, StorageError> {
    crate::codec::encode(value).map_err(|e| corrupt("encoding", e))
}

/// Whether PostgreSQL can store `text`: its `TEXT` holds no NUL character.
/// A lookup by a name holding one finds nothing, without asking.
fn storable(text: &str) -> bool {
    !text.contains('\0')
}

/// `fut`, failed with the reason when it takes longer than [`OPERATION_TIMEOUT`].
async fn timed<T>(
    fut: impl std::future::Future<Output = Result<T, StorageError>>,
) -> Result<T, StorageError> {
    match tokio::time::timeout(OPERATION_TIMEOUT, fut).await {
        Ok(result) => result,
        Err(_) => Err(StorageError::Unavailable(format!(
            "PostgreSQL did not answer within {} s",
            OPERATION_TIMEOUT.as_secs()
        ))),
    }
}

/// Why the database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// `postgres.url` is not a PostgreSQL URL, or names no usable TLS setup.
    #[error("postgres.url: {0}")]
    Config(String),
    /// The server could not be reached or refused the migrations.
    #[error("PostgreSQL at {at}: {problem}")]
    Unreachable {
        /// Host and database, without credentials.
        at: String,
        /// What went wrong.
        problem: String,
    },
    /// The schema is newer than this build knows.
    #[error(
        "PostgreSQL at {at}: its flowgate schema is version {found}, newer than this flowgate knows ({known}); run a flowgate at least as new as the one that migrated it"
    )]
    Newer {
        /// Host and database.
        at: String,
        /// The version found.
        found: i64,
        /// The newest this build knows.
        known: i64,
    },
}

/// The pool of connections to one PostgreSQL database.
#[derive(Clone)]
pub struct Database {
    pool: Pool,
    /// How to open a connection of its own (for `LISTEN`).
    direct: std::sync::Arc<(
        tokio_postgres::Config,
        tokio_postgres_rustls::MakeRustlsConnect,
    )>,
    /// Host and database, for messages (never the password).
    at: String,
}

impl Database {
    /// A pool of connections to `settings.url`; nothing is connected yet
    /// (see [`Database::migrate`]).
    pub fn new(settings: &Settings) -> Result<Self, OpenError> {
        let (url, mode) = tls::split_sslmode(&settings.url).map_err(OpenError::Config)?;
        let mut config = tokio_postgres::Config::from_str(&url)
            .map_err(|e| OpenError::Config(format!("not a PostgreSQL URL: {e}")))?;
        let at = describe(&config);
        config.ssl_mode(mode.ssl_mode());
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.keepalives_idle(Duration::from_secs(30));
        // Cancelled and rolled back by the server itself, never committed
        // after flowgate stopped waiting; the URL's own `options` kept.
        let bound = SERVER_TIMEOUT.as_millis();
        let options = format!(
            "{} -c statement_timeout={bound} -c lock_timeout={bound}",
            config.get_options().unwrap_or_default()
        );
        config.options(options.trim_start());
        if config.get_application_name().is_none() {
            config.application_name("flowgate");
        }
        let tls = tls::connector(mode).map_err(OpenError::Config)?;
        let manager = Manager::from_config(
            config.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(settings.pool_size.max(1))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(WAIT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| OpenError::Config(e.to_string()))?;
        Ok(Self {
            pool,
            direct: std::sync::Arc::new((config, tls)),
            at,
        })
    }

    /// Applies the migrations the database has not seen, under an advisory
    /// lock (replicas starting together apply each once); refuses a schema
    /// newer than this build's. Returns how many were applied.
    pub async fn migrate(&self) -> Result<usize, OpenError> {
        let unreachable = |problem: String| OpenError::Unreachable {
            at: self.at.clone(),
            problem,
        };
        let mut client = self
            .pool
            .get()
            .await
            .map_err(|e| unreachable(explain_pool(e)))?;
        let tx = client
            .transaction()
            .await
            .map_err(|e| unreachable(explain(&e)))?;
        let found: i64 = async {
            // "already exists, skipping" is the usual case, not news; and a
            // migration (or waiting for another replica's) may take longer
            // than a request's statement.
            tx.batch_execute(
                "SET LOCAL client_min_messages = warning;
                 SET LOCAL statement_timeout = 0; SET LOCAL lock_timeout = 0",
            )
            .await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
                .await?;
            tx.batch_execute(
                "CREATE SCHEMA IF NOT EXISTS flowgate;
                 CREATE TABLE IF NOT EXISTS flowgate.migrations (
                     version    INTEGER PRIMARY KEY,
                     applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
                 );",
            )
            .await?;
            tx.query_one(
                "SELECT COALESCE(max(version), 0)::BIGINT FROM flowgate.migrations",
                &[],
            )
            .await?
            .try_get(0)
        }
        .await
        .map_err(|e| unreachable(explain(&e)))?;
        let known = MIGRATIONS.len() as i64;
        if found > known {
            return Err(OpenError::Newer {
                at: self.at.clone(),
                found,
                known,
            });
        }
        let mut applied = 0;
        for (n, migration) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            let version = n as i32 + 1;
            tx.batch_execute(migration)
                .await
                .map_err(|e| unreachable(format!("migration {version}: {}", explain(&e))))?;
            tx.execute(
                "INSERT INTO flowgate.migrations (version) VALUES ($1)",
                &[&version],
            )
            .await
            .map_err(|e| unreachable(explain(&e)))?;
            applied += 1;
        }
        tx.commit().await.map_err(|e| unreachable(explain(&e)))?;
        // Start-up migrates on a runtime of its own that ends after: its
        // connection leaves the pool rather than be found closed later.
        drop(deadpool_postgres::Object::take(client));
        Ok(applied)
    }

    /// A connection from the pool.
    async fn client(&self) -> Result<deadpool_postgres::Object, StorageError> {
        Ok(self.pool.get().await?)
    }

    /// A connection of its own (outside the pool) listening on `channel`:
    /// the receiver gets `()` for each notification, and ends when the
    /// connection does or when it is dropped.
    async fn listen(&self, channel: &str) -> Result<mpsc::Receiver<()>, StorageError> {
        use futures_util::StreamExt as _;
        let (client, mut connection) = timed(async {
            let (config, tls) = &*self.direct;
            Ok(config.connect(tls.clone()).await?)
        })
        .await?;
        let client = std::sync::Arc::new(client);
        let (tx, rx) = mpsc::channel(1);
        let held = client.clone();
        tokio::spawn(async move {
            // The client lives as long as this task reads its connection.
            let _held = held;
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            loop {
                tokio::select! {
                    () = tx.closed() => return,
                    message = messages.next() => match message {
                        Some(Ok(tokio_postgres::AsyncMessage::Notification(_))) => {
                            // A full channel already holds a wake-up.
                            let _ = tx.try_send(());
                        }
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => return,
                    },
                }
            }
        });
        timed(async { Ok(client.batch_execute(&format!("LISTEN {channel}")).await?) }).await?;
        Ok(rx)
    }

    /// What in the server's settings puts accepted runs at risk:
    /// `synchronous_commit = off` (a commit answered before it is on disk)
    /// or `fsync = off`; `None` when nothing does or it cannot tell.
    pub async fn durability_risk(&self) -> Option<String> {
        let client = self.client().await.ok()?;
        let found = client
            .query(
                "SELECT name, setting FROM pg_settings
                 WHERE (name = 'synchronous_commit' AND setting = 'off')
                    OR (name = 'fsync' AND setting = 'off')",
                &[],
            )
            .await
            .ok()?;
        let names: Vec<String> = found
            .iter()
            .map(|row| format!("{} = off", row.get::<_, &str>(0)))
            .collect();
        (!names.is_empty()).then(|| {
            format!(
                "PostgreSQL at {} has {}: a run answered 202 can be lost if the database server crashes; turn it on for the durability flowgate promises",
                self.at,
                names.join(" and ")
            )
        })
    }

    /// Host and database, for messages.
    pub fn describe(&self) -> &str {
        &self.at
    }
}

/// `host:port/database` of `config`, without credentials.
fn describe(config: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(host)) => host.clone(),
        Some(Host::Unix(path)) => path.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config.get_dbname().unwrap_or("(default database)");
    format!("{host}:{port}/{db}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describing_a_url_leaves_out_the_password() {
        let config =
            tokio_postgres::Config::from_str("postgres://app:s3cret@db.internal:6543/flows")
                .unwrap();
        assert_eq!(describe(&config), "db.internal:6543/flows");
    }

    #[test]
    fn a_url_that_is_not_postgres_is_refused_with_the_key() {
        let settings = Settings {
            url: "redis://127.0.0.1:6379".into(),
            pool_size: 4,
        };
        let error = Database::new(&settings).err().unwrap().to_string();
        assert!(error.starts_with("postgres.url: "), "{error}");
    }
}
