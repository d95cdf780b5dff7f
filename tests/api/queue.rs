//! Async runs: queued on the test's own Redis, executed by workers, surviving
//! Redis restarts and workers killed mid-run.

use std::collections::HashMap;
use std::time::Duration;

use flowgate::engine::RunState;
use flowgate::worker::Outcome;

use crate::helpers::*;

/// An async flow that posts `{run, n}` to the receiver.
pub fn async_flow(url: &str, response: &str) -> String {
    format!(
        r#"
status = "live"
[trigger]
ref = "web1"
mode = "async"
{response}
[[steps]]
ref = "notify"
kind = "http"
url = "{url}"
body = {{ run = "{{{{ run.id }}}}", n = "{{{{ web1.n }}}}" }}
timeout = "30s"
"#
    )
}

/// A gateway without workers serving flow `a`, an async flow calling `receiver`.
pub async fn async_app_without_worker(receiver: &Receiver) -> TestApp {
    let options = AppOptions {
        worker: false,
        ..Default::default()
    };
    spawn_app_with(&[("a", async_flow(&receiver.url("/hook"), ""))], options).await
}

fn sync_flow() -> String {
    "status = \"live\"\n[trigger]\nref = \"web1\"\n".to_owned()
}

/// Run ids the receiver was sent, with how many times each arrived.
pub fn runs_received(receiver: &Receiver) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for request in receiver.requests() {
        *counts
            .entry(request.json()["run"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    counts
}

async fn async_flow_answers_at_once_then_runs() {
    let receiver = Receiver::start(&[], Duration::ZERO).await;
    let app = spawn_app(&[("a", async_flow(&receiver.url("/hook"), ""))]).await;
    let response = app.post_json("a", r#"{"n": 7}"#).await;
    assert_eq!(response.status(), 202);
    let run_id = response.headers()["x-flowgate-run-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        body,
        serde_json::json!({"run_id": run_id, "status": "queued"})
    );
    assert_eventually(
        Duration::from_secs(10),
        "the run reached the receiver",
        || receiver.requests().len() == 1,
    )
    .await;
    assert_eq!(
        receiver.requests()[0].json(),
        serde_json::json!({"run": run_id, "n": 7})
    );
}

async fn async_response_template_sees_trigger_and_run() {
    let receiver = Receiver::start(&[], Duration::ZERO).await;
    let response = r#"[response]
status = 200
body_inline = '{"accepted": {{ web1.n }}, "status": "{{ run.status }}"}'"#;
    let app = spawn_app(&[("a", async_flow(&receiver.url("/hook"), response))]).await;
    let answer = app.post_json("a", r#"{"n": 3}"#).await;
    assert_eq!(answer.status(), 200);
    assert_eq!(
        answer.text().await.unwrap(),
        r#"{"accepted": 3, "status": "queued"}"#
    );
}

async fn two_hundred_async_runs_execute_exactly_once() {
    let receiver = Receiver::start(&[], Duration::ZERO).await;
    let app = spawn_app(&[("a", async_flow(&receiver.url("/hook"), ""))]).await;
    // A second worker competes for the same queue.
    app.start_worker(Duration::from_secs(15));
    let mut accepted = Vec::new();
    let mut pending = Vec::new();
    for n in 0..200 {
        let (client, url, token) = (app.client.clone(), app.url("a"), app.token("a"));
        pending.push(tokio::spawn(async move {
            client
                .post(url)
                .bearer_auth(token)
                .json(&serde_json::json!({"n": n}))
                .send()
                .await
                .unwrap()
        }));
    }
    for task in pending {
        let response = task.await.unwrap();
        assert_eq!(response.status(), 202);
        accepted.push(
            response.headers()["x-flowgate-run-id"]
                .to_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eventually(
        Duration::from_secs(30),
        "200 runs reached the receiver",
        || receiver.requests().len() >= 200,
    )
    .await;
    // Once the queue is empty no run can be delivered again: count then.
    app.drained().await;
    let counts = runs_received(&receiver);
    assert_eq!(counts.len(), 200);
    for run_id in &accepted {
        assert_eq!(counts.get(run_id), Some(&1), "run {run_id}");
    }
}

#[tokio::test]
async fn redis_down_refuses_async_with_503_but_sync_still_answers() {
    let receiver = Receiver::start(&[], Duration::ZERO).await;
    let mut app = spawn_app(&[
        ("a", async_flow(&receiver.url("/hook"), "")),
        ("s", sync_flow()),
    ])
    .await;
    app.redis.stop();
    let response = app.post_json("a", r#"{"n": 1}"#).await;
    assert_eq!(response.headers()["retry-after"], "5");
    assert!(!response.headers().contains_key("x-flowgate-run-id"));
    envelope(response, 503, "queue_unavailable").await;
    assert_eq!(app.post_json("s", "{}").await.status(), 200);
    let ready = app.get("/readyz").await;
    envelope(ready, 503, "not_ready").await;
    // Back up: accepted again, and executed.
    app.redis.restart();
    let response = app.post_json("a", r#"{"n": 2}"#).await;
    assert_eq!(response.status(), 202);
    assert_eventually(
        Duration::from_secs(15),
        "the run after the restart executed",
        || receiver.requests().len() == 1,
    )
    .await;
    assert_eq!(receiver.requests()[0].json()["n"], 2);
}

#[tokio::test]
async fn runs_accepted_before_a_redis_restart_still_execute() {
    let receiver = Receiver::start(&[], Duration::ZERO).await;
    let options = AppOptions {
        worker: false,
        redis_aof: true,
        ..Default::default()
    };
    let mut app = spawn_app_with(&[("a", async_flow(&receiver.url("/hook"), ""))], options).await;
    let mut accepted = Vec::new();
    for n in 0..20 {
        let response = app.post_json("a", &format!(r#"{{"n": {n}}}"#)).await;
        assert_eq!(response.status(), 202);
        accepted.push(
            response.headers()["x-flowgate-run-id"]
                .to_str()
                .unwrap()
                .to_owned(),
        );
    }
    app.redis.stop();
    app.redis.restart();
    app.start_worker(Duration::from_secs(15));
    assert_eventually(Duration::from_secs(20), "all 20 runs executed", || {
        receiver.requests().len() >= 20
    })
    .await;
    let counts = runs_received(&receiver);
    for run_id in &accepted {
        assert_eq!(counts.get(run_id), Some(&1), "run {run_id}");
    }
}

#[tokio::test]
async fn a_run_of_a_killed_worker_is_taken_over() {
    killed_worker_is_taken_over().await;
}

crate::backend_tests!(takeover_on_postgres, Postgres: killed_worker_is_taken_over);

async fn killed_worker_is_taken_over() {
    // Every call takes 2 s, so the worker is killed while the run is in progress.
    let receiver = Receiver::start(&[], Duration::from_secs(2)).await;
    let app = async_app_without_worker(&receiver).await;
    let mut external = app.spawn_process("[worker]\nreclaim_after = \"2s\"\n", &["worker"]);
    let response = app.post_json("a", r#"{"n": 1}"#).await;
    assert_eq!(response.status(), 202);
    // The 45-second promise (docs/operations.md) counts from acceptance.
    let accepted_at = std::time::Instant::now();
    let promise = Duration::from_secs(45);
    let run_id = response.headers()["x-flowgate-run-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eventually(
        Duration::from_secs(20),
        "the external worker started the run",
        || receiver.requests().len() == 1,
    )
    .await;
    external.kill().unwrap(); // SIGKILL, mid-run
    external.wait().unwrap();
    app.start_worker(Duration::from_secs(2));
    assert_eventually(
        promise.saturating_sub(accepted_at.elapsed()),
        "another worker took the run over within 45 s of acceptance",
        || receiver.requests().len() == 2,
    )
    .await;
    assert!(accepted_at.elapsed() < promise);
    assert_eq!(receiver.requests()[1].json()["run"], run_id.as_str());
}

async fn metrics_count_requests_runs_and_queue_lag() {
    let receiver = Receiver::start(&[], Duration::ZERO).await;
    let app = spawn_app(&[
        ("a", async_flow(&receiver.url("/hook"), "")),
        ("s", sync_flow()),
    ])
    .await;
    assert_eq!(app.post_json("s", "{}").await.status(), 200);
    assert_eq!(app.post_json("s", "{oops").await.status(), 400);
    assert_eq!(app.post_json("a", r#"{"n": 1}"#).await.status(), 202);
    let unauthenticated = app.client.post(app.url("random-id")).send().await.unwrap();
    assert_eq!(unauthenticated.status(), 401);
    assert_eventually(Duration::from_secs(10), "the async run executed", || {
        receiver.requests().len() == 1
    })
    .await;
    let url = format!("http://{}/metrics", app.addr);
    app.text_when(
        &url,
        "flowgate_runs_total{flow=\"a\",status=\"succeeded\"} 1",
    )
    .await;
    // The run is counted when it ends, and leaves the queue right after.
    let text = app.text_when(&url, "flowgate_queue_depth 0").await;
    for expected in [
        "flowgate_requests_total{flow=\"s\",status=\"200\"} 1",
        "flowgate_requests_total{flow=\"s\",status=\"400\"} 1",
        "flowgate_requests_total{flow=\"a\",status=\"202\"} 1",
        "flowgate_requests_total{flow=\"unknown\",status=\"401\"} 1",
        "flowgate_runs_total{flow=\"s\",status=\"succeeded\"} 1",
        "flowgate_runs_total{flow=\"a\",status=\"succeeded\"} 1",
        "flowgate_queue_depth 0",
        "flowgate_queue_lag_seconds_count 1",
        "flowgate_queue_lag_seconds_bucket{le=\"45\"} 1",
    ] {
        assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
    }
}

#[tokio::test]
async fn sigterm_finishes_runs_in_flight_and_loses_none() {
    // Each call takes 1 s: some runs are in progress when SIGTERM arrives.
    let receiver = Receiver::start(&[], Duration::from_secs(1)).await;
    let app = async_app_without_worker(&receiver).await;
    let port = free_port();
    let extra = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nshutdown_grace = \"20s\"\n[worker]\nconcurrency = 2\nreclaim_after = \"2s\"\n"
    );
    let gateway = app.spawn_process(&extra, &["serve"]);
    let url = format!("http://127.0.0.1:{port}/v1/flow-webhook/a");
    app.text_when(&format!("http://127.0.0.1:{port}/healthz"), "ok")
        .await;
    let mut accepted = Vec::new();
    for n in 0..6 {
        let response = app
            .client
            .post(&url)
            .bearer_auth(app.token("a"))
            .json(&serde_json::json!({"n": n}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
        accepted.push(
            response.headers()["x-flowgate-run-id"]
                .to_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eventually(Duration::from_secs(10), "runs are in progress", || {
        !receiver.requests().is_empty()
    })
    .await;
    let status = terminate(gateway).await;
    assert!(status.success(), "{status:?}");
    // Runs the gateway did not start are still queued; another worker takes them.
    app.start_worker(Duration::from_secs(2));
    assert_eventually(
        Duration::from_secs(45),
        "every accepted run executed",
        || runs_received(&receiver).len() == 6,
    )
    .await;
    app.drained().await;
    let counts = runs_received(&receiver);
    for run_id in &accepted {
        assert_eq!(counts.get(run_id), Some(&1), "run {run_id}: {counts:?}");
    }
}

async fn step_retries_wait_in_the_delayed_queue_not_in_a_worker_slot() {
    let flaky = Receiver::start(&[503, 503], Duration::ZERO).await;
    let quick = Receiver::start(&[], Duration::ZERO).await;
    let retrying = format!(
        r#"
status = "live"
[trigger]
ref = "web1"
mode = "async"
[[steps]]
ref = "prep"
kind = "transform"
set = {{ n = "{{{{ web1.n * 10 }}}}" }}
[[steps]]
ref = "call"
kind = "http"
url = "{}"
body = {{ n = "{{{{ prep.n }}}}" }}
retry = {{ attempts = 3, backoff = "1s" }}
"#,
        flaky.url("/flaky")
    );
    let options = AppOptions {
        worker: false,
        ..Default::default()
    };
    let app = spawn_app_with(
        &[("r", retrying), ("q", async_flow(&quick.url("/quick"), ""))],
        options,
    )
    .await;
    app.start_worker_with(1, Duration::from_secs(15));
    let first = app.post_json("r", r#"{"n": 4}"#).await;
    let run_id = first.headers()["x-flowgate-run-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eventually(Duration::from_secs(10), "the first attempt", || {
        flaky.requests().len() == 1
    })
    .await;
    assert_eq!(app.post_json("q", r#"{"n": 1}"#).await.status(), 202);
    // The only slot is free during the backoff: the other run goes first.
    assert_eventually(Duration::from_secs(10), "the other run", || {
        quick.requests().len() == 1
    })
    .await;
    assert_eq!(
        flaky.requests().len(),
        1,
        "the retry did not wait for its backoff"
    );
    let waiting = app
        .record_when(&run_id, |r| r.next_attempt_at.is_some())
        .await;
    assert_eq!(waiting.status, "queued");
    let record = app.record_when(&run_id, |r| r.status == "succeeded").await;
    assert_eq!(flaky.requests().len(), 3);
    // The transform before the retried step ran once; its output was kept.
    for request in flaky.requests() {
        assert_eq!(request.json()["n"], 40);
    }
    let steps: Vec<(&str, &str, u32)> = record
        .steps
        .iter()
        .map(|s| (s.path.as_str(), s.status.as_str(), s.attempts))
        .collect();
    assert_eq!(
        steps,
        [
            ("prep", "succeeded", 1),
            ("call", "failed", 1),
            ("call", "failed", 2),
            ("call", "succeeded", 3)
        ]
    );
    assert!(
        record.steps[1]
            .error
            .as_deref()
            .unwrap()
            .contains("retrying in 1s"),
        "{:?}",
        record.steps[1].error
    );
    assert_eq!(record.attempt, 3);
    // The run's time is all of it: two backoffs of 1 s and 2 s at least,
    // from its first start, which its record keeps.
    let duration = record.duration_ms.unwrap();
    assert!(duration >= 3000, "{duration} ms");
    let started = humantime::parse_rfc3339(record.started_at.as_deref().unwrap()).unwrap();
    let first_step = humantime::parse_rfc3339(&record.steps[0].started_at).unwrap();
    assert!(started <= first_step, "{record:?}");
}

#[tokio::test]
async fn a_worker_process_exports_its_metrics() {
    let receiver = Receiver::start(&[], Duration::ZERO).await;
    let app = async_app_without_worker(&receiver).await;
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let worker = app.spawn_process("", &["worker", "--metrics-listen", &listen]);
    assert_eq!(app.post_json("a", r#"{"n": 1}"#).await.status(), 202);
    assert_eventually(
        Duration::from_secs(15),
        "the worker process ran the run",
        || receiver.requests().len() == 1,
    )
    .await;
    let ready = reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let ready: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(ready["status"], "ready", "{ready}");
    let url = format!("http://127.0.0.1:{port}/metrics");
    let text = app
        .text_when(
            &url,
            "flowgate_runs_total{flow=\"a\",status=\"succeeded\"} 1",
        )
        .await;
    assert!(
        text.contains("flowgate_runs_total{flow=\"a\",status=\"succeeded\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("flowgate_queue_lag_seconds_count 1"),
        "{text}"
    );
    let status = terminate(worker).await;
    assert!(status.success(), "{status:?}");
}

async fn a_worker_can_be_driven_one_run_at_a_time() {
    let receiver = Receiver::start(&[], Duration::ZERO).await;
    let app = async_app_without_worker(&receiver).await;
    let mut accepted = Vec::new();
    for n in 0..2 {
        let response = app.post_json("a", &format!(r#"{{"n": {n}}}"#)).await;
        accepted.push(
            response.headers()["x-flowgate-run-id"]
                .to_str()
                .unwrap()
                .to_owned(),
        );
    }
    let worker = app.worker(1, Duration::from_secs(15));
    for run_id in &accepted {
        let outcome = worker.try_execute_next().await.unwrap();
        assert_eq!(
            outcome,
            Outcome::Executed {
                run_id: run_id.clone(),
                status: RunState::Succeeded
            }
        );
    }
    assert_eq!(worker.try_execute_next().await.unwrap(), Outcome::Idle);
    assert_eq!(receiver.requests().len(), 2);
}

/// Bodies of every kind reach the worker as they were accepted: the queue
/// keeps a JSON body once, as its raw text, and every other body parsed. A
/// request whose repeated `Content-Type` headers disagree is read by its
/// first one, in the gateway and in the worker alike.
async fn queued_bodies_of_every_kind_run_as_accepted() {
    let receiver = Receiver::start(&[], Duration::ZERO).await;
    let flow = format!(
        r#"
status = "live"
[trigger]
ref = "web1"
mode = "async"
[[steps]]
ref = "notify"
kind = "http"
url = "{}"
body = {{ run = "{{{{ run.id }}}}", seen = "{{{{ web1 | tojson }}}}", raw = "{{{{ request.raw }}}}" }}
"#,
        receiver.url("/hook")
    );
    let app = spawn_app(&[("a", flow)]).await;
    let cases: [(&[&str], &str, serde_json::Value); 4] = [
        (
            &["application/json"],
            "{\"n\": 1, \"z\": [1, 2.5], \"a\": \"x\\\"y\\u00e9\"}",
            serde_json::json!({"n": 1, "z": [1, 2.5], "a": "x\"yé"}),
        ),
        (
            &["application/x-www-form-urlencoded"],
            "n=1&n=2",
            serde_json::json!({"n": ["1", "2"]}),
        ),
        (
            &["text/plain", "application/json"],
            "hello",
            serde_json::json!("hello"),
        ),
        (&[], "[true, null]", serde_json::json!([true, null])),
    ];
    let client = reqwest::Client::new();
    for (content_types, raw, parsed) in cases {
        let mut request = client
            .post(app.url("a"))
            .bearer_auth(app.token("a"))
            .body(raw);
        for content_type in content_types {
            request = request.header("content-type", *content_type);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 202, "{content_types:?}");
        let run_id = run_id(&response);
        let record = app
            .record_when(&run_id, |r| r.status == RunState::Succeeded)
            .await;
        assert_eq!(*record.body, parsed, "{content_types:?}");
        let sent = receiver
            .requests()
            .into_iter()
            .map(|r| r.json())
            .find(|r| r["run"] == run_id.as_str())
            .expect("the run reached the receiver");
        let seen: serde_json::Value = match &sent["seen"] {
            serde_json::Value::String(text) => serde_json::from_str(text).unwrap(),
            other => other.clone(),
        };
        assert_eq!(seen, parsed, "{content_types:?}");
        assert_eq!(
            serde_json::to_string(&seen).unwrap(),
            serde_json::to_string(&parsed).unwrap(),
            "the sender's key order is kept"
        );
        assert_eq!(sent["raw"], raw, "{content_types:?}");
    }
}

crate::on_all_backends!(
    queued_bodies_of_every_kind_run_as_accepted,
    async_flow_answers_at_once_then_runs,
    async_response_template_sees_trigger_and_run,
    two_hundred_async_runs_execute_exactly_once,
    metrics_count_requests_runs_and_queue_lag,
    step_retries_wait_in_the_delayed_queue_not_in_a_worker_slot,
    a_worker_can_be_driven_one_run_at_a_time,
);

crate::on_cluster!(
    queued_bodies_of_every_kind_run_as_accepted,
    async_flow_answers_at_once_then_runs,
    two_hundred_async_runs_execute_exactly_once,
    metrics_count_requests_runs_and_queue_lag,
    step_retries_wait_in_the_delayed_queue_not_in_a_worker_slot,
    killed_worker_is_taken_over,
);
