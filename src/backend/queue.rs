//! The run queue: where accepted async runs wait for a worker.
//!
//! [`RunQueue`] is the interface the trigger and the workers use, in the
//! vocabulary of runs: a worker *claims* runs and holds a *lease* on each
//! while it executes them, *extending* it as it goes; it *completes* a run
//! that ended, or asks for it to *retry later* (a step's backoff, without
//! holding a worker slot); a run whose lease lapsed (its worker died) is
//! *taken over* by another worker; a run that cannot be executed is
//! *dead-lettered*. Delivery is at least once: a run leaves the queue only
//! when completed, retried later or dead-lettered.
//!
//! Records travel with the transitions: `enqueue`, `complete`, `retry_later`
//! and `dead_letter` take the run's record and write it in the same step as
//! the queue change — one transaction where the backend has them, one
//! ordered round trip at least — so a reader never sees a record that
//! contradicts the queue for longer than that step takes, and a backend with
//! transactions commits both or neither. The `_with` forms also write the
//! events the transition owes webhook subscribers
//! ([`super::webhooks::OutboxEvent`]) in that same step, so a run never
//! ends without its events being stored.

use std::time::Duration;

use super::webhooks::OutboxEvent;
use super::{BoxFuture, StorageError};
use crate::engine::RunInput;
use crate::record::{RecordedResponse, RunRecord};

/// One run handed to a worker.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Backend-specific id naming this delivery to the queue (its lease).
    pub id: String,
    /// The run.
    pub input: RunInput,
    /// When the run was accepted, milliseconds since the epoch.
    pub accepted_at_ms: u64,
    /// True when this delivery was taken over from a worker that stopped.
    pub taken_over: bool,
    /// The answer the sender got, when the queue kept it with the run: a
    /// worker can then write the run's record without reading it first.
    pub answer: Option<RecordedResponse>,
}

/// What a claim handed out: runs to execute, and runs the queue gave up on
/// while handing out (their entries could not be decoded), already
/// dead-lettered and recorded as aborted, for the caller to announce.
/// Storage never announces: the worker passes them to
/// [`crate::transition::Transitions::buried`].
#[derive(Debug, Default)]
pub struct Claimed {
    /// Runs to execute, each leased to the claiming consumer.
    pub runs: Vec<Delivery>,
    /// Runs dead-lettered instead.
    pub buried: Vec<Buried>,
}

impl Claimed {
    /// Adds what `other` handed out.
    pub fn extend(&mut self, other: Claimed) {
        self.runs.extend(other.runs);
        self.buried.extend(other.buried);
    }
}

/// A run whose queue entry could not be decoded: dead-lettered, and its
/// record (when it had one) marked aborted with `reason`.
#[derive(Debug, Clone)]
pub struct Buried {
    /// The run's id.
    pub run_id: String,
    /// Its flow, when its record says.
    pub flow: Option<String>,
    /// Why it was given up.
    pub reason: String,
}

/// Most of an undecodable queued input kept in its dead letter.
const DEAD_INPUT_MAX: usize = 64 * 1024;

/// What a dead letter keeps of an undecodable queued `input`: at most
/// 64 KiB, cut at a character boundary.
pub(crate) fn dead_input(input: &str) -> &str {
    let mut kept = input.len().min(DEAD_INPUT_MAX);
    while !input.is_char_boundary(kept) {
        kept -= 1;
    }
    &input[..kept]
}

/// A claim that waits up to `wait` for work: `lease` looks once; between
/// looks it waits for `arrived` (notified when this process stores a run)
/// or `poll` (for runs stored by other processes), whichever comes first.
pub(crate) async fn claim_within<F, Fut>(
    arrived: &tokio::sync::Notify,
    wait: Duration,
    poll: Duration,
    mut lease: F,
) -> Result<Claimed, StorageError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Claimed, StorageError>>,
{
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        // Registered before looking, so a run stored meanwhile wakes us.
        let notified = arrived.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let leased = lease().await?;
        if !leased.runs.is_empty()
            || !leased.buried.is_empty()
            || tokio::time::Instant::now() >= deadline
        {
            return Ok(leased);
        }
        let _ = tokio::time::timeout_at(deadline.min(tokio::time::Instant::now() + poll), notified)
            .await;
    }
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
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        self.enqueue_with(input, record, &[])
    }

    /// [`RunQueue::enqueue`], writing `events` in the same step.
    fn enqueue_with<'a>(
        &'a self,
        input: &'a RunInput,
        record: Option<&'a RunRecord>,
        events: &'a [OutboxEvent],
    ) -> BoxFuture<'a, Result<(), StorageError>>;

    /// Claims at most `max` new runs for `consumer`, waiting up to `wait`
    /// for one; each is leased to `consumer` until completed.
    fn claim<'a>(
        &'a self,
        consumer: &'a str,
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'a, Result<Claimed, StorageError>>;

    /// Takes over at most `max` runs whose lease nobody extended for `idle`.
    fn take_over<'a>(
        &'a self,
        consumer: &'a str,
        idle: Duration,
        max: usize,
    ) -> BoxFuture<'a, Result<Claimed, StorageError>>;

    /// Extends `consumer`'s leases on these deliveries: it is still working on them.
    fn extend_leases<'a>(
        &'a self,
        consumer: &'a str,
        ids: &'a [String],
    ) -> BoxFuture<'a, Result<(), StorageError>>;

    /// Completes a run that ended: it leaves the queue, and its final
    /// record is written in the same step where the backend can.
    fn complete<'a>(
        &'a self,
        id: &'a str,
        record: Option<&'a RunRecord>,
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        self.complete_with(id, record, &[])
    }

    /// [`RunQueue::complete`], writing `events` in the same step.
    fn complete_with<'a>(
        &'a self,
        id: &'a str,
        record: Option<&'a RunRecord>,
        events: &'a [OutboxEvent],
    ) -> BoxFuture<'a, Result<(), StorageError>>;

    /// Ends delivery `id` and queues `input` again (with its resume point)
    /// to be claimed from `due_ms` on, writing `record` in the same step.
    fn retry_later<'a>(
        &'a self,
        id: &'a str,
        input: &'a RunInput,
        due_ms: u64,
        record: Option<&'a RunRecord>,
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        self.retry_later_with(id, input, due_ms, record, &[])
    }

    /// [`RunQueue::retry_later`], writing `events` in the same step.
    fn retry_later_with<'a>(
        &'a self,
        id: &'a str,
        input: &'a RunInput,
        due_ms: u64,
        record: Option<&'a RunRecord>,
        events: &'a [OutboxEvent],
    ) -> BoxFuture<'a, Result<(), StorageError>>;

    /// Makes at most `max` runs waiting to retry later that are due
    /// claimable again; returns how many.
    fn requeue_due_retries(&self, max: usize) -> BoxFuture<'_, Result<usize, StorageError>>;

    /// Moves a run that cannot be executed to the dead-letter list, saying
    /// why, and writes its (aborted) `record` in the same step: a record
    /// saying `aborted` means the run is no longer queued.
    fn dead_letter<'a>(
        &'a self,
        delivery: &'a Delivery,
        reason: &'a str,
        record: &'a RunRecord,
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        self.dead_letter_with(delivery, reason, record, &[])
    }

    /// [`RunQueue::dead_letter`], writing `events` in the same step.
    fn dead_letter_with<'a>(
        &'a self,
        delivery: &'a Delivery,
        reason: &'a str,
        record: &'a RunRecord,
        events: &'a [OutboxEvent],
    ) -> BoxFuture<'a, Result<(), StorageError>>;

    /// Runs waiting (for a worker or a retry) or in progress.
    fn depth(&self) -> BoxFuture<'_, Result<u64, StorageError>>;
}
