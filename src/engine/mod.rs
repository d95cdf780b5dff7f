//! The run engine: executes a flow's steps for one [`RunInput`] and reports
//! what happened in a [`RunReport`].
//!
//! The engine does not know where a run comes from: the HTTP handler calls it
//! for sync flows, and a queue worker can call it with the same input. Every
//! step leaves a [`StepTrace`] (input, output, error, timing, attempts) so the
//! report doubles as the run's debugger record.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::flow::step::{Call, Runner, StepFailure};
use crate::flow::{Catalog, Flow, OnError, Step};
use crate::template::{self, Scope};

mod input;
mod state;

pub use crate::outbound::HttpClient;
pub use input::RunInput;
pub use state::{RunState, StepState};

/// The state of a run that stopped to wait for a step's retry: it starts
/// again at `step` with the outputs of the steps before it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Resume {
    /// Index of the top-level step to retry.
    pub step: usize,
    /// Attempts that step already made.
    pub attempts: u32,
    /// Step outputs by ref, as the next execution's templates see them.
    pub outputs: serde_json::Map<String, serde_json::Value>,
    /// Traces of the executions so far.
    pub traces: Vec<StepTrace>,
    /// `log` messages so far.
    pub logs: Vec<String>,
    /// Time used so far, waits included, counted against the flow's timeout.
    pub elapsed_ms: u64,
}

/// A retry the caller should schedule: run `resume` again after `delay`.
#[derive(Debug, Clone)]
pub struct RetryLater {
    /// Where to pick up.
    pub resume: Resume,
    /// How long to wait.
    pub delay: Duration,
}

/// Most data one run may hold while it executes: step outputs in its scope
/// and the traces of its steps (each value in a trace already cut to
/// [`crate::record::MAX_VALUE_BYTES`]). Past it, the run fails.
pub const MAX_RUN_DATA_BYTES: usize = 128 * 1024 * 1024;

/// How to run.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Skip side effects: `http` steps are not called and `delay` does not wait.
    pub dry_run: bool,
    /// When a top-level step fails with a retryable error and has attempts
    /// left, end the execution with a [`RetryLater`] instead of waiting
    /// (queue workers set this, so a backoff does not hold a worker slot).
    pub retry_later: bool,
}

/// What happened to one step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepTrace {
    /// Where the step sits, e.g. `notify` or `each_item[2].post`.
    pub path: String,
    /// The step's kind.
    pub kind: String,
    /// How the step ended.
    pub status: StepState,
    /// The rendered config the step acted on.
    pub input: serde_json::Value,
    /// The step's output.
    pub output: serde_json::Value,
    /// The error, when it failed.
    pub error: Option<String>,
    /// Attempts made.
    pub attempts: u32,
    /// Start time, RFC 3339.
    pub started_at: String,
    /// Duration in milliseconds.
    pub duration_ms: u64,
}

/// Why a run failed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunError {
    /// The step that failed, if one did.
    pub step: Option<String>,
    /// What went wrong.
    pub message: String,
}

/// The outcome of a run.
#[derive(Debug)]
pub struct RunReport {
    /// How the run ended.
    pub status: RunState,
    /// The error, for failed and timed-out runs.
    pub error: Option<RunError>,
    /// One trace per step execution, in order.
    pub steps: Vec<StepTrace>,
    /// Messages from `log` steps.
    pub logs: Vec<String>,
    /// The context after the run, for rendering the response.
    pub scope: Scope,
    /// Wall time of the whole run: every execution so far (a run that
    /// retried through the queue counts from its first start), waits
    /// between them included.
    pub duration: Duration,
    /// When this execution started.
    pub started_at: SystemTime,
    /// For [`RunState::Waiting`]: when and where to pick the run up.
    pub retry: Option<RetryLater>,
}

/// Runs flows.
#[derive(Clone)]
pub struct Engine {
    http: HttpClient,
}

enum Halt {
    /// The run failed.
    Failed(RunError),
    /// A top-level step retries later.
    RetryLater {
        step: usize,
        attempts: u32,
        delay: Duration,
    },
}

impl Halt {
    /// Inside a branch or loop a halt is always a failure: nested steps retry in place.
    fn into_failure(self) -> StepFailure {
        match self {
            Halt::Failed(e) => StepFailure::fatal(e.message),
            Halt::RetryLater { .. } => StepFailure::fatal("a nested step cannot retry later"),
        }
    }
}

/// What one execution of a run carries while its steps run.
struct Execution<'a> {
    env: &'a template::Templates,
    options: RunOptions,
    traces: Vec<StepTrace>,
    logs: Vec<String>,
    observer: &'a dyn StepObserver,
    /// About how many bytes of data the run holds so far.
    data_bytes: usize,
}

impl Execution<'_> {
    /// Keeps a step's trace, its values cut to the record's bound, and
    /// tells the observer it ended.
    fn step_ended(&mut self, mut trace: StepTrace) {
        trace.input = crate::codec::bounded(std::mem::take(&mut trace.input));
        trace.output = crate::codec::bounded(std::mem::take(&mut trace.output));
        self.data_bytes += template::json_size(&trace.input) + template::json_size(&trace.output);
        self.observer.step_ended(&trace);
        self.traces.push(trace);
    }

    /// Fails the run when the data it holds passed [`MAX_RUN_DATA_BYTES`].
    fn within_data_budget(&self, path: &str) -> Result<(), Halt> {
        if self.data_bytes <= MAX_RUN_DATA_BYTES {
            return Ok(());
        }
        Err(Halt::Failed(RunError {
            step: Some(path.to_owned()),
            message: format!(
                "the run holds more than {} MiB of step data; it stopped here",
                MAX_RUN_DATA_BYTES / (1024 * 1024)
            ),
        }))
    }
}

/// Told when each step starts and ends, while a run executes.
pub trait StepObserver: Send + Sync {
    /// Step `path` of `kind` starts (its `if`, if any, held).
    fn step_started(&self, path: &str, kind: &str);
    /// A step ended: succeeded, failed (perhaps to retry later) or skipped.
    fn step_ended(&self, trace: &StepTrace);
}

/// An observer that ignores everything.
pub struct NoObserver;

impl StepObserver for NoObserver {
    fn step_started(&self, _: &str, _: &str) {}
    fn step_ended(&self, _: &StepTrace) {}
}

type StepsFuture<'a> = Pin<Box<dyn Future<Output = Result<(), Halt>> + Send + 'a>>;

impl Engine {
    /// An engine using `http` for outbound calls.
    pub fn new(http: HttpClient) -> Self {
        Self { http }
    }

    /// Builds the template scope a run starts with; `run.status` is `status`.
    pub fn initial_scope(flow: &Flow, input: &RunInput, status: RunState) -> Scope {
        let mut scope = Scope::default();
        scope.set_shared_json(&flow.trigger.ref_id, input.body.clone());
        scope.set_shared_json("request", input.request.clone());
        scope.set_json("run", run_object(flow, input, status));
        scope
    }

    /// Runs `flow` for `input`, within the flow's timeout.
    pub async fn run(
        &self,
        catalog: &Catalog,
        flow: &Flow,
        input: &RunInput,
        options: RunOptions,
    ) -> RunReport {
        self.run_observed(catalog, flow, input, options, &NoObserver)
            .await
    }

    /// [`Engine::run`], telling `observer` as each step starts and ends.
    pub async fn run_observed(
        &self,
        catalog: &Catalog,
        flow: &Flow,
        input: &RunInput,
        options: RunOptions,
        observer: &dyn StepObserver,
    ) -> RunReport {
        let started = Instant::now();
        let started_at = SystemTime::now();
        let mut scope = Self::initial_scope(flow, input, RunState::Running);
        let mut state = Execution {
            env: catalog.env_of(&flow.id),
            options,
            traces: Vec::new(),
            logs: Vec::new(),
            observer,
            data_bytes: 0,
        };
        let (start, attempts, used) = match &input.resume {
            Some(resume) => {
                for (name, output) in &resume.outputs {
                    scope.set_json(name, output.clone());
                }
                state.traces = resume.traces.clone();
                state.logs = resume.logs.clone();
                (
                    resume.step,
                    resume.attempts,
                    Duration::from_millis(resume.elapsed_ms),
                )
            }
            None => (0, 0, Duration::ZERO),
        };
        let outcome = tokio::time::timeout(
            flow.timeout.saturating_sub(used),
            self.run_top(&flow.steps, start, attempts, &mut scope, &mut state),
        )
        .await;
        let mut retry = None;
        let (status, error) = match outcome {
            Ok(Ok(())) => (RunState::Succeeded, None),
            Ok(Err(Halt::Failed(error))) => (RunState::Failed, Some(error)),
            Ok(Err(Halt::RetryLater {
                step,
                attempts,
                delay,
            })) => {
                let reserved = [flow.trigger.ref_id.as_str(), "request", "run"];
                retry = Some(RetryLater {
                    resume: Resume {
                        step,
                        attempts,
                        outputs: scope.outputs(&reserved),
                        traces: state.traces.clone(),
                        logs: state.logs.clone(),
                        elapsed_ms: (used + started.elapsed() + delay).as_millis() as u64,
                    },
                    delay,
                });
                (RunState::Waiting, None)
            }
            Err(_) => (
                RunState::TimedOut,
                Some(RunError {
                    step: None,
                    message: format!(
                        "the run exceeded the flow's timeout of {}",
                        crate::config::readable_duration(flow.timeout)
                    ),
                }),
            ),
        };
        scope.set_json("run", run_object(flow, input, status));
        RunReport {
            status,
            error,
            steps: state.traces,
            logs: state.logs,
            scope,
            duration: used + started.elapsed(),
            started_at,
            retry,
        }
    }

    /// The flow's top-level steps from `start`; only these may defer a retry.
    async fn run_top(
        &self,
        steps: &[Step],
        start: usize,
        attempts: u32,
        scope: &mut Scope,
        state: &mut Execution<'_>,
    ) -> Result<(), Halt> {
        for (index, step) in steps.iter().enumerate().skip(start) {
            let before = if index == start { attempts } else { 0 };
            self.run_step(step, "", scope, state, before, Some(index))
                .await?;
        }
        Ok(())
    }

    fn run_steps<'a>(
        &'a self,
        steps: &'a [Step],
        prefix: String,
        scope: &'a mut Scope,
        state: &'a mut Execution<'_>,
    ) -> StepsFuture<'a>
    where
        Self: Sync,
    {
        Box::pin(async move {
            for step in steps {
                self.run_step(step, &prefix, scope, state, 0, None).await?;
            }
            Ok(())
        })
    }

    /// Runs one step; `attempts_before` were made by earlier executions, and
    /// `top_level` (the step's index among the flow's steps) lets a retry
    /// end the execution; nested steps retry in place.
    async fn run_step(
        &self,
        step: &Step,
        prefix: &str,
        scope: &mut Scope,
        state: &mut Execution<'_>,
        attempts_before: u32,
        top_level: Option<usize>,
    ) -> Result<(), Halt> {
        let path = format!("{prefix}{}", step.ref_id);
        let started_at = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        let clock = Instant::now();
        let mut trace = StepTrace {
            path: path.clone(),
            kind: step.action.kind().to_owned(),
            status: StepState::Succeeded,
            input: serde_json::Value::Null,
            output: serde_json::Value::Null,
            error: None,
            attempts: 0,
            started_at,
            duration_ms: 0,
        };
        if let Some(condition) = &step.condition {
            let ctx = scope.context();
            match state.env.eval(condition, &ctx).await {
                Ok(value) if value.is_true() => {}
                Ok(_) => {
                    trace.status = StepState::Skipped;
                    state.step_ended(trace);
                    return Ok(());
                }
                Err(e) => {
                    let failure =
                        StepFailure::fatal(format!("`if`: {}", template::describe_at(&e)));
                    return self.finish_failed(step, path, trace, failure, clock, scope, state);
                }
            }
        }
        state.observer.step_started(&path, &trace.kind);
        let mut attempt = attempts_before;
        let result = loop {
            attempt += 1;
            let outcome = self
                .act_within_timeout(step, &path, scope, state, &mut trace.input)
                .await;
            match outcome {
                Err(failure) if failure.retryable && attempt < step.retry.attempts => {
                    let backoff = step
                        .retry
                        .backoff
                        .saturating_mul(1 << (attempt - 1).min(16));
                    if let Some(index) = top_level.filter(|_| state.options.retry_later) {
                        trace.status = StepState::Failed;
                        trace.attempts = attempt;
                        trace.error = Some(format!(
                            "{} (attempt {attempt} of {}; retrying in {})",
                            failure.message,
                            step.retry.attempts,
                            crate::config::readable_duration(backoff)
                        ));
                        trace.output = failure.output;
                        trace.duration_ms = clock.elapsed().as_millis() as u64;
                        state.step_ended(trace);
                        return Err(Halt::RetryLater {
                            step: index,
                            attempts: attempt,
                            delay: backoff,
                        });
                    }
                    tracing::debug!(step = %path, attempt, error = %failure.message, "step failed; retrying");
                    tokio::time::sleep(backoff).await;
                }
                other => break other,
            }
        };
        trace.attempts = attempt;
        match result {
            Ok(output) => {
                state.data_bytes += template::json_size(&output);
                scope.set_json(&step.ref_id, output.clone());
                trace.output = output;
                trace.duration_ms = clock.elapsed().as_millis() as u64;
                state.step_ended(trace);
                state.within_data_budget(&path)
            }
            Err(failure) => self.finish_failed(step, path, trace, failure, clock, scope, state),
        }
    }

    /// One attempt of the step, within its `timeout` when it has one (a
    /// timed-out attempt may be retried).
    async fn act_within_timeout(
        &self,
        step: &Step,
        path: &str,
        scope: &mut Scope,
        state: &mut Execution<'_>,
        input: &mut serde_json::Value,
    ) -> Result<serde_json::Value, StepFailure> {
        let Some(limit) = step.timeout else {
            return self.act(step, path, scope, state, input).await;
        };
        tokio::time::timeout(limit, self.act(step, path, scope, state, input))
            .await
            .unwrap_or_else(|_| {
                Err(StepFailure {
                    message: format!(
                        "the step timed out after {}",
                        crate::config::readable_duration(limit)
                    ),
                    retryable: true,
                    output: serde_json::Value::Null,
                })
            })
    }

    #[allow(clippy::too_many_arguments)]
    fn finish_failed(
        &self,
        step: &Step,
        path: String,
        mut trace: StepTrace,
        failure: StepFailure,
        clock: Instant,
        scope: &mut Scope,
        state: &mut Execution<'_>,
    ) -> Result<(), Halt> {
        trace.status = StepState::Failed;
        trace.error = Some(failure.message.clone());
        // A step the run goes on past shows the output later steps see.
        trace.output = match step.on_error {
            OnError::Continue => json!({ "error": failure.message }),
            OnError::Stop => failure.output,
        };
        trace.duration_ms = clock.elapsed().as_millis() as u64;
        state.step_ended(trace);
        match step.on_error {
            OnError::Continue => {
                scope.set_json(&step.ref_id, json!({ "error": failure.message }));
                Ok(())
            }
            OnError::Stop => Err(Halt::Failed(RunError {
                step: Some(path),
                message: failure.message,
            })),
        }
    }

    /// One attempt of a step's action; `input` receives the rendered config.
    async fn act(
        &self,
        step: &Step,
        path: &str,
        scope: &mut Scope,
        state: &mut Execution<'_>,
        input: &mut serde_json::Value,
    ) -> Result<serde_json::Value, StepFailure> {
        let mut runner = StepRunner {
            engine: self,
            state,
        };
        let call = Call { path, scope, input };
        step.action.run(&mut runner, call).await
    }
}

/// The engine's side of a running step.
struct StepRunner<'r, 'x> {
    engine: &'r Engine,
    state: &'r mut Execution<'x>,
}

impl Runner for StepRunner<'_, '_> {
    fn env(&self) -> &template::Templates {
        self.state.env
    }

    fn dry_run(&self) -> bool {
        self.state.options.dry_run
    }

    fn http(&self) -> &HttpClient {
        &self.engine.http
    }

    fn log(&mut self, path: &str, message: String) {
        tracing::info!(step = %path, %message, "flow log");
        self.state.logs.push(message);
    }

    fn run_steps<'a>(
        &'a mut self,
        steps: &'a [Step],
        prefix: String,
        scope: &'a mut Scope,
    ) -> Pin<Box<dyn Future<Output = Result<(), StepFailure>> + Send + 'a>> {
        let nested = self.engine.run_steps(steps, prefix, scope, self.state);
        Box::pin(async move { nested.await.map_err(Halt::into_failure) })
    }
}

fn run_object(flow: &Flow, input: &RunInput, status: RunState) -> serde_json::Value {
    json!({
        "id": input.run_id,
        "flow": flow.id,
        "mode": input.mode,
        "live": input.live,
        "status": status.as_str(),
    })
}
