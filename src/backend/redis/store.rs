//! [`IdempotencyStore`] and [`RunStore`] on Redis; their keys are in
//! [`super::keys`].

use std::time::Duration;

use std::collections::HashSet;
use std::sync::RwLock;

use deadpool_redis::redis;

use super::{Batcher, Pool, query, query_all, to_json, unencodable};
use crate::backend::control::Page;
use crate::backend::webhooks::OutboxEvent;
use crate::backend::{
    BoxFuture, IDEMPOTENCY_TTL, IdempotencyStore, Reservation, RunFilter, RunStore, StorageError,
    StoredAnswer, now_ms,
};
use crate::record::RunRecord;

const PENDING_PREFIX: &str = "pending:";

/// Index trimming runs on one record write in this many: expired entries
/// only cost a little space until then, and every write stays cheap. With
/// several partitions each is trimmed that many times more often, so the
/// rate stays the same and a flow is never more than this over its cap.
const TRIM_EVERY: u64 = 64;

/// Most records one trim deletes to bring a flow back under its cap; the
/// next trim goes on, so no single call holds Redis for long.
const TRIM_BATCH: u64 = 1000;

/// Deletes a flow's oldest records beyond its cap. KEYS[1]: the flow's
/// index (in one partition); ARGV: the cap, the partition's run key prefix
/// (the records share the index's slot), the most to delete now.
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
    /// Record writes by partition, for trimming.
    writes: std::sync::Arc<[std::sync::atomic::AtomicU64]>,
    /// Flows this process has registered in each partition's set of flows
    /// with runs.
    registered: std::sync::Arc<[RwLock<HashSet<String>>]>,
}

impl RedisStore {
    /// A store on an existing pool, keeping run records for `retention`.
    pub fn with_pool(pool: Pool, retention: Duration) -> Self {
        let writes = (0..pool.layout().count())
            .map(|_| Default::default())
            .collect();
        let registered = (0..pool.layout().count())
            .map(|_| RwLock::default())
            .collect();
        Self {
            batcher: Batcher::new(pool.clone()),
            pool,
            retention,
            writes,
            registered,
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
                    .arg(self.pool.layout().idempotency_key(flow_id, key))
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
                redis::cmd("GET").arg(self.pool.layout().idempotency_key(flow_id, key)),
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
                    .arg(self.pool.layout().idempotency_key(flow_id, key))
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
                redis::cmd("DEL").arg(self.pool.layout().idempotency_key(flow_id, key)),
            )
            .await
            .map(drop)
        })
    }
}

impl RedisStore {
    /// Adds the commands writing `record` to `pipe`: the record itself (only
    /// when absent, with `only_if_new`; its reply is the pipeline's one
    /// non-ignored reply) and its entry in the flow's index. Every key is
    /// in the partition of the record's run (see [`super::Layout::partition_of`]),
    /// which it returns.
    pub fn write_record(
        &self,
        pipe: &mut redis::Pipeline,
        record: &RunRecord,
        only_if_new: bool,
    ) -> Result<usize, StorageError> {
        let layout = self.pool.layout();
        let p = layout.partition_of(&record.id);
        let run_key = layout.partition(p).run_key(&record.id);
        if !only_if_new && !record.kept() {
            // Its flow keeps no record of a run that ended so: any earlier
            // one (queued, running) goes.
            pipe.cmd("UNLINK").arg(run_key).ignore();
            pipe.cmd("ZREM")
                .arg(layout.partition(p).flow_runs(&record.flow))
                .arg(&record.id)
                .ignore();
            return Ok(p);
        }
        let json = record.encode().map_err(unencodable)?;
        pipe.cmd("SET").arg(run_key).arg(json);
        if only_if_new {
            pipe.arg("NX");
        }
        pipe.arg("PX").arg(self.retention.as_millis() as u64);
        if !only_if_new {
            pipe.ignore();
        }
        self.index(pipe, p, record);
        Ok(p)
    }

    /// Indexes a record under its flow in partition `p` and, now and then,
    /// drops index entries past retention and the oldest records past the
    /// flow's cap. The cap is split evenly over the partitions, which runs
    /// fill evenly.
    fn index(&self, pipe: &mut redis::Pipeline, p: usize, record: &RunRecord) {
        let layout = self.pool.layout();
        let part = layout.partition(p);
        let index = part.flow_runs(&record.flow);
        let retention_ms = self.retention.as_millis() as u64;
        let now = now_ms();
        pipe.cmd("ZADD")
            .arg(&index)
            .arg("NX")
            .arg(now)
            .arg(&record.id)
            .ignore();
        let trim_every = (TRIM_EVERY / layout.count() as u64).max(1);
        let trim = self.writes[p]
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .is_multiple_of(trim_every);
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
                    .arg(max.div_ceil(layout.count() as u64))
                    .arg(&part.run_prefix)
                    .arg(TRIM_BATCH)
                    .ignore();
            }
        }
        // The set of flows with runs, for listing across flows: written once
        // per flow and process, and again now and then in case it was lost.
        let known = self.registered[p]
            .read()
            .expect("registered flows lock")
            .contains(&record.flow);
        if !known || trim {
            pipe.cmd("SADD").arg(&part.flows).arg(&record.flow).ignore();
            self.registered[p]
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
        let mut ranges = Vec::with_capacity(indexes.len() * 2);
        for index in indexes {
            // Runs at the position's own time, then everything older.
            let mut ties = redis::cmd("ZRANGE");
            ties.arg(index)
                .arg(&ties_at)
                .arg(&ties_at)
                .arg("BYSCORE")
                .arg("WITHSCORES");
            let mut older = redis::cmd("ZRANGE");
            older
                .arg(index)
                .arg(&max)
                .arg(&min)
                .arg("BYSCORE")
                .arg("REV")
                .arg("LIMIT")
                .arg(0)
                .arg(batch)
                .arg("WITHSCORES");
            ranges.extend([ties, older]);
        }
        let replies: Vec<Vec<(String, u64)>> = query_all(&self.pool, &ranges).await?;
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

impl RedisStore {
    /// The run indexes of flow `flow` in every partition, or of every flow
    /// with runs when `None`.
    async fn indexes(&self, flow: Option<&str>) -> Result<Vec<String>, StorageError> {
        let layout = self.pool.layout();
        if let Some(flow) = flow {
            return Ok(layout.all().map(|(_, part)| part.flow_runs(flow)).collect());
        }
        let members: Vec<redis::Cmd> = layout
            .all()
            .map(|(_, part)| redis::cmd("SMEMBERS").arg(&part.flows).clone())
            .collect();
        let flows: Vec<Vec<String>> = query_all(&self.pool, &members).await?;
        Ok(layout
            .all()
            .zip(flows)
            .flat_map(|((_, part), flows)| flows.into_iter().map(|f| part.flow_runs(&f)))
            .collect())
    }

    /// The stored records of runs `ids`, in order (`None` where gone).
    async fn records_of(
        &self,
        ids: impl Iterator<Item = &str>,
    ) -> Result<Vec<Option<String>>, StorageError> {
        let keys: Vec<String> = ids.map(|id| self.pool.layout().run_key(id)).collect();
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        // On a cluster the client splits MGET by slot and puts the replies back in order.
        query(&self.pool, redis::cmd("MGET").arg(keys)).await
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
            let indexes = self.indexes(filter.flow.as_deref()).await?;
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
                let ids = entries.iter().map(|(_, id)| id.as_str());
                let values = self.records_of(ids).await?;
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

    fn save_with(
        &self,
        record: &RunRecord,
        events: Vec<OutboxEvent>,
    ) -> BoxFuture<'static, Result<(), StorageError>> {
        let mut pipe = redis::pipe();
        let written = self.write_record(&mut pipe, record, false);
        if let Ok(p) = written {
            super::webhooks::add_events(&mut pipe, self.pool.layout().partition(p), &events);
        }
        let batcher = self.batcher.clone();
        Box::pin(async move {
            let p = written?;
            // Batched with other writes: a busy gateway makes one round trip for many records.
            batcher.run(p, &pipe).await
        })
    }

    fn get<'a>(
        &'a self,
        run_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<RunRecord>, StorageError>> {
        Box::pin(async move {
            let key = self.pool.layout().run_key(run_id);
            let json: Option<String> = query(&self.pool, redis::cmd("GET").arg(key)).await?;
            json.as_deref().map(decode).transpose()
        })
    }

    fn list<'a>(
        &'a self,
        flow_id: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<RunRecord>, StorageError>> {
        Box::pin(async move {
            let newest: Vec<redis::Cmd> = self
                .pool
                .layout()
                .all()
                .map(|(_, part)| {
                    redis::cmd("ZRANGE")
                        .arg(part.flow_runs(flow_id))
                        .arg("+inf")
                        .arg("-inf")
                        .arg("BYSCORE")
                        .arg("REV")
                        .arg("LIMIT")
                        .arg(0)
                        .arg(limit.max(1))
                        .arg("WITHSCORES")
                        .clone()
                })
                .collect();
            let replies: Vec<Vec<(String, u64)>> = query_all(&self.pool, &newest).await?;
            let mut entries: Vec<(u64, String)> = replies
                .into_iter()
                .flatten()
                .map(|(id, at)| (at, id))
                .collect();
            entries.sort_by(|a, b| b.cmp(a));
            entries.truncate(limit.max(1));
            let values = self
                .records_of(entries.iter().map(|(_, id)| id.as_str()))
                .await?;
            values
                .into_iter()
                .flatten()
                .map(|json| decode(&json))
                .collect()
        })
    }
}
