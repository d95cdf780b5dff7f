//! What flow authors run: `flowgate check` (every problem of the flow
//! and template files at `path:line`) and `flowgate render` (a flow run
//! against a sample payload, its answer printed).

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;

use super::process::load;
use super::runtime;
use crate::app::Settings;
use crate::config::Config;
use crate::engine::{Engine, HttpClient, RunInput, RunOptions, RunReport};
use crate::flow::Flow;

pub(super) fn check(config: &Config) -> ExitCode {
    let report = load(config);
    for warning in &report.warnings {
        eprintln!("warning: {warning}");
    }
    for problem in &report.problems {
        println!("{problem}");
    }
    let mut ids: Vec<&String> = report.catalog.flows.keys().collect();
    ids.sort();
    if report.is_clean() {
        let list = ids
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        println!("ok: {} flow(s) valid: {list}", ids.len());
        ExitCode::SUCCESS
    } else {
        println!(
            "{} problem(s); flows not served: {}",
            report.problems.len(),
            report.skipped.join(", ")
        );
        ExitCode::FAILURE
    }
}

pub(super) fn render(
    config: &Config,
    flow_id: &str,
    body_path: &Path,
    content_type: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let report = load(config);
    let Some(flow) = report.catalog.get(flow_id).cloned() else {
        for problem in &report.problems {
            eprintln!("{problem}");
        }
        anyhow::bail!(
            "no valid flow `{flow_id}` in {}",
            config.flows_dir().display()
        );
    };
    let run_id = "render".to_owned();
    let input = sample_input(config, &flow, body_path, content_type, &run_id)?;
    let catalog = report.catalog;
    let engine = Engine::new(HttpClient::new(false));
    let runtime = runtime()?;
    let run = runtime.block_on(engine.run(
        &catalog,
        &flow,
        &input,
        RunOptions {
            dry_run: true,
            retry_later: false,
        },
    ));
    print_steps(&run);
    let response = match runtime.block_on(crate::inbound::answer(&catalog, &flow, &run_id, &run)) {
        Ok(response) => response,
        Err(e) => e.into_response(),
    };
    let status = response.status().as_u16();
    println!("HTTP {status}");
    for (name, value) in response.headers() {
        println!("{name}: {}", value.to_str().unwrap_or("<binary>"));
    }
    println!();
    let body = runtime
        .block_on(http_body_util::BodyExt::collect(response.into_body()))?
        .to_bytes();
    println!("{}", String::from_utf8_lossy(&body));
    // An answer that failed to render fails the command too.
    Ok(
        if run.status == crate::engine::RunState::Succeeded && status < 500 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        },
    )
}

/// The run `flowgate render` makes of a sample body file, as if it were
/// POSTed to the flow's URL, so templates see what a sender's request
/// gives them. The content type comes from `content_type` or the file's
/// extension.
fn sample_input(
    config: &Config,
    flow: &Flow,
    body_path: &Path,
    content_type: Option<&str>,
    run_id: &str,
) -> anyhow::Result<RunInput> {
    let raw =
        std::fs::read(body_path).with_context(|| format!("cannot read {}", body_path.display()))?;
    let content_type =
        content_type.unwrap_or(match body_path.extension().and_then(|e| e.to_str()) {
            Some("json") => "application/json",
            Some("xml") => "application/xml",
            Some("form") => "application/x-www-form-urlencoded",
            _ => "text/plain",
        });
    let body =
        crate::inbound::body::parse_with_kind(Some(content_type), &raw, flow.trigger.accept_any)
            .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    let (parts, ()) = http::Request::post(format!("{}{}", crate::inbound::PATH_PREFIX, flow.id))
        .header(http::header::CONTENT_TYPE, content_type)
        .body(())
        .context("the content type is not a valid header value")?
        .into_parts();
    Ok(crate::inbound::run_input(
        flow,
        flow.status,
        &parts,
        &raw,
        body,
        run_id.to_owned(),
        "render",
        &Settings::from_config(config).redaction,
    ))
}

/// What each step did, on stderr; `http` steps were not called.
fn print_steps(run: &RunReport) {
    let skipped: Vec<&str> = run
        .steps
        .iter()
        .filter(|s| s.kind == "http" && s.status != crate::engine::StepState::Skipped)
        .map(|s| s.path.as_str())
        .collect();
    if !skipped.is_empty() {
        eprintln!(
            "note: dry run: http steps were not called ({}); their output is {{\"status\": null, \"dry_run\": true}}",
            skipped.join(", ")
        );
    }
    for step in &run.steps {
        eprintln!(
            "step {} ({}): {}{}",
            step.path,
            step.kind,
            step.status,
            step.error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        );
    }
}
