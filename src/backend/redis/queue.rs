//! [`RunQueue`] on Redis Streams, one stream per partition; its keys are in
//! [`super::keys`].

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use deadpool_redis::redis;
use deadpool_redis::redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};

use super::keys::{GROUP, Partition};
use super::webhooks::add_events;
use super::{Batcher, Pool, RedisStore, query, query_all, query_pipeline, to_json, unencodable};
use crate::backend::webhooks::OutboxEvent;
use crate::backend::{BoxFuture, Buried, Claimed, Delivery, RunQueue, StorageError, now_ms};
use crate::engine::RunInput;
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
/// Entries kept in each partition's dead-letter list.
const DEAD_LETTER_MAX: i64 = 10_000;
/// Longest block on one partition's stream when every partition was empty:
/// a run arriving in another partition meanwhile waits at most this long.
const PARTITIONED_BLOCK: Duration = Duration::from_millis(50);
/// [`RunQueue`] on Redis Streams.
#[derive(Clone)]
pub struct RedisQueue {
    pool: Pool,
    records: RedisStore,
    batcher: Batcher,
    /// Where the next sweep of the partitions starts, so none is favoured.
    sweep: Arc<AtomicUsize>,
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
            sweep: Arc::default(),
        }
    }

    /// Creates every partition's consumer group that does not exist yet.
    pub async fn ensure_group(&self) -> Result<(), StorageError> {
        for p in 0..self.pool.layout().count() {
            self.ensure_group_of(p).await?;
        }
        Ok(())
    }

    async fn ensure_group_of(&self, p: usize) -> Result<(), StorageError> {
        let created = query::<()>(
            &self.pool,
            redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(&self.part(p).stream)
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

    fn part(&self, p: usize) -> &Partition {
        self.pool.layout().partition(p)
    }

    /// The partition and entry of delivery `id`.
    fn entry_of<'a>(&self, id: &'a str) -> Result<(usize, &'a str), StorageError> {
        self.pool
            .layout()
            .entry_of(id)
            .ok_or_else(|| StorageError::Corrupt(format!("`{id}` is no queue entry here")))
    }

    /// Every partition once, from a start that moves on with each call.
    fn sweep_order(&self) -> impl Iterator<Item = usize> {
        let n = self.pool.layout().count();
        let start = self.sweep.fetch_add(1, Ordering::Relaxed) % n;
        (0..n).map(move |i| (start + i) % n)
    }

    /// Up to `max` new entries: on a single Redis one read that blocks up
    /// to `wait`; on a cluster a sweep of the partitions without blocking,
    /// then, when all were empty, a short block on one of them.
    async fn read_group(
        &self,
        consumer: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Claimed, StorageError> {
        if self.pool.layout().count() == 1 {
            return self.read_partition(0, consumer, max, Some(wait)).await;
        }
        let order: Vec<usize> = self.sweep_order().collect();
        let found = self
            .sweep(order.iter().copied(), max, |p, left| {
                self.read_partition(p, consumer, left, None)
            })
            .await?;
        if !found.runs.is_empty() || !found.buried.is_empty() {
            return Ok(found);
        }
        let block = wait.min(PARTITIONED_BLOCK);
        self.read_partition(order[0], consumer, max, Some(block))
            .await
    }

    /// Up to `max` deliveries gathered from the partitions in `order`,
    /// `read(p, left)` reading at most `left` from partition `p`. A
    /// partition that fails (its node down, a failover under way) holds up
    /// none of the others: what was read is this consumer's now and is
    /// handed out; the first failure is returned only when nothing was.
    async fn sweep<F, Fut>(
        &self,
        order: impl Iterator<Item = usize>,
        max: usize,
        read: F,
    ) -> Result<Claimed, StorageError>
    where
        F: Fn(usize, usize) -> Fut,
        Fut: std::future::Future<Output = Result<Claimed, StorageError>>,
    {
        let mut deliveries = Claimed::default();
        let mut failed = None;
        for p in order {
            if deliveries.runs.len() >= max {
                break;
            }
            match read(p, max - deliveries.runs.len()).await {
                Ok(more) => deliveries.extend(more),
                Err(e) => {
                    tracing::warn!(error = %e, partition = p, "cannot read a queue partition");
                    failed.get_or_insert(e);
                }
            }
        }
        match failed {
            Some(e) if deliveries.runs.is_empty() && deliveries.buried.is_empty() => Err(e),
            _ => Ok(deliveries),
        }
    }

    /// Up to `max` new entries of partition `p`, blocking up to `block` for
    /// the first when given.
    async fn read_partition(
        &self,
        p: usize,
        consumer: &str,
        max: usize,
        block: Option<Duration>,
    ) -> Result<Claimed, StorageError> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(GROUP)
            .arg(consumer)
            .arg("COUNT")
            .arg(max);
        if let Some(block) = block {
            cmd.arg("BLOCK").arg(block.as_millis() as u64);
        }
        cmd.arg("STREAMS").arg(&self.part(p).stream).arg(">");
        let reply = match query::<Option<StreamReadReply>>(&self.pool, &cmd).await {
            // The stream or group vanished (a Redis without persistence restarted).
            Err(StorageError::Unavailable(e)) if e.contains("NOGROUP") => {
                self.ensure_group_of(p).await?;
                return Ok(Claimed::default());
            }
            other => other?,
        };
        let entries = reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids);
        Ok(self.decode_all(p, entries, false).await)
    }

    /// Decodes a batch of partition `p`'s entries. One that cannot be
    /// decoded is dead-lettered at once, so it never holds up the others,
    /// and handed back apart to be announced.
    async fn decode_all(
        &self,
        p: usize,
        entries: impl IntoIterator<Item = StreamId>,
        taken_over: bool,
    ) -> Claimed {
        let mut claimed = Claimed::default();
        for entry in entries {
            let id = self.pool.layout().delivery_id(p, &entry.id);
            match decode(id, &entry, taken_over) {
                Ok(delivery) => claimed.runs.push(delivery),
                Err(e) => claimed.buried.extend(self.bury(p, entry, e).await),
            }
        }
        claimed
    }

    /// Dead-letters an entry of partition `p` no worker can decode, and
    /// records its run (when the entry names it) as aborted with the reason.
    /// `None` when the entry stays pending (the next worker to see it tries
    /// again) or names no run.
    async fn bury(&self, p: usize, entry: StreamId, error: StorageError) -> Option<Buried> {
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
        let pipe = move_to_dead(self.part(p), &letter, &entry.id);
        if let Err(e) = query_pipeline::<()>(&self.pool, &pipe).await {
            // Still pending: the next worker to see it tries again.
            tracing::warn!(error = %e, entry = %entry.id, "could not dead-letter an entry");
            return None;
        }
        let run_id = run_id?;
        let flow = match self.records.abort(&run_id, &reason).await {
            Ok(flow) => flow,
            Err(e) => {
                tracing::warn!(error = %e, run_id, "could not record a dead-lettered run as aborted");
                None
            }
        };
        Some(Buried {
            run_id,
            flow,
            reason,
        })
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

/// One transaction (every key shares the partition's slot) that moves entry
/// `entry` of `part` to its dead-letter list as `letter`.
fn move_to_dead(part: &Partition, letter: &str, entry: &str) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    pipe.atomic()
        .cmd("LPUSH")
        .arg(&part.dead)
        .arg(letter)
        .ignore()
        .cmd("LTRIM")
        .arg(&part.dead)
        .arg(0)
        .arg(DEAD_LETTER_MAX - 1)
        .ignore();
    acknowledge(&mut pipe, part, entry);
    pipe
}

/// Adds the end of a delivery to `pipe`: acknowledged, and removed from the
/// stream so it stays short.
fn acknowledge(pipe: &mut redis::Pipeline, part: &Partition, entry: &str) {
    pipe.cmd("XACK")
        .arg(&part.stream)
        .arg(GROUP)
        .arg(entry)
        .ignore();
    pipe.cmd("XDEL").arg(&part.stream).arg(entry).ignore();
}

fn decode(id: String, entry: &StreamId, taken_over: bool) -> Result<Delivery, StorageError> {
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
        id,
        input,
        taken_over,
    })
}

impl RunQueue for RedisQueue {
    fn prepare(&self) -> BoxFuture<'_, Result<(), StorageError>> {
        Box::pin(self.ensure_group())
    }

    fn enqueue_with<'a>(
        &'a self,
        input: &'a RunInput,
        record: Option<&'a RunRecord>,
        events: &'a [OutboxEvent],
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(async move {
            let (head, raw) = input.queued_parts().map_err(unencodable)?;
            let p = self.pool.layout().partition_of(&input.run_id);
            let mut pipe = redis::pipe();
            pipe.cmd("XADD")
                .arg(&self.part(p).stream)
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
            add_events(&mut pipe, self.part(p), events);
            self.batcher.run(p, &pipe).await
        })
    }

    fn claim<'a>(
        &'a self,
        consumer: &'a str,
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'a, Result<Claimed, StorageError>> {
        Box::pin(self.read_group(consumer, max, wait))
    }

    fn take_over<'a>(
        &'a self,
        consumer: &'a str,
        idle: Duration,
        max: usize,
    ) -> BoxFuture<'a, Result<Claimed, StorageError>> {
        Box::pin(async move {
            self.sweep(self.sweep_order(), max, |p, left| async move {
                let reply: StreamAutoClaimReply = query(
                    &self.pool,
                    redis::cmd("XAUTOCLAIM")
                        .arg(&self.part(p).stream)
                        .arg(GROUP)
                        .arg(consumer)
                        .arg(idle.as_millis() as u64)
                        .arg("0-0")
                        .arg("COUNT")
                        .arg(left),
                )
                .await?;
                Ok(self.decode_all(p, reply.claimed, true).await)
            })
            .await
        })
    }

    fn extend_leases<'a>(
        &'a self,
        consumer: &'a str,
        ids: &'a [String],
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(async move {
            let mut by_partition = vec![Vec::new(); self.pool.layout().count()];
            for id in ids {
                let (p, entry) = self.entry_of(id)?;
                by_partition[p].push(entry);
            }
            let claims: Vec<redis::Cmd> = by_partition
                .iter()
                .enumerate()
                .filter(|(_, entries)| !entries.is_empty())
                .map(|(p, entries)| {
                    let mut cmd = redis::cmd("XCLAIM");
                    cmd.arg(&self.part(p).stream)
                        .arg(GROUP)
                        .arg(consumer)
                        .arg(0)
                        .arg(entries)
                        .arg("JUSTID");
                    cmd
                })
                .collect();
            query_all::<redis::Value>(&self.pool, &claims)
                .await
                .map(drop)
        })
    }

    fn complete_with<'a>(
        &'a self,
        id: &'a str,
        record: Option<&'a RunRecord>,
        events: &'a [OutboxEvent],
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(async move {
            let (p, entry) = self.entry_of(id)?;
            let mut pipe = redis::pipe();
            // With events, the record, the events and the acknowledgement
            // are one transaction (written out: the batcher sends commands).
            let atomic = !events.is_empty();
            if atomic {
                pipe.cmd("MULTI").ignore();
            }
            if let Some(record) = record {
                self.records.write_record(&mut pipe, record, false)?;
            }
            add_events(&mut pipe, self.part(p), events);
            acknowledge(&mut pipe, self.part(p), entry);
            if atomic {
                pipe.cmd("EXEC").ignore();
            }
            self.batcher.run(p, &pipe).await
        })
    }

    fn dead_letter_with<'a>(
        &'a self,
        delivery: &'a Delivery,
        reason: &'a str,
        record: &'a RunRecord,
        events: &'a [OutboxEvent],
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(async move {
            let input = to_json(&delivery.input)?;
            let letter = dead_letter_json(
                &delivery.id,
                Some(&delivery.input.run_id),
                reason,
                Some(&input),
            );
            let (p, entry) = self.entry_of(&delivery.id)?;
            let mut pipe = move_to_dead(self.part(p), &letter, entry);
            self.records.write_record(&mut pipe, record, false)?;
            add_events(&mut pipe, self.part(p), events);
            query_pipeline(&self.pool, &pipe).await
        })
    }

    fn depth(&self) -> BoxFuture<'_, Result<u64, StorageError>> {
        Box::pin(async move {
            let lengths: Vec<redis::Cmd> = self
                .pool
                .layout()
                .all()
                .flat_map(|(_, part)| {
                    [
                        redis::cmd("XLEN").arg(&part.stream).clone(),
                        redis::cmd("ZCARD").arg(&part.delayed).clone(),
                    ]
                })
                .collect();
            let lengths: Vec<u64> = query_all(&self.pool, &lengths).await?;
            Ok(lengths.iter().sum())
        })
    }

    fn retry_later_with<'a>(
        &'a self,
        id: &'a str,
        input: &'a RunInput,
        due_ms: u64,
        record: Option<&'a RunRecord>,
        events: &'a [OutboxEvent],
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(async move {
            let json = to_json(input)?;
            let (p, entry) = self.entry_of(id)?;
            let mut pipe = redis::pipe();
            // One slot: the hand-over from the stream to the delayed set is one transaction.
            pipe.atomic();
            pipe.cmd("ZADD")
                .arg(&self.part(p).delayed)
                .arg(due_ms)
                .arg(json)
                .ignore();
            if let Some(record) = record {
                self.records.write_record(&mut pipe, record, false)?;
            }
            add_events(&mut pipe, self.part(p), events);
            acknowledge(&mut pipe, self.part(p), entry);
            query_pipeline(&self.pool, &pipe).await
        })
    }

    fn requeue_due_retries(&self, max: usize) -> BoxFuture<'_, Result<usize, StorageError>> {
        Box::pin(async move {
            let now = now_ms();
            let promotions: Vec<redis::Cmd> = self
                .pool
                .layout()
                .all()
                .map(|(_, part)| {
                    redis::cmd("EVAL")
                        .arg(PROMOTE_SCRIPT)
                        .arg(2)
                        .arg(&part.delayed)
                        .arg(&part.stream)
                        .arg(now)
                        .arg(max)
                        .clone()
                })
                .collect();
            let moved: Vec<usize> = query_all(&self.pool, &promotions).await?;
            Ok(moved.iter().sum())
        })
    }
}
