//! What ops and authors do to runs, from the admin API or the CLI alike:
//! abort a run, and replay a recorded one. Both are audited.
//!
//! **Abort.** The run is marked aborted in the control state, which every
//! replica sees within a second. A queued or waiting run is recorded
//! `aborted` at once, and the worker that claims it drops it. A running run
//! is stopped by the worker executing it: at once when it is waiting in a
//! `delay` or an `http` call, else at its next step boundary; that worker
//! records it `aborted`.
//!
//! **Replay.** A recorded run's trigger request (body, query and headers as
//! recorded, so redacted values stay redacted) runs again against the
//! flow's current version, as a new run whose record names the original in
//! `replay_of`; sync or async as the flow is now.

use std::sync::Arc;

use serde::Serialize;
use serde_json::{Value, json};

use crate::app::AppState;
use crate::backend::control::{Actor, Change};
use crate::control::draft;
use crate::engine::{RunInput, RunState};
use crate::error::Refusal;
use crate::flow::{FlowStatus, Mode};
use crate::record::RunRecord;

/// A run that cannot be found: 404, with where runs go.
fn no_run(run_id: &str) -> Refusal {
    Refusal::NotFound(format!(
        "no run `{run_id}` (runs are kept for the configured retention)"
    ))
}

/// A run that cannot take the operation now: 409.
fn conflict(message: impl Into<String>) -> Refusal {
    Refusal::Conflict {
        code: "conflict",
        message: message.into(),
    }
}

/// What a replay started.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Replayed {
    /// The new run.
    pub run_id: String,
    /// The run replayed.
    pub replay_of: String,
    /// `queued` for an async flow, else how the run ended.
    #[schema(value_type = String)]
    pub status: RunState,
}

fn ended(state: RunState) -> bool {
    matches!(
        state,
        RunState::Succeeded | RunState::Failed | RunState::TimedOut | RunState::Aborted
    )
}

/// Aborts run `run_id` on behalf of `actor`; the run's state before.
pub async fn abort(state: &AppState, run_id: &str, actor: &Actor) -> Result<RunState, Refusal> {
    let mut record = state
        .runs
        .get(run_id)
        .await?
        .ok_or_else(|| no_run(run_id))?;
    let before = record.status;
    if ended(before) {
        return Err(conflict(format!("run `{run_id}` already ended: {before}")));
    }
    let mut audit = draft(actor, "run.abort");
    audit.flow = Some(record.flow.clone());
    audit.run = Some(run_id.to_owned());
    audit.before = Some(json!({ "status": before.as_str() }));
    audit.after = Some(json!({ "status": "aborted" }));
    let change = Change::Abort {
        run_id: run_id.to_owned(),
    };
    state.control.apply(change, audit).await?;
    // A running run is recorded by the worker that stops it.
    if matches!(before, RunState::Queued | RunState::Waiting) {
        record.abort(&format!("aborted by {}", actor.name));
        state.runs.save(&record).await?;
    }
    Ok(before)
}

/// Replays recorded run `run_id` on behalf of `actor`.
pub async fn replay(state: &AppState, run_id: &str, actor: &Actor) -> Result<Replayed, Refusal> {
    let original = state
        .runs
        .get(run_id)
        .await?
        .ok_or_else(|| no_run(run_id))?;
    // The pause must be the one in force now, not this replica's copy of it.
    state.control.refresh().await?;
    let catalog = state.catalog();
    let Some(flow) = catalog.get(&original.flow).cloned() else {
        return Err(conflict(format!(
            "flow `{}` is no longer loaded",
            original.flow
        )));
    };
    let status = state.control.status(&flow);
    if status == FlowStatus::Paused {
        return Err(conflict(format!(
            "flow `{}` is paused; unpause it to replay its runs",
            flow.id
        )));
    }
    let recorded =
        serde_json::to_string(&*original.request).unwrap_or_default() + &original.body.to_string();
    let body_cut = original.cut.iter().any(|c| c.at == "/body");
    if body_cut || recorded.contains("…[truncated") {
        return Err(conflict(
            "the recorded request was cut to fit the run history, so it cannot be replayed as sent",
        ));
    }
    let mut request = (*original.request).clone();
    let mut raw_is_body = false;
    if let Some(fields) = request.as_object_mut() {
        fields.insert(
            "received_at".into(),
            Value::String(
                humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            ),
        );
        // A JSON body is recorded once, parsed, without its `raw` text;
        // templates see it as `raw` too.
        if !fields.contains_key("raw") {
            fields.insert("raw".into(), Value::String(original.body.to_string()));
            raw_is_body = true;
        }
    }
    let input = RunInput {
        run_id: uuid::Uuid::now_v7().to_string(),
        flow_id: flow.id.clone(),
        mode: flow.trigger.mode.as_str().to_owned(),
        live: status == FlowStatus::Live,
        body: original.body.clone(),
        raw_is_body,
        request: Arc::new(request),
        resume: None,
        replay_of: Some(original.id.clone()),
    };
    let mut audit = draft(actor, "run.replay");
    audit.flow = Some(flow.id.clone());
    audit.run = Some(original.id.clone());
    audit.after = Some(json!({ "run": input.run_id }));
    state.control.apply(Change::Nothing, audit).await?;
    let status = match flow.trigger.mode {
        Mode::Async => {
            let record = RunRecord::accepted(&flow, &input, RunState::Queued);
            state.transitions.queued(&input, &record).await?;
            RunState::Queued
        }
        Mode::Sync => {
            let (engine, transitions) = (&state.engine, &state.transitions);
            crate::inbound::run_sync(engine, transitions, &catalog, &flow, &input)
                .await
                .1
        }
    };
    Ok(Replayed {
        run_id: input.run_id,
        replay_of: original.id,
        status,
    })
}
