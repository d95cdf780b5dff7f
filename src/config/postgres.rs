//! `[postgres]`: where the PostgreSQL backend connects.

use std::fmt;

use serde::Deserialize;

use super::parse::shown_url;

/// Most connections one process may hold.
pub const MAX_POOL_SIZE: usize = 1024;

/// `[postgres]`
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresConfig {
    /// `postgres://user@host:5432/database`, with `sslmode` (`disable`,
    /// `prefer`, `require`) as a query parameter; put a password in the
    /// environment override (`FLOWGATE_POSTGRES__URL`), not in the file.
    pub url: String,
    /// Connections each process keeps at most (1 to 1024).
    pub pool_size: usize,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self {
            url: "postgres://flowgate@127.0.0.1:5432/flowgate".into(),
            pool_size: 16,
        }
    }
}

impl fmt::Debug for PostgresConfig {
    /// The URL without its password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &shown_url(&self.url))
            .field("pool_size", &self.pool_size)
            .finish()
    }
}

impl PostgresConfig {
    /// Checks what the keys' types cannot; the reason, naming the key.
    pub(super) fn validate(&self) -> Result<(), String> {
        if !(1..=MAX_POOL_SIZE).contains(&self.pool_size) {
            return Err(format!("postgres.pool_size must be 1 to {MAX_POOL_SIZE}"));
        }
        if !(self.url.starts_with("postgres://") || self.url.starts_with("postgresql://")) {
            return Err(format!(
                "postgres.url: `{}` is not a postgres:// URL",
                shown_url(&self.url)
            ));
        }
        Ok(())
    }
}
