//! The hub's browser side: the consumer tracking page, the operator view, their static files
//! (compiled in, no build step), the city map as JSON and the operator's data endpoints.
//!
//! Routes: `GET /track/{id}` (the token stays in the query string, read by the page's script),
//! `GET /ops`, `GET /web/{file}`, `GET /api/v1/map`, `GET /api/v1/ops/deliveries` and
//! `GET /api/v1/ops/deliveries/{id}/history` (operator token, as `?token=` or bearer). The
//! operator's replay reads the breadcrumbs and status events the hub stores in redb.

use crate::hub::{ApiFailure, Hub};
use crate::serve::http::AppState;
use crate::serve::respond::{error, token, ApiPath, ApiQuery};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use protocol::api::ApiError;
use protocol::consumer::{Snapshot, StatusEvent};
use protocol::DeliveryId;
use roadnet::{RoadClass, RoadGraph};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::OnceCell;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The static files: name, content type, body.
const FILES: &[(&str, &str, &str)] = &[
    (
        "track.html",
        "text/html; charset=utf-8",
        include_str!("../../web/track.html"),
    ),
    (
        "track.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/track.js"),
    ),
    (
        "ops.html",
        "text/html; charset=utf-8",
        include_str!("../../web/ops.html"),
    ),
    (
        "ops.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/ops.js"),
    ),
    (
        "map.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/map.js"),
    ),
    (
        "transport.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/transport.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../../web/style.css"),
    ),
];

/// Coordinates in the map JSON are rounded to this many decimals (~1 m).
const MAP_DECIMALS: i32 = 5;
/// Most breadcrumbs sent for one replay (the newest are dropped beyond it).
const REPLAY_CRUMBS_MAX: usize = 20_000;

/// State of the browser routes.
#[derive(Clone)]
pub(crate) struct WebState {
    hub: Arc<Hub>,
    /// The graph the hub routes on; the map is drawn from it.
    graph: Arc<RoadGraph>,
    /// The map JSON, built on first request.
    map: Arc<OnceCell<Result<Bytes, String>>>,
}

impl WebState {
    pub(crate) fn new(hub: Arc<Hub>, graph: Arc<RoadGraph>) -> Self {
        Self {
            hub,
            graph,
            map: Arc::new(OnceCell::new()),
        }
    }
}

/// The browser routes with their descriptions, merged into the hub's (see `http::routes`).
pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(track_page))
        .routes(routes!(ops_page))
        .routes(routes!(static_file))
        .routes(routes!(map))
        .routes(routes!(ops_deliveries))
        .routes(routes!(ops_history))
}

fn file(name: &str) -> Response {
    match FILES.iter().find(|(n, _, _)| *n == name) {
        Some((_, content_type, body)) => (
            [
                (header::CONTENT_TYPE, *content_type),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            *body,
        )
            .into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no file {name}"),
        ),
    }
}

#[utoipa::path(
    get,
    path = "/track/{id}",
    tag = "pages",
    params(
        ("id" = u64, Path, description = "delivery id"),
        ("token" = Option<String>, Query, description = "the tracking token, read by the page's script"),
    ),
    responses(
        (status = 200, description = "the consumer's tracking page", content_type = "text/html", body = String),
        (status = 400, description = "a bad id in the path", body = ApiError),
    ),
)]
async fn track_page(ApiPath(_id): ApiPath<u64>) -> Response {
    file("track.html")
}

#[utoipa::path(
    get,
    path = "/ops",
    tag = "pages",
    responses((status = 200, description = "the operator view", content_type = "text/html", body = String)),
)]
async fn ops_page() -> Response {
    file("ops.html")
}

#[utoipa::path(
    get,
    path = "/web/{file}",
    tag = "pages",
    params(("file" = String, Path, description = "`track.js`, `ops.js`, `map.js`, `transport.js`, `style.css`, ...")),
    responses(
        (status = 200, description = "a static file of the pages", content(
            (String = "text/html"), (String = "text/javascript"), (String = "text/css"),
        )),
        (status = 404, description = "no such file", body = ApiError),
    ),
)]
async fn static_file(ApiPath(name): ApiPath<String>) -> Response {
    file(&name)
}

#[utoipa::path(
    get,
    path = "/api/v1/map",
    tag = "pages",
    responses(
        (status = 200, description = "the city's roads as the pages draw them", body = MapJson),
        (status = 503, description = "the map could not be built", body = ApiError),
    ),
)]
async fn map(State(web): State<WebState>) -> Response {
    let graph = web.graph.clone();
    let built = web
        .map
        .get_or_init(|| async move {
            tokio::task::spawn_blocking(move || build_map(&graph))
                .await
                .unwrap_or_else(|e| Err(format!("map builder panicked: {e}")))
        })
        .await;
    match built {
        Ok(json) => (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                ),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            ],
            json.clone(),
        )
            .into_response(),
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("no map: {e}"),
        ),
    }
}

fn build_map(graph: &RoadGraph) -> Result<Bytes, String> {
    let json = serde_json::to_vec(&map_json(graph)).map_err(|e| e.to_string())?;
    tracing::info!(bytes = json.len(), "built the map for browsers");
    Ok(Bytes::from(json))
}

/// The city map as browsers draw it.
#[derive(Debug, Serialize, ToSchema)]
pub struct MapJson {
    /// `[min_lng, min_lat, max_lng, max_lat]`.
    pub bbox: [f64; 4],
    pub attribution: &'static str,
    /// Road polylines by road class, each a list of `[lng, lat]` pairs.
    pub roads: Vec<RoadLayer>,
}

/// The polylines of one road class.
#[derive(Debug, Serialize, ToSchema)]
pub struct RoadLayer {
    pub class: &'static str,
    #[schema(value_type = Vec<Vec<Vec<f64>>>)]
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
        let Some(pieces) = by_class.get(&class) else {
            continue;
        };
        let mut at: HashMap<Key, Vec<usize>> = HashMap::new();
        for (i, [a, b]) in pieces.iter().enumerate() {
            at.entry(*a).or_default().push(i);
            at.entry(*b).or_default().push(i);
        }
        let mut used = vec![false; pieces.len()];
        // Follows pieces from `end` while it is a plain joint (exactly two pieces meet).
        let extend = |line: &mut Vec<Key>, used: &mut [bool]| loop {
            let Some(&end) = line.last() else { return };
            let Some(next) = at
                .get(&end)
                .filter(|v| v.len() == 2)
                .and_then(|v| v.iter().find(|&&i| !used[i]))
            else {
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
            lines.push(
                line.into_iter()
                    .map(|(x, y)| [round(x as f64 / k), round(y as f64 / k)])
                    .collect(),
            );
        }
        roads.push(RoadLayer {
            class: class.as_str(),
            lines,
        });
    }
    let b = graph.bbox();
    MapJson {
        bbox: [
            round(b.min.lng),
            round(b.min.lat),
            round(b.max.lng),
            round(b.max.lat),
        ],
        attribution: roadnet::ATTRIBUTION,
        roads,
    }
}

/// What the operator view polls.
#[derive(Debug, Serialize, ToSchema)]
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

#[utoipa::path(
    get,
    path = "/api/v1/ops/deliveries",
    tag = "operator",
    params(
        ("all" = Option<String>, Query, description = "`1`: finished deliveries too"),
        ("token" = Option<String>, Query, description = "the token, when not sent as a bearer header"),
    ),
    security(("operator_token" = []), ("token_query" = [])),
    responses(
        (status = 200, description = "rates and every active delivery", body = OpsView),
        (status = 401, description = "no token", body = ApiError),
        (status = 403, description = "the token is not a valid operator token", body = ApiError),
    ),
)]
async fn ops_deliveries(
    State(web): State<WebState>,
    ApiQuery(query): ApiQuery<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = web.hub.check_operator(token(&headers, &query)) {
        return r.into_response();
    }
    let m = web.hub.metrics();
    let view = OpsView {
        server_time_ms: nodekit::unix_ms(),
        fixes_received_total: m.fixes_received.get(),
        fixes_unmatched_total: m.fixes_unmatched.get(),
        positions_pushed_total: m.pushed_total(crate::serve::http::WEBSOCKET)
            + m.pushed_total(crate::serve::wt::TRANSPORT),
        consumers_websocket: m.consumers(crate::serve::http::WEBSOCKET),
        consumers_webtransport: m.consumers(crate::serve::wt::TRANSPORT),
        deliveries: web
            .hub
            .snapshots(query.get("all").is_some_and(|v| v == "1")),
    };
    Json(view).into_response()
}

/// One delivery's history for the operator's replay.
#[derive(Debug, Serialize, ToSchema)]
struct History {
    snapshot: Snapshot,
    /// Every durable status event.
    events: Vec<StatusEvent>,
    /// The stored fixes, oldest first, as `[lat, lng, heading_deg, ts_ms]`.
    #[schema(value_type = Vec<Vec<f64>>)]
    trail: Vec<(f64, f64, f32, u64)>,
}

#[utoipa::path(
    get,
    path = "/api/v1/ops/deliveries/{id}/history",
    tag = "operator",
    params(
        ("id" = u64, Path, description = "delivery id"),
        ("token" = Option<String>, Query, description = "the token, when not sent as a bearer header"),
    ),
    security(("operator_token" = []), ("token_query" = [])),
    responses(
        (status = 200, description = "the delivery's snapshot, status events and stored fixes", body = History),
        (status = 307, description = "in a cluster: another hub owns the delivery (`Location`)", body = ApiError),
        (status = 400, description = "a bad id in the path", body = ApiError),
        (status = 401, description = "no token", body = ApiError),
        (status = 403, description = "the token is not a valid operator token", body = ApiError),
        (status = 404, description = "no such delivery", body = ApiError),
        (status = 503, description = "the hub is joining its cluster (retry)", body = ApiError),
    ),
)]
async fn ops_history(
    State(web): State<WebState>,
    ApiPath(id): ApiPath<u64>,
    ApiQuery(query): ApiQuery<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = web.hub.check_operator(token(&headers, &query)) {
        return r.into_response();
    }
    let id = DeliveryId(id);
    let Some(snapshot) = web.hub.snapshot(id) else {
        return ApiFailure::NotFound(format!("delivery {id} not found")).into_response();
    };
    let store = web.hub.store().clone();
    let read = tokio::task::spawn_blocking(move || {
        let events = store.events_after(id, 0)?;
        let mut trail = Vec::new();
        let mut after_ts = 0;
        while trail.len() < REPLAY_CRUMBS_MAX {
            let page = store.breadcrumbs(id, after_ts, REPLAY_CRUMBS_MAX - trail.len())?;
            let Some(last) = page.last() else { break };
            after_ts = last.ts_ms;
            trail.extend(page.iter().map(|c| (c.lat, c.lng, c.heading_deg, c.ts_ms)));
        }
        Ok::<_, crate::durable::store::StoreError>((events, trail))
    })
    .await;
    match read {
        Ok(Ok((events, trail))) => Json(History {
            snapshot,
            events,
            trail,
        })
        .into_response(),
        Ok(Err(e)) => ApiFailure::Internal(e.to_string()).into_response(),
        Err(e) => ApiFailure::Internal(e.to_string()).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_streets_become_one_polyline_per_straight_run_between_junctions() {
        let g =
            RoadGraph::grid_city(3, 3, 100.0, roadnet::LatLng::new(60.17, 24.94)).expect("grid");
        let m = map_json(&g);
        assert_eq!(m.attribution, "(c) OpenStreetMap contributors");
        let lines: usize = m.roads.iter().map(|l| l.lines.len()).sum();
        let points: usize = m.roads.iter().flat_map(|l| &l.lines).map(Vec::len).sum();
        // 12 street pieces; the corners join two pieces, so fewer lines than pieces.
        assert!(lines < 12, "{lines} lines");
        assert_eq!(points - lines, 12, "every piece drawn exactly once");
        assert!(
            m.bbox[0] < m.bbox[2] && m.bbox[1] < m.bbox[3],
            "{:?}",
            m.bbox
        );
    }

    #[test]
    fn default_city_map_stays_small() {
        let g = RoadGraph::default_city().expect("default city");
        let json = serde_json::to_vec(&map_json(&g)).expect("json");
        assert!(json.len() < 500_000, "{} bytes", json.len());
        assert!(json.len() > 10_000, "{} bytes", json.len());
    }
}
