//! The driver REST API over HTTPS on TCP, for networks that block UDP.

use crate::ingest::{
    handle_location_batch, IngestContext, JsonResponse, LOCATIONS_PATH, MAX_BODY_BYTES,
};
use crate::metrics::Transport;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

/// `POST /api/v1/tracking/locations` and `GET /healthz`.
pub fn router(ctx: IngestContext) -> Router {
    Router::new()
        .route(LOCATIONS_PATH, post(post_locations))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(ctx)
}

async fn post_locations(
    State(ctx): State<IngestContext>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let deliveries = headers
        .get(protocol::api::DELIVERIES_HEADER)
        .and_then(|v| v.to_str().ok());
    // A body that fails to arrive in full is either over the limit or from a client that went
    // away; only the first can still read the answer.
    let resp = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(bytes) => {
            handle_location_batch(
                &ctx,
                Transport::Https,
                authorization,
                deliveries,
                &bytes,
                nodekit::unix_ms(),
            )
            .await
        }
        Err(_) => JsonResponse::too_large(),
    };
    json_response(resp)
}

fn json_response(resp: JsonResponse) -> Response {
    let mut out = (
        resp.status,
        [(header::CONTENT_TYPE, "application/json")],
        resp.body,
    )
        .into_response();
    if let Some(s) = resp.retry_after_s {
        out.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from(s));
    }
    out
}
