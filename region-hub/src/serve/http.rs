//! The hub's HTTPS API: the order-service stand-in, the consumer WebSocket and REST status,
//! and the WebTransport certificate info for browsers.

use crate::hub::{ApiFailure, AuthRefusal, ConsumerCursor, Hub};
use crate::serve::respond::{error, token};
use crate::tracking::fanout::{Encoded, FrameKind};
use axum::extract::rejection::JsonRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::SinkExt;
use protocol::api::{ChangeStatus, CreateDelivery};
use protocol::DeliveryId;
use std::collections::HashMap;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, Instrument};

/// Label used in metrics.
pub const WEBSOCKET: &str = crate::tracking::fanout::WEBSOCKET;

/// Read buffer, write batching threshold and largest inbound message of a consumer WebSocket.
const CONSUMER_WS_BUFFER: usize = 4096;

#[derive(Clone)]
struct AppState {
    hub: Arc<Hub>,
    shutdown: CancellationToken,
}

/// The API router.
pub(crate) fn router(hub: Arc<Hub>, shutdown: CancellationToken) -> Router {
    let router = Router::new()
        .route("/api/v1/deliveries", post(create_delivery))
        .route("/api/v1/deliveries/{id}/status", post(change_status))
        .route("/api/v1/tracking/{id}/status", get(tracking_status))
        .route("/api/v1/tracking/{id}/connect", get(connect))
        .route("/api/v1/webtransport/info", get(webtransport_info))
        .with_state(AppState {
            hub: hub.clone(),
            shutdown: shutdown.clone(),
        })
        .merge(crate::serve::api::router(hub.clone(), shutdown));
    // A single hub owns everything: no placement layer at all.
    if hub.cluster().is_some() {
        router.layer(axum::middleware::from_fn_with_state(hub, placement))
    } else {
        router
    }
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
    let owner = hub
        .cluster()
        .zip(delivery_in_path(req.uri().path()))
        .and_then(|(c, id)| c.other_owner(id));
    let upgrade = req.headers().contains_key(header::UPGRADE);
    if owner.is_none() {
        if let Some(id) = delivery_in_path(req.uri().path()) {
            if !crate::replication::replica::ensure_loaded(&hub, id).await {
                let mut r = error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "joining",
                    "this hub is joining the cluster and has not claimed its deliveries yet; retry",
                );
                r.headers_mut()
                    .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
                return r;
            }
        }
    }
    match owner {
        Some(owner) if !upgrade => {
            let pq = req
                .uri()
                .path_and_query()
                .map_or(req.uri().path(), |p| p.as_str());
            redirect_to(&format!("https://{}{pq}", owner.https_addr))
        }
        _ => next.run(req).await,
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

/// A request body that did not parse, with axum's status (400, 415 or 422).
struct BodyError(StatusCode, String);

impl IntoResponse for BodyError {
    fn into_response(self) -> Response {
        error(self.0, "bad_request", self.1)
    }
}

fn json_body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, BodyError> {
    body.map(|Json(b)| b)
        .map_err(|e| BodyError(e.status(), e.body_text()))
}

async fn create_delivery(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<CreateDelivery>, JsonRejection>,
) -> Response {
    if let Err(r) = app.hub.check_operator(token(&headers, &HashMap::new())) {
        return r.into_response();
    }
    let mut req = match json_body(body) {
        Ok(r) => r,
        Err(r) => return r.into_response(),
    };
    if let Some(c) = app.hub.cluster() {
        match req.delivery_id {
            // The caller chose the id: its owner creates it.
            Some(id) => {
                if let Some(owner) = c.other_owner(id) {
                    return redirect_to(&format!("https://{}/api/v1/deliveries", owner.https_addr));
                }
            }
            // Ours to choose: a random id (below 2^53, exact in JavaScript) that we own.
            None => {
                let any = DeliveryId(rand::random::<u64>() >> 11 | 1);
                let id = (0..10_000)
                    .map(|_| DeliveryId(rand::random::<u64>() >> 11 | 1))
                    .find(|id| c.is_mine(*id));
                match id {
                    Some(id) => req.delivery_id = Some(id),
                    // We own nothing (draining): the owner of a random id creates it.
                    None => {
                        if let Some(owner) = c.other_owner(any) {
                            return redirect_to(&format!(
                                "https://{}/api/v1/deliveries",
                                owner.https_addr
                            ));
                        }
                    }
                }
            }
        }
    }
    match app.hub.create_delivery(&req).await {
        Ok(created) => (StatusCode::CREATED, Json(created)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn change_status(
    State(app): State<AppState>,
    Path(id): Path<u64>,
    headers: HeaderMap,
    body: Result<Json<ChangeStatus>, JsonRejection>,
) -> Response {
    if let Err(r) = app.hub.check_operator(token(&headers, &HashMap::new())) {
        return r.into_response();
    }
    let req = match json_body(body) {
        Ok(r) => r,
        Err(r) => return r.into_response(),
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

async fn tracking_status(
    State(app): State<AppState>,
    Path(id): Path<u64>,
    Query(query): Query<HashMap<String, String>>,
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

async fn connect(
    State(app): State<AppState>,
    Path(id): Path<u64>,
    Query(query): Query<HashMap<String, String>>,
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
        Err(e) => return e.into_response(),
    };
    // Browsers' WebSocket does not follow HTTP redirects: the redirect goes in-band.
    if let Some(owner) = app.hub.cluster().and_then(|c| c.other_owner(id)) {
        let url = crate::replication::replica::consumer_redirect_url(&owner, id, false);
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

async fn webtransport_info(State(app): State<AppState>) -> Response {
    let (port, cert_sha256) = app.hub.webtransport();
    Json(serde_json::json!({
        "port": port,
        "cert_sha256_b64": certs::sha256_base64(&cert_sha256),
    }))
    .into_response()
}
