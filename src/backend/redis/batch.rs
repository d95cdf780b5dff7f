//! Batches Redis commands from concurrent callers into shared pipelines: one
//! round trip carries the writes of every caller waiting at that moment.

use std::sync::{Arc, OnceLock};

use deadpool_redis::Pool;
use deadpool_redis::redis;
use tokio::sync::{mpsc, oneshot};

use crate::backend::StorageError;

/// Most callers served by one pipeline.
const MAX_BATCH: usize = 256;
/// Callers waiting for the batcher before new ones wait for room.
const BACKLOG: usize = 4096;

struct Pending {
    commands: Vec<redis::Cmd>,
    done: oneshot::Sender<Result<(), StorageError>>,
}

/// A batching writer on a pool. Clones share one batcher task, started on
/// first use (inside the runtime).
#[derive(Clone)]
pub struct Batcher {
    pool: Pool,
    inbox: Arc<OnceLock<mpsc::Sender<Pending>>>,
}

impl Batcher {
    /// A batcher writing through `pool`.
    pub fn new(pool: Pool) -> Self {
        Self {
            pool,
            inbox: Arc::default(),
        }
    }

    /// Runs `pipe`'s commands (their replies ignored) in the next batch.
    pub async fn run(&self, pipe: &redis::Pipeline) -> Result<(), StorageError> {
        let (done, result) = oneshot::channel();
        let pending = Pending {
            commands: pipe.cmd_iter().cloned().collect(),
            done,
        };
        let inbox = self.inbox.get_or_init(|| {
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
        let result = super::query_pipeline::<()>(&pool, &pipe).await;
        for pending in batch {
            let _ = pending.done.send(result.clone());
        }
    }
}
