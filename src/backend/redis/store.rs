//! [`IdempotencyStore`] and [`RunStore`] on Redis; their keys are in
//! [`super::keys`].

use std::time::Duration;

use deadpool_redis::Pool;
use deadpool_redis::redis;

use super::keys::{flow_runs_key, idempotency_key, run_key};
use super::{Batcher, query, to_json};
use crate::backend::{
    BoxFuture, IDEMPOTENCY_TTL, IdempotencyStore, Reservation, RunStore, StorageError,
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
        let index = flow_runs_key(&record.flow);
        let retention_ms = self.retention.as_millis() as u64;
        pipe.cmd("ZADD")
            .arg(&index)
            .arg("NX")
            .arg(now_ms())
            .arg(&record.id)
            .ignore();
        let writes = self
            .writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if writes.is_multiple_of(TRIM_EVERY) {
            pipe.cmd("ZREMRANGEBYSCORE")
                .arg(&index)
                .arg("-inf")
                .arg(now_ms().saturating_sub(retention_ms))
                .ignore();
            pipe.cmd("PEXPIRE").arg(&index).arg(retention_ms).ignore();
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

impl RunStore for RedisStore {
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
