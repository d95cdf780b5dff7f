//! [`WebhookStore`] on PostgreSQL: subscriptions (with their failure
//! count), deliveries (the outbox is the pending ones, by due time; a claim
//! moves their due time past the lease, skipping rows another replica is
//! claiming), the delivery log, and the events written with run
//! transitions. A subscription change holds the `webhooks` version row's
//! lock while it reads, decides and writes.

use std::time::Duration;

use deadpool_postgres::GenericClient;

use super::store::{exec, ms, rows};
use super::{Database, corrupt, encode, timed};
use crate::backend::control::Page;
use crate::backend::webhooks::{
    Attempt, ClaimedEvent, Decide, Delivery, DeliveryState, OutboxEvent, Refusal, Subscription,
    WebhookStore, Write,
};
use crate::backend::{BoxFuture, StorageError, now_ms};

/// Writes `events` on `c`, inside the caller's transaction; an id already
/// waiting is kept once.
pub(super) async fn insert_events(
    c: &impl GenericClient,
    events: &[OutboxEvent],
) -> Result<(), StorageError> {
    if events.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
    let messages: Vec<&str> = events.iter().map(|e| e.message.as_str()).collect();
    exec(
        c,
        "INSERT INTO flowgate.events (id, message, due_at)
         SELECT id, message, 0 FROM unnest($1::TEXT[], $2::TEXT[]) AS e (id, message)
         ON CONFLICT (id) DO NOTHING",
        &[&ids, &messages],
    )
    .await?;
    Ok(())
}

/// Webhook state in the database.
#[derive(Clone)]
pub struct PostgresWebhooks {
    db: Database,
    retention: Duration,
}

impl PostgresWebhooks {
    /// Webhook state in `db`; deliveries and their log are kept for `retention`.
    pub fn new(db: Database, retention: Duration) -> Self {
        Self { db, retention }
    }

    fn expires(&self) -> i64 {
        ms(now_ms().saturating_add(self.retention.as_millis() as u64))
    }
}

async fn webhooks_version(c: &impl GenericClient, lock: bool) -> Result<u64, StorageError> {
    let sql = if lock {
        "SELECT version FROM flowgate.versions WHERE name = 'webhooks' FOR UPDATE"
    } else {
        "SELECT version FROM flowgate.versions WHERE name = 'webhooks'"
    };
    let found = rows(c, sql, &[]).await?;
    Ok(found.first().map_or(0, |row| row.get::<_, i64>(0)) as u64)
}

/// A stored delivery, with the columns that move after it was written.
fn decode_delivery(json: &str, state: &str, due_at: i64) -> Result<Delivery, StorageError> {
    let mut delivery: Delivery = crate::codec::decode(json).map_err(|e| corrupt("delivery", e))?;
    delivery.state = DeliveryState::from_column(state);
    delivery.due_ms = due_at as u64;
    Ok(delivery)
}

/// Stores `delivery` as it stands and logs `attempt`, on `c`.
async fn finish_on(
    c: &impl GenericClient,
    delivery: &Delivery,
    json: &str,
    attempt: Option<&str>,
    expires: i64,
) -> Result<(), StorageError> {
    exec(
        c,
        "INSERT INTO flowgate.deliveries
            (id, subscription, body, state, due_at, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (id) DO UPDATE SET body = excluded.body, state = excluded.state,
            due_at = excluded.due_at, expires_at = excluded.expires_at",
        &[
            &delivery.id,
            &delivery.subscription,
            &json,
            &delivery.state.as_str(),
            &ms(delivery.due_ms),
            &ms(delivery.created_ms),
            &expires,
        ],
    )
    .await?;
    if let Some(entry) = attempt {
        exec(
            c,
            "INSERT INTO flowgate.delivery_log (subscription, at_ms, entry) VALUES ($1, $2, $3)",
            &[&delivery.subscription, &(now_ms() as i64), &entry],
        )
        .await?;
    }
    Ok(())
}

impl WebhookStore for PostgresWebhooks {
    fn version(&self) -> BoxFuture<'_, Result<u64, StorageError>> {
        Box::pin(timed(async move {
            let client = self.db.client().await?;
            webhooks_version(&client, false).await
        }))
    }

    fn subscriptions(&self) -> BoxFuture<'_, Result<Vec<(Subscription, u32)>, StorageError>> {
        Box::pin(timed(async move {
            let client = self.db.client().await?;
            let found = rows(
                &client,
                "SELECT body, failures FROM flowgate.subscriptions",
                &[],
            )
            .await?;
            let mut out = Vec::new();
            for row in found {
                let sub: Subscription = crate::codec::decode(row.get::<_, &str>(0))
                    .map_err(|e| corrupt("subscription", e))?;
                out.push((sub, row.get::<_, i64>(1) as u32));
            }
            crate::backend::webhooks::sort_subscriptions(&mut out);
            Ok(out)
        }))
    }

    fn change<'a>(
        &'a self,
        id: &'a str,
        decide: &'a Decide<'a>,
    ) -> BoxFuture<'a, Result<Result<Write, Refusal>, StorageError>> {
        Box::pin(timed(async move {
            let mut client = self.db.client().await?;
            let tx = client.transaction().await?;
            // Changes wait for each other on the version row: each decides
            // on what the one before it wrote.
            webhooks_version(&tx, true).await?;
            let mut subs = Vec::new();
            for row in rows(&tx, "SELECT body FROM flowgate.subscriptions", &[]).await? {
                let sub: Subscription = crate::codec::decode(row.get::<_, &str>(0))
                    .map_err(|e| corrupt("subscription", e))?;
                subs.push(sub);
            }
            let (current, others): (Vec<Subscription>, Vec<Subscription>) =
                subs.into_iter().partition(|s| s.id == id);
            let write = match decide(current.first(), &others) {
                Ok(write) => write,
                Err(refusal) => return Ok(Err(refusal)),
            };
            match &write {
                Write::Put {
                    subscription,
                    reset_failures,
                } => {
                    let json = encode(subscription.as_ref())?;
                    exec(
                        &tx,
                        "INSERT INTO flowgate.subscriptions (id, body, failures) VALUES ($1, $2, 0)
                         ON CONFLICT (id) DO UPDATE SET body = excluded.body,
                            failures = CASE WHEN $3 THEN 0 ELSE flowgate.subscriptions.failures END",
                        &[&id, &json, reset_failures],
                    )
                    .await?;
                }
                Write::Delete => {
                    exec(
                        &tx,
                        "DELETE FROM flowgate.subscriptions WHERE id = $1",
                        &[&id],
                    )
                    .await?;
                    exec(
                        &tx,
                        "DELETE FROM flowgate.delivery_log WHERE subscription = $1",
                        &[&id],
                    )
                    .await?;
                    exec(
                        &tx,
                        "DELETE FROM flowgate.deliveries WHERE subscription = $1 AND state = 'skipped'",
                        &[&id],
                    )
                    .await?;
                }
            }
            exec(
                &tx,
                "UPDATE flowgate.versions SET version = version + 1 WHERE name = 'webhooks'",
                &[],
            )
            .await?;
            tx.commit().await?;
            Ok(Ok(write))
        }))
    }

    fn enqueue<'a>(
        &'a self,
        deliveries: &'a [Delivery],
    ) -> BoxFuture<'a, Result<Vec<String>, StorageError>> {
        let expires = self.expires();
        Box::pin(timed(async move {
            let encoded = deliveries
                .iter()
                .map(|d| Ok((d, encode(d)?)))
                .collect::<Result<Vec<_>, StorageError>>()?;
            let mut client = self.db.client().await?;
            let tx = client.transaction().await?;
            let mut added = Vec::new();
            for (delivery, json) in encoded {
                let due = match delivery.state {
                    DeliveryState::Skipped => delivery.created_ms,
                    _ => delivery.due_ms,
                };
                let inserted = exec(
                    &tx,
                    "INSERT INTO flowgate.deliveries
                        (id, subscription, body, state, due_at, created_at, expires_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)
                     ON CONFLICT (id) DO NOTHING",
                    &[
                        &delivery.id,
                        &delivery.subscription,
                        &json,
                        &delivery.state.as_str(),
                        &ms(due),
                        &ms(delivery.created_ms),
                        &expires,
                    ],
                )
                .await?;
                if inserted == 1 {
                    added.push(delivery.id.clone());
                }
            }
            tx.commit().await?;
            Ok(added)
        }))
    }

    fn claim(
        &self,
        now_ms: u64,
        lease: Duration,
        max: usize,
    ) -> BoxFuture<'_, Result<Vec<Delivery>, StorageError>> {
        let lease_end = ms(now_ms.saturating_add(lease.as_millis() as u64));
        Box::pin(timed(async move {
            let client = self.db.client().await?;
            let found = rows(
                &client,
                "UPDATE flowgate.deliveries d SET due_at = $2
                 FROM (SELECT id FROM flowgate.deliveries WHERE state = 'pending' AND due_at <= $1
                       ORDER BY due_at LIMIT $3 FOR UPDATE SKIP LOCKED) pick
                 WHERE d.id = pick.id
                 RETURNING d.body",
                &[&ms(now_ms), &lease_end, &(max as i64)],
            )
            .await?;
            let mut claimed = Vec::new();
            for row in found {
                // As stored: the due time it had, not the lease.
                let mut delivery: Delivery = crate::codec::decode(row.get::<_, &str>(0))
                    .map_err(|e| corrupt("delivery", e))?;
                delivery.state = DeliveryState::Pending;
                claimed.push(delivery);
            }
            claimed.sort_by_key(|d| (d.created_ms, d.id.clone()));
            Ok(claimed)
        }))
    }

    fn defer<'a>(&'a self, due: &'a [(String, u64)]) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(timed(async move {
            let ids: Vec<&str> = due.iter().map(|(id, _)| id.as_str()).collect();
            let at: Vec<i64> = due.iter().map(|(_, at)| ms(*at)).collect();
            let client = self.db.client().await?;
            exec(
                &client,
                "UPDATE flowgate.deliveries d SET due_at = u.at
                 FROM unnest($1::TEXT[], $2::BIGINT[]) AS u (id, at)
                 WHERE d.id = u.id AND d.state = 'pending'",
                &[&ids, &at],
            )
            .await?;
            Ok(())
        }))
    }

    fn finish<'a>(
        &'a self,
        delivery: &'a Delivery,
        attempt: Option<&'a Attempt>,
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        let expires = self.expires();
        Box::pin(timed(async move {
            let json = encode(delivery)?;
            let entry = attempt.map(encode).transpose()?;
            let mut client = self.db.client().await?;
            let tx = client.transaction().await?;
            finish_on(&tx, delivery, &json, entry.as_deref(), expires).await?;
            Ok(tx.commit().await?)
        }))
    }

    fn record_attempt<'a>(
        &'a self,
        delivery: &'a Delivery,
        attempt: &'a Attempt,
        succeeded: bool,
    ) -> BoxFuture<'a, Result<u32, StorageError>> {
        let expires = self.expires();
        Box::pin(timed(async move {
            let json = encode(delivery)?;
            let entry = encode(attempt)?;
            let mut client = self.db.client().await?;
            let tx = client.transaction().await?;
            finish_on(&tx, delivery, &json, Some(&entry), expires).await?;
            let failures = rows(
                &tx,
                "UPDATE flowgate.subscriptions
                 SET failures = CASE WHEN $2 THEN 0 ELSE failures + 1 END
                 WHERE id = $1 RETURNING failures",
                &[&delivery.subscription, &succeeded],
            )
            .await?
            .first()
            .map_or(0, |row| row.get::<_, i64>(0));
            tx.commit().await?;
            Ok(failures as u32)
        }))
    }

    fn delivery<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Delivery>, StorageError>> {
        Box::pin(timed(async move {
            if !super::storable(id) {
                return Ok(None);
            }
            let client = self.db.client().await?;
            let found = rows(
                &client,
                "SELECT body, state, due_at FROM flowgate.deliveries
                 WHERE id = $1 AND expires_at > $2",
                &[&id, &(now_ms() as i64)],
            )
            .await?;
            found
                .first()
                .map(|row| decode_delivery(row.get(0), row.get(1), row.get(2)))
                .transpose()
        }))
    }

    fn recover<'a>(
        &'a self,
        subscription: &'a str,
        since_ms: u64,
    ) -> BoxFuture<'a, Result<usize, StorageError>> {
        // In batches, each its own transaction: a backlog of hundreds of
        // thousands never holds row locks for long.
        const BATCH: i64 = 2_000;
        Box::pin(async move {
            let mut total = 0;
            loop {
                let moved = timed(async {
                    let client = self.db.client().await?;
                    exec(
                        &client,
                        "UPDATE flowgate.deliveries SET state = 'pending', due_at = $3 WHERE id IN
                            (SELECT id FROM flowgate.deliveries WHERE subscription = $1
                             AND state = 'skipped' AND created_at >= $2 LIMIT $4
                             FOR UPDATE SKIP LOCKED)",
                        &[&subscription, &ms(since_ms), &(now_ms() as i64), &BATCH],
                    )
                    .await
                })
                .await?;
                total += moved as usize;
                if (moved as i64) < BATCH {
                    return Ok(total);
                }
            }
        })
    }

    fn attempts<'a>(
        &'a self,
        subscription: &'a str,
        cursor: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Page<Attempt>, StorageError>> {
        let before: i64 = cursor.and_then(|c| c.parse().ok()).unwrap_or(i64::MAX);
        Box::pin(timed(async move {
            let client = self.db.client().await?;
            let found = rows(
                &client,
                "SELECT seq, entry FROM flowgate.delivery_log WHERE subscription = $1 AND seq < $2
                 ORDER BY seq DESC LIMIT $3",
                &[&subscription, &before, &(limit as i64 + 1)],
            )
            .await?;
            let mut data = Vec::new();
            let mut more = false;
            for row in found {
                if data.len() == limit {
                    more = true;
                    break;
                }
                let mut attempt: Attempt = crate::codec::decode(row.get::<_, &str>(1))
                    .map_err(|e| corrupt("delivery log entry", e))?;
                attempt.id = row.get::<_, i64>(0).to_string();
                data.push(attempt);
            }
            let next_cursor = if more {
                data.last().map(|a| a.id.clone())
            } else {
                None
            };
            Ok(Page { data, next_cursor })
        }))
    }

    fn append_events<'a>(
        &'a self,
        events: &'a [OutboxEvent],
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(timed(async move {
            let client = self.db.client().await?;
            insert_events(&client, events).await
        }))
    }

    fn claim_events(
        &self,
        now_ms: u64,
        lease: Duration,
        max: usize,
    ) -> BoxFuture<'_, Result<Vec<ClaimedEvent>, StorageError>> {
        Box::pin(timed(async move {
            let until = ms(now_ms.saturating_add(lease.as_millis() as u64));
            let client = self.db.client().await?;
            let found = rows(
                &client,
                "UPDATE flowgate.events e SET due_at = $1
                 FROM (SELECT id FROM flowgate.events WHERE due_at <= $2
                       ORDER BY due_at LIMIT $3 FOR UPDATE SKIP LOCKED) pick
                 WHERE e.id = pick.id
                 RETURNING e.id, e.message",
                &[&until, &ms(now_ms), &(max as i64)],
            )
            .await?;
            Ok(found
                .into_iter()
                .map(|row| ClaimedEvent {
                    id: row.get(0),
                    message: row.get(1),
                    place: 0,
                })
                .collect())
        }))
    }

    fn ack_events<'a>(
        &'a self,
        events: &'a [ClaimedEvent],
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(timed(async move {
            let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
            let client = self.db.client().await?;
            exec(
                &client,
                "DELETE FROM flowgate.events WHERE id = ANY($1)",
                &[&ids],
            )
            .await?;
            Ok(())
        }))
    }

    fn events_depth(&self) -> BoxFuture<'_, Result<u64, StorageError>> {
        Box::pin(timed(async move {
            let client = self.db.client().await?;
            let found = rows(&client, "SELECT count(*) FROM flowgate.events", &[]).await?;
            Ok(found.first().map_or(0, |row| row.get::<_, i64>(0)) as u64)
        }))
    }

    fn outbox_depth(&self) -> BoxFuture<'_, Result<u64, StorageError>> {
        Box::pin(timed(async move {
            let client = self.db.client().await?;
            let found = rows(
                &client,
                "SELECT count(*) FROM flowgate.deliveries WHERE state = 'pending'",
                &[],
            )
            .await?;
            Ok(found.first().map_or(0, |row| row.get::<_, i64>(0)) as u64)
        }))
    }

    fn prune(&self, before_ms: u64) -> BoxFuture<'_, Result<(), StorageError>> {
        // A batch per statement, each its own short transaction, until a
        // batch comes back short: everything past retention goes, without
        // a lock any delivery waits on for long.
        Box::pin(async move {
            let before = ms(before_ms);
            let batch = super::store::PRUNE_BATCH;
            for sql in [
                "DELETE FROM flowgate.delivery_log WHERE seq IN
                    (SELECT seq FROM flowgate.delivery_log WHERE at_ms < $1 LIMIT $2
                     FOR UPDATE SKIP LOCKED)",
                "DELETE FROM flowgate.deliveries WHERE id IN
                    (SELECT id FROM flowgate.deliveries
                     WHERE (state = 'skipped' AND created_at < $1)
                        OR (expires_at <= $3 AND state <> 'pending')
                     LIMIT $2 FOR UPDATE SKIP LOCKED)",
            ] {
                loop {
                    let now = now_ms() as i64;
                    let deleted = timed(async {
                        let client = self.db.client().await?;
                        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
                            [&before, &batch, &now];
                        // The first statement takes two parameters.
                        let params = if sql.contains("$3") {
                            &params[..]
                        } else {
                            &params[..2]
                        };
                        exec(&client, sql, params).await
                    })
                    .await?;
                    if (deleted as i64) < batch {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
            }
            Ok(())
        })
    }
}
