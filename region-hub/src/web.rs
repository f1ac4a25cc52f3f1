//! The hub's browser side: the consumer tracking page, the operator view, their static files
//! (compiled in, no build step), the city map as JSON and the operator's data endpoints.
//!
//! Routes: `GET /track/{id}` (the token stays in the query string, read by the page's script),
//! `GET /ops`, `GET /web/{file}`, `GET /api/v1/map`, `GET /api/v1/ops/deliveries` and
//! `GET /api/v1/ops/deliveries/{id}/history` (operator token, as `?token=` or bearer).

use crate::hub::Hub;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use parking_lot::Mutex;
use protocol::consumer::{Snapshot, StatusEvent};
use protocol::DeliveryId;
use roadnet::{RoadClass, RoadGraph};
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

/// The static files: name, content type, body.
const FILES: &[(&str, &str, &str)] = &[
    ("track.html", "text/html; charset=utf-8", include_str!("../web/track.html")),
    ("track.js", "text/javascript; charset=utf-8", include_str!("../web/track.js")),
    ("ops.html", "text/html; charset=utf-8", include_str!("../web/ops.html")),
    ("ops.js", "text/javascript; charset=utf-8", include_str!("../web/ops.js")),
    ("map.js", "text/javascript; charset=utf-8", include_str!("../web/map.js")),
    ("transport.js", "text/javascript; charset=utf-8", include_str!("../web/transport.js")),
    ("style.css", "text/css; charset=utf-8", include_str!("../web/style.css")),
];

/// Coordinates in the map JSON are rounded to this many decimals (~1 m).
const MAP_DECIMALS: i32 = 5;
/// Breadcrumbs kept per delivery for the operator's replay (10 minutes at one fix a second).
const BREADCRUMBS_PER_DELIVERY: usize = 600;
/// How often the breadcrumb sampler reads the live positions.
const BREADCRUMB_EVERY: Duration = Duration::from_secs(1);

/// Where the city map comes from.
#[derive(Clone, Debug)]
pub enum MapSource {
    /// The extract compiled into `roadnet` ([`roadnet::DEFAULT_CITY_PBF`]).
    DefaultCity,
    /// An OSM PBF file on disk.
    Pbf(PathBuf),
}

/// State of the browser routes.
#[derive(Clone)]
struct WebState {
    hub: Arc<Hub>,
    map_source: MapSource,
    /// The map JSON, built on first request (the road graph is loaded once).
    map: Arc<OnceCell<Result<Bytes, String>>>,
    breadcrumbs: Arc<Mutex<Breadcrumbs>>,
}

/// Recent positions of each delivery, sampled for the operator's replay.
#[derive(Debug, Default)]
pub(crate) struct Breadcrumbs {
    by_delivery: HashMap<DeliveryId, VecDeque<Crumb>>,
}

/// One sampled position: `[lat, lng, heading_deg, ts_ms]` on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
struct Crumb(f64, f64, f64, u64);

impl Breadcrumbs {
    /// Adds the positions of `snapshots` that are newer than the last crumb of their delivery,
    /// and forgets deliveries that are no longer held.
    fn record(&mut self, snapshots: &[Snapshot]) {
        self.by_delivery.retain(|id, _| snapshots.iter().any(|s| s.delivery_id == *id));
        for s in snapshots {
            let Some(p) = &s.position else { continue };
            let trail = self.by_delivery.entry(s.delivery_id).or_default();
            if trail.back().is_some_and(|c| c.3 >= p.ts_ms) {
                continue;
            }
            if trail.len() == BREADCRUMBS_PER_DELIVERY {
                trail.pop_front();
            }
            trail.push_back(Crumb(p.lat, p.lng, p.heading_deg, p.ts_ms));
        }
    }

    fn trail(&self, id: DeliveryId) -> Vec<Crumb> {
        self.by_delivery.get(&id).map(|t| t.iter().copied().collect()).unwrap_or_default()
    }
}

/// Handle of the breadcrumb sampler; the routes read what it records.
#[derive(Debug)]
pub(crate) struct BreadcrumbHandle {
    pub(crate) crumbs: Arc<Mutex<Breadcrumbs>>,
    pub(crate) task: tokio::task::JoinHandle<()>,
}

/// Samples every held delivery's position once a second until `shutdown`.
pub(crate) fn spawn_breadcrumbs(hub: Arc<Hub>, shutdown: CancellationToken) -> BreadcrumbHandle {
    let crumbs = Arc::new(Mutex::new(Breadcrumbs::default()));
    let c = crumbs.clone();
    let task = tokio::spawn(async move {
        let mut every = tokio::time::interval(BREADCRUMB_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => {
                    let snaps = snapshots(&hub, false);
                    c.lock().record(&snaps);
                }
                _ = shutdown.cancelled() => break,
            }
        }
    });
    BreadcrumbHandle { crumbs, task }
}

/// The browser routes, to be merged into the hub's router.
pub(crate) fn router(hub: Arc<Hub>, map_source: MapSource, breadcrumbs: Arc<Mutex<Breadcrumbs>>) -> Router {
    Router::new()
        .route("/track/{id}", get(track_page))
        .route("/ops", get(ops_page))
        .route("/web/{file}", get(static_file))
        .route("/api/v1/map", get(map))
        .route("/api/v1/ops/deliveries", get(ops_deliveries))
        .route("/api/v1/ops/deliveries/{id}/history", get(ops_history))
        .with_state(WebState { hub, map_source, map: Arc::new(OnceCell::new()), breadcrumbs })
}

fn file(name: &str) -> Response {
    match FILES.iter().find(|(n, _, _)| *n == name) {
        Some((_, content_type, body)) => (
            [(header::CONTENT_TYPE, *content_type), (header::CACHE_CONTROL, "no-cache")],
            *body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such file").into_response(),
    }
}

async fn track_page(Path(_id): Path<u64>) -> Response {
    file("track.html")
}

async fn ops_page() -> Response {
    file("ops.html")
}

async fn static_file(Path(name): Path<String>) -> Response {
    file(&name)
}

async fn map(State(web): State<WebState>) -> Response {
    let source = web.map_source.clone();
    let built = web
        .map
        .get_or_init(|| async move {
            tokio::task::spawn_blocking(move || build_map(&source))
                .await
                .unwrap_or_else(|e| Err(format!("map builder panicked: {e}")))
        })
        .await;
    match built {
        Ok(json) => (
            [
                (header::CONTENT_TYPE, HeaderValue::from_static("application/json")),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            ],
            json.clone(),
        )
            .into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("no map: {e}")).into_response(),
    }
}

fn build_map(source: &MapSource) -> Result<Bytes, String> {
    let graph = match source {
        MapSource::DefaultCity => RoadGraph::default_city(),
        MapSource::Pbf(path) => RoadGraph::from_pbf_path(path),
    }
    .map_err(|e| e.to_string())?;
    let json = serde_json::to_vec(&map_json(&graph)).map_err(|e| e.to_string())?;
    tracing::info!(bytes = json.len(), "built the map for browsers");
    Ok(Bytes::from(json))
}

/// The city map as browsers draw it.
#[derive(Debug, Serialize)]
pub struct MapJson {
    /// `[min_lng, min_lat, max_lng, max_lat]`.
    pub bbox: [f64; 4],
    pub attribution: &'static str,
    /// Road polylines by road class, each a list of `[lng, lat]` pairs.
    pub roads: Vec<RoadLayer>,
}

/// The polylines of one road class.
#[derive(Debug, Serialize)]
pub struct RoadLayer {
    pub class: &'static str,
    pub lines: Vec<Vec<[f64; 2]>>,
}

fn round(v: f64) -> f64 {
    let k = 10f64.powi(MAP_DECIMALS);
    (v * k).round() / k
}

/// Joins the graph's straight road pieces into polylines (one per chain of pieces meeting
/// two at a time), with coordinates rounded to ~1 m.
pub fn map_json(graph: &RoadGraph) -> MapJson {
    type Key = (i64, i64);
    let key = |p: roadnet::LatLng| -> Key {
        let k = 10f64.powi(MAP_DECIMALS);
        ((p.lng * k).round() as i64, (p.lat * k).round() as i64)
    };
    let mut by_class: HashMap<RoadClass, Vec<[Key; 2]>> = HashMap::new();
    for (class, [a, b]) in graph.edges_geometry() {
        let (ka, kb) = (key(a), key(b));
        if ka != kb {
            by_class.entry(class).or_default().push([ka, kb]);
        }
    }
    let mut roads = Vec::new();
    for class in RoadClass::ALL {
        let Some(pieces) = by_class.get(&class) else { continue };
        let mut at: HashMap<Key, Vec<usize>> = HashMap::new();
        for (i, [a, b]) in pieces.iter().enumerate() {
            at.entry(*a).or_default().push(i);
            at.entry(*b).or_default().push(i);
        }
        let mut used = vec![false; pieces.len()];
        // Follows pieces from `end` while it is a plain joint (exactly two pieces meet).
        let extend = |line: &mut Vec<Key>, used: &mut [bool]| loop {
            let Some(&end) = line.last() else { return };
            let Some(next) = at.get(&end).filter(|v| v.len() == 2).and_then(|v| v.iter().find(|&&i| !used[i])) else {
                return;
            };
            used[*next] = true;
            let [a, b] = pieces[*next];
            line.push(if a == end { b } else { a });
        };
        let mut lines = Vec::new();
        for i in 0..pieces.len() {
            if used[i] {
                continue;
            }
            used[i] = true;
            let mut line = pieces[i].to_vec();
            extend(&mut line, &mut used);
            line.reverse();
            extend(&mut line, &mut used);
            let k = 10f64.powi(MAP_DECIMALS);
            lines.push(line.into_iter().map(|(x, y)| [round(x as f64 / k), round(y as f64 / k)]).collect());
        }
        roads.push(RoadLayer { class: class.as_str(), lines });
    }
    let b = graph.bbox();
    MapJson {
        bbox: [round(b.min.lng), round(b.min.lat), round(b.max.lng), round(b.max.lat)],
        attribution: roadnet::ATTRIBUTION,
        roads,
    }
}

/// Operator token from `Authorization: Bearer ...`, else from `?token=`.
fn operator_token<'a>(headers: &'a HeaderMap, query: &'a HashMap<String, String>) -> Option<&'a str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .or_else(|| query.get("token").map(String::as_str))
}

/// Snapshots of the held deliveries (only the open ones unless `all`), by id.
fn snapshots(hub: &Hub, all: bool) -> Vec<Snapshot> {
    let now = nodekit::unix_ms();
    let st = hub.shared.state.lock();
    let mut v: Vec<Snapshot> = st
        .core
        .ids()
        .filter_map(|id| st.core.snapshot(id, now))
        .filter(|s| all || !s.status.is_terminal())
        .collect();
    drop(st);
    v.sort_by_key(|s| s.delivery_id);
    v
}

/// What the operator view polls.
#[derive(Debug, Serialize)]
struct OpsView {
    server_time_ms: u64,
    /// Counters the page turns into rates.
    fixes_received_total: u64,
    fixes_unmatched_total: u64,
    positions_pushed_total: u64,
    consumers_websocket: i64,
    consumers_webtransport: i64,
    deliveries: Vec<Snapshot>,
}

async fn ops_deliveries(
    State(web): State<WebState>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = web.hub.check_operator(operator_token(&headers, &query)) {
        return r.into_response();
    }
    let m = web.hub.metrics();
    let view = OpsView {
        server_time_ms: nodekit::unix_ms(),
        fixes_received_total: m.fixes_received.get(),
        fixes_unmatched_total: m.fixes_unmatched.get(),
        positions_pushed_total: m.pushed_total(crate::http::WEBSOCKET) + m.pushed_total(crate::wt::TRANSPORT),
        consumers_websocket: m.consumers(crate::http::WEBSOCKET),
        consumers_webtransport: m.consumers(crate::wt::TRANSPORT),
        deliveries: snapshots(&web.hub, query.get("all").is_some_and(|v| v == "1")),
    };
    Json(view).into_response()
}

/// One delivery's history for the operator's replay.
#[derive(Debug, Serialize)]
struct History {
    snapshot: Snapshot,
    /// Every durable status event.
    events: Vec<StatusEvent>,
    /// Sampled positions, oldest first: `[lat, lng, heading_deg, ts_ms]`.
    trail: Vec<Crumb>,
}

async fn ops_history(
    State(web): State<WebState>,
    Path(id): Path<u64>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = web.hub.check_operator(operator_token(&headers, &query)) {
        return r.into_response();
    }
    let id = DeliveryId(id);
    let Some(snapshot) = web.hub.snapshot(id) else {
        return crate::hub::ApiFailure::NotFound(format!("delivery {id} not found")).into_response();
    };
    let store = web.hub.store.clone();
    let events = match tokio::task::spawn_blocking(move || store.events_after(id, 0)).await {
        Ok(Ok(e)) => e,
        Ok(Err(e)) => return crate::hub::ApiFailure::Internal(e.to_string()).into_response(),
        Err(e) => return crate::hub::ApiFailure::Internal(e.to_string()).into_response(),
    };
    let trail = web.breadcrumbs.lock().trail(id);
    Json(History { snapshot, events, trail }).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::consumer::Position;
    use protocol::geo::LatLng;
    use protocol::status::DeliveryStatus;

    #[test]
    fn grid_streets_become_one_polyline_per_straight_run_between_junctions() {
        let g = RoadGraph::grid_city(3, 3, 100.0, roadnet::LatLng::new(60.17, 24.94)).expect("grid");
        let m = map_json(&g);
        assert_eq!(m.attribution, "(c) OpenStreetMap contributors");
        let lines: usize = m.roads.iter().map(|l| l.lines.len()).sum();
        let points: usize = m.roads.iter().flat_map(|l| &l.lines).map(Vec::len).sum();
        // 12 street pieces; the corners join two pieces, so fewer lines than pieces.
        assert!(lines < 12, "{lines} lines");
        assert_eq!(points - lines, 12, "every piece drawn exactly once");
        assert!(m.bbox[0] < m.bbox[2] && m.bbox[1] < m.bbox[3], "{:?}", m.bbox);
    }

    #[test]
    fn default_city_map_stays_small() {
        let g = RoadGraph::default_city().expect("default city");
        let json = serde_json::to_vec(&map_json(&g)).expect("json");
        assert!(json.len() < 500_000, "{} bytes", json.len());
        assert!(json.len() > 10_000, "{} bytes", json.len());
    }

    fn snap(id: u64, ts_ms: Option<u64>) -> Snapshot {
        Snapshot {
            delivery_id: DeliveryId(id),
            status: DeliveryStatus::EnRoute,
            last_event_seq: 1,
            pickup: LatLng::new(60.17, 24.94),
            dropoff: LatLng::new(60.171, 24.941),
            position: ts_ms.map(|ts_ms| Position {
                delivery_id: DeliveryId(id),
                seq: ts_ms,
                lat: 60.17,
                lng: 24.94,
                heading_deg: 0.0,
                speed_mps: 5.0,
                accuracy_m: 5.0,
                ts_ms,
            }),
            eta: None,
            position_age_s: None,
            server_time_ms: 0,
        }
    }

    #[test]
    fn breadcrumbs_keep_new_positions_once_and_forget_dropped_deliveries() {
        let mut b = Breadcrumbs::default();
        b.record(&[snap(1, Some(10)), snap(2, None)]);
        b.record(&[snap(1, Some(10)), snap(2, Some(5))]);
        b.record(&[snap(1, Some(20)), snap(2, Some(5))]);
        assert_eq!(b.trail(DeliveryId(1)).iter().map(|c| c.3).collect::<Vec<_>>(), vec![10, 20]);
        assert_eq!(b.trail(DeliveryId(2)).len(), 1);
        b.record(&[snap(2, Some(6))]);
        assert!(b.trail(DeliveryId(1)).is_empty());
        for ts in 0..(BREADCRUMBS_PER_DELIVERY as u64 + 10) {
            b.record(&[snap(2, Some(100 + ts))]);
        }
        assert_eq!(b.trail(DeliveryId(2)).len(), BREADCRUMBS_PER_DELIVERY);
    }
}
