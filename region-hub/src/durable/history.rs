//! Breadcrumbs: every accepted fix stored in redb by a writer of its own (group commit, bounded
//! queue that sheds positions rather than throttle ingest), read back page by page for the
//! history endpoint, and purged by whole days after the retention period.

use crate::durable::store::{Store, StoreError};
use crate::metrics::HubMetrics;
use protocol::consumer::Position;
use protocol::DeliveryId;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// `(delivery_id, ts_ms)` -> [`Breadcrumb::encode`] (28 bytes).
const CRUMBS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("breadcrumbs");
/// `(unix day, delivery_id)` -> (): which deliveries have breadcrumbs on which day (purge).
const CRUMB_DAYS: TableDefinition<(u32, u64), ()> = TableDefinition::new("breadcrumb_days");
/// Milliseconds in a day.
pub const DAY_MS: u64 = 86_400_000;

/// One stored fix.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Breadcrumb {
    pub delivery_id: DeliveryId,
    /// When the driver measured it (unix ms).
    pub ts_ms: u64,
    pub lat: f64,
    pub lng: f64,
    pub heading_deg: f32,
    pub speed_mps: f32,
    pub accuracy_m: f32,
}

impl Breadcrumb {
    pub fn from_position(p: &Position) -> Self {
        Self {
            delivery_id: p.delivery_id,
            ts_ms: p.ts_ms,
            lat: p.lat,
            lng: p.lng,
            heading_deg: p.heading_deg as f32,
            speed_mps: p.speed_mps as f32,
            accuracy_m: p.accuracy_m as f32,
        }
    }

    fn encode(&self) -> [u8; 28] {
        let mut b = [0u8; 28];
        b[0..8].copy_from_slice(&self.lat.to_le_bytes());
        b[8..16].copy_from_slice(&self.lng.to_le_bytes());
        b[16..20].copy_from_slice(&self.heading_deg.to_le_bytes());
        b[20..24].copy_from_slice(&self.speed_mps.to_le_bytes());
        b[24..28].copy_from_slice(&self.accuracy_m.to_le_bytes());
        b
    }

    fn decode(delivery: u64, ts_ms: u64, b: &[u8]) -> Result<Self, StoreError> {
        let corrupt = || StoreError::Corrupt {
            what: "breadcrumb",
            id: delivery,
            reason: format!("{} bytes, expected 28", b.len()),
        };
        let f64_at = |i: usize| -> Result<f64, StoreError> {
            Ok(f64::from_le_bytes(
                b.get(i..i + 8)
                    .and_then(|s| s.try_into().ok())
                    .ok_or_else(corrupt)?,
            ))
        };
        let f32_at = |i: usize| -> Result<f32, StoreError> {
            Ok(f32::from_le_bytes(
                b.get(i..i + 4)
                    .and_then(|s| s.try_into().ok())
                    .ok_or_else(corrupt)?,
            ))
        };
        Ok(Self {
            delivery_id: DeliveryId(delivery),
            ts_ms,
            lat: f64_at(0)?,
            lng: f64_at(8)?,
            heading_deg: f32_at(16)?,
            speed_mps: f32_at(20)?,
            accuracy_m: f32_at(24)?,
        })
    }
}

fn day_of(ts_ms: u64) -> u32 {
    u32::try_from(ts_ms / DAY_MS).unwrap_or(u32::MAX)
}

impl Store {
    /// Creates the breadcrumb tables (idempotent).
    pub fn ensure_history_tables(&self) -> Result<(), StoreError> {
        let tx = self.db()?.begin_write().map_err(StoreError::db)?;
        tx.open_table(CRUMBS).map_err(StoreError::db)?;
        tx.open_table(CRUMB_DAYS).map_err(StoreError::db)?;
        tx.commit().map_err(StoreError::db)?;
        Ok(())
    }

    /// Stores breadcrumbs in ONE write transaction (durable when this returns).
    pub fn append_breadcrumbs(&self, crumbs: &[Breadcrumb]) -> Result<(), StoreError> {
        let tx = self.db()?.begin_write().map_err(StoreError::db)?;
        {
            let mut table = tx.open_table(CRUMBS).map_err(StoreError::db)?;
            let mut days = tx.open_table(CRUMB_DAYS).map_err(StoreError::db)?;
            let mut seen = BTreeSet::new();
            for c in crumbs {
                table
                    .insert((c.delivery_id.0, c.ts_ms), c.encode().as_slice())
                    .map_err(StoreError::db)?;
                if seen.insert((day_of(c.ts_ms), c.delivery_id.0)) {
                    days.insert((day_of(c.ts_ms), c.delivery_id.0), ())
                        .map_err(StoreError::db)?;
                }
            }
        }
        tx.commit().map_err(StoreError::db)?;
        Ok(())
    }

    /// Up to `limit` breadcrumbs of `delivery` measured after `after_ts_ms`, oldest first.
    pub fn breadcrumbs(
        &self,
        delivery: DeliveryId,
        after_ts_ms: u64,
        limit: usize,
    ) -> Result<Vec<Breadcrumb>, StoreError> {
        let tx = self.db()?.begin_read().map_err(StoreError::db)?;
        let table = tx.open_table(CRUMBS).map_err(StoreError::db)?;
        let mut out = Vec::new();
        let Some(start) = after_ts_ms.checked_add(1) else {
            return Ok(out);
        };
        for row in table
            .range((delivery.0, start)..=(delivery.0, u64::MAX))
            .map_err(StoreError::db)?
            .take(limit)
        {
            let (k, v) = row.map_err(StoreError::db)?;
            let (id, ts) = k.value();
            out.push(Breadcrumb::decode(id, ts, v.value())?);
        }
        Ok(out)
    }

    /// The newest `limit` breadcrumbs of `delivery`, oldest first.
    pub fn latest_breadcrumbs(
        &self,
        delivery: DeliveryId,
        limit: usize,
    ) -> Result<Vec<Breadcrumb>, StoreError> {
        let tx = self.db()?.begin_read().map_err(StoreError::db)?;
        let table = tx.open_table(CRUMBS).map_err(StoreError::db)?;
        let mut out = Vec::new();
        for row in table
            .range((delivery.0, 0)..=(delivery.0, u64::MAX))
            .map_err(StoreError::db)?
            .rev()
            .take(limit)
        {
            let (k, v) = row.map_err(StoreError::db)?;
            let (id, ts) = k.value();
            out.push(Breadcrumb::decode(id, ts, v.value())?);
        }
        out.reverse();
        Ok(out)
    }

    /// Deletes the breadcrumbs of every day before the day of `cutoff_ms` (and anomalies
    /// older than that day); returns how many breadcrumbs went.
    pub fn purge_history_before(&self, cutoff_ms: u64) -> Result<u64, StoreError> {
        let cutoff_day = day_of(cutoff_ms);
        let tx = self.db()?.begin_write().map_err(StoreError::db)?;
        let mut purged = 0u64;
        {
            let mut table = tx.open_table(CRUMBS).map_err(StoreError::db)?;
            let mut days = tx.open_table(CRUMB_DAYS).map_err(StoreError::db)?;
            let old: Vec<(u32, u64)> = days
                .range((0u32, 0u64)..(cutoff_day, 0u64))
                .map_err(StoreError::db)?
                .map(|r| r.map(|(k, _)| k.value()).map_err(StoreError::db))
                .collect::<Result<_, _>>()?;
            for (day, delivery) in old {
                let from = u64::from(day) * DAY_MS;
                let to = from + DAY_MS;
                for row in table
                    .extract_from_if((delivery, from)..(delivery, to), |_, _| true)
                    .map_err(StoreError::db)?
                {
                    row.map_err(StoreError::db)?;
                    purged += 1;
                }
                days.remove((day, delivery)).map_err(StoreError::db)?;
            }
        }
        self.purge_anomalies_in(&tx, u64::from(cutoff_day) * DAY_MS)?;
        tx.commit().map_err(StoreError::db)?;
        Ok(purged)
    }
}

/// Queue in front of the breadcrumb writer. Never blocks: a full queue sheds the breadcrumb.
#[derive(Clone, Debug)]
pub struct BreadcrumbQueue {
    tx: mpsc::Sender<Breadcrumb>,
    metrics: Arc<HubMetrics>,
}

impl BreadcrumbQueue {
    /// Offers a breadcrumb; counts it in `hub_breadcrumbs_dropped_total` when the queue is full.
    pub fn offer(&self, crumb: Breadcrumb) {
        if self.tx.try_send(crumb).is_err() {
            self.metrics.breadcrumbs_dropped.inc();
        }
    }
}

/// Breadcrumb writer tuning.
#[derive(Clone, Copy, Debug)]
pub struct BreadcrumbWriterConfig {
    pub queue: usize,
    pub max_batch: usize,
    pub flush_interval: Duration,
}

/// Starts the breadcrumb writer: gathers breadcrumbs for `flush_interval` (or until
/// `max_batch`), commits them in one transaction, repeats; on shutdown commits what is queued.
/// Each committed batch is offered to `replicate` (cluster mode: copied to the successors by
/// [`crate::replication::replica::spawn_breadcrumb_replicator`]); a full queue sheds the copy, counted in
/// `hub_breadcrumbs_unreplicated_total`.
pub fn spawn_breadcrumb_writer(
    store: Store,
    config: BreadcrumbWriterConfig,
    metrics: Arc<HubMetrics>,
    replicate: Option<mpsc::Sender<Vec<Breadcrumb>>>,
    shutdown: CancellationToken,
) -> (BreadcrumbQueue, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Breadcrumb>(config.queue.max(1));
    let queue = BreadcrumbQueue {
        tx,
        metrics: metrics.clone(),
    };
    let max_batch = config.max_batch.max(1);
    let task = tokio::spawn(
        async move {
            let mut batch = Vec::with_capacity(max_batch);
            loop {
                let stopping = tokio::select! {
                    n = rx.recv_many(&mut batch, max_batch) => {
                        if n == 0 {
                            break;
                        }
                        if batch.len() < max_batch {
                            tokio::select! {
                                _ = tokio::time::sleep(config.flush_interval) => {}
                                _ = shutdown.cancelled() => {}
                            }
                        }
                        shutdown.is_cancelled()
                    }
                    _ = shutdown.cancelled() => true,
                };
                while batch.len() < max_batch {
                    match rx.try_recv() {
                        Ok(c) => batch.push(c),
                        Err(_) => break,
                    }
                }
                if !batch.is_empty() {
                    let crumbs = std::mem::replace(&mut batch, Vec::with_capacity(max_batch));
                    let n = crumbs.len() as u64;
                    let store = store.clone();
                    let started = Instant::now();
                    match tokio::task::spawn_blocking(move || {
                        store.append_breadcrumbs(&crumbs).map(|()| crumbs)
                    })
                    .await
                    {
                        Ok(Ok(crumbs)) => {
                            metrics
                                .breadcrumb_commit_seconds
                                .observe(started.elapsed().as_secs_f64());
                            metrics.breadcrumbs_stored.inc_by(n);
                            if let Some(r) = &replicate {
                                if r.try_send(crumbs).is_err() {
                                    metrics.breadcrumbs_unreplicated.inc_by(n);
                                }
                            }
                        }
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, breadcrumbs = n, "breadcrumb commit failed");
                            metrics.breadcrumbs_dropped.inc_by(n);
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "breadcrumb commit task failed");
                            metrics.breadcrumbs_dropped.inc_by(n);
                        }
                    }
                }
                if stopping && rx.is_empty() {
                    break;
                }
            }
            tracing::debug!("breadcrumb writer stopped");
        }
        .instrument(tracing::info_span!("breadcrumb_writer")),
    );
    (queue, task)
}

/// Starts the retention purge: at start and every `every`, deletes breadcrumbs of days older
/// than `retention_days`.
pub fn spawn_purge(
    store: Store,
    retention_days: u32,
    every: Duration,
    metrics: Arc<HubMetrics>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(
        async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.cancelled() => break,
                }
                let cutoff = nodekit::unix_ms().saturating_sub(u64::from(retention_days) * DAY_MS);
                let store = store.clone();
                match tokio::task::spawn_blocking(move || store.purge_history_before(cutoff)).await
                {
                    Ok(Ok(n)) => {
                        metrics.breadcrumbs_purged.inc_by(n);
                        if n > 0 {
                            tracing::info!(purged = n, "purged old breadcrumbs");
                        }
                    }
                    Ok(Err(e)) => tracing::warn!(error = %e, "breadcrumb purge failed"),
                    Err(e) => tracing::error!(error = %e, "breadcrumb purge task failed"),
                }
            }
        }
        .instrument(tracing::info_span!("history_purge")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn temp_db(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "trackline-hub-history-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir.join("hub.redb")
    }

    fn crumb(d: u64, ts_ms: u64) -> Breadcrumb {
        Breadcrumb {
            delivery_id: DeliveryId(d),
            ts_ms,
            lat: 60.17 + ts_ms as f64 * 1e-9,
            lng: 24.94,
            heading_deg: 90.0,
            speed_mps: 8.5,
            accuracy_m: 4.0,
        }
    }

    #[test]
    fn pages_breadcrumbs_of_one_delivery_in_time_order() {
        let path = temp_db("pages");
        let s = Store::open(&path).expect("open");
        s.ensure_history_tables().expect("tables");
        let t0 = 100 * DAY_MS;
        let mut v: Vec<Breadcrumb> = (0..25).map(|i| crumb(1, t0 + i * 1000)).collect();
        v.push(crumb(2, t0 + 500));
        s.append_breadcrumbs(&v).expect("append");
        let p1 = s.breadcrumbs(DeliveryId(1), 0, 10).expect("page");
        assert_eq!(p1.len(), 10);
        assert_eq!(p1[0], v[0], "round trips exactly");
        let p2 = s
            .breadcrumbs(DeliveryId(1), p1[9].ts_ms, 100)
            .expect("page");
        assert_eq!(p2.len(), 15);
        assert_eq!(p2[0].ts_ms, t0 + 10_000);
        assert!(s
            .breadcrumbs(DeliveryId(1), u64::MAX, 10)
            .expect("end")
            .is_empty());
        // The newest few (what a hand-off carries), oldest first, of that delivery only.
        let latest = s.latest_breadcrumbs(DeliveryId(1), 3).expect("latest");
        assert_eq!(latest, v[22..25].to_vec());
        assert_eq!(
            s.latest_breadcrumbs(DeliveryId(2), 10).expect("other"),
            vec![v[25]]
        );
        assert!(s
            .latest_breadcrumbs(DeliveryId(3), 10)
            .expect("none")
            .is_empty());
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }

    #[test]
    fn purge_deletes_whole_days_before_the_cutoff_only() {
        let path = temp_db("purge");
        let s = Store::open(&path).expect("open");
        s.ensure_history_tables().expect("tables");
        let day = |d: u64, h: u64| d * DAY_MS + h * 3_600_000;
        s.append_breadcrumbs(&[
            crumb(1, day(10, 1)),
            crumb(1, day(10, 23)),
            crumb(1, day(11, 2)),
            crumb(2, day(9, 5)),
            crumb(2, day(12, 0)),
        ])
        .expect("append");
        // Cut-off in the middle of day 11: days 9 and 10 go, day 11 stays whole.
        assert_eq!(s.purge_history_before(day(11, 12)).expect("purge"), 3);
        let left: Vec<u64> = [1, 2]
            .iter()
            .flat_map(|d| s.breadcrumbs(DeliveryId(*d), 0, 100).expect("read"))
            .map(|c| c.ts_ms)
            .collect();
        assert_eq!(left, vec![day(11, 2), day(12, 0)]);
        assert_eq!(s.purge_history_before(day(11, 12)).expect("again"), 0);
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }
}
