//! [`WebhookStore`] on Redis: subscriptions in one hash (changed with
//! `WATCH`/`MULTI`, so limits hold against concurrent writers), the outbox
//! as a sorted set of delivery ids by due time (a claim re-scores them past
//! the lease), each delivery as a JSON string that expires after the
//! delivery retention, and each subscription's log as a stream trimmed by
//! age. Keys are in [`super::keys`].

use std::collections::HashMap;
use std::time::Duration;

use super::Pool;
use deadpool_redis::redis;

use super::keys::{
    OUTBOX_KEY, WEBHOOK_FAILURES_KEY, WEBHOOKS_KEY, WEBHOOKS_VERSION_KEY, delivery_key,
    delivery_key_prefix, delivery_log_key, skipped_key,
};
use super::{Batcher, query, query_pipeline, to_json, unavailable};
use crate::backend::control::Page;
use crate::backend::webhooks::{
    Attempt, ClaimedEvent, Decide, Delivery, DeliveryState, OutboxEvent, Refusal, Subscription,
    WebhookStore, Write,
};
use crate::backend::{BoxFuture, StorageError};

/// Times a subscription change is tried when other writers keep winning.
const CHANGE_TRIES: usize = 20;

/// Stores deliveries not stored yet: `ARGV` = key prefix, retention (ms),
/// then per delivery its id, JSON, due time (ms) and skipped-set key (empty
/// when pending). Returns the ids of those that were new.
const ENQUEUE: &str = r"
local added = {}
for i = 3, #ARGV, 4 do
  local id = ARGV[i]
  if redis.call('SET', ARGV[1] .. id, ARGV[i + 1], 'NX', 'PX', ARGV[2]) then
    table.insert(added, id)
    if ARGV[i + 3] == '' then
      redis.call('ZADD', KEYS[1], ARGV[i + 2], id)
    else
      redis.call('ZADD', ARGV[i + 3], ARGV[i + 2], id)
    end
  end
end
return added
";

/// Claims due deliveries: `ARGV` = now (ms), lease end (ms), most, key
/// prefix. Returns their JSON; ids whose delivery expired are dropped.
const CLAIM: &str = r"
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
local out = {}
for _, id in ipairs(ids) do
  local body = redis.call('GET', ARGV[4] .. id)
  if body then
    redis.call('ZADD', KEYS[1], ARGV[2], id)
    table.insert(out, body)
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
";

/// Leases up to ARGV[3] events of one partition due at ARGV[1] until
/// ARGV[2]; returns id, message pairs. An id whose message is gone is dropped.
const CLAIM_EVENTS: &str = r"
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
local out = {}
for _, id in ipairs(ids) do
  local message = redis.call('HGET', KEYS[2], id)
  if message then
    redis.call('ZADD', KEYS[1], ARGV[2], id)
    table.insert(out, id)
    table.insert(out, message)
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
";

/// Adds the commands writing `events` to `pipe`, in partition `part`
/// (every event's key must belong to it): an id already waiting keeps its
/// message and lease.
pub fn add_events(
    pipe: &mut redis::Pipeline,
    part: &super::keys::Partition,
    events: &[OutboxEvent],
) {
    for event in events {
        pipe.cmd("HSETNX")
            .arg(&part.event_messages)
            .arg(&event.id)
            .arg(&event.message)
            .ignore();
        pipe.cmd("ZADD")
            .arg(&part.events)
            .arg("NX")
            .arg(0)
            .arg(&event.id)
            .ignore();
    }
}

/// Webhook state on Redis.
#[derive(Clone)]
pub struct RedisWebhooks {
    pool: Pool,
    batcher: Batcher,
    retention: Duration,
}

impl RedisWebhooks {
    /// Webhook state on `pool`; deliveries and their log are kept for `retention`.
    pub fn new(pool: Pool, retention: Duration) -> Self {
        Self {
            batcher: Batcher::new(pool.clone()),
            pool,
            retention,
        }
    }

    fn retention_ms(&self) -> u64 {
        u64::try_from(self.retention.as_millis()).unwrap_or(u64::MAX)
    }
}

impl RedisWebhooks {
    /// One `MULTI`: the delivery stored as it stands, moved in or out of
    /// the outbox and the skipped set, and `attempt` appended to the log.
    fn finish_pipe(
        &self,
        delivery: &Delivery,
        attempt: Option<&Attempt>,
    ) -> Result<redis::Pipeline, StorageError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        let retention = self.retention_ms();
        pipe.cmd("SET")
            .arg(delivery_key(&delivery.id))
            .arg(to_json(delivery)?)
            .arg("PX")
            .arg(retention)
            .ignore();
        let skipped = skipped_key(&delivery.subscription);
        match delivery.state {
            DeliveryState::Pending => {
                pipe.zadd(OUTBOX_KEY, &delivery.id, delivery.due_ms)
                    .ignore()
                    .zrem(&skipped, &delivery.id)
                    .ignore();
            }
            DeliveryState::Skipped => {
                pipe.zrem(OUTBOX_KEY, &delivery.id)
                    .ignore()
                    .zadd(&skipped, &delivery.id, delivery.created_ms)
                    .ignore();
            }
            // A delivery leaves the skipped set only by becoming pending.
            DeliveryState::Succeeded | DeliveryState::Failed => {
                pipe.zrem(OUTBOX_KEY, &delivery.id).ignore();
            }
        }
        if let Some(attempt) = attempt {
            let oldest = crate::backend::now_ms().saturating_sub(retention);
            pipe.cmd("XADD")
                .arg(delivery_log_key(&delivery.subscription))
                .arg("MINID")
                .arg("~")
                .arg(oldest)
                .arg("*")
                .arg("entry")
                .arg(to_json(attempt)?)
                .ignore();
        }
        Ok(pipe)
    }
}

fn corrupt(what: &str, err: impl std::fmt::Display) -> StorageError {
    StorageError::Corrupt(format!("{what}: {err}"))
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, json: &str) -> Result<T, StorageError> {
    crate::codec::decode(json).map_err(|e| corrupt(what, e))
}

impl WebhookStore for RedisWebhooks {
    fn version(&self) -> BoxFuture<'_, Result<u64, StorageError>> {
        Box::pin(async move {
            let version: Option<u64> =
                query(&self.pool, redis::cmd("GET").arg(WEBHOOKS_VERSION_KEY)).await?;
            Ok(version.unwrap_or(0))
        })
    }

    fn subscriptions(&self) -> BoxFuture<'_, Result<Vec<(Subscription, u32)>, StorageError>> {
        Box::pin(async move {
            let mut pipe = redis::pipe();
            pipe.hgetall(WEBHOOKS_KEY).hgetall(WEBHOOK_FAILURES_KEY);
            let (subs, failures): (HashMap<String, String>, HashMap<String, u32>) =
                query_pipeline(&self.pool, &pipe).await?;
            let mut out = Vec::with_capacity(subs.len());
            for json in subs.values() {
                let sub: Subscription = decode("subscription", json)?;
                let count = failures.get(&sub.id).copied().unwrap_or(0);
                out.push((sub, count));
            }
            crate::backend::webhooks::sort_subscriptions(&mut out);
            Ok(out)
        })
    }

    fn change<'a>(
        &'a self,
        id: &'a str,
        decide: &'a Decide<'a>,
    ) -> BoxFuture<'a, Result<Result<Write, Refusal>, StorageError>> {
        Box::pin(async move {
            let mut conn = self.pool.get().await?;
            for _ in 0..CHANGE_TRIES {
                let _: () = redis::cmd("WATCH")
                    .arg(WEBHOOKS_KEY)
                    .query_async(&mut conn)
                    .await
                    .map_err(unavailable)?;
                let stored: HashMap<String, String> = redis::cmd("HGETALL")
                    .arg(WEBHOOKS_KEY)
                    .query_async(&mut conn)
                    .await
                    .map_err(unavailable)?;
                let mut current = None;
                let mut others = Vec::with_capacity(stored.len());
                for (key, json) in &stored {
                    let sub: Subscription = decode("subscription", json)?;
                    if key == id {
                        current = Some(sub);
                    } else {
                        others.push(sub);
                    }
                }
                let write = match decide(current.as_ref(), &others) {
                    Ok(write) => write,
                    Err(refusal) => {
                        let _: () = redis::cmd("UNWATCH")
                            .query_async(&mut conn)
                            .await
                            .map_err(unavailable)?;
                        return Ok(Err(refusal));
                    }
                };
                let mut pipe = redis::pipe();
                pipe.atomic();
                match &write {
                    Write::Put {
                        subscription,
                        reset_failures,
                    } => {
                        pipe.hset(WEBHOOKS_KEY, id, to_json(subscription)?).ignore();
                        if *reset_failures {
                            pipe.hdel(WEBHOOK_FAILURES_KEY, id).ignore();
                        }
                    }
                    Write::Delete => {
                        pipe.hdel(WEBHOOKS_KEY, id)
                            .ignore()
                            .hdel(WEBHOOK_FAILURES_KEY, id)
                            .ignore()
                            .del(delivery_log_key(id))
                            .ignore()
                            .del(skipped_key(id))
                            .ignore();
                    }
                }
                pipe.incr(WEBHOOKS_VERSION_KEY, 1).ignore();
                // EXEC answers nil when a watched key changed: decide again.
                let done: Option<()> = pipe.query_async(&mut conn).await.map_err(unavailable)?;
                if done.is_some() {
                    return Ok(Ok(write));
                }
            }
            Err(StorageError::Unavailable(
                "subscriptions kept changing; try again".into(),
            ))
        })
    }

    fn enqueue<'a>(
        &'a self,
        deliveries: &'a [Delivery],
    ) -> BoxFuture<'a, Result<Vec<String>, StorageError>> {
        Box::pin(async move {
            if deliveries.is_empty() {
                return Ok(Vec::new());
            }
            let mut invocation = redis::cmd("EVAL");
            invocation
                .arg(ENQUEUE)
                .arg(1)
                .arg(OUTBOX_KEY)
                .arg(delivery_key_prefix())
                .arg(self.retention_ms());
            for delivery in deliveries {
                let skipped = match delivery.state {
                    DeliveryState::Skipped => skipped_key(&delivery.subscription),
                    _ => String::new(),
                };
                let due = match delivery.state {
                    DeliveryState::Skipped => delivery.created_ms,
                    _ => delivery.due_ms,
                };
                invocation
                    .arg(&delivery.id)
                    .arg(to_json(delivery)?)
                    .arg(due)
                    .arg(skipped);
            }
            query(&self.pool, &invocation).await
        })
    }

    fn claim(
        &self,
        now_ms: u64,
        lease: Duration,
        max: usize,
    ) -> BoxFuture<'_, Result<Vec<Delivery>, StorageError>> {
        Box::pin(async move {
            let lease_end = now_ms.saturating_add(lease.as_millis() as u64);
            let bodies: Vec<String> = query(
                &self.pool,
                redis::cmd("EVAL")
                    .arg(CLAIM)
                    .arg(1)
                    .arg(OUTBOX_KEY)
                    .arg(now_ms)
                    .arg(lease_end)
                    .arg(max)
                    .arg(delivery_key_prefix()),
            )
            .await?;
            bodies.iter().map(|json| decode("delivery", json)).collect()
        })
    }

    fn defer<'a>(&'a self, due: &'a [(String, u64)]) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(async move {
            if due.is_empty() {
                return Ok(());
            }
            // XX: a delivery that left the outbox meanwhile stays out.
            let mut cmd = redis::cmd("ZADD");
            cmd.arg(OUTBOX_KEY).arg("XX");
            for (id, at) in due {
                cmd.arg(*at).arg(id);
            }
            query::<i64>(&self.pool, &cmd).await.map(|_| ())
        })
    }

    fn finish<'a>(
        &'a self,
        delivery: &'a Delivery,
        attempt: Option<&'a Attempt>,
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(async move {
            let pipe = self.finish_pipe(delivery, attempt)?;
            query_pipeline::<()>(&self.pool, &pipe).await
        })
    }

    fn record_attempt<'a>(
        &'a self,
        delivery: &'a Delivery,
        attempt: &'a Attempt,
        succeeded: bool,
    ) -> BoxFuture<'a, Result<u32, StorageError>> {
        Box::pin(async move {
            if succeeded {
                // The common case rides a shared pipeline with other
                // attempts' writes, still as one MULTI of its own.
                let finished = self.finish_pipe(delivery, Some(attempt))?;
                let mut pipe = redis::pipe();
                pipe.cmd("MULTI");
                for command in finished.cmd_iter() {
                    pipe.add_command(command.clone());
                }
                pipe.hdel(WEBHOOK_FAILURES_KEY, &delivery.subscription)
                    .cmd("EXEC");
                // Webhook keys all share the one `{flowgate}` tag; this
                // batcher carries nothing else, so its first lane serves.
                self.batcher.run(0, &pipe).await?;
                return Ok(0);
            }
            let mut pipe = self.finish_pipe(delivery, Some(attempt))?;
            pipe.hincr(WEBHOOK_FAILURES_KEY, &delivery.subscription, 1);
            let (failures,): (u32,) = query_pipeline(&self.pool, &pipe).await?;
            Ok(failures)
        })
    }

    fn delivery<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Delivery>, StorageError>> {
        Box::pin(async move {
            let json: Option<String> =
                query(&self.pool, redis::cmd("GET").arg(delivery_key(id))).await?;
            json.map(|json| decode("delivery", &json)).transpose()
        })
    }

    fn recover<'a>(
        &'a self,
        subscription: &'a str,
        since_ms: u64,
    ) -> BoxFuture<'a, Result<usize, StorageError>> {
        Box::pin(async move {
            let skipped = skipped_key(subscription);
            let ids: Vec<String> = query(
                &self.pool,
                redis::cmd("ZRANGEBYSCORE")
                    .arg(&skipped)
                    .arg(since_ms)
                    .arg("+inf"),
            )
            .await?;
            let now = crate::backend::now_ms();
            let mut recovered = 0;
            for chunk in ids.chunks(100) {
                let keys: Vec<String> = chunk.iter().map(|id| delivery_key(id)).collect();
                let bodies: Vec<Option<String>> =
                    query(&self.pool, redis::cmd("MGET").arg(&keys)).await?;
                let mut pipe = redis::pipe();
                pipe.atomic();
                for (id, body) in chunk.iter().zip(bodies) {
                    pipe.zrem(&skipped, id).ignore();
                    let Some(body) = body else { continue };
                    let mut delivery: Delivery = decode("delivery", &body)?;
                    delivery.state = DeliveryState::Pending;
                    delivery.due_ms = now;
                    pipe.cmd("SET")
                        .arg(delivery_key(id))
                        .arg(to_json(&delivery)?)
                        .arg("PX")
                        .arg(self.retention_ms())
                        .ignore()
                        .zadd(OUTBOX_KEY, id, now)
                        .ignore();
                    recovered += 1;
                }
                query_pipeline::<()>(&self.pool, &pipe).await?;
            }
            Ok(recovered)
        })
    }

    fn attempts<'a>(
        &'a self,
        subscription: &'a str,
        cursor: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Page<Attempt>, StorageError>> {
        Box::pin(async move {
            let end = match cursor {
                Some(id) => format!("({id}"),
                None => "+".to_owned(),
            };
            let entries: Vec<(String, HashMap<String, String>)> = query(
                &self.pool,
                redis::cmd("XREVRANGE")
                    .arg(delivery_log_key(subscription))
                    .arg(&end)
                    .arg("-")
                    .arg("COUNT")
                    .arg(limit + 1),
            )
            .await?;
            let more = entries.len() > limit;
            let mut data = Vec::with_capacity(limit);
            for (id, fields) in entries.into_iter().take(limit) {
                let Some(json) = fields.get("entry") else {
                    continue;
                };
                let mut attempt: Attempt = decode("delivery log entry", json)?;
                attempt.id = id;
                data.push(attempt);
            }
            let next_cursor = match (more, data.last()) {
                (true, Some(last)) => Some(last.id.clone()),
                _ => None,
            };
            Ok(Page { data, next_cursor })
        })
    }

    fn append_events<'a>(
        &'a self,
        events: &'a [OutboxEvent],
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(async move {
            let layout = self.pool.layout();
            let mut pipes = std::collections::BTreeMap::new();
            for event in events {
                let p = layout.partition_of(&event.key);
                let pipe = pipes.entry(p).or_insert_with(redis::pipe);
                add_events(pipe, layout.partition(p), std::slice::from_ref(event));
            }
            for (p, pipe) in &pipes {
                self.batcher.run(*p, pipe).await?;
            }
            Ok(())
        })
    }

    fn claim_events(
        &self,
        now_ms: u64,
        lease: Duration,
        max: usize,
    ) -> BoxFuture<'_, Result<Vec<ClaimedEvent>, StorageError>> {
        Box::pin(async move {
            let layout = self.pool.layout();
            let per_partition = max.div_ceil(layout.count()).max(1);
            let until = now_ms.saturating_add(lease.as_millis() as u64);
            let claims: Vec<redis::Cmd> = layout
                .all()
                .map(|(_, part)| {
                    redis::cmd("EVAL")
                        .arg(CLAIM_EVENTS)
                        .arg(2)
                        .arg(&part.events)
                        .arg(&part.event_messages)
                        .arg(now_ms)
                        .arg(until)
                        .arg(per_partition)
                        .clone()
                })
                .collect();
            let replies: Vec<Vec<String>> = super::query_all(&self.pool, &claims).await?;
            let mut claimed = Vec::new();
            for (place, reply) in replies.into_iter().enumerate() {
                for pair in reply.chunks_exact(2) {
                    claimed.push(ClaimedEvent {
                        id: pair[0].clone(),
                        message: pair[1].clone(),
                        place,
                    });
                }
            }
            Ok(claimed)
        })
    }

    fn ack_events<'a>(
        &'a self,
        events: &'a [ClaimedEvent],
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(async move {
            let layout = self.pool.layout();
            let mut acks = Vec::new();
            for (p, part) in layout.all() {
                let ids: Vec<&str> = events
                    .iter()
                    .filter(|e| e.place == p)
                    .map(|e| e.id.as_str())
                    .collect();
                if ids.is_empty() {
                    continue;
                }
                acks.push(redis::cmd("ZREM").arg(&part.events).arg(&ids).clone());
                acks.push(
                    redis::cmd("HDEL")
                        .arg(&part.event_messages)
                        .arg(&ids)
                        .clone(),
                );
            }
            super::query_all::<redis::Value>(&self.pool, &acks)
                .await
                .map(drop)
        })
    }

    fn events_depth(&self) -> BoxFuture<'_, Result<u64, StorageError>> {
        Box::pin(async move {
            let counts: Vec<redis::Cmd> = self
                .pool
                .layout()
                .all()
                .map(|(_, part)| redis::cmd("ZCARD").arg(&part.events).clone())
                .collect();
            let counts: Vec<u64> = super::query_all(&self.pool, &counts).await?;
            Ok(counts.iter().sum())
        })
    }

    fn outbox_depth(&self) -> BoxFuture<'_, Result<u64, StorageError>> {
        Box::pin(async move { query(&self.pool, redis::cmd("ZCARD").arg(OUTBOX_KEY)).await })
    }

    fn prune(&self, before_ms: u64) -> BoxFuture<'_, Result<(), StorageError>> {
        Box::pin(async move {
            let ids: Vec<String> = query(&self.pool, redis::cmd("HKEYS").arg(WEBHOOKS_KEY)).await?;
            for chunk in ids.chunks(100) {
                let mut pipe = redis::pipe();
                for id in chunk {
                    pipe.cmd("XTRIM")
                        .arg(delivery_log_key(id))
                        .arg("MINID")
                        .arg(before_ms)
                        .ignore()
                        .cmd("ZREMRANGEBYSCORE")
                        .arg(skipped_key(id))
                        .arg("-inf")
                        .arg(format!("({before_ms}"))
                        .ignore();
                }
                query_pipeline::<()>(&self.pool, &pipe).await?;
            }
            Ok(())
        })
    }
}
