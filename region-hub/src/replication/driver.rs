//! The async drivers of the cluster decisions: answering a peer's frames, the rebalancer's
//! passes, takeovers. They only move bytes, read the clock and touch the store; what to do is
//! decided by [`super::fencing`], [`super::rebalance`], [`super::placement`] and
//! [`super::takeover`].

use super::crumbs::{copy_breadcrumbs, fetch_history, handoff_breadcrumbs, store_breadcrumbs};
use super::fencing::{self, LiveCore};
use super::host::Host;
use super::node::HubCluster;
use super::placement::{consumer_redirect_url, Route};
use super::rebalance::Rebalancer;
use super::takeover;
use super::wire::{ReplicaFrame, MAX_FETCH_IDS};
use crate::durable::copies::ReplicaEntry;
use crate::durable::store::{Store, StoreError};
use cluster::HubInfo;
use protocol::DeliveryId;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Answers one request frame from a peer hub.
pub(crate) async fn answer(hub: &Arc<dyn Host>, frame: ReplicaFrame) -> ReplicaFrame {
    let refused = |reason: String| ReplicaFrame::Refused { reason };
    let (from, entries, live) = match frame {
        ReplicaFrame::Append { from, entries } => (from, entries, true),
        ReplicaFrame::Handoff { from, entries } => (from, entries, false),
        ReplicaFrame::Breadcrumbs { from, crumbs } => {
            return store_breadcrumbs(hub, &from, crumbs).await;
        }
        ReplicaFrame::FetchBreadcrumbs { from, ids } => {
            if ids.len() > MAX_FETCH_IDS {
                return refused(format!(
                    "{} deliveries asked for; at most {MAX_FETCH_IDS}",
                    ids.len()
                ));
            }
            let mut crumbs = Vec::new();
            for id in ids {
                crumbs.extend(handoff_breadcrumbs(hub, id).await);
            }
            debug!(%from, breadcrumbs = crumbs.len(), "sent breadcrumbs for a takeover");
            let me = hub.cluster().map_or_else(String::new, |c| c.me.clone());
            return ReplicaFrame::Breadcrumbs { from: me, crumbs };
        }
        ReplicaFrame::Fetch { from, ids } => {
            let mut out = Vec::new();
            for id in ids {
                if let Some(e) = full_log(hub, id).await {
                    out.push(e);
                }
            }
            debug!(%from, deliveries = out.len(), "sent copies for a takeover");
            return match serde_json::to_vec(&out) {
                Ok(entries) => ReplicaFrame::Entries { entries },
                Err(e) => refused(e.to_string()),
            };
        }
        _ => return refused("expected a request frame".into()),
    };
    let entries: Vec<ReplicaEntry> = match serde_json::from_slice(&entries) {
        Ok(e) => e,
        Err(e) => return refused(format!("entries: {e}")),
    };
    let (kept, fenced) = match hub.cluster() {
        Some(c) => fencing::fence(&c.me, c.view(), live, entries, |id| hub.held(id).is_some()),
        None => (entries, Vec::new()),
    };
    let stored = {
        let kept = kept.clone();
        on_store(hub, move |store| store.apply_replica_checked(&kept, live)).await
    };
    let applied = match stored {
        Ok(a) => a,
        Err(e) => return refused(e),
    };
    let conflicts = &applied.conflicts;
    if !conflicts.is_empty() {
        warn!(%from, deliveries = ?conflicts, live, "copy holds other events under seqs we hold");
        if let Some(c) = hub.cluster() {
            c.metrics.conflicts.inc_by(conflicts.len() as u64);
        }
    }
    if !applied.superseded.is_empty() {
        info!(%from, deliveries = ?applied.superseded, "copy written under a later epoch replaced stray events");
    }
    let (entries, fenced) = fencing::with_conflicts(kept, fenced, conflicts, live);
    let n = entries.len() as u64;
    debug!(%from, entries = n, "stored replica entries");
    if let Some(cluster) = hub.cluster() {
        cluster.metrics.received.inc_by(n);
        let live_core = |e: &ReplicaEntry| {
            let held = hub.held(e.delivery_id);
            let doubt = cluster.in_doubt.lock().holds(e.delivery_id);
            let superseded = applied.superseded.contains(&e.delivery_id);
            fencing::after_store(
                &cluster.me,
                cluster.view(),
                e,
                held,
                doubt,
                superseded,
                live,
            )
        };
        for e in entries.iter().filter(|e| live_core(e) == LiveCore::Unload) {
            debug!(delivery_id = %e.delivery_id, %from, "another hub writes a delivery held here; unloaded");
            hub.unload(e.delivery_id);
        }
        // Plain replication (the common case) never waits for a takeover in progress.
        if entries.iter().any(|e| live_core(e) == LiveCore::Load) {
            let _one = cluster.takeover_lock.lock().await;
            for e in entries.iter().filter(|e| live_core(e) == LiveCore::Load) {
                // A log with a hole is left to the rebalancer's takeover (it fetches first).
                let id = e.delivery_id;
                match on_store(hub, move |store| takeover::has_hole(store, id)).await {
                    Ok(false) => {}
                    _ => {
                        debug!(delivery_id = %id, "copy leaves a hole in the log; not loaded");
                        continue;
                    }
                }
                // Written here from now on: under a new epoch, above the sender's.
                if !begin_epoch(hub, e.delivery_id).await {
                    continue;
                }
                if load_into_core(hub, e.delivery_id).await {
                    debug!(delivery_id = %e.delivery_id, "loaded a delivery handed to us");
                }
            }
        }
    }
    if fenced.is_empty() {
        ReplicaFrame::Ack
    } else {
        debug!(%from, deliveries = ?fenced, "fenced entries from another hub");
        ReplicaFrame::Fenced { ids: fenced }
    }
}

/// Runs `f` on the hub's store on a blocking thread (redb commits wait for the disk). A store
/// error and a task that did not finish come back as one error, to report.
async fn on_store<T: Send + 'static>(
    hub: &Arc<dyn Host>,
    f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, String> {
    let store = hub.store().clone();
    match tokio::task::spawn_blocking(move || f(&store)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// Starts a new write epoch of `id` ([`takeover::begin`]) before it is loaded to be written
/// here; false (and not to be loaded) when the log could not be written.
async fn begin_epoch(hub: &Arc<dyn Host>, id: DeliveryId) -> bool {
    match on_store(hub, move |store| takeover::begin(store, id)).await {
        Ok(epoch) => {
            debug!(delivery_id = %id, epoch, "new write epoch");
            true
        }
        Err(e) => {
            warn!(delivery_id = %id, error = %e, "write epoch not stored; delivery not loaded");
            false
        }
    }
}

/// Reads `id` from the local log into the live core (replacing what it held).
async fn load_into_core(hub: &Arc<dyn Host>, id: DeliveryId) -> bool {
    match on_store(hub, move |store| store.load_delivery(id)).await {
        Ok(Some(rec)) => {
            hub.restore(rec);
            true
        }
        Ok(None) => false,
        Err(e) => {
            warn!(delivery_id = %id, error = %e, "delivery not loaded");
            false
        }
    }
}

/// Loads `id` from the local log into the live core unless the core already holds it at
/// least as far (a takeover of a delivery held while another hub wrote to it).
async fn load_if_newer(hub: &Arc<dyn Host>, id: DeliveryId) -> bool {
    match on_store(hub, move |store| store.load_delivery(id)).await {
        Ok(Some(rec)) => {
            let last = rec.events.last().map_or(0, |e| e.event_seq);
            if hub.held(id).is_some_and(|held| held >= last) {
                return false;
            }
            hub.restore(rec);
            true
        }
        Ok(None) => false,
        Err(e) => {
            warn!(delivery_id = %id, error = %e, "delivery not loaded");
            false
        }
    }
}

/// A delivery's whole durable state, as a hand-off entry ([`takeover::full_log`]).
async fn full_log(hub: &Arc<dyn Host>, id: DeliveryId) -> Option<ReplicaEntry> {
    match on_store(hub, move |store| takeover::full_log(store, id)).await {
        Ok(e) => e,
        Err(e) => {
            warn!(delivery_id = %id, error = %e, "delivery log not read");
            None
        }
    }
}

/// Keeps ownership in step with the cluster. Every `rebalance_interval` it publishes the load;
/// on every view change (and while some hand-off is still to be retried) it runs a
/// [`Rebalancer`] pass over the deliveries of the local log and carries it out:
///
/// - newly ours (a hub left, or we joined): fetch the newest copy from every live peer,
///   merge it into the log, load the delivery into the live core (takeover);
/// - ours with a new successor: send it the whole log;
/// - held live but owned by another hub now (it joined, or we drain): send it the whole log,
///   then redirect our consumers of it there.
///
/// `/readyz` (`ready`) turns 200 after the first pass past `join_grace_ms`: the hub has claimed
/// the deliveries it owns, so a rolling restart that waits for it moves on only then.
pub(crate) async fn run_rebalancer(
    hub: Arc<dyn Host>,
    cluster: Arc<HubCluster>,
    shutdown: CancellationToken,
    ready: Arc<std::sync::atomic::AtomicBool>,
) {
    let start = tokio::time::Instant::now();
    let now_ms = || start.elapsed().as_millis() as u64;
    let mut rebalancer =
        Rebalancer::new(cluster.me.clone(), 0, cluster.join_grace.as_millis() as u64);
    let mut view = cluster.node.view.clone();
    let mut every = tokio::time::interval(cluster.rebalance_interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut dirty = true;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            alive = view.changed() => {
                if !alive { break }
                dirty = true;
            }
            _ = every.tick() => {}
        }
        let load = hub.deliveries_held() as u64;
        cluster.node.control.set_load(load).await;
        let copies = std::mem::take(&mut *cluster.live_copies.lock());
        for (id, to) in &copies {
            rebalancer.handle_live_copy(*id, to);
        }
        let fenced: Vec<DeliveryId> = hub.take_fenced();
        if !fenced.is_empty() {
            rebalancer.handle_fenced(&fenced);
            dirty = true;
        }
        if !dirty {
            continue;
        }
        let ids = match on_store(&hub, |store| store.delivery_ids()).await {
            Ok(ids) => ids,
            Err(e) => {
                warn!(error = %e, "delivery ids not read");
                continue;
            }
        };
        let pass = rebalancer.plan(now_ms(), cluster.view(), &ids, |id| hub.held(id).is_some());
        dirty = !pass.settled;
        if !pass.takeovers.is_empty() {
            let _one = cluster.takeover_lock.lock().await;
            let waiting = take_over(&hub, &cluster, &pass.takeovers, false).await;
            if !waiting.is_empty() {
                // Planned again at the next pass.
                rebalancer.handle_postponed(&waiting);
                dirty = true;
            }
        }
        let mut outstanding = 0usize;
        for send in &pass.sends {
            outstanding += usize::from(send.moving);
            let Some(entry) = full_log(&hub, send.id).await else {
                continue;
            };
            match cluster.send(&send.to, std::slice::from_ref(&entry)).await {
                Ok(()) => {
                    cluster.metrics.handoffs.inc();
                    rebalancer.handle_sent(send);
                    // The history goes along, best effort (the log is what must arrive).
                    let crumbs = handoff_breadcrumbs(&hub, send.id).await;
                    if !crumbs.is_empty() {
                        copy_breadcrumbs(&cluster, hub.metrics(), &send.to, &crumbs).await;
                    }
                    if send.moving {
                        outstanding -= 1;
                        let (id, owner) = (send.id, &send.to);
                        info!(delivery_id = %id, to = %owner.id, "handed a delivery to its new owner");
                        hub.redirect_consumers(id, &|transport| {
                            consumer_redirect_url(
                                owner,
                                id,
                                transport == crate::tracking::fanout::WEBTRANSPORT,
                            )
                        });
                    }
                }
                Err(e) => {
                    dirty = true;
                    debug!(delivery_id = %send.id, to = %send.to.id, error = %e, "hand-off failed; retrying");
                }
            }
        }
        if !sync_copies(&hub, &cluster, &mut rebalancer, &pass.syncs).await {
            dirty = true;
        }
        cluster
            .handoff
            .send_replace((pass.draining_seen, outstanding));
        if pass.announce {
            cluster
                .claimed
                .store(true, std::sync::atomic::Ordering::Release);
            if !hub.draining() {
                ready.store(true, std::sync::atomic::Ordering::Relaxed);
                info!(
                    owned = rebalancer.owned(),
                    "claimed the deliveries this hub owns; ready"
                );
            }
        }
    }
    cluster.close();
}

/// Brings copies of deliveries other hubs own in step with their owner ([`Rebalancer`]'s
/// `syncs`): fetches the owner's log ([`MAX_FETCH_IDS`] at a time) and merges it, so a stray
/// held here (an event whose copy went unanswered, written again by a later owner that did
/// not hear from this hub) is replaced; what this hub holds past the owner's log is sent to
/// the owner, which merges it (as a takeover that heard from this hub would have). Returns
/// false when some owner did not answer (retried at the next pass).
async fn sync_copies(
    hub: &Arc<dyn Host>,
    cluster: &Arc<HubCluster>,
    rebalancer: &mut Rebalancer,
    syncs: &[super::rebalance::Transfer],
) -> bool {
    let mut by_owner: std::collections::BTreeMap<&str, Vec<&super::rebalance::Transfer>> =
        std::collections::BTreeMap::new();
    for s in syncs {
        by_owner.entry(s.to.id.as_str()).or_default().push(s);
    }
    let mut all = true;
    for batch in by_owner.values().flat_map(|v| v.chunks(MAX_FETCH_IDS)) {
        let owner = &batch[0].to;
        let ids: Vec<DeliveryId> = batch.iter().map(|s| s.id).collect();
        let copies = match cluster.fetch(owner, &ids).await {
            Ok(c) => c,
            Err(e) => {
                debug!(owner = %owner.id, error = %e, "copies not synced with their owner; retrying");
                all = false;
                continue;
            }
        };
        let merged = on_store(hub, move |store| {
            let applied = takeover::merge(store, &copies)?;
            Ok((applied, takeover::ahead_of(store, &copies)?))
        })
        .await;
        match merged {
            Ok((applied, ahead)) => {
                if !applied.superseded.is_empty() {
                    info!(owner = %owner.id, deliveries = ?applied.superseded, "synced with the owner: stray events replaced");
                }
                // Those we hold more of than the owner are synced again at the next pass, and
                // the owner gets our log of them (it merges what it lacks).
                for s in batch.iter().filter(|s| !ahead.contains(&s.id)) {
                    rebalancer.handle_synced(s);
                }
                let mut logs = Vec::new();
                for id in ahead {
                    logs.extend(full_log(hub, id).await);
                }
                if !logs.is_empty() {
                    if let Err(e) = cluster.send(owner, &logs).await {
                        debug!(owner = %owner.id, error = %e, "log past the owner's not sent; retrying");
                    }
                }
            }
            Err(e) => {
                warn!(owner = %owner.id, error = %e, "owner's copies not stored");
                all = false;
            }
        }
    }
    all
}

/// Becomes the serving hub of `ids`: merges the newest copy every live peer (and every hub
/// in doubt, [`takeover::InDoubt`]) holds into the local log (a peer may have written events
/// while we were away), then loads each into the live core. Returns the ids postponed: a hub
/// in doubt about them did not answer.
async fn take_over(
    hub: &Arc<dyn Host>,
    cluster: &Arc<HubCluster>,
    ids: &[DeliveryId],
    await_history: bool,
) -> Vec<DeliveryId> {
    let mut peers: Vec<HubInfo> = cluster
        .view()
        .live_hubs()
        .into_iter()
        .filter(|h| h.id != cluster.me)
        .collect();
    for h in cluster.in_doubt.lock().peers(ids) {
        if h.id != cluster.me && !peers.iter().any(|p| p.id == h.id) {
            peers.push(h);
        }
    }
    let fetches = peers
        .iter()
        .map(|p| async move { (p, cluster.fetch(p, ids).await) });
    let mut answered = Vec::new();
    let mut copies: Vec<(HubInfo, Vec<ReplicaEntry>)> = Vec::new();
    for (peer, fetched) in futures::future::join_all(fetches).await {
        if fetched.is_ok() {
            answered.push(peer.id.clone());
        }
        match fetched {
            Ok(entries) if !entries.is_empty() => {
                copies.push((peer.clone(), entries.clone()));
                let n = entries.len();
                match on_store(hub, move |store| takeover::merge(store, &entries)).await {
                    Ok(applied) => {
                        let conflicts = applied.conflicts;
                        if !conflicts.is_empty() {
                            warn!(peer = %peer.id, deliveries = ?conflicts, "peer copy holds other events under seqs we hold; kept ours");
                            cluster.metrics.conflicts.inc_by(conflicts.len() as u64);
                        }
                        if !applied.superseded.is_empty() {
                            info!(peer = %peer.id, deliveries = ?applied.superseded, "peer copy written under a later epoch replaced stray events");
                        }
                        debug!(peer = %peer.id, deliveries = n, "merged peer copies");
                    }
                    Err(e) => warn!(peer = %peer.id, error = %e, "peer copies not stored"),
                }
            }
            Ok(_) => {}
            Err(e) => warn!(peer = %peer.id, error = %e, "could not fetch copies for a takeover"),
        }
    }
    let asked: Vec<String> = peers.iter().map(|p| p.id.clone()).collect();
    let mut waiting = cluster
        .in_doubt
        .lock()
        .handle_fetched(ids, &asked, &answered);
    if !waiting.is_empty() {
        warn!(
            deliveries = waiting.len(),
            "takeover postponed: a hub that may hold newer events did not answer"
        );
    }
    let mut unwritable = Vec::new();
    for id in ids.iter().filter(|id| !waiting.contains(id)) {
        if !begin_epoch(hub, *id).await {
            unwritable.push(*id); // retried at the next pass
            continue;
        }
        if load_if_newer(hub, *id).await {
            info!(delivery_id = %id, "took over a delivery");
            cluster.metrics.takeovers.inc();
        }
    }
    // A peer whose copy kept strays (or other events under our seqs) gets the merged log.
    for (peer, mut copy) in copies {
        copy.retain(|e| !waiting.contains(&e.delivery_id) && !unwritable.contains(&e.delivery_id));
        let stale = match on_store(hub, move |store| takeover::stale_copies(store, &copy)).await {
            Ok(stale) => stale,
            Err(e) => {
                warn!(peer = %peer.id, error = %e, "peer copies not compared");
                continue;
            }
        };
        let mut logs = Vec::new();
        for id in stale {
            logs.extend(full_log(hub, id).await);
        }
        if logs.is_empty() {
            continue;
        }
        match cluster.send(&peer, &logs).await {
            Ok(()) => {
                info!(peer = %peer.id, deliveries = logs.len(), "sent the merged log to a peer holding strays")
            }
            Err(e) => {
                warn!(peer = %peer.id, error = %e, "merged log not sent to a peer holding strays")
            }
        }
    }
    // The history comes after: in the background for the rebalancer's bulk takeovers (serving
    // the deliveries does not wait for it), before answering for a request's single one.
    let fetch = fetch_history(hub.clone(), cluster.clone(), peers, ids.to_vec());
    if await_history {
        fetch.await;
    } else {
        tokio::spawn(fetch);
    }
    waiting.extend(unwritable);
    waiting
}

/// Where a request about `id` is answered ([`super::placement::decide`]); a delivery this
/// hub owns but does not hold yet (ownership just moved here) is taken over on the spot, so
/// the request does not fail between the view changing and the rebalancer's pass.
pub(crate) async fn route(hub: &Arc<dyn Host>, id: DeliveryId) -> Route {
    let Some(cluster) = hub.cluster() else {
        return Route::Serve;
    };
    let held = hub.held(id).is_some();
    let route =
        super::placement::decide(&cluster.me, cluster.owner_of(id), held, cluster.claimed());
    if route != Route::TakeOver {
        return route;
    }
    let _one = cluster.takeover_lock.lock().await;
    if hub.held(id).is_none() {
        // A request is waiting (a tracking page, a history read): it gets the history too.
        if !take_over(hub, cluster, &[id], true).await.is_empty() {
            // A hub that may hold newer events did not answer: retry later.
            return Route::Joining;
        }
    }
    Route::Serve
}
