//! Breadcrumbs: every accepted fix stored by a writer of its own (group commit, bounded queue
//! that sheds positions rather than throttle ingest), read back page by page for the history
//! endpoint, and purged by whole days after the retention period.
//!
//! Layout (its own redb file, `<store>.history.redb`): each commit appends ONE row to a
//! write-ahead log whatever the number of deliveries in it (a per-fix key would dirty a B-tree
//! page per delivery per commit: tens of thousands of random page writes a second at seed
//! scale). The log is also held in memory. Once a minute is over (plus a grace for late
//! copies), its breadcrumbs move into chunks keyed `(minute, delivery)`: a compaction writes a
//! contiguous run of keys, a read looks up one chunk per minute of the delivery's span, and the
//! purge deletes a key range.

use crate::durable::store::{Store, StoreError};
use crate::metrics::HubMetrics;
use protocol::consumer::Position;
use protocol::DeliveryId;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Legacy layout (before chunks), in the main store: `(delivery_id, ts_ms)` -> 28 bytes, and
/// `(unix day, delivery_id)` -> (). Moved into the chunks at start, then deleted.
const LEGACY_CRUMBS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("breadcrumbs");
const LEGACY_DAYS: TableDefinition<(u32, u64), ()> = TableDefinition::new("breadcrumb_days");

/// Write-ahead part of the history: `seq` -> the breadcrumbs of one append, as written
/// ([`WAL_CRUMB_BYTES`] each). Appends only ever add a row at the end, so a commit touches a
/// page or two however many deliveries it holds; compaction moves rows into chunks.
const CRUMB_WAL: TableDefinition<u64, &[u8]> = TableDefinition::new("breadcrumb_wal");
/// Compacted history: `(minute, delivery_id)` -> the delivery's breadcrumbs measured in that
/// minute (unix minutes), by time ([`CHUNK_CRUMB_BYTES`] each). A compaction writes a
/// contiguous run of keys (the closed minute, every delivery in it), and purging is a range.
const CRUMB_CHUNKS: TableDefinition<(u32, u64), &[u8]> = TableDefinition::new("breadcrumb_chunks");
/// `delivery_id` -> (first minute, last minute) with compacted breadcrumbs: where reads look.
const CRUMB_SPANS: TableDefinition<u64, (u32, u32)> = TableDefinition::new("breadcrumb_spans");
/// `(last minute, delivery_id)` -> (): which spans the purge can drop.
const CRUMB_SPAN_ENDS: TableDefinition<(u32, u64), ()> =
    TableDefinition::new("breadcrumb_span_ends");

/// Milliseconds in a day.
pub const DAY_MS: u64 = 86_400_000;
/// Milliseconds in a minute (the chunks' time unit).
const MINUTE_MS: u64 = 60_000;
/// Bytes of a breadcrumb in the write-ahead log: delivery, time, then [`Breadcrumb::encode`].
const WAL_CRUMB_BYTES: usize = 44;
/// Bytes of a breadcrumb in a chunk: time, then [`Breadcrumb::encode`].
const CHUNK_CRUMB_BYTES: usize = 36;
/// A minute is compacted once breadcrumbs this much newer have arrived (late ones still land
/// in its chunks, merged).
const COMPACT_GRACE_MS: u64 = 2 * MINUTE_MS;
/// Page cache of the history database.
const HISTORY_CACHE_BYTES: usize = 32 << 20;

/// One stored fix.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
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

fn u64_at(b: &[u8], i: usize) -> Option<u64> {
    b.get(i..i + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_le_bytes)
}

fn minute_of(ts_ms: u64) -> u32 {
    u32::try_from(ts_ms / MINUTE_MS).unwrap_or(u32::MAX)
}

/// Encodes a chunk: one delivery's breadcrumbs, by time.
fn encode_chunk(crumbs: &[Breadcrumb]) -> Vec<u8> {
    let mut out = Vec::with_capacity(crumbs.len() * CHUNK_CRUMB_BYTES);
    for c in crumbs {
        out.extend_from_slice(&c.ts_ms.to_le_bytes());
        out.extend_from_slice(&c.encode());
    }
    out
}

fn decode_chunk(delivery: u64, b: &[u8]) -> Result<Vec<Breadcrumb>, StoreError> {
    if !b.len().is_multiple_of(CHUNK_CRUMB_BYTES) {
        return Err(StoreError::Corrupt {
            what: "breadcrumb chunk",
            id: delivery,
            reason: format!("{} bytes, not a multiple of {CHUNK_CRUMB_BYTES}", b.len()),
        });
    }
    b.chunks_exact(CHUNK_CRUMB_BYTES)
        .map(|c| {
            let ts = u64_at(c, 0).unwrap_or(0);
            Breadcrumb::decode(delivery, ts, &c[8..])
        })
        .collect()
}

fn encode_wal(crumbs: &[Breadcrumb]) -> Vec<u8> {
    let mut out = Vec::with_capacity(crumbs.len() * WAL_CRUMB_BYTES);
    for c in crumbs {
        out.extend_from_slice(&c.delivery_id.0.to_le_bytes());
        out.extend_from_slice(&c.ts_ms.to_le_bytes());
        out.extend_from_slice(&c.encode());
    }
    out
}

fn decode_wal(seq: u64, b: &[u8]) -> Result<Vec<Breadcrumb>, StoreError> {
    if !b.len().is_multiple_of(WAL_CRUMB_BYTES) {
        return Err(StoreError::Corrupt {
            what: "breadcrumb log row",
            id: seq,
            reason: format!("{} bytes, not a multiple of {WAL_CRUMB_BYTES}", b.len()),
        });
    }
    b.chunks_exact(WAL_CRUMB_BYTES)
        .map(|c| {
            let id = u64_at(c, 0).unwrap_or(0);
            let ts = u64_at(c, 8).unwrap_or(0);
            Breadcrumb::decode(id, ts, &c[16..])
        })
        .collect()
}

/// Sorts by time and keeps one breadcrumb per time (the last written): a delivery's history is
/// keyed by measurement time, so a copy received twice is stored once.
fn sort_dedup(v: &mut Vec<Breadcrumb>) {
    v.reverse(); // the last written first, so the stable sort keeps it ahead of older copies
    v.sort_by_key(|c| c.ts_ms);
    v.dedup_by_key(|c| c.ts_ms);
}

/// The breadcrumbs still in the write-ahead log, in memory (rebuilt from it at start).
#[derive(Debug, Default)]
struct Tail {
    /// Per delivery, in append order, with the log row each came in.
    by_delivery: HashMap<DeliveryId, Vec<(u64, Breadcrumb)>>,
    /// Log rows not yet compacted: (seq, newest time in the row), in order.
    rows: VecDeque<(u64, u64)>,
    next_seq: u64,
    /// Newest measurement time appended (the history's own clock for compaction).
    newest_ts: u64,
}

/// The breadcrumb history: its own redb file (so its volume never delays a status event's
/// commit in the event log), a write-ahead log kept in memory too, and per-minute chunks.
pub(crate) struct History {
    db: parking_lot::Mutex<Option<Arc<Database>>>,
    tail: parking_lot::Mutex<Tail>,
    path: PathBuf,
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("History")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl History {
    /// Opens (or creates) the history file at `path` and rebuilds the in-memory tail.
    pub(crate) fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::builder()
            .set_cache_size(HISTORY_CACHE_BYTES)
            .create(path)
            .map_err(|e| StoreError::Open {
                path: path.to_path_buf(),
                source: e.into(),
            })?;
        Self::with_db(db, path)
    }

    /// A history held in memory only (the simulation, tests): gone when dropped.
    pub(crate) fn in_memory() -> Result<Self, StoreError> {
        let path = Path::new(":memory:");
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|e| StoreError::Open {
                path: path.to_path_buf(),
                source: e.into(),
            })?;
        Self::with_db(db, path)
    }

    fn with_db(db: Database, path: &Path) -> Result<Self, StoreError> {
        let tx = db.begin_write().map_err(StoreError::db)?;
        tx.open_table(CRUMB_WAL).map_err(StoreError::db)?;
        tx.open_table(CRUMB_CHUNKS).map_err(StoreError::db)?;
        tx.open_table(CRUMB_SPANS).map_err(StoreError::db)?;
        tx.open_table(CRUMB_SPAN_ENDS).map_err(StoreError::db)?;
        tx.commit().map_err(StoreError::db)?;
        let mut tail = Tail::default();
        {
            let tx = db.begin_read().map_err(StoreError::db)?;
            let wal = tx.open_table(CRUMB_WAL).map_err(StoreError::db)?;
            for row in wal.iter().map_err(StoreError::db)? {
                let (k, v) = row.map_err(StoreError::db)?;
                let seq = k.value();
                let crumbs = decode_wal(seq, v.value())?;
                tail.next_seq = seq + 1;
                tail.push(seq, &crumbs);
            }
        }
        Ok(Self {
            db: parking_lot::Mutex::new(Some(Arc::new(db))),
            tail: parking_lot::Mutex::new(tail),
            path: path.to_path_buf(),
        })
    }

    fn db(&self) -> Result<Arc<Database>, StoreError> {
        self.db.lock().clone().ok_or(StoreError::Closed)
    }

    /// Closes the file (waits for operations running on other threads).
    pub(crate) fn close(&self) -> Option<Arc<Database>> {
        self.db.lock().take()
    }

    /// Appends breadcrumbs as one log row, durable when this returns.
    fn append(&self, crumbs: &[Breadcrumb]) -> Result<(), StoreError> {
        if crumbs.is_empty() {
            return Ok(());
        }
        let db = self.db()?;
        // Appends are serialised by redb's single writer; the seq is taken under the tail
        // lock and the row becomes visible to readers only once committed.
        let seq = {
            let mut t = self.tail.lock();
            let s = t.next_seq;
            t.next_seq += 1;
            s
        };
        let tx = db.begin_write().map_err(StoreError::db)?;
        {
            let mut wal = tx.open_table(CRUMB_WAL).map_err(StoreError::db)?;
            wal.insert(seq, encode_wal(crumbs).as_slice())
                .map_err(StoreError::db)?;
        }
        tx.commit().map_err(StoreError::db)?;
        self.tail.lock().push(seq, crumbs);
        Ok(())
    }

    /// Moves every log row whose breadcrumbs are all older than the newest breadcrumb less
    /// the grace (or than `before_ms`, when given) into the chunks, in one transaction;
    /// returns how many breadcrumbs moved.
    fn compact(&self, before_ms: Option<u64>) -> Result<usize, StoreError> {
        let (upto, mut groups) = {
            let t = self.tail.lock();
            let cutoff = before_ms.unwrap_or_else(|| t.newest_ts.saturating_sub(COMPACT_GRACE_MS));
            let Some(upto) = t
                .rows
                .iter()
                .take_while(|(_, newest)| *newest < cutoff)
                .map(|(seq, _)| *seq)
                .last()
            else {
                return Ok(0);
            };
            let mut groups: BTreeMap<(u32, u64), Vec<Breadcrumb>> = BTreeMap::new();
            for (id, v) in &t.by_delivery {
                for (seq, c) in v {
                    if *seq > upto {
                        break;
                    }
                    groups
                        .entry((minute_of(c.ts_ms), id.0))
                        .or_default()
                        .push(*c);
                }
            }
            (upto, groups)
        };
        let moved: usize = groups.values().map(Vec::len).sum();
        let db = self.db()?;
        let tx = db.begin_write().map_err(StoreError::db)?;
        {
            let mut chunks = tx.open_table(CRUMB_CHUNKS).map_err(StoreError::db)?;
            let mut spans = tx.open_table(CRUMB_SPANS).map_err(StoreError::db)?;
            let mut ends = tx.open_table(CRUMB_SPAN_ENDS).map_err(StoreError::db)?;
            let mut wal = tx.open_table(CRUMB_WAL).map_err(StoreError::db)?;
            // Per delivery, the minutes it gained (spans are updated once per delivery).
            let mut touched: HashMap<u64, (u32, u32)> = HashMap::new();
            for ((minute, id), crumbs) in groups.iter_mut() {
                let existing = chunks
                    .get((*minute, *id))
                    .map_err(StoreError::db)?
                    .map(|v| decode_chunk(*id, v.value()))
                    .transpose()?;
                if let Some(mut old) = existing {
                    // Late breadcrumbs of a minute already compacted.
                    old.append(crumbs);
                    *crumbs = old;
                }
                sort_dedup(crumbs);
                chunks
                    .insert((*minute, *id), encode_chunk(crumbs).as_slice())
                    .map_err(StoreError::db)?;
                let span = touched.entry(*id).or_insert((*minute, *minute));
                span.0 = span.0.min(*minute);
                span.1 = span.1.max(*minute);
            }
            for (id, (first, last)) in touched {
                let old = spans.get(id).map_err(StoreError::db)?.map(|v| v.value());
                let span = match old {
                    Some((f, l)) => (f.min(first), l.max(last)),
                    None => (first, last),
                };
                if old != Some(span) {
                    if let Some((_, l)) = old {
                        ends.remove((l, id)).map_err(StoreError::db)?;
                    }
                    spans.insert(id, span).map_err(StoreError::db)?;
                    ends.insert((span.1, id), ()).map_err(StoreError::db)?;
                }
            }
            for row in wal
                .extract_from_if(..=upto, |_, _| true)
                .map_err(StoreError::db)?
            {
                row.map_err(StoreError::db)?;
            }
        }
        tx.commit().map_err(StoreError::db)?;
        self.tail.lock().drop_upto(upto);
        Ok(moved)
    }

    /// Up to `limit` breadcrumbs of `delivery` measured after `after_ts_ms`, oldest first.
    fn read(
        &self,
        delivery: DeliveryId,
        after_ts_ms: u64,
        limit: usize,
    ) -> Result<Vec<Breadcrumb>, StoreError> {
        let Some(start) = after_ts_ms.checked_add(1) else {
            return Ok(Vec::new());
        };
        let mut out = self.tail_of(delivery, |c| c.ts_ms >= start);
        let db = self.db()?;
        let tx = db.begin_read().map_err(StoreError::db)?;
        let spans = tx.open_table(CRUMB_SPANS).map_err(StoreError::db)?;
        if let Some(span) = spans.get(delivery.0).map_err(StoreError::db)? {
            let (first, last) = span.value();
            let chunks = tx.open_table(CRUMB_CHUNKS).map_err(StoreError::db)?;
            let mut found = 0;
            for minute in first.max(minute_of(start))..=last {
                if let Some(v) = chunks.get((minute, delivery.0)).map_err(StoreError::db)? {
                    let crumbs = decode_chunk(delivery.0, v.value())?;
                    found += crumbs.len();
                    out.extend(crumbs.into_iter().filter(|c| c.ts_ms >= start));
                }
                if found > limit {
                    break; // later minutes hold only newer breadcrumbs
                }
            }
        }
        sort_dedup(&mut out);
        out.truncate(limit);
        Ok(out)
    }

    /// The newest `limit` breadcrumbs of `delivery`, oldest first.
    fn latest(&self, delivery: DeliveryId, limit: usize) -> Result<Vec<Breadcrumb>, StoreError> {
        let mut out = self.tail_of(delivery, |_| true);
        let db = self.db()?;
        let tx = db.begin_read().map_err(StoreError::db)?;
        let spans = tx.open_table(CRUMB_SPANS).map_err(StoreError::db)?;
        if let Some(span) = spans.get(delivery.0).map_err(StoreError::db)? {
            let (first, last) = span.value();
            let chunks = tx.open_table(CRUMB_CHUNKS).map_err(StoreError::db)?;
            let mut found = 0;
            for minute in (first..=last).rev() {
                if let Some(v) = chunks.get((minute, delivery.0)).map_err(StoreError::db)? {
                    let crumbs = decode_chunk(delivery.0, v.value())?;
                    found += crumbs.len();
                    out.extend(crumbs);
                }
                if found > limit {
                    break;
                }
            }
        }
        sort_dedup(&mut out);
        let skip = out.len().saturating_sub(limit);
        out.drain(..skip);
        Ok(out)
    }

    fn tail_of(&self, delivery: DeliveryId, keep: impl Fn(&Breadcrumb) -> bool) -> Vec<Breadcrumb> {
        self.tail
            .lock()
            .by_delivery
            .get(&delivery)
            .map(|v| v.iter().map(|(_, c)| *c).filter(|c| keep(c)).collect())
            .unwrap_or_default()
    }

    /// Deletes every chunk of a minute before `cutoff_ms`'s day (whole days, as before);
    /// returns how many breadcrumbs went.
    fn purge_before(&self, cutoff_ms: u64) -> Result<u64, StoreError> {
        let cutoff_day_ms = cutoff_ms / DAY_MS * DAY_MS;
        // What is still in the log from before that day goes to the chunks first.
        self.compact(Some(cutoff_day_ms))?;
        let cutoff_minute = minute_of(cutoff_day_ms);
        let db = self.db()?;
        let tx = db.begin_write().map_err(StoreError::db)?;
        let mut purged = 0u64;
        {
            let mut chunks = tx.open_table(CRUMB_CHUNKS).map_err(StoreError::db)?;
            for row in chunks
                .extract_from_if(..(cutoff_minute, 0u64), |_, _| true)
                .map_err(StoreError::db)?
            {
                let (_, v) = row.map_err(StoreError::db)?;
                purged += (v.value().len() / CHUNK_CRUMB_BYTES) as u64;
            }
            let mut spans = tx.open_table(CRUMB_SPANS).map_err(StoreError::db)?;
            let mut ends = tx.open_table(CRUMB_SPAN_ENDS).map_err(StoreError::db)?;
            let gone: Vec<u64> = ends
                .extract_from_if(..(cutoff_minute, 0u64), |_, _| true)
                .map_err(StoreError::db)?
                .map(|r| r.map(|(k, _)| k.value().1).map_err(StoreError::db))
                .collect::<Result<_, _>>()?;
            for id in gone {
                spans.remove(id).map_err(StoreError::db)?;
            }
        }
        tx.commit().map_err(StoreError::db)?;
        Ok(purged)
    }
}

impl Tail {
    fn push(&mut self, seq: u64, crumbs: &[Breadcrumb]) {
        let mut newest = 0;
        for c in crumbs {
            self.by_delivery
                .entry(c.delivery_id)
                .or_default()
                .push((seq, *c));
            newest = newest.max(c.ts_ms);
        }
        self.rows.push_back((seq, newest));
        self.newest_ts = self.newest_ts.max(newest);
    }

    fn drop_upto(&mut self, upto: u64) {
        while self.rows.front().is_some_and(|(s, _)| *s <= upto) {
            self.rows.pop_front();
        }
        self.by_delivery.retain(|_, v| {
            let n = v.partition_point(|(s, _)| *s <= upto);
            v.drain(..n);
            !v.is_empty()
        });
    }
}

impl Store {
    /// Opens the history file beside the store's and moves any breadcrumbs the store still
    /// holds in the old layout (one row per fix) into it.
    pub fn ensure_history_tables(&self) -> Result<(), StoreError> {
        let history = self.history()?;
        let db = self.db()?;
        let legacy: Vec<Breadcrumb> = {
            let tx = db.begin_read().map_err(StoreError::db)?;
            match tx.open_table(LEGACY_CRUMBS) {
                Ok(t) => t
                    .iter()
                    .map_err(StoreError::db)?
                    .map(|row| {
                        let (k, v) = row.map_err(StoreError::db)?;
                        let (id, ts) = k.value();
                        Breadcrumb::decode(id, ts, v.value())
                    })
                    .collect::<Result<_, _>>()?,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
                Err(e) => return Err(StoreError::db(e)),
            }
        };
        if !legacy.is_empty() {
            for part in legacy.chunks(65_536) {
                history.append(part)?;
            }
            // Everything moved is old enough to be compacted at once.
            history.compact(Some(u64::MAX))?;
            tracing::info!(
                breadcrumbs = legacy.len(),
                "moved breadcrumbs to the chunked history"
            );
        }
        let tx = db.begin_write().map_err(StoreError::db)?;
        tx.delete_table(LEGACY_CRUMBS).map_err(StoreError::db)?;
        tx.delete_table(LEGACY_DAYS).map_err(StoreError::db)?;
        tx.commit().map_err(StoreError::db)?;
        Ok(())
    }

    /// Stores breadcrumbs (durable when this returns): one row appended to the history's
    /// write-ahead log, whatever the number of deliveries.
    pub fn append_breadcrumbs(&self, crumbs: &[Breadcrumb]) -> Result<(), StoreError> {
        self.history()?.append(crumbs)
    }

    /// Moves breadcrumbs from the write-ahead log into per-minute chunks once their minute is
    /// over (the breadcrumb writer calls it after its commits); returns how many moved.
    pub fn compact_breadcrumbs(&self) -> Result<usize, StoreError> {
        self.history()?.compact(None)
    }

    /// Up to `limit` breadcrumbs of `delivery` measured after `after_ts_ms`, oldest first.
    pub fn breadcrumbs(
        &self,
        delivery: DeliveryId,
        after_ts_ms: u64,
        limit: usize,
    ) -> Result<Vec<Breadcrumb>, StoreError> {
        self.history()?.read(delivery, after_ts_ms, limit)
    }

    /// The newest `limit` breadcrumbs of `delivery`, oldest first.
    pub fn latest_breadcrumbs(
        &self,
        delivery: DeliveryId,
        limit: usize,
    ) -> Result<Vec<Breadcrumb>, StoreError> {
        self.history()?.latest(delivery, limit)
    }

    /// Deletes the breadcrumbs of every day before the day of `cutoff_ms` (and anomalies
    /// older than that day); returns how many breadcrumbs went.
    pub fn purge_history_before(&self, cutoff_ms: u64) -> Result<u64, StoreError> {
        let cutoff_day_ms = cutoff_ms / DAY_MS * DAY_MS;
        let purged = self.history()?.purge_before(cutoff_ms)?;
        let tx = self.db()?.begin_write().map_err(StoreError::db)?;
        self.purge_anomalies_in(&tx, cutoff_day_ms)?;
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
/// `replication::crumbs::spawn_breadcrumb_replicator`); a full queue sheds the copy, counted in
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
                        store.append_breadcrumbs(&crumbs)?;
                        // Minutes that are over move from the log into chunks (usually a
                        // no-op: once a minute there is one to move).
                        if let Err(e) = store.compact_breadcrumbs() {
                            tracing::warn!(error = %e, "breadcrumb compaction failed; retried at the next commit");
                        }
                        Ok::<_, StoreError>(crumbs)
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
        // The writer commits every 100 ms: each append holds breadcrumbs of one moment.
        for c in [
            crumb(2, day(9, 5)),
            crumb(1, day(10, 1)),
            crumb(1, day(10, 23)),
            crumb(1, day(11, 2)),
            crumb(2, day(12, 0)),
        ] {
            s.append_breadcrumbs(&[c]).expect("append");
        }
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

    #[test]
    fn compaction_moves_closed_minutes_into_chunks_and_reads_stay_the_same() {
        let path = temp_db("compact");
        let s = Store::open(&path).expect("open");
        s.ensure_history_tables().expect("tables");
        let t0 = 100 * DAY_MS;
        // Three deliveries, a fix every 4 s each for 5 minutes, in 100 ms commits.
        let mut all: Vec<Breadcrumb> = Vec::new();
        for k in 0..75u64 {
            let batch: Vec<Breadcrumb> = (1..=3).map(|d| crumb(d, t0 + k * 4_000 + d)).collect();
            s.append_breadcrumbs(&batch).expect("append");
            all.extend(batch);
        }
        let before = s.breadcrumbs(DeliveryId(2), 0, 1_000).expect("read");
        assert_eq!(before.len(), 75);
        // Minutes older than the newest breadcrumb less the grace move into chunks.
        let moved = s.compact_breadcrumbs().expect("compact");
        assert!(moved > 0 && moved < all.len(), "moved {moved}");
        assert_eq!(
            s.compact_breadcrumbs().expect("again"),
            0,
            "nothing more is due"
        );
        assert_eq!(
            s.breadcrumbs(DeliveryId(2), 0, 1_000).expect("read"),
            before
        );
        // Paging across the chunk/log boundary.
        let p1 = s.breadcrumbs(DeliveryId(2), 0, 40).expect("p1");
        let p2 = s
            .breadcrumbs(DeliveryId(2), p1[39].ts_ms, 1_000)
            .expect("p2");
        assert_eq!([p1, p2].concat(), before);
        assert_eq!(
            s.latest_breadcrumbs(DeliveryId(3), 5).expect("latest"),
            all.iter()
                .filter(|c| c.delivery_id == DeliveryId(3))
                .copied()
                .collect::<Vec<_>>()[70..]
        );
        // A copy received again (replication is at least once) is stored once; a late
        // breadcrumb of a compacted minute is merged into its chunk.
        let late = crumb(2, t0 + 1_234);
        s.append_breadcrumbs(&[before[0], late]).expect("late");
        s.append_breadcrumbs(&[crumb(9, t0 + 20 * 60_000)])
            .expect("newer");
        s.compact_breadcrumbs().expect("compact");
        let after = s.breadcrumbs(DeliveryId(2), 0, 1_000).expect("read");
        assert_eq!(after.len(), 76);
        assert!(after.contains(&late));
        // A restart rebuilds what is still in the log.
        drop(s);
        let s = Store::open(&path).expect("reopen");
        s.ensure_history_tables().expect("tables");
        assert_eq!(s.breadcrumbs(DeliveryId(2), 0, 1_000).expect("read"), after);
        assert_eq!(s.breadcrumbs(DeliveryId(9), 0, 10).expect("read").len(), 1);
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }

    #[test]
    fn breadcrumbs_in_the_old_layout_move_to_the_chunks_at_start() {
        let path = temp_db("legacy");
        let t0 = 100 * DAY_MS;
        {
            let s = Store::open(&path).expect("open");
            let tx = s.db().expect("db").begin_write().expect("tx");
            {
                let mut t = tx.open_table(LEGACY_CRUMBS).expect("legacy");
                for i in 0..10u64 {
                    let c = crumb(4, t0 + i * 30_000);
                    t.insert((4, c.ts_ms), c.encode().as_slice())
                        .expect("insert");
                }
            }
            tx.commit().expect("commit");
        }
        let s = Store::open(&path).expect("reopen");
        s.ensure_history_tables().expect("migrate");
        let v = s.breadcrumbs(DeliveryId(4), 0, 100).expect("read");
        assert_eq!(v.len(), 10);
        assert_eq!(v[3], crumb(4, t0 + 90_000));
        let tx = s.db().expect("db").begin_read().expect("tx");
        assert!(
            tx.open_table(LEGACY_CRUMBS).is_err(),
            "the old table is gone"
        );
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }
}
