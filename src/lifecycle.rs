//! The run lifecycle: every transition of a run — queued, started, waiting
//! to retry later, ended — is announced here once. Announcing a transition
//! logs it, counts it in the metrics and publishes a typed [`Event`] on an
//! in-process bus, so a new consumer (outbound event webhooks, say)
//! subscribes instead of touching the trigger, the workers or the engine.
//!
//! An event is only built when someone listens: with no subscriber the bus
//! costs one atomic load per transition. A subscriber that falls more than
//! [`BUS_CAPACITY`] events behind loses the oldest ones (and is told so by
//! its receiver), so a slow consumer never slows runs down.
//!
//! The bus is for consumers that may lose events (logs, tests); outbound
//! webhooks never read it: a run's events are written with its transitions
//! ([`crate::webhooks::outbox`]), and flow changes are handed to a hook
//! ([`Lifecycle::on_flow_event`]) that stores them.
//!
//! Flow events are announced here too: created, updated and deleted by hot
//! reload ([`crate::reloader`]), status changed by every replica's control
//! copy when it sees a pause or unpause ([`crate::control`]). Each process
//! announces what it sees, so with several replicas each one announces a
//! status change; its message id is the same everywhere.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;

use crate::engine::{RunState, StepObserver, StepState, StepTrace};
use crate::flow::FlowStatus;
use crate::metrics::Metrics;

/// Events a subscriber may lag behind by before it loses the oldest.
pub const BUS_CAPACITY: usize = 4096;

/// Something that happened to a run.
#[derive(Debug, Clone, PartialEq)]
pub enum RunEvent {
    /// An async run was stored in the queue and its sender answered.
    Queued {
        /// The run.
        run_id: String,
        /// Its flow.
        flow: String,
    },
    /// A run started executing: a queued run in a worker, a sync run in its request.
    Started {
        /// The run.
        run_id: String,
        /// Its flow.
        flow: String,
        /// Executions so far, this one included.
        attempt: u32,
        /// Time from acceptance to this start (zero for sync runs).
        lag: Duration,
    },
    /// A step of a run started.
    StepStarted {
        /// The run.
        run_id: String,
        /// Its flow.
        flow: String,
        /// Where the step sits, e.g. `notify` or `each[2].post`.
        step: String,
        /// The step's kind.
        kind: String,
    },
    /// A step of a run ended.
    StepEnded {
        /// The run.
        run_id: String,
        /// Its flow.
        flow: String,
        /// Where the step sits.
        step: String,
        /// The step's kind.
        kind: String,
        /// How it ended.
        state: StepState,
        /// How long it took, in milliseconds.
        duration_ms: u64,
    },
    /// A run stopped to retry a step later; its worker slot is free meanwhile.
    RetryLater {
        /// The run.
        run_id: String,
        /// Its flow.
        flow: String,
        /// How long until it is claimable again.
        delay: Duration,
    },
    /// A run ended: succeeded, failed, timed out, or aborted.
    Ended {
        /// The run.
        run_id: String,
        /// Its flow.
        flow: String,
        /// How it ended.
        state: RunState,
        /// Wall time of its last execution.
        duration: Duration,
        /// Why it failed or was aborted.
        error: Option<String>,
        /// The step that failed, when one did.
        cause: Option<String>,
    },
}

impl RunEvent {
    /// The run the event is about.
    pub fn run_id(&self) -> &str {
        match self {
            RunEvent::Queued { run_id, .. }
            | RunEvent::Started { run_id, .. }
            | RunEvent::StepStarted { run_id, .. }
            | RunEvent::StepEnded { run_id, .. }
            | RunEvent::RetryLater { run_id, .. }
            | RunEvent::Ended { run_id, .. } => run_id,
        }
    }
}

/// Something that happened to a flow.
#[derive(Debug, Clone, PartialEq)]
pub enum FlowEvent {
    /// A flow file appeared.
    Created {
        /// The flow.
        flow: String,
    },
    /// A flow file changed and its new version loaded.
    Updated {
        /// The flow.
        flow: String,
    },
    /// A flow file disappeared.
    Deleted {
        /// The flow.
        flow: String,
    },
    /// A flow was paused, unpaused or otherwise changed status.
    StatusChanged {
        /// The flow.
        flow: String,
        /// Its status now.
        status: FlowStatus,
        /// The control state's version that made the change: the same on
        /// every replica that announces it.
        version: u64,
    },
}

/// What the bus carries.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A run transition.
    Run(RunEvent),
    /// A flow change.
    Flow(FlowEvent),
}

/// Told of every flow change, to store its event durably.
pub type FlowEventHook = Box<dyn Fn(FlowEvent) + Send + Sync>;

/// Announces transitions: logs, metrics, and the event bus.
pub struct Lifecycle {
    metrics: Arc<Metrics>,
    bus: broadcast::Sender<Arc<Event>>,
    flow_hook: std::sync::OnceLock<FlowEventHook>,
}

impl Lifecycle {
    /// A lifecycle counting into `metrics`, with no subscriber yet.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            bus: broadcast::channel(BUS_CAPACITY).0,
            flow_hook: std::sync::OnceLock::new(),
        }
    }

    /// Has `hook` told of every flow change from now on (the first hook
    /// set stays): the bus may drop events, the hook sees each one.
    pub fn on_flow_event(&self, hook: FlowEventHook) {
        let _ = self.flow_hook.set(hook);
    }

    /// A flow changed: told to the hook, and published.
    pub fn flow_changed(&self, change: FlowEvent) {
        if let Some(hook) = self.flow_hook.get() {
            hook(change.clone());
        }
        self.publish(|| Event::Flow(change));
    }

    /// The metrics transitions are counted in.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Every event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.bus.subscribe()
    }

    /// Publishes the event `build` makes, building it only when someone listens.
    pub fn publish(&self, build: impl FnOnce() -> Event) {
        if self.bus.receiver_count() > 0 {
            // Sending fails only when the last subscriber just left.
            let _ = self.bus.send(Arc::new(build()));
        }
    }

    /// The observer that announces the steps of run `run_id` of `flow`.
    pub fn steps<'a>(&'a self, run_id: &'a str, flow: &'a str) -> RunSteps<'a> {
        RunSteps {
            lifecycle: self,
            run_id,
            flow,
        }
    }

    /// An async run was queued.
    pub fn queued(&self, run_id: &str, flow: &str) {
        tracing::info!(run_id = %run_id, "run queued");
        self.publish(|| {
            Event::Run(RunEvent::Queued {
                run_id: run_id.to_owned(),
                flow: flow.to_owned(),
            })
        });
    }

    /// A run started executing: a queued run in a worker `lag` after its
    /// acceptance, or a sync run (no lag) inside its request.
    pub fn started(
        &self,
        run_id: &str,
        flow: &str,
        attempt: u32,
        lag: Option<Duration>,
        taken_over: bool,
    ) {
        match lag {
            Some(lag) => {
                self.metrics.queue_lag(lag);
                tracing::info!(run_id = %run_id, flow = %flow, lag_ms = lag.as_millis() as u64, attempt, taken_over, "run started");
            }
            // A sync run's start and end are one request: its end is logged.
            None => tracing::debug!(run_id = %run_id, flow = %flow, "run started"),
        }
        self.publish(|| {
            Event::Run(RunEvent::Started {
                run_id: run_id.to_owned(),
                flow: flow.to_owned(),
                attempt,
                lag: lag.unwrap_or_default(),
            })
        });
    }

    /// A run will retry a step after `delay`.
    pub fn retry_later(&self, run_id: &str, flow: &str, delay: Duration) {
        tracing::info!(run_id = %run_id, retry_in_ms = delay.as_millis() as u64, "run waits for a step retry");
        self.publish(|| {
            Event::Run(RunEvent::RetryLater {
                run_id: run_id.to_owned(),
                flow: flow.to_owned(),
                delay,
            })
        });
    }

    /// A run ended in `state`; `error` says why it failed, `cause` which step did.
    pub fn ended(
        &self,
        run_id: &str,
        flow: &str,
        state: RunState,
        duration: Duration,
        error: Option<&str>,
        cause: Option<&str>,
    ) {
        self.metrics.run(flow, state);
        match state {
            RunState::Aborted => {
                tracing::error!(run_id = %run_id, flow = %flow, reason = error, "run aborted")
            }
            _ => tracing::info!(
                run_id = %run_id,
                flow = %flow,
                status = state.as_str(),
                duration_ms = duration.as_millis() as u64,
                error,
                "run ended"
            ),
        }
        self.publish(|| {
            Event::Run(RunEvent::Ended {
                run_id: run_id.to_owned(),
                flow: flow.to_owned(),
                state,
                duration,
                error: error.map(str::to_owned),
                cause: cause.map(str::to_owned),
            })
        });
    }
}

/// Announces the steps of one run as the engine executes them.
pub struct RunSteps<'a> {
    lifecycle: &'a Lifecycle,
    run_id: &'a str,
    flow: &'a str,
}

impl StepObserver for RunSteps<'_> {
    fn step_started(&self, path: &str, kind: &str) {
        self.lifecycle.publish(|| {
            Event::Run(RunEvent::StepStarted {
                run_id: self.run_id.to_owned(),
                flow: self.flow.to_owned(),
                step: path.to_owned(),
                kind: kind.to_owned(),
            })
        });
    }

    fn step_ended(&self, trace: &StepTrace) {
        self.lifecycle.publish(|| {
            Event::Run(RunEvent::StepEnded {
                run_id: self.run_id.to_owned(),
                flow: self.flow.to_owned(),
                step: trace.path.clone(),
                kind: trace.kind.clone(),
                state: trace.status,
                duration_ms: trace.duration_ms,
            })
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_built_only_when_someone_listens() {
        let lifecycle = Lifecycle::new(Arc::new(Metrics::default()));
        lifecycle.publish(|| panic!("built with nobody listening"));
        let mut events = lifecycle.subscribe();
        lifecycle.ended(
            "r1",
            "f",
            RunState::Failed,
            Duration::from_millis(3),
            Some("boom"),
            Some("step1"),
        );
        let event = events.try_recv().unwrap();
        assert_eq!(
            *event,
            Event::Run(RunEvent::Ended {
                run_id: "r1".into(),
                flow: "f".into(),
                state: RunState::Failed,
                duration: Duration::from_millis(3),
                error: Some("boom".into()),
                cause: Some("step1".into()),
            })
        );
        let metrics = lifecycle.metrics().render(None);
        assert!(
            metrics.contains("flowgate_runs_total{flow=\"f\",status=\"failed\"} 1"),
            "{metrics}"
        );
    }
}
