//! [`RunStore`] and [`IdempotencyStore`] on PostgreSQL: the `runs` table (a
//! record's acceptance time is its run's `created_at`; pages walk the
//! `(accepted_at, id)` indexes) and the `idempotency` table, whose
//! reservations are one `INSERT … ON CONFLICT`.

use std::time::Duration;

use deadpool_postgres::GenericClient;
use tokio_postgres::types::ToSql;

use super::batch::{Batcher, Write};
use super::{Database, corrupt, encode, storable, timed};
use crate::backend::control::Page;
use crate::backend::webhooks::OutboxEvent;
use crate::backend::{
    BoxFuture, IDEMPOTENCY_TTL, IdempotencyStore, Reservation, RunFilter, RunStore, StorageError,
    StoredAnswer, key_hash, now_ms,
};
use crate::record::RunRecord;

/// Record writes between two trims of a flow to its cap (each trim is of
/// the flow written at that moment, so busy flows are trimmed most). Four
/// group-commit writers commit side by side, so a trim may miss the
/// batches committing beside it: trimming often keeps the overshoot small.
const TRIM_EVERY: u64 = 64;
/// Most records one trim deletes; above [`TRIM_EVERY`], so trims keep up.
const TRIM_BATCH: i64 = 512;
/// Most rows one pruning statement deletes: short transactions, no long locks.
pub(super) const PRUNE_BATCH: i64 = 1000;
static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Runs `sql` (prepared once per connection) with `params`; rows changed.
pub(super) async fn exec(
    c: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, StorageError> {
    let statement = c.prepare_cached(sql).await?;
    Ok(c.execute(&statement, params).await?)
}

/// Runs `sql` (prepared once per connection) with `params`; its rows.
pub(super) async fn rows(
    c: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<tokio_postgres::Row>, StorageError> {
    let statement = c.prepare_cached(sql).await?;
    Ok(c.query(&statement, params).await?)
}

/// Milliseconds as PostgreSQL's `BIGINT`.
pub(super) fn ms(value: u64) -> i64 {
    value.min(i64::MAX as u64) as i64
}

/// Run records and idempotency keys in the database.
#[derive(Clone)]
pub struct PostgresStore {
    db: Database,
    retention: Duration,
    batcher: Batcher,
}

/// A record's row, taken from the record before the write.
pub(super) struct RecordRow {
    pub id: String,
    pub flow: String,
    /// When the run was accepted (its `created_at`), ms since the epoch:
    /// records written from several connections land in any order, and
    /// pages list them by acceptance, not by write.
    pub accepted_ms: i64,
    pub status: &'static str,
    /// The record; `None` when it is not kept (it is deleted instead).
    pub json: Option<String>,
    /// The flow's cap on records.
    max: Option<u64>,
}

impl RecordRow {
    /// `record`'s row, encoded now.
    pub(super) fn of(record: &RunRecord) -> Result<Self, StorageError> {
        let accepted_ms = humantime::parse_rfc3339_weak(&record.created_at)
            .ok()
            .and_then(|at| at.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or_else(now_ms, |since| since.as_millis() as u64);
        Ok(Self {
            id: record.id.clone(),
            flow: record.flow.clone(),
            accepted_ms: ms(accepted_ms),
            status: record.status.as_str(),
            json: record
                .kept()
                .then(|| record.encode().map_err(|e| corrupt("run record", e)))
                .transpose()?,
            max: record.policy.max,
        })
    }

    /// The row of `record`, when there is one.
    pub(super) fn of_some(record: Option<&RunRecord>) -> Result<Option<Self>, StorageError> {
        record.map(Self::of).transpose()
    }
}

impl PostgresStore {
    /// Records kept for `retention` in `db`.
    pub fn new(db: Database, retention: Duration) -> Self {
        let batcher = Batcher::new(db.clone(), retention);
        Self {
            db,
            retention,
            batcher,
        }
    }

    /// Stores `write` with whatever else is being written now (see [`super::batch`]).
    pub(super) async fn write(&self, write: Write) -> Result<(), StorageError> {
        self.batcher.write(write).await
    }

    /// The retention records are kept for.
    pub(super) fn retention(&self) -> Duration {
        self.retention
    }

    /// Writes `row` on `c`, keeping its first acceptance time; or deletes
    /// the run's record when its flow keeps none of a run that ended so.
    /// Trimming the flow to its cap is the caller's, after its commit
    /// ([`PostgresStore::trim_quietly`]).
    pub(super) async fn write_record(
        c: &impl GenericClient,
        row: &RecordRow,
        retention: Duration,
    ) -> Result<(), StorageError> {
        let Some(json) = &row.json else {
            exec(c, "DELETE FROM flowgate.runs WHERE id = $1", &[&row.id]).await?;
            return Ok(());
        };
        let expires = (now_ms() as i64).saturating_add(retention.as_millis() as i64);
        exec(
            c,
            "INSERT INTO flowgate.runs (id, flow, accepted_at, status, record, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (id) DO UPDATE SET
                status = excluded.status, record = excluded.record, expires_at = excluded.expires_at",
            &[&row.id, &row.flow, &row.accepted_ms, &row.status, json, &expires],
        )
        .await?;
        Ok(())
    }

    /// Now and then (every [`TRIM_EVERY`] record writes), trims the flow
    /// of `row` to its cap: upkeep after a write committed, so a failure is
    /// logged and the next trim tries again; it never fails the write.
    pub(super) async fn trim_quietly(c: &impl GenericClient, row: &RecordRow) {
        if let Some(max) = trim_due(row) {
            Self::trim_logged(c, &row.flow, max).await;
        }
    }

    /// [`PostgresStore::trim_quietly`] on a pooled connection of its own,
    /// taken only when a trim is due.
    pub(super) async fn trim_after(&self, row: &RecordRow) {
        let Some(max) = trim_due(row) else { return };
        match self.db.client().await {
            Ok(client) => Self::trim_logged(&client, &row.flow, max).await,
            Err(e) => {
                tracing::warn!(flow = %row.flow, error = %e, "could not trim the flow's records to its cap; the next trim tries again")
            }
        }
    }

    async fn trim_logged(c: &impl GenericClient, flow: &str, max: u64) {
        if let Err(e) = Self::trim_to_cap(c, flow, max).await {
            tracing::warn!(flow = %flow, error = %e, "could not trim the flow's records to its cap; the next trim tries again");
        }
    }

    /// Deletes up to [`TRIM_BATCH`] of `flow`'s records older than its
    /// newest `max`, leaving those of runs still in progress.
    async fn trim_to_cap(c: &impl GenericClient, flow: &str, max: u64) -> Result<(), StorageError> {
        exec(
            c,
            "DELETE FROM flowgate.runs WHERE status NOT IN ('queued', 'running') AND id IN
                (SELECT id FROM flowgate.runs WHERE flow = $1
                 ORDER BY accepted_at DESC, id DESC LIMIT $2 OFFSET $3)",
            &[&flow, &TRIM_BATCH, &ms(max)],
        )
        .await?;
        Ok(())
    }

    /// Deletes expired records and idempotency keys, at most
    /// [`PRUNE_BATCH`] of each, skipping rows another replica is pruning;
    /// how many went.
    pub async fn prune(&self) -> Result<usize, StorageError> {
        timed(async {
            let client = self.db.client().await?;
            let now = now_ms() as i64;
            let runs = exec(
                &client,
                "DELETE FROM flowgate.runs WHERE id IN
                    (SELECT id FROM flowgate.runs WHERE expires_at <= $1
                     LIMIT $2 FOR UPDATE SKIP LOCKED)",
                &[&now, &PRUNE_BATCH],
            )
            .await?;
            let keys = exec(
                &client,
                "DELETE FROM flowgate.idempotency WHERE (flow, key_hash) IN
                    (SELECT flow, key_hash FROM flowgate.idempotency WHERE expires_at <= $1
                     LIMIT $2 FOR UPDATE SKIP LOCKED)",
                &[&now, &PRUNE_BATCH],
            )
            .await?;
            Ok((runs + keys) as usize)
        })
        .await
    }
}

impl PostgresStore {
    /// PostgreSQL's plan (`EXPLAIN`) for the first page of runs passing
    /// `filter`: the index it walks, for checking that no page sorts the
    /// table.
    pub async fn explain_page(&self, filter: &RunFilter) -> Result<String, StorageError> {
        let (sql, values) = page_query(filter, (i64::MAX, String::new()), 50);
        let params: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| v.as_sql()).collect();
        let client = self.db.client().await?;
        let plan = client.query(&format!("EXPLAIN {sql}"), &params).await?;
        Ok(plan
            .iter()
            .map(|row| row.get::<_, String>(0))
            .collect::<Vec<_>>()
            .join("\n"))
    }
}

/// The cap to trim `row`'s flow to, when this write is the one in
/// [`TRIM_EVERY`] that trims (and the flow has a cap and keeps the record).
fn trim_due(row: &RecordRow) -> Option<u64> {
    let (Some(max), Some(_)) = (row.max, &row.json) else {
        return None;
    };
    let writes = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    writes.is_multiple_of(TRIM_EVERY).then_some(max)
}

fn decode_record(json: &str) -> Result<RunRecord, StorageError> {
    crate::codec::decode(json).map_err(|e| corrupt("run record", e))
}

impl RunStore for PostgresStore {
    fn save_with(
        &self,
        record: &RunRecord,
        events: Vec<OutboxEvent>,
    ) -> BoxFuture<'static, Result<(), StorageError>> {
        let row = RecordRow::of(record);
        let this = self.clone();
        Box::pin(async move {
            let write = Write {
                queue: None,
                record: Some(row?),
                events,
            };
            this.write(write).await
        })
    }

    fn get<'a>(
        &'a self,
        run_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<RunRecord>, StorageError>> {
        Box::pin(timed(async move {
            if !storable(run_id) {
                return Ok(None);
            }
            let client = self.db.client().await?;
            let found = rows(
                &client,
                "SELECT record FROM flowgate.runs WHERE id = $1 AND expires_at > $2",
                &[&run_id, &(now_ms() as i64)],
            )
            .await?;
            found
                .first()
                .map(|row| decode_record(row.get(0)))
                .transpose()
        }))
    }

    fn page<'a>(
        &'a self,
        filter: &'a RunFilter,
        cursor: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Page<RunRecord>, StorageError>> {
        Box::pin(timed(async move {
            let start = match cursor {
                None => (i64::MAX, String::new()),
                Some(c) => match crate::backend::run_position(c)? {
                    (_, id) if !storable(&id) => {
                        return Err(StorageError::Corrupt(format!(
                            "cursor `{}` is not a run position",
                            c.escape_debug()
                        )));
                    }
                    position => position,
                },
            };
            if filter.flow.as_deref().is_some_and(|f| !storable(f)) {
                return Ok(Page {
                    data: Vec::new(),
                    next_cursor: None,
                });
            }
            let (sql, values) = page_query(filter, start, limit);
            let params: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| v.as_sql()).collect();
            let client = self.db.client().await?;
            let found = rows(&client, &sql, &params).await?;
            let mut data = Vec::new();
            let mut more = false;
            let mut last = None;
            for row in &found {
                if data.len() == limit {
                    more = true;
                    break;
                }
                let (at, id): (i64, &str) = (row.get(0), row.get(1));
                data.push(decode_record(row.get(2))?);
                last = Some(format!("{at}:{id}"));
            }
            Ok(Page {
                data,
                next_cursor: if more { last } else { None },
            })
        }))
    }

    fn list<'a>(
        &'a self,
        flow_id: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<RunRecord>, StorageError>> {
        Box::pin(timed(async move {
            if !storable(flow_id) {
                return Ok(Vec::new());
            }
            let client = self.db.client().await?;
            let found = rows(
                &client,
                "SELECT record FROM flowgate.runs WHERE flow = $1 AND expires_at > $2
                 ORDER BY accepted_at DESC, id DESC LIMIT $3",
                &[&flow_id, &(now_ms() as i64), &(limit as i64)],
            )
            .await?;
            found.iter().map(|row| decode_record(row.get(0))).collect()
        }))
    }
}

/// A parameter of a page query.
enum Value {
    Int(i64),
    Text(String),
}

impl Value {
    fn as_sql(&self) -> &(dyn ToSql + Sync) {
        match self {
            Value::Int(n) => n,
            Value::Text(text) => text,
        }
    }
}

/// The query for a page of runs after `position` (`accepted_at`, id) that
/// pass `filter`, newest first, one more than `limit` (to tell whether
/// there is a next page), and its parameters. It names only the filters
/// given, so the planner walks the index that fits (by flow, by state, or
/// by time) and stops at the limit.
fn page_query(filter: &RunFilter, position: (i64, String), limit: usize) -> (String, Vec<Value>) {
    let mut sql = String::from(
        "SELECT accepted_at, id, record FROM flowgate.runs
         WHERE expires_at > $1 AND (accepted_at, id) < ($2, $3)",
    );
    let mut values = vec![
        Value::Int(now_ms() as i64),
        Value::Int(position.0),
        Value::Text(position.1),
    ];
    let mut and = |clause: &str, value: Value| {
        values.push(value);
        sql.push_str(&format!(" AND {clause} ${}", values.len()));
    };
    if let Some(flow) = &filter.flow {
        and("flow =", Value::Text(flow.clone()));
    }
    if let Some(status) = filter.status {
        // Other states name the partial index's own condition, so the
        // planner may use it.
        let clause = if status == crate::engine::RunState::Succeeded {
            "status ="
        } else {
            "status <> 'succeeded' AND status ="
        };
        and(clause, Value::Text(status.as_str().to_owned()));
    }
    if let Some(after) = filter.after_ms {
        and("accepted_at >=", Value::Int(ms(after)));
    }
    if let Some(before) = filter.before_ms {
        and("accepted_at <", Value::Int(ms(before)));
    }
    values.push(Value::Int(limit as i64 + 1));
    sql.push_str(&format!(
        " ORDER BY accepted_at DESC, id DESC LIMIT ${}",
        values.len()
    ));
    (sql, values)
}

/// What the key's row says, on `c`: `None` when absent or expired.
async fn find_key(
    c: &impl GenericClient,
    flow: &str,
    hash: &str,
) -> Result<Option<Reservation>, StorageError> {
    let found = rows(
        c,
        "SELECT run_id, answer FROM flowgate.idempotency
         WHERE flow = $1 AND key_hash = $2 AND expires_at > $3",
        &[&flow, &hash, &(now_ms() as i64)],
    )
    .await?;
    let Some(row) = found.first() else {
        return Ok(None);
    };
    let (run_id, answer): (String, Option<&str>) = (row.get(0), row.get(1));
    match answer {
        None => Ok(Some(Reservation::InProgress { run_id })),
        Some(json) => crate::codec::decode::<StoredAnswer>(json)
            .map(|answer| Some(Reservation::Answered(answer)))
            .map_err(|e| corrupt("stored answer", e)),
    }
}

/// Times a reservation looks again when the key it lost to was released
/// between its write and its read.
const RESERVE_TRIES: usize = 5;

impl IdempotencyStore for PostgresStore {
    fn reserve<'a>(
        &'a self,
        flow_id: &'a str,
        key: &'a str,
        run_id: &'a str,
    ) -> BoxFuture<'a, Result<Reservation, StorageError>> {
        let hash = key_hash(key);
        Box::pin(timed(async move {
            let client = self.db.client().await?;
            for _ in 0..RESERVE_TRIES {
                let now = now_ms() as i64;
                let expires = now + IDEMPOTENCY_TTL.as_millis() as i64;
                // One statement: a live key (even one being written by a
                // concurrent reservation, whose row lock this waits for)
                // is left alone, an expired one is taken over.
                let won = exec(
                    &client,
                    "INSERT INTO flowgate.idempotency (flow, key_hash, run_id, answer, expires_at)
                     VALUES ($1, $2, $3, NULL, $4)
                     ON CONFLICT (flow, key_hash) DO UPDATE SET
                        run_id = excluded.run_id, answer = NULL, expires_at = excluded.expires_at
                     WHERE flowgate.idempotency.expires_at <= $5",
                    &[&flow_id, &hash, &run_id, &expires, &now],
                )
                .await?;
                if won == 1 {
                    return Ok(Reservation::Reserved);
                }
                if let Some(found) = find_key(&client, flow_id, &hash).await? {
                    return Ok(found);
                }
            }
            Err(StorageError::Unavailable(
                "an idempotency key kept changing; try again".into(),
            ))
        }))
    }

    fn lookup<'a>(
        &'a self,
        flow_id: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Reservation>, StorageError>> {
        let hash = key_hash(key);
        Box::pin(timed(async move {
            let client = self.db.client().await?;
            find_key(&client, flow_id, &hash).await
        }))
    }

    fn complete<'a>(
        &'a self,
        flow_id: &'a str,
        key: &'a str,
        answer: &'a StoredAnswer,
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        let hash = key_hash(key);
        Box::pin(timed(async move {
            let json = encode(answer)?;
            let client = self.db.client().await?;
            exec(
                &client,
                "UPDATE flowgate.idempotency SET answer = $3 WHERE flow = $1 AND key_hash = $2",
                &[&flow_id, &hash, &json],
            )
            .await?;
            Ok(())
        }))
    }

    fn release<'a>(
        &'a self,
        flow_id: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        let hash = key_hash(key);
        Box::pin(timed(async move {
            let client = self.db.client().await?;
            exec(
                &client,
                "DELETE FROM flowgate.idempotency WHERE flow = $1 AND key_hash = $2",
                &[&flow_id, &hash],
            )
            .await?;
            Ok(())
        }))
    }
}
