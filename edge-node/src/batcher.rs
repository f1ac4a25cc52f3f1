//! Sans-IO batching of accepted fixes towards the hub, collapsing to the newest fix per driver
//! while the hub cannot take them.
//!
//! While the hub link is up, fixes collect in arrival order and leave as a batch when the
//! batch is full or its oldest fix has waited `flush_interval_ms`. While it is down (or a batch
//! could not be queued), fixes go to a *kept* map holding only the newest fix of each driver,
//! bounded in size; everything replaced or refused there is counted as shed.

use protocol::wire::RoutedFix;
use protocol::DriverId;
use std::collections::HashMap;

/// Batching limits (a subset of [`crate::config::BatchConfig`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatcherConfig {
    pub flush_interval_ms: u64,
    pub max_batch_fixes: usize,
    /// Most drivers whose newest fix is kept while the hub is down.
    pub max_kept_drivers: usize,
}

impl From<&crate::config::BatchConfig> for BatcherConfig {
    fn from(b: &crate::config::BatchConfig) -> Self {
        Self {
            flush_interval_ms: b.flush_interval_ms,
            max_batch_fixes: b.max_batch_fixes,
            max_kept_drivers: b.queue_capacity,
        }
    }
}

/// Collects [`RoutedFix`]es into batches (sans-IO: time comes in as `now_ms`).
#[derive(Debug)]
pub struct Batcher {
    cfg: BatcherConfig,
    hub_up: bool,
    pending: Vec<RoutedFix>,
    /// Newest fix per driver not yet sent; older than anything in `pending` for that driver.
    kept: HashMap<DriverId, RoutedFix>,
    /// Edge time the oldest unsent fix (pending or kept) arrived; `None` when empty.
    oldest_ms: Option<u64>,
    shed: u64,
}

impl Batcher {
    /// A batcher that starts with the hub down (nothing is connected yet).
    pub fn new(cfg: BatcherConfig) -> Self {
        Self {
            cfg,
            hub_up: false,
            pending: Vec::new(),
            kept: HashMap::new(),
            oldest_ms: None,
            shed: 0,
        }
    }

    pub fn is_hub_up(&self) -> bool {
        self.hub_up
    }

    /// Fixes waiting (pending plus kept).
    pub fn len(&self) -> usize {
        self.pending.len() + self.kept.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fixes dropped so far because a newer fix of the same driver replaced them, or because
    /// the kept map was full.
    pub fn shed_total(&self) -> u64 {
        self.shed
    }

    /// Adds an accepted fix; returns a batch when this fix filled one.
    pub fn push(&mut self, fix: RoutedFix, now_ms: u64) -> Option<Vec<RoutedFix>> {
        if !self.hub_up {
            self.keep(fix);
            return None;
        }
        self.oldest_ms.get_or_insert(now_ms);
        self.pending.push(fix);
        if self.pending.len() + self.kept.len() >= self.cfg.max_batch_fixes {
            return self.take();
        }
        None
    }

    /// Returns a batch when the oldest waiting fix is `flush_interval_ms` old and the hub is up.
    pub fn poll(&mut self, now_ms: u64) -> Option<Vec<RoutedFix>> {
        match self.next_deadline() {
            Some(d) if d <= now_ms => self.take(),
            _ => None,
        }
    }

    /// When [`poll`](Self::poll) will next return a batch (edge ms), if anything is waiting
    /// and the hub is up.
    pub fn next_deadline(&self) -> Option<u64> {
        if !self.hub_up {
            return None;
        }
        self.oldest_ms.map(|t| t + self.cfg.flush_interval_ms)
    }

    /// The hub link went down: pending fixes collapse to the newest per driver.
    pub fn handle_hub_down(&mut self) {
        self.hub_up = false;
        let pending = std::mem::take(&mut self.pending);
        for f in pending {
            self.keep(f);
        }
    }

    /// The hub link is up again: returns what was kept (one fix per driver) to send first.
    pub fn handle_hub_up(&mut self) -> Option<Vec<RoutedFix>> {
        self.hub_up = true;
        self.take()
    }

    /// A batch could not be delivered or queued: its fixes join the kept set (newest per
    /// driver wins) and leave with the next flush.
    pub fn requeue(&mut self, batch: Vec<RoutedFix>, now_ms: u64) {
        if batch.is_empty() {
            return;
        }
        // The requeued fixes are older than anything pending: fold pending in after them so
        // the newest-per-driver rule still holds.
        let pending = std::mem::take(&mut self.pending);
        for f in batch.into_iter().chain(pending) {
            self.keep(f);
        }
        self.oldest_ms.get_or_insert(now_ms);
    }

    /// Everything waiting (kept and pending), whatever the hub's state: the hub left and its
    /// fixes go to another hub.
    pub fn take_all(&mut self) -> Vec<RoutedFix> {
        self.take().unwrap_or_default()
    }

    fn keep(&mut self, fix: RoutedFix) {
        let len = self.kept.len();
        match self.kept.entry(fix.driver_id) {
            std::collections::hash_map::Entry::Occupied(mut e) => {
                self.shed += 1;
                if is_newer(&fix, e.get()) {
                    e.insert(fix);
                }
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                if len >= self.cfg.max_kept_drivers {
                    self.shed += 1;
                } else {
                    e.insert(fix);
                }
            }
        }
    }

    fn take(&mut self) -> Option<Vec<RoutedFix>> {
        self.oldest_ms = None;
        if self.kept.is_empty() && self.pending.is_empty() {
            return None;
        }
        let mut out: Vec<RoutedFix> = self.kept.drain().map(|(_, f)| f).collect();
        out.sort_by_key(|f| f.edge_rx_ms);
        out.append(&mut self.pending);
        Some(out)
    }
}

/// Newest by the driver's timestamp, then by sequence number, then by arrival.
fn is_newer(a: &RoutedFix, b: &RoutedFix) -> bool {
    (a.fix.ts_ms, a.fix.seq, a.edge_rx_ms) >= (b.fix.ts_ms, b.fix.seq, b.edge_rx_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::wire::Fix;

    fn cfg() -> BatcherConfig {
        BatcherConfig {
            flush_interval_ms: 20,
            max_batch_fixes: 4,
            max_kept_drivers: 3,
        }
    }

    fn rf(driver: u64, seq: u32, rx: u64) -> RoutedFix {
        RoutedFix {
            driver_id: DriverId(driver),
            fix: Fix::from_units(seq, 1_000 + u64::from(seq), 60.0, 25.0, 0.0, 1.0, 3.0),
            edge_rx_ms: rx,
        }
    }

    fn up() -> Batcher {
        let mut b = Batcher::new(cfg());
        assert_eq!(b.handle_hub_up(), None);
        b
    }

    #[test]
    fn flushes_when_the_oldest_fix_is_20_ms_old() {
        let mut b = up();
        assert_eq!(b.push(rf(1, 1, 100), 100), None);
        assert_eq!(b.push(rf(2, 1, 110), 110), None);
        assert_eq!(b.next_deadline(), Some(120));
        assert_eq!(b.poll(119), None);
        let batch = b.poll(120).expect("due");
        assert_eq!(batch, vec![rf(1, 1, 100), rf(2, 1, 110)]);
        assert_eq!(b.next_deadline(), None);
        assert_eq!(b.poll(1_000), None);
    }

    #[test]
    fn flushes_immediately_when_the_batch_is_full() {
        let mut b = up();
        for i in 1..4 {
            assert_eq!(b.push(rf(1, i, 100), 100), None);
        }
        assert_eq!(b.push(rf(1, 4, 101), 101).map(|v| v.len()), Some(4));
        assert!(b.is_empty());
    }

    #[test]
    fn keeps_only_the_newest_fix_per_driver_while_the_hub_is_down() {
        let mut b = Batcher::new(cfg());
        for seq in 1..=5 {
            assert_eq!(b.push(rf(1, seq, u64::from(seq)), 0), None);
            assert_eq!(b.push(rf(2, seq, u64::from(seq)), 0), None);
        }
        assert_eq!(b.poll(10_000), None, "nothing leaves while down");
        assert_eq!(b.shed_total(), 8);
        let batch = b.handle_hub_up().expect("kept fixes");
        assert_eq!(batch.len(), 2);
        assert!(batch.iter().all(|f| f.fix.seq == 5));
    }

    #[test]
    fn going_down_collapses_pending_and_the_kept_set_is_bounded() {
        let mut b = up();
        b.push(rf(1, 1, 1), 1);
        b.push(rf(1, 2, 2), 2);
        b.handle_hub_down();
        assert_eq!(b.len(), 1);
        for d in 2..=5 {
            b.push(rf(d, 1, 3), 3);
        }
        assert_eq!(b.len(), 3, "bounded to 3 drivers");
        assert_eq!(b.shed_total(), 1 + 2);
    }

    #[test]
    fn a_requeued_batch_never_overrides_a_newer_pending_fix() {
        let mut b = up();
        b.push(rf(1, 3, 30), 30);
        b.requeue(vec![rf(1, 1, 10), rf(1, 2, 20), rf(2, 1, 20)], 31);
        let batch = b.poll(50).expect("due");
        let mine: Vec<u32> = batch
            .iter()
            .filter(|f| f.driver_id == DriverId(1))
            .map(|f| f.fix.seq)
            .collect();
        assert_eq!(mine, vec![3]);
        assert_eq!(batch.len(), 2);
    }
}
