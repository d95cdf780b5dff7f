//! The Redis backend: [`RedisQueue`] (the run queue on Redis Streams) and
//! [`RedisStore`] (run records and idempotency keys), over one connection
//! pool. The key layout lives in [`keys`]. Shared plumbing: one way to run a
//! command or a pipeline, the JSON written into keys, and the [`Batcher`]
//! that folds concurrent writes into shared pipelines.

use std::time::Duration;

use deadpool_redis::redis;
use deadpool_redis::{Config as PoolSettings, Pool, Runtime};

use super::StorageError;

mod batch;
mod control;
pub mod keys;
mod queue;
mod store;
mod webhooks;

pub use self::batch::Batcher;
pub use self::control::RedisControl;
pub use self::queue::RedisQueue;
pub use self::store::RedisStore;
pub use self::webhooks::RedisWebhooks;

/// Longest wait for a pooled connection or a new one: an unreachable Redis
/// must turn into a quick 503, not a hung request.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections kept by one process.
const POOL_SIZE: usize = 64;

/// A Redis (or pool) failure, as the queue and stores report it.
pub fn unavailable(err: impl std::fmt::Display) -> StorageError {
    StorageError::Unavailable(err.to_string())
}

/// Runs one command on a pooled connection.
pub async fn query<T: redis::FromRedisValue>(
    pool: &Pool,
    cmd: &redis::Cmd,
) -> Result<T, StorageError> {
    let mut conn = pool.get().await.map_err(unavailable)?;
    cmd.query_async(&mut conn).await.map_err(unavailable)
}

/// Runs a pipeline on a pooled connection, in one round trip.
pub async fn query_pipeline<T: redis::FromRedisValue>(
    pool: &Pool,
    pipe: &redis::Pipeline,
) -> Result<T, StorageError> {
    let mut conn = pool.get().await.map_err(unavailable)?;
    pipe.query_async(&mut conn).await.map_err(unavailable)
}

/// A value as the JSON text Redis stores.
pub fn to_json(value: &impl serde::Serialize) -> Result<String, StorageError> {
    crate::codec::encode(value).map_err(unencodable)
}

/// Why a value could not be encoded for Redis.
pub fn unencodable(e: crate::codec::CodecError) -> StorageError {
    StorageError::Corrupt(e.to_string())
}

/// Why the Redis at `url` could silently drop accepted runs, if it could:
/// a `maxmemory-policy` other than `noeviction` lets Redis evict queue
/// entries when it fills up. `None` when the policy is safe, or when it
/// cannot be read (some managed services refuse `CONFIG`).
pub async fn eviction_risk(url: &str) -> Option<String> {
    let pool = connect(url).ok()?;
    let read = async {
        let mut conn = pool.get().await.ok()?;
        let reply: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("maxmemory-policy")
            .query_async(&mut conn)
            .await
            .ok()?;
        reply.get(1).cloned()
    };
    let policy = tokio::time::timeout(CONNECTION_TIMEOUT * 2, read)
        .await
        .ok()??;
    (policy != "noeviction").then(|| {
        format!(
            "Redis maxmemory-policy is `{policy}`: when Redis fills up it may evict queued runs, \
             which are then lost without an error; set `maxmemory-policy noeviction` (Redis then \
             refuses writes when full, and flowgate answers 503 instead of losing a run)"
        )
    })
}

/// A connection pool to the Redis at `url`; connects lazily.
pub fn connect(url: &str) -> Result<Pool, StorageError> {
    let mut settings = PoolSettings::from_url(url);
    let mut pool = deadpool_redis::PoolConfig::new(POOL_SIZE);
    pool.timeouts.wait = Some(CONNECTION_TIMEOUT);
    pool.timeouts.create = Some(CONNECTION_TIMEOUT);
    pool.timeouts.recycle = Some(CONNECTION_TIMEOUT);
    settings.pool = Some(pool);
    settings
        .create_pool(Some(Runtime::Tokio1))
        .map_err(unavailable)
}
