//! Storage backends: the traits for every piece of shared state — the run
//! queue ([`RunQueue`]), run records ([`RunStore`]) and idempotency keys
//! ([`IdempotencyStore`]) — with the one storage error type and the boxed
//! futures they return. [`redis`] implements them on Redis.

use std::future::Future;
use std::pin::Pin;
use std::time::{SystemTime, UNIX_EPOCH};

mod queue;
pub mod redis;
mod store;

pub use self::queue::{Delivery, RunQueue};
pub use self::store::{IDEMPOTENCY_TTL, IdempotencyStore, Reservation, RunStore, StoredAnswer};

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
