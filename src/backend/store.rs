//! Stores beside the queue: [`RunStore`] keeps run records (the flow
//! debugger), [`IdempotencyStore`] remembers the first answer to each
//! idempotency key so repeats get it again without a new run.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{BoxFuture, StorageError};

use super::control::Page;
use crate::engine::RunState;
use crate::record::RunRecord;

/// How long an idempotency key is remembered.
pub const IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// A stored answer, replayed for repeats.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredAnswer {
    /// The first run's id.
    pub run_id: String,
    /// HTTP status.
    pub status: u16,
    /// Headers worth replaying (content type and the flow's own).
    pub headers: Vec<(String, String)>,
    /// The body, as sent.
    pub body: String,
}

/// What reserving a key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation {
    /// The key is new and now reserved for this request's run.
    Reserved,
    /// The first request with this key is still in flight, as this run.
    InProgress {
        /// The first run's id.
        run_id: String,
    },
    /// The first request finished with this answer.
    Answered(StoredAnswer),
}

/// Remembers idempotency keys per flow.
pub trait IdempotencyStore: Send + Sync {
    /// Reserves `key` for `run_id` unless it is known; says what it found.
    fn reserve<'a>(
        &'a self,
        flow_id: &'a str,
        key: &'a str,
        run_id: &'a str,
    ) -> BoxFuture<'a, Result<Reservation, StorageError>>;

    /// Looks a key up without reserving it.
    fn lookup<'a>(
        &'a self,
        flow_id: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Reservation>, StorageError>>;

    /// Records the answer for a reserved key.
    fn complete<'a>(
        &'a self,
        flow_id: &'a str,
        key: &'a str,
        answer: &'a StoredAnswer,
    ) -> BoxFuture<'a, Result<(), StorageError>>;

    /// Forgets a reserved key, so a retry can run again.
    fn release<'a>(
        &'a self,
        flow_id: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<(), StorageError>>;
}

/// The digest an idempotency key is stored under (SHA-256, hex): keys are
/// senders' text, of any length.
pub(crate) fn key_hash(key: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(key.as_bytes()))
}

/// A run page's cursor, `<accepted_at ms>:<run id>`, as the SQL backends
/// hand it out.
pub(crate) fn run_position(cursor: &str) -> Result<(i64, String), StorageError> {
    cursor
        .split_once(':')
        .and_then(|(at, id)| Some((at.parse::<i64>().ok()?, id.to_owned())))
        .ok_or_else(|| StorageError::Corrupt(format!("cursor `{cursor}` is not a run position")))
}

/// Which run records to list.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    /// Only this flow's.
    pub flow: Option<String>,
    /// Only runs in this state.
    pub status: Option<RunState>,
    /// Only runs accepted at or after this time (ms since the epoch).
    pub after_ms: Option<u64>,
    /// Only runs accepted before this time (ms since the epoch).
    pub before_ms: Option<u64>,
}

/// Keeps run records for the configured retention, and as each record's
/// [`crate::flow::RecordPolicy`] says: an ended run its flow keeps no
/// record of is deleted, and a flow's oldest records go past its cap.
pub trait RunStore: Send + Sync {
    /// Writes a record, replacing any earlier version, or deletes it when
    /// its policy does not keep it ([`RunRecord::kept`]). The record is
    /// encoded at once; the future only writes it, so it can be spawned
    /// while the caller keeps (or drops) the record.
    fn save(&self, record: &RunRecord) -> BoxFuture<'static, Result<(), StorageError>> {
        self.save_with(record, Vec::new())
    }

    /// [`RunStore::save`], writing `events` in the same step (also when the
    /// record itself is not kept).
    fn save_with(
        &self,
        record: &RunRecord,
        events: Vec<super::webhooks::OutboxEvent>,
    ) -> BoxFuture<'static, Result<(), StorageError>>;

    /// The record of `run_id`.
    fn get<'a>(&'a self, run_id: &'a str)
    -> BoxFuture<'a, Result<Option<RunRecord>, StorageError>>;

    /// Records passing `filter`, newest first (by acceptance), at most
    /// `limit`, starting after `cursor` (the `next_cursor` of a page before).
    /// A page may hold fewer than `limit` and still have a next cursor when
    /// a sparse filter made the backend stop scanning.
    fn page<'a>(
        &'a self,
        filter: &'a RunFilter,
        cursor: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Page<RunRecord>, StorageError>>;

    /// The newest `limit` records of a flow, newest first.
    fn list<'a>(
        &'a self,
        flow_id: &'a str,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<RunRecord>, StorageError>>;
}
