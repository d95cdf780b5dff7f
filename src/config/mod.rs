//! Configuration: defaults in code, then `config.toml`, then environment.
//!
//! Every key can be overridden as `FLOWGATE_<SECTION>__<KEY>` (for example
//! `FLOWGATE_SERVER__LISTEN=0.0.0.0:8080`); the value is read as a TOML value
//! when it parses as one (`true`, `42`, `["a"]`) and as a string otherwise.
//! Relative paths resolve against the folder of the config file. Secrets
//! never live in the file: the signing key comes from `FLOWGATE_SIGNING_KEY`
//! or from the file named by `auth.signing_key_file`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::flow::{Keep, RecordPolicy};

mod key_file;
mod parse;
mod postgres;
mod redis;
mod server;
mod templates;

pub use self::parse::readable_duration;
pub use self::postgres::PostgresConfig;
pub use self::redis::{MAX_PARTITIONS, RedisConfig};
pub use self::server::ServerConfig;
pub use self::templates::{MAX_TEMPLATE_FUEL, TemplatesConfig};

/// Environment variable holding the JWT signing key; wins over `auth.signing_key_file`.
pub const SIGNING_KEY_ENV: &str = "FLOWGATE_SIGNING_KEY";
/// Prefix of the environment variables that override config keys.
const ENV_PREFIX: &str = "FLOWGATE_";
/// Shortest signing key accepted, in bytes: HS256 wants at least its hash size.
const MIN_SIGNING_KEY_BYTES: usize = 32;

/// A configuration problem; start-up stops with its one-line reason and exit code 64.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl ConfigError {
    /// An error saying `message`.
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

pub use crate::secret::Secret;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The HTTP listener.
    pub server: ServerConfig,
    /// Where flows and templates live.
    pub paths: PathsConfig,
    /// Token signing.
    pub auth: AuthConfig,
    /// Where the queue and stores live.
    pub storage: StorageConfig,
    /// The Redis used by the queue and stores.
    pub redis: RedisConfig,
    /// The PostgreSQL used by the queue and stores.
    pub postgres: PostgresConfig,
    /// Outbound HTTP made by `http` steps.
    pub http: HttpConfig,
    /// What rendering one template may cost.
    pub templates: TemplatesConfig,
    /// Workers executing async runs.
    pub worker: WorkerConfig,
    /// The run history.
    pub runs: RunsConfig,
    /// Outbound event webhooks.
    pub webhooks: WebhooksConfig,
    /// Folder of the config file; relative paths resolve against it.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerConfig::default(),
            paths: PathsConfig::default(),
            auth: AuthConfig::default(),
            storage: StorageConfig::default(),
            redis: RedisConfig::default(),
            postgres: PostgresConfig::default(),
            http: HttpConfig::default(),
            templates: TemplatesConfig::default(),
            worker: WorkerConfig::default(),
            runs: RunsConfig::default(),
            webhooks: WebhooksConfig::default(),
            base_dir: PathBuf::new(),
        }
    }
}

/// `[paths]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PathsConfig {
    /// Folder of `<flow_id>.toml` files.
    pub flows: PathBuf,
    /// Folder of template files referenced by flows.
    pub templates: PathBuf,
}

impl Default for PathsConfig {
    fn default() -> Self {
        Self {
            flows: "flows".into(),
            templates: "templates".into(),
        }
    }
}

/// `[auth]`
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// File holding the JWT signing key (at least 32 bytes); `FLOWGATE_SIGNING_KEY` wins over it.
    pub signing_key_file: String,
    /// Create `signing_key_file` with a random key when it does not exist (local development).
    pub generate_missing_key: bool,
}

/// Which backend holds the queue and stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    /// One process, one SQLite file (`storage.path`).
    Embedded,
    /// Redis (`redis.url`), shared by several replicas.
    Redis,
    /// PostgreSQL (`postgres.url`), shared by several replicas.
    Postgres,
}

/// Refuses a config that names a Redis but no backend. Before the embedded
/// backend existed such a config meant Redis; reading it as the new default
/// (embedded) would quietly split runs, pauses and tokens between that Redis
/// and a local file, and each replica would get a file of its own.
fn check_backend_named(table: &toml::Table, shown: &str) -> Result<(), ConfigError> {
    let has = |section: &str, key: &str| {
        table
            .get(section)
            .and_then(toml::Value::as_table)
            .is_some_and(|t| t.contains_key(key))
    };
    if has("postgres", "url") && !has("storage", "backend") {
        return Err(ConfigError::new(format!(
            "{shown}: postgres.url is set but storage.backend is not; set storage.backend = \"postgres\" to keep runs and state in that database, or \"embedded\" for one SQLite file (the default when neither is set)"
        )));
    }
    if has("redis", "url") && !has("storage", "backend") {
        return Err(ConfigError::new(format!(
            "{shown}: redis.url is set but storage.backend is not; set storage.backend = \"redis\" to keep runs and state in that Redis, or \"embedded\" for one SQLite file (the default when neither is set)"
        )));
    }
    Ok(())
}

/// `[storage]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// `embedded`, `redis` or `postgres`.
    pub backend: StorageBackend,
    /// The embedded backend's database file.
    pub path: PathBuf,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            backend: StorageBackend::Embedded,
            path: PathBuf::from(".flowgate/flowgate.db"),
        }
    }
}

/// `[http]`
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Let `http` steps reach loopback, private, link-local and metadata addresses.
    pub allow_private_networks: bool,
}

/// `[worker]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Async runs one worker process executes at once.
    pub concurrency: usize,
    /// A run whose worker has not heartbeated for this long is taken over
    /// by another worker, e.g. `"15s"`; keep it well under 45 s.
    #[serde(deserialize_with = "parse::positive_duration")]
    pub reclaim_after: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            concurrency: 16,
            reclaim_after: Duration::from_secs(15),
        }
    }
}

/// `[runs]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunsConfig {
    /// How long run records are kept, e.g. `"7d"`.
    #[serde(deserialize_with = "parse::positive_duration")]
    pub retention: Duration,
    /// Which runs keep their record once ended, for flows that do not say
    /// (`[runs] keep` in a flow file): `all`, `failed` (failed, timed out
    /// or aborted runs only) or `none`.
    #[serde(deserialize_with = "parse::keep")]
    pub keep: Keep,
    /// Most records kept per flow, for flows that do not say (`[runs]
    /// max`); the oldest go first. 0: no cap.
    pub max_per_flow: u64,
    /// Largest stored run record, in bytes of JSON; past it, its largest
    /// values are cut (and listed in the record's `cut`).
    pub max_record_bytes: usize,
}

/// Default of [`RunsConfig::max_per_flow`].
pub const DEFAULT_MAX_RECORDS_PER_FLOW: u64 = 10_000;

impl Default for RunsConfig {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(7 * 24 * 3600),
            keep: Keep::All,
            max_per_flow: DEFAULT_MAX_RECORDS_PER_FLOW,
            max_record_bytes: crate::flow::DEFAULT_MAX_RECORD_BYTES,
        }
    }
}

impl RunsConfig {
    /// The record keeping of flows that set none.
    pub fn records(&self) -> RecordPolicy {
        RecordPolicy {
            keep: self.keep,
            max: (self.max_per_flow > 0).then_some(self.max_per_flow),
            max_bytes: self.max_record_bytes,
        }
    }
}

/// `[webhooks]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// Accept plain `http://` subscription URLs (local development and tests).
    pub allow_http: bool,
    /// Time allowed for one delivery attempt, e.g. `"15s"`.
    #[serde(deserialize_with = "parse::positive_duration")]
    pub timeout: Duration,
    /// Waits between a failed attempt and the next, e.g. `["5s", "5m"]`;
    /// after the last one a delivery is given up.
    #[serde(deserialize_with = "parse::durations")]
    pub retry_schedule: Vec<Duration>,
    /// How long deliveries and their log are kept, e.g. `"30d"`.
    #[serde(deserialize_with = "parse::positive_duration")]
    pub delivery_retention: Duration,
    /// A PEM file of extra CA certificates trusted for deliveries (a private CA).
    pub ca_file: String,
    /// Attempts one process makes at once to any one subscription, so a
    /// slow receiver delays only itself.
    pub max_in_flight_per_subscription: usize,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        let minutes = |m: u64| Duration::from_secs(m * 60);
        Self {
            allow_http: false,
            timeout: Duration::from_secs(15),
            retry_schedule: vec![
                Duration::from_secs(5),
                minutes(5),
                minutes(30),
                minutes(120),
                minutes(300),
                minutes(600),
                minutes(600),
            ],
            delivery_retention: Duration::from_secs(30 * 24 * 3600),
            ca_file: String::new(),
            max_in_flight_per_subscription: 8,
        }
    }
}

impl Config {
    /// Loads the config: defaults, then `path` (when given, it must exist), then the environment.
    ///
    /// With no path, `config.toml` in the current folder is read when present.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::load_with_env(path, &env)
    }

    /// [`Config::load`] with an explicit environment, for tests.
    pub fn load_with_env(
        path: Option<&Path>,
        env: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let (file, source) = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| {
                    ConfigError::new(format!("cannot read config {}: {e}", p.display()))
                })?;
                (Some(p.to_path_buf()), text)
            }
            None if Path::new("config.toml").exists() => {
                let text = std::fs::read_to_string("config.toml")
                    .map_err(|e| ConfigError::new(format!("cannot read config.toml: {e}")))?;
                (Some(PathBuf::from("config.toml")), text)
            }
            None => (None, String::new()),
        };
        Self::from_source(file, &source, env)
    }

    /// The config written as `source` (read from `file`, when it came from
    /// one), with `env`'s overrides; reads no file.
    pub fn from_source(
        file: Option<PathBuf>,
        source: &str,
        env: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let shown = file
            .as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "config".into());
        let mut table: toml::Table = toml::from_str(source)
            .map_err(|e| ConfigError::new(format!("{shown}: {}", e.message().trim_end())))?;
        let overridden = apply_env_overrides(&mut table, env)?;
        check_backend_named(&table, &shown)?;
        let mut config: Config = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| {
                let message = e.inner().message().trim_end().replace('\n', "; ");
                let path = e.path().to_string();
                // A bad value from the environment names its variable, not the file.
                let source = overridden
                    .iter()
                    .find(|(key, _)| path == *key || path.starts_with(&format!("{key}.")))
                    .map_or(shown.as_str(), |(_, variable)| variable.as_str());
                match path.as_str() {
                    "." => ConfigError::new(format!("{source}: {message}")),
                    path => ConfigError::new(format!("{source}: {path}: {message}")),
                }
            })?;
        config.base_dir = file
            .as_deref()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default();
        config.validate()?;
        Ok(config)
    }

    /// Checks what one key's type cannot: limits above zero, and keys that depend on each other.
    fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.server;
        for (key, value) in [
            ("server.max_body_bytes", s.max_body_bytes),
            ("server.max_connections", s.max_connections),
            ("server.max_requests", s.max_requests),
            (
                "server.max_unauthenticated_reads",
                s.max_unauthenticated_reads,
            ),
            (
                "server.unauthenticated_body_budget",
                s.unauthenticated_body_budget,
            ),
            (
                "server.http2_max_concurrent_streams",
                s.http2_max_concurrent_streams as usize,
            ),
            ("worker.concurrency", self.worker.concurrency),
            (
                "webhooks.max_in_flight_per_subscription",
                self.webhooks.max_in_flight_per_subscription,
            ),
            (
                "templates.max_output_bytes",
                self.templates.max_output_bytes,
            ),
            (
                "templates.fuel",
                usize::try_from(self.templates.fuel).unwrap_or(usize::MAX),
            ),
        ] {
            if value == 0 {
                return Err(ConfigError::new(format!("{key} must be above 0")));
            }
        }
        if self.templates.fuel > MAX_TEMPLATE_FUEL {
            return Err(ConfigError::new(format!(
                "templates.fuel must be at most {MAX_TEMPLATE_FUEL}: a render cannot be stopped before its fuel runs out, even when its run has timed out"
            )));
        }
        if self.runs.max_record_bytes < 16 * 1024 {
            return Err(ConfigError::new(
                "runs.max_record_bytes must be at least 16384",
            ));
        }
        if s.unauthenticated_body_budget < s.max_body_bytes {
            return Err(ConfigError::new(
                "server.unauthenticated_body_budget must be at least server.max_body_bytes",
            ));
        }
        self.redis.validate().map_err(ConfigError::new)?;
        if self.storage.backend == StorageBackend::Postgres {
            self.postgres.validate().map_err(ConfigError::new)?;
        }
        Ok(())
    }

    /// Resolves a configured path against the config file's folder.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base_dir.join(path)
        }
    }

    /// The flows folder, resolved.
    pub fn flows_dir(&self) -> PathBuf {
        self.resolve(&self.paths.flows)
    }

    /// The templates folder, resolved.
    pub fn templates_dir(&self) -> PathBuf {
        self.resolve(&self.paths.templates)
    }

    /// The JWT signing key: `FLOWGATE_SIGNING_KEY`, else `auth.signing_key_file`.
    pub fn signing_key(&self) -> Result<Secret<Vec<u8>>, ConfigError> {
        let key = match std::env::var(SIGNING_KEY_ENV) {
            Ok(value) if !value.is_empty() => value.trim().as_bytes().to_vec(),
            _ => self.signing_key_from_file()?,
        };
        if key.len() < MIN_SIGNING_KEY_BYTES {
            return Err(ConfigError::new(format!(
                "the signing key is {} bytes; at least {MIN_SIGNING_KEY_BYTES} are required",
                key.len()
            )));
        }
        Ok(Secret::new(key))
    }

    fn signing_key_from_file(&self) -> Result<Vec<u8>, ConfigError> {
        if self.auth.signing_key_file.is_empty() {
            return Err(ConfigError::new(format!(
                "no signing key: set {SIGNING_KEY_ENV} or auth.signing_key_file"
            )));
        }
        let path = self.resolve(Path::new(&self.auth.signing_key_file));
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(text.trim().as_bytes().to_vec()),
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound && self.auth.generate_missing_key =>
            {
                key_file::generate_key_file(&path)
            }
            Err(e) => Err(ConfigError::new(format!(
                "cannot read signing key file {}: {e}",
                path.display()
            ))),
        }
    }
}

/// Applies the `FLOWGATE_<SECTION>__<KEY>` variables of `env` to `table`;
/// returns which keys (`section.key`) each variable set, to name it in an
/// error about its value.
fn apply_env_overrides(
    table: &mut toml::Table,
    env: &[(String, String)],
) -> Result<Vec<(String, String)>, ConfigError> {
    let mut overridden = Vec::new();
    for (name, value) in env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let Some((section, key)) = rest.split_once("__") else {
            continue;
        };
        let (section, key) = (section.to_ascii_lowercase(), key.to_ascii_lowercase());
        let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.clone()));
        let entry = table
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let Some(section_table) = entry.as_table_mut() else {
            return Err(ConfigError::new(format!(
                "{name}: `{section}` is not a section"
            )));
        };
        overridden.push((format!("{section}.{key}"), name.clone()));
        section_table.insert(key, parsed);
    }
    Ok(overridden)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn durations_read_as_a_person_writes_them() {
        let day = Duration::from_secs(24 * 3600);
        assert_eq!(readable_duration(7 * day), "7 days");
        assert_eq!(
            readable_duration(day + Duration::from_secs(7200)),
            "1 day 2h"
        );
        assert_eq!(readable_duration(Duration::from_secs(90)), "1m 30s");
    }

    #[test]
    fn defaults_apply_without_a_file() {
        let config = Config::from_source(None, "", &[]).unwrap();
        assert_eq!(config.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.runs.retention, Duration::from_secs(7 * 24 * 3600));
        assert_eq!(
            config.runs.records(),
            RecordPolicy {
                keep: Keep::All,
                max: Some(DEFAULT_MAX_RECORDS_PER_FLOW),
                max_bytes: crate::flow::DEFAULT_MAX_RECORD_BYTES,
            }
        );
        assert_eq!(config.server.max_body_bytes, 1024 * 1024);
        assert!(!config.http.allow_private_networks);
        assert!(!config.webhooks.allow_http);
        assert_eq!(config.storage.backend, StorageBackend::Embedded);
        assert_eq!(config.storage.path, PathBuf::from(".flowgate/flowgate.db"));
        let env = [("FLOWGATE_STORAGE__BACKEND".to_owned(), "redis".to_owned())];
        let redis = Config::from_source(None, "", &env).unwrap();
        assert_eq!(redis.storage.backend, StorageBackend::Redis);
        assert_eq!(config.webhooks.timeout, Duration::from_secs(15));
        assert_eq!(config.webhooks.retry_schedule.len(), 7);
        let env = [(
            "FLOWGATE_WEBHOOKS__RETRY_SCHEDULE".to_owned(),
            "[\"1s\", \"2m\"]".to_owned(),
        )];
        let config = Config::from_source(None, "", &env).unwrap();
        assert_eq!(
            config.webhooks.retry_schedule,
            [Duration::from_secs(1), Duration::from_secs(120)]
        );
    }

    #[test]
    fn environment_overrides_keep_toml_types() {
        let vars = env(&[
            ("FLOWGATE_SERVER__LISTEN", "0.0.0.0:9000"),
            ("FLOWGATE_HTTP__ALLOW_PRIVATE_NETWORKS", "true"),
            ("FLOWGATE_SERVER__MAX_BODY_BYTES", "2048"),
            ("UNRELATED", "x"),
        ]);
        let config = Config::from_source(None, "", &vars).unwrap();
        assert_eq!(config.server.listen.to_string(), "0.0.0.0:9000");
        assert!(config.http.allow_private_networks);
        assert_eq!(config.server.max_body_bytes, 2048);
    }

    #[test]
    fn cluster_settings_come_from_url_nodes_and_partitions() {
        let vars = env(&[
            ("FLOWGATE_STORAGE__BACKEND", "redis"),
            ("FLOWGATE_REDIS__URL", "redis://10.0.0.1:6379"),
            ("FLOWGATE_REDIS__CLUSTER", "true"),
            (
                "FLOWGATE_REDIS__NODES",
                r#"["redis://:hunter2@10.0.0.2:6379"]"#,
            ),
            ("FLOWGATE_REDIS__PARTITIONS", "32"),
            ("FLOWGATE_REDIS__REPLICA_ACKS", "1"),
        ]);
        let config = Config::from_source(None, "", &vars).unwrap();
        let settings = crate::backend::redis::Settings::from_config(&config.redis);
        assert!(settings.cluster);
        assert_eq!(
            settings.urls,
            ["redis://10.0.0.1:6379", "redis://:hunter2@10.0.0.2:6379"]
        );
        assert_eq!((settings.partitions, settings.replica_acks), (32, 1));
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        // A single Redis is one partition whatever the setting says.
        let single = Config::from_source(None, "", &env(&[("FLOWGATE_STORAGE__BACKEND", "redis")]))
            .unwrap()
            .redis;
        let single = crate::backend::redis::Settings::from_config(&single);
        assert_eq!((single.cluster, single.partitions), (false, 1));
    }

    #[test]
    fn bad_cluster_settings_are_refused() {
        for (pairs, expected) in [
            (
                vec![("FLOWGATE_REDIS__PARTITIONS", "0")],
                "redis.partitions must be 1 to 1024",
            ),
            (
                vec![("FLOWGATE_REDIS__PARTITIONS", "5000")],
                "redis.partitions must be 1 to 1024",
            ),
            (
                vec![("FLOWGATE_REDIS__NODES", r#"["redis://10.0.0.2:6379"]"#)],
                "redis.nodes lists cluster nodes but redis.cluster is false",
            ),
            (
                vec![
                    ("FLOWGATE_REDIS__CLUSTER", "true"),
                    ("FLOWGATE_REDIS__NODES", r#"["http://:pw@10.0.0.2"]"#),
                ],
                "redis.nodes: `http://:[redacted]@10.0.0.2/` is not a redis:// or rediss:// URL",
            ),
        ] {
            let mut vars = env(&pairs);
            vars.push(("FLOWGATE_STORAGE__BACKEND".into(), "redis".into()));
            let err = Config::from_source(None, "", &vars)
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{err}");
        }
    }

    #[test]
    fn a_redis_password_never_prints() {
        let vars = env(&[
            ("FLOWGATE_STORAGE__BACKEND", "redis"),
            (
                "FLOWGATE_REDIS__URL",
                "rediss://user:s3cret@cache.example:6380/0",
            ),
        ]);
        let config = Config::from_source(None, "", &vars).unwrap();
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(
            shown.contains("rediss://user:[redacted]@cache.example:6380/0"),
            "{shown}"
        );
    }

    #[test]
    fn a_redis_url_without_a_backend_is_refused() {
        // A file of its own: without one, the folder's config.toml is read.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("flowgate.toml");
        std::fs::write(&file, "[server]\nlisten = \"127.0.0.1:8080\"\n").unwrap();
        let vars = env(&[("FLOWGATE_REDIS__URL", "redis://cache.example:6379/0")]);
        let err = Config::load_with_env(Some(&file), &vars)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("redis.url is set but storage.backend is not"),
            "{err}"
        );
        assert!(!err.contains('\n'), "{err}");
        for backend in ["redis", "embedded"] {
            let mut vars = vars.clone();
            vars.push(("FLOWGATE_STORAGE__BACKEND".into(), backend.into()));
            assert!(
                Config::load_with_env(Some(&file), &vars).is_ok(),
                "{backend}"
            );
        }
    }

    #[test]
    fn unknown_keys_and_bad_values_are_one_line_errors() {
        let vars = env(&[("FLOWGATE_SERVER__LISTNE", "x")]);
        let err = Config::from_source(None, "", &vars)
            .unwrap_err()
            .to_string();
        assert!(err.contains("listne"), "{err}");
        assert!(!err.contains('\n'), "{err}");
        let vars = env(&[("FLOWGATE_SERVER__LISTEN", "nowhere")]);
        let err = Config::from_source(None, "", &vars)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err, "FLOWGATE_SERVER__LISTEN: server.listen: `nowhere` is not a host:port address",
            "the variable is named, not the file"
        );
        for (key, value, expected) in [
            (
                "FLOWGATE_WORKER__RECLAIM_AFTER",
                "soon",
                "worker.reclaim_after: `soon` is not a duration like \"30s\"",
            ),
            (
                "FLOWGATE_RUNS__RETENTION",
                "0s",
                "runs.retention: must be above zero",
            ),
            (
                "FLOWGATE_SERVER__IDEMPOTENCY_HEADERS",
                "[\"ok\", \"not a header\"]",
                "server.idempotency_headers: `not a header` is not a header name",
            ),
            (
                "FLOWGATE_SERVER__MAX_REQUESTS",
                "0",
                "server.max_requests must be above 0",
            ),
            (
                "FLOWGATE_WEBHOOKS__RETRY_SCHEDULE",
                "[\"5s\", \"later\"]",
                "webhooks.retry_schedule: `later` is not a duration like \"30s\"",
            ),
            (
                "FLOWGATE_WEBHOOKS__TIMEOUT",
                "0s",
                "webhooks.timeout: must be above zero",
            ),
            (
                "FLOWGATE_RUNS__KEEP",
                "successes",
                "runs.keep: `successes` must be all, failed or none",
            ),
        ] {
            let err = Config::from_source(None, "", &env(&[(key, value)]))
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{key}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }
}
