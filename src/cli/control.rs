//! The control-plane commands: `flows list|status|pause|unpause`,
//! `token rotate|admin|revoke` and `audit`. They work on the configured
//! backend directly, no server needed; running servers see their effect
//! within a second. Changes are audited as `cli:<os user>`.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Subcommand;

use super::process::{backends, load};
use super::runtime;
use crate::backend::control::{Actor, AuditFilter};
use crate::config::Config;
use crate::control::Control;
use crate::flow::Flow;
use crate::token::{Role, TokenKeys};

/// `flowgate flows ...`
#[derive(Debug, Subcommand)]
pub enum FlowsCommand {
    /// Every flow: status (and whether it comes from the file or an override), mode, token generation.
    List,
    /// One flow's status, where it comes from, and its token generation.
    Status {
        /// The flow id.
        flow: String,
    },
    /// Pause a flow on every replica: it answers the fixed paused body, its queued runs wait.
    Pause {
        /// The flow id.
        flow: String,
    },
    /// Unpause a flow: the file's status holds again (`live` if the file says `paused`).
    Unpause {
        /// The flow id.
        flow: String,
    },
}

/// `flowgate audit`
#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// Only changes to this flow.
    #[arg(long)]
    flow: Option<String>,
    /// Only this action, e.g. flow.pause.
    #[arg(long)]
    action: Option<String>,
    /// How many entries, newest first.
    #[arg(long, default_value_t = 50)]
    limit: usize,
    /// Print entries as JSON, one per line.
    #[arg(long)]
    json: bool,
}

/// The person at the shell, as the audit log names them.
pub(super) fn cli_actor() -> Actor {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(os_user)
        .unwrap_or_else(|| "unknown".into());
    Actor {
        name: format!("cli:{user}"),
        role: "cli".into(),
    }
}

/// The name of the user running this process, from `/etc/passwd`, or its uid.
#[cfg(unix)]
fn os_user() -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/proc/self").ok()?.uid();
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let name = passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        (fields.nth(1)? == uid.to_string()).then(|| name.to_owned())
    });
    Some(name.unwrap_or_else(|| format!("uid:{uid}")))
}

#[cfg(not(unix))]
fn os_user() -> Option<String> {
    None
}

/// The control state of the configured backend, loaded on `rt`: every
/// command does all its store work on that one runtime, since connections
/// made on a runtime die with it.
fn control(config: &Config, rt: &tokio::runtime::Runtime) -> anyhow::Result<Arc<Control>> {
    let backends = backends(config)?;
    let control = Arc::new(Control::new(backends.control));
    rt.block_on(control.refresh())
        .map_err(|e| anyhow::anyhow!("cannot read the control state: {e}"))?;
    Ok(control)
}

/// The flow `flow_id` as its file defines it.
fn flow(config: &Config, flow_id: &str) -> anyhow::Result<Arc<Flow>> {
    let report = load(config);
    match report.catalog.get(flow_id) {
        Some(flow) => Ok(flow.clone()),
        None if report.skipped.iter().any(|s| s == flow_id) => {
            anyhow::bail!("flow `{flow_id}` has problems; run `flowgate check`")
        }
        None => anyhow::bail!("no flow `{flow_id}` in {}", config.flows_dir().display()),
    }
}

/// `flowgate flows ...`
pub fn flows(config: &Config, command: FlowsCommand) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    let control = control(config, &rt)?;
    match command {
        FlowsCommand::List => {
            let report = load(config);
            let mut flows: Vec<&Arc<Flow>> = report.catalog.flows.values().collect();
            flows.sort_by(|a, b| a.id.cmp(&b.id));
            println!(
                "{:<24} {:<8} {:<9} {:<6} {:>10}",
                "FLOW", "STATUS", "FROM", "MODE", "GENERATION"
            );
            for flow in flows {
                let (status, from) = status_of(&control, flow);
                println!(
                    "{:<24} {:<8} {:<9} {:<6} {:>10}",
                    flow.id,
                    status,
                    from,
                    flow.trigger.mode.as_str(),
                    control.generation(&flow.id).current
                );
            }
            // The CLI reads the files; a running server keeps serving the
            // last good version of a flow whose file fails, until it is fixed.
            for skipped in &report.skipped {
                println!(
                    "{skipped:<24} the file has problems (a running server keeps its last good version):"
                );
                for problem in report.problems_of.get(skipped).into_iter().flatten() {
                    println!("    {problem}");
                }
            }
        }
        FlowsCommand::Status { flow: flow_id } => {
            let flow = flow(config, &flow_id)?;
            let (status, from) = status_of(&control, &flow);
            let generation = control.generation(&flow.id);
            println!("flow        {}", flow.id);
            println!("status      {status} (from the {from})");
            println!("mode        {}", flow.trigger.mode.as_str());
            println!("generation  {}", generation.current);
            if let Some(until) = generation
                .grace_until_ms
                .filter(|u| *u > crate::backend::now_ms())
            {
                let until = std::time::UNIX_EPOCH + Duration::from_millis(until);
                println!(
                    "grace       generation {} works until {}",
                    generation.current.saturating_sub(1),
                    humantime::format_rfc3339_seconds(until)
                );
            }
        }
        FlowsCommand::Pause { flow: ref flow_id } | FlowsCommand::Unpause { flow: ref flow_id } => {
            let paused = matches!(command, FlowsCommand::Pause { .. });
            let flow = flow(config, flow_id)?;
            let change = rt.block_on(control.set_paused(&flow, paused, &cli_actor()))?;
            println!(
                "{}: {} -> {}",
                flow.id,
                change.before.as_str(),
                change.after.as_str()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn status_of(control: &Control, flow: &Flow) -> (&'static str, &'static str) {
    match control.state().statuses.get(&flow.id) {
        Some(o) => (o.status.as_str(), "override"),
        None => (flow.status.as_str(), "file"),
    }
}

/// `flowgate token issue`: a token for the flow's current generation.
/// A token lifetime: above zero and at most [`crate::token::MAX_TTL`], as the admin API takes.
fn check_ttl(ttl: Option<Duration>) -> anyhow::Result<()> {
    if ttl.is_some_and(|t| t.is_zero() || t > crate::token::MAX_TTL) {
        anyhow::bail!(
            "--ttl must be above zero and at most {}",
            crate::config::readable_duration(crate::token::MAX_TTL)
        );
    }
    Ok(())
}

pub fn issue(config: &Config, flow_id: &str, ttl: Option<Duration>) -> anyhow::Result<ExitCode> {
    check_ttl(ttl)?;
    let file = config.flows_dir().join(format!("{flow_id}.toml"));
    if !file.exists() {
        anyhow::bail!("no flow `{flow_id}`: {} does not exist", file.display());
    }
    let keys = TokenKeys::new(&config.signing_key()?);
    let rt = runtime()?;
    let control = control(config, &rt)?;
    let generation = control.generation(flow_id).current;
    let token = keys.issue(flow_id, ttl, generation)?;
    rt.block_on(control.record_issue(flow_id, generation, ttl, &cli_actor()))
        .map_err(|e| anyhow::anyhow!("cannot write the audit log: {e}"))?;
    println!("{token}");
    Ok(ExitCode::SUCCESS)
}

/// `flowgate token rotate`.
pub fn rotate(config: &Config, flow_id: &str, grace: Option<Duration>) -> anyhow::Result<ExitCode> {
    if grace.is_some_and(|g| g.is_zero() || g > crate::control::MAX_GRACE) {
        anyhow::bail!("--grace must be above zero and at most 365 days");
    }
    let flow = flow(config, flow_id)?;
    let rt = runtime()?;
    let control = control(config, &rt)?;
    let generation = rt.block_on(control.rotate(&flow.id, grace, &cli_actor()))?;
    match grace {
        Some(grace) => eprintln!(
            "{}: generation {}; tokens of generation {} keep working for {}",
            flow.id,
            generation.current,
            generation.current.saturating_sub(1),
            crate::config::readable_duration(grace)
        ),
        None => eprintln!(
            "{}: generation {}; older tokens are refused",
            flow.id, generation.current
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// `flowgate token admin`: prints an admin token.
pub fn admin(
    config: &Config,
    role: &str,
    name: Option<&str>,
    ttl: Option<Duration>,
) -> anyhow::Result<ExitCode> {
    let Some(role) = Role::parse(role) else {
        anyhow::bail!("--role must be ops, author or viewer, not `{role}`");
    };
    check_ttl(ttl)?;
    let keys = TokenKeys::new(&config.signing_key()?);
    let name = name.map(str::to_owned).unwrap_or_else(|| cli_actor().name);
    println!("{}", keys.issue_admin(&name, role, ttl)?);
    Ok(ExitCode::SUCCESS)
}

/// `flowgate console-link`: a one-time sign-in link to the web console.
/// The code rides after `#`, which browsers never send to a server.
pub fn console_link(
    config: &Config,
    role: &str,
    name: Option<&str>,
    ttl: Duration,
    url: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let Some(role) = Role::parse(role) else {
        anyhow::bail!("--role must be ops, author or viewer, not `{role}`");
    };
    if ttl.is_zero() || ttl > crate::console::session::MAX_LINK {
        anyhow::bail!("--ttl must be above zero and at most 24h");
    }
    let keys = TokenKeys::new(&config.signing_key()?);
    let name = name.map(str::to_owned).unwrap_or_else(|| cli_actor().name);
    let link = keys.issue_console(&name, role, ttl, crate::token::ConsoleUse::Link)?;
    let base = url
        .map(|u| u.trim_end_matches('/').to_owned())
        .unwrap_or_else(|| format!("http://{}", config.server.listen));
    println!("{base}/console/sign-in#link={link}");
    eprintln!(
        "works once, for {}; it signs in {name} as {}",
        crate::config::readable_duration(ttl),
        role.as_str()
    );
    Ok(ExitCode::SUCCESS)
}

/// `flowgate token revoke`: refuses an admin token on every replica.
pub fn revoke(config: &Config, token: &str) -> anyhow::Result<ExitCode> {
    let keys = TokenKeys::new(&config.signing_key()?);
    // A whole token names its expiry, so the revocation can be forgotten then.
    let (jti, until_ms) = match keys.verify_admin(token) {
        Ok(admin) => (
            admin.token_id,
            admin
                .expires
                .map_or(u64::MAX, |exp| exp.saturating_mul(1000)),
        ),
        Err(_) if !token.contains('.') => (token.to_owned(), u64::MAX),
        Err(e) => anyhow::bail!("not an admin token of this gateway: {e}"),
    };
    let rt = runtime()?;
    let control = control(config, &rt)?;
    rt.block_on(control.revoke(&jti, until_ms, &cli_actor()))?;
    eprintln!("admin token {jti} revoked");
    Ok(ExitCode::SUCCESS)
}

/// `flowgate sessions ...`
#[derive(Debug, Subcommand)]
pub enum SessionsCommand {
    /// Open console sessions, newest first: id, who, role, until when, and
    /// the admin token or sign-in link each was made from.
    List {
        /// Print each session as JSON, one per line.
        #[arg(long)]
        json: bool,
    },
    /// End a console session on every replica.
    Revoke {
        /// The session's id, as `sessions list` shows it.
        id: String,
    },
}

/// `flowgate sessions ...`
pub fn sessions(config: &Config, command: SessionsCommand) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    let control = control(config, &rt)?;
    match command {
        SessionsCommand::List { json } => {
            let open = control.sessions();
            if open.is_empty() && !json {
                eprintln!("no console session is open");
            }
            for session in open {
                let view = crate::backend::control::SessionView::from(session);
                if json {
                    println!("{}", serde_json::to_string(&view)?);
                    continue;
                }
                let line = format!(
                    "{}  {:<20} {:<7} since {}  until {}  from {} {}",
                    view.id,
                    view.subject,
                    view.role,
                    view.created_at,
                    view.expires_at,
                    view.from.kind,
                    view.from.jti,
                );
                // Subjects come from tokens: no control characters reach the terminal.
                println!(
                    "{}",
                    line.replace(
                        |c: char| c.is_control() || crate::telemetry::is_bidi_control(c),
                        "?",
                    )
                );
            }
        }
        SessionsCommand::Revoke { id } => {
            rt.block_on(control.revoke_session(&id, &cli_actor()))?;
            eprintln!("console session {id} ended");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `flowgate audit`.
pub fn audit(config: &Config, args: AuditArgs) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    let control = control(config, &rt)?;
    let filter = AuditFilter {
        flow: args.flow,
        action: args.action,
        ..AuditFilter::default()
    };
    let page = rt.block_on(
        control
            .store()
            .audit(&filter, None, args.limit.clamp(1, 1000)),
    )?;
    for entry in page.data {
        if args.json {
            println!("{}", serde_json::to_string(&entry)?);
            continue;
        }
        let subject = entry
            .flow
            .as_deref()
            .or(entry.run.as_deref())
            .unwrap_or("-");
        let change = match (&entry.before, &entry.after) {
            (Some(b), Some(a)) => format!("{b} -> {a}"),
            (None, Some(a)) => a.to_string(),
            (Some(b), None) => b.to_string(),
            (None, None) => String::new(),
        };
        let line = format!(
            "{}  {:<16} {:<20} {:<20} {change}",
            entry.at, entry.action, entry.actor, subject
        );
        // Names come from tokens and requests: no control characters reach the terminal.
        println!(
            "{}",
            line.replace(
                |c: char| c.is_control() || crate::telemetry::is_bidi_control(c),
                "?",
            )
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The app's state for an operation run from the shell, with the control
/// state and the webhook subscriptions loaded ([`crate::app::App::load`]),
/// so a replay owes its events as it would in a gateway.
fn gateway(
    config: &Config,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<Arc<crate::app::AppState>> {
    let app = super::process::build_app(config, false)?;
    rt.block_on(app.load())?;
    Ok(app.state())
}

/// `flowgate runs replay`.
pub fn replay(config: &Config, run_id: &str) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    let state = gateway(config, &rt)?;
    let replayed = rt.block_on(crate::operations::replay(&state, run_id, &cli_actor()))?;
    println!("{}", replayed.run_id);
    eprintln!(
        "replayed {} as {}: {}",
        replayed.replay_of, replayed.run_id, replayed.status
    );
    // Let the background write of a sync replay's record land.
    rt.block_on(async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while tokio::time::Instant::now() < deadline {
            if let Ok(Some(_)) = state.runs.get(&replayed.run_id).await {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    Ok(ExitCode::SUCCESS)
}

/// `flowgate runs abort`.
pub fn abort(config: &Config, run_id: &str) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    let state = gateway(config, &rt)?;
    let before = rt.block_on(crate::operations::abort(&state, run_id, &cli_actor()))?;
    eprintln!("run {run_id}: {before} -> aborted");
    Ok(ExitCode::SUCCESS)
}
