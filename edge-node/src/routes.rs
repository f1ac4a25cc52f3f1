//! Placement of fixes: which hub each accepted fix goes to, and the set of hub uplinks that
//! follows the cluster view (one uplink per live hub).
//!
//! The placement key is the delivery: a fix of a driver on duty for deliveries `d1..dn` goes
//! to each distinct `owner(di, placeable hubs)`; a driver that declared none goes to
//! `owner(driver id)` (a fallback key, see `docs/cluster.md`). Ingest routes against a
//! [`Routes`] snapshot it refreshes from a watch channel when it changed, and keeps each
//! session's targets until the routes change, so the hot path computes no placement per fix.
//! The pure parts ([`placement_keys`], [`owners_for`],
//! [`reroute_targets`]) are plain functions tested without IO.

use crate::batcher::{Batcher, BatcherConfig};
use crate::config::{BatchConfig, ClusterLinkConfig, HubConfig};
use crate::metrics::EdgeMetrics;
use crate::pipeline::{BatchQueue, Flush, Ingest};
use crate::uplink::{spawn_uplink, UplinkParams};
use cluster::placement;
use prometheus_client::metrics::counter::Counter;
use protocol::{DeliveryId, DriverId};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

/// How often the hub set re-reads the view even without a change notification (retries a hub
/// whose link address did not resolve).
const RESYNC_EVERY: Duration = Duration::from_secs(5);

/// The keys a driver's fixes are placed by: its declared deliveries, or its own id as a
/// fallback key when it declared none.
pub fn placement_keys(driver: DriverId, deliveries: &[DeliveryId]) -> Vec<DeliveryId> {
    if deliveries.is_empty() {
        vec![DeliveryId(driver.0)]
    } else {
        deliveries.to_vec()
    }
}

/// Indices into `hubs` of the distinct owners of `keys`, in key order (empty without hubs).
pub fn owners_for<H: AsRef<str>>(keys: &[DeliveryId], hubs: &[H]) -> Vec<usize> {
    let mut out: Vec<usize> = Vec::with_capacity(keys.len());
    for k in keys {
        let Some(owner) = placement::owner(*k, hubs) else {
            return Vec::new();
        };
        // `owner` returns a reference into `hubs`: its index is the offset.
        let i = hubs
            .iter()
            .position(|h| std::ptr::eq(h, owner))
            .unwrap_or(0);
        if !out.contains(&i) {
            out.push(i);
        }
    }
    out
}

/// Where the fixes kept for `departed` must go now: for each key `departed` owned among
/// `old` hubs, its owner among `new` hubs (indices into `new`, distinct). Keys owned by a hub
/// that is still there were delivered to it already and are not repeated.
pub fn reroute_targets<H: AsRef<str>>(
    keys: &[DeliveryId],
    departed: &str,
    old: &[String],
    new: &[H],
) -> Vec<usize> {
    let moved: Vec<DeliveryId> = keys
        .iter()
        .copied()
        .filter(|k| placement::owner(*k, old).map(String::as_str) == Some(departed))
        .collect();
    owners_for(&moved, new)
}

/// One hub ingest can route to.
#[derive(Debug, Clone)]
pub struct HubRoute {
    /// Hub id (cluster node id; the link address without a cluster).
    pub id: String,
    /// Its batcher and uplink queue.
    pub queue: Arc<BatchQueue>,
    routed: Counter,
}

impl AsRef<str> for HubRoute {
    fn as_ref(&self) -> &str {
        &self.id
    }
}

impl HubRoute {
    /// A route to hub `id` through `queue`, counting routed fixes in `routed`.
    pub fn new(id: impl Into<String>, queue: Arc<BatchQueue>, routed: Counter) -> Self {
        Self {
            id: id.into(),
            queue,
            routed,
        }
    }

    /// Hands one fix to this hub's batcher.
    pub fn push(&self, fix: protocol::wire::RoutedFix, now_ms: u64) {
        self.routed.inc();
        self.queue.with(now_ms, |b| b.push(fix, now_ms));
    }
}

/// What ingest routes by: replaced as a whole when the hubs change, never mutated.
#[derive(Debug, Clone)]
pub struct Routes {
    /// Hubs that may own deliveries (live, not draining, link up or retrying), sorted by id.
    pub placeable: Vec<HubRoute>,
    /// The queue of every running uplink, placeable or draining (polled for flush deadlines).
    pub active: Vec<Arc<BatchQueue>>,
    /// Where fixes wait (newest per driver) while no hub is placeable.
    pub orphans: Arc<BatchQueue>,
}

impl Routes {
    /// Routes with no hub: everything waits in `orphans`.
    pub fn empty(orphans: Arc<BatchQueue>) -> Self {
        Self {
            placeable: Vec::new(),
            active: Vec::new(),
            orphans,
        }
    }

    /// Ids of the placeable hubs.
    pub fn placeable_ids(&self) -> Vec<String> {
        self.placeable.iter().map(|h| h.id.clone()).collect()
    }

    /// True when every uplink has written and had acknowledged everything it was given.
    pub fn is_flushed(&self) -> bool {
        self.active.iter().all(|q| q.is_idle())
    }
}

/// Where the hubs come from.
#[derive(Debug)]
pub enum HubSource {
    /// One configured hub (no cluster).
    Static(HubConfig),
    /// The live hubs of the region, as the cluster view reports them.
    Cluster {
        view: cluster::ClusterView,
        links: ClusterLinkConfig,
    },
}

/// What the hub set needs besides its source.
#[derive(Debug)]
pub struct HubSetParams {
    pub edge_id: String,
    /// Client endpoint with the mTLS hub-link config as its default, shared by all uplinks.
    pub endpoint: quinn::Endpoint,
    pub batch: BatchConfig,
    pub metrics: Arc<EdgeMetrics>,
    /// To hand the fixes kept for a departed hub back to ingest for re-routing.
    pub ingest: Ingest,
    /// The flusher's wake-up, given to every hub's batch queue.
    pub flush: Arc<Flush>,
}

struct Running {
    link_addr: String,
    route: HubRoute,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

/// A hub the view says should have an uplink.
struct Wanted {
    id: String,
    link_addr: String,
    draining: bool,
    config: Option<HubConfig>,
}

/// Keeps one uplink per live hub and publishes the [`Routes`] ingest uses; stops every
/// uplink and closes the endpoint on `shutdown`. The first routes are published before this
/// returns (with a static hub, fixes never wait for a hub set that has not looked yet).
pub async fn spawn_hub_set(
    source: HubSource,
    params: HubSetParams,
    routes_tx: watch::Sender<Arc<Routes>>,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    let span = tracing::info_span!("hub_set");
    let mut set = HubSet {
        params,
        running: HashMap::new(),
        routes_tx,
        shutdown: shutdown.clone(),
    };
    let (mut view, links) = match source {
        HubSource::Static(hub) => {
            let id = hub.addr.to_string();
            let wanted = Wanted {
                link_addr: id.clone(),
                id,
                draining: false,
                config: Some(hub),
            };
            set.apply(vec![wanted]).instrument(span.clone()).await;
            return tokio::spawn(
                async move {
                    shutdown.cancelled().await;
                    set.stop_all().await;
                }
                .instrument(span),
            );
        }
        HubSource::Cluster { view, links } => (view, links),
    };
    set.apply(wanted_from_view(&view, &links).await)
        .instrument(span.clone())
        .await;
    tokio::spawn(
        async move {
            let mut resync = tokio::time::interval(RESYNC_EVERY);
            resync.tick().await;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    alive = view.changed() => if !alive {
                        shutdown.cancelled().await;
                        break;
                    },
                    _ = resync.tick() => {}
                }
                let wanted = wanted_from_view(&view, &links).await;
                set.apply(wanted).await;
            }
            set.stop_all().await;
        }
        .instrument(span),
    )
}

/// Live hubs with a published link address, resolved to socket addresses.
async fn wanted_from_view(view: &cluster::ClusterView, links: &ClusterLinkConfig) -> Vec<Wanted> {
    let mut out = Vec::new();
    for hub in view.live_hubs() {
        if hub.link_addr.is_empty() {
            continue;
        }
        let config = match tokio::net::lookup_host(&hub.link_addr).await {
            Ok(mut addrs) => addrs.next().map(|addr| HubConfig {
                addr,
                server_name: links
                    .server_name
                    .clone()
                    .unwrap_or_else(|| host_of(&hub.link_addr)),
                connect_timeout_ms: links.connect_timeout_ms,
                backoff_min_ms: links.backoff_min_ms,
                backoff_max_ms: links.backoff_max_ms,
            }),
            Err(e) => {
                warn!(hub = %hub.id, link_addr = %hub.link_addr, error = %e, "hub link address does not resolve");
                None
            }
        };
        out.push(Wanted {
            id: hub.id,
            link_addr: hub.link_addr,
            draining: hub.draining,
            config,
        });
    }
    out
}

/// The host part of `host:port` (brackets of an IPv6 literal removed).
fn host_of(addr: &str) -> String {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned()
}

struct HubSet {
    params: HubSetParams,
    running: HashMap<String, Running>,
    routes_tx: watch::Sender<Arc<Routes>>,
    shutdown: CancellationToken,
}

impl HubSet {
    /// Starts uplinks for new hubs, publishes the new routes, then stops the uplinks of hubs
    /// that left and hands what they kept back to ingest.
    async fn apply(&mut self, wanted: Vec<Wanted>) {
        let old_routes = self.routes_tx.borrow().clone();
        let old_placeable = old_routes.placeable_ids();
        // Hubs gone, or whose link address changed.
        let gone: Vec<String> = self
            .running
            .iter()
            .filter(|(id, r)| {
                !wanted
                    .iter()
                    .any(|w| &w.id == *id && w.link_addr == r.link_addr)
            })
            .map(|(id, _)| id.clone())
            .collect();
        let mut stopping = Vec::new();
        for id in &gone {
            if let Some(r) = self.running.remove(id) {
                r.cancel.cancel();
                stopping.push((id.clone(), r));
            }
        }
        for w in &wanted {
            if self.running.contains_key(&w.id) {
                continue;
            }
            let Some(hub) = w.config.clone() else {
                continue;
            };
            let running = self.start(&w.id, &w.link_addr, hub);
            self.running.insert(w.id.clone(), running);
        }
        let mut placeable: Vec<HubRoute> = wanted
            .iter()
            .filter(|w| !w.draining)
            .filter_map(|w| self.running.get(&w.id).map(|r| r.route.clone()))
            .collect();
        placeable.sort_by(|a, b| a.id.cmp(&b.id));
        let mut active: Vec<Arc<BatchQueue>> = self
            .running
            .values()
            .map(|r| r.route.queue.clone())
            .collect();
        active.sort_by_key(|q| Arc::as_ptr(q) as usize);
        let routes = Routes {
            placeable,
            active,
            orphans: old_routes.orphans.clone(),
        };
        let changed = routes.placeable_ids() != old_placeable
            || routes.active.len() != old_routes.active.len()
            || routes
                .active
                .iter()
                .zip(old_routes.active.iter())
                .any(|(a, b)| !Arc::ptr_eq(a, b));
        let has_hubs = !routes.placeable.is_empty();
        let orphans = routes.orphans.clone();
        if changed {
            info!(hubs = ?routes.placeable_ids(), uplinks = routes.active.len(), "hub routes changed");
            self.routes_tx.send_replace(Arc::new(routes));
        }
        // Fixes that arrived while no hub was placeable go to their owners now.
        if has_hubs && !orphans.is_empty() {
            self.params.ingest.reroute(&orphans, None);
        }
        for (id, r) in stopping {
            let _ = r.task.await;
            self.params.metrics.uplinks_active().dec();
            info!(hub = %id, "hub left: re-routing what was kept for it");
            self.params
                .ingest
                .reroute(&r.route.queue, Some((&id, &old_placeable)));
        }
    }

    fn start(&self, id: &str, link_addr: &str, hub: HubConfig) -> Running {
        let (tx, rx) = mpsc::channel(self.params.batch.uplink_queue_batches);
        let queue = Arc::new(BatchQueue::new(
            Batcher::new(BatcherConfig::from(&self.params.batch)),
            tx,
            self.params.metrics.clone(),
            self.params.flush.clone(),
        ));
        let cancel = self.shutdown.child_token();
        let task = spawn_uplink(
            UplinkParams {
                edge_id: self.params.edge_id.clone(),
                hub_id: id.to_owned(),
                hub,
                endpoint: self.params.endpoint.clone(),
            },
            rx,
            queue.clone(),
            self.params.metrics.clone(),
            cancel.clone(),
        );
        self.params.metrics.uplinks_active().inc();
        Running {
            link_addr: link_addr.to_owned(),
            route: HubRoute::new(id, queue, self.params.metrics.routed(id)),
            cancel,
            task,
        }
    }

    async fn stop_all(&mut self) {
        for (_, r) in self.running.drain() {
            r.cancel.cancel();
            let _ = r.task.await;
            self.params.metrics.uplinks_active().dec();
        }
        self.params.endpoint.close(
            quinn::VarInt::from_u32(protocol::wire::CloseCode::ShuttingDown as u32),
            b"edge shutting down",
        );
        let _ =
            tokio::time::timeout(Duration::from_secs(1), self.params.endpoint.wait_idle()).await;
        info!("hub links stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hubs(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_driver_without_deliveries_is_placed_by_its_own_id() {
        assert_eq!(placement_keys(DriverId(7), &[]), vec![DeliveryId(7)]);
        assert_eq!(
            placement_keys(DriverId(7), &[DeliveryId(1), DeliveryId(2)]),
            vec![DeliveryId(1), DeliveryId(2)]
        );
    }

    #[test]
    fn each_distinct_owner_gets_the_fix_once() {
        let h = hubs(&["hub-a", "hub-b", "hub-c"]);
        let keys: Vec<DeliveryId> = (0..50).map(DeliveryId).collect();
        let targets = owners_for(&keys, &h);
        let mut expected: Vec<usize> = Vec::new();
        for k in &keys {
            let owner = placement::owner(*k, &h).expect("owner");
            let i = h.iter().position(|x| x == owner).expect("in list");
            if !expected.contains(&i) {
                expected.push(i);
            }
        }
        assert_eq!(targets, expected);
        assert_eq!(targets.len(), 3, "50 deliveries cover all three hubs");
        let none: Vec<String> = Vec::new();
        assert!(owners_for(&keys, &none).is_empty());
    }

    #[test]
    fn only_the_departed_hubs_deliveries_are_rerouted_to_their_new_owner() {
        let old = hubs(&["hub-a", "hub-b", "hub-c"]);
        let new = hubs(&["hub-a", "hub-c"]);
        let keys: Vec<DeliveryId> = (0..40).map(DeliveryId).collect();
        let of_b: Vec<DeliveryId> = keys
            .iter()
            .copied()
            .filter(|k| placement::owner(*k, &old).map(String::as_str) == Some("hub-b"))
            .collect();
        assert!(!of_b.is_empty());
        // A driver on duty only for deliveries hub-b did not own moves nowhere.
        let others: Vec<DeliveryId> = keys.iter().copied().filter(|k| !of_b.contains(k)).collect();
        assert!(reroute_targets(&others, "hub-b", &old, &new).is_empty());
        // One hub-b delivery goes to its new owner (its second choice before).
        let d = of_b[0];
        let target = reroute_targets(&[d], "hub-b", &old, &new);
        let second = placement::owners(d, &old, 2)[1];
        assert_eq!(target.len(), 1);
        assert_eq!(&new[target[0]], second);
    }

    #[test]
    fn host_of_strips_port_and_brackets() {
        assert_eq!(host_of("127.0.0.1:7443"), "127.0.0.1");
        assert_eq!(host_of("hub-1.example:7443"), "hub-1.example");
        assert_eq!(host_of("[::1]:7443"), "::1");
    }
}
