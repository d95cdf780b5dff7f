//! [`IdempotencyStore`] on Redis; keys are listed in [`crate::queue::redis`].

use deadpool_redis::Pool;
use deadpool_redis::redis;
use sha2::{Digest, Sha256};

use super::{IDEMPOTENCY_TTL, IdempotencyStore, Reservation, StoredAnswer};
use crate::queue::{BoxFuture, QueueError};

const PENDING_PREFIX: &str = "pending:";

/// Stores on Redis.
#[derive(Clone)]
pub struct RedisStore {
    pool: Pool,
}

impl RedisStore {
    /// A store on an existing pool.
    pub fn with_pool(pool: Pool) -> Self {
        Self { pool }
    }

    async fn connection(&self) -> Result<deadpool_redis::Connection, QueueError> {
        self.pool
            .get()
            .await
            .map_err(|e| QueueError::Unavailable(e.to_string()))
    }
}

fn idempotency_key(flow_id: &str, key: &str) -> String {
    let digest = hex::encode(Sha256::digest(key.as_bytes()));
    format!("flowgate:{{flowgate}}:idem:{flow_id}:{digest}")
}

fn unavailable(err: redis::RedisError) -> QueueError {
    QueueError::Unavailable(err.to_string())
}

fn parse(value: &str) -> Result<Reservation, QueueError> {
    match value.strip_prefix(PENDING_PREFIX) {
        Some(run_id) => Ok(Reservation::InProgress {
            run_id: run_id.to_owned(),
        }),
        None => serde_json::from_str(value)
            .map(Reservation::Answered)
            .map_err(|e| QueueError::Corrupt(format!("stored answer: {e}"))),
    }
}

impl IdempotencyStore for RedisStore {
    fn reserve<'a>(
        &'a self,
        flow_id: &'a str,
        key: &'a str,
        run_id: &'a str,
    ) -> BoxFuture<'a, Result<Reservation, QueueError>> {
        Box::pin(async move {
            let mut conn = self.connection().await?;
            // SET NX ... GET: reserve, or return what is there, in one step.
            let existing: Option<String> = redis::cmd("SET")
                .arg(idempotency_key(flow_id, key))
                .arg(format!("{PENDING_PREFIX}{run_id}"))
                .arg("NX")
                .arg("GET")
                .arg("EX")
                .arg(IDEMPOTENCY_TTL.as_secs())
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            match existing {
                None => Ok(Reservation::Reserved),
                Some(value) => parse(&value),
            }
        })
    }

    fn lookup<'a>(
        &'a self,
        flow_id: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Reservation>, QueueError>> {
        Box::pin(async move {
            let mut conn = self.connection().await?;
            let value: Option<String> = redis::cmd("GET")
                .arg(idempotency_key(flow_id, key))
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            value.as_deref().map(parse).transpose()
        })
    }

    fn complete<'a>(
        &'a self,
        flow_id: &'a str,
        key: &'a str,
        answer: &'a StoredAnswer,
    ) -> BoxFuture<'a, Result<(), QueueError>> {
        Box::pin(async move {
            let json =
                serde_json::to_string(answer).map_err(|e| QueueError::Corrupt(e.to_string()))?;
            let mut conn = self.connection().await?;
            redis::cmd("SET")
                .arg(idempotency_key(flow_id, key))
                .arg(json)
                .arg("XX")
                .arg("EX")
                .arg(IDEMPOTENCY_TTL.as_secs())
                .query_async::<Option<String>>(&mut conn)
                .await
                .map(|_| ())
                .map_err(unavailable)
        })
    }

    fn release<'a>(
        &'a self,
        flow_id: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<(), QueueError>> {
        Box::pin(async move {
            let mut conn = self.connection().await?;
            redis::cmd("DEL")
                .arg(idempotency_key(flow_id, key))
                .query_async::<i64>(&mut conn)
                .await
                .map(|_| ())
                .map_err(unavailable)
        })
    }
}
