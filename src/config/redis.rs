//! `[redis]`: where the Redis backend connects, a single Redis or a cluster.

use std::fmt;

use serde::Deserialize;

use super::parse::shown_url;

/// Most partitions the queue and run records may be split into.
pub const MAX_PARTITIONS: u16 = 1024;

/// `[redis]`
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// Redis connection URL; put a password in the environment override, not in the file.
    /// On a cluster, one of its nodes.
    pub url: String,
    /// `url` (with `nodes`) is a node of a Redis Cluster: the queue and run
    /// records are split into `partitions` spread over the cluster's nodes.
    pub cluster: bool,
    /// More nodes of the cluster to connect through, besides `url` (any one
    /// that answers is enough to find the rest).
    pub nodes: Vec<String>,
    /// Partitions of the queue and run records on a cluster, 1 to 1024; a
    /// single Redis always has one. Change it only with the queue drained.
    pub partitions: u16,
    /// Replicas that must confirm the writes accepting a run (Redis `WAIT`,
    /// at most 250 ms) before the sender gets its 202; with 1 or more an
    /// accepted run survives a master's failover. 0 trusts the master alone.
    pub replica_acks: u8,
}

impl fmt::Debug for RedisConfig {
    /// The URLs without their passwords.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nodes: Vec<String> = self.nodes.iter().map(|n| shown_url(n)).collect();
        f.debug_struct("RedisConfig")
            .field("url", &shown_url(&self.url))
            .field("cluster", &self.cluster)
            .field("nodes", &nodes)
            .field("partitions", &self.partitions)
            .field("replica_acks", &self.replica_acks)
            .finish()
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379/0".into(),
            cluster: false,
            nodes: Vec::new(),
            partitions: 16,
            replica_acks: 0,
        }
    }
}

impl RedisConfig {
    /// Checks what the keys' types cannot; the reason, naming the key.
    pub(super) fn validate(&self) -> Result<(), String> {
        let max = MAX_PARTITIONS;
        if !(1..=max).contains(&self.partitions) {
            return Err(format!("redis.partitions must be 1 to {max}"));
        }
        if !self.nodes.is_empty() && !self.cluster {
            return Err("redis.nodes lists cluster nodes but redis.cluster is false; set redis.cluster = true, or put the one Redis in redis.url".into());
        }
        for node in &self.nodes {
            let scheme = url::Url::parse(node).map(|u| u.scheme().to_owned());
            if !matches!(scheme.as_deref(), Ok("redis" | "rediss")) {
                return Err(format!(
                    "redis.nodes: `{}` is not a redis:// or rediss:// URL",
                    shown_url(node)
                ));
            }
        }
        Ok(())
    }
}
