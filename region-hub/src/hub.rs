//! The hub's shared state and its operations, used by the HTTP API, the edge link and the
//! consumer transports. One `parking_lot::Mutex` guards the sans-IO core and the fan-out
//! registry; critical sections never await and never touch redb.

use crate::durable::history::{Breadcrumb, BreadcrumbQueue};
use crate::durable::store::{CommitSink, EventLogHandle, Store, SubmitError};
use crate::metrics::{ConsumerGauge, HubMetrics};
use crate::tracking::anomaly::Anomaly;
use crate::tracking::deliveries::{CoreError, Deliveries, LogEntry, SideRecord, StatusOutcome};
use crate::tracking::fanout::{Fanout, Subscription};
use parking_lot::Mutex;
use protocol::api::{ChangeStatus, CreateDelivery, DeliveryCreated, StatusChanged};
use protocol::consumer::{ConsumerFrame, Snapshot, StatusEvent};
use protocol::status::DeliveryStatus;
use protocol::token::{Subject, TokenError, TokenSigner, TokenVerifier};
use protocol::wire::RoutedFix;
use protocol::DeliveryId;
use std::sync::Arc;
use tracing::Instrument;

/// State behind the lock.
#[derive(Debug)]
pub(crate) struct State {
    pub core: Deliveries,
    pub fanout: Fanout,
}

/// What the event-log writer and the request paths share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub state: Mutex<State>,
    pub metrics: Arc<HubMetrics>,
    /// Durable anomalies, for the operators' live stream.
    pub anomalies: tokio::sync::broadcast::Sender<Anomaly>,
    /// Push notification senders and the devices registered per delivery.
    pub push: Push,
    /// Deliveries a replica fenced since the rebalancer last looked (it re-checks their
    /// ownership).
    pub fenced: Mutex<Vec<DeliveryId>>,
}

/// Push notifications at milestones.
#[derive(Clone, Debug)]
pub(crate) struct Push {
    pub notifier: notify::Notifier,
    pub devices: Arc<Mutex<notify::DeviceRegistry>>,
    /// Where registrations are stored (devices reported gone are deleted from it).
    pub store: Store,
}

impl Push {
    /// Sends the milestone's notification to the delivery's devices in a task of its own,
    /// so the commit path never waits on a push service.
    fn fan_out(&self, delivery: DeliveryId, status: DeliveryStatus, eta_s: Option<f64>) {
        if !status.is_milestone() || self.devices.lock().devices(delivery.0).is_empty() {
            return;
        }
        let push = self.clone();
        tokio::spawn(
            async move {
                if let Some(report) = push
                    .notifier
                    .handle_status_change(&push.devices, delivery.0, status, eta_s)
                    .await
                {
                    tracing::debug!(
                        sent = report.sent.len(),
                        gone = report.gone.len(),
                        failed = report.failed.len(),
                        "milestone pushed"
                    );
                    if !report.gone.is_empty() {
                        let store = push.store.clone();
                        let gone = report.gone;
                        match tokio::task::spawn_blocking(move || store.remove_devices(&gone)).await
                        {
                            Ok(Ok(_)) => {}
                            Ok(Err(e)) => tracing::warn!(error = %e, "gone devices not deleted"),
                            Err(e) => tracing::warn!(error = %e, "gone devices not deleted"),
                        }
                    }
                }
            }
            .instrument(tracing::info_span!("push", delivery_id = %delivery, status = %status)),
        );
    }
}

impl Shared {
    pub(crate) fn publish_reliable(
        &self,
        st: &mut State,
        delivery: DeliveryId,
        frame: &ConsumerFrame,
    ) {
        let p = st.fanout.publish_reliable(delivery, frame);
        for _ in 0..p.overflowed {
            self.metrics.reject("overflow");
        }
    }
}

impl CommitSink for Shared {
    fn committed(&self, entries: &[LogEntry]) {
        let mut st = self.state.lock();
        for entry in entries {
            st.core.commit(entry);
            for side in &entry.side {
                match side {
                    SideRecord::Anomaly(a) => {
                        self.metrics.anomaly(a.kind.as_str());
                        // No operator listening is fine.
                        let _ = self.anomalies.send(a.clone());
                    }
                    SideRecord::Proof(_) => {}
                    SideRecord::Device(d) => {
                        if let Err(e) = self
                            .push
                            .devices
                            .lock()
                            .register(entry.delivery_id.0, d.clone())
                        {
                            tracing::warn!(error = %e, "stored push device not registered");
                        }
                    }
                }
            }
            for ev in &entry.events {
                tracing::debug!(delivery_id = %entry.delivery_id, seq = ev.event_seq, status = %ev.status, "status event committed");
                if ev.status.is_milestone() {
                    let eta_s = st
                        .core
                        .snapshot(entry.delivery_id, ev.ts_ms)
                        .and_then(|s| s.eta)
                        .map(|e| e.eta_s);
                    self.push.fan_out(entry.delivery_id, ev.status, eta_s);
                }
                self.metrics.status_event(&ev.source);
                self.publish_reliable(
                    &mut st,
                    entry.delivery_id,
                    &ConsumerFrame::Status(ev.clone()),
                );
            }
        }
    }

    fn failed(&self, entries: &[LogEntry]) {
        let mut st = self.state.lock();
        for entry in entries.iter().rev() {
            if !entry.events.is_empty() {
                st.core.abort(entry);
            }
        }
    }

    /// Another hub serves these deliveries: forget them here and cut their consumers off
    /// (they reconnect and are sent to the owner); what this hub reserved for them fails.
    fn fenced(&self, entries: &[LogEntry]) {
        let mut ids: Vec<DeliveryId> = entries.iter().map(|e| e.delivery_id).collect();
        ids.sort_unstable();
        ids.dedup();
        {
            let mut st = self.state.lock();
            for &id in &ids {
                st.core.unload(id);
                st.fanout.remove_delivery(id);
            }
        }
        tracing::warn!(deliveries = ?ids, "refused by replication (fenced by a replica, or no replica); unloaded until taken over afresh");
        self.fenced.lock().extend(ids);
    }
}

/// Why an API request failed, mapped to an HTTP status by the handlers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiFailure {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl From<CoreError> for ApiFailure {
    fn from(e: CoreError) -> Self {
        match e {
            CoreError::NotFound(_) => ApiFailure::NotFound(e.to_string()),
            CoreError::Conflict(m) => ApiFailure::Conflict(m),
            CoreError::BadRequest(m) => ApiFailure::BadRequest(m),
        }
    }
}

/// Why a consumer (or operator) was refused: 401 or 403.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthRefusal {
    #[error("a bearer token is required")]
    Missing,
    #[error("{0}")]
    Invalid(TokenError),
}

impl AuthRefusal {
    /// Label for `hub_consumer_rejected_total{reason}`.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthRefusal::Missing => "missing_token",
            AuthRefusal::Invalid(e) => e.reason(),
        }
    }
}

/// Everything a consumer session starts with.
#[derive(Debug)]
pub(crate) struct ConsumerStart {
    pub snapshot: Snapshot,
    /// Durable events after the consumer's `last_event_seq`, up to the snapshot's.
    pub missed: Vec<StatusEvent>,
    pub subscription: Subscription,
    pub guard: ConsumerGuard,
}

/// Unsubscribes and uncounts a consumer when its session ends.
#[derive(Debug)]
pub(crate) struct ConsumerGuard {
    shared: Arc<Shared>,
    delivery: DeliveryId,
    sub_id: u64,
    _gauge: ConsumerGauge,
}

impl Drop for ConsumerGuard {
    fn drop(&mut self) {
        self.shared
            .state
            .lock()
            .fanout
            .unsubscribe(self.delivery, self.sub_id);
    }
}

/// The running hub's operations.
#[derive(Debug)]
pub(crate) struct Hub {
    /// Time of fixes, status events and ETAs (scaled in simulations); tokens use the wall clock.
    pub clock: nodekit::Clock,
    pub shared: Arc<Shared>,
    pub log: EventLogHandle,
    pub store: Store,
    /// Queue of the breadcrumb writer (every accepted fix).
    pub crumbs: BreadcrumbQueue,
    /// Photo proof limits, and the directory of the proof blobs.
    pub proof: crate::config::ProofConfig,
    pub proofs_dir: std::path::PathBuf,
    pub verifier: TokenVerifier,
    pub signer: TokenSigner,
    pub hub_id: String,
    pub tracking_token_ttl_s: u64,
    /// UDP port and certificate hash of the WebTransport endpoint, for browsers.
    pub webtransport_port: u16,
    pub webtransport_cert_sha256: [u8; 32],
    /// Cluster membership, ownership and replication; `None` for a single hub.
    pub cluster: Option<Arc<crate::replication::replica::HubCluster>>,
    /// Cancelled when the hub starts draining (edges are told to go elsewhere).
    pub draining: tokio_util::sync::CancellationToken,
}

impl Hub {
    pub fn metrics(&self) -> &HubMetrics {
        &self.shared.metrics
    }

    /// Checks a token that may watch `delivery`.
    pub fn check_tracking(
        &self,
        token: Option<&str>,
        delivery: DeliveryId,
    ) -> Result<(), AuthRefusal> {
        let token = token
            .filter(|t| !t.is_empty())
            .ok_or(AuthRefusal::Missing)?;
        self.verifier
            .verify_tracking(token, delivery, nodekit::unix_s())
            .map(|_| ())
            .map_err(AuthRefusal::Invalid)
    }

    /// Checks a driver token; returns the driver.
    pub fn check_driver(&self, token: Option<&str>) -> Result<protocol::DriverId, AuthRefusal> {
        let token = token
            .filter(|t| !t.is_empty())
            .ok_or(AuthRefusal::Missing)?;
        self.verifier
            .verify_driver(token, nodekit::unix_s())
            .map(|(d, _)| d)
            .map_err(AuthRefusal::Invalid)
    }

    /// Checks an operator token (order-service calls).
    pub fn check_operator(&self, token: Option<&str>) -> Result<(), AuthRefusal> {
        let token = token
            .filter(|t| !t.is_empty())
            .ok_or(AuthRefusal::Missing)?;
        let claims = self
            .verifier
            .verify(token, nodekit::unix_s())
            .map_err(AuthRefusal::Invalid)?;
        match claims.sub {
            Subject::Operator => Ok(()),
            other => Err(AuthRefusal::Invalid(TokenError::WrongSubject(other))),
        }
    }

    /// Mints a token with the hub's signing key.
    pub fn mint(&self, sub: Subject, ttl_s: u64) -> String {
        self.signer.sign(sub, nodekit::unix_s(), ttl_s)
    }

    /// Queues a reserved entry; call under the lock (queue order = log order). A refused
    /// entry is aborted in the same critical section, so nothing can be reserved on top of it.
    fn submit(
        &self,
        st: &mut State,
        entry: &LogEntry,
    ) -> Result<crate::durable::store::AppendReceipt, SubmitError> {
        self.log
            .submit(entry.clone())
            .inspect_err(|_| st.core.abort(entry))
    }

    /// Waits for the commit of an entry queued by [`Hub::submit`].
    async fn append(
        &self,
        entry: LogEntry,
        queued: Result<crate::durable::store::AppendReceipt, SubmitError>,
    ) -> Result<LogEntry, ApiFailure> {
        let rx = queued.map_err(|e| ApiFailure::Unavailable(e.to_string()))?;
        match rx.await {
            Ok(Ok(())) => Ok(entry),
            Ok(Err(e))
                if matches!(
                    *e,
                    crate::durable::store::StoreError::Fenced(_)
                        | crate::durable::store::StoreError::NoReplica(_)
                ) =>
            {
                Err(ApiFailure::Unavailable(e.to_string()))
            }
            Ok(Err(e)) => Err(ApiFailure::Internal(format!(
                "status event not stored: {e}"
            ))),
            Err(_) => Err(ApiFailure::Unavailable(
                "the event log writer stopped before answering".into(),
            )),
        }
    }

    /// Creates a delivery; answers once its first events are durable.
    pub async fn create_delivery(
        &self,
        req: &CreateDelivery,
    ) -> Result<DeliveryCreated, ApiFailure> {
        let now = self.clock.now_ms();
        let (entry, queued) = {
            let mut st = self.shared.state.lock();
            let entry = st.core.create(now, req)?;
            let queued = self.submit(&mut st, &entry);
            (entry, queued)
        };
        let entry = self.append(entry, queued).await?;
        let id = entry.delivery_id;
        let last = entry.events.last();
        let token = self.mint(Subject::Tracking(id), self.tracking_token_ttl_s);
        Ok(DeliveryCreated {
            delivery_id: id,
            status: last
                .map(|e| e.status)
                .unwrap_or(protocol::status::DeliveryStatus::Confirmed),
            last_event_seq: last.map(|e| e.event_seq).unwrap_or(0),
            tracking_path: format!("/track/{id}?token={token}"),
            tracking_token: token,
        })
    }

    /// Stores records without a status event (e.g. a push device); answers once durable.
    pub async fn append_side(
        &self,
        id: DeliveryId,
        side: Vec<SideRecord>,
    ) -> Result<(), ApiFailure> {
        let entry = LogEntry::side_only(id, side);
        let queued = {
            let st = self.shared.state.lock();
            if st.core.snapshot(id, nodekit::unix_ms()).is_none() {
                return Err(ApiFailure::NotFound(format!("delivery {id} not found")));
            }
            self.log.submit(entry.clone())
        };
        self.append(entry, queued).await.map(|_| ())
    }

    /// Moves a delivery's status; answers once the event is durable (and pushed).
    pub async fn change_status(
        &self,
        id: DeliveryId,
        req: &ChangeStatus,
        source: &str,
    ) -> Result<StatusChanged, ApiFailure> {
        self.change_status_with(id, req, source, Vec::new()).await
    }

    /// [`Hub::change_status`], storing `side` records in the same transaction as the event.
    pub async fn change_status_with(
        &self,
        id: DeliveryId,
        req: &ChangeStatus,
        source: &str,
        side: Vec<SideRecord>,
    ) -> Result<StatusChanged, ApiFailure> {
        let now = self.clock.now_ms();
        let (entry, queued) = {
            let mut st = self.shared.state.lock();
            match st.core.change_status(now, id, req, source)? {
                StatusOutcome::Replayed {
                    event,
                    committed: true,
                } => {
                    return Ok(StatusChanged {
                        delivery_id: id,
                        event_seq: event.event_seq,
                        status: event.status,
                        replayed: true,
                    });
                }
                StatusOutcome::Replayed {
                    committed: false, ..
                } => {
                    return Err(ApiFailure::Conflict(
                        "a request with this idempotency key is still being stored; retry".into(),
                    ));
                }
                StatusOutcome::Append(mut entry) => {
                    entry.side = side;
                    let queued = self.submit(&mut st, &entry);
                    (entry, queued)
                }
            }
        };
        let entry = self.append(entry, queued).await?;
        let ev = entry
            .events
            .last()
            .ok_or_else(|| ApiFailure::Internal("empty log entry".into()))?;
        Ok(StatusChanged {
            delivery_id: id,
            event_seq: ev.event_seq,
            status: ev.status,
            replayed: false,
        })
    }

    /// Applies a batch of fixes from an edge and pushes the results. Never waits on redb.
    pub fn apply_fixes(&self, fixes: &[RoutedFix]) {
        let now = self.clock.now_ms();
        let m = &self.shared.metrics;
        let mut st = self.shared.state.lock();
        for fix in fixes {
            m.fixes_received.inc();
            let out = st.core.handle_fix(now, fix);
            if !out.matched {
                m.fixes_unmatched.inc();
            }
            for u in out.updates {
                self.crumbs.offer(Breadcrumb::from_position(&u.position));
                st.fanout.publish_position(&u.position);
                if let Some(eta) = u.eta {
                    self.shared.publish_reliable(
                        &mut st,
                        eta.delivery_id,
                        &ConsumerFrame::Eta(eta),
                    );
                }
            }
            // Geofence events and anomalies take the durable path without waiting for it: the
            // writer publishes them after the commit.
            let refused = out.status_changes.iter().position(|entry| {
                self.log.submit(entry.clone()).inspect_err(|e| {
                    tracing::warn!(delivery_id = %entry.delivery_id, error = %e, "geofence status change dropped");
                }).is_err()
            });
            if let Some(i) = refused {
                // Newest first, so each abort undoes the top reservation.
                for entry in out.status_changes[i..].iter().rev() {
                    st.core.abort(entry);
                }
            }
            for a in out.anomalies {
                let entry = LogEntry::side_only(a.delivery_id, vec![SideRecord::Anomaly(a)]);
                if let Err(e) = self.log.submit(entry) {
                    tracing::warn!(error = %e, "anomaly not stored");
                }
            }
        }
    }

    /// Periodic work: location-unavailable and countdown ETA frames, expiry of idle deliveries.
    pub fn tick(&self, now_ms: u64) {
        let mut st = self.shared.state.lock();
        for frame in st.core.tick(now_ms) {
            let id = match &frame {
                ConsumerFrame::LocationUnavailable { delivery_id, .. } => *delivery_id,
                ConsumerFrame::Eta(e) => e.delivery_id,
                _ => continue,
            };
            self.shared.publish_reliable(&mut st, id, &frame);
        }
        for id in st.core.expire(now_ms) {
            tracing::debug!(delivery_id = %id, "dropped idle delivery state");
            st.fanout.remove_delivery(id);
        }
    }

    /// The REST view of a delivery.
    pub fn snapshot(&self, id: DeliveryId) -> Option<Snapshot> {
        self.shared
            .state
            .lock()
            .core
            .snapshot(id, self.clock.now_ms())
    }

    /// Subscribes a consumer: snapshot and subscription are taken atomically, so every event
    /// after the snapshot arrives live and every event before it can be read from the log.
    pub fn open_consumer(
        &self,
        id: DeliveryId,
        last_event_seq: Option<u64>,
        transport: &'static str,
    ) -> Result<ConsumerStart, ApiFailure> {
        let (snapshot, subscription) = {
            let mut st = self.shared.state.lock();
            let snap = st
                .core
                .snapshot(id, self.clock.now_ms())
                .ok_or_else(|| ApiFailure::NotFound(format!("delivery {id} not found")))?;
            (snap, st.fanout.subscribe(id, transport))
        };
        let guard = ConsumerGuard {
            shared: self.shared.clone(),
            delivery: id,
            sub_id: subscription.id,
            _gauge: ConsumerGauge::new(&self.shared.metrics, transport),
        };
        let missed = match last_event_seq {
            Some(n) if n < snapshot.last_event_seq => self
                .store
                .events_after(id, n)
                .map_err(|e| ApiFailure::Internal(e.to_string()))?
                .into_iter()
                .filter(|e| e.event_seq <= snapshot.last_event_seq)
                .collect(),
            _ => Vec::new(),
        };
        Ok(ConsumerStart {
            snapshot,
            missed,
            subscription,
            guard,
        })
    }
}

/// One frame a consumer session should send next.
#[derive(Debug)]
pub(crate) enum Outgoing {
    /// Reliable JSON (status, ETA, ...): on the stream / as a text frame.
    Reliable(String),
    /// Position JSON: a datagram where possible.
    Position(String),
}

/// Per-session cursor that keeps positions and events in order.
#[derive(Debug)]
pub(crate) struct ConsumerCursor {
    pub last_position_seq: u64,
    pub last_event_seq: u64,
}

impl ConsumerCursor {
    pub fn new(start: &ConsumerStart) -> Self {
        Self {
            last_position_seq: start.snapshot.position.as_ref().map_or(0, |p| p.seq),
            last_event_seq: start.snapshot.last_event_seq,
        }
    }

    /// The frames that open a session: snapshot, then missed events.
    pub fn opening_frames(start: &ConsumerStart) -> Vec<String> {
        let mut v = vec![ConsumerFrame::Snapshot(start.snapshot.clone()).to_json()];
        v.extend(
            start
                .missed
                .iter()
                .map(|e| ConsumerFrame::Status(e.clone()).to_json()),
        );
        v
    }

    /// Waits for the next frame; `None` when the hub cut the consumer off.
    pub async fn next(&mut self, sub: &mut Subscription) -> Option<Outgoing> {
        loop {
            tokio::select! {
                biased;
                frame = sub.reliable.recv() => {
                    let frame = frame?;
                    if let ConsumerFrame::Status(ev) = &frame {
                        if ev.event_seq <= self.last_event_seq {
                            continue;
                        }
                        self.last_event_seq = ev.event_seq;
                    }
                    return Some(Outgoing::Reliable(frame.to_json()));
                }
                changed = sub.position.changed() => {
                    changed.ok()?;
                    let pos = sub.position.borrow_and_update().clone();
                    match pos {
                        Some(p) if p.seq > self.last_position_seq => {
                            self.last_position_seq = p.seq;
                            return Some(Outgoing::Position(ConsumerFrame::Position(p).to_json()));
                        }
                        _ => continue,
                    }
                }
            }
        }
    }
}
