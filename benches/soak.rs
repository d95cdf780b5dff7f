//! Soak test: normal sync and async traffic against a real gateway while
//! hostile clients attack it, and Redis restarts halfway. Run through
//! `scripts/soak.sh`, which builds this and the gateway in release mode.
//!
//! It starts its own `redis-server` (append-only on) and `flowgate serve` on
//! free ports, with flows in a temporary folder, and a receiver the async
//! flow reports each run to. At the end it prints accepted vs executed async
//! runs (they must be equal), the normal requests' success rate and p99
//! during the attack, and the gateway's peak RSS; it exits 1 when an
//! accepted run never executed.

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

const SIGNING_KEY: &str = "soak-signing-key-0123456789abcdef0123456789";
const GH_SECRET: &str = "soak-github-secret";
/// Normal clients of each kind, each sending a request every `PACE`.
const NORMAL_CLIENTS: usize = 4;
const PACE: Duration = Duration::from_millis(20);

#[derive(Default)]
struct Counts {
    sync_sent: AtomicU64,
    sync_ok: AtomicU64,
    async_sent: AtomicU64,
    async_ok: AtomicU64,
    async_accepted: AtomicU64,
    async_refused_503: AtomicU64,
    other_failures: AtomicU64,
    hostile_sent: AtomicU64,
    latencies_us: Mutex<Vec<u64>>,
    accepted_ids: Mutex<HashSet<String>>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_redis(port: u16, dir: &Path) -> Child {
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--appendonly", "yes", "--appendfsync", "everysec"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server must be installed");
    wait_port(port);
    child
}

fn wait_port(port: u16) {
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listens on {port}");
}

/// Stops Redis the way an operator would (SIGTERM: it flushes its AOF).
fn stop_redis(child: &mut Child) {
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
}

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn write_project(dir: &Path, receiver: SocketAddr, gateway_port: u16, redis_port: u16) -> PathBuf {
    let flows = dir.join("flows");
    std::fs::create_dir_all(&flows).unwrap();
    std::fs::create_dir_all(dir.join("templates")).unwrap();
    std::fs::write(
        flows.join("sync.toml"),
        "status = \"live\"\n[trigger]\nref = \"w\"\n[[steps]]\nref = \"t\"\nkind = \"transform\"\nset = { n = \"{{ w.n }}\" }\n[response]\nbody_inline = '{\"n\": {{ t.n }}, \"echo\": \"{{ w.s }}\"}'\n",
    )
    .unwrap();
    std::fs::write(
        flows.join("async.toml"),
        format!(
            "status = \"live\"\n[trigger]\nref = \"w\"\nmode = \"async\"\n[[steps]]\nref = \"report\"\nkind = \"http\"\nurl = \"http://{receiver}/ran\"\nbody = {{ run = \"{{{{ run.id }}}}\" }}\nretry = {{ attempts = 5, backoff = \"1s\" }}\n"
        ),
    )
    .unwrap();
    std::fs::write(
        flows.join("signed.toml"),
        "status = \"live\"\n[trigger]\nref = \"gh\"\nauth = [\"signature\"]\n[trigger.signature]\nscheme = \"github\"\nsecret_env = \"SOAK_GH_SECRET\"\n",
    )
    .unwrap();
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{gateway_port}\"\nshutdown_grace = \"10s\"\n[storage]\nbackend = \"redis\"\n[redis]\nurl = \"redis://127.0.0.1:{redis_port}/0\"\n[http]\nallow_private_networks = true\n[runs]\nretention = \"1h\"\n"
        ),
    )
    .unwrap();
    config
}

fn token(flowgate: &Path, config: &Path, flow: &str) -> String {
    let out = Command::new(flowgate)
        .args(["--config"])
        .arg(config)
        .args(["token", "issue", flow])
        .env("FLOWGATE_SIGNING_KEY", SIGNING_KEY)
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Counts the run ids the async flow reports.
async fn receiver(executed: Arc<Mutex<HashSet<String>>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let executed = executed.clone();
            let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                let executed = executed.clone();
                async move {
                    let body = req.into_body().collect().await.map(|b| b.to_bytes());
                    if let Ok(json) =
                        serde_json::from_slice::<serde_json::Value>(&body.unwrap_or_default())
                        && let Some(run) = json["run"].as_str()
                    {
                        executed.lock().unwrap().insert(run.to_owned());
                    }
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"{}"))))
                }
            });
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

async fn normal_sync(base: String, token: String, counts: Arc<Counts>, stop: Arc<AtomicBool>) {
    let client = reqwest::Client::new();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let started = Instant::now();
        counts.sync_sent.fetch_add(1, Ordering::Relaxed);
        let body = serde_json::json!({"n": n, "s": "quote \" and </script>"});
        let answer = client
            .post(format!("{base}/v1/flow-webhook/sync"))
            .bearer_auth(&token)
            .json(&body)
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        let valid = match answer {
            Ok(r) if r.status() == 200 => r.json::<serde_json::Value>().await.is_ok(),
            _ => false,
        };
        let counter = match valid {
            true => &counts.sync_ok,
            false => &counts.other_failures,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let took = started.elapsed().as_micros() as u64;
        counts.latencies_us.lock().unwrap().push(took);
        tokio::time::sleep(PACE).await;
    }
}

async fn normal_async(base: String, token: String, counts: Arc<Counts>, stop: Arc<AtomicBool>) {
    let client = reqwest::Client::new();
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        counts.async_sent.fetch_add(1, Ordering::Relaxed);
        match client
            .post(format!("{base}/v1/flow-webhook/async"))
            .bearer_auth(&token)
            .json(&serde_json::json!({"n": 1}))
            .timeout(Duration::from_secs(10))
            .send()
            .await
        {
            Ok(r) if r.status() == 202 => {
                let id = r.headers()["x-flowgate-run-id"]
                    .to_str()
                    .unwrap()
                    .to_owned();
                counts.async_ok.fetch_add(1, Ordering::Relaxed);
                counts.async_accepted.fetch_add(1, Ordering::Relaxed);
                counts.accepted_ids.lock().unwrap().insert(id);
            }
            Ok(r) if r.status() == 503 => {
                counts.async_refused_503.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                counts.other_failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        counts
            .latencies_us
            .lock()
            .unwrap()
            .push(started.elapsed().as_micros() as u64);
        tokio::time::sleep(PACE).await;
    }
}

/// One hostile connection: writes `head`, then `drip` one byte per second
/// until the gateway hangs up; then starts over.
async fn dripper(addr: SocketAddr, head: String, counts: Arc<Counts>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        counts.hostile_sent.fetch_add(1, Ordering::Relaxed);
        let Ok(mut stream) = TcpStream::connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        if stream.write_all(head.as_bytes()).await.is_err() {
            continue;
        }
        while !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if stream.write_all(b"a").await.is_err() {
                break;
            }
        }
    }
}

/// Requests built to crash, poison or probe: deep, huge, compressed bombs, bad tokens.
async fn blaster(base: String, tokens: [String; 2], counts: Arc<Counts>, stop: Arc<AtomicBool>) {
    let client = reqwest::Client::new();
    let deep_json = format!("{}{}", "[".repeat(5_000), "]".repeat(5_000));
    let deep_xml = format!("{}x{}", "<a>".repeat(5_000), "</a>".repeat(5_000));
    let just_under = format!("{}x{}", "<a>".repeat(120), "</a>".repeat(120));
    let huge = vec![b' '; 2 * 1024 * 1024];
    let bomb = {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(&vec![b' '; 64 * 1024 * 1024]).unwrap();
        e.finish().unwrap()
    };
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        counts.hostile_sent.fetch_add(1, Ordering::Relaxed);
        let (flow, token) = match i % 2 {
            0 => ("sync", &tokens[0]),
            _ => ("async", &tokens[1]),
        };
        let url = format!("{base}/v1/flow-webhook/{flow}");
        let request = match i % 7 {
            0 => client
                .post(&url)
                .bearer_auth(token)
                .header("content-type", "application/json")
                .body(deep_json.clone()),
            1 => client
                .post(&url)
                .bearer_auth(token)
                .header("content-type", "application/xml")
                .body(deep_xml.clone()),
            2 => client
                .post(&url)
                .bearer_auth(token)
                .header("content-type", "application/xml")
                .body(just_under.clone()),
            3 => client
                .post(&url)
                .bearer_auth(token)
                .header("content-type", "application/json")
                .body(huge.clone()),
            4 => client
                .post(&url)
                .bearer_auth(token)
                .header("content-type", "application/json")
                .header("content-encoding", "gzip")
                .body(bomb.clone()),
            5 => client
                .post(&url)
                .bearer_auth("eyJhbGciOiJub25lIn0.eyJzdWIiOiJzeW5jIn0.")
                .body("{}"),
            _ => client
                .post(format!("{base}/v1/flow-webhook/signed"))
                .header("x-hub-signature-256", "sha256=00")
                .body(huge.clone()),
        };
        if let Ok(response) = request.timeout(Duration::from_secs(10)).send().await
            && response.status() == 202
            && let Some(id) = response.headers().get("x-flowgate-run-id")
        {
            // A body at the depth bound is a legitimate run: it must execute too.
            counts.async_accepted.fetch_add(1, Ordering::Relaxed);
            counts
                .accepted_ids
                .lock()
                .unwrap()
                .insert(id.to_str().unwrap().to_owned());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn p99(latencies: &mut [u64]) -> f64 {
    if latencies.is_empty() {
        return 0.0;
    }
    latencies.sort_unstable();
    latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)] as f64 / 1000.0
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(600);
    let flowgate = PathBuf::from(
        args.next()
            .unwrap_or_else(|| "target/release/flowgate".into()),
    );
    let work = std::env::temp_dir().join(format!("flowgate-soak-{}", std::process::id()));
    std::fs::create_dir_all(work.join("redis")).unwrap();
    let executed = Arc::new(Mutex::new(HashSet::new()));
    let receiver_addr = receiver(executed.clone()).await;
    let (gateway_port, redis_port) = (free_port(), free_port());
    let config = write_project(&work, receiver_addr, gateway_port, redis_port);
    let mut redis = start_redis(redis_port, &work.join("redis"));
    let mut gateway = Command::new(&flowgate)
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .env("FLOWGATE_SIGNING_KEY", SIGNING_KEY)
        .env("SOAK_GH_SECRET", GH_SECRET)
        .env("RUST_LOG", "warn")
        .stderr(std::fs::File::create(work.join("gateway.log")).unwrap())
        .spawn()
        .unwrap();
    wait_port(gateway_port);
    let base = format!("http://127.0.0.1:{gateway_port}");
    let addr: SocketAddr = format!("127.0.0.1:{gateway_port}").parse().unwrap();
    let (sync_token, async_token) = (
        token(&flowgate, &config, "sync"),
        token(&flowgate, &config, "async"),
    );
    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..NORMAL_CLIENTS {
        tasks.push(tokio::spawn(normal_sync(
            base.clone(),
            sync_token.clone(),
            counts.clone(),
            stop.clone(),
        )));
        tasks.push(tokio::spawn(normal_async(
            base.clone(),
            async_token.clone(),
            counts.clone(),
            stop.clone(),
        )));
    }
    let hostile = [
        (300, "POST /v1/flow-webhook/sync HTTP/1.1\r\nHost: x\r\nX-Slow: ".to_owned()),
        (300, format!("POST /v1/flow-webhook/sync HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {sync_token}\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n[")),
        (300, "POST /v1/flow-webhook/signed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n[".to_owned()),
        (200, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".to_owned()),
    ];
    for (connections, head) in hostile {
        for _ in 0..connections {
            tasks.push(tokio::spawn(dripper(
                addr,
                head.clone(),
                counts.clone(),
                stop.clone(),
            )));
        }
    }
    for _ in 0..2 {
        let tokens = [sync_token.clone(), async_token.clone()];
        tasks.push(tokio::spawn(blaster(
            base.clone(),
            tokens,
            counts.clone(),
            stop.clone(),
        )));
    }
    eprintln!("soak: {seconds} s of normal and hostile traffic; Redis restarts halfway");
    tokio::time::sleep(Duration::from_secs(seconds / 2)).await;
    eprintln!("soak: restarting Redis");
    stop_and_restart(&mut redis, redis_port, &work);
    tokio::time::sleep(Duration::from_secs(seconds - seconds / 2)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.abort();
    }
    let accepted_ids = counts.accepted_ids.lock().unwrap().clone();
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline && !accepted_ids.is_subset(&executed.lock().unwrap()) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let executed_ids = executed.lock().unwrap().clone();
    let missing = accepted_ids.difference(&executed_ids).count();
    let peak = peak_rss_kib(gateway.id());
    let alive = gateway.try_wait().unwrap().is_none();
    let _ = Command::new("kill").arg(gateway.id().to_string()).status();
    let _ = gateway.wait();
    stop_redis(&mut redis);
    let mut latencies = counts.latencies_us.lock().unwrap().clone();
    let normal =
        counts.sync_sent.load(Ordering::Relaxed) + counts.async_sent.load(Ordering::Relaxed);
    let ok = counts.sync_ok.load(Ordering::Relaxed) + counts.async_ok.load(Ordering::Relaxed);
    println!("duration_s={seconds}");
    println!("gateway_survived={alive}");
    println!("async_accepted={}", accepted_ids.len());
    println!("async_executed={}", accepted_ids.len() - missing);
    println!(
        "async_ok={}/{} (503 while Redis was down: {})",
        counts.async_ok.load(Ordering::Relaxed),
        counts.async_sent.load(Ordering::Relaxed),
        counts.async_refused_503.load(Ordering::Relaxed)
    );
    println!(
        "sync_ok={}/{}",
        counts.sync_ok.load(Ordering::Relaxed),
        counts.sync_sent.load(Ordering::Relaxed)
    );
    println!(
        "normal_success_rate={:.4}",
        ok as f64 / normal.max(1) as f64
    );
    println!(
        "normal_other_failures={}",
        counts.other_failures.load(Ordering::Relaxed)
    );
    println!("normal_p99_ms={:.1}", p99(&mut latencies));
    println!(
        "hostile_requests_and_connections={}",
        counts.hostile_sent.load(Ordering::Relaxed)
    );
    println!("peak_rss_mib={:.1}", peak as f64 / 1024.0);
    let _ = std::fs::remove_dir_all(&work);
    if missing > 0 || !alive {
        eprintln!("soak FAILED: {missing} accepted runs never executed; gateway alive: {alive}");
        std::process::exit(1);
    }
}

fn stop_and_restart(redis: &mut Child, port: u16, work: &Path) {
    stop_redis(redis);
    std::thread::sleep(Duration::from_secs(2));
    *redis = start_redis(port, &work.join("redis"));
}
