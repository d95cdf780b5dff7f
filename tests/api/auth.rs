//! Who may trigger a flow: tokens, signatures, query tokens, and the 401s.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use flowgate::mac::hmac_sha256;
use flowgate::token::FlowClaims;

use crate::helpers::*;

fn echo_flow() -> String {
    r#"
status = "live"
[trigger]
ref = "web1"
[response]
body_inline = '{"got": {{ web1.n | tojson }}}'
"#
    .to_owned()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A JWT with an arbitrary header, HMAC-signed with `key`.
fn hand_made_token(header: &str, claims: &serde_json::Value, key: &[u8]) -> String {
    let input = format!(
        "{}.{}",
        b64url(header.as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let sig = hmac_sha256(key, &[input.as_bytes()]);
    format!("{input}.{}", b64url(&sig))
}

async fn post_with_auth(app: &TestApp, flow: &str, auth: Option<&str>) -> reqwest::Response {
    let mut req = app
        .client
        .post(app.url(flow))
        .header("content-type", "application/json")
        .body(r#"{"n":1}"#);
    if let Some(value) = auth {
        req = req.header("authorization", value);
    }
    req.send().await.unwrap()
}

async fn valid_token_runs_the_flow() {
    let app = spawn_app(&[("echo", echo_flow())]).await;
    let response = app.post_json("echo", r#"{"n": 5}"#).await;
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("x-flowgate-run-id"));
    assert_eq!(response.text().await.unwrap(), r#"{"got": 5}"#);
}

async fn bad_tokens_get_401_with_www_authenticate() {
    let app = spawn_app(&[("echo", echo_flow()), ("other", echo_flow())]).await;
    let claims = serde_json::json!({"sub": "echo", "iat": now(), "jti": "j1", "ver": 0});
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &FlowClaims {
            sub: "echo".into(),
            iat: now() - 7200,
            jti: "j2".into(),
            exp: Some(now() - 3600),
            ver: 0,
            role: None,
            use_: None,
        },
        &jsonwebtoken::EncodingKey::from_secret(SIGNING_KEY.as_bytes()),
    )
    .unwrap();
    let alg_none = format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(claims.to_string().as_bytes())
    );
    let other_key = hand_made_token(
        r#"{"alg":"HS256","typ":"JWT"}"#,
        &claims,
        b"some-other-key-some-other-key-12345",
    );
    // HS/RS confusion: claims RS256 but is HMAC-signed with the gateway key.
    let rs_confusion = hand_made_token(
        r#"{"alg":"RS256","typ":"JWT"}"#,
        &claims,
        SIGNING_KEY.as_bytes(),
    );
    let for_other_flow = format!("Bearer {}", app.token("other"));
    let cases: Vec<(&str, Option<String>)> = vec![
        ("missing", None),
        ("bearer without token", Some("Bearer".into())),
        ("bearer with spaces", Some("Bearer   ".into())),
        ("basic scheme", Some("Basic dXNlcjpwYXNz".into())),
        ("garbage", Some("Bearer not-a-jwt".into())),
        ("alg none", Some(format!("Bearer {alg_none}"))),
        ("other key", Some(format!("Bearer {other_key}"))),
        ("expired", Some(format!("Bearer {expired}"))),
        ("other flow", Some(for_other_flow)),
        ("rs256 confusion", Some(format!("Bearer {rs_confusion}"))),
    ];
    for (case, auth) in cases {
        let response = post_with_auth(&app, "echo", auth.as_deref()).await;
        assert_eq!(response.headers()["www-authenticate"], "Bearer", "{case}");
        // Every refusal reads the same; the reason is only logged.
        let body = envelope(response, 401, "unauthorized").await;
        assert_eq!(body, unauthorized_body(), "{case}");
    }
    // A validly signed token of 266 KB is not even looked at.
    let huge = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &FlowClaims {
            sub: "echo".into(),
            iat: now(),
            jti: "j".repeat(266 * 1024),
            exp: None,
            ver: 0,
            role: None,
            use_: None,
        },
        &jsonwebtoken::EncodingKey::from_secret(SIGNING_KEY.as_bytes()),
    )
    .unwrap();
    let response = post_with_auth(&app, "echo", Some(&format!("Bearer {huge}"))).await;
    assert_eq!(
        envelope(response, 401, "unauthorized").await,
        unauthorized_body()
    );
}

/// The one 401 body.
fn unauthorized_body() -> serde_json::Value {
    serde_json::json!({
        "status": 401,
        "error": "unauthorized",
        "message": "missing or invalid credentials",
        "data": null,
    })
}

async fn unknown_flow_is_401_without_a_token_and_404_with_one() {
    let app = spawn_app(&[("echo", echo_flow())]).await;
    // Without credentials an unknown flow looks exactly like a known one.
    let unknown = post_with_auth(&app, "nope", None).await;
    let known = post_with_auth(&app, "echo", None).await;
    let unknown_body = envelope(unknown, 401, "unauthorized").await;
    let known_body = envelope(known, 401, "unauthorized").await;
    assert_eq!(unknown_body, known_body);
    let token = format!("Bearer {}", app.token("nope"));
    let body = envelope(
        post_with_auth(&app, "nope", Some(&token)).await,
        404,
        "not_found",
    )
    .await;
    assert!(body["message"].as_str().unwrap().contains("nope"));
}

async fn github_signature_authenticates_and_a_tampered_body_does_not() {
    let secret = "gh-secret-for-tests";
    let flow = r#"
status = "live"
[trigger]
ref = "gh"
auth = ["signature"]
[trigger.signature]
scheme = "github"
secret_env = "GH_SECRET"
[response]
body_inline = "{{ gh.action }}"
"#;
    let options = AppOptions {
        secrets: vec![("GH_SECRET", secret.to_owned())],
        ..Default::default()
    };
    let app = spawn_app_with(&[("gh", flow.to_owned())], options).await;
    let body = r#"{"action":"opened"}"#;
    let sig = format!(
        "sha256={}",
        hex::encode(hmac_sha256(secret.as_bytes(), &[body.as_bytes()]))
    );
    let send = |payload: &'static str, sig: String| {
        app.client
            .post(app.url("gh"))
            .header("content-type", "application/json")
            .header("x-hub-signature-256", sig)
            .body(payload)
            .send()
    };
    let ok = send(r#"{"action":"opened"}"#, sig.clone()).await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.text().await.unwrap(), "opened");
    let tampered = send(r#"{"action":"closed"}"#, sig).await.unwrap();
    envelope(tampered, 401, "unauthorized").await;
    // A bearer token is not accepted when auth lists only "signature".
    let bearer = post_with_auth(&app, "gh", Some(&format!("Bearer {}", app.token("gh")))).await;
    envelope(bearer, 401, "unauthorized").await;
}

async fn a_body_signature_is_redacted_so_a_reader_of_the_run_cannot_send_it_again() {
    let secret = "acme-secret-for-tests";
    let flow = r#"
status = "live"
[trigger]
ref = "acme"
auth = ["signature"]
[trigger.signature]
scheme = "hmac-sha256"
secret_env = "ACME_SECRET"
header = "X-Acme-Sig"
[response]
body_inline = "{{ request.headers['x-acme-sig'] }}|{{ request.headers['x-hub-signature-256'] }}|{{ request.query | length }}|{{ request.query.page }}"
"#;
    let options = AppOptions {
        secrets: vec![("ACME_SECRET", secret.to_owned())],
        ..Default::default()
    };
    let app = spawn_app_with(&[("acme", flow.to_owned())], options).await;
    let body = r#"{"event":"paid"}"#;
    let sig = hex::encode(hmac_sha256(secret.as_bytes(), &[body.as_bytes()]));
    let response = app
        .client
        .post(format!(
            "{}?ACCESS_TOKEN=query-token-1&page=2",
            app.url("acme")
        ))
        .header("content-type", "application/json")
        .header("x-acme-sig", &sig)
        .header("x-hub-signature-256", "sha256=forwarded-sig-2")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let run_id = run_id(&response);
    // The access token is left out in any case; the signatures read [redacted].
    assert_eq!(response.text().await.unwrap(), "[redacted]|[redacted]|1|2");
    let record = app.record_when(&run_id, |r| r.status == "succeeded").await;
    let stored = serde_json::to_string(&record).unwrap();
    for secret in [sig.as_str(), "forwarded-sig-2", "query-token-1"] {
        assert!(!stored.contains(secret), "{secret} in {stored}");
    }
    assert_eq!(record.request["headers"]["x-acme-sig"], "[redacted]");
}

async fn standard_webhooks_signature_over_http_with_timestamp_tolerance() {
    let raw_secret = b"standard-webhooks-test-secret-32b";
    let flow = r#"
status = "live"
[trigger]
ref = "evt"
auth = ["signature", "bearer"]
[trigger.signature]
scheme = "standard-webhooks"
secret_env = "SW_SECRET"
[response]
body_inline = "{{ evt.type }}"
"#;
    let options = AppOptions {
        secrets: vec![(
            "SW_SECRET",
            format!("whsec_{}", STANDARD.encode(raw_secret)),
        )],
        ..Default::default()
    };
    let app = spawn_app_with(&[("sw", flow.to_owned())], options).await;
    let body = r#"{"type":"invoice.paid"}"#;
    let send = |ts: u64| {
        let ts = ts.to_string();
        let sig = STANDARD.encode(hmac_sha256(
            raw_secret,
            &[b"msg_1", b".", ts.as_bytes(), b".", body.as_bytes()],
        ));
        app.client
            .post(app.url("sw"))
            .header("content-type", "application/json")
            .header("webhook-id", "msg_1")
            .header("webhook-timestamp", ts)
            .header("webhook-signature", format!("v1,{sig}"))
            .body(body)
            .send()
    };
    let fresh = send(now()).await.unwrap();
    assert_eq!(fresh.status(), 200);
    assert_eq!(fresh.text().await.unwrap(), "invoice.paid");
    envelope(send(now() - 600).await.unwrap(), 401, "unauthorized").await;
    // The flow also lists bearer, so a token works too.
    let bearer = post_with_auth(&app, "sw", Some(&format!("Bearer {}", app.token("sw")))).await;
    assert_eq!(bearer.status(), 200);
}

async fn query_token_only_where_the_flow_allows_it() {
    let with_query = r#"
status = "live"
[trigger]
ref = "q"
auth = ["query_token"]
[response]
body_inline = "{{ request.query | tojson }}"
"#;
    let app = spawn_app(&[("q", with_query.to_owned()), ("echo", echo_flow())]).await;
    let url = format!("{}?access_token={}&x=1", app.url("q"), app.token("q"));
    let response = app.client.post(url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    // The token itself is never exposed to templates.
    assert_eq!(response.text().await.unwrap(), r#"{"x": "1"}"#);
    let url = format!("{}?access_token={}", app.url("echo"), app.token("echo"));
    envelope(
        app.client.post(url).send().await.unwrap(),
        401,
        "unauthorized",
    )
    .await;
}

crate::on_all_backends!(
    valid_token_runs_the_flow,
    bad_tokens_get_401_with_www_authenticate,
    unknown_flow_is_401_without_a_token_and_404_with_one,
    github_signature_authenticates_and_a_tampered_body_does_not,
    a_body_signature_is_redacted_so_a_reader_of_the_run_cannot_send_it_again,
    standard_webhooks_signature_over_http_with_timestamp_tolerance,
    query_token_only_where_the_flow_allows_it,
);
