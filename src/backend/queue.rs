//! The run queue: where accepted async runs wait for a worker.
//!
//! [`RunQueue`] is the interface the trigger and the workers use; [`redis`]
//! implements it on Redis Streams. Delivery is at least once: a run is
//! acknowledged only after it ended, and a run whose worker stopped
//! heartbeating is handed to another worker.

use std::time::Duration;

use super::{BoxFuture, StorageError};
use crate::engine::RunInput;
use crate::record::{RecordedResponse, RunRecord};

/// One run handed to a worker.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Queue-specific id used to acknowledge or heartbeat the delivery.
    pub id: String,
    /// The run.
    pub input: RunInput,
    /// When the run was accepted, milliseconds since the epoch.
    pub accepted_at_ms: u64,
    /// True when this delivery was taken over from a worker that stopped.
    pub reclaimed: bool,
    /// The answer the sender got, when the queue kept it with the run: a
    /// worker can then write the run's record without reading it first.
    pub answer: Option<RecordedResponse>,
}

/// Where async runs wait.
pub trait RunQueue: Send + Sync {
    /// Creates what the backend needs before runs can be handed out; safe
    /// to call again. Workers call it when they start.
    fn prepare(&self) -> BoxFuture<'_, Result<(), StorageError>>;

    /// Stores a run durably, with its first record when given (in the same
    /// round trip where the backend can); only after `Ok` may the sender be
    /// told it was accepted.
    fn enqueue<'a>(
        &'a self,
        input: &'a RunInput,
        record: Option<&'a RunRecord>,
    ) -> BoxFuture<'a, Result<(), StorageError>>;

    /// Hands at most `max` new runs to `consumer`, waiting up to `wait` for one.
    fn fetch<'a>(
        &'a self,
        consumer: &'a str,
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'a, Result<Vec<Delivery>, StorageError>>;

    /// Takes over at most `max` runs that no worker heartbeated for `idle`.
    fn reclaim<'a>(
        &'a self,
        consumer: &'a str,
        idle: Duration,
        max: usize,
    ) -> BoxFuture<'a, Result<Vec<Delivery>, StorageError>>;

    /// Tells the queue `consumer` is still working on these deliveries.
    fn heartbeat<'a>(
        &'a self,
        consumer: &'a str,
        ids: &'a [String],
    ) -> BoxFuture<'a, Result<(), StorageError>>;

    /// Removes a finished run, writing its final record in the same round
    /// trip where the backend can.
    fn ack<'a>(
        &'a self,
        id: &'a str,
        record: Option<&'a RunRecord>,
    ) -> BoxFuture<'a, Result<(), StorageError>>;

    /// Acknowledges delivery `id` and queues `input` again (with its resume
    /// point) to be delivered at `due_ms`, writing `record` in the same step.
    fn schedule<'a>(
        &'a self,
        id: &'a str,
        input: &'a RunInput,
        due_ms: u64,
        record: Option<&'a RunRecord>,
    ) -> BoxFuture<'a, Result<(), StorageError>>;

    /// Moves at most `max` scheduled runs that are due into the queue; returns how many.
    fn promote_due(&self, max: usize) -> BoxFuture<'_, Result<usize, StorageError>>;

    /// Moves a run that cannot be executed to the dead-letter list, saying why.
    fn dead_letter<'a>(
        &'a self,
        delivery: &'a Delivery,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), StorageError>>;

    /// Runs waiting (for a worker or a retry) or in progress.
    fn depth(&self) -> BoxFuture<'_, Result<u64, StorageError>>;
}
