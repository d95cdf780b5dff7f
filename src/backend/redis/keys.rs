//! The Redis key layout: every key flowgate writes is named here and
//! nowhere else.
//!
//! # Key layout
//!
//! Every key carries the hash tag `{flowgate}`, so every multi-key command
//! stays in one slot and Redis Cluster can serve the queue.
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `flowgate:{flowgate}:runs` | stream | one entry per accepted run: fields `input` (the [`crate::engine::RunInput`] as JSON, its request's `raw` body text left `null`; a JSON body travels once, as that text), `raw` (the raw body text as received), `run` (the run id, readable even when `input` is not), `accepted_at` (ms since the epoch) and `answer` (the answer the sender got, as recorded, JSON) |
//! | `flowgate:{flowgate}:delayed` | sorted set | runs waiting to retry a step: run inputs with their resume point (JSON), scored by due time (ms); workers move due ones into the stream with one Lua script |
//! | `flowgate:{flowgate}:dead` | list | runs given up on, newest first, capped at 10 000: `{"entry", "run_id", "reason", "input"}` (JSON; `input` is the queued input's JSON text). A run lands here after repeated worker deaths, or at once when its entry cannot be decoded |
//! | `flowgate:{flowgate}:run:<run id>` | string | the run record as JSON (see [`crate::record::RunRecord`]); expires after the runs retention |
//! | `flowgate:{flowgate}:runs:<flow>` | sorted set | run ids of a flow scored by acceptance time (ms); entries past retention are dropped on write |
//! | `flowgate:{flowgate}:index:flows` | set | ids of flows with runs, for listing runs across flows (by merging their indexes); a process adds a flow the first time it records one of its runs, and again now and then |
//! | `flowgate:{flowgate}:control:version` | string | the control state's version, bumped (`INCR`) by every change; replicas compare it with theirs every 250 ms |
//! | `flowgate:{flowgate}:control:status` | hash | flow id → its status override as JSON `{"status", "by", "at"}` (pause and unpause) |
//! | `flowgate:{flowgate}:control:generations` | hash | flow id → its token generation (`HINCRBY` on rotation) |
//! | `flowgate:{flowgate}:control:grace` | hash | flow id → until when (ms) tokens of the generation before the current one still work |
//! | `flowgate:{flowgate}:control:revoked` | hash | revoked admin token `jti` → when the revocation may be forgotten (ms) |
//! | `flowgate:{flowgate}:control:aborted` | hash | aborted run id → when it was aborted (ms); forgotten after a day |
//! | `flowgate:{flowgate}:audit` | stream | the audit log, one entry per change: field `entry`, the [`crate::backend::control::AuditEntry`] as JSON; trimmed to 365 days by entry id (`XADD ... MINID`) |
//! | `flowgate:{flowgate}:webhooks` | hash | subscription id → the [`crate::backend::webhooks::Subscription`] as JSON (signing secrets included); changed with `WATCH`/`MULTI` so the per-flow limit holds |
//! | `flowgate:{flowgate}:webhooks:version` | string | bumped by every subscription change; processes compare it with theirs every second |
//! | `flowgate:{flowgate}:webhooks:failures` | hash | subscription id → consecutive failed attempts |
//! | `flowgate:{flowgate}:outbox` | sorted set | delivery ids waiting for an attempt, scored by due time (ms); a claim re-scores them to the end of its lease |
//! | `flowgate:{flowgate}:delivery:<id>` | string | a [`crate::backend::webhooks::Delivery`] as JSON (its payload included); expires after `webhooks.delivery_retention` |
//! | `flowgate:{flowgate}:webhooks:skipped:<subscription>` | sorted set | deliveries skipped while the subscription was disabled, by event time (ms), for a recover |
//! | `flowgate:{flowgate}:webhooks:log:<subscription>` | stream | the delivery log, one entry per attempt: field `entry`, the [`crate::backend::webhooks::Attempt`] as JSON; trimmed to the delivery retention by entry id |
//! | `flowgate:{flowgate}:idem:<flow>:<sha256 of key>` | string | an idempotency key: `pending:<run id>` while the first request is in flight, then its answer as JSON; expires after 24 h (see [`crate::backend::IdempotencyStore`]) |
//!
//! Workers read through the consumer group `workers` (created at start-up,
//! from the stream's beginning, so nothing accepted before any worker ran is
//! missed). A worker reads only as many entries as it has free slots
//! (`XREADGROUP ... COUNT n`), so it never hoards runs it cannot start. An
//! entry stays in the group's pending list until the run ends (`XACK`, then
//! `XDEL` to keep the stream short). Concurrent enqueues are batched: one
//! task sends every waiting `XADD` (with the run's first record) in a single
//! pipeline, so a busy gateway makes one round trip for many runs. A running worker heartbeats its entries
//! (`XCLAIM` with min-idle 0 resets their idle time); entries idle longer than
//! the reclaim threshold belong to a worker that died and are taken over
//! with `XAUTOCLAIM`. With Redis persistence on (AOF), accepted runs survive
//! a Redis restart.
//!
//! A control change (pause, rotation, revocation, abort) is one `MULTI` that
//! writes the state, appends the audit entry and bumps the version, then a
//! `PUBLISH` of the new version on the channel `flowgate:{flowgate}:control`,
//! which every replica subscribes to.

use sha2::{Digest, Sha256};

/// The stream of accepted runs.
pub const STREAM_KEY: &str = "flowgate:{flowgate}:runs";
/// Runs waiting for a retry: run inputs (JSON) scored by due time (ms).
pub const DELAYED_KEY: &str = "flowgate:{flowgate}:delayed";
/// Runs given up on, newest first.
pub const DEAD_LETTER_KEY: &str = "flowgate:{flowgate}:dead";
/// The control state's version.
pub const CONTROL_VERSION_KEY: &str = "flowgate:{flowgate}:control:version";
/// Flow status overrides.
pub const STATUS_KEY: &str = "flowgate:{flowgate}:control:status";
/// Flow token generations.
pub const GENERATIONS_KEY: &str = "flowgate:{flowgate}:control:generations";
/// Grace periods of the generation before the current one.
pub const GRACE_KEY: &str = "flowgate:{flowgate}:control:grace";
/// Revoked admin tokens.
pub const REVOKED_KEY: &str = "flowgate:{flowgate}:control:revoked";
/// Recently aborted runs.
pub const ABORTED_KEY: &str = "flowgate:{flowgate}:control:aborted";
/// The audit log.
pub const AUDIT_KEY: &str = "flowgate:{flowgate}:audit";
/// The pub/sub channel announcing control changes.
pub const CONTROL_CHANNEL: &str = "flowgate:{flowgate}:control";
/// The consumer group all workers share.
pub const GROUP: &str = "workers";

/// Webhook subscriptions by id.
pub const WEBHOOKS_KEY: &str = "flowgate:{flowgate}:webhooks";
/// The subscriptions' version.
pub const WEBHOOKS_VERSION_KEY: &str = "flowgate:{flowgate}:webhooks:version";
/// Consecutive failed attempts by subscription.
pub const WEBHOOK_FAILURES_KEY: &str = "flowgate:{flowgate}:webhooks:failures";
/// Deliveries waiting for an attempt, by due time.
pub const OUTBOX_KEY: &str = "flowgate:{flowgate}:outbox";

/// What every delivery's key starts with.
pub fn delivery_key_prefix() -> &'static str {
    "flowgate:{flowgate}:delivery:"
}

/// Delivery `id`.
pub fn delivery_key(id: &str) -> String {
    format!("{}{id}", delivery_key_prefix())
}

/// The deliveries subscription `id` skipped while disabled.
pub fn skipped_key(id: &str) -> String {
    format!("flowgate:{{flowgate}}:webhooks:skipped:{id}")
}

/// The delivery log of subscription `id`.
pub fn delivery_log_key(id: &str) -> String {
    format!("flowgate:{{flowgate}}:webhooks:log:{id}")
}

/// The record of run `run_id`.
pub fn run_key(run_id: &str) -> String {
    format!("{RUN_KEY_PREFIX}{run_id}")
}

/// What every [`run_key`] starts with.
pub const RUN_KEY_PREFIX: &str = "flowgate:{flowgate}:run:";

/// The flows with runs.
pub const FLOWS_KEY: &str = "flowgate:{flowgate}:index:flows";

/// The index of flow `flow_id`'s runs.
pub fn flow_runs_key(flow_id: &str) -> String {
    format!("flowgate:{{flowgate}}:runs:{flow_id}")
}

/// Idempotency key `key` of flow `flow_id` (hashed, so any sender's key is safe in a key name).
pub fn idempotency_key(flow_id: &str, key: &str) -> String {
    let digest = hex::encode(Sha256::digest(key.as_bytes()));
    format!("flowgate:{{flowgate}}:idem:{flow_id}:{digest}")
}
