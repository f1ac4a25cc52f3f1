//! The ETA's durable state in redb: each delivery's planned route (table `plans`) and the
//! fleet-learnt historical speed table (table `speeds`), and the task that saves them.
//!
//! Plans go to the event log as side records of the fix that made them
//! (`SideRecord::Plan`): written by its group-commit writer and replicated with the delivery's
//! events, so a restart and the hub that takes a delivery over both follow the same plan (a
//! plan lost in a crash is simply made again at the next fix). The saver below still writes
//! any plan handed to it. The speed table is rewritten every `SPEEDS_EVERY` and at shutdown,
//! and loaded at start.

use crate::durable::store::{Store, StoreError};
use crate::metrics::HubMetrics;
use crate::tracking::eta::StoredPlan;
use protocol::DeliveryId;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use roadnet::speed::SpeedRow;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// `delivery_id` -> postcard [`StoredPlan`].
const PLANS: TableDefinition<u64, &[u8]> = TableDefinition::new("plans");
/// `(H3 cell, hour of week)` -> (mean speed m/s, samples).
const SPEEDS: TableDefinition<(u64, u8), (f32, u32)> = TableDefinition::new("speeds");

/// How often new plans are written.
const PLANS_EVERY: Duration = Duration::from_secs(1);
/// How often the historical speed table is written.
pub const SPEEDS_EVERY: Duration = Duration::from_secs(30);

/// Creates the tables when missing, inside `tx`.
pub(crate) fn create_tables(tx: &redb::WriteTransaction) -> Result<(), StoreError> {
    tx.open_table(PLANS).map_err(StoreError::db)?;
    tx.open_table(SPEEDS).map_err(StoreError::db)?;
    Ok(())
}

/// The plans table inside a write transaction (the event log's writer stores plans with it).
pub(crate) fn open_plans(
    tx: &redb::WriteTransaction,
) -> Result<redb::Table<'_, u64, &'static [u8]>, StoreError> {
    tx.open_table(PLANS).map_err(StoreError::db)
}

/// Writes (or replaces) one plan.
pub(crate) fn put_plan(
    table: &mut redb::Table<'_, u64, &'static [u8]>,
    id: DeliveryId,
    plan: &StoredPlan,
) -> Result<(), StoreError> {
    let bytes = postcard::to_stdvec(plan).map_err(|e| StoreError::Encode(e.to_string()))?;
    table
        .insert(id.0, bytes.as_slice())
        .map_err(StoreError::db)?;
    Ok(())
}

/// Writes a plan copied from another hub unless the stored one is newer (a higher version).
pub(crate) fn put_newer_plan(
    table: &mut redb::Table<'_, u64, &'static [u8]>,
    id: DeliveryId,
    plan: &StoredPlan,
) -> Result<(), StoreError> {
    let stored = table
        .get(id.0)
        .map_err(StoreError::db)?
        .and_then(|v| postcard::from_bytes::<StoredPlan>(v.value()).ok())
        .map(|p| p.version);
    if stored.is_some_and(|v| v > plan.version) {
        return Ok(());
    }
    put_plan(table, id, plan)
}

/// The stored plan of one delivery.
pub fn load_plan(store: &Store, id: DeliveryId) -> Result<Option<StoredPlan>, StoreError> {
    let tx = store.db()?.begin_read().map_err(StoreError::db)?;
    let t = tx.open_table(PLANS).map_err(StoreError::db)?;
    let Some(v) = t.get(id.0).map_err(StoreError::db)? else {
        return Ok(None);
    };
    postcard::from_bytes(v.value())
        .map(Some)
        .map_err(|e| StoreError::Corrupt {
            what: "route plan",
            id: id.0,
            reason: e.to_string(),
        })
}

/// Creates the tables when missing.
pub fn ensure_tables(store: &Store) -> Result<(), StoreError> {
    let tx = store.db()?.begin_write().map_err(StoreError::db)?;
    tx.open_table(PLANS).map_err(StoreError::db)?;
    tx.open_table(SPEEDS).map_err(StoreError::db)?;
    tx.commit().map_err(StoreError::db)?;
    Ok(())
}

/// Writes (or replaces) plans in one transaction.
pub fn save_plans(store: &Store, plans: &[(DeliveryId, StoredPlan)]) -> Result<(), StoreError> {
    let tx = store.db()?.begin_write().map_err(StoreError::db)?;
    {
        let mut t = tx.open_table(PLANS).map_err(StoreError::db)?;
        for (id, plan) in plans {
            let bytes = postcard::to_stdvec(plan).map_err(|e| StoreError::Encode(e.to_string()))?;
            t.insert(id.0, bytes.as_slice()).map_err(StoreError::db)?;
        }
    }
    tx.commit().map_err(StoreError::db)?;
    Ok(())
}

/// Every stored plan.
pub fn load_plans(store: &Store) -> Result<Vec<(DeliveryId, StoredPlan)>, StoreError> {
    let tx = store.db()?.begin_read().map_err(StoreError::db)?;
    let t = tx.open_table(PLANS).map_err(StoreError::db)?;
    let mut out = Vec::new();
    for row in t.iter().map_err(StoreError::db)? {
        let (k, v) = row.map_err(StoreError::db)?;
        let id = k.value();
        let plan = postcard::from_bytes(v.value()).map_err(|e| StoreError::Corrupt {
            what: "route plan",
            id,
            reason: e.to_string(),
        })?;
        out.push((DeliveryId(id), plan));
    }
    Ok(out)
}

/// Replaces the stored historical speed table with `rows`.
pub fn save_speeds(store: &Store, rows: &[SpeedRow]) -> Result<(), StoreError> {
    let tx = store.db()?.begin_write().map_err(StoreError::db)?;
    {
        let mut t = tx.open_table(SPEEDS).map_err(StoreError::db)?;
        for &(cell, hour, mean, count) in rows {
            t.insert((cell, hour), (mean, count))
                .map_err(StoreError::db)?;
        }
    }
    tx.commit().map_err(StoreError::db)?;
    Ok(())
}

/// The stored historical speed table.
pub fn load_speeds(store: &Store) -> Result<Vec<SpeedRow>, StoreError> {
    let tx = store.db()?.begin_read().map_err(StoreError::db)?;
    let t = tx.open_table(SPEEDS).map_err(StoreError::db)?;
    let mut out = Vec::new();
    for row in t.iter().map_err(StoreError::db)? {
        let (k, v) = row.map_err(StoreError::db)?;
        let (cell, hour) = k.value();
        let (mean, count) = v.value();
        out.push((cell, hour, mean, count));
    }
    Ok(out)
}

/// Seconds on a monotonic clock (the core's routing timer).
pub(crate) fn monotonic_s() -> f64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_secs_f64()
}

/// What the ETA saver takes from the hub each time: plans made or changed, the ETA's counters,
/// and the learnt speed table when asked for it.
pub(crate) type EtaWork = (
    Vec<(DeliveryId, StoredPlan)>,
    crate::tracking::eta::EtaStats,
    Option<Vec<SpeedRow>>,
);

/// Saves new plans every second and the speed table every [`SPEEDS_EVERY`] (and both at
/// shutdown), taking them with `take(speeds_due)`; also moves the ETA's counters into the
/// metrics.
pub(crate) fn spawn_eta_saver(
    take: impl Fn(bool) -> EtaWork + Send + 'static,
    metrics: Arc<HubMetrics>,
    store: Store,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(PLANS_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_speeds = Instant::now();
        loop {
            let stop = tokio::select! {
                _ = every.tick() => false,
                _ = shutdown.cancelled() => true,
            };
            let speeds_due = stop || last_speeds.elapsed() >= SPEEDS_EVERY;
            let (plans, stats, rows) = take(speeds_due);
            metrics.routes_planned.inc_by(stats.plans);
            metrics.reroutes.inc_by(stats.reroutes);
            metrics.route_failures.inc_by(stats.route_failures);
            for s in stats.route_seconds {
                metrics.route_seconds.observe(s);
            }
            if !plans.is_empty() || rows.is_some() {
                let store = store.clone();
                let r = tokio::task::spawn_blocking(move || {
                    if !plans.is_empty() {
                        save_plans(&store, &plans)?;
                    }
                    if let Some(rows) = rows {
                        save_speeds(&store, &rows)?;
                    }
                    Ok::<_, StoreError>(())
                })
                .await;
                match r {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "saving route plans / speeds failed"),
                    Err(e) => tracing::error!(error = %e, "plan saver panicked"),
                }
            }
            if speeds_due {
                last_speeds = Instant::now();
            }
            if stop {
                break;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_store(name: &str) -> (std::path::PathBuf, Store) {
        let dir =
            std::env::temp_dir().join(format!("trackline-plans-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&dir.join("hub.redb")).expect("open redb");
        ensure_tables(&store).expect("tables");
        (dir, store)
    }

    #[test]
    fn plans_and_the_speed_table_survive_a_reopen() {
        let (dir, store) = temp_store("reopen");
        let g =
            roadnet::RoadGraph::grid_city(5, 5, 100.0, crate::config::GRID_ORIGIN).expect("grid");
        let n = g.nodes();
        let route = g.route(n[0], n[24]).expect("route");
        let plan = StoredPlan {
            route,
            pickup_segment: Some(2),
            version: 3,
        };
        save_plans(&store, &[(DeliveryId(7), plan.clone())]).expect("save plans");
        let cell = roadnet::cell_of(n[0]).expect("cell");
        save_speeds(&store, &[(cell, 5, 7.5, 40), (cell, 6, 9.0, 2)]).expect("save speeds");
        drop(store);
        let store = Store::open(&dir.join("hub.redb")).expect("reopen");
        assert_eq!(
            load_plans(&store).expect("load plans"),
            vec![(DeliveryId(7), plan)]
        );
        let rows = load_speeds(&store).expect("load speeds");
        assert_eq!(rows, vec![(cell, 5, 7.5, 40), (cell, 6, 9.0, 2)]);
        let mut model = roadnet::SpeedModel::default();
        model.import_historical(&rows).expect("valid rows");
        assert_eq!(model.historical(cell, 5), Some((7.5, 40)));
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
