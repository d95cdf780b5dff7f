//! The Redis key layout: every key flowgate writes is named here and
//! nowhere else.
//!
//! # Key layout
//!
//! On a single Redis every key carries the hash tag `{flowgate}`. On a Redis
//! Cluster (`redis.cluster = true`) the run queue, run records, per-flow run
//! indexes and idempotency keys are split into `redis.partitions`
//! partitions, each under a hash tag of its own, `{flowgate-<p>-<n>}` (see
//! [`Layout`]); the tags are chosen so that the partitions spread evenly
//! over the 16,384 slots, and so over the cluster's nodes. A run belongs to
//! the partition its run id hashes to (CRC16 modulo the partition count):
//! its stream entry, delayed retry, dead letter, record and the entry in
//! its flow's index all live in that partition, so every multi-key command
//! a run needs stays in one slot. An idempotency key belongs to the
//! partition its hashed key maps to. Control state and webhooks keep the
//! single tag `{flowgate}`: they are small and change rarely.
//!
//! Below, `{flowgate}` stands for the partition's tag where the key is
//! partitioned (marked "per partition"); on a single Redis there is one
//! partition and its tag is `{flowgate}`, so the layout is unchanged.
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `flowgate:{flowgate}:runs` | stream (per partition) | one entry per accepted run: fields `input` (the [`crate::engine::RunInput`] as JSON, its request's `raw` body text left `null`; a JSON body travels once, as that text), `raw` (the raw body text as received), `run` (the run id, readable even when `input` is not), `accepted_at` (ms since the epoch) and `answer` (the answer the sender got, as recorded, JSON) |
//! | `flowgate:{flowgate}:delayed` | sorted set (per partition) | runs waiting to retry a step: run inputs with their resume point (JSON), scored by due time (ms); workers move due ones into the stream with one Lua script |
//! | `flowgate:{flowgate}:dead` | list (per partition) | runs given up on, newest first, capped at 10 000: `{"entry", "run_id", "reason", "input"}` (JSON; `input` is the queued input's JSON text). A run lands here after repeated worker deaths, or at once when its entry cannot be decoded |
//! | `flowgate:{flowgate}:run:<run id>` | string (per partition) | the run record as JSON (see [`crate::record::RunRecord`]); expires after the runs retention |
//! | `flowgate:{flowgate}:runs:<flow>` | sorted set (per partition) | run ids of a flow scored by acceptance time (ms); entries past retention are dropped on write |
//! | `flowgate:{flowgate}:index:flows` | set (per partition) | ids of flows with runs, for listing runs across flows (by merging their indexes); a process adds a flow the first time it records one of its runs, and again now and then |
//! | `flowgate:{flowgate}:control:version` | string | the control state's version, bumped (`INCR`) by every change; replicas compare it with theirs every 250 ms |
//! | `flowgate:{flowgate}:control:status` | hash | flow id → its status override as JSON `{"status", "by", "at"}` (pause and unpause) |
//! | `flowgate:{flowgate}:control:generations` | hash | flow id → its token generation (`HINCRBY` on rotation) |
//! | `flowgate:{flowgate}:control:grace` | hash | flow id → until when (ms) tokens of the generation before the current one still work |
//! | `flowgate:{flowgate}:control:revoked` | hash | revoked admin token `jti` → when the revocation may be forgotten (ms) |
//! | `flowgate:{flowgate}:control:sessions` | hash | console session id → its [`crate::backend::control::SessionEntry`] as JSON; expired ones are dropped when the next session opens |
//! | `flowgate:{flowgate}:control:aborted` | hash | aborted run id → when it was aborted (ms); forgotten after a day |
//! | `flowgate:{flowgate}:audit` | stream | the audit log, one entry per change: field `entry`, the [`crate::backend::control::AuditEntry`] as JSON; trimmed to 365 days by entry id (`XADD ... MINID`) |
//! | `flowgate:{flowgate}:webhooks` | hash | subscription id → the [`crate::backend::webhooks::Subscription`] as JSON (signing secrets included); changed with `WATCH`/`MULTI` so the per-flow limit holds |
//! | `flowgate:{flowgate}:webhooks:version` | string | bumped by every subscription change; processes compare it with theirs every second |
//! | `flowgate:{flowgate}:webhooks:failures` | hash | subscription id → consecutive failed attempts |
//! | `flowgate:{flowgate}:outbox` | sorted set | delivery ids waiting for an attempt, scored by due time (ms); a claim re-scores them to the end of its lease |
//! | `flowgate:{flowgate}:delivery:<id>` | string | a [`crate::backend::webhooks::Delivery`] as JSON (its payload included); expires after `webhooks.delivery_retention` |
//! | `flowgate:{flowgate}:webhooks:skipped:<subscription>` | sorted set | deliveries skipped while the subscription was disabled, by event time (ms), for a recover |
//! | `flowgate:{flowgate}:webhooks:log:<subscription>` | stream | the delivery log, one entry per attempt: field `entry`, the [`crate::backend::webhooks::Attempt`] as JSON; trimmed to the delivery retention by entry id |
//! | `flowgate:{flowgate}:events` | sorted set (per partition) | ids (`msg_…`) of events owed to webhook subscribers, scored by when a fan-out may take them (ms): 0 when written, the end of its lease once claimed. A run's events are written in the pipeline of the run transition that caused them, in the run's partition |
//! | `flowgate:{flowgate}:events:messages` | hash (per partition) | event id → its message (JSON); deleted with the id once the event's deliveries are stored |
//! | `flowgate:{flowgate}:idem:<flow>:<sha256 of key>` | string (per partition) | an idempotency key: `pending:<run id>` while the first request is in flight, then its answer as JSON; expires after 24 h (see [`crate::backend::IdempotencyStore`]) |
//!
//! Workers read through the consumer group `workers` of every partition's
//! stream (created at start-up, from the stream's beginning, so nothing
//! accepted before any worker ran is missed). On a cluster a worker sweeps
//! the partitions from a rotating start, so none is favoured, and when all
//! are empty it blocks briefly on one of them before sweeping again; a
//! delivery's id is then `<partition>/<entry id>`. A worker reads only as many entries as it has free slots
//! (`XREADGROUP ... COUNT n`), so it never hoards runs it cannot start. An
//! entry stays in the group's pending list until the run ends (`XACK`, then
//! `XDEL` to keep the stream short). Concurrent enqueues are batched: one
//! task per partition sends every waiting `XADD` (with the run's first record) in a single
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

/// The single hash tag of control state, webhooks and, on a single Redis,
/// everything else.
const TAG: &str = "flowgate";

/// The stream of accepted runs on a single Redis.
pub const STREAM_KEY: &str = "flowgate:{flowgate}:runs";
/// The dead-letter list on a single Redis.
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
/// Console sessions.
pub const SESSIONS_KEY: &str = "flowgate:{flowgate}:control:sessions";
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

/// Most partitions a cluster layout may have: each still gets a range of
/// at least 16 slots to find its tag in.
pub use crate::config::MAX_PARTITIONS;

/// Slots in a Redis Cluster.
const SLOTS: u32 = 16_384;

/// The keys of one partition.
#[derive(Debug, Clone)]
pub struct Partition {
    /// The stream of accepted runs.
    pub stream: String,
    /// Runs waiting for a retry: run inputs (JSON) scored by due time (ms).
    pub delayed: String,
    /// Runs given up on, newest first.
    pub dead: String,
    /// What the key of every run record in this partition starts with.
    pub run_prefix: String,
    /// The flows with runs recorded in this partition.
    pub flows: String,
    /// What the key of every flow's run index in this partition starts with.
    flow_runs_prefix: String,
    /// What the key of every idempotency key in this partition starts with.
    idem_prefix: String,
    /// Events owed to webhook subscribers, by due time (ms).
    pub events: String,
    /// The events' messages, by message id.
    pub event_messages: String,
}

impl Partition {
    fn new(tag: &str) -> Self {
        Self {
            stream: format!("flowgate:{{{tag}}}:runs"),
            delayed: format!("flowgate:{{{tag}}}:delayed"),
            dead: format!("flowgate:{{{tag}}}:dead"),
            run_prefix: format!("flowgate:{{{tag}}}:run:"),
            flows: format!("flowgate:{{{tag}}}:index:flows"),
            flow_runs_prefix: format!("flowgate:{{{tag}}}:runs:"),
            idem_prefix: format!("flowgate:{{{tag}}}:idem:"),
            events: format!("flowgate:{{{tag}}}:events"),
            event_messages: format!("flowgate:{{{tag}}}:events:messages"),
        }
    }

    /// The record of run `run_id`, which must belong to this partition.
    pub fn run_key(&self, run_id: &str) -> String {
        format!("{}{run_id}", self.run_prefix)
    }

    /// The index of flow `flow_id`'s runs in this partition.
    pub fn flow_runs(&self, flow_id: &str) -> String {
        format!("{}{flow_id}", self.flow_runs_prefix)
    }
}

/// Where every partitioned key lives: one partition on a single Redis,
/// `redis.partitions` on a cluster.
#[derive(Debug, Clone)]
pub struct Layout {
    partitions: Vec<Partition>,
}

impl Layout {
    /// A single Redis: one partition, tagged `{flowgate}` like everything else.
    pub fn single() -> Self {
        Self {
            partitions: vec![Partition::new(TAG)],
        }
    }

    /// A cluster: `count` partitions (clamped to 1..=[`MAX_PARTITIONS`]),
    /// partition `p`'s tag chosen to hash into the `p`-th of `count` equal
    /// slot ranges, so a cluster with evenly split slots gets an even share
    /// of partitions on every master.
    pub fn cluster(count: u16) -> Self {
        let count = u32::from(count.clamp(1, MAX_PARTITIONS));
        let partitions = (0..count)
            .map(|p| {
                let (low, high) = (p * SLOTS / count, (p + 1) * SLOTS / count);
                let tag = (0u32..)
                    .map(|n| format!("{TAG}-{p}-{n}"))
                    .find(|tag| (low..high).contains(&u32::from(slot(tag))))
                    .expect("some tag lands in every range");
                Partition::new(&tag)
            })
            .collect();
        Self { partitions }
    }

    /// How many partitions there are.
    pub fn count(&self) -> usize {
        self.partitions.len()
    }

    /// Partition `p`'s keys.
    pub fn partition(&self, p: usize) -> &Partition {
        &self.partitions[p]
    }

    /// Every partition, with its number.
    pub fn all(&self) -> impl Iterator<Item = (usize, &Partition)> {
        self.partitions.iter().enumerate()
    }

    /// The partition run `run_id` belongs to.
    pub fn partition_of(&self, run_id: &str) -> usize {
        match self.partitions.len() {
            1 => 0,
            n => usize::from(slot(run_id)) % n,
        }
    }

    /// The record of run `run_id`.
    pub fn run_key(&self, run_id: &str) -> String {
        self.partitions[self.partition_of(run_id)].run_key(run_id)
    }

    /// Idempotency key `key` of flow `flow_id` (hashed, so any sender's key
    /// is safe in a key name).
    pub fn idempotency_key(&self, flow_id: &str, key: &str) -> String {
        let digest = hex::encode(Sha256::digest(key.as_bytes()));
        let p = self.partition_of(&digest);
        format!("{}{flow_id}:{digest}", self.partitions[p].idem_prefix)
    }

    /// The id a worker knows a queue entry by: the entry id itself on a
    /// single Redis, `<partition>/<entry id>` on a cluster.
    pub fn delivery_id(&self, p: usize, entry: &str) -> String {
        match self.partitions.len() {
            1 => entry.to_owned(),
            _ => format!("{p}/{entry}"),
        }
    }

    /// The partition and entry id a [`Layout::delivery_id`] names; `None`
    /// for an id of no partition here.
    pub fn entry_of<'a>(&self, delivery_id: &'a str) -> Option<(usize, &'a str)> {
        let (p, entry) = match delivery_id.split_once('/') {
            Some((p, entry)) => (p.parse().ok()?, entry),
            None => (0, delivery_id),
        };
        (p < self.partitions.len()).then_some((p, entry))
    }
}

/// The Redis Cluster hash slot of `key`: CRC16 (XMODEM) of its hash tag,
/// or of the whole key when it has none.
pub fn slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = bytes.iter().position(|&b| b == b'{').and_then(|open| {
        let close = bytes[open + 1..].iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &bytes[open + 1..open + 1 + close])
    });
    crc16::State::<crc16::XMODEM>::calculate(tagged.unwrap_or(bytes)) % SLOTS as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from `CLUSTER KEYSLOT` on Redis 7.
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("flowgate:{flowgate-5-3}:runs"), 3092);
        assert_eq!(slot("{user1000}.following"), slot("{user1000}.followers"));
        assert_eq!(slot("flowgate:{flowgate}:runs"), slot("flowgate"));
        assert_eq!(slot("a{}b"), slot("a{}b"));
    }

    #[test]
    fn a_single_redis_keeps_the_one_tag() {
        let layout = Layout::single();
        assert_eq!(layout.count(), 1);
        assert_eq!(layout.partition(0).stream, STREAM_KEY);
        assert_eq!(layout.partition(0).dead, DEAD_LETTER_KEY);
        assert_eq!(layout.run_key("r1"), "flowgate:{flowgate}:run:r1");
        assert_eq!(layout.delivery_id(0, "1-0"), "1-0");
        assert_eq!(layout.entry_of("1-0"), Some((0, "1-0")));
    }

    #[test]
    fn cluster_partitions_spread_over_the_slots_and_keep_a_run_together() {
        let layout = Layout::cluster(16);
        assert_eq!(layout.count(), 16);
        for (p, partition) in layout.all() {
            let s = u32::from(slot(&partition.stream));
            assert_eq!(s * 16 / SLOTS, p as u32, "partition {p} in its range");
            assert_eq!(slot(&partition.stream), slot(&partition.flow_runs("f")));
            assert_eq!(slot(&partition.stream), slot(&partition.run_prefix));
        }
        let run = "01890a5d-ac96-774b-bcce-b302099a8057";
        let p = layout.partition_of(run);
        assert_eq!(
            slot(&layout.run_key(run)),
            slot(&layout.partition(p).stream)
        );
        let id = layout.delivery_id(p, "5-1");
        assert_eq!(layout.entry_of(&id), Some((p, "5-1")));
        assert_eq!(layout.entry_of("99/5-1"), None);
    }
}
