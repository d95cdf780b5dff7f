//! Test harness: a real gateway on port 0 over a temporary flows folder, and
//! a local receiver that records what outbound steps send it.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use flowgate::app::{App, Settings, Start};
use flowgate::backend::Backends;
use flowgate::backend::redis::Settings as RedisSettings;
use flowgate::config::Secret;
use flowgate::flow::{LoadOptions, SharedCatalog, load_catalog};
use flowgate::lifecycle::Lifecycle;
use flowgate::token::TokenKeys;
use flowgate::worker::{Worker, WorkerSettings};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The signing key every test gateway uses.
pub const SIGNING_KEY: &str = "test-signing-key-0123456789abcdef0123456789";

/// A running gateway with its own Redis.
pub struct TestApp {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    pub keys: TokenKeys,
    pub redis: RedisServer,
    /// The Redis Cluster it stores on, with [`Backend::Cluster`].
    pub cluster: Option<RedisCluster>,
    /// The backend it stores on.
    pub backend: Backend,
    /// The embedded backend's file (unused on Redis).
    pub database: PathBuf,
    /// The PostgreSQL it stores on, with [`Backend::Postgres`].
    pub postgres: Option<crate::pg_server::PgServer>,
    /// The assembled app the gateway serves; workers come from it too.
    pub app: App,
    /// Holds the flows folder as long as the gateway lives.
    pub dir: tempfile::TempDir,
    shutdown: watch::Sender<bool>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

impl TestApp {
    pub fn url(&self, flow: &str) -> String {
        format!("http://{}/v1/flow-webhook/{flow}", self.addr)
    }

    /// Starts one more in-process worker on this app's Redis and flows.
    pub fn start_worker(&self, reclaim_after: Duration) {
        self.start_worker_with(8, reclaim_after);
    }

    /// [`TestApp::start_worker`] with `concurrency` slots.
    pub fn start_worker_with(&self, concurrency: usize, reclaim_after: Duration) {
        let worker = self.worker(concurrency, reclaim_after);
        let mut stop = self.shutdown.subscribe();
        tokio::spawn(async move {
            let shutdown = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            worker.run(shutdown, Duration::from_secs(1)).await;
        });
    }

    /// A worker on this app's Redis and flows, not started.
    pub fn worker(&self, concurrency: usize, reclaim_after: Duration) -> Arc<Worker> {
        self.app.worker_with(WorkerSettings {
            concurrency,
            reclaim_after,
            poll_wait: Duration::from_millis(200),
        })
    }

    /// Starts the `flowgate` binary with `args`, configured for this app's
    /// storage (its Redis, or its database file: then only CLI commands,
    /// since this process owns the file) with outbound calls to loopback (and plain-HTTP webhooks)
    /// allowed; `extra` adds TOML.
    pub fn spawn_process(&self, extra: &str, args: &[&str]) -> std::process::Child {
        self.process(extra, args).spawn().unwrap()
    }

    /// The command [`TestApp::spawn_process`] runs, logging `warn` and up to nowhere.
    pub fn process(&self, extra: &str, args: &[&str]) -> std::process::Command {
        let config = self
            .dir
            .path()
            .join(format!("process-{}.toml", free_port()));
        let storage = match self.backend {
            Backend::Redis => format!(
                "[storage]\nbackend = \"redis\"\n[redis]\nurl = \"{}\"\n",
                self.redis.url()
            ),
            Backend::Cluster => {
                let urls = self.cluster.as_ref().expect("a cluster").urls();
                format!(
                    "[storage]\nbackend = \"redis\"\n[redis]\ncluster = true\nurl = \"{}\"\nnodes = {:?}\npartitions = {CLUSTER_PARTITIONS}\n",
                    urls[0],
                    &urls[1..]
                )
            }
            Backend::Embedded => format!(
                "[storage]\nbackend = \"embedded\"\npath = \"{}\"\n",
                self.database.display()
            ),
            Backend::Postgres => format!(
                "[storage]\nbackend = \"postgres\"\n[postgres]\nurl = \"{}\"\npool_size = 4\n",
                self.postgres.as_ref().expect("a PostgreSQL").url()
            ),
        };
        let toml = format!(
            "{storage}[http]\nallow_private_networks = true\n[webhooks]\nallow_http = true\n{extra}"
        );
        std::fs::write(&config, toml).unwrap();
        let mut command = std::process::Command::new(binary());
        command
            .arg("--config")
            .arg(&config)
            .args(args)
            .env("FLOWGATE_SIGNING_KEY", SIGNING_KEY)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        command
    }

    /// GETs `url` until its body contains `needle`; fails the test when
    /// 10 s pass without it. The body that contained it.
    pub async fn text_when(&self, url: &str, needle: &str) -> String {
        let mut text = String::new();
        for _ in 0..200 {
            if let Ok(response) = self.client.get(url).send().await {
                text = response.text().await.unwrap_or_default();
                if text.contains(needle) {
                    return text;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{url} never answered with `{needle}`; last answer: {text}")
    }

    /// Waits until the queue holds nothing: every accepted run ended and was
    /// acknowledged, so none can be delivered again.
    pub async fn drained(&self) {
        let readyz = format!("http://{}/readyz", self.addr);
        self.text_when(&readyz, "\"queue_depth\":0}").await;
    }

    /// The run store of this app's backends.
    pub fn store(&self) -> Arc<dyn flowgate::backend::RunStore> {
        self.app.backends().runs.clone()
    }

    /// Polls the run record until `done` holds for it.
    pub async fn record_when(
        &self,
        run_id: &str,
        done: impl Fn(&flowgate::record::RunRecord) -> bool,
    ) -> flowgate::record::RunRecord {
        let store = self.store();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let record = store.get(run_id).await.unwrap();
            match record {
                Some(record) if done(&record) => return record,
                last if tokio::time::Instant::now() >= deadline => {
                    panic!("run {run_id} did not reach the expected state: {last:?}")
                }
                _ => tokio::time::sleep(Duration::from_millis(25)).await,
            }
        }
    }

    pub fn token(&self, flow: &str) -> String {
        self.keys.issue(flow, None, 0).unwrap()
    }

    /// GETs `path` (`/readyz`) from the gateway.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("http://{}{path}", self.addr))
            .send()
            .await
            .unwrap()
    }

    /// GETs admin API `path` (`/v1/admin/...`) as a `role` token of
    /// `name`; the answer's JSON.
    pub async fn admin_json(
        &self,
        name: &str,
        role: flowgate::token::Role,
        path: &str,
    ) -> serde_json::Value {
        let token = self.keys.issue_admin(name, role, None).unwrap();
        self.client
            .get(format!("http://{}{path}", self.addr))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// POSTs a JSON body with a valid token for `flow`.
    pub async fn post_json(&self, flow: &str, body: &str) -> reqwest::Response {
        self.client
            .post(self.url(flow))
            .bearer_auth(self.token(flow))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap()
    }
}

/// Which storage backend a test's app uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A `redis-server` of the test's own.
    Redis,
    /// A SQLite file in the test's folder.
    Embedded,
    /// A Redis Cluster of three masters of the test's own.
    Cluster,
    /// A PostgreSQL server of the test's own.
    Postgres,
}

/// Partitions of the queue on a test cluster.
pub const CLUSTER_PARTITIONS: u16 = 16;

tokio::task_local! {
    /// The backend [`spawn_app_with`] builds on, set by [`on_all_backends!`].
    pub static BACKEND: Backend;
}

/// Runs each named `async fn` (no arguments) as a test in module
/// `$module`, the app's backend set to [`Backend`]`::$backend`.
#[macro_export]
macro_rules! backend_tests {
    ($module:ident, $backend:ident: $($test:ident),* $(,)?) => {
        mod $module {
            $(
                #[tokio::test]
                async fn $test() {
                    $crate::helpers::BACKEND
                        .scope($crate::helpers::Backend::$backend, super::$test())
                        .await
                }
            )*
        }
    };
}

/// Runs each named `async fn` (no arguments) as three tests:
/// `on_redis::name`, `on_embedded::name` and `on_postgres::name`, with the
/// app's backend set accordingly.
#[macro_export]
macro_rules! on_all_backends {
    ($($test:ident),* $(,)?) => {
        $crate::backend_tests!(on_redis, Redis: $($test),*);
        $crate::backend_tests!(on_embedded, Embedded: $($test),*);
        $crate::backend_tests!(on_postgres, Postgres: $($test),*);
    };
}

/// Runs each named `async fn` (no arguments) once more as
/// `on_cluster::name`, the app on a Redis Cluster of its own.
#[macro_export]
macro_rules! on_cluster {
    ($($test:ident),* $(,)?) => {
        $crate::backend_tests!(on_cluster, Cluster: $($test),*);
    };
}

/// Options for [`spawn_app_with`].
pub struct AppOptions {
    /// What each render may cost.
    pub render: flowgate::template::RenderBudget,
    /// Run an in-process worker.
    pub worker: bool,
    /// Start Redis with append-only persistence.
    pub redis_aof: bool,
    pub allow_private_networks: bool,
    pub templates: Vec<(&'static str, String)>,
    pub secrets: Vec<(&'static str, String)>,
    /// The `[server]` limits and timeouts.
    pub limits: flowgate::config::ServerConfig,
    /// Deliver outbound event webhooks from this process.
    pub webhooks: bool,
    /// How webhooks are delivered: plain HTTP allowed, quick retries.
    pub webhook_settings: flowgate::webhooks::WebhookSettings,
    /// The embedded backend's file, when not in the test's folder.
    pub database: Option<PathBuf>,
    /// Replicas of each of the three masters, with [`Backend::Cluster`].
    pub cluster_replicas: usize,
    /// Replicas that must confirm every batch of run writes.
    pub replica_acks: u8,
}

/// Webhook settings for tests: plain HTTP and loopback allowed, a 2 s
/// timeout, retries after 300 ms three times.
pub fn test_webhook_settings() -> flowgate::webhooks::WebhookSettings {
    flowgate::webhooks::WebhookSettings {
        allow_http: true,
        allow_private: true,
        timeout: Duration::from_secs(2),
        retry_schedule: vec![Duration::from_millis(300); 3],
        retention: Duration::from_secs(30 * 24 * 3600),
        ca_pem: None,
        per_subscription: 8,
    }
}

impl Default for AppOptions {
    fn default() -> Self {
        Self {
            render: Default::default(),
            worker: true,
            redis_aof: false,
            allow_private_networks: true,
            templates: Vec::new(),
            secrets: Vec::new(),
            limits: Default::default(),
            webhooks: true,
            webhook_settings: test_webhook_settings(),
            database: None,
            cluster_replicas: 0,
            replica_acks: 0,
        }
    }
}

/// Writes `files` (name, contents) under `dir`.
pub fn write_files(dir: &Path, files: &[(&str, String)]) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, contents) in files {
        std::fs::write(dir.join(name), contents).unwrap();
    }
}

/// A gateway serving `flows` (flow id, TOML) with outbound calls to loopback allowed.
pub async fn spawn_app(flows: &[(&str, String)]) -> TestApp {
    spawn_app_with(flows, AppOptions::default()).await
}

pub async fn spawn_app_with(flows: &[(&str, String)], options: AppOptions) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let flow_files: Vec<(String, String)> = flows
        .iter()
        .map(|(id, toml)| (format!("{id}.toml"), toml.clone()))
        .collect();
    let flow_refs: Vec<(&str, String)> = flow_files
        .iter()
        .map(|(n, t)| (n.as_str(), t.clone()))
        .collect();
    write_files(&dir.path().join("flows"), &flow_refs);
    write_files(&dir.path().join("templates"), &options.templates);
    let report = load_catalog(&LoadOptions {
        flows_dir: dir.path().join("flows"),
        templates_dir: dir.path().join("templates"),
        default_max_body_bytes: 1024 * 1024,
        default_records: Default::default(),
        secrets: options
            .secrets
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        render: options.render,
    });
    assert!(
        report.is_clean(),
        "test flows must be valid: {:?}",
        report.problems
    );
    let keys = TokenKeys::new(&Secret::new(SIGNING_KEY.as_bytes().to_vec()));
    let redis = RedisServer::start(options.redis_aof);
    let lifecycle = Arc::new(Lifecycle::new(Arc::default()));
    let retention = flowgate::backend::Retention {
        runs: Duration::from_secs(3600),
        deliveries: options.webhook_settings.retention,
    };
    let backend = BACKEND.try_with(|b| *b).unwrap_or(Backend::Redis);
    let database =
        (options.database.clone()).unwrap_or_else(|| dir.path().join("data/flowgate.db"));
    let cluster =
        (backend == Backend::Cluster).then(|| RedisCluster::start(3, options.cluster_replicas));
    let postgres = (backend == Backend::Postgres).then(crate::pg_server::PgServer::start);
    let backends = match backend {
        Backend::Redis => Backends::redis(&RedisSettings::single(&redis.url()), retention).unwrap(),
        Backend::Cluster => {
            let urls = cluster.as_ref().unwrap().urls();
            let settings = RedisSettings::cluster(urls, CLUSTER_PARTITIONS)
                .with_replica_acks(options.replica_acks);
            Backends::redis(&settings, retention).unwrap()
        }
        Backend::Embedded => {
            let db = flowgate::backend::sqlite::Database::open(&database, true).unwrap();
            Backends::embedded(&db, retention)
        }
        Backend::Postgres => {
            let settings = flowgate::backend::postgres::Settings {
                url: postgres.as_ref().unwrap().url(),
                pool_size: 16,
            };
            Backends::postgres(&settings, retention).await.unwrap()
        }
    };
    backends.queue.prepare().await.unwrap();
    let settings = Settings {
        server: options.limits,
        allow_private_networks: options.allow_private_networks,
        webhooks: options.webhook_settings.clone(),
        ..Settings::default()
    };
    let app = App::new(
        settings,
        keys.clone(),
        SharedCatalog::new(report.catalog),
        backends,
        lifecycle,
    )
    .with_reloader(LoadOptions {
        flows_dir: dir.path().join("flows"),
        templates_dir: dir.path().join("templates"),
        default_max_body_bytes: 1024 * 1024,
        default_records: Default::default(),
        secrets: options
            .secrets
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        render: options.render,
    });
    // The start-up `flowgate serve` and `flowgate worker` go through.
    app.start(Start {
        webhooks: options.webhooks,
    })
    .await
    .unwrap();
    let state = app.state();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, mut rx) = watch::channel(false);
    tokio::spawn(flowgate::server::serve(
        listener,
        state,
        async move {
            let _ = rx.wait_for(|s| *s).await;
        },
        Duration::from_secs(5),
    ));
    let app = TestApp {
        addr,
        client: reqwest::Client::new(),
        keys,
        redis,
        cluster,
        backend,
        database,
        postgres,
        app,
        dir,
        shutdown: tx,
    };
    if options.worker {
        app.start_worker(Duration::from_secs(15));
    }
    app
}

/// A `redis-server` of the test's own, on a free port in a temporary folder.
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    aof: bool,
    child: Option<std::process::Child>,
}

impl RedisServer {
    pub fn start(aof: bool) -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = RedisServer {
            port,
            dir: tempfile::tempdir().unwrap(),
            aof,
            child: None,
        };
        server.restart();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Starts the server again on the same port and folder (after [`RedisServer::stop`]).
    pub fn restart(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args([
                "--appendonly",
                if self.aof { "yes" } else { "no" },
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server must be installed");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if ping(self.port) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    /// Stops the server the way an operator would (SIGTERM) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = std::process::Command::new("kill")
                .arg(child.id().to_string())
                .status();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A Redis Cluster of the test's own: `redis-server --cluster-enabled yes`
/// processes on free loopback ports, joined by `redis-cli --cluster create`.
pub struct RedisCluster {
    nodes: Vec<ClusterNode>,
    dir: tempfile::TempDir,
}

struct ClusterNode {
    port: u16,
    child: Option<std::process::Child>,
}

impl RedisCluster {
    /// `masters` masters with `replicas` replicas each, every slot served.
    pub fn start(masters: usize, replicas: usize) -> RedisCluster {
        let dir = tempfile::tempdir().unwrap();
        let count = masters * (1 + replicas);
        let nodes: Vec<ClusterNode> = (0..count)
            .map(|_| {
                let port = free_port();
                let mut node = ClusterNode { port, child: None };
                node.spawn(dir.path());
                node
            })
            .collect();
        let mut create = std::process::Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        let output = create
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("redis-cli must be installed");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        let cluster = RedisCluster { nodes, dir };
        cluster.wait_until_ok(Duration::from_secs(20));
        cluster
    }

    /// Every node's URL.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }

    /// The ports of the nodes that are masters now.
    pub fn masters(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .filter(|n| redis_cli(n.port, &["ROLE"]).starts_with("master"))
            .map(|n| n.port)
            .collect()
    }

    /// Kills the node on `port` at once (SIGKILL), as a crash would.
    pub fn kill(&mut self, port: u16) {
        let node = self.nodes.iter_mut().find(|n| n.port == port).unwrap();
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether every live node reports the cluster `ok` (all slots served)
    /// and every replica is in sync with its master.
    pub fn is_ok(&self) -> bool {
        self.nodes.iter().filter(|n| n.child.is_some()).all(|n| {
            let replica = redis_cli(n.port, &["ROLE"]).starts_with("slave");
            redis_cli(n.port, &["CLUSTER", "INFO"]).contains("cluster_state:ok")
                && (!replica
                    || redis_cli(n.port, &["INFO", "replication"])
                        .contains("master_link_status:up"))
        })
    }

    /// Waits until [`RedisCluster::is_ok`].
    fn wait_until_ok(&self, within: Duration) {
        let deadline = std::time::Instant::now() + within;
        loop {
            if self.is_ok() {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the cluster did not become ok"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// How many keys each live master holds.
    pub fn key_count(&self) -> Vec<u64> {
        self.masters()
            .iter()
            .map(|port| redis_cli(*port, &["DBSIZE"]).trim().parse().unwrap_or(0))
            .collect()
    }
}

impl ClusterNode {
    fn spawn(&mut self, dir: &Path) {
        let bus = free_port();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                &bus.to_string(),
            ])
            .args([
                "--cluster-config-file",
                &format!("nodes-{}.conf", self.port),
            ])
            .args(["--cluster-node-timeout", "1000", "--save", ""])
            // Replicas sync at once rather than after the default 5 s.
            .args(["--repl-diskless-sync-delay", "0"])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server must be installed");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !ping(self.port) {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = &self.dir;
    }
}

/// `redis-cli -p port args...`, its output.
fn redis_cli(port: u16, args: &[&str]) -> String {
    let output = std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli must be installed");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn ping(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 16];
    stream.write_all(b"PING\r\n").is_ok()
        && stream
            .read(&mut buf)
            .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
}

/// Polls `check` until it holds or `within` passes.
pub async fn assert_eventually<F: FnMut() -> bool>(within: Duration, what: &str, mut check: F) {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("not within {within:?}: {what}");
}

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path_and_query: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// A local HTTP server that records requests and answers with scripted statuses.
#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<Received>>>,
}

/// One scripted answer: a status, extra headers and, when given, a body
/// instead of the small JSON one.
#[derive(Debug, Clone, Default)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Option<String>,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            ..Reply::default()
        }
    }

    pub fn header(mut self, name: &'static str, value: &str) -> Reply {
        self.headers.push((name, value.to_owned()));
        self
    }

    pub fn body(mut self, body: String) -> Reply {
        self.body = Some(body);
        self
    }
}

impl Receiver {
    /// Answers each request with the next status of `script`, then `200`;
    /// every answer waits `delay` first and carries a small JSON body.
    pub async fn start(script: &[u16], delay: Duration) -> Receiver {
        let replies: Vec<Reply> = script.iter().map(|s| Reply::status(*s)).collect();
        Receiver::start_with(replies, delay).await
    }

    /// Answers each request with the next of `replies`, then `200`.
    pub async fn start_with(replies: Vec<Reply>, delay: Duration) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(replies.into_iter().collect::<VecDeque<Reply>>()));
        let recorded = requests.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (recorded, script) = (recorded.clone(), script.clone());
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req: http::Request<Incoming>| {
                            let (recorded, script) = (recorded.clone(), script.clone());
                            async move {
                                let (parts, body) = req.into_parts();
                                let body = body
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                recorded.lock().unwrap().push(Received {
                                    method: parts.method.to_string(),
                                    path_and_query: parts
                                        .uri
                                        .path_and_query()
                                        .map(|p| p.to_string())
                                        .unwrap_or_default(),
                                    headers: parts.headers,
                                    body,
                                });
                                let reply = script
                                    .lock()
                                    .unwrap()
                                    .pop_front()
                                    .unwrap_or(Reply::status(200));
                                let status = reply.status;
                                tokio::time::sleep(delay).await;
                                let body = reply.body.clone().unwrap_or_else(|| {
                                    format!(r#"{{"received":true,"status":{status}}}"#)
                                });
                                let mut response =
                                    http::Response::new(Full::new(Bytes::from(body)));
                                *response.status_mut() =
                                    http::StatusCode::from_u16(status).unwrap();
                                response
                                    .headers_mut()
                                    .insert("content-type", "application/json".parse().unwrap());
                                for (name, value) in &reply.headers {
                                    response.headers_mut().insert(*name, value.parse().unwrap());
                                }
                                Ok::<_, Infallible>(response)
                            }
                        });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Receiver { addr, requests }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn requests(&self) -> Vec<Received> {
        self.requests.lock().unwrap().clone()
    }
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `tmpfs` mounted on a folder of its own, unmounted when dropped: a
/// real file system the test can fill up or make read-only.
pub struct Mount {
    dir: tempfile::TempDir,
}

impl Mount {
    /// Mounts a `tmpfs` with `options` (`size=2m`, `ro`). Mounting needs
    /// root: without it the test fails, unless `FLOWGATE_TESTS_WITHOUT_ROOT`
    /// is set outside CI, when this says so and gives `None`.
    pub fn tmpfs(options: &str) -> Option<Mount> {
        let dir = tempfile::tempdir().unwrap();
        // Private, like a data volume (a tmpfs root is 1777 by default).
        let options = format!("mode=0700,{options}");
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &options, "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status();
        if status.is_ok_and(|s| s.success()) {
            return Some(Mount { dir });
        }
        // Passing without the check would hide it: only an explicit opt-out
        // on a machine without root skips it.
        assert!(
            std::env::var_os("FLOWGATE_TESTS_WITHOUT_ROOT").is_some()
                && std::env::var_os("CI").is_none(),
            "mounting a tmpfs failed; this test needs root (set FLOWGATE_TESTS_WITHOUT_ROOT=1 to skip it on a machine without)"
        );
        eprintln!("skipped: mounting a tmpfs needs root (FLOWGATE_TESTS_WITHOUT_ROOT)");
        None
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Changes the mount's options in place (`remount,size=64m`).
    pub fn remount(&self, options: &str) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(self.dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "remount {options}");
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Waits until the gateway at `base` answers `/readyz` with 200.
pub async fn ready(client: &reqwest::Client, base: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while client
        .get(format!("{base}/readyz"))
        .send()
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the gateway did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Path of the built `flowgate` binary.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_flowgate"))
}

/// Reads a response as the error envelope and checks its shape.
pub async fn envelope(response: reqwest::Response, status: u16, kind: &str) -> serde_json::Value {
    assert_eq!(response.status().as_u16(), status);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["status"], status, "{body}");
    assert_eq!(body["error"], kind, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(body.get("data").is_some(), "{body}");
    body
}

/// Sends SIGTERM to a `flowgate` process and waits for it to exit.
pub async fn terminate(mut child: std::process::Child) -> std::process::ExitStatus {
    /// Longer than any shutdown grace a test configures.
    const STOP_WITHIN: Duration = Duration::from_secs(60);
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = std::time::Instant::now() + STOP_WITHIN;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "process {} did not stop within {STOP_WITHIN:?} of SIGTERM",
                child.id()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A second gateway process (no worker) on `app`'s Redis and flows, once
/// it answers `/readyz`; its base URL.
pub async fn replica(app: &TestApp) -> (std::process::Child, String) {
    let port = free_port();
    let child = app.spawn_process(
        &format!("[server]\nlisten = \"127.0.0.1:{port}\"\n"),
        &["serve", "--no-worker"],
    );
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while client
        .get(format!("{base}/readyz"))
        .send()
        .await
        .map(|r| r.status() != reqwest::StatusCode::OK)
        .unwrap_or(true)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the replica did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (child, base)
}

/// The flowgate CLI against `app`'s storage and flows; its stdout, stderr and exit status.
pub fn cli(app: &TestApp, args: &[&str]) -> (String, String, i32) {
    let out = app
        .process("", args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .env("USER", "alice")
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.code().unwrap_or(-1),
    )
}

/// Runs `openssl` with `args` in `dir`.
pub fn openssl(dir: &std::path::Path, args: &[&str]) {
    let status = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl must be installed");
    assert!(status.success(), "openssl {args:?}");
}

/// A test CA and a certificate it signed for `localhost` and 127.0.0.1,
/// made with the `openssl` command in `dir` (`ca.pem`, `server.pem`,
/// `server.key`): (CA PEM, certificate PEM, key PEM).
pub fn test_certificates(dir: &std::path::Path) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=flowgate test CA",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    );
    let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
    (read("ca.pem"), read("server.pem"), read("server.key"))
}

/// The run id a trigger answer names (`X-Flowgate-Run-Id`).
pub fn run_id(response: &reqwest::Response) -> String {
    response.headers()["x-flowgate-run-id"]
        .to_str()
        .unwrap()
        .to_owned()
}
