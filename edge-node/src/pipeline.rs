//! The one ingest pipeline: every transport feeds a bounded queue; one task filters and batches.
//!
//! Fixes of one driver must reach the [`FixFilter`] in the order they arrived (its duplicate,
//! ordering and implied-speed checks depend on it). A single task owning the filter gives that
//! for free and needs no locking on the hot path; one core filters millions of fixes a second
//! (see `benches/decode_filter.rs`), far more than one quinn endpoint can receive. Sharding by
//! driver id over several tasks is the way out if that ever changes.

use crate::batcher::Batcher;
use crate::filter::{FilterConfig, FixFilter};
use crate::metrics::{EdgeMetrics, Transport};
use parking_lot::Mutex;
use protocol::api::IngestResult;
use protocol::reject::RejectReason;
use protocol::wire::{Fix, RoutedFix};
use protocol::DriverId;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

/// How often the filter forgets idle drivers.
const EVICT_EVERY: Duration = Duration::from_secs(60);
/// Messages taken from the queue per wake-up.
const RECV_CHUNK: usize = 256;

/// What the ingest paths put on the queue.
#[derive(Debug)]
pub enum IngestMsg {
    /// A driver opened a new QUIC session: its sequence numbers restart.
    SessionStarted { driver: DriverId },
    /// Fixes of one authenticated driver, with the edge's receive time.
    Fixes {
        driver: DriverId,
        rx_ms: u64,
        fixes: Vec<Fix>,
        /// Where to send the per-reason outcome (HTTP answers it); `None` for datagrams.
        reply: Option<oneshot::Sender<IngestResult>>,
    },
}

/// The sending side handed to every ingest path. Never blocks: a full queue drops and counts.
#[derive(Clone, Debug)]
pub struct PipelineSender {
    tx: mpsc::Sender<IngestMsg>,
    metrics: Arc<EdgeMetrics>,
}

impl PipelineSender {
    /// Queues fixes without waiting; returns `false` (and counts them as `overload`) when full.
    pub fn submit(
        &self,
        driver: DriverId,
        transport: Transport,
        fixes: Vec<Fix>,
        rx_ms: u64,
    ) -> bool {
        let n = fixes.len() as u64;
        self.metrics.received(transport).inc_by(n);
        match self.tx.try_send(IngestMsg::Fixes {
            driver,
            rx_ms,
            fixes,
            reply: None,
        }) {
            Ok(()) => true,
            Err(_) => {
                self.metrics.rejected(RejectReason::Overload).inc_by(n);
                false
            }
        }
    }

    /// Queues fixes and waits for the filter's verdict (HTTP paths).
    pub async fn submit_and_wait(
        &self,
        driver: DriverId,
        transport: Transport,
        fixes: Vec<Fix>,
        rx_ms: u64,
    ) -> IngestResult {
        let n = fixes.len() as u32;
        self.metrics.received(transport).inc_by(u64::from(n));
        let (reply, answer) = oneshot::channel();
        let overloaded = || {
            self.metrics
                .rejected(RejectReason::Overload)
                .inc_by(u64::from(n));
            let mut r = IngestResult::default();
            r.rejected
                .insert(RejectReason::Overload.as_str().to_owned(), n);
            r
        };
        if self
            .tx
            .try_send(IngestMsg::Fixes {
                driver,
                rx_ms,
                fixes,
                reply: Some(reply),
            })
            .is_err()
        {
            return overloaded();
        }
        // The pipeline answers every message it takes; a dropped sender means it shut down.
        answer.await.unwrap_or_else(|_| overloaded())
    }

    /// Tells the filter a new session of `driver` began. Waits for room: this must not be lost.
    pub async fn session_started(&self, driver: DriverId) {
        let _ = self.tx.send(IngestMsg::SessionStarted { driver }).await;
    }
}

/// The batcher shared by the pipeline task (which fills it) and the uplink (which drains it on
/// failure and refills it on reconnect), plus the queue of batches to the hub.
#[derive(Debug)]
pub struct BatchQueue {
    inner: Mutex<(Batcher, u64)>,
    tx: mpsc::Sender<Vec<RoutedFix>>,
    metrics: Arc<EdgeMetrics>,
}

impl BatchQueue {
    pub fn new(
        batcher: Batcher,
        tx: mpsc::Sender<Vec<RoutedFix>>,
        metrics: Arc<EdgeMetrics>,
    ) -> Self {
        Self {
            inner: Mutex::new((batcher, 0)),
            tx,
            metrics,
        }
    }

    /// Runs `f` on the batcher under the lock, queues the batch it returns (a full queue folds
    /// it back into the batcher's newest-per-driver set) and reports newly shed fixes.
    pub fn with<F>(&self, now_ms: u64, f: F)
    where
        F: FnOnce(&mut Batcher) -> Option<Vec<RoutedFix>>,
    {
        let mut guard = self.inner.lock();
        let (batcher, reported) = &mut *guard;
        if let Some(batch) = f(batcher) {
            if let Err(e) = self.tx.try_send(batch) {
                let batch = match e {
                    mpsc::error::TrySendError::Full(b) | mpsc::error::TrySendError::Closed(b) => b,
                };
                batcher.requeue(batch, now_ms);
            }
        }
        let shed = batcher.shed_total();
        if shed > *reported {
            self.metrics.shed().inc_by(shed - *reported);
            *reported = shed;
        }
    }

    /// Like [`with`](Self::with) but hands the batch to the caller instead of queueing it.
    pub fn take_with<F>(&self, f: F) -> Option<Vec<RoutedFix>>
    where
        F: FnOnce(&mut Batcher) -> Option<Vec<RoutedFix>>,
    {
        let mut guard = self.inner.lock();
        let (batcher, reported) = &mut *guard;
        let out = f(batcher);
        let shed = batcher.shed_total();
        if shed > *reported {
            self.metrics.shed().inc_by(shed - *reported);
            *reported = shed;
        }
        out
    }

    /// The hub link failed: collapse everything not yet written (including batches still in
    /// the uplink queue, drained from `rx`) to the newest fix per driver.
    pub fn handle_hub_down(&self, rx: &mut mpsc::Receiver<Vec<RoutedFix>>, now_ms: u64) {
        self.take_with(|b| {
            b.handle_hub_down();
            while let Ok(batch) = rx.try_recv() {
                b.requeue(batch, now_ms);
            }
            None
        });
    }

    fn next_deadline(&self) -> Option<u64> {
        self.inner.lock().0.next_deadline()
    }
}

/// Creates the ingest queue: the sender for the ingest paths and the receiver for
/// [`spawn_pipeline`].
pub fn ingest_channel(
    capacity: usize,
    metrics: Arc<EdgeMetrics>,
) -> (PipelineSender, mpsc::Receiver<IngestMsg>) {
    let (tx, rx) = mpsc::channel(capacity);
    (PipelineSender { tx, metrics }, rx)
}

/// Runs filter -> batcher until `shutdown`; batches go to the uplink through `queue`.
pub fn spawn_pipeline(
    cfg: FilterConfig,
    mut rx: mpsc::Receiver<IngestMsg>,
    queue: Arc<BatchQueue>,
    metrics: Arc<EdgeMetrics>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let mut filter = FixFilter::new(cfg);
    tokio::spawn(async move {
        let mut buf = Vec::with_capacity(RECV_CHUNK);
        let mut evict = tokio::time::interval(EVICT_EVERY);
        loop {
            let sleep_ms = queue
                .next_deadline()
                .map(|d| d.saturating_sub(nodekit::unix_ms()));
            tokio::select! {
                _ = shutdown.cancelled() => break,
                n = rx.recv_many(&mut buf, RECV_CHUNK) => {
                    if n == 0 {
                        break;
                    }
                    let now_ms = nodekit::unix_ms();
                    for msg in buf.drain(..) {
                        handle_msg(&mut filter, &queue, &metrics, msg, now_ms);
                    }
                    queue.with(now_ms, |b| b.poll(now_ms));
                }
                _ = tokio::time::sleep(Duration::from_millis(sleep_ms.unwrap_or(0))), if sleep_ms.is_some() => {
                    let now_ms = nodekit::unix_ms();
                    queue.with(now_ms, |b| b.poll(now_ms));
                }
                _ = evict.tick() => {
                    let n = filter.evict_idle(nodekit::unix_ms());
                    if n > 0 {
                        debug!(evicted = n, "forgot idle drivers");
                    }
                }
            }
        }
        info!("pipeline stopped");
    })
}

fn handle_msg(
    filter: &mut FixFilter,
    queue: &BatchQueue,
    metrics: &EdgeMetrics,
    msg: IngestMsg,
    now_ms: u64,
) {
    match msg {
        IngestMsg::SessionStarted { driver } => filter.handle_session_start(driver),
        IngestMsg::Fixes {
            driver,
            rx_ms,
            fixes,
            reply,
        } => {
            let mut result = reply.as_ref().map(|_| IngestResult::default());
            for fix in fixes {
                match filter.check(driver, &fix, now_ms) {
                    Ok(()) => {
                        metrics.accepted().inc();
                        if let Some(r) = result.as_mut() {
                            r.accepted += 1;
                        }
                        let routed = RoutedFix {
                            driver_id: driver,
                            fix,
                            edge_rx_ms: rx_ms,
                        };
                        queue.with(now_ms, |b| b.push(routed, now_ms));
                    }
                    Err(reason) => {
                        metrics.rejected(reason).inc();
                        if let Some(r) = result.as_mut() {
                            *r.rejected.entry(reason.as_str().to_owned()).or_insert(0) += 1;
                        }
                    }
                }
            }
            if let (Some(reply), Some(result)) = (reply, result) {
                let _ = reply.send(result);
            }
        }
    }
}
