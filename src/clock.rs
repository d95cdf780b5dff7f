//! The wall clock, read the same way everywhere: epoch milliseconds for
//! what is stored and compared, epoch seconds for token and signature
//! times, RFC 3339 for what people read.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Seconds since the epoch.
pub fn unix_now() -> u64 {
    now_ms() / 1000
}

/// Now, as RFC 3339 UTC with milliseconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}
