//! [`RunStore`] and [`IdempotencyStore`] on SQLite: the `runs` table (a
//! record's acceptance time is its first write's; listing walks the
//! `(accepted_at, id)` index) and the `idempotency` table.

use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use super::{Database, corrupt, encode};
use crate::backend::control::Page;
use crate::backend::webhooks::OutboxEvent;
use crate::backend::{
    BoxFuture, IDEMPOTENCY_TTL, IdempotencyStore, Reservation, RunFilter, RunStore, StorageError,
    StoredAnswer, key_hash, now_ms,
};
use crate::record::RunRecord;

/// Run records and idempotency keys in the database.
#[derive(Clone)]
pub struct SqliteStore {
    db: Database,
    retention: Duration,
}

impl SqliteStore {
    /// Records kept for `retention` in `db`.
    pub fn new(db: Database, retention: Duration) -> Self {
        Self { db, retention }
    }

    /// Writes `row` on `conn`, keeping its first acceptance time; or
    /// deletes the run's record when its flow keeps none of a run that
    /// ended so. Now and then, deletes the flow's oldest records past its cap.
    pub(super) fn write_record(
        conn: &Connection,
        row: &RecordRow,
        retention: Duration,
    ) -> Result<(), StorageError> {
        let Some(json) = &row.json else {
            conn.prepare_cached("DELETE FROM runs WHERE id = ?1")?
                .execute([&row.id])?;
            return Ok(());
        };
        if let Some(max) = row.max {
            let writes = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if writes.is_multiple_of(TRIM_EVERY) {
                Self::trim_to_cap(conn, &row.flow, max)?;
            }
        }
        let now = now_ms() as i64;
        conn.prepare_cached(
            "INSERT INTO runs (id, flow, accepted_at, status, record, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (id) DO UPDATE SET
                status = excluded.status, record = excluded.record, expires_at = excluded.expires_at",
        )?
        .execute(params![
            row.id,
            row.flow,
            now,
            row.status,
            json,
            now.saturating_add(retention.as_millis() as i64),
        ])?;
        Ok(())
    }

    /// Deletes up to [`TRIM_BATCH`] of `flow`'s records older than its
    /// newest `max`, leaving those of runs still in progress.
    fn trim_to_cap(conn: &Connection, flow: &str, max: u64) -> Result<(), StorageError> {
        conn.prepare_cached(
            "DELETE FROM runs WHERE status NOT IN ('queued', 'running') AND id IN
                    (SELECT id FROM runs WHERE flow = ?1
                     ORDER BY accepted_at DESC, id DESC LIMIT ?2 OFFSET ?3)",
        )?
        .execute(params![flow, TRIM_BATCH, max.min(i64::MAX as u64) as i64])?;
        Ok(())
    }

    /// The retention records are kept for.
    pub(super) fn retention(&self) -> Duration {
        self.retention
    }

    /// Deletes expired records and idempotency keys, a bounded number at a time.
    pub async fn prune(&self) -> Result<usize, StorageError> {
        self.db
            .write_relaxed(|conn| {
                let now = now_ms() as i64;
                let runs = conn.execute(
                    "DELETE FROM runs WHERE id IN
                        (SELECT id FROM runs WHERE expires_at <= ?1 LIMIT 1000)",
                    [now],
                )?;
                let keys = conn.execute(
                    "DELETE FROM idempotency WHERE rowid IN
                        (SELECT rowid FROM idempotency WHERE expires_at <= ?1 LIMIT 1000)",
                    [now],
                )?;
                Ok(runs + keys)
            })
            .await
    }
}

/// Record writes between two trims of a flow to its cap (each trim is of
/// the flow written at that moment, so busy flows are trimmed most).
const TRIM_EVERY: u64 = 256;
/// Most records one trim deletes; above [`TRIM_EVERY`], so trims keep up.
const TRIM_BATCH: i64 = 512;
static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A record's row, taken from the record before the write: the writer
/// thread gets a few strings, not the record's tree of values to copy and
/// then free on a thread that did not allocate it.
pub(super) struct RecordRow {
    id: String,
    flow: String,
    status: &'static str,
    /// The record; `None` when it is not kept (it is deleted instead).
    json: Option<String>,
    /// The flow's cap on records.
    max: Option<u64>,
}

impl RecordRow {
    /// `record`'s row, encoded now.
    pub(super) fn of(record: &RunRecord) -> Result<Self, StorageError> {
        Ok(Self {
            id: record.id.clone(),
            flow: record.flow.clone(),
            status: record.status.as_str(),
            json: record
                .kept()
                .then(|| record.encode().map_err(|e| corrupt("run record", e)))
                .transpose()?,
            max: record.policy.max,
        })
    }
}

fn decode_record(json: &str) -> Result<RunRecord, StorageError> {
    crate::codec::decode(json).map_err(|e| corrupt("run record", e))
}

impl RunStore for SqliteStore {
    fn save_with(
        &self,
        record: &RunRecord,
        events: Vec<OutboxEvent>,
    ) -> BoxFuture<'static, Result<(), StorageError>> {
        let row = RecordRow::of(record);
        let db = self.db.clone();
        let retention = self.retention;
        Box::pin(async move {
            let row = row?;
            db.write_relaxed(move |conn| {
                super::webhooks::insert_events(conn, &events)?;
                Self::write_record(conn, &row, retention)
            })
            .await
        })
    }

    fn get<'a>(
        &'a self,
        run_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<RunRecord>, StorageError>> {
        let run_id = run_id.to_owned();
        Box::pin(self.db.read(move |conn| {
            let json: Option<String> = conn
                .prepare_cached("SELECT record FROM runs WHERE id = ?1 AND expires_at > ?2")?
                .query_row(params![run_id, now_ms() as i64], |row| row.get(0))
                .optional()?;
            json.as_deref().map(decode_record).transpose()
        }))
    }

    fn page<'a>(
        &'a self,
        filter: &'a RunFilter,
        cursor: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Page<RunRecord>, StorageError>> {
        let filter = filter.clone();
        let position = cursor.map(crate::backend::run_position);
        Box::pin(async move {
            let position = position.transpose()?;
            self.db
                .read(move |conn| {
                    let start = position.unwrap_or((i64::MAX, String::new()));
                    let (sql, values) = page_query(&filter, start, limit);
                    let mut statement = conn.prepare_cached(&sql)?;
                    let rows = statement.query_map(rusqlite::params_from_iter(values), |row| {
                        Ok((
                            row.get::<_, i64>(0)?,
                            row.get::<_, String>(1)?,
                            row.get::<_, String>(2)?,
                        ))
                    })?;
                    let mut data = Vec::new();
                    let mut more = false;
                    let mut last = None;
                    for row in rows {
                        let (at, id, json) = row?;
                        if data.len() == limit {
                            more = true;
                            break;
                        }
                        data.push(decode_record(&json)?);
                        last = Some(format!("{at}:{id}"));
                    }
                    Ok(Page {
                        data,
                        next_cursor: if more { last } else { None },
                    })
                })
                .await
        })
    }

    fn list<'a>(
        &'a self,
        flow_id: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<RunRecord>, StorageError>> {
        let flow = flow_id.to_owned();
        Box::pin(self.db.read(move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT record FROM runs WHERE flow = ?1 AND expires_at > ?2
                 ORDER BY accepted_at DESC, id DESC LIMIT ?3",
            )?;
            let rows = statement
                .query_map(params![flow, now_ms() as i64, limit as i64], |row| {
                    row.get::<_, String>(0)
                })?;
            let mut records = Vec::new();
            for json in rows {
                records.push(decode_record(&json?)?);
            }
            Ok(records)
        }))
    }
}

/// What the key's row says, on `conn`: `None` when absent or expired.
fn find_key(
    conn: &Connection,
    flow: &str,
    hash: &str,
) -> Result<Option<Reservation>, StorageError> {
    let row: Option<(String, Option<String>)> = conn
        .prepare_cached(
            "SELECT run_id, answer FROM idempotency
             WHERE flow = ?1 AND key_hash = ?2 AND expires_at > ?3",
        )?
        .query_row(params![flow, hash, now_ms() as i64], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .optional()?;
    row.map(|(run_id, answer)| match answer {
        None => Ok(Reservation::InProgress { run_id }),
        Some(json) => crate::codec::decode::<StoredAnswer>(&json)
            .map(Reservation::Answered)
            .map_err(|e| corrupt("stored answer", e)),
    })
    .transpose()
}

impl IdempotencyStore for SqliteStore {
    fn reserve<'a>(
        &'a self,
        flow_id: &'a str,
        key: &'a str,
        run_id: &'a str,
    ) -> BoxFuture<'a, Result<Reservation, StorageError>> {
        let (flow, hash, run_id) = (flow_id.to_owned(), key_hash(key), run_id.to_owned());
        // In the writer: reservations are serialized, so one wins.
        Box::pin(self.db.write(move |conn| {
            if let Some(found) = find_key(conn, &flow, &hash)? {
                return Ok(found);
            }
            conn.prepare_cached(
                "INSERT OR REPLACE INTO idempotency (flow, key_hash, run_id, answer, expires_at)
                 VALUES (?1, ?2, ?3, NULL, ?4)",
            )?
            .execute(params![
                flow,
                hash,
                run_id,
                (now_ms() + IDEMPOTENCY_TTL.as_millis() as u64) as i64
            ])?;
            Ok(Reservation::Reserved)
        }))
    }

    fn lookup<'a>(
        &'a self,
        flow_id: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Reservation>, StorageError>> {
        let (flow, hash) = (flow_id.to_owned(), key_hash(key));
        Box::pin(self.db.read(move |conn| find_key(conn, &flow, &hash)))
    }

    fn complete<'a>(
        &'a self,
        flow_id: &'a str,
        key: &'a str,
        answer: &'a StoredAnswer,
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        let (flow, hash) = (flow_id.to_owned(), key_hash(key));
        let json = encode(answer);
        Box::pin(async move {
            let json = json?;
            self.db
                .write(move |conn| {
                    conn.prepare_cached(
                        "UPDATE idempotency SET answer = ?3 WHERE flow = ?1 AND key_hash = ?2",
                    )?
                    .execute(params![flow, hash, json])?;
                    Ok(())
                })
                .await
        })
    }

    fn release<'a>(
        &'a self,
        flow_id: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        let (flow, hash) = (flow_id.to_owned(), key_hash(key));
        Box::pin(self.db.write(move |conn| {
            conn.prepare_cached("DELETE FROM idempotency WHERE flow = ?1 AND key_hash = ?2")?
                .execute(params![flow, hash])?;
            Ok(())
        }))
    }
}

/// The query for a page of runs after `position` (`accepted_at`, id) that
/// pass `filter`, newest first, one more than `limit` (to tell whether
/// there is a next page), and its parameters. It names only the filters
/// given, so SQLite walks the index that fits (by flow, by state, or by
/// time) and stops at the limit.
fn page_query(
    filter: &RunFilter,
    position: (i64, String),
    limit: usize,
) -> (String, Vec<rusqlite::types::Value>) {
    let mut sql = String::from(
        "SELECT accepted_at, id, record FROM runs
         WHERE expires_at > ?1 AND (accepted_at, id) < (?2, ?3)",
    );
    let mut values: Vec<rusqlite::types::Value> = vec![
        (now_ms() as i64).into(),
        position.0.into(),
        position.1.into(),
    ];
    let mut and = |clause: &str, value: rusqlite::types::Value| {
        values.push(value);
        sql.push_str(&format!(" AND {clause} ?{}", values.len()));
    };
    if let Some(flow) = &filter.flow {
        and("flow =", flow.clone().into());
    }
    if let Some(status) = filter.status {
        // Other states name the partial index's own condition, word for
        // word, so the planner may use it.
        let clause = if status == crate::engine::RunState::Succeeded {
            "status ="
        } else {
            "status <> 'succeeded' AND status ="
        };
        and(clause, status.as_str().to_owned().into());
    }
    if let Some(after) = filter.after_ms {
        and("accepted_at >=", (after as i64).into());
    }
    if let Some(before) = filter.before_ms {
        and("accepted_at <", (before as i64).into());
    }
    values.push((limit as i64 + 1).into());
    sql.push_str(&format!(
        " ORDER BY accepted_at DESC, id DESC LIMIT ?{}",
        values.len()
    ));
    (sql, values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::RunState;

    /// The index each page of runs walks, from SQLite's own query plan.
    fn plan(filter: RunFilter) -> String {
        let connection = Connection::open_in_memory().unwrap();
        super::super::migrate(&connection).unwrap();
        let (sql, values) = page_query(&filter, (i64::MAX, String::new()), 50);
        let mut statement = connection
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap();
        let rows = statement
            .query_map(rusqlite::params_from_iter(values), |row| {
                row.get::<_, String>(3)
            })
            .unwrap();
        rows.map(Result::unwrap).collect::<Vec<_>>().join("; ")
    }

    #[test]
    fn run_pages_walk_an_index_in_order_and_never_sort() {
        let by = |filter: RunFilter, index: &str| {
            let plan = plan(filter);
            assert!(plan.contains(index), "{index}: {plan}");
            assert!(!plan.contains("TEMP B-TREE"), "sorts: {plan}");
        };
        by(RunFilter::default(), "runs_by_time");
        let flow = RunFilter {
            flow: Some("orders".into()),
            ..RunFilter::default()
        };
        by(flow, "runs_by_flow");
        for state in [RunState::Failed, RunState::Queued, RunState::Aborted] {
            let filter = RunFilter {
                status: Some(state),
                ..RunFilter::default()
            };
            by(filter, "runs_not_succeeded");
        }
        let succeeded = RunFilter {
            status: Some(RunState::Succeeded),
            ..RunFilter::default()
        };
        by(succeeded, "runs_by_time");
    }
}
