//! [`WebhookStore`] on SQLite: subscriptions (with their failure count),
//! deliveries (the outbox is the pending ones, by due time; a claim moves
//! their due time past the lease) and the delivery log, with a version row
//! for subscription changes.

use rusqlite::{Connection, OptionalExtension, params};

use super::{Database, corrupt, encode};
use crate::backend::control::Page;
use crate::backend::webhooks::{
    Attempt, ClaimedEvent, Decide, Delivery, DeliveryState, OutboxEvent, Refusal, Subscription,
    WebhookStore, Write,
};
use crate::backend::{BoxFuture, StorageError, now_ms};

/// Times a subscription change is decided again when another writer got there first.
const CHANGE_TRIES: usize = 20;

/// Writes `events` on `conn`, inside the caller's transaction; an id
/// already waiting is kept once.
pub(super) fn insert_events(conn: &Connection, events: &[OutboxEvent]) -> Result<(), StorageError> {
    if events.is_empty() {
        return Ok(());
    }
    let mut insert = conn
        .prepare_cached("INSERT OR IGNORE INTO events (id, message, due_at) VALUES (?1, ?2, 0)")?;
    for event in events {
        insert.execute(params![event.id, event.message])?;
    }
    Ok(())
}

/// Webhook state in the database.
#[derive(Clone)]
pub struct SqliteWebhooks {
    db: Database,
    retention: std::time::Duration,
}

impl SqliteWebhooks {
    /// Webhook state in `db`; deliveries and their log are kept for `retention`.
    pub fn new(db: Database, retention: std::time::Duration) -> Self {
        Self { db, retention }
    }
}

fn webhooks_version(conn: &Connection) -> Result<u64, StorageError> {
    let version: i64 = conn.query_row(
        "SELECT version FROM versions WHERE name = 'webhooks'",
        [],
        |row| row.get(0),
    )?;
    Ok(version as u64)
}

/// A stored delivery, with the columns that move after it was written.
fn decode_delivery(json: &str, state: &str, due_at: i64) -> Result<Delivery, StorageError> {
    let mut delivery: Delivery = crate::codec::decode(json).map_err(|e| corrupt("delivery", e))?;
    delivery.state = DeliveryState::from_column(state);
    delivery.due_ms = due_at as u64;
    Ok(delivery)
}

impl SqliteWebhooks {
    fn expires(&self) -> i64 {
        (now_ms() + self.retention.as_millis() as u64) as i64
    }

    /// Stores `delivery` as it stands and logs `attempt`, on `conn`.
    fn finish_on(
        conn: &Connection,
        delivery: &Delivery,
        json: &str,
        attempt: Option<&str>,
        expires: i64,
    ) -> Result<(), StorageError> {
        conn.prepare_cached(
            "INSERT INTO deliveries (id, subscription, body, state, due_at, created_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (id) DO UPDATE SET body = excluded.body, state = excluded.state,
                due_at = excluded.due_at, expires_at = excluded.expires_at",
        )?
        .execute(params![
            delivery.id,
            delivery.subscription,
            json,
            delivery.state.as_str(),
            delivery.due_ms as i64,
            delivery.created_ms as i64,
            expires,
        ])?;
        if let Some(entry) = attempt {
            conn.prepare_cached(
                "INSERT INTO delivery_log (subscription, at_ms, entry) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![delivery.subscription, now_ms() as i64, entry])?;
        }
        Ok(())
    }
}

impl WebhookStore for SqliteWebhooks {
    fn version(&self) -> BoxFuture<'_, Result<u64, StorageError>> {
        Box::pin(self.db.read(webhooks_version))
    }

    fn subscriptions(&self) -> BoxFuture<'_, Result<Vec<(Subscription, u32)>, StorageError>> {
        Box::pin(self.db.read(|conn| {
            let mut statement = conn.prepare_cached("SELECT body, failures FROM subscriptions")?;
            let rows = statement.query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (json, failures) = row?;
                let sub: Subscription =
                    crate::codec::decode(&json).map_err(|e| corrupt("subscription", e))?;
                out.push((sub, failures as u32));
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
        Box::pin(async move {
            for _ in 0..CHANGE_TRIES {
                // Read, decide here, then write only if nobody changed
                // anything since (the version did not move).
                let (version, subs) = self
                    .db
                    .read(|conn| {
                        let version = webhooks_version(conn)?;
                        let mut statement =
                            conn.prepare_cached("SELECT body FROM subscriptions")?;
                        let rows = statement.query_map([], |row| row.get::<_, String>(0))?;
                        let mut subs = Vec::new();
                        for json in rows {
                            let sub: Subscription = crate::codec::decode(&json?)
                                .map_err(|e| corrupt("subscription", e))?;
                            subs.push(sub);
                        }
                        Ok((version, subs))
                    })
                    .await?;
                let (current, others): (Vec<Subscription>, Vec<Subscription>) =
                    subs.into_iter().partition(|s| s.id == id);
                let write = match decide(current.first(), &others) {
                    Ok(write) => write,
                    Err(refusal) => return Ok(Err(refusal)),
                };
                let json = match &write {
                    Write::Put { subscription, .. } => Some(encode(subscription.as_ref())?),
                    Write::Delete => None,
                };
                let reset = matches!(
                    write,
                    Write::Put {
                        reset_failures: true,
                        ..
                    }
                );
                let id = id.to_owned();
                let done = self
                    .db
                    .write(move |conn| {
                        if webhooks_version(conn)? != version {
                            return Ok(false);
                        }
                        match json {
                            Some(json) => {
                                conn.execute(
                                    "INSERT INTO subscriptions (id, body, failures) VALUES (?1, ?2, 0)
                                     ON CONFLICT (id) DO UPDATE SET body = excluded.body,
                                        failures = CASE WHEN ?3 THEN 0 ELSE failures END",
                                    params![id, json, reset],
                                )?;
                            }
                            None => {
                                conn.execute("DELETE FROM subscriptions WHERE id = ?1", [&id])?;
                                conn.execute("DELETE FROM delivery_log WHERE subscription = ?1", [&id])?;
                                conn.execute(
                                    "DELETE FROM deliveries WHERE subscription = ?1 AND state = 'skipped'",
                                    [&id],
                                )?;
                            }
                        }
                        conn.execute(
                            "UPDATE versions SET version = version + 1 WHERE name = 'webhooks'",
                            [],
                        )?;
                        Ok(true)
                    })
                    .await?;
                if done {
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
        let encoded: Result<Vec<(Delivery, String)>, StorageError> = deliveries
            .iter()
            .map(|d| Ok((d.clone(), encode(d)?)))
            .collect();
        let expires = self.expires();
        Box::pin(async move {
            let encoded = encoded?;
            self.db
                .write(move |conn| {
                    let mut statement = conn.prepare_cached(
                        "INSERT OR IGNORE INTO deliveries
                            (id, subscription, body, state, due_at, created_at, expires_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    )?;
                    let mut added = Vec::new();
                    for (delivery, json) in encoded {
                        let due = match delivery.state {
                            DeliveryState::Skipped => delivery.created_ms,
                            _ => delivery.due_ms,
                        };
                        let inserted = statement.execute(params![
                            delivery.id,
                            delivery.subscription,
                            json,
                            delivery.state.as_str(),
                            due as i64,
                            delivery.created_ms as i64,
                            expires,
                        ])?;
                        if inserted == 1 {
                            added.push(delivery.id);
                        }
                    }
                    Ok(added)
                })
                .await
        })
    }

    fn claim(
        &self,
        now_ms: u64,
        lease: std::time::Duration,
        max: usize,
    ) -> BoxFuture<'_, Result<Vec<Delivery>, StorageError>> {
        let lease_end = now_ms.saturating_add(lease.as_millis() as u64) as i64;
        Box::pin(self.db.write_relaxed(move |conn| {
            let mut statement = conn.prepare_cached(
                "UPDATE deliveries SET due_at = ?2 WHERE id IN
                    (SELECT id FROM deliveries WHERE state = 'pending' AND due_at <= ?1
                     ORDER BY due_at LIMIT ?3)
                 RETURNING body",
            )?;
            let rows = statement
                .query_map(params![now_ms as i64, lease_end, max as i64], |row| {
                    row.get::<_, String>(0)
                })?;
            let mut claimed = Vec::new();
            for json in rows {
                // As stored: the due time it had, not the lease.
                let mut delivery: Delivery =
                    crate::codec::decode(&json?).map_err(|e| corrupt("delivery", e))?;
                delivery.state = DeliveryState::Pending;
                claimed.push(delivery);
            }
            claimed.sort_by_key(|d| (d.created_ms, d.id.clone()));
            Ok(claimed)
        }))
    }

    fn defer<'a>(&'a self, due: &'a [(String, u64)]) -> BoxFuture<'a, Result<(), StorageError>> {
        let due = due.to_vec();
        Box::pin(self.db.write_relaxed(move |conn| {
            let mut statement = conn.prepare_cached(
                "UPDATE deliveries SET due_at = ?2 WHERE id = ?1 AND state = 'pending'",
            )?;
            for (id, at) in &due {
                statement.execute(params![id, (*at).min(i64::MAX as u64) as i64])?;
            }
            Ok(())
        }))
    }

    fn finish<'a>(
        &'a self,
        delivery: &'a Delivery,
        attempt: Option<&'a Attempt>,
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        let json = encode(delivery);
        let entry = attempt.map(encode).transpose();
        let delivery = delivery.clone();
        let expires = self.expires();
        Box::pin(async move {
            let (json, entry) = (json?, entry?);
            self.db
                .write_relaxed(move |conn| {
                    Self::finish_on(conn, &delivery, &json, entry.as_deref(), expires)
                })
                .await
        })
    }

    fn record_attempt<'a>(
        &'a self,
        delivery: &'a Delivery,
        attempt: &'a Attempt,
        succeeded: bool,
    ) -> BoxFuture<'a, Result<u32, StorageError>> {
        let json = encode(delivery);
        let entry = encode(attempt);
        let delivery = delivery.clone();
        let expires = self.expires();
        Box::pin(async move {
            let (json, entry) = (json?, entry?);
            self.db
                .write_relaxed(move |conn| {
                    Self::finish_on(conn, &delivery, &json, Some(&entry), expires)?;
                    let failures: Option<i64> = conn
                        .query_row(
                            "UPDATE subscriptions
                             SET failures = CASE WHEN ?2 THEN 0 ELSE failures + 1 END
                             WHERE id = ?1 RETURNING failures",
                            params![delivery.subscription, succeeded],
                            |row| row.get(0),
                        )
                        .optional()?;
                    Ok(failures.unwrap_or(0) as u32)
                })
                .await
        })
    }

    fn delivery<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Delivery>, StorageError>> {
        let id = id.to_owned();
        Box::pin(self.db.read(move |conn| {
            let row: Option<(String, String, i64)> = conn
                .prepare_cached(
                    "SELECT body, state, due_at FROM deliveries WHERE id = ?1 AND expires_at > ?2",
                )?
                .query_row(params![id, now_ms() as i64], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                })
                .optional()?;
            row.map(|(json, state, due)| decode_delivery(&json, &state, due))
                .transpose()
        }))
    }

    fn recover<'a>(
        &'a self,
        subscription: &'a str,
        since_ms: u64,
    ) -> BoxFuture<'a, Result<usize, StorageError>> {
        // In batches, each its own write: a backlog of hundreds of
        // thousands never holds the one writer (and the senders behind it)
        // for seconds.
        const BATCH: i64 = 2_000;
        Box::pin(async move {
            let mut total = 0;
            loop {
                let subscription = subscription.to_owned();
                let moved = self
                    .db
                    .write(move |conn| {
                        Ok(conn
                            .prepare_cached(
                                "UPDATE deliveries SET state = 'pending', due_at = ?3 WHERE id IN
                                    (SELECT id FROM deliveries WHERE subscription = ?1
                                     AND state = 'skipped' AND created_at >= ?2 LIMIT ?4)",
                            )?
                            .execute(params![
                                subscription,
                                since_ms as i64,
                                now_ms() as i64,
                                BATCH
                            ])?)
                    })
                    .await?;
                total += moved;
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
        let subscription = subscription.to_owned();
        let before: i64 = cursor.and_then(|c| c.parse().ok()).unwrap_or(i64::MAX);
        Box::pin(self.db.read(move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT seq, entry FROM delivery_log WHERE subscription = ?1 AND seq < ?2
                 ORDER BY seq DESC LIMIT ?3",
            )?;
            let rows = statement
                .query_map(params![subscription, before, limit as i64 + 1], |row| {
                    Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
                })?;
            let mut data = Vec::new();
            let mut more = false;
            for row in rows {
                let (seq, json) = row?;
                if data.len() == limit {
                    more = true;
                    break;
                }
                let mut attempt: Attempt =
                    crate::codec::decode(&json).map_err(|e| corrupt("delivery log entry", e))?;
                attempt.id = seq.to_string();
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
        let events = events.to_vec();
        Box::pin(
            self.db
                .write_relaxed(move |conn| insert_events(conn, &events)),
        )
    }

    fn claim_events(
        &self,
        now_ms: u64,
        lease: std::time::Duration,
        max: usize,
    ) -> BoxFuture<'_, Result<Vec<ClaimedEvent>, StorageError>> {
        Box::pin(self.db.write_relaxed(move |conn| {
            let until = now_ms.saturating_add(lease.as_millis() as u64) as i64;
            let mut claim = conn.prepare_cached(
                "UPDATE events SET due_at = ?1 WHERE id IN
                    (SELECT id FROM events WHERE due_at <= ?2 ORDER BY due_at LIMIT ?3)
                 RETURNING id, message",
            )?;
            let rows = claim.query_map(params![until, now_ms as i64, max as i64], |row| {
                Ok(ClaimedEvent {
                    id: row.get(0)?,
                    message: row.get(1)?,
                    place: 0,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        }))
    }

    fn ack_events<'a>(
        &'a self,
        events: &'a [ClaimedEvent],
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
        Box::pin(self.db.write_relaxed(move |conn| {
            let mut delete = conn.prepare_cached("DELETE FROM events WHERE id = ?1")?;
            for id in &ids {
                delete.execute([id])?;
            }
            Ok(())
        }))
    }

    fn events_depth(&self) -> BoxFuture<'_, Result<u64, StorageError>> {
        Box::pin(self.db.read(|conn| {
            let n: i64 = conn.query_row("SELECT count(*) FROM events", [], |row| row.get(0))?;
            Ok(n as u64)
        }))
    }

    fn outbox_depth(&self) -> BoxFuture<'_, Result<u64, StorageError>> {
        Box::pin(self.db.read(|conn| {
            let n: i64 = conn.query_row(
                "SELECT count(*) FROM deliveries WHERE state = 'pending'",
                [],
                |row| row.get(0),
            )?;
            Ok(n as u64)
        }))
    }

    fn prune(&self, before_ms: u64) -> BoxFuture<'_, Result<(), StorageError>> {
        Box::pin(self.db.write_relaxed(move |conn| {
            let before = before_ms as i64;
            conn.execute("DELETE FROM delivery_log WHERE at_ms < ?1", [before])?;
            conn.execute(
                "DELETE FROM deliveries WHERE state = 'skipped' AND created_at < ?1",
                [before],
            )?;
            conn.execute(
                "DELETE FROM deliveries WHERE expires_at <= ?1 AND state != 'pending'",
                [now_ms() as i64],
            )?;
            Ok(())
        }))
    }
}
