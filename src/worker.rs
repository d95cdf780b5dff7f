//! Workers: execute queued async runs.
//!
//! A worker is a loop around [`Worker::try_execute_next`]-style steps: claim
//! as many runs as it has free slots (runs taken over from dead workers
//! first, when it is time to look for them), execute each in its own task,
//! complete it when it ended. While runs execute, the worker extends its
//! leases on them, so only runs of a dead worker are ever taken over.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::backend::{Backends, RunStore};
use crate::backend::{Claimed, Delivery, RunQueue, StorageError};
use crate::control::Control;
use crate::engine::{Engine, RunOptions, RunState};
use crate::flow::{Catalog, Flow, FlowStatus, SharedCatalog};
use crate::record::RunRecord;
use crate::transition::Transitions;

/// Back-off after the queue failed, before asking again.
const QUEUE_ERROR_BACKOFF: Duration = Duration::from_secs(1);
/// A run started this many times in a row without ending (each time its
/// worker died) is dead-lettered instead of started again.
pub const MAX_ATTEMPTS: u32 = 5;
/// How often a worker moves due retries into the queue.
const PROMOTE_EVERY: Duration = Duration::from_millis(250);
/// A run still going after this long has its record updated to `running`.
const SHOW_RUNNING_AFTER: Duration = Duration::from_millis(500);
/// How long a run of a paused flow waits before its worker looks again.
const PAUSED_RECHECK: Duration = Duration::from_secs(1);
/// Most due retries moved at once.
const PROMOTE_BATCH: usize = 100;

/// How a worker behaves.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Runs executed at once.
    pub concurrency: usize,
    /// A run nobody heartbeated for this long belongs to a dead worker and is taken over.
    pub reclaim_after: Duration,
    /// Longest wait for new runs in one queue read.
    pub poll_wait: Duration,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            concurrency: 16,
            reclaim_after: Duration::from_secs(15),
            poll_wait: Duration::from_secs(1),
        }
    }
}

/// What one step of a worker did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing was waiting.
    Idle,
    /// A run was executed and acknowledged.
    Executed {
        /// The run.
        run_id: String,
        /// How it ended.
        status: RunState,
    },
    /// A run stopped to wait for a step's retry and was scheduled again.
    RetryLater {
        /// The run.
        run_id: String,
        /// When it runs again.
        retry_in: Duration,
    },
    /// A run of a paused flow was put back to wait until the flow is unpaused.
    Held {
        /// The run.
        run_id: String,
    },
    /// A run could not be executed (its flow is gone) and was dropped.
    Abandoned {
        /// The run.
        run_id: String,
        /// Why.
        reason: String,
    },
}

/// Completes once run `run_id` is marked aborted in the control state.
async fn aborted(control: &Control, run_id: &str) {
    let mut changes = control.subscribe();
    loop {
        if control.is_aborted(run_id) {
            return;
        }
        if changes.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Executes queued runs.
pub struct Worker {
    queue: Arc<dyn RunQueue>,
    runs: Arc<dyn RunStore>,
    engine: Engine,
    catalog: SharedCatalog,
    consumer: String,
    settings: WorkerSettings,
    transitions: Arc<Transitions>,
    control: Arc<Control>,
    in_flight: Mutex<HashSet<String>>,
}

impl Worker {
    /// A worker named `consumer` (unique per worker process) on `backends`'
    /// queue and run records.
    pub fn new(
        backends: &Backends,
        engine: Engine,
        catalog: SharedCatalog,
        consumer: String,
        settings: WorkerSettings,
        transitions: Arc<Transitions>,
        control: Arc<Control>,
    ) -> Self {
        Self {
            queue: backends.queue.clone(),
            runs: backends.runs.clone(),
            engine,
            catalog,
            consumer,
            settings,
            transitions,
            control,
            in_flight: Mutex::new(HashSet::new()),
        }
    }

    /// A consumer name unique to this process.
    pub fn unique_consumer_name() -> String {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "flowgate".into());
        format!(
            "{host}-{}-{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        )
    }

    /// Takes one run (a taken-over one first) and executes it: one turn of
    /// [`Worker::run`], for tests and tools that drive a worker step by step.
    pub async fn try_execute_next(&self) -> Result<Outcome, StorageError> {
        self.queue.requeue_due_retries(PROMOTE_BATCH).await?;
        let wait = self.settings.poll_wait;
        match self.next_runs(1, true, wait).await?.pop() {
            Some(delivery) => Ok(self.execute(delivery).await),
            None => Ok(Outcome::Idle),
        }
    }

    /// The claim step of every turn: at most `max` runs, those whose
    /// worker stopped first when `take_over` (then new ones, waiting up to
    /// `wait` for one). Runs the queue gave up on meanwhile are announced.
    async fn next_runs(
        &self,
        max: usize,
        take_over: bool,
        wait: Duration,
    ) -> Result<Vec<Delivery>, StorageError> {
        // Pauses and aborts decide whether a run may start: none is taken
        // before they are loaded.
        if !self.control.is_loaded() {
            let mut loaded = self.control.subscribe();
            let _ = tokio::time::timeout(wait, loaded.wait_for(Option::is_some)).await;
            return Ok(Vec::new());
        }
        let mut claimed = match take_over {
            true => {
                let reclaim_after = self.settings.reclaim_after;
                self.queue
                    .take_over(&self.consumer, reclaim_after, max)
                    .await?
            }
            false => Claimed::default(),
        };
        if claimed.runs.is_empty() {
            claimed.extend(self.queue.claim(&self.consumer, max, wait).await?);
        }
        self.transitions.buried(&claimed.buried);
        Ok(claimed.runs)
    }

    /// Executes a delivery, keeping it in the heartbeat set while it runs.
    async fn execute(&self, delivery: Delivery) -> Outcome {
        let id = delivery.id.clone();
        self.in_flight
            .lock()
            .expect("in-flight lock")
            .insert(id.clone());
        let outcome = self.execute_tracked(delivery).await;
        self.in_flight.lock().expect("in-flight lock").remove(&id);
        outcome
    }

    async fn execute_tracked(&self, delivery: Delivery) -> Outcome {
        let run_id = delivery.input.run_id.clone();
        let catalog = self.catalog.get();
        let (flow, mut record, first) = match self.admit(&catalog, &delivery).await {
            Ok(admitted) => admitted,
            Err(outcome) => return outcome,
        };
        record.start();
        let journal = self.transitions.started(&delivery, &record, !first).await;
        let started = Instant::now();
        let report = {
            let steps = self.transitions.steps(&run_id, &flow.id, &journal);
            let run = self.engine.run_observed(
                &catalog,
                flow,
                &delivery.input,
                RunOptions {
                    dry_run: false,
                    retry_later: true,
                },
                &steps,
            );
            // Most runs end within milliseconds: their record goes from
            // `queued` straight to the end. Longer ones show `running`
            // meanwhile.
            let show_running = async {
                if first {
                    tokio::time::sleep(SHOW_RUNNING_AFTER).await;
                    self.transitions.still_running(&record, &journal).await;
                }
                std::future::pending::<()>().await
            };
            tokio::select! {
                report = run => Some(report),
                // Dropping the run stops it where it waits: a delay, an
                // http call, or the next step.
                () = aborted(&self.control, &run_id) => None,
                () = show_running => unreachable!("never completes"),
            }
        };
        let Some(report) = report else {
            record.abort("aborted on request while running");
            self.transitions
                .stopped(&delivery, &record, started.elapsed(), &journal)
                .await;
            return Outcome::Abandoned {
                run_id,
                reason: "aborted on request".into(),
            };
        };
        record.finish(&report);
        if let Some(retry) = &report.retry {
            let mut next = delivery.input.clone();
            next.resume = Some(retry.resume.clone());
            self.transitions
                .retry_later(&delivery, &record, &next, retry.delay, &journal)
                .await;
            return Outcome::RetryLater {
                run_id,
                retry_in: retry.delay,
            };
        }
        self.transitions
            .ended(&delivery, &record, &report, &journal)
            .await;
        Outcome::Executed {
            run_id,
            status: report.status,
        }
    }

    /// Whether a delivered run may start: its flow, its record, and whether
    /// this is its first delivery; or, for a run that ends (or waits) here
    /// without starting, what became of it.
    async fn admit<'c>(
        &self,
        catalog: &'c Catalog,
        delivery: &Delivery,
    ) -> Result<(&'c Flow, RunRecord, bool), Outcome> {
        let run_id = delivery.input.run_id.clone();
        let Some(flow) = catalog.get(&delivery.input.flow_id) else {
            let reason = format!("flow `{}` is no longer loaded", delivery.input.flow_id);
            let record = self.runs.get(&run_id).await.ok().flatten();
            self.transitions.abandoned(delivery, record, &reason).await;
            return Err(Outcome::Abandoned { run_id, reason });
        };
        if self.control.is_aborted(&run_id) {
            self.transitions.dropped_aborted(delivery).await;
            let reason = "aborted on request".into();
            return Err(Outcome::Abandoned { run_id, reason });
        }
        if self.control.status(flow) == FlowStatus::Paused {
            self.transitions
                .held_while_paused(delivery, PAUSED_RECHECK)
                .await;
            return Err(Outcome::Held { run_id });
        }
        // A first delivery that came with its answer has nothing in its
        // queued record the worker does not know already.
        let first = !delivery.taken_over && delivery.input.resume.is_none();
        let record = match (&delivery.answer, first) {
            (Some(answer), true) => {
                let mut record = RunRecord::accepted(flow, &delivery.input, RunState::Queued);
                record.response = Some(answer.clone());
                record
            }
            _ => self.stored_record(flow, delivery).await,
        };
        if record.interrupted >= MAX_ATTEMPTS {
            let reason = format!(
                "dead-lettered: started {} times in a row without ending (its worker stopped each time)",
                record.interrupted
            );
            self.transitions
                .dead_lettered(delivery, record, &reason)
                .await;
            return Err(Outcome::Abandoned { run_id, reason });
        }
        Ok((flow, record, first))
    }

    /// Executes runs until `shutdown` completes, then waits up to `grace` for
    /// runs in progress. Runs still going after that stay in the queue and
    /// are taken over by another worker.
    pub async fn run(self: Arc<Self>, shutdown: impl Future<Output = ()>, grace: Duration) {
        let concurrency = self.settings.concurrency.max(1);
        let slots = Arc::new(Semaphore::new(concurrency));
        let reclaim_every = (self.settings.reclaim_after / 3).max(Duration::from_millis(200));
        let heartbeat = tokio::spawn(self.clone().heartbeat_loop(reclaim_every));
        let mut last_reclaim: Option<Instant> = None;
        let mut last_promote: Option<Instant> = None;
        tokio::pin!(shutdown);
        if let Err(e) = self.queue.prepare().await {
            // Reading the queue prepares it again once it answers.
            tracing::warn!(error = %e, "cannot prepare the run queue yet; the worker keeps trying");
        }
        tracing::info!(consumer = %self.consumer, concurrency, "worker started");
        loop {
            let free = slots.available_permits();
            if free == 0 {
                tokio::select! {
                    permit = slots.acquire() => drop(permit),
                    _ = &mut shutdown => break,
                }
                continue;
            }
            if last_promote.is_none_or(|at| at.elapsed() >= PROMOTE_EVERY) {
                last_promote = Some(Instant::now());
                if let Err(e) = self.queue.requeue_due_retries(PROMOTE_BATCH).await {
                    tracing::warn!(error = %e, "cannot move due retries into the queue");
                }
            }
            let reclaim_due = last_reclaim.is_none_or(|at| at.elapsed() >= reclaim_every);
            // Wake up in time to move due retries.
            let wait = self.settings.poll_wait.min(PROMOTE_EVERY);
            let deliveries = tokio::select! {
                result = self.next_runs(free, reclaim_due, wait) => result,
                _ = &mut shutdown => break,
            };
            if reclaim_due {
                last_reclaim = Some(Instant::now());
            }
            match deliveries {
                Ok(deliveries) => {
                    for delivery in deliveries {
                        let permit = slots
                            .clone()
                            .try_acquire_owned()
                            .expect("never more deliveries than free slots");
                        let worker = self.clone();
                        tokio::spawn(async move {
                            worker.execute(delivery).await;
                            drop(permit);
                        });
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "worker cannot reach the queue");
                    tokio::select! {
                        _ = tokio::time::sleep(QUEUE_ERROR_BACKOFF) => {},
                        _ = &mut shutdown => break,
                    }
                }
            }
        }
        tracing::info!("worker stopping: waiting for runs in progress");
        let all = u32::try_from(concurrency).unwrap_or(u32::MAX);
        if tokio::time::timeout(grace, slots.acquire_many(all))
            .await
            .is_err()
        {
            tracing::warn!(
                "runs still in progress after the grace period are handed back to the queue"
            );
        }
        heartbeat.abort();
    }

    /// The run's record as stored, or a new one when it is missing. A
    /// taken-over run whose record still says `queued` was started by a
    /// worker that died before writing `running`: that start is counted.
    async fn stored_record(&self, flow: &Flow, delivery: &Delivery) -> RunRecord {
        let stored = self.runs.get(&delivery.input.run_id).await.ok().flatten();
        let mut record =
            stored.unwrap_or_else(|| RunRecord::accepted(flow, &delivery.input, RunState::Queued));
        if delivery.taken_over && record.status == RunState::Queued {
            record.attempt += 1;
            record.interrupted += 1;
        }
        record.policy = flow.records;
        record
    }

    async fn heartbeat_loop(self: Arc<Self>, every: Duration) {
        let mut ticker = tokio::time::interval(every);
        loop {
            ticker.tick().await;
            let ids: Vec<String> = self
                .in_flight
                .lock()
                .expect("in-flight lock")
                .iter()
                .cloned()
                .collect();
            if let Err(e) = self.queue.extend_leases(&self.consumer, &ids).await {
                tracing::warn!(error = %e, "heartbeat failed");
            }
        }
    }
}
