//! The embedded backend end to end: `flowgate serve` on a SQLite file with
//! no Redis at all, one owner per file, and the CLI beside the server.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flowgate::error::PAUSED_BODY;
use serde_json::Value;

use crate::helpers::*;

const SYNC: &str =
    "status = \"live\"\n[trigger]\nref = \"w\"\n[response]\nbody_inline = \"{\\\"ok\\\": true}\"\n";
const ASYNC: &str = "status = \"live\"\n[trigger]\nref = \"w\"\nmode = \"async\"\n[[steps]]\nref = \"t\"\nkind = \"transform\"\nset = { n = \"{{ w.n * 2 }}\" }\n";

/// A project folder using the embedded backend, listening on `port`.
fn project(port: u16) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_files(
        &dir.path().join("flows"),
        &[("s.toml", SYNC.into()), ("a.toml", ASYNC.into())],
    );
    std::fs::create_dir_all(dir.path().join("templates")).unwrap();
    std::fs::write(
        dir.path().join("config.toml"),
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[storage]\nbackend = \"embedded\"\npath = \"data/flowgate.db\"\n[redis]\nurl = \"redis://127.0.0.1:1/0\"\n"
        ),
    )
    .unwrap();
    dir
}

fn command(dir: &tempfile::TempDir, args: &[&str]) -> Command {
    let mut command = Command::new(binary());
    command
        .current_dir(dir.path())
        .env("FLOWGATE_SIGNING_KEY", SIGNING_KEY)
        .env("RUST_LOG", "warn")
        .env("USER", "alice")
        .args(args);
    command
}

fn serve(dir: &tempfile::TempDir) -> Child {
    command(dir, &["serve"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

async fn ready(client: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while client
        .get(format!("{base}/readyz"))
        .send()
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        assert!(Instant::now() < deadline, "the gateway did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn serve_runs_on_one_file_without_redis_and_owns_it() {
    let port = free_port();
    let dir = project(port);
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let server = serve(&dir);
    ready(&client, &base).await;
    assert!(dir.path().join("data/flowgate.db").exists());

    // The CLI works beside the running server: it mints for the stored generation.
    let token = |flow: &str| {
        let out = command(&dir, &["token", "issue", flow]).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let post = |flow: &str, token: &str, body: &'static str| {
        client
            .post(format!("{base}/v1/flow-webhook/{flow}"))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let sync_token = token("s");
    let answer = post("s", &sync_token, "{}").await.unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.text().await.unwrap(), r#"{"ok": true}"#);

    let async_token = token("a");
    let accepted = post("a", &async_token, r#"{"n": 21}"#).await.unwrap();
    assert_eq!(accepted.status(), 202);
    let run_id = accepted.headers()["x-flowgate-run-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    let record = loop {
        let out = command(&dir, &["runs", "show", &run_id, "--json"])
            .output()
            .unwrap();
        let record: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if record["status"] == "succeeded" {
            break record;
        }
        assert!(Instant::now() < deadline, "the run did not end: {record}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(record["steps"][0]["output"]["n"], 42);

    // A second server on the same file is refused at start, with a clear line.
    let second = command(&dir, &["serve"])
        .env(
            "FLOWGATE_SERVER__LISTEN",
            format!("127.0.0.1:{}", free_port()),
        )
        .output()
        .unwrap();
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("in use by another flowgate process"),
        "{stderr}"
    );

    // A pause from the CLI reaches the running server within a second.
    let out = command(&dir, &["flows", "pause", "s"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let paused_at = Instant::now();
    loop {
        let body = post("s", &sync_token, "{}")
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if body == PAUSED_BODY {
            break;
        }
        assert!(
            paused_at.elapsed() < Duration::from_secs(1),
            "the pause did not arrive: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = command(&dir, &["audit", "--json"]).output().unwrap();
    let audit = String::from_utf8_lossy(&out.stdout);
    assert!(
        audit.contains("flow.pause") && audit.contains("cli:alice"),
        "{audit}"
    );
    terminate(server).await;
}
