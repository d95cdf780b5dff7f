//! Events that are never lost: each one some subscription wants is written
//! in the same store write as the run transition that caused it, and a
//! fan-out turns the stored events into deliveries.
//!
//! - While a run executes, its events (started, each step) wait in its
//!   [`RunJournal`], numbered along the run; the next store write of the
//!   run takes them along: the end (the sync run's record, the async run's
//!   completion), a retry, a dead letter, or the record that shows a long
//!   run as `running`. An async run's `run.queued` goes with its 202's
//!   write, and its `run.started`, when a subscription wants it, with a
//!   write of its `running` record at the start. A process killed mid-run
//!   loses no stored event; the run is executed again and announces that
//!   execution's events (with higher sequence numbers).
//! - Cheap when nobody listens: an event is built and written only when a
//!   subscription in this process's copy (at most a second old) wants its
//!   type and flow.
//! - The fan-out ([`fan_out`]) claims stored events with a lease, makes one
//!   delivery per subscription that wants each (and existed when it
//!   happened), stores them, and only then forgets the events; a fan-out
//!   that dies leaves its events to be claimed again, and deliveries whose
//!   ids are derived from the message and the subscription are stored once.
//! - Flow events (created, updated, deleted, status changed) are written
//!   on their own by the process that sees them ([`Outbox::flow_event`]),
//!   retried until stored; so are a long run's step events past the
//!   [`JOURNAL_HOLDS`] its journal keeps.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::message::{EVENT_TYPES, Message, RUN_STATUSES, message_for};
use super::{Webhooks, fanout, wants};
use crate::backend::now_ms;
use crate::backend::webhooks::{ClaimedEvent, OutboxEvent, Trigger};
use crate::engine::{RunState, StepObserver, StepTrace};
use crate::flow::SharedCatalog;
use crate::lifecycle::{Event, FlowEvent, RunEvent};

/// Most events one fan-out pass takes.
const FAN_OUT_BATCH: usize = 256;
/// How long a claimed event is the fan-out's before another may take it.
const FAN_OUT_LEASE: Duration = Duration::from_secs(10);
/// How often the fan-out looks for events when nothing woke it.
const FAN_OUT_POLL: Duration = Duration::from_millis(200);
/// How often the fan-out looks while there are no subscriptions.
const FAN_OUT_IDLE_POLL: Duration = Duration::from_secs(5);
/// Events one execution holds until its next write; past this, the ones
/// held are stored on their own.
const JOURNAL_HOLDS: usize = 256;
/// Step events one execution of a run sends at most (`step.started` and
/// `step.ended` together); past this its steps send none, which is logged
/// and counted, so a loop over a million items cannot fill the store and
/// every receiver's queue. The run's own events are always sent.
pub const MAX_STEP_EVENTS: u32 = 10_000;
/// Longest wait between tries of a flow event's write.
const FLOW_EVENT_RETRY_MAX: Duration = Duration::from_secs(30);

/// A message as stored with its transition.
#[derive(Debug, Serialize, Deserialize)]
struct StoredMessage {
    id: String,
    event: String,
    at_ms: u64,
    live_mode: bool,
    flow: Option<(String, String)>,
    status: Option<String>,
    data: Value,
}

impl StoredMessage {
    fn of(message: Message) -> Self {
        Self {
            id: message.id,
            event: message.event.to_owned(),
            at_ms: message.at_ms,
            live_mode: message.live_mode,
            flow: message.flow,
            status: message.status.map(str::to_owned),
            data: message.data,
        }
    }

    /// The message again; `None` for an event type this version does not know.
    fn message(self) -> Option<Message> {
        let event = *EVENT_TYPES.iter().find(|e| **e == self.event)?;
        let status = self
            .status
            .and_then(|s| RUN_STATUSES.iter().find(|x| **x == s).copied());
        Some(Message {
            id: self.id,
            event,
            at_ms: self.at_ms,
            live_mode: self.live_mode,
            flow: self.flow,
            status,
            data: self.data,
        })
    }
}

/// Builds the events some subscription wants, for writing with transitions.
pub struct Outbox {
    webhooks: Arc<Webhooks>,
    catalog: SharedCatalog,
}

impl Outbox {
    /// Events for the subscriptions `webhooks` knows, about flows in `catalog`.
    pub fn new(webhooks: Arc<Webhooks>, catalog: SharedCatalog) -> Self {
        Self { webhooks, catalog }
    }

    /// The stored form of `event` (the `sequence`-th of its run), when a
    /// subscription wants it; `key` places it in a partitioned store (the
    /// message id when `None`).
    fn event(&self, event: &Event, sequence: u64, key: Option<&str>) -> Option<OutboxEvent> {
        let snapshot = self.webhooks.snapshot();
        if snapshot.subscriptions.is_empty() {
            return None;
        }
        let event_type = super::message::event_type(event)?;
        let typed = |sub: &crate::backend::webhooks::Subscription| {
            sub.events.iter().any(|e| e == "*" || e == event_type)
        };
        if !snapshot.subscriptions.iter().any(|(sub, _)| typed(sub)) {
            return None;
        }
        let message = message_for(event, sequence, now_ms(), &self.catalog.get())?;
        if !snapshot
            .subscriptions
            .iter()
            .any(|(sub, _)| wants(sub, &message))
        {
            return None;
        }
        let id = message.id.clone();
        let text = serde_json::to_string(&StoredMessage::of(message)).ok()?;
        Some(OutboxEvent {
            key: key.map_or_else(|| id.clone(), str::to_owned),
            id,
            message: text,
        })
    }

    /// Tells the fan-out here that events were stored.
    pub fn written(&self) {
        self.webhooks.wake_fan_out();
    }

    /// A journal for an execution of run `run_id` of `flow` (its
    /// `attempt`-th), `None` when nobody listens.
    pub fn journal(self: &Arc<Self>, run_id: &str, flow: &str, attempt: u32) -> RunJournal {
        if self.webhooks.snapshot().subscriptions.is_empty() {
            return RunJournal::none();
        }
        RunJournal {
            outbox: Some(self.clone()),
            run_id: run_id.to_owned(),
            flow: flow.to_owned(),
            attempt,
            count: AtomicU32::new(0),
            events: Mutex::new(Vec::new()),
        }
    }

    /// Writes the event of a flow change, when a subscription wants it, in
    /// a task that tries until it is stored.
    pub fn flow_event(self: &Arc<Self>, change: FlowEvent) {
        if let Some(stored) = self.event(&Event::Flow(change), 0, None) {
            self.append_in_background(vec![stored]);
        }
    }

    /// Writes `events` on their own, in a task that tries until they are stored.
    pub fn append_in_background(&self, events: Vec<OutboxEvent>) {
        let webhooks = self.webhooks.clone();
        tokio::spawn(async move {
            let mut wait = Duration::from_millis(100);
            loop {
                match webhooks.store().append_events(&events).await {
                    Ok(()) => {
                        webhooks.wake_fan_out();
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, events = events.len(), "webhook events not stored yet; trying again");
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(FLOW_EVENT_RETRY_MAX);
                    }
                }
            }
        });
    }
}

/// The events one execution of a run owes, waiting for the run's next
/// store write; numbered along the run (`attempt << 32 | n`) so receivers
/// can order them.
pub struct RunJournal {
    outbox: Option<Arc<Outbox>>,
    run_id: String,
    flow: String,
    attempt: u32,
    count: AtomicU32,
    events: Mutex<Vec<OutboxEvent>>,
}

impl RunJournal {
    /// A journal that keeps nothing: nobody listens (it allocates nothing,
    /// on the request path).
    pub fn none() -> Self {
        Self {
            outbox: None,
            run_id: String::new(),
            flow: String::new(),
            attempt: 0,
            count: AtomicU32::new(0),
            events: Mutex::new(Vec::new()),
        }
    }

    fn note(&self, event: impl FnOnce() -> RunEvent, sequence: u64) {
        let Some(outbox) = &self.outbox else { return };
        let Some(stored) = outbox.event(&Event::Run(event()), sequence, Some(&self.run_id)) else {
            return;
        };
        let mut events = self.events.lock().expect("journal lock");
        events.push(stored);
        // A run of many steps (a long for_each) does not hold them all: the
        // earlier ones are stored on their own meanwhile.
        if events.len() >= JOURNAL_HOLDS {
            outbox.append_in_background(std::mem::take(&mut *events));
        }
    }

    fn next(&self) -> u64 {
        let n = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        (u64::from(self.attempt) << 32) | u64::from(n)
    }

    /// The run was queued (sequence 0).
    pub fn queued(&self) {
        self.note(
            || RunEvent::Queued {
                run_id: self.run_id.clone(),
                flow: self.flow.clone(),
            },
            0,
        );
    }

    /// This execution started.
    pub fn started(&self, lag: Duration) {
        self.note(
            || RunEvent::Started {
                run_id: self.run_id.clone(),
                flow: self.flow.clone(),
                attempt: self.attempt,
                lag,
            },
            u64::from(self.attempt) << 32,
        );
    }

    /// The run ended; `error` says why it failed, `cause` which step did.
    /// Ended without starting here (aborted while queued, given up), its
    /// number sorts after anything of the run.
    pub fn ended(
        &self,
        state: RunState,
        duration: Duration,
        error: Option<&str>,
        cause: Option<&str>,
    ) {
        let sequence = if self.attempt == 0 {
            u64::from(u32::MAX) << 32
        } else {
            self.next()
        };
        self.note(
            || RunEvent::Ended {
                run_id: self.run_id.clone(),
                flow: self.flow.clone(),
                state,
                duration,
                error: error.map(str::to_owned),
                cause: cause.map(str::to_owned),
            },
            sequence,
        );
    }

    /// The events noted so far, for the write at hand.
    pub fn take(&self) -> Vec<OutboxEvent> {
        std::mem::take(&mut *self.events.lock().expect("journal lock"))
    }

    /// Puts back events a failed write did not store, ahead of newer ones.
    pub fn restore(&self, mut events: Vec<OutboxEvent>) {
        let mut held = self.events.lock().expect("journal lock");
        events.append(&mut held);
        *held = events;
    }

    /// Whether this execution may send another step event: at most
    /// [`MAX_STEP_EVENTS`], the first one past it logged and every one counted.
    fn step_allowed(&self) -> bool {
        let n = self.count.load(Ordering::Relaxed);
        if n < MAX_STEP_EVENTS {
            return true;
        }
        if let Some(outbox) = &self.outbox {
            outbox.webhooks.metrics.step_events_withheld();
            if n == MAX_STEP_EVENTS {
                // Counted once more, so this warns once per execution.
                self.count.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(run_id = %self.run_id, flow = %self.flow, max = MAX_STEP_EVENTS, "this run has sent as many step events as one run may; its later steps send none");
            }
        }
        false
    }

    /// Whether events wait to be written.
    pub fn is_empty(&self) -> bool {
        self.events.lock().expect("journal lock").is_empty()
    }
}

impl StepObserver for RunJournal {
    fn step_started(&self, path: &str, kind: &str) {
        if self.outbox.is_none() || !self.step_allowed() {
            return;
        }
        let sequence = self.next();
        self.note(
            || RunEvent::StepStarted {
                run_id: self.run_id.clone(),
                flow: self.flow.clone(),
                step: path.to_owned(),
                kind: kind.to_owned(),
            },
            sequence,
        );
    }

    fn step_ended(&self, trace: &StepTrace) {
        if self.outbox.is_none() || !self.step_allowed() {
            return;
        }
        let sequence = self.next();
        self.note(
            || RunEvent::StepEnded {
                run_id: self.run_id.clone(),
                flow: self.flow.clone(),
                step: trace.path.clone(),
                kind: trace.kind.clone(),
                state: trace.status,
                duration_ms: trace.duration_ms,
            },
            sequence,
        );
    }
}

/// Turns stored events into deliveries, forever: claims a batch, makes a
/// delivery for each subscription that wants an event and was created
/// before it happened, stores them, then forgets the events. Woken at
/// once when this process writes events, and every [`FAN_OUT_POLL`] for
/// other processes' events.
pub async fn fan_out(webhooks: Arc<Webhooks>) {
    loop {
        let claimed = match webhooks
            .store()
            .claim_events(now_ms(), FAN_OUT_LEASE, FAN_OUT_BATCH)
            .await
        {
            Ok(claimed) => claimed,
            Err(e) => {
                tracing::warn!(error = %e, "could not read webhook events; trying again");
                Vec::new()
            }
        };
        if claimed.is_empty() {
            // Without subscriptions no process writes events: look rarely.
            let idle = if webhooks.snapshot().subscriptions.is_empty() {
                FAN_OUT_IDLE_POLL
            } else {
                FAN_OUT_POLL
            };
            webhooks.wait_for_events(idle).await;
            continue;
        }
        let full = claimed.len() >= FAN_OUT_BATCH;
        match fan_out_batch(&webhooks, &claimed).await {
            Ok(()) => {
                if let Err(e) = webhooks.store().ack_events(&claimed).await {
                    // Claimed again after the lease: their deliveries are stored once.
                    tracing::warn!(error = %e, "webhook events not acknowledged; they will be fanned out again");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, events = claimed.len(), "webhook deliveries not stored; the events will be fanned out again");
                tokio::time::sleep(FAN_OUT_POLL).await;
            }
        }
        if !full {
            webhooks.wait_for_events(FAN_OUT_POLL).await;
        }
    }
}

async fn fan_out_batch(
    webhooks: &Webhooks,
    claimed: &[ClaimedEvent],
) -> Result<(), crate::backend::StorageError> {
    let messages: Vec<Message> = claimed
        .iter()
        .filter_map(|event| {
            let stored: StoredMessage = serde_json::from_str(&event.message)
                .map_err(|e| tracing::error!(event = %event.id, error = %e, "an unreadable webhook event is dropped"))
                .ok()?;
            stored.message()
        })
        .collect();
    // A subscription created elsewhere must be in the copy before events
    // newer than the copy are matched against it.
    let newest = messages.iter().map(|m| m.at_ms).max().unwrap_or(0);
    if newest >= webhooks.snapshot_read_ms() {
        webhooks.ensure_current().await?;
    }
    let snapshot = webhooks.snapshot();
    let mut deliveries = Vec::new();
    for message in &messages {
        let mut bodies: [Option<String>; 2] = [None, None];
        for (sub, _) in &snapshot.subscriptions {
            if !wants(sub, message) || created_ms(sub) > message.at_ms {
                continue;
            }
            let body = bodies[sub.format as usize]
                .get_or_insert_with(|| message.body(sub.format))
                .clone();
            deliveries.push(fanout::delivery_for(sub, message, Trigger::Auto, body));
        }
    }
    fanout::store(webhooks, deliveries).await
}

/// When `sub` was created, ms since the epoch (0 if unreadable: it gets everything).
fn created_ms(sub: &crate::backend::webhooks::Subscription) -> u64 {
    super::message::rfc3339_ms(&sub.created_at).unwrap_or(0)
}
