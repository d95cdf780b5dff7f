//! flowgate: an inbound flow-trigger gateway.
//!
//! Third-party services POST events to `/v1/flow-webhook/<flow_id>`. flowgate
//! authenticates the request (a Bearer JWT, a provider's body signature, or a
//! token in the query), parses the body, exposes it to the flow's steps under
//! the trigger's ref-id, runs the steps and answers with a rendered Jinja
//! response. Async flows answer at once; their runs wait in Redis and
//! workers execute them, at least once, even when a worker dies mid-run.
//! Every run leaves a record: the flow debugger.
//!
//! A request travels one way through the stages below: parse -> authenticate
//! -> look up flow -> build context -> run (or enqueue) -> render -> answer.
//!
//! # Layout
//!
//! Layers, each module importing only from those before it (a test reads
//! the sources and fails on an import cycle); docs/architecture.md draws
//! the map and the paths a request takes.
//!
//! - [`clock`]: the wall clock, read one way everywhere.
//! - [`codec`]: depth-bounded JSON for everything stored, and values cut to size.
//! - [`error`]: the error envelope, and [`error::Refusal`], the one mapping of errors to HTTP.
//! - [`mac`]: HMAC-SHA256, behind sender signatures and outbound signing.
//! - [`outbound`]: outbound HTTP behind the private-network (SSRF) guard.
//! - [`secret`]: values that never print.
//! - [`telemetry`]: `tracing` subscriber set-up.
//! - [`template`]: the minijinja environment, template values and the template context.
//! - [`flow`]: the flow model, loading plus validation of `flows/*.toml`, the step kinds (one file each), record keeping.
//! - [`token`]: minting and verifying flow and admin tokens (JWTs); the bearer header.
//! - [`config`]: configuration layering (defaults, `config.toml`, environment) and secrets.
//! - [`engine`]: the run engine (step order, retries, timeouts, traces), independent of where a run comes from.
//! - [`metrics`]: Prometheus metrics for `/metrics`.
//! - [`record`]: run records, what the flow debugger shows of each run.
//! - [`backend`]: the storage traits (run queue, run records, idempotency keys, control state, webhooks) and their Redis and embedded SQLite implementations; storage never announces.
//! - [`lifecycle`]: run transitions, announced once: logs, metrics and the in-process event bus.
//! - [`control`]: the control plane as one replica sees it: pauses, token generations, revocations, aborts and console sessions, kept current from the store.
//! - [`reloader`]: hot reload of flows and templates: file watching, SIGHUP, the admin API.
//! - [`webhooks`]: outbound event webhooks: subscriptions, the outbox and its fan-out, the dispatcher, Standard Webhooks signing.
//! - [`transition`]: every run transition made in one place: the record written with the queue change and the webhook events it owes, then announced.
//! - [`inbound`]: from a request to a run and back: body parsing, the `request` object, redaction, signatures, a sync run and its answer.
//! - [`worker`]: workers that execute queued async runs.
//! - [`app`]: builds the [`app::AppState`] and the workers, and starts what runs beside them: the one start-up path.
//! - [`operations`]: aborting and replaying runs, for the admin API and the CLI alike.
//! - [`trigger`]: the webhook endpoint: authentication, limits, idempotency, async accept, CORS.
//! - [`admin`]: the admin API under `/v1/admin/`: flows, pause, rotation, runs, audit, webhooks, by role.
//! - [`console`]: the web console under `/console`.
//! - [`server`]: the listener, connection limits and timeouts, routing and graceful shutdown.
//! - [`cli`]: the `flowgate` command line.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod backend;
pub mod cli;
pub mod clock;
pub mod codec;
pub mod config;
pub mod console;
pub mod control;
pub mod engine;
pub mod error;
pub mod flow;
pub mod inbound;
pub mod lifecycle;
pub mod mac;
pub mod metrics;
pub mod operations;
pub mod outbound;
pub mod record;
pub mod reloader;
pub mod secret;
pub mod server;
pub mod telemetry;
pub mod template;
pub mod token;
pub mod transition;
pub mod trigger;
pub mod webhooks;
pub mod worker;
