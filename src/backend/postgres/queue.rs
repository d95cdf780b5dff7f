//! [`RunQueue`] on PostgreSQL: one `queue` row per run waiting, waiting to
//! retry or in progress. A claim sets the row's `consumer` and `lease_at`,
//! picking rows with `FOR UPDATE SKIP LOCKED` so concurrent workers (in any
//! process) never claim one run twice nor wait on each other; a heartbeat
//! moves `lease_at`; a row whose lease went quiet is taken over. A run
//! waiting to retry a step is a row with `waiting` set until due. Each
//! transition writes the run's record in the same transaction.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::GenericClient;
use tokio::sync::Notify;

use super::batch::{QueueRow, Write};
use super::store::{PostgresStore, RecordRow, exec, ms, rows};
use super::webhooks::insert_events;
use super::{Database, corrupt, encode, storable, timed};
use crate::backend::webhooks::OutboxEvent;
use crate::backend::{BoxFuture, Buried, Claimed, Delivery, RunQueue, StorageError, now_ms};
use crate::engine::RunInput;
use crate::record::{RecordedResponse, RunRecord};

/// How often a claim waiting for work looks again for runs stored by
/// another process (this process's own wake it at once).
const POLL: Duration = Duration::from_millis(50);

/// The run queue in the database.
#[derive(Clone)]
pub struct PostgresQueue {
    db: Database,
    store: PostgresStore,
    arrived: Arc<Notify>,
}

/// A run input as its queue row holds it: the JSON without the raw body
/// text, and that text (see [`RunInput::queued_parts`]). A raw body
/// holding a NUL character (which PostgreSQL's `TEXT` cannot) stays
/// escaped inside the JSON instead.
fn queued(input: &RunInput) -> Result<(String, Option<String>), StorageError> {
    let (head, raw) = input.queued_parts().map_err(|e| corrupt("encoding", e))?;
    match raw {
        Some(raw) if !storable(raw) => Ok((encode(input)?, None)),
        raw => Ok((head, raw.map(str::to_owned))),
    }
}

/// A queue row's run input, acceptance time and answer.
fn decode_row(
    input: &str,
    raw: Option<String>,
    accepted_at: i64,
    answer: Option<&str>,
) -> Result<(RunInput, u64, Option<RecordedResponse>), String> {
    let input = RunInput::from_queued_parts(input, raw).map_err(|e| e.to_string())?;
    let answer = answer
        .map(crate::codec::decode)
        .transpose()
        .map_err(|e| e.to_string())?;
    Ok((input, accepted_at.max(0) as u64, answer))
}

fn seq(id: &str) -> Result<i64, StorageError> {
    id.parse()
        .map_err(|_| StorageError::Corrupt(format!("`{id}` is not a delivery of this queue")))
}

/// Moves queue row `seq` to the dead letters for `problem` and records its
/// run (when it has a record) as aborted with the reason.
async fn bury(
    c: &impl GenericClient,
    seq: i64,
    run_id: String,
    input: &str,
    problem: &str,
    retention: Duration,
) -> Result<Buried, StorageError> {
    let reason = format!("dead-lettered: the queued run cannot be decoded ({problem})");
    exec(c, "DELETE FROM flowgate.queue WHERE seq = $1", &[&seq]).await?;
    exec(
        c,
        "INSERT INTO flowgate.dead_letters (run_id, reason, input, at) VALUES ($1, $2, $3, $4)",
        &[
            &run_id,
            &reason,
            &crate::backend::dead_input(input),
            &(now_ms() as i64),
        ],
    )
    .await?;
    let stored = rows(
        c,
        "SELECT record FROM flowgate.runs WHERE id = $1",
        &[&run_id],
    )
    .await?;
    let mut flow = None;
    if let Some(Ok(mut record)) = stored
        .first()
        .map(|row| crate::codec::decode::<RunRecord>(row.get(0)))
    {
        record.abort(&reason);
        flow = Some(record.flow.clone());
        PostgresStore::write_record(c, &RecordRow::of(&record)?, retention).await?;
    }
    Ok(Buried {
        run_id,
        flow,
        reason,
    })
}

impl PostgresQueue {
    /// The queue in `db`, writing records through `store`.
    pub fn new(db: Database, store: PostgresStore) -> Self {
        Self {
            db,
            store,
            arrived: Arc::new(Notify::new()),
        }
    }

    /// Leases to `consumer` up to `max` rows: new runs in order
    /// (`idle_before` = `None`), or runs whose lease went quiet before
    /// `idle_before`. A row that cannot be decoded is dead-lettered in the
    /// same transaction and its run recorded aborted, so it never holds up
    /// the others; those runs come back apart, to be announced.
    async fn lease(
        &self,
        consumer: &str,
        max: usize,
        idle_before: Option<i64>,
    ) -> Result<Claimed, StorageError> {
        let pick = match idle_before {
            None => {
                "SELECT seq FROM flowgate.queue WHERE consumer IS NULL AND NOT waiting
                 ORDER BY seq LIMIT $3 FOR UPDATE SKIP LOCKED"
            }
            Some(_) => {
                "SELECT seq FROM flowgate.queue WHERE consumer IS NOT NULL AND lease_at <= $4
                 ORDER BY lease_at LIMIT $3 FOR UPDATE SKIP LOCKED"
            }
        };
        let sql = format!(
            "UPDATE flowgate.queue q SET consumer = $1, lease_at = $2
             FROM ({pick}) pick WHERE q.seq = pick.seq
             RETURNING q.seq, q.run_id, q.input, q.raw, q.accepted_at, q.answer"
        );
        let now = now_ms() as i64;
        let max = max as i64;
        let mut client = self.db.client().await?;
        let tx = client.transaction().await?;
        let found = match &idle_before {
            None => rows(&tx, &sql, &[&consumer, &now, &max]).await?,
            Some(before) => rows(&tx, &sql, &[&consumer, &now, &max, before]).await?,
        };
        let taken_over = idle_before.is_some();
        let mut leased = Claimed::default();
        for row in found {
            let (seq, run_id, input): (i64, String, String) = (row.get(0), row.get(1), row.get(2));
            match decode_row(&input, row.get(3), row.get(4), row.get(5)) {
                Ok((input, accepted_at_ms, answer)) => leased.runs.push(Delivery {
                    id: seq.to_string(),
                    input,
                    accepted_at_ms,
                    taken_over,
                    answer,
                }),
                Err(problem) => {
                    let retention = self.store.retention();
                    let buried = bury(&tx, seq, run_id, &input, &problem, retention).await?;
                    leased.buried.push(buried);
                }
            }
        }
        tx.commit().await?;
        leased
            .runs
            .sort_by_key(|d| d.id.parse::<i64>().unwrap_or(0));
        Ok(leased)
    }
}

impl PostgresQueue {
    /// How every transition ends: the events it owes and the run's record
    /// written in its transaction `tx`, the commit, then (upkeep, outside
    /// it) the flow trimmed to its cap when due.
    async fn finish(
        &self,
        tx: deadpool_postgres::Transaction<'_>,
        events: &[OutboxEvent],
        record: Option<&RecordRow>,
    ) -> Result<(), StorageError> {
        insert_events(&tx, events).await?;
        if let Some(row) = record {
            PostgresStore::write_record(&tx, row, self.store.retention()).await?;
        }
        tx.commit().await?;
        if let Some(row) = record {
            self.store.trim_after(row).await;
        }
        Ok(())
    }
}

impl RunQueue for PostgresQueue {
    fn prepare(&self) -> BoxFuture<'_, Result<(), StorageError>> {
        Box::pin(async { Ok(()) })
    }

    fn enqueue_with<'a>(
        &'a self,
        input: &'a RunInput,
        record: Option<&'a RunRecord>,
        events: &'a [OutboxEvent],
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(async move {
            let (json, raw) = queued(input)?;
            let answer = record
                .and_then(|r| r.response.as_ref())
                .map(encode)
                .transpose()?;
            let write = Write {
                queue: Some(QueueRow {
                    run_id: input.run_id.clone(),
                    input: json,
                    raw,
                    accepted_at: now_ms() as i64,
                    answer,
                }),
                record: RecordRow::of_some(record)?,
                events: events.to_vec(),
            };
            // Committed (and flushed, as the server's synchronous_commit
            // says) before the sender hears of it.
            self.store.write(write).await?;
            self.arrived.notify_waiters();
            Ok(())
        })
    }

    fn claim<'a>(
        &'a self,
        consumer: &'a str,
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'a, Result<Claimed, StorageError>> {
        Box::pin(crate::backend::claim_within(
            &self.arrived,
            wait,
            POLL,
            move || timed(self.lease(consumer, max, None)),
        ))
    }

    fn take_over<'a>(
        &'a self,
        consumer: &'a str,
        idle: Duration,
        max: usize,
    ) -> BoxFuture<'a, Result<Claimed, StorageError>> {
        let idle_before = now_ms().saturating_sub(idle.as_millis() as u64) as i64;
        Box::pin(timed(self.lease(consumer, max, Some(idle_before))))
    }

    fn extend_leases<'a>(
        &'a self,
        consumer: &'a str,
        ids: &'a [String],
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(timed(async move {
            let seqs = ids
                .iter()
                .map(|id| seq(id))
                .collect::<Result<Vec<_>, _>>()?;
            let client = self.db.client().await?;
            exec(
                &client,
                "UPDATE flowgate.queue SET lease_at = $1 WHERE seq = ANY($2) AND consumer = $3",
                &[&(now_ms() as i64), &seqs, &consumer],
            )
            .await?;
            Ok(())
        }))
    }

    fn complete_with<'a>(
        &'a self,
        id: &'a str,
        record: Option<&'a RunRecord>,
        events: &'a [OutboxEvent],
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(timed(async move {
            let seq = seq(id)?;
            let record = RecordRow::of_some(record)?;
            let mut client = self.db.client().await?;
            let tx = client.transaction().await?;
            exec(&tx, "DELETE FROM flowgate.queue WHERE seq = $1", &[&seq]).await?;
            self.finish(tx, events, record.as_ref()).await
        }))
    }

    fn retry_later_with<'a>(
        &'a self,
        id: &'a str,
        input: &'a RunInput,
        due_ms: u64,
        record: Option<&'a RunRecord>,
        events: &'a [OutboxEvent],
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(timed(async move {
            let seq = seq(id)?;
            let (json, raw) = queued(input)?;
            let record = RecordRow::of_some(record)?;
            let due = ms(due_ms);
            let mut client = self.db.client().await?;
            let tx = client.transaction().await?;
            // The row keeps its acceptance time and answer; it waits unleased.
            let changed = exec(
                &tx,
                "UPDATE flowgate.queue SET input = $2, raw = $4, waiting = true, due_at = $3,
                    consumer = NULL, lease_at = NULL
                 WHERE seq = $1",
                &[&seq, &json, &due, &raw],
            )
            .await?;
            if changed == 0 {
                exec(
                    &tx,
                    "INSERT INTO flowgate.queue (run_id, input, raw, accepted_at, waiting, due_at)
                     VALUES ($1, $2, $3, $4, true, $5)",
                    &[&input.run_id, &json, &raw, &(now_ms() as i64), &due],
                )
                .await?;
            }
            self.finish(tx, events, record.as_ref()).await
        }))
    }

    fn requeue_due_retries(&self, max: usize) -> BoxFuture<'_, Result<usize, StorageError>> {
        Box::pin(timed(async move {
            let client = self.db.client().await?;
            let moved = exec(
                &client,
                "UPDATE flowgate.queue SET waiting = false WHERE seq IN
                    (SELECT seq FROM flowgate.queue WHERE waiting AND due_at <= $1
                     ORDER BY due_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
                &[&(now_ms() as i64), &(max as i64)],
            )
            .await?;
            if moved > 0 {
                self.arrived.notify_waiters();
            }
            Ok(moved as usize)
        }))
    }

    fn dead_letter_with<'a>(
        &'a self,
        delivery: &'a Delivery,
        reason: &'a str,
        record: &'a RunRecord,
        events: &'a [OutboxEvent],
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(timed(async move {
            let seq = seq(&delivery.id)?;
            let input = encode(&delivery.input)?;
            let row = RecordRow::of(record)?;
            let mut client = self.db.client().await?;
            let tx = client.transaction().await?;
            exec(&tx, "DELETE FROM flowgate.queue WHERE seq = $1", &[&seq]).await?;
            exec(
                &tx,
                "INSERT INTO flowgate.dead_letters (run_id, reason, input, at)
                 VALUES ($1, $2, $3, $4)",
                &[
                    &delivery.input.run_id,
                    &reason.replace('\0', " "),
                    &input,
                    &(now_ms() as i64),
                ],
            )
            .await?;
            self.finish(tx, events, Some(&row)).await
        }))
    }

    fn depth(&self) -> BoxFuture<'_, Result<u64, StorageError>> {
        Box::pin(timed(async move {
            let client = self.db.client().await?;
            let found = rows(&client, "SELECT count(*) FROM flowgate.queue", &[]).await?;
            Ok(found.first().map_or(0, |row| row.get::<_, i64>(0)) as u64)
        }))
    }
}
