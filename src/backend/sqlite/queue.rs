//! [`RunQueue`] on SQLite: one `queue` row per run waiting, waiting to
//! retry or in progress. A claim sets the row's `consumer` and `lease_at`
//! in the writer's transaction (so two workers never claim one run); a
//! heartbeat moves `lease_at`; a row whose lease went quiet is taken over.
//! A run waiting to retry a step is a row with `waiting = 1` until due.
//! Each transition writes the run's record in the same transaction.

use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::Notify;

use super::store::RecordRow;
use super::webhooks::insert_events;
use super::{Database, SqliteStore, corrupt, encode};
use crate::backend::webhooks::OutboxEvent;
use crate::backend::{BoxFuture, Buried, Claimed, Delivery, RunQueue, StorageError, now_ms};
use crate::engine::RunInput;
use crate::record::{RecordedResponse, RunRecord};

/// How often a claim waiting for work looks again for runs stored by
/// another process (this process's own wake it at once).
const POLL: Duration = Duration::from_millis(50);

/// The run queue in the database.
#[derive(Clone)]
pub struct SqliteQueue {
    db: Database,
    store: SqliteStore,
    arrived: Arc<Notify>,
}

/// A run input as its queue row holds it: the JSON without the raw body
/// text, and that text (see [`RunInput::queued_parts`]).
fn queued(input: &RunInput) -> Result<(String, Option<String>), StorageError> {
    let (head, raw) = input.queued_parts().map_err(|e| corrupt("encoding", e))?;
    Ok((head, raw.map(str::to_owned)))
}

/// A record's row, when the write has one, taken before the write.
type Encoded = Option<RecordRow>;

fn encoded(record: Option<&RunRecord>) -> Result<Encoded, StorageError> {
    record.map(RecordRow::of).transpose()
}

impl SqliteQueue {
    /// The queue in `db`, writing records through `store`.
    pub fn new(db: Database, store: SqliteStore) -> Self {
        Self {
            db,
            store,
            arrived: Arc::new(Notify::new()),
        }
    }

    fn write_record(&self, conn: &Connection, record: &Encoded) -> Result<(), StorageError> {
        if let Some(row) = record {
            SqliteStore::write_record(conn, row, self.store.retention())?;
        }
        Ok(())
    }

    /// Leases to `consumer` up to `max` rows the query `pick` selects:
    /// new runs in order (`idle_before` = `None`), or runs whose lease went
    /// quiet before `idle_before` (each on its own index). A row that
    /// cannot be decoded is dead-lettered in the same transaction and its
    /// run recorded aborted, so it never holds up the others; those runs
    /// come back apart, to be announced.
    fn lease(
        conn: &Connection,
        consumer: &str,
        max: usize,
        idle_before: Option<i64>,
        retention: Duration,
    ) -> Result<Claimed, StorageError> {
        let now = now_ms() as i64;
        let pick = match idle_before {
            None => {
                "SELECT seq FROM queue WHERE consumer IS NULL AND waiting = 0 ORDER BY seq LIMIT ?3"
            }
            Some(_) => {
                "SELECT seq FROM queue WHERE consumer IS NOT NULL AND lease_at <= ?4 ORDER BY lease_at LIMIT ?3"
            }
        };
        let taken_over = idle_before.is_some();
        let mut statement = conn.prepare_cached(&format!(
            "UPDATE queue SET consumer = ?1, lease_at = ?2 WHERE seq IN ({pick})
             RETURNING seq, run_id, input, raw, accepted_at, answer"
        ))?;
        let values: Vec<rusqlite::types::Value> =
            [consumer.to_owned().into(), now.into(), (max as i64).into()]
                .into_iter()
                .chain(idle_before.map(Into::into))
                .collect();
        // Read as stored, whatever the column holds: a value of the wrong
        // type or bytes that are not UTF-8 are that row's problem alone.
        let rows = statement.query_map(rusqlite::params_from_iter(values), |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, rusqlite::types::Value>(1)?,
                row.get::<_, rusqlite::types::Value>(2)?,
                row.get::<_, rusqlite::types::Value>(3)?,
                row.get::<_, rusqlite::types::Value>(4)?,
                row.get::<_, rusqlite::types::Value>(5)?,
            ))
        })?;
        let mut leased = Claimed::default();
        let mut bad = Vec::new();
        for row in rows {
            let (seq, run_id, input, raw, accepted_at, answer) = row?;
            match decode_row(&input, raw, &accepted_at, answer) {
                Ok((input, accepted_at_ms, answer)) => leased.runs.push(Delivery {
                    id: seq.to_string(),
                    input,
                    accepted_at_ms,
                    taken_over,
                    answer,
                }),
                Err(problem) => bad.push((seq, text_of(&run_id), text_of(&input), problem)),
            }
        }
        drop(statement);
        for (seq, run_id, input, problem) in bad {
            leased
                .buried
                .push(bury(conn, seq, run_id, &input, &problem, retention)?);
        }
        leased
            .runs
            .sort_by_key(|d| d.id.parse::<i64>().unwrap_or(0));
        Ok(leased)
    }
}

/// A queue row's run input, acceptance time and answer.
fn decode_row(
    input: &rusqlite::types::Value,
    raw: rusqlite::types::Value,
    accepted_at: &rusqlite::types::Value,
    answer: rusqlite::types::Value,
) -> Result<(RunInput, u64, Option<RecordedResponse>), String> {
    use rusqlite::types::Value;
    let rusqlite::types::Value::Text(input) = input else {
        return Err("the input is not text".to_owned());
    };
    let raw = match raw {
        Value::Null => None,
        Value::Text(raw) => Some(raw),
        _ => return Err("the raw body is not text".to_owned()),
    };
    let Value::Integer(accepted_at) = accepted_at else {
        return Err("the acceptance time is not a number".to_owned());
    };
    let input = RunInput::from_queued_parts(input, raw).map_err(|e| e.to_string())?;
    let answer = match answer {
        Value::Null => None,
        Value::Text(answer) => Some(crate::codec::decode(&answer).map_err(|e| e.to_string())?),
        _ => return Err("the answer is not text".to_owned()),
    };
    Ok((input, (*accepted_at).max(0) as u64, answer))
}

/// A column as text for a dead letter, whatever it holds.
fn text_of(value: &rusqlite::types::Value) -> String {
    use rusqlite::types::Value;
    match value {
        Value::Null => String::new(),
        Value::Integer(n) => n.to_string(),
        Value::Real(n) => n.to_string(),
        Value::Text(text) => text.clone(),
        Value::Blob(bytes) => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// Moves queue row `seq` to the dead letters for `problem` and records its
/// run (when it has a record) as aborted with the reason.
fn bury(
    conn: &Connection,
    seq: i64,
    run_id: String,
    input: &str,
    problem: &str,
    retention: Duration,
) -> Result<Buried, StorageError> {
    let reason = format!("dead-lettered: the queued run cannot be decoded ({problem})");
    conn.prepare_cached("DELETE FROM queue WHERE seq = ?1")?
        .execute([seq])?;
    conn.prepare_cached(
        "INSERT INTO dead_letters (run_id, reason, input, at) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![
        run_id,
        reason,
        crate::backend::dead_input(input),
        now_ms() as i64
    ])?;
    let stored: Option<String> = conn
        .prepare_cached("SELECT record FROM runs WHERE id = ?1")?
        .query_row([&run_id], |row| row.get(0))
        .optional()?;
    let mut flow = None;
    if let Some(Ok(mut record)) = stored.map(|json| crate::codec::decode::<RunRecord>(&json)) {
        record.abort(&reason);
        flow = Some(record.flow.clone());
        SqliteStore::write_record(conn, &RecordRow::of(&record)?, retention)?;
    }
    Ok(Buried {
        run_id,
        flow,
        reason,
    })
}

fn seq(id: &str) -> Result<i64, StorageError> {
    id.parse()
        .map_err(|_| StorageError::Corrupt(format!("`{id}` is not a delivery of this queue")))
}

impl RunQueue for SqliteQueue {
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
            let events = events.to_vec();
            // Nothing is accepted into a file that is no longer the database.
            self.db.check_file()?;
            let (json, raw) = queued(input)?;
            let answer = record
                .and_then(|r| r.response.as_ref())
                .map(encode)
                .transpose()?;
            let record = encoded(record)?;
            let run_id = input.run_id.clone();
            let this = self.clone();
            self.db
                .write(move |conn| {
                    let now = now_ms() as i64;
                    conn.prepare_cached(
                        "INSERT INTO queue (run_id, input, raw, accepted_at, answer, due_at)
                         VALUES (?1, ?2, ?5, ?3, ?4, ?3)",
                    )?
                    .execute(params![run_id, json, now, answer, raw])?;
                    insert_events(conn, &events)?;
                    this.write_record(conn, &record)
                })
                .await?;
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
        let retention = self.store.retention();
        Box::pin(crate::backend::claim_within(
            &self.arrived,
            wait,
            POLL,
            move || {
                let owner = consumer.to_owned();
                self.db
                    .write_relaxed(move |conn| Self::lease(conn, &owner, max, None, retention))
            },
        ))
    }

    fn take_over<'a>(
        &'a self,
        consumer: &'a str,
        idle: Duration,
        max: usize,
    ) -> BoxFuture<'a, Result<Claimed, StorageError>> {
        let owner = consumer.to_owned();
        let idle_before = now_ms().saturating_sub(idle.as_millis() as u64) as i64;
        let retention = self.store.retention();
        Box::pin(async move {
            let leased = self
                .db
                .write_relaxed(move |conn| {
                    Self::lease(conn, &owner, max, Some(idle_before), retention)
                })
                .await?;
            Ok(leased)
        })
    }

    fn extend_leases<'a>(
        &'a self,
        consumer: &'a str,
        ids: &'a [String],
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        let owner = consumer.to_owned();
        let seqs: Result<Vec<i64>, StorageError> = ids.iter().map(|id| seq(id)).collect();
        Box::pin(async move {
            let seqs = seqs?;
            self.db
                .write_relaxed(move |conn| {
                    let now = now_ms() as i64;
                    let mut statement = conn.prepare_cached(
                        "UPDATE queue SET lease_at = ?1 WHERE seq = ?2 AND consumer = ?3",
                    )?;
                    for seq in seqs {
                        statement.execute(params![now, seq, owner])?;
                    }
                    Ok(())
                })
                .await
        })
    }

    fn complete_with<'a>(
        &'a self,
        id: &'a str,
        record: Option<&'a RunRecord>,
        events: &'a [OutboxEvent],
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(async move {
            let events = events.to_vec();
            let seq = seq(id)?;
            let record = encoded(record)?;
            let this = self.clone();
            self.db
                .write_relaxed(move |conn| {
                    conn.prepare_cached("DELETE FROM queue WHERE seq = ?1")?
                        .execute([seq])?;
                    insert_events(conn, &events)?;
                    this.write_record(conn, &record)
                })
                .await
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
            let events = events.to_vec();
            let seq = seq(id)?;
            let (json, raw) = queued(input)?;
            let record = encoded(record)?;
            let run_id = input.run_id.clone();
            let this = self.clone();
            self.db
                .write_relaxed(move |conn| {
                    // The row keeps its acceptance time and answer; it waits unleased.
                    let changed = conn
                        .prepare_cached(
                            "UPDATE queue SET input = ?2, raw = ?4, waiting = 1, due_at = ?3,
                                consumer = NULL, lease_at = NULL
                             WHERE seq = ?1",
                        )?
                        .execute(params![seq, json, due_ms as i64, raw])?;
                    if changed == 0 {
                        conn.prepare_cached(
                            "INSERT INTO queue (run_id, input, raw, accepted_at, waiting, due_at)
                             VALUES (?1, ?2, ?5, ?3, 1, ?4)",
                        )?
                        .execute(params![
                            run_id,
                            json,
                            now_ms() as i64,
                            due_ms as i64,
                            raw
                        ])?;
                    }
                    insert_events(conn, &events)?;
                    this.write_record(conn, &record)
                })
                .await
        })
    }

    fn requeue_due_retries(&self, max: usize) -> BoxFuture<'_, Result<usize, StorageError>> {
        Box::pin(async move {
            let moved = self
                .db
                .write_relaxed(move |conn| {
                    Ok(conn
                        .prepare_cached(
                            "UPDATE queue SET waiting = 0 WHERE seq IN
                                (SELECT seq FROM queue WHERE waiting = 1 AND due_at <= ?1
                                 ORDER BY due_at LIMIT ?2)",
                        )?
                        .execute(params![now_ms() as i64, max as i64])?)
                })
                .await?;
            if moved > 0 {
                self.arrived.notify_waiters();
            }
            Ok(moved)
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
            let events = events.to_vec();
            let seq = seq(&delivery.id)?;
            let input = encode(&delivery.input)?;
            let record = encoded(Some(record))?;
            let (run_id, reason) = (delivery.input.run_id.clone(), reason.to_owned());
            let this = self.clone();
            self.db
                .write_relaxed(move |conn| {
                    conn.prepare_cached("DELETE FROM queue WHERE seq = ?1")?
                        .execute([seq])?;
                    conn.prepare_cached(
                        "INSERT INTO dead_letters (run_id, reason, input, at) VALUES (?1, ?2, ?3, ?4)",
                    )?
                    .execute(params![run_id, reason, input, now_ms() as i64])?;
                    insert_events(conn, &events)?;
                    this.write_record(conn, &record)
                })
                .await
        })
    }

    fn depth(&self) -> BoxFuture<'_, Result<u64, StorageError>> {
        Box::pin(async move {
            self.db.check_file()?;
            self.db
                .read(|conn| {
                    let n: i64 =
                        conn.query_row("SELECT count(*) FROM queue", [], |row| row.get(0))?;
                    Ok(n as u64)
                })
                .await
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use rusqlite::params;
    use serde_json::json;

    use super::{SqliteQueue, SqliteStore};
    use crate::backend::RunQueue;
    use crate::backend::sqlite::{Database, MIGRATIONS};
    use crate::engine::RunInput;

    fn input(run_id: &str, raw: &str) -> RunInput {
        RunInput {
            run_id: run_id.into(),
            flow_id: "f".into(),
            mode: "async".into(),
            live: true,
            body: Arc::new(serde_json::from_str(raw).unwrap()),
            raw_is_body: true,
            request: Arc::new(json!({"headers": {"content-type": "application/json"}, "raw": raw})),
            resume: None,
            replay_of: None,
        }
    }

    #[tokio::test]
    async fn runs_queued_before_the_raw_column_are_claimed_whole_and_new_ones_split() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flowgate.db");
        let old = input("old", r#"{"b": "\"q\"", "a": 1}"#);
        {
            // A file at the schema before the `raw` column, with a run queued then.
            let conn = rusqlite::Connection::open(&path).unwrap();
            for migration in &MIGRATIONS[..5] {
                conn.execute_batch(migration).unwrap();
            }
            conn.pragma_update(None, "user_version", 5).unwrap();
            conn.execute(
                "INSERT INTO queue (run_id, input, accepted_at, due_at) VALUES ('old', ?1, 1, 1)",
                params![crate::codec::encode(&old).unwrap()],
            )
            .unwrap();
        }
        let db = Database::open(&path, true).unwrap();
        let queue = SqliteQueue::new(db.clone(), SqliteStore::new(db, Duration::from_secs(60)));
        let new = input("new", r#"{"z": [1, 2.5], "y": "é"}"#);
        queue.enqueue(&new, None).await.unwrap();
        let claimed = queue.claim("c", 10, Duration::ZERO).await.unwrap().runs;
        assert_eq!(claimed.len(), 2);
        for (delivery, sent) in claimed.iter().zip([&old, &new]) {
            assert_eq!(delivery.input.run_id, sent.run_id);
            assert_eq!(*delivery.input.body, *sent.body);
            assert_eq!(*delivery.input.request, *sent.request, "fields and order");
            assert!(delivery.input.raw_is_body);
        }
        let raw: Option<String> = rusqlite::Connection::open(&path)
            .unwrap()
            .query_row("SELECT raw FROM queue WHERE run_id = 'new'", [], |row| {
                row.get(0)
            })
            .unwrap();
        assert_eq!(raw.as_deref(), new.request["raw"].as_str());
    }
}
