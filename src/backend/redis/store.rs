//! [`IdempotencyStore`] and [`RunStore`] on Redis; their keys are in
//! [`super::keys`].

use std::time::Duration;

use deadpool_redis::Pool;
use deadpool_redis::redis;

use super::keys::{ALL_RUNS_KEY, flow_runs_key, idempotency_key, run_key};
use super::{Batcher, query, to_json};
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

/// Stores on Redis.
#[derive(Clone)]
pub struct RedisStore {
    pool: Pool,
    batcher: Batcher,
    retention: Duration,
    writes: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl RedisStore {
    /// A store on an existing pool, keeping run records for `retention`.
    pub fn with_pool(pool: Pool, retention: Duration) -> Self {
        Self {
            batcher: Batcher::new(pool.clone()),
            pool,
            retention,
            writes: Default::default(),
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
        let json = to_json(record)?;
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

    /// Indexes a record under its flow and, now and then, drops index entries past retention.
    fn index(&self, pipe: &mut redis::Pipeline, record: &RunRecord) {
        let flow_index = flow_runs_key(&record.flow);
        let retention_ms = self.retention.as_millis() as u64;
        let now = now_ms();
        let trim = self
            .writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .is_multiple_of(TRIM_EVERY);
        for index in [flow_index.as_str(), ALL_RUNS_KEY] {
            pipe.cmd("ZADD")
                .arg(index)
                .arg("NX")
                .arg(now)
                .arg(&record.id)
                .ignore();
            if trim {
                pipe.cmd("ZREMRANGEBYSCORE")
                    .arg(index)
                    .arg("-inf")
                    .arg(now.saturating_sub(retention_ms))
                    .ignore();
                pipe.cmd("PEXPIRE").arg(index).arg(retention_ms).ignore();
            }
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

/// Most index entries read to fill one filtered page.
const PAGE_SCAN_MAX: usize = 5_000;

/// A position in a run index: the score (ms) and the run id there.
fn parse_cursor(cursor: &str) -> Option<(u64, &str)> {
    let (score, id) = cursor.split_once(':')?;
    Some((score.parse().ok()?, id))
}

impl RunStore for RedisStore {
    fn page<'a>(
        &'a self,
        filter: &'a RunFilter,
        cursor: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Page<RunRecord>, StorageError>> {
        Box::pin(async move {
            let index = match &filter.flow {
                Some(flow) => flow_runs_key(flow),
                None => ALL_RUNS_KEY.to_owned(),
            };
            let mut position: Option<(u64, String)> = match cursor {
                Some(c) => {
                    let (score, id) = parse_cursor(c).ok_or_else(|| {
                        StorageError::Corrupt(format!("cursor `{c}` is not a run position"))
                    })?;
                    Some((score, id.to_owned()))
                }
                None => None,
            };
            let min = filter.after_ms.map_or("-inf".to_owned(), |t| t.to_string());
            let batch = (limit * 2).clamp(50, 500);
            let mut data = Vec::new();
            let mut scanned = 0;
            // Skips a run of ties longer than a batch, all at or before the cursor.
            let mut offset = 0;
            loop {
                let max = match (&position, filter.before_ms) {
                    (Some((score, _)), _) => score.to_string(),
                    (None, Some(before)) => format!("({before}"),
                    (None, None) => "+inf".to_owned(),
                };
                // Entries at the cursor's score come back too (ties are in
                // reverse id order); the ones at or before the cursor are skipped.
                let entries: Vec<(String, u64)> = query(
                    &self.pool,
                    redis::cmd("ZRANGE")
                        .arg(&index)
                        .arg(&max)
                        .arg(&min)
                        .arg("BYSCORE")
                        .arg("REV")
                        .arg("LIMIT")
                        .arg(offset)
                        .arg(batch)
                        .arg("WITHSCORES"),
                )
                .await?;
                let exhausted = entries.len() < batch;
                let fresh: Vec<(String, u64)> = entries
                    .into_iter()
                    .filter(|(id, score)| match &position {
                        Some((at, after_id)) => score < at || (score == at && id < after_id),
                        None => filter.before_ms.is_none_or(|b| *score < b),
                    })
                    .collect();
                if fresh.is_empty() {
                    if exhausted {
                        return Ok(Page {
                            data,
                            next_cursor: None,
                        });
                    }
                    offset += batch;
                    continue;
                }
                offset = 0;
                let keys: Vec<String> = fresh.iter().map(|(id, _)| run_key(id)).collect();
                let values: Vec<Option<String>> =
                    query(&self.pool, redis::cmd("MGET").arg(keys)).await?;
                for ((id, score), value) in fresh.into_iter().zip(values) {
                    scanned += 1;
                    position = Some((score, id));
                    // An index entry may outlive its record by a little.
                    let Some(json) = value else { continue };
                    let record = decode(&json)?;
                    if filter.status.is_none_or(|s| s == record.status) {
                        data.push(record);
                        if data.len() == limit {
                            let (score, id) = position.as_ref().expect("just set");
                            return Ok(Page {
                                data,
                                next_cursor: Some(format!("{score}:{id}")),
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
                    let (score, id) = position.as_ref().expect("scanned some");
                    return Ok(Page {
                        data,
                        next_cursor: Some(format!("{score}:{id}")),
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
