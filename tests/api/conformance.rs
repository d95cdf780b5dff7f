//! The storage contract every backend must keep, written against the
//! traits alone ([`Backends`]) and instantiated once per backend at the end
//! of this file. A new backend adds its name there and must pass unchanged.

use std::sync::Arc;
use std::time::Duration;

use flowgate::backend::now_ms;
use flowgate::backend::webhooks::{ClaimedEvent, OutboxEvent};
use flowgate::backend::{Backends, RunFilter};
use flowgate::backend::{Delivery, Reservation, StoredAnswer};
use flowgate::engine::{Resume, RunInput, RunState};
use flowgate::record::RunRecord;
use serde_json::json;

use crate::helpers::*;

/// How long a stored record lives in these tests.
const RETENTION: Duration = Duration::from_secs(2);

/// A backend under test and whatever keeps it alive.
pub struct Subject {
    pub backends: Backends,
    /// Its storage as written beside the traits, for what no trait writes.
    raw: Raw,
    _redis: Option<RedisServer>,
    _cluster: Option<RedisCluster>,
    _postgres: Option<crate::pg_server::PgServer>,
    _dir: Option<tempfile::TempDir>,
}

impl std::ops::Deref for Subject {
    type Target = Backends;

    fn deref(&self) -> &Backends {
        &self.backends
    }
}

/// Where a backend keeps its queue, for writing rows no gateway would.
enum Raw {
    /// A Redis (one port) or a cluster (its masters' ports), and its layout.
    Redis(u16, flowgate::backend::redis::Layout),
    /// The embedded database file.
    Embedded(std::path::PathBuf),
    /// A PostgreSQL database's URL.
    Postgres(String),
}

/// Redis: a server of the test's own.
pub async fn redis() -> Subject {
    let redis = RedisServer::start(false);
    let retention = flowgate::backend::Retention {
        runs: RETENTION,
        deliveries: RETENTION,
    };
    let settings = flowgate::backend::redis::Settings::single(&redis.url());
    let backends = Backends::redis(&settings, retention).unwrap();
    backends.queue.prepare().await.unwrap();
    Subject {
        backends,
        raw: Raw::Redis(redis.port(), flowgate::backend::redis::Layout::single()),
        _redis: Some(redis),
        _cluster: None,
        _postgres: None,
        _dir: None,
    }
}

/// A Redis Cluster of three masters of the test's own, the queue in 16
/// partitions spread over them.
pub async fn redis_cluster() -> Subject {
    let cluster = RedisCluster::start(3, 0);
    let retention = flowgate::backend::Retention {
        runs: RETENTION,
        deliveries: RETENTION,
    };
    let settings = flowgate::backend::redis::Settings::cluster(cluster.urls(), CLUSTER_PARTITIONS);
    let backends = Backends::redis(&settings, retention).unwrap();
    backends.queue.prepare().await.unwrap();
    Subject {
        backends,
        raw: Raw::Redis(
            cluster.masters()[0],
            flowgate::backend::redis::Layout::cluster(CLUSTER_PARTITIONS),
        ),
        _redis: None,
        _cluster: Some(cluster),
        _postgres: None,
        _dir: None,
    }
}

/// The embedded backend: a SQLite file in a folder of the test's own.
pub async fn embedded() -> Subject {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flowgate.db");
    let db = flowgate::backend::sqlite::Database::open(&path, true).unwrap();
    let retention = flowgate::backend::Retention {
        runs: RETENTION,
        deliveries: RETENTION,
    };
    Subject {
        backends: Backends::embedded(&db, retention),
        raw: Raw::Embedded(path),
        _redis: None,
        _cluster: None,
        _postgres: None,
        _dir: Some(dir),
    }
}

/// PostgreSQL: a server of the test's own.
pub async fn postgres() -> Subject {
    let server = crate::pg_server::PgServer::start();
    let retention = flowgate::backend::Retention {
        runs: RETENTION,
        deliveries: RETENTION,
    };
    let settings = flowgate::backend::postgres::Settings {
        url: server.url(),
        pool_size: 8,
    };
    let backends = Backends::postgres(&settings, retention).await.unwrap();
    backends.queue.prepare().await.unwrap();
    Subject {
        backends,
        raw: Raw::Postgres(server.url()),
        _redis: None,
        _cluster: None,
        _postgres: Some(server),
        _dir: None,
    }
}

fn input(run_id: &str) -> RunInput {
    RunInput {
        run_id: run_id.to_owned(),
        flow_id: "f".into(),
        mode: "async".into(),
        live: true,
        body: Arc::new(json!({"n": 1})),
        raw_is_body: false,
        request: Arc::new(json!({"headers": {"content-type": "text/plain"}, "raw": "n"})),
        resume: None,
        replay_of: None,
    }
}

fn record(run_id: &str, state: RunState) -> RunRecord {
    serde_json::from_value(json!({
        "id": run_id, "flow": "f", "flow_version": "v1", "mode": "async", "live": true,
        "status": state, "created_at": "2026-01-01T00:00:00.000Z", "started_at": null,
        "ended_at": null, "attempt": 0, "duration_ms": null,
        "request": {"method": "POST"}, "body": {"n": 1}, "steps": [], "logs": [],
        "response": null, "error": null,
    }))
    .unwrap()
}

async fn depth(b: &Backends) -> u64 {
    b.queue.depth().await.unwrap()
}

/// Claims the one run waiting, for consumer `a`.
async fn claim_one(b: &Backends) -> Delivery {
    let mut claimed = b
        .queue
        .claim("a", 1, Duration::from_millis(100))
        .await
        .unwrap()
        .runs;
    assert_eq!(claimed.len(), 1, "one run was waiting");
    claimed.remove(0)
}

/// Nothing is left to claim or take over, for consumer `consumer`.
async fn assert_nothing_left(b: &Backends, consumer: &str) {
    let taken = b
        .queue
        .take_over(consumer, Duration::ZERO, 10)
        .await
        .unwrap()
        .runs;
    assert!(taken.is_empty(), "taken over: {taken:?}");
    let claimed = b
        .queue
        .claim(consumer, 10, Duration::from_millis(50))
        .await
        .unwrap()
        .runs;
    assert!(claimed.is_empty(), "claimed: {claimed:?}");
}

pub async fn a_run_is_delivered_until_it_is_acknowledged(b: &Backends) {
    b.queue.enqueue(&input("r1"), None).await.unwrap();
    assert_eq!(depth(b).await, 1);
    let first = b
        .queue
        .claim("a", 10, Duration::from_millis(100))
        .await
        .unwrap()
        .runs;
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].input.run_id, "r1");
    assert!(!first[0].taken_over);
    // Fetched is not done: another consumer sees nothing new...
    let none = b
        .queue
        .claim("b", 10, Duration::from_millis(50))
        .await
        .unwrap()
        .runs;
    assert!(none.is_empty());
    // ...but takes it over once its holder stopped heartbeating.
    tokio::time::sleep(Duration::from_millis(60)).await;
    let taken = b
        .queue
        .take_over("b", Duration::from_millis(50), 10)
        .await
        .unwrap()
        .runs;
    assert_eq!(taken.len(), 1);
    assert!(taken[0].taken_over);
    assert_eq!(taken[0].input.run_id, "r1");
    b.queue.complete(&taken[0].id, None).await.unwrap();
    assert_eq!(depth(b).await, 0);
    assert_nothing_left(b, "c").await;
}

pub async fn an_extended_lease_keeps_a_run_from_being_taken_over(b: &Backends) {
    b.queue.enqueue(&input("r1"), None).await.unwrap();
    let held = claim_one(b).await;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        b.queue
            .extend_leases("a", std::slice::from_ref(&held.id))
            .await
            .unwrap();
        let taken = b
            .queue
            .take_over("b", Duration::from_millis(250), 10)
            .await
            .unwrap()
            .runs;
        assert!(
            taken.is_empty(),
            "a run whose lease was extended was taken over"
        );
    }
}

pub async fn claim_hands_out_no_more_than_asked(b: &Backends) {
    for n in 0..5 {
        b.queue
            .enqueue(&input(&format!("r{n}")), None)
            .await
            .unwrap();
    }
    let two = b
        .queue
        .claim("a", 2, Duration::from_millis(100))
        .await
        .unwrap()
        .runs;
    assert_eq!(two.len(), 2);
    let rest = b
        .queue
        .claim("b", 10, Duration::from_millis(100))
        .await
        .unwrap()
        .runs;
    assert_eq!(rest.len(), 3);
    let mut ids: Vec<String> = two
        .iter()
        .chain(&rest)
        .map(|d| d.input.run_id.clone())
        .collect();
    ids.sort();
    assert_eq!(ids, ["r0", "r1", "r2", "r3", "r4"]);
}

pub async fn a_retry_waits_until_due_then_resumes(b: &Backends) {
    b.queue.enqueue(&input("r1"), None).await.unwrap();
    let delivery = claim_one(b).await;
    let mut next = delivery.input.clone();
    next.resume = Some(Resume {
        step: 1,
        attempts: 1,
        outputs: Default::default(),
        traces: Vec::new(),
        logs: vec!["first try".into()],
        elapsed_ms: 10,
    });
    let waiting = record("r1", RunState::Queued);
    b.queue
        .retry_later(&delivery.id, &next, now_ms() + 400, Some(&waiting))
        .await
        .unwrap();
    assert_eq!(
        depth(b).await,
        1,
        "a run waiting for its retry counts as queued"
    );
    assert_eq!(b.queue.requeue_due_retries(10).await.unwrap(), 0);
    assert!(
        b.queue
            .claim("a", 1, Duration::from_millis(50))
            .await
            .unwrap()
            .runs
            .is_empty()
    );
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(b.queue.requeue_due_retries(10).await.unwrap(), 1);
    let again = b
        .queue
        .claim("a", 1, Duration::from_millis(100))
        .await
        .unwrap()
        .runs;
    assert_eq!(again.len(), 1);
    let resume = again[0]
        .input
        .resume
        .as_ref()
        .expect("resumes where it stopped");
    assert_eq!((resume.step, resume.attempts), (1, 1));
    assert_eq!(resume.logs, ["first try"]);
    assert_eq!(
        b.runs.get("r1").await.unwrap().unwrap().status,
        RunState::Queued
    );
}

pub async fn a_dead_lettered_run_leaves_the_queue(b: &Backends) {
    b.queue
        .enqueue(&input("r1"), Some(&record("r1", RunState::Queued)))
        .await
        .unwrap();
    let delivery = claim_one(b).await;
    b.queue
        .dead_letter(&delivery, "given up", &record("r1", RunState::Aborted))
        .await
        .unwrap();
    assert_eq!(depth(b).await, 0);
    assert_eq!(
        b.runs.get("r1").await.unwrap().unwrap().status,
        RunState::Aborted,
        "the aborted record is written with the move"
    );
    assert_nothing_left(b, "b").await;
}

/// Queued rows no gateway writes but a bad disk, an old version or a hand
/// can leave: each is the run's input as stored.
fn undecodable_inputs() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("wrong type", b"42".to_vec()),
        ("truncated", br#"{"run_id": "x", "flow_id": "#.to_vec()),
        ("too deep", "[".repeat(200_000).into_bytes()),
        ("not UTF-8", b"{\"run_id\": \"\xff\xfe\"}".to_vec()),
        ("empty object", b"{}".to_vec()),
        ("empty", Vec::new()),
    ]
}

/// Stores `input` as run `run_id`'s queued input, as the backend would
/// have stored a run, but undecodable.
fn queue_raw(subject: &Subject, run_id: &str, input: &[u8]) {
    match &subject.raw {
        Raw::Redis(port, layout) => {
            let stream = &layout.partition(layout.partition_of(run_id)).stream;
            let mut child = std::process::Command::new("redis-cli")
                .args(["-c", "-p", &port.to_string(), "-x", "XADD", stream, "*"])
                .args(["run", run_id, "accepted_at", &now_ms().to_string(), "input"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            use std::io::Write;
            child.stdin.take().unwrap().write_all(input).unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "{out:?}");
        }
        Raw::Embedded(path) => {
            let conn = rusqlite::Connection::open(path).unwrap();
            conn.busy_timeout(Duration::from_secs(5)).unwrap();
            // The wrong type is a number in the column; the rest are bytes.
            let value: rusqlite::types::Value = if input == b"42" {
                42.into()
            } else {
                match String::from_utf8(input.to_vec()) {
                    Ok(text) => text.into(),
                    Err(_) => input.to_vec().into(),
                }
            };
            conn.execute(
                "INSERT INTO queue (run_id, input, accepted_at, due_at) VALUES (?1, ?2, ?3, ?3)",
                rusqlite::params![run_id, value, now_ms() as i64],
            )
            .unwrap();
        }
        Raw::Postgres(url) => {
            // Its column is text: bytes that are not UTF-8 arrive replaced,
            // still not a run.
            let text = String::from_utf8_lossy(input).into_owned();
            let (url, run_id) = (url.clone(), run_id.to_owned());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                        .await
                        .unwrap();
                    tokio::spawn(connection);
                    client
                        .execute(
                            "INSERT INTO flowgate.queue (run_id, input, accepted_at, due_at)
                             VALUES ($1, $2, $3, $3)",
                            &[&run_id, &text, &(now_ms() as i64)],
                        )
                        .await
                        .unwrap();
                });
            })
            .join()
            .unwrap();
        }
    }
}

pub async fn undecodable_queued_runs_are_dead_lettered_and_the_rest_delivered(s: &Subject) {
    let b = &s.backends;
    b.queue
        .enqueue(&input("good-1"), Some(&record("good-1", RunState::Queued)))
        .await
        .unwrap();
    let shapes = undecodable_inputs();
    for (i, (_, bytes)) in shapes.iter().enumerate() {
        let run_id = format!("bad-{i}");
        b.runs
            .save(&record(&run_id, RunState::Queued))
            .await
            .unwrap();
        queue_raw(s, &run_id, bytes);
    }
    b.queue
        .enqueue(&input("good-2"), Some(&record("good-2", RunState::Queued)))
        .await
        .unwrap();
    // Both good runs come out; no claim fails for the bad ones.
    let mut delivered = Vec::new();
    let started = std::time::Instant::now();
    while delivered.len() < 2 {
        assert!(started.elapsed() < Duration::from_secs(10), "{delivered:?}");
        for d in b
            .queue
            .claim("a", 10, Duration::from_millis(100))
            .await
            .unwrap()
            .runs
        {
            delivered.push(d.input.run_id.clone());
            b.queue.complete(&d.id, None).await.unwrap();
        }
    }
    delivered.sort();
    assert_eq!(delivered, ["good-1", "good-2"]);
    assert_eq!(depth(b).await, 0, "the bad rows left the queue");
    // Each bad run is recorded aborted with the reason.
    for (i, (shape, _)) in shapes.iter().enumerate() {
        let stored = b.runs.get(&format!("bad-{i}")).await.unwrap().unwrap();
        assert_eq!(stored.status, RunState::Aborted, "{shape}");
        let error = stored.error.expect(shape).message;
        assert!(error.contains("cannot be decoded"), "{shape}: {error}");
    }
    assert_nothing_left(b, "b").await;
}

pub async fn queue_transitions_write_the_run_record(b: &Backends) {
    b.queue
        .enqueue(&input("r1"), Some(&record("r1", RunState::Queued)))
        .await
        .unwrap();
    let stored = b
        .runs
        .get("r1")
        .await
        .unwrap()
        .expect("written with the enqueue");
    assert_eq!(stored.status, RunState::Queued);
    let delivery = claim_one(b).await;
    b.queue
        .complete(&delivery.id, Some(&record("r1", RunState::Succeeded)))
        .await
        .unwrap();
    assert_eq!(
        b.runs.get("r1").await.unwrap().unwrap().status,
        RunState::Succeeded
    );
}

pub async fn an_idempotency_key_is_reserved_once_under_concurrency(b: &Backends) {
    let mut tries = Vec::new();
    for n in 0..16 {
        let store = b.idempotency.clone();
        tries.push(tokio::spawn(async move {
            let run = format!("run-{n}");
            (
                run.clone(),
                store.reserve("f", "key-1", &run).await.unwrap(),
            )
        }));
    }
    let mut winners = Vec::new();
    let mut seen = Vec::new();
    for t in tries {
        match t.await.unwrap() {
            (run, Reservation::Reserved) => winners.push(run),
            (_, Reservation::InProgress { run_id }) => seen.push(run_id),
            (_, other) => panic!("nothing was answered yet: {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one request reserves the key");
    assert!(
        seen.iter().all(|run| *run == winners[0]),
        "the others see the winner"
    );
    // Another flow's key of the same name is its own.
    assert_eq!(
        b.idempotency.reserve("g", "key-1", "other").await.unwrap(),
        Reservation::Reserved
    );
    let answer = StoredAnswer {
        run_id: winners[0].clone(),
        status: 202,
        headers: vec![("content-type".into(), "application/json".into())],
        body: "{}".into(),
    };
    b.idempotency.complete("f", "key-1", &answer).await.unwrap();
    assert_eq!(
        b.idempotency.reserve("f", "key-1", "late").await.unwrap(),
        Reservation::Answered(answer.clone())
    );
    assert_eq!(
        b.idempotency.lookup("f", "key-1").await.unwrap(),
        Some(Reservation::Answered(answer))
    );
}

pub async fn a_released_key_can_be_reserved_again(b: &Backends) {
    assert_eq!(
        b.idempotency.reserve("f", "k", "first").await.unwrap(),
        Reservation::Reserved
    );
    b.idempotency.release("f", "k").await.unwrap();
    assert_eq!(b.idempotency.lookup("f", "k").await.unwrap(), None);
    assert_eq!(
        b.idempotency.reserve("f", "k", "retry").await.unwrap(),
        Reservation::Reserved
    );
}

pub async fn records_list_newest_first_and_expire(b: &Backends) {
    for n in 0..4 {
        b.runs
            .save(&record(&format!("r{n}"), RunState::Succeeded))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let ids = |records: Vec<RunRecord>| records.into_iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(
        ids(b.runs.list("f", 10).await.unwrap()),
        ["r3", "r2", "r1", "r0"]
    );
    assert_eq!(ids(b.runs.list("f", 2).await.unwrap()), ["r3", "r2"]);
    assert!(b.runs.list("g", 10).await.unwrap().is_empty());
    // A rewrite updates the record, not the list.
    b.runs.save(&record("r1", RunState::Failed)).await.unwrap();
    assert_eq!(
        b.runs.get("r1").await.unwrap().unwrap().status,
        RunState::Failed
    );
    assert_eq!(b.runs.list("f", 10).await.unwrap().len(), 4);
    tokio::time::sleep(RETENTION + Duration::from_millis(300)).await;
    assert!(
        b.runs.get("r0").await.unwrap().is_none(),
        "kept past retention"
    );
    assert!(b.runs.list("f", 10).await.unwrap().is_empty());
}

pub async fn pages_walk_every_record_once_newest_first(b: &Backends) {
    // Before any run: an empty page, not an error.
    let empty = b.runs.page(&RunFilter::default(), None, 50).await.unwrap();
    assert!(empty.data.is_empty() && empty.next_cursor.is_none());
    // Saved in bursts, so many share a millisecond: ties must page cleanly too.
    let mut saved = Vec::new();
    for n in 0..600u32 {
        let id = format!("p{n:04}");
        let mut r = record(
            &id,
            if n.is_multiple_of(3) {
                RunState::Failed
            } else {
                RunState::Succeeded
            },
        );
        r.flow = if n.is_multiple_of(2) {
            "f".into()
        } else {
            "g".into()
        };
        b.runs.save(&r).await.unwrap();
        saved.push(r);
    }
    let walk = |filter: RunFilter, limit: usize| async move {
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = b
                .runs
                .page(&filter, cursor.as_deref(), limit)
                .await
                .unwrap();
            assert!(page.data.len() <= limit);
            seen.extend(page.data.into_iter().map(|r| (r.id, r.flow, r.status)));
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => return seen,
            }
        }
    };
    let all = walk(RunFilter::default(), 250).await;
    let mut ids: Vec<&str> = all.iter().map(|(id, _, _)| id.as_str()).collect();
    assert_eq!(ids.len(), 600, "every record once");
    ids.dedup();
    assert_eq!(ids.len(), 600, "no duplicates");
    // Newest first: the ids were saved in increasing order.
    let mut expected: Vec<String> = (0..600).rev().map(|n| format!("p{n:04}")).collect();
    // Runs saved within one millisecond come back in reverse id order, which is the same.
    assert_eq!(
        all.iter().map(|(id, _, _)| id.clone()).collect::<Vec<_>>(),
        expected
    );
    // Small pages read each flow's index in batches, merged across flows.
    let small = walk(RunFilter::default(), 13).await;
    assert_eq!(
        small
            .iter()
            .map(|(id, _, _)| id.clone())
            .collect::<Vec<_>>(),
        expected
    );
    let failed_in_f = walk(
        RunFilter {
            flow: Some("f".into()),
            status: Some(RunState::Failed),
            ..RunFilter::default()
        },
        7,
    )
    .await;
    expected.retain(|id| {
        let n: usize = id[1..].parse().unwrap();
        n.is_multiple_of(2) && n.is_multiple_of(3)
    });
    assert_eq!(
        failed_in_f
            .iter()
            .map(|(id, _, _)| id.clone())
            .collect::<Vec<_>>(),
        expected
    );
    assert!(
        failed_in_f
            .iter()
            .all(|(_, flow, status)| flow == "f" && *status == RunState::Failed)
    );
}

fn subscription(id: &str, flows: &[&str]) -> flowgate::backend::webhooks::Subscription {
    serde_json::from_value(json!({
        "id": id, "name": id, "url": "https://example.com/", "events": ["*"],
        "flows": flows, "format": "json", "enabled": true,
        "created_at": "2026-01-01T00:00:00.000Z", "updated_at": "2026-01-01T00:00:00.000Z",
    }))
    .unwrap()
}

fn outbox_entry(
    id: &str,
    subscription: &str,
    due_ms: u64,
) -> flowgate::backend::webhooks::Delivery {
    serde_json::from_value(json!({
        "id": id, "subscription": subscription, "message_id": format!("msg_{id}"),
        "event": "run.ended", "flow": "f", "payload": "{}", "format": "json",
        "trigger": "auto", "attempts": 0, "state": "pending",
        "created_ms": due_ms, "due_ms": due_ms,
    }))
    .unwrap()
}

fn attempt_entry(
    delivery: &flowgate::backend::webhooks::Delivery,
    n: u32,
) -> flowgate::backend::webhooks::Attempt {
    serde_json::from_value(json!({
        "delivery_id": delivery.id, "message_id": delivery.message_id, "event": delivery.event,
        "attempt": n, "trigger": "auto", "outcome": "failed", "at": "2026-01-01T00:00:00.000Z",
        "duration_ms": 1, "url": "https://example.com/", "request_headers": {}, "payload": "{}",
        "response_status": 500, "response_headers": {}, "response_body": "", "response_truncated": false,
    }))
    .unwrap()
}

async fn a_subscription_limit_holds_under_concurrent_writers(backends: &Backends) {
    use flowgate::backend::webhooks::{Refusal, Subscription, Write};
    let store = backends.webhooks.clone();
    let before = store.version().await.unwrap();
    // Ten writers race to add a subscription when at most three may exist.
    let writers = (0..10).map(|n| {
        let store = store.clone();
        tokio::spawn(async move {
            let id = format!("wh_{n}");
            let wanted = subscription(&id, &["f"]);
            let decide = move |current: Option<&Subscription>, others: &[Subscription]| {
                assert!(current.is_none());
                if others.len() >= 3 {
                    return Err(Refusal::Conflict {
                        code: "too_many_subscriptions",
                        message: "full".into(),
                    });
                }
                Ok(Write::Put {
                    subscription: Box::new(wanted.clone()),
                    reset_failures: true,
                })
            };
            store.change(&id, &decide).await.unwrap().is_ok()
        })
    });
    let mut won = 0;
    for writer in writers {
        won += usize::from(writer.await.unwrap());
    }
    assert_eq!(won, 3);
    let stored = store.subscriptions().await.unwrap();
    assert_eq!(stored.len(), 3);
    assert!(store.version().await.unwrap() >= before + 3);
    // Failures count up, a success resets them; a delete removes it.
    let id = stored[0].0.id.clone();
    let delivery = outbox_entry("d0", &id, now_ms());
    for expected in 1..=3 {
        let failed = attempt_entry(&delivery, expected);
        let count = store.record_attempt(&delivery, &failed, false).await;
        assert_eq!(count.unwrap(), expected);
    }
    assert_eq!(store.subscriptions().await.unwrap()[0].1, 3);
    let succeeded = attempt_entry(&delivery, 4);
    let count = store.record_attempt(&delivery, &succeeded, true).await;
    assert_eq!(count.unwrap(), 0);
    assert_eq!(store.attempts(&id, None, 10).await.unwrap().data.len(), 4);
    let delete = |_: Option<&Subscription>, _: &[Subscription]| Ok(Write::Delete);
    assert!(store.change(&id, &delete).await.unwrap().is_ok());
    assert_eq!(store.subscriptions().await.unwrap().len(), 2);
}

async fn a_claimed_delivery_put_back_waits_until_its_new_time(backends: &Backends) {
    use flowgate::backend::webhooks::DeliveryState;
    let store = &backends.webhooks;
    let now = now_ms();
    store
        .enqueue(&[
            outbox_entry("d1", "wh_a", now),
            outbox_entry("d2", "wh_b", now),
        ])
        .await
        .unwrap();
    let lease = Duration::from_secs(60);
    let claimed = store.claim(now_ms(), lease, 10).await.unwrap();
    assert_eq!(claimed.len(), 2);
    // d1 goes back for later, d2 for at once; an unknown id changes nothing.
    let put_back = [
        ("d1".to_owned(), now_ms() + 300),
        ("d2".to_owned(), now_ms()),
        ("nope".to_owned(), now_ms()),
    ];
    store.defer(&put_back).await.unwrap();
    let again = store.claim(now_ms(), lease, 10).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].id, "d2");
    assert_eq!(again[0].attempts, 0, "put back unattempted");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let later = store.claim(now_ms(), lease, 10).await.unwrap();
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].id, "d1");
    // A delivery that ended meanwhile is not put back.
    let mut done = later[0].clone();
    done.attempts = 1;
    done.state = DeliveryState::Succeeded;
    store.finish(&done, None).await.unwrap();
    store.defer(&[("d1".to_owned(), now_ms())]).await.unwrap();
    assert!(store.claim(now_ms(), lease, 10).await.unwrap().is_empty());
    assert_eq!(store.outbox_depth().await.unwrap(), 1, "d2, leased");
}

async fn an_outbox_delivery_is_stored_once_and_leased(backends: &Backends) {
    use flowgate::backend::webhooks::DeliveryState;
    let store = &backends.webhooks;
    let now = now_ms();
    let due = outbox_entry("d1", "wh_a", now);
    let later = outbox_entry("d2", "wh_a", now + 60_000);
    let stored = store.enqueue(&[due.clone(), later.clone()]).await.unwrap();
    assert_eq!(stored, ["d1", "d2"]);
    // The same delivery from another replica is not stored again.
    let again = [due.clone(), outbox_entry("d3", "wh_a", now + 60_000)];
    assert_eq!(store.enqueue(&again).await.unwrap(), ["d3"]);
    assert_eq!(store.outbox_depth().await.unwrap(), 3);

    let lease = Duration::from_millis(400);
    let claimed = store.claim(now_ms(), lease, 10).await.unwrap();
    assert_eq!(claimed, vec![due.clone()], "only what is due");
    assert!(
        store.claim(now_ms(), lease, 10).await.unwrap().is_empty(),
        "leased"
    );
    // A dispatcher that dies: the lease runs out and the delivery is claimed again.
    tokio::time::sleep(lease + Duration::from_millis(100)).await;
    let again = store.claim(now_ms(), lease, 10).await.unwrap();
    assert_eq!(again, vec![due.clone()]);

    // A failed attempt reschedules it and is logged; a success retires it.
    let mut retried = due.clone();
    retried.attempts = 1;
    retried.due_ms = now_ms();
    store
        .finish(&retried, Some(&attempt_entry(&retried, 1)))
        .await
        .unwrap();
    let claimed = store.claim(now_ms(), lease, 10).await.unwrap();
    assert_eq!(claimed[0].attempts, 1);
    let mut done = claimed[0].clone();
    done.attempts = 2;
    done.state = DeliveryState::Succeeded;
    store
        .finish(&done, Some(&attempt_entry(&done, 2)))
        .await
        .unwrap();
    assert_eq!(
        store.outbox_depth().await.unwrap(),
        2,
        "only the later ones wait"
    );
    assert_eq!(
        store.delivery("d1").await.unwrap().unwrap().state,
        DeliveryState::Succeeded
    );
    assert!(store.delivery("nope").await.unwrap().is_none());

    // The log pages newest first.
    let first = store.attempts("wh_a", None, 1).await.unwrap();
    assert_eq!(first.data[0].attempt, 2);
    let second = store
        .attempts("wh_a", first.next_cursor.as_deref(), 1)
        .await
        .unwrap();
    assert_eq!(second.data[0].attempt, 1);
    assert!(second.next_cursor.is_none());
}

async fn skipped_deliveries_wait_for_a_recover_and_the_log_is_pruned(backends: &Backends) {
    use flowgate::backend::webhooks::{DeliveryState, Subscription, Write};
    let store = &backends.webhooks;
    let wanted = subscription("wh_s", &[]);
    let put = move |_: Option<&Subscription>, _: &[Subscription]| {
        Ok(Write::Put {
            subscription: Box::new(wanted.clone()),
            reset_failures: false,
        })
    };
    store.change("wh_s", &put).await.unwrap().unwrap();
    let old = now_ms() - 10_000;
    let mut skipped = Vec::new();
    for (n, created) in [(1, old), (2, now_ms())] {
        let mut delivery = outbox_entry(&format!("s{n}"), "wh_s", created);
        delivery.state = DeliveryState::Skipped;
        store
            .finish(&delivery, Some(&attempt_entry(&delivery, 0)))
            .await
            .unwrap();
        skipped.push(delivery);
    }
    assert_eq!(store.outbox_depth().await.unwrap(), 0);
    assert!(
        store
            .claim(now_ms(), Duration::from_secs(5), 10)
            .await
            .unwrap()
            .is_empty()
    );
    // Recover from a time: only the newer one.
    assert_eq!(store.recover("wh_s", old + 1).await.unwrap(), 1);
    let claimed = store
        .claim(now_ms(), Duration::from_secs(5), 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].id, "s2");
    assert_eq!(claimed[0].state, DeliveryState::Pending);
    // Pruning forgets log entries and skipped deliveries before the cutoff.
    assert_eq!(
        store.attempts("wh_s", None, 10).await.unwrap().data.len(),
        2
    );
    store.prune(now_ms() + 1).await.unwrap();
    assert!(
        store
            .attempts("wh_s", None, 10)
            .await
            .unwrap()
            .data
            .is_empty()
    );
    assert_eq!(store.recover("wh_s", 0).await.unwrap(), 0);
}

fn event(id: &str, key: &str) -> OutboxEvent {
    OutboxEvent {
        id: id.to_owned(),
        key: key.to_owned(),
        message: format!(r#"{{"id": "{id}"}}"#),
    }
}

/// Claims every event due now (leased for `lease`), by id.
async fn claim_events(b: &Backends, lease: Duration) -> Vec<ClaimedEvent> {
    let mut claimed = b.webhooks.claim_events(now_ms(), lease, 100).await.unwrap();
    claimed.sort_by(|a, b| a.id.cmp(&b.id));
    claimed
}

fn ids(events: &[ClaimedEvent]) -> Vec<&str> {
    events.iter().map(|e| e.id.as_str()).collect()
}

/// The events a transition owes are written with it, whatever the
/// transition; each is kept once, leased to one fan-out at a time, and
/// gone once acknowledged.
async fn events_are_written_with_their_transitions_and_leased(b: &Backends) {
    let lease = Duration::from_secs(30);
    // Accepted, with its run.queued.
    b.queue
        .enqueue_with(
            &input("r1"),
            Some(&record("r1", RunState::Queued)),
            &[event("msg_q1", "r1")],
        )
        .await
        .unwrap();
    // A record written with events; an event written twice is kept once.
    b.runs
        .save_with(
            &record("r2", RunState::Running),
            vec![event("msg_s2", "r2"), event("msg_s2", "r2")],
        )
        .await
        .unwrap();
    b.webhooks
        .append_events(&[event("msg_flow", "msg_flow"), event("msg_flow", "msg_flow")])
        .await
        .unwrap();
    assert_eq!(b.webhooks.events_depth().await.unwrap(), 3);
    let claimed = claim_events(b, lease).await;
    assert_eq!(ids(&claimed), ["msg_flow", "msg_q1", "msg_s2"]);
    assert_eq!(claimed[1].message, r#"{"id": "msg_q1"}"#);
    // Leased: nobody else takes them meanwhile.
    assert!(claim_events(b, lease).await.is_empty());
    // Acknowledged ones are gone; one not acknowledged comes back after its lease.
    b.webhooks.ack_events(&claimed[..2]).await.unwrap();
    let back = b
        .webhooks
        .claim_events(now_ms() + 31_000, lease, 100)
        .await
        .unwrap();
    assert_eq!(ids(&back), ["msg_s2"]);
    b.webhooks.ack_events(&back).await.unwrap();
    // The run's completion carries its run.ended, in the same step.
    let delivery = claim_one(b).await;
    b.queue
        .complete_with(
            &delivery.id,
            Some(&record("r1", RunState::Succeeded)),
            &[event("msg_e1", "r1")],
        )
        .await
        .unwrap();
    assert_eq!(
        b.runs.get("r1").await.unwrap().unwrap().status,
        RunState::Succeeded
    );
    // A retry and a dead letter carry theirs too.
    b.queue.enqueue(&input("r3"), None).await.unwrap();
    let delivery = claim_one(b).await;
    b.queue
        .retry_later_with(
            &delivery.id,
            &input("r3"),
            now_ms(),
            Some(&record("r3", RunState::Running)),
            &[event("msg_step3", "r3")],
        )
        .await
        .unwrap();
    b.queue.requeue_due_retries(10).await.unwrap();
    let delivery = claim_one(b).await;
    b.queue
        .dead_letter_with(
            &delivery,
            "given up",
            &record("r3", RunState::Aborted),
            &[event("msg_dead3", "r3")],
        )
        .await
        .unwrap();
    let claimed = claim_events(b, lease).await;
    assert_eq!(ids(&claimed), ["msg_dead3", "msg_e1", "msg_step3"]);
    b.webhooks.ack_events(&claimed).await.unwrap();
    assert_eq!(b.webhooks.events_depth().await.unwrap(), 0);
    assert_nothing_left(b, "a").await;
}

/// Runs every contract test listed against each backend named.
macro_rules! conformance {
    ($($backend:ident),+ => $tests:tt) => {
        $( conformance!(@one $backend $tests); )+
    };
    (@one $backend:ident [$($test:ident),* $(,)?]) => {
        mod $backend {
            $(
                #[tokio::test]
                async fn $test() {
                    let subject = super::$backend().await;
                    super::$test(&subject).await;
                }
            )*
        }
    };
}

conformance!(redis, redis_cluster, embedded, postgres => [
    a_run_is_delivered_until_it_is_acknowledged,
    an_extended_lease_keeps_a_run_from_being_taken_over,
    claim_hands_out_no_more_than_asked,
    a_retry_waits_until_due_then_resumes,
    a_dead_lettered_run_leaves_the_queue,
    undecodable_queued_runs_are_dead_lettered_and_the_rest_delivered,
    queue_transitions_write_the_run_record,
    an_idempotency_key_is_reserved_once_under_concurrency,
    a_released_key_can_be_reserved_again,
    records_list_newest_first_and_expire,
    pages_walk_every_record_once_newest_first,
    a_subscription_limit_holds_under_concurrent_writers,
    an_outbox_delivery_is_stored_once_and_leased,
    a_claimed_delivery_put_back_waits_until_its_new_time,
    skipped_deliveries_wait_for_a_recover_and_the_log_is_pruned,
    events_are_written_with_their_transitions_and_leased,
]);
