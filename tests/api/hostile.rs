//! Hostile senders: bodies, clients and values built to crash, stall,
//! poison or probe the gateway.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use flowgate::engine::RunState;

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
    assert_eq!(healthz(&app, Duration::from_secs(5)).await, Some(200));
}

async fn xml_at_the_depth_bound_is_queued_and_runs() {
    let receiver = Receiver::start(&[], Duration::ZERO).await;
    let app = spawn_app(&[("x", echo_async_flow(&receiver.url("/hook")))]).await;
    let response = app
        .client
        .post(app.url("x"))
        .bearer_auth(app.token("x"))
        .header("content-type", "text/xml")
        .body(nested_xml(flowgate::inbound::body::MAX_BODY_DEPTH))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let run_id = response.headers()["x-flowgate-run-id"].to_str().unwrap();
    let record = app.record_when(run_id, |r| r.status == "succeeded").await;
    assert_eq!(
        flowgate::codec::nesting_depth(record.body.to_string().as_bytes()),
        flowgate::inbound::body::MAX_BODY_DEPTH
    );
    assert_eventually(Duration::from_secs(10), "the run posted the body", || {
        receiver.requests().len() == 1
    })
    .await;
    let sent = receiver.requests()[0].json();
    assert_eq!(
        flowgate::codec::nesting_depth(sent.to_string().as_bytes()),
        flowgate::inbound::body::MAX_BODY_DEPTH
    );
}

/// Limits with short timeouts, so slow clients are seen off within a test.
fn short_limits() -> flowgate::config::ServerConfig {
    flowgate::config::ServerConfig {
        header_read_timeout: Duration::from_millis(500),
        body_read_timeout: Duration::from_millis(500),
        idle_timeout: Duration::from_secs(1),
        ..Default::default()
    }
}

fn plain_flow() -> String {
    "status = \"live\"\n[trigger]\nref = \"web1\"\nmax_body_bytes = 100\n".to_owned()
}

/// A flow authenticated only by a GitHub-style body signature.
fn signature_flow() -> String {
    "status = \"live\"\n[trigger]\nref = \"gh\"\nauth = [\"signature\"]\n[trigger.signature]\nscheme = \"github\"\nsecret_env = \"GH_SECRET\"\n".to_owned()
}

async fn app_with_limits(limits: flowgate::config::ServerConfig) -> TestApp {
    let options = AppOptions {
        limits,
        secrets: vec![("GH_SECRET", "gh-secret".to_owned())],
        ..Default::default()
    };
    spawn_app_with(&[("p", plain_flow()), ("gh", signature_flow())], options).await
}

/// Reads until the peer closes the connection or `within` passes; what arrived.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&seen).into_owned()),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

/// `/healthz`'s status, or `None` when no answer came `within` on a
/// connection the kernel took; a refused or reset connection (the gateway
/// down) fails the test instead of reading as "not answered".
async fn healthz(app: &TestApp, within: Duration) -> Option<u16> {
    let request = app
        .client
        .get(format!("http://{}/healthz", app.addr))
        .send();
    match tokio::time::timeout(within, request).await {
        Ok(Ok(response)) => Some(response.status().as_u16()),
        Ok(Err(e)) => panic!("/healthz failed instead of answering or waiting: {e:?}"),
        Err(_) => None,
    }
}

#[tokio::test]
async fn slow_partial_and_idle_clients_are_disconnected() {
    let app = app_with_limits(short_limits()).await;
    // Headers dribbling in, one byte every 100 ms, never finished in time.
    let mut dribbling = TcpStream::connect(app.addr).await.unwrap();
    let dribble = tokio::spawn(async move {
        for byte in b"POST /v1/flow-webhook/p HTTP/1.1\r\nHost: x\r\n".iter() {
            if dribbling.write_all(&[*byte]).await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    });
    // Partial headers, then nothing.
    let mut partial = TcpStream::connect(app.addr).await.unwrap();
    partial
        .write_all(b"GET /healthz HTTP/1.1\r\nHo")
        .await
        .unwrap();
    // Connected, and never a byte.
    let mut silent = TcpStream::connect(app.addr).await.unwrap();
    let opened = std::time::Instant::now();
    // A finished request, then idle in keep-alive.
    let mut idle = TcpStream::connect(app.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();

    assert_eq!(
        read_until_closed(&mut silent, Duration::from_secs(5)).await,
        Some(String::new()),
        "a connection that never sends a byte is closed"
    );
    let held = opened.elapsed();
    assert!(
        held < Duration::from_millis(900),
        "held {held:?}: the header read timeout (500 ms), not the idle timeout (1 s)"
    );
    let answered = read_until_closed(&mut idle, Duration::from_secs(5)).await;
    assert!(
        answered
            .expect("idle keep-alive connection closed")
            .starts_with("HTTP/1.1 200"),
    );
    assert!(
        read_until_closed(&mut partial, Duration::from_secs(5))
            .await
            .is_some(),
        "a client with partial headers is disconnected"
    );
    assert!(
        dribble.await.unwrap(),
        "a client sending its headers a byte at a time is disconnected"
    );
}

#[tokio::test]
async fn a_body_that_does_not_arrive_in_time_gets_408() {
    let app = app_with_limits(short_limits()).await;
    let mut slow = TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /v1/flow-webhook/p HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 50\r\n\r\n{{\"a\":",
        app.token("p")
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    let answer = read_until_closed(&mut slow, Duration::from_secs(5))
        .await
        .expect("answered and closed");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""error":"body_timeout""#), "{answer}");
}

#[tokio::test]
async fn an_announced_body_over_the_limit_gets_413_without_100_continue() {
    let app = app_with_limits(short_limits()).await;
    let mut sender = TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /v1/flow-webhook/p HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n",
        app.token("p")
    );
    sender.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), sender.read(&mut buf))
        .await
        .expect("answered before any body was sent")
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(!answer.contains("100 Continue"), "{answer}");
}

#[tokio::test]
async fn expect_100_continue_cannot_tell_which_flows_exist() {
    let app = app_with_limits(Default::default()).await;
    let mut answers = Vec::new();
    for (flow, auth) in [
        ("gh", ""),
        ("nope", ""),
        ("p", ""),
        ("gh", "Authorization: Bearer not-a-token\r\n"),
        ("nope", "Authorization: Bearer not-a-token\r\n"),
    ] {
        let mut stream = TcpStream::connect(app.addr).await.unwrap();
        let head = format!(
            "POST /v1/flow-webhook/{flow} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: 11\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        // What the gateway says before the body is sent.
        let mut first = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut first))
            .await
            .expect("an answer to the head")
            .unwrap();
        let interim = String::from_utf8_lossy(&first[..n]).into_owned();
        assert!(
            interim.starts_with("HTTP/1.1 100 Continue"),
            "{flow}: {interim}"
        );
        stream.write_all(b"{\"a\": true}").await.unwrap();
        let rest = read_until_closed(&mut stream, Duration::from_secs(5))
            .await
            .unwrap();
        let full = format!("{interim}{rest}");
        let status = full.split("\r\n\r\n").nth(1).unwrap().to_owned();
        let body = full.rsplit("\r\n\r\n").next().unwrap().to_owned();
        answers.push((status.lines().next().unwrap_or_default().to_owned(), body));
    }
    for (status, body) in &answers {
        assert!(status.starts_with("HTTP/1.1 401"), "{status}");
        assert_eq!(body, &answers[0].1, "the same 401 for every flow");
    }
}

#[tokio::test]
async fn a_slow_body_cannot_tell_which_flows_exist() {
    let app = app_with_limits(short_limits()).await;
    // 100 bytes announced, 4 sent: every flow waits for the body alike
    // (the signature flow must, to verify it) before the same 401.
    let mut answers = Vec::new();
    for flow in ["gh", "nope", "p"] {
        let mut stream = TcpStream::connect(app.addr).await.unwrap();
        let head = format!(
            "POST /v1/flow-webhook/{flow} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{{\"a\""
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let started = std::time::Instant::now();
        let answer = read_until_closed(&mut stream, Duration::from_secs(5))
            .await
            .unwrap();
        answers.push((flow, started.elapsed(), answer));
    }
    for (flow, took, answer) in &answers {
        assert!(answer.starts_with("HTTP/1.1 401"), "{flow}: {answer}");
        assert!(
            *took >= Duration::from_millis(400),
            "{flow} answered in {took:?}, before the body could arrive"
        );
        let body = answer.rsplit("\r\n\r\n").next().unwrap();
        let first = answers[0].2.rsplit("\r\n\r\n").next().unwrap();
        assert_eq!(body, first, "{flow}");
    }
}

#[tokio::test]
async fn connections_over_the_cap_wait_until_one_closes() {
    let limits = flowgate::config::ServerConfig {
        max_connections: 4,
        header_read_timeout: Duration::from_secs(30),
        ..Default::default()
    };
    let app = app_with_limits(limits).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(app.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(healthz(&app, Duration::from_millis(700)).await, None);
    drop(held);
    assert_eq!(healthz(&app, Duration::from_secs(5)).await, Some(200));
}

#[tokio::test]
async fn unauthenticated_body_reads_cannot_take_the_gateway() {
    let limits = flowgate::config::ServerConfig {
        max_unauthenticated_reads: 4,
        ..Default::default()
    };
    let app = app_with_limits(limits).await;
    // Four senders announce a body to the signature flow and send one byte.
    let mut holding = Vec::new();
    for _ in 0..4 {
        let mut stream = TcpStream::connect(app.addr).await.unwrap();
        stream
            .write_all(b"POST /v1/flow-webhook/gh HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 900000\r\n\r\n{")
            .await
            .unwrap();
        holding.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fifth = app
        .client
        .post(app.url("gh"))
        .header("content-type", "application/json")
        .header("x-hub-signature-256", "sha256=00")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(fifth.headers()["retry-after"], "1");
    envelope(fifth, 503, "busy").await;
    // Health and authenticated senders are not held up.
    assert_eq!(healthz(&app, Duration::from_secs(2)).await, Some(200));
    let authenticated = tokio::time::timeout(Duration::from_secs(2), app.post_json("p", "{}"))
        .await
        .expect("an authenticated request is served at once");
    assert_eq!(authenticated.status(), 200);
    // A body announced over the server's limit is never read: the same 401
    // as for a flow that does not exist.
    for flow in ["gh", "no-such-flow"] {
        let response = app
            .client
            .post(app.url(flow))
            .header("content-type", "application/json")
            .header("x-hub-signature-256", "sha256=00")
            .body(vec![b' '; 2 * 1024 * 1024])
            .send()
            .await
            .unwrap();
        envelope(response, 401, "unauthorized").await;
    }
}

#[tokio::test]
async fn sighup_does_not_stop_the_gateway() {
    let app = spawn_app(&[("p", plain_flow())]).await;
    let port = free_port();
    let child = app.spawn_process(
        &format!("[server]\nlisten = \"127.0.0.1:{port}\"\n[paths]\nflows = \"flows\"\ntemplates = \"templates\"\n"),
        &["serve", "--no-worker"],
    );
    let url = format!("http://127.0.0.1:{port}/healthz");
    app.text_when(&url, "ok").await;
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = app.client.get(&url).send().await.expect("still serving");
    assert_eq!(after.status(), 200);
    let status = terminate(child).await;
    assert!(status.success(), "{status:?}");
}

/// Status, headers (but the per-request id) and body of an answer.
async fn observable(response: reqwest::Response) -> (u16, Vec<(String, String)>, String) {
    let status = response.status().as_u16();
    let mut headers: Vec<(String, String)> = response
        .headers()
        .iter()
        .filter(|(name, _)| !["x-request-id", "date"].contains(&name.as_str()))
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
        .collect();
    headers.sort();
    (status, headers, response.text().await.unwrap())
}

#[tokio::test]
async fn every_401_is_the_same_whatever_the_flow_or_the_failure() {
    let flows = [
        (
            "bearer",
            "status = \"live\"\n[trigger]\nref = \"w\"\n".to_owned(),
        ),
        ("gh", signature_flow()),
        (
            "query",
            "status = \"live\"\n[trigger]\nref = \"w\"\nauth = [\"query_token\"]\n".to_owned(),
        ),
        (
            "cors",
            "status = \"live\"\n[trigger]\nref = \"w\"\ncors_origins = [\"https://app.example\"]\n"
                .to_owned(),
        ),
    ];
    let options = AppOptions {
        secrets: vec![("GH_SECRET", "gh-secret".to_owned())],
        ..Default::default()
    };
    let app = spawn_app_with(&flows, options).await;
    let mut answers = Vec::new();
    for flow in ["bearer", "gh", "query", "cors", "no-such-flow"] {
        let requests = [
            app.client.post(app.url(flow)),
            app.client.post(app.url(flow)).bearer_auth("garbage"),
            app.client
                .post(format!("{}?access_token=garbage", app.url(flow))),
            app.client
                .post(app.url(flow))
                .header("origin", "https://evil.example")
                .bearer_auth("garbage"),
            app.client
                .request(reqwest::Method::OPTIONS, app.url(flow))
                .header("origin", "https://evil.example")
                .header("access-control-request-method", "POST"),
            app.client
                .post(app.url(flow))
                .header("x-hub-signature-256", "sha256=00")
                .body("{}"),
        ];
        for request in requests {
            answers.push((flow, observable(request.send().await.unwrap()).await));
        }
    }
    let (_, first) = &answers[0];
    assert_eq!(first.0, 401);
    for (flow, answer) in &answers {
        assert_eq!(answer, first, "{flow}");
    }
}

async fn credentials_are_redacted_from_templates_and_records() {
    let flow = r#"
status = "live"
[trigger]
ref = "w"
redact_headers = ["X-Tenant-Secret"]
[response]
body_inline = "{{ request.headers.cookie }}|{{ request.headers['x-api-key'] }}|{{ request.headers['x-tenant-secret'] }}|{{ request.query.token }}|{{ request.query.page }}"
"#;
    let app = spawn_app(&[("r", flow.to_owned())]).await;
    let response = app
        .client
        .post(format!("{}?token=sekrit&page=2", app.url("r")))
        .bearer_auth(app.token("r"))
        .header("cookie", "session=abc")
        .header("cookie2", "$Version=1; legacy=c2-secret")
        .header("x-api-key", "key-123")
        .header("x-tenant-secret", "t-456")
        .header("proxy-authorization", "Basic eHg6eXk=")
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let run_id = run_id(&response);
    assert_eq!(
        response.text().await.unwrap(),
        "[redacted]|[redacted]|[redacted]|[redacted]|2"
    );
    let record = app.record_when(&run_id, |r| r.status == "succeeded").await;
    let stored = serde_json::to_string(&record).unwrap();
    for secret in [
        "session=abc",
        "c2-secret",
        "key-123",
        "t-456",
        "sekrit",
        "eHg6eXk=",
    ] {
        assert!(!stored.contains(secret), "{secret} in {stored}");
    }
    assert_eq!(
        record.request["headers"]["proxy-authorization"],
        "[redacted]"
    );
}

#[tokio::test]
async fn a_request_id_with_markup_in_it_is_replaced_by_a_new_one() {
    let flow = "status = \"live\"\n[trigger]\nref = \"w\"\n[response]\nbody_inline = \"{{ request.id }}\"\n";
    let app = spawn_app(&[("i", flow.to_owned())]).await;
    let send = |id: &'static str| {
        app.client
            .post(app.url("i"))
            .bearer_auth(app.token("i"))
            .header("x-request-id", id)
            .json(&serde_json::json!({}))
            .send()
    };
    let sane = send("Root=1-5759e988:bd862e3f/fe1b+c=").await.unwrap();
    assert_eq!(
        sane.headers()["x-request-id"],
        "Root=1-5759e988:bd862e3f/fe1b+c="
    );
    assert_eq!(
        sane.text().await.unwrap(),
        "Root=1-5759e988:bd862e3f/fe1b+c="
    );
    for hostile in ["\"><img src=x onerror=alert(1)>", "a;b", "{{7*7}}", "it's"] {
        let answer = send(hostile).await.unwrap();
        let id = answer.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(id.len(), 32, "{hostile}: {id}");
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{hostile}: {id}");
        assert_eq!(answer.text().await.unwrap(), id);
    }
}

#[tokio::test]
async fn request_text_cannot_forge_log_lines() {
    let flow = "status = \"live\"\n[trigger]\nref = \"w\"\n[[steps]]\nref = \"note\"\nkind = \"log\"\nmessage = \"got {{ w.msg }}\"\n";
    let app = spawn_app(&[("l", flow.to_owned())]).await;
    let port = free_port();
    let log_path = app.dir.path().join("gateway.log");
    let mut command = app.process(
        &format!("[server]\nlisten = \"127.0.0.1:{port}\"\n[paths]\nflows = \"flows\"\ntemplates = \"templates\"\n"),
        &["serve", "--no-worker"],
    );
    command
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(&log_path).unwrap());
    let child = command.spawn().unwrap();
    let health = format!("http://127.0.0.1:{port}/healthz");
    app.text_when(&health, "ok").await;
    let forged =
        "hi\n2026-01-01T00:00:00Z ERROR forged: admin logged in\r\x1b[2K \u{202e}nimda\u{2066}";
    let response = app
        .client
        .post(format!("http://127.0.0.1:{port}/v1/flow-webhook/l"))
        .bearer_auth(app.token("l"))
        .json(&serde_json::json!({ "msg": forged }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(terminate(child).await.success());
    let log = std::fs::read_to_string(&log_path).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("flow log"))
        .unwrap_or_else(|| panic!("the log step wrote a line: {log}"));
    assert!(
        line.contains(r"got hi\n2026-01-01T00:00:00Z ERROR forged"),
        "{line}"
    );
    assert!(!log.lines().any(|l| l.starts_with("2026-01-01")), "{log}");
    assert!(!log.contains('\x1b') && !log.contains('\r'), "{log}");
    // Nor can it make a terminal show the line in another order.
    assert!(!log.contains(['\u{202e}', '\u{2066}']), "{log}");
    assert!(line.contains(r"\u{202e}nimda\u{2066}"), "{line}");
}

#[tokio::test]
async fn json_answers_written_the_jinja_way_stay_valid_and_cannot_be_injected() {
    let seed_style = r#"
status = "live"
[trigger]
ref = "web1"
[[steps]]
ref = "res1"
kind = "transform"
set = { value = "{{ web1.value }}" }
[response]
body = "valid.json.j2"
"#;
    let inline = r#"
status = "live"
[trigger]
ref = "web1"
[response]
body_inline = '{"id": "{{ web1.id }}", "role": "user", "n": {{ web1.n }}, "missing": {{ web1.nope }}}'
"#;
    let options = AppOptions {
        templates: vec![(
            "valid.json.j2",
            r#"{"valid": {% if res1.value == "myResult" %} "{{ res1.value }}" {% else %} false {% endif %}}"#
                .to_owned(),
        )],
        ..Default::default()
    };
    let app = spawn_app_with(
        &[
            ("seed", seed_style.to_owned()),
            ("inline", inline.to_owned()),
        ],
        options,
    )
    .await;
    let matched = app.post_json("seed", r#"{"value": "myResult"}"#).await;
    assert_eq!(matched.status(), 200);
    assert_eq!(matched.headers()["content-type"], "application/json");
    let body: serde_json::Value = serde_json::from_str(&matched.text().await.unwrap()).unwrap();
    assert_eq!(body, serde_json::json!({"valid": "myResult"}));
    let other = app.post_json("seed", r#"{"value": "x"}"#).await;
    let body: serde_json::Value = serde_json::from_str(&other.text().await.unwrap()).unwrap();
    assert_eq!(body, serde_json::json!({"valid": false}));

    let hostile = r#"x", "role": "admin", "y": "</script>{{ 7*7 }}"#;
    let response = app
        .post_json(
            "inline",
            &serde_json::json!({"id": hostile, "n": "1, \"role\": \"admin\""}).to_string(),
        )
        .await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let body: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"id": hostile, "role": "user", "n": "1, \"role\": \"admin\"", "missing": null}),
        "{text}"
    );
    assert!(!text.contains("</script>"), "{text}");
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

#[tokio::test]
async fn compressed_bodies_are_decoded_bombs_refused_and_signatures_checked_as_sent() {
    let echo =
        "status = \"live\"\n[trigger]\nref = \"w\"\n[response]\nbody_inline = \"{{ w.event }}\"\n";
    let signed = "status = \"live\"\n[trigger]\nref = \"gh\"\nauth = [\"signature\"]\n[trigger.signature]\nscheme = \"github\"\nsecret_env = \"GH_SECRET\"\n[response]\nbody_inline = \"{{ gh.event }}\"\n";
    let options = AppOptions {
        secrets: vec![("GH_SECRET", "gh-secret".to_owned())],
        ..Default::default()
    };
    let app = spawn_app_with(
        &[("e", echo.to_owned()), ("gh", signed.to_owned())],
        options,
    )
    .await;
    let send = |flow: &str, encoding: &str, body: Vec<u8>| {
        app.client
            .post(app.url(flow))
            .bearer_auth(app.token(flow))
            .header("content-type", "application/json")
            .header("content-encoding", encoding)
            .body(body)
            .send()
    };
    let ok = send("e", "gzip", gzip(br#"{"event": "zipped"}"#))
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.text().await.unwrap(), "zipped");
    let bomb = gzip(&vec![b' '; 8 * 1024 * 1024]);
    assert!(bomb.len() < 64 * 1024);
    envelope(
        send("e", "gzip", bomb).await.unwrap(),
        413,
        "payload_too_large",
    )
    .await;
    let unknown = send("e", "zstd", b"x".to_vec()).await.unwrap();
    let body = envelope(unknown, 415, "unsupported_media_type").await;
    assert!(body["message"].as_str().unwrap().contains("zstd"), "{body}");

    // GitHub signs the bytes it sends, compressed or not.
    let compressed = gzip(br#"{"event": "push"}"#);
    let sig = format!(
        "sha256={}",
        hex::encode(flowgate::mac::hmac_sha256(b"gh-secret", &[&compressed]))
    );
    let response = app
        .client
        .post(app.url("gh"))
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .header("x-hub-signature-256", sig)
        .body(compressed)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "push");
}

#[tokio::test]
async fn rediss_urls_reach_a_tls_redis() {
    let receiver = Receiver::start(&[], Duration::ZERO).await;
    let app = spawn_app(&[("a", echo_async_flow(&receiver.url("/hook")))]).await;
    let tls = tempfile::tempdir().unwrap();
    let dir = tls.path();
    // A CA, and a certificate for localhost signed by it.
    test_certificates(dir);
    let port = free_port();
    let mut redis = std::process::Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .args([
            "--tls-cert-file",
            "server.pem",
            "--tls-key-file",
            "server.key",
        ])
        .args([
            "--tls-ca-cert-file",
            "ca.pem",
            "--tls-auth-clients",
            "no",
            "--save",
            "",
        ])
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert_eventually(Duration::from_secs(10), "the TLS redis listens", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .await;
    let gateway_port = free_port();
    let config = dir.join("flowgate.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{gateway_port}\"\n[paths]\nflows = \"{0}/flows\"\ntemplates = \"{0}/templates\"\n[storage]\nbackend = \"redis\"\n[redis]\nurl = \"rediss://localhost:{port}/0\"\n[http]\nallow_private_networks = true\n",
            app.dir.path().display()
        ),
    )
    .unwrap();
    let gateway = std::process::Command::new(binary())
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .env("FLOWGATE_SIGNING_KEY", SIGNING_KEY)
        .env("SSL_CERT_FILE", dir.join("ca.pem"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ready = app
        .text_when(
            &format!("http://127.0.0.1:{gateway_port}/readyz"),
            "\"ready\"",
        )
        .await;
    assert!(ready.contains("\"ready\""), "{ready}");
    let response = app
        .client
        .post(format!("http://127.0.0.1:{gateway_port}/v1/flow-webhook/a"))
        .bearer_auth(app.token("a"))
        .json(&serde_json::json!({"over": "tls"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    assert_eventually(
        Duration::from_secs(10),
        "the run queued over TLS ran",
        || receiver.requests().len() == 1,
    )
    .await;
    assert_eq!(
        receiver.requests()[0].json(),
        serde_json::json!({"over": "tls"})
    );
    assert!(terminate(gateway).await.success());
    let _ = redis.kill();
    let _ = redis.wait();
}

#[tokio::test]
async fn http2_streams_are_limited_and_cannot_take_the_gateway() {
    let limits = flowgate::config::ServerConfig {
        max_unauthenticated_reads: 4,
        http2_max_concurrent_streams: 8,
        ..Default::default()
    };
    let app = app_with_limits(limits).await;
    let tcp = TcpStream::connect(app.addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    // The server's settings arrive with its first frames.
    let (first, _) = client
        .send_request(http::Request::get("/healthz").body(()).unwrap(), true)
        .unwrap();
    assert_eq!(first.await.unwrap().status(), 200);
    assert_eq!(client.current_max_send_streams(), 8);
    let mut client = client.ready().await.unwrap();
    let request = |path: &str, length: usize| {
        http::Request::post(path)
            .header("content-type", "application/json")
            .header("content-length", length)
            .body(())
            .unwrap()
    };
    // Four streams announce a body to the signature flow and send one byte.
    let mut held = Vec::new();
    for _ in 0..4 {
        let (response, mut body) = client
            .send_request(request("/v1/flow-webhook/gh", 900_000), false)
            .unwrap();
        body.send_data(bytes::Bytes::from_static(b"{"), false)
            .unwrap();
        held.push((response, body));
        client = client.ready().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (fifth, mut body) = client
        .send_request(request("/v1/flow-webhook/gh", 2), false)
        .unwrap();
    body.send_data(bytes::Bytes::from_static(b"{}"), true)
        .unwrap();
    let fifth = tokio::time::timeout(Duration::from_secs(5), fifth)
        .await
        .expect("answered at once")
        .unwrap();
    assert_eq!(fifth.status(), 503);
    assert_eq!(fifth.headers()["retry-after"], "1");
    let mut client = client.ready().await.unwrap();
    let (health, _) = client
        .send_request(http::Request::get("/healthz").body(()).unwrap(), true)
        .unwrap();
    let health = tokio::time::timeout(Duration::from_secs(5), health)
        .await
        .expect("health is not held up")
        .unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed() {
    let app = app_with_limits(short_limits()).await;
    let tcp = TcpStream::connect(app.addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let (health, _) = client
        .send_request(http::Request::get("/healthz").body(()).unwrap(), true)
        .unwrap();
    assert_eq!(health.await.unwrap().status(), 200);
    // Nothing in progress for `idle_timeout` (1 s): the gateway hangs up,
    // although the client keeps its side open.
    let ended = tokio::time::timeout(Duration::from_secs(5), connection).await;
    assert!(ended.is_ok(), "the idle HTTP/2 connection is still open");
    drop(client);
}

#[tokio::test]
async fn an_http2_client_that_never_answers_pings_is_dropped() {
    let limits = flowgate::config::ServerConfig {
        header_read_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_secs(60),
        http2_keep_alive_interval: Duration::from_secs(2),
        ..Default::default()
    };
    let app = app_with_limits(limits).await;
    let mut tcp = TcpStream::connect(app.addr).await.unwrap();
    // The preface, empty settings, and one GET /healthz; pings go unanswered.
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    let mut block = vec![0x82, 0x86, 0x44, 8];
    block.extend_from_slice(b"/healthz");
    block.extend_from_slice(&[0x41, 1, b'x']);
    hello.extend_from_slice(&[0, 0, block.len() as u8, 1, 0x05, 0, 0, 0, 1]);
    hello.extend_from_slice(&block);
    tcp.write_all(&hello).await.unwrap();
    let opened = std::time::Instant::now();
    let seen = read_until_closed(&mut tcp, Duration::from_secs(10)).await;
    let held = opened.elapsed();
    assert!(seen.is_some(), "the connection is still open");
    // A ping interval (2 s) and a head's time (300 ms) to answer it: not
    // a second interval, and far from the idle timeout.
    assert!(held < Duration::from_millis(3500), "held {held:?}");
}

crate::on_all_backends!(
    xml_at_the_depth_bound_is_queued_and_runs,
    credentials_are_redacted_from_templates_and_records,
);

/// A transform whose work grows with the square of what the sender sends.
const QUADRATIC_FLOW: &str = r#"
status = "live"
timeout = "2s"
[trigger]
ref = "web1"
[[steps]]
ref = "grid"
kind = "transform"
set = { text = "{% for i in range(web1.n) %}{% for j in range(web1.n) %}x{% endfor %}{% endfor %}" }
[response]
body_inline = '{"len": {{ grid.text | length }}}'
"#;

/// An async flow whose transform spins without writing anything; its
/// timeout is long, so the work budget is what stops it.
const SPIN_FLOW: &str = r#"
status = "live"
timeout = "60s"
[trigger]
ref = "web1"
mode = "async"
[[steps]]
ref = "spin"
kind = "transform"
set = { k = "{% for i in range(web1.n) %}{% for j in range(web1.n) %}{% set k = i * j %}{% endfor %}{% endfor %}" }
"#;

#[tokio::test]
async fn costly_templates_stop_at_their_budget_and_health_checks_answer_meanwhile() {
    let app = spawn_app(&[
        ("grid", QUADRATIC_FLOW.to_owned()),
        ("spin", SPIN_FLOW.to_owned()),
    ])
    .await;
    // Work without output stops at the work budget, in a queued run too.
    let accepted = app.post_json("spin", r#"{"n": 20000}"#).await;
    assert_eq!(accepted.status(), 202);
    let record = app
        .record_when(&run_id(&accepted), |r| {
            !matches!(r.status, RunState::Queued | RunState::Running)
        })
        .await;
    assert_eq!(record.status, RunState::Failed, "{record:?}");
    let error = record.error.unwrap().message;
    assert!(error.contains("work budget (templates.fuel)"), "{error}");
    // A small input renders, beyond the inline share, on the pool.
    let small = app.post_json("grid", r#"{"n": 100}"#).await;
    assert_eq!(small.status(), 200);
    assert_eq!(small.text().await.unwrap(), r#"{"len": 10000}"#);

    // Four senders asking for 400 million characters at once.
    let started = std::time::Instant::now();
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let request = app
            .client
            .post(app.url("grid"))
            .bearer_auth(app.token("grid"))
            .header("content-type", "application/json")
            .body(r#"{"n": 20000}"#);
        senders.spawn(async move {
            let response = request.send().await.unwrap();
            let run = run_id(&response);
            (
                response.status().as_u16(),
                run,
                response.text().await.unwrap(),
            )
        });
    }
    // Meanwhile the gateway answers its health check promptly.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..5 {
        assert_eq!(
            healthz(&app, Duration::from_secs(1)).await,
            Some(200),
            "/healthz stalled behind the renders"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Each ends at its budget (or, waiting for a free renderer, at the
    // flow's timeout), recorded as such.
    for (status, run, body) in senders.join_all().await {
        let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
        let record = app
            .record_when(&run, |r| r.status != RunState::Running)
            .await;
        if status == 504 {
            assert_eq!(answer["error"], "run_timed_out", "{body}");
            assert_eq!(record.status, RunState::TimedOut, "{record:?}");
            continue;
        }
        assert_eq!(status, 500, "{body}");
        assert_eq!(answer["error"], "run_failed", "{body}");
        let message = answer["message"].as_str().unwrap();
        assert!(
            message.contains("step `grid`")
                && message.contains("grid.toml#steps.grid.set.text")
                && message.contains("budget"),
            "names the step, the template and the budget: {message}"
        );
        assert_eq!(record.status, RunState::Failed, "{record:?}");
    }
    // Within the flow's timeout, and a small margin, for all four.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_render_still_under_way_does_not_hold_up_the_exit() {
    let app = spawn_app(&[("spin", SPIN_FLOW.to_owned())]).await;
    let port = free_port();
    let child = app.spawn_process(
        &format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nshutdown_grace = \"1s\"\n[templates]\nfuel = 20000000\n"
        ),
        &["serve"],
    );
    let base = format!("http://127.0.0.1:{port}");
    app.text_when(&format!("{base}/healthz"), "ok").await;
    let accepted = app
        .client
        .post(format!("{base}/v1/flow-webhook/spin"))
        .bearer_auth(app.token("spin"))
        .json(&serde_json::json!({"n": 20000}))
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 202);
    // Let its worker start the costly render, then stop the process.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stopping = std::time::Instant::now();
    let exited = terminate(child).await;
    assert!(exited.success(), "{exited:?}");
    let took = stopping.elapsed();
    assert!(
        took < Duration::from_secs(8),
        "the exit waited {took:?} for a render nobody needs"
    );
}
