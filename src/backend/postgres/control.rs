//! [`ControlStore`] on PostgreSQL: one small table per kind of state, the
//! audit log as a table, and a version row bumped by every change in the
//! same transaction (its row lock orders concurrent changes). Every change
//! sends a notification on [`CHANNEL`] when it commits (`NOTIFY`): replicas
//! `LISTEN` on a connection of their own and reload at once, and check the
//! version now and then besides, in case a notification was missed.

use tokio::sync::mpsc;

use super::store::{exec, ms, rows};
use super::{Database, corrupt, timed};
use crate::backend::control::{
    ABORT_MEMORY, AUDIT_RETENTION, Applied, AuditDraft, AuditEntry, AuditFilter, Change,
    ControlState, ControlStore, Generation, Page, SessionEntry, StatusOverride,
};
use crate::backend::{BoxFuture, StorageError, now_ms};

/// The notification channel control changes are announced on.
pub const CHANNEL: &str = "flowgate_control";
/// Most audit entries read to fill one filtered page.
const AUDIT_SCAN_MAX: i64 = 10_000;
/// Audit entries read per query while filling a page.
const AUDIT_CHUNK: i64 = 500;

/// Control state in the database.
#[derive(Clone)]
pub struct PostgresControl {
    db: Database,
}

impl PostgresControl {
    /// Control state in `db`.
    pub fn new(db: Database) -> Self {
        Self { db }
    }
}

async fn read_version(c: &impl deadpool_postgres::GenericClient) -> Result<u64, StorageError> {
    let found = rows(
        c,
        "SELECT version FROM flowgate.versions WHERE name = 'control'",
        &[],
    )
    .await?;
    Ok(found.first().map_or(0, |row| row.get::<_, i64>(0)) as u64)
}

impl ControlStore for PostgresControl {
    fn version(&self) -> BoxFuture<'_, Result<u64, StorageError>> {
        Box::pin(timed(async move {
            let client = self.db.client().await?;
            read_version(&client).await
        }))
    }

    fn load(&self) -> BoxFuture<'_, Result<ControlState, StorageError>> {
        Box::pin(timed(async move {
            let mut client = self.db.client().await?;
            // One snapshot, so the version matches what is read with it.
            let tx = client
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await?;
            let now = now_ms() as i64;
            let mut state = ControlState {
                version: read_version(&tx).await?,
                ..ControlState::default()
            };
            for row in rows(&tx, "SELECT flow, override FROM flowgate.flow_status", &[]).await? {
                let parsed: StatusOverride = crate::codec::decode(row.get::<_, &str>(1))
                    .map_err(|e| corrupt("status override", e))?;
                state.statuses.insert(row.get(0), parsed);
            }
            let generations = rows(
                &tx,
                "SELECT flow, current, grace_until FROM flowgate.generations",
                &[],
            )
            .await?;
            for row in generations {
                state.generations.insert(
                    row.get(0),
                    Generation {
                        current: row.get::<_, i64>(1) as u64,
                        grace_until_ms: row.get::<_, Option<i64>>(2).map(|g| g as u64),
                    },
                );
            }
            let revoked = rows(
                &tx,
                "SELECT jti, until_ms FROM flowgate.revoked WHERE until_ms > $1",
                &[&now],
            )
            .await?;
            for row in revoked {
                state
                    .revoked
                    .insert(row.get(0), row.get::<_, i64>(1) as u64);
            }
            let forget_before = now - ABORT_MEMORY.as_millis() as i64;
            let aborted = rows(
                &tx,
                "SELECT run_id, at FROM flowgate.aborted WHERE at > $1",
                &[&forget_before],
            )
            .await?;
            for row in aborted {
                state
                    .aborted
                    .insert(row.get(0), row.get::<_, i64>(1) as u64);
            }
            let sessions = rows(
                &tx,
                "SELECT entry FROM flowgate.sessions WHERE expires_ms > $1",
                &[&now],
            )
            .await?;
            for row in sessions {
                let session: SessionEntry = crate::codec::decode(row.get::<_, &str>(0))
                    .map_err(|e| corrupt("console session", e))?;
                state.sessions.insert(session.id.clone(), session);
            }
            tx.commit().await?;
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
        Box::pin(timed(async move {
            let mut client = self.db.client().await?;
            let tx = client.transaction().await?;
            // The version row's lock first: changes apply one at a time.
            let version: i64 = rows(
                &tx,
                "UPDATE flowgate.versions SET version = version + 1 WHERE name = 'control'
                 RETURNING version",
                &[],
            )
            .await?
            .first()
            .map_or(0, |row| row.get(0));
            let now = now_ms();
            let at = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
            let mut generation = None;
            match change {
                Change::Status { flow, status } => match status {
                    Some(status) => {
                        let stored = StatusOverride {
                            status: *status,
                            by: audit.actor.name.clone(),
                            at: at.clone(),
                        };
                        let json = crate::codec::encode(&stored)
                            .map_err(|e| corrupt("status override", e))?;
                        exec(
                            &tx,
                            "INSERT INTO flowgate.flow_status (flow, override) VALUES ($1, $2)
                             ON CONFLICT (flow) DO UPDATE SET override = excluded.override",
                            &[flow, &json],
                        )
                        .await?;
                    }
                    None => {
                        exec(
                            &tx,
                            "DELETE FROM flowgate.flow_status WHERE flow = $1",
                            &[flow],
                        )
                        .await?;
                    }
                },
                Change::Rotate { flow, grace } => {
                    let grace_until = grace.map(|g| {
                        ms(now.saturating_add(u64::try_from(g.as_millis()).unwrap_or(u64::MAX)))
                    });
                    let current: i64 = rows(
                        &tx,
                        "INSERT INTO flowgate.generations (flow, current, grace_until)
                         VALUES ($1, 1, $2)
                         ON CONFLICT (flow) DO UPDATE SET
                            current = flowgate.generations.current + 1,
                            grace_until = excluded.grace_until
                         RETURNING current",
                        &[flow, &grace_until],
                    )
                    .await?
                    .first()
                    .map_or(1, |row| row.get(0));
                    generation = Some(Generation {
                        current: current as u64,
                        grace_until_ms: grace_until.map(|g| g as u64),
                    });
                }
                Change::Revoke { jti, until_ms } => {
                    exec(
                        &tx,
                        "INSERT INTO flowgate.revoked (jti, until_ms) VALUES ($1, $2)
                         ON CONFLICT (jti) DO UPDATE SET until_ms = excluded.until_ms",
                        &[jti, &ms(*until_ms)],
                    )
                    .await?;
                }
                Change::OpenSession(session) => {
                    let json =
                        crate::codec::encode(session).map_err(|e| corrupt("console session", e))?;
                    exec(
                        &tx,
                        "DELETE FROM flowgate.sessions WHERE expires_ms <= $1",
                        &[&(now as i64)],
                    )
                    .await?;
                    exec(
                        &tx,
                        "INSERT INTO flowgate.sessions (id, expires_ms, entry) VALUES ($1, $2, $3)
                         ON CONFLICT (id) DO UPDATE SET
                            expires_ms = excluded.expires_ms, entry = excluded.entry",
                        &[&session.id, &ms(session.expires_ms), &json],
                    )
                    .await?;
                }
                Change::Abort { run_id } => {
                    exec(
                        &tx,
                        "INSERT INTO flowgate.aborted (run_id, at) VALUES ($1, $2)
                         ON CONFLICT (run_id) DO UPDATE SET at = excluded.at",
                        &[run_id, &(now as i64)],
                    )
                    .await?;
                }
                Change::Nothing => {}
            }
            let entry = audit.entry(at);
            let json = crate::codec::encode(&entry).map_err(|e| corrupt("audit entry", e))?;
            exec(
                &tx,
                "INSERT INTO flowgate.audit (at_ms, entry) VALUES ($1, $2)",
                &[&(now as i64), &json],
            )
            .await?;
            let oldest = now.saturating_sub(AUDIT_RETENTION.as_millis() as u64) as i64;
            exec(
                &tx,
                "DELETE FROM flowgate.audit WHERE at_ms < $1",
                &[&oldest],
            )
            .await?;
            exec(
                &tx,
                "DELETE FROM flowgate.aborted WHERE at < $1",
                &[&(now as i64 - ABORT_MEMORY.as_millis() as i64)],
            )
            .await?;
            // Delivered to every listener when the transaction commits.
            exec(&tx, "SELECT pg_notify($1, '')", &[&CHANNEL]).await?;
            tx.commit().await?;
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
        Box::pin(timed(async move {
            let before: i64 = match cursor.map(str::parse::<i64>) {
                None => i64::MAX,
                Some(Ok(seq)) => seq,
                Some(Err(_)) => return Err(StorageError::Corrupt("not an audit cursor".into())),
            };
            let client = self.db.client().await?;
            let mut data = Vec::new();
            let mut scanned = 0;
            let mut last_seen = before;
            // In chunks: a page that fills early reads little.
            while scanned < AUDIT_SCAN_MAX {
                let found = rows(
                    &client,
                    "SELECT seq, at_ms, entry FROM flowgate.audit WHERE seq < $1
                     ORDER BY seq DESC LIMIT $2",
                    &[&last_seen, &AUDIT_CHUNK],
                )
                .await?;
                let chunk = found.len() as i64;
                for row in found {
                    let (seq, at_ms): (i64, i64) = (row.get(0), row.get(1));
                    last_seen = seq;
                    scanned += 1;
                    if filter.after_ms.is_some_and(|t| (at_ms as u64) < t) {
                        return Ok(Page {
                            data,
                            next_cursor: None,
                        });
                    }
                    let mut entry: AuditEntry = crate::codec::decode(row.get::<_, &str>(2))
                        .map_err(|e| corrupt("audit entry", e))?;
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
                if chunk < AUDIT_CHUNK {
                    return Ok(Page {
                        data,
                        next_cursor: None,
                    });
                }
            }
            // A sparse filter over a long log: hand back where to go on.
            Ok(Page {
                data,
                next_cursor: Some(last_seen.to_string()),
            })
        }))
    }

    fn watch(&self) -> BoxFuture<'_, Result<mpsc::Receiver<()>, StorageError>> {
        Box::pin(self.db.listen(CHANNEL))
    }
}
