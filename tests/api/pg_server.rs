//! A PostgreSQL server of the test's own: Debian's `postgres` binary on a
//! free loopback port, over a data folder copied from one `initdb` made
//! once per build (under the target folder, behind a file lock, since
//! every test may run in a process of its own). Run as the `postgres`
//! user when the tests run as root (PostgreSQL refuses root).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running PostgreSQL that can be stopped and started again.
pub struct PgServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// More `-c name=value` settings.
    settings: Vec<String>,
}

/// The folder of Debian's PostgreSQL binaries (the newest installed).
fn bin_dir() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("Debian's postgresql package must be installed (/usr/lib/postgresql)")
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin"))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    found.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    found.pop().expect("no initdb under /usr/lib/postgresql")
}

/// The user and group to run PostgreSQL as: `postgres` when running as
/// root, else whoever runs the tests.
fn run_as() -> Option<(u32, u32)> {
    let me = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&me.stdout).trim() != "0" {
        return None;
    }
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("a postgres user must exist to run PostgreSQL as root")
    };
    Some((id("-u"), id("-g")))
}

fn as_postgres(command: &mut Command) -> &mut Command {
    if let Some((uid, gid)) = run_as() {
        command.uid(uid).gid(gid);
    }
    command
}

fn chown(path: &Path) {
    if let Some((uid, gid)) = run_as() {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    }
}

/// The data folder every server starts from, made once.
fn template() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("pg-template");
    std::fs::create_dir_all(&root).unwrap();
    chown(&root);
    let lock = std::fs::File::create(root.join("lock")).unwrap();
    lock.lock().unwrap();
    let data = root.join("data");
    if !root.join("ready").exists() {
        let _ = std::fs::remove_dir_all(&data);
        let out = as_postgres(
            Command::new(bin_dir().join("initdb"))
                .arg("-D")
                .arg(&data)
                .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"])
                .current_dir("/"),
        )
        .output()
        .unwrap();
        assert!(out.status.success(), "initdb failed: {out:?}");
        std::fs::write(root.join("ready"), "").unwrap();
    }
    data
}

impl PgServer {
    /// A fresh server on a free port.
    pub fn start() -> PgServer {
        let dir = tempfile::tempdir().unwrap();
        chown(dir.path());
        let data = dir.path().join("data");
        let copied = as_postgres(Command::new("cp").arg("-a").arg(template()).arg(&data))
            .status()
            .unwrap();
        assert!(copied.success());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = PgServer {
            port,
            dir,
            child: None,
            settings: Vec::new(),
        };
        server.restart();
        server
    }

    /// `postgres://` URL of its `postgres` database.
    pub fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable",
            self.port
        )
    }

    /// Starts the server again on the same port and folder (after [`PgServer::stop`]).
    pub fn restart(&mut self) {
        let data = self.dir.path().join("data");
        let child = as_postgres(
            Command::new(bin_dir().join("postgres"))
                .arg("-D")
                .arg(&data)
                .args(["-p", &self.port.to_string()])
                .args(["-c", "listen_addresses=127.0.0.1"])
                .arg("-c")
                .arg(format!(
                    "unix_socket_directories={}",
                    self.dir.path().display()
                ))
                .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
                .args(["-c", "max_connections=200", "-c", "shared_buffers=32MB"])
                .args(self.settings.iter().flat_map(|s| ["-c", s.as_str()]))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .current_dir("/"),
        )
        .spawn()
        .expect("postgres must be installed");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let ready = Command::new(bin_dir().join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("postgres did not start on port {}", self.port);
    }

    /// Restarts the server with more `-c name=value` settings (later ones
    /// win over the defaults above).
    pub fn restart_with(&mut self, settings: &[&str]) {
        self.settings.extend(settings.iter().map(|s| s.to_string()));
        self.stop();
        self.restart();
    }

    /// Restarts the server serving TLS with `cert` and `key` (PEM).
    pub fn enable_tls(&mut self, cert: &[u8], key: &[u8]) {
        for (name, pem) in [("server.pem", cert), ("server.key", key)] {
            let path = self.dir.path().join(name);
            std::fs::write(&path, pem).unwrap();
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .unwrap();
            chown(&path);
        }
        let dir = self.dir.path().display();
        self.settings = vec![
            "ssl=on".into(),
            format!("ssl_cert_file={dir}/server.pem"),
            format!("ssl_key_file={dir}/server.key"),
        ];
        self.stop();
        self.restart();
    }

    /// Stops the server the way an operator would (SIGTERM: a smart
    /// shutdown that waits for sessions; SIGINT: fast, which ends them)
    /// and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    /// `psql` as the superuser, running `sql`.
    fn psql_command(&self, sql: &str) -> Command {
        let mut command = Command::new(bin_dir().join("psql"));
        command
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", "postgres", "-At"])
            .args(["-v", "ON_ERROR_STOP=1", "-c", sql]);
        command
    }

    /// Starts `psql` running `sql`, without waiting for it.
    pub fn psql_in_background(&self, sql: &str) -> Child {
        self.psql_command(sql)
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    }

    /// Runs `sql` through `psql` as the superuser; its output.
    pub fn psql(&self, sql: &str) -> String {
        let out = self.psql_command(sql).output().unwrap();
        assert!(out.status.success(), "psql {sql}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Fast shutdown, so no server outlives its test.
            let _ = Command::new("kill")
                .args(["-QUIT", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}
