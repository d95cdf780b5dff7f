//! A Redis Cluster end to end: runs spread over every master, and a master
//! killed under load loses no accepted run once its replica takes over.
//! The storage contract itself runs on a cluster in `conformance.rs`, and
//! the queue, idempotency, records and control tests in their own files.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::helpers::*;
use crate::queue::{async_flow, runs_received};

/// Posts `{"n": i}` to flow `a` of `app` `count` times, 32 at a time; the
/// run ids accepted.
async fn accept(app: &TestApp, count: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for chunk in (0..count).collect::<Vec<_>>().chunks(32) {
        let requests = chunk.iter().map(|n| {
            app.client
                .post(app.url("a"))
                .bearer_auth(app.token("a"))
                .json(&serde_json::json!({ "n": n }))
                .send()
        });
        for response in futures_util::future::join_all(requests).await {
            let response = response.unwrap();
            assert_eq!(response.status(), 202);
            ids.push(run_id(&response));
        }
    }
    ids
}

async fn runs_spread_over_every_master_and_each_runs_once() {
    let receiver = Receiver::start(&[], Duration::ZERO).await;
    let options = AppOptions {
        worker: false,
        ..Default::default()
    };
    let app = spawn_app_with(&[("a", async_flow(&receiver.url("/hook"), ""))], options).await;
    let accepted = accept(&app, 300).await;
    // Each master holds queue entries and records of its share of the
    // partitions (about 100 runs each, plus a few control keys).
    let keys = app.cluster.as_ref().unwrap().key_count();
    assert_eq!(keys.len(), 3);
    for count in &keys {
        assert!(*count >= 40, "keys per master: {keys:?}");
    }
    // Two workers compete over every partition.
    app.start_worker(Duration::from_secs(15));
    app.start_worker(Duration::from_secs(15));
    assert_eventually(Duration::from_secs(30), "300 runs executed", || {
        receiver.requests().len() >= 300
    })
    .await;
    app.drained().await;
    let counts = runs_received(&receiver);
    for id in &accepted {
        assert_eq!(counts.get(id), Some(&1), "run {id}");
    }
    // Records of every partition are listed together.
    let listed = app.store().list("a", 500).await.unwrap();
    let mut listed: Vec<String> = listed.into_iter().map(|r| r.id).collect();
    let mut accepted = accepted;
    listed.sort();
    accepted.sort();
    assert_eq!(listed, accepted);
}

/// What one sender saw: run ids answered 202, and every other answer.
#[derive(Default)]
struct Seen {
    accepted: Vec<(Instant, String)>,
    refused: Vec<(u16, Option<String>)>,
}

async fn a_killed_master_loses_no_accepted_run_once_its_replica_takes_over() {
    let receiver = Receiver::start(&[], Duration::ZERO).await;
    let options = AppOptions {
        cluster_replicas: 1,
        replica_acks: 1,
        ..Default::default()
    };
    let mut app = spawn_app_with(&[("a", async_flow(&receiver.url("/hook"), ""))], options).await;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = (0..16)
        .map(|sender| {
            let (client, url, token) = (app.client.clone(), app.url("a"), app.token("a"));
            let (seen, stop) = (seen.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let sent = client
                        .post(&url)
                        .bearer_auth(&token)
                        .timeout(Duration::from_secs(10))
                        .json(&serde_json::json!({ "n": sender * 100_000 + n }))
                        .send()
                        .await
                        .unwrap();
                    let mut seen = seen.lock().unwrap();
                    if sent.status() == 202 {
                        seen.accepted.push((Instant::now(), run_id(&sent)));
                    } else {
                        let retry = sent.headers().get("retry-after");
                        let retry = retry.map(|v| v.to_str().unwrap().to_owned());
                        seen.refused.push((sent.status().as_u16(), retry));
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let cluster = app.cluster.as_mut().unwrap();
    let victim = cluster.masters()[0];
    cluster.kill(victim);
    let killed_at = Instant::now();
    let cluster = app.cluster.as_ref().unwrap();
    // The replica is promoted once the others deem its master failed
    // (node timeout 1 s) and elect it.
    assert_eventually(Duration::from_secs(30), "a replica took over", || {
        cluster.masters().len() == 3 && cluster.is_ok()
    })
    .await;
    // Load goes on a while after the failover.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for sender in senders {
        sender.await.unwrap();
    }
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let after_kill = seen
        .accepted
        .iter()
        .filter(|(at, _)| *at > killed_at)
        .count();
    assert!(
        seen.accepted.len() > 100,
        "{} accepted",
        seen.accepted.len()
    );
    assert!(after_kill > 0, "runs are accepted again after the failover");
    // Whatever was refused was refused honestly: 503 with Retry-After.
    for (status, retry) in &seen.refused {
        assert_eq!(*status, 503, "refusals: {:?}", seen.refused);
        assert!(retry.is_some(), "503 without Retry-After");
    }
    // Every accepted run executes, at least once, within the promise (runs
    // handed to the worker in a reply the dead master never sent wait for
    // the reclaim threshold, 15 s here).
    let promise = Duration::from_secs(45);
    assert_eventually(promise, "every accepted run executed", || {
        let counts = runs_received(&receiver);
        seen.accepted.iter().all(|(_, id)| counts.contains_key(id))
    })
    .await;
}

crate::on_cluster!(
    runs_spread_over_every_master_and_each_runs_once,
    a_killed_master_loses_no_accepted_run_once_its_replica_takes_over,
);
