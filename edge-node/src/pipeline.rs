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
use crate::routes::{owners_for, placement_keys, reroute_targets, Routes};
use parking_lot::Mutex;
use protocol::api::IngestResult;
use protocol::reject::RejectReason;
use protocol::wire::{Fix, RoutedFix};
use protocol::{DeliveryId, DriverId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
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
    /// A session's driver declared the deliveries it is on duty for (`DriverToEdge::OnDuty`).
    OnDuty {
        driver: DriverId,
        session_id: u64,
        deliveries: Vec<DeliveryId>,
    },
    /// A QUIC session ended: forget its declared deliveries (unless a newer session set them).
    SessionEnded { driver: DriverId, session_id: u64 },
    /// Fixes of one authenticated driver, with the edge's receive time.
    Fixes {
        driver: DriverId,
        rx_ms: u64,
        fixes: Vec<Fix>,
        /// Deliveries named by the request itself (HTTP header); `None`: the session's.
        deliveries: Option<Vec<DeliveryId>>,
        /// Where to send the per-reason outcome (HTTP answers it); `None` for datagrams.
        reply: Option<oneshot::Sender<IngestResult>>,
    },
    /// Route again what waits in `queue`: the fixes kept for hub `departed.0` (placeable hubs
    /// were `departed.1`), or with `None` the fixes that waited for any hub.
    Reroute {
        queue: Arc<BatchQueue>,
        departed: Option<(String, Vec<String>)>,
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
            deliveries: None,
            reply: None,
        }) {
            Ok(()) => true,
            Err(_) => {
                self.metrics.rejected(RejectReason::Overload).inc_by(n);
                false
            }
        }
    }

    /// Queues fixes and waits for the filter's verdict (HTTP paths); `deliveries` are those
    /// the request named (`None`: route like the driver's session, or by the fallback key).
    pub async fn submit_and_wait(
        &self,
        driver: DriverId,
        transport: Transport,
        fixes: Vec<Fix>,
        deliveries: Option<Vec<DeliveryId>>,
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
                deliveries,
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

    /// Records the deliveries a session's driver is on duty for. Waits for room.
    pub async fn on_duty(&self, driver: DriverId, session_id: u64, deliveries: Vec<DeliveryId>) {
        let _ = self
            .tx
            .send(IngestMsg::OnDuty {
                driver,
                session_id,
                deliveries,
            })
            .await;
    }

    /// A session ended. Waits for room.
    pub async fn session_ended(&self, driver: DriverId, session_id: u64) {
        let _ = self
            .tx
            .send(IngestMsg::SessionEnded { driver, session_id })
            .await;
    }

    /// Hands the fixes waiting in `queue` back for routing (see [`IngestMsg::Reroute`]).
    pub async fn reroute(&self, queue: Arc<BatchQueue>, departed: Option<(String, Vec<String>)>) {
        let _ = self.tx.send(IngestMsg::Reroute { queue, departed }).await;
    }
}

/// The batcher shared by the pipeline task (which fills it) and the uplink (which drains it on
/// failure and refills it on reconnect), plus the queue of batches to the hub.
#[derive(Debug)]
pub struct BatchQueue {
    inner: Mutex<(Batcher, u64)>,
    tx: mpsc::Sender<Vec<RoutedFix>>,
    metrics: Arc<EdgeMetrics>,
    /// Batches written to the hub link and not acknowledged yet (set by the uplink).
    unacked: AtomicU64,
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
            unacked: AtomicU64::new(0),
        }
    }

    /// Nothing waits in the batcher.
    pub fn is_empty(&self) -> bool {
        self.inner.lock().0.is_empty()
    }

    /// Everything handed in was written to the hub and acknowledged.
    pub fn is_idle(&self) -> bool {
        self.unacked.load(Ordering::Relaxed) == 0
            && self.tx.capacity() == self.tx.max_capacity()
            && self.is_empty()
    }

    /// Records how many batches on the link await an ack (the uplink calls this).
    pub fn set_unacked(&self, n: u64) {
        self.unacked.store(n, Ordering::Relaxed);
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

    pub(crate) fn next_deadline(&self) -> Option<u64> {
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

/// Polls every active hub queue for due batches.
fn poll_all(routes: &Routes, now_ms: u64) {
    for q in &routes.active {
        q.with(now_ms, |b| b.poll(now_ms));
    }
}

/// Runs filter -> routing -> per-hub batchers until `shutdown`; batches go to each hub's
/// uplink through its [`BatchQueue`] in the current [`Routes`].
pub fn spawn_pipeline(
    cfg: FilterConfig,
    clock: nodekit::Clock,
    mut rx: mpsc::Receiver<IngestMsg>,
    mut routes_rx: watch::Receiver<Arc<Routes>>,
    metrics: Arc<EdgeMetrics>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let mut filter = FixFilter::new(cfg);
    tokio::spawn(async move {
        let mut buf = Vec::with_capacity(RECV_CHUNK);
        let mut evict = tokio::time::interval(EVICT_EVERY);
        let mut routes = routes_rx.borrow_and_update().clone();
        let mut duty = Duty::default();
        loop {
            let sleep_ms = routes
                .active
                .iter()
                .filter_map(|q| q.next_deadline())
                .min()
                .map(|d| d.saturating_sub(nodekit::unix_ms()));
            tokio::select! {
                _ = shutdown.cancelled() => break,
                n = rx.recv_many(&mut buf, RECV_CHUNK) => {
                    if n == 0 {
                        break;
                    }
                    // After the receive: a Reroute sent after a routes change sees the change.
                    if routes_rx.has_changed().unwrap_or(false) {
                        routes = routes_rx.borrow_and_update().clone();
                    }
                    let now_ms = nodekit::unix_ms();
                    let filter_now_ms = clock.now_ms();
                    for msg in buf.drain(..) {
                        handle_msg(&mut filter, &mut duty, &routes, &metrics, msg, now_ms, filter_now_ms);
                    }
                    poll_all(&routes, now_ms);
                }
                r = routes_rx.changed() => {
                    if r.is_err() {
                        break;
                    }
                    routes = routes_rx.borrow_and_update().clone();
                }
                _ = tokio::time::sleep(Duration::from_millis(sleep_ms.unwrap_or(0))), if sleep_ms.is_some() => {
                    poll_all(&routes, nodekit::unix_ms());
                }
                _ = evict.tick() => {
                    let n = filter.evict_idle(clock.now_ms());
                    if n > 0 {
                        debug!(evicted = n, "forgot idle drivers");
                    }
                }
            }
        }
        info!("pipeline stopped");
    })
}

/// The deliveries each connected driver declared, with the session that declared them.
#[derive(Debug, Default)]
struct Duty {
    by_driver: HashMap<DriverId, (u64, Vec<DeliveryId>)>,
}

impl Duty {
    fn deliveries(&self, driver: DriverId) -> &[DeliveryId] {
        self.by_driver
            .get(&driver)
            .map_or(&[][..], |(_, d)| d.as_slice())
    }
}

/// Hands `fix` to the hubs at `targets` (indices into `routes.placeable`), or to the orphan
/// queue when no hub is placeable.
fn route_to(routes: &Routes, targets: &[usize], fix: RoutedFix, now_ms: u64) {
    if routes.placeable.is_empty() {
        routes.orphans.with(now_ms, |b| b.push(fix, now_ms));
        return;
    }
    for i in targets {
        if let Some(hub) = routes.placeable.get(*i) {
            hub.push(fix, now_ms);
        }
    }
}

fn handle_msg(
    filter: &mut FixFilter,
    duty: &mut Duty,
    routes: &Routes,
    metrics: &EdgeMetrics,
    msg: IngestMsg,
    now_ms: u64,
    filter_now_ms: u64,
) {
    match msg {
        IngestMsg::SessionStarted { driver } => filter.handle_session_start(driver),
        IngestMsg::OnDuty {
            driver,
            session_id,
            deliveries,
        } => {
            duty.by_driver.insert(driver, (session_id, deliveries));
        }
        IngestMsg::SessionEnded { driver, session_id } => {
            if duty.by_driver.get(&driver).map(|(s, _)| *s) == Some(session_id) {
                duty.by_driver.remove(&driver);
            }
        }
        IngestMsg::Reroute { queue, departed } => {
            let fixes = queue.take_with(|b| Some(b.take_all())).unwrap_or_default();
            if fixes.is_empty() {
                return;
            }
            metrics.reroutes().inc_by(fixes.len() as u64);
            for fix in fixes {
                let keys = placement_keys(fix.driver_id, duty.deliveries(fix.driver_id));
                let targets = match &departed {
                    Some((hub, old)) => reroute_targets(&keys, hub, old, &routes.placeable),
                    None => owners_for(&keys, &routes.placeable),
                };
                route_to(routes, &targets, fix, now_ms);
            }
        }
        IngestMsg::Fixes {
            driver,
            rx_ms,
            fixes,
            deliveries,
            reply,
        } => {
            let keys = match &deliveries {
                Some(d) => placement_keys(driver, d),
                None => placement_keys(driver, duty.deliveries(driver)),
            };
            let targets = owners_for(&keys, &routes.placeable);
            let mut result = reply.as_ref().map(|_| IngestResult::default());
            for fix in fixes {
                match filter.check(driver, &fix, filter_now_ms) {
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
                        route_to(routes, &targets, routed, now_ms);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batcher::BatcherConfig;
    use crate::routes::HubRoute;

    const CFG: BatcherConfig = BatcherConfig {
        flush_interval_ms: 1,
        max_batch_fixes: 64,
        max_kept_drivers: 64,
    };

    /// A hub queue whose link is "up", and the receiving end of its batches.
    fn hub_queue(metrics: &Arc<EdgeMetrics>) -> (Arc<BatchQueue>, mpsc::Receiver<Vec<RoutedFix>>) {
        let (tx, rx) = mpsc::channel(16);
        let q = Arc::new(BatchQueue::new(Batcher::new(CFG), tx, metrics.clone()));
        assert_eq!(q.take_with(|b| b.handle_hub_up()), None);
        (q, rx)
    }

    fn fix_now(seq: u32) -> Fix {
        Fix::from_units(seq, nodekit::unix_ms() - 1_000, 60.17, 24.94, 0.0, 5.0, 5.0)
    }

    async fn next_batch(rx: &mut mpsc::Receiver<Vec<RoutedFix>>) -> Vec<RoutedFix> {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("batch in time")
            .expect("queue open")
    }

    #[tokio::test]
    async fn fixes_wait_for_a_hub_then_go_to_their_owner_and_follow_on_duty() {
        let metrics = Arc::new(EdgeMetrics::unregistered());
        let (orphan_tx, _orphan_rx) = mpsc::channel(1);
        let orphans = Arc::new(BatchQueue::new(
            Batcher::new(CFG),
            orphan_tx,
            metrics.clone(),
        ));
        let (routes_tx, routes_rx) = watch::channel(Arc::new(Routes::empty(orphans.clone())));
        let (sender, rx) = ingest_channel(64, metrics.clone());
        let shutdown = CancellationToken::new();
        let task = spawn_pipeline(
            FilterConfig::default(),
            nodekit::ClockConfig::default().clock(),
            rx,
            routes_rx,
            metrics.clone(),
            shutdown.clone(),
        );
        // No hub yet: the fix waits among the orphans.
        let driver = DriverId(5);
        let first = fix_now(1);
        let r = sender
            .submit_and_wait(
                driver,
                Transport::Https,
                vec![first],
                None,
                nodekit::unix_ms(),
            )
            .await;
        assert_eq!(r.accepted, 1);
        assert!(!orphans.is_empty());

        // Two hubs appear; the orphan goes to the owner of the fallback key (the driver id).
        let ids = ["hub-a", "hub-b"];
        let (qa, mut rxa) = hub_queue(&metrics);
        let (qb, mut rxb) = hub_queue(&metrics);
        let routes = Routes {
            placeable: vec![
                HubRoute::new("hub-a", qa.clone(), metrics.routed("hub-a")),
                HubRoute::new("hub-b", qb.clone(), metrics.routed("hub-b")),
            ],
            active: vec![qa, qb],
            orphans: orphans.clone(),
        };
        routes_tx.send_replace(Arc::new(routes));
        sender.reroute(orphans.clone(), None).await;
        let owner = cluster::placement::owner(DeliveryId(driver.0), &ids).expect("owner");
        let (mine, other) = if *owner == "hub-a" {
            (&mut rxa, &mut rxb)
        } else {
            (&mut rxb, &mut rxa)
        };
        assert_eq!(next_batch(mine).await[0].fix, first);
        assert!(orphans.is_empty());
        assert_eq!(metrics.reroutes().get(), 1);

        // On duty for one delivery of each hub: the next fix goes to both.
        let d_a = (0..)
            .map(DeliveryId)
            .find(|d| cluster::placement::owner(*d, &ids) == Some(&"hub-a"))
            .expect("delivery of hub-a");
        let d_b = (0..)
            .map(DeliveryId)
            .find(|d| cluster::placement::owner(*d, &ids) == Some(&"hub-b"))
            .expect("delivery of hub-b");
        sender.on_duty(driver, 1, vec![d_a, d_b]).await;
        let second = fix_now(2);
        assert!(sender.submit(driver, Transport::Quic, vec![second], nodekit::unix_ms()));
        assert_eq!(next_batch(mine).await[0].fix, second);
        assert_eq!(next_batch(other).await[0].fix, second);
        shutdown.cancel();
        task.await.expect("pipeline stops");
    }
}
