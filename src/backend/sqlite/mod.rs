//! The embedded backend: every store in one SQLite file (through rusqlite's
//! bundled SQLite), for a single node that needs nothing but the binary.
//!
//! [`Database`] owns the file. Writes run on one writer thread, never on
//! the async runtime: concurrent writes are folded into one transaction
//! (group commit), each in a savepoint of its own so one failing write does
//! not undo the others, and the commit (`synchronous=FULL`, WAL) is the
//! moment every caller in the group is answered. Reads run on reader
//! threads with their own connections, beside the writer (WAL).
//!
//! The schema is created and changed by numbered migrations, applied at
//! open and recorded in SQLite's `user_version`.
//!
//! The owning process (serve or worker) holds an exclusive lock on the
//! database file itself, so a second owner is refused whatever path names
//! the file (a symlink, a hard link). It also checks, at most every
//! [`FILE_CHECK_EVERY`], that the file at its path is still the one it
//! opened and still a SQLite database: a file replaced, removed or
//! overwritten under it makes `/readyz` and new accepts fail with the
//! reason, instead of writing on into a file nobody will read again.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;

use super::StorageError;

mod control;
mod private;
mod queue;
mod store;
mod webhooks;

pub use self::control::SqliteControl;
pub use self::queue::SqliteQueue;
pub use self::store::SqliteStore;
pub use self::webhooks::SqliteWebhooks;

/// How often the owner looks at the file it opened (see the module doc).
pub const FILE_CHECK_EVERY: Duration = Duration::from_secs(1);

/// Writes folded into one transaction at most.
const MAX_GROUP: usize = 512;
/// Threads serving reads.
const READERS: usize = 2;
/// How long a statement waits for another process's lock (the CLI's).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The schema, one migration per entry; entry `n` brings `user_version` to `n + 1`.
const MIGRATIONS: &[&str] = &[
    r"
CREATE TABLE queue (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id      TEXT    NOT NULL,
    input       TEXT    NOT NULL,
    accepted_at INTEGER NOT NULL,
    answer      TEXT,
    waiting     INTEGER NOT NULL DEFAULT 0,
    due_at      INTEGER NOT NULL,
    consumer    TEXT,
    lease_at    INTEGER
);
CREATE INDEX queue_ready ON queue (consumer, waiting, seq);
CREATE INDEX queue_due ON queue (waiting, due_at);
CREATE TABLE dead_letters (
    seq    INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT    NOT NULL,
    reason TEXT    NOT NULL,
    input  TEXT    NOT NULL,
    at     INTEGER NOT NULL
);
CREATE TABLE runs (
    id          TEXT    PRIMARY KEY,
    flow        TEXT    NOT NULL,
    accepted_at INTEGER NOT NULL,
    status      TEXT    NOT NULL,
    record      TEXT    NOT NULL,
    expires_at  INTEGER NOT NULL
);
CREATE INDEX runs_by_time ON runs (accepted_at DESC, id DESC);
CREATE INDEX runs_by_flow ON runs (flow, accepted_at DESC, id DESC);
CREATE INDEX runs_expiry ON runs (expires_at);
CREATE TABLE idempotency (
    flow       TEXT    NOT NULL,
    key_hash   TEXT    NOT NULL,
    run_id     TEXT    NOT NULL,
    answer     TEXT,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (flow, key_hash)
);
",
    r"
CREATE TABLE versions (name TEXT PRIMARY KEY, version INTEGER NOT NULL);
INSERT INTO versions (name, version) VALUES ('control', 0), ('webhooks', 0);
CREATE TABLE flow_status (flow TEXT PRIMARY KEY, override TEXT NOT NULL);
CREATE TABLE generations (flow TEXT PRIMARY KEY, current INTEGER NOT NULL, grace_until INTEGER);
CREATE TABLE revoked (jti TEXT PRIMARY KEY, until_ms INTEGER NOT NULL);
CREATE TABLE aborted (run_id TEXT PRIMARY KEY, at INTEGER NOT NULL);
CREATE TABLE audit (
    seq   INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms INTEGER NOT NULL,
    entry TEXT    NOT NULL
);
CREATE INDEX audit_by_time ON audit (at_ms);
CREATE TABLE subscriptions (
    id       TEXT    PRIMARY KEY,
    body     TEXT    NOT NULL,
    failures INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE deliveries (
    id           TEXT    PRIMARY KEY,
    subscription TEXT    NOT NULL,
    body         TEXT    NOT NULL,
    state        TEXT    NOT NULL,
    due_at       INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL
);
CREATE INDEX deliveries_due ON deliveries (state, due_at);
CREATE INDEX deliveries_skipped ON deliveries (subscription, state, created_at);
CREATE TABLE delivery_log (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    subscription TEXT    NOT NULL,
    at_ms        INTEGER NOT NULL,
    entry        TEXT    NOT NULL
);
CREATE INDEX delivery_log_by_subscription ON delivery_log (subscription, seq);
CREATE INDEX delivery_log_by_time ON delivery_log (at_ms);
",
    // Listing runs by state (the console's "failed runs") walks an index
    // instead of every record.
    r"
CREATE INDEX runs_by_status ON runs (status, accepted_at DESC, id DESC);
",
    // ... but only the runs that did not succeed: those are what anyone
    // filters for, and most runs succeed, so most record writes skip the
    // index (a full index cost a fifth of sync throughput). Succeeded runs
    // are the bulk, so a page of them is found quickly by time.
    r"
DROP INDEX runs_by_status;
CREATE INDEX runs_not_succeeded ON runs (status, accepted_at DESC, id DESC)
    WHERE status <> 'succeeded';
",
    // A queued run's raw body text apart from its input, as it arrived:
    // not escaped into the input's JSON on the request path. Rows from
    // before keep it inside `input` (`raw` NULL), and read as they did.
    r"
ALTER TABLE queue ADD COLUMN raw TEXT;
",
    // Console sessions, so ops can list them and revoking the token a
    // session was made from ends it.
    r"
CREATE TABLE sessions (id TEXT PRIMARY KEY, expires_ms INTEGER NOT NULL, entry TEXT NOT NULL);
",
    // Events owed to webhook subscribers, written in the transaction of the
    // run transition that caused them; a fan-out leases them (due_at moves
    // past the lease) and deletes them once their deliveries are stored.
    r"
CREATE TABLE events (id TEXT PRIMARY KEY, message TEXT NOT NULL, due_at INTEGER NOT NULL);
CREATE INDEX events_due ON events (due_at);
",
];

impl From<rusqlite::Error> for StorageError {
    fn from(e: rusqlite::Error) -> Self {
        StorageError::Unavailable(format!("the database: {e}"))
    }
}

/// A write, run inside the group's transaction; it hands back what to tell
/// its caller once the transaction committed (or failed).
struct WriteJob {
    /// Whether its commit must reach the disk before the caller hears of
    /// it (`synchronous=FULL`): writes that promise something to a sender.
    durable: bool,
    run: WriteFn,
}

/// What a write does: whether it succeeded, and how to answer its caller.
type WriteFn = Box<dyn FnOnce(&Connection) -> (bool, Finisher) + Send>;
type Finisher = Box<dyn FnOnce(Result<(), StorageError>) + Send>;
type ReadJob = Box<dyn FnOnce(&Connection) + Send>;

/// The database file, its writer thread and its readers.
#[derive(Clone)]
pub struct Database {
    path: PathBuf,
    writes: mpsc::SyncSender<WriteJob>,
    reads: mpsc::SyncSender<ReadJob>,
    /// Held open for as long as the database is: the exclusive lock that
    /// makes this process the file's owner, when it took one.
    _owner: Option<Arc<std::fs::File>>,
    /// The file as opened, and what the last look at it found.
    file: Arc<FileWatch>,
}

/// The database file as opened (device and inode, and the random
/// `application_id` its header carries), and whether the file at its path
/// still is that one, looked at every [`FILE_CHECK_EVERY`].
///
/// The header is read through the owner's own descriptor, never by opening
/// the file again: closing any descriptor of a file drops every POSIX lock
/// the process holds on it, SQLite's included, and another process would
/// then take the database for unused and remove its WAL.
struct FileWatch {
    identity: Option<(u64, u64)>,
    /// The owner's open, locked descriptor of the file, and the
    /// `application_id` read from it at open.
    owned: Option<(Arc<std::fs::File>, u32)>,
    opened: std::time::Instant,
    checked_ms: std::sync::atomic::AtomicU64,
    /// Whether the last look found nothing wrong: an accept between looks
    /// reads only this.
    intact: std::sync::atomic::AtomicBool,
    problem: Mutex<Option<String>>,
}

/// The file at `path`: its device and inode.
fn identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

impl FileWatch {
    /// What is wrong with the file at `path`, if anything.
    fn look(&self, path: &Path) -> Option<String> {
        let shown = path.display();
        let Some(now) = identity(path) else {
            return Some(format!(
                "{shown} was removed while in use; restart flowgate (what it wrote since is in a file no longer there)"
            ));
        };
        if self.identity.is_some_and(|opened| opened != now) {
            return Some(format!(
                "{shown} was replaced by another file while in use; restart flowgate to use the new one"
            ));
        }
        let (file, application_id) = self.owned.as_ref()?;
        let overwritten = || {
            Some(format!(
                "{shown} was overwritten while in use (it is not the database flowgate opened); restore it from a backup (flowgate backup) and restart"
            ))
        };
        match read_header(file) {
            Ok(Some(header)) if header_application_id(&header) == *application_id => None,
            Ok(_) => overwritten(),
            Err(e) => Some(format!("{shown} cannot be read: {e}")),
        }
    }
}

/// The first 100 bytes of the database file, through `file` (no new
/// descriptor); `None` when the file is shorter or not SQLite's.
fn read_header(file: &std::fs::File) -> std::io::Result<Option<[u8; 100]>> {
    use std::os::unix::fs::FileExt;
    let mut header = [0u8; 100];
    let mut filled = 0;
    while filled < header.len() {
        match file.read_at(&mut header[filled..], filled as u64)? {
            0 => return Ok(None),
            n => filled += n,
        }
    }
    Ok((&header[..16] == b"SQLite format 3\0").then_some(header))
}

/// The header's `application_id` (offset 68, big-endian).
fn header_application_id(header: &[u8; 100]) -> u32 {
    u32::from_be_bytes([header[68], header[69], header[70], header[71]])
}

/// Gives the database a random `application_id` when it has none, and
/// writes it to the main file, so an overwrite of the file (by anything,
/// even another flowgate database) shows in its header; the id.
fn stamp(writer: &Connection) -> rusqlite::Result<u32> {
    let current: i64 = writer.pragma_query_value(None, "application_id", |row| row.get(0))?;
    let id = if current == 0 {
        let id = (uuid::Uuid::new_v4().as_u128() as u32 | 1) as i32;
        writer.pragma_update(None, "application_id", id)?;
        id as u32
    } else {
        current as u32
    };
    // Into the main file now, where the check reads it.
    writer.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    Ok(id)
}

/// Why the database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Another process owns the file.
    #[error(
        "{0} is in use by another flowgate process (serve or worker); one process owns an embedded database"
    )]
    InUse(PathBuf),
    /// The file or its folder cannot be used.
    #[error("{path}: {problem}")]
    Unusable {
        /// The database file.
        path: PathBuf,
        /// What went wrong.
        problem: String,
    },
}

impl Database {
    /// Opens (creating it and its folder when missing) the database at
    /// `path` and applies pending migrations. With `own`, the process takes
    /// the file's exclusive lock (serve and worker); the CLI opens it
    /// without, beside the owner.
    pub fn open(path: &Path, own: bool) -> Result<Self, OpenError> {
        let unusable = |problem: String| OpenError::Unusable {
            path: path.to_owned(),
            problem,
        };
        let file = private::prepare(path).map_err(unusable)?;
        let owner = if own {
            // The lock is on the database file itself (an `flock`, which
            // SQLite's own `fcntl` locks do not touch), so it holds
            // whatever path, link or symlink, names the file.
            match file.try_lock() {
                Ok(()) => Some(Arc::new(file)),
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(OpenError::InUse(path.to_owned()));
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(unusable(format!("cannot lock it: {e}")));
                }
            }
        } else {
            None
        };
        let writer = connect(path).map_err(|e| unusable(explain(path, e)))?;
        migrate(&writer).map_err(|e| unusable(explain(path, e)))?;
        let stamped = match &owner {
            Some(file) => {
                let id = stamp(&writer).map_err(|e| unusable(explain(path, e)))?;
                Some((file.clone(), id))
            }
            None => None,
        };
        if own {
            // Only the owner runs workers, and the one before it is gone:
            // the runs it held are taken over at once.
            writer
                .execute(
                    "UPDATE queue SET lease_at = 0 WHERE consumer IS NOT NULL",
                    [],
                )
                .map_err(|e| unusable(e.to_string()))?;
        }
        let (writes, write_queue) = mpsc::sync_channel::<WriteJob>(4096);
        std::thread::Builder::new()
            .name("flowgate-db-writer".into())
            .spawn(move || write_loop(writer, write_queue))
            .map_err(|e| unusable(e.to_string()))?;
        let (reads, read_queue) = mpsc::sync_channel::<ReadJob>(4096);
        let read_queue = Arc::new(Mutex::new(read_queue));
        for n in 0..READERS {
            let connection = connect(path).map_err(|e| unusable(e.to_string()))?;
            let queue = read_queue.clone();
            std::thread::Builder::new()
                .name(format!("flowgate-db-reader-{n}"))
                .spawn(move || read_loop(connection, queue))
                .map_err(|e| unusable(e.to_string()))?;
        }
        let file = Arc::new(FileWatch {
            identity: identity(path),
            owned: stamped,
            opened: std::time::Instant::now(),
            checked_ms: std::sync::atomic::AtomicU64::new(0),
            intact: std::sync::atomic::AtomicBool::new(true),
            problem: Mutex::new(None),
        });
        Ok(Self {
            path: path.to_owned(),
            writes,
            reads,
            _owner: owner,
            file,
        })
    }

    /// Whether the file at the database's path is still the one opened and
    /// still a database; looked at no more than every [`FILE_CHECK_EVERY`].
    pub fn check_file(&self) -> Result<(), StorageError> {
        use std::sync::atomic::Ordering;
        let watch = &self.file;
        let now = watch.opened.elapsed().as_millis() as u64 + 1;
        let last = watch.checked_ms.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= FILE_CHECK_EVERY.as_millis() as u64;
        if !due && watch.intact.load(Ordering::Relaxed) {
            return Ok(());
        }
        if due {
            watch.checked_ms.store(now, Ordering::Relaxed);
            let found = watch.look(&self.path);
            let mut problem = watch.problem.lock().expect("file watch lock");
            if found.is_some() && *problem != found {
                tracing::error!(
                    problem = found.as_deref(),
                    "the embedded database file changed under flowgate"
                );
            }
            watch.intact.store(found.is_none(), Ordering::Relaxed);
            *problem = found;
        }
        match &*watch.problem.lock().expect("file watch lock") {
            Some(problem) => Err(StorageError::Unavailable(problem.clone())),
            None => Ok(()),
        }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` in the next group transaction; answers once it committed
    /// and reached the disk (`synchronous=FULL`): for writes that promise
    /// something to a sender (an accepted run, a stored answer, a change an
    /// operator was told about). An `Err` from `f` undoes its own writes only.
    pub async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        self.write_as(true, f).await
    }

    /// [`Database::write`] for writes whose loss in a power cut (not a
    /// crash: the operating system still has them) only repeats work —
    /// leases, run records, finished runs, delivery attempts. Its group
    /// commits without waiting for the disk (`synchronous=NORMAL`) unless a
    /// durable write shares it.
    pub async fn write_relaxed<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        self.write_as(false, f).await
    }

    async fn write_as<T: Send + 'static>(
        &self,
        durable: bool,
        f: impl FnOnce(&Connection) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        let (done, result) = oneshot::channel();
        let run = Box::new(move |conn: &Connection| -> (bool, Finisher) {
            match f(conn) {
                Ok(value) => (
                    true,
                    Box::new(move |committed: Result<(), StorageError>| {
                        let _ = done.send(committed.map(|()| value));
                    }),
                ),
                Err(e) => (
                    false,
                    Box::new(move |_| {
                        let _ = done.send(Err(e));
                    }),
                ),
            }
        });
        self.send_write(WriteJob { durable, run }).await?;
        result.await.map_err(|_| stopped())?
    }

    /// Writes a consistent copy of the database to `target` (SQLite's
    /// `VACUUM INTO`), beside running readers and writers.
    ///
    /// The copy is made in the database's own folder (which nobody else can
    /// write), then copied into `target` through the descriptor that
    /// created it, so nobody who can write `target`'s folder can swap a file
    /// of theirs in between; it needs the database's size free there.
    pub async fn backup(&self, target: &Path) -> Result<(), StorageError> {
        let failed = |what: String| StorageError::Unavailable(what);
        let mut out = private::create_new_file(target)
            .map_err(|e| failed(format!("cannot create {}: {e}", target.display())))?;
        let staging = private::Staging::beside(&self.path)
            .map_err(|e| failed(format!("cannot make a staging copy: {e}")))?;
        let copy = staging.path().to_string_lossy().into_owned();
        let written = self
            .read(move |conn| {
                conn.execute("VACUUM INTO ?1", [copy])?;
                Ok(())
            })
            .await
            .and_then(|()| {
                staging
                    .copy_into(&mut out)
                    .map_err(|e| failed(format!("cannot write {}: {e}", target.display())))
            });
        if written.is_err() {
            let _ = std::fs::remove_file(target);
        }
        written
    }

    /// Runs `f` on a reader connection.
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        let (done, result) = oneshot::channel();
        let job: ReadJob = Box::new(move |conn| {
            let _ = done.send(f(conn));
        });
        match self.reads.try_send(job) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(job)) => {
                let reads = self.reads.clone();
                tokio::task::spawn_blocking(move || reads.send(job))
                    .await
                    .map_err(|_| stopped())?
                    .map_err(|_| stopped())?;
            }
            Err(mpsc::TrySendError::Disconnected(_)) => return Err(stopped()),
        }
        result.await.map_err(|_| stopped())?
    }

    async fn send_write(&self, job: WriteJob) -> Result<(), StorageError> {
        // Usually there is room: no thread hop.
        match self.writes.try_send(job) {
            Ok(()) => Ok(()),
            Err(mpsc::TrySendError::Full(job)) => {
                let writes = self.writes.clone();
                tokio::task::spawn_blocking(move || writes.send(job))
                    .await
                    .map_err(|_| stopped())?
                    .map_err(|_| stopped())
            }
            Err(mpsc::TrySendError::Disconnected(_)) => Err(stopped()),
        }
    }
}

/// A stored value that cannot be read back.
fn corrupt(what: &str, e: impl std::fmt::Display) -> StorageError {
    StorageError::Corrupt(format!("{what}: {e}"))
}

/// A value as the JSON text the database stores.
fn encode(value: &impl serde::Serialize) -> Result<String, StorageError> {
    crate::codec::encode(value).map_err(|e| corrupt("encoding", e))
}

fn stopped() -> StorageError {
    StorageError::Unavailable("the database thread stopped".into())
}

/// `e` as a line for the operator. SQLite reports a full disk as a bare
/// "disk I/O error" on some paths; then a 1 MiB probe file written beside
/// the database tells the operating system's reason, when there is one.
fn explain(path: &Path, e: rusqlite::Error) -> String {
    use rusqlite::ErrorCode::{DiskFull, SystemIoFailure};
    let plain = e.to_string();
    if !matches!(e.sqlite_error_code(), Some(SystemIoFailure | DiskFull)) {
        return plain;
    }
    let mut probe = path.as_os_str().to_owned();
    probe.push(".probe");
    let written = std::fs::write(&probe, vec![0u8; 1 << 20]);
    let _ = std::fs::remove_file(&probe);
    match written {
        Err(reason) => format!("{plain}: {reason}"),
        Ok(()) => plain,
    }
}

fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let connection = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    connection.busy_timeout(BUSY_TIMEOUT)?;
    connection.pragma_update(None, "journal_mode", "WAL")?;
    connection.pragma_update(None, "synchronous", "FULL")?;
    connection.pragma_update(None, "foreign_keys", "ON")?;
    // Pages served from memory, not read(2) calls: a 64 MiB cache per
    // connection and the file mapped.
    connection.pragma_update(None, "cache_size", -65536)?;
    connection.pragma_update(None, "mmap_size", 268_435_456)?;
    // Opening checks nothing: read the schema now, so a corrupt file fails here.
    connection.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))?;
    Ok(connection)
}

/// Applies the migrations the file has not seen yet, each in a transaction.
fn migrate(connection: &Connection) -> rusqlite::Result<()> {
    let applied: usize = connection.pragma_query_value(None, "user_version", |row| row.get(0))?;
    for (n, migration) in MIGRATIONS.iter().enumerate().skip(applied) {
        connection.execute_batch(&format!(
            "BEGIN IMMEDIATE;\n{migration}\nPRAGMA user_version = {};\nCOMMIT;",
            n + 1
        ))?;
    }
    Ok(())
}

fn write_loop(connection: Connection, queue: mpsc::Receiver<WriteJob>) {
    let mut durable_now = true;
    while let Ok(first) = queue.recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let mut finishers = Vec::with_capacity(jobs.len());
        let durable = jobs.iter().any(|job| job.durable);
        let outcome = (|| -> rusqlite::Result<()> {
            if durable != durable_now {
                let level = if durable { "FULL" } else { "NORMAL" };
                connection.pragma_update(None, "synchronous", level)?;
                durable_now = durable;
            }
            connection.execute_batch("BEGIN IMMEDIATE")?;
            for job in jobs.drain(..) {
                connection.execute_batch("SAVEPOINT job")?;
                let (ok, finisher) = (job.run)(&connection);
                finishers.push(finisher);
                if ok {
                    connection.execute_batch("RELEASE job")?;
                } else {
                    connection.execute_batch("ROLLBACK TO job; RELEASE job")?;
                }
            }
            connection.execute_batch("COMMIT")
        })();
        let outcome = match outcome {
            Ok(()) => Ok(()),
            Err(e) => {
                let _ = connection.execute_batch("ROLLBACK");
                tracing::error!(error = %e, "a database write failed");
                Err(StorageError::from(e))
            }
        };
        // Jobs never started (BEGIN failed) drop their answer channel: their
        // callers see the write fail.
        drop(jobs);
        for finisher in finishers {
            finisher(outcome.clone());
        }
    }
}

fn read_loop(connection: Connection, queue: Arc<Mutex<mpsc::Receiver<ReadJob>>>) {
    loop {
        let job = match queue.lock().expect("reader queue lock").recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        job(&connection);
    }
}
