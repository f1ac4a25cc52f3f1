//! Sans-IO delivery state: records, status machine with idempotency, live positions and a simple ETA.
//!
//! Nothing here touches a socket, a file or a clock. A status change is two-phase: the core
//! reserves the next event (`change_status` returns a [`LogEntry`]), the caller appends it to the
//! durable log and then calls [`Deliveries::commit`] (or [`Deliveries::abort`] on failure). Only
//! committed events are visible in snapshots and pushed to consumers.
//!
//! What a delivery's fixes build up and must outlive the hub that holds it travels the same
//! way, as side records of log entries: the zone and anomaly state ([`TrackingState`], written
//! only when a zone change is believed or an anomaly reported; a zone change that gives
//! `picked_up` is stored in the same entry as that event) and the route plan (written when it is
//! made or re-routed). Both are replicated with the log and put back by [`Deliveries::restore`].

use crate::tracking::anomaly::{Anomaly, AnomalyConfig, AnomalyDetector, AnomalyInput, Target};
use crate::tracking::eta::{EtaConfig, EtaInput, EtaModel, EtaTracker, StoredPlan};
use crate::tracking::geofence::{Geofence, GeofenceConfig, GeofenceState, ZoneEvent};
use crate::tracking::proof::ProofRecord;
use protocol::api::{ChangeStatus, CreateDelivery};
use protocol::consumer::{ConsumerFrame, Eta, Position, Snapshot, StatusEvent};
use protocol::geo::LatLng;
use protocol::status::DeliveryStatus;
use protocol::wire::RoutedFix;
use protocol::{DeliveryId, DriverId};
use roadnet::SpeedModel;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use std::collections::{BTreeSet, HashMap};

/// Longest idempotency key accepted.
pub const MAX_IDEMPOTENCY_KEY: usize = 128;

/// Tuning of the core.
#[derive(Clone, Debug, PartialEq)]
pub struct CoreConfig {
    /// Live state is dropped this long after the last update (fix or status event).
    pub state_ttl_ms: u64,
    /// A delivery with no fix for this long is reported as location-unavailable.
    pub location_unavailable_after_ms: u64,
    /// The ETA model's tuning.
    pub eta: EtaConfig,
    /// Pickup and drop-off zones (status changes with source `geofence`).
    pub geofence: GeofenceConfig,
    /// Anomaly thresholds.
    pub anomaly: AnomalyConfig,
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self {
            state_ttl_ms: 7_200_000,
            location_unavailable_after_ms: 30_000,
            eta: EtaConfig::default(),
            geofence: GeofenceConfig::default(),
            anomaly: AnomalyConfig::default(),
        }
    }
}

/// What the order service said about a delivery; stored in the `deliveries` table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeliveryRecord {
    pub id: DeliveryId,
    pub pickup: LatLng,
    pub dropoff: LatLng,
    pub driver_id: Option<DriverId>,
    pub created_ms: u64,
}

/// One atomic append to the durable log: an optional new/updated record, events, the
/// idempotency key that produced them, and records stored in the same transaction.
#[derive(Clone, Debug, PartialEq)]
pub struct LogEntry {
    pub delivery_id: DeliveryId,
    pub record: Option<DeliveryRecord>,
    pub events: Vec<StatusEvent>,
    pub idempotency_key: Option<String>,
    pub side: Vec<SideRecord>,
    /// Which incarnation of the delivery in this hub's memory reserved the events (a new
    /// one on every creation or load): the writer fails, without replicating, entries that
    /// an incarnation reserved before a replica fenced it (`docs/cluster.md`, *Fencing*).
    /// Not stored or replicated.
    pub generation: u64,
}

/// Something stored with (or without) status events, in the same write transaction.
#[derive(Clone, Debug, PartialEq)]
pub enum SideRecord {
    /// A detected anomaly (own table, published to operators after the commit).
    Anomaly(Anomaly),
    /// Metadata of a photo proof of delivery (own table; the blob is already on disk).
    Proof(ProofRecord),
    /// A device that wants push notifications about the entry's delivery.
    Device(notify::DeviceToken),
    /// The delivery's zone and anomaly state after the fix that reserved the entry (own
    /// table, replicated; newest `version` wins).
    Tracking(TrackingState),
    /// The delivery's route plan, made or re-routed by the fix (table `plans`, replicated).
    Plan(StoredPlan),
}

/// What a delivery's fixes taught the geofences and the anomaly detector, stored with its log
/// whenever it changes in a way worth keeping, so a restart or a takeover resumes it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrackingState {
    /// +1 per change of this delivery's state (carried across takeovers): a stale copy never
    /// replaces a newer one.
    pub version: u64,
    pub geofence: GeofenceState,
    pub anomaly: AnomalyDetector,
}

impl LogEntry {
    /// An entry carrying only side records.
    pub fn side_only(delivery_id: DeliveryId, side: Vec<SideRecord>) -> Self {
        Self {
            delivery_id,
            record: None,
            events: Vec::new(),
            idempotency_key: None,
            side,
            generation: 0,
        }
    }
}

/// Why a request was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    #[error("delivery {0} not found")]
    NotFound(DeliveryId),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    BadRequest(String),
}

/// Result of a status change request.
#[derive(Clone, Debug, PartialEq)]
pub enum StatusOutcome {
    /// A new event to append; answer after the commit.
    Append(LogEntry),
    /// The idempotency key was seen before: this is the event it made.
    Replayed { event: StatusEvent, committed: bool },
}

/// What one fix changed for one delivery.
#[derive(Clone, Debug, PartialEq)]
pub struct FixUpdate {
    pub position: Position,
    /// Present when an ETA frame is due for consumers.
    pub eta: Option<Eta>,
}

/// Result of applying one fix.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FixOutcome {
    /// False when the driver has no active delivery.
    pub matched: bool,
    pub updates: Vec<FixUpdate>,
    /// Geofence status changes, reserved like API ones, then entries of side records only
    /// (zone/anomaly state, route plans): append each to the log in order, then
    /// [`Deliveries::commit`] or [`Deliveries::abort`] it.
    pub status_changes: Vec<LogEntry>,
    /// Anomalies revealed by the fix.
    pub anomalies: Vec<Anomaly>,
}

/// A delivery's recovered durable state (from the log at start).
#[derive(Clone, Debug, PartialEq)]
pub struct RecoveredDelivery {
    pub record: DeliveryRecord,
    /// Every event in seq order.
    pub events: Vec<StatusEvent>,
    /// Idempotency keys and the event seq each produced.
    pub idempotency: Vec<(String, u64)>,
    /// The newest stored zone and anomaly state (none before the first zone change).
    pub tracking: Option<TrackingState>,
    /// The stored route plan, if any.
    pub plan: Option<StoredPlan>,
}

#[derive(Clone, Debug)]
struct Pending {
    seq: u64,
    prev_status: DeliveryStatus,
    prev_driver: Option<DriverId>,
    key: Option<String>,
}

#[derive(Clone, Debug)]
struct DeliveryState {
    record: DeliveryRecord,
    /// Latest reserved status and seq (may not be durable yet).
    status: DeliveryStatus,
    event_seq: u64,
    committed_status: Option<DeliveryStatus>,
    committed_seq: u64,
    pending: Vec<Pending>,
    idempotency: HashMap<String, StatusEvent>,
    position: Option<Position>,
    position_seq: u64,
    last_fix_rx_ms: u64,
    last_update_ms: u64,
    eta: EtaTracker,
    unavailable_reported: bool,
    geofence: Geofence,
    anomalies: AnomalyDetector,
    /// Version of the newest [`TrackingState`] reserved for the log.
    tracking_version: u64,
    /// The zone state last made durable: what an aborted entry rolls the geofence back to.
    committed_geofence: GeofenceState,
    /// See [`LogEntry::generation`].
    generation: u64,
}

impl DeliveryState {
    fn active_driver(&self) -> Option<DriverId> {
        if self.status.is_terminal() {
            None
        } else {
            self.record.driver_id
        }
    }
}

/// The hub's live view of every delivery.
#[derive(Debug, Default)]
pub struct Deliveries {
    config: CoreConfig,
    by_id: HashMap<DeliveryId, DeliveryState>,
    by_driver: HashMap<DriverId, BTreeSet<DeliveryId>>,
    next_id: u64,
    /// Source of `DeliveryState::generation`.
    next_generation: u64,
    /// Road graph and learning shared by every delivery's ETA.
    eta: EtaModel,
    /// Drivers that gained (`true`) or lost (`false`) their last active delivery here, in
    /// order, since [`Deliveries::drain_routing_changes`] (a hub in shards routes fixes by it).
    routing: Vec<(DriverId, bool)>,
}

impl Deliveries {
    pub fn new(config: CoreConfig) -> Self {
        Self {
            eta: EtaModel::new(None),
            config,
            by_id: HashMap::new(),
            by_driver: HashMap::new(),
            next_id: 1,
            next_generation: 1,
            routing: Vec::new(),
        }
    }

    /// Hands `f` each driver that gained (`true`) or lost (`false`) its last active delivery
    /// here since the last call, in order.
    pub fn drain_routing_changes(&mut self, mut f: impl FnMut(DriverId, bool)) {
        for (d, present) in self.routing.drain(..) {
            f(d, present);
        }
    }

    /// Whether `id` is held (durable or still being created).
    pub fn contains(&self, id: DeliveryId) -> bool {
        self.by_id.contains_key(&id)
    }

    /// The ETA's shared road graph and speed model.
    pub fn eta_model(&self) -> &EtaModel {
        &self.eta
    }

    /// The ETA's shared road graph and speed model (set the graph, import speeds, drain plans).
    pub fn eta_model_mut(&mut self) -> &mut EtaModel {
        &mut self.eta
    }

    /// Puts back a delivery's route plan read from redb after a restart.
    pub fn restore_plan(&mut self, id: DeliveryId, plan: StoredPlan) {
        if let Some(st) = self.by_id.get_mut(&id) {
            st.eta.restore_plan(&self.config.eta, plan);
        }
    }

    fn bump_generation(&mut self) -> u64 {
        let g = self.next_generation;
        self.next_generation += 1;
        g
    }

    /// Forgets a delivery (another hub serves it; its log stays). Entries it reserved and
    /// not yet committed fail in the writer. Returns whether it was held.
    pub fn unload(&mut self, id: DeliveryId) -> bool {
        match self.by_id.remove(&id) {
            Some(st) => {
                self.unindex(id, st.active_driver());
                true
            }
            None => false,
        }
    }

    /// The delivery's newest committed event seq, if held.
    pub fn committed_seq(&self, id: DeliveryId) -> Option<u64> {
        self.by_id.get(&id).map(|s| s.committed_seq)
    }

    /// Number of deliveries held in memory.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Restores a delivery from the log; the current status is the last event's. Its zone and
    /// anomaly state and its route plan are put back when the log holds them.
    pub fn restore(&mut self, now_ms: u64, rec: RecoveredDelivery) {
        let id = rec.record.id;
        let tracking = rec.tracking.unwrap_or_default();
        self.next_id = self.next_id.max(id.0.saturating_add(1));
        let last = rec.events.last();
        let status = last.map(|e| e.status).unwrap_or(DeliveryStatus::Confirmed);
        let seq = last.map(|e| e.event_seq).unwrap_or(0);
        let last_update_ms = last
            .map(|e| e.ts_ms)
            .unwrap_or(rec.record.created_ms)
            .max(rec.record.created_ms);
        let idempotency = rec
            .idempotency
            .into_iter()
            .filter_map(|(k, s)| {
                rec.events
                    .iter()
                    .find(|e| e.event_seq == s)
                    .map(|e| (k, e.clone()))
            })
            .collect();
        let mut state = DeliveryState {
            record: rec.record,
            status,
            event_seq: seq,
            committed_status: Some(status),
            committed_seq: seq,
            pending: Vec::new(),
            idempotency,
            position: None,
            position_seq: 0,
            last_fix_rx_ms: 0,
            last_update_ms: last_update_ms.min(now_ms),
            eta: EtaTracker::default(),
            unavailable_reported: false,
            geofence: Geofence::from_state(tracking.geofence),
            anomalies: AnomalyDetector::from_state(tracking.anomaly),
            tracking_version: tracking.version,
            committed_geofence: tracking.geofence,
            generation: self.bump_generation(),
        };
        if let Some(plan) = rec.plan {
            state.eta.restore_plan(&self.config.eta, plan);
        }
        if let Some(old) = self.by_id.insert(id, state) {
            self.unindex(id, old.active_driver());
        }
        let driver = self.by_id.get(&id).and_then(DeliveryState::active_driver);
        self.index(id, driver);
    }

    /// Validates a new delivery and reserves its record and first events (`confirmed`, plus
    /// `driver_assigned` when a driver is given).
    pub fn create(&mut self, now_ms: u64, req: &CreateDelivery) -> Result<LogEntry, CoreError> {
        for (name, p) in [("pickup", req.pickup), ("dropoff", req.dropoff)] {
            if !p.is_valid() {
                return Err(CoreError::BadRequest(format!(
                    "{name} {},{} is not a valid position",
                    p.lat, p.lng
                )));
            }
        }
        let id = match req.delivery_id {
            Some(id) if self.by_id.contains_key(&id) => {
                return Err(CoreError::Conflict(format!("delivery {id} already exists")));
            }
            Some(id) => id,
            None => {
                while self.by_id.contains_key(&DeliveryId(self.next_id)) {
                    self.next_id += 1;
                }
                DeliveryId(self.next_id)
            }
        };
        self.next_id = self.next_id.max(id.0.saturating_add(1));
        let record = DeliveryRecord {
            id,
            pickup: req.pickup,
            dropoff: req.dropoff,
            driver_id: req.driver_id,
            created_ms: now_ms,
        };
        let mut events = vec![event(
            id,
            1,
            DeliveryStatus::Confirmed,
            now_ms,
            "api",
            serde_json::Value::Null,
        )];
        if req.driver_id.is_some() {
            events.push(event(
                id,
                2,
                DeliveryStatus::DriverAssigned,
                now_ms,
                "api",
                serde_json::Value::Null,
            ));
        }
        let last = events.last().cloned();
        let (status, seq) = last
            .map(|e| (e.status, e.event_seq))
            .unwrap_or((DeliveryStatus::Confirmed, 1));
        let state = DeliveryState {
            record: record.clone(),
            status,
            event_seq: seq,
            committed_status: None,
            committed_seq: 0,
            pending: events
                .iter()
                .map(|e| Pending {
                    seq: e.event_seq,
                    prev_status: DeliveryStatus::Confirmed,
                    prev_driver: None,
                    key: None,
                })
                .collect(),
            idempotency: HashMap::new(),
            position: None,
            position_seq: 0,
            last_fix_rx_ms: 0,
            last_update_ms: now_ms,
            eta: EtaTracker::default(),
            unavailable_reported: false,
            geofence: Geofence::default(),
            anomalies: AnomalyDetector::default(),
            tracking_version: 0,
            committed_geofence: GeofenceState::default(),
            generation: self.bump_generation(),
        };
        self.by_id.insert(id, state);
        self.index(id, req.driver_id);
        let generation = self.by_id[&id].generation;
        Ok(LogEntry {
            delivery_id: id,
            record: Some(record),
            events,
            idempotency_key: None,
            side: Vec::new(),
            generation,
        })
    }

    /// Validates a status change against the latest (possibly not yet durable) status and
    /// reserves the next event.
    pub fn change_status(
        &mut self,
        now_ms: u64,
        id: DeliveryId,
        req: &ChangeStatus,
        source: &str,
    ) -> Result<StatusOutcome, CoreError> {
        let st = self.by_id.get(&id).ok_or(CoreError::NotFound(id))?;
        if st.committed_status.is_none() {
            return Err(CoreError::NotFound(id));
        }
        if let Some(key) = &req.idempotency_key {
            if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY {
                return Err(CoreError::BadRequest(format!(
                    "idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY} bytes long"
                )));
            }
            if let Some(ev) = st.idempotency.get(key) {
                return Ok(StatusOutcome::Replayed {
                    event: ev.clone(),
                    committed: ev.event_seq <= st.committed_seq,
                });
            }
        }
        st.status
            .check_transition(req.status)
            .map_err(|e| CoreError::Conflict(e.to_string()))?;
        let new_driver = match (req.status, req.driver_id, st.record.driver_id) {
            (DeliveryStatus::DriverAssigned, Some(d), _) => Some(d),
            (DeliveryStatus::DriverAssigned, None, None) => {
                return Err(CoreError::BadRequest(
                    "driver_assigned needs a driver_id".into(),
                ));
            }
            (_, Some(d), Some(cur)) if d != cur => {
                return Err(CoreError::BadRequest(format!(
                    "driver_id {d} given with {} but delivery {id} is assigned to driver {cur}",
                    req.status
                )));
            }
            (_, _, cur) => cur,
        };
        let old_active = st.active_driver();
        let prev_status = st.status;
        let prev_driver = st.record.driver_id;
        let seq = st.event_seq + 1;
        let ev = event(id, seq, req.status, now_ms, source, req.metadata.clone());
        let record_changed = new_driver != prev_driver;
        let st = self.by_id.get_mut(&id).ok_or(CoreError::NotFound(id))?;
        st.status = req.status;
        st.event_seq = seq;
        st.record.driver_id = new_driver;
        st.pending.push(Pending {
            seq,
            prev_status,
            prev_driver,
            key: req.idempotency_key.clone(),
        });
        if let Some(key) = &req.idempotency_key {
            st.idempotency.insert(key.clone(), ev.clone());
        }
        let record = record_changed.then(|| st.record.clone());
        let generation = st.generation;
        let new_active = st.active_driver();
        self.unindex(id, old_active);
        self.index(id, new_active);
        Ok(StatusOutcome::Append(LogEntry {
            delivery_id: id,
            record,
            events: vec![ev],
            idempotency_key: req.idempotency_key.clone(),
            side: Vec::new(),
            generation,
        }))
    }

    /// Marks an appended entry durable; its events become visible to snapshots.
    pub fn commit(&mut self, entry: &LogEntry) {
        let Some(st) = self.by_id.get_mut(&entry.delivery_id) else {
            return;
        };
        for side in &entry.side {
            if let SideRecord::Tracking(t) = side {
                st.committed_geofence = t.geofence;
            }
        }
        for ev in &entry.events {
            if ev.event_seq > st.committed_seq {
                st.committed_seq = ev.event_seq;
                st.committed_status = Some(ev.status);
                st.last_update_ms = st.last_update_ms.max(ev.ts_ms);
            }
            st.pending.retain(|p| p.seq != ev.event_seq);
        }
    }

    /// Undoes a reserved entry whose append failed (entries of one failed batch must be aborted
    /// newest first).
    pub fn abort(&mut self, entry: &LogEntry) {
        let id = entry.delivery_id;
        let Some(st) = self.by_id.get_mut(&id) else {
            return;
        };
        if entry
            .side
            .iter()
            .any(|s| matches!(s, SideRecord::Tracking(_)))
        {
            // The zone change was not stored: believe the stored state again, so the next
            // fixes see the change (and reserve its events) afresh.
            st.geofence = Geofence::from_state(st.committed_geofence);
        }
        if entry.events.is_empty() {
            return; // side records only: no status to roll back
        }
        if st.committed_status.is_none() {
            // A creation that never became durable: forget the delivery.
            if let Some(old) = self.by_id.remove(&id) {
                self.unindex(id, old.active_driver());
            }
            return;
        }
        let old_active = st.active_driver();
        for ev in entry.events.iter().rev() {
            if st.event_seq != ev.event_seq {
                continue; // a later event was reserved on top; it fails with the same batch
            }
            if let Some(pos) = st.pending.iter().position(|p| p.seq == ev.event_seq) {
                let p = st.pending.remove(pos);
                st.status = p.prev_status;
                st.record.driver_id = p.prev_driver;
                st.event_seq = ev.event_seq - 1;
                if let Some(k) = p.key {
                    st.idempotency.remove(&k);
                }
            }
        }
        let new_active = st.active_driver();
        self.unindex(id, old_active);
        self.index(id, new_active);
    }

    /// Applies a fix to every active delivery of its driver held here, reading expected speeds
    /// from `speeds`. With `learn`, the fix also teaches the speed model (whether or not it
    /// matches a delivery; a hub in shards has one shard learn from each fix): the samples wait
    /// in [`EtaModel::take_samples`].
    pub fn handle_fix(
        &mut self,
        now_ms: u64,
        fix: &RoutedFix,
        speeds: &SpeedModel,
        learn: bool,
    ) -> FixOutcome {
        if learn {
            self.eta.observe_fix(&self.config.eta, &fix.fix);
        }
        let Some(ids) = self.by_driver.get(&fix.driver_id) else {
            return FixOutcome::default();
        };
        let mut out = FixOutcome {
            matched: !ids.is_empty(),
            ..FixOutcome::default()
        };
        // Most drivers carry one delivery: no allocation per fix for them.
        let ids: SmallVec<[DeliveryId; 4]> = ids.iter().copied().collect();
        let f = fix.fix;
        let here = f.position();
        if !here.is_valid() {
            return out;
        }
        for id in ids {
            let Some(st) = self.by_id.get_mut(&id) else {
                continue;
            };
            if st.position.as_ref().is_some_and(|p| p.ts_ms >= f.ts_ms) {
                continue; // older than what consumers already have: newest wins
            }
            st.position_seq += 1;
            let position = Position {
                delivery_id: id,
                seq: st.position_seq,
                lat: f.lat(),
                lng: f.lng(),
                heading_deg: f.heading_deg(),
                speed_mps: f.speed_mps(),
                accuracy_m: f.accuracy_m(),
                ts_ms: f.ts_ms,
            };
            st.position = Some(position.clone());
            st.last_fix_rx_ms = now_ms;
            st.last_update_ms = now_ms;
            st.unavailable_reported = false;
            let eta = st.eta.handle_fix(
                &self.config.eta,
                &mut self.eta,
                speeds,
                now_ms,
                &EtaInput {
                    delivery_id: id,
                    status: st.status,
                    pickup: st.record.pickup,
                    dropoff: st.record.dropoff,
                    here,
                    fix_ts_ms: f.ts_ms,
                    speed_mps: f.speed_mps(),
                },
            );
            out.updates.push(FixUpdate { position, eta });
            let zones_before = st.geofence.state();
            let anomalies_before = out.anomalies.len();
            let target = if matches!(
                st.status,
                DeliveryStatus::Confirmed
                    | DeliveryStatus::Preparing
                    | DeliveryStatus::DriverAssigned
            ) {
                Target::Pickup
            } else {
                Target::Dropoff
            };
            out.anomalies.extend(st.anomalies.handle_fix(
                &self.config.anomaly,
                &AnomalyInput {
                    delivery_id: id,
                    here,
                    ts_ms: f.ts_ms,
                    pickup: st.record.pickup,
                    dropoff: st.record.dropoff,
                    target,
                },
            ));
            let zones = st.geofence.handle_fix(
                &self.config.geofence,
                st.record.pickup,
                st.record.dropoff,
                here,
                f.accuracy_m(),
            );
            let changed =
                st.geofence.state() != zones_before || out.anomalies.len() > anomalies_before;
            let first_change = out.status_changes.len();
            for zone in zones {
                self.geofence_status(now_ms, id, zone, &mut out.status_changes);
            }
            if changed {
                self.reserve_tracking(id, &mut out.status_changes, first_change);
            }
        }
        // Plans made or re-routed by this fix go to the log too (replicated with it).
        for (id, plan) in self.eta.take_dirty_plans() {
            let generation = self.by_id.get(&id).map_or(0, |st| st.generation);
            out.status_changes.push(LogEntry {
                generation,
                ..LogEntry::side_only(id, vec![SideRecord::Plan(plan)])
            });
        }
        out
    }

    /// Adds the delivery's new [`TrackingState`] to the log: in the first entry the fix
    /// reserved for it (from `first`), so a zone exit is durable with its `picked_up`, or in
    /// an entry of its own.
    fn reserve_tracking(&mut self, id: DeliveryId, entries: &mut Vec<LogEntry>, first: usize) {
        let Some(st) = self.by_id.get_mut(&id) else {
            return;
        };
        st.tracking_version += 1;
        let side = SideRecord::Tracking(TrackingState {
            version: st.tracking_version,
            geofence: st.geofence.state(),
            anomaly: st.anomalies.state(),
        });
        match entries.get_mut(first..).and_then(|e| e.first_mut()) {
            Some(e) => e.side.push(side),
            None => entries.push(LogEntry {
                generation: st.generation,
                ..LogEntry::side_only(id, vec![side])
            }),
        }
    }

    /// Reserves the status events a zone change implies, where the status machine allows them:
    /// leaving the pickup -> `picked_up` (unless already past it) then `en_route`; entering the
    /// drop-off -> `arriving`.
    fn geofence_status(
        &mut self,
        now_ms: u64,
        id: DeliveryId,
        zone: ZoneEvent,
        out: &mut Vec<LogEntry>,
    ) {
        let (statuses, metadata): (&[DeliveryStatus], _) = match zone {
            ZoneEvent::LeftPickup { distance_m } => (
                &[DeliveryStatus::PickedUp, DeliveryStatus::EnRoute],
                serde_json::json!({"zone": "pickup", "transition": "exit", "distance_m": distance_m.round()}),
            ),
            ZoneEvent::EnteredDropoff { distance_m } => (
                &[DeliveryStatus::Arriving],
                serde_json::json!({"zone": "dropoff", "transition": "enter", "distance_m": distance_m.round()}),
            ),
        };
        for &status in statuses {
            let allowed = self
                .by_id
                .get(&id)
                .is_some_and(|st| st.status.check_transition(status).is_ok());
            if !allowed {
                continue;
            }
            let req = ChangeStatus {
                status,
                idempotency_key: None,
                driver_id: None,
                metadata: metadata.clone(),
            };
            if let Ok(StatusOutcome::Append(entry)) =
                self.change_status(now_ms, id, &req, "geofence")
            {
                out.push(entry);
            }
        }
    }

    /// A consumer's view of a durable delivery.
    pub fn snapshot(&self, id: DeliveryId, now_ms: u64) -> Option<Snapshot> {
        let st = self.by_id.get(&id)?;
        let status = st.committed_status?;
        Some(Snapshot {
            delivery_id: id,
            status,
            last_event_seq: st.committed_seq,
            pickup: st.record.pickup,
            dropoff: st.record.dropoff,
            position: st.position.clone(),
            eta: st.eta.current(),
            position_age_s: st
                .position
                .as_ref()
                .map(|p| now_ms.saturating_sub(p.ts_ms) as f64 / 1000.0),
            server_time_ms: now_ms,
        })
    }

    /// Reports deliveries whose driver went silent (once per outage) and, while they stay
    /// silent, keeps pushing ETA frames that count down from the last estimate.
    pub fn tick(&mut self, now_ms: u64) -> Vec<ConsumerFrame> {
        let mut out = Vec::new();
        for (id, st) in &mut self.by_id {
            let Some(p) = &st.position else { continue };
            if st.status.is_terminal() {
                continue;
            }
            let silent_ms = now_ms.saturating_sub(st.last_fix_rx_ms);
            if silent_ms <= self.config.location_unavailable_after_ms {
                continue;
            }
            if !st.unavailable_reported {
                st.unavailable_reported = true;
                out.push(ConsumerFrame::LocationUnavailable {
                    delivery_id: *id,
                    last_ts_ms: p.ts_ms,
                    age_s: now_ms.saturating_sub(p.ts_ms) as f64 / 1000.0,
                });
            }
            if let Some(eta) = st.eta.handle_silence(&self.config.eta, now_ms) {
                out.push(ConsumerFrame::Eta(eta));
            }
        }
        out
    }

    /// Drops deliveries not updated for the state TTL; returns their ids. Deliveries with
    /// events still being committed are kept.
    pub fn expire(&mut self, now_ms: u64) -> Vec<DeliveryId> {
        let ttl = self.config.state_ttl_ms;
        let gone: Vec<DeliveryId> = self
            .by_id
            .iter()
            .filter(|(_, st)| {
                st.pending.is_empty() && now_ms.saturating_sub(st.last_update_ms) >= ttl
            })
            .map(|(id, _)| *id)
            .collect();
        for id in &gone {
            if let Some(st) = self.by_id.remove(id) {
                self.unindex(*id, st.active_driver());
            }
        }
        gone
    }

    /// Ids of every delivery held (the operator view lists them).
    pub fn ids(&self) -> impl Iterator<Item = DeliveryId> + '_ {
        self.by_id.keys().copied()
    }

    /// The delivery's durable record, if held.
    pub fn record(&self, id: DeliveryId) -> Option<&DeliveryRecord> {
        self.by_id.get(&id).map(|s| &s.record)
    }

    fn index(&mut self, id: DeliveryId, driver: Option<DriverId>) {
        if let Some(d) = driver {
            let set = self.by_driver.entry(d).or_default();
            if set.is_empty() {
                self.routing.push((d, true));
            }
            set.insert(id);
        }
    }

    fn unindex(&mut self, id: DeliveryId, driver: Option<DriverId>) {
        if let Some(d) = driver {
            if let Some(set) = self.by_driver.get_mut(&d) {
                set.remove(&id);
                if set.is_empty() {
                    self.by_driver.remove(&d);
                    self.routing.push((d, false));
                }
            }
        }
    }
}

fn event(
    id: DeliveryId,
    seq: u64,
    status: DeliveryStatus,
    ts_ms: u64,
    source: &str,
    metadata: serde_json::Value,
) -> StatusEvent {
    StatusEvent {
        delivery_id: id,
        event_seq: seq,
        status,
        ts_ms,
        source: source.to_owned(),
        metadata,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::geo::{destination, haversine_m};
    use protocol::wire::Fix;
    use std::sync::Arc;
    use DeliveryStatus::*;

    const PICKUP: LatLng = LatLng::new(60.170, 24.940);
    const DROPOFF: LatLng = LatLng::new(60.175, 24.950);
    const T0: u64 = 1_764_000_000_000;

    fn core() -> Deliveries {
        Deliveries::new(CoreConfig::default())
    }

    fn create(c: &mut Deliveries, driver: Option<u64>) -> DeliveryId {
        let e = c
            .create(
                T0,
                &CreateDelivery {
                    delivery_id: None,
                    pickup: PICKUP,
                    dropoff: DROPOFF,
                    driver_id: driver.map(DriverId),
                },
            )
            .expect("create");
        c.commit(&e);
        e.delivery_id
    }

    fn change(status: DeliveryStatus, key: Option<&str>) -> ChangeStatus {
        ChangeStatus {
            status,
            idempotency_key: key.map(str::to_owned),
            driver_id: None,
            metadata: serde_json::Value::Null,
        }
    }

    fn append(o: StatusOutcome) -> LogEntry {
        match o {
            StatusOutcome::Append(e) => e,
            other => panic!("expected append, got {other:?}"),
        }
    }

    fn handle(c: &mut Deliveries, now_ms: u64, fix: &RoutedFix) -> FixOutcome {
        c.handle_fix(now_ms, fix, &SpeedModel::default(), true)
    }

    fn fix(driver: u64, ts_ms: u64, at: LatLng) -> RoutedFix {
        RoutedFix {
            driver_id: DriverId(driver),
            fix: Fix::from_units(1, ts_ms, at.lat, at.lng, 90.0, 8.0, 5.0),
            edge_rx_ms: ts_ms,
        }
    }

    #[test]
    fn creating_with_a_driver_logs_confirmed_then_driver_assigned() {
        let mut c = core();
        let e = c
            .create(
                T0,
                &CreateDelivery {
                    delivery_id: Some(DeliveryId(7)),
                    pickup: PICKUP,
                    dropoff: DROPOFF,
                    driver_id: Some(DriverId(3)),
                },
            )
            .expect("create");
        assert_eq!(
            e.events
                .iter()
                .map(|e| (e.event_seq, e.status))
                .collect::<Vec<_>>(),
            vec![(1, Confirmed), (2, DriverAssigned)]
        );
        assert!(
            c.snapshot(DeliveryId(7), T0).is_none(),
            "not visible before the commit"
        );
        c.commit(&e);
        let s = c.snapshot(DeliveryId(7), T0).expect("snapshot");
        assert_eq!((s.status, s.last_event_seq), (DriverAssigned, 2));
        let dup = CreateDelivery {
            delivery_id: Some(DeliveryId(7)),
            pickup: PICKUP,
            dropoff: DROPOFF,
            driver_id: None,
        };
        assert!(matches!(c.create(T0, &dup), Err(CoreError::Conflict(_))));
    }

    #[test]
    fn refuses_transitions_the_status_machine_forbids_with_a_conflict() {
        let mut c = core();
        let id = create(&mut c, None);
        let err = c
            .change_status(T0, id, &change(Delivered, None), "api")
            .expect_err("refused");
        assert_eq!(
            err,
            CoreError::Conflict("cannot move a delivery from confirmed to delivered".into())
        );
        assert_eq!(
            c.change_status(T0, DeliveryId(999), &change(Preparing, None), "api"),
            Err(CoreError::NotFound(DeliveryId(999)))
        );
    }

    #[test]
    fn status_is_visible_only_after_commit_and_rolls_back_on_abort() {
        let mut c = core();
        let id = create(&mut c, None);
        let e = append(
            c.change_status(T0 + 1, id, &change(Preparing, Some("k1")), "api")
                .expect("ok"),
        );
        assert_eq!(e.events[0].event_seq, 2);
        assert_eq!(c.snapshot(id, T0).expect("snap").status, Confirmed);
        c.abort(&e);
        assert_eq!(c.snapshot(id, T0).expect("snap").status, Confirmed);
        // The key was forgotten with the aborted event, and the seq is reused.
        let e = append(
            c.change_status(T0 + 2, id, &change(Preparing, Some("k1")), "api")
                .expect("ok"),
        );
        assert_eq!(e.events[0].event_seq, 2);
        c.commit(&e);
        assert_eq!(c.snapshot(id, T0).expect("snap").last_event_seq, 2);
    }

    #[test]
    fn the_same_idempotency_key_replays_the_first_event() {
        let mut c = core();
        let id = create(&mut c, None);
        let e = append(
            c.change_status(T0, id, &change(Preparing, Some("abc")), "api")
                .expect("ok"),
        );
        match c
            .change_status(T0, id, &change(Preparing, Some("abc")), "api")
            .expect("ok")
        {
            StatusOutcome::Replayed { event, committed } => {
                assert_eq!(event, e.events[0]);
                assert!(!committed);
            }
            other => panic!("{other:?}"),
        }
        c.commit(&e);
        // Even a request that would now be refused replays the recorded answer.
        assert!(matches!(
            c.change_status(T0, id, &change(Preparing, Some("abc")), "api"),
            Ok(StatusOutcome::Replayed {
                committed: true,
                ..
            })
        ));
    }

    #[test]
    fn fixes_reach_only_the_drivers_active_delivery_and_stop_after_delivery() {
        let mut c = core();
        let id = create(&mut c, Some(5));
        let _other = create(&mut c, Some(6));
        let out = handle(&mut c, T0 + 1000, &fix(5, T0 + 1000, PICKUP));
        assert!(out.matched);
        assert_eq!(out.updates.len(), 1);
        assert_eq!(out.updates[0].position.delivery_id, id);
        assert_eq!(out.updates[0].position.seq, 1);
        assert!(!handle(&mut c, T0, &fix(77, T0, PICKUP)).matched);
        for s in [PickedUp, Delivered] {
            let e = append(
                c.change_status(T0, id, &change(s, None), "api")
                    .expect("ok"),
            );
            c.commit(&e);
        }
        assert!(!handle(&mut c, T0 + 2000, &fix(5, T0 + 2000, PICKUP)).matched);
    }

    #[test]
    fn older_fixes_do_not_replace_newer_positions() {
        let mut c = core();
        let id = create(&mut c, Some(5));
        assert_eq!(
            handle(&mut c, T0, &fix(5, T0 + 2000, PICKUP)).updates.len(),
            1
        );
        let out = handle(&mut c, T0, &fix(5, T0 + 1000, DROPOFF));
        assert!(out.matched && out.updates.is_empty());
        assert_eq!(
            c.snapshot(id, T0 + 2000)
                .and_then(|s| s.position)
                .map(|p| p.seq),
            Some(1)
        );
    }

    #[test]
    fn eta_counts_the_pickup_leg_before_pickup_and_is_smoothed() {
        let mut c = core();
        let id = create(&mut c, Some(5));
        let out = handle(&mut c, T0, &fix(5, T0, PICKUP));
        let eta = out.updates[0].eta.clone().expect("first eta is pushed");
        let leg = haversine_m(PICKUP, DROPOFF);
        assert!((eta.remaining_m - leg).abs() < 1.0, "{eta:?}");
        assert!((eta.eta_s - leg / 8.0).abs() < 0.5);
        let e = append(
            c.change_status(T0, id, &change(PickedUp, None), "api")
                .expect("ok"),
        );
        c.commit(&e);
        // Jump to the drop-off one second later: raw ETA 0, smoothed keeps 70% of the carry.
        let out = handle(&mut c, T0 + 1000, &fix(5, T0 + 1000, DROPOFF));
        assert!(
            out.updates[0].eta.is_none(),
            "throttled to one push per 2 s"
        );
        let snap = c.snapshot(id, T0 + 1000).expect("snap").eta.expect("eta");
        let carried = leg / 8.0 - 1.0;
        assert!(
            (snap.eta_s - 0.7 * carried).abs() < 0.5,
            "{} vs {}",
            snap.eta_s,
            0.7 * carried
        );
        assert_eq!(snap.seq, 2);
        let out = handle(
            &mut c,
            T0 + 3000,
            &fix(5, T0 + 3000, destination(DROPOFF, 0.0, 1.0)),
        );
        assert!(out.updates[0].eta.is_some());
    }

    #[test]
    fn leaving_the_pickup_reserves_only_the_steps_the_status_machine_still_allows() {
        let mut c = core();
        let id = create(&mut c, Some(5));
        // The restaurant already marked it picked up through the API.
        let e = append(
            c.change_status(T0, id, &change(PickedUp, None), "api")
                .expect("ok"),
        );
        c.commit(&e);
        let mut reserved = Vec::new();
        for (i, m) in [20.0, 10.0, 120.0, 150.0, 300.0].iter().enumerate() {
            let ts = T0 + 1_000 * (i as u64 + 1);
            let out = handle(&mut c, ts, &fix(5, ts, destination(PICKUP, 200.0, *m)));
            // Entries of side records only (the zone state) are not status changes.
            reserved.extend(
                out.status_changes
                    .into_iter()
                    .filter(|e| !e.events.is_empty()),
            );
        }
        assert_eq!(
            reserved
                .iter()
                .flat_map(|e| &e.events)
                .map(|e| (e.event_seq, e.status, e.source.as_str()))
                .collect::<Vec<_>>(),
            vec![(4, EnRoute, "geofence")],
            "no second picked_up"
        );
        assert_eq!(reserved[0].events[0].metadata["zone"], "pickup");
        // Reserved, not yet durable: consumers still see picked_up until the commit.
        assert_eq!(c.snapshot(id, T0 + 6_000).expect("snap").status, PickedUp);
        c.commit(&reserved[0]);
        assert_eq!(c.snapshot(id, T0 + 6_000).expect("snap").status, EnRoute);
    }

    /// The zone state stored so far: what the log holds after committing `entries`.
    fn stored_tracking(entries: &[LogEntry]) -> Option<TrackingState> {
        entries
            .iter()
            .flat_map(|e| &e.side)
            .filter_map(|s| match s {
                SideRecord::Tracking(t) => Some(t.clone()),
                _ => None,
            })
            .max_by_key(|t| t.version)
    }

    /// A hub restarted on (or taking over) the log of `c`'s delivery `id`: the record, the
    /// committed events and the stored state.
    fn recovered(
        c: &Deliveries,
        id: DeliveryId,
        events: Vec<StatusEvent>,
        tracking: Option<TrackingState>,
    ) -> RecoveredDelivery {
        RecoveredDelivery {
            record: c.record(id).expect("held").clone(),
            events,
            idempotency: Vec::new(),
            tracking,
            plan: None,
        }
    }

    fn feed_metres(c: &mut Deliveries, t0: u64, metres: &[f64]) -> Vec<LogEntry> {
        let mut all = Vec::new();
        for (i, m) in metres.iter().enumerate() {
            let ts = t0 + 1_000 * (i as u64 + 1);
            let out = handle(c, ts, &fix(5, ts, destination(PICKUP, 200.0, *m)));
            for e in &out.status_changes {
                c.commit(e);
            }
            all.extend(out.status_changes);
        }
        all
    }

    fn statuses(entries: &[LogEntry]) -> Vec<DeliveryStatus> {
        entries
            .iter()
            .flat_map(|e| &e.events)
            .map(|e| e.status)
            .collect()
    }

    #[test]
    fn entering_the_pickup_zone_is_stored_and_a_restarted_core_still_gives_picked_up_once() {
        let mut c = core();
        let id = create(&mut c, Some(5));
        let base = vec![
            event(id, 1, Confirmed, T0, "api", serde_json::Value::Null),
            event(id, 2, DriverAssigned, T0, "api", serde_json::Value::Null),
        ];
        // Two fixes inside the pickup zone: no status event, one zone record.
        let entered = feed_metres(&mut c, T0, &[20.0, 10.0]);
        assert!(statuses(&entered).is_empty());
        let stored = stored_tracking(&entered).expect("the zone entry is logged");
        assert!(stored.geofence.pickup.inside && stored.version == 1);
        // Fixes that change no zone write nothing.
        assert!(feed_metres(&mut c, T0 + 2_000, &[15.0, 20.0]).is_empty());

        // The hub dies while the driver is inside; a new core restores from the log.
        let mut back = core();
        back.restore(T0 + 5_000, recovered(&c, id, base.clone(), Some(stored)));
        let left = feed_metres(&mut back, T0 + 5_000, &[150.0, 200.0, 300.0, 400.0]);
        assert_eq!(statuses(&left), vec![PickedUp, EnRoute]);
        // The zone exit is durable in the same entry as its picked_up.
        let exit = &left[0];
        assert_eq!(exit.events[0].status, PickedUp);
        let t = stored_tracking(std::slice::from_ref(exit)).expect("zone state with the event");
        assert!(!t.geofence.pickup.inside && t.geofence.pickup.was_inside);
        assert_eq!(t.version, 2, "versions continue after the restart");

        // Restarted again after the exit: no second picked_up, whatever the driver does.
        let mut events = base.clone();
        events.extend(left.iter().flat_map(|e| e.events.clone()));
        let mut again = core();
        again.restore(
            T0 + 10_000,
            recovered(&back, id, events, stored_tracking(&left)),
        );
        let more = feed_metres(&mut again, T0 + 10_000, &[20.0, 10.0, 200.0, 300.0]);
        assert!(statuses(&more).is_empty(), "{:?}", statuses(&more));

        // Without the stored zone state (how a restart used to be) the pickup is lost.
        let mut amnesic = core();
        amnesic.restore(T0 + 5_000, recovered(&c, id, base, None));
        let lost = feed_metres(&mut amnesic, T0 + 5_000, &[150.0, 200.0, 300.0, 400.0]);
        assert!(statuses(&lost).is_empty());
    }

    #[test]
    fn a_zone_exit_whose_entry_failed_is_seen_again_at_the_next_fixes() {
        let mut c = core();
        let id = create(&mut c, Some(5));
        feed_metres(&mut c, T0, &[20.0, 10.0]);
        let mut reserved = Vec::new();
        for (i, m) in [150.0, 200.0].iter().enumerate() {
            let ts = T0 + 10_000 + 1_000 * i as u64;
            reserved.extend(
                handle(&mut c, ts, &fix(5, ts, destination(PICKUP, 200.0, *m))).status_changes,
            );
        }
        assert_eq!(statuses(&reserved), vec![PickedUp, EnRoute]);
        for e in reserved.iter().rev() {
            c.abort(e);
        }
        assert_eq!(c.snapshot(id, T0).expect("snap").status, DriverAssigned);
        let retried = feed_metres(&mut c, T0 + 20_000, &[250.0, 300.0]);
        assert_eq!(statuses(&retried), vec![PickedUp, EnRoute]);
        assert_eq!(c.snapshot(id, T0).expect("snap").status, EnRoute);
    }

    #[test]
    fn a_reported_anomaly_is_stored_with_the_detector_state_and_not_reported_again_after_a_restart()
    {
        let mut c = core();
        let id = create(&mut c, Some(5));
        let spot = destination(PICKUP, 90.0, 2_000.0);
        let mut log = Vec::new();
        let mut found = 0;
        for i in 0..=31u64 {
            let ts = T0 + i * 10_000;
            let out = handle(&mut c, ts, &fix(5, ts, spot));
            found += out.anomalies.len();
            log.extend(out.status_changes);
        }
        assert!(found >= 1);
        let stored = stored_tracking(&log).expect("stored with the anomaly");
        let base = vec![
            event(id, 1, Confirmed, T0, "api", serde_json::Value::Null),
            event(id, 2, DriverAssigned, T0, "api", serde_json::Value::Null),
        ];
        let mut back = core();
        back.restore(T0 + 320_000, recovered(&c, id, base, Some(stored)));
        for i in 32..=80u64 {
            let ts = T0 + i * 10_000;
            let out = handle(&mut back, ts, &fix(5, ts, spot));
            assert!(
                out.anomalies.is_empty(),
                "reported again: {:?}",
                out.anomalies
            );
        }
    }

    #[test]
    fn a_plan_goes_to_the_log_and_a_core_given_it_follows_it_without_planning_again() {
        let graph = Arc::new(roadnet::RoadGraph::default_city().expect("embedded city"));
        let with_graph = || {
            let mut c = core();
            c.eta_model_mut().set_graph(graph.clone());
            c
        };
        let plans = |entries: &[LogEntry]| -> Vec<StoredPlan> {
            entries
                .iter()
                .flat_map(|e| &e.side)
                .filter_map(|s| match s {
                    SideRecord::Plan(p) => Some(p.clone()),
                    _ => None,
                })
                .collect()
        };
        let mut c = with_graph();
        let id = create(&mut c, Some(5));
        let start = destination(PICKUP, 200.0, 600.0);
        let out = handle(&mut c, T0, &fix(5, T0, start));
        let made = plans(&out.status_changes);
        assert_eq!(made.len(), 1, "planned at the first fix, and logged");
        assert_eq!(c.eta_model_mut().take_stats().plans, 1);
        assert!(
            c.eta_model_mut().take_dirty_plans().is_empty(),
            "handed to the log, not kept for the saver"
        );
        // The next owner (or a restart) gets the plan with the delivery.
        let on_route = made[0].route.point_at(100.0).expect("a point on the route");
        let next = LatLng::new(on_route.lat, on_route.lng);
        let mut rec = recovered(
            &c,
            id,
            vec![
                event(id, 1, Confirmed, T0, "api", serde_json::Value::Null),
                event(id, 2, DriverAssigned, T0, "api", serde_json::Value::Null),
            ],
            None,
        );
        rec.plan = Some(made[0].clone());
        let mut succ = with_graph();
        succ.restore(T0 + 1_000, rec.clone());
        let out = handle(&mut succ, T0 + 12_000, &fix(5, T0 + 12_000, next));
        assert!(plans(&out.status_changes).is_empty(), "no new plan");
        let stats = succ.eta_model_mut().take_stats();
        assert_eq!((stats.plans, stats.reroutes), (0, 0));
        assert!(out.updates[0].eta.is_some());
        // Without it, the next owner plans again at the first fix.
        rec.plan = None;
        let mut fresh = with_graph();
        fresh.restore(T0 + 1_000, rec);
        let out = handle(&mut fresh, T0 + 12_000, &fix(5, T0 + 12_000, next));
        assert_eq!(plans(&out.status_changes).len(), 1);
        assert_eq!(fresh.eta_model_mut().take_stats().plans, 1);
    }

    #[test]
    fn reports_location_unavailable_once_per_outage() {
        let mut c = core();
        let id = create(&mut c, Some(5));
        assert!(
            c.tick(T0 + 60_000).is_empty(),
            "no position yet, nothing to report"
        );
        handle(&mut c, T0, &fix(5, T0, PICKUP));
        let unavailable = |frames: &[ConsumerFrame]| {
            frames
                .iter()
                .filter(|f| matches!(f, ConsumerFrame::LocationUnavailable { delivery_id, .. } if *delivery_id == id))
                .count()
        };
        assert!(c.tick(T0 + 30_000).is_empty());
        assert_eq!(unavailable(&c.tick(T0 + 30_001)), 1);
        assert_eq!(unavailable(&c.tick(T0 + 40_000)), 0);
        handle(&mut c, T0 + 41_000, &fix(5, T0 + 41_000, PICKUP));
        assert!(c.tick(T0 + 50_000).is_empty());
        assert_eq!(unavailable(&c.tick(T0 + 71_001)), 1);
    }

    #[test]
    fn eta_keeps_counting_down_while_the_location_is_unavailable() {
        let mut c = core();
        let id = create(&mut c, Some(5));
        let first = handle(&mut c, T0, &fix(5, T0, PICKUP)).updates[0]
            .eta
            .clone()
            .expect("eta");
        let etas = |frames: Vec<ConsumerFrame>| -> Vec<Eta> {
            frames
                .into_iter()
                .filter_map(|f| match f {
                    ConsumerFrame::Eta(e) => Some(e),
                    _ => None,
                })
                .collect()
        };
        assert!(etas(c.tick(T0 + 10_000)).is_empty(), "fixes are fresh");
        let mut last = first.clone();
        for k in 0..5u64 {
            let now = T0 + 31_000 + k * 2_000;
            let e = etas(c.tick(now));
            assert_eq!(e.len(), 1, "one countdown frame per push interval");
            let expected = first.eta_s - (now - T0) as f64 / 1000.0;
            assert!(
                (e[0].eta_s - expected).abs() < 1e-6,
                "{} vs {expected}",
                e[0].eta_s
            );
            assert!(e[0].seq > last.seq && e[0].eta_s < last.eta_s);
            assert_eq!((e[0].delivery_id, e[0].ts_ms), (id, now));
            last = e[0].clone();
        }
    }

    #[test]
    fn drops_state_two_hours_after_the_last_update() {
        let mut c = core();
        let id = create(&mut c, Some(5));
        handle(&mut c, T0 + 1_000, &fix(5, T0 + 1_000, PICKUP));
        assert!(c.expire(T0 + 7_200_000).is_empty());
        assert_eq!(c.expire(T0 + 7_201_000), vec![id]);
        assert!(c.snapshot(id, T0).is_none());
        assert!(!handle(&mut c, T0 + 7_202_000, &fix(5, T0 + 7_202_000, PICKUP)).matched);
    }

    #[test]
    fn restore_rebuilds_status_seq_and_idempotency_from_the_log() {
        let mut c = core();
        let id = DeliveryId(40);
        let record = DeliveryRecord {
            id,
            pickup: PICKUP,
            dropoff: DROPOFF,
            driver_id: Some(DriverId(9)),
            created_ms: T0,
        };
        let events = vec![
            event(id, 1, Confirmed, T0, "api", serde_json::Value::Null),
            event(id, 2, DriverAssigned, T0, "api", serde_json::Value::Null),
            event(id, 3, PickedUp, T0 + 5, "api", serde_json::Value::Null),
        ];
        c.restore(
            T0 + 10,
            RecoveredDelivery {
                record,
                events,
                idempotency: vec![("k".into(), 3)],
                tracking: None,
                plan: None,
            },
        );
        let s = c.snapshot(id, T0 + 10).expect("snap");
        assert_eq!((s.status, s.last_event_seq), (PickedUp, 3));
        assert!(matches!(
            c.change_status(T0, id, &change(EnRoute, Some("k")), "api"),
            Ok(StatusOutcome::Replayed { .. })
        ));
        assert!(handle(&mut c, T0 + 11, &fix(9, T0 + 11, PICKUP)).matched);
        let e = c
            .create(
                T0,
                &CreateDelivery {
                    delivery_id: None,
                    pickup: PICKUP,
                    dropoff: DROPOFF,
                    driver_id: None,
                },
            )
            .expect("create");
        assert_eq!(
            e.delivery_id,
            DeliveryId(41),
            "new ids continue after recovered ones"
        );
    }

    proptest::proptest! {
        /// Whatever mix of requests, commits and failed commits: the durable view only ever
        /// moves along the status machine, its seq counts the committed events, and the
        /// reserved seq is never behind it.
        #[test]
        fn committed_history_always_follows_the_status_machine(
            ops in proptest::collection::vec((0usize..8, proptest::bool::ANY, proptest::bool::ANY), 1..40)
        ) {
            let mut c = core();
            let id = create(&mut c, Some(1));
            let mut committed = vec![Confirmed, DriverAssigned];
            let mut queued: Vec<LogEntry> = Vec::new();
            for (status_ix, commit_now, ok) in ops {
                let req = change(DeliveryStatus::ALL[status_ix], None);
                if let Ok(StatusOutcome::Append(e)) = c.change_status(T0, id, &req, "api") {
                    queued.push(e);
                }
                if commit_now {
                    let batch = std::mem::take(&mut queued);
                    if ok {
                        for e in &batch {
                            c.commit(e);
                            committed.extend(e.events.iter().map(|e| e.status));
                        }
                    } else {
                        for e in batch.iter().rev() {
                            c.abort(e);
                        }
                    }
                }
                let snap = c.snapshot(id, T0).expect("snapshot");
                proptest::prop_assert_eq!(snap.last_event_seq as usize, committed.len());
                proptest::prop_assert_eq!(Some(&snap.status), committed.last());
                for w in committed.windows(2) {
                    proptest::prop_assert!(w[0].check_transition(w[1]).is_ok(), "{} -> {}", w[0], w[1]);
                }
            }
        }
    }
}
