//! [`ControlStore`] on SQLite: one small table per kind of state, the
//! audit log as a table, and a version row bumped by every change in the
//! same transaction. Other processes on the file (the CLI) are noticed by
//! polling the version ([`WATCH_EVERY`]).

use std::time::Duration;

use rusqlite::params;
use tokio::sync::mpsc;

use super::{Database, corrupt};
use crate::backend::control::{
    ABORT_MEMORY, AUDIT_RETENTION, Applied, AuditDraft, AuditEntry, AuditFilter, Change,
    ControlState, ControlStore, Generation, Page, SessionEntry, StatusOverride,
};
use crate::backend::{BoxFuture, StorageError, now_ms};

/// How often a watcher looks at the version.
pub const WATCH_EVERY: Duration = Duration::from_millis(100);
/// Most audit entries read to fill one filtered page.
const AUDIT_SCAN_MAX: usize = 10_000;

/// Control state in the database.
#[derive(Clone)]
pub struct SqliteControl {
    db: Database,
}

impl SqliteControl {
    /// Control state in `db`.
    pub fn new(db: Database) -> Self {
        Self { db }
    }
}

fn read_version(conn: &rusqlite::Connection) -> Result<u64, StorageError> {
    let version: i64 = conn.query_row(
        "SELECT version FROM versions WHERE name = 'control'",
        [],
        |row| row.get(0),
    )?;
    Ok(version as u64)
}

impl ControlStore for SqliteControl {
    fn version(&self) -> BoxFuture<'_, Result<u64, StorageError>> {
        Box::pin(self.db.read(read_version))
    }

    fn load(&self) -> BoxFuture<'_, Result<ControlState, StorageError>> {
        Box::pin(self.db.read(|conn| {
            let now = now_ms() as i64;
            let mut state = ControlState {
                version: read_version(conn)?,
                ..ControlState::default()
            };
            let mut statement = conn.prepare_cached("SELECT flow, override FROM flow_status")?;
            for row in statement.query_map([], |row| Ok((row.get(0)?, row.get::<_, String>(1)?)))? {
                let (flow, json): (String, String) = row?;
                let parsed: StatusOverride =
                    crate::codec::decode(&json).map_err(|e| corrupt("status override", e))?;
                state.statuses.insert(flow, parsed);
            }
            let mut statement =
                conn.prepare_cached("SELECT flow, current, grace_until FROM generations")?;
            for row in statement.query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, Option<i64>>(2)?,
                ))
            })? {
                let (flow, current, grace) = row?;
                state.generations.insert(
                    flow,
                    Generation {
                        current: current as u64,
                        grace_until_ms: grace.map(|g| g as u64),
                    },
                );
            }
            let mut statement =
                conn.prepare_cached("SELECT jti, until_ms FROM revoked WHERE until_ms > ?1")?;
            for row in statement.query_map([now], |row| Ok((row.get(0)?, row.get::<_, i64>(1)?)))? {
                let (jti, until): (String, i64) = row?;
                state.revoked.insert(jti, until as u64);
            }
            let forget_before = now - ABORT_MEMORY.as_millis() as i64;
            let mut statement =
                conn.prepare_cached("SELECT run_id, at FROM aborted WHERE at > ?1")?;
            for row in statement.query_map([forget_before], |row| {
                Ok((row.get(0)?, row.get::<_, i64>(1)?))
            })? {
                let (run, at): (String, i64) = row?;
                state.aborted.insert(run, at as u64);
            }
            let mut statement =
                conn.prepare_cached("SELECT entry FROM sessions WHERE expires_ms > ?1")?;
            for row in statement.query_map([now], |row| row.get::<_, String>(0))? {
                let session: SessionEntry =
                    crate::codec::decode(&row?).map_err(|e| corrupt("console session", e))?;
                state.sessions.insert(session.id.clone(), session);
            }
            Ok(state)
        }))
    }

    // One arm per kind of change, in the one transaction that also bumps
    // the version and writes the audit entry: kept in one function so the
    // transaction reads top to bottom.
    fn apply<'a>(
        &'a self,
        change: &'a Change,
        audit: &'a AuditDraft,
    ) -> BoxFuture<'a, Result<Applied, StorageError>> {
        let change = change.clone();
        let audit = audit.clone();
        Box::pin(self.db.write(move |conn| {
            let now = now_ms();
            let at = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
            let mut generation = None;
            match &change {
                Change::Status { flow, status } => match status {
                    Some(status) => {
                        let stored = StatusOverride {
                            status: *status,
                            by: audit.actor.name.clone(),
                            at: at.clone(),
                        };
                        let json = crate::codec::encode(&stored)
                            .map_err(|e| corrupt("status override", e))?;
                        conn.execute(
                            "INSERT OR REPLACE INTO flow_status (flow, override) VALUES (?1, ?2)",
                            params![flow, json],
                        )?;
                    }
                    None => {
                        conn.execute("DELETE FROM flow_status WHERE flow = ?1", [flow])?;
                    }
                },
                Change::Rotate { flow, grace } => {
                    let grace_until = grace.map(|g| {
                        now.saturating_add(u64::try_from(g.as_millis()).unwrap_or(u64::MAX))
                            .min(i64::MAX as u64) as i64
                    });
                    let current: i64 = conn.query_row(
                        "INSERT INTO generations (flow, current, grace_until) VALUES (?1, 1, ?2)
                         ON CONFLICT (flow) DO UPDATE SET
                            current = current + 1, grace_until = excluded.grace_until
                         RETURNING current",
                        params![flow, grace_until],
                        |row| row.get(0),
                    )?;
                    generation = Some(Generation {
                        current: current as u64,
                        grace_until_ms: grace_until.map(|g| g as u64),
                    });
                }
                Change::Revoke { jti, until_ms } => {
                    conn.execute(
                        "INSERT OR REPLACE INTO revoked (jti, until_ms) VALUES (?1, ?2)",
                        params![jti, (*until_ms).min(i64::MAX as u64) as i64],
                    )?;
                }
                Change::OpenSession(session) => {
                    let json =
                        crate::codec::encode(session).map_err(|e| corrupt("console session", e))?;
                    conn.execute("DELETE FROM sessions WHERE expires_ms <= ?1", [now as i64])?;
                    conn.execute(
                        "INSERT OR REPLACE INTO sessions (id, expires_ms, entry) VALUES (?1, ?2, ?3)",
                        params![session.id, session.expires_ms.min(i64::MAX as u64) as i64, json],
                    )?;
                }
                Change::Abort { run_id } => {
                    conn.execute(
                        "INSERT OR REPLACE INTO aborted (run_id, at) VALUES (?1, ?2)",
                        params![run_id, now as i64],
                    )?;
                }
                Change::Nothing => {}
            }
            let entry = audit.entry(at);
            let json = crate::codec::encode(&entry).map_err(|e| corrupt("audit entry", e))?;
            conn.execute(
                "INSERT INTO audit (at_ms, entry) VALUES (?1, ?2)",
                params![now as i64, json],
            )?;
            let oldest = now.saturating_sub(AUDIT_RETENTION.as_millis() as u64) as i64;
            conn.execute("DELETE FROM audit WHERE at_ms < ?1", [oldest])?;
            conn.execute(
                "DELETE FROM aborted WHERE at < ?1",
                [now as i64 - ABORT_MEMORY.as_millis() as i64],
            )?;
            let version: i64 = conn.query_row(
                "UPDATE versions SET version = version + 1 WHERE name = 'control' RETURNING version",
                [],
                |row| row.get(0),
            )?;
            Ok(Applied {
                version: version as u64,
                generation,
            })
        }))
    }

    fn audit<'a>(
        &'a self,
        filter: &'a AuditFilter,
        cursor: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Page<AuditEntry>, StorageError>> {
        let filter = filter.clone();
        let before: Option<i64> = match cursor.map(str::parse::<i64>) {
            None => None,
            Some(Ok(seq)) => Some(seq),
            Some(Err(_)) => {
                return Box::pin(async {
                    Err(StorageError::Corrupt("not an audit cursor".into()))
                });
            }
        };
        Box::pin(self.db.read(move |conn| {
            let mut statement = conn.prepare_cached(
                "SELECT seq, at_ms, entry FROM audit WHERE seq < ?1 ORDER BY seq DESC LIMIT ?2",
            )?;
            let rows = statement.query_map(
                params![before.unwrap_or(i64::MAX), AUDIT_SCAN_MAX as i64],
                |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, i64>(1)?,
                        row.get::<_, String>(2)?,
                    ))
                },
            )?;
            let mut data = Vec::new();
            let mut scanned = 0;
            let mut last_seen = 0;
            for row in rows {
                let (seq, at_ms, json) = row?;
                scanned += 1;
                last_seen = seq;
                if filter.after_ms.is_some_and(|t| (at_ms as u64) < t) {
                    return Ok(Page {
                        data,
                        next_cursor: None,
                    });
                }
                let mut entry: AuditEntry =
                    crate::codec::decode(&json).map_err(|e| corrupt("audit entry", e))?;
                if filter.matches(&entry, at_ms as u64) {
                    entry.id = seq.to_string();
                    data.push(entry);
                    if data.len() == limit {
                        return Ok(Page {
                            data,
                            next_cursor: Some(seq.to_string()),
                        });
                    }
                }
            }
            // A sparse filter over a long log: hand back where to go on.
            let next_cursor = (scanned == AUDIT_SCAN_MAX).then(|| last_seen.to_string());
            Ok(Page { data, next_cursor })
        }))
    }

    fn watch(&self) -> BoxFuture<'_, Result<mpsc::Receiver<()>, StorageError>> {
        Box::pin(async move {
            let (tx, rx) = mpsc::channel(1);
            let this = self.clone();
            let mut seen = self.version().await?;
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        () = tx.closed() => return,
                        () = tokio::time::sleep(WATCH_EVERY) => {}
                    }
                    let Ok(version) = this.version().await else {
                        continue;
                    };
                    if version != seen {
                        seen = version;
                        if let Err(mpsc::error::TrySendError::Closed(())) = tx.try_send(()) {
                            return;
                        }
                    }
                }
            });
            Ok(rx)
        })
    }
}
