//! Steps as a sender and a receiver see them: what reached the receiver, what
//! came back, how failures and timeouts answer.

use std::time::Duration;

use serde_json::json;

use crate::helpers::*;

fn http_flow(url: &str, step_extra: &str, response: &str) -> String {
    format!(
        r#"
status = "live"
[trigger]
ref = "web1"
[response]
{response}
[[steps]]
ref = "prep"
kind = "transform"
set = {{ amount = "{{{{ web1.amount * 2 }}}}", tags = "{{{{ web1.tags }}}}", label = "order-{{{{ web1.id }}}}" }}
[[steps]]
ref = "call"
kind = "http"
method = "POST"
url = "{url}"
headers = {{ "x-order" = "{{{{ prep.label }}}}" }}
query = {{ source = "flowgate" }}
body = {{ amount = "{{{{ prep.amount }}}}", tags = "{{{{ prep.tags }}}}", note = "id {{{{ web1.id }}}}" }}
{step_extra}
"#
    )
}

async fn http_step_sends_rendered_request_and_exposes_the_response() {
    let receiver = Receiver::start(&[201], Duration::ZERO).await;
    let f = http_flow(
        &receiver.url("/contacts"),
        "",
        r#"body_inline = '{{ call.status }} {{ call.body.received }}'"#,
    );
    let app = spawn_app(&[("f", f)]).await;
    let response = app
        .post_json("f", r#"{"id": 7, "amount": 21, "tags": ["a", "b"]}"#)
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "201 true");
    let got = receiver.requests();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].method, "POST");
    assert_eq!(got[0].path_and_query, "/contacts?source=flowgate");
    assert_eq!(got[0].headers["x-order"], "order-7");
    assert_eq!(got[0].headers["content-type"], "application/json");
    // Single-expression values keep their types: a number and a list.
    assert_eq!(
        got[0].json(),
        json!({"amount": 42, "tags": ["a", "b"], "note": "id 7"})
    );
}

async fn http_step_retries_on_503_then_succeeds() {
    let receiver = Receiver::start(&[503, 503], Duration::ZERO).await;
    let f = http_flow(
        &receiver.url("/r"),
        r#"retry = { attempts = 3, backoff = "10ms" }"#,
        "body_inline = '{{ call.status }}'",
    );
    let app = spawn_app(&[("f", f)]).await;
    let response = app.post_json("f", r#"{"id": 1, "amount": 1}"#).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "200");
    assert_eq!(receiver.requests().len(), 3);
}

async fn http_step_failure_answers_500_with_run_id_or_on_error() {
    let receiver = Receiver::start(&[503, 503, 503, 503], Duration::ZERO).await;
    let plain = http_flow(
        &receiver.url("/r"),
        r#"retry = { attempts = 2, backoff = "10ms" }"#,
        "",
    );
    let custom = http_flow(
        &receiver.url("/r"),
        "",
        r#"[response.on_error]
status = 502
body_inline = '{"failed_step": {{ error.step | tojson }}, "run": {{ run.status | tojson }}}'"#,
    );
    let app = spawn_app(&[("plain", plain), ("custom", custom)]).await;
    let body = envelope(
        app.post_json("plain", r#"{"id": 1, "amount": 1}"#).await,
        500,
        "run_failed",
    )
    .await;
    assert!(
        body["message"].as_str().unwrap().contains("answered 503"),
        "{body}"
    );
    assert!(
        body["data"]["run_id"]
            .as_str()
            .is_some_and(|id| id.len() == 36),
        "{body}"
    );
    assert_eq!(receiver.requests().len(), 2);
    let response = app.post_json("custom", r#"{"id": 1, "amount": 1}"#).await;
    assert_eq!(response.status(), 502);
    assert_eq!(
        response.text().await.unwrap(),
        r#"{"failed_step": "call", "run": "failed"}"#
    );
}

async fn http_step_timeout_fails_the_step() {
    let receiver = Receiver::start(&[], Duration::from_secs(3)).await;
    let f = http_flow(&receiver.url("/slow"), r#"timeout = "200ms""#, "");
    let app = spawn_app(&[("f", f)]).await;
    let body = envelope(
        app.post_json("f", r#"{"id": 1, "amount": 1}"#).await,
        500,
        "run_failed",
    )
    .await;
    assert!(
        body["message"].as_str().unwrap().contains("timed out"),
        "{body}"
    );
}

async fn http_step_to_a_private_address_is_refused_unless_allowed() {
    let receiver = Receiver::start(&[], Duration::ZERO).await;
    let by_ip = http_flow(&receiver.url("/r"), "", "");
    let by_name = http_flow(
        &format!("http://localhost:{}/r", receiver.addr.port()),
        "",
        "",
    );
    let metadata = http_flow("http://169.254.169.254/latest/meta-data/", "", "");
    // IPv6 forms that embed or translate to the receiver's loopback address.
    let port = receiver.addr.port();
    let embedded = |host: &str| http_flow(&format!("http://[{host}]:{port}/r"), "", "");
    let options = AppOptions {
        allow_private_networks: false,
        ..Default::default()
    };
    let app = spawn_app_with(
        &[
            ("ip", by_ip),
            ("name", by_name),
            ("meta", metadata),
            ("mapped", embedded("::ffff:127.0.0.1")),
            ("compat", embedded("::127.0.0.1")),
            ("nat64", embedded("64:ff9b::7f00:1")),
            ("sixtofour", embedded("2002:7f00:1::1")),
        ],
        options,
    )
    .await;
    for flow in [
        "ip",
        "name",
        "meta",
        "mapped",
        "compat",
        "nat64",
        "sixtofour",
    ] {
        let body = envelope(
            app.post_json(flow, r#"{"id": 1, "amount": 1}"#).await,
            500,
            "run_failed",
        )
        .await;
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("refusing to connect"),
            "{flow}: {body}"
        );
    }
    assert!(receiver.requests().is_empty());
}

async fn for_each_branch_and_log_steps() {
    let f = r#"
status = "live"
[trigger]
ref = "web1"
[response]
body_inline = '{{ each.results | tojson }} {{ big.taken }} {{ total.sum }}'
[[steps]]
ref = "each"
kind = "for_each"
items = "{{ web1.lines }}"
steps = [
  { ref = "line", kind = "transform", set = { sku = "{{ item.sku }}", n = "{{ loop.index }}", cost = "{{ item.qty * item.price }}" } },
]
[[steps]]
ref = "total"
kind = "transform"
set = { sum = "{{ each.results | map(attribute='line.cost') | sum }}" }
[[steps]]
ref = "big"
kind = "branch"
when = "total.sum > 10"
then = [ { ref = "note", kind = "log", message = "big order" } ]
else = [ { ref = "small", kind = "log", message = "small order" } ]
"#;
    let app = spawn_app(&[("f", f.to_owned())]).await;
    let response = app.post_json("f", r#"{"lines": [{"sku": "a", "qty": 2, "price": 3}, {"sku": "b", "qty": 1, "price": 5}]}"#).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.text().await.unwrap(),
        r#"[{"line": {"cost": 6, "n": 1, "sku": "a"}}, {"line": {"cost": 5, "n": 2, "sku": "b"}}] then 11"#
    );
}

async fn run_past_its_timeout_answers_504_with_run_id() {
    let f = r#"
status = "live"
timeout = "300ms"
[trigger]
ref = "web1"
[[steps]]
ref = "wait"
kind = "delay"
duration = "5s"
"#;
    let app = spawn_app(&[("f", f.to_owned())]).await;
    let started = std::time::Instant::now();
    let body = envelope(app.post_json("f", "{}").await, 504, "run_timed_out").await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the run was not cut at its timeout"
    );
    assert!(body["data"]["run_id"].is_string(), "{body}");
}

async fn skipped_steps_fail_steps_and_continue_on_error() {
    let f = r#"
status = "live"
[trigger]
ref = "web1"
[response]
body_inline = '{{ maybe | tojson }} {{ broken.error is defined }}'
[[steps]]
ref = "maybe"
kind = "transform"
if = "web1.flag"
set = { ran = true }
[[steps]]
ref = "broken"
kind = "fail"
message = "boom {{ web1.flag }}"
on_error = "continue"
[[steps]]
ref = "stop"
kind = "fail"
if = "web1.stop"
message = "stopped by request"
"#;
    let app = spawn_app(&[("f", f.to_owned())]).await;
    assert_eq!(
        app.post_json("f", r#"{"flag": false}"#)
            .await
            .text()
            .await
            .unwrap(),
        "null true"
    );
    assert_eq!(
        app.post_json("f", r#"{"flag": true}"#)
            .await
            .text()
            .await
            .unwrap(),
        r#"{"ran": true} true"#
    );
    let body = envelope(
        app.post_json("f", r#"{"stop": true}"#).await,
        500,
        "run_failed",
    )
    .await;
    assert_eq!(body["message"], "step `stop` failed: stopped by request");
    // The debugger shows the failed step's output as later steps saw it;
    // a sync run started before its first step and ended after its last.
    let answer = app.post_json("f", r#"{"flag": true}"#).await;
    let record = app
        .record_when(&run_id(&answer), |r| r.ended_at.is_some())
        .await;
    let broken = record.steps.iter().find(|s| s.path == "broken").unwrap();
    assert_eq!(broken.output, serde_json::json!({"error": "boom true"}));
    let at = |t: &str| humantime::parse_rfc3339(t).unwrap();
    let started = at(record.started_at.as_deref().unwrap());
    assert!(started <= at(&record.steps[0].started_at), "{record:?}");
    assert!(started <= at(record.ended_at.as_deref().unwrap()));
    assert!(record.started_at != record.ended_at || record.duration_ms == Some(0));
}

crate::on_all_backends!(
    http_step_sends_rendered_request_and_exposes_the_response,
    http_step_retries_on_503_then_succeeds,
    http_step_failure_answers_500_with_run_id_or_on_error,
    http_step_timeout_fails_the_step,
    http_step_to_a_private_address_is_refused_unless_allowed,
    for_each_branch_and_log_steps,
    run_past_its_timeout_answers_504_with_run_id,
    skipped_steps_fail_steps_and_continue_on_error,
);
