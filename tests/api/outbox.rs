//! Outbound events are never lost: every run that ends has its `run.ended`
//! delivered, under full load, across a SIGKILL of the gateway, and for a
//! subscription from the moment every replica knows it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::embedded::{command, serve};
use crate::helpers::*;

const SYNC_FLOW: &str = "status = \"live\"\n[trigger]\nref = \"w\"\n[[steps]]\nref = \"t\"\nkind = \"transform\"\nset = { n = \"{{ w.n }}\" }\n[response]\nbody_inline = \"{\\\"ok\\\": true}\"\n";
const ASYNC_FLOW: &str = "status = \"live\"\n[trigger]\nref = \"w\"\nmode = \"async\"\n[[steps]]\nref = \"t\"\nkind = \"transform\"\nset = { n = \"{{ w.n }}\" }\n";

/// The run ids of the `run.ended` deliveries `receiver` got, with each
/// delivery's `webhook-id`.
fn ended_runs(receiver: &Receiver) -> BTreeMap<String, BTreeSet<String>> {
    let mut runs: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for request in receiver.requests() {
        let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
        if body["type"] != "run.ended" {
            continue;
        }
        let run = body["data"]["run_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let id = request.headers["webhook-id"]
            .to_str()
            .unwrap_or_default()
            .to_owned();
        runs.entry(run).or_default().insert(id);
    }
    runs
}

/// Waits until `receiver` holds a `run.ended` for every run in `runs`.
async fn delivered_for(receiver: &Receiver, runs: &BTreeSet<String>, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let delivered = ended_runs(receiver);
        let missing = runs.iter().filter(|r| !delivered.contains_key(*r)).count();
        if missing == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} ended runs have no run.ended delivery after {within:?}",
            runs.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn subscribe_run_ended(app: &TestApp, receiver: &Receiver) {
    let body = json!({"name": "ended", "url": receiver.url("/"), "events": ["run.ended"]});
    crate::webhooks::subscribe(app, body).await;
}

async fn every_run_answered_under_load_has_its_run_ended_delivered() {
    let app = spawn_app(&[("s", SYNC_FLOW.to_owned()), ("a", ASYNC_FLOW.to_owned())]).await;
    let receiver = Receiver::start(&[], Duration::ZERO).await;
    subscribe_run_ended(&app, &receiver).await;
    let answered = Arc::new(Mutex::new(BTreeSet::new()));
    let until = Instant::now() + Duration::from_secs(2);
    let senders: Vec<_> = (0..24)
        .map(|i| {
            let flow = if i % 3 == 0 { "a" } else { "s" };
            let (client, url, token) = (app.client.clone(), app.url(flow), app.token(flow));
            let answered = answered.clone();
            tokio::spawn(async move {
                let mut n = 0;
                while Instant::now() < until {
                    n += 1;
                    let Ok(response) = client
                        .post(&url)
                        .bearer_auth(&token)
                        .header("content-type", "application/json")
                        .body(format!(r#"{{"n": {n}}}"#))
                        .send()
                        .await
                    else {
                        continue;
                    };
                    if response.status().is_success() {
                        let run = response.headers()["x-flowgate-run-id"]
                            .to_str()
                            .unwrap()
                            .to_owned();
                        answered.lock().unwrap().insert(run);
                    }
                }
            })
        })
        .collect();
    for sender in senders {
        sender.await.unwrap();
    }
    let answered = answered.lock().unwrap().clone();
    assert!(
        answered.len() > 100,
        "only {} runs answered",
        answered.len()
    );
    delivered_for(&receiver, &answered, Duration::from_secs(120)).await;
    let delivered = ended_runs(&receiver);
    let extra: Vec<_> = delivered
        .keys()
        .filter(|run| !answered.contains(*run))
        .collect();
    assert!(
        extra.is_empty(),
        "deliveries for runs never answered: {extra:?}"
    );
    // At least once, and here exactly once: one message id per run.
    assert!(delivered.values().all(|ids| ids.len() == 1));
}

async fn a_subscription_gets_what_happens_after_it_and_nothing_before() {
    let app = spawn_app(&[("s", SYNC_FLOW.to_owned())]).await;
    let early = Receiver::start(&[], Duration::ZERO).await;
    subscribe_run_ended(&app, &early).await;
    let before = app.post_json("s", r#"{"n": 1}"#).await;
    assert_eq!(before.status(), 200);
    let before = before.headers()["x-flowgate-run-id"]
        .to_str()
        .unwrap()
        .to_owned();
    delivered_for(
        &early,
        &BTreeSet::from([before.clone()]),
        Duration::from_secs(10),
    )
    .await;
    // A subscription created after that run ended never gets it ...
    let late = Receiver::start(&[], Duration::ZERO).await;
    subscribe_run_ended(&app, &late).await;
    // ... and gets every run from a second after its creation on.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut after = BTreeSet::new();
    for n in 0..5 {
        let response = app.post_json("s", &format!(r#"{{"n": {n}}}"#)).await;
        assert_eq!(response.status(), 200);
        after.insert(
            response.headers()["x-flowgate-run-id"]
                .to_str()
                .unwrap()
                .to_owned(),
        );
    }
    delivered_for(&late, &after, Duration::from_secs(10)).await;
    delivered_for(&early, &after, Duration::from_secs(10)).await;
    assert!(!ended_runs(&late).contains_key(&before));
}

const LOOP_FLOW: &str = r#"
status = "live"
[trigger]
ref = "w"
[response]
body_inline = '{"ok": true}'
[[steps]]
ref = "each"
kind = "for_each"
items = "{{ w.items }}"
steps = [
  { ref = "one", kind = "transform", set = { n = "{{ item }}" } },
]
"#;

async fn a_long_runs_step_events_are_all_delivered() {
    let app = spawn_app(&[("l", LOOP_FLOW.to_owned())]).await;
    let receiver = Receiver::start(&[], Duration::ZERO).await;
    let body =
        json!({"name": "steps", "url": receiver.url("/"), "events": ["step.ended", "run.ended"]});
    crate::webhooks::subscribe(&app, body).await;
    // More step events than a run's journal holds until its end.
    let items: Vec<u32> = (0..400).collect();
    let answer = app
        .post_json("l", &json!({ "items": items }).to_string())
        .await;
    assert_eq!(answer.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let requests = receiver.requests();
        let steps: BTreeSet<u64> = requests
            .iter()
            .map(|r| r.json())
            .filter(|m| m["type"] == "step.ended")
            .map(|m| m["data"]["sequence"].as_u64().unwrap())
            .collect();
        let ended = requests.iter().any(|r| r.json()["type"] == "run.ended");
        // The loop and each of its 400 inner steps.
        if steps.len() == 401 && ended {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} step.ended delivered, run.ended {ended}",
            steps.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

crate::on_all_backends!(
    every_run_answered_under_load_has_its_run_ended_delivered,
    a_subscription_gets_what_happens_after_it_and_nothing_before,
    a_long_runs_step_events_are_all_delivered,
);
crate::on_cluster!(every_run_answered_under_load_has_its_run_ended_delivered);

/// What the CLI prints for `args`, run in `dir`, which must succeed.
fn cli(dir: &tempfile::TempDir, args: &[&str]) -> String {
    let out = command(dir, args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The run records of `flow`: the ids of those that say the run ended,
/// and how many do not yet.
async fn ended_records(
    client: &reqwest::Client,
    base: &str,
    flow: &str,
) -> (BTreeSet<String>, usize) {
    let keys = flowgate::token::TokenKeys::new(&flowgate::config::Secret::new(
        SIGNING_KEY.as_bytes().to_vec(),
    ));
    let admin = keys
        .issue_admin("tester", flowgate::token::Role::Viewer, None)
        .unwrap();
    let mut ended = BTreeSet::new();
    let mut unfinished = 0;
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{base}/v1/admin/runs?flow={flow}&limit=250");
        if let Some(cursor) = &cursor {
            url.push_str(&format!("&cursor={cursor}"));
        }
        let page: Value = client
            .get(url)
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for run in page["data"].as_array().unwrap() {
            if ["succeeded", "failed", "timed_out", "aborted"]
                .contains(&run["status"].as_str().unwrap_or_default())
            {
                ended.insert(run["id"].as_str().unwrap().to_owned());
            } else {
                unfinished += 1;
            }
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return (ended, unfinished),
        }
    }
}

/// SIGKILL of the gateway in the middle of a load of sync and async runs,
/// then a restart: every run whose record says it ended has its
/// `run.ended` delivered, and a run delivered twice carries one `webhook-id`.
async fn killed_mid_load(storage: &str) {
    let receiver = Receiver::start(&[], Duration::ZERO).await;
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    write_files(
        &dir.path().join("flows"),
        &[("s.toml", SYNC_FLOW.into()), ("a.toml", ASYNC_FLOW.into())],
    );
    std::fs::create_dir_all(dir.path().join("templates")).unwrap();
    std::fs::write(
        dir.path().join("config.toml"),
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n{storage}\n[http]\nallow_private_networks = true\n[webhooks]\nallow_http = true\ntimeout = \"2s\"\n"
        ),
    )
    .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let mut server = serve(&dir);
    ready(&client, &base).await;
    cli(
        &dir,
        &[
            "webhooks",
            "create",
            "--name",
            "ended",
            "--url",
            &receiver.url("/"),
            "--events",
            "run.ended",
        ],
    );
    // Every replica checks subscriptions each second. (A delivery the
    // killed process held comes back after its lease: the 2 s attempt
    // timeout plus 5 s.)
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let tokens: Vec<(String, String)> = ["s", "a"]
        .iter()
        .map(|flow| {
            (
                format!("{base}/v1/flow-webhook/{flow}"),
                cli(&dir, &["token", "issue", flow]).trim().to_owned(),
            )
        })
        .collect();
    let senders: Vec<_> = (0..16)
        .map(|i| {
            let client = client.clone();
            let (url, token) = tokens[i % 2].clone();
            tokio::spawn(async move {
                for n in 0.. {
                    let sent = client
                        .post(&url)
                        .bearer_auth(&token)
                        .header("content-type", "application/json")
                        .body(format!(r#"{{"n": {n}}}"#))
                        .send()
                        .await;
                    if sent.is_err() {
                        return;
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.kill().unwrap();
    server.wait().unwrap();
    for sender in senders {
        sender.await.unwrap();
    }
    let server = serve(&dir);
    ready(&client, &base).await;
    let (mut ended, _) = ended_records(&client, &base, "s").await;
    // Async runs the dead process accepted run to their end after the restart.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (a, unfinished) = ended_records(&client, &base, "a").await;
        if unfinished == 0 {
            ended.extend(a);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{unfinished} async runs never ended"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(ended.len() > 50, "only {} runs ended", ended.len());
    delivered_for(&receiver, &ended, Duration::from_secs(120)).await;
    for (run, ids) in ended_runs(&receiver) {
        assert_eq!(ids.len(), 1, "run {run} was delivered as {ids:?}");
    }
    let mut server = server;
    server.kill().unwrap();
    server.wait().unwrap();
}

#[tokio::test]
async fn embedded_a_sigkill_mid_load_loses_no_run_ended() {
    killed_mid_load("[storage]\nbackend = \"embedded\"\npath = \"data/flowgate.db\"").await;
}

#[tokio::test]
async fn redis_a_sigkill_mid_load_loses_no_run_ended() {
    let redis = RedisServer::start(true);
    killed_mid_load(&format!(
        "[storage]\nbackend = \"redis\"\n[redis]\nurl = \"{}\"",
        redis.url()
    ))
    .await;
}
