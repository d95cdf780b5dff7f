//! [`RunQueue`] on Redis Streams; its keys are in [`super::keys`].

use std::sync::Arc;
use std::time::Duration;

use deadpool_redis::Pool;
use deadpool_redis::redis;
use deadpool_redis::redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};

use super::keys::{DEAD_LETTER_KEY, DELAYED_KEY, GROUP, STREAM_KEY};
use super::{Batcher, RedisStore, query, query_pipeline, to_json, unencodable};
use crate::backend::{BoxFuture, Delivery, RunQueue, StorageError, now_ms};
use crate::engine::RunInput;
use crate::lifecycle::Lifecycle;
use crate::record::RunRecord;

/// Moves due entries from the delayed set into the stream, atomically.
const PROMOTE_SCRIPT: &str = r#"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, input in ipairs(due) do
  local run = string.match(input, '^{"run_id":"([^"]*)"') or ''
  redis.call('XADD', KEYS[2], '*', 'input', input, 'run', run, 'accepted_at', ARGV[1])
  redis.call('ZREM', KEYS[1], input)
end
return #due
"#;
/// Entries kept in the dead-letter list.
const DEAD_LETTER_MAX: i64 = 10_000;
/// [`RunQueue`] on Redis Streams.
#[derive(Clone)]
pub struct RedisQueue {
    pool: Pool,
    records: RedisStore,
    batcher: Batcher,
    /// Announces runs dead-lettered for an undecodable entry, when set.
    lifecycle: Option<Arc<Lifecycle>>,
}

impl RedisQueue {
    /// A queue on an existing pool; run records written together with queue
    /// operations (the first on enqueue, the last on acknowledgement) go
    /// through `records`.
    pub fn with_pool(pool: Pool, records: RedisStore) -> Self {
        Self {
            batcher: Batcher::new(pool.clone()),
            pool,
            records,
            lifecycle: None,
        }
    }

    /// Announces runs whose entry could not be decoded as ended `aborted`
    /// through `lifecycle`, like every other run.
    pub fn with_lifecycle(mut self, lifecycle: Arc<Lifecycle>) -> Self {
        self.lifecycle = Some(lifecycle);
        self
    }

    /// Creates the consumer group if it does not exist yet.
    pub async fn ensure_group(&self) -> Result<(), StorageError> {
        let created = query::<()>(
            &self.pool,
            redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(STREAM_KEY)
                .arg(GROUP)
                .arg("0")
                .arg("MKSTREAM"),
        )
        .await;
        match created {
            Err(StorageError::Unavailable(e)) if e.contains("BUSYGROUP") => Ok(()),
            other => other,
        }
    }

    async fn read_group(
        &self,
        consumer: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, StorageError> {
        let reply = query::<Option<StreamReadReply>>(
            &self.pool,
            redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(GROUP)
                .arg(consumer)
                .arg("COUNT")
                .arg(max)
                .arg("BLOCK")
                .arg(wait.as_millis() as u64)
                .arg("STREAMS")
                .arg(STREAM_KEY)
                .arg(">"),
        )
        .await;
        let reply = match reply {
            // The stream or group vanished (a Redis without persistence restarted).
            Err(StorageError::Unavailable(e)) if e.contains("NOGROUP") => {
                self.ensure_group().await?;
                return Ok(Vec::new());
            }
            other => other?,
        };
        let entries = reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids);
        Ok(self.decode_all(entries, false).await)
    }

    /// Decodes a batch of entries. One that cannot be decoded is
    /// dead-lettered at once, so it never holds up the others.
    async fn decode_all(
        &self,
        entries: impl IntoIterator<Item = StreamId>,
        taken_over: bool,
    ) -> Vec<Delivery> {
        let mut deliveries = Vec::new();
        for entry in entries {
            match decode(&entry, taken_over) {
                Ok(delivery) => deliveries.push(delivery),
                Err(e) => self.bury(entry, e).await,
            }
        }
        deliveries
    }

    /// Dead-letters an entry no worker can decode, and records its run (when
    /// the entry names it) as aborted with the reason.
    async fn bury(&self, entry: StreamId, error: StorageError) {
        let run_id: Option<String> = entry.get("run").filter(|id: &String| !id.is_empty());
        let reason = format!("dead-lettered: the queued run cannot be decoded ({error})");
        tracing::error!(entry = %entry.id, run_id, %reason, "queue entry dead-lettered");
        // The input whole again, when its head still decodes.
        let input: Option<String> = entry.get("input");
        let input = input.map(|head| {
            RunInput::from_queued_parts(&head, entry.get("raw"))
                .ok()
                .and_then(|whole| to_json(&whole).ok())
                .unwrap_or(head)
        });
        let letter = dead_letter_json(&entry.id, run_id.as_deref(), &reason, input.as_deref());
        if let Err(e) = query_pipeline::<()>(&self.pool, &move_to_dead(&letter, &entry.id)).await {
            // Still pending: the next worker to see it tries again.
            tracing::warn!(error = %e, entry = %entry.id, "could not dead-letter an entry");
            return;
        }
        let Some(run_id) = run_id else { return };
        match self.records.abort(&run_id, &reason).await {
            Ok(Some(flow)) => {
                if let Some(lifecycle) = &self.lifecycle {
                    let aborted = crate::engine::RunState::Aborted;
                    lifecycle.ended(&run_id, &flow, aborted, Duration::ZERO, Some(&reason), None);
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, run_id, "could not record a dead-lettered run as aborted")
            }
        }
    }
}

/// One dead letter: shallow JSON that always encodes and decodes.
fn dead_letter_json(
    entry: &str,
    run_id: Option<&str>,
    reason: &str,
    input: Option<&str>,
) -> String {
    serde_json::json!({ "entry": entry, "run_id": run_id, "reason": reason, "input": input })
        .to_string()
}

/// One transaction (every key shares a slot) that moves entry `id` to the
/// dead-letter list as `letter`.
fn move_to_dead(letter: &str, id: &str) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    pipe.atomic()
        .cmd("LPUSH")
        .arg(DEAD_LETTER_KEY)
        .arg(letter)
        .ignore()
        .cmd("LTRIM")
        .arg(DEAD_LETTER_KEY)
        .arg(0)
        .arg(DEAD_LETTER_MAX - 1)
        .ignore();
    acknowledge(&mut pipe, id);
    pipe
}

/// Adds the end of a delivery to `pipe`: acknowledged, and removed from the
/// stream so it stays short.
fn acknowledge(pipe: &mut redis::Pipeline, id: &str) {
    pipe.cmd("XACK").arg(STREAM_KEY).arg(GROUP).arg(id).ignore();
    pipe.cmd("XDEL").arg(STREAM_KEY).arg(id).ignore();
}

fn decode(entry: &StreamId, taken_over: bool) -> Result<Delivery, StorageError> {
    let corrupt =
        |e: crate::codec::CodecError| StorageError::Corrupt(format!("entry {}: {e}", entry.id));
    let input: String = entry
        .get("input")
        .ok_or_else(|| StorageError::Corrupt(format!("entry {} has no input", entry.id)))?;
    let input = RunInput::from_queued_parts(&input, entry.get("raw")).map_err(corrupt)?;
    let answer = match entry.get::<String>("answer") {
        Some(json) => crate::codec::decode(&json).map_err(corrupt)?,
        None => None,
    };
    Ok(Delivery {
        answer,
        accepted_at_ms: entry.get("accepted_at").unwrap_or(0),
        id: entry.id.clone(),
        input,
        taken_over,
    })
}

impl RunQueue for RedisQueue {
    fn prepare(&self) -> BoxFuture<'_, Result<(), StorageError>> {
        Box::pin(self.ensure_group())
    }

    fn enqueue<'a>(
        &'a self,
        input: &'a RunInput,
        record: Option<&'a RunRecord>,
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(async move {
            let (head, raw) = input.queued_parts().map_err(unencodable)?;
            let mut pipe = redis::pipe();
            pipe.cmd("XADD")
                .arg(STREAM_KEY)
                .arg("*")
                .arg("input")
                .arg(head);
            if let Some(raw) = raw {
                pipe.arg("raw").arg(raw);
            }
            pipe.arg("run")
                .arg(&input.run_id)
                .arg("accepted_at")
                .arg(now_ms());
            if let Some(record) = record {
                if let Some(answer) = &record.response {
                    pipe.arg("answer").arg(to_json(answer)?);
                }
                self.records.write_record(&mut pipe, record, true)?;
            }
            self.batcher.run(&pipe).await
        })
    }

    fn claim<'a>(
        &'a self,
        consumer: &'a str,
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'a, Result<Vec<Delivery>, StorageError>> {
        Box::pin(self.read_group(consumer, max, wait))
    }

    fn take_over<'a>(
        &'a self,
        consumer: &'a str,
        idle: Duration,
        max: usize,
    ) -> BoxFuture<'a, Result<Vec<Delivery>, StorageError>> {
        Box::pin(async move {
            let reply: StreamAutoClaimReply = query(
                &self.pool,
                redis::cmd("XAUTOCLAIM")
                    .arg(STREAM_KEY)
                    .arg(GROUP)
                    .arg(consumer)
                    .arg(idle.as_millis() as u64)
                    .arg("0-0")
                    .arg("COUNT")
                    .arg(max),
            )
            .await?;
            Ok(self.decode_all(reply.claimed, true).await)
        })
    }

    fn extend_leases<'a>(
        &'a self,
        consumer: &'a str,
        ids: &'a [String],
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(async move {
            if ids.is_empty() {
                return Ok(());
            }
            query::<redis::Value>(
                &self.pool,
                redis::cmd("XCLAIM")
                    .arg(STREAM_KEY)
                    .arg(GROUP)
                    .arg(consumer)
                    .arg(0)
                    .arg(ids)
                    .arg("JUSTID"),
            )
            .await
            .map(drop)
        })
    }

    fn complete<'a>(
        &'a self,
        id: &'a str,
        record: Option<&'a RunRecord>,
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(async move {
            let mut pipe = redis::pipe();
            if let Some(record) = record {
                self.records.write_record(&mut pipe, record, false)?;
            }
            acknowledge(&mut pipe, id);
            self.batcher.run(&pipe).await
        })
    }

    fn dead_letter<'a>(
        &'a self,
        delivery: &'a Delivery,
        reason: &'a str,
        record: &'a RunRecord,
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(async move {
            let input = to_json(&delivery.input)?;
            let letter = dead_letter_json(
                &delivery.id,
                Some(&delivery.input.run_id),
                reason,
                Some(&input),
            );
            let mut pipe = move_to_dead(&letter, &delivery.id);
            self.records.write_record(&mut pipe, record, false)?;
            query_pipeline(&self.pool, &pipe).await
        })
    }

    fn depth(&self) -> BoxFuture<'_, Result<u64, StorageError>> {
        Box::pin(async move {
            let (queued, waiting): (u64, u64) = query_pipeline(
                &self.pool,
                redis::pipe()
                    .cmd("XLEN")
                    .arg(STREAM_KEY)
                    .cmd("ZCARD")
                    .arg(DELAYED_KEY),
            )
            .await?;
            Ok(queued + waiting)
        })
    }

    fn retry_later<'a>(
        &'a self,
        id: &'a str,
        input: &'a RunInput,
        due_ms: u64,
        record: Option<&'a RunRecord>,
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(async move {
            let json = to_json(input)?;
            let mut pipe = redis::pipe();
            // One slot: the hand-over from the stream to the delayed set is one transaction.
            pipe.atomic();
            pipe.cmd("ZADD")
                .arg(DELAYED_KEY)
                .arg(due_ms)
                .arg(json)
                .ignore();
            if let Some(record) = record {
                self.records.write_record(&mut pipe, record, false)?;
            }
            acknowledge(&mut pipe, id);
            query_pipeline(&self.pool, &pipe).await
        })
    }

    fn requeue_due_retries(&self, max: usize) -> BoxFuture<'_, Result<usize, StorageError>> {
        Box::pin(async move {
            query(
                &self.pool,
                redis::cmd("EVAL")
                    .arg(PROMOTE_SCRIPT)
                    .arg(2)
                    .arg(DELAYED_KEY)
                    .arg(STREAM_KEY)
                    .arg(now_ms())
                    .arg(max),
            )
            .await
        })
    }
}
