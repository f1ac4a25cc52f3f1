//! The hub's HTTPS API: the order-service stand-in, the consumer WebSocket and REST status,
//! the WebTransport certificate info for browsers, and the router of every HTTP route with
//! its OpenAPI description (`GET /api/v1/openapi.json`), both built from the same handlers.

use crate::hub::{
    consumer_redirect_url, ApiFailure, AuthRefusal, ConsumerCursor, Creation, Hub, Route,
};
use crate::serve::respond::{
    error, json_rejection, no_route, token, upgrade_rejection, wrong_method, ApiPath, ApiQuery,
};
use crate::serve::web::WebState;
use crate::tracking::fanout::{Encoded, FrameKind};
use axum::extract::rejection::JsonRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRef, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use futures::SinkExt;
use protocol::api::{ApiError, ChangeStatus, CreateDelivery, DeliveryCreated, StatusChanged};
use protocol::consumer::Snapshot;
use protocol::DeliveryId;
use roadnet::RoadGraph;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use tokio_util::sync::CancellationToken;
use tracing::{debug, Instrument};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Label used in metrics.
pub const WEBSOCKET: &str = crate::tracking::fanout::WEBSOCKET;

/// Read buffer, write batching threshold and largest inbound message of a consumer WebSocket.
const CONSUMER_WS_BUFFER: usize = 4096;

/// Names of the security schemes in the OpenAPI description.
pub(crate) const OPERATOR: &str = "operator_token";
pub(crate) const TRACKING: &str = "tracking_token";
pub(crate) const DRIVER: &str = "driver_token";
pub(crate) const QUERY_TOKEN: &str = "token_query";

/// State of every HTTP route; each module's handlers take the part they need (`FromRef`).
#[derive(Clone)]
pub(crate) struct AppState {
    hub: Arc<Hub>,
    shutdown: CancellationToken,
    web: WebState,
}

impl FromRef<AppState> for WebState {
    fn from_ref(app: &AppState) -> Self {
        app.web.clone()
    }
}

impl FromRef<AppState> for crate::serve::api::ApiState {
    fn from_ref(app: &AppState) -> Self {
        Self {
            hub: app.hub.clone(),
            shutdown: app.shutdown.clone(),
        }
    }
}

/// The top of the OpenAPI description; the paths come from [`routes`].
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Trackline region hub",
        description = "HTTPS API of a region hub: the order service's calls, consumer tracking \
            (REST and WebSocket), history, anomalies, photo proof of delivery and push devices. \
            Every error is an `ApiError` JSON body. Tokens are Ed25519-signed Trackline tokens, \
            sent as `Authorization: Bearer <token>` or (where listed) as `?token=`.",
    ),
    modifiers(&SecuritySchemes),
    components(schemas(ApiError))
)]
struct HubApi;

struct SecuritySchemes;

impl utoipa::Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let bearer = |what: &str| {
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("trackline")
                    .description(Some(what))
                    .build(),
            )
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            OPERATOR,
            bearer("operator token (the order service; `region-hub mint-token --operator`)"),
        );
        components.add_security_scheme(
            TRACKING,
            bearer("tracking token of one delivery (the consumer; returned by `POST /api/v1/deliveries`); an operator token is accepted too"),
        );
        components.add_security_scheme(
            DRIVER,
            bearer("driver token (`region-hub mint-token --driver N`)"),
        );
        components.add_security_scheme(
            QUERY_TOKEN,
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "token",
                "the same token as `?token=` (browsers' WebSocket cannot set headers)",
            ))),
        );
    }
}

/// Every HTTP route of the hub with its description, without state: the one list both the
/// router and the OpenAPI document are made from. `proof_body_limit` caps photo uploads.
pub(crate) fn routes(proof_body_limit: usize) -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(HubApi::openapi())
        .routes(routes!(create_delivery))
        .routes(routes!(change_status))
        .routes(routes!(tracking_status))
        .routes(routes!(connect))
        .routes(routes!(webtransport_info))
        .routes(routes!(openapi_json))
        .merge(crate::serve::api::routes(proof_body_limit))
        .merge(crate::serve::hooks::routes())
        .merge(crate::serve::web::routes())
}

/// The OpenAPI description of the hub's HTTP API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes(0).into_openapi()
}

/// The API router: every route of [`routes`], JSON errors for unknown paths and methods, and
/// in a cluster the placement layer.
pub(crate) fn router(hub: Arc<Hub>, graph: Arc<RoadGraph>, shutdown: CancellationToken) -> Router {
    let body_limit = crate::serve::api::proof_body_limit(&hub);
    let (routes, _) = routes(body_limit).split_for_parts();
    let router = routes
        .method_not_allowed_fallback(wrong_method)
        .fallback(no_route)
        .with_state(AppState {
            hub: hub.clone(),
            shutdown,
            web: WebState::new(hub.clone(), graph),
        });
    // A single hub owns everything: no placement layer at all.
    if hub.cluster().is_some() {
        router.layer(axum::middleware::from_fn_with_state(hub, placement))
    } else {
        router
    }
}

/// The description as served (built once).
static OPENAPI_JSON: LazyLock<String> = LazyLock::new(|| {
    openapi()
        .to_json()
        .unwrap_or_else(|e| format!("{{\"error\":\"internal\",\"message\":\"{e}\"}}"))
});

/// This description.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "meta",
    responses((status = 200, description = "the OpenAPI 3.1 description of this API", content_type = "application/json", body = Object)),
)]
async fn openapi_json() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        OPENAPI_JSON.as_str(),
    )
        .into_response()
}

/// The delivery a `/api/v1/tracking/{id}/..` or `/api/v1/deliveries/{id}/..` path is about.
fn delivery_in_path(path: &str) -> Option<DeliveryId> {
    let rest = path
        .strip_prefix("/api/v1/tracking/")
        .or_else(|| path.strip_prefix("/api/v1/deliveries/"))?;
    let id = rest.split('/').next()?;
    id.parse().ok().map(DeliveryId)
}

/// In a cluster, a request about a delivery another hub owns is answered with
/// `307 Temporary Redirect` to the same path and query at the owner's HTTPS address
/// (WebSocket upgrades go on to [`connect`], which redirects in-band).
async fn placement(
    State(hub): State<Arc<Hub>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(id) = delivery_in_path(req.uri().path()) else {
        return next.run(req).await;
    };
    let upgrade = req.headers().contains_key(header::UPGRADE);
    match hub.route(id).await {
        Route::Redirect(owner) if !upgrade => {
            let pq = req
                .uri()
                .path_and_query()
                .map_or(req.uri().path(), |p| p.as_str());
            redirect_to(&format!("https://{}{pq}", owner.https_addr))
        }
        Route::Joining => {
            let mut r = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "joining",
                "this hub is joining the cluster and has not claimed its deliveries yet; retry",
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            r
        }
        // WebSocket upgrades go on to `connect`, which redirects in-band.
        Route::Redirect(_) | Route::Serve | Route::TakeOver => next.run(req).await,
    }
}

/// `307 Temporary Redirect` to `location` (method and body are kept by the client).
fn redirect_to(location: &str) -> Response {
    match header::HeaderValue::from_str(location) {
        Ok(v) => {
            let mut r = error(
                StatusCode::TEMPORARY_REDIRECT,
                "redirect",
                format!("served by {location}"),
            );
            r.headers_mut().insert(header::LOCATION, v);
            r
        }
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the owning hub has no usable address",
        ),
    }
}

#[utoipa::path(
    post,
    path = "/api/v1/deliveries",
    tag = "deliveries",
    request_body = CreateDelivery,
    security(("operator_token" = [])),
    responses(
        (status = 201, description = "created; the first status event is durable", body = DeliveryCreated),
        (status = 307, description = "in a cluster: the chosen id belongs to another hub (`Location`)", body = ApiError),
        (status = 400, description = "the body is not JSON", body = ApiError),
        (status = 401, description = "no token", body = ApiError),
        (status = 403, description = "the token is not a valid operator token", body = ApiError),
        (status = 409, description = "a delivery with this id exists", body = ApiError),
        (status = 413, description = "the body is too large", body = ApiError),
        (status = 415, description = "not `Content-Type: application/json`", body = ApiError),
        (status = 422, description = "JSON of the wrong shape", body = ApiError),
        (status = 503, description = "the event log cannot commit now (retry)", body = ApiError),
    ),
)]
async fn create_delivery(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<CreateDelivery>, JsonRejection>,
) -> Response {
    if let Err(r) = app.hub.check_operator(token(&headers, &HashMap::new())) {
        return r.into_response();
    }
    let mut req = match body {
        Ok(Json(r)) => r,
        Err(e) => return json_rejection(e),
    };
    match app.hub.place_new(req.delivery_id) {
        Some(Creation::Here(id)) => req.delivery_id = Some(id),
        Some(Creation::Redirect(owner)) => {
            return redirect_to(&format!("https://{}/api/v1/deliveries", owner.https_addr));
        }
        None => {}
    }
    match app.hub.create_delivery(&req).await {
        Ok(created) => (StatusCode::CREATED, Json(created)).into_response(),
        Err(e) => e.into_response(),
    }
}

#[utoipa::path(
    post,
    path = "/api/v1/deliveries/{id}/status",
    tag = "deliveries",
    params(("id" = u64, Path, description = "delivery id")),
    request_body = ChangeStatus,
    security(("operator_token" = [])),
    responses(
        (status = 200, description = "the status event is durable (or replayed for a repeated idempotency key)", body = StatusChanged),
        (status = 307, description = "in a cluster: another hub owns the delivery (`Location`)", body = ApiError),
        (status = 400, description = "a bad id in the path, or a body that is not JSON", body = ApiError),
        (status = 401, description = "no token", body = ApiError),
        (status = 403, description = "the token is not a valid operator token", body = ApiError),
        (status = 404, description = "no such delivery", body = ApiError),
        (status = 409, description = "the transition is not allowed from the current status", body = ApiError),
        (status = 413, description = "the body is too large", body = ApiError),
        (status = 415, description = "not `Content-Type: application/json`", body = ApiError),
        (status = 422, description = "JSON of the wrong shape", body = ApiError),
        (status = 503, description = "the event log cannot commit now, or the hub is joining its cluster (retry)", body = ApiError),
    ),
)]
async fn change_status(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<u64>,
    headers: HeaderMap,
    body: Result<Json<ChangeStatus>, JsonRejection>,
) -> Response {
    if let Err(r) = app.hub.check_operator(token(&headers, &HashMap::new())) {
        return r.into_response();
    }
    let req = match body {
        Ok(Json(r)) => r,
        Err(e) => return json_rejection(e),
    };
    match app.hub.change_status(DeliveryId(id), &req, "api").await {
        Ok(changed) => Json(changed).into_response(),
        Err(e) => e.into_response(),
    }
}

fn check_consumer(
    app: &AppState,
    id: DeliveryId,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Result<(), AuthRefusal> {
    app.hub
        .check_tracking(token(headers, query), id)
        .inspect_err(|r| app.hub.metrics().reject(r.reason()))
}

#[utoipa::path(
    get,
    path = "/api/v1/tracking/{id}/status",
    tag = "tracking",
    params(
        ("id" = u64, Path, description = "delivery id"),
        ("token" = Option<String>, Query, description = "the token, when not sent as a bearer header"),
    ),
    security(("tracking_token" = []), ("token_query" = [])),
    responses(
        (status = 200, description = "the delivery now: status, last position and its age, ETA", body = Snapshot),
        (status = 307, description = "in a cluster: another hub owns the delivery (`Location`)", body = ApiError),
        (status = 400, description = "a bad id in the path", body = ApiError),
        (status = 401, description = "no token", body = ApiError),
        (status = 403, description = "the token is not valid for this delivery", body = ApiError),
        (status = 404, description = "no such delivery", body = ApiError),
        (status = 503, description = "the hub is joining its cluster (retry)", body = ApiError),
    ),
)]
async fn tracking_status(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<u64>,
    ApiQuery(query): ApiQuery<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let id = DeliveryId(id);
    if let Err(r) = check_consumer(&app, id, &headers, &query) {
        return r.into_response();
    }
    match app.hub.snapshot(id) {
        Some(s) => Json(s).into_response(),
        None => ApiFailure::NotFound(format!("delivery {id} not found")).into_response(),
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/tracking/{id}/connect",
    tag = "tracking",
    description = "The consumer's WebSocket: JSON `ConsumerFrame` text messages (a snapshot, \
        then positions, status events and ETAs). In a cluster a consumer of another hub's \
        delivery gets a `redirect` frame in-band.",
    params(
        ("id" = u64, Path, description = "delivery id"),
        ("token" = Option<String>, Query, description = "the token, when not sent as a bearer header"),
        ("last_event_seq" = Option<u64>, Query, description = "resume: status events after this one are sent again"),
    ),
    security(("tracking_token" = []), ("token_query" = [])),
    responses(
        (status = 101, description = "switched to WebSocket"),
        (status = 400, description = "a bad id or `last_event_seq`, or not a WebSocket upgrade request", body = ApiError),
        (status = 401, description = "no token", body = ApiError),
        (status = 403, description = "the token is not valid for this delivery", body = ApiError),
        (status = 404, description = "no such delivery", body = ApiError),
        (status = 426, description = "the connection cannot be upgraded", body = ApiError),
        (status = 503, description = "the hub is joining its cluster (retry)", body = ApiError),
    ),
)]
async fn connect(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<u64>,
    ApiQuery(query): ApiQuery<HashMap<String, String>>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let id = DeliveryId(id);
    // The token is checked before anything else, the upgrade included.
    if let Err(r) = check_consumer(&app, id, &headers, &query) {
        return r.into_response();
    }
    let last_event_seq = match query.get("last_event_seq").map(|s| s.parse::<u64>()) {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "last_event_seq must be a number",
            )
        }
    };
    let ws = match ws {
        // Consumers only send control frames: a small read buffer (tungstenite allocates
        // 128 KiB per connection by default, most of a consumer's memory) and a small limit
        // on what they may send.
        Ok(ws) => ws
            .read_buffer_size(CONSUMER_WS_BUFFER)
            .write_buffer_size(CONSUMER_WS_BUFFER)
            .max_message_size(CONSUMER_WS_BUFFER)
            .max_frame_size(CONSUMER_WS_BUFFER),
        Err(e) => return upgrade_rejection(e),
    };
    // Browsers' WebSocket does not follow HTTP redirects: the redirect goes in-band.
    if let Route::Redirect(owner) = app.hub.route(id).await {
        let url = consumer_redirect_url(&owner, id, false);
        return ws.on_upgrade(move |mut socket| async move {
            let frame = protocol::consumer::ConsumerFrame::Redirect { url }.to_json();
            let _ = socket.send(Message::Text(frame.into())).await;
            let _ = socket.close().await;
        });
    }
    let start = match app.hub.open_consumer(id, last_event_seq, WEBSOCKET, None) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let span = tracing::info_span!("ws_consumer", delivery_id = %id);
    ws.on_upgrade(move |socket| run_socket(socket, app, start).instrument(span))
}

/// A frame as a WebSocket text message (the JSON is valid UTF-8 by construction).
fn text(frame: &Encoded) -> Option<Message> {
    axum::extract::ws::Utf8Bytes::try_from(frame.json())
        .ok()
        .map(Message::Text)
}

async fn run_socket(mut socket: WebSocket, app: AppState, start: crate::hub::ConsumerStart) {
    let mut cursor = ConsumerCursor::new(&start);
    for frame in ConsumerCursor::opening_frames(&start) {
        let Some(msg) = text(&frame) else { continue };
        if socket.feed(msg).await.is_err() {
            return;
        }
    }
    if socket.flush().await.is_err() {
        return;
    }
    let crate::hub::ConsumerStart {
        subscription: mut sub,
        guard: _guard,
        ..
    } = start;
    debug!("websocket consumer connected");
    let mut frames = Vec::new();
    loop {
        // What the consumer sends is read only to notice a close; frames waiting for it are
        // written together and flushed once.
        let open = tokio::select! {
            // Frames first: what the consumer sends is read when nothing is waiting for it.
            biased;
            open = cursor.next_batch(&mut sub, &mut frames) => open,
            msg = socket.recv() => match msg {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => continue,
            },
            _ = app.shutdown.cancelled() => break,
        };
        let mut redirect = false;
        let mut positions = 0;
        for frame in frames.drain(..) {
            match frame.kind {
                FrameKind::Redirect => redirect = true,
                FrameKind::Position { .. } => positions += 1,
                _ => {}
            }
            let Some(msg) = text(&frame) else { continue };
            if socket.feed(msg).await.is_err() {
                return;
            }
            if redirect {
                break;
            }
        }
        if socket.flush().await.is_err() {
            return;
        }
        app.hub.metrics().add_pushed(WEBSOCKET, positions);
        if redirect {
            break;
        }
        if !open {
            debug!("consumer cut off by the hub");
            let _ = socket
                .send(Message::Close(Some(axum::extract::ws::CloseFrame {
                    code: 1013,
                    reason: "cut off: resume with last_event_seq".into(),
                })))
                .await;
            return;
        }
    }
    let _ = socket.close().await;
}

/// Where browsers open WebTransport, and the certificate hash they pin.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WebTransportInfo {
    /// UDP port of the hub's WebTransport endpoint.
    pub port: u16,
    /// SHA-256 of the WebTransport certificate, base64 (`serverCertificateHashes`).
    pub cert_sha256_b64: String,
}

#[utoipa::path(
    get,
    path = "/api/v1/webtransport/info",
    tag = "tracking",
    responses((status = 200, description = "the WebTransport port and certificate hash", body = WebTransportInfo)),
)]
async fn webtransport_info(State(app): State<AppState>) -> Response {
    let (port, cert_sha256) = app.hub.webtransport();
    Json(WebTransportInfo {
        port,
        cert_sha256_b64: certs::sha256_base64(&cert_sha256),
    })
    .into_response()
}

/// The paths an axum router registered, read from its `Debug` output (axum has no other way
/// to list them): the `paths` map of its path router, `{RouteId(1): "/a", ..}`, before its
/// fallback router (which holds axum's own catch-all paths).
#[cfg(test)]
pub(crate) fn registered_paths<S>(router: &Router<S>) -> std::collections::BTreeSet<String> {
    let debug = format!("{router:?}");
    let routes = debug.split("fallback_router").next().unwrap_or_default();
    routes
        .split("RouteId(")
        .skip(1)
        .filter_map(|rest| {
            let (_, after) = rest.split_once("): \"")?;
            after.split_once('"').map(|(path, _)| path.to_owned())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn every_registered_route_is_described_and_only_those() {
        let (router, doc) = routes(1024).split_for_parts();
        let registered = registered_paths(&router);
        let described: BTreeSet<String> = doc.paths.paths.keys().cloned().collect();
        // The parser must see the routes at all (an axum upgrade could change the format).
        assert!(registered.contains("/api/v1/deliveries"), "{registered:?}");
        assert!(
            registered.contains("/api/v1/tracking/{id}/proof"),
            "{registered:?}"
        );
        assert_eq!(registered, described);
    }

    #[test]
    fn a_route_added_without_a_description_is_noticed() {
        let (router, doc) = routes(1024).split_for_parts();
        let router = router.route("/api/v1/undescribed", axum::routing::get(|| async { "" }));
        let described: BTreeSet<String> = doc.paths.paths.keys().cloned().collect();
        let missing: Vec<String> = registered_paths(&router)
            .difference(&described)
            .cloned()
            .collect();
        assert_eq!(missing, vec!["/api/v1/undescribed".to_owned()]);
    }

    #[test]
    fn every_operation_names_defined_security_schemes_and_json_errors() {
        let doc = openapi();
        let json = serde_json::to_value(&doc).expect("json");
        let schemes = json["components"]["securitySchemes"]
            .as_object()
            .expect("security schemes");
        for name in [OPERATOR, TRACKING, DRIVER, QUERY_TOKEN] {
            assert!(schemes.contains_key(name), "{name} is not defined");
        }
        let paths = json["paths"].as_object().expect("paths");
        let mut operations = 0;
        for (path, item) in paths {
            for (method, op) in item.as_object().expect("path item") {
                operations += 1;
                for requirement in op["security"].as_array().into_iter().flatten() {
                    for name in requirement.as_object().expect("requirement").keys() {
                        assert!(
                            schemes.contains_key(name),
                            "{method} {path}: undefined scheme {name}"
                        );
                    }
                }
                for (status, response) in op["responses"].as_object().expect("responses") {
                    if status.starts_with('4') || status.starts_with('5') || status == "307" {
                        let schema = &response["content"]["application/json"]["schema"]["$ref"];
                        assert_eq!(
                            schema, "#/components/schemas/ApiError",
                            "{method} {path} {status}"
                        );
                    }
                }
            }
        }
        assert!(operations >= 18, "{operations} operations");
    }
}
