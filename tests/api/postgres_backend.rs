//! The PostgreSQL backend under faults and from the command line: the
//! database stopped and restarted under load, a gateway killed mid-load,
//! migrations, and the run pages' query plans. Everything else it does is
//! tested on every backend (`on_all_backends!`, the conformance suite).

use std::path::Path;
use std::time::Duration;

use crate::helpers::*;
use crate::pg_server::PgServer;
use crate::queue::{async_app_without_worker, runs_received};

/// `test` with the app on a PostgreSQL of its own.
async fn on_postgres<F: std::future::Future<Output = ()>>(test: F) {
    BACKEND.scope(Backend::Postgres, test).await
}

fn pg(app: &mut TestApp) -> &mut PgServer {
    app.postgres.as_mut().expect("a PostgreSQL")
}

/// Posts `n` bodies to flow `a` from 8 senders at once; the run ids of the 202s.
async fn load(client: &reqwest::Client, url: &str, token: &str, n: usize) -> Vec<String> {
    let mut senders = tokio::task::JoinSet::new();
    for sender in 0..8 {
        let (client, url, token) = (client.clone(), url.to_owned(), token.to_owned());
        senders.spawn(async move {
            let mut accepted = Vec::new();
            for i in 0..n / 8 {
                let sent = client
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&serde_json::json!({"n": sender * 1000 + i}))
                    .send()
                    .await;
                let Ok(answer) = sent else { continue };
                match answer.status().as_u16() {
                    202 => accepted.push(run_id(&answer)),
                    503 => {
                        assert_eq!(answer.headers()["retry-after"], "5");
                        let body: serde_json::Value = answer.json().await.unwrap();
                        assert_eq!(body["error"], "queue_unavailable", "{body}");
                    }
                    other => panic!("unexpected {other}: {:?}", answer.text().await),
                }
            }
            accepted
        });
    }
    let mut accepted = Vec::new();
    while let Some(batch) = senders.join_next().await {
        accepted.extend(batch.unwrap());
    }
    accepted
}

/// Starts a worker on `app` and waits until each of `accepted` reached
/// `receiver`, once.
async fn executes_each_once(app: &TestApp, receiver: &Receiver, accepted: &[String]) {
    app.start_worker(Duration::from_secs(15));
    assert_eventually(
        Duration::from_secs(60),
        "every accepted run executed",
        || receiver.requests().len() >= accepted.len(),
    )
    .await;
    let counts = runs_received(receiver);
    for run_id in accepted {
        assert_eq!(counts.get(run_id), Some(&1), "run {run_id}");
    }
}

#[tokio::test]
async fn a_stopped_database_refuses_with_503_and_every_accepted_run_executes_after_it_returns() {
    on_postgres(async {
        let receiver = Receiver::start(&[], Duration::ZERO).await;
        let mut app = async_app_without_worker(&receiver).await;
        let (client, url, token) = (app.client.clone(), app.url("a"), app.token("a"));
        // Senders keep going while the database stops and comes back.
        let sending = tokio::spawn(async move { load(&client, &url, &token, 800).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        pg(&mut app).stop();
        let refused = app.post_json("a", r#"{"n": -1}"#).await;
        assert!(!refused.headers().contains_key("x-flowgate-run-id"));
        envelope(refused, 503, "queue_unavailable").await;
        let ready = app.get("/readyz").await;
        let body = envelope(ready, 503, "not_ready").await;
        assert!(
            body["message"].as_str().unwrap().contains("PostgreSQL"),
            "{body}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        pg(&mut app).restart();
        let mut accepted = sending.await.unwrap();
        assert!(!accepted.is_empty());
        // The same process recovers: accepted again, and every 202 executes once.
        accepted.push(run_id(&app.post_json("a", r#"{"n": -2}"#).await));
        executes_each_once(&app, &receiver, &accepted).await;
    })
    .await;
}

#[tokio::test]
async fn every_run_a_killed_gateway_accepted_executes() {
    on_postgres(async {
        let receiver = Receiver::start(&[], Duration::ZERO).await;
        let app = async_app_without_worker(&receiver).await;
        let (mut gateway, base) = replica(&app).await;
        let (client, token) = (app.client.clone(), app.token("a"));
        let url = format!("{base}/v1/flow-webhook/a");
        let sending = tokio::spawn(async move { load(&client, &url, &token, 4000).await });
        tokio::time::sleep(Duration::from_millis(700)).await;
        gateway.kill().unwrap(); // SIGKILL, mid-load
        gateway.wait().unwrap();
        let accepted = sending.await.unwrap();
        assert!(
            !accepted.is_empty(),
            "the gateway accepted runs before it died"
        );
        executes_each_once(&app, &receiver, &accepted).await;
    })
    .await;
}

#[tokio::test]
async fn migrate_applies_once_and_a_newer_or_unreachable_database_stops_start_up() {
    on_postgres(async {
        let app = spawn_app(&[(
            "s",
            "status = \"live\"\n[trigger]\nref = \"web1\"\n".to_owned(),
        )])
        .await;
        // Already current: the gateway applied them at start.
        let (out, err, code) = cli(&app, &["migrate"]);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("0 migration(s) applied"), "{out}");
        // A schema from a newer flowgate: refused, in one line.
        app.postgres
            .as_ref()
            .unwrap()
            .psql("INSERT INTO flowgate.migrations (version) VALUES (999)");
        let (_, err, code) = cli(&app, &["serve"]);
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("schema is version 999"), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        // Nothing listening: one line, exit 1, no password shown.
        let port = free_port();
        let out = app
            .process("", &["migrate"])
            .env(
                "FLOWGATE_POSTGRES__URL",
                format!("postgres://app:s3cret@127.0.0.1:{port}/flowgate?sslmode=disable"),
            )
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains(&format!("127.0.0.1:{port}/flowgate")), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
        // Not a PostgreSQL URL: a configuration error.
        let out = app
            .process("", &["migrate"])
            .env("FLOWGATE_POSTGRES__URL", "mysql://127.0.0.1/flowgate")
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64));
        assert!(String::from_utf8_lossy(&out.stderr).contains("postgres.url"));
    })
    .await;
}

#[tokio::test]
async fn run_pages_walk_an_index_and_never_sort_the_table() {
    use flowgate::backend::RunFilter;
    use flowgate::backend::postgres::{Database, PostgresStore, Settings};
    use flowgate::engine::RunState;
    let server = PgServer::start();
    let db = Database::new(&Settings {
        url: server.url(),
        pool_size: 2,
    })
    .unwrap();
    db.migrate().await.unwrap();
    let store = PostgresStore::new(db, Duration::from_secs(3600));
    // 50,000 records over 50 flows, a tenth of them failed.
    server.psql(
        "INSERT INTO flowgate.runs (id, flow, accepted_at, status, record, expires_at)
         SELECT 'run' || n, 'flow' || (n % 50), 1700000000000 + n,
                CASE WHEN n % 10 = 0 THEN 'failed' ELSE 'succeeded' END, '{}', 9000000000000
         FROM generate_series(1, 50000) AS n; ANALYZE flowgate.runs",
    );
    let by = |status: Option<RunState>, flow: Option<&str>| RunFilter {
        flow: flow.map(str::to_owned),
        status,
        ..RunFilter::default()
    };
    for (filter, index) in [
        (by(None, None), "runs_by_time"),
        (by(None, Some("flow7")), "runs_by_flow"),
        (by(Some(RunState::Failed), None), "runs_not_succeeded"),
        (by(Some(RunState::Queued), None), "runs_not_succeeded"),
        (by(Some(RunState::Succeeded), None), "runs_by_time"),
    ] {
        let plan = store.explain_page(&filter).await.unwrap();
        assert!(plan.contains(index), "{filter:?}: {plan}");
        assert!(!plan.contains("Sort"), "{filter:?} sorts: {plan}");
    }
}

#[tokio::test]
async fn sslmode_means_what_it_means_to_libpq() {
    let mut server = PgServer::start();
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_certificates(certs.path());
    std::fs::write(certs.path().join("ca.pem"), &ca).unwrap();
    let ca = certs.path().join("ca.pem");
    let base = server.url().replace("127.0.0.1", "localhost");
    let migrate = |sslmode: Option<&str>, trust: Option<&Path>| {
        let url = match sslmode {
            Some(mode) => base.replace("sslmode=disable", &format!("sslmode={mode}")),
            None => base.replace("?sslmode=disable", ""),
        };
        let mut command = std::process::Command::new(binary());
        command
            .args(["--config", "/dev/null", "migrate"])
            .env("FLOWGATE_STORAGE__BACKEND", "postgres")
            .env("FLOWGATE_POSTGRES__URL", url)
            .env_remove("SSL_CERT_FILE");
        if let Some(ca) = trust {
            command.env("SSL_CERT_FILE", ca);
        }
        let out = command.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // `require` insists on TLS: a server without it is refused.
    let (code, err) = migrate(Some("require"), None);
    assert_eq!(code, Some(1), "{err}");
    server.enable_tls(&cert, &key);
    // `verify-full`: a certificate from a CA nobody trusts is refused, saying why...
    let (code, err) = migrate(Some("verify-full"), None);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("certificate"), "{err}");
    // ...and one from a CA named by SSL_CERT_FILE is accepted.
    let (code, err) = migrate(Some("verify-full"), Some(&ca));
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        server
            .psql("SELECT count(*) FROM flowgate.migrations")
            .trim(),
        "1"
    );
    // `require` and the default (`prefer`) encrypt without verifying, as
    // libpq does: a self-signed server (Debian's default) just works.
    for mode in [Some("require"), None] {
        let (code, err) = migrate(mode, None);
        assert_eq!(code, Some(0), "{mode:?}: {err}");
    }
    // A word libpq does not know is a configuration error.
    let (code, err) = migrate(Some("always"), None);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("sslmode `always`"), "{err}");
}

#[tokio::test]
async fn a_database_that_may_lose_commits_is_named_at_start() {
    on_postgres(async {
        let mut app = spawn_app(&[]).await;
        // The tests' own servers run without fsync.
        let log = crate::redis_backend::startup_log(&app).await;
        assert!(log.contains("fsync = off"), "{log}");
        assert!(!log.contains("could not be recycled"), "{log}");
        pg(&mut app).restart_with(&["fsync=on"]);
        let log = crate::redis_backend::startup_log(&app).await;
        assert!(!log.contains("= off"), "{log}");
        pg(&mut app).restart_with(&["synchronous_commit=off"]);
        let log = crate::redis_backend::startup_log(&app).await;
        assert!(
            log.contains("synchronous_commit = off") && log.contains("can be lost"),
            "{log}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_run_refused_while_the_database_is_stuck_is_never_stored() {
    on_postgres(async {
        let receiver = Receiver::start(&[], Duration::ZERO).await;
        let app = async_app_without_worker(&receiver).await;
        // Another session holds the queue for 12 s (longer than flowgate waits
        // for any operation): every accept waits on it.
        let mut locker = app.postgres.as_ref().unwrap().psql_in_background(
            "BEGIN; LOCK TABLE flowgate.queue IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(12); COMMIT;",
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut senders = tokio::task::JoinSet::new();
        for n in 0..30 {
            let (client, url, token) = (app.client.clone(), app.url("a"), app.token("a"));
            senders.spawn(async move {
                let sent = std::time::Instant::now();
                let answer = client
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&serde_json::json!({"n": n}))
                    .send()
                    .await
                    .unwrap();
                let status = answer.status().as_u16();
                let waited = sent.elapsed();
                let body: serde_json::Value = answer.json().await.unwrap();
                (n, status, body, waited)
            });
        }
        let mut refused = Vec::new();
        let mut accepted = Vec::new();
        while let Some(result) = senders.join_next().await {
            let (n, status, body, waited) = result.unwrap();
            assert!(waited < Duration::from_secs(11), "answered after {waited:?}");
            match status {
                202 => accepted.push(body["run_id"].as_str().unwrap().to_owned()),
                503 => {
                    assert_eq!(body["error"], "queue_unavailable", "{body}");
                    refused.push(n.to_string());
                }
                other => panic!("{other}: {body}"),
            }
        }
        assert!(!refused.is_empty(), "the lock made accepts fail");
        locker.wait().unwrap();
        // What was refused is not stored, not even once the lock is gone...
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let stored = app
            .postgres
            .as_ref()
            .unwrap()
            .psql("SELECT count(*) FROM flowgate.queue");
        assert_eq!(stored.trim(), accepted.len().to_string(), "{refused:?} refused");
        // ...and only the accepted runs execute.
        executes_each_once(&app, &receiver, &accepted).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let ran: Vec<String> = receiver
            .requests()
            .iter()
            .map(|r| r.json()["n"].as_str().unwrap().to_owned())
            .collect();
        for n in &refused {
            assert!(!ran.contains(n), "run {n} was refused with 503 but executed");
        }
        assert_eq!(ran.len(), accepted.len());
    })
    .await;
}
