//! The webhook outbox in redb: subscriptions, the rows written in the same write transaction
//! as the events they carry (so a crash between commit and send loses nothing), and the dead
//! letters. `webhooks::dispatch` decides what happens to the rows; this module only stores them.

use crate::durable::store::{Store, StoreError};
use crate::tracking::anomaly::{Anomaly, AnomalyKind};
use crate::tracking::proof::ProofRecord;
use crate::webhooks::dispatch::{Pending, RowKey};
use crate::webhooks::subscription::{EventKind, Subscription};
use protocol::consumer::StatusEvent;
use protocol::DeliveryId;
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::ToSchema;

/// `subscription id` -> JSON [`Subscription`].
pub(crate) const SUBSCRIPTIONS: TableDefinition<&str, &[u8]> =
    TableDefinition::new("webhook_subscriptions");
/// `(subscription, delivery_id, oseq)` -> JSON [`StoredRow`]: rows not yet delivered.
pub(crate) const OUTBOX: TableDefinition<(&str, u64, u64), &[u8]> =
    TableDefinition::new("webhook_outbox");
/// `(subscription, delivery_id, oseq)` -> JSON [`DeadLetter`].
pub(crate) const DEAD_LETTERS: TableDefinition<(&str, u64, u64), &[u8]> =
    TableDefinition::new("webhook_dead_letters");
/// `"next_oseq"` -> the next outbox sequence number.
const META: TableDefinition<&str, u64> = TableDefinition::new("webhook_meta");
const NEXT_OSEQ: &str = "next_oseq";

/// One outbox row as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredRow {
    created_ms: u64,
    kind: EventKind,
    idempotency_key: String,
    /// The JSON body, exactly as sent.
    body: String,
}

/// The body of every webhook.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct WebhookBody {
    /// The idempotency key (also in `Trackline-Idempotency-Key`).
    pub id: String,
    /// `status`, `anomaly` or `proof`.
    #[schema(value_type = String)]
    pub kind: EventKind,
    pub delivery_id: u64,
    /// The status event, anomaly or proof record.
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

/// A row given up on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeadLetter {
    pub subscription: String,
    pub delivery_id: u64,
    /// Position in the hub's outbox.
    pub oseq: u64,
    #[schema(value_type = String)]
    pub kind: EventKind,
    pub idempotency_key: String,
    /// When the event was committed, and when it was given up (unix ms).
    pub created_ms: u64,
    pub dead_ms: u64,
    /// The last failure (`HTTP 503 after 12 attempts`, `410 Gone`, `timeout after 3 attempts`).
    pub reason: String,
    /// The body that was being sent.
    #[schema(value_type = Object)]
    pub body: serde_json::Value,
}

/// Idempotency key of a status event: the same on every attempt and on every hub.
pub fn status_key(ev: &StatusEvent) -> String {
    format!("status:{}:{}", ev.delivery_id, ev.event_seq)
}

/// Writes outbox rows inside a write transaction of the event log.
pub(crate) struct OutboxWriter<'tx> {
    subs: Vec<Subscription>,
    outbox: redb::Table<'tx, (&'static str, u64, u64), &'static [u8]>,
    meta: redb::Table<'tx, &'static str, u64>,
    next: u64,
    now_ms: u64,
    written: Vec<Pending>,
}

impl<'tx> OutboxWriter<'tx> {
    pub(crate) fn open(tx: &'tx redb::WriteTransaction, now_ms: u64) -> Result<Self, StoreError> {
        let subs = read_subscriptions(&tx.open_table(SUBSCRIPTIONS).map_err(StoreError::db)?)?;
        let outbox = tx.open_table(OUTBOX).map_err(StoreError::db)?;
        let meta = tx.open_table(META).map_err(StoreError::db)?;
        let next = meta
            .get(NEXT_OSEQ)
            .map_err(StoreError::db)?
            .map_or(1, |v| v.value());
        Ok(Self {
            subs,
            outbox,
            meta,
            next,
            now_ms,
            written: Vec::new(),
        })
    }

    /// Whether any subscription exists (nothing to do otherwise).
    pub(crate) fn is_idle(&self) -> bool {
        self.subs.is_empty()
    }

    pub(crate) fn status(&mut self, ev: &StatusEvent) -> Result<(), StoreError> {
        if self.is_idle() {
            return Ok(());
        }
        let data = serde_json::to_value(ev).map_err(|e| StoreError::Encode(e.to_string()))?;
        self.row(
            EventKind::Status,
            ev.delivery_id,
            Some(&ev.source),
            status_key(ev),
            data,
        )
    }

    pub(crate) fn anomaly(&mut self, a: &Anomaly) -> Result<(), StoreError> {
        if self.is_idle() {
            return Ok(());
        }
        let kind = match a.kind {
            AnomalyKind::Stationary => "stationary",
            AnomalyKind::MovingAway => "moving_away",
        };
        let key = format!("anomaly:{}:{}:{kind}", a.delivery_id, a.ts_ms);
        let data = serde_json::to_value(a).map_err(|e| StoreError::Encode(e.to_string()))?;
        self.row(EventKind::Anomaly, a.delivery_id, None, key, data)
    }

    pub(crate) fn proof(&mut self, p: &ProofRecord) -> Result<(), StoreError> {
        if self.is_idle() {
            return Ok(());
        }
        let key = format!("proof:{}:{}", p.delivery_id, p.sha256);
        let data = serde_json::to_value(p).map_err(|e| StoreError::Encode(e.to_string()))?;
        self.row(EventKind::Proof, p.delivery_id, None, key, data)
    }

    fn row(
        &mut self,
        kind: EventKind,
        delivery: DeliveryId,
        source: Option<&str>,
        idempotency_key: String,
        data: serde_json::Value,
    ) -> Result<(), StoreError> {
        let mut body: Option<Arc<[u8]>> = None;
        for sub in &self.subs {
            if !sub.wants(kind, delivery, source) {
                continue;
            }
            // One body for every subscription that wants the event.
            let body = match body.clone() {
                Some(b) => b,
                None => {
                    let b: Arc<[u8]> = Arc::from(
                        serde_json::to_vec(&WebhookBody {
                            id: idempotency_key.clone(),
                            kind,
                            delivery_id: delivery.0,
                            data: data.clone(),
                        })
                        .map_err(|e| StoreError::Encode(e.to_string()))?,
                    );
                    body = Some(b.clone());
                    b
                }
            };
            let stored = StoredRow {
                created_ms: self.now_ms,
                kind,
                idempotency_key: idempotency_key.clone(),
                body: String::from_utf8_lossy(&body).into_owned(),
            };
            let bytes =
                serde_json::to_vec(&stored).map_err(|e| StoreError::Encode(e.to_string()))?;
            let oseq = self.next;
            self.next += 1;
            self.outbox
                .insert((sub.id.as_str(), delivery.0, oseq), bytes.as_slice())
                .map_err(StoreError::db)?;
            self.written.push(Pending {
                key: RowKey {
                    subscription: sub.id.clone(),
                    delivery,
                    oseq,
                },
                created_ms: self.now_ms,
                kind,
                idempotency_key: idempotency_key.clone(),
                body,
            });
        }
        Ok(())
    }

    /// Saves the sequence counter; returns the rows written (published after the commit).
    pub(crate) fn finish(mut self) -> Result<Vec<Pending>, StoreError> {
        if !self.written.is_empty() {
            self.meta
                .insert(NEXT_OSEQ, self.next)
                .map_err(StoreError::db)?;
        }
        Ok(self.written)
    }
}

fn read_subscriptions(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Vec<Subscription>, StoreError> {
    let mut out = Vec::new();
    for row in table.iter().map_err(StoreError::db)? {
        let (_, v) = row.map_err(StoreError::db)?;
        match serde_json::from_slice::<Subscription>(v.value()) {
            Ok(s) => out.push(s),
            Err(e) => tracing::warn!(error = %e, "skipping an unreadable webhook subscription"),
        }
    }
    Ok(out)
}

fn decode_row(sub: &str, delivery: u64, oseq: u64, bytes: &[u8]) -> Option<Pending> {
    match serde_json::from_slice::<StoredRow>(bytes) {
        Ok(r) => Some(Pending {
            key: RowKey {
                subscription: sub.to_owned(),
                delivery: DeliveryId(delivery),
                oseq,
            },
            created_ms: r.created_ms,
            kind: r.kind,
            idempotency_key: r.idempotency_key,
            body: Arc::from(r.body.into_bytes()),
        }),
        Err(e) => {
            tracing::warn!(subscription = sub, delivery_id = delivery, oseq, error = %e, "skipping an unreadable outbox row");
            None
        }
    }
}

/// Why a subscription could not be created.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    #[error("a webhook named {0:?} exists already")]
    Exists(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Store {
    /// Creates the webhook tables (at start).
    pub fn ensure_webhook_tables(&self) -> Result<(), StoreError> {
        let tx = self.db()?.begin_write().map_err(StoreError::db)?;
        tx.open_table(SUBSCRIPTIONS).map_err(StoreError::db)?;
        tx.open_table(OUTBOX).map_err(StoreError::db)?;
        tx.open_table(DEAD_LETTERS).map_err(StoreError::db)?;
        tx.open_table(META).map_err(StoreError::db)?;
        tx.commit().map_err(StoreError::db)?;
        Ok(())
    }

    /// Makes the stored subscriptions from the config file exactly `configured` (API ones are
    /// kept; a configured id replaces an API one of the same name).
    pub fn sync_configured_webhooks(&self, configured: &[Subscription]) -> Result<(), StoreError> {
        let tx = self.db()?.begin_write().map_err(StoreError::db)?;
        {
            let mut table = tx.open_table(SUBSCRIPTIONS).map_err(StoreError::db)?;
            let stale: Vec<String> = read_subscriptions(&table)?
                .into_iter()
                .filter(|s| s.from_config && !configured.iter().any(|c| c.id == s.id))
                .map(|s| s.id)
                .collect();
            for id in &stale {
                table.remove(id.as_str()).map_err(StoreError::db)?;
            }
            for s in configured {
                let s = Subscription {
                    from_config: true,
                    ..s.clone()
                };
                let bytes =
                    serde_json::to_vec(&s).map_err(|e| StoreError::Encode(e.to_string()))?;
                table
                    .insert(s.id.as_str(), bytes.as_slice())
                    .map_err(StoreError::db)?;
            }
            for id in &stale {
                remove_rows(&tx, id)?;
            }
        }
        tx.commit().map_err(StoreError::db)?;
        self.webhooks_changed();
        Ok(())
    }

    /// Every subscription.
    pub fn webhook_subscriptions(&self) -> Result<Vec<Subscription>, StoreError> {
        let tx = self.db()?.begin_read().map_err(StoreError::db)?;
        read_subscriptions(&tx.open_table(SUBSCRIPTIONS).map_err(StoreError::db)?)
    }

    /// Adds a subscription (it gets the events committed from now on).
    pub fn add_webhook(&self, sub: &Subscription) -> Result<(), SubscribeError> {
        let tx = self.db()?.begin_write().map_err(StoreError::db)?;
        {
            let mut table = tx.open_table(SUBSCRIPTIONS).map_err(StoreError::db)?;
            if table
                .get(sub.id.as_str())
                .map_err(StoreError::db)?
                .is_some()
            {
                return Err(SubscribeError::Exists(sub.id.clone()));
            }
            let bytes = serde_json::to_vec(sub).map_err(|e| StoreError::Encode(e.to_string()))?;
            table
                .insert(sub.id.as_str(), bytes.as_slice())
                .map_err(StoreError::db)?;
        }
        tx.commit().map_err(StoreError::db)?;
        self.webhooks_changed();
        Ok(())
    }

    /// Deletes a subscription with its pending rows and dead letters; false if unknown.
    pub fn remove_webhook(&self, id: &str) -> Result<bool, StoreError> {
        let tx = self.db()?.begin_write().map_err(StoreError::db)?;
        let existed = {
            let mut table = tx.open_table(SUBSCRIPTIONS).map_err(StoreError::db)?;
            let existed = table.remove(id).map_err(StoreError::db)?.is_some();
            if existed {
                remove_rows(&tx, id)?;
            }
            existed
        };
        tx.commit().map_err(StoreError::db)?;
        self.webhooks_changed();
        Ok(existed)
    }

    /// Every pending outbox row (read at start).
    pub fn outbox_rows(&self) -> Result<Vec<Pending>, StoreError> {
        let tx = self.db()?.begin_read().map_err(StoreError::db)?;
        let table = tx.open_table(OUTBOX).map_err(StoreError::db)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(StoreError::db)? {
            let (k, v) = row.map_err(StoreError::db)?;
            let (sub, delivery, oseq) = k.value();
            out.extend(decode_row(sub, delivery, oseq, v.value()));
        }
        Ok(out)
    }

    /// Number of pending outbox rows.
    pub fn outbox_len(&self) -> Result<u64, StoreError> {
        let tx = self.db()?.begin_read().map_err(StoreError::db)?;
        let table = tx.open_table(OUTBOX).map_err(StoreError::db)?;
        table.len().map_err(StoreError::db)
    }

    /// Deletes delivered (or dropped) rows, and moves dead ones to the dead letters, in one
    /// write transaction.
    pub fn settle_outbox(&self, done: &[RowKey], dead: &[DeadLetter]) -> Result<(), StoreError> {
        if done.is_empty() && dead.is_empty() {
            return Ok(());
        }
        let tx = self.db()?.begin_write().map_err(StoreError::db)?;
        {
            let mut outbox = tx.open_table(OUTBOX).map_err(StoreError::db)?;
            let mut letters = tx.open_table(DEAD_LETTERS).map_err(StoreError::db)?;
            for k in done {
                outbox
                    .remove((k.subscription.as_str(), k.delivery.0, k.oseq))
                    .map_err(StoreError::db)?;
            }
            for d in dead {
                let key = (d.subscription.as_str(), d.delivery_id, d.oseq);
                outbox.remove(key).map_err(StoreError::db)?;
                let bytes = serde_json::to_vec(d).map_err(|e| StoreError::Encode(e.to_string()))?;
                letters
                    .insert(key, bytes.as_slice())
                    .map_err(StoreError::db)?;
            }
        }
        tx.commit().map_err(StoreError::db)?;
        Ok(())
    }

    /// Dead letters, oldest first (at most `limit`), optionally of one subscription.
    pub fn dead_letters(
        &self,
        subscription: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let tx = self.db()?.begin_read().map_err(StoreError::db)?;
        let table = tx.open_table(DEAD_LETTERS).map_err(StoreError::db)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(StoreError::db)? {
            if out.len() >= limit {
                break;
            }
            let (k, v) = row.map_err(StoreError::db)?;
            let (sub, delivery, _) = k.value();
            if subscription.is_some_and(|s| s != sub) {
                continue;
            }
            match serde_json::from_slice::<DeadLetter>(v.value()) {
                Ok(d) => out.push(d),
                Err(e) => {
                    tracing::warn!(subscription = sub, delivery_id = delivery, error = %e, "skipping an unreadable dead letter")
                }
            }
        }
        Ok(out)
    }

    /// Puts a subscription's dead letters back into its outbox (new positions, so after the
    /// rows already pending); returns how many.
    pub fn redrive_dead_letters(
        &self,
        subscription: &str,
        now_ms: u64,
    ) -> Result<usize, StoreError> {
        let tx = self.db()?.begin_write().map_err(StoreError::db)?;
        let mut rows = Vec::new();
        {
            let mut letters = tx.open_table(DEAD_LETTERS).map_err(StoreError::db)?;
            let mut outbox = tx.open_table(OUTBOX).map_err(StoreError::db)?;
            let mut meta = tx.open_table(META).map_err(StoreError::db)?;
            let mut next = meta
                .get(NEXT_OSEQ)
                .map_err(StoreError::db)?
                .map_or(1, |v| v.value());
            let mut taken = Vec::new();
            for row in letters
                .extract_from_if(
                    (subscription, 0u64, 0u64)..=(subscription, u64::MAX, u64::MAX),
                    |_, _| true,
                )
                .map_err(StoreError::db)?
            {
                let (_, v) = row.map_err(StoreError::db)?;
                if let Ok(d) = serde_json::from_slice::<DeadLetter>(v.value()) {
                    taken.push(d);
                }
            }
            for d in taken {
                let stored = StoredRow {
                    created_ms: now_ms,
                    kind: d.kind,
                    idempotency_key: d.idempotency_key.clone(),
                    body: d.body.to_string(),
                };
                let bytes =
                    serde_json::to_vec(&stored).map_err(|e| StoreError::Encode(e.to_string()))?;
                outbox
                    .insert((subscription, d.delivery_id, next), bytes.as_slice())
                    .map_err(StoreError::db)?;
                rows.extend(decode_row(subscription, d.delivery_id, next, &bytes));
                next += 1;
            }
            meta.insert(NEXT_OSEQ, next).map_err(StoreError::db)?;
        }
        tx.commit().map_err(StoreError::db)?;
        let n = rows.len();
        self.publish_outbox(rows);
        Ok(n)
    }
}

/// Deletes a subscription's pending rows and dead letters inside `tx`.
fn remove_rows(tx: &redb::WriteTransaction, id: &str) -> Result<(), StoreError> {
    for def in [OUTBOX, DEAD_LETTERS] {
        let mut t = tx.open_table(def).map_err(StoreError::db)?;
        t.retain_in((id, 0u64, 0u64)..=(id, u64::MAX, u64::MAX), |_, _| false)
            .map_err(StoreError::db)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::durable::copies::ReplicaEntry;
    use crate::tracking::deliveries::LogEntry;
    use protocol::status::DeliveryStatus;

    fn temp_db(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "trackline-hub-outbox-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir.join("hub.redb")
    }

    fn sub(id: &str, sources: &[&str]) -> Subscription {
        Subscription {
            id: id.into(),
            url: "https://example.invalid/hook".into(),
            secret: "0123456789abcdef".into(),
            kinds: Vec::new(),
            deliveries: Vec::new(),
            sources: sources.iter().map(|s| (*s).to_owned()).collect(),
            from_config: false,
        }
    }

    fn entry(id: u64, seqs: &[(u64, &str)]) -> LogEntry {
        LogEntry {
            delivery_id: DeliveryId(id),
            record: None,
            events: seqs
                .iter()
                .map(|(s, source)| StatusEvent {
                    delivery_id: DeliveryId(id),
                    event_seq: *s,
                    status: DeliveryStatus::Preparing,
                    ts_ms: 10 + s,
                    source: (*source).into(),
                    metadata: serde_json::Value::Null,
                })
                .collect(),
            idempotency_key: None,
            side: Vec::new(),
            generation: 1,
        }
    }

    fn keys(rows: &[Pending]) -> Vec<(String, u64, String)> {
        rows.iter()
            .map(|r| {
                (
                    r.key.subscription.clone(),
                    r.key.delivery.0,
                    r.idempotency_key.clone(),
                )
            })
            .collect()
    }

    #[test]
    fn rows_are_committed_with_their_events_for_each_subscription_that_wants_them() {
        let path = temp_db("commit");
        let s = Store::open(&path).expect("open");
        s.append(&[&entry(1, &[(1, "api")])]).expect("append");
        assert!(
            s.outbox_rows().expect("rows").is_empty(),
            "no subscription yet"
        );
        s.add_webhook(&sub("all", &[])).expect("add");
        s.add_webhook(&sub("hub-made", &["geofence"])).expect("add");
        assert!(matches!(
            s.add_webhook(&sub("all", &[])),
            Err(SubscribeError::Exists(_))
        ));
        let _ = s.take_outbox_news();
        s.append(&[&entry(1, &[(2, "api"), (3, "geofence")])])
            .expect("append");
        let rows = s.outbox_rows().expect("rows");
        assert_eq!(
            keys(&rows),
            vec![
                ("all".into(), 1, "status:1:2".into()),
                ("all".into(), 1, "status:1:3".into()),
                ("hub-made".into(), 1, "status:1:3".into()),
            ]
        );
        // The sender hears of exactly the committed rows, with the stored bodies.
        let (news, changed) = s.take_outbox_news();
        assert!(!changed);
        assert_eq!(keys(&news).len(), 3);
        let body: serde_json::Value = serde_json::from_slice(&rows[1].body).expect("json");
        assert_eq!(body["id"], "status:1:3");
        assert_eq!(body["kind"], "status");
        assert_eq!(body["data"]["source"], "geofence");
        assert!(rows[0].key.oseq < rows[1].key.oseq);

        // Delivered rows leave; dead ones move to the dead letters and can be redriven.
        let dead = DeadLetter {
            subscription: "all".into(),
            delivery_id: 1,
            oseq: rows[1].key.oseq,
            kind: EventKind::Status,
            idempotency_key: "status:1:3".into(),
            created_ms: rows[1].created_ms,
            dead_ms: 99,
            reason: "410 Gone".into(),
            body: body.clone(),
        };
        s.settle_outbox(&[rows[0].key.clone()], std::slice::from_ref(&dead))
            .expect("settle");
        assert_eq!(
            keys(&s.outbox_rows().expect("rows")),
            vec![("hub-made".into(), 1, "status:1:3".into())]
        );
        assert_eq!(s.dead_letters(None, 10).expect("dead"), vec![dead.clone()]);
        assert!(s
            .dead_letters(Some("hub-made"), 10)
            .expect("dead")
            .is_empty());
        assert_eq!(s.redrive_dead_letters("all", 1_000).expect("redrive"), 1);
        assert!(s.dead_letters(None, 10).expect("dead").is_empty());
        let rows = s.outbox_rows().expect("rows");
        assert_eq!(rows.len(), 2);
        assert!(rows.iter().any(|r| r.key.subscription == "all"
            && r.idempotency_key == "status:1:3"
            && r.created_ms == 1_000));

        // Deleting a subscription deletes its rows.
        assert!(s.remove_webhook("all").expect("remove"));
        assert!(!s.remove_webhook("all").expect("remove"));
        assert_eq!(s.outbox_rows().expect("rows").len(), 1);
        assert!(s.take_outbox_news().1, "the sender is told to reload");
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }

    #[test]
    fn a_replica_stores_rows_for_events_new_to_it_only() {
        let path = temp_db("replica");
        let s = Store::open(&path).expect("open");
        s.add_webhook(&sub("all", &[])).expect("add");
        let copy = ReplicaEntry::from(&entry(7, &[(1, "api"), (2, "geofence")]));
        s.apply_replica(std::slice::from_ref(&copy)).expect("apply");
        assert_eq!(s.outbox_rows().expect("rows").len(), 2);
        // The same copy again (a hand-off after live replication) adds nothing.
        s.apply_replica(std::slice::from_ref(&copy)).expect("apply");
        let more = ReplicaEntry::from(&entry(7, &[(1, "api"), (2, "geofence"), (3, "api")]));
        s.apply_replica(&[more]).expect("apply");
        assert_eq!(
            keys(&s.outbox_rows().expect("rows")),
            vec![
                ("all".into(), 7, "status:7:1".into()),
                ("all".into(), 7, "status:7:2".into()),
                ("all".into(), 7, "status:7:3".into()),
            ]
        );
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }

    #[test]
    fn configured_subscriptions_replace_the_previous_configured_ones_and_keep_api_ones() {
        let path = temp_db("sync");
        let s = Store::open(&path).expect("open");
        s.add_webhook(&sub("from-api", &[])).expect("add");
        s.sync_configured_webhooks(&[sub("old", &[])])
            .expect("sync");
        s.sync_configured_webhooks(&[sub("new", &[])])
            .expect("sync");
        let mut ids: Vec<(String, bool)> = s
            .webhook_subscriptions()
            .expect("subs")
            .into_iter()
            .map(|s| (s.id, s.from_config))
            .collect();
        ids.sort();
        assert_eq!(ids, vec![("from-api".into(), false), ("new".into(), true)]);
        let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
    }
}
