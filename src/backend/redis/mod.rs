//! The Redis backend: [`RedisQueue`] (the run queue on Redis Streams) and
//! [`RedisStore`] (run records and idempotency keys), over one connection
//! [`Pool`] to a single Redis or a Redis Cluster. The key layout, and how
//! it is partitioned on a cluster, lives in [`keys`]. Shared plumbing: one
//! way to run a command or a pipeline, the JSON written into keys, and the
//! [`Batcher`] that folds concurrent writes into shared pipelines.

use std::sync::Arc;
use std::time::Duration;

use deadpool_redis::redis;
use deadpool_redis::redis::aio::ConnectionLike;
use deadpool_redis::{Config as PoolSettings, Runtime};

use super::StorageError;

mod batch;
mod control;
pub mod keys;
mod queue;
mod store;
mod webhooks;

pub use self::batch::Batcher;
pub use self::control::RedisControl;
pub use self::keys::Layout;
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

/// Where the Redis backend connects, and how it lays out its keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The Redis URL; on a cluster, the seed nodes (any of them will do).
    pub urls: Vec<String>,
    /// The URLs are nodes of a Redis Cluster.
    pub cluster: bool,
    /// Partitions of the queue and run records on a cluster (ignored on a
    /// single Redis, which has one).
    pub partitions: u16,
    /// Replicas that must have every batch of run writes (Redis `WAIT`)
    /// before it counts as done: with 1 or more, an accepted run survives
    /// its master's failover. 0 trusts the master alone.
    pub replica_acks: u8,
}

impl Settings {
    /// The settings `[redis]` describes.
    pub fn from_config(config: &crate::config::RedisConfig) -> Self {
        let settings = if config.cluster {
            let mut urls = vec![config.url.clone()];
            urls.extend(config.nodes.iter().cloned());
            Self::cluster(urls, config.partitions)
        } else {
            Self::single(&config.url)
        };
        settings.with_replica_acks(config.replica_acks)
    }

    /// One Redis at `url`.
    pub fn single(url: &str) -> Self {
        Self {
            urls: vec![url.to_owned()],
            cluster: false,
            partitions: 1,
            replica_acks: 0,
        }
    }

    /// The Redis Cluster reached through the seed nodes `urls`, its queue
    /// and records split into `partitions`.
    pub fn cluster(urls: Vec<String>, partitions: u16) -> Self {
        Self {
            urls,
            cluster: true,
            partitions,
            replica_acks: 0,
        }
    }

    /// These settings, with every batch of run writes waiting for
    /// `replicas` replicas.
    pub fn with_replica_acks(mut self, replicas: u8) -> Self {
        self.replica_acks = replicas;
        self
    }
}

/// A connection pool to a single Redis or to a Redis Cluster, with the key
/// layout that goes with it. Cheap to clone.
#[derive(Clone)]
pub struct Pool {
    inner: Inner,
    layout: Arc<Layout>,
    replica_acks: u8,
}

#[derive(Clone)]
enum Inner {
    Single(deadpool_redis::Pool),
    Cluster(deadpool::managed::Pool<ClusterManager>),
}

/// Longest wait for one reply from a cluster node; blocking queue reads
/// block for far less.
const CLUSTER_RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest a cluster command may take with its retries and redirections
/// (a failover under way): then it fails, and a sender gets a 503.
const CLUSTER_OVERALL_TIMEOUT: Duration = Duration::from_secs(3);

/// Makes cluster connections that give up in bounded time: the `redis`
/// crate's defaults wait for a reply without limit and retry for minutes.
struct ClusterManager {
    client: redis::cluster::ClusterClient,
}

impl deadpool::managed::Manager for ClusterManager {
    type Type = redis::cluster_async::ClusterConnection;
    type Error = redis::RedisError;

    async fn create(&self) -> Result<Self::Type, Self::Error> {
        self.client.get_async_connection().await
    }

    async fn recycle(
        &self,
        _: &mut Self::Type,
        _: &deadpool::managed::Metrics,
    ) -> deadpool::managed::RecycleResult<Self::Error> {
        // A cluster connection reconnects to its nodes by itself.
        Ok(())
    }
}

/// A pooled connection to a single Redis or a cluster; commands and
/// pipelines run on it like on any `redis` connection. On a cluster each
/// command goes to the node serving its keys' slot, and a pipeline's keys
/// must share one slot.
pub struct Connection(Conn);

enum Conn {
    Single(deadpool_redis::Connection),
    Cluster(deadpool::managed::Object<ClusterManager>),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match &mut self.0 {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipe: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match &mut self.0 {
            Conn::Single(c) => c.req_packed_commands(pipe, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipe, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match &self.0 {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl Pool {
    /// A connection from the pool, waiting at most [`CONNECTION_TIMEOUT`].
    pub async fn get(&self) -> Result<Connection, StorageError> {
        match &self.inner {
            Inner::Single(pool) => pool
                .get()
                .await
                .map(|c| Connection(Conn::Single(c)))
                .map_err(unavailable),
            Inner::Cluster(pool) => pool
                .get()
                .await
                .map(|c| Connection(Conn::Cluster(c)))
                .map_err(unavailable),
        }
    }

    /// Where every key lives.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Replicas every batch of run writes waits for.
    pub fn replica_acks(&self) -> u8 {
        self.replica_acks
    }
}

/// Runs one command on a pooled connection.
pub async fn query<T: redis::FromRedisValue>(
    pool: &Pool,
    cmd: &redis::Cmd,
) -> Result<T, StorageError> {
    let mut conn = pool.get().await?;
    cmd.query_async(&mut conn).await.map_err(unavailable)
}

/// Runs a pipeline on a pooled connection, in one round trip. On a cluster
/// every key in it must share one slot.
pub async fn query_pipeline<T: redis::FromRedisValue>(
    pool: &Pool,
    pipe: &redis::Pipeline,
) -> Result<T, StorageError> {
    let mut conn = pool.get().await?;
    pipe.query_async(&mut conn).await.map_err(unavailable)
}

/// Runs independent commands whose keys may lie in different slots, their
/// replies in order: one pipeline on a single Redis; on a cluster each
/// command goes to its own node, all at once.
pub async fn query_all<T: redis::FromRedisValue>(
    pool: &Pool,
    cmds: &[redis::Cmd],
) -> Result<Vec<T>, StorageError> {
    if cmds.is_empty() {
        return Ok(Vec::new());
    }
    let conn = pool.get().await?;
    match conn.0 {
        Conn::Single(mut conn) => {
            let mut pipe = redis::pipe();
            for cmd in cmds {
                pipe.add_command(cmd.clone());
            }
            pipe.query_async(&mut conn).await.map_err(unavailable)
        }
        Conn::Cluster(conn) => {
            // Clones share the node connections and multiplex over them.
            let replies = cmds.iter().map(|cmd| {
                let mut conn: redis::cluster_async::ClusterConnection = (*conn).clone();
                async move { cmd.query_async::<T>(&mut conn).await }
            });
            futures_util::future::join_all(replies)
                .await
                .into_iter()
                .map(|r| r.map_err(unavailable))
                .collect()
        }
    }
}

/// A value as the JSON text Redis stores.
pub fn to_json(value: &impl serde::Serialize) -> Result<String, StorageError> {
    crate::codec::encode(value).map_err(unencodable)
}

/// Why a value could not be encoded for Redis.
pub fn unencodable(e: crate::codec::CodecError) -> StorageError {
    StorageError::Corrupt(e.to_string())
}

/// Why the Redis `settings` name could silently drop accepted runs, if it
/// could: a `maxmemory-policy` other than `noeviction` lets Redis evict
/// queue entries when it fills up. On a cluster each listed node is asked
/// (a cluster's nodes are configured one by one). `None` when every policy
/// read is safe, or none can be read (some managed services refuse `CONFIG`).
pub async fn eviction_risk(settings: &Settings) -> Option<String> {
    for url in &settings.urls {
        let Some(policy) = maxmemory_policy(url).await else {
            continue;
        };
        if policy != "noeviction" {
            let node = if settings.cluster {
                " of a cluster node"
            } else {
                ""
            };
            return Some(format!(
                "Redis maxmemory-policy{node} is `{policy}`: when Redis fills up it may evict queued runs, \
                 which are then lost without an error; set `maxmemory-policy noeviction` (Redis then \
                 refuses writes when full, and flowgate answers 503 instead of losing a run)"
            ));
        }
    }
    None
}

/// Why the Redis `settings` name is not what they say, if it is not: a
/// node of a Redis Cluster configured as a single Redis (commands on keys
/// of other nodes' slots then fail with `MOVED`), or the reverse. `None`
/// when it matches or cannot be read.
pub async fn cluster_mismatch(settings: &Settings) -> Option<String> {
    let url = settings.urls.first()?;
    let pool = connect(url).ok()?;
    let read = async {
        let mut conn = pool.get().await.ok()?;
        redis::cmd("INFO")
            .arg("cluster")
            .query_async::<String>(&mut conn)
            .await
            .ok()
    };
    let info = tokio::time::timeout(CONNECTION_TIMEOUT * 2, read)
        .await
        .ok()??;
    let is_cluster = info.contains("cluster_enabled:1");
    match (is_cluster, settings.cluster) {
        (true, false) => Some(
            "redis.url is a node of a Redis Cluster but redis.cluster is false: set redis.cluster = true, \
             or runs whose keys live on other nodes fail"
                .to_owned(),
        ),
        (false, true) => Some(
            "redis.cluster is true but redis.url is a Redis without cluster support: set redis.cluster = false"
                .to_owned(),
        ),
        _ => None,
    }
}

/// The `maxmemory-policy` of the one Redis at `url`, when it answers.
async fn maxmemory_policy(url: &str) -> Option<String> {
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
    tokio::time::timeout(CONNECTION_TIMEOUT * 2, read)
        .await
        .ok()?
}

/// A connection pool to the single Redis at `url`; connects lazily.
pub fn connect(url: &str) -> Result<Pool, StorageError> {
    connect_with(&Settings::single(url))
}

/// A connection pool as `settings` say; connects lazily.
pub fn connect_with(settings: &Settings) -> Result<Pool, StorageError> {
    let mut pool = deadpool_redis::PoolConfig::new(POOL_SIZE);
    pool.timeouts.wait = Some(CONNECTION_TIMEOUT);
    pool.timeouts.create = Some(CONNECTION_TIMEOUT);
    pool.timeouts.recycle = Some(CONNECTION_TIMEOUT);
    if !settings.cluster {
        let url = settings
            .urls
            .first()
            .ok_or_else(|| unavailable("no Redis URL"))?;
        let mut config = PoolSettings::from_url(url.as_str());
        config.pool = Some(pool);
        return Ok(Pool {
            inner: Inner::Single(
                config
                    .create_pool(Some(Runtime::Tokio1))
                    .map_err(unavailable)?,
            ),
            layout: Arc::new(Layout::single()),
            replica_acks: settings.replica_acks,
        });
    }
    let client = redis::cluster::ClusterClientBuilder::new(settings.urls.clone())
        .connection_timeout(CONNECTION_TIMEOUT)
        .response_timeout(CLUSTER_RESPONSE_TIMEOUT)
        .overall_response_timeout(Some(CLUSTER_OVERALL_TIMEOUT))
        .retries(4)
        .min_retry_wait(100)
        .max_retry_wait(1000)
        .build()
        .map_err(unavailable)?;
    let cluster = deadpool::managed::Pool::builder(ClusterManager { client })
        .config(pool)
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .map_err(unavailable)?;
    Ok(Pool {
        inner: Inner::Cluster(cluster),
        layout: Arc::new(Layout::cluster(settings.partitions)),
        replica_acks: settings.replica_acks,
    })
}
