//! The control plane: pause and unpause, token rotation, admin tokens and
//! roles, revocation and the audit log, across replicas on one Redis.

use std::time::{Duration, Instant};

use flowgate::error::PAUSED_BODY;
use flowgate::worker::Outcome;
use serde_json::Value;

use crate::helpers::*;

/// How soon a change must reach every replica.
const PROPAGATION: Duration = Duration::from_secs(1);

const SYNC_FLOW: &str =
    "status = \"live\"\n[trigger]\nref = \"w\"\n[response]\nbody_inline = \"{\\\"ok\\\": true}\"\n";

fn admin_token(app: &TestApp, role: &str) -> String {
    let role = flowgate::token::Role::parse(role).unwrap();
    app.keys.issue_admin("tester", role, None).unwrap()
}

/// Revokes admin token `token` through replica `base`'s API, as `ops`.
async fn revoke_on(app: &TestApp, base: &str, ops: &str, token: &str) {
    let revoked = app
        .client
        .post(format!("{base}/v1/admin/tokens/revoke"))
        .bearer_auth(ops)
        .body(serde_json::json!({ "token": token }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
}

async fn admin(
    app: &TestApp,
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> reqwest::Response {
    let url = format!("{base}/v1/admin/{path}");
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let request = app.client.request(method, url);
    let request = match token {
        Some(token) => request.bearer_auth(token),
        None => request,
    };
    request.send().await.unwrap()
}

/// POSTs `{}` to `flow` at `base` with `token` until the answer's status is
/// `status`; how long that took. Fails after [`PROPAGATION`].
async fn status_within(
    app: &TestApp,
    base: &str,
    flow: &str,
    token: &str,
    status: u16,
) -> (Duration, String) {
    let started = Instant::now();
    loop {
        let response = app
            .client
            .post(format!("{base}/v1/flow-webhook/{flow}"))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        let got = response.status().as_u16();
        let body = response.text().await.unwrap();
        // A paused answer is a 200 too, but not a run.
        if got == status && (status != 200 || !body.contains("biz_logic")) {
            return (started.elapsed(), body);
        }
        assert!(
            started.elapsed() < PROPAGATION,
            "{base}: still {got} {body} after {:?}, expected {status}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn paused_within(app: &TestApp, base: &str, flow: &str) {
    let token = app.token(flow);
    let started = Instant::now();
    loop {
        let response = app
            .client
            .post(format!("{base}/v1/flow-webhook/{flow}"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        let body = response.text().await.unwrap();
        if body == PAUSED_BODY {
            return;
        }
        assert!(
            started.elapsed() < PROPAGATION,
            "{base}: not paused: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn running_within(app: &TestApp, base: &str, flow: &str) {
    let (_, body) = status_within(app, base, flow, &app.token(flow), 200).await;
    assert_eq!(body, "{\"ok\": true}");
}

#[tokio::test]
async fn a_pause_from_the_cli_reaches_every_replica_and_outlives_restarts() {
    a_pause_reaches_every_replica().await;
}

// The same on PostgreSQL, where the pause travels by NOTIFY (the embedded
// backend has one process).
crate::backend_tests!(replicas_on_postgres, Postgres: a_pause_reaches_every_replica);

async fn a_pause_reaches_every_replica() {
    let app = spawn_app(&[("f", SYNC_FLOW.to_owned())]).await;
    let (b, b_url) = replica(&app).await;
    let a_url = format!("http://{}", app.addr);
    running_within(&app, &a_url, "f").await;

    let (stdout, stderr, code) = cli(&app, &["flows", "pause", "f"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.trim(), "f: live -> paused");
    paused_within(&app, &a_url, "f").await;
    paused_within(&app, &b_url, "f").await;

    let (stdout, _, _) = cli(&app, &["flows", "status", "f"]);
    assert!(
        stdout.contains("status      paused (from the override)"),
        "{stdout}"
    );

    // A replica started now reads the pause from the store.
    terminate(b).await;
    let (c, c_url) = replica(&app).await;
    paused_within(&app, &c_url, "f").await;

    let (stdout, _, code) = cli(&app, &["flows", "unpause", "f"]);
    assert_eq!((stdout.trim(), code), ("f: paused -> live", 0));
    running_within(&app, &a_url, "f").await;
    running_within(&app, &c_url, "f").await;
    let (stdout, _, _) = cli(&app, &["flows", "list"]);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("f ") && l.contains("live") && l.contains("file")),
        "{stdout}"
    );

    let (stdout, _, _) = cli(&app, &["audit", "--flow", "f", "--json"]);
    let entries: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["flow.unpause", "flow.pause"]);
    assert_eq!(entries[1]["actor"], "cli:alice");
    assert_eq!(entries[1]["before"]["status"], "live");
    assert_eq!(entries[1]["after"]["status"], "paused");
    terminate(c).await;
}

#[tokio::test]
async fn an_api_pause_reaches_another_replica_even_without_notifications() {
    let app = spawn_app(&[("f", SYNC_FLOW.to_owned())]).await;
    let (b, b_url) = replica(&app).await;
    let a_url = format!("http://{}", app.addr);
    let ops = admin_token(&app, "ops");
    let mut events = app.app.lifecycle().subscribe();

    let paused = admin(&app, &a_url, "POST", "flows/f/pause", Some(&ops)).await;
    assert_eq!(paused.status(), 200);
    let view: Value = paused.json().await.unwrap();
    assert_eq!(
        (view["status"].as_str(), view["status_source"].as_str()),
        (Some("paused"), Some("override"))
    );
    paused_within(&app, &b_url, "f").await;

    // Without the notification connections, replicas notice by checking the version.
    let killed = std::process::Command::new("redis-cli")
        .args([
            "-p",
            &app.redis.port().to_string(),
            "CLIENT",
            "KILL",
            "TYPE",
            "pubsub",
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&killed.stdout)
            .trim()
            .parse::<u32>()
            .unwrap()
            >= 1
    );
    let unpaused = admin(&app, &a_url, "POST", "flows/f/unpause", Some(&ops)).await;
    assert_eq!(unpaused.status(), 200);
    running_within(&app, &b_url, "f").await;

    let audit = audit_page(&app, &b_url, "audit?flow=f").await;
    let actions: Vec<&str> = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["flow.unpause", "flow.pause"]);
    assert_eq!(audit["data"][0]["actor"], "tester");
    assert_eq!(audit["data"][0]["role"], "ops");
    assert_eq!(audit["has_more"], false);
    let mut changes = Vec::new();
    let mut versions = Vec::new();
    while let Ok(event) = events.try_recv() {
        if let flowgate::lifecycle::Event::Flow(StatusChanged {
            flow,
            status,
            version,
        }) = &*event
        {
            changes.push((flow.clone(), *status));
            versions.push(*version);
        }
    }
    use flowgate::flow::FlowStatus;
    use flowgate::lifecycle::FlowEvent::StatusChanged;
    assert_eq!(
        changes,
        [
            ("f".to_owned(), FlowStatus::Paused),
            ("f".to_owned(), FlowStatus::Live),
        ]
    );
    // Each change carries the control version that made it, the same on every replica.
    assert!(versions[0] < versions[1], "{versions:?}");
    terminate(b).await;
}

#[tokio::test]
async fn rotation_refuses_old_tokens_everywhere_unless_given_grace() {
    let app = spawn_app(&[("f", SYNC_FLOW.to_owned())]).await;
    let (b, b_url) = replica(&app).await;
    let a_url = format!("http://{}", app.addr);
    let ops = admin_token(&app, "ops");
    let first = app.token("f");
    status_within(&app, &b_url, "f", &first, 200).await;

    let (_, stderr, code) = cli(&app, &["token", "rotate", "f"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("generation 1"), "{stderr}");
    status_within(&app, &a_url, "f", &first, 401).await;
    status_within(&app, &b_url, "f", &first, 401).await;
    let (second, _, _) = cli(&app, &["token", "issue", "f"]);
    let second = second.trim().to_owned();
    status_within(&app, &b_url, "f", &second, 200).await;

    let rotated = app
        .client
        .post(format!("{a_url}/v1/admin/flows/f/tokens/rotate"))
        .bearer_auth(&ops)
        .body(r#"{"grace": "1h"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(rotated.status(), 200);
    let rotated: Value = rotated.json().await.unwrap();
    assert_eq!(rotated["token_generation"], 2);
    let absurd = app
        .client
        .post(format!("{a_url}/v1/admin/flows/f/tokens/rotate"))
        .bearer_auth(&ops)
        .body(r#"{"grace": "100000000y"}"#)
        .send()
        .await
        .unwrap();
    envelope(absurd, 400, "bad_request").await;
    // The document's pattern is the contract: one whole number and a unit.
    for refused in [r#"{"grace": "1h 30m"}"#, r#"{"grace": ""}"#, r#"[]"#] {
        let response = app
            .client
            .post(format!("{a_url}/v1/admin/flows/f/tokens/rotate"))
            .bearer_auth(&ops)
            .body(refused)
            .send()
            .await
            .unwrap();
        envelope(response, 400, "bad_request").await;
    }
    // A misspelt key is refused: it must not mint a token that never expires.
    let misspelt = app
        .client
        .post(format!("{a_url}/v1/admin/flows/f/tokens"))
        .bearer_auth(&ops)
        .body(r#"{"tll": "90d"}"#)
        .send()
        .await
        .unwrap();
    let body = envelope(misspelt, 400, "bad_request").await;
    assert!(
        body["message"].as_str().unwrap().contains("`tll`"),
        "{body}"
    );
    let minted: Value = app
        .client
        .post(format!("{a_url}/v1/admin/flows/f/tokens"))
        .bearer_auth(&ops)
        .body(r#"{"ttl": "90d"}"#)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(minted["expires_in"], "90 days", "{minted}");
    // The CLI holds tokens to the same lifetimes as the API.
    for ttl in ["0s", "3651d"] {
        let (_, err, code) = cli(&app, &["token", "issue", "f", "--ttl", ttl]);
        assert_ne!(code, 0, "--ttl {ttl}");
        assert!(err.contains("at most 3650 days"), "{err}");
    }
    // Generation 1 keeps working during the grace; generation 0 does not.
    let (third, _, _) = cli(&app, &["token", "issue", "f"]);
    status_within(&app, &b_url, "f", third.trim(), 200).await;
    status_within(&app, &b_url, "f", &second, 200).await;
    status_within(&app, &b_url, "f", &first, 401).await;
    let view: Value = admin(&app, &b_url, "GET", "flows/f", Some(&ops))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(view["token_generation"], 2);
    assert!(view["token_grace_until"].is_string(), "{view}");
    // A cursor this API never handed out is refused, not read as the first page.
    for cursor in ["bnVsbA", "W10", "MTItYWJj"] {
        let ops = admin_token(&app, "ops");
        let page = admin(
            &app,
            &a_url,
            "GET",
            &format!("audit?cursor={cursor}"),
            Some(&ops),
        )
        .await;
        envelope(page, 400, "bad_request").await;
    }
    let audit = audit_page(&app, &a_url, "audit?action=token.rotate").await;
    let rotations: Vec<(&str, &Value)> = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["actor"].as_str().unwrap(), &e["after"]["generation"]))
        .collect();
    assert_eq!(
        rotations,
        [("tester", &Value::from(2)), ("cli:alice", &Value::from(1))]
    );
    terminate(b).await;
}

async fn every_role_gets_what_it_may_and_nothing_else() {
    let app = spawn_app(&[("f", SYNC_FLOW.to_owned())]).await;
    let base = format!("http://{}", app.addr);
    app.post_json("f", "{}").await;
    let run_id = app.post_json("f", "{}").await.headers()["x-flowgate-run-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let routes: &[(&str, String, &str)] = &[
        ("GET", "flows".into(), "viewer"),
        ("GET", "flows/f".into(), "viewer"),
        ("GET", format!("runs/{run_id}"), "viewer"),
        ("GET", "runs?flow=f&status=succeeded".into(), "viewer"),
        ("GET", "audit".into(), "viewer"),
        ("POST", "flows/f/pause".into(), "ops"),
        ("POST", "flows/f/unpause".into(), "ops"),
        ("POST", "flows/f/tokens/rotate".into(), "ops"),
        ("POST", "reload".into(), "author"),
        ("GET", "openapi.json".into(), "viewer"),
    ];
    let rank = |role: &str| {
        ["viewer", "author", "ops"]
            .iter()
            .position(|r| *r == role)
            .unwrap()
    };
    for (method, path, needs) in routes {
        for role in ["viewer", "author", "ops"] {
            let token = admin_token(&app, role);
            let response = admin(&app, &base, method, path, Some(&token)).await;
            if rank(role) >= rank(needs) {
                assert_eq!(response.status(), 200, "{role} {method} {path}");
            } else {
                let body = envelope(response, 403, "forbidden").await;
                assert!(body["message"].as_str().unwrap().contains(needs), "{body}");
            }
        }
        envelope(
            admin(&app, &base, method, path, None).await,
            401,
            "unauthorized",
        )
        .await;
        // A flow token is not an admin token.
        envelope(
            admin(&app, &base, method, path, Some(&app.token("f"))).await,
            401,
            "unauthorized",
        )
        .await;
    }
    // Nor is an admin token a flow token.
    let refused = app
        .client
        .post(app.url("f"))
        .bearer_auth(admin_token(&app, "ops"))
        .body("{}")
        .send()
        .await
        .unwrap();
    envelope(refused, 401, "unauthorized").await;
    let record: Value = admin(
        &app,
        &base,
        "GET",
        &format!("runs/{run_id}"),
        Some(&admin_token(&app, "viewer")),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(record["id"], run_id.as_str());
    assert_eq!(record["status"], "succeeded");
    let listed: Value = admin(
        &app,
        &base,
        "GET",
        "flows?limit=1",
        Some(&admin_token(&app, "viewer")),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(listed["data"][0]["id"], "f");
    assert_eq!(listed["data"][0]["runs_last_hour"], 2);
    assert_eq!(listed["data"][0]["url"], "/v1/flow-webhook/f");
    assert_eq!(listed["has_more"], false);
    envelope(
        admin(
            &app,
            &base,
            "GET",
            "flows?limit=0",
            Some(&admin_token(&app, "viewer")),
        )
        .await,
        400,
        "bad_request",
    )
    .await;
    let viewer = admin_token(&app, "viewer");
    let first: Value = admin(&app, &base, "GET", "runs?flow=f&limit=1", Some(&viewer))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(first["data"][0]["id"], run_id.as_str(), "newest first");
    assert_eq!(first["has_more"], true);
    let cursor = first["next_cursor"].as_str().unwrap();
    let rest: Value = admin(
        &app,
        &base,
        "GET",
        &format!("runs?flow=f&limit=5&cursor={cursor}"),
        Some(&viewer),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(rest["data"].as_array().unwrap().len(), 1, "{rest}");
    assert_ne!(rest["data"][0]["id"], run_id.as_str());
    assert_eq!(rest["has_more"], false);
    for bad in [
        "runs?status=done",
        "runs?after=yesterday",
        "runs?cursor=zzz",
    ] {
        envelope(
            admin(&app, &base, "GET", bad, Some(&viewer)).await,
            400,
            "bad_request",
        )
        .await;
    }
    envelope(
        admin(
            &app,
            &base,
            "GET",
            "nothing/here",
            Some(&admin_token(&app, "viewer")),
        )
        .await,
        404,
        "not_found",
    )
    .await;
    // A method a path does not take: 405, naming those it does (RFC 9110).
    let ops = admin_token(&app, "ops");
    for (method, path, allow) in [
        ("PUT", "webhooks", "GET, POST"),
        ("POST", "runs", "GET"),
        ("GET", "sessions/s1", "DELETE"),
        ("DELETE", "webhooks/wh_1/deliveries", "GET"),
    ] {
        let response = admin(&app, &base, method, path, Some(&ops)).await;
        assert_eq!(response.headers()["allow"], allow, "{method} {path}");
        envelope(response, 405, "method_not_allowed").await;
    }
    // A jti no token can carry is refused, not stored as something else.
    let refused = app
        .client
        .post(format!("{base}/v1/admin/tokens/revoke"))
        .bearer_auth(&ops)
        .body(serde_json::json!({ "jti": "x\u{0}' OR 1=1" }).to_string())
        .send()
        .await
        .unwrap();
    envelope(refused, 400, "bad_request").await;
}

#[tokio::test]
async fn an_admin_token_not_valid_yet_is_refused() {
    let app = spawn_app(&[("f", SYNC_FLOW.to_owned())]).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let sign = |nbf: u64| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &serde_json::json!({
                "sub": "early", "iat": now, "jti": format!("j{nbf}"), "ver": 0,
                "role": "ops", "nbf": nbf,
            }),
            &jsonwebtoken::EncodingKey::from_secret(SIGNING_KEY.as_bytes()),
        )
        .unwrap()
    };
    let base = format!("http://{}", app.addr);
    // Valid from an hour on: refused now, on the API and at the console.
    let early = sign(now + 3600);
    let refused = admin(&app, &base, "GET", "flows", Some(&early)).await;
    assert_eq!(refused.status(), 401);
    let console = app
        .client
        .post(format!("{base}/console/sign-in"))
        .header("origin", &base)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={early}"))
        .send()
        .await
        .unwrap();
    assert_eq!(console.status(), 401);
    // Valid since a minute ago: accepted.
    let ready = sign(now - 60);
    let accepted = admin(&app, &base, "GET", "flows", Some(&ready)).await;
    assert_eq!(accepted.status(), 200);
}

#[tokio::test]
async fn a_revoked_admin_token_is_refused_on_every_replica() {
    let app = spawn_app(&[("f", SYNC_FLOW.to_owned())]).await;
    let (b, b_url) = replica(&app).await;
    let a_url = format!("http://{}", app.addr);
    let ops = admin_token(&app, "ops");
    let doomed = admin_token(&app, "viewer");
    assert_eq!(
        admin(&app, &b_url, "GET", "flows", Some(&doomed))
            .await
            .status(),
        200
    );
    revoke_on(&app, &a_url, &ops, &doomed).await;
    let started = Instant::now();
    loop {
        let status = admin(&app, &b_url, "GET", "flows", Some(&doomed))
            .await
            .status();
        if status == 401 {
            break;
        }
        assert!(started.elapsed() < PROPAGATION, "still {status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let audit = audit_page(&app, &a_url, "audit?action=token.revoke").await;
    assert_eq!(audit["data"].as_array().unwrap().len(), 1, "{audit}");
    terminate(b).await;
}

#[tokio::test]
async fn a_revoked_admin_token_ends_its_console_sessions_on_every_replica() {
    let app = spawn_app(&[("f", SYNC_FLOW.to_owned())]).await;
    let (b, b_url) = replica(&app).await;
    let a_url = format!("http://{}", app.addr);
    let ops = admin_token(&app, "ops");
    let doomed = admin_token(&app, "ops");
    // Signed in on replica B with the doomed token.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let signed_in = client
        .post(format!("{b_url}/console/sign-in"))
        .header("origin", &b_url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={doomed}"))
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), 303);
    let cookie = signed_in.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let page = |base: String| {
        let (client, cookie) = (client.clone(), cookie.clone());
        async move {
            client
                .get(format!("{base}/console/flows"))
                .header("cookie", cookie)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(page(b_url.clone()).await, 200);
    // Replica A lists it, though B opened it.
    let listed: Value = admin(&app, &a_url, "GET", "sessions", Some(&ops))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["data"].as_array().unwrap().len(), 1, "{listed}");
    // Revoked on A: the session ends on B within a second.
    revoke_on(&app, &a_url, &ops, &doomed).await;
    let started = Instant::now();
    loop {
        let status = page(b_url.clone()).await;
        if status == 303 {
            break;
        }
        assert!(started.elapsed() < PROPAGATION, "still {status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(page(a_url.clone()).await, 303);
    terminate(b).await;
}

async fn queued_runs_of_a_paused_flow_wait_and_run_after_unpause() {
    let flow = "status = \"live\"\n[trigger]\nref = \"w\"\nmode = \"async\"\n[[steps]]\nref = \"t\"\nkind = \"transform\"\nset = { n = \"{{ w.n }}\" }\n".to_owned();
    let app = spawn_app_with(
        &[("a", flow)],
        AppOptions {
            worker: false,
            ..AppOptions::default()
        },
    )
    .await;
    let accepted = app.post_json("a", r#"{"n": 7}"#).await;
    assert_eq!(accepted.status(), 202);
    let run_id = accepted.headers()["x-flowgate-run-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let (_, stderr, code) = cli(&app, &["flows", "pause", "a"]);
    assert_eq!(code, 0, "{stderr}");
    let started = Instant::now();
    while !app.app.control().state().statuses.contains_key("a") {
        assert!(started.elapsed() < PROPAGATION, "the pause did not arrive");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let worker = app.worker(1, Duration::from_secs(15));
    assert_eq!(
        worker.try_execute_next().await.unwrap(),
        Outcome::Held {
            run_id: run_id.clone()
        }
    );
    let record = app.store().get(&run_id).await.unwrap().unwrap();
    assert_eq!(record.status, flowgate::engine::RunState::Queued);
    assert_eq!(record.attempt, 0);
    cli(&app, &["flows", "unpause", "a"]);
    app.start_worker(Duration::from_secs(15));
    let done = app
        .record_when(&run_id, |r| r.status.as_str() == "succeeded")
        .await;
    assert_eq!(done.steps[0].output["n"], 7);
}

/// A page of the audit log at `base`, read with an ops token.
async fn audit_page(app: &TestApp, base: &str, query: &str) -> Value {
    let ops = admin_token(app, "ops");
    admin(app, base, "GET", query, Some(&ops))
        .await
        .json()
        .await
        .unwrap()
}

async fn post_admin(app: &TestApp, path: &str, role: &str) -> reqwest::Response {
    let token = admin_token(app, role);
    admin(
        app,
        &format!("http://{}", app.addr),
        "POST",
        path,
        Some(&token),
    )
    .await
}

async fn a_replay_runs_the_recorded_request_again_as_a_linked_run() {
    let sync_flow = "status = \"live\"\n[trigger]\nref = \"w\"\n[[steps]]\nref = \"t\"\nkind = \"transform\"\nset = { n = \"{{ w.n * 2 }}\", raw = \"{{ request.raw }}\" }\n".to_owned();
    let async_flow = "status = \"live\"\n[trigger]\nref = \"w\"\nmode = \"async\"\n[[steps]]\nref = \"t\"\nkind = \"transform\"\nset = { n = \"{{ w.n }}\" }\n".to_owned();
    let app = spawn_app(&[("s", sync_flow), ("a", async_flow)]).await;
    let first = app.post_json("s", r#"{"n": 21}"#).await;
    let original = first.headers()["x-flowgate-run-id"]
        .to_str()
        .unwrap()
        .to_owned();
    app.record_when(&original, |r| r.status.as_str() == "succeeded")
        .await;

    envelope(
        post_admin(&app, &format!("runs/{original}/replay"), "viewer").await,
        403,
        "forbidden",
    )
    .await;
    let replayed = post_admin(&app, &format!("runs/{original}/replay"), "author").await;
    assert_eq!(replayed.status(), 200);
    let replayed: Value = replayed.json().await.unwrap();
    assert_eq!(replayed["status"], "succeeded");
    assert_eq!(replayed["replay_of"], original.as_str());
    let new_id = replayed["run_id"].as_str().unwrap();
    assert_ne!(new_id, original);
    let record = app
        .record_when(new_id, |r| r.status.as_str() == "succeeded")
        .await;
    assert_eq!(record.replay_of.as_deref(), Some(original.as_str()));
    assert_eq!(record.steps[0].output["n"], 42);
    assert_eq!(record.steps[0].output["raw"], r#"{"n":21}"#);
    assert_eq!(record.response.as_ref().unwrap().status, 200);

    let accepted = app.post_json("a", r#"{"n": 5}"#).await;
    let async_original = accepted.headers()["x-flowgate-run-id"]
        .to_str()
        .unwrap()
        .to_owned();
    app.record_when(&async_original, |r| r.status.as_str() == "succeeded")
        .await;
    let (stdout, stderr, code) = cli(&app, &["runs", "replay", &async_original]);
    assert_eq!(code, 0, "{stderr}");
    let again = app
        .record_when(stdout.trim(), |r| r.status.as_str() == "succeeded")
        .await;
    assert_eq!(again.replay_of.as_deref(), Some(async_original.as_str()));
    assert_eq!(again.steps[0].output["n"], 5);

    cli(&app, &["flows", "pause", "s"]);
    let refused = post_admin(&app, &format!("runs/{original}/replay"), "author").await;
    let body = envelope(refused, 409, "conflict").await;
    assert!(
        body["message"].as_str().unwrap().contains("paused"),
        "{body}"
    );
    envelope(
        post_admin(&app, "runs/nope/replay", "author").await,
        404,
        "not_found",
    )
    .await;

    let base = format!("http://{}", app.addr);
    let audit = audit_page(&app, &base, "audit?action=run.replay").await;
    let actors: Vec<&str> = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["actor"].as_str().unwrap())
        .collect();
    assert_eq!(actors, ["cli:alice", "tester"]);
}

async fn an_abort_stops_a_run_inside_a_long_delay_and_drops_a_queued_one() {
    let receiver = Receiver::start(&[], Duration::ZERO).await;
    let flow = format!(
        "status = \"live\"\n[trigger]\nref = \"w\"\nmode = \"async\"\n[[steps]]\nref = \"wait\"\nkind = \"delay\"\nduration = \"30s\"\n[[steps]]\nref = \"call\"\nkind = \"http\"\nurl = \"{}\"\n",
        receiver.url("/after")
    );
    let app = spawn_app_with(
        &[("slow", flow)],
        AppOptions {
            worker: false,
            ..AppOptions::default()
        },
    )
    .await;

    // Queued, then aborted before any worker sees it.
    let queued = app.post_json("slow", "{}").await;
    let queued_id = queued.headers()["x-flowgate-run-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let (_, stderr, code) = cli(&app, &["runs", "abort", &queued_id]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("queued -> aborted"), "{stderr}");
    let record = app.store().get(&queued_id).await.unwrap().unwrap();
    assert_eq!(record.status, flowgate::engine::RunState::Aborted);

    // Running, inside its 30 s delay.
    app.start_worker(Duration::from_secs(15));
    let running = app.post_json("slow", "{}").await;
    let running_id = running.headers()["x-flowgate-run-id"]
        .to_str()
        .unwrap()
        .to_owned();
    app.record_when(&running_id, |r| r.status.as_str() == "running")
        .await;
    let aborted_at = Instant::now();
    let answer = post_admin(&app, &format!("runs/{running_id}/abort"), "ops").await;
    assert_eq!(answer.status(), 200);
    let answer: Value = answer.json().await.unwrap();
    assert_eq!(answer["was"], "running");
    let record = app
        .record_when(&running_id, |r| r.status.as_str() == "aborted")
        .await;
    assert!(
        aborted_at.elapsed() < Duration::from_secs(2),
        "{:?}",
        aborted_at.elapsed()
    );
    assert!(record.error.unwrap().message.contains("aborted"));
    // Neither run reached its http step, and the queue is empty.
    app.drained().await;
    assert!(receiver.requests().is_empty());
    let metrics = app
        .client
        .get(format!("http://{}/metrics", app.addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("flowgate_runs_total{flow=\"slow\",status=\"aborted\"} 2"),
        "{metrics}"
    );

    envelope(
        post_admin(&app, &format!("runs/{running_id}/abort"), "ops").await,
        409,
        "conflict",
    )
    .await;
    let base = format!("http://{}", app.addr);
    let audit = audit_page(&app, &base, "audit?action=run.abort").await;
    let aborted: Vec<(&str, &str, &str)> = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap(),
                e["run"].as_str().unwrap(),
                e["before"]["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        aborted,
        [
            ("tester", running_id.as_str(), "running"),
            ("cli:alice", queued_id.as_str(), "queued")
        ]
    );
    envelope(
        post_admin(&app, &format!("runs/{running_id}/abort"), "author").await,
        403,
        "forbidden",
    )
    .await;
}

/// Runs the CLI against `app`'s store; its stdout, failing on a non-zero exit.
fn cli_ok(app: &TestApp, args: &[&str]) -> String {
    let (stdout, stderr, code) = cli(app, args);
    assert_eq!(code, 0, "flowgate {}: {stderr}", args.join(" "));
    stdout
}

async fn every_cli_command_works_on_this_backend() {
    let app = spawn_app(&[("f", SYNC_FLOW.to_owned())]).await;
    let base = format!("http://{}", app.addr);
    // Tokens: issue (valid at once), rotate twice (audited with the
    // generations it moved between), admin, revoke.
    let token = cli_ok(&app, &["token", "issue", "f"]).trim().to_owned();
    status_within(&app, &base, "f", &token, 200).await;
    for _ in 0..2 {
        cli_ok(&app, &["token", "rotate", "f"]);
    }
    let rotations = audit_page(&app, &base, "audit?action=token.rotate").await;
    let entries = rotations["data"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{rotations}");
    assert_eq!(entries[0]["before"]["generation"], 1, "{rotations}");
    assert_eq!(entries[0]["after"]["generation"], 2, "{rotations}");
    let token = cli_ok(&app, &["token", "issue", "f"]).trim().to_owned();
    status_within(&app, &base, "f", &token, 200).await;
    let admin_token = cli_ok(&app, &["token", "admin", "--role", "viewer"])
        .trim()
        .to_owned();
    assert_eq!(
        admin(&app, &base, "GET", "flows", Some(&admin_token))
            .await
            .status(),
        200
    );
    cli_ok(&app, &["token", "revoke", &admin_token]);
    let started = Instant::now();
    while admin(&app, &base, "GET", "flows", Some(&admin_token))
        .await
        .status()
        != 401
    {
        assert!(
            started.elapsed() < PROPAGATION,
            "the revocation did not arrive"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(cli_ok(&app, &["console-link", "--role", "viewer"]).contains("/console/sign-in#link="));
    assert!(cli_ok(&app, &["sessions", "list", "--json"]).is_empty());

    // Flows: list, status, pause, unpause.
    assert!(cli_ok(&app, &["flows", "list"]).contains('f'));
    cli_ok(&app, &["flows", "pause", "f"]);
    assert!(cli_ok(&app, &["flows", "status", "f"]).contains("paused"));
    cli_ok(&app, &["flows", "unpause", "f"]);

    // Runs: list and show.
    let answer = app
        .client
        .post(app.url("f"))
        .bearer_auth(&token)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    let id = run_id(&answer);
    app.record_when(&id, |r| r.ended_at.is_some()).await;
    assert!(cli_ok(&app, &["runs", "list", "f"]).contains(&id));
    assert!(cli_ok(&app, &["runs", "show", &id]).contains(&id));

    // Webhooks: create, list, show, disable, delete.
    let receiver = Receiver::start(&[], Duration::ZERO).await;
    let created = cli_ok(
        &app,
        &[
            "webhooks",
            "create",
            "--name",
            "cli",
            "--url",
            &receiver.url("/hook"),
        ],
    );
    let listed = cli_ok(&app, &["webhooks", "list"]);
    assert!(listed.contains("cli"), "{created} {listed}");
    let sub = listed
        .split_whitespace()
        .find(|w| w.starts_with("wh_"))
        .expect("a subscription id")
        .to_owned();
    assert!(cli_ok(&app, &["webhooks", "show", &sub]).contains(&receiver.url("/hook")));
    cli_ok(&app, &["webhooks", "disable", &sub]);
    cli_ok(&app, &["webhooks", "delete", &sub]);

    // The audit log names the CLI's user for each change.
    let audit = cli_ok(&app, &["audit", "--json"]);
    for action in ["token.issue", "token.rotate", "token.revoke", "flow.pause"] {
        assert!(audit.contains(action), "{action}: {audit}");
    }
    assert!(audit.contains("cli:alice"));
    if app.backend == Backend::Embedded {
        let copy = app.dir.path().join("copy.db");
        cli_ok(&app, &["backup", copy.to_str().unwrap()]);
        assert!(copy.exists());
    }
}

crate::on_all_backends!(
    every_cli_command_works_on_this_backend,
    every_role_gets_what_it_may_and_nothing_else,
    queued_runs_of_a_paused_flow_wait_and_run_after_unpause,
    a_replay_runs_the_recorded_request_again_as_a_linked_run,
    an_abort_stops_a_run_inside_a_long_delay_and_drops_a_queued_one,
);

crate::on_cluster!(
    every_cli_command_works_on_this_backend,
    queued_runs_of_a_paused_flow_wait_and_run_after_unpause,
    an_abort_stops_a_run_inside_a_long_delay_and_drops_a_queued_one,
);

#[tokio::test]
async fn a_gateway_that_cannot_load_its_control_state_refuses_until_it_can() {
    // Append-only on: the pause outlives the store's restart.
    let options = AppOptions {
        redis_aof: true,
        ..AppOptions::default()
    };
    let mut app = spawn_app_with(&[("s", SYNC_FLOW.to_owned())], options).await;
    let (_, _, code) = cli(&app, &["flows", "pause", "s"]);
    assert_eq!(code, 0);
    app.redis.stop();
    // A gateway started now cannot know that `s` is paused, nor which
    // tokens were rotated or revoked: it must not act as if none were.
    let port = free_port();
    let child = app.spawn_process(
        &format!("[server]\nlisten = \"127.0.0.1:{port}\"\n"),
        &["serve", "--no-worker"],
    );
    let base = format!("http://127.0.0.1:{port}");
    let health = format!("{base}/healthz");
    app.text_when(&health, "ok").await;
    // Owns what it uses, so the store can be restarted (`&mut app`) between calls.
    let (client, token) = (app.client.clone(), app.token("s"));
    let trigger = || {
        client
            .post(format!("{base}/v1/flow-webhook/s"))
            .bearer_auth(&token)
            .json(&serde_json::json!({"n": 1}))
            .send()
    };
    let triggered = trigger().await.unwrap();
    assert_eq!(triggered.status(), 503);
    assert_eq!(triggered.headers()["retry-after"], "1");
    let body: Value = triggered.json().await.unwrap();
    assert_eq!(body["error"], "not_ready", "{body}");
    let admin = app
        .keys
        .issue_admin("tester", flowgate::token::Role::Viewer, None)
        .unwrap();
    let listed = app
        .client
        .get(format!("{base}/v1/admin/flows"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 503);
    let ready = app
        .client
        .get(format!("{base}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    // Once the store answers, the pause holds.
    app.redis.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let answer = trigger().await.unwrap();
        let status = answer.status();
        let text = answer.text().await.unwrap();
        if status != 503 {
            assert_eq!((status.as_u16(), text.as_str()), (200, PAUSED_BODY));
            break;
        }
        assert!(Instant::now() < deadline, "never loaded: {text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    terminate(child).await;
}

#[tokio::test]
async fn a_store_that_lost_its_data_is_followed_from_its_first_change() {
    let mut app = spawn_app(&[("s", SYNC_FLOW.to_owned())]).await;
    // Versions climb on the store, and the gateway follows each change.
    for _ in 0..3 {
        assert_eq!(cli(&app, &["flows", "pause", "s"]).2, 0);
        answers_paused(&app, true).await;
        assert_eq!(cli(&app, &["flows", "unpause", "s"]).2, 0);
        answers_paused(&app, false).await;
    }
    // The store restarts empty (no persistence), and the flow is paused
    // anew: the first change on it is followed like any other.
    app.redis.stop();
    app.redis.restart();
    assert_eq!(cli(&app, &["flows", "pause", "s"]).2, 0);
    answers_paused(&app, true).await;
}

/// Waits up to 5 s for `flow` "s" to answer as paused (or as not paused).
async fn answers_paused(app: &TestApp, paused: bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let answer = app.post_json("s", r#"{"n": 1}"#).await;
        if (answer.text().await.unwrap() == PAUSED_BODY) == paused {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway never saw the flow {}",
            if paused { "paused" } else { "unpaused" }
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
