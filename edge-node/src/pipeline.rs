//! The one ingest path: every transport hands its fixes to [`Ingest`], which filters, routes
//! and batches them in place, on the caller's task, under one short lock; a flusher task sends
//! batches whose time is up.
//!
//! Why no queue and no pipeline task: at the driver's rate (a fix every few seconds, one per
//! datagram) a hop through a channel costs a task wake-up per fix, more than decoding,
//! filtering and batching the fix together (see `benches/decode_filter.rs` and the edge's
//! callgrind profile in docs/benchmarks.md). Fixes of one driver still reach the
//! [`FixFilter`] in arrival order: each session's datagrams are read by one task, and the
//! lock orders them against the HTTP paths. The decisions are the sans-IO cores
//! ([`FixFilter`], [`crate::batcher::Batcher`], the placement functions of
//! [`crate::routes`]); [`IngestCore`] only ties them together and takes time as an argument.

use crate::batcher::Batcher;
use crate::filter::{FilterConfig, FixFilter};
use crate::metrics::{EdgeMetrics, Transport};
use crate::routes::{owners_for, placement_keys, reroute_targets, Routes};
use parking_lot::Mutex;
use protocol::api::IngestResult;
use protocol::reject::RejectReason;
use protocol::wire::{decode_driver_datagram, Fix, RoutedFix};
use protocol::{DeliveryId, DriverId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

/// How often the filter forgets idle drivers.
const EVICT_EVERY: Duration = Duration::from_secs(60);

/// The deliveries a connected driver's session declared (`OnDuty`), and where its fixes go
/// under the current routes (recomputed when the routes change, not per fix).
#[derive(Debug)]
struct Duty {
    session_id: u64,
    deliveries: Vec<DeliveryId>,
    /// Indices into `routes.placeable` for routes generation `routes_gen`.
    targets: Vec<usize>,
    routes_gen: u64,
}

/// Filter, per-driver routing state and the current routes: everything a fix passes through
/// between decoding and its hub's batcher. Plain state fed events; times come in as arguments.
#[derive(Debug)]
pub struct IngestCore {
    filter: FixFilter,
    /// Clock the filter judges fix timestamps by (scaled in simulations), derived from the
    /// receive time passed in.
    clock: nodekit::Clock,
    duty: HashMap<DriverId, Duty>,
    routes: Arc<Routes>,
    routes_rx: watch::Receiver<Arc<Routes>>,
    /// Bumped whenever `routes` is replaced; cached targets of another generation are stale.
    routes_gen: u64,
    metrics: Arc<EdgeMetrics>,
}

impl IngestCore {
    pub fn new(
        cfg: FilterConfig,
        clock: nodekit::Clock,
        mut routes_rx: watch::Receiver<Arc<Routes>>,
        metrics: Arc<EdgeMetrics>,
    ) -> Self {
        let routes = routes_rx.borrow_and_update().clone();
        Self {
            filter: FixFilter::new(cfg),
            clock,
            duty: HashMap::new(),
            routes,
            routes_rx,
            routes_gen: 0,
            metrics,
        }
    }

    /// Takes the newest routes if the hub set published new ones.
    fn refresh_routes(&mut self) {
        if self.routes_rx.has_changed().unwrap_or(false) {
            self.routes = self.routes_rx.borrow_and_update().clone();
            self.routes_gen += 1;
        }
    }

    /// A driver opened a new QUIC session: its sequence numbers restart and, until it sends
    /// `OnDuty`, it is on duty for nothing (its fixes go by the fallback key).
    pub fn session_started(&mut self, driver: DriverId, session_id: u64) {
        self.filter.handle_session_start(driver);
        self.set_duty(driver, session_id, Vec::new());
    }

    /// A session's driver declared the deliveries it is on duty for (`DriverToEdge::OnDuty`).
    pub fn on_duty(&mut self, driver: DriverId, session_id: u64, deliveries: Vec<DeliveryId>) {
        self.set_duty(driver, session_id, deliveries);
    }

    fn set_duty(&mut self, driver: DriverId, session_id: u64, deliveries: Vec<DeliveryId>) {
        self.duty.insert(
            driver,
            Duty {
                session_id,
                deliveries,
                targets: Vec::new(),
                // Never equal to a real generation: computed at the first fix.
                routes_gen: u64::MAX,
            },
        );
    }

    /// A QUIC session ended: forget its declared deliveries (unless a newer session set them).
    pub fn session_ended(&mut self, driver: DriverId, session_id: u64) {
        if self.duty.get(&driver).map(|d| d.session_id) == Some(session_id) {
            self.duty.remove(&driver);
        }
    }

    /// Filters `fixes` of an authenticated `driver` received at `rx_ms` (edge wall clock) and
    /// hands the accepted ones to their hubs' batchers. `deliveries`: those the request itself
    /// named (HTTP header), else the session's. Counts everything; fills `result` (HTTP).
    #[allow(clippy::too_many_arguments)]
    pub fn handle_fixes(
        &mut self,
        driver: DriverId,
        transport: Transport,
        fixes: &[Fix],
        deliveries: Option<&[DeliveryId]>,
        rx_ms: u64,
        mut result: Option<&mut IngestResult>,
    ) {
        self.refresh_routes();
        self.metrics.received(transport).inc_by(fixes.len() as u64);
        let filter_now_ms = self.clock.at_real_ms(rx_ms as f64).max(0.0) as u64;
        let routes = &self.routes;
        let uncached: Vec<usize>;
        let targets: &[usize] = match (deliveries, self.duty.get_mut(&driver)) {
            (Some(named), _) => {
                uncached = owners_for(&placement_keys(driver, named), &routes.placeable);
                &uncached
            }
            (None, Some(duty)) => {
                if duty.routes_gen != self.routes_gen {
                    duty.targets =
                        owners_for(&placement_keys(driver, &duty.deliveries), &routes.placeable);
                    duty.routes_gen = self.routes_gen;
                }
                &duty.targets
            }
            (None, None) => {
                uncached = owners_for(&placement_keys(driver, &[]), &routes.placeable);
                &uncached
            }
        };
        for fix in fixes {
            match self.filter.check(driver, fix, filter_now_ms) {
                Ok(()) => {
                    self.metrics.accepted().inc();
                    if let Some(r) = result.as_deref_mut() {
                        r.accepted += 1;
                    }
                    let routed = RoutedFix {
                        driver_id: driver,
                        fix: *fix,
                        edge_rx_ms: rx_ms,
                    };
                    route_to(routes, targets, routed, rx_ms);
                }
                Err(reason) => {
                    self.metrics.rejected(reason).inc();
                    if let Some(r) = result.as_deref_mut() {
                        *r.rejected.entry(reason.as_str().to_owned()).or_insert(0) += 1;
                    }
                }
            }
        }
    }

    /// Routes again what waits in `queue`: the fixes kept for hub `departed.0` (placeable hubs
    /// were `departed.1`), or with `None` the fixes that waited for any hub.
    pub fn reroute(
        &mut self,
        queue: &BatchQueue,
        departed: Option<(&str, &[String])>,
        now_ms: u64,
    ) {
        self.refresh_routes();
        let fixes = queue.take_with(|b| Some(b.take_all())).unwrap_or_default();
        if fixes.is_empty() {
            return;
        }
        self.metrics.reroutes().inc_by(fixes.len() as u64);
        for fix in fixes {
            let declared = self
                .duty
                .get(&fix.driver_id)
                .map_or(&[][..], |d| d.deliveries.as_slice());
            let keys = placement_keys(fix.driver_id, declared);
            let targets = match departed {
                Some((hub, old)) => reroute_targets(&keys, hub, old, &self.routes.placeable),
                None => owners_for(&keys, &self.routes.placeable),
            };
            route_to(&self.routes, &targets, fix, now_ms);
        }
    }

    /// Forgets the filter state of drivers idle for two hours; returns how many.
    pub fn evict_idle(&mut self, now_ms: u64) -> usize {
        let filter_now_ms = self.clock.at_real_ms(now_ms as f64).max(0.0) as u64;
        self.filter.evict_idle(filter_now_ms)
    }

    /// Drivers the filter keeps state for.
    pub fn tracked_drivers(&self) -> usize {
        self.filter.tracked_drivers()
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

/// The handle every ingest path holds (cheap to clone): the shared [`IngestCore`] and the
/// flusher's wake-up.
#[derive(Clone, Debug)]
pub struct Ingest {
    core: Arc<Mutex<IngestCore>>,
    metrics: Arc<EdgeMetrics>,
}

impl Ingest {
    pub fn new(core: IngestCore) -> Self {
        let metrics = core.metrics.clone();
        Self {
            core: Arc::new(Mutex::new(core)),
            metrics,
        }
    }

    /// Runs `f` on the core under its lock (tests, and what the methods below do).
    pub fn with_core<R>(&self, f: impl FnOnce(&mut IngestCore) -> R) -> R {
        f(&mut self.core.lock())
    }

    /// The hot path: one datagram of a driver session, received at `rx_ms`. A datagram that
    /// does not decode is counted (`malformed`) and dropped.
    pub fn handle_datagram(&self, driver: DriverId, bytes: &[u8], rx_ms: u64) {
        match decode_driver_datagram(bytes) {
            Ok(fixes) => {
                self.core
                    .lock()
                    .handle_fixes(driver, Transport::Quic, &fixes, None, rx_ms, None);
            }
            Err(e) => {
                self.metrics.rejected(RejectReason::Malformed).inc();
                debug!(driver_id = %driver, error = %e, len = bytes.len(), "malformed datagram dropped");
            }
        }
    }

    /// Fixes that came without a per-request answer (the control stream's `Fixes` frame).
    pub fn submit(&self, driver: DriverId, transport: Transport, fixes: &[Fix], rx_ms: u64) {
        self.core
            .lock()
            .handle_fixes(driver, transport, fixes, None, rx_ms, None);
    }

    /// Fixes of one HTTP request and the filter's verdict on each; `deliveries` are those the
    /// request named (`None`: route like the driver's session, or by the fallback key).
    pub fn submit_and_answer(
        &self,
        driver: DriverId,
        transport: Transport,
        fixes: &[Fix],
        deliveries: Option<&[DeliveryId]>,
        rx_ms: u64,
    ) -> IngestResult {
        let mut result = IngestResult::default();
        self.core.lock().handle_fixes(
            driver,
            transport,
            fixes,
            deliveries,
            rx_ms,
            Some(&mut result),
        );
        result
    }

    pub fn session_started(&self, driver: DriverId, session_id: u64) {
        self.core.lock().session_started(driver, session_id);
    }

    pub fn on_duty(&self, driver: DriverId, session_id: u64, deliveries: Vec<DeliveryId>) {
        self.core.lock().on_duty(driver, session_id, deliveries);
    }

    pub fn session_ended(&self, driver: DriverId, session_id: u64) {
        self.core.lock().session_ended(driver, session_id);
    }

    /// See [`IngestCore::reroute`].
    pub fn reroute(&self, queue: &BatchQueue, departed: Option<(&str, &[String])>) {
        self.core
            .lock()
            .reroute(queue, departed, nodekit::unix_ms());
    }
}

/// The batcher shared by the ingest paths (which fill it) and the uplink (which drains it on
/// failure and refills it on reconnect), plus the queue of batches to the hub.
#[derive(Debug)]
pub struct BatchQueue {
    inner: Mutex<(Batcher, u64)>,
    tx: mpsc::Sender<Vec<RoutedFix>>,
    metrics: Arc<EdgeMetrics>,
    /// Batches written to the hub link and not acknowledged yet (set by the uplink).
    unacked: AtomicU64,
    /// Woken when the batcher starts waiting for a flush deadline (see [`spawn_flusher`]).
    flush: Arc<Notify>,
}

impl BatchQueue {
    /// `flush` is the flusher's wake-up ([`Flush::notify`]).
    pub fn new(
        batcher: Batcher,
        tx: mpsc::Sender<Vec<RoutedFix>>,
        metrics: Arc<EdgeMetrics>,
        flush: Arc<Notify>,
    ) -> Self {
        Self {
            inner: Mutex::new((batcher, 0)),
            tx,
            metrics,
            unacked: AtomicU64::new(0),
            flush,
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
    /// it back into the batcher's newest-per-driver set), reports newly shed fixes and wakes
    /// the flusher when a flush deadline appeared.
    pub fn with<F>(&self, now_ms: u64, f: F)
    where
        F: FnOnce(&mut Batcher) -> Option<Vec<RoutedFix>>,
    {
        let mut guard = self.inner.lock();
        let (batcher, reported) = &mut *guard;
        let had_deadline = batcher.next_deadline().is_some();
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
        if !had_deadline && batcher.next_deadline().is_some() {
            self.flush.notify_one();
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
        if batcher.next_deadline().is_some() {
            self.flush.notify_one();
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

/// The flusher's wake-up, shared by every [`BatchQueue`].
pub type Flush = Notify;

/// Sends every batch whose oldest fix waited `flush_interval_ms`, and forgets idle drivers
/// every minute, until `shutdown`. Sleeps while no batcher waits for a deadline.
pub fn spawn_flusher(
    ingest: Ingest,
    flush: Arc<Flush>,
    mut routes_rx: watch::Receiver<Arc<Routes>>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut evict = tokio::time::interval(EVICT_EVERY);
        evict.tick().await;
        loop {
            let routes = routes_rx.borrow_and_update().clone();
            let now_ms = nodekit::unix_ms();
            for q in &routes.active {
                q.with(now_ms, |b| b.poll(now_ms));
            }
            let next = routes.active.iter().filter_map(|q| q.next_deadline()).min();
            let sleep_ms = next.map(|d| d.saturating_sub(nodekit::unix_ms()));
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = flush.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(sleep_ms.unwrap_or(0))), if sleep_ms.is_some() => {}
                r = routes_rx.changed() => if r.is_err() { break },
                _ = evict.tick() => {
                    let n = ingest.with_core(|c| c.evict_idle(nodekit::unix_ms()));
                    if n > 0 {
                        debug!(evicted = n, "forgot idle drivers");
                    }
                }
            }
        }
        info!("flusher stopped");
    })
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
    fn hub_queue(
        metrics: &Arc<EdgeMetrics>,
        flush: &Arc<Flush>,
    ) -> (Arc<BatchQueue>, mpsc::Receiver<Vec<RoutedFix>>) {
        let (tx, rx) = mpsc::channel(16);
        let q = Arc::new(BatchQueue::new(
            Batcher::new(CFG),
            tx,
            metrics.clone(),
            flush.clone(),
        ));
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
        let flush = Arc::new(Flush::new());
        let (orphan_tx, _orphan_rx) = mpsc::channel(1);
        let orphans = Arc::new(BatchQueue::new(
            Batcher::new(CFG),
            orphan_tx,
            metrics.clone(),
            flush.clone(),
        ));
        let (routes_tx, routes_rx) = watch::channel(Arc::new(Routes::empty(orphans.clone())));
        let ingest = Ingest::new(IngestCore::new(
            FilterConfig::default(),
            nodekit::Clock::real(),
            routes_rx.clone(),
            metrics.clone(),
        ));
        let shutdown = CancellationToken::new();
        let task = spawn_flusher(ingest.clone(), flush.clone(), routes_rx, shutdown.clone());
        // No hub yet: the fix waits among the orphans.
        let driver = DriverId(5);
        let first = fix_now(1);
        let r =
            ingest.submit_and_answer(driver, Transport::Https, &[first], None, nodekit::unix_ms());
        assert_eq!(r.accepted, 1);
        assert!(!orphans.is_empty());

        // Two hubs appear; the orphan goes to the owner of the fallback key (the driver id).
        let ids = ["hub-a", "hub-b"];
        let (qa, mut rxa) = hub_queue(&metrics, &flush);
        let (qb, mut rxb) = hub_queue(&metrics, &flush);
        let routes = Routes {
            placeable: vec![
                HubRoute::new("hub-a", qa.clone(), metrics.routed("hub-a")),
                HubRoute::new("hub-b", qb.clone(), metrics.routed("hub-b")),
            ],
            active: vec![qa, qb],
            orphans: orphans.clone(),
        };
        routes_tx.send_replace(Arc::new(routes));
        ingest.reroute(&orphans, None);
        let owner = cluster::placement::owner(DeliveryId(driver.0), &ids).expect("owner");
        let (mine, other) = if *owner == "hub-a" {
            (&mut rxa, &mut rxb)
        } else {
            (&mut rxb, &mut rxa)
        };
        assert_eq!(next_batch(mine).await[0].fix, first);
        assert!(orphans.is_empty());
        assert_eq!(metrics.reroutes().get(), 1);

        // On duty for one delivery of each hub: the next fix goes to both, flushed by time.
        let d_a = (0..)
            .map(DeliveryId)
            .find(|d| cluster::placement::owner(*d, &ids) == Some(&"hub-a"))
            .expect("delivery of hub-a");
        let d_b = (0..)
            .map(DeliveryId)
            .find(|d| cluster::placement::owner(*d, &ids) == Some(&"hub-b"))
            .expect("delivery of hub-b");
        ingest.session_started(driver, 1);
        ingest.on_duty(driver, 1, vec![d_a, d_b]);
        let second = fix_now(2);
        ingest.handle_datagram(
            driver,
            &protocol::wire::encode_fix_datagram(&second),
            nodekit::unix_ms(),
        );
        assert_eq!(next_batch(mine).await[0].fix, second);
        assert_eq!(next_batch(other).await[0].fix, second);
        assert_eq!(metrics.received(Transport::Quic).get(), 1);

        // The session ends: its deliveries are forgotten, the driver's id places it again.
        ingest.session_ended(driver, 1);
        let third = fix_now(3);
        ingest.submit(driver, Transport::Quic, &[third], nodekit::unix_ms());
        assert_eq!(next_batch(mine).await[0].fix, third);
        shutdown.cancel();
        task.await.expect("flusher stops");
    }

    #[test]
    fn a_malformed_datagram_is_counted_and_nothing_is_routed() {
        let metrics = Arc::new(EdgeMetrics::unregistered());
        let flush = Arc::new(Flush::new());
        let (tx, _rx) = mpsc::channel(1);
        let orphans = Arc::new(BatchQueue::new(
            Batcher::new(CFG),
            tx,
            metrics.clone(),
            flush,
        ));
        let (_routes_tx, routes_rx) = watch::channel(Arc::new(Routes::empty(orphans.clone())));
        let ingest = Ingest::new(IngestCore::new(
            FilterConfig::default(),
            nodekit::Clock::real(),
            routes_rx,
            metrics.clone(),
        ));
        ingest.handle_datagram(DriverId(1), &[1, 1, 0xff], nodekit::unix_ms());
        assert_eq!(metrics.rejected(RejectReason::Malformed).get(), 1);
        assert!(orphans.is_empty());
        assert_eq!(ingest.with_core(|c| c.tracked_drivers()), 0);
    }
}
