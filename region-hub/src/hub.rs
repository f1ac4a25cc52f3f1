//! The running hub's operations, used by the HTTP API, the edge link, the consumer transports
//! and the cluster code. Delivery state lives in [`Shards`] (which alone takes its locks); the
//! event log, the breadcrumb history and the cluster are reached through their handles. The
//! fields are private: other modules go through the operations below.

use crate::durable::history::{Breadcrumb, BreadcrumbQueue};
use crate::durable::store::{self, CommitSink, EventLogHandle, Store, SubmitError};
use crate::metrics::{ConsumerGauge, HubMetrics};
pub(crate) use crate::replication::placement::{consumer_redirect_url, Creation, Route};
use crate::replication::HubCluster;
use crate::tracking::anomaly::Anomaly;
use crate::tracking::deliveries::{
    CoreError, DeliveryRecord, LogEntry, RecoveredDelivery, SideRecord,
};
use crate::tracking::fanout::{DatagramOut, Encoded, FrameKind, Subscription};
use crate::tracking::shards::{FixEffects, Reserved, Routed, ShardBatch, Shards};
use parking_lot::Mutex;
use protocol::api::{ChangeStatus, CreateDelivery, DeliveryCreated, StatusChanged};
use protocol::consumer::{ConsumerFrame, Snapshot, StatusEvent};
use protocol::status::DeliveryStatus;
use protocol::token::{Subject, TokenError, TokenSigner, TokenVerifier};
use protocol::wire::RoutedFix;
use protocol::DeliveryId;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tracing::Instrument;

/// What the event-log writer and the request paths share.
#[derive(Debug)]
struct Shared {
    shards: Shards,
    metrics: Arc<HubMetrics>,
    /// Durable anomalies, for the operators' live stream.
    anomalies: tokio::sync::broadcast::Sender<Anomaly>,
    /// Push notification senders and the devices registered per delivery.
    push: Push,
    /// Deliveries a replica fenced since the rebalancer last looked (it re-checks their
    /// ownership).
    fenced: Mutex<Vec<DeliveryId>>,
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

impl CommitSink for Shared {
    fn committed(&self, entries: &[LogEntry]) {
        for entry in entries {
            for side in &entry.side {
                match side {
                    SideRecord::Anomaly(a) => {
                        self.metrics.anomaly(a.kind.as_str());
                        // No operator listening is fine.
                        let _ = self.anomalies.send(a.clone());
                    }
                    SideRecord::Proof(_) | SideRecord::Tracking(_) | SideRecord::Plan(_) => {}
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
            let committed = self.shards.commit(entry);
            for _ in 0..committed.overflowed {
                self.metrics.reject("overflow");
            }
            for ev in &entry.events {
                tracing::debug!(delivery_id = %entry.delivery_id, seq = ev.event_seq, status = %ev.status, "status event committed");
                if ev.status.is_milestone() {
                    self.push
                        .fan_out(entry.delivery_id, ev.status, committed.eta_s);
                }
                self.metrics.status_event(&ev.source);
            }
        }
    }

    fn failed(&self, entries: &[LogEntry]) {
        for entry in entries.iter().rev() {
            self.shards.abort(entry);
        }
    }

    /// Another hub serves these deliveries: forget them here and cut their consumers off
    /// (they reconnect and are sent to the owner); what this hub reserved for them fails.
    fn fenced(&self, entries: &[LogEntry]) {
        let mut ids: Vec<DeliveryId> = entries.iter().map(|e| e.delivery_id).collect();
        ids.sort_unstable();
        ids.dedup();
        for &id in &ids {
            self.shards.unload(id);
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
        self.shared.shards.unsubscribe(self.delivery, self.sub_id);
    }
}

/// What a hub is assembled from besides its state (see `lib.rs`).
pub(crate) struct HubParts {
    pub clock: nodekit::Clock,
    pub store: Store,
    pub proof: crate::config::ProofConfig,
    pub proofs_dir: PathBuf,
    pub verifier: TokenVerifier,
    pub signer: TokenSigner,
    pub hub_id: String,
    pub tracking_token_ttl_s: u64,
}

/// What the hub needs to run beyond its parts: the log, the breadcrumb queue, the endpoints'
/// identities and the cluster (attached once they exist, see `lib.rs`).
pub(crate) struct HubLinks {
    pub log: EventLogHandle,
    pub crumbs: BreadcrumbQueue,
    pub webtransport_port: u16,
    pub webtransport_cert_sha256: [u8; 32],
    pub cluster: Option<Arc<HubCluster>>,
}

/// The running hub's operations.
#[derive(Debug)]
pub(crate) struct Hub {
    /// Time of fixes, status events and ETAs (scaled in simulations); tokens use the wall clock.
    clock: nodekit::Clock,
    shared: Arc<Shared>,
    log: EventLogHandle,
    store: Store,
    /// Queue of the breadcrumb writer (every accepted fix).
    crumbs: BreadcrumbQueue,
    /// Photo proof limits, and the directory of the proof blobs.
    proof: crate::config::ProofConfig,
    proofs_dir: PathBuf,
    verifier: TokenVerifier,
    signer: TokenSigner,
    hub_id: String,
    tracking_token_ttl_s: u64,
    /// UDP port and certificate hash of the WebTransport endpoint, for browsers.
    webtransport_port: u16,
    webtransport_cert_sha256: [u8; 32],
    /// Cluster membership, ownership and replication; `None` for a single hub.
    cluster: Option<Arc<HubCluster>>,
    /// Cancelled when the hub starts draining (edges are told to go elsewhere).
    draining: tokio_util::sync::CancellationToken,
}

/// The commit sink a hub's event log writer reports to, made before the hub itself (the
/// writer's handle is one of the hub's links).
#[derive(Clone)]
pub(crate) struct HubState(Arc<Shared>);

impl HubState {
    pub fn new(shards: Shards, metrics: Arc<HubMetrics>, push: Push) -> Self {
        Self(Arc::new(Shared {
            shards,
            metrics,
            anomalies: tokio::sync::broadcast::channel(1024).0,
            push,
            fenced: Mutex::new(Vec::new()),
        }))
    }

    /// The sink for the event log writer.
    pub fn sink(&self) -> Arc<dyn CommitSink> {
        self.0.clone()
    }

    /// Plans made or changed and the ETA counters since the last call; the learnt speed
    /// table too when `speeds` (for the ETA saver).
    pub fn take_eta_work(&self, speeds: bool) -> crate::durable::plans::EtaWork {
        let (plans, stats) = self.0.shards.take_eta_work();
        (plans, stats, speeds.then(|| self.0.shards.export_speeds()))
    }
}

impl Hub {
    pub fn new(parts: HubParts, state: HubState, links: HubLinks) -> Self {
        let HubParts {
            clock,
            store,
            proof,
            proofs_dir,
            verifier,
            signer,
            hub_id,
            tracking_token_ttl_s,
        } = parts;
        Self {
            clock,
            shared: state.0,
            log: links.log,
            store,
            crumbs: links.crumbs,
            proof,
            proofs_dir,
            verifier,
            signer,
            hub_id,
            tracking_token_ttl_s,
            webtransport_port: links.webtransport_port,
            webtransport_cert_sha256: links.webtransport_cert_sha256,
            cluster: links.cluster,
            draining: tokio_util::sync::CancellationToken::new(),
        }
    }

    pub fn metrics(&self) -> &HubMetrics {
        &self.shared.metrics
    }

    /// The hub's redb store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The hub's clock (fixes, events, ETAs).
    pub fn clock(&self) -> &nodekit::Clock {
        &self.clock
    }

    pub fn hub_id(&self) -> &str {
        &self.hub_id
    }

    /// Photo proof limits.
    pub fn proof_config(&self) -> &crate::config::ProofConfig {
        &self.proof
    }

    /// Where proof images are stored.
    pub fn proofs_dir(&self) -> &Path {
        &self.proofs_dir
    }

    /// Cluster membership, ownership and replication; `None` for a single hub.
    pub fn cluster(&self) -> Option<&Arc<HubCluster>> {
        self.cluster.as_ref()
    }

    /// Where a request about `id` is answered (one decision for every transport,
    /// `replication::placement::decide`): here, at its owner, or not yet (joining). A
    /// delivery this hub owns but does not hold yet is taken over first.
    pub async fn route(self: &Arc<Self>, id: DeliveryId) -> Route {
        let host: Arc<dyn crate::replication::Host> = self.clone();
        crate::replication::driver::route(&host, id).await
    }

    /// Where a new delivery is created (`replication::placement::create`): under the caller's
    /// id or a random one this hub owns, else at another hub. `None` when the choice is not
    /// this hub's to make (no cluster: the caller's id, or the core's own, is used).
    pub fn place_new(&self, chosen: Option<DeliveryId>) -> Option<Creation> {
        let c = self.cluster.as_ref()?;
        // Random ids below 2^53 (exact in JavaScript).
        let candidates = (0..10_000).map(|_| DeliveryId(rand::random::<u64>() >> 11 | 1));
        crate::replication::placement::create(&c.me, c.view(), chosen, candidates)
    }

    /// Cancelled when the hub starts draining.
    pub fn draining(&self) -> &tokio_util::sync::CancellationToken {
        &self.draining
    }

    /// UDP port and certificate hash of the WebTransport endpoint.
    pub fn webtransport(&self) -> (u16, [u8; 32]) {
        (self.webtransport_port, self.webtransport_cert_sha256)
    }

    /// Anomalies as they are committed (operators' live stream).
    pub fn subscribe_anomalies(&self) -> tokio::sync::broadcast::Receiver<Anomaly> {
        self.shared.anomalies.subscribe()
    }

    /// The push devices registered for `id`.
    pub fn devices(&self, id: DeliveryId) -> Vec<notify::DeviceToken> {
        self.shared.push.devices.lock().devices(id.0).to_vec()
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

    /// Waits for the commit of an entry queued through the log.
    async fn append(
        &self,
        entry: LogEntry,
        queued: Result<store::AppendReceipt, SubmitError>,
    ) -> Result<LogEntry, ApiFailure> {
        let rx = queued.map_err(|e| ApiFailure::Unavailable(e.to_string()))?;
        match rx.await {
            Ok(Ok(())) => Ok(entry),
            Ok(Err(e))
                if matches!(
                    *e,
                    store::StoreError::Fenced(_) | store::StoreError::NoReplica(_)
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
        let (entry, queued) = self
            .shared
            .shards
            .create(now, req, |e| self.log.submit(e.clone()))?;
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
        let queued = self
            .shared
            .shards
            .submit_side(nodekit::unix_ms(), entry.clone(), |e| self.log.submit(e))
            .ok_or_else(|| ApiFailure::NotFound(format!("delivery {id} not found")))?;
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
        let reserved = self
            .shared
            .shards
            .change_status(now, id, req, source, side, |e| self.log.submit(e.clone()))?;
        let (entry, queued) = match reserved {
            Reserved::Replayed {
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
            Reserved::Replayed {
                committed: false, ..
            } => {
                return Err(ApiFailure::Conflict(
                    "a request with this idempotency key is still being stored; retry".into(),
                ));
            }
            Reserved::Appended(entry, queued) => (entry, queued),
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

    /// Number of shards fixes are applied in (one worker each).
    pub fn shard_count(&self) -> usize {
        self.shared.shards.count()
    }

    /// Splits a batch of fixes from an edge by shard (counted as received here).
    pub fn route_fixes(&self, fixes: &[RoutedFix]) -> Routed {
        let routed = self.shared.shards.route(fixes);
        let m = &self.shared.metrics;
        m.fixes_received.inc_by(fixes.len() as u64);
        m.fixes_unmatched.inc_by(routed.unmatched);
        routed
    }

    /// Applies shard `k`'s part of a batch and pushes the results. Never waits on redb.
    pub fn apply_fixes(&self, k: usize, batch: &ShardBatch) {
        let now = self.clock.now_ms();
        let mut effects = FixEffects::default();
        self.shared.shards.apply_fixes(
            k,
            now,
            batch,
            |entry| self.log.submit(entry).map(|_| ()),
            &mut effects,
        );
        for p in &effects.positions {
            self.crumbs.offer(Breadcrumb::from_position(p));
        }
        let m = &self.shared.metrics;
        m.add_pushed(
            crate::tracking::fanout::WEBTRANSPORT,
            effects.datagrams_sent,
        );
        for _ in 0..effects.overflowed {
            m.reject("overflow");
        }
        for (id, e) in &effects.refused_status_changes {
            tracing::warn!(delivery_id = %id, error = %e, "geofence status change dropped");
        }
        if effects.refused_anomalies > 0 {
            tracing::warn!(
                anomalies = effects.refused_anomalies,
                "anomalies not stored: the event log queue is full"
            );
        }
    }

    /// Periodic work: location-unavailable and countdown ETA frames, expiry of idle deliveries.
    pub fn tick(&self, now_ms: u64) {
        let (overflowed, expired) = self.shared.shards.tick(now_ms);
        for _ in 0..overflowed {
            self.shared.metrics.reject("overflow");
        }
        for id in expired {
            tracing::debug!(delivery_id = %id, "dropped idle delivery state");
        }
    }

    /// The REST view of a delivery.
    pub fn snapshot(&self, id: DeliveryId) -> Option<Snapshot> {
        self.shared.shards.snapshot(id, self.clock.now_ms())
    }

    /// Snapshots of the held deliveries (only the open ones unless `all`), by id.
    pub fn snapshots(&self, all: bool) -> Vec<Snapshot> {
        self.shared.shards.snapshots(nodekit::unix_ms(), all)
    }

    /// A held delivery's durable record and current status.
    pub fn record(&self, id: DeliveryId) -> Option<(DeliveryRecord, DeliveryStatus)> {
        self.shared.shards.record(id, nodekit::unix_ms())
    }

    /// Number of deliveries held in memory.
    pub fn deliveries_held(&self) -> usize {
        self.shared.shards.len()
    }

    /// Loads a delivery read from the log into the live state (replacing what was held);
    /// consumers watching an older copy get the events it lacked.
    pub fn restore(&self, rec: RecoveredDelivery) {
        let p = self.shared.shards.restore(self.clock.now_ms(), rec);
        for _ in 0..p.overflowed {
            self.shared.metrics.reject("overflow");
        }
    }

    /// Deliveries a replica fenced since the last call.
    pub fn take_fenced(&self) -> Vec<DeliveryId> {
        std::mem::take(&mut *self.shared.fenced.lock())
    }

    /// Subscribes a consumer: snapshot and subscription are taken atomically, so every event
    /// after the snapshot arrives live and every event before it can be read from the log.
    pub fn open_consumer(
        &self,
        id: DeliveryId,
        last_event_seq: Option<u64>,
        transport: &'static str,
        datagrams: Option<Arc<dyn DatagramOut>>,
    ) -> Result<ConsumerStart, ApiFailure> {
        let (snapshot, subscription) = self
            .shared
            .shards
            .open(id, self.clock.now_ms(), transport, datagrams)
            .ok_or_else(|| ApiFailure::NotFound(format!("delivery {id} not found")))?;
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
    pub fn opening_frames(start: &ConsumerStart) -> Vec<Encoded> {
        let mut v = vec![Encoded::new(&ConsumerFrame::Snapshot(
            start.snapshot.clone(),
        ))];
        v.extend(
            start
                .missed
                .iter()
                .map(|e| Encoded::new(&ConsumerFrame::Status(e.clone()))),
        );
        v
    }

    /// Whether a frame is news to this session (positions and events it has not sent yet).
    fn admit(&mut self, frame: &Encoded) -> bool {
        match frame.kind {
            FrameKind::Status { event_seq } => {
                if event_seq <= self.last_event_seq {
                    return false;
                }
                self.last_event_seq = event_seq;
                true
            }
            FrameKind::Position { seq } => {
                if seq <= self.last_position_seq {
                    return false;
                }
                self.last_position_seq = seq;
                true
            }
            FrameKind::Redirect | FrameKind::Other => true,
        }
    }

    /// Waits for the next frames and appends them to `out`: everything already waiting,
    /// reliable frames first, so a session writes them in one go. Returns false when the
    /// hub cut the consumer off (after whatever was queued before).
    pub async fn next_batch(&mut self, sub: &mut Subscription, out: &mut Vec<Encoded>) -> bool {
        loop {
            tokio::select! {
                biased;
                frame = sub.reliable.recv() => {
                    let Some(frame) = frame else { return false };
                    if self.admit(&frame) {
                        out.push(frame);
                    }
                    // More may be queued behind it.
                    while let Ok(frame) = sub.reliable.try_recv() {
                        if self.admit(&frame) {
                            out.push(frame);
                        }
                    }
                }
                pos = sub.position.next() => {
                    if self.admit(&pos) {
                        out.push(pos);
                    }
                }
            }
            if let Some(p) = sub.position.take() {
                if self.admit(&p) {
                    out.push(p);
                }
            }
            if !out.is_empty() {
                return true;
            }
        }
    }
}

impl crate::replication::Host for Hub {
    fn store(&self) -> &Store {
        &self.store
    }
    fn metrics(&self) -> &HubMetrics {
        &self.shared.metrics
    }
    fn cluster(&self) -> Option<&Arc<HubCluster>> {
        self.cluster.as_ref()
    }
    fn held(&self, id: DeliveryId) -> Option<u64> {
        self.snapshot(id).map(|s| s.last_event_seq)
    }
    fn restore(&self, rec: RecoveredDelivery) {
        Hub::restore(self, rec);
    }
    fn redirect_consumers(&self, id: DeliveryId, url: &dyn Fn(&'static str) -> String) {
        self.shared.shards.publish_redirect(id, url);
    }
    fn unload(&self, id: DeliveryId) {
        if self.shared.shards.unload(id) {
            self.shared.fenced.lock().push(id);
        }
    }
    fn take_fenced(&self) -> Vec<DeliveryId> {
        Hub::take_fenced(self)
    }
    fn deliveries_held(&self) -> usize {
        Hub::deliveries_held(self)
    }
    fn draining(&self) -> bool {
        self.draining.is_cancelled()
    }
}
