//! [`ControlStore`] on Redis: a few hashes for the state, a stream for the
//! audit log, a version counter, and a pub/sub channel that tells replicas
//! the version moved. Keys are in [`super::keys`].

use std::collections::HashMap;

use super::Pool;
use deadpool_redis::redis;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::keys::{
    ABORTED_KEY, AUDIT_KEY, CONTROL_CHANNEL, CONTROL_VERSION_KEY, GENERATIONS_KEY, GRACE_KEY,
    REVOKED_KEY, SESSIONS_KEY, STATUS_KEY,
};
use super::{query, query_pipeline, to_json, unavailable};
use crate::backend::control::{
    ABORT_MEMORY, AUDIT_RETENTION, Applied, AuditDraft, AuditEntry, AuditFilter, Change,
    ControlState, ControlStore, Generation, Page, SessionEntry, StatusOverride,
};
use crate::backend::{BoxFuture, StorageError, now_ms};

/// Most audit entries read to fill one filtered page.
const AUDIT_SCAN_MAX: usize = 10_000;
/// Entries read per round trip while filling a page.
const AUDIT_SCAN_BATCH: usize = 500;

/// Bumps the version, never below the time of the change in ms: a Redis
/// that lost its data (restarted without persistence, flushed, a replica
/// that was behind promoted) starts again above every version the replicas
/// saw, so its first change reaches them; they also reload a store whose
/// version went back ([`crate::control::Control::ensure_current`]).
const BUMP_VERSION: &str = "local v = redis.call('INCR', KEYS[1]) \
local floor = tonumber(ARGV[1]) \
if v < floor then redis.call('SET', KEYS[1], ARGV[1]) v = floor end \
return v";

/// Control state on Redis.
#[derive(Clone)]
pub struct RedisControl {
    pool: Pool,
    /// One client per URL, for the notification connection: on a cluster
    /// any node relays every `PUBLISH`, so each new subscription tries the
    /// next seed node until one answers.
    clients: std::sync::Arc<[redis::Client]>,
    next: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl RedisControl {
    /// Control state on `pool`; `urls` (a single Redis, or a cluster's
    /// seed nodes) open the notification connection.
    pub fn new(pool: Pool, urls: &[String]) -> Result<Self, StorageError> {
        let clients = urls
            .iter()
            .map(|url| redis::Client::open(url.as_str()).map_err(unavailable))
            .collect::<Result<Vec<_>, _>>()?;
        if clients.is_empty() {
            return Err(unavailable("no Redis URL"));
        }
        Ok(Self {
            pool,
            clients: clients.into(),
            next: Default::default(),
        })
    }

    /// A subscription to the control channel, from the first seed node
    /// that answers.
    async fn subscribe(&self) -> Result<redis::aio::PubSub, StorageError> {
        let start = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut last = None;
        for i in 0..self.clients.len() {
            let client = &self.clients[(start + i) % self.clients.len()];
            let subscribed = async {
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(CONTROL_CHANNEL).await?;
                Ok::<_, redis::RedisError>(pubsub)
            };
            match tokio::time::timeout(super::CONNECTION_TIMEOUT, subscribed).await {
                Ok(Ok(pubsub)) => return Ok(pubsub),
                Ok(Err(e)) => last = Some(e.to_string()),
                Err(_) => last = Some("timed out".to_owned()),
            }
        }
        Err(unavailable(last.expect("at least one client")))
    }
}

fn corrupt(what: &str, err: impl std::fmt::Display) -> StorageError {
    StorageError::Corrupt(format!("{what}: {err}"))
}

use crate::clock::now_rfc3339;

/// When a grace period starting at `now_ms` ends, in ms.
fn grace_until(now_ms: u64, grace: std::time::Duration) -> u64 {
    now_ms.saturating_add(u64::try_from(grace.as_millis()).unwrap_or(u64::MAX))
}

impl ControlStore for RedisControl {
    fn version(&self) -> BoxFuture<'_, Result<u64, StorageError>> {
        Box::pin(async move {
            let version: Option<u64> =
                query(&self.pool, redis::cmd("GET").arg(CONTROL_VERSION_KEY)).await?;
            Ok(version.unwrap_or(0))
        })
    }

    fn load(&self) -> BoxFuture<'_, Result<ControlState, StorageError>> {
        Box::pin(async move {
            type Texts = HashMap<String, String>;
            type Numbers = HashMap<String, u64>;
            type Loaded = (
                Option<u64>,
                Texts,
                Numbers,
                Numbers,
                Numbers,
                Numbers,
                Texts,
            );
            let (version, statuses, generations, grace, revoked, aborted, sessions): Loaded =
                query_pipeline(
                    &self.pool,
                    redis::pipe()
                        .atomic()
                        .get(CONTROL_VERSION_KEY)
                        .hgetall(STATUS_KEY)
                        .hgetall(GENERATIONS_KEY)
                        .hgetall(GRACE_KEY)
                        .hgetall(REVOKED_KEY)
                        .hgetall(ABORTED_KEY)
                        .hgetall(SESSIONS_KEY),
                )
                .await?;
            let statuses = statuses
                .into_iter()
                .map(|(flow, json)| {
                    let parsed: StatusOverride =
                        crate::codec::decode(&json).map_err(|e| corrupt("status override", e))?;
                    Ok((flow, parsed))
                })
                .collect::<Result<_, StorageError>>()?;
            let generations = generations
                .into_iter()
                .map(|(flow, current)| {
                    let grace_until_ms = grace.get(&flow).copied();
                    (
                        flow,
                        Generation {
                            current,
                            grace_until_ms,
                        },
                    )
                })
                .collect();
            let now = now_ms();
            let forget_before = now.saturating_sub(ABORT_MEMORY.as_millis() as u64);
            let mut open = HashMap::new();
            for json in sessions.values() {
                let session: SessionEntry =
                    crate::codec::decode(json).map_err(|e| corrupt("console session", e))?;
                if session.expires_ms > now {
                    open.insert(session.id.clone(), session);
                }
            }
            Ok(ControlState {
                version: version.unwrap_or(0),
                statuses,
                generations,
                revoked: revoked
                    .into_iter()
                    .filter(|(_, until)| *until > now)
                    .collect(),
                aborted: aborted
                    .into_iter()
                    .filter(|(_, at)| *at > forget_before)
                    .collect(),
                sessions: open,
            })
        })
    }

    // One arm per kind of change, each a few commands in the one
    // transaction that also bumps the version and writes the audit entry:
    // kept in one function so the transaction reads top to bottom.
    fn apply<'a>(
        &'a self,
        change: &'a Change,
        audit: &'a AuditDraft,
    ) -> BoxFuture<'a, Result<Applied, StorageError>> {
        Box::pin(async move {
            let now = now_ms();
            let entry = audit.entry(now_rfc3339());
            let mut pipe = redis::pipe();
            pipe.atomic();
            let mut rotated = false;
            match change {
                Change::Status { flow, status } => match status {
                    Some(status) => {
                        let stored = StatusOverride {
                            status: *status,
                            by: audit.actor.name.clone(),
                            at: entry.at.clone(),
                        };
                        pipe.hset(STATUS_KEY, flow, to_json(&stored)?).ignore();
                    }
                    None => {
                        pipe.hdel(STATUS_KEY, flow).ignore();
                    }
                },
                Change::Rotate { flow, grace } => {
                    rotated = true;
                    pipe.hincr(GENERATIONS_KEY, flow, 1);
                    match grace {
                        Some(grace) => pipe
                            .hset(GRACE_KEY, flow, grace_until(now, *grace))
                            .ignore(),
                        None => pipe.hdel(GRACE_KEY, flow).ignore(),
                    };
                }
                Change::Revoke { jti, until_ms } => {
                    pipe.hset(REVOKED_KEY, jti, *until_ms).ignore();
                }
                Change::OpenSession(session) => {
                    // Sessions end by themselves: drop the expired ones
                    // whenever a new one opens, so the hash stays small.
                    let stored: HashMap<String, String> =
                        query(&self.pool, redis::cmd("HGETALL").arg(SESSIONS_KEY)).await?;
                    let expired: Vec<&String> = stored
                        .iter()
                        .filter(|(_, json)| {
                            crate::codec::decode::<SessionEntry>(json)
                                .map_or(true, |s| s.expires_ms <= now)
                        })
                        .map(|(id, _)| id)
                        .collect();
                    if !expired.is_empty() {
                        pipe.hdel(SESSIONS_KEY, expired).ignore();
                    }
                    pipe.hset(SESSIONS_KEY, &session.id, to_json(session)?)
                        .ignore();
                }
                Change::Abort { run_id } => {
                    pipe.hset(ABORTED_KEY, run_id, now).ignore();
                }
                Change::Nothing => {}
            }
            let oldest = now.saturating_sub(AUDIT_RETENTION.as_millis() as u64);
            pipe.cmd("XADD")
                .arg(AUDIT_KEY)
                .arg("MINID")
                .arg("~")
                .arg(oldest)
                .arg("*")
                .arg("entry")
                .arg(to_json(&entry)?)
                .ignore();
            pipe.cmd("EVAL")
                .arg(BUMP_VERSION)
                .arg(1)
                .arg(CONTROL_VERSION_KEY)
                .arg(now);
            let (generation, version) = if rotated {
                let (current, version): (u64, u64) = query_pipeline(&self.pool, &pipe).await?;
                let flow_grace = match change {
                    Change::Rotate {
                        grace: Some(grace), ..
                    } => Some(grace_until(now, *grace)),
                    _ => None,
                };
                (
                    Some(Generation {
                        current,
                        grace_until_ms: flow_grace,
                    }),
                    version,
                )
            } else {
                let (version,): (u64,) = query_pipeline(&self.pool, &pipe).await?;
                (None, version)
            };
            // Replicas also check the version now and then, so a lost
            // notification delays the change by at most that period.
            let _: Result<i64, _> = query(
                &self.pool,
                redis::cmd("PUBLISH").arg(CONTROL_CHANNEL).arg(version),
            )
            .await;
            Ok(Applied {
                version,
                generation,
            })
        })
    }

    // One filter per query parameter over the audit stream, applied while
    // reading a page: kept together so a page's bound reads in one place.
    fn audit<'a>(
        &'a self,
        filter: &'a AuditFilter,
        cursor: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Page<AuditEntry>, StorageError>> {
        Box::pin(async move {
            let mut data = Vec::new();
            let mut end = match cursor {
                // A stream entry id, `<ms>-<n>`.
                Some(id)
                    if id.split_once('-').is_some_and(|(ms, n)| {
                        [ms, n].iter().all(|part| {
                            !part.is_empty()
                                && part.len() <= 20
                                && part.bytes().all(|b| b.is_ascii_digit())
                        })
                    }) =>
                {
                    format!("({id}")
                }
                Some(_) => return Err(StorageError::Corrupt("not an audit cursor".into())),
                None => "+".to_owned(),
            };
            let mut scanned = 0;
            loop {
                let batch: Vec<(String, HashMap<String, String>)> = query(
                    &self.pool,
                    redis::cmd("XREVRANGE")
                        .arg(AUDIT_KEY)
                        .arg(&end)
                        .arg("-")
                        .arg("COUNT")
                        .arg(AUDIT_SCAN_BATCH),
                )
                .await?;
                let exhausted = batch.len() < AUDIT_SCAN_BATCH;
                for (id, fields) in batch {
                    scanned += 1;
                    end = format!("({id}");
                    let Some(json) = fields.get("entry") else {
                        continue;
                    };
                    let mut entry: AuditEntry =
                        crate::codec::decode(json).map_err(|e| corrupt("audit entry", e))?;
                    let at_ms = id
                        .split_once('-')
                        .and_then(|(ms, _)| ms.parse().ok())
                        .unwrap_or(0);
                    if filter.before_ms.is_some_and(|t| at_ms >= t) {
                        continue;
                    }
                    if filter.after_ms.is_some_and(|t| at_ms < t) {
                        // Newest first: everything further is older still.
                        return Ok(Page {
                            data,
                            next_cursor: None,
                        });
                    }
                    if filter.matches(&entry, at_ms) {
                        entry.id = id.clone();
                        data.push(entry);
                        if data.len() == limit {
                            return Ok(Page {
                                data,
                                next_cursor: Some(id),
                            });
                        }
                    }
                }
                if exhausted {
                    return Ok(Page {
                        data,
                        next_cursor: None,
                    });
                }
                if scanned >= AUDIT_SCAN_MAX {
                    // A sparse filter over a long log: hand back what was
                    // found and where to go on.
                    let next = end.trim_start_matches('(').to_owned();
                    return Ok(Page {
                        data,
                        next_cursor: Some(next),
                    });
                }
            }
        })
    }

    fn watch(&self) -> BoxFuture<'_, Result<mpsc::Receiver<()>, StorageError>> {
        Box::pin(async move {
            let mut pubsub = self.subscribe().await?;
            let (tx, rx) = mpsc::channel(1);
            tokio::spawn(async move {
                let mut messages = pubsub.on_message();
                while messages.next().await.is_some() {
                    // A full channel already holds a wake-up: nothing is lost.
                    if let Err(mpsc::error::TrySendError::Closed(())) = tx.try_send(()) {
                        return;
                    }
                }
            });
            Ok(rx)
        })
    }
}
