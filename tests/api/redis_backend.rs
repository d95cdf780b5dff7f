//! The Redis backend's own behaviour, seen in its keys: dead letters and
//! undecodable stream entries. Everything a backend must do whatever it is
//! is in `conformance.rs`.

use std::time::Duration;

use flowgate::backend::RunQueue as _;
use flowgate::backend::redis::RedisQueue;
use flowgate::engine::RunState;

use crate::helpers::*;
use crate::queue::{async_app_without_worker, runs_received};

#[tokio::test]
async fn a_run_that_keeps_killing_its_workers_is_dead_lettered() {
    let receiver = Receiver::start(&[], Duration::ZERO).await;
    let app = async_app_without_worker(&receiver).await;
    let response = app.post_json("a", r#"{"n": 1}"#).await;
    let run_id = response.headers()["x-flowgate-run-id"]
        .to_str()
        .unwrap()
        .to_owned();
    // As if five workers had died running it, the last one holding it now.
    let mut record = app.record_when(&run_id, |r| r.status == "queued").await;
    record.interrupted = flowgate::worker::MAX_ATTEMPTS;
    record.status = RunState::Running;
    app.store().save(&record).await.unwrap();
    let pool = flowgate::backend::redis::connect(&app.redis.url()).unwrap();
    let queue = RedisQueue::with_pool(
        pool.clone(),
        flowgate::backend::redis::RedisStore::with_pool(pool, Duration::from_secs(3600)),
    );
    queue.ensure_group().await.unwrap();
    let held = queue
        .claim("dead-worker", 1, Duration::from_millis(100))
        .await
        .unwrap()
        .runs;
    assert_eq!(held.len(), 1);
    app.start_worker(Duration::from_secs(1));
    let record = app.record_when(&run_id, |r| r.status == "aborted").await;
    assert!(record.error.unwrap().message.starts_with("dead-lettered"));
    assert!(receiver.requests().is_empty());
    let metrics = format!("http://{}/metrics", app.addr);
    let aborted = "flowgate_runs_total{flow=\"a\",status=\"aborted\"} 1";
    app.text_when(&metrics, aborted).await;
    let (dead, depth) = dead_letters_and_depth(&app).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["run_id"], run_id.as_str());
    assert_eq!(depth, 0);
}

/// The dead-letter list (as JSON) and the stream's length.
async fn dead_letters_and_depth(app: &TestApp) -> (Vec<serde_json::Value>, u64) {
    let pool = flowgate::backend::redis::connect(&app.redis.url()).unwrap();
    let mut conn = pool.get().await.unwrap();
    let dead: Vec<String> = deadpool_redis::redis::cmd("LRANGE")
        .arg(flowgate::backend::redis::keys::DEAD_LETTER_KEY)
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .unwrap();
    let depth: u64 = deadpool_redis::redis::cmd("XLEN")
        .arg(flowgate::backend::redis::keys::STREAM_KEY)
        .query_async(&mut conn)
        .await
        .unwrap();
    let dead = dead
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    (dead, depth)
}

#[tokio::test]
async fn an_entry_no_worker_can_decode_is_dead_lettered_without_holding_up_others() {
    let receiver = Receiver::start(&[], Duration::ZERO).await;
    let app = async_app_without_worker(&receiver).await;
    let first = app.post_json("a", r#"{"n": 1}"#).await;
    assert_eq!(first.status(), 202);
    // A run whose queued input is unreadable (as a corrupted or foreign
    // entry would be), with its record, between two good runs.
    let mut poisoned = app
        .record_when(
            first.headers()["x-flowgate-run-id"].to_str().unwrap(),
            |r| r.status == "queued",
        )
        .await;
    poisoned.id = "poisoned-run".into();
    app.store().save(&poisoned).await.unwrap();
    let pool = flowgate::backend::redis::connect(&app.redis.url()).unwrap();
    let mut conn = pool.get().await.unwrap();
    let _: String = deadpool_redis::redis::cmd("XADD")
        .arg(flowgate::backend::redis::keys::STREAM_KEY)
        .arg("*")
        .arg("input")
        .arg(format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000)))
        .arg("run")
        .arg("poisoned-run")
        .query_async(&mut conn)
        .await
        .unwrap();
    let second = app.post_json("a", r#"{"n": 2}"#).await;
    assert_eq!(second.status(), 202);
    // A subscriber hears of the run given up like of any other that ended.
    let events = Receiver::start(&[], Duration::ZERO).await;
    crate::webhooks::subscribe(
        &app,
        serde_json::json!({"name": "ended", "url": events.url("/"), "events": ["run.ended"]}),
    )
    .await;

    app.start_worker(Duration::from_secs(15));
    assert_eventually(Duration::from_secs(10), "both good runs ran", || {
        receiver.requests().len() == 2
    })
    .await;
    let record = app
        .record_when("poisoned-run", |r| r.status == "aborted")
        .await;
    let reason = record.error.unwrap().message;
    assert!(reason.contains("cannot be decoded"), "{reason}");
    for response in [first, second] {
        let run_id = response.headers()["x-flowgate-run-id"].to_str().unwrap();
        app.record_when(run_id, |r| r.status == "succeeded").await;
    }
    let (dead, depth) = dead_letters_and_depth(&app).await;
    assert_eq!(dead.len(), 1);
    let letter = &dead[0];
    assert_eq!(letter["run_id"], "poisoned-run");
    assert!(
        letter["reason"].as_str().unwrap().contains("nested"),
        "{letter}"
    );
    // Delivered once: every good run reached the receiver exactly once.
    assert!(runs_received(&receiver).values().all(|&n| n == 1));
    assert_eq!(depth, 0);
    let metrics = format!("http://{}/metrics", app.addr);
    let aborted = "flowgate_runs_total{flow=\"a\",status=\"aborted\"} 1";
    app.text_when(&metrics, aborted).await;
    assert_eventually(
        Duration::from_secs(10),
        "run.ended of the poisoned run",
        || {
            events.requests().iter().any(|r| {
                let message = r.json();
                message["type"] == "run.ended"
                    && message["data"]["run_id"] == "poisoned-run"
                    && message["data"]["status"] == "aborted"
            })
        },
    )
    .await;
}

/// A gateway on `app`'s store, started, ready and stopped; what it logged.
pub async fn startup_log(app: &TestApp) -> String {
    let port = free_port();
    let mut child = app
        .process(
            &format!("[server]\nlisten = \"127.0.0.1:{port}\"\n"),
            &["serve", "--no-worker"],
        )
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    app.text_when(&format!("http://127.0.0.1:{port}/readyz"), "ready")
        .await;
    // The check runs beside start-up; give it its two-second budget.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    terminate_and_read(&mut child)
}

fn terminate_and_read(child: &mut std::process::Child) -> String {
    use std::io::Read as _;
    let _ = child.kill();
    let _ = child.wait();
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    log
}

#[tokio::test]
async fn a_redis_that_may_evict_is_named_at_start() {
    let app = spawn_app(&[]).await;
    assert!(
        !startup_log(&app).await.contains("maxmemory-policy"),
        "noeviction, Redis's default, is safe"
    );
    set_policy(app.redis.port(), "allkeys-lru");
    let log = startup_log(&app).await;
    assert!(
        log.contains("maxmemory-policy is `allkeys-lru`") && log.contains("noeviction"),
        "{log}"
    );
}

fn set_policy(port: u16, policy: &str) {
    let set = std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(["config", "set", "maxmemory-policy", policy])
        .output()
        .unwrap();
    assert!(set.status.success());
}

/// On a cluster every node listed is asked, not only the first.
async fn a_cluster_node_that_may_evict_is_named_at_start() {
    let app = spawn_app(&[]).await;
    assert!(!startup_log(&app).await.contains("maxmemory-policy"));
    let urls = app.cluster.as_ref().unwrap().urls();
    let last: u16 = urls
        .last()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    set_policy(last, "volatile-lru");
    let log = startup_log(&app).await;
    assert!(
        log.contains("maxmemory-policy of a cluster node is `volatile-lru`"),
        "{log}"
    );
}

/// A cluster node configured as a single Redis is named at start.
async fn a_cluster_configured_as_one_redis_is_named_at_start() {
    let app = spawn_app(&[]).await;
    let mut child = app
        .process(
            &format!("[server]\nlisten = \"127.0.0.1:{}\"\n", free_port()),
            &["serve", "--no-worker"],
        )
        .env("FLOWGATE_REDIS__CLUSTER", "false")
        .env("FLOWGATE_REDIS__NODES", "[]")
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The check runs beside start-up within its two-second budget.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let log = terminate_and_read(&mut child);
    assert!(
        log.contains("redis.url is a node of a Redis Cluster but redis.cluster is false"),
        "{log}"
    );
}

crate::on_cluster!(
    a_cluster_node_that_may_evict_is_named_at_start,
    a_cluster_configured_as_one_redis_is_named_at_start,
);
