//! The `flowgate` command line.
//!
//! Exit codes: 0 success, 1 failure (invalid flows, a failed render, an
//! unknown flow), 64 bad configuration.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::config::{Config, ConfigError};

mod author;
mod control;
mod process;
mod runs;
mod webhooks;

use self::control::{AuditArgs, FlowsCommand};
use self::webhooks::WebhooksCommand;

/// Exit code for a bad configuration.
const EXIT_BAD_CONFIG: u8 = 64;

/// `flowgate --version`: the crate's version and the commit it was built from.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("FLOWGATE_COMMIT"),
    ")"
);

/// flowgate: a webhook gateway that runs flows.
#[derive(Debug, Parser)]
#[command(name = "flowgate", version = VERSION, about, long_about = None)]
pub struct Cli {
    /// Config file; defaults to ./config.toml when present. Keys can be
    /// overridden by FLOWGATE_SECTION__KEY (e.g. FLOWGATE_SERVER__LISTEN) environment variables.
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway: serve every valid flow on /v1/flow-webhook/<flow_id>,
    /// with workers for async runs in the same process.
    Serve {
        /// Do not execute async runs here (run `flowgate worker` elsewhere).
        #[arg(long)]
        no_worker: bool,
    },
    /// Execute queued async runs only; start as many as you need on one Redis or PostgreSQL.
    Worker {
        /// Serve /healthz, /readyz and /metrics (queue lag, run outcomes) on this address.
        #[arg(long, value_name = "HOST:PORT")]
        metrics_listen: Option<std::net::SocketAddr>,
    },
    /// Validate flows and templates; print `path:line: message` for each problem, exit 1 if any.
    Check,
    /// Render a flow's response for a sample body, without side effects
    /// (http steps are not called, delays do not wait).
    Render {
        /// The flow id.
        flow: String,
        /// File holding the sample request body.
        #[arg(long, value_name = "FILE")]
        body: PathBuf,
        /// Content type of the sample; guessed from the file extension by default.
        #[arg(long, value_name = "TYPE")]
        content_type: Option<String>,
    },
    /// Read the run history (the flow debugger).
    Runs {
        /// What to read.
        #[command(subcommand)]
        command: RunsCommand,
    },
    /// Mint, rotate and revoke tokens.
    Token {
        /// Which token.
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// See flows' status and token generation; pause and unpause them on every replica.
    Flows {
        /// What to do.
        #[command(subcommand)]
        command: FlowsCommand,
    },
    /// Read the audit log of admin changes, newest first.
    Audit(AuditArgs),
    /// Copy the embedded database to PATH while the server runs (a consistent snapshot).
    Backup {
        /// Where to write the copy; it must not exist.
        path: PathBuf,
    },
    /// Apply the store's pending schema migrations and exit (serve and worker apply them at start too).
    Migrate,
    /// Print a one-time sign-in link to the web console (/console).
    ConsoleLink {
        /// ops, author or viewer: what the session may do.
        #[arg(long)]
        role: String,
        /// Who signs in, as the audit log names them; defaults to cli:USER (the OS user).
        #[arg(long, value_name = "NAME")]
        sub: Option<String>,
        /// How long the link works, at most 24h; the session it opens lasts up to 12h.
        #[arg(long, value_name = "DURATION", default_value = "15m")]
        ttl: humantime::Duration,
        /// The console's address as the browser reaches it; defaults to http://<server.listen>.
        #[arg(long, value_name = "URL")]
        url: Option<String>,
    },
    /// List open console sessions and end them on every replica.
    Sessions {
        /// What to do.
        #[command(subcommand)]
        command: control::SessionsCommand,
    },
    /// Manage outbound event webhook subscriptions and read their delivery log.
    Webhooks {
        /// What to do.
        #[command(subcommand)]
        command: WebhooksCommand,
    },
    /// Exit 0 when the gateway answers /healthz (or /readyz) with 200, 1 otherwise (for container health checks).
    Healthcheck {
        /// The address to probe; defaults to http://<server.listen>/healthz.
        #[arg(long, value_name = "URL")]
        url: Option<String>,
        /// Probe /readyz instead: flows and control state loaded, queue reachable.
        #[arg(long, conflicts_with = "url")]
        ready: bool,
        /// How long to wait for the answer.
        #[arg(long, value_name = "DURATION", default_value = "2s")]
        timeout: humantime::Duration,
    },
    /// Print a shell completion script: flowgate completions bash > /etc/bash_completion.d/flowgate.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): flowgate man > flowgate.1; or write one page per command.
    Man {
        /// Write flowgate.1 and a page for each subcommand (flowgate-serve.1, ...) into this folder.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// `flowgate runs ...`
#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// The newest runs of a flow, newest first.
    List {
        /// The flow id.
        flow: String,
        /// How many runs.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Print the records as JSON, one per line.
        #[arg(long)]
        json: bool,
    },
    /// One run: request, each step's input, output, error and timing, answer.
    Show {
        /// The run id.
        run_id: String,
        /// Print the whole record as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run a recorded run's request again against the current flow, as a new linked run.
    Replay {
        /// The run id.
        run_id: String,
    },
    /// Abort a queued, waiting or running run (on whichever replica runs it).
    Abort {
        /// The run id.
        run_id: String,
    },
}

/// `flowgate token ...`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a Bearer token for a flow on stdout: TOKEN=$(flowgate token issue my-flow).
    Issue {
        /// The flow id.
        flow: String,
        /// Lifetime, e.g. 90d or 12h; tokens without one do not expire.
        #[arg(long, value_name = "DURATION")]
        ttl: Option<humantime::Duration>,
    },
    /// Move a flow to its next token generation: older tokens are refused on every replica.
    Rotate {
        /// The flow id.
        flow: String,
        /// Keep the previous generation working this long, e.g. 24h.
        #[arg(long, value_name = "DURATION")]
        grace: Option<humantime::Duration>,
    },
    /// Print an admin token for /v1/admin/.
    Admin {
        /// ops, author or viewer.
        #[arg(long)]
        role: String,
        /// Who the token is for, as the audit log names them; defaults to cli:USER (the OS user).
        #[arg(long, value_name = "NAME")]
        sub: Option<String>,
        /// Lifetime, e.g. 30d; tokens without one do not expire.
        #[arg(long, value_name = "DURATION")]
        ttl: Option<humantime::Duration>,
    },
    /// Refuse an admin token on every replica (give the token, or its jti).
    Revoke {
        /// The admin token, or its `jti`.
        token: String,
    },
}

/// Runs the command; returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    // Printed from the command line's definition, with no config to read.
    match &cli.command {
        Command::Completions { shell } => return print_completions(*shell),
        Command::Man { dir } => return man_pages(dir.as_deref()),
        _ => {}
    }
    crate::telemetry::init();
    if cli.config.is_none() && !std::path::Path::new("config.toml").exists() {
        // Otherwise a command run from another folder quietly reads (and
        // creates) a store of its own there.
        eprintln!(
            "note: no config.toml in this folder; using the built-in defaults (give --config PATH to use a project's)"
        );
    }
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(e) => return bad_config(&e),
    };
    let result = match cli.command {
        Command::Serve { no_worker } => process::serve(config, !no_worker),
        Command::Worker { metrics_listen } => process::worker_only(config, metrics_listen),
        Command::Check => Ok(author::check(&config)),
        Command::Render {
            flow,
            body,
            content_type,
        } => author::render(&config, &flow, &body, content_type.as_deref()),
        Command::Token { command } => match command {
            TokenCommand::Issue { flow, ttl } => {
                control::issue(&config, &flow, ttl.map(Into::into))
            }
            TokenCommand::Rotate { flow, grace } => {
                control::rotate(&config, &flow, grace.map(Into::into))
            }
            TokenCommand::Admin { role, sub, ttl } => {
                control::admin(&config, &role, sub.as_deref(), ttl.map(Into::into))
            }
            TokenCommand::Revoke { token } => control::revoke(&config, &token),
        },
        Command::Runs { command } => runs::runs(&config, command),
        Command::Flows { command } => control::flows(&config, command),
        Command::Audit(args) => control::audit(&config, args),
        Command::Sessions { command } => control::sessions(&config, command),
        Command::Webhooks { command } => webhooks::webhooks(&config, command),
        Command::Backup { path } => process::backup(&config, &path),
        Command::Migrate => process::migrate(&config),
        Command::Healthcheck {
            url,
            ready,
            timeout,
        } => {
            let path = if ready { "/readyz" } else { "/healthz" };
            process::healthcheck(&config, url.as_deref(), path, timeout.into())
        }
        Command::Completions { .. } | Command::Man { .. } => {
            unreachable!("handled before the config")
        }
        Command::ConsoleLink {
            role,
            sub,
            ttl,
            url,
        } => control::console_link(&config, &role, sub.as_deref(), ttl.into(), url.as_deref()),
    };
    match result {
        Ok(code) => code,
        Err(e) => match e.downcast_ref::<ConfigError>() {
            Some(config_error) => bad_config(config_error),
            None => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn print_completions(shell: clap_complete::Shell) -> ExitCode {
    use clap::CommandFactory as _;
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "flowgate", &mut script);
    print_bytes(&script)
}

/// What the main page says beyond the options: roff for ENVIRONMENT, FILES
/// and EXIT STATUS.
const MAN_EXTRA: &str = r#".SH ENVIRONMENT
.TP
\fBFLOWGATE_\fISECTION\fB__\fIKEY\fR
Overrides the config key \fIsection.key\fR, read as a TOML value, e.g.
\fBFLOWGATE_STORAGE__BACKEND=redis\fR, \fBFLOWGATE_REDIS__URL=redis://redis:6379/0\fR,
or \fBFLOWGATE_STORAGE__BACKEND=postgres\fR, \fBFLOWGATE_POSTGRES__URL=postgres://flowgate:PASSWORD@db:5432/flowgate\fR.
.TP
\fBFLOWGATE_SIGNING_KEY\fR
The token signing key (at least 32 bytes); wins over \fBauth.signing_key_file\fR.
.TP
\fBRUST_LOG\fR
Log filter, e.g. \fBinfo\fR or \fBflowgate=debug\fR.
.SH FILES
.TP
\fIconfig.toml\fR
The configuration, from the working folder unless \fB\-\-config\fR names one.
.TP
\fIflows/\fR, \fItemplates/\fR
Flow files and their templates (\fBpaths.flows\fR, \fBpaths.templates\fR); changes are picked up while serving.
.TP
\fI.flowgate/flowgate.db\fR
The embedded database (\fBstorage.path\fR), private to its owner.
.SH EXIT STATUS
.TP
\fB0\fR
Success.
.TP
\fB1\fR
Failure: invalid flows (\fBcheck\fR), a failed render, an unknown flow or run, an unhealthy gateway (\fBhealthcheck\fR), a store that cannot be reached.
.TP
\fB2\fR
A usage error: an unknown command or option.
.TP
\fB64\fR
A bad configuration (the message names the key or variable).
"#;

/// `flowgate man`: the main page on stdout, or with `dir` every page written there.
fn man_pages(dir: Option<&std::path::Path>) -> ExitCode {
    use clap::CommandFactory as _;
    let mut main = Vec::new();
    render_main_page(&mut main).expect("writing to memory cannot fail");
    let Some(dir) = dir else {
        return print_bytes(&main);
    };
    let written = std::fs::create_dir_all(dir)
        .and_then(|()| clap_mangen::generate_to(Cli::command(), dir))
        .and_then(|()| std::fs::write(dir.join("flowgate.1"), &main));
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "error: cannot write the man pages to {}: {e}",
                dir.display()
            );
            ExitCode::FAILURE
        }
    }
}

/// clap_mangen's sections for the top command, then [`MAN_EXTRA`].
fn render_main_page(w: &mut dyn std::io::Write) -> std::io::Result<()> {
    use clap::CommandFactory as _;
    let mut command = Cli::command().disable_help_subcommand(true);
    command.build();
    let man = clap_mangen::Man::new(command);
    man.render_title(w)?;
    man.render_name_section(w)?;
    man.render_synopsis_section(w)?;
    man.render_description_section(w)?;
    man.render_options_section(w)?;
    man.render_subcommands_section(w)?;
    w.write_all(MAN_EXTRA.as_bytes())?;
    man.render_version_section(w)
}

/// Writes `bytes` to stdout; a reader that stopped early (`| head`) is not an error.
fn print_bytes(bytes: &[u8]) -> ExitCode {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: cannot write to stdout: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bad_config(e: &ConfigError) -> ExitCode {
    eprintln!("flowgate: bad config: {e}");
    ExitCode::from(EXIT_BAD_CONFIG)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}
