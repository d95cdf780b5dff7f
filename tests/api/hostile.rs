//! Hostile senders: bodies, clients and values built to crash, stall,
//! poison or probe the gateway.

use std::time::Duration;

use crate::helpers::*;

/// XML nested `elements` deep: `<e0><e1>...x...</e1></e0>`.
fn nested_xml(elements: usize) -> String {
    let open: String = (0..elements).map(|i| format!("<e{i}>")).collect();
    let close: String = (0..elements).rev().map(|i| format!("</e{i}>")).collect();
    format!("{open}x{close}")
}

/// An async flow that posts the body it got to `url`.
fn echo_async_flow(url: &str) -> String {
    format!(
        r#"
status = "live"
[trigger]
ref = "web1"
mode = "async"
[[steps]]
ref = "echo"
kind = "http"
url = "{url}"
body = "{{{{ web1 | tojson }}}}"
"#
    )
}

#[tokio::test]
async fn deeply_nested_xml_is_refused_and_the_gateway_lives_on() {
    let receiver = Receiver::start(&[], Duration::ZERO).await;
    let app = spawn_app(&[("x", echo_async_flow(&receiver.url("/hook")))]).await;
    for elements in [129, 3_400, 50_000] {
        let response = app
            .client
            .post(app.url("x"))
            .bearer_auth(app.token("x"))
            .header("content-type", "application/xml")
            .body(nested_xml(elements))
            .send()
            .await
            .unwrap();
        let body = envelope(response, 400, "bad_request").await;
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("nested too deeply"),
            "{body}"
        );
    }
    let health = app
        .client
        .get(format!("http://{}/healthz", app.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn xml_at_the_depth_bound_is_queued_and_runs() {
    let receiver = Receiver::start(&[], Duration::ZERO).await;
    let app = spawn_app(&[("x", echo_async_flow(&receiver.url("/hook")))]).await;
    let response = app
        .client
        .post(app.url("x"))
        .bearer_auth(app.token("x"))
        .header("content-type", "text/xml")
        .body(nested_xml(flowgate::trigger::body::MAX_BODY_DEPTH))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let run_id = response.headers()["x-flowgate-run-id"].to_str().unwrap();
    let record = app.record_when(run_id, |r| r.status == "succeeded").await;
    assert_eq!(
        flowgate::codec::nesting_depth(record.body.to_string().as_bytes()),
        flowgate::trigger::body::MAX_BODY_DEPTH
    );
    assert_eventually(Duration::from_secs(10), "the run posted the body", || {
        receiver.requests().len() == 1
    })
    .await;
    let sent = receiver.requests()[0].json();
    assert_eq!(
        flowgate::codec::nesting_depth(sent.to_string().as_bytes()),
        flowgate::trigger::body::MAX_BODY_DEPTH
    );
}
