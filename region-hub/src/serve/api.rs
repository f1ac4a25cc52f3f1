//! HTTP endpoints over the hub's records: tracking history (breadcrumbs + events, paged),
//! anomalies (list and live WebSocket stream, operator token), and photo proof of delivery
//! (upload by the assigned driver, download by the consumer or an operator).

use crate::durable::blobs::store_blob;
use crate::durable::history::Breadcrumb;
use crate::hub::{ApiFailure, AuthRefusal, Hub};
use crate::serve::http::AppState;
use crate::serve::respond::{error, json_rejection, token, upgrade_rejection, ApiPath, ApiQuery};
use crate::tracking::anomaly::Anomaly;
use crate::tracking::deliveries::SideRecord;
use crate::tracking::proof::{check_image, ProofRecord};
use axum::extract::multipart::MultipartRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{DefaultBodyLimit, Multipart, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use protocol::api::{ApiError, ChangeStatus};
use protocol::consumer::StatusEvent;
use protocol::geo::{haversine_m, LatLng};
use protocol::status::DeliveryStatus;
use protocol::DeliveryId;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Default and largest page of the history endpoint.
const HISTORY_PAGE: usize = 500;
const HISTORY_PAGE_MAX: usize = 5_000;
/// Default and largest number of anomalies listed.
const ANOMALIES_DEFAULT: usize = 200;
const ANOMALIES_MAX: usize = 5_000;
/// Room for the multipart framing and the GPS fields beyond the image limit.
const MULTIPART_SLACK: usize = 64 * 1024;

/// What these handlers need (taken from the router's state).
#[derive(Clone)]
pub(crate) struct ApiState {
    pub(crate) hub: Arc<Hub>,
    pub(crate) shutdown: CancellationToken,
}

/// Largest proof upload body: the image limit plus the multipart framing and the GPS fields.
pub(crate) fn proof_body_limit(hub: &Hub) -> usize {
    hub.proof_config().max_bytes.saturating_add(MULTIPART_SLACK)
}

/// The routes with their descriptions, merged into the hub's (see `http::routes`).
pub(crate) fn routes(proof_body_limit: usize) -> OpenApiRouter<AppState> {
    let (schemas, paths, proof) = routes!(get_proof, upload_proof);
    let proof = proof.layer(DefaultBodyLimit::max(proof_body_limit));
    OpenApiRouter::new()
        .routes(routes!(history))
        .routes((schemas, paths, proof))
        .routes(routes!(register_device))
        .routes(routes!(list_anomalies))
        .routes(routes!(anomaly_stream))
}

fn internal(e: impl std::fmt::Display) -> Response {
    ApiFailure::Internal(e.to_string()).into_response()
}

/// A refusal with its status, error code and message.
#[derive(Debug)]
struct Refusal(StatusCode, &'static str, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        error(self.0, self.1, self.2)
    }
}

/// Runs a blocking store read off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::durable::store::StoreError> + Send + 'static,
) -> Result<T, ApiFailure> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(ApiFailure::Internal(e.to_string())),
        Err(e) => Err(ApiFailure::Internal(e.to_string())),
    }
}

fn parse_param<T: std::str::FromStr>(
    query: &HashMap<String, String>,
    name: &str,
) -> Result<Option<T>, ApiFailure> {
    match query.get(name) {
        None => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| ApiFailure::BadRequest(format!("{name} must be a number"))),
    }
}

/// One page of a delivery's history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HistoryPage {
    pub delivery_id: DeliveryId,
    /// Stored fixes measured after `after_ts`, oldest first.
    pub breadcrumbs: Vec<Breadcrumb>,
    /// Status events in the same time window as the breadcrumbs (all remaining ones on the
    /// last page), oldest first.
    pub events: Vec<StatusEvent>,
    /// Pass as `after_ts` for the next page; absent on the last page.
    pub next_after_ts: Option<u64>,
}

#[utoipa::path(
    get,
    path = "/api/v1/tracking/{id}/history",
    tag = "history",
    params(
        ("id" = u64, Path, description = "delivery id"),
        ("after_ts" = Option<u64>, Query, description = "page after this fix time (unix ms; `next_after_ts` of the previous page)"),
        ("limit" = Option<u64>, Query, description = "breadcrumbs per page (default 500, at most 5000)"),
        ("token" = Option<String>, Query, description = "the token, when not sent as a bearer header"),
    ),
    security(("tracking_token" = []), ("token_query" = [])),
    responses(
        (status = 200, description = "one page of breadcrumbs and status events", body = HistoryPage),
        (status = 307, description = "in a cluster: another hub owns the delivery (`Location`)", body = ApiError),
        (status = 400, description = "a bad id, `after_ts` or `limit`", body = ApiError),
        (status = 401, description = "no token", body = ApiError),
        (status = 403, description = "the token is not valid for this delivery", body = ApiError),
        (status = 404, description = "no such delivery", body = ApiError),
        (status = 503, description = "the hub is joining its cluster (retry)", body = ApiError),
    ),
)]
async fn history(
    State(app): State<ApiState>,
    ApiPath(id): ApiPath<u64>,
    ApiQuery(query): ApiQuery<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let id = DeliveryId(id);
    if let Err(r) = app.hub.check_tracking(token(&headers, &query), id) {
        return r.into_response();
    }
    let (after_ts, limit) = match (
        parse_param::<u64>(&query, "after_ts"),
        parse_param::<usize>(&query, "limit"),
    ) {
        (Ok(a), Ok(l)) => (
            a.unwrap_or(0),
            l.unwrap_or(HISTORY_PAGE).clamp(1, HISTORY_PAGE_MAX),
        ),
        (Err(r), _) | (_, Err(r)) => return r.into_response(),
    };
    let store = app.hub.store().clone();
    let read = blocking(move || {
        let Some(_) = store.delivery(id)? else {
            return Ok(None);
        };
        let crumbs = store.breadcrumbs(id, after_ts, limit)?;
        let events = store.events_after(id, 0)?;
        Ok(Some((crumbs, events)))
    })
    .await;
    let (breadcrumbs, events) = match read {
        Ok(Some(v)) => v,
        Ok(None) => {
            return ApiFailure::NotFound(format!("delivery {id} not found")).into_response()
        }
        Err(r) => return r.into_response(),
    };
    let next_after_ts = (breadcrumbs.len() == limit)
        .then(|| breadcrumbs.last().map(|c| c.ts_ms))
        .flatten();
    let until = next_after_ts.unwrap_or(u64::MAX);
    let events = events
        .into_iter()
        .filter(|e| e.ts_ms > after_ts && e.ts_ms <= until)
        .collect();
    Json(HistoryPage {
        delivery_id: id,
        breadcrumbs,
        events,
        next_after_ts,
    })
    .into_response()
}

/// Answer of `GET /api/v1/anomalies`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AnomalyList {
    /// Newest first.
    pub anomalies: Vec<Anomaly>,
}

#[utoipa::path(
    get,
    path = "/api/v1/anomalies",
    tag = "anomalies",
    params(
        ("delivery" = Option<u64>, Query, description = "only this delivery's anomalies"),
        ("limit" = Option<u64>, Query, description = "how many (default 200, at most 5000)"),
        ("token" = Option<String>, Query, description = "the token, when not sent as a bearer header"),
    ),
    security(("operator_token" = []), ("token_query" = [])),
    responses(
        (status = 200, description = "the newest anomalies first", body = AnomalyList),
        (status = 400, description = "a bad `delivery` or `limit`", body = ApiError),
        (status = 401, description = "no token", body = ApiError),
        (status = 403, description = "the token is not a valid operator token", body = ApiError),
    ),
)]
async fn list_anomalies(
    State(app): State<ApiState>,
    ApiQuery(query): ApiQuery<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = app.hub.check_operator(token(&headers, &query)) {
        return r.into_response();
    }
    let (delivery, limit) = match (
        parse_param::<u64>(&query, "delivery"),
        parse_param::<usize>(&query, "limit"),
    ) {
        (Ok(d), Ok(l)) => (
            d.map(DeliveryId),
            l.unwrap_or(ANOMALIES_DEFAULT).clamp(1, ANOMALIES_MAX),
        ),
        (Err(r), _) | (_, Err(r)) => return r.into_response(),
    };
    let store = app.hub.store().clone();
    match blocking(move || store.anomalies(delivery, limit)).await {
        Ok(anomalies) => Json(AnomalyList { anomalies }).into_response(),
        Err(r) => r.into_response(),
    }
}

/// A frame of the anomaly stream: `{"type":"anomaly", ...}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AnomalyFrame {
    Anomaly(Anomaly),
    /// The stream fell behind and skipped `missed` anomalies (read them from the list).
    Lagged {
        missed: u64,
    },
}

#[utoipa::path(
    get,
    path = "/api/v1/anomalies/stream",
    tag = "anomalies",
    description = "A WebSocket of `AnomalyFrame` JSON text messages, one per new anomaly.",
    params(("token" = Option<String>, Query, description = "the token, when not sent as a bearer header")),
    security(("operator_token" = []), ("token_query" = [])),
    responses(
        (status = 101, description = "switched to WebSocket"),
        (status = 400, description = "not a WebSocket upgrade request", body = ApiError),
        (status = 401, description = "no token", body = ApiError),
        (status = 403, description = "the token is not a valid operator token", body = ApiError),
        (status = 426, description = "the connection cannot be upgraded", body = ApiError),
    ),
)]
async fn anomaly_stream(
    State(app): State<ApiState>,
    ApiQuery(query): ApiQuery<HashMap<String, String>>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if let Err(r) = app.hub.check_operator(token(&headers, &query)) {
        return r.into_response();
    }
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => return upgrade_rejection(e),
    };
    let rx = app.hub.subscribe_anomalies();
    let span = tracing::info_span!("anomaly_stream");
    ws.on_upgrade(move |socket| run_anomaly_stream(socket, rx, app.shutdown).instrument(span))
}

async fn run_anomaly_stream(
    mut socket: WebSocket,
    mut rx: tokio::sync::broadcast::Receiver<Anomaly>,
    shutdown: CancellationToken,
) {
    use tokio::sync::broadcast::error::RecvError;
    tracing::debug!("operator anomaly stream connected");
    loop {
        let frame = tokio::select! {
            a = rx.recv() => match a {
                Ok(a) => AnomalyFrame::Anomaly(a),
                Err(RecvError::Lagged(missed)) => AnomalyFrame::Lagged { missed },
                Err(RecvError::Closed) => break,
            },
            msg = socket.recv() => match msg {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => continue,
            },
            _ = shutdown.cancelled() => break,
        };
        let Ok(json) = serde_json::to_string(&frame) else {
            continue;
        };
        if socket.send(Message::Text(json.into())).await.is_err() {
            break;
        }
    }
    let _ = socket.send(Message::Close(None)).await;
}

/// Answer of a proof upload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ProofAccepted {
    pub delivery_id: DeliveryId,
    pub event_seq: u64,
    pub status: DeliveryStatus,
    /// True when the same image was already accepted for this delivery.
    pub replayed: bool,
    pub proof_url: String,
    pub content_type: String,
    pub sha256: String,
    pub distance_m: f64,
    pub far_from_dropoff: bool,
}

/// The form of a proof upload (`multipart/form-data`), for the API description.
#[derive(ToSchema)]
#[allow(dead_code)] // described, never built: `read_upload` reads the parts
struct ProofForm {
    /// The photo: JPEG, PNG, WebP or HEIC.
    #[schema(value_type = String, format = Binary)]
    image: Vec<u8>,
    /// Where it was taken, degrees (with `lng`; or send `gps`).
    lat: Option<f64>,
    lng: Option<f64>,
    /// `{"lat":..,"lng":..}` instead of `lat` and `lng`.
    gps: Option<String>,
}

#[derive(Deserialize)]
struct GpsField {
    lat: f64,
    lng: f64,
}

/// The parts of a proof upload.
struct Upload {
    image: Vec<u8>,
    declared: Option<String>,
    gps: LatLng,
}

fn too_large(limit: usize) -> Refusal {
    Refusal(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!("the image is larger than the limit of {limit} bytes"),
    )
}

fn bad(message: impl Into<String>) -> Refusal {
    Refusal(StatusCode::BAD_REQUEST, "bad_request", message.into())
}

async fn read_upload(mut form: Multipart, limit: usize) -> Result<Upload, Refusal> {
    let multipart_error = |e: axum::extract::multipart::MultipartError| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large(limit)
        } else {
            bad(format!("bad multipart body: {}", e.body_text()))
        }
    };
    let (mut image, mut declared, mut lat, mut lng, mut gps) = (None, None, None, None, None);
    while let Some(mut field) = form.next_field().await.map_err(multipart_error)? {
        match field.name().unwrap_or_default() {
            "image" => {
                declared = field.content_type().map(str::to_owned);
                let mut bytes = Vec::new();
                while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
                    if bytes.len() + chunk.len() > limit {
                        return Err(too_large(limit));
                    }
                    bytes.extend_from_slice(&chunk);
                }
                image = Some(bytes);
            }
            name @ ("lat" | "lng" | "gps") => {
                let name = name.to_owned();
                let text = field.text().await.map_err(multipart_error)?;
                match name.as_str() {
                    "lat" => lat = Some(text),
                    "lng" => lng = Some(text),
                    _ => gps = Some(text),
                }
            }
            _ => {} // ignored
        }
    }
    let image = image.ok_or_else(|| bad("the form has no `image` file field"))?;
    let gps = match (gps, lat, lng) {
        (Some(g), _, _) => serde_json::from_str::<GpsField>(&g)
            .map(|g| LatLng::new(g.lat, g.lng))
            .map_err(|e| bad(format!("`gps` must be JSON {{\"lat\":..,\"lng\":..}}: {e}")))?,
        (None, Some(a), Some(b)) => match (a.trim().parse(), b.trim().parse()) {
            (Ok(a), Ok(b)) => LatLng::new(a, b),
            _ => return Err(bad("`lat` and `lng` must be numbers")),
        },
        _ => {
            return Err(bad(
                "the form needs `lat` and `lng` (or a `gps` JSON field)",
            ))
        }
    };
    if !gps.is_valid() {
        return Err(bad(format!(
            "{},{} is not a valid position",
            gps.lat, gps.lng
        )));
    }
    Ok(Upload {
        image,
        declared,
        gps,
    })
}

#[utoipa::path(
    post,
    path = "/api/v1/tracking/{id}/proof",
    tag = "proof",
    description = "The assigned driver's photo proof of delivery: records the `delivered` \
        status event with the proof. Repeating the same image replays the first answer (200).",
    params(("id" = u64, Path, description = "delivery id")),
    request_body(content = ProofForm, content_type = "multipart/form-data"),
    security(("driver_token" = [])),
    responses(
        (status = 201, description = "recorded; the delivery is delivered", body = ProofAccepted),
        (status = 200, description = "this image was already accepted (replay)", body = ProofAccepted),
        (status = 307, description = "in a cluster: another hub owns the delivery (`Location`)", body = ApiError),
        (status = 400, description = "a bad id, or a form without a usable image or position", body = ApiError),
        (status = 401, description = "no token", body = ApiError),
        (status = 403, description = "not the driver assigned to this delivery", body = ApiError),
        (status = 404, description = "no such delivery", body = ApiError),
        (status = 409, description = "the delivery cannot become delivered from its status", body = ApiError),
        (status = 413, description = "the image is over the limit", body = ApiError),
        (status = 415, description = "not an image type the hub takes", body = ApiError),
        (status = 503, description = "the event log cannot commit now, or the hub is joining its cluster (retry)", body = ApiError),
    ),
)]
async fn upload_proof(
    State(app): State<ApiState>,
    ApiPath(id): ApiPath<u64>,
    headers: HeaderMap,
    form: Result<Multipart, MultipartRejection>,
) -> Response {
    let id = DeliveryId(id);
    let hub = &app.hub;
    let driver = match hub.check_driver(token(&headers, &HashMap::new())) {
        Ok(d) => d,
        Err(r) => return r.into_response(),
    };
    let Some((record, status)) = hub.record(id) else {
        return ApiFailure::NotFound(format!("delivery {id} not found")).into_response();
    };
    if record.driver_id != Some(driver) {
        return AuthRefusal::Invalid(protocol::token::TokenError::WrongSubject(
            protocol::token::Subject::Driver(driver),
        ))
        .into_response();
    }
    let form = match form {
        Ok(f) => f,
        Err(e) => return bad(e.body_text()).into_response(),
    };
    let upload = match read_upload(form, hub.proof_config().max_bytes).await {
        Ok(u) => u,
        Err(r) => return r.into_response(),
    };
    let image_type = match check_image(upload.declared.as_deref(), &upload.image) {
        Ok(t) => t,
        Err(e) => {
            return error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                e.to_string(),
            )
        }
    };
    let sha = crate::tracking::proof::sha256_hex(&upload.image);
    let replay_key = format!("proof-{sha}");
    if status.check_transition(DeliveryStatus::Delivered).is_err() {
        // Not deliverable any more; a retry of an accepted upload still replays below.
        let known = hub
            .store()
            .proof(id)
            .ok()
            .flatten()
            .is_some_and(|p| p.sha256 == sha);
        if !known {
            return ApiFailure::Conflict(format!(
                "cannot record a proof of delivery: delivery {id} is {status}"
            ))
            .into_response();
        }
    }
    let dir = hub.proofs_dir().to_path_buf();
    let bytes = upload.image;
    let len = bytes.len() as u64;
    match tokio::task::spawn_blocking(move || store_blob(&dir, &bytes, image_type)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return internal(format!("storing the proof image: {e}")),
        Err(e) => return internal(e),
    }
    let distance_m = (haversine_m(upload.gps, record.dropoff) * 10.0).round() / 10.0;
    let far_from_dropoff = distance_m > hub.proof_config().far_from_dropoff_m;
    let proof_url = format!("/api/v1/tracking/{id}/proof");
    let proof = ProofRecord {
        delivery_id: id,
        driver_id: driver,
        sha256: sha.clone(),
        image_type,
        bytes: len,
        lat: upload.gps.lat,
        lng: upload.gps.lng,
        distance_m,
        far_from_dropoff,
        ts_ms: nodekit::unix_ms(),
    };
    let req = ChangeStatus {
        status: DeliveryStatus::Delivered,
        idempotency_key: Some(replay_key),
        driver_id: None,
        metadata: serde_json::json!({
            "proof_url": proof_url,
            "far_from_dropoff": far_from_dropoff,
            "distance_m": distance_m,
        }),
    };
    if far_from_dropoff {
        tracing::info!(delivery_id = %id, driver_id = %driver, distance_m, "proof of delivery taken far from the drop-off");
    }
    match hub
        .change_status_with(id, &req, "driver", vec![SideRecord::Proof(proof)])
        .await
    {
        Ok(changed) => (
            if changed.replayed {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            },
            Json(ProofAccepted {
                delivery_id: id,
                event_seq: changed.event_seq,
                status: changed.status,
                replayed: changed.replayed,
                proof_url,
                content_type: image_type.content_type().to_owned(),
                sha256: sha,
                distance_m,
                far_from_dropoff,
            }),
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

/// Answer of a device registration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeviceRegistered {
    pub delivery_id: DeliveryId,
    pub platform: notify::Platform,
    /// False when the device was already registered for this delivery.
    pub registered: bool,
}

#[utoipa::path(
    post,
    path = "/api/v1/tracking/{id}/devices",
    tag = "tracking",
    description = "Registers the consumer's phone for push notifications at milestones.",
    params(
        ("id" = u64, Path, description = "delivery id"),
        ("token" = Option<String>, Query, description = "the token, when not sent as a bearer header"),
    ),
    request_body = notify::DeviceToken,
    security(("tracking_token" = []), ("token_query" = [])),
    responses(
        (status = 201, description = "registered", body = DeviceRegistered),
        (status = 200, description = "this device was already registered", body = DeviceRegistered),
        (status = 307, description = "in a cluster: another hub owns the delivery (`Location`)", body = ApiError),
        (status = 400, description = "a bad id, a body that is not JSON, or a malformed device token", body = ApiError),
        (status = 401, description = "no token", body = ApiError),
        (status = 403, description = "the token is not valid for this delivery", body = ApiError),
        (status = 404, description = "no such delivery", body = ApiError),
        (status = 409, description = "the delivery has the most devices it may have", body = ApiError),
        (status = 413, description = "the body is too large", body = ApiError),
        (status = 415, description = "not `Content-Type: application/json`", body = ApiError),
        (status = 422, description = "JSON of the wrong shape", body = ApiError),
        (status = 503, description = "the event log cannot commit now, or the hub is joining its cluster (retry)", body = ApiError),
    ),
)]
async fn register_device(
    State(app): State<ApiState>,
    ApiPath(id): ApiPath<u64>,
    ApiQuery(query): ApiQuery<HashMap<String, String>>,
    headers: HeaderMap,
    body: Result<Json<notify::DeviceToken>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let id = DeliveryId(id);
    if let Err(r) = app.hub.check_tracking(token(&headers, &query), id) {
        return r.into_response();
    }
    let device = match body {
        Ok(Json(d)) => d,
        Err(e) => return json_rejection(e),
    };
    let device = match device.validated() {
        Ok(d) => d,
        Err(e) => return bad(e.to_string()).into_response(),
    };
    let platform = device.platform;
    {
        // Check against the registry first (the durable write is only for new devices).
        let known = app.hub.devices(id);
        if known.contains(&device) {
            return Json(DeviceRegistered {
                delivery_id: id,
                platform,
                registered: false,
            })
            .into_response();
        }
        if known.len() >= notify::registry::MAX_DEVICES_PER_DELIVERY {
            return ApiFailure::Conflict(format!(
                "delivery {id} already has {} devices registered",
                known.len()
            ))
            .into_response();
        }
    }
    match app
        .hub
        .append_side(id, vec![SideRecord::Device(device)])
        .await
    {
        Ok(()) => (
            StatusCode::CREATED,
            Json(DeviceRegistered {
                delivery_id: id,
                platform,
                registered: true,
            }),
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/tracking/{id}/proof",
    tag = "proof",
    params(
        ("id" = u64, Path, description = "delivery id"),
        ("token" = Option<String>, Query, description = "the token, when not sent as a bearer header"),
    ),
    security(("tracking_token" = []), ("token_query" = [])),
    responses(
        (status = 200, description = "the photo", content(
            (Vec<u8> = "image/jpeg"), (Vec<u8> = "image/png"), (Vec<u8> = "image/webp"), (Vec<u8> = "image/heic"),
        )),
        (status = 307, description = "in a cluster: another hub owns the delivery (`Location`)", body = ApiError),
        (status = 400, description = "a bad id in the path", body = ApiError),
        (status = 401, description = "no token", body = ApiError),
        (status = 403, description = "the token is not valid for this delivery", body = ApiError),
        (status = 404, description = "no such delivery, or no proof yet", body = ApiError),
        (status = 503, description = "the hub is joining its cluster (retry)", body = ApiError),
    ),
)]
async fn get_proof(
    State(app): State<ApiState>,
    ApiPath(id): ApiPath<u64>,
    ApiQuery(query): ApiQuery<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let id = DeliveryId(id);
    if let Err(r) = app.hub.check_tracking(token(&headers, &query), id) {
        return r.into_response();
    }
    let store = app.hub.store().clone();
    let record = match blocking(move || store.proof(id)).await {
        Ok(Some(r)) => r,
        Ok(None) => {
            return ApiFailure::NotFound(format!("delivery {id} has no proof of delivery"))
                .into_response()
        }
        Err(r) => return r.into_response(),
    };
    let path = app.hub.proofs_dir().join(record.file_name());
    match tokio::fs::read(&path).await {
        Ok(bytes) => (
            [
                (header::CONTENT_TYPE, record.image_type.content_type()),
                (header::CACHE_CONTROL, "private, max-age=86400"),
            ],
            bytes,
        )
            .into_response(),
        Err(e) => internal(format!("reading the proof image: {e}")),
    }
}
