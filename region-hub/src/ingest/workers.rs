//! Shard workers: one task per shard applies that shard's part of every batch of fixes, so a
//! hub applies fixes on as many cores as it has shards. The edge links split each batch by
//! shard ([`crate::tracking::shards::Shards::route`]) and queue the parts; a full queue makes
//! the link wait (it stops reading, QUIC flow control holds the edge back, and the edge sheds
//! old positions, newest wins).

use crate::hub::Hub;
use crate::tracking::shards::ShardBatch;
use protocol::wire::RoutedFix;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Where edge links queue their batches, one queue per shard.
#[derive(Clone, Debug)]
pub(crate) struct FixQueues {
    queues: Arc<[mpsc::Sender<ShardBatch>]>,
}

impl FixQueues {
    /// Splits `fixes` by shard and queues each part for its worker; waits while a queue is
    /// full. Returns false once the workers have stopped (the hub is shutting down).
    pub async fn dispatch(&self, hub: &Hub, fixes: &[RoutedFix]) -> bool {
        let routed = hub.route_fixes(fixes);
        for (k, batch) in routed.batches.into_iter().enumerate() {
            if batch.fixes.is_empty() {
                continue;
            }
            let Some(q) = self.queues.get(k) else {
                continue;
            };
            if q.send(batch).await.is_err() {
                return false;
            }
        }
        true
    }
}

/// Starts one worker per shard of `hub`, each with a queue of `queue` batches.
pub(crate) fn spawn_workers(
    hub: Arc<Hub>,
    queue: usize,
    shutdown: CancellationToken,
) -> (FixQueues, Vec<JoinHandle<()>>) {
    let mut queues = Vec::new();
    let mut tasks = Vec::new();
    for k in 0..hub.shard_count() {
        let (tx, mut rx) = mpsc::channel::<ShardBatch>(queue.max(1));
        queues.push(tx);
        let (hub, shutdown) = (hub.clone(), shutdown.clone());
        tasks.push(tokio::spawn(
            async move {
                loop {
                    let batch = tokio::select! {
                        b = rx.recv() => match b { Some(b) => b, None => break },
                        _ = shutdown.cancelled() => break,
                    };
                    hub.apply_fixes(k, &batch);
                }
            }
            .instrument(tracing::info_span!("shard", shard = k)),
        ));
    }
    (
        FixQueues {
            queues: queues.into(),
        },
        tasks,
    )
}
