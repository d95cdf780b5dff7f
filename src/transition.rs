//! Run transitions, each made in one place: the run's record is written
//! (together with the queue change, in one backend step, where there is one)
//! and the transition is announced through the [`Lifecycle`] — logged,
//! counted, published on the event bus.
//!
//! The trigger and the workers call [`Transitions`] and nothing else to move
//! a run along, so every run leaves the same trail whichever path it took.
//!
//! Records are not a subscriber of the bus: a sender is told `202` only
//! after its run and its first record are durable, and a worker completes a
//! delivery in the same step that writes the final record. What a
//! transition promises is written first where it must be (queued), and the
//! rest is announced before the write, so the metrics and events of a run
//! never lag behind what a reader of its record sees.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::backend::{Backends, Delivery, RunQueue, RunStore, StorageError};
use crate::engine::{RunInput, RunReport, RunState};
use crate::lifecycle::{Lifecycle, RunSteps};
use crate::record::RunRecord;

/// Run records of sync runs being written in the background at most; beyond
/// it, sync answers wait for a slot, so a slow store slows senders instead of
/// piling up memory.
pub const MAX_PENDING_RECORDS: usize = 1024;

/// Moves runs from one state to the next: record, queue, announcement.
pub struct Transitions {
    lifecycle: Arc<Lifecycle>,
    queue: Arc<dyn RunQueue>,
    runs: Arc<dyn RunStore>,
    record_slots: Arc<Semaphore>,
}

impl Transitions {
    /// Transitions stored in `backends` and announced through `lifecycle`.
    pub fn new(lifecycle: Arc<Lifecycle>, backends: &Backends) -> Self {
        Self {
            lifecycle,
            queue: backends.queue.clone(),
            runs: backends.runs.clone(),
            record_slots: Arc::new(Semaphore::new(MAX_PENDING_RECORDS)),
        }
    }

    /// Where transitions are announced.
    pub fn lifecycle(&self) -> &Arc<Lifecycle> {
        &self.lifecycle
    }

    /// The observer that announces the steps of a run while it executes.
    pub fn steps<'a>(&'a self, run_id: &'a str, flow: &'a str) -> RunSteps<'a> {
        self.lifecycle.steps(run_id, flow)
    }

    /// An async run was accepted: it is stored with its first record, and
    /// announced as queued. On `Err` nothing was stored and the sender must
    /// not be told the run was accepted.
    pub async fn queued(&self, input: &RunInput, record: &RunRecord) -> Result<(), StorageError> {
        self.queue.enqueue(input, Some(record)).await?;
        self.lifecycle.queued(&input.run_id, &input.flow_id);
        Ok(())
    }

    /// A sync run starts executing inside its request.
    pub fn started_in_request(&self, run_id: &str, flow: &str) {
        self.lifecycle.started(run_id, flow, 1, None, false);
    }

    /// A sync run ended: announced, and its record (`record`, with the
    /// answer) written in the background so the answer does not wait for
    /// it, unless its flow keeps no record of a run that ended so. When the
    /// store is down the record is lost: the loss is counted and logged, and
    /// the sender still gets its answer.
    pub async fn ended_in_request(&self, record: RunRecord, report: &RunReport) {
        self.announce_end(&record.id, &record.flow, report);
        if !record.kept() {
            return;
        }
        let slot = self
            .record_slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        // Encoded here, on the request's thread, where the run's data is hot.
        let write = self.runs.save(&record);
        let run_id = record.id;
        let lifecycle = self.lifecycle.clone();
        tokio::spawn(async move {
            let saved = write.await;
            drop(slot);
            if let Err(e) = saved {
                lifecycle.metrics().record_lost();
                tracing::warn!(run_id = %run_id, error = %e, "run record lost: the run store is unavailable");
            }
        });
    }

    /// A worker starts `delivery`, whose record says `running` now. With
    /// `write`, the record is written before the run executes (retries and
    /// taken-over runs, so a run that keeps killing its workers is counted);
    /// otherwise it goes from `queued` to its end in one write, unless the
    /// run lasts long enough to [`Transitions::still_running`].
    pub async fn started(&self, delivery: &Delivery, record: &RunRecord, write: bool) {
        if write {
            self.save(record).await;
        }
        let lag =
            Duration::from_millis(crate::backend::now_ms().saturating_sub(delivery.accepted_at_ms));
        self.lifecycle.started(
            &record.id,
            &record.flow,
            record.attempt,
            Some(lag),
            delivery.taken_over,
        );
    }

    /// A run is taking a while: its record shows `running` meanwhile.
    pub async fn still_running(&self, record: &RunRecord) {
        self.save(record).await;
    }

    /// A run stops to retry a step after `delay`: the delivery ends, and
    /// `next` (with its resume point) is queued again with `record`.
    pub async fn retry_later(
        &self,
        delivery: &Delivery,
        record: &RunRecord,
        next: &RunInput,
        delay: Duration,
    ) {
        self.lifecycle.retry_later(&record.id, &record.flow, delay);
        let due = crate::backend::now_ms() + delay.as_millis() as u64;
        if let Err(e) = self
            .queue
            .retry_later(&delivery.id, next, due, Some(record))
            .await
        {
            // Not acknowledged: the run is delivered again and retries then.
            tracing::warn!(error = %e, run_id = %record.id, "could not schedule a retry");
        }
    }

    /// A run of a paused flow goes back to wait for `recheck`, its record
    /// untouched (still `queued`): paused flows keep their runs, and run
    /// them after unpause.
    pub async fn held_while_paused(&self, delivery: &Delivery, recheck: Duration) {
        let due = crate::backend::now_ms() + recheck.as_millis() as u64;
        let held = self
            .queue
            .retry_later(&delivery.id, &delivery.input, due, None)
            .await;
        match held {
            Ok(()) => {
                tracing::debug!(run_id = %delivery.input.run_id, "run held: its flow is paused")
            }
            // Not acknowledged: delivered again, and held then.
            Err(e) => {
                tracing::warn!(error = %e, run_id = %delivery.input.run_id, "could not hold a run of a paused flow")
            }
        }
    }

    /// A queued run ended as `report` says: the delivery completes with its
    /// final record.
    pub async fn ended(&self, delivery: &Delivery, record: &RunRecord, report: &RunReport) {
        self.announce_end(&record.id, &record.flow, report);
        self.complete(delivery, Some(record)).await;
    }

    /// A queued run cannot be executed (its flow is gone): announced as
    /// aborted, and the delivery completes with the aborted record, when
    /// there is one.
    pub async fn abandoned(&self, delivery: &Delivery, record: Option<RunRecord>, reason: &str) {
        let input = &delivery.input;
        self.lifecycle.ended(
            &input.run_id,
            &input.flow_id,
            RunState::Aborted,
            Duration::ZERO,
            Some(reason),
            None,
        );
        let record = record.map(|mut record| {
            record.abort(reason);
            record
        });
        self.complete(delivery, record.as_ref()).await;
    }

    /// A queued or waiting run that was aborted before it started leaves the
    /// queue; whoever aborted it recorded it already.
    pub async fn dropped_aborted(&self, delivery: &Delivery) {
        let input = &delivery.input;
        self.lifecycle.ended(
            &input.run_id,
            &input.flow_id,
            RunState::Aborted,
            Duration::ZERO,
            Some("aborted on request"),
            None,
        );
        self.complete(delivery, None).await;
    }

    /// A running run was stopped on request: the delivery completes with
    /// its aborted `record`.
    pub async fn stopped(&self, delivery: &Delivery, record: &RunRecord, duration: Duration) {
        self.lifecycle.ended(
            &record.id,
            &record.flow,
            RunState::Aborted,
            duration,
            record.error.as_ref().map(|e| e.message.as_str()),
            record.error.as_ref().and_then(|e| e.step.as_deref()),
        );
        self.complete(delivery, Some(record)).await;
    }

    /// A run that keeps killing its workers is given up: announced as
    /// aborted, moved to the dead letters with its aborted record.
    pub async fn dead_lettered(&self, delivery: &Delivery, mut record: RunRecord, reason: &str) {
        self.lifecycle.ended(
            &record.id,
            &record.flow,
            RunState::Aborted,
            Duration::ZERO,
            Some(reason),
            None,
        );
        record.abort(reason);
        if let Err(e) = self.queue.dead_letter(delivery, reason, &record).await {
            // Not moved: the run is delivered again and dead-lettered then.
            tracing::warn!(error = %e, run_id = %record.id, "could not dead-letter a run");
        }
    }

    fn announce_end(&self, run_id: &str, flow: &str, report: &RunReport) {
        self.lifecycle.ended(
            run_id,
            flow,
            report.status,
            report.duration,
            report.error.as_ref().map(|e| e.message.as_str()),
            report.error.as_ref().and_then(|e| e.step.as_deref()),
        );
    }

    async fn complete(&self, delivery: &Delivery, record: Option<&RunRecord>) {
        // Not acknowledged means delivered again: at least once.
        if let Err(e) = self.queue.complete(&delivery.id, record).await {
            if record.is_some() {
                self.lifecycle.metrics().record_lost();
            }
            tracing::warn!(error = %e, entry = %delivery.id, "could not acknowledge a run; it will run again");
        }
    }

    async fn save(&self, record: &RunRecord) {
        if let Err(e) = self.runs.save(record).await {
            self.lifecycle.metrics().record_lost();
            tracing::warn!(run_id = %record.id, error = %e, "run record not saved");
        }
    }
}
