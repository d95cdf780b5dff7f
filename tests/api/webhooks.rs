//! Outbound event webhooks against real receivers on loopback: signatures,
//! ping and test events, filters, run and flow events, retries, the
//! auto-disable rule, the delivery log, SSRF refusal and a dispatcher
//! killed mid-delivery.

use std::time::{Duration, Instant};

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Sha256;

use crate::helpers::*;

const SYNC_FLOW: &str = "status = \"live\"\nname = \"Sync flow\"\n[trigger]\nref = \"w\"\n[[steps]]\nref = \"t\"\nkind = \"transform\"\nset = { n = \"{{ w.n }}\" }\n[response]\nbody_inline = \"{\\\"ok\\\": true}\"\n";
const ASYNC_FLOW: &str = "status = \"live\"\n[trigger]\nref = \"w\"\nmode = \"async\"\n[[steps]]\nref = \"t\"\nkind = \"transform\"\nset = { n = \"{{ w.n }}\" }\n";
const FAILING_FLOW: &str = "status = \"live\"\n[trigger]\nref = \"w\"\n[[steps]]\nref = \"boom\"\nkind = \"fail\"\nmessage = \"no\"\n";

fn ops_token(app: &TestApp) -> String {
    app.keys
        .issue_admin("tester", flowgate::token::Role::Ops, None)
        .unwrap()
}

/// An admin request as ops; the status and the JSON body.
pub(crate) async fn api(
    app: &TestApp,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let url = format!("http://{}/v1/admin/{path}", app.addr);
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = app.client.request(method, url).bearer_auth(ops_token(app));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Creates a subscription; its JSON (with the secret, when it has one).
pub(crate) async fn subscribe(app: &TestApp, body: Value) -> Value {
    let (status, created) = api(app, "POST", "webhooks", Some(body)).await;
    assert_eq!(status, 201, "{created}");
    created
}

/// The delivery log of `id`, newest first.
async fn log(app: &TestApp, id: &str) -> Vec<Value> {
    let (status, page) = api(app, "GET", &format!("webhooks/{id}/deliveries"), None).await;
    assert_eq!(status, 200, "{page}");
    page["data"].as_array().unwrap().clone()
}

/// Waits until `receiver` holds at least `n` requests; returns them.
async fn received(receiver: &Receiver, n: usize, within: Duration) -> Vec<Received> {
    let deadline = Instant::now() + within;
    loop {
        let requests = receiver.requests();
        if requests.len() >= n {
            return requests;
        }
        assert!(
            Instant::now() < deadline,
            "the receiver got {} requests, not {n}, within {within:?}",
            requests.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the delivery log of `id` holds `n` entries; returns them, newest first.
async fn logged(app: &TestApp, id: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let entries = log(app, id).await;
        if entries.len() >= n {
            return entries;
        }
        assert!(
            Instant::now() < deadline,
            "the log holds {} entries, not {n}: {entries:?}",
            entries.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The receiver's requests of event type `event`, as JSON.
fn of_type(requests: &[Received], event: &str) -> Vec<Value> {
    requests
        .iter()
        .map(Received::json)
        .filter(|m| m["type"] == event)
        .collect()
}

/// Waits until `receiver` got a message of type `event`.
/// Waits until every stored event became deliveries and every delivery was
/// attempted (the outbox and the event log both empty, three polls in a
/// row): after it, a delivery that was going to be made has been made.
async fn settled(app: &TestApp) {
    let store = app.app.backends().webhooks.clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut quiet = 0;
    while quiet < 3 {
        assert!(Instant::now() < deadline, "webhook events never settled");
        let events = store.events_depth().await.unwrap();
        let deliveries = store.outbox_depth().await.unwrap();
        quiet = if events == 0 && deliveries == 0 {
            quiet + 1
        } else {
            0
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the replica at `base` has flow `flow` in `status`.
async fn replica_sees(app: &TestApp, base: &str, flow: &str, status: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen: Value = app
            .client
            .get(format!("{base}/v1/admin/flows/{flow}"))
            .bearer_auth(ops_token(app))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if seen["status"] == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the replica never saw {flow} {status}: {seen}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn of_type_within(receiver: &Receiver, event: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while of_type(&receiver.requests(), event).is_empty() {
        let got: Vec<Value> = receiver.requests().iter().map(Received::json).collect();
        assert!(Instant::now() < deadline, "no {event}: {got:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Standard Webhooks verification, written from the specification.
fn verify(secret: &str, request: &Received) -> bool {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let header = |name: &str| request.headers[name].to_str().unwrap().to_owned();
    let signed = format!(
        "{}.{}.{}",
        header("webhook-id"),
        header("webhook-timestamp"),
        String::from_utf8_lossy(&request.body)
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(signed.as_bytes());
    let expected = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    );
    header("webhook-signature")
        .split(' ')
        .any(|candidate| candidate == expected)
}

async fn creating_a_subscription_pings_it_with_a_verifiable_signature() {
    let app = spawn_app(&[("s", SYNC_FLOW.to_owned())]).await;
    let receiver = Receiver::start(&[], Duration::ZERO).await;
    let created = subscribe(
        &app,
        json!({"name": "ops channel", "url": receiver.url("/hook"), "secret": true}),
    )
    .await;
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"), "{created}");
    assert_eq!(created["enabled"], true);
    assert_eq!(created["events"], json!(["*"]));

    let requests = received(&receiver, 1, Duration::from_secs(5)).await;
    let ping = &requests[0];
    assert_eq!(ping.method, "POST");
    assert_eq!(ping.path_and_query, "/hook");
    assert_eq!(ping.headers["content-type"], "application/json");
    let message = ping.json();
    assert_eq!(message["type"], "ping");
    assert_eq!(message["id"], ping.headers["webhook-id"].to_str().unwrap());
    assert!(message["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(message["data"]["subscription_id"], created["id"]);
    assert!(verify(&secret, ping), "the signature does not verify");
    let timestamp: u64 = ping.headers["webhook-timestamp"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(now.abs_diff(timestamp) < 60, "{timestamp} vs {now}");
    assert!(!verify("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", ping));

    // The secret is never shown again.
    let id = created["id"].as_str().unwrap();
    let (_, shown) = api(&app, "GET", &format!("webhooks/{id}"), None).await;
    assert_eq!(shown["has_secret"], true);
    let (_, listed) = api(&app, "GET", "webhooks", None).await;
    assert_eq!(listed["data"][0]["id"], created["id"]);
    for text in [shown.to_string(), listed.to_string()] {
        assert!(
            !text.contains(&secret) && !text.contains("whsec_"),
            "{text}"
        );
    }
    // The ping is in the log, signature removed, trigger `ping`.
    let entries = logged(&app, id, 1).await;
    assert_eq!(entries[0]["trigger"], "ping");
    assert_eq!(entries[0]["outcome"], "succeeded");
    assert_eq!(entries[0]["response_status"], 200);
    assert_eq!(
        entries[0]["request_headers"]["webhook-signature"],
        "[removed]"
    );
    assert!(!entries[0].to_string().contains("v1,"));

    // A subscription without a secret sends no signature header.
    let plain = Receiver::start(&[], Duration::ZERO).await;
    subscribe(&app, json!({"name": "plain", "url": plain.url("/")})).await;
    let requests = received(&plain, 1, Duration::from_secs(5)).await;
    assert!(requests[0].headers.get("webhook-signature").is_none());
    assert!(requests[0].headers.get("webhook-id").is_some());
}

async fn run_events_of_sync_and_async_runs_arrive_and_order_by_sequence() {
    let app = spawn_app(&[("s", SYNC_FLOW.to_owned()), ("a", ASYNC_FLOW.to_owned())]).await;
    let receiver = Receiver::start(&[], Duration::ZERO).await;
    subscribe(&app, json!({"name": "all", "url": receiver.url("/")})).await;
    received(&receiver, 1, Duration::from_secs(5)).await; // the ping

    let sync = app.post_json("s", r#"{"n": 1}"#).await;
    assert_eq!(sync.status(), 200);
    let sync_run = sync.headers()["x-flowgate-run-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let queued = app.post_json("a", r#"{"n": 2}"#).await;
    assert_eq!(queued.status(), 202);
    let async_run = queued.headers()["x-flowgate-run-id"]
        .to_str()
        .unwrap()
        .to_owned();

    // sync: started, step.started, step.ended, ended; async: queued too.
    let requests = received(&receiver, 1 + 4 + 5, Duration::from_secs(10)).await;
    for (run, mode, expected) in [
        (
            &sync_run,
            "sync",
            &["run.started", "step.started", "step.ended", "run.ended"][..],
        ),
        (
            &async_run,
            "async",
            &[
                "run.queued",
                "run.started",
                "step.started",
                "step.ended",
                "run.ended",
            ][..],
        ),
    ] {
        let mut events: Vec<Value> = requests
            .iter()
            .map(Received::json)
            .filter(|m| m["data"]["run_id"] == run.as_str())
            .collect();
        events.sort_by_key(|m| m["data"]["sequence"].as_u64().unwrap());
        let types: Vec<&str> = events.iter().map(|m| m["type"].as_str().unwrap()).collect();
        assert_eq!(types, expected, "{run}");
        let ended = events.last().unwrap();
        assert_eq!(ended["data"]["status"], "succeeded");
        assert_eq!(ended["data"]["mode"], mode);
        assert_eq!(ended["live_mode"], true);
        assert!(ended["data"]["started_at"].is_string());
        assert!(ended["data"]["ended_at"].is_string());
        assert_eq!(
            events[0]["flow"]["id"],
            if mode == "sync" { "s" } else { "a" }
        );
        let step = events.iter().find(|m| m["type"] == "step.ended").unwrap();
        assert_eq!(step["data"]["step"], "t");
        assert_eq!(step["data"]["kind"], "transform");
        assert_eq!(step["data"]["status"], "succeeded");
    }
    let sync_ended = of_type(&requests, "run.ended")
        .into_iter()
        .find(|m| m["data"]["run_id"] == sync_run.as_str())
        .unwrap();
    assert_eq!(sync_ended["flow"]["name"], "Sync flow");
    // Every message id is unique.
    let mut ids: Vec<String> = requests
        .iter()
        .map(|r| r.headers["webhook-id"].to_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), requests.len());
}

async fn filters_by_event_flow_and_status_and_xml_parses() {
    let app = spawn_app(&[
        ("s", SYNC_FLOW.to_owned()),
        ("bad", FAILING_FLOW.to_owned()),
        ("bad2", FAILING_FLOW.to_owned()),
    ])
    .await;
    let filtered = Receiver::start(&[], Duration::ZERO).await;
    let xml = Receiver::start(&[], Duration::ZERO).await;
    subscribe(
        &app,
        json!({"name": "failures of bad", "url": filtered.url("/"), "events": ["run.ended"],
               "flows": ["bad"], "statuses": ["failed", "timed_out"]}),
    )
    .await;
    subscribe(
        &app,
        json!({"name": "xml", "url": xml.url("/"), "events": ["run.ended"], "flows": ["bad"],
               "format": "xml"}),
    )
    .await;
    received(&filtered, 1, Duration::from_secs(5)).await;
    received(&xml, 1, Duration::from_secs(5)).await;

    let run_of = |response: &reqwest::Response| {
        response.headers()["x-flowgate-run-id"]
            .to_str()
            .unwrap()
            .to_owned()
    };
    let ok = app.post_json("s", r#"{"n": 1}"#).await;
    assert_eq!(ok.status(), 200);
    let other = app.post_json("bad2", "{}").await;
    let failed = app.post_json("bad", "{}").await;
    let failed_run = run_of(&failed);

    let requests = received(&filtered, 2, Duration::from_secs(5)).await;
    let xml_requests = received(&xml, 2, Duration::from_secs(5)).await;
    // Every run's record, and so its events, is stored; then every event
    // was turned into the deliveries it owes and those were made.
    for run in [run_of(&ok), run_of(&other), failed_run.clone()] {
        app.record_when(&run, |r| r.status != flowgate::engine::RunState::Running)
            .await;
    }
    settled(&app).await;
    assert_eq!(filtered.requests().len(), 2, "{:?}", filtered.requests());
    let ended = requests[1].json();
    assert_eq!(ended["type"], "run.ended");
    assert_eq!(ended["data"]["run_id"], failed_run.as_str());
    assert_eq!(ended["data"]["status"], "failed");
    assert_eq!(ended["data"]["cause"], "boom");
    assert!(ended["data"]["error"].as_str().unwrap().contains("no"));

    assert_eq!(xml.requests().len(), 2);
    let request = &xml_requests[1];
    assert_eq!(request.headers["content-type"], "application/xml");
    let text = String::from_utf8(request.body.to_vec()).unwrap();
    let doc = roxmltree::Document::parse(&text).unwrap();
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "event");
    let field = |path: &[&str]| {
        let mut node = root;
        for name in path {
            node = node
                .children()
                .find(|c| c.tag_name().name() == *name)
                .unwrap_or_else(|| panic!("no {name} in {text}"));
        }
        node.text().unwrap_or_default().to_owned()
    };
    assert_eq!(field(&["type"]), "run.ended");
    assert_eq!(
        field(&["id"]),
        request.headers["webhook-id"].to_str().unwrap()
    );
    assert_eq!(field(&["flow", "id"]), "bad");
    assert_eq!(field(&["data", "run_id"]), failed_run);
    assert_eq!(field(&["data", "status"]), "failed");
}

async fn retries_follow_the_schedule_and_honour_retry_after() {
    let app = spawn_app(&[]).await;
    // The ping gets 200; then the event gets 500, 503 + Retry-After: 2, 200.
    let receiver = Receiver::start_with(
        vec![
            Reply::status(200),
            Reply::status(500),
            Reply::status(503).header("retry-after", "2"),
            Reply::status(200),
        ],
        Duration::ZERO,
    )
    .await;
    let created = subscribe(
        &app,
        json!({"name": "r", "url": receiver.url("/"), "events": ["flow.created"]}),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_owned();
    received(&receiver, 1, Duration::from_secs(5)).await;
    write_files(
        &app.dir.path().join("flows"),
        &[(
            "late.toml",
            "status = \"live\"\n[trigger]\nref = \"w\"\n".into(),
        )],
    );
    let requests = received(&receiver, 4, Duration::from_secs(15)).await;
    let ids: Vec<_> = requests[1..]
        .iter()
        .map(|r| r.headers["webhook-id"].to_str().unwrap().to_owned())
        .collect();
    assert!(
        ids.iter().all(|i| *i == ids[0]),
        "one message, three attempts"
    );
    let entries = logged(&app, &id, 4).await;
    // Newest first: attempt 3 succeeded, 2 got 503, 1 got 500.
    let attempts: Vec<(u64, &str, u64)> = entries[..3]
        .iter()
        .map(|e| {
            (
                e["attempt"].as_u64().unwrap(),
                e["outcome"].as_str().unwrap(),
                e["response_status"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        attempts,
        [
            (3, "succeeded", 200),
            (2, "failed", 503),
            (1, "failed", 500)
        ]
    );
    assert_eq!(entries[0]["delivery_id"], entries[2]["delivery_id"]);
    let at = |e: &Value| humantime::parse_rfc3339_weak(e["at"].as_str().unwrap()).unwrap();
    let first_wait = at(&entries[1]).duration_since(at(&entries[2])).unwrap();
    let second_wait = at(&entries[0]).duration_since(at(&entries[1])).unwrap();
    assert!(
        first_wait >= Duration::from_millis(300) && first_wait < Duration::from_secs(2),
        "{first_wait:?}"
    );
    assert!(second_wait >= Duration::from_secs(2), "{second_wait:?}");
    assert!(entries[1]["next_attempt_at"].is_string());
    assert_eq!(entries[0]["trigger"], "auto");
    assert_eq!(entries[0]["event"], "flow.created");
}

async fn a_redirect_is_a_failure_and_is_not_followed() {
    let app = spawn_app(&[]).await;
    let target = Receiver::start(&[], Duration::ZERO).await;
    let receiver = Receiver::start_with(
        vec![Reply::status(302).header("location", &target.url("/elsewhere"))],
        Duration::ZERO,
    )
    .await;
    let created = subscribe(&app, json!({"name": "r", "url": receiver.url("/")})).await;
    let entries = logged(&app, created["id"].as_str().unwrap(), 1).await;
    assert_eq!(entries[0]["outcome"], "failed");
    assert_eq!(entries[0]["response_status"], 302);
    assert!(
        entries[0]["error"].as_str().unwrap().contains("redirect"),
        "{}",
        entries[0]
    );
    assert!(target.requests().is_empty());
}

async fn four_failures_in_a_row_disable_a_subscription_and_a_success_resets_the_count() {
    let app = spawn_app(&[]).await;
    // ping 500, test 500, test 200 (resets), then 4 × 500.
    let receiver = Receiver::start(&[500, 500, 200, 500, 500, 500, 500], Duration::ZERO).await;
    let watcher = Receiver::start(&[], Duration::ZERO).await;
    subscribe(
        &app,
        json!({"name": "watcher", "url": watcher.url("/"), "events": ["webhook.disabled"]}),
    )
    .await;
    let created = subscribe(&app, json!({"name": "flaky", "url": receiver.url("/")})).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let mut sent = 1;
    for expected_failures in [1, 2, 0, 1, 2, 3] {
        logged(&app, &id, sent).await;
        // The count follows the log entry.
        let deadline = Instant::now() + Duration::from_secs(5);
        let shown = loop {
            let (_, shown) = api(&app, "GET", &format!("webhooks/{id}"), None).await;
            if shown["consecutive_failures"] == expected_failures || Instant::now() > deadline {
                break shown;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(shown["consecutive_failures"], expected_failures, "{shown}");
        assert_eq!(shown["enabled"], true);
        let (status, _) = api(&app, "POST", &format!("webhooks/{id}/test"), None).await;
        assert_eq!(status, 202);
        sent += 1;
    }
    logged(&app, &id, sent).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let shown = loop {
        let (_, shown) = api(&app, "GET", &format!("webhooks/{id}"), None).await;
        if shown["enabled"] == false {
            break shown;
        }
        assert!(Instant::now() < deadline, "not disabled: {shown}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(shown["disabled_reason"]["cause"], "failures");
    let reason = shown["disabled_reason"]["message"].as_str().unwrap();
    assert!(
        reason.contains("4 consecutive failed attempts") && reason.contains("HTTP 500"),
        "{reason}"
    );
    // The audit log says so, and the other subscription was told.
    let deadline = Instant::now() + Duration::from_secs(5);
    let audit = loop {
        let (_, audit) = api(&app, "GET", "audit?action=webhook.auto_disable", None).await;
        if audit["data"][0].is_object() || Instant::now() > deadline {
            break audit;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(audit["data"][0]["actor"], "flowgate");
    assert_eq!(audit["data"][0]["after"]["enabled"], false);
    let told = received(&watcher, 2, Duration::from_secs(5)).await;
    let disabled = told[1].json();
    assert_eq!(disabled["type"], "webhook.disabled");
    assert_eq!(disabled["data"]["subscription_id"], id.as_str());

    // While disabled, events are logged as skipped, then recovered.
    write_files(
        &app.dir.path().join("flows"),
        &[(
            "late.toml",
            "status = \"live\"\n[trigger]\nref = \"w\"\n".into(),
        )],
    );
    let entries = logged(&app, &id, sent + 1).await;
    assert_eq!(entries[0]["outcome"], "skipped");
    assert_eq!(entries[0]["event"], "flow.created");
    let before = receiver.requests().len();
    let (status, _) = api(&app, "POST", &format!("webhooks/{id}/recover"), None).await;
    assert_eq!(status, 409, "a disabled subscription is not recovered");
    let (status, enabled) = api(&app, "POST", &format!("webhooks/{id}/enable"), None).await;
    assert_eq!(status, 200);
    assert_eq!(enabled["consecutive_failures"], 0);
    assert!(enabled["disabled_reason"].is_null());
    let (status, recovered) = api(&app, "POST", &format!("webhooks/{id}/recover"), None).await;
    assert_eq!((status, recovered["recovered"].as_u64()), (202, Some(1)));
    let requests = received(&receiver, before + 1, Duration::from_secs(5)).await;
    assert_eq!(requests[before].json()["type"], "flow.created");
}

async fn an_enabled_subscription_cannot_be_deleted_and_a_flow_takes_at_most_five() {
    let app = spawn_app(&[("s", SYNC_FLOW.to_owned()), ("t", SYNC_FLOW.to_owned())]).await;
    let receiver = Receiver::start(&[], Duration::ZERO).await;
    let first = subscribe(&app, json!({"name": "all", "url": receiver.url("/")})).await;
    let id = first["id"].as_str().unwrap();
    let (status, refused) = api(&app, "DELETE", &format!("webhooks/{id}"), None).await;
    assert_eq!(status, 409);
    assert_eq!(refused["error"], "subscription_enabled");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("disable it first")
    );

    for n in 0..4 {
        subscribe(
            &app,
            json!({"name": format!("s{n}"), "url": receiver.url("/"), "flows": ["s"]}),
        )
        .await;
    }
    // Flow s has five (one for every flow, four for s): a sixth is refused.
    let (status, refused) = api(
        &app,
        "POST",
        "webhooks",
        Some(json!({"name": "sixth", "url": receiver.url("/"), "flows": ["s"]})),
    )
    .await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["error"], "too_many_subscriptions");
    assert!(refused["message"].as_str().unwrap().contains("`s`"));
    // So is one for every flow; one for flow t alone is fine.
    let (status, _) = api(
        &app,
        "POST",
        "webhooks",
        Some(json!({"name": "everything", "url": receiver.url("/")})),
    )
    .await;
    assert_eq!(status, 409);
    subscribe(
        &app,
        json!({"name": "t only", "url": receiver.url("/"), "flows": ["t"]}),
    )
    .await;
    // Moving one onto flow s by an update is refused too.
    let (_, list) = api(&app, "GET", "webhooks", None).await;
    let t_only = list["data"].as_array().unwrap().last().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _) = api(
        &app,
        "PATCH",
        &format!("webhooks/{t_only}"),
        Some(json!({"flows": ["s", "t"]})),
    )
    .await;
    assert_eq!(status, 409);
    let (status, patched) = api(
        &app,
        "PATCH",
        &format!("webhooks/{t_only}"),
        Some(json!({"name": "renamed", "format": "xml"})),
    )
    .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(
        (patched["name"].as_str(), patched["format"].as_str()),
        (Some("renamed"), Some("xml"))
    );

    // Disabled, it can be deleted, and its log goes with it.
    let (status, _) = api(&app, "POST", &format!("webhooks/{id}/disable"), None).await;
    assert_eq!(status, 200);
    let (status, _) = api(&app, "DELETE", &format!("webhooks/{id}"), None).await;
    assert_eq!(status, 200);
    let (status, _) = api(&app, "GET", &format!("webhooks/{id}"), None).await;
    assert_eq!(status, 404);
    let (status, _) = api(&app, "GET", &format!("webhooks/{id}/deliveries"), None).await;
    assert_eq!(status, 404);
    // Every change is audited.
    let (_, audit) = api(&app, "GET", "audit?action=webhook.delete", None).await;
    assert_eq!(audit["data"][0]["before"]["id"], id);
}

async fn bad_subscriptions_and_roles_are_refused_in_the_envelope() {
    let options = AppOptions {
        allow_private_networks: false,
        webhook_settings: flowgate::webhooks::WebhookSettings {
            allow_private: false,
            ..test_webhook_settings()
        },
        ..AppOptions::default()
    };
    let app = spawn_app_with(&[], options).await;
    for (body, problem) in [
        (
            json!({"name": "x", "url": "https://127.0.0.1/hook"}),
            "private",
        ),
        (
            json!({"name": "x", "url": "https://169.254.169.254/"}),
            "private",
        ),
        (json!({"name": "x", "url": "ftp://example.com/"}), "https"),
        (
            json!({"name": "x", "url": "https://a:b@example.com/"}),
            "credentials",
        ),
        (
            json!({"name": "x", "url": "https://example.com", "events": ["nope"]}),
            "event type",
        ),
        (json!({"url": "https://example.com"}), "name"),
    ] {
        let (status, refused) = api(&app, "POST", "webhooks", Some(body.clone())).await;
        assert_eq!(status, 422, "{body}: {refused}");
        assert_eq!(refused["error"], "invalid_subscription");
        assert!(
            refused["message"].as_str().unwrap().contains(problem),
            "{refused}"
        );
    }
    // A name resolving to loopback passes creation, and the guard refuses it when connecting.
    let receiver = Receiver::start(&[], Duration::ZERO).await;
    let created = subscribe(
        &app,
        json!({"name": "sneaky", "url": format!("http://localhost:{}/", receiver.addr.port())}),
    )
    .await;
    let entries = logged(&app, created["id"].as_str().unwrap(), 1).await;
    assert_eq!(entries[0]["outcome"], "failed");
    assert_eq!(entries[0]["response_status"], 0);
    assert!(
        entries[0]["error"]
            .as_str()
            .unwrap()
            .contains("refusing to connect"),
        "{}",
        entries[0]
    );
    assert!(receiver.requests().is_empty());

    // A viewer reads but cannot change.
    let viewer = app
        .keys
        .issue_admin("v", flowgate::token::Role::Viewer, None)
        .unwrap();
    let url = format!("http://{}/v1/admin/webhooks", app.addr);
    let listed = app
        .client
        .get(&url)
        .bearer_auth(&viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), StatusCode::OK);
    let refused = app
        .client
        .post(&url)
        .bearer_auth(&viewer)
        .json(&json!({"name": "x", "url": "https://example.com"}))
        .send()
        .await
        .unwrap();
    envelope(refused, 403, "forbidden").await;
}

async fn the_log_cuts_big_responses_and_a_delivery_can_be_resent() {
    let app = spawn_app(&[]).await;
    let big = "x".repeat(100 * 1024);
    let receiver = Receiver::start_with(
        vec![Reply::status(200).header("x-receiver", "yes").body(big)],
        Duration::ZERO,
    )
    .await;
    let created = subscribe(&app, json!({"name": "r", "url": receiver.url("/in?k=1")})).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let entries = logged(&app, &id, 1).await;
    let entry = &entries[0];
    assert_eq!(entry["response_truncated"], true);
    assert_eq!(entry["response_body"].as_str().unwrap().len(), 64 * 1024);
    assert_eq!(entry["response_headers"]["x-receiver"], "yes");
    assert_eq!(entry["url"], receiver.url("/in?k=1"));
    assert_eq!(entry["event"], "ping");
    assert_eq!(entry["attempt"], 1);
    assert!(entry["duration_ms"].is_u64());
    let payload: Value = serde_json::from_str(entry["payload"].as_str().unwrap()).unwrap();
    assert_eq!(payload["type"], "ping");
    assert_eq!(entry["request_headers"]["content-type"], "application/json");

    let delivery = entry["delivery_id"].as_str().unwrap();
    let (status, _) = api(&app, "POST", &format!("deliveries/{delivery}/resend"), None).await;
    assert_eq!(status, 202);
    let entries = logged(&app, &id, 2).await;
    assert_eq!(entries[0]["trigger"], "manual");
    assert_eq!(entries[0]["attempt"], 2);
    assert_eq!(entries[0]["delivery_id"], delivery);
    let requests = received(&receiver, 2, Duration::from_secs(5)).await;
    assert_eq!(
        requests[0].headers["webhook-id"],
        requests[1].headers["webhook-id"]
    );
    let (status, missing) = api(&app, "POST", "deliveries/nope/resend", None).await;
    assert_eq!(
        (status, missing["error"].as_str()),
        (404, Some("not_found"))
    );

    // A test event carries a realistic run.ended sample, not live.
    let (status, _) = api(&app, "POST", &format!("webhooks/{id}/test"), None).await;
    assert_eq!(status, 202);
    let requests = received(&receiver, 3, Duration::from_secs(5)).await;
    let test = requests[2].json();
    assert_eq!(test["type"], "test");
    assert_eq!(test["live_mode"], false);
    assert_eq!(test["data"]["status"], "succeeded");
    assert!(test["data"]["run_id"].is_string());

    // The metrics count the attempts and the lag of first attempts.
    logged(&app, &id, 3).await;
    let metrics = app
        .text_when(
            &format!("http://{}/metrics", app.addr),
            "flowgate_webhook_deliveries_total{outcome=\"succeeded\"} 3",
        )
        .await;
    assert!(
        metrics.contains("flowgate_webhook_delivery_lag_seconds_count 2"),
        "{metrics}"
    );
}

async fn a_rotated_secret_signs_alongside_the_new_one_until_its_grace_ends() {
    let app = spawn_app(&[]).await;
    let receiver = Receiver::start(&[], Duration::ZERO).await;
    let created = subscribe(
        &app,
        json!({"name": "r", "url": receiver.url("/"), "secret": "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"}),
    )
    .await;
    let old = created["secret"].as_str().unwrap().to_owned();
    assert_eq!(old, "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD");
    let id = created["id"].as_str().unwrap().to_owned();
    received(&receiver, 1, Duration::from_secs(5)).await;

    let (status, rotated) = api(
        &app,
        "POST",
        &format!("webhooks/{id}/rotate-secret"),
        Some(json!({"grace": "2s"})),
    )
    .await;
    assert_eq!(status, 200, "{rotated}");
    let new = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    assert!(rotated["previous_secret_expires_at"].is_string());
    api(&app, "POST", &format!("webhooks/{id}/ping"), None).await;
    let requests = received(&receiver, 2, Duration::from_secs(5)).await;
    let during = &requests[1];
    assert_eq!(
        during.headers["webhook-signature"]
            .to_str()
            .unwrap()
            .split(' ')
            .count(),
        2
    );
    assert!(verify(&new, during) && verify(&old, during));

    tokio::time::sleep(Duration::from_millis(2100)).await;
    api(&app, "POST", &format!("webhooks/{id}/ping"), None).await;
    let requests = received(&receiver, 3, Duration::from_secs(5)).await;
    let after = &requests[2];
    assert!(verify(&new, after));
    assert!(
        !verify(&old, after),
        "the old secret still signs after its grace"
    );
    let (_, audit) = api(&app, "GET", "audit?action=webhook.rotate_secret", None).await;
    assert!(!audit.to_string().contains("whsec_"), "{audit}");
}

#[tokio::test]
async fn flow_events_come_from_reload_and_pause_once_across_replicas() {
    let app = spawn_app(&[("s", SYNC_FLOW.to_owned())]).await;
    let receiver = Receiver::start(&[], Duration::ZERO).await;
    subscribe(
        &app,
        json!({"name": "flows", "url": receiver.url("/"),
               "events": ["flow.created", "flow.updated", "flow.deleted", "flow.status_changed"]}),
    )
    .await;
    // A second gateway on the same Redis sees the pause too and announces it.
    let (replica, replica_base) = replica(&app).await;
    let (status, _) = api(&app, "POST", "flows/s/pause", None).await;
    assert_eq!(status, 200);
    replica_sees(&app, &replica_base, "s", "paused").await;
    let flows = app.dir.path().join("flows");
    write_files(
        &flows,
        &[(
            "n.toml",
            "status = \"draft\"\n[trigger]\nref = \"w\"\n".into(),
        )],
    );
    of_type_within(&receiver, "flow.created").await;
    std::fs::remove_file(flows.join("n.toml")).unwrap();
    of_type_within(&receiver, "flow.deleted").await;
    settled(&app).await;
    let messages: Vec<Value> = receiver.requests().iter().map(Received::json).collect();
    let paused: Vec<&Value> = messages
        .iter()
        .filter(|m| m["type"] == "flow.status_changed")
        .collect();
    assert_eq!(
        paused.len(),
        1,
        "one message although two replicas saw it: {messages:?}"
    );
    assert_eq!(paused[0]["data"]["status"], "paused");
    assert_eq!(paused[0]["flow"]["id"], "s");
    let created = messages
        .iter()
        .find(|m| m["type"] == "flow.created")
        .unwrap();
    assert_eq!(created["flow"]["id"], "n");
    assert_eq!(
        created["live_mode"], false,
        "a draft flow's events are not live"
    );
    assert!(
        messages
            .iter()
            .any(|m| m["type"] == "flow.deleted" && m["flow"]["id"] == "n")
    );
    terminate(replica).await;
}

#[tokio::test]
async fn a_dispatcher_killed_mid_delivery_leaves_it_to_another() {
    let options = AppOptions {
        webhooks: false,
        ..AppOptions::default()
    };
    let app = spawn_app_with(&[], options).await;
    // Answers after 1.5 s, so the first dispatcher dies holding the delivery.
    let receiver = Receiver::start(&[], Duration::from_millis(1500)).await;
    let dispatcher = || {
        app.process("", &["worker"])
            .env("FLOWGATE_WEBHOOKS__TIMEOUT", "3s")
            .spawn()
            .unwrap()
    };
    let first = dispatcher();
    subscribe(&app, json!({"name": "r", "url": receiver.url("/")})).await;
    let requests = received(&receiver, 1, Duration::from_secs(20)).await;
    let mut first = first;
    first.kill().unwrap();
    first.wait().unwrap();
    let second = dispatcher();
    // The lease (timeout + margin) runs out, and the other dispatcher sends it.
    let again = received(&receiver, 2, Duration::from_secs(30)).await;
    assert_eq!(
        again[1].headers["webhook-id"],
        requests[0].headers["webhook-id"]
    );
    assert_eq!(again[1].json()["type"], "ping");
    terminate(second).await;
}

async fn a_replay_from_the_cli_sends_its_run_ended() {
    let app = spawn_app(&[("s", SYNC_FLOW.to_owned())]).await;
    let receiver = Receiver::start(&[], Duration::ZERO).await;
    subscribe(
        &app,
        json!({"name": "ended", "url": receiver.url("/"), "events": ["run.ended"]}),
    )
    .await;
    let original = app.post_json("s", r#"{"n": 1}"#).await;
    let original = original.headers()["x-flowgate-run-id"]
        .to_str()
        .unwrap()
        .to_owned();
    app.record_when(&original, |r| r.status.as_str() == "succeeded")
        .await;
    let (stdout, stderr, code) = cli(&app, &["runs", "replay", &original]);
    assert_eq!(code, 0, "{stderr}");
    let replayed = stdout.trim().to_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ended: Vec<Value> = receiver
            .requests()
            .iter()
            .map(Received::json)
            .filter(|m| m["type"] == "run.ended")
            .collect();
        if ended
            .iter()
            .any(|m| m["data"]["run_id"] == replayed.as_str())
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no run.ended for the replay {replayed}: {ended:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn the_cli_manages_subscriptions_and_reads_the_log() {
    let app = spawn_app(&[("s", SYNC_FLOW.to_owned())]).await;
    let receiver = Receiver::start(&[], Duration::ZERO).await;
    let url = receiver.url("/cli");
    let (out, err, code) = cli(
        &app,
        &[
            "webhooks",
            "create",
            "--name",
            "from cli",
            "--url",
            &url,
            "--events",
            "run.ended,flow.status_changed",
            "--flows",
            "s",
            "--generate-secret",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let created: Value = serde_json::from_str(&out).unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert_eq!(
        created["events"],
        json!(["flow.status_changed", "run.ended"])
    );
    // The running gateway sends the ping the CLI stored.
    let requests = received(&receiver, 1, Duration::from_secs(5)).await;
    assert!(verify(&secret, &requests[0]));
    logged(&app, &id, 1).await;
    let (out, _, code) = cli(&app, &["webhooks", "list"]);
    assert_eq!(code, 0);
    assert!(
        out.contains(&id) && out.contains("from cli") && !out.contains("whsec_"),
        "{out}"
    );
    let (out, _, _) = cli(&app, &["webhooks", "deliveries", &id]);
    assert!(
        out.contains("ping") && out.contains("succeeded") && out.contains("200"),
        "{out}"
    );

    let (_, err, code) = cli(&app, &["webhooks", "delete", &id]);
    assert_ne!(code, 0);
    assert!(err.contains("disable it first"), "{err}");
    // Disabled from the CLI, a run is skipped; enabled and recovered from
    // the CLI at once, the gateway sends it (its copy of the subscriptions
    // may still say disabled for up to a second).
    assert_eq!(cli(&app, &["webhooks", "disable", &id]).2, 0);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(app.post_json("s", r#"{"n": 1}"#).await.status(), 200);
    let entries = logged(&app, &id, 2).await;
    assert_eq!(entries[0]["outcome"], "skipped", "{entries:?}");
    assert_eq!(cli(&app, &["webhooks", "enable", &id]).2, 0);
    let (out, err, code) = cli(&app, &["webhooks", "recover", &id]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("1 deliveries queued"), "{out}");
    let requests = received(&receiver, 2, Duration::from_secs(5)).await;
    assert_eq!(requests[1].json()["type"], "run.ended");
    let (out, _, code) = cli(&app, &["webhooks", "update", &id, "--format", "xml"]);
    assert_eq!(code, 0);
    assert!(out.contains("\"xml\""), "{out}");
    let (_, err, code) = cli(&app, &["webhooks", "update", &id, "--statuses", "fine"]);
    assert_ne!(code, 0);
    assert!(err.contains("statuses"), "{err}");
    assert_eq!(cli(&app, &["webhooks", "disable", &id]).2, 0);
    assert_eq!(cli(&app, &["webhooks", "delete", &id]).2, 0);
    let (_, audit) = api(&app, "GET", "audit?actor=cli:alice", None).await;
    let actions: Vec<&str> = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "webhook.delete",
            "webhook.disable",
            "webhook.update",
            "webhook.recover",
            "webhook.enable",
            "webhook.disable",
            "webhook.create"
        ]
    );
}

/// An HTTPS receiver on loopback serving `cert`; its port and the bodies it got.
async fn tls_receiver(
    cert: &[u8],
    key: &[u8],
) -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use http_body_util::BodyExt;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key).unwrap();
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        tokio_rustls::rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let recorded = bodies.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, recorded) = (acceptor.clone(), recorded.clone());
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let recorded = recorded.clone();
                        async move {
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            recorded
                                .lock()
                                .unwrap()
                                .push(String::from_utf8_lossy(&body).into_owned());
                            Ok::<_, std::convert::Infallible>(http::Response::new(
                                http_body_util::Full::new(bytes::Bytes::from_static(b"ok")),
                            ))
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (port, bodies)
}

async fn deliveries_go_over_https_to_a_receiver_signed_by_a_ca_the_config_trusts() {
    let certs = tempfile::tempdir().unwrap();
    let (ca, leaf, key) = test_certificates(certs.path());
    let (port, bodies) = tls_receiver(&leaf, &key).await;
    let url = format!("https://localhost:{port}/tls");
    let trusting = AppOptions {
        webhook_settings: flowgate::webhooks::WebhookSettings {
            allow_http: false,
            ca_pem: Some(ca),
            ..test_webhook_settings()
        },
        ..AppOptions::default()
    };
    let app = spawn_app_with(&[], trusting).await;
    let (status, refused) = api(
        &app,
        "POST",
        "webhooks",
        Some(json!({"name": "plain", "url": format!("http://localhost:{port}/")})),
    )
    .await;
    assert_eq!(
        status, 422,
        "plain http is refused without webhooks.allow_http: {refused}"
    );
    let created = subscribe(&app, json!({"name": "tls", "url": url})).await;
    let entries = logged(&app, created["id"].as_str().unwrap(), 1).await;
    assert_eq!(entries[0]["outcome"], "succeeded", "{}", entries[0]);
    let got = bodies.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    assert!(got[0].contains("\"type\":\"ping\""), "{got:?}");

    // Without the CA the certificate is not trusted: a failed attempt, nothing sent.
    let untrusting = spawn_app(&[]).await;
    let created = subscribe(&untrusting, json!({"name": "tls", "url": url})).await;
    let entries = logged(&untrusting, created["id"].as_str().unwrap(), 1).await;
    assert_eq!(entries[0]["outcome"], "failed");
    assert_eq!(entries[0]["response_status"], 0);
    let error = entries[0]["error"].as_str().unwrap().to_lowercase();
    assert!(
        error.contains("certificate") || error.contains("tls") || error.contains("issuer"),
        "{error}"
    );
    assert_eq!(bodies.lock().unwrap().len(), 1);
}

async fn the_delivery_log_is_pruned_past_its_retention() {
    let options = AppOptions {
        webhook_settings: flowgate::webhooks::WebhookSettings {
            retention: Duration::from_secs(2),
            ..test_webhook_settings()
        },
        ..AppOptions::default()
    };
    let app = spawn_app_with(&[], options).await;
    let receiver = Receiver::start(&[], Duration::ZERO).await;
    let created = subscribe(&app, json!({"name": "r", "url": receiver.url("/")})).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let entry = logged(&app, &id, 1).await.remove(0);
    let delivery = entry["delivery_id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(2200)).await;
    tokio::spawn(
        app.app
            .webhooks()
            .clone()
            .keep_pruned(Duration::from_millis(100)),
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !log(&app, &id).await.is_empty() {
        assert!(Instant::now() < deadline, "the log was not pruned");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The delivery itself expired with the same retention: nothing to resend.
    let (status, _) = api(&app, "POST", &format!("deliveries/{delivery}/resend"), None).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_sync_run_never_waits_for_the_store_and_a_lost_record_is_counted() {
    let mut app = spawn_app(&[("s", SYNC_FLOW.to_owned())]).await;
    let receiver = Receiver::start(&[], Duration::ZERO).await;
    subscribe(
        &app,
        json!({"name": "ended", "url": receiver.url("/"), "events": ["run.ended"]}),
    )
    .await;
    received(&receiver, 1, Duration::from_secs(5)).await;
    app.redis.stop();
    // The store is unreachable: the sync run still answers, at once.
    let started = Instant::now();
    let answer = app.post_json("s", r#"{"n": 1}"#).await;
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.text().await.unwrap(), r#"{"ok": true}"#);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    // Its record, and the run.ended written with it, are lost together, and counted.
    app.text_when(
        &format!("http://{}/metrics", app.addr),
        "flowgate_run_records_lost_total 1",
    )
    .await;
    app.redis.restart();
}

/// `name{subscription="<id>",le="<le>"}` from a metrics page.
fn bucket(metrics: &str, name: &str, id: &str, le: &str) -> u64 {
    let prefix = format!("{name}_bucket{{subscription=\"{id}\",le=\"{le}\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map_or(0, |n| n.trim().parse().unwrap())
}

async fn a_slow_receiver_delays_only_itself() {
    let options = AppOptions {
        webhook_settings: flowgate::webhooks::WebhookSettings {
            timeout: Duration::from_secs(10),
            ..test_webhook_settings()
        },
        ..AppOptions::default()
    };
    let app = spawn_app_with(&[("s", SYNC_FLOW.to_owned())], options).await;
    let slow = Receiver::start(&[], Duration::from_secs(4)).await;
    let fast = Receiver::start(&[], Duration::ZERO).await;
    let mut ids = Vec::new();
    for (name, receiver) in [("slow", &slow), ("fast", &fast)] {
        let created = subscribe(
            &app,
            json!({"name": name, "url": receiver.url("/hook"), "events": ["run.ended"]}),
        )
        .await;
        ids.push(created["id"].as_str().unwrap().to_owned());
    }
    // 400 runs, 2 senders at a time: 400 events for each receiver, far
    // more than the slow one takes in the time (and more than the
    // dispatcher's 256 slots, which the slow one alone once filled).
    const RUNS: usize = 400;
    const SENDERS: usize = 2;
    let mut senders = tokio::task::JoinSet::new();
    for sender in 0..SENDERS {
        let (client, url, token) = (app.client.clone(), app.url("s"), app.token("s"));
        senders.spawn(async move {
            for n in (sender..RUNS).step_by(SENDERS) {
                let answer = client
                    .post(&url)
                    .bearer_auth(&token)
                    .header("content-type", "application/json")
                    .body(format!(r#"{{"n": {n}}}"#))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(answer.status(), 200);
            }
        });
    }
    senders.join_all().await;
    // Every event reaches the fast receiver soon after its run, while the
    // slow one has taken a handful.
    received(&fast, RUNS, Duration::from_secs(20)).await;
    let metrics = app.get("/metrics").await.text().await.unwrap();
    let lag = "flowgate_webhook_subscription_lag_seconds";
    let slow_so_far = slow.requests().len();
    assert!(
        slow_so_far < RUNS / 2,
        "the slow receiver has {slow_so_far}"
    );
    let within_1s = bucket(&metrics, lag, &ids[1], "1");
    let all = bucket(&metrics, lag, &ids[1], "+Inf");
    assert!(all >= RUNS as u64, "{all}");
    assert!(
        within_1s * 100 >= all * 99,
        "fast receiver lag p99 over 1 s: {within_1s} of {all} within 1 s"
    );
    // The slow one's attempts are seen for what they are, once they end.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let metrics = app.get("/metrics").await.text().await.unwrap();
    let attempts = "flowgate_webhook_attempt_duration_seconds";
    let slow_quick = bucket(&metrics, attempts, &ids[0], "2.5");
    let slow_all = bucket(&metrics, attempts, &ids[0], "+Inf");
    assert!(
        slow_all >= 8 && slow_quick == 0,
        "{slow_quick} of {slow_all}"
    );
}

crate::on_all_backends!(
    a_slow_receiver_delays_only_itself,
    creating_a_subscription_pings_it_with_a_verifiable_signature,
    run_events_of_sync_and_async_runs_arrive_and_order_by_sequence,
    filters_by_event_flow_and_status_and_xml_parses,
    retries_follow_the_schedule_and_honour_retry_after,
    a_redirect_is_a_failure_and_is_not_followed,
    four_failures_in_a_row_disable_a_subscription_and_a_success_resets_the_count,
    an_enabled_subscription_cannot_be_deleted_and_a_flow_takes_at_most_five,
    bad_subscriptions_and_roles_are_refused_in_the_envelope,
    the_log_cuts_big_responses_and_a_delivery_can_be_resent,
    a_rotated_secret_signs_alongside_the_new_one_until_its_grace_ends,
    the_delivery_log_is_pruned_past_its_retention,
    deliveries_go_over_https_to_a_receiver_signed_by_a_ca_the_config_trusts,
    the_cli_manages_subscriptions_and_reads_the_log,
    a_replay_from_the_cli_sends_its_run_ended,
);
