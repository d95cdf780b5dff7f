//! Hot reload: file changes take effect without a restart; a change that
//! fails validation keeps the last good version serving.

use std::time::{Duration, Instant};

use flowgate::lifecycle::{Event, FlowEvent};
use serde_json::Value;

use crate::helpers::*;

fn flow_answering(text: &str) -> String {
    format!("status = \"live\"\n[trigger]\nref = \"w\"\n[response]\nbody = \"{text}.json.j2\"\n")
}

/// `POST /v1/admin/reload` with `token`.
async fn reload(app: &TestApp, token: &str) -> reqwest::Response {
    app.client
        .post(format!("http://{}/v1/admin/reload", app.addr))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

/// POSTs to `flow` until the answer's status and body are as given; fails after 5 s.
async fn answers_within(app: &TestApp, flow: &str, status: u16, body: &str) {
    let started = Instant::now();
    loop {
        let response = app.post_json(flow, "{}").await;
        let (got, text) = (response.status().as_u16(), response.text().await.unwrap());
        if got == status && text.contains(body) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{flow}: still {got} {text}, expected {status} with {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn file_changes_apply_without_a_restart_and_broken_ones_keep_the_last_good_version() {
    let app = spawn_app_with(
        &[("a", flow_answering("a")), ("b", flow_answering("b"))],
        AppOptions {
            templates: vec![
                ("a.json.j2", r#"{"v": "a1"}"#.into()),
                ("b.json.j2", r#"{"v": "b1"}"#.into()),
            ],
            ..AppOptions::default()
        },
    )
    .await;
    let mut events = app.app.lifecycle().subscribe();
    let flows = app.dir.path().join("flows");
    let templates = app.dir.path().join("templates");
    answers_within(&app, "a", 200, "a1").await;

    // A new flow file is picked up by the watcher.
    std::fs::write(templates.join("c.json.j2"), r#"{"v": "c1"}"#).unwrap();
    std::fs::write(flows.join("c.toml"), flow_answering("c")).unwrap();
    answers_within(&app, "c", 200, "c1").await;

    // A broken template for `a` and a good change for `b` in one reload.
    std::fs::write(templates.join("a.json.j2"), "{\"v\": {{ broken").unwrap();
    std::fs::write(templates.join("b.json.j2"), r#"{"v": "b2"}"#).unwrap();
    std::fs::write(flows.join("b.toml"), flow_answering("b") + "# edited\n").unwrap();
    answers_within(&app, "b", 200, "b2").await;
    answers_within(&app, "a", 200, "a1").await;
    let author = app
        .keys
        .issue_admin("ann", flowgate::token::Role::Author, None)
        .unwrap();
    let reloaded = reload(&app, &author).await;
    let status = reloaded.status();
    let summary: Value = reloaded.json().await.unwrap();
    assert_eq!(status, 200, "{summary}");
    assert_eq!(summary["kept"], serde_json::json!(["a"]), "{summary}");
    let problems = summary["problems"].to_string();
    assert!(problems.contains("a.json.j2:1:"), "{problems}");
    // The API, the console and the CLI say the file has problems and which.
    let shown = app
        .admin_json("ann", flowgate::token::Role::Viewer, "/v1/admin/flows/a")
        .await;
    let listed = shown["problems"].as_array().expect("problems").clone();
    assert!(!listed.is_empty(), "{shown}");
    assert!(
        listed[0].as_str().unwrap().starts_with("flows/a.toml:"),
        "{shown}"
    );
    assert!(shown["version"].is_string(), "{shown}");
    let fine = app
        .admin_json("ann", flowgate::token::Role::Viewer, "/v1/admin/flows/b")
        .await;
    assert_eq!(fine["problems"], serde_json::json!([]), "{fine}");
    let (stdout, _, _) = cli(&app, &["flows", "list"]);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("a "))
        .unwrap_or_default();
    assert!(line.contains("problems"), "{stdout}");
    assert!(stdout.contains("flows/a.toml:"), "{stdout}");

    // A deleted flow is gone.
    std::fs::remove_file(flows.join("c.toml")).unwrap();
    let refused = loop {
        let response = app.post_json("c", "{}").await;
        if response.status() == 404 {
            break response;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    envelope(refused, 404, "not_found").await;

    let mut seen = Vec::new();
    while let Ok(event) = events.try_recv() {
        if let Event::Flow(event) = &*event {
            seen.push(event.clone());
        }
    }
    for expected in [
        FlowEvent::Created { flow: "c".into() },
        FlowEvent::Updated { flow: "b".into() },
        FlowEvent::Deleted { flow: "c".into() },
    ] {
        assert!(seen.contains(&expected), "{expected:?} not in {seen:?}");
    }
    assert!(
        !seen.contains(&FlowEvent::Updated { flow: "a".into() }),
        "{seen:?}"
    );

    let audit = app
        .admin_json(
            "olga",
            flowgate::token::Role::Ops,
            "/v1/admin/audit?action=flows.reload",
        )
        .await;
    assert_eq!(audit["data"][0]["actor"], "ann");
    // A symlinked folder looping back is not followed.
    #[cfg(unix)]
    std::os::unix::fs::symlink(app.dir.path(), templates.join("loop")).unwrap();
    let reloaded = reload(&app, &author).await;
    assert_eq!(reloaded.status(), 200);
    answers_within(&app, "b", 200, "b2").await;
    // A viewer may not reload.
    let viewer = app
        .keys
        .issue_admin("vic", flowgate::token::Role::Viewer, None)
        .unwrap();
    let refused = reload(&app, &viewer).await;
    envelope(refused, 403, "forbidden").await;
}

crate::on_all_backends!(
    file_changes_apply_without_a_restart_and_broken_ones_keep_the_last_good_version,
);
