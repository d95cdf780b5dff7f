//! `flowgate runs`: the run history from the shell (list, show), and
//! replays and aborts through [`super::control`].

use std::process::ExitCode;

use super::process::backends;
use super::{RunsCommand, control, runtime};
use crate::backend::RunStore;
use crate::config::Config;
use crate::record::RunRecord;

/// `println!` for text that holds what senders wrote: escaped so it cannot
/// drive the terminal (see [`crate::telemetry::terminal_safe`]).
macro_rules! say {
    ($($arg:tt)*) => {
        println!("{}", crate::telemetry::terminal_safe(&format!($($arg)*)))
    };
}

/// `flowgate runs ...`
pub(super) fn runs(config: &Config, command: RunsCommand) -> anyhow::Result<ExitCode> {
    let store = backends(config)?.runs;
    match command {
        RunsCommand::Replay { run_id } => control::replay(config, &run_id),
        RunsCommand::Abort { run_id } => control::abort(config, &run_id),
        RunsCommand::List { flow, limit, json } => list(store.as_ref(), &flow, limit, json),
        RunsCommand::Show { run_id, json } => show(config, store.as_ref(), &run_id, json),
    }
}

/// `flowgate runs list`: a flow's newest runs, a table or JSON lines.
fn list(store: &dyn RunStore, flow: &str, limit: usize, json: bool) -> anyhow::Result<ExitCode> {
    let records = runtime()?.block_on(store.list(flow, limit))?;
    if json {
        for record in &records {
            println!("{}", serde_json::to_string(record)?);
        }
        return Ok(ExitCode::SUCCESS);
    }
    if records.is_empty() {
        say!("no runs recorded for `{flow}`");
        return Ok(ExitCode::SUCCESS);
    }
    say!(
        "{:<36}  {:<9}  {:<5}  {:>7}  {:<24}  {:>8}  ERROR",
        "RUN ID",
        "STATUS",
        "MODE",
        "ATTEMPT",
        "CREATED",
        "MS"
    );
    for r in &records {
        let duration = r
            .duration_ms
            .map(|d| d.to_string())
            .unwrap_or_else(|| "-".into());
        let error = r.error.as_ref().map(|e| e.message.as_str()).unwrap_or("");
        say!(
            "{:<36}  {:<9}  {:<5}  {:>7}  {:<24}  {:>8}  {}",
            r.id,
            r.status,
            r.mode,
            r.attempt,
            r.created_at,
            duration,
            preview_text(error)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `flowgate runs show`: one run as the debugger shows it, or its JSON.
fn show(
    config: &Config,
    store: &dyn RunStore,
    run_id: &str,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let Some(r) = runtime()?.block_on(store.get(run_id))? else {
        anyhow::bail!(
            "no run `{run_id}` (runs are kept for {})",
            crate::config::readable_duration(config.runs.retention)
        );
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(ExitCode::SUCCESS);
    }
    let kind = if r.live { "live" } else { "draft" };
    say!("run       {}", r.id);
    say!(
        "flow      {} (version {}, {kind}, {})",
        r.flow,
        r.flow_version,
        r.mode
    );
    say!("status    {} (attempt {})", r.status, r.attempt);
    say!("created   {}", r.created_at);
    say!("started   {}", r.started_at.as_deref().unwrap_or("-"));
    say!(
        "ended     {}{}",
        r.ended_at.as_deref().unwrap_or("-"),
        r.duration_ms
            .map(|d| format!(" ({d} ms)"))
            .unwrap_or_default()
    );
    say!(
        "request   {} {}",
        r.request["method"].as_str().unwrap_or("?"),
        r.request["path"].as_str().unwrap_or("?")
    );
    say!("body      {}", preview(&r.body));
    if let Some(error) = &r.error {
        say!(
            "error     {}{}",
            error
                .step
                .as_deref()
                .map(|s| format!("step `{s}`: "))
                .unwrap_or_default(),
            error.message
        );
    }
    if !r.cut.is_empty() {
        let bytes: usize = r.cut.iter().map(|c| c.bytes).sum();
        say!(
            "cut       {} value(s), {bytes} bytes, to keep the record within runs.max_record_bytes:",
            r.cut.len()
        );
        for cut in &r.cut {
            say!("          {} ({} bytes)", cut.at, cut.bytes);
        }
    }
    print_steps(&r);
    Ok(ExitCode::SUCCESS)
}

/// The steps, logs and answer of a run, as `runs show` prints them.
fn print_steps(r: &RunRecord) {
    println!();
    say!("steps");
    for step in &r.steps {
        say!(
            "  {} ({}) {} in {} ms, {} attempt(s)",
            step.path,
            step.kind,
            step.status,
            step.duration_ms,
            step.attempts
        );
        if !step.input.is_null() {
            say!("    input   {}", preview(&step.input));
        }
        say!("    output  {}", preview(&step.output));
        if let Some(error) = &step.error {
            say!("    error   {error}");
        }
    }
    for log in &r.logs {
        say!("log       {log}");
    }
    if let Some(response) = &r.response {
        println!();
        say!(
            "response  {} {}",
            response.status,
            preview_text(&response.body)
        );
    }
}

/// Longest preview of a JSON value in `runs show`.
const PREVIEW_CHARS: usize = 240;

/// A JSON value on one line: strings as their text, the rest as JSON.
fn preview(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => preview_text(s),
        other => preview_text(&other.to_string()),
    }
}

fn preview_text(text: &str) -> String {
    match text.char_indices().nth(PREVIEW_CHARS) {
        None => text.to_owned(),
        Some((cut, _)) => format!("{}…", &text[..cut]),
    }
}
