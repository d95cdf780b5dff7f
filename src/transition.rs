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
//! rest is announced before the write, so the metrics of a run never lag
//! behind what a reader of its record sees.
//!
//! Webhook events are not carried by the bus either: each execution keeps a
//! [`RunJournal`] of the events subscribers want, and every store write of
//! the run takes them along in the same step (see
//! [`crate::webhooks::outbox`]), so a run that ended has its events stored.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::backend::webhooks::OutboxEvent;
use crate::backend::{Backends, Buried, Delivery, RunQueue, RunStore, StorageError};
use crate::engine::{RunInput, RunReport, RunState, StepObserver, StepTrace};
use crate::lifecycle::{Lifecycle, RunSteps};
use crate::record::RunRecord;
use crate::webhooks::outbox::{Outbox, RunJournal};

/// Run records of sync runs being written in the background at most; beyond
/// it, sync answers wait for a slot, so a slow store slows senders instead of
/// piling up memory.
pub const MAX_PENDING_RECORDS: usize = 128;

/// Moves runs from one state to the next: record, queue, announcement.
pub struct Transitions {
    lifecycle: Arc<Lifecycle>,
    queue: Arc<dyn RunQueue>,
    runs: Arc<dyn RunStore>,
    record_slots: Arc<Semaphore>,
    outbox: Option<Arc<Outbox>>,
}

/// What the engine tells about a run's steps: announced, and noted in the
/// run's journal for webhook subscribers.
pub struct Observed<'a> {
    steps: RunSteps<'a>,
    journal: &'a RunJournal,
}

impl StepObserver for Observed<'_> {
    fn step_started(&self, path: &str, kind: &str) {
        self.steps.step_started(path, kind);
        self.journal.step_started(path, kind);
    }

    fn step_ended(&self, trace: &StepTrace) {
        self.steps.step_ended(trace);
        self.journal.step_ended(trace);
    }
}

impl Transitions {
    /// Transitions stored in `backends` and announced through `lifecycle`.
    pub fn new(lifecycle: Arc<Lifecycle>, backends: &Backends) -> Self {
        Self {
            lifecycle,
            queue: backends.queue.clone(),
            runs: backends.runs.clone(),
            record_slots: Arc::new(Semaphore::new(MAX_PENDING_RECORDS)),
            outbox: None,
        }
    }

    /// Transitions that also write the events webhook subscribers want.
    pub fn with_outbox(mut self, outbox: Arc<Outbox>) -> Self {
        self.outbox = Some(outbox);
        self
    }

    /// A journal for an execution of a run (`attempt` 0: none, the run
    /// ends without executing).
    fn journal(&self, run_id: &str, flow: &str, attempt: u32) -> RunJournal {
        match &self.outbox {
            Some(outbox) => outbox.journal(run_id, flow, attempt),
            None => RunJournal::none(),
        }
    }

    /// Tells the fan-out that events were stored.
    fn stored(&self, events: &[OutboxEvent]) {
        if let (false, Some(outbox)) = (events.is_empty(), &self.outbox) {
            outbox.written();
        }
    }

    /// Where transitions are announced.
    pub fn lifecycle(&self) -> &Arc<Lifecycle> {
        &self.lifecycle
    }

    /// The observer that announces the steps of a run while it executes
    /// and notes them in its `journal`.
    pub fn steps<'a>(
        &'a self,
        run_id: &'a str,
        flow: &'a str,
        journal: &'a RunJournal,
    ) -> Observed<'a> {
        Observed {
            steps: self.lifecycle.steps(run_id, flow),
            journal,
        }
    }

    /// An async run was accepted: it is stored with its first record, and
    /// announced as queued. On `Err` nothing was stored and the sender must
    /// not be told the run was accepted.
    pub async fn queued(&self, input: &RunInput, record: &RunRecord) -> Result<(), StorageError> {
        let journal = self.journal(&input.run_id, &input.flow_id, 0);
        journal.queued();
        let events = journal.take();
        self.queue
            .enqueue_with(input, Some(record), &events)
            .await?;
        self.stored(&events);
        self.lifecycle.queued(&input.run_id, &input.flow_id);
        Ok(())
    }

    /// A sync run starts executing inside its request; its journal keeps
    /// its events until its record is written.
    pub fn started_in_request(&self, run_id: &str, flow: &str) -> RunJournal {
        self.lifecycle.started(run_id, flow, 1, None, false);
        let journal = self.journal(run_id, flow, 1);
        journal.started(Duration::ZERO);
        journal
    }

    /// A sync run ended: announced, and its record (`record`, with the
    /// answer) written with the events its `journal` holds, in the
    /// background so the answer does not wait for it. A flow that keeps no
    /// record of a run that ended so writes only the events, if any. When
    /// the store is down the record and its events are lost: the loss is
    /// counted and logged, and the sender still gets its answer.
    pub async fn ended_in_request(
        &self,
        record: RunRecord,
        report: &RunReport,
        journal: &RunJournal,
    ) {
        self.announce_end(&record.id, &record.flow, report);
        journal.ended(
            report.status,
            report.duration,
            report.error.as_ref().map(|e| e.message.as_str()),
            report.error.as_ref().and_then(|e| e.step.as_deref()),
        );
        let events = journal.take();
        if !record.kept() && events.is_empty() {
            return;
        }
        let slot = self
            .record_slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let count = events.len();
        let outbox = self.outbox.clone().filter(|_| count > 0);
        // Encoded here, on the request's thread, where the run's data is hot.
        let write = self.runs.save_with(&record, events);
        let run_id = record.id;
        let lifecycle = self.lifecycle.clone();
        tokio::spawn(async move {
            let saved = write.await;
            drop(slot);
            match saved {
                Ok(()) => {
                    if let Some(outbox) = outbox {
                        outbox.written();
                    }
                }
                Err(e) => {
                    lifecycle.metrics().record_lost();
                    tracing::warn!(run_id = %run_id, error = %e, events = count, "run record and its events lost: the run store is unavailable");
                }
            }
        });
    }

    /// A worker starts `delivery`, whose record says `running` now. With
    /// `write`, the record is written before the run executes (retries and
    /// taken-over runs, so a run that keeps killing its workers is counted);
    /// so it is when a subscriber wants `run.started`, which is written
    /// with it. Otherwise it goes from `queued` to its end in one write,
    /// unless the run lasts long enough to [`Transitions::still_running`].
    /// The journal returned keeps the execution's events.
    pub async fn started(
        &self,
        delivery: &Delivery,
        record: &RunRecord,
        write: bool,
    ) -> RunJournal {
        let lag =
            Duration::from_millis(crate::backend::now_ms().saturating_sub(delivery.accepted_at_ms));
        let journal = self.journal(&record.id, &record.flow, record.attempt.max(1));
        journal.started(lag);
        if write || !journal.is_empty() {
            self.save(record, &journal).await;
        }
        self.lifecycle.started(
            &record.id,
            &record.flow,
            record.attempt,
            Some(lag),
            delivery.taken_over,
        );
        journal
    }

    /// A run is taking a while: its record shows `running` meanwhile, and
    /// the events noted so far go with it.
    pub async fn still_running(&self, record: &RunRecord, journal: &RunJournal) {
        self.save(record, journal).await;
    }

    /// A run stops to retry a step after `delay`: the delivery ends, and
    /// `next` (with its resume point) is queued again with `record` and the
    /// events noted so far.
    pub async fn retry_later(
        &self,
        delivery: &Delivery,
        record: &RunRecord,
        next: &RunInput,
        delay: Duration,
        journal: &RunJournal,
    ) {
        self.lifecycle.retry_later(&record.id, &record.flow, delay);
        let due = crate::backend::now_ms() + delay.as_millis() as u64;
        let events = journal.take();
        match self
            .queue
            .retry_later_with(&delivery.id, next, due, Some(record), &events)
            .await
        {
            Ok(()) => self.stored(&events),
            // Not acknowledged: the run is delivered again and retries then.
            Err(e) => tracing::warn!(error = %e, run_id = %record.id, "could not schedule a retry"),
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
    /// final record and the events its journal holds.
    pub async fn ended(
        &self,
        delivery: &Delivery,
        record: &RunRecord,
        report: &RunReport,
        journal: &RunJournal,
    ) {
        self.announce_end(&record.id, &record.flow, report);
        journal.ended(
            report.status,
            report.duration,
            report.error.as_ref().map(|e| e.message.as_str()),
            report.error.as_ref().and_then(|e| e.step.as_deref()),
        );
        self.complete(delivery, Some(record), journal).await;
    }

    /// A run ends aborted without executing: announced, and noted in a
    /// journal of its own.
    fn ended_unexecuted(&self, run_id: &str, flow: &str, reason: &str) -> RunJournal {
        self.lifecycle.ended(
            run_id,
            flow,
            RunState::Aborted,
            Duration::ZERO,
            Some(reason),
            None,
        );
        let journal = self.journal(run_id, flow, 0);
        journal.ended(RunState::Aborted, Duration::ZERO, Some(reason), None);
        journal
    }

    /// A queued run cannot be executed (its flow is gone): announced as
    /// aborted, and the delivery completes with the aborted record, when
    /// there is one.
    pub async fn abandoned(&self, delivery: &Delivery, record: Option<RunRecord>, reason: &str) {
        let input = &delivery.input;
        let journal = self.ended_unexecuted(&input.run_id, &input.flow_id, reason);
        let record = record.map(|mut record| {
            record.abort(reason);
            record
        });
        self.complete(delivery, record.as_ref(), &journal).await;
    }

    /// A queued or waiting run that was aborted before it started leaves the
    /// queue; whoever aborted it recorded it already.
    pub async fn dropped_aborted(&self, delivery: &Delivery) {
        let input = &delivery.input;
        let journal = self.ended_unexecuted(&input.run_id, &input.flow_id, "aborted on request");
        self.complete(delivery, None, &journal).await;
    }

    /// A running run was stopped on request: the delivery completes with
    /// its aborted `record`.
    pub async fn stopped(
        &self,
        delivery: &Delivery,
        record: &RunRecord,
        duration: Duration,
        journal: &RunJournal,
    ) {
        let error = record.error.as_ref().map(|e| e.message.as_str());
        let cause = record.error.as_ref().and_then(|e| e.step.as_deref());
        self.lifecycle.ended(
            &record.id,
            &record.flow,
            RunState::Aborted,
            duration,
            error,
            cause,
        );
        journal.ended(RunState::Aborted, duration, error, cause);
        self.complete(delivery, Some(record), journal).await;
    }

    /// A run that keeps killing its workers is given up: announced as
    /// aborted, moved to the dead letters with its aborted record.
    pub async fn dead_lettered(&self, delivery: &Delivery, mut record: RunRecord, reason: &str) {
        let journal = self.ended_unexecuted(&record.id, &record.flow, reason);
        record.abort(reason);
        let events = journal.take();
        match self
            .queue
            .dead_letter_with(delivery, reason, &record, &events)
            .await
        {
            Ok(()) => self.stored(&events),
            // Not moved: the run is delivered again and dead-lettered then.
            Err(e) => {
                tracing::warn!(error = %e, run_id = %record.id, "could not dead-letter a run")
            }
        }
    }

    /// Runs the queue gave up on while handing out (their entries could not
    /// be decoded; the queue dead-lettered them and recorded them aborted):
    /// announced as aborted, with the `run.ended` events they owe.
    pub fn buried(&self, runs: &[Buried]) {
        for run in runs {
            tracing::error!(run_id = %run.run_id, reason = %run.reason, "queued run dead-lettered");
            let Some(flow) = &run.flow else { continue };
            let events = self.ended_unexecuted(&run.run_id, flow, &run.reason).take();
            if let (false, Some(outbox)) = (events.is_empty(), &self.outbox) {
                outbox.append_in_background(events);
            }
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

    async fn complete(
        &self,
        delivery: &Delivery,
        record: Option<&RunRecord>,
        journal: &RunJournal,
    ) {
        let events = journal.take();
        // Not acknowledged means delivered again: at least once, with its events.
        match self
            .queue
            .complete_with(&delivery.id, record, &events)
            .await
        {
            Ok(()) => self.stored(&events),
            Err(e) => {
                if record.is_some() {
                    self.lifecycle.metrics().record_lost();
                }
                tracing::warn!(error = %e, entry = %delivery.id, "could not acknowledge a run; it will run again");
            }
        }
    }

    /// Writes `record` with the events `journal` holds; events a failed
    /// write did not store wait in the journal for the run's next write.
    async fn save(&self, record: &RunRecord, journal: &RunJournal) {
        let events = journal.take();
        match self.runs.save_with(record, events.clone()).await {
            Ok(()) => self.stored(&events),
            Err(e) => {
                journal.restore(events);
                self.lifecycle.metrics().record_lost();
                tracing::warn!(run_id = %record.id, error = %e, "run record not saved");
            }
        }
    }
}
