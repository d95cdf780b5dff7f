//! The trigger endpoint after authentication: flow lookup, methods, bodies,
//! paused flows, rendering the answer, CORS.

use std::time::Duration;

use crate::helpers::*;

const PAUSED: &str = r#"{"status":200,"error":"biz_logic","message":"Flow status is `paused`. Unpause to run this flow using a webhook","data":null}"#;

fn flow(status: &str, extra_trigger: &str, response: &str) -> String {
    format!(
        r#"
status = "{status}"
[trigger]
ref = "web1"
{extra_trigger}
[response]
{response}
"#
    )
}

async fn method_not_in_methods_is_405_with_allow() {
    let app = spawn_app(&[("f", flow("live", r#"methods = ["PUT", "PATCH"]"#, ""))]).await;
    let response = app
        .client
        .post(app.url("f"))
        .bearer_auth(app.token("f"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["allow"], "PUT, PATCH");
    envelope(response, 405, "method_not_allowed").await;
    let ok = app
        .client
        .put(app.url("f"))
        .bearer_auth(app.token("f"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}

async fn bodies_over_the_limit_are_413() {
    let app = spawn_app(&[
        ("small", flow("live", "max_body_bytes = 100", "")),
        ("big", flow("live", "", "")),
    ])
    .await;
    let body = format!(r#"{{"pad":"{}"}}"#, "x".repeat(200));
    envelope(
        app.post_json("small", &body).await,
        413,
        "payload_too_large",
    )
    .await;
    assert_eq!(app.post_json("big", &body).await.status(), 200);
    // Over the 1 MiB default.
    let huge = format!(r#"{{"pad":"{}"}}"#, "x".repeat(1024 * 1024 + 10));
    envelope(app.post_json("big", &huge).await, 413, "payload_too_large").await;
}

async fn malformed_and_unsupported_bodies_are_400_and_415() {
    let app = spawn_app(&[
        ("f", flow("live", "", "")),
        (
            "any",
            flow(
                "live",
                "accept_any = true",
                "body_inline = \"{{ request.raw }}\"",
            ),
        ),
    ])
    .await;
    let body = envelope(app.post_json("f", r#"{"a": "#).await, 400, "bad_request").await;
    assert!(
        body["message"].as_str().unwrap().contains("not valid JSON"),
        "{body}"
    );
    let send = |flow: &'static str, ct: &'static str, body: &'static str| {
        app.client
            .post(app.url(flow))
            .bearer_auth(app.token(flow))
            .header("content-type", ct)
            .body(body)
            .send()
    };
    let body = envelope(
        send("f", "application/xml", "<a><b></a>").await.unwrap(),
        400,
        "bad_request",
    )
    .await;
    assert!(
        body["message"].as_str().unwrap().contains("not valid XML"),
        "{body}"
    );
    let body = envelope(
        send("f", "application/octet-stream", "\x01\x02")
            .await
            .unwrap(),
        415,
        "unsupported_media_type",
    )
    .await;
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("application/octet-stream"),
        "{body}"
    );
    // accept_any exposes the raw body instead.
    let ok = send("any", "application/octet-stream", "raw bytes")
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.text().await.unwrap(), "raw bytes");
}

async fn paused_answers_the_fixed_body_and_runs_nothing() {
    let receiver = Receiver::start(&[], Duration::ZERO).await;
    let paused = format!(
        r#"
status = "paused"
[trigger]
ref = "web1"
[[steps]]
ref = "call"
kind = "http"
url = "{}"
"#,
        receiver.url("/hook")
    );
    let live = paused.replace("paused", "live");
    let app = spawn_app(&[("p", paused), ("l", live)]).await;
    let response = app.post_json("p", r#"{"a":1}"#).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert!(!response.headers().contains_key("x-flowgate-run-id"));
    assert_eq!(response.text().await.unwrap(), PAUSED);
    // Even a malformed body gets the paused answer: nothing is parsed or run.
    assert_eq!(
        app.post_json("p", "{oops").await.text().await.unwrap(),
        PAUSED
    );
    assert!(receiver.requests().is_empty());
    // Control: the same flow live does call the receiver.
    assert_eq!(app.post_json("l", r#"{"a":1}"#).await.status(), 200);
    assert_eq!(receiver.requests().len(), 1);
}

async fn request_data_is_never_template_source() {
    let app = spawn_app(&[(
        "f",
        flow(
            "live",
            "",
            "body_inline = \"{{ web1.text }}|{{ request.raw }}\"",
        ),
    )])
    .await;
    let response = app.post_json("f", r#"{"text":"{{ 7*7 }}"}"#).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.text().await.unwrap(),
        r#"{{ 7*7 }}|{"text":"{{ 7*7 }}"}"#
    );
}

async fn status_template_outside_http_range_is_a_clear_500() {
    let app = spawn_app(&[("f", flow("live", "", r#"status = "{{ web1.code }}""#))]).await;
    let ok = app.post_json("f", r#"{"code": 418}"#).await;
    assert_eq!(ok.status(), 418);
    let body = envelope(
        app.post_json("f", r#"{"code": 999}"#).await,
        500,
        "response_invalid",
    )
    .await;
    assert!(
        body["message"].as_str().unwrap().contains("`999`"),
        "{body}"
    );
    assert!(body["data"]["run_id"].is_string(), "{body}");
}

async fn response_uses_file_templates_headers_and_json_escaping() {
    let templates = vec![(
        "answer.json.j2",
        r#"{"name": {{ web1.name }}, "live": {{ run.live }}, "flow": {{ run.flow }}}"#.to_owned(),
    )];
    let f = flow(
        "draft",
        "",
        r#"status = 201
body = "answer.json.j2"
headers = { "x-customer" = "{{ web1.name | upper }}", "content-type" = "application/vnd.test+json" }"#,
    );
    let app = spawn_app_with(
        &[("f", f)],
        AppOptions {
            templates,
            ..Default::default()
        },
    )
    .await;
    let response = app
        .post_json("f", r#"{"name": "Ada \"the\" Countess"}"#)
        .await;
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["x-customer"], "ADA \"THE\" COUNTESS");
    assert_eq!(
        response.headers()["content-type"],
        "application/vnd.test+json"
    );
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        body,
        serde_json::json!({"name": "Ada \"the\" Countess", "live": false, "flow": "f"})
    );
}

async fn form_xml_text_and_empty_bodies_reach_templates() {
    let app = spawn_app(&[(
        "f",
        flow(
            "live",
            r#"methods = ["POST", "GET"]"#,
            "body_inline = \"{{ web1 | tojson }}\"",
        ),
    )])
    .await;
    let send = |ct: &'static str, body: &'static str| {
        app.client
            .post(app.url("f"))
            .bearer_auth(app.token("f"))
            .header("content-type", ct)
            .body(body)
            .send()
    };
    let form = send(
        "application/x-www-form-urlencoded",
        "email=a%40b.c&tag=x&tag=y",
    )
    .await
    .unwrap();
    assert_eq!(
        form.text().await.unwrap(),
        r#"{"email": "a@b.c", "tag": ["x", "y"]}"#
    );
    let xml = send("text/xml", r#"<event type="signup"><id>7</id></event>"#)
        .await
        .unwrap();
    assert_eq!(
        xml.text().await.unwrap(),
        r#"{"event": {"@type": "signup", "id": "7"}}"#
    );
    let text = send("text/plain", "hello").await.unwrap();
    assert_eq!(text.text().await.unwrap(), r#""hello""#);
    let empty = app
        .client
        .get(app.url("f"))
        .bearer_auth(app.token("f"))
        .send()
        .await
        .unwrap();
    assert_eq!(empty.status(), 200);
    assert_eq!(empty.text().await.unwrap(), "{}");
}

async fn request_object_hides_authorization() {
    let app = spawn_app(&[(
        "f",
        flow(
            "live",
            "",
            "body_inline = \"{{ request.headers | tojson }}\"",
        ),
    )])
    .await;
    let response = app
        .client
        .post(format!("{}?a=1", app.url("f")))
        .bearer_auth(app.token("f"))
        .header("x-custom", "yes")
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    let headers: serde_json::Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(headers["x-custom"], "yes");
    assert!(headers.get("authorization").is_none(), "{headers}");
}

async fn cors_is_opt_in() {
    let app = spawn_app(&[
        (
            "c",
            flow("live", r#"cors_origins = ["https://app.example.com"]"#, ""),
        ),
        ("n", flow("live", "", "")),
    ])
    .await;
    let preflight = |flow: &'static str, origin: &'static str| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url(flow))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .send()
    };
    let ok = preflight("c", "https://app.example.com").await.unwrap();
    assert_eq!(ok.status(), 204);
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert!(
        ok.headers()["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("authorization")
    );
    // Another origin, or a flow without CORS, gets no preflight answer.
    assert_eq!(
        preflight("c", "https://evil.example.com")
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        preflight("n", "https://app.example.com")
            .await
            .unwrap()
            .status(),
        401
    );
    let actual = app
        .client
        .post(app.url("c"))
        .bearer_auth(app.token("c"))
        .header("origin", "https://app.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(actual.status(), 200);
    assert_eq!(
        actual.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
}

async fn unknown_routes_and_health() {
    let app = spawn_app(&[("f", flow("live", "", ""))]).await;
    let response = app.get("/nope").await;
    envelope(response, 404, "not_found").await;
    let health = app.get("/healthz").await;
    assert_eq!(health.status(), 200);
    let ready: serde_json::Value = app.get("/readyz").await.json().await.unwrap();
    assert_eq!(ready["flows"], 1);
}

crate::on_all_backends!(
    method_not_in_methods_is_405_with_allow,
    bodies_over_the_limit_are_413,
    malformed_and_unsupported_bodies_are_400_and_415,
    paused_answers_the_fixed_body_and_runs_nothing,
    request_data_is_never_template_source,
    status_template_outside_http_range_is_a_clear_500,
    response_uses_file_templates_headers_and_json_escaping,
    form_xml_text_and_empty_bodies_reach_templates,
    request_object_hides_authorization,
    cors_is_opt_in,
    unknown_routes_and_health,
);
