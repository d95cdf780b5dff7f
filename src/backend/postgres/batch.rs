//! Group commit: concurrent accepts and record writes folded into one
//! statement, committed once.
//!
//! Each write (a queued run with its first record, or a run record, each
//! with the events it owes) goes into a bounded channel; [`WRITERS`] tasks
//! take what is waiting, up to [`MAX_BATCH`] writes, and send it as one
//! statement of `INSERT … SELECT FROM unnest(…)` parts, which PostgreSQL
//! runs as one transaction: all the writes commit together, with one WAL
//! flush, or none does. Every caller is answered when that commit is.
//! Under light load a batch holds one write and costs one round trip; under
//! heavy load many writes share the round trip, the parse and the flush.
//!
//! The channel holds at most [`QUEUED_WRITES`]; a caller beyond that waits
//! for room (backpressure), never dropped. A write that waited longer than
//! [`super::WAIT_TIMEOUT`] for room or for a writer is answered `Err`
//! without being sent: when PostgreSQL is slow, senders hear so within
//! seconds and nothing they were refused is stored later.

use std::sync::{Arc, OnceLock};

use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_postgres::types::ToSql;

use super::store::{PostgresStore, RecordRow, rows};
use super::{Database, StorageError};
use crate::backend::webhooks::OutboxEvent;

/// Tasks sending batches at once (each holds one pooled connection while it does).
const WRITERS: usize = 4;
/// Writes in one statement at most.
const MAX_BATCH: usize = 256;
/// Writes waiting for a writer at most.
const QUEUED_WRITES: usize = 4096;

/// A queued run as its queue row holds it.
pub(super) struct QueueRow {
    pub run_id: String,
    pub input: String,
    pub raw: Option<String>,
    pub accepted_at: i64,
    pub answer: Option<String>,
}

/// One write: what it stores, together.
pub(super) struct Write {
    pub queue: Option<QueueRow>,
    pub record: Option<RecordRow>,
    pub events: Vec<OutboxEvent>,
}

struct Job {
    write: Write,
    done: oneshot::Sender<Result<(), StorageError>>,
    /// When the caller handed it in.
    since: tokio::time::Instant,
}

/// The writers and the channel to them, started by the first write (in the
/// runtime that serves, not the one start-up migrated with).
#[derive(Clone)]
pub(super) struct Batcher {
    db: Database,
    retention: std::time::Duration,
    jobs: Arc<OnceLock<mpsc::Sender<Job>>>,
}

impl Batcher {
    pub fn new(db: Database, retention: std::time::Duration) -> Self {
        Self {
            db,
            retention,
            jobs: Arc::new(OnceLock::new()),
        }
    }

    /// Stores `write` in the next batch; answers once it committed.
    pub async fn write(&self, write: Write) -> Result<(), StorageError> {
        let jobs = self.jobs.get_or_init(|| self.start());
        let (done, result) = oneshot::channel();
        let since = tokio::time::Instant::now();
        match tokio::time::timeout(super::WAIT_TIMEOUT, jobs.send(Job { write, done, since })).await
        {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(stopped()),
            Err(_) => return Err(busy()),
        }
        result.await.map_err(|_| stopped())?
    }

    fn start(&self) -> mpsc::Sender<Job> {
        let (tx, rx) = mpsc::channel::<Job>(QUEUED_WRITES);
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..WRITERS {
            let (rx, db, retention) = (rx.clone(), self.db.clone(), self.retention);
            tokio::spawn(async move {
                loop {
                    let mut batch = Vec::new();
                    {
                        let mut rx = rx.lock().await;
                        let Some(first) = rx.recv().await else { return };
                        batch.push(first);
                        while batch.len() < MAX_BATCH {
                            match rx.try_recv() {
                                Ok(job) => batch.push(job),
                                Err(_) => break,
                            }
                        }
                    }
                    // Waited past its bound: refused unsent, so never stored.
                    let (batch, late): (Vec<Job>, Vec<Job>) = batch
                        .into_iter()
                        .partition(|job| job.since.elapsed() < super::WAIT_TIMEOUT);
                    for job in late {
                        let _ = job.done.send(Err(busy()));
                    }
                    if batch.is_empty() {
                        continue;
                    }
                    let (writes, answers): (Vec<Write>, Vec<_>) =
                        batch.into_iter().map(|job| (job.write, job.done)).unzip();
                    let outcome = super::timed(commit(&db, &writes, retention)).await;
                    for done in answers {
                        let _ = done.send(outcome.clone());
                    }
                }
            });
        }
        tx
    }
}

fn busy() -> StorageError {
    StorageError::Unavailable(format!(
        "PostgreSQL is not keeping up: the write waited {} s for its turn and was not stored",
        super::WAIT_TIMEOUT.as_secs()
    ))
}

fn stopped() -> StorageError {
    StorageError::Unavailable("PostgreSQL: the batch writer stopped".into())
}

/// The one statement storing `writes`.
const BATCH: &str = "
WITH q AS (
    INSERT INTO flowgate.queue (run_id, input, raw, accepted_at, answer, due_at)
    SELECT run_id, input, raw, accepted_at, answer, accepted_at
    FROM unnest($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::BIGINT[], $5::TEXT[])
        WITH ORDINALITY AS t (run_id, input, raw, accepted_at, answer, n)
    ORDER BY n
), gone AS (
    DELETE FROM flowgate.runs WHERE id = ANY($6::TEXT[])
), r AS (
    INSERT INTO flowgate.runs (id, flow, accepted_at, status, record, expires_at)
    SELECT * FROM unnest($7::TEXT[], $8::TEXT[], $9::BIGINT[], $10::TEXT[], $11::TEXT[], $12::BIGINT[])
    ON CONFLICT (id) DO UPDATE SET
        status = excluded.status, record = excluded.record, expires_at = excluded.expires_at
), e AS (
    INSERT INTO flowgate.events (id, message, due_at)
    SELECT id, message, 0 FROM unnest($13::TEXT[], $14::TEXT[]) AS e (id, message)
    ON CONFLICT (id) DO NOTHING
)
SELECT 1";

/// Commits `writes` in one statement; then trims the flows whose turn it is.
async fn commit(
    db: &Database,
    writes: &[Write],
    retention: std::time::Duration,
) -> Result<(), StorageError> {
    let expires = (crate::backend::now_ms() as i64).saturating_add(retention.as_millis() as i64);
    let queued: Vec<&QueueRow> = writes.iter().filter_map(|w| w.queue.as_ref()).collect();
    // One change per run: the last write of a run in the batch wins (a
    // statement may not touch one row twice).
    let mut last: std::collections::HashMap<&str, &RecordRow> = std::collections::HashMap::new();
    for record in writes.iter().filter_map(|w| w.record.as_ref()) {
        last.insert(&record.id, record);
    }
    let mut kept = Vec::new();
    let mut gone = Vec::new();
    for record in writes.iter().filter_map(|w| w.record.as_ref()) {
        if !std::ptr::eq(last[record.id.as_str()], record) {
            continue;
        }
        match &record.json {
            Some(json) => kept.push((record, json)),
            None => gone.push(record.id.as_str()),
        }
    }
    let events: Vec<&OutboxEvent> = writes.iter().flat_map(|w| &w.events).collect();
    let column = |f: fn(&QueueRow) -> &str| queued.iter().map(|q| f(q)).collect::<Vec<_>>();
    let q_run = column(|q| &q.run_id);
    let q_input = column(|q| &q.input);
    let q_raw: Vec<Option<&str>> = queued.iter().map(|q| q.raw.as_deref()).collect();
    let q_at: Vec<i64> = queued.iter().map(|q| q.accepted_at).collect();
    let q_answer: Vec<Option<&str>> = queued.iter().map(|q| q.answer.as_deref()).collect();
    let r_id: Vec<&str> = kept.iter().map(|(r, _)| r.id.as_str()).collect();
    let r_flow: Vec<&str> = kept.iter().map(|(r, _)| r.flow.as_str()).collect();
    let r_at: Vec<i64> = kept.iter().map(|(r, _)| r.accepted_ms).collect();
    let r_status: Vec<&str> = kept.iter().map(|(r, _)| r.status).collect();
    let r_json: Vec<&str> = kept.iter().map(|(_, json)| json.as_str()).collect();
    let r_expires: Vec<i64> = vec![expires; kept.len()];
    let e_id: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
    let e_message: Vec<&str> = events.iter().map(|e| e.message.as_str()).collect();
    let params: [&(dyn ToSql + Sync); 14] = [
        &q_run, &q_input, &q_raw, &q_at, &q_answer, &gone, &r_id, &r_flow, &r_at, &r_status,
        &r_json, &r_expires, &e_id, &e_message,
    ];
    let client = db.client().await?;
    rows(&client, BATCH, &params).await?;
    // Committed: what follows is upkeep, and never fails the writes.
    for (record, _) in &kept {
        PostgresStore::trim_quietly(&client, record).await;
    }
    Ok(())
}
