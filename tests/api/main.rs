//! Integration tests: a real gateway on loopback, real HTTP receivers, and the
//! real `flowgate` binary for the CLI.

mod auth;
mod browser;
mod cli;
mod cluster;
mod conformance;
mod console;
mod control;
mod embedded;
mod helpers;
mod hostile;
mod idempotency;
mod lifecycle;
mod modules;
mod outbox;
mod pg_server;
mod postgres_backend;
mod queue;
mod redis_backend;
mod reload;
mod runs;
mod steps;
mod trigger;
mod webhooks;
