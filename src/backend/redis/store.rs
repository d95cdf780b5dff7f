//! [`IdempotencyStore`] and [`RunStore`] on Redis; their keys are in
//! [`super::keys`].

use std::time::Duration;

use deadpool_redis::Pool;
use deadpool_redis::redis;

use super::keys::{FLOWS_KEY, RUN_KEY_PREFIX, flow_runs_key, idempotency_key, run_key};
use super::{Batcher, query, query_pipeline, to_json, unencodable};
use crate::backend::control::Page;
use crate::backend::{
    BoxFuture, IDEMPOTENCY_TTL, IdempotencyStore, Reservation, RunFilter, RunStore, StorageError,
    StoredAnswer, now_ms,
};
use crate::record::RunRecord;

const PENDING_PREFIX: &str = "pending:";

/// Index trimming runs on one record write in this many: expired entries
/// only cost a little space until then, and every write stays cheap.
const TRIM_EVERY: u64 = 64;

/// Most records one trim deletes to bring a flow back under its cap; the
/// next trim goes on, so no single call holds Redis for long.
const TRIM_BATCH: u64 = 1000;

/// Deletes a flow's oldest records beyond its cap. KEYS[1]: the flow's
/// index; ARGV: the cap, the run key prefix, the most to delete now.
const TRIM_TO_CAP: &str = r"
local excess = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[1])
if excess <= 0 then return 0 end
excess = math.min(excess, tonumber(ARGV[3]))
local ids = redis.call('ZRANGE', KEYS[1], 0, excess - 1)
for _, id in ipairs(ids) do redis.call('UNLINK', ARGV[2] .. id) end
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, excess - 1)
return excess
";

/// Stores on Redis.
#[derive(Clone)]
pub struct RedisStore {
    pool: Pool,
    batcher: Batcher,
    retention: Duration,
    writes: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Flows this process has registered in the set of flows with runs.
    registered: std::sync::Arc<std::sync::RwLock<std::collections::HashSet<String>>>,
}

impl RedisStore {
    /// A store on an existing pool, keeping run records for `retention`.
    pub fn with_pool(pool: Pool, retention: Duration) -> Self {
        Self {
            batcher: Batcher::new(pool.clone()),
            pool,
            retention,
            writes: Default::default(),
            registered: Default::default(),
        }
    }
}

fn parse(value: &str) -> Result<Reservation, StorageError> {
    match value.strip_prefix(PENDING_PREFIX) {
        Some(run_id) => Ok(Reservation::InProgress {
            run_id: run_id.to_owned(),
        }),
        None => crate::codec::decode(value)
            .map(Reservation::Answered)
            .map_err(|e| StorageError::Corrupt(format!("stored answer: {e}"))),
    }
}

impl IdempotencyStore for RedisStore {
    fn reserve<'a>(
        &'a self,
        flow_id: &'a str,
        key: &'a str,
        run_id: &'a str,
    ) -> BoxFuture<'a, Result<Reservation, StorageError>> {
        Box::pin(async move {
            // SET NX ... GET: reserve, or return what is there, in one step.
            let existing: Option<String> = query(
                &self.pool,
                redis::cmd("SET")
                    .arg(idempotency_key(flow_id, key))
                    .arg(format!("{PENDING_PREFIX}{run_id}"))
                    .arg("NX")
                    .arg("GET")
                    .arg("EX")
                    .arg(IDEMPOTENCY_TTL.as_secs()),
            )
            .await?;
            match existing {
                None => Ok(Reservation::Reserved),
                Some(value) => parse(&value),
            }
        })
    }

    fn lookup<'a>(
        &'a self,
        flow_id: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Reservation>, StorageError>> {
        Box::pin(async move {
            let value: Option<String> = query(
                &self.pool,
                redis::cmd("GET").arg(idempotency_key(flow_id, key)),
            )
            .await?;
            value.as_deref().map(parse).transpose()
        })
    }

    fn complete<'a>(
        &'a self,
        flow_id: &'a str,
        key: &'a str,
        answer: &'a StoredAnswer,
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(async move {
            query::<Option<String>>(
                &self.pool,
                redis::cmd("SET")
                    .arg(idempotency_key(flow_id, key))
                    .arg(to_json(answer)?)
                    .arg("XX")
                    .arg("EX")
                    .arg(IDEMPOTENCY_TTL.as_secs()),
            )
            .await
            .map(drop)
        })
    }

    fn release<'a>(
        &'a self,
        flow_id: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(async move {
            query::<i64>(
                &self.pool,
                redis::cmd("DEL").arg(idempotency_key(flow_id, key)),
            )
            .await
            .map(drop)
        })
    }
}

impl RedisStore {
    /// Adds the commands writing `record` to `pipe`: the record itself (only
    /// when absent, with `only_if_new`; its reply is the pipeline's one
    /// non-ignored reply) and its entry in the flow's index.
    pub fn write_record(
        &self,
        pipe: &mut redis::Pipeline,
        record: &RunRecord,
        only_if_new: bool,
    ) -> Result<(), StorageError> {
        if !only_if_new && !record.kept() {
            // Its flow keeps no record of a run that ended so: any earlier
            // one (queued, running) goes.
            pipe.cmd("UNLINK").arg(run_key(&record.id)).ignore();
            pipe.cmd("ZREM")
                .arg(flow_runs_key(&record.flow))
                .arg(&record.id)
                .ignore();
            return Ok(());
        }
        let json = record.encode().map_err(unencodable)?;
        pipe.cmd("SET").arg(run_key(&record.id)).arg(json);
        if only_if_new {
            pipe.arg("NX");
        }
        pipe.arg("PX").arg(self.retention.as_millis() as u64);
        if !only_if_new {
            pipe.ignore();
        }
        self.index(pipe, record);
        Ok(())
    }

    /// Indexes a record under its flow and, now and then, drops index
    /// entries past retention and the oldest records past the flow's cap.
    fn index(&self, pipe: &mut redis::Pipeline, record: &RunRecord) {
        let index = flow_runs_key(&record.flow);
        let retention_ms = self.retention.as_millis() as u64;
        let now = now_ms();
        pipe.cmd("ZADD")
            .arg(&index)
            .arg("NX")
            .arg(now)
            .arg(&record.id)
            .ignore();
        let trim = self
            .writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .is_multiple_of(TRIM_EVERY);
        if trim {
            pipe.cmd("ZREMRANGEBYSCORE")
                .arg(&index)
                .arg("-inf")
                .arg(now.saturating_sub(retention_ms))
                .ignore();
            pipe.cmd("PEXPIRE").arg(&index).arg(retention_ms).ignore();
            if let Some(max) = record.policy.max {
                pipe.cmd("EVAL")
                    .arg(TRIM_TO_CAP)
                    .arg(1)
                    .arg(&index)
                    .arg(max)
                    .arg(RUN_KEY_PREFIX)
                    .arg(TRIM_BATCH)
                    .ignore();
            }
        }
        // The set of flows with runs, for listing across flows: written once
        // per flow and process, and again now and then in case it was lost.
        let known = self
            .registered
            .read()
            .expect("registered flows lock")
            .contains(&record.flow);
        if !known || trim {
            pipe.cmd("SADD").arg(FLOWS_KEY).arg(&record.flow).ignore();
            self.registered
                .write()
                .expect("registered flows lock")
                .insert(record.flow.clone());
        }
    }
}

fn decode(json: &str) -> Result<RunRecord, StorageError> {
    crate::codec::decode(json).map_err(|e| StorageError::Corrupt(format!("run record: {e}")))
}

impl RedisStore {
    /// Records a run as aborted for `reason`, when its record exists;
    /// the run's flow then.
    pub async fn abort(&self, run_id: &str, reason: &str) -> Result<Option<String>, StorageError> {
        let Some(mut record) = self.get(run_id).await? else {
            return Ok(None);
        };
        record.abort(reason);
        self.save(&record).await?;
        Ok(Some(record.flow))
    }
}

/// Most index entries read to fill one filtered page: a state filter that
/// matches few runs answers a short (even empty) page with a cursor after
/// this many, in tens of milliseconds, rather than reading every record.
const PAGE_SCAN_MAX: usize = 2_000;

/// A position in the run indexes: acceptance time (ms) and run id; runs
/// are ordered by both, newest first.
type Position = (u64, String);

fn parse_cursor(cursor: &str) -> Option<Position> {
    let (score, id) = cursor.split_once(':')?;
    Some((score.parse().ok()?, id.to_owned()))
}

impl RedisStore {
    /// The next index entries below `position` (from the newest when
    /// `None`), newest first, merged across `indexes`: only as many as are
    /// certainly in order, and at least one unless every index is
    /// exhausted. True when nothing is left after them.
    async fn next_entries(
        &self,
        indexes: &[String],
        position: Option<&Position>,
        filter: &RunFilter,
        batch: usize,
    ) -> Result<(Vec<Position>, bool), StorageError> {
        let min = filter.after_ms.map_or("-inf".to_owned(), |t| t.to_string());
        let (ties_at, max) = match position {
            Some((at, _)) => (at.to_string(), format!("({at}")),
            // No ties to look at: an empty range.
            None => (
                "-inf".to_owned(),
                filter
                    .before_ms
                    .map_or("+inf".to_owned(), |t| format!("({t}")),
            ),
        };
        let mut pipe = redis::pipe();
        for index in indexes {
            // Runs at the position's own time, then everything older.
            pipe.cmd("ZRANGE")
                .arg(index)
                .arg(&ties_at)
                .arg(&ties_at)
                .arg("BYSCORE")
                .arg("WITHSCORES");
            pipe.cmd("ZRANGE")
                .arg(index)
                .arg(&max)
                .arg(&min)
                .arg("BYSCORE")
                .arg("REV")
                .arg("LIMIT")
                .arg(0)
                .arg(batch)
                .arg("WITHSCORES");
        }
        let replies: Vec<Vec<(String, u64)>> = query_pipeline(&self.pool, &pipe).await?;
        let mut candidates: Vec<Position> = Vec::new();
        // The highest entry below which some index may hold more, unread.
        let mut horizon: Option<Position> = None;
        for pair in replies.chunks(2) {
            let (ties, older) = (&pair[0], &pair[1]);
            if let Some((at, after_id)) = position {
                candidates.extend(
                    ties.iter()
                        .filter(|(id, score)| score == at && id < after_id)
                        .map(|(id, score)| (*score, id.clone())),
                );
            }
            candidates.extend(older.iter().map(|(id, score)| (*score, id.clone())));
            if older.len() == batch {
                let (id, score) = older.last().expect("a full batch");
                let last = (*score, id.clone());
                if horizon.as_ref().is_none_or(|h| last > *h) {
                    horizon = Some(last);
                }
            }
        }
        candidates.sort_by(|a, b| b.cmp(a));
        if let Some(horizon) = &horizon {
            candidates.retain(|c| c >= horizon);
        }
        Ok((candidates, horizon.is_none()))
    }
}

impl RunStore for RedisStore {
    fn page<'a>(
        &'a self,
        filter: &'a RunFilter,
        cursor: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Page<RunRecord>, StorageError>> {
        Box::pin(async move {
            let indexes: Vec<String> = match &filter.flow {
                Some(flow) => vec![flow_runs_key(flow)],
                None => {
                    let flows: Vec<String> =
                        query(&self.pool, redis::cmd("SMEMBERS").arg(FLOWS_KEY)).await?;
                    flows.iter().map(|f| flow_runs_key(f)).collect()
                }
            };
            if indexes.is_empty() {
                // No run recorded yet (an empty pipeline is an error to Redis).
                return Ok(Page {
                    data: Vec::new(),
                    next_cursor: None,
                });
            }
            let mut position = match cursor {
                Some(c) => Some(parse_cursor(c).ok_or_else(|| {
                    StorageError::Corrupt(format!("cursor `{c}` is not a run position"))
                })?),
                None => None,
            };
            let batch = (limit * 2).clamp(50, 500);
            let mut data = Vec::new();
            let mut scanned = 0;
            loop {
                let (entries, exhausted) = self
                    .next_entries(&indexes, position.as_ref(), filter, batch)
                    .await?;
                if entries.is_empty() {
                    return Ok(Page {
                        data,
                        next_cursor: None,
                    });
                }
                let keys: Vec<String> = entries.iter().map(|(_, id)| run_key(id)).collect();
                let values: Vec<Option<String>> =
                    query(&self.pool, redis::cmd("MGET").arg(keys)).await?;
                for (entry, value) in entries.into_iter().zip(values) {
                    scanned += 1;
                    let here = format!("{}:{}", entry.0, entry.1);
                    position = Some(entry);
                    // An index entry may outlive its record by a little.
                    let Some(json) = value else { continue };
                    let record = decode(&json)?;
                    if filter.status.is_none_or(|s| s == record.status) {
                        data.push(record);
                        if data.len() == limit {
                            return Ok(Page {
                                data,
                                next_cursor: Some(here),
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
                if scanned >= PAGE_SCAN_MAX {
                    let (at, id) = position.as_ref().expect("scanned some");
                    return Ok(Page {
                        data,
                        next_cursor: Some(format!("{at}:{id}")),
                    });
                }
            }
        })
    }

    fn save(&self, record: &RunRecord) -> BoxFuture<'static, Result<(), StorageError>> {
        let mut pipe = redis::pipe();
        let encoded = self.write_record(&mut pipe, record, false);
        let batcher = self.batcher.clone();
        Box::pin(async move {
            encoded?;
            // Batched with other writes: a busy gateway makes one round trip for many records.
            batcher.run(&pipe).await
        })
    }

    fn get<'a>(
        &'a self,
        run_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<RunRecord>, StorageError>> {
        Box::pin(async move {
            let json: Option<String> =
                query(&self.pool, redis::cmd("GET").arg(run_key(run_id))).await?;
            json.as_deref().map(decode).transpose()
        })
    }

    fn list<'a>(
        &'a self,
        flow_id: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<RunRecord>, StorageError>> {
        Box::pin(async move {
            let ids: Vec<String> = query(
                &self.pool,
                redis::cmd("ZRANGE")
                    .arg(flow_runs_key(flow_id))
                    .arg("+inf")
                    .arg("-inf")
                    .arg("BYSCORE")
                    .arg("REV")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit.max(1)),
            )
            .await?;
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            let keys: Vec<String> = ids.iter().map(|id| run_key(id)).collect();
            let values: Vec<Option<String>> =
                query(&self.pool, redis::cmd("MGET").arg(keys)).await?;
            values
                .into_iter()
                .flatten()
                .map(|json| decode(&json))
                .collect()
        })
    }
}
