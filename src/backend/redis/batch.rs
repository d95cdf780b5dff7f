//! Batches Redis commands from concurrent callers into shared pipelines: one
//! round trip carries the writes of every caller waiting at that moment.
//! Each partition has a batch of its own, so on a cluster every pipeline
//! stays in one slot.

use std::sync::{Arc, OnceLock};

use deadpool_redis::redis;
use tokio::sync::{mpsc, oneshot};

use super::Pool;
use crate::backend::StorageError;

/// Most callers served by one pipeline.
const MAX_BATCH: usize = 256;
/// Callers waiting for the batcher before new ones wait for room.
const BACKLOG: usize = 4096;
/// Longest wait for replicas to confirm a batch (`WAIT`), in ms: well
/// inside the client's 500 ms response timeout.
const REPLICA_WAIT_MS: u64 = 250;

struct Pending {
    commands: Vec<redis::Cmd>,
    done: oneshot::Sender<Result<(), StorageError>>,
}

/// A batching writer on a pool. Clones share one batcher task per
/// partition, started on first use (inside the runtime).
#[derive(Clone)]
pub struct Batcher {
    pool: Pool,
    inboxes: Arc<[OnceLock<mpsc::Sender<Pending>>]>,
}

impl Batcher {
    /// A batcher writing through `pool`.
    pub fn new(pool: Pool) -> Self {
        let inboxes = (0..pool.layout().count())
            .map(|_| OnceLock::new())
            .collect();
        Self { pool, inboxes }
    }

    /// Runs `pipe`'s commands (their replies ignored) in the next batch of
    /// `partition`, whose slot every key in `pipe` must share.
    pub async fn run(&self, partition: usize, pipe: &redis::Pipeline) -> Result<(), StorageError> {
        let (done, result) = oneshot::channel();
        let pending = Pending {
            commands: pipe.cmd_iter().cloned().collect(),
            done,
        };
        let inbox = self.inboxes[partition].get_or_init(|| {
            let (tx, rx) = mpsc::channel(BACKLOG);
            tokio::spawn(run_batches(self.pool.clone(), rx));
            tx
        });
        let stopped = || StorageError::Unavailable("the Redis batcher stopped".into());
        inbox.send(pending).await.map_err(|_| stopped())?;
        result.await.map_err(|_| stopped())?
    }
}

async fn run_batches(pool: Pool, mut inbox: mpsc::Receiver<Pending>) {
    while let Some(first) = inbox.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match inbox.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let mut pipe = redis::pipe();
        for pending in &mut batch {
            for command in pending.commands.drain(..) {
                pipe.add_command(command).ignore();
            }
        }
        let replicas = pool.replica_acks();
        let result = if replicas == 0 {
            super::query_pipeline::<()>(&pool, &pipe).await
        } else {
            // Sent on the same connection after the writes, so it waits for them.
            pipe.cmd("WAIT").arg(replicas).arg(REPLICA_WAIT_MS);
            match super::query_pipeline::<(u64,)>(&pool, &pipe).await {
                Ok((acked,)) if acked >= u64::from(replicas) => Ok(()),
                Ok((acked,)) => Err(StorageError::Unavailable(format!(
                    "only {acked} of {replicas} replicas confirmed the write within {REPLICA_WAIT_MS} ms"
                ))),
                Err(e) => Err(e),
            }
        };
        for pending in batch {
            let _ = pending.done.send(result.clone());
        }
    }
}
