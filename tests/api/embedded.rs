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

pub(crate) fn command(dir: &tempfile::TempDir, args: &[&str]) -> Command {
    let mut command = Command::new(binary());
    command
        .current_dir(dir.path())
        .env("FLOWGATE_SIGNING_KEY", SIGNING_KEY)
        .env("RUST_LOG", "warn")
        .env("USER", "alice")
        .args(args);
    command
}

pub(crate) fn serve(dir: &tempfile::TempDir) -> Child {
    command(dir, &["serve"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// A project with `flows` besides the two shipped, and `serve` running
/// on it once ready: its folder, base URL, a client and the process.
async fn serving(flows: &[(&str, &str)]) -> (tempfile::TempDir, String, reqwest::Client, Child) {
    let port = free_port();
    let dir = project(port);
    let flows: Vec<(&str, String)> = flows.iter().map(|(n, c)| (*n, c.to_string())).collect();
    write_files(&dir.path().join("flows"), &flows);
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let server = serve(&dir);
    ready(&client, &base).await;
    (dir, base, client, server)
}

#[tokio::test]
async fn serve_runs_on_one_file_without_redis_and_owns_it() {
    let (dir, base, client, server) = serving(&[]).await;
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

#[tokio::test]
async fn one_owner_per_file_whatever_names_it_and_a_file_changed_underneath_is_noticed() {
    let (dir, base, client, server) = serving(&[]).await;
    let db = dir.path().join("data/flowgate.db");
    // The same file through a symlink and through a hard link.
    std::os::unix::fs::symlink(&db, dir.path().join("data/link.db")).unwrap();
    std::fs::hard_link(&db, dir.path().join("data/hard.db")).unwrap();
    for other in ["data/link.db", "data/hard.db"] {
        let second = command(&dir, &["serve"])
            .env(
                "FLOWGATE_SERVER__LISTEN",
                format!("127.0.0.1:{}", free_port()),
            )
            .env("FLOWGATE_STORAGE__PATH", other)
            .output()
            .unwrap();
        assert!(!second.status.success(), "{other}");
        let stderr = String::from_utf8_lossy(&second.stderr);
        assert!(
            stderr.contains("in use by another flowgate process"),
            "{other}: {stderr}"
        );
    }
    std::fs::remove_file(dir.path().join("data/hard.db")).unwrap();

    let out = command(&dir, &["token", "issue", "a"]).output().unwrap();
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let accept = || {
        client
            .post(format!("{base}/v1/flow-webhook/a"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(r#"{"n": 1}"#)
            .send()
    };
    assert_eq!(accept().await.unwrap().status(), 202);

    // Replaced by rename: not ready, and nothing more is accepted into
    // the file that is gone, within the check period.
    let copy = dir.path().join("data/copy.db");
    std::fs::copy(&db, &copy).unwrap();
    std::fs::rename(&copy, &db).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let readyz = loop {
        let response = client.get(format!("{base}/readyz")).send().await.unwrap();
        if response.status() == 503 {
            break response.text().await.unwrap();
        }
        assert!(Instant::now() < deadline, "still ready on a replaced file");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(readyz.contains("was replaced"), "{readyz}");
    let refused = accept().await.unwrap();
    assert_eq!(refused.status(), 503);
    terminate(server).await;

    // Overwritten in place (its bytes, another database copied over it,
    // truncated): noticed too.
    let other = project(free_port());
    let out = command(&other, &["flows", "list"]).output().unwrap();
    assert!(out.status.success());
    let other_db = std::fs::read(other.path().join("data/flowgate.db")).unwrap();
    let good = std::fs::read(&db).unwrap();
    type Overwrite = Box<dyn Fn(&std::path::Path)>;
    let ways: Vec<(&str, Overwrite)> = vec![
        (
            "its header scribbled over",
            Box::new(|db| {
                use std::io::{Seek, Write};
                let mut file = std::fs::OpenOptions::new().write(true).open(db).unwrap();
                file.seek(std::io::SeekFrom::Start(0)).unwrap();
                file.write_all(&[b'z'; 4096]).unwrap();
            }),
        ),
        (
            "another database copied over it",
            Box::new(move |db| {
                use std::io::Write;
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .truncate(true)
                    .open(db)
                    .unwrap();
                file.write_all(&other_db).unwrap();
            }),
        ),
        (
            "truncated",
            Box::new(|db| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .truncate(true)
                    .open(db)
                    .unwrap();
            }),
        ),
    ];
    for (how, overwrite) in ways {
        std::fs::write(&db, &good).unwrap();
        let server = serve(&dir);
        ready(&client, &base).await;
        overwrite(&db);
        let deadline = Instant::now() + Duration::from_secs(5);
        let readyz = loop {
            let response = client.get(format!("{base}/readyz")).send().await.unwrap();
            if response.status() == 503 {
                break response.text().await.unwrap();
            }
            assert!(Instant::now() < deadline, "still ready with the file {how}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        // Named by the check, or by SQLite when it reads the file first.
        assert!(
            readyz.contains("was overwritten") || readyz.contains("malformed"),
            "{how}: {readyz}"
        );
        assert_eq!(accept().await.unwrap().status(), 503, "{how}");
        let _ = terminate(server).await;
    }
}

#[tokio::test]
async fn another_process_reading_the_database_takes_nothing_from_the_server() {
    let (dir, base, client, server) = serving(&[("slow.toml", SLOW)]).await;
    let out = command(&dir, &["token", "issue", "slow"]).output().unwrap();
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let accept = || {
        client
            .post(format!("{base}/v1/flow-webhook/slow"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body("{}")
            .send()
    };
    assert_eq!(accept().await.unwrap().status(), 202);
    // The server's own look at its file (every second) must not drop its
    // locks: an outside reader closing its connection would then remove
    // the WAL the server writes to.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let db = dir.path().join("data/flowgate.db");
    for _ in 0..3 {
        let outside = rusqlite::Connection::open(&db).unwrap();
        let n: i64 = outside
            .query_row("SELECT count(*) FROM dead_letters", [], |row| row.get(0))
            .unwrap();
        assert_eq!(n, 0);
        drop(outside);
        assert!(
            dir.path().join("data/flowgate.db-wal").exists(),
            "an outside reader removed the server's WAL"
        );
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let mut accepted = Vec::new();
    for _ in 0..3 {
        let response = accept().await.unwrap();
        assert_eq!(response.status(), 202);
        accepted.push(run_id(&response));
    }
    // Killed, and started again: every accepted run is there.
    let mut server = server;
    server.kill().unwrap();
    server.wait().unwrap();
    let server = serve(&dir);
    ready(&client, &base).await;
    for run in &accepted {
        let out = command(&dir, &["runs", "show", run, "--json"])
            .output()
            .unwrap();
        assert!(out.status.success(), "run {run} was lost");
    }
    terminate(server).await;
}

const SLOW: &str = "status = \"live\"\n[trigger]\nref = \"w\"\nmode = \"async\"\n[[steps]]\nref = \"wait\"\nkind = \"delay\"\nduration = \"500ms\"\n";

/// Every listed run of flow `flow`, by id and status, from the admin API.
async fn statuses(client: &reqwest::Client, base: &str, flow: &str) -> Vec<(String, String)> {
    let keys = flowgate::token::TokenKeys::new(&flowgate::config::Secret::new(
        SIGNING_KEY.as_bytes().to_vec(),
    ));
    let admin = keys
        .issue_admin("tester", flowgate::token::Role::Viewer, None)
        .unwrap();
    let page: Value = client
        .get(format!("{base}/v1/admin/runs?flow={flow}&limit=250"))
        .bearer_auth(admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_owned(),
                r["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn runs_accepted_before_a_sigkill_run_after_the_restart() {
    let (dir, base, client, mut server) = serving(&[("slow.toml", SLOW)]).await;
    let out = command(&dir, &["token", "issue", "slow"]).output().unwrap();
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let mut accepted = Vec::new();
    for n in 0..40 {
        let answer = client
            .post(format!("{base}/v1/flow-webhook/slow"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(format!(r#"{{"n": {n}}}"#))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 202);
        accepted.push(
            answer.headers()["x-flowgate-run-id"]
                .to_str()
                .unwrap()
                .to_owned(),
        );
    }
    // Some are running (16 worker slots, 500 ms each), the rest still queued.
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.kill().unwrap();
    server.wait().unwrap();
    let restarted = Instant::now();
    let server = serve(&dir);
    ready(&client, &base).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let runs = statuses(&client, &base, "slow").await;
        let done = runs.iter().filter(|(_, s)| s == "succeeded").count();
        if done == accepted.len() {
            let mut ids: Vec<&String> = runs.iter().map(|(id, _)| id).collect();
            ids.sort();
            let mut expected: Vec<&String> = accepted.iter().collect();
            expected.sort();
            assert_eq!(ids, expected, "exactly the accepted runs, once each");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{done} of {} ended: {runs:?}",
            accepted.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The runs the dead process held were taken over at once, not after the reclaim wait.
    assert!(
        restarted.elapsed() < Duration::from_secs(10),
        "{:?}",
        restarted.elapsed()
    );
    terminate(server).await;
}

#[tokio::test]
async fn an_unusable_database_stops_the_start_with_a_clear_line() {
    let port = free_port();
    let dir = project(port);
    // A folder on a read-only file system.
    let read_only = command(&dir, &["serve"])
        .env("FLOWGATE_STORAGE__PATH", "/proc/flowgate/flowgate.db")
        .output()
        .unwrap();
    assert!(!read_only.status.success());
    let stderr = String::from_utf8_lossy(&read_only.stderr);
    assert!(
        stderr.contains("/proc/flowgate/flowgate.db")
            && stderr.contains("cannot create its folder"),
        "{stderr}"
    );
    // A file that is not a database.
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    std::fs::write(
        dir.path().join("data/flowgate.db"),
        "not a database, just text ".repeat(100),
    )
    .unwrap();
    let corrupt = command(&dir, &["serve"]).output().unwrap();
    assert!(!corrupt.status.success());
    let stderr = String::from_utf8_lossy(&corrupt.stderr);
    assert!(
        stderr.contains("flowgate.db") && stderr.contains("not a database"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    // A read-only file system, and a disk too full for the new file.
    for (options, problem) in [
        ("ro", "Read-only file system"),
        ("size=8k", "No space left on device"),
    ] {
        let Some(disk) = Mount::tmpfs(options) else {
            return;
        };
        let path = disk.path().join("flowgate.db");
        let out = command(&dir, &["serve"])
            .env("FLOWGATE_STORAGE__PATH", &path)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{options}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&*path.to_string_lossy()) && stderr.contains(problem),
            "{options}: {stderr}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
}

#[tokio::test]
async fn a_full_disk_refuses_runs_with_503_until_there_is_room_and_loses_none() {
    let Some(disk) = Mount::tmpfs("size=2m") else {
        return;
    };
    let options = AppOptions {
        worker: false,
        database: Some(disk.path().join("flowgate.db")),
        ..Default::default()
    };
    let app = BACKEND
        .scope(
            Backend::Embedded,
            spawn_app_with(&[("a", ASYNC.into())], options),
        )
        .await;
    let body = serde_json::json!({ "n": 1, "pad": "x".repeat(100_000) }).to_string();
    let mut accepted = Vec::new();
    let mut refused = 0;
    for _ in 0..200 {
        let response = app.post_json("a", &body).await;
        if response.status() == 202 {
            let answer: Value = response.json().await.unwrap();
            accepted.push(answer["run_id"].as_str().unwrap().to_owned());
            continue;
        }
        assert_eq!(response.headers()["retry-after"], "5");
        envelope(response, 503, "queue_unavailable").await;
        refused += 1;
        if refused == 3 {
            break;
        }
    }
    assert_eq!(refused, 3, "the disk never filled up");
    assert!(!accepted.is_empty());
    // Reads still work: readiness says nothing of the full disk (docs/operations.md says so).
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), 200);

    // Room again: the same process accepts without a restart.
    disk.remount("size=64m");
    let response = app.post_json("a", &body).await;
    assert_eq!(response.status(), 202);
    let answer: Value = response.json().await.unwrap();
    accepted.push(answer["run_id"].as_str().unwrap().to_owned());

    // Every run answered 202 was stored, and runs.
    app.start_worker(Duration::from_secs(15));
    for id in &accepted {
        let record = app
            .record_when(id, |r| r.status == flowgate::engine::RunState::Succeeded)
            .await;
        assert_eq!(record.steps[0].output, serde_json::json!({ "n": 2 }));
    }
    app.drained().await;
}

#[tokio::test]
async fn backup_copies_the_database_while_the_server_runs() {
    let (dir, _, _, server) = serving(&[]).await;
    let out = command(&dir, &["flows", "pause", "s"]).output().unwrap();
    assert!(out.status.success());
    let out = command(&dir, &["backup", "copy.db"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // It holds webhook secrets: the database, its WAL and the copy are the
    // owner's alone.
    use std::os::unix::fs::PermissionsExt;
    let private: Vec<(String, u32)> = [dir.path().to_owned(), dir.path().join("data")]
        .iter()
        .flat_map(|folder| std::fs::read_dir(folder).unwrap())
        .map(|entry| entry.unwrap())
        .filter(|entry| entry.file_name().to_string_lossy().contains(".db"))
        .map(|entry| {
            let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
            (entry.file_name().to_string_lossy().into_owned(), mode)
        })
        .collect();
    assert!(
        private.len() >= 3,
        "the database, its WAL and the copy: {private:?}"
    );
    assert!(
        private.iter().all(|(_, mode)| *mode == 0o600),
        "{private:?}"
    );
    terminate(server).await;
    // The copy is a database holding what the server had: the pause.
    let copy = dir.path().join("copy.db");
    let out = command(&dir, &["flows", "status", "s"])
        .env("FLOWGATE_STORAGE__PATH", &copy)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("paused (from the override)"), "{text}");
    let again = command(&dir, &["backup", "copy.db"]).output().unwrap();
    assert!(
        !again.status.success(),
        "an existing file is not overwritten"
    );
}

#[tokio::test]
async fn fifty_concurrent_duplicates_make_one_run() {
    let (dir, base, client, server) = serving(&[]).await;
    let out = command(&dir, &["token", "issue", "a"]).output().unwrap();
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let sends = (0..50).map(|_| {
        let request = client
            .post(format!("{base}/v1/flow-webhook/a"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .header("idempotency-key", "order-42")
            .body(r#"{"n": 1}"#)
            .send();
        async move {
            let answer = request.await.unwrap();
            let status = answer.status().as_u16();
            let run = answer
                .headers()
                .get("x-flowgate-run-id")
                .map(|v| v.to_str().unwrap().to_owned());
            (status, run)
        }
    });
    let answers = futures_util::future::join_all(sends).await;
    let accepted: Vec<&String> = answers
        .iter()
        .filter(|(status, _)| *status == 202)
        .filter_map(|(_, run)| run.as_ref())
        .collect();
    assert!(!accepted.is_empty(), "{answers:?}");
    assert!(
        accepted.iter().all(|run| *run == accepted[0]),
        "{answers:?}"
    );
    // Every repeat waited for the first and got its answer again.
    assert!(
        answers.iter().all(|(status, _)| *status == 202),
        "{answers:?}"
    );
    // A repeat that started a run would have recorded it before its 202.
    let runs = statuses(&client, &base, "a").await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(&runs[0].0, accepted[0]);
    terminate(server).await;
}

#[tokio::test]
async fn serve_tells_systemd_when_it_listens_and_when_it_stops() {
    let port = free_port();
    let dir = project(port);
    // systemd's side of Type=notify: a datagram socket named by NOTIFY_SOCKET.
    let socket_path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let server = command(&dir, &["serve"])
        .env("NOTIFY_SOCKET", &socket_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut message = [0u8; 256];
    let n = socket.recv(&mut message).expect("READY=1 within 30 s");
    assert_eq!(&message[..n], b"READY=1\n");
    // Ready means listening: the first request is answered.
    let health = reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let status = terminate(server).await;
    assert!(status.success(), "{status:?}");
    let n = socket.recv(&mut message).expect("STOPPING=1");
    assert_eq!(&message[..n], b"STOPPING=1\n");
}

#[tokio::test]
async fn serve_raises_a_low_open_files_limit_to_fit_its_connections() {
    let port = free_port();
    let dir = project(port);
    // Soft 64, hard 20000: the soft limit rises to max_connections + 256.
    let mut server = Command::new("prlimit");
    server
        .arg("--nofile=64:20000")
        .arg("--")
        .arg(binary())
        .arg("serve")
        .current_dir(dir.path())
        .env("FLOWGATE_SIGNING_KEY", SIGNING_KEY)
        .env("FLOWGATE_SERVER__MAX_CONNECTIONS", "1000")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let server = server.spawn().expect("prlimit, from util-linux");
    ready(&reqwest::Client::new(), &format!("http://127.0.0.1:{port}")).await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.id())).unwrap();
    let open_files = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .unwrap()
        .split_whitespace()
        .skip(3)
        .take(2)
        .collect::<Vec<_>>();
    assert_eq!(open_files, ["1256", "20000"], "{limits}");
    terminate(server).await;
}
