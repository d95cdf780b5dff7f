//! `flowgate webhooks ...`: outbound event webhook subscriptions and their
//! delivery log, on the configured backend directly (no server needed).
//! Pings, test events, resends and recovers are stored in the outbox; a
//! running `flowgate serve` or `worker` sends them. Changes are audited as
//! `cli:<os user>`.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Subcommand;
use serde_json::json;

use super::control::cli_actor;
use super::process::{backends, load};
use super::runtime;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::webhooks::input::SubscriptionInput;
use crate::webhooks::{DEFAULT_ROTATION_GRACE, WebhookSettings, Webhooks};

/// The fields `create` and `update` take.
#[derive(Debug, clap::Args)]
pub struct SubscriptionArgs {
    /// A name people recognise it by.
    #[arg(long)]
    name: Option<String>,
    /// Where deliveries are POSTed (https://).
    #[arg(long)]
    url: Option<String>,
    /// Event types, comma-separated, or `*` for every event.
    #[arg(long, value_delimiter = ',')]
    events: Option<Vec<String>>,
    /// Only these flows' events, comma-separated.
    #[arg(long, value_delimiter = ',')]
    flows: Option<Vec<String>>,
    /// Only run.ended events with these statuses (succeeded, failed, timed_out, aborted).
    #[arg(long, value_delimiter = ',')]
    statuses: Option<Vec<String>>,
    /// Payload format: json or xml.
    #[arg(long)]
    format: Option<String>,
}

/// `flowgate webhooks ...`
#[derive(Debug, Subcommand)]
pub enum WebhooksCommand {
    /// Every subscription: id, enabled, failures, name, URL, events.
    List,
    /// One subscription as JSON (never its secret).
    Show {
        /// The subscription id.
        id: String,
    },
    /// Create a subscription (enabled) and ping it; prints it with its secret, shown this once.
    Create {
        #[command(flatten)]
        fields: SubscriptionArgs,
        /// Sign deliveries with this secret (whsec_...).
        #[arg(long, conflicts_with = "generate_secret")]
        secret: Option<String>,
        /// Sign deliveries with a generated secret.
        #[arg(long)]
        generate_secret: bool,
    },
    /// Change the fields given.
    Update {
        /// The subscription id.
        id: String,
        #[command(flatten)]
        fields: SubscriptionArgs,
    },
    /// Enable a subscription and reset its failure count.
    Enable {
        /// The subscription id.
        id: String,
    },
    /// Disable a subscription: its events are kept as skipped.
    Disable {
        /// The subscription id.
        id: String,
    },
    /// Delete a disabled subscription and its delivery log.
    Delete {
        /// The subscription id.
        id: String,
    },
    /// Send a ping now.
    Ping {
        /// The subscription id.
        id: String,
    },
    /// Send a test event now.
    Test {
        /// The subscription id.
        id: String,
    },
    /// The delivery log, newest first.
    Deliveries {
        /// The subscription id.
        id: String,
        /// How many attempts.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Print the attempts as JSON, one per line.
        #[arg(long)]
        json: bool,
    },
    /// Send a delivery again now.
    Resend {
        /// The delivery id (from `deliveries`).
        delivery: String,
    },
    /// Send again the events skipped while the subscription was disabled.
    Recover {
        /// The subscription id.
        id: String,
        /// Only those since this RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
    },
    /// A new signing secret; the old one keeps signing for the grace period.
    RotateSecret {
        /// The subscription id.
        id: String,
        /// How long the old secret keeps signing, e.g. 24h (at most 7d).
        #[arg(long, value_parser = humantime::parse_duration)]
        grace: Option<Duration>,
        /// Use this secret (whsec_...) instead of a generated one.
        #[arg(long)]
        secret: Option<String>,
    },
}

impl SubscriptionArgs {
    fn input(self) -> SubscriptionInput {
        SubscriptionInput {
            name: self.name,
            url: self.url,
            events: self.events,
            flows: self.flows,
            statuses: self.statuses,
            format: self.format,
            ..SubscriptionInput::default()
        }
    }
}

/// `flowgate webhooks ...`: one arm per subcommand, each a call to the
/// [`Webhooks`] service the admin API uses too, and its printout.
pub fn webhooks(config: &Config, command: WebhooksCommand) -> anyhow::Result<ExitCode> {
    let metrics = Arc::new(Metrics::default());
    let backends = backends(config)?;
    let service = Webhooks::new(
        backends.webhooks,
        backends.control,
        WebhookSettings::from_config(config),
        metrics,
    );
    let known_flows = || -> Vec<String> { load(config).catalog.flows.keys().cloned().collect() };
    let actor = cli_actor();
    let rt = runtime()?;
    rt.block_on(async {
        match command {
            WebhooksCommand::List => print_list(&service).await?,
            WebhooksCommand::Show { id } => {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&service.get(&id).await?)?
                );
            }
            WebhooksCommand::Create {
                fields,
                secret,
                generate_secret,
            } => {
                let mut input = fields.input();
                input.secret = match (secret, generate_secret) {
                    (Some(secret), _) => Some(json!(secret)),
                    (None, true) => Some(json!(true)),
                    (None, false) => None,
                };
                let (view, secret) = service.create(input, &known_flows(), &actor).await?;
                let mut shown = serde_json::to_value(&view)?;
                shown["secret"] = json!(secret);
                println!("{}", serde_json::to_string_pretty(&shown)?);
            }
            WebhooksCommand::Update { id, fields } => {
                let view = service
                    .update(&id, fields.input(), &known_flows(), &actor)
                    .await?;
                println!("{}", serde_json::to_string_pretty(&view)?);
            }
            WebhooksCommand::Enable { id } => {
                service.set_enabled(&id, true, &actor).await?;
                println!("{id}: enabled");
            }
            WebhooksCommand::Disable { id } => {
                service.set_enabled(&id, false, &actor).await?;
                println!("{id}: disabled");
            }
            WebhooksCommand::Delete { id } => {
                service.delete(&id, &actor).await?;
                println!("{id}: deleted");
            }
            WebhooksCommand::Ping { id } => {
                let delivery = service.send(&id, false, &actor).await?;
                println!("{delivery}");
            }
            WebhooksCommand::Test { id } => {
                let delivery = service.send(&id, true, &actor).await?;
                println!("{delivery}");
            }
            WebhooksCommand::Deliveries { id, limit, json } => {
                print_deliveries(&service, &id, limit, json).await?
            }
            WebhooksCommand::Resend { delivery } => {
                service.resend(&delivery, &actor).await?;
                println!("{delivery}: queued");
            }
            WebhooksCommand::Recover { id, since } => {
                let since_ms = since.as_deref().map(since_ms).transpose()?.unwrap_or(0);
                let n = service.recover(&id, since_ms, &actor).await?;
                println!("{id}: {n} deliveries queued");
            }
            WebhooksCommand::RotateSecret { id, grace, secret } => {
                let grace = grace.unwrap_or(DEFAULT_ROTATION_GRACE);
                let (secret, previous_until) = service
                    .rotate_secret(&id, secret.as_deref(), grace, &actor)
                    .await?;
                println!("{secret}");
                if let Some(until) = previous_until {
                    eprintln!("the previous secret keeps signing until {until}");
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// `flowgate webhooks list`: one subscription per line.
async fn print_list(service: &Webhooks) -> anyhow::Result<()> {
    println!(
        "{:<36} {:<8} {:>8}  {:<20} {:<40} EVENTS",
        "ID", "ENABLED", "FAILURES", "NAME", "URL"
    );
    for sub in service.list().await? {
        println!(
            "{:<36} {:<8} {:>8}  {:<20} {:<40} {}",
            sub.id,
            sub.enabled,
            sub.consecutive_failures,
            sub.name,
            sub.url,
            sub.events.join(",")
        );
    }
    Ok(())
}

/// `flowgate webhooks deliveries`: the newest attempts, a table or JSON lines.
async fn print_deliveries(
    service: &Webhooks,
    id: &str,
    limit: usize,
    json: bool,
) -> anyhow::Result<()> {
    let page = service.attempts(id, None, limit.clamp(1, 250)).await?;
    if !json {
        println!(
            "{:<24} {:<36} {:<20} {:>3} {:<7} {:<9} {:>6} {:>7}  ERROR",
            "AT", "DELIVERY", "EVENT", "#", "TRIGGER", "OUTCOME", "STATUS", "MS"
        );
    }
    for attempt in page.data {
        if json {
            println!("{}", serde_json::to_string(&attempt)?);
            continue;
        }
        println!(
            "{:<24} {:<36} {:<20} {:>3} {:<7} {:<9} {:>6} {:>7}  {}",
            attempt.at,
            attempt.delivery_id,
            attempt.event,
            attempt.attempt,
            serde_json::to_value(attempt.trigger)?
                .as_str()
                .unwrap_or_default(),
            attempt.outcome,
            attempt.response_status,
            attempt.duration_ms,
            attempt.error.unwrap_or_default()
        );
    }
    Ok(())
}

/// `--since`: RFC 3339 with any offset, or humantime's looser form.
fn since_ms(text: &str) -> anyhow::Result<u64> {
    crate::webhooks::message::rfc3339_ms(text)
        .or_else(|| {
            let at = humantime::parse_rfc3339_weak(text).ok()?;
            let since = at.duration_since(std::time::UNIX_EPOCH).ok()?;
            Some(since.as_millis() as u64)
        })
        .ok_or_else(|| anyhow::anyhow!("--since `{text}` is not an RFC 3339 time"))
}
