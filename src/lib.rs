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
//! - [`config`]: configuration layering (defaults, `config.toml`, environment) and secrets.
//! - [`secret`]: values that never print.
//! - [`telemetry`]: `tracing` subscriber set-up.
//! - [`error`]: the error envelope every flowgate-made error answer uses.
//! - [`codec`]: depth-bounded JSON for everything stored (queue entries, records).
//! - [`token`]: minting and verifying flow tokens (JWTs).
//! - [`flow`]: the flow model, loading plus validation of `flows/*.toml`, and the step kinds (one file each).
//! - [`template`]: the minijinja environment, template values and the template context.
//! - [`engine`]: the run engine (step order, retries, timeouts, traces), independent of where a run comes from.
//! - [`outbound`]: outbound HTTP behind the private-network (SSRF) guard.
//! - [`trigger`]: the webhook endpoint: authentication, body parsing, rendering the answer.
//! - [`transition`]: every run transition made in one place: the record written with the queue change and the webhook events it owes, then announced.
//! - [`lifecycle`]: run transitions, announced once: logs, metrics and the in-process event bus.
//! - [`operations`]: aborting and replaying runs, for the admin API and the CLI alike.
//! - [`metrics`]: Prometheus metrics for `/metrics`.
//! - [`worker`]: workers that execute queued async runs.
//! - [`reloader`]: hot reload of flows and templates: file watching, SIGHUP, the admin API.
//! - [`record`]: run records, what the flow debugger shows of each run.
//! - [`admin`]: the admin API under `/v1/admin/`: flows, pause, rotation, runs, audit, webhooks, by role.
//! - [`server`]: the listener, routing, tower layers and graceful shutdown.
//! - [`app`]: assembles the gateway and its workers from settings, flows and backends.
//! - [`control`]: the control plane as one replica sees it: pauses, token generations, revocations and aborts, kept current from the store.
//! - [`backend`]: the storage traits (run queue, run records, idempotency keys, control state, webhooks) and their Redis implementation.
//! - [`webhooks`]: outbound event webhooks: subscriptions, the fan-out of events into the outbox, the dispatcher, Standard Webhooks signing.
//! - [`cli`]: the `flowgate` command line.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod backend;
pub mod cli;
pub mod codec;
pub mod config;
pub mod console;
pub mod control;
pub mod engine;
pub mod error;
pub mod flow;
pub mod lifecycle;
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
