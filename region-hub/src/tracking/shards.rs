//! The hub's live delivery state, split into shards by delivery id.
//!
//! A shard holds its deliveries' sans-IO state ([`Deliveries`]) and their consumers
//! ([`Fanout`]) behind its own lock, so fixes for different shards are applied in parallel (one
//! worker per shard) and a request about one delivery waits only for its shard. This module is
//! the only one that takes those locks; callers get operations. Nothing here awaits, and the
//! durable log is reached only through the `submit` closures callers pass in, which queue and
//! never wait (so that, under the shard's lock, queue order is log order per delivery).
//!
//! Two things are shared by every shard:
//! - the speed model, read-only while a batch of fixes is handled; what the batch taught is
//!   applied afterwards (`roadnet::SpeedSample`) under a short write lock that a worker never
//!   waits for: while another shard reads the model, the samples stay with the shard until
//!   its next batch;
//! - the routing index from a driver to the shards holding its active deliveries, kept up to
//!   date from each shard's own index ([`Deliveries::drain_routing_changes`]) and read once per
//!   batch of fixes to split it.

use crate::tracking::deliveries::{
    CoreError, Deliveries, DeliveryRecord, FixOutcome, LogEntry, RecoveredDelivery, SideRecord,
    StatusOutcome,
};
use crate::tracking::eta::{EtaStats, StoredPlan};
use crate::tracking::fanout::{DatagramOut, Fanout, Published, Subscription};
use parking_lot::{Mutex, MutexGuard, RwLock};
use protocol::api::{ChangeStatus, CreateDelivery};
use protocol::consumer::{ConsumerFrame, Position, Snapshot, StatusEvent};
use protocol::status::DeliveryStatus;
use protocol::wire::RoutedFix;
use protocol::{DeliveryId, DriverId};
use roadnet::speed::SpeedRow;
use roadnet::{SpeedModel, SpeedSample};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// Most shards a hub can have (the routing index keeps a bit per shard).
pub const MAX_SHARDS: usize = 64;

/// Live data of the speed model is pruned after this many applied samples.
const PRUNE_EVERY_SAMPLES: u64 = 50_000;

/// Speed samples a shard keeps while the shared model is busy, before it waits for it.
const MAX_UNLEARNT: usize = 4_096;

struct Shard {
    core: Deliveries,
    fanout: Fanout,
    /// Speed samples learnt here and not yet in the shared model (it was busy).
    unlearnt: Vec<SpeedSample>,
}

/// The fixes of one batch that concern one shard.
#[derive(Debug, Default)]
pub struct ShardBatch {
    /// The fixes, in arrival order, each with whether this shard learns speeds from it (every
    /// fix teaches the speed model once, in exactly one shard).
    pub fixes: Vec<(RoutedFix, bool)>,
}

/// A batch split by shard.
#[derive(Debug)]
pub struct Routed {
    /// One entry per shard; empty batches need no work.
    pub batches: Vec<ShardBatch>,
    /// Fixes no shard holds an active delivery for.
    pub unmatched: u64,
}

/// What applying fixes to a shard produced, for the caller to act on outside the lock.
#[derive(Debug, Default)]
pub struct FixEffects {
    /// Every accepted position (for the breadcrumb history).
    pub positions: Vec<Position>,
    /// Consumers cut off because their reliable queue was full.
    pub overflowed: usize,
    /// Positions sent straight to consumers as datagrams.
    pub datagrams_sent: u64,
    /// Geofence status changes the log refused to queue (they were rolled back).
    pub refused_status_changes: Vec<(DeliveryId, String)>,
    /// Anomalies the log refused to queue.
    pub refused_anomalies: usize,
}

/// A reserved status change, or a replay of an earlier one with the same idempotency key.
#[derive(Debug)]
pub enum Reserved<R, E> {
    /// The key was used before: its event, and whether it is durable yet.
    Replayed { event: StatusEvent, committed: bool },
    /// The event was reserved and handed to `submit`, which answered this.
    Appended(LogEntry, Result<R, E>),
}

/// What a committed entry changed, for the caller's side effects.
#[derive(Debug, Default)]
pub struct Committed {
    /// The delivery's displayed ETA when the entry was committed, seconds.
    pub eta_s: Option<f64>,
    /// Consumers cut off because their reliable queue was full.
    pub overflowed: usize,
}

/// The sharded state.
pub struct Shards {
    shards: Box<[Mutex<Shard>]>,
    /// Driver -> bit set of the shards holding its active deliveries.
    routing: RwLock<HashMap<DriverId, u64>>,
    speeds: RwLock<SpeedModel>,
    /// Samples applied since the live data was last pruned.
    applied_samples: AtomicU64,
    /// Next id for a delivery created without one.
    next_id: AtomicU64,
}

impl std::fmt::Debug for Shards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shards")
            .field("shards", &self.shards.len())
            .finish_non_exhaustive()
    }
}

impl Shards {
    /// `count` shards (1 to [`MAX_SHARDS`]), each with a core made by `core` and a consumer
    /// registry whose queues hold `consumer_queue` frames; `speeds` is the shared speed model.
    pub fn new(
        count: usize,
        core: impl Fn() -> Deliveries,
        consumer_queue: usize,
        speeds: SpeedModel,
    ) -> Self {
        let count = count.clamp(1, MAX_SHARDS);
        Self {
            shards: (0..count)
                .map(|_| {
                    Mutex::new(Shard {
                        core: core(),
                        fanout: Fanout::new(consumer_queue),
                        unlearnt: Vec::new(),
                    })
                })
                .collect(),
            routing: RwLock::new(HashMap::new()),
            speeds: RwLock::new(speeds),
            applied_samples: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
        }
    }

    /// Number of shards.
    pub fn count(&self) -> usize {
        self.shards.len()
    }

    /// The shard of a delivery (ids are mixed first: sequential and random ids both spread).
    pub fn shard_of(&self, id: DeliveryId) -> usize {
        let h = id.0.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        ((h >> 32) % self.shards.len() as u64) as usize
    }

    fn lock(&self, id: DeliveryId) -> MutexGuard<'_, Shard> {
        self.shards[self.shard_of(id)].lock()
    }

    /// Brings the routing index up to date with what shard `k` changed (call under its lock).
    fn sync_routing(&self, k: usize, shard: &mut Shard) {
        let bit = 1u64 << k;
        let mut routing = None;
        shard.core.drain_routing_changes(|driver, present| {
            let r = routing.get_or_insert_with(|| self.routing.write());
            if present {
                *r.entry(driver).or_insert(0) |= bit;
            } else if let Some(mask) = r.get_mut(&driver) {
                *mask &= !bit;
                if *mask == 0 {
                    r.remove(&driver);
                }
            }
        });
    }

    /// Runs `f` on `id`'s shard and keeps the routing index in step with what it changed.
    fn with<T>(&self, id: DeliveryId, f: impl FnOnce(&mut Shard) -> T) -> T {
        let k = self.shard_of(id);
        let mut shard = self.shards[k].lock();
        let out = f(&mut shard);
        self.sync_routing(k, &mut shard);
        out
    }

    // ---- reservations (two-phase: reserve and queue under the lock, commit or abort later)

    /// Validates a new delivery, reserves its first events and queues them with `submit`; a
    /// refused submit rolls the reservation back. Without an id in `req`, one is chosen.
    pub fn create<R, E>(
        &self,
        now_ms: u64,
        req: &CreateDelivery,
        submit: impl FnOnce(&LogEntry) -> Result<R, E>,
    ) -> Result<(LogEntry, Result<R, E>), CoreError> {
        let mut req = req.clone();
        let id = match req.delivery_id {
            Some(id) => id,
            None => loop {
                let id = DeliveryId(self.next_id.fetch_add(1, Ordering::Relaxed));
                if !self.lock(id).core.contains(id) {
                    break id;
                }
            },
        };
        self.next_id
            .fetch_max(id.0.saturating_add(1), Ordering::Relaxed);
        req.delivery_id = Some(id);
        self.with(id, |shard| {
            let entry = shard.core.create(now_ms, &req)?;
            let queued = submit(&entry).inspect_err(|_| shard.core.abort(&entry));
            Ok((entry, queued))
        })
    }

    /// Validates a status change against the latest (possibly not yet durable) status,
    /// reserves the next event (with `side` records in the same entry) and queues it.
    pub fn change_status<R, E>(
        &self,
        now_ms: u64,
        id: DeliveryId,
        req: &ChangeStatus,
        source: &str,
        side: Vec<SideRecord>,
        submit: impl FnOnce(&LogEntry) -> Result<R, E>,
    ) -> Result<Reserved<R, E>, CoreError> {
        self.with(id, |shard| {
            match shard.core.change_status(now_ms, id, req, source)? {
                StatusOutcome::Replayed { event, committed } => {
                    Ok(Reserved::Replayed { event, committed })
                }
                StatusOutcome::Append(mut entry) => {
                    entry.side = side;
                    let queued = submit(&entry).inspect_err(|_| shard.core.abort(&entry));
                    Ok(Reserved::Appended(entry, queued))
                }
            }
        })
    }

    /// Queues an entry without a status event for a delivery that is held (`None` when not).
    pub fn submit_side<R>(
        &self,
        now_ms: u64,
        entry: LogEntry,
        submit: impl FnOnce(LogEntry) -> R,
    ) -> Option<R> {
        let shard = self.lock(entry.delivery_id);
        shard.core.snapshot(entry.delivery_id, now_ms)?;
        Some(submit(entry))
    }

    /// Marks an entry durable and pushes its events to the delivery's consumers.
    pub fn commit(&self, entry: &LogEntry) -> Committed {
        self.with(entry.delivery_id, |shard| {
            shard.core.commit(entry);
            let mut out = Committed::default();
            if entry.events.iter().any(|e| e.status.is_milestone()) {
                out.eta_s = entry.events.last().and_then(|ev| {
                    shard
                        .core
                        .snapshot(entry.delivery_id, ev.ts_ms)
                        .and_then(|s| s.eta)
                        .map(|e| e.eta_s)
                });
            }
            for ev in &entry.events {
                out.overflowed += shard
                    .fanout
                    .publish_reliable(entry.delivery_id, &ConsumerFrame::Status(ev.clone()))
                    .overflowed;
            }
            out
        })
    }

    /// Rolls back a reserved entry whose append failed (abort a batch's entries newest first).
    pub fn abort(&self, entry: &LogEntry) {
        if entry.events.is_empty() {
            return;
        }
        self.with(entry.delivery_id, |shard| shard.core.abort(entry));
    }

    /// Forgets a delivery (another hub serves it) and cuts its consumers off.
    pub fn unload(&self, id: DeliveryId) -> bool {
        self.with(id, |shard| {
            shard.fanout.remove_delivery(id);
            shard.core.unload(id)
        })
    }

    /// Puts a delivery read from the log into its shard (replacing what it held); consumers
    /// already watching an older copy get the events it lacked.
    pub fn restore(&self, now_ms: u64, rec: RecoveredDelivery) -> Published {
        let id = rec.record.id;
        self.next_id
            .fetch_max(id.0.saturating_add(1), Ordering::Relaxed);
        self.with(id, |shard| {
            let newer: Vec<StatusEvent> = match shard.core.committed_seq(id) {
                Some(seq) => rec
                    .events
                    .iter()
                    .filter(|e| e.event_seq > seq)
                    .cloned()
                    .collect(),
                None => Vec::new(),
            };
            shard.core.restore(now_ms, rec);
            let mut out = Published::default();
            for ev in newer {
                let p = shard
                    .fanout
                    .publish_reliable(id, &ConsumerFrame::Status(ev));
                out.delivered += p.delivered;
                out.overflowed += p.overflowed;
            }
            out
        })
    }

    /// Puts back a delivery's route plan read from redb.
    pub fn restore_plan(&self, id: DeliveryId, plan: StoredPlan) {
        self.lock(id).core.restore_plan(id, plan);
    }

    // ---- the fix path

    /// Splits a batch from an edge by shard: each fix goes to every shard holding an active
    /// delivery of its driver, and teaches the speed model in one of them (the first, or
    /// the driver's own shard when none holds it).
    pub fn route(&self, fixes: &[RoutedFix]) -> Routed {
        let n = self.shards.len();
        let mut out = Routed {
            batches: (0..n).map(|_| ShardBatch::default()).collect(),
            unmatched: 0,
        };
        let routing = self.routing.read();
        for fix in fixes {
            let mut mask = routing.get(&fix.driver_id).copied().unwrap_or(0);
            if mask == 0 {
                out.unmatched += 1;
                let k = (fix.driver_id.0 % n as u64) as usize;
                out.batches[k].fixes.push((*fix, true));
                continue;
            }
            let mut learn = true;
            while mask != 0 {
                let k = mask.trailing_zeros() as usize;
                mask &= mask - 1;
                if let Some(b) = out.batches.get_mut(k) {
                    b.fixes.push((*fix, learn));
                    learn = false;
                }
            }
        }
        out
    }

    /// Applies shard `k`'s part of a batch: positions and ETAs go to the consumers, geofence
    /// status changes and anomalies are queued with `submit` (rolled back when it refuses),
    /// and what the fixes taught goes to the shared speed model.
    pub fn apply_fixes<E: std::fmt::Display>(
        &self,
        k: usize,
        now_ms: u64,
        batch: &ShardBatch,
        mut submit: impl FnMut(LogEntry) -> Result<(), E>,
        effects: &mut FixEffects,
    ) {
        let Some(lock) = self.shards.get(k) else {
            return;
        };
        let mut shard = lock.lock();
        let speeds = self.speeds.read();
        for (fix, learn) in &batch.fixes {
            let out = shard.core.handle_fix(now_ms, fix, &speeds, *learn);
            self.publish_fix(&mut shard, out, &mut submit, effects);
        }
        drop(speeds);
        self.sync_routing(k, &mut shard);
        let Shard { core, unlearnt, .. } = &mut *shard;
        unlearnt.extend(core.eta_model_mut().take_samples());
        self.learn(unlearnt, now_ms);
    }

    fn publish_fix<E: std::fmt::Display>(
        &self,
        shard: &mut Shard,
        out: FixOutcome,
        submit: &mut impl FnMut(LogEntry) -> Result<(), E>,
        effects: &mut FixEffects,
    ) {
        for u in out.updates {
            let pushed = shard.fanout.publish_position(&u.position);
            effects.datagrams_sent += pushed.datagrams as u64;
            if let Some(eta) = u.eta {
                effects.overflowed += shard
                    .fanout
                    .publish_reliable(eta.delivery_id, &ConsumerFrame::Eta(eta))
                    .overflowed;
            }
            effects.positions.push(u.position);
        }
        // Geofence events and anomalies take the durable path without waiting for it: the
        // log's writer publishes them after the commit.
        let mut refused = None;
        for (i, entry) in out.status_changes.iter().enumerate() {
            if let Err(e) = submit(entry.clone()) {
                effects
                    .refused_status_changes
                    .push((entry.delivery_id, e.to_string()));
                refused = Some(i);
                break;
            }
        }
        if let Some(i) = refused {
            // Newest first, so each abort undoes the top reservation.
            for entry in out.status_changes[i..].iter().rev() {
                shard.core.abort(entry);
            }
        }
        for a in out.anomalies {
            let entry = LogEntry::side_only(a.delivery_id, vec![SideRecord::Anomaly(a)]);
            if submit(entry).is_err() {
                effects.refused_anomalies += 1;
            }
        }
    }

    /// Moves a shard's speed samples into the shared model, without waiting for it: while
    /// another shard holds it the samples stay with the shard for its next batch (a worker
    /// waiting here for another's batch to end would serialise the workers), unless
    /// [`MAX_UNLEARNT`] have piled up.
    fn learn(&self, samples: &mut Vec<SpeedSample>, now_ms: u64) {
        if samples.is_empty() {
            return;
        }
        let mut speeds = match self.speeds.try_write() {
            Some(w) => w,
            None if samples.len() < MAX_UNLEARNT => return,
            None => self.speeds.write(),
        };
        let before = self
            .applied_samples
            .fetch_add(samples.len() as u64, Ordering::Relaxed);
        speeds.apply(samples);
        if before / PRUNE_EVERY_SAMPLES != (before + samples.len() as u64) / PRUNE_EVERY_SAMPLES {
            speeds.prune_live(now_ms as f64 / 1000.0);
        }
        samples.clear();
    }

    // ---- periodic work

    /// Location-unavailable and countdown ETA frames for silent drivers, and expiry of idle
    /// deliveries; returns the consumers cut off by full queues and the expired ids.
    pub fn tick(&self, now_ms: u64) -> (usize, Vec<DeliveryId>) {
        let mut overflowed = 0;
        let mut expired = Vec::new();
        for k in 0..self.shards.len() {
            let mut shard = self.shards[k].lock();
            let Shard { core, fanout, .. } = &mut *shard;
            for frame in core.tick(now_ms) {
                let id = match &frame {
                    ConsumerFrame::LocationUnavailable { delivery_id, .. } => *delivery_id,
                    ConsumerFrame::Eta(e) => e.delivery_id,
                    _ => continue,
                };
                overflowed += fanout.publish_reliable(id, &frame).overflowed;
            }
            for id in core.expire(now_ms) {
                fanout.remove_delivery(id);
                expired.push(id);
            }
            self.sync_routing(k, &mut shard);
        }
        (overflowed, expired)
    }

    /// Plans made or changed and the ETA counters, from every shard, since the last call.
    pub fn take_eta_work(&self) -> (Vec<(DeliveryId, StoredPlan)>, EtaStats) {
        let mut plans = Vec::new();
        let mut stats = EtaStats::default();
        for lock in self.shards.iter() {
            let mut shard = lock.lock();
            let m = shard.core.eta_model_mut();
            plans.extend(m.take_dirty_plans());
            let s = m.take_stats();
            stats.plans += s.plans;
            stats.reroutes += s.reroutes;
            stats.route_failures += s.route_failures;
            stats.route_seconds.extend(s.route_seconds);
        }
        (plans, stats)
    }

    /// The learnt historical speed table.
    pub fn export_speeds(&self) -> Vec<SpeedRow> {
        self.speeds.read().export_historical()
    }

    // ---- reads

    /// A consumer's view of a durable delivery.
    pub fn snapshot(&self, id: DeliveryId, now_ms: u64) -> Option<Snapshot> {
        self.lock(id).core.snapshot(id, now_ms)
    }

    /// A durable delivery's record and current status.
    pub fn record(&self, id: DeliveryId, now_ms: u64) -> Option<(DeliveryRecord, DeliveryStatus)> {
        let shard = self.lock(id);
        let status = shard.core.snapshot(id, now_ms)?.status;
        Some((shard.core.record(id)?.clone(), status))
    }

    /// Deliveries held in memory, over all shards.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().core.len()).sum()
    }

    /// True when no shard holds a delivery.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Snapshots of every durable delivery held (only open ones unless `all`), by id.
    pub fn snapshots(&self, now_ms: u64, all: bool) -> Vec<Snapshot> {
        let mut v = Vec::new();
        for lock in self.shards.iter() {
            let shard = lock.lock();
            v.extend(
                shard
                    .core
                    .ids()
                    .filter_map(|id| shard.core.snapshot(id, now_ms))
                    .filter(|s| all || !s.status.is_terminal()),
            );
        }
        v.sort_by_key(|s| s.delivery_id);
        v
    }

    // ---- consumers

    /// Subscribes a consumer: snapshot and subscription are taken atomically, so every event
    /// after the snapshot arrives live and every event before it can be read from the log.
    pub fn open(
        &self,
        id: DeliveryId,
        now_ms: u64,
        transport: &'static str,
        datagrams: Option<std::sync::Arc<dyn DatagramOut>>,
    ) -> Option<(Snapshot, Subscription)> {
        let mut shard = self.lock(id);
        let snapshot = shard.core.snapshot(id, now_ms)?;
        Some((snapshot, shard.fanout.subscribe(id, transport, datagrams)))
    }

    /// Removes a consumer whose session ended.
    pub fn unsubscribe(&self, id: DeliveryId, sub_id: u64) {
        self.lock(id).fanout.unsubscribe(id, sub_id);
    }

    /// Tells every consumer of `id` to go to the URL `url` gives for its transport.
    pub fn publish_redirect(&self, id: DeliveryId, url: impl Fn(&'static str) -> String) {
        self.lock(id).fanout.publish_redirect(id, url);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracking::deliveries::CoreConfig;
    use protocol::geo::LatLng;
    use protocol::wire::Fix;

    const PICKUP: LatLng = LatLng::new(60.170, 24.940);
    const DROPOFF: LatLng = LatLng::new(60.175, 24.950);
    const T0: u64 = 1_764_000_000_000;

    fn shards(n: usize) -> Shards {
        Shards::new(
            n,
            || Deliveries::new(CoreConfig::default()),
            8,
            SpeedModel::default(),
        )
    }

    fn ok(_: &LogEntry) -> Result<(), String> {
        Ok(())
    }

    fn create(s: &Shards, driver: u64) -> DeliveryId {
        let req = CreateDelivery {
            delivery_id: None,
            pickup: PICKUP,
            dropoff: DROPOFF,
            driver_id: Some(DriverId(driver)),
        };
        let (entry, queued) = s.create(T0, &req, ok).expect("created");
        queued.expect("queued");
        s.commit(&entry);
        entry.delivery_id
    }

    fn fix(driver: u64, ts_ms: u64, speed_mps: f64) -> RoutedFix {
        RoutedFix {
            driver_id: DriverId(driver),
            fix: Fix::from_units(1, ts_ms, PICKUP.lat, PICKUP.lng, 0.0, speed_mps, 5.0),
            edge_rx_ms: ts_ms,
        }
    }

    #[test]
    fn a_worker_does_not_wait_for_the_speed_model_and_keeps_what_it_learnt_until_it_is_free() {
        let s = shards(2);
        let cell = roadnet::cell_of(PICKUP).expect("cell");
        let sample = SpeedSample::Historical {
            cell,
            hour_of_week: 10,
            speed_mps: 9.0,
        };
        let mut pending = vec![sample; 3];
        {
            // Another worker is reading the model: the samples stay with the shard.
            let _reader = s.speeds.read();
            s.learn(&mut pending, T0);
            assert_eq!(pending.len(), 3);
        }
        assert!(s.export_speeds().is_empty());
        // Free again: they are applied, with the next ones.
        pending.push(sample);
        s.learn(&mut pending, T0);
        assert!(pending.is_empty());
        let rows = s.export_speeds();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].3, 4, "all four samples counted once");
    }

    #[test]
    fn a_drivers_fixes_go_to_the_shards_of_its_deliveries_and_teach_once() {
        let s = shards(4);
        // Deliveries of driver 7 until two shards hold one each.
        let mut ids = Vec::new();
        while {
            ids.push(create(&s, 7));
            let mut k: Vec<usize> = ids.iter().map(|id| s.shard_of(*id)).collect();
            k.sort_unstable();
            k.dedup();
            k.len() < 2
        } {}
        let held: u64 = ids
            .iter()
            .map(|id| 1u64 << s.shard_of(*id))
            .fold(0, |a, b| a | b);
        let routed = s.route(&[fix(7, T0, 5.0), fix(8, T0, 5.0)]);
        assert_eq!(routed.unmatched, 1, "driver 8 has no delivery");
        let mut learners = 0;
        for (k, b) in routed.batches.iter().enumerate() {
            let sevens: Vec<bool> = b
                .fixes
                .iter()
                .filter(|(f, _)| f.driver_id == DriverId(7))
                .map(|(_, l)| *l)
                .collect();
            assert_eq!(!sevens.is_empty(), held & (1 << k) != 0, "shard {k}");
            learners += sevens.iter().filter(|l| **l).count();
        }
        assert_eq!(learners, 1, "a fix teaches the speed model once");
        let eights: usize = routed
            .batches
            .iter()
            .map(|b| {
                b.fixes
                    .iter()
                    .filter(|(f, l)| f.driver_id == DriverId(8) && *l)
                    .count()
            })
            .sum();
        assert_eq!(eights, 1, "an unmatched fix still teaches, once");
    }

    #[test]
    fn a_delivered_delivery_stops_routing_its_drivers_fixes() {
        let s = shards(3);
        let id = create(&s, 9);
        assert_eq!(s.route(&[fix(9, T0, 1.0)]).unmatched, 0);
        for status in [
            DeliveryStatus::PickedUp,
            DeliveryStatus::EnRoute,
            DeliveryStatus::Delivered,
        ] {
            let req = ChangeStatus {
                status,
                idempotency_key: None,
                driver_id: None,
                metadata: serde_json::Value::Null,
            };
            match s.change_status(T0, id, &req, "api", Vec::new(), ok) {
                Ok(Reserved::Appended(entry, Ok(()))) => {
                    s.commit(&entry);
                }
                other => panic!("{status}: {other:?}"),
            }
        }
        assert_eq!(s.route(&[fix(9, T0, 1.0)]).unmatched, 1);
    }

    #[test]
    fn applying_fixes_pushes_positions_and_learns_speeds_into_the_shared_model() {
        let s = shards(2);
        let id = create(&s, 3);
        let (_, mut sub) = s.open(id, T0, "websocket", None).expect("open");
        let routed = s.route(&[fix(3, T0 + 1_000, 8.0)]);
        let mut effects = FixEffects::default();
        for (k, b) in routed.batches.iter().enumerate() {
            s.apply_fixes(k, T0 + 1_000, b, |_| Ok::<(), String>(()), &mut effects);
        }
        assert_eq!(effects.positions.len(), 1);
        assert!(sub.position.take().is_some(), "the position is waiting");
        assert_eq!(s.export_speeds().len(), 1, "one (cell, hour) learnt");
        assert!(sub.reliable.try_recv().is_ok(), "the first ETA frame");
    }

    #[test]
    fn a_refused_creation_is_rolled_back_and_ids_are_not_reused() {
        let s = shards(2);
        let req = CreateDelivery {
            delivery_id: None,
            pickup: PICKUP,
            dropoff: DROPOFF,
            driver_id: None,
        };
        let (entry, queued) = s.create(T0, &req, |_| Err::<(), _>("full")).expect("valid");
        assert!(queued.is_err());
        assert!(s.snapshot(entry.delivery_id, T0).is_none());
        assert_eq!(s.len(), 0);
        let other = create(&s, 1);
        assert_ne!(other, entry.delivery_id);
    }
}
