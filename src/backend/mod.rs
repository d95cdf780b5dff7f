//! What every storage backend shares: the boxed futures its traits
//! return, the one storage error type, and the clock it stamps entries with.
//! The traits themselves are [`crate::queue::RunQueue`],
//! [`crate::store::RunStore`] and [`crate::store::IdempotencyStore`];
//! [`redis`] holds the Redis plumbing their Redis implementations share.

use std::future::Future;
use std::pin::Pin;
use std::time::{SystemTime, UNIX_EPOCH};

pub mod redis;

/// A boxed future, so the storage traits can be used as trait objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a backend could not do what was asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    /// The backend is unreachable or refused the command.
    #[error("the run queue is unavailable: {0}")]
    Unavailable(String),
    /// A stored entry could not be decoded.
    #[error("a queued run is corrupt: {0}")]
    Corrupt(String),
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
