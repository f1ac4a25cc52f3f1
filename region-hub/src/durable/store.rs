//! The durable event log in redb: status events, delivery records, idempotency keys, and the
//! group-commit writer that appends them.

use crate::durable::outbox::OutboxWriter;
use crate::metrics::HubMetrics;
use crate::tracking::anomaly::{Anomaly, AnomalyKind};
use crate::tracking::deliveries::{
    DeliveryRecord, LogEntry, RecoveredDelivery, SideRecord, TrackingState,
};
use crate::tracking::proof::ProofRecord;
use protocol::consumer::StatusEvent;
use protocol::DeliveryId;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// `(delivery_id, event_seq)` -> JSON [`StatusEvent`].
const EVENTS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("events");
/// `delivery_id` -> JSON [`DeliveryRecord`].
const DELIVERIES: TableDefinition<u64, &[u8]> = TableDefinition::new("deliveries");
/// `(delivery_id, idempotency key)` -> event_seq.
const IDEMPOTENCY: TableDefinition<(u64, &str), u64> = TableDefinition::new("idempotency");
/// `delivery_id` -> JSON [`ProofRecord`].
const PROOFS: TableDefinition<u64, &[u8]> = TableDefinition::new("proofs");
/// `(delivery_id, "platform:token")` -> (): devices registered for push notifications.
const DEVICES: TableDefinition<(u64, &str), ()> = TableDefinition::new("devices");
/// `(ts_ms, delivery_id, kind)` -> JSON [`Anomaly`].
const ANOMALIES: TableDefinition<(u64, u64, u8), &[u8]> = TableDefinition::new("anomalies");
/// `delivery_id` -> (version, JSON [`TrackingState`]): the newest zone and anomaly state.
const TRACKING: TableDefinition<u64, (u64, &[u8])> = TableDefinition::new("tracking");
/// `(delivery_id, event_seq)` -> the write epoch the event was written under, when above 0
/// (absent: 0, which is also every event of a log from before epochs).
const EVENT_EPOCHS: TableDefinition<(u64, u64), u64> = TableDefinition::new("event_epochs");
/// `delivery_id` -> (the highest write epoch this hub knows of the delivery, the epoch this
/// hub writes it under since its last takeover). See [`Store::begin_epoch`].
const EPOCHS: TableDefinition<u64, (u64, u64)> = TableDefinition::new("epochs");

/// Why the log could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("opening event log {path}: {source}")]
    Open { path: PathBuf, source: redb::Error },
    #[error("event log: {0}")]
    Db(#[from] redb::Error),
    #[error("event log holds an undecodable {what} for delivery {id}: {reason}")]
    Corrupt {
        what: &'static str,
        id: u64,
        reason: String,
    },
    #[error("encoding {0}")]
    Encode(String),
    #[error("the event log writer is gone (hub shutting down)")]
    Closed,
    #[error("delivery {0} is served by another hub right now (ownership is moving); retry")]
    Fenced(DeliveryId),
    #[error("delivery {0}: no replica stored the change in time (cluster_hub.min_copies = 2); not stored, retry")]
    NoReplica(DeliveryId),
}

/// What [`Replicate::replicate`] returns: the deliveries whose entries must not be committed.
pub type Refused<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Vec<(DeliveryId, Refusal)>> + Send + 'a>>;

/// Why the replication hook refused a delivery's entries (they are then not committed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A replica serves the delivery itself, or holds other events under the same seqs.
    Fenced,
    /// No replica acknowledged them and a second copy is required.
    NoReplica,
}

impl StoreError {
    pub(crate) fn db(e: impl Into<redb::Error>) -> Self {
        StoreError::Db(e.into())
    }
}

/// The hub's redb database, and beside it the breadcrumb history's (`durable::history`).
/// Clones share them; [`Store::close`] releases the files even while stray clones (e.g. in
/// lingering connection tasks) are still alive.
#[derive(Clone, Debug)]
pub struct Store {
    db: Arc<parking_lot::Mutex<Option<Arc<Database>>>>,
    history: Arc<crate::durable::history::History>,
    outbox: Arc<OutboxSignal>,
}

/// Tells the webhook sender what was committed to the outbox since it last looked, and that
/// the subscriptions changed.
#[derive(Debug, Default)]
struct OutboxSignal {
    fresh: parking_lot::Mutex<Vec<crate::webhooks::dispatch::Pending>>,
    subscriptions_changed: std::sync::atomic::AtomicBool,
    notify: tokio::sync::Notify,
}

/// Page cache of a store opened with [`Store::open`].
pub const DEFAULT_CACHE_BYTES: usize = 64 << 20;

impl Store {
    /// Opens (or creates) the database at `path` with a [`DEFAULT_CACHE_BYTES`] page cache and
    /// makes sure every table exists.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with_cache(path, DEFAULT_CACHE_BYTES)
    }

    /// [`Store::open`] with a page cache of `cache_bytes` (redb's own default is 1 GiB, which
    /// a hub writing breadcrumbs all day fills: memory that grows with time, not with load).
    pub fn open_with_cache(path: &Path, cache_bytes: usize) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
                path: path.to_path_buf(),
                source: redb::Error::Io(e),
            })?;
        }
        let db = Database::builder()
            .set_cache_size(cache_bytes)
            .create(path)
            .map_err(|e| StoreError::Open {
                path: path.to_path_buf(),
                source: e.into(),
            })?;
        let history = crate::durable::history::History::open(&path.with_extension("history.redb"))?;
        Self::with_db(db, history)
    }

    /// A store held in memory only (the cluster simulation, tests): gone when dropped.
    pub fn in_memory() -> Result<Self, StoreError> {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|e| StoreError::Open {
                path: ":memory:".into(),
                source: e.into(),
            })?;
        Self::with_db(db, crate::durable::history::History::in_memory()?)
    }

    fn with_db(
        db: Database,
        history: crate::durable::history::History,
    ) -> Result<Self, StoreError> {
        let tx = db.begin_write().map_err(StoreError::db)?;
        tx.open_table(EVENTS).map_err(StoreError::db)?;
        tx.open_table(DELIVERIES).map_err(StoreError::db)?;
        tx.open_table(IDEMPOTENCY).map_err(StoreError::db)?;
        tx.open_table(ANOMALIES).map_err(StoreError::db)?;
        tx.open_table(PROOFS).map_err(StoreError::db)?;
        tx.open_table(DEVICES).map_err(StoreError::db)?;
        tx.open_table(TRACKING).map_err(StoreError::db)?;
        tx.open_table(EVENT_EPOCHS).map_err(StoreError::db)?;
        tx.open_table(EPOCHS).map_err(StoreError::db)?;
        crate::durable::plans::create_tables(&tx)?;
        tx.commit().map_err(StoreError::db)?;
        let store = Self {
            db: Arc::new(parking_lot::Mutex::new(Some(Arc::new(db)))),
            history: Arc::new(history),
            outbox: Arc::default(),
        };
        store.ensure_webhook_tables()?;
        Ok(store)
    }

    /// Hands rows just committed to the outbox to the webhook sender.
    pub(crate) fn publish_outbox(&self, rows: Vec<crate::webhooks::dispatch::Pending>) {
        if rows.is_empty() {
            return;
        }
        self.outbox.fresh.lock().extend(rows);
        self.outbox.notify.notify_one();
    }

    /// Tells the webhook sender to reload the subscriptions.
    pub(crate) fn webhooks_changed(&self) {
        self.outbox
            .subscriptions_changed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.outbox.notify.notify_one();
    }

    /// Outbox rows committed since the last call, and whether the subscriptions changed.
    pub fn take_outbox_news(&self) -> (Vec<crate::webhooks::dispatch::Pending>, bool) {
        let rows = std::mem::take(&mut *self.outbox.fresh.lock());
        let changed = self
            .outbox
            .subscriptions_changed
            .swap(false, std::sync::atomic::Ordering::Relaxed);
        (rows, changed)
    }

    /// Resolves when [`Store::take_outbox_news`] may have something.
    pub async fn outbox_news(&self) {
        self.outbox.notify.notified().await;
    }

    pub(crate) fn db(&self) -> Result<Arc<Database>, StoreError> {
        self.db.lock().clone().ok_or(StoreError::Closed)
    }

    pub(crate) fn history(&self) -> Result<&crate::durable::history::History, StoreError> {
        if self.db.lock().is_none() {
            return Err(StoreError::Closed);
        }
        Ok(&self.history)
    }

    /// Closes the database file; later calls on any clone fail with [`StoreError::Closed`].
    /// Waits for operations already running on other threads to finish.
    pub async fn close(&self) {
        let Some(db) = self.db.lock().take() else {
            return;
        };
        for db in std::iter::once(db).chain(self.history.close()) {
            Self::release(db).await;
        }
    }

    async fn release(mut db: Arc<Database>) {
        loop {
            match Arc::try_unwrap(db) {
                Ok(db) => {
                    drop(db);
                    return;
                }
                Err(still_shared) => {
                    db = still_shared;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
    }

    /// Appends entries in ONE write transaction, durable when this returns.
    pub fn append(&self, entries: &[&LogEntry]) -> Result<(), StoreError> {
        let tx = self.db()?.begin_write().map_err(StoreError::db)?;
        let fresh = {
            // Webhook rows go into the same transaction: committed together or not at all.
            let mut hooks = OutboxWriter::open(&tx, nodekit::unix_ms())?;
            let mut events = tx.open_table(EVENTS).map_err(StoreError::db)?;
            let mut deliveries = tx.open_table(DELIVERIES).map_err(StoreError::db)?;
            let mut keys = tx.open_table(IDEMPOTENCY).map_err(StoreError::db)?;
            let mut anomalies = tx.open_table(ANOMALIES).map_err(StoreError::db)?;
            let mut proofs = tx.open_table(PROOFS).map_err(StoreError::db)?;
            let mut devices = tx.open_table(DEVICES).map_err(StoreError::db)?;
            let mut tracking = tx.open_table(TRACKING).map_err(StoreError::db)?;
            let mut plans = crate::durable::plans::open_plans(&tx)?;
            let mut event_epochs = tx.open_table(EVENT_EPOCHS).map_err(StoreError::db)?;
            let epochs = tx.open_table(EPOCHS).map_err(StoreError::db)?;
            for entry in entries {
                let epoch = if entry.events.is_empty() {
                    0
                } else {
                    epochs
                        .get(entry.delivery_id.0)
                        .map_err(StoreError::db)?
                        .map_or(0, |v| v.value().1)
                };
                if epoch > 0 {
                    for ev in &entry.events {
                        event_epochs
                            .insert((entry.delivery_id.0, ev.event_seq), epoch)
                            .map_err(StoreError::db)?;
                    }
                }
                for side in &entry.side {
                    match side {
                        SideRecord::Anomaly(a) => {
                            let bytes = serde_json::to_vec(a)
                                .map_err(|e| StoreError::Encode(e.to_string()))?;
                            let kind = match a.kind {
                                AnomalyKind::Stationary => 0u8,
                                AnomalyKind::MovingAway => 1,
                            };
                            anomalies
                                .insert((a.ts_ms, a.delivery_id.0, kind), bytes.as_slice())
                                .map_err(StoreError::db)?;
                            hooks.anomaly(a)?;
                        }
                        SideRecord::Proof(p) => {
                            let bytes = serde_json::to_vec(p)
                                .map_err(|e| StoreError::Encode(e.to_string()))?;
                            proofs
                                .insert(p.delivery_id.0, bytes.as_slice())
                                .map_err(StoreError::db)?;
                            hooks.proof(p)?;
                        }
                        SideRecord::Device(d) => {
                            let key = format!("{}:{}", d.platform.as_str(), d.token);
                            devices
                                .insert((entry.delivery_id.0, key.as_str()), ())
                                .map_err(StoreError::db)?;
                        }
                        SideRecord::Tracking(t) => {
                            put_tracking(&mut tracking, entry.delivery_id.0, t)?;
                        }
                        SideRecord::Plan(p) => {
                            crate::durable::plans::put_plan(&mut plans, entry.delivery_id, p)?;
                        }
                    }
                }
                let id = entry.delivery_id.0;
                if let Some(rec) = &entry.record {
                    let bytes =
                        serde_json::to_vec(rec).map_err(|e| StoreError::Encode(e.to_string()))?;
                    deliveries
                        .insert(id, bytes.as_slice())
                        .map_err(StoreError::db)?;
                }
                for ev in &entry.events {
                    let bytes =
                        serde_json::to_vec(ev).map_err(|e| StoreError::Encode(e.to_string()))?;
                    events
                        .insert((id, ev.event_seq), bytes.as_slice())
                        .map_err(StoreError::db)?;
                    hooks.status(ev)?;
                }
                if let (Some(key), Some(ev)) = (&entry.idempotency_key, entry.events.last()) {
                    keys.insert((id, key.as_str()), ev.event_seq)
                        .map_err(StoreError::db)?;
                }
            }
            hooks.finish()?
        };
        tx.commit().map_err(StoreError::db)?;
        self.publish_outbox(fresh);
        Ok(())
    }

    /// Reads every delivery with its events and idempotency keys (recovery at start).
    pub fn load_all(&self) -> Result<Vec<RecoveredDelivery>, StoreError> {
        let tx = self.db()?.begin_read().map_err(StoreError::db)?;
        let deliveries = tx.open_table(DELIVERIES).map_err(StoreError::db)?;
        let events = tx.open_table(EVENTS).map_err(StoreError::db)?;
        let keys = tx.open_table(IDEMPOTENCY).map_err(StoreError::db)?;
        let tracking = tx.open_table(TRACKING).map_err(StoreError::db)?;
        let mut out: BTreeMap<u64, RecoveredDelivery> = BTreeMap::new();
        for row in deliveries.iter().map_err(StoreError::db)? {
            let (k, v) = row.map_err(StoreError::db)?;
            let id = k.value();
            let record: DeliveryRecord =
                serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt {
                    what: "delivery record",
                    id,
                    reason: e.to_string(),
                })?;
            out.insert(
                id,
                RecoveredDelivery {
                    record,
                    events: Vec::new(),
                    idempotency: Vec::new(),
                    tracking: None,
                    // Plans are loaded on their own at start (`durable::plans::load_plans`).
                    plan: None,
                },
            );
        }
        for row in tracking.iter().map_err(StoreError::db)? {
            let (k, v) = row.map_err(StoreError::db)?;
            let id = k.value();
            if let Some(d) = out.get_mut(&id) {
                d.tracking = Some(decode_tracking(id, v.value().1)?);
            }
        }
        for row in events.iter().map_err(StoreError::db)? {
            let (k, v) = row.map_err(StoreError::db)?;
            let (id, _) = k.value();
            let ev = decode_event(id, v.value())?;
            if let Some(d) = out.get_mut(&id) {
                d.events.push(ev);
            }
        }
        for row in keys.iter().map_err(StoreError::db)? {
            let (k, v) = row.map_err(StoreError::db)?;
            let (id, key) = k.value();
            if let Some(d) = out.get_mut(&id) {
                d.idempotency.push((key.to_owned(), v.value()));
            }
        }
        Ok(out.into_values().collect())
    }

    /// Events of `delivery` with seq greater than `after`, in order (consumer resume).
    pub fn events_after(
        &self,
        delivery: DeliveryId,
        after: u64,
    ) -> Result<Vec<StatusEvent>, StoreError> {
        let tx = self.db()?.begin_read().map_err(StoreError::db)?;
        let events = tx.open_table(EVENTS).map_err(StoreError::db)?;
        let start = after.saturating_add(1);
        let mut out = Vec::new();
        for row in events
            .range((delivery.0, start)..=(delivery.0, u64::MAX))
            .map_err(StoreError::db)?
        {
            let (_, v) = row.map_err(StoreError::db)?;
            out.push(decode_event(delivery.0, v.value())?);
        }
        Ok(out)
    }
}

impl Store {
    /// Stores entries received from another hub (replication or hand-off) in ONE write
    /// transaction, durable when this returns. Monotone: an event seq already stored is kept
    /// (unless the copy's event under it has a higher write epoch: see
    /// [`Store::apply_replica_checked`]),
    /// a record is replaced only when the entry reaches at least the stored last seq, and an
    /// idempotency key already stored is kept, so a stale copy never overwrites newer state.
    pub fn apply_replica(
        &self,
        entries: &[crate::durable::copies::ReplicaEntry],
    ) -> Result<(), StoreError> {
        self.apply_replica_checked(entries, false).map(|_| ())
    }

    /// [`Store::apply_replica`] that first checks each entry's events against the stored
    /// ones. With `strict` (live replication) an entry holding another event under a stored
    /// seq is a conflict ([`Applied::conflicts`]) and is not stored at all: the writer is
    /// fenced, whatever the epochs (two hubs both believing they own the delivery must not
    /// overwrite each other's acknowledged events on the replica they share). Otherwise
    /// (hand-off, takeover merge, a takeover's repair) two different events under one seq are
    /// told apart by their write epochs (`docs/cluster.md`, *Write epochs*): a stored event
    /// under a LOWER epoch than the copy's is a stray (its live copy went unanswered, so it
    /// was never acknowledged; a later takeover wrote that seq again) and is replaced, with
    /// every stored event after it under a lower epoch and their idempotency keys
    /// ([`Applied::superseded`]); one under the same or a higher epoch is kept and reported
    /// as a conflict, to be counted.
    pub fn apply_replica_checked(
        &self,
        entries: &[crate::durable::copies::ReplicaEntry],
        strict: bool,
    ) -> Result<Applied, StoreError> {
        let mut applied = Applied::default();
        let tx = self.db()?.begin_write().map_err(StoreError::db)?;
        let fresh = {
            // A copy carries its webhook rows with it: a successor that takes the delivery
            // over has them pending (only events new here, so a re-sent copy adds none).
            let mut hooks = OutboxWriter::open(&tx, nodekit::unix_ms())?;
            let mut events = tx.open_table(EVENTS).map_err(StoreError::db)?;
            let mut deliveries = tx.open_table(DELIVERIES).map_err(StoreError::db)?;
            let mut keys = tx.open_table(IDEMPOTENCY).map_err(StoreError::db)?;
            let mut proofs = tx.open_table(PROOFS).map_err(StoreError::db)?;
            let mut devices = tx.open_table(DEVICES).map_err(StoreError::db)?;
            let mut tracking = tx.open_table(TRACKING).map_err(StoreError::db)?;
            let mut plans = crate::durable::plans::open_plans(&tx)?;
            let mut event_epochs = tx.open_table(EVENT_EPOCHS).map_err(StoreError::db)?;
            let mut epochs = tx.open_table(EPOCHS).map_err(StoreError::db)?;
            for entry in entries {
                let id = entry.delivery_id.0;
                let mut conflict = false;
                for (i, ev) in entry.events.iter().enumerate() {
                    if let Some(stored) = events.get((id, ev.event_seq)).map_err(StoreError::db)? {
                        let ours = event_epochs
                            .get((id, ev.event_seq))
                            .map_err(StoreError::db)?
                            .map_or(0, |v| v.value());
                        if stored.value() != enc(ev)?.as_slice()
                            && (strict || ours >= entry.epoch_of(i))
                        {
                            conflict = true;
                            break;
                        }
                    }
                }
                if conflict {
                    applied.conflicts.push(entry.delivery_id);
                    if strict {
                        continue;
                    }
                }
                let stored_last = events
                    .range((id, 0)..=(id, u64::MAX))
                    .map_err(StoreError::db)?
                    .next_back()
                    .transpose()
                    .map_err(StoreError::db)?
                    .map_or(0, |(k, _)| k.value().1);
                let entry_last = entry.events.last().map_or(0, |e| e.event_seq);
                if let Some(rec) = &entry.record {
                    if entry_last >= stored_last
                        || deliveries.get(id).map_err(StoreError::db)?.is_none()
                    {
                        deliveries
                            .insert(id, enc(rec)?.as_slice())
                            .map_err(StoreError::db)?;
                    }
                }
                let mut superseded = false;
                for (i, ev) in entry.events.iter().enumerate() {
                    let epoch = entry.epoch_of(i);
                    let bytes = enc(ev)?;
                    let stored = events
                        .get((id, ev.event_seq))
                        .map_err(StoreError::db)?
                        .map(|v| v.value().to_vec());
                    match stored {
                        Some(s) if s == bytes => continue,
                        Some(_) => {
                            let ours = event_epochs
                                .get((id, ev.event_seq))
                                .map_err(StoreError::db)?
                                .map_or(0, |v| v.value());
                            if ours >= epoch {
                                continue; // a conflict: ours kept
                            }
                            // A stray: it and every later event under a lower epoch go.
                            let mut gone = Vec::new();
                            for row in events
                                .range((id, ev.event_seq)..=(id, u64::MAX))
                                .map_err(StoreError::db)?
                            {
                                let (k, _) = row.map_err(StoreError::db)?;
                                let seq = k.value().1;
                                let e = event_epochs
                                    .get((id, seq))
                                    .map_err(StoreError::db)?
                                    .map_or(0, |v| v.value());
                                if e < epoch {
                                    gone.push(seq);
                                }
                            }
                            for seq in &gone {
                                events.remove((id, *seq)).map_err(StoreError::db)?;
                                event_epochs.remove((id, *seq)).map_err(StoreError::db)?;
                            }
                            let mut stale_keys = Vec::new();
                            for row in keys.range((id, "")..).map_err(StoreError::db)? {
                                let (k, v) = row.map_err(StoreError::db)?;
                                let (kid, key) = k.value();
                                if kid != id {
                                    break;
                                }
                                if gone.contains(&v.value()) {
                                    stale_keys.push(key.to_owned());
                                }
                            }
                            for key in &stale_keys {
                                keys.remove((id, key.as_str())).map_err(StoreError::db)?;
                            }
                            superseded = true;
                        }
                        None => {}
                    }
                    events
                        .insert((id, ev.event_seq), bytes.as_slice())
                        .map_err(StoreError::db)?;
                    if epoch > 0 {
                        event_epochs
                            .insert((id, ev.event_seq), epoch)
                            .map_err(StoreError::db)?;
                    }
                    hooks.status(ev)?;
                }
                if superseded {
                    applied.superseded.push(entry.delivery_id);
                }
                let known = (0..entry.events.len())
                    .map(|i| entry.epoch_of(i))
                    .fold(entry.epoch, u64::max);
                if known > 0 {
                    let (k, w) = epochs
                        .get(id)
                        .map_err(StoreError::db)?
                        .map_or((0, 0), |v| v.value());
                    if known > k {
                        epochs.insert(id, (known, w)).map_err(StoreError::db)?;
                    }
                }
                for (key, seq) in &entry.idempotency {
                    if keys
                        .get((id, key.as_str()))
                        .map_err(StoreError::db)?
                        .is_none()
                    {
                        keys.insert((id, key.as_str()), *seq)
                            .map_err(StoreError::db)?;
                    }
                }
                for p in &entry.proofs {
                    let known = proofs
                        .get(id)
                        .map_err(StoreError::db)?
                        .and_then(|v| serde_json::from_slice::<ProofRecord>(v.value()).ok())
                        .is_some_and(|old| old.sha256 == p.sha256);
                    proofs
                        .insert(id, enc(p)?.as_slice())
                        .map_err(StoreError::db)?;
                    if !known {
                        hooks.proof(p)?;
                    }
                }
                for d in &entry.devices {
                    let key = format!("{}:{}", d.platform.as_str(), d.token);
                    devices
                        .insert((id, key.as_str()), ())
                        .map_err(StoreError::db)?;
                }
                if let Some(t) = &entry.tracking {
                    put_tracking(&mut tracking, id, t)?;
                }
                if let Some(p) = &entry.plan {
                    crate::durable::plans::put_newer_plan(&mut plans, entry.delivery_id, p)?;
                }
            }
            hooks.finish()?
        };
        tx.commit().map_err(StoreError::db)?;
        self.publish_outbox(fresh);
        Ok(applied)
    }

    /// Starts a new write epoch of `id` on taking it over (a takeover, or loading a hand-off):
    /// one above every epoch this hub knows of it (its own earlier ones, and those of every
    /// copy it stored or merged, so a takeover merges the peers' copies first). Durable when
    /// this returns; the events this hub writes of `id` from now on carry it.
    pub fn begin_epoch(&self, id: DeliveryId) -> Result<u64, StoreError> {
        let tx = self.db()?.begin_write().map_err(StoreError::db)?;
        let epoch = {
            let mut epochs = tx.open_table(EPOCHS).map_err(StoreError::db)?;
            let known = epochs
                .get(id.0)
                .map_err(StoreError::db)?
                .map_or(0, |v| v.value().0);
            let epoch = known.saturating_add(1);
            epochs
                .insert(id.0, (epoch, epoch))
                .map_err(StoreError::db)?;
            epoch
        };
        tx.commit().map_err(StoreError::db)?;
        Ok(epoch)
    }

    /// The epochs this hub writes `ids` under (0 for a delivery it never took over: created
    /// here, or a log from before epochs), for the copies of a batch.
    pub fn write_epochs(
        &self,
        ids: impl IntoIterator<Item = DeliveryId>,
    ) -> Result<HashMap<DeliveryId, u64>, StoreError> {
        let tx = self.db()?.begin_read().map_err(StoreError::db)?;
        let epochs = tx.open_table(EPOCHS).map_err(StoreError::db)?;
        let mut out = HashMap::new();
        for id in ids {
            let w = epochs
                .get(id.0)
                .map_err(StoreError::db)?
                .map_or(0, |v| v.value().1);
            if w > 0 {
                out.insert(id, w);
            }
        }
        Ok(out)
    }

    /// The highest write epoch this hub knows of `id`, and the write epoch of each of `seqs`
    /// (0 when unrecorded), for a whole-log copy.
    pub fn epochs_of(
        &self,
        id: DeliveryId,
        seqs: impl IntoIterator<Item = u64>,
    ) -> Result<(u64, Vec<u64>), StoreError> {
        let tx = self.db()?.begin_read().map_err(StoreError::db)?;
        let epochs = tx.open_table(EPOCHS).map_err(StoreError::db)?;
        let event_epochs = tx.open_table(EVENT_EPOCHS).map_err(StoreError::db)?;
        let known = epochs
            .get(id.0)
            .map_err(StoreError::db)?
            .map_or(0, |v| v.value().0);
        let mut per_event = Vec::new();
        for seq in seqs {
            per_event.push(
                event_epochs
                    .get((id.0, seq))
                    .map_err(StoreError::db)?
                    .map_or(0, |v| v.value()),
            );
        }
        Ok((known, per_event))
    }

    /// One delivery's durable state (record, events, idempotency keys), for a takeover.
    pub fn load_delivery(
        &self,
        delivery: DeliveryId,
    ) -> Result<Option<RecoveredDelivery>, StoreError> {
        let Some(record) = self.delivery(delivery)? else {
            return Ok(None);
        };
        let events = self.events_after(delivery, 0)?;
        let idempotency = self.idempotency_keys(delivery)?;
        Ok(Some(RecoveredDelivery {
            record,
            events,
            idempotency,
            tracking: self.tracking(delivery)?,
            plan: crate::durable::plans::load_plan(self, delivery)?,
        }))
    }

    /// The newest stored zone and anomaly state of `delivery`, if any.
    pub fn tracking(&self, delivery: DeliveryId) -> Result<Option<TrackingState>, StoreError> {
        let tx = self.db()?.begin_read().map_err(StoreError::db)?;
        let table = tx.open_table(TRACKING).map_err(StoreError::db)?;
        let Some(v) = table.get(delivery.0).map_err(StoreError::db)? else {
            return Ok(None);
        };
        decode_tracking(delivery.0, v.value().1).map(Some)
    }

    /// The idempotency keys stored for `delivery` and the seq each produced (also for a
    /// delivery whose record this hub does not hold: a replica that missed its creation).
    pub fn idempotency_keys(&self, delivery: DeliveryId) -> Result<Vec<(String, u64)>, StoreError> {
        let tx = self.db()?.begin_read().map_err(StoreError::db)?;
        let keys = tx.open_table(IDEMPOTENCY).map_err(StoreError::db)?;
        let mut idempotency = Vec::new();
        for row in keys.range((delivery.0, "")..).map_err(StoreError::db)? {
            let (k, v) = row.map_err(StoreError::db)?;
            let (id, key) = k.value();
            if id != delivery.0 {
                break;
            }
            idempotency.push((key.to_owned(), v.value()));
        }
        Ok(idempotency)
    }

    /// Ids of every delivery with a stored record or stored events (own and replicated ones:
    /// a replica that missed a delivery's creation holds events without the record), in order.
    pub fn delivery_ids(&self) -> Result<Vec<DeliveryId>, StoreError> {
        let tx = self.db()?.begin_read().map_err(StoreError::db)?;
        let table = tx.open_table(DELIVERIES).map_err(StoreError::db)?;
        let mut out = std::collections::BTreeSet::new();
        for row in table.iter().map_err(StoreError::db)? {
            let (k, _) = row.map_err(StoreError::db)?;
            out.insert(k.value());
        }
        // One lookup per delivery, not per event: skip to the next delivery's first event.
        let events = tx.open_table(EVENTS).map_err(StoreError::db)?;
        let mut from = 0u64;
        loop {
            let next = events
                .range((from, 0)..)
                .map_err(StoreError::db)?
                .next()
                .transpose()
                .map_err(StoreError::db)?
                .map(|(k, _)| k.value().0);
            let Some(id) = next else { break };
            out.insert(id);
            match id.checked_add(1) {
                Some(n) => from = n,
                None => break,
            }
        }
        Ok(out.into_iter().map(DeliveryId).collect())
    }
}

/// What storing copies did ([`Store::apply_replica_checked`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Deliveries whose copy held another event under a seq stored here under the same or a
    /// higher write epoch: ours is kept (with `strict`, nothing of the entry is stored).
    pub conflicts: Vec<DeliveryId>,
    /// Deliveries whose copy replaced a stray: an event stored here under a lower write epoch
    /// than the copy's event under the same seq (with every later one under a lower epoch).
    pub superseded: Vec<DeliveryId>,
}

/// Stores `t` unless a state of the same or a newer version is stored.
fn put_tracking(
    table: &mut redb::Table<u64, (u64, &[u8])>,
    id: u64,
    t: &TrackingState,
) -> Result<(), StoreError> {
    let stored = table.get(id).map_err(StoreError::db)?.map(|v| v.value().0);
    if stored.is_some_and(|v| v >= t.version) {
        return Ok(());
    }
    table
        .insert(id, (t.version, enc(t)?.as_slice()))
        .map_err(StoreError::db)?;
    Ok(())
}

fn decode_tracking(id: u64, bytes: &[u8]) -> Result<TrackingState, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        what: "zone and anomaly state",
        id,
        reason: e.to_string(),
    })
}

fn enc<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Encode(e.to_string()))
}

impl Store {
    /// Deletes anomalies detected before `cutoff_ms` inside the write transaction `tx`.
    pub(crate) fn purge_anomalies_in(
        &self,
        tx: &redb::WriteTransaction,
        cutoff_ms: u64,
    ) -> Result<(), StoreError> {
        let mut table = tx.open_table(ANOMALIES).map_err(StoreError::db)?;
        table
            .retain_in((0u64, 0u64, 0u8)..(cutoff_ms, 0u64, 0u8), |_, _| false)
            .map_err(StoreError::db)?;
        Ok(())
    }

    /// Every registered push device, by delivery (loaded at start). Rows that no longer
    /// validate are skipped.
    pub fn devices(&self) -> Result<Vec<(DeliveryId, notify::DeviceToken)>, StoreError> {
        let tx = self.db()?.begin_read().map_err(StoreError::db)?;
        let table = tx.open_table(DEVICES).map_err(StoreError::db)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(StoreError::db)? {
            let (k, _) = row.map_err(StoreError::db)?;
            let (id, key) = k.value();
            let parsed = match key.split_once(':') {
                Some(("apns", t)) => notify::DeviceToken::new(notify::Platform::Apns, t).ok(),
                Some(("fcm", t)) => notify::DeviceToken::new(notify::Platform::Fcm, t).ok(),
                _ => None,
            };
            match parsed {
                Some(d) => out.push((DeliveryId(id), d)),
                None => tracing::warn!(delivery_id = id, "skipping an unreadable push device"),
            }
        }
        Ok(out)
    }

    /// Forgets devices the push services reported gone, for every delivery.
    pub fn remove_devices(&self, gone: &[notify::DeviceToken]) -> Result<usize, StoreError> {
        let keys: Vec<String> = gone
            .iter()
            .map(|d| format!("{}:{}", d.platform.as_str(), d.token))
            .collect();
        let tx = self.db()?.begin_write().map_err(StoreError::db)?;
        let mut removed = 0;
        {
            let mut table = tx.open_table(DEVICES).map_err(StoreError::db)?;
            table
                .retain(|(_, key), ()| {
                    let keep = !keys.iter().any(|k| k == key);
                    removed += usize::from(!keep);
                    keep
                })
                .map_err(StoreError::db)?;
        }
        tx.commit().map_err(StoreError::db)?;
        Ok(removed)
    }

    /// The proof of delivery of `delivery`, if one was uploaded.
    pub fn proof(&self, delivery: DeliveryId) -> Result<Option<ProofRecord>, StoreError> {
        let tx = self.db()?.begin_read().map_err(StoreError::db)?;
        let table = tx.open_table(PROOFS).map_err(StoreError::db)?;
        let Some(v) = table.get(delivery.0).map_err(StoreError::db)? else {
            return Ok(None);
        };
        serde_json::from_slice(v.value())
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                what: "proof record",
                id: delivery.0,
                reason: e.to_string(),
            })
    }

    /// The delivery's durable record, whether or not its live state is still held.
    pub fn delivery(&self, delivery: DeliveryId) -> Result<Option<DeliveryRecord>, StoreError> {
        let tx = self.db()?.begin_read().map_err(StoreError::db)?;
        let table = tx.open_table(DELIVERIES).map_err(StoreError::db)?;
        let Some(v) = table.get(delivery.0).map_err(StoreError::db)? else {
            return Ok(None);
        };
        serde_json::from_slice(v.value())
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                what: "delivery record",
                id: delivery.0,
                reason: e.to_string(),
            })
    }

    /// The newest anomalies first (at most `limit`), optionally of one delivery only.
    pub fn anomalies(
        &self,
        delivery: Option<DeliveryId>,
        limit: usize,
    ) -> Result<Vec<Anomaly>, StoreError> {
        let tx = self.db()?.begin_read().map_err(StoreError::db)?;
        let table = tx.open_table(ANOMALIES).map_err(StoreError::db)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(StoreError::db)?.rev() {
            if out.len() >= limit {
                break;
            }
            let (k, v) = row.map_err(StoreError::db)?;
            let (_, id, _) = k.value();
            if delivery.is_some_and(|d| d.0 != id) {
                continue;
            }
            out.push(
                serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt {
                    what: "anomaly",
                    id,
                    reason: e.to_string(),
                })?,
            );
        }
        Ok(out)
    }
}

fn decode_event(id: u64, bytes: &[u8]) -> Result<StatusEvent, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        what: "status event",
        id,
        reason: e.to_string(),
    })
}

/// Told by the writer what happened to each batch, in log order, BEFORE callers are answered.
pub trait CommitSink: Send + Sync + 'static {
    /// The entries are durable.
    fn committed(&self, entries: &[LogEntry]);
    /// The entries could not be written (abort them newest first).
    fn failed(&self, entries: &[LogEntry]);
    /// Replication refused these entries (a replica fenced their deliveries, or no replica
    /// stored them and a second copy is required). Abort the entries and stop serving the
    /// deliveries until they are taken over afresh (the default only aborts).
    fn fenced(&self, entries: &[LogEntry]) {
        self.failed(entries);
    }
}

struct AppendRequest {
    entry: LogEntry,
    reply: oneshot::Sender<Result<(), Arc<StoreError>>>,
}

/// Why an append could not even be queued.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubmitError {
    #[error("the event log queue is full")]
    Full,
    #[error("the event log writer is gone (hub shutting down)")]
    Closed,
}

/// Queue in front of the group-commit writer.
#[derive(Clone, Debug)]
pub struct EventLogHandle {
    tx: mpsc::Sender<AppendRequest>,
}

/// Answer of one append: `Ok` once the entry is durable.
pub type AppendReceipt = oneshot::Receiver<Result<(), Arc<StoreError>>>;

impl EventLogHandle {
    /// Queues an entry without waiting (callable under a lock, so queue order is log order).
    pub fn submit(&self, entry: LogEntry) -> Result<AppendReceipt, SubmitError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .try_send(AppendRequest { entry, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => SubmitError::Full,
                mpsc::error::TrySendError::Closed(_) => SubmitError::Closed,
            })?;
        Ok(rx)
    }
}

/// Group-commit tuning.
#[derive(Clone, Copy, Debug)]
pub struct WriterConfig {
    pub max_batch: usize,
    pub max_delay: Duration,
    pub queue: usize,
}

/// Copies entries to another hub before they are committed here, published and
/// acknowledged (cluster mode, `replication::replica`). What could not be replicated is counted
/// and committed anyway; what the replica fenced is not committed.
pub trait Replicate: Send + Sync + 'static {
    /// Returns once the entries are durable on the replica, or replication was given up;
    /// the result names the deliveries whose entries must not be committed, and why.
    /// `epochs`: the write epoch of each delivery ([`Store::write_epochs`]; absent: 0), which
    /// the copies carry.
    fn replicate<'a>(
        &'a self,
        entries: &'a [LogEntry],
        epochs: &'a HashMap<DeliveryId, u64>,
    ) -> Refused<'a>;
}

/// [`spawn_event_log_replicated`] without replication (a single hub).
pub fn spawn_event_log(
    store: Store,
    config: WriterConfig,
    sink: Arc<dyn CommitSink>,
    metrics: Arc<HubMetrics>,
    shutdown: CancellationToken,
) -> (EventLogHandle, tokio::task::JoinHandle<()>) {
    spawn_event_log_replicated(store, config, sink, None, metrics, shutdown)
}

/// Starts the writer task: it takes what is queued (up to `max_batch`, waiting at most
/// `max_delay` for more after the first), commits one write transaction, tells `sink`, then
/// answers every caller. On shutdown it commits what is queued and stops.
///
/// With a `replicator`, each committed batch is copied to the replica before `sink` hears of
/// it and before any caller is answered (synchronous primary-backup, `docs/cluster.md`).
pub fn spawn_event_log_replicated(
    store: Store,
    config: WriterConfig,
    sink: Arc<dyn CommitSink>,
    replicator: Option<Arc<dyn Replicate>>,
    metrics: Arc<HubMetrics>,
    shutdown: CancellationToken,
) -> (EventLogHandle, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<AppendRequest>(config.queue.max(1));
    let task = tokio::spawn(
        async move {
        // Per delivery: entries of generations below this were fenced by a replica.
        let mut fence_floor: HashMap<DeliveryId, u64> = HashMap::new();
        loop {
            let first = tokio::select! {
                biased;
                r = rx.recv() => match r { Some(r) => r, None => break },
                _ = shutdown.cancelled() => {
                    rx.close();
                    match rx.recv().await { Some(r) => r, None => break }
                }
            };
            let mut batch = vec![first];
            let deadline = tokio::time::Instant::now() + config.max_delay;
            while batch.len() < config.max_batch {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                    Err(mpsc::error::TryRecvError::Empty) => {
                        if config.max_delay.is_zero() || shutdown.is_cancelled() {
                            break;
                        }
                        match tokio::time::timeout_at(deadline, rx.recv()).await {
                            Ok(Some(r)) => batch.push(r),
                            Ok(None) | Err(_) => break,
                        }
                    }
                }
            }
            let (entries, replies): (Vec<LogEntry>, Vec<_>) = batch.into_iter().map(|r| (r.entry, r.reply)).unzip();
            // Replicate first (synchronous primary-backup): the replica is the fence against
            // a second hub serving the same delivery, so nothing it refuses is written here.
            // Entries reserved by an incarnation that a replica already fenced fail as well.
            let stale = |e: &LogEntry| {
                !e.events.is_empty() && fence_floor.get(&e.delivery_id).is_some_and(|&g| e.generation < g)
            };
            let mut fenced: HashMap<DeliveryId, Refusal> =
                entries.iter().filter(|e| stale(e)).map(|e| (e.delivery_id, Refusal::Fenced)).collect();
            if let Some(r) = &replicator {
                // The copies carry the epoch each delivery is written under (a small read).
                let epochs = match store.write_epochs(entries.iter().filter(|e| !e.events.is_empty()).map(|e| e.delivery_id)) {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::warn!(error = %e, "write epochs not read; copies carry epoch 0");
                        HashMap::new()
                    }
                };
                // The batch as it is in the common case (nothing stale), without copying it.
                let refused = if fenced.is_empty() {
                    r.replicate(&entries, &epochs).await
                } else {
                    let live: Vec<LogEntry> = entries.iter().filter(|e| !stale(e)).cloned().collect();
                    if live.is_empty() { Vec::new() } else { r.replicate(&live, &epochs).await }
                };
                for (id, why) in refused {
                    fenced.entry(id).or_insert(why);
                }
            }
            let mut ok = Vec::with_capacity(entries.len());
            let mut ok_replies = Vec::with_capacity(entries.len());
            let mut refused = Vec::new();
            for (entry, reply) in entries.into_iter().zip(replies) {
                if let Some(why) = fenced.get(&entry.delivery_id) {
                    let floor = fence_floor.entry(entry.delivery_id).or_insert(0);
                    *floor = (*floor).max(entry.generation.saturating_add(1));
                    let e = match why {
                        Refusal::Fenced => StoreError::Fenced(entry.delivery_id),
                        Refusal::NoReplica => StoreError::NoReplica(entry.delivery_id),
                    };
                    let _ = reply.send(Err(Arc::new(e)));
                    refused.push(entry);
                } else {
                    ok.push(entry);
                    ok_replies.push(reply);
                }
            }
            if !refused.is_empty() {
                tracing::warn!(entries = refused.len(), "entries refused by replication: not committed");
                sink.fenced(&refused);
            }
            if ok.is_empty() {
                continue;
            }
            let (entries, replies) = (ok, ok_replies);
            let store2 = store.clone();
            let started = Instant::now();
            let (entries, result) = match tokio::task::spawn_blocking(move || {
                let refs: Vec<&LogEntry> = entries.iter().collect();
                let r = store2.append(&refs);
                (entries, r)
            })
            .await
            {
                Ok(x) => x,
                Err(e) => {
                    tracing::error!(error = %e, "event log commit task failed");
                    for reply in replies {
                        let _ = reply.send(Err(Arc::new(StoreError::Closed)));
                    }
                    continue;
                }
            };
            metrics.event_commit_seconds.observe(started.elapsed().as_secs_f64());
            metrics.event_commit_batch.observe(entries.len() as f64);
            match result {
                Ok(()) => {
                    sink.committed(&entries);
                    for reply in replies {
                        let _ = reply.send(Ok(()));
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, entries = entries.len(), "event log commit failed");
                    sink.failed(&entries);
                    let e = Arc::new(e);
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        }
        tracing::debug!("event log writer stopped");
    }
        .instrument(tracing::info_span!("event_log")),
    );
    (EventLogHandle { tx }, task)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::durable::copies::ReplicaEntry;
    use protocol::geo::LatLng;
    use protocol::status::DeliveryStatus;

    fn temp_db(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("trackline-hub-store-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir.join("hub.redb")
    }

    fn entry(
        id: u64,
        seqs: &[(u64, DeliveryStatus)],
        key: Option<&str>,
        with_record: bool,
    ) -> LogEntry {
        LogEntry {
            delivery_id: DeliveryId(id),
            record: with_record.then(|| DeliveryRecord {
                id: DeliveryId(id),
                pickup: LatLng::new(60.0, 24.0),
                dropoff: LatLng::new(60.1, 24.1),
                driver_id: None,
                created_ms: 5,
            }),
            events: seqs
                .iter()
                .map(|(s, st)| StatusEvent {
                    delivery_id: DeliveryId(id),
                    event_seq: *s,
                    status: *st,
                    ts_ms: 10 + s,
                    source: "api".into(),
                    metadata: serde_json::json!({"n": s}),
                })
                .collect(),
            idempotency_key: key.map(str::to_owned),
            side: Vec::new(),
            generation: 1,
        }
    }

    /// A copy of `seq` for delivery 1 with status `st` under write epoch `epoch`, keyed `key`.
    fn written(seq: u64, st: DeliveryStatus, key: &str, epoch: u64) -> ReplicaEntry {
        ReplicaEntry::written(&entry(1, &[(seq, st)], Some(key), false), epoch)
    }

    fn statuses(s: &Store) -> Vec<(u64, DeliveryStatus)> {
        s.events_after(DeliveryId(1), 0)
            .expect("events")
            .iter()
            .map(|e| (e.event_seq, e.status))
            .collect()
    }

    #[test]
    fn a_copy_under_a_later_epoch_replaces_a_stray_but_a_live_copy_is_fenced_whatever_its_epoch() {
        // Seed 667 & co.: the replica stored #2 (epoch 1) from an owner whose write then failed
        // (the answer was lost); a later takeover (epoch 2) wrote another #2.
        use DeliveryStatus::*;
        let s = Store::in_memory().expect("store");
        let created = ReplicaEntry::written(&entry(1, &[(1, Confirmed)], Some("k1"), true), 0);
        s.apply_replica(&[created]).expect("apply");
        let stray = written(2, EnRoute, "stray", 1);
        assert_eq!(
            s.apply_replica_checked(&[stray], true).expect("apply"),
            Applied::default()
        );
        let after_stray = written(3, Arriving, "stray-3", 1);
        s.apply_replica_checked(&[after_stray], true)
            .expect("apply");
        let legit = written(2, PickedUp, "legit", 2);
        // Live: fenced like any conflict (two hubs that both think they own the delivery must
        // not overwrite each other's acknowledged events on the replica they share).
        let live = s
            .apply_replica_checked(std::slice::from_ref(&legit), true)
            .expect("apply");
        assert_eq!(live.conflicts, vec![DeliveryId(1)]);
        assert_eq!(
            statuses(&s),
            vec![(1, Confirmed), (2, EnRoute), (3, Arriving)]
        );
        // The same seq under the same or a lower epoch, merged: ours kept, a conflict.
        let same = s
            .apply_replica_checked(&[written(2, PickedUp, "same", 1)], false)
            .expect("apply");
        assert_eq!(
            (same.conflicts, same.superseded),
            (vec![DeliveryId(1)], vec![])
        );
        assert_eq!(statuses(&s)[1], (2, EnRoute));
        // Merged (hand-off, takeover, sync): the later epoch wins; the stray and every later
        // event of a lower epoch go, with their idempotency keys.
        let merged = s.apply_replica_checked(&[legit], false).expect("apply");
        assert_eq!(merged.superseded, vec![DeliveryId(1)]);
        assert!(merged.conflicts.is_empty());
        assert_eq!(statuses(&s), vec![(1, Confirmed), (2, PickedUp)]);
        let mut keys = s.idempotency_keys(DeliveryId(1)).expect("keys");
        keys.sort();
        assert_eq!(keys, vec![("k1".to_owned(), 1), ("legit".to_owned(), 2)]);
        assert_eq!(
            s.epochs_of(DeliveryId(1), [1, 2]).expect("epochs"),
            (2, vec![0, 2])
        );
        // The stray arriving again (a late frame, a stale peer) does not come back.
        let again = s
            .apply_replica_checked(&[written(2, EnRoute, "stray", 1)], false)
            .expect("apply");
        assert_eq!(again.conflicts, vec![DeliveryId(1)]);
        assert_eq!(statuses(&s), vec![(1, Confirmed), (2, PickedUp)]);
    }

    #[test]
    fn a_takeover_writes_under_an_epoch_above_every_one_it_merged_and_old_logs_are_epoch_0() {
        use DeliveryStatus::*;
        let s = Store::in_memory().expect("store");
        // A log from before epochs (or a delivery created here): everything at 0.
        s.append(&[&entry(1, &[(1, Confirmed)], Some("a"), true)])
            .expect("append");
        assert!(s.write_epochs([DeliveryId(1)]).expect("read").is_empty());
        assert_eq!(s.epochs_of(DeliveryId(1), [1]).expect("read"), (0, vec![0]));
        // A peer's copy says epoch 4 was seen: the takeover writes under 5, durably.
        let mut peer = written(2, EnRoute, "b", 3);
        peer.epoch = 4;
        s.apply_replica(&[peer]).expect("merge");
        assert_eq!(s.begin_epoch(DeliveryId(1)).expect("begin"), 5);
        assert_eq!(
            s.write_epochs([DeliveryId(1)]).expect("read")[&DeliveryId(1)],
            5
        );
        s.append(&[&entry(1, &[(3, PickedUp)], Some("c"), false)])
            .expect("append");
        assert_eq!(
            s.epochs_of(DeliveryId(1), [1, 2, 3]).expect("read"),
            (5, vec![0, 3, 5])
        );
        // Copies merged later raise what is known, not the epoch this hub writes under.
        let mut later = written(4, Delivered, "d", 7);
        later.epoch = 7;
        s.apply_replica(&[later]).expect("merge");
        assert_eq!(
            s.write_epochs([DeliveryId(1)]).expect("read")[&DeliveryId(1)],
            5
        );
        assert_eq!(s.begin_epoch(DeliveryId(1)).expect("begin"), 8);
    }

    #[test]
    fn a_log_written_before_epochs_reopens_and_reads_at_epoch_0() {
        use DeliveryStatus::*;
        let path = temp_db("pre-epochs");
        {
            // The tables of a log from before epochs: no epoch tables at all.
            std::fs::create_dir_all(path.parent().expect("dir")).expect("dir");
            let db = Database::create(&path).expect("db");
            let tx = db.begin_write().expect("tx");
            {
                let mut events = tx.open_table(EVENTS).expect("events");
                let ev = &entry(1, &[(1, Confirmed)], None, false).events[0];
                events
                    .insert((1, 1), serde_json::to_vec(ev).expect("json").as_slice())
                    .expect("insert");
            }
            tx.commit().expect("commit");
        }
        let s = Store::open(&path).expect("reopens");
        assert_eq!(s.events_after(DeliveryId(1), 0).expect("events").len(), 1);
        assert_eq!(s.epochs_of(DeliveryId(1), [1]).expect("read"), (0, vec![0]));
        assert_eq!(s.delivery_ids().expect("ids"), vec![DeliveryId(1)]);
        assert_eq!(s.begin_epoch(DeliveryId(1)).expect("begin"), 1);
    }

    /// A replica that fences delivery 1 once, and records what it was sent.
    #[derive(Default)]
    struct FenceOnce {
        fenced: parking_lot::Mutex<bool>,
        seen: parking_lot::Mutex<Vec<(u64, u64)>>,
    }

    impl Replicate for FenceOnce {
        fn replicate<'a>(
            &'a self,
            entries: &'a [LogEntry],
            _epochs: &'a HashMap<DeliveryId, u64>,
        ) -> Refused<'a> {
            Box::pin(async move {
                let mut seen = self.seen.lock();
                for e in entries {
                    seen.push((e.delivery_id.0, e.events[0].event_seq));
                }
                let mut once = self.fenced.lock();
                if !*once && entries.iter().any(|e| e.delivery_id == DeliveryId(1)) {
                    *once = true;
                    return vec![(DeliveryId(1), Refusal::Fenced)];
                }
                Vec::new()
            })
        }
    }

    /// Records what the writer told the hub.
    #[derive(Default)]
    struct Told(parking_lot::Mutex<Vec<String>>);

    impl CommitSink for Told {
        fn committed(&self, entries: &[LogEntry]) {
            for e in entries {
                self.0.lock().push(format!("committed {}", e.delivery_id));
            }
        }
        fn failed(&self, entries: &[LogEntry]) {
            for e in entries {
                self.0.lock().push(format!("failed {}", e.delivery_id));
            }
        }
        fn fenced(&self, entries: &[LogEntry]) {
            for e in entries {
                self.0.lock().push(format!("fenced {}", e.delivery_id));
            }
        }
    }

    #[tokio::test]
    async fn fenced_entries_are_not_written_and_their_incarnation_stays_fenced() {
        let path = temp_db("fenced");
        let store = Store::open(&path).expect("open");
        let replica = Arc::new(FenceOnce::default());
        let sink = Arc::new(Told::default());
        let (log, writer) = spawn_event_log_replicated(
            store.clone(),
            WriterConfig {
                max_batch: 64,
                max_delay: Duration::ZERO,
                queue: 64,
            },
            sink.clone(),
            Some(replica.clone()),
            Arc::new(HubMetrics::new(
                &mut prometheus_client::registry::Registry::default(),
            )),
            CancellationToken::new(),
        );
        let submit = |e: LogEntry| log.submit(e).expect("queued");
        let fenced = |r: Result<(), Arc<StoreError>>| {
            matches!(
                r.as_ref().map_err(|e| &**e),
                Err(StoreError::Fenced(DeliveryId(1)))
            )
        };
        // Delivery 1 is fenced; delivery 2 in the same stream is not affected.
        let a = submit(entry(1, &[(1, DeliveryStatus::Confirmed)], None, true));
        assert!(fenced(a.await.expect("answer")));
        let b = submit(entry(2, &[(1, DeliveryStatus::Confirmed)], None, true));
        assert!(b.await.expect("answer").is_ok());
        // A later entry of the same incarnation fails without being replicated.
        let c = submit(entry(1, &[(2, DeliveryStatus::Preparing)], None, false));
        assert!(fenced(c.await.expect("answer")));
        // A new incarnation (the delivery reloaded after a takeover) is replicated again.
        let mut fresh = entry(1, &[(1, DeliveryStatus::Confirmed)], None, true);
        fresh.generation = 2;
        assert!(submit(fresh).await.expect("answer").is_ok());
        assert_eq!(*replica.seen.lock(), vec![(1, 1), (2, 1), (1, 1)]);
        assert_eq!(
            *sink.0.lock(),
            vec!["fenced 1", "committed 2", "fenced 1", "committed 1"]
        );
        assert_eq!(store.events_after(DeliveryId(1), 0).expect("read").len(), 1);
        drop(log);
        writer.await.expect("writer");
    }

    #[test]
    fn push_devices_are_stored_per_delivery_and_gone_ones_deleted_everywhere() {
        let path = temp_db("devices");
        let s = Store::open(&path).expect("open");
        let phone = notify::DeviceToken::new(notify::Platform::Fcm, "phone-1").expect("token");
        let stale =
            notify::DeviceToken::new(notify::Platform::Apns, "ab".repeat(32)).expect("token");
        for id in [1, 2] {
            s.append(&[&LogEntry::side_only(
                DeliveryId(id),
                vec![
                    SideRecord::Device(phone.clone()),
                    SideRecord::Device(stale.clone()),
                ],
            )])
            .expect("append");
        }
        assert_eq!(s.devices().expect("devices").len(), 4);
        assert_eq!(
            s.remove_devices(std::slice::from_ref(&stale))
                .expect("remove"),
            2
        );
        assert_eq!(
            s.devices().expect("devices"),
            vec![(DeliveryId(1), phone.clone()), (DeliveryId(2), phone)]
        );
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }

    #[test]
    fn replicated_entries_merge_monotonically_and_keep_their_idempotency_keys() {
        let path = temp_db("replica");
        let s = Store::open(&path).expect("open");
        let copy = |e: &LogEntry, keys: &[(&str, u64)]| ReplicaEntry {
            idempotency: keys.iter().map(|(k, s)| ((*k).to_owned(), *s)).collect(),
            ..ReplicaEntry::from(e)
        };
        let full = entry(
            1,
            &[
                (1, DeliveryStatus::Confirmed),
                (2, DeliveryStatus::Preparing),
                (3, DeliveryStatus::Cancelled),
            ],
            None,
            true,
        );
        s.apply_replica(&[copy(&full, &[("k", 3)])]).expect("apply");
        // A stale copy (seq 1..2, another key for seq 2, other metadata) changes nothing.
        let mut stale = entry(
            1,
            &[
                (1, DeliveryStatus::Confirmed),
                (2, DeliveryStatus::DriverAssigned),
            ],
            None,
            true,
        );
        stale.record.as_mut().expect("record").created_ms = 99;
        s.apply_replica(&[copy(&stale, &[("k", 2)])])
            .expect("apply");
        let got = s.load_delivery(DeliveryId(1)).expect("load").expect("some");
        assert_eq!(
            got.events.iter().map(|e| e.status).collect::<Vec<_>>(),
            vec![
                DeliveryStatus::Confirmed,
                DeliveryStatus::Preparing,
                DeliveryStatus::Cancelled
            ]
        );
        assert_eq!(got.record.created_ms, 5);
        assert_eq!(got.idempotency, vec![("k".to_owned(), 3)]);
        assert_eq!(s.delivery_ids().expect("ids"), vec![DeliveryId(1)]);
        assert!(s.load_delivery(DeliveryId(2)).expect("load").is_none());
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }

    #[test]
    fn appended_entries_survive_reopen_and_resume_from_a_seq() {
        let path = temp_db("reopen");
        {
            let s = Store::open(&path).expect("open");
            s.append(&[
                &entry(1, &[(1, DeliveryStatus::Confirmed)], None, true),
                &entry(2, &[(1, DeliveryStatus::Confirmed)], None, true),
            ])
            .expect("append");
            s.append(&[&entry(
                1,
                &[
                    (2, DeliveryStatus::Preparing),
                    (3, DeliveryStatus::Cancelled),
                ],
                Some("k"),
                false,
            )])
            .expect("append");
        }
        let s = Store::open(&path).expect("reopen");
        let all = s.load_all().expect("load");
        assert_eq!(all.len(), 2);
        assert_eq!(
            all[0]
                .events
                .iter()
                .map(|e| e.event_seq)
                .collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert_eq!(all[0].idempotency, vec![("k".to_owned(), 3)]);
        assert_eq!(all[0].events[1].metadata, serde_json::json!({"n": 2}));
        let after = s.events_after(DeliveryId(1), 1).expect("after");
        assert_eq!(
            after.iter().map(|e| e.event_seq).collect::<Vec<_>>(),
            vec![2, 3]
        );
        assert!(s.events_after(DeliveryId(2), 1).expect("after").is_empty());
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }

    #[test]
    fn zone_state_and_plans_are_logged_replicated_newest_first_and_loaded_with_the_delivery() {
        use crate::tracking::eta::StoredPlan;
        let path = temp_db("tracking");
        let s = Store::open(&path).expect("open");
        let id = DeliveryId(3);
        s.append(&[&entry(3, &[(1, DeliveryStatus::Confirmed)], None, true)])
            .expect("create");
        let loaded = s.load_delivery(id).expect("load").expect("held");
        assert_eq!(
            (loaded.tracking, loaded.plan),
            (None, None),
            "a log without them loads"
        );
        let state = |version: u64, inside: bool| {
            let mut t = TrackingState {
                version,
                ..TrackingState::default()
            };
            t.geofence.pickup.inside = inside;
            t.geofence.pickup.was_inside = true;
            t
        };
        let graph =
            roadnet::RoadGraph::grid_city(3, 3, 100.0, crate::config::GRID_ORIGIN).expect("grid");
        let n = graph.nodes();
        let plan = |version: u32| StoredPlan {
            route: graph.route(n[0], n[8]).expect("route"),
            pickup_segment: None,
            version,
        };
        // Logged by the owner with the event that goes with it.
        let mut exit = entry(3, &[(2, DeliveryStatus::PickedUp)], None, false);
        exit.side = vec![
            SideRecord::Tracking(state(2, false)),
            SideRecord::Plan(plan(2)),
        ];
        s.append(&[&exit]).expect("append");
        // A stale copy (an older version of both) does not overwrite them ...
        let stale = ReplicaEntry {
            tracking: Some(state(1, true)),
            plan: Some(plan(1)),
            ..ReplicaEntry::from(&entry(3, &[], None, false))
        };
        s.apply_replica(std::slice::from_ref(&stale))
            .expect("replica");
        let loaded = s.load_delivery(id).expect("load").expect("held");
        assert_eq!(loaded.tracking, Some(state(2, false)));
        assert_eq!(loaded.plan.map(|p| p.version), Some(2));
        // ... a newer one does.
        let newer = ReplicaEntry {
            tracking: Some(state(3, true)),
            plan: Some(plan(3)),
            ..stale
        };
        s.apply_replica(std::slice::from_ref(&newer))
            .expect("replica");
        drop(s);
        let s = Store::open(&path).expect("reopen");
        let all = s.load_all().expect("load all");
        assert_eq!(all[0].tracking, Some(state(3, true)));
        let loaded = s.load_delivery(id).expect("load").expect("held");
        assert_eq!(loaded.plan.map(|p| p.version), Some(3));
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }
}
