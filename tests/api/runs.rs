//! The run history: what the debugger shows for succeeded, failed,
//! timed-out and async runs, and what it never shows.

use crate::helpers::*;

const FLOW: &str = r#"
status = "live"
timeout = "2s"
[trigger]
ref = "web1"
[response]
body_inline = '{"total": {{ calc.total }}}'
[[steps]]
ref = "calc"
kind = "transform"
set = { total = "{{ web1.a + web1.b }}" }
[[steps]]
ref = "check"
kind = "fail"
if = "calc.total > 100"
message = "total {{ calc.total }} is too large"
[[steps]]
ref = "nap"
kind = "delay"
if = "web1.slow"
duration = "10s"
"#;

async fn succeeded_run_records_steps_request_and_answer() {
    let app = spawn_app(&[("f", FLOW.to_owned())]).await;
    let response = app.post_json("f", r#"{"a": 2, "b": 3}"#).await;
    assert_eq!(response.status(), 200);
    let id = run_id(&response);
    let record = app.record_when(&id, |r| r.status == "succeeded").await;
    assert_eq!(record.flow, "f");
    assert_eq!(
        (record.mode.as_str(), record.live, record.attempt),
        ("sync", true, 1)
    );
    assert_eq!(record.flow_version.len(), 12);
    assert_eq!(*record.body, serde_json::json!({"a": 2, "b": 3}));
    assert_eq!(record.request["method"], "POST");
    assert!(record.request["headers"].get("authorization").is_none());
    assert!(
        !serde_json::to_string(&record)
            .unwrap()
            .contains(&app.token("f")[..20])
    );
    let steps: Vec<(&str, &str)> = record
        .steps
        .iter()
        .map(|s| (s.path.as_str(), s.status.as_str()))
        .collect();
    assert_eq!(
        steps,
        [
            ("calc", "succeeded"),
            ("check", "skipped"),
            ("nap", "skipped")
        ]
    );
    assert_eq!(record.steps[0].output, serde_json::json!({"total": 5}));
    let answer = record.response.unwrap();
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, r#"{"total": 5}"#)
    );
    assert!(record.error.is_none() && record.ended_at.is_some() && record.duration_ms.is_some());
}

async fn failed_and_timed_out_runs_record_why() {
    let app = spawn_app(&[("f", FLOW.to_owned())]).await;
    let failed = app.post_json("f", r#"{"a": 200, "b": 3}"#).await;
    assert_eq!(failed.status(), 500);
    let record = app
        .record_when(&run_id(&failed), |r| r.status == "failed")
        .await;
    let error = record.error.unwrap();
    assert_eq!(
        (error.step.as_deref(), error.message.as_str()),
        (Some("check"), "total 203 is too large")
    );
    assert_eq!(record.steps[1].status, "failed");
    assert_eq!(record.response.unwrap().status, 500);

    let slow = app
        .post_json("f", r#"{"a": 1, "b": 1, "slow": true}"#)
        .await;
    assert_eq!(slow.status(), 504);
    let record = app
        .record_when(&run_id(&slow), |r| r.status == "timed_out")
        .await;
    assert!(record.error.unwrap().message.contains("timeout of 2s"));
}

async fn async_runs_go_from_queued_to_their_end() {
    let flow = FLOW
        .replace("ref = \"web1\"", "ref = \"web1\"\nmode = \"async\"")
        .replace(
            "body_inline = '{\"total\": {{ calc.total }}}'",
            "body_inline = '{\"queued\": {{ run.id | tojson }}}'",
        );
    let app = spawn_app(&[("a", flow)]).await;
    let response = app.post_json("a", r#"{"a": 1, "b": 2}"#).await;
    assert_eq!(response.status(), 202);
    let id = run_id(&response);
    let record = app.record_when(&id, |r| r.status == "succeeded").await;
    assert_eq!((record.mode.as_str(), record.attempt), ("async", 1));
    assert_eq!(record.steps[0].output, serde_json::json!({"total": 3}));
    // The immediate answer of an async run is what the record keeps.
    let answer = record.response.unwrap();
    assert_eq!(answer.body, format!(r#"{{"queued": "{id}"}}"#));
    assert!(record.started_at.is_some());

    // A run still going after half a second shows as running meanwhile.
    let slow = run_id(
        &app.post_json("a", r#"{"a": 1, "b": 2, "slow": true}"#)
            .await,
    );
    let record = app.record_when(&slow, |r| r.status == "running").await;
    assert_eq!(record.attempt, 1);
    assert_eq!(record.response.unwrap().status, 202);
    let record = app.record_when(&slow, |r| r.status == "timed_out").await;
    assert!(record.ended_at.is_some());
}

async fn paused_flows_and_refused_requests_record_nothing() {
    let paused = FLOW.replace("status = \"live\"", "status = \"paused\"");
    let app = spawn_app(&[("p", paused), ("f", FLOW.to_owned())]).await;
    assert_eq!(
        app.post_json("p", r#"{"a": 1, "b": 1}"#).await.status(),
        200
    );
    let unauthenticated = app
        .client
        .post(app.url("f"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);
    assert_eq!(app.post_json("f", "{oops").await.status(), 400);
    // Records are written in the background: wait for a later run's record
    // (sent after the refused requests) before checking they left none.
    let later = app.post_json("f", r#"{"a": 1, "b": 1}"#).await;
    let later_id = later.headers()["x-flowgate-run-id"]
        .to_str()
        .unwrap()
        .to_owned();
    app.record_when(&later_id, |r| r.status == "succeeded")
        .await;
    assert!(app.store().list("p", 10).await.unwrap().is_empty());
    let recorded: Vec<String> = app
        .store()
        .list("f", 10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(recorded, vec![later_id]);
}

async fn large_bodies_are_truncated_in_the_record() {
    let app = spawn_app(&[("f", FLOW.to_owned())]).await;
    let big = "y".repeat(200 * 1024);
    let response = app
        .post_json("f", &format!(r#"{{"a": 1, "b": 1, "note": "{big}"}}"#))
        .await;
    assert_eq!(response.status(), 200);
    let record = app
        .record_when(&run_id(&response), |r| r.status == "succeeded")
        .await;
    let note = record.body["note"].as_str().unwrap();
    assert!(
        note.len() < 70 * 1024 && note.ends_with("bytes]"),
        "{}",
        &note[note.len() - 40..]
    );
    // The parsed body holds a JSON payload; its raw text is not kept twice.
    assert!(record.request.get("raw").is_none(), "{:?}", record.request);
    assert_eq!(
        record.request["headers"]["content-type"],
        "application/json"
    );

    // Other bodies keep their raw text, cut too.
    let response = app
        .client
        .post(app.url("f"))
        .bearer_auth(app.token("f"))
        .header("content-type", "text/plain")
        .body(big)
        .send()
        .await
        .unwrap();
    let record = app
        .record_when(&run_id(&response), |r| r.ended_at.is_some())
        .await;
    let raw = record.request["raw"].as_str().unwrap();
    assert!(
        raw.starts_with("yyyy") && raw.ends_with("bytes]"),
        "{}",
        &raw[raw.len() - 40..]
    );
}

async fn runs_cli_lists_and_shows_records() {
    let app = spawn_app(&[("f", FLOW.to_owned())]).await;
    let ok = run_id(&app.post_json("f", r#"{"a": 2, "b": 3}"#).await);
    let failed = run_id(&app.post_json("f", r#"{"a": 300, "b": 3}"#).await);
    app.record_when(&failed, |r| r.status == "failed").await;
    app.record_when(&ok, |r| r.status == "succeeded").await;
    let cli = |args: &[&str]| {
        let (stdout, stderr, code) = cli(&app, args);
        assert_eq!(code, 0, "{stderr}");
        stdout
    };
    let list = cli(&["runs", "list", "f"]);
    let lines: Vec<&str> = list.lines().collect();
    assert!(lines[0].starts_with("RUN ID"), "{list}");
    assert!(
        lines[1].starts_with(&failed)
            && lines[1].contains("failed")
            && lines[1].contains("too large"),
        "{list}"
    );
    assert!(
        lines[2].starts_with(&ok) && lines[2].contains("succeeded"),
        "{list}"
    );
    let show = cli(&["runs", "show", &failed]);
    assert!(show.contains("status    failed (attempt 1)"), "{show}");
    assert!(show.contains("check (fail) failed"), "{show}");
    assert!(
        show.contains("error     step `check`: total 303 is too large"),
        "{show}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&cli(&["runs", "show", &ok, "--json"])).unwrap();
    assert_eq!(json["steps"][0]["output"]["total"], 5);
    // What a sender wrote cannot drive the operator's terminal.
    let hostile = app
        .client
        .post(app.url("f"))
        .bearer_auth(app.token("f"))
        .header("content-type", "text/plain")
        .body("hi\x1b]0;pwned\x07\r\x1b[2Kfake line\u{202e}")
        .send()
        .await
        .unwrap();
    let hostile = run_id(&hostile);
    app.record_when(&hostile, |r| r.status != "running").await;
    let show = cli(&["runs", "show", &hostile]);
    assert!(
        !show.contains(['\x1b', '\x07', '\r', '\u{202e}']),
        "{show:?}"
    );
    assert!(
        show.contains("hi\\x1b]0;pwned\\x07\\r\\x1b[2Kfake line\\u{202e}"),
        "{show}"
    );
}

/// `FLOW` with `[runs]` set to `runs`.
fn flow_keeping(runs: &str) -> String {
    format!("{FLOW}\n[runs]\n{runs}\n")
}

async fn a_flow_that_keeps_failed_runs_records_no_successes() {
    let app = spawn_app(&[("f", flow_keeping(r#"keep = "failed""#))]).await;
    let ok = app.post_json("f", r#"{"a": 2, "b": 3}"#).await;
    assert_eq!(ok.status(), 200);
    let ok = run_id(&ok);
    let failed = app.post_json("f", r#"{"a": 200, "b": 3}"#).await;
    assert_eq!(failed.status(), 500);
    let failed = run_id(&failed);
    let record = app.record_when(&failed, |r| r.status == "failed").await;
    assert_eq!(record.error.unwrap().step.as_deref(), Some("check"));
    // A success is never written, so its absence is final.
    assert!(app.store().get(&ok).await.unwrap().is_none());
    let listed: Vec<String> = app
        .store()
        .list("f", 50)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(listed, [failed]);
    // The admin API (and the console's Flows page) say why successes are missing.
    let flow = app
        .admin_json("tester", flowgate::token::Role::Viewer, "/v1/admin/flows/f")
        .await;
    assert_eq!(flow["keep_runs"], "failed", "{flow}");
    assert_eq!(flow["max_runs"], serde_json::Value::Null, "no cap in tests");
    assert_eq!(flow["runs_last_hour"], 1);
}

async fn an_async_run_of_a_flow_that_keeps_none_has_a_record_only_until_it_ends() {
    let receiver = Receiver::start(&[], std::time::Duration::ZERO).await;
    let flow = format!(
        "{}\n[runs]\nkeep = \"none\"\n",
        crate::queue::async_flow(&receiver.url("/hook"), "")
    );
    let options = AppOptions {
        worker: false,
        ..Default::default()
    };
    let app = spawn_app_with(&[("a", flow)], options).await;
    let response = app.post_json("a", r#"{"n": 1}"#).await;
    assert_eq!(response.status(), 202);
    let id = run_id(&response);
    let queued = app.record_when(&id, |r| r.status == "queued").await;
    assert_eq!(queued.body["n"], 1, "the debugger shows a queued run");
    app.start_worker(std::time::Duration::from_secs(15));
    assert_eventually(
        std::time::Duration::from_secs(10),
        "the run reached the receiver",
        || receiver.requests().len() == 1,
    )
    .await;
    let store = app.store();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while store.get(&id).await.unwrap().is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the record of an ended run of a flow keeping none was not deleted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(store.list("a", 50).await.unwrap().is_empty());
}

async fn a_flow_keeps_at_most_its_cap_of_records_the_newest() {
    const RUNS: usize = 600;
    const MAX: usize = 5;
    // Trims run every so many writes (64 on Redis and PostgreSQL, 256
    // embedded), never on every one: a flow may be that many over its cap
    // between two (on PostgreSQL, plus batches committing beside a trim).
    const SLACK: usize = 256;
    let app = spawn_app(&[("f", flow_keeping(&format!("max = {MAX}")))]).await;
    let client = reqwest::Client::new();
    let token = app.token("f");
    let mut ids = Vec::new();
    for chunk in 0..RUNS / 50 {
        let requests = (0..50).map(|i| {
            client
                .post(app.url("f"))
                .bearer_auth(&token)
                .json(&serde_json::json!({"a": chunk, "b": i}))
                .send()
        });
        for response in futures_util::future::join_all(requests).await {
            let response = response.unwrap();
            assert_eq!(response.status(), 200);
            ids.push(run_id(&response));
        }
    }
    let newest = ids.last().unwrap();
    app.record_when(newest, |r| r.status == "succeeded").await;
    let kept = app.store().list("f", 1000).await.unwrap();
    assert!(
        kept.len() <= MAX + SLACK,
        "{} records kept of {RUNS}, cap {MAX}",
        kept.len()
    );
    assert!(
        app.store().get(&ids[0]).await.unwrap().is_none(),
        "the oldest record went first"
    );
}

/// A flow that fetches `url` once per item of the body's `items`.
fn fetch_each_flow(url: &str) -> String {
    format!(
        r#"
status = "live"
timeout = "60s"
[trigger]
ref = "web1"
[response]
body_inline = '{{"n": {{{{ each.results | length }}}}}}'
[[steps]]
ref = "each"
kind = "for_each"
items = "{{{{ web1.items }}}}"
steps = [
  {{ ref = "get", kind = "http", url = "{url}" }},
]
"#
    )
}

/// GETs `path` as a viewer; the status and the body's length and JSON.
async fn admin_get(app: &TestApp, path: &str) -> (u16, usize, serde_json::Value) {
    let token = app
        .keys
        .issue_admin("v", flowgate::token::Role::Viewer, None)
        .unwrap();
    let response = app
        .client
        .get(format!("http://{}{path}", app.addr))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let bytes = response.bytes().await.unwrap();
    (
        status,
        bytes.len(),
        serde_json::from_slice(&bytes).unwrap_or_default(),
    )
}

async fn a_record_is_held_to_its_cap_and_lists_send_large_values_cut() {
    // 300 answers of 100 KB each: about 30 MB the run saw.
    let big = format!("\"{}\"", "x".repeat(100 * 1024));
    let replies = vec![Reply::status(200).body(big); 300];
    let receiver = Receiver::start_with(replies, std::time::Duration::ZERO).await;
    let app = spawn_app(&[("fetch", fetch_each_flow(&receiver.url("/big")))]).await;
    let items: Vec<u32> = (0..300).collect();
    let response = app
        .post_json("fetch", &serde_json::json!({ "items": items }).to_string())
        .await;
    let id = run_id(&response);
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), r#"{"n": 300}"#);

    // The whole record is at most runs.max_record_bytes (1 MiB by default),
    // and says what it left out.
    app.record_when(&id, |r| !r.steps.is_empty()).await;
    let (status, size, record) = admin_get(&app, &format!("/v1/admin/runs/{id}")).await;
    assert_eq!(status, 200);
    assert!(size <= 1024 * 1024, "{size} bytes");
    assert_eq!(record["status"], "succeeded");
    let cut = record["cut"].as_array().expect("cut values are listed");
    assert!(!cut.is_empty());
    for entry in cut {
        let at = entry["at"].as_str().unwrap();
        assert!(at.starts_with("/steps/"), "{entry}");
        assert!(entry["bytes"].as_u64().unwrap() > 60 * 1024, "{entry}");
        if !at.ends_with('-') {
            let marker = record.pointer(at).unwrap().as_str().unwrap();
            assert!(marker.contains("runs.max_record_bytes"), "{marker}");
        }
    }
    let store_record = app.store().get(&id).await.unwrap().unwrap();
    assert!(store_record.encode().unwrap().len() <= 1024 * 1024);

    // Lists cut every large value and say where to fetch it whole.
    for _ in 0..4 {
        let again = app
            .post_json("fetch", &serde_json::json!({ "items": [1, 2] }).to_string())
            .await;
        assert_eq!(again.status(), 200);
        // A sync run's record is written after its answer.
        app.record_when(&run_id(&again), |r| !r.steps.is_empty())
            .await;
    }
    let (status, size, page) = admin_get(&app, "/v1/admin/runs?flow=fetch&limit=250").await;
    assert_eq!(status, 200);
    assert_eq!(page["data"].as_array().unwrap().len(), 5);
    assert!(size < 256 * 1024, "a list page of 5 runs is {size} bytes");
    let listed = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id.as_str())
        .unwrap();
    // Values the record kept whole but a list would not: the list names
    // where to fetch each.
    let text = listed.to_string();
    let at = text.find("/value?at=").expect("a value the list cut") + "/value?at=".len();
    let pointer = &text[at..at + text[at..].find(']').unwrap()];
    let (status, _, whole) =
        admin_get(&app, &format!("/v1/admin/runs/{id}/value?at={pointer}")).await;
    assert_eq!(status, 200, "{whole}");
    assert_eq!(
        &whole["value"],
        record.pointer(pointer).unwrap(),
        "{pointer}"
    );
    assert!(
        listed["steps"].as_array().unwrap().len() <= 10,
        "a list shows a few steps of each run"
    );
    assert!(listed["steps_not_listed"].as_u64().unwrap() > 0);
    let (status, _, missing) =
        admin_get(&app, &format!("/v1/admin/runs/{id}/value?at=/nothing/here")).await;
    assert_eq!(status, 404, "{missing}");
}

async fn a_run_holding_too_much_data_fails_and_says_why() {
    // Each item makes 600 KB: within one render's budget, but 300 of
    // them are more than a run may hold.
    let flow = r#"
status = "live"
timeout = "60s"
[trigger]
ref = "web1"
[[steps]]
ref = "each"
kind = "for_each"
items = "{{ web1.items }}"
steps = [
  { ref = "pad", kind = "transform", set = { text = "{{ 'x' * 600000 }}" } },
]
"#;
    let app = spawn_app(&[("pad", flow.to_owned())]).await;
    let items: Vec<u32> = (0..300).collect();
    let response = app
        .post_json("pad", &serde_json::json!({ "items": items }).to_string())
        .await;
    let id = run_id(&response);
    assert_eq!(response.status(), 500);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "run_failed");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("MiB of step data"), "{message}");
    let record = app
        .record_when(&id, |r| r.status == flowgate::engine::RunState::Failed)
        .await;
    assert!(record.encode().unwrap().len() <= 1024 * 1024);
}

crate::on_all_backends!(
    a_record_is_held_to_its_cap_and_lists_send_large_values_cut,
    a_run_holding_too_much_data_fails_and_says_why,
    a_flow_that_keeps_failed_runs_records_no_successes,
    an_async_run_of_a_flow_that_keeps_none_has_a_record_only_until_it_ends,
    a_flow_keeps_at_most_its_cap_of_records_the_newest,
    succeeded_run_records_steps_request_and_answer,
    failed_and_timed_out_runs_record_why,
    async_runs_go_from_queued_to_their_end,
    paused_flows_and_refused_requests_record_nothing,
    large_bodies_are_truncated_in_the_record,
    runs_cli_lists_and_shows_records,
);

crate::on_cluster!(
    a_flow_keeps_at_most_its_cap_of_records_the_newest,
    async_runs_go_from_queued_to_their_end,
    runs_cli_lists_and_shows_records,
);
