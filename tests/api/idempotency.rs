//! Repeated deliveries: `Idempotency-Key` and provider delivery ids.

use std::time::Duration;

use crate::helpers::*;

fn calling_flow(url: &str, mode: &str) -> String {
    format!(
        r#"
status = "live"
[trigger]
ref = "web1"
mode = "{mode}"
[[steps]]
ref = "call"
kind = "http"
url = "{url}"
body = {{ n = "{{{{ web1.n }}}}" }}
"#
    )
}

async fn post_with_key(
    app: &TestApp,
    flow: &str,
    header: &str,
    key: &str,
    body: &str,
) -> reqwest::Response {
    app.client
        .post(app.url(flow))
        .bearer_auth(app.token(flow))
        .header("content-type", "application/json")
        .header(header, key)
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

async fn a_repeat_gets_the_first_answer_and_starts_nothing() {
    let receiver = Receiver::start(&[], Duration::ZERO).await;
    let app = spawn_app(&[("s", calling_flow(&receiver.url("/s"), "sync"))]).await;
    let first = post_with_key(&app, "s", "Idempotency-Key", "order-1", r#"{"n": 1}"#).await;
    assert_eq!(first.status(), 200);
    assert!(!first.headers().contains_key("idempotent-replayed"));
    let run_id = first.headers()["x-flowgate-run-id"].clone();
    let first_body = first.text().await.unwrap();
    // Even with another body, the repeat is answered from the first run.
    let again = post_with_key(&app, "s", "Idempotency-Key", "order-1", r#"{"n": 2}"#).await;
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.headers()["x-flowgate-run-id"], run_id);
    assert_eq!(again.text().await.unwrap(), first_body);
    assert_eq!(receiver.requests().len(), 1);
    // Another key runs again.
    let other = post_with_key(&app, "s", "Idempotency-Key", "order-2", r#"{"n": 3}"#).await;
    assert_ne!(other.headers()["x-flowgate-run-id"], run_id);
    assert_eq!(receiver.requests().len(), 2);
}

async fn concurrent_duplicates_make_exactly_one_run() {
    let receiver = Receiver::start(&[], Duration::from_millis(500)).await;
    let app = spawn_app(&[("s", calling_flow(&receiver.url("/s"), "sync"))]).await;
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (client, url, token) = (app.client.clone(), app.url("s"), app.token("s"));
        tasks.push(tokio::spawn(async move {
            let response = client
                .post(url)
                .bearer_auth(token)
                .header("idempotency-key", "same")
                .json(&serde_json::json!({"n": 1}))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            response.headers()["x-flowgate-run-id"]
                .to_str()
                .unwrap()
                .to_owned()
        }));
    }
    let mut run_ids = Vec::new();
    for task in tasks {
        run_ids.push(task.await.unwrap());
    }
    run_ids.dedup();
    assert_eq!(run_ids.len(), 1, "{run_ids:?}");
    assert_eq!(receiver.requests().len(), 1);
}

async fn async_repeats_and_provider_delivery_ids() {
    let receiver = Receiver::start(&[], Duration::ZERO).await;
    let app = spawn_app(&[("a", calling_flow(&receiver.url("/a"), "async"))]).await;
    let first = post_with_key(
        &app,
        "a",
        "X-GitHub-Delivery",
        "72d3162e-cc78",
        r#"{"n": 1}"#,
    )
    .await;
    assert_eq!(first.status(), 202);
    let again = post_with_key(
        &app,
        "a",
        "X-GitHub-Delivery",
        "72d3162e-cc78",
        r#"{"n": 1}"#,
    )
    .await;
    assert_eq!(again.status(), 202);
    assert_eq!(
        again.headers()["x-flowgate-run-id"],
        first.headers()["x-flowgate-run-id"]
    );
    assert_eventually(Duration::from_secs(10), "the run executed", || {
        receiver.requests().len() == 1
    })
    .await;
    app.drained().await;
    assert_eq!(receiver.requests().len(), 1);
}

async fn keys_are_per_flow_and_a_failed_run_frees_its_key() {
    // The first call answers 503 (the run fails), the retry 200.
    let receiver = Receiver::start(&[503], Duration::ZERO).await;
    let app = spawn_app(&[
        ("x", calling_flow(&receiver.url("/x"), "sync")),
        ("y", calling_flow(&receiver.url("/y"), "sync")),
    ])
    .await;
    let failed = post_with_key(&app, "x", "Idempotency-Key", "k", r#"{"n": 1}"#).await;
    envelope(failed, 500, "run_failed").await;
    let retried = post_with_key(&app, "x", "Idempotency-Key", "k", r#"{"n": 1}"#).await;
    assert_eq!(retried.status(), 200);
    assert!(!retried.headers().contains_key("idempotent-replayed"));
    let other_flow = post_with_key(&app, "y", "Idempotency-Key", "k", r#"{"n": 1}"#).await;
    assert_eq!(other_flow.status(), 200);
    assert!(!other_flow.headers().contains_key("idempotent-replayed"));
    assert_eq!(receiver.requests().len(), 3);
}

crate::on_all_backends!(
    a_repeat_gets_the_first_answer_and_starts_nothing,
    concurrent_duplicates_make_exactly_one_run,
    async_repeats_and_provider_delivery_ids,
    keys_are_per_flow_and_a_failed_run_frees_its_key,
);

crate::on_cluster!(
    concurrent_duplicates_make_exactly_one_run,
    async_repeats_and_provider_delivery_ids,
);
