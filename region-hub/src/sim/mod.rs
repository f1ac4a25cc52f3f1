//! A deterministic simulation of a hub cluster: one process, one seeded RNG, simulated time,
//! no sockets and no gossip. N hubs run the REAL cluster decisions (`replication::plan`,
//! `fencing`, `rebalance`, `takeover`, `placement`) over the REAL store (redb, in memory),
//! under random schedules of writes, consumer resumes, crashes and restarts, one-way and
//! symmetric partitions, lost and late frames, membership flaps, drains and joins. After each
//! schedule the cluster is healed and left quiet, then checked:
//!
//! 1. no acknowledged status event is lost or changed at the delivery's owner;
//! 2. no two different events share (delivery, seq) on any hub;
//! 3. a consumer resuming from its `last_event_seq` got every later event exactly once, in
//!    order, and only events of the owner's final log;
//! 4. the owner's log equals its successor's copy.
//!
//! What it does not model: the live core's status machine and idempotency replay (writes are
//! plain status events with unique keys), the event-log writer's batching and generations,
//! breadcrumbs, gossip itself (each hub's view is computed from the scripted truth: who is up,
//! who it cannot hear, whom it wrongly declared down), timeouts (a lost frame or answer is
//! known at once), and concurrency inside a hub (each step runs to completion).
//!
//! By default faults come one at a time (what `min_copies` 2 promises); frames are lost but
//! never delivered late.
//!
//! `SIM_SCHEDULES=n` (default [`DEFAULT_SCHEDULES`]), `SIM_BASE_SEED=n`, `SIM_SEED=n` (replay
//! one schedule and print it), `SIM_ACK_BEFORE_COPY=1` (a deliberately broken guarantee: the
//! owner acknowledges before the successor's copy), `SIM_DOUBLE_FAULTS=1` (overlapping
//! faults), `SIM_LATE_FRAMES=1` (requests delivered after their sender gave up). See
//! `docs/cluster.md`, *The simulation*.

use crate::durable::copies::ReplicaEntry;
use crate::durable::store::Store;
use crate::replication::fencing::{self, LiveCore};
use crate::replication::placement::{self, Route};
use crate::replication::plan::{settle, CopyOutcome, ReplicationPlan};
use crate::replication::rebalance::{self, Rebalancer};
use crate::replication::takeover;
use crate::replication::view::{hub_info, StaticView, View};
use crate::tracking::deliveries::{DeliveryRecord, LogEntry};
use protocol::consumer::StatusEvent;
use protocol::geo::LatLng;
use protocol::status::DeliveryStatus;
use protocol::DeliveryId;
use std::collections::{BTreeMap, BTreeSet};

/// Schedules run by `cargo test` unless `SIM_SCHEDULES` says otherwise (~55 s here).
pub const DEFAULT_SCHEDULES: u64 = 10_000;

/// Steps of one schedule before the cluster is healed and checked.
const STEPS: usize = 80;

/// `cluster_hub.join_grace_ms` of the simulated hubs.
const JOIN_GRACE_MS: u64 = 3_000;

/// `cluster_hub.min_copies` of the simulated hubs.
const MIN_COPIES: u8 = 2;

/// splitmix64: small, fast, and the same sequence everywhere.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// Knobs of a run.
#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    /// Acknowledge on the owner's commit, before the successor's copy (broken on purpose).
    pub ack_before_copy: bool,
    /// Frames may be held up and delivered after their sender gave up on them.
    pub late_frames: bool,
    /// Faults may overlap (two hubs down, a partition during a crash): beyond what
    /// `min_copies` 2 promises.
    pub double_faults: bool,
}

/// A request between hubs (the frames of `replication::wire`, without the encoding).
#[derive(Clone, Debug)]
enum Req {
    Append(Vec<ReplicaEntry>),
    Handoff(Vec<ReplicaEntry>),
    Fetch(Vec<DeliveryId>),
}

#[derive(Clone, Debug)]
enum Resp {
    Ack,
    Fenced(Vec<DeliveryId>),
    Entries(Vec<ReplicaEntry>),
    Refused,
}

/// One simulated hub: its disk survives a crash, its memory does not.
struct SimHub {
    id: String,
    up: bool,
    store: Store,
    rebalancer: Rebalancer,
    /// The live core: deliveries held, with their last event seq.
    held: BTreeMap<DeliveryId, u64>,
    claimed: bool,
    /// Copies that went unanswered (memory: lost in a crash, like the hub's).
    in_doubt: takeover::InDoubt,
}

/// A status event acknowledged to a client.
#[derive(Clone, Debug, PartialEq)]
struct Acked {
    delivery: DeliveryId,
    seq: u64,
    key: String,
}

/// A consumer of one delivery: what it has been sent, in order.
#[derive(Clone, Debug, Default)]
struct Consumer {
    seen: Vec<(u64, String)>,
}

/// The scripted truth the views are computed from.
#[derive(Clone, Debug, Default)]
struct Truth {
    /// Hubs draining (live, owning nothing).
    draining: BTreeSet<String>,
    /// Directed links that lose everything: (from, to).
    cut: BTreeSet<(String, String)>,
    /// (observer, peer): the observer's membership wrongly says the peer is down.
    flapped: BTreeSet<(String, String)>,
}

/// One run of one schedule.
pub struct Sim {
    rng: Rng,
    faults: Faults,
    now_ms: u64,
    hubs: Vec<SimHub>,
    truth: Truth,
    deliveries: Vec<DeliveryId>,
    consumers: BTreeMap<DeliveryId, Consumer>,
    acked: Vec<Acked>,
    /// Frames held up in the network, delivered later (their answer is lost).
    late: Vec<(String, String, Req)>,
    next_key: u64,
    /// Healed and settling: no frame is lost or held up.
    quiet: bool,
    /// The schedule, for replay.
    pub log: Vec<String>,
}

fn err<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

impl Sim {
    /// A cluster of 3 or 4 hubs, all up, with a few deliveries created.
    pub fn new(seed: u64, faults: Faults) -> Result<Self, String> {
        let mut rng = Rng::new(seed);
        let n = 3 + rng.below(2) as usize;
        let mut hubs = Vec::new();
        for i in 0..n {
            let id = format!("h{i}");
            hubs.push(SimHub {
                rebalancer: Rebalancer::new(id.clone(), 0, 0),
                id,
                up: true,
                store: Store::in_memory().map_err(err)?,
                held: BTreeMap::new(),
                claimed: true,
                in_doubt: takeover::InDoubt::default(),
            });
        }
        let mut sim = Self {
            rng,
            faults,
            now_ms: 0,
            hubs,
            truth: Truth::default(),
            deliveries: Vec::new(),
            consumers: BTreeMap::new(),
            acked: Vec::new(),
            late: Vec::new(),
            next_key: 0,
            quiet: false,
            log: Vec::new(),
        };
        let count = 3 + sim.rng.below(4);
        for _ in 0..count {
            let id = DeliveryId(1 + sim.rng.below(1 << 40));
            if sim.deliveries.contains(&id) {
                continue;
            }
            sim.deliveries.push(id);
            sim.consumers.insert(id, Consumer::default());
            sim.client_write(id, true)?;
        }
        Ok(sim)
    }

    fn idx(&self, id: &str) -> usize {
        self.hubs.iter().position(|h| h.id == id).unwrap_or(0)
    }

    /// Hub `h`'s view: the hubs up that it can hear and has not declared down.
    fn view_of(&self, h: usize) -> StaticView {
        let me = &self.hubs[h].id;
        StaticView(
            self.hubs
                .iter()
                .filter(|p| p.up)
                .filter(|p| {
                    &p.id == me
                        || (!self.truth.cut.contains(&(p.id.clone(), me.clone()))
                            && !self.truth.flapped.contains(&(me.clone(), p.id.clone())))
                })
                .map(|p| {
                    let mut info = hub_info(&p.id);
                    info.draining = self.truth.draining.contains(&p.id);
                    info
                })
                .collect(),
        )
    }

    /// What edges and consumers route by: every hub up.
    fn edge_view(&self) -> StaticView {
        StaticView(
            self.hubs
                .iter()
                .filter(|p| p.up)
                .map(|p| {
                    let mut info = hub_info(&p.id);
                    info.draining = self.truth.draining.contains(&p.id);
                    info
                })
                .collect(),
        )
    }

    /// One exchange: the request may be lost, held up (delivered later, answer lost), or
    /// answered; the answer may be lost.
    fn exchange(&mut self, from: usize, to: &str, req: Req) -> Result<Option<Resp>, String> {
        let t = self.idx(to);
        let (a, b) = (self.hubs[from].id.clone(), to.to_owned());
        let faulty = !self.quiet;
        if !self.hubs[t].up
            || self.truth.cut.contains(&(a.clone(), b.clone()))
            || (faulty && self.rng.chance(3))
        {
            self.log
                .push(format!("  {a} -> {b} {} lost", req_name(&req)));
            return Ok(None);
        }
        if faulty && self.rng.chance(3) && self.faults.late_frames {
            self.late.push((a, b, req));
            return Ok(None);
        }
        // Drawn before the answer (handling it draws nothing, and cuts no link).
        let answer_lost =
            self.truth.cut.contains(&(b.clone(), a.clone())) || (faulty && self.rng.chance(3));
        let name = answer_lost.then(|| req_name(&req));
        let resp = self.handle(t, req)?;
        if let Some(name) = name {
            self.log.push(format!(
                "  {a} -> {b} {name} answered {resp:?}, answer lost"
            ));
            return Ok(None);
        }
        Ok(Some(resp))
    }

    /// Hub `t` answers a request (as `replication::driver::answer` does).
    fn handle(&mut self, t: usize, req: Req) -> Result<Resp, String> {
        let view = self.view_of(t);
        let hub = &mut self.hubs[t];
        let (entries, live) = match req {
            Req::Append(e) => (e, true),
            Req::Handoff(e) => (e, false),
            Req::Fetch(ids) => {
                let mut out = Vec::new();
                for id in ids {
                    if let Some(e) = takeover::full_log(&hub.store, id).map_err(err)? {
                        out.push(e);
                    }
                }
                return Ok(Resp::Entries(out));
            }
        };
        let held = hub.held.clone();
        let (kept, fenced) =
            fencing::fence(&hub.id, &view, live, entries, |id| held.contains_key(&id));
        let applied = match hub.store.apply_replica_checked(&kept, live) {
            Ok(a) => a,
            Err(_) => return Ok(Resp::Refused),
        };
        let (stored, fenced) = fencing::with_conflicts(kept, fenced, &applied.conflicts, live);
        for e in &stored {
            let held = hub.held.get(&e.delivery_id).copied();
            let doubt = hub.in_doubt.holds(e.delivery_id);
            let superseded = applied.superseded.contains(&e.delivery_id);
            match fencing::after_store(&hub.id, &view, e, held, doubt, superseded, live) {
                LiveCore::Load => {
                    if !takeover::has_hole(&hub.store, e.delivery_id).map_err(err)? {
                        takeover::begin(&hub.store, e.delivery_id).map_err(err)?;
                        load(hub, e.delivery_id)?
                    }
                }
                LiveCore::Unload => {
                    hub.held.remove(&e.delivery_id);
                    hub.rebalancer.handle_fenced(&[e.delivery_id]);
                }
                LiveCore::Keep => {}
            }
        }
        Ok(if fenced.is_empty() {
            Resp::Ack
        } else {
            Resp::Fenced(fenced)
        })
    }

    /// A client writes a status event (or creates the delivery) at the hub its edge routes
    /// to, following one redirect. Acknowledged writes are remembered.
    fn client_write(&mut self, id: DeliveryId, create: bool) -> Result<(), String> {
        let Some(first) = self.edge_view().owner_of(id) else {
            return Ok(());
        };
        let mut at = self.idx(&first.id);
        for _ in 0..2 {
            let view = self.view_of(at);
            let hub = &self.hubs[at];
            let route = if create {
                match placement::create(&hub.id, &view, Some(id), std::iter::empty()) {
                    Some(placement::Creation::Redirect(o)) => Route::Redirect(o),
                    _ => Route::Serve,
                }
            } else {
                placement::decide(
                    &hub.id,
                    view.owner_of(id),
                    hub.held.contains_key(&id),
                    hub.claimed,
                )
            };
            match route {
                Route::Redirect(o) => at = self.idx(&o.id),
                Route::Joining => return Ok(()),
                Route::TakeOver => {
                    self.take_over(at, &[id])?;
                    return self.commit(at, id, create);
                }
                Route::Serve => return self.commit(at, id, create),
            }
        }
        Ok(())
    }

    /// Hub `at` appends one event to `id`: replicate, then commit and acknowledge.
    fn commit(&mut self, at: usize, id: DeliveryId, create: bool) -> Result<(), String> {
        let last = match (create, self.hubs[at].held.get(&id)) {
            (true, _) => 0,
            (false, Some(l)) => *l,
            (false, None) => return Ok(()),
        };
        self.next_key += 1;
        let key = format!("k{}", self.next_key);
        let seq = last + 1;
        let entry = LogEntry {
            delivery_id: id,
            record: create.then_some(DeliveryRecord {
                id,
                pickup: LatLng {
                    lat: 60.0,
                    lng: 24.0,
                },
                dropoff: LatLng {
                    lat: 60.1,
                    lng: 24.1,
                },
                driver_id: None,
                created_ms: self.now_ms,
            }),
            events: vec![StatusEvent {
                delivery_id: id,
                event_seq: seq,
                status: if create {
                    DeliveryStatus::Confirmed
                } else {
                    DeliveryStatus::EnRoute
                },
                ts_ms: self.now_ms,
                source: "api".into(),
                metadata: serde_json::json!({ "key": key }),
            }],
            idempotency_key: Some(key.clone()),
            side: Vec::new(),
            generation: 1,
        };
        let ack = |sim: &mut Self| {
            sim.hubs[at].held.insert(id, seq);
            sim.acked.push(Acked {
                delivery: id,
                seq,
                key: key.clone(),
            });
        };
        if self.faults.ack_before_copy {
            self.hubs[at].store.append(&[&entry]).map_err(err)?;
            ack(self);
            let _ = self.replicate(at, &entry)?;
            self.log.push(format!(
                "  {} acked {id}#{seq} before the copy",
                self.hubs[at].id
            ));
            return Ok(());
        }
        if self.replicate(at, &entry)? {
            self.hubs[at].store.append(&[&entry]).map_err(err)?;
            ack(self);
            self.log
                .push(format!("  {} acked {id}#{seq}", self.hubs[at].id));
        } else {
            // Refused (fenced, or no replica): unloaded until taken over afresh.
            let hub = &mut self.hubs[at];
            hub.held.remove(&id);
            hub.rebalancer.handle_fenced(&[id]);
            self.log.push(format!("  {} refused {id}#{seq}", hub.id));
        }
        Ok(())
    }

    /// Copies `entry` as planned; whether it may be committed.
    fn replicate(&mut self, at: usize, entry: &LogEntry) -> Result<bool, String> {
        let view = self.view_of(at);
        let epochs = self.hubs[at]
            .store
            .write_epochs([entry.delivery_id])
            .map_err(err)?;
        let plan = ReplicationPlan::new(
            &self.hubs[at].id,
            &view,
            MIN_COPIES,
            std::slice::from_ref(entry),
            &epochs,
        );
        let mut ok = plan.refused.is_empty();
        for copy in &plan.copies {
            for e in &copy.entries {
                self.hubs[at]
                    .rebalancer
                    .handle_live_copy(e.delivery_id, &copy.to.id);
            }
            let outcome = match self.exchange(at, &copy.to.id, Req::Append(copy.entries.clone()))? {
                Some(Resp::Ack) => CopyOutcome::Stored { fenced: Vec::new() },
                Some(Resp::Fenced(ids)) => CopyOutcome::Stored { fenced: ids },
                _ => CopyOutcome::Failed,
            };
            if outcome == CopyOutcome::Failed {
                self.hubs[at]
                    .in_doubt
                    .handle_unanswered(&copy.to, copy.entries.iter().map(|e| e.delivery_id));
            }
            ok &= settle(copy, &outcome, MIN_COPIES).refused.is_empty();
        }
        Ok(ok)
    }

    /// Hub `at` takes `ids` over: merge every live peer's copy, then load.
    fn take_over(&mut self, at: usize, ids: &[DeliveryId]) -> Result<(), String> {
        let me = self.hubs[at].id.clone();
        let mut peers: Vec<String> = self
            .view_of(at)
            .live_hubs()
            .into_iter()
            .map(|h| h.id)
            .filter(|p| *p != me)
            .collect();
        for h in self.hubs[at].in_doubt.peers(ids) {
            if h.id != me && !peers.contains(&h.id) {
                peers.push(h.id);
            }
        }
        let mut answered = Vec::new();
        let asked = peers.clone();
        let mut fetched = Vec::new();
        for p in peers {
            if let Some(Resp::Entries(copies)) = self.exchange(at, &p, Req::Fetch(ids.to_vec()))? {
                takeover::merge(&self.hubs[at].store, &copies).map_err(err)?;
                fetched.push((p.clone(), copies));
                answered.push(p);
            }
        }
        let waiting = self.hubs[at]
            .in_doubt
            .handle_fetched(ids, &asked, &answered);
        for id in ids.iter().filter(|id| !waiting.contains(id)) {
            takeover::begin(&self.hubs[at].store, *id).map_err(err)?;
            load(&mut self.hubs[at], *id)?;
        }
        // A peer whose copy kept strays gets the merged log (`driver::take_over`).
        for (p, mut copies) in fetched {
            copies.retain(|e| !waiting.contains(&e.delivery_id));
            let store = &self.hubs[at].store;
            let mut logs = Vec::new();
            for id in takeover::stale_copies(store, &copies).map_err(err)? {
                logs.extend(takeover::full_log(store, id).map_err(err)?);
            }
            if !logs.is_empty() {
                self.log.push(format!(
                    "  {me} repairs {p}: {}",
                    req_name(&Req::Handoff(logs.clone()))
                ));
                self.exchange(at, &p, Req::Handoff(logs))?;
            }
        }
        if !waiting.is_empty() {
            self.hubs[at].rebalancer.handle_postponed(&waiting);
        }
        self.log
            .push(format!("  {me} took over {ids:?} (postponed: {waiting:?})"));
        Ok(())
    }

    /// One rebalancer pass of hub `at`, carried out.
    fn rebalance(&mut self, at: usize) -> Result<(), String> {
        let view = self.view_of(at);
        let ids = self.hubs[at].store.delivery_ids().map_err(err)?;
        let hub = &mut self.hubs[at];
        let held = hub.held.clone();
        let pass = hub
            .rebalancer
            .plan(self.now_ms, &view, &ids, |id| held.contains_key(&id));
        if pass.announce {
            hub.claimed = true;
        }
        if !pass.takeovers.is_empty() {
            self.take_over(at, &pass.takeovers)?;
        }
        for send in pass.sends {
            let Some(entry) = takeover::full_log(&self.hubs[at].store, send.id).map_err(err)?
            else {
                continue;
            };
            if let Some(Resp::Ack) = self.exchange(at, &send.to.id, Req::Handoff(vec![entry]))? {
                self.hubs[at].rebalancer.handle_sent(&send);
            }
        }
        // Copies brought in step with their owner (`driver::run_rebalancer`): one fetch per owner.
        let mut by_owner: BTreeMap<String, Vec<rebalance::Transfer>> = BTreeMap::new();
        for sync in pass.syncs {
            by_owner.entry(sync.to.id.clone()).or_default().push(sync);
        }
        for (owner, syncs) in by_owner {
            let ids: Vec<DeliveryId> = syncs.iter().map(|s| s.id).collect();
            self.log
                .push(format!("  {} syncs {ids:?} with {owner}", self.hubs[at].id));
            if let Some(Resp::Entries(copies)) = self.exchange(at, &owner, Req::Fetch(ids))? {
                let applied = takeover::merge(&self.hubs[at].store, &copies).map_err(err)?;
                if !applied.superseded.is_empty() {
                    self.log.push(format!(
                        "  {} synced {:?} from {owner}: strays replaced",
                        self.hubs[at].id, applied.superseded
                    ));
                }
                let ahead = takeover::ahead_of(&self.hubs[at].store, &copies).map_err(err)?;
                for sync in syncs.iter().filter(|s| !ahead.contains(&s.id)) {
                    self.hubs[at].rebalancer.handle_synced(sync);
                }
                // The owner gets what we hold past its log (`driver::sync_copies`).
                let mut logs = Vec::new();
                for id in ahead {
                    logs.extend(takeover::full_log(&self.hubs[at].store, id).map_err(err)?);
                }
                if !logs.is_empty() {
                    self.log.push(format!(
                        "  {} sends {owner} what it holds past its log: {}",
                        self.hubs[at].id,
                        req_name(&Req::Handoff(logs.clone()))
                    ));
                    self.exchange(at, &owner, Req::Handoff(logs))?;
                }
            }
        }
        Ok(())
    }

    /// The consumer of `id` resumes from its `last_event_seq` at the hub its edge routes to.
    fn consumer_resume(&mut self, id: DeliveryId) -> Result<(), String> {
        let Some(owner) = self.edge_view().owner_of(id) else {
            return Ok(());
        };
        let at = self.idx(&owner.id);
        let view = self.view_of(at);
        let hub = &self.hubs[at];
        let route = placement::decide(
            &hub.id,
            view.owner_of(id),
            hub.held.contains_key(&id),
            hub.claimed,
        );
        match route {
            Route::Serve => {}
            Route::TakeOver => self.take_over(at, &[id])?,
            Route::Redirect(_) | Route::Joining => return Ok(()),
        }
        let hub = &self.hubs[at];
        let Some(&last_held) = hub.held.get(&id) else {
            return Ok(());
        };
        let c = self.consumers.entry(id).or_default();
        let last = c.seen.last().map_or(0, |(s, _)| *s);
        for ev in hub.store.events_after(id, last).map_err(err)? {
            if ev.event_seq > last_held {
                break;
            }
            let want = c.seen.last().map_or(0, |(s, _)| *s) + 1;
            if ev.event_seq != want {
                return Err(format!(
                    "consumer of {id} resuming at {} from seq {last} got seq {} (expected {want})",
                    hub.id, ev.event_seq
                ));
            }
            c.seen.push((ev.event_seq, key_of(&ev)));
        }
        Ok(())
    }

    fn crash(&mut self, h: usize) {
        let now = self.now_ms;
        let hub = &mut self.hubs[h];
        hub.up = false;
        hub.held.clear();
        hub.claimed = false;
        hub.in_doubt = takeover::InDoubt::default();
        hub.rebalancer = Rebalancer::new(hub.id.clone(), now, JOIN_GRACE_MS);
        self.truth.draining.remove(&hub.id);
    }

    fn restart(&mut self, h: usize) {
        let now = self.now_ms;
        let hub = &mut self.hubs[h];
        hub.up = true;
        hub.rebalancer = Rebalancer::new(hub.id.clone(), now, JOIN_GRACE_MS);
        hub.claimed = false;
    }

    fn up_hubs(&self) -> Vec<usize> {
        (0..self.hubs.len()).filter(|&i| self.hubs[i].up).collect()
    }

    fn pick(&mut self, from: &[usize]) -> Option<usize> {
        (!from.is_empty()).then(|| from[self.rng.below(from.len() as u64) as usize])
    }

    /// Whether a crash, cut, flap or drain is in force (the guarantees are for one at a time:
    /// `min_copies` 2 survives one failure, not two).
    fn faulty(&self) -> bool {
        self.hubs.iter().any(|h| !h.up)
            || !self.truth.cut.is_empty()
            || !self.truth.flapped.is_empty()
            || !self.truth.draining.is_empty()
    }

    /// One random step of the schedule.
    pub fn step(&mut self) -> Result<(), String> {
        self.now_ms += self.rng.below(1_500);
        let n = self.hubs.len();
        let up = self.up_hubs();
        let mut roll = self.rng.below(100);
        let fault =
            (70..=73).contains(&roll) || (80..=84).contains(&roll) || (90..=95).contains(&roll);
        if fault && self.faulty() && !self.faults.double_faults {
            // Another fault would make two: the step writes instead.
            roll = 0;
        }
        match roll {
            0..=34 => {
                let d = self.deliveries[self.rng.below(self.deliveries.len() as u64) as usize];
                self.log.push(format!("t={} write {d}", self.now_ms));
                self.client_write(d, false)?;
            }
            35..=54 => {
                if let Some(h) = self.pick(&up) {
                    self.log
                        .push(format!("t={} rebalance {}", self.now_ms, self.hubs[h].id));
                    self.rebalance(h)?;
                }
            }
            55..=64 => {
                let d = self.deliveries[self.rng.below(self.deliveries.len() as u64) as usize];
                self.log
                    .push(format!("t={} consumer of {d} resumes", self.now_ms));
                self.consumer_resume(d)?;
            }
            65..=69 => {
                if !self.late.is_empty() {
                    let i = self.rng.below(self.late.len() as u64) as usize;
                    let (from, to, req) = self.late.swap_remove(i);
                    let t = self.idx(&to);
                    if self.hubs[t].up {
                        self.log
                            .push(format!("t={} late frame {from} -> {to}", self.now_ms));
                        self.handle(t, req)?;
                    }
                }
            }
            70..=73 => {
                if up.len() > 1 {
                    if let Some(h) = self.pick(&up) {
                        self.log
                            .push(format!("t={} crash {}", self.now_ms, self.hubs[h].id));
                        self.crash(h);
                    }
                }
            }
            74..=79 => {
                let down: Vec<usize> = (0..n).filter(|&i| !self.hubs[i].up).collect();
                if let Some(h) = self.pick(&down) {
                    self.log
                        .push(format!("t={} restart {}", self.now_ms, self.hubs[h].id));
                    self.restart(h);
                }
            }
            80..=84 => {
                let a = self.rng.below(n as u64) as usize;
                let b = self.rng.below(n as u64) as usize;
                if a != b {
                    let (a, b) = (self.hubs[a].id.clone(), self.hubs[b].id.clone());
                    let both = self.rng.chance(40);
                    self.log.push(format!(
                        "t={} cut {a} -> {b}{}",
                        self.now_ms,
                        if both { " both ways" } else { "" }
                    ));
                    if both {
                        self.truth.cut.insert((b.clone(), a.clone()));
                    }
                    self.truth.cut.insert((a, b));
                }
            }
            85..=89 => {
                self.log.push(format!("t={} heal", self.now_ms));
                self.truth.cut.clear();
                self.truth.flapped.clear();
            }
            90..=93 => {
                let a = self.rng.below(n as u64) as usize;
                let b = self.rng.below(n as u64) as usize;
                if a != b {
                    let (a, b) = (self.hubs[a].id.clone(), self.hubs[b].id.clone());
                    self.log
                        .push(format!("t={} {a} declares {b} down (flap)", self.now_ms));
                    self.truth.flapped.insert((a, b));
                }
            }
            94..=95 => {
                if up.len() > 2 {
                    if let Some(h) = self.pick(&up) {
                        let id = self.hubs[h].id.clone();
                        self.log.push(format!("t={} drain {id}", self.now_ms));
                        self.truth.draining.insert(id);
                    }
                }
            }
            96..=97 => {
                // A drained hub is replaced: it leaves and joins again.
                if let Some(id) = self.truth.draining.iter().next().cloned() {
                    let h = self.idx(&id);
                    self.log
                        .push(format!("t={} {id} leaves and joins again", self.now_ms));
                    self.crash(h);
                    self.restart(h);
                }
            }
            _ => {
                self.now_ms += JOIN_GRACE_MS;
                self.log.push(format!("t={} time passes", self.now_ms));
            }
        }
        Ok(())
    }

    /// Heals everything, brings every hub back, lets the rebalancers settle (no frame is
    /// lost while quiet).
    pub fn quiesce(&mut self) -> Result<(), String> {
        self.log.push(format!(
            "t={} quiet: heal, restart all, settle",
            self.now_ms
        ));
        self.quiet = true;
        self.truth.cut.clear();
        self.truth.flapped.clear();
        // A drain cannot be undone: a draining hub stops once drained (`POST /drain`, SIGTERM)
        // and comes back as a new process, its memory gone.
        for id in std::mem::take(&mut self.truth.draining) {
            let h = self.idx(&id);
            self.log
                .push(format!("  {id} stops drained and starts again"));
            self.crash(h);
        }
        self.late.clear();
        for h in 0..self.hubs.len() {
            if !self.hubs[h].up {
                self.restart(h);
            }
        }
        self.now_ms += JOIN_GRACE_MS;
        for _ in 0..3 {
            for h in 0..self.hubs.len() {
                self.rebalance(h)?;
            }
        }
        for d in self.deliveries.clone() {
            self.consumer_resume(d)?;
        }
        Ok(())
    }

    /// The invariants, once quiet.
    pub fn check(&self) -> Result<(), String> {
        let view = self.edge_view();
        for &d in &self.deliveries {
            let owners = view.owners_of(d, 2);
            let Some(owner) = owners.first() else {
                return Err("no owner once quiet".into());
            };
            let o = &self.hubs[self.idx(&owner.id)];
            let log: Vec<(u64, String)> = o
                .store
                .events_after(d, 0)
                .map_err(err)?
                .iter()
                .map(|e| (e.event_seq, key_of(e)))
                .collect();
            // 1. No acknowledged event lost or changed.
            for a in self.acked.iter().filter(|a| a.delivery == d) {
                if !log.contains(&(a.seq, a.key.clone())) {
                    let there = log.iter().find(|(s, _)| *s == a.seq);
                    return Err(format!(
                        "acknowledged {d}#{} ({}) lost: owner {} holds {there:?}",
                        a.seq, a.key, o.id
                    ));
                }
            }
            // 2. No two different events under one (delivery, seq), on any hub.
            let mut by_seq: BTreeMap<u64, (String, String)> = BTreeMap::new();
            for h in &self.hubs {
                for e in h.store.events_after(d, 0).map_err(err)? {
                    let k = key_of(&e);
                    match by_seq.get(&e.event_seq) {
                        Some((k0, h0)) if *k0 != k => {
                            let epoch = |hub: &str| {
                                let s = &self.hubs[self.idx(hub)].store;
                                s.epochs_of(d, [e.event_seq])
                                    .map(|(_, per)| per[0])
                                    .unwrap_or(0)
                            };
                            return Err(format!(
                                "{d}#{} is {k0} at {h0} but {k} at {} (write epochs {} and {})",
                                e.event_seq,
                                h.id,
                                epoch(h0),
                                epoch(&h.id)
                            ));
                        }
                        Some(_) => {}
                        None => {
                            by_seq.insert(e.event_seq, (k, h.id.clone()));
                        }
                    }
                }
            }
            // 3. The consumer got the owner's log, in order, exactly once.
            if let Some(c) = self.consumers.get(&d) {
                if c.seen != log {
                    return Err(format!(
                        "consumer of {d} saw {:?}, owner {} holds {:?}",
                        c.seen, o.id, log
                    ));
                }
            }
            // 4. The successor's copy equals the owner's log.
            if let Some(succ) = owners.get(1) {
                let s = &self.hubs[self.idx(&succ.id)];
                let copy: Vec<(u64, String)> = s
                    .store
                    .events_after(d, 0)
                    .map_err(err)?
                    .iter()
                    .map(|e| (e.event_seq, key_of(e)))
                    .collect();
                if copy != log {
                    return Err(format!(
                        "successor {} of {d} holds {copy:?}, owner {} holds {log:?}",
                        s.id, o.id
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Runs schedule `seed` to the end and checks it; the error names the broken invariant.
pub fn run(seed: u64, faults: Faults) -> Result<(), (String, Vec<String>)> {
    let mut sim = match Sim::new(seed, faults) {
        Ok(s) => s,
        Err(e) => return Err((e, Vec::new())),
    };
    let result = (|| {
        for _ in 0..STEPS {
            sim.step()?;
        }
        sim.quiesce()?;
        sim.check()
    })();
    result.map_err(|e| (e, std::mem::take(&mut sim.log)))
}

/// Loads `id` from the hub's store into its live core.
fn load(hub: &mut SimHub, id: DeliveryId) -> Result<(), String> {
    if let Some(rec) = hub.store.load_delivery(id).map_err(err)? {
        let last = rec.events.last().map_or(0, |e| e.event_seq);
        hub.held.insert(id, last);
    }
    Ok(())
}

/// A request's kind and deliveries, for the schedule's log.
fn req_name(req: &Req) -> String {
    let brief = |es: &[ReplicaEntry]| {
        es.iter()
            .map(|e| {
                let seqs: Vec<String> = e
                    .events
                    .iter()
                    .map(|ev| format!("{}={}", ev.event_seq, key_of(ev)))
                    .collect();
                format!("{}[{}]", e.delivery_id, seqs.join(","))
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    match req {
        Req::Append(es) => format!("append {}", brief(es)),
        Req::Handoff(es) => format!("handoff {}", brief(es)),
        Req::Fetch(ids) => format!("fetch {ids:?}"),
    }
}

fn key_of(ev: &StatusEvent) -> String {
    ev.metadata
        .get("key")
        .and_then(|k| k.as_str())
        .unwrap_or_default()
        .to_owned()
}

#[cfg(test)]
mod tests;
