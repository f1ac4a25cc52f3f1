//! Operator endpoints of webhooks: list, create and delete subscriptions, list dead letters and
//! put them back into the outbox. The secret is write-only.

use crate::durable::outbox::{DeadLetter, SubscribeError};
use crate::hub::{ApiFailure, AuthRefusal};
use crate::serve::api::ApiState;
use crate::serve::http::AppState;
use crate::serve::respond::{error, json_rejection, token, ApiPath, ApiQuery};
use crate::webhooks::subscription::{EventKind, Subscription, SubscriptionView};
use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use protocol::api::ApiError;
use protocol::DeliveryId;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Default and largest number of dead letters listed.
const DEAD_DEFAULT: usize = 200;
const DEAD_MAX: usize = 5_000;

/// The routes, merged into the hub's (see `http::routes`).
pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_webhooks, create_webhook))
        .routes(routes!(delete_webhook))
        .routes(routes!(list_dead_letters))
        .routes(routes!(redrive))
}

/// Runs a blocking store call off the async threads.
async fn blocking<T: Send + 'static, E: std::fmt::Display + Send + 'static>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<Result<T, E>, ApiFailure> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiFailure::Internal(e.to_string()))
}

/// The subscriptions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WebhookList {
    pub webhooks: Vec<SubscriptionView>,
}

/// A new subscription.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    /// Name (1-64 letters, digits, `-`, `_`); generated when absent.
    #[serde(default)]
    pub id: Option<String>,
    /// Where events are POSTed.
    pub url: String,
    /// HMAC-SHA256 key of `Trackline-Signature` (16-1024 bytes); never returned.
    pub secret: String,
    /// `status`, `anomaly`, `proof`; all when empty or absent.
    #[serde(default)]
    #[schema(value_type = Vec<String>)]
    pub kinds: Vec<EventKind>,
    /// Only these deliveries; all when empty or absent.
    #[serde(default)]
    pub deliveries: Vec<u64>,
    /// Only status events from these sources (`api`, `geofence`, `driver`); all when empty.
    #[serde(default)]
    pub sources: Vec<String>,
}

/// How many dead letters went back into the outbox.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Redriven {
    pub requeued: u64,
}

/// The dead letters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeadLetterList {
    /// Oldest first, by subscription.
    pub dead_letters: Vec<DeadLetter>,
}

fn operator(app: &ApiState, headers: &HeaderMap) -> Result<(), AuthRefusal> {
    app.hub.check_operator(token(headers, &HashMap::new()))
}

#[utoipa::path(
    get,
    path = "/api/v1/webhooks",
    tag = "webhooks",
    security(("operator_token" = [])),
    responses(
        (status = 200, description = "every subscription (without secrets)", body = WebhookList),
        (status = 401, description = "no token", body = ApiError),
        (status = 403, description = "the token is not a valid operator token", body = ApiError),
    ),
)]
async fn list_webhooks(State(app): State<ApiState>, headers: HeaderMap) -> Response {
    if let Err(r) = operator(&app, &headers) {
        return r.into_response();
    }
    let store = app.hub.store().clone();
    match blocking(move || store.webhook_subscriptions()).await {
        Ok(Ok(subs)) => Json(WebhookList {
            webhooks: subs.iter().map(SubscriptionView::from).collect(),
        })
        .into_response(),
        Ok(Err(e)) => ApiFailure::Internal(e.to_string()).into_response(),
        Err(r) => r.into_response(),
    }
}

#[utoipa::path(
    post,
    path = "/api/v1/webhooks",
    tag = "webhooks",
    request_body = CreateWebhook,
    security(("operator_token" = [])),
    responses(
        (status = 201, description = "created; it gets the events committed from now on", body = SubscriptionView),
        (status = 400, description = "a bad id, URL or secret, or a body that is not JSON", body = ApiError),
        (status = 401, description = "no token", body = ApiError),
        (status = 403, description = "the token is not a valid operator token", body = ApiError),
        (status = 409, description = "a subscription with this id exists", body = ApiError),
        (status = 413, description = "the body is too large", body = ApiError),
        (status = 415, description = "not `Content-Type: application/json`", body = ApiError),
        (status = 422, description = "JSON of the wrong shape", body = ApiError),
    ),
)]
async fn create_webhook(
    State(app): State<ApiState>,
    headers: HeaderMap,
    body: Result<Json<CreateWebhook>, JsonRejection>,
) -> Response {
    if let Err(r) = operator(&app, &headers) {
        return r.into_response();
    }
    let req = match body {
        Ok(Json(r)) => r,
        Err(e) => return json_rejection(e),
    };
    let sub = Subscription {
        id: req
            .id
            .unwrap_or_else(|| format!("wh-{:016x}", rand::random::<u64>())),
        url: req.url,
        secret: req.secret,
        kinds: req.kinds,
        deliveries: req.deliveries.into_iter().map(DeliveryId).collect(),
        sources: req.sources,
        from_config: false,
    };
    if let Err(m) = sub.validate() {
        return ApiFailure::BadRequest(m).into_response();
    }
    let store = app.hub.store().clone();
    let stored = sub.clone();
    match blocking(move || store.add_webhook(&stored)).await {
        Ok(Ok(())) => {
            tracing::info!(webhook = %sub.id, url = %sub.url, "webhook subscription created");
            (StatusCode::CREATED, Json(SubscriptionView::from(&sub))).into_response()
        }
        Ok(Err(SubscribeError::Exists(id))) => {
            ApiFailure::Conflict(format!("a webhook named {id:?} exists already")).into_response()
        }
        Ok(Err(e)) => ApiFailure::Internal(e.to_string()).into_response(),
        Err(r) => r.into_response(),
    }
}

#[utoipa::path(
    delete,
    path = "/api/v1/webhooks/{id}",
    tag = "webhooks",
    params(("id" = String, Path, description = "subscription id")),
    security(("operator_token" = [])),
    responses(
        (status = 204, description = "deleted, with its pending rows and dead letters"),
        (status = 401, description = "no token", body = ApiError),
        (status = 403, description = "the token is not a valid operator token", body = ApiError),
        (status = 404, description = "no such subscription", body = ApiError),
    ),
)]
async fn delete_webhook(
    State(app): State<ApiState>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = operator(&app, &headers) {
        return r.into_response();
    }
    let store = app.hub.store().clone();
    let name = id.clone();
    match blocking(move || store.remove_webhook(&name)).await {
        Ok(Ok(true)) => {
            tracing::info!(webhook = %id, "webhook subscription deleted");
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(Ok(false)) => ApiFailure::NotFound(format!("no webhook named {id:?}")).into_response(),
        Ok(Err(e)) => ApiFailure::Internal(e.to_string()).into_response(),
        Err(r) => r.into_response(),
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/webhooks/dead-letters",
    tag = "webhooks",
    params(
        ("subscription" = Option<String>, Query, description = "only this subscription's"),
        ("limit" = Option<u64>, Query, description = "how many (default 200, at most 5000)"),
    ),
    security(("operator_token" = [])),
    responses(
        (status = 200, description = "webhooks given up on, oldest first", body = DeadLetterList),
        (status = 400, description = "a bad `limit`", body = ApiError),
        (status = 401, description = "no token", body = ApiError),
        (status = 403, description = "the token is not a valid operator token", body = ApiError),
    ),
)]
async fn list_dead_letters(
    State(app): State<ApiState>,
    ApiQuery(query): ApiQuery<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = operator(&app, &headers) {
        return r.into_response();
    }
    let limit = match query.get("limit").map(|v| v.parse::<usize>()) {
        None => DEAD_DEFAULT,
        Some(Ok(n)) => n.clamp(1, DEAD_MAX),
        Some(Err(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "limit must be a number",
            )
        }
    };
    let sub = query.get("subscription").cloned();
    let store = app.hub.store().clone();
    match blocking(move || store.dead_letters(sub.as_deref(), limit)).await {
        Ok(Ok(dead_letters)) => Json(DeadLetterList { dead_letters }).into_response(),
        Ok(Err(e)) => ApiFailure::Internal(e.to_string()).into_response(),
        Err(r) => r.into_response(),
    }
}

#[utoipa::path(
    post,
    path = "/api/v1/webhooks/{id}/redrive",
    tag = "webhooks",
    description = "Puts the subscription's dead letters back into the outbox (after the rows \
        already pending; their dead-letter clock starts again).",
    params(("id" = String, Path, description = "subscription id")),
    security(("operator_token" = [])),
    responses(
        (status = 200, description = "how many went back", body = Redriven),
        (status = 401, description = "no token", body = ApiError),
        (status = 403, description = "the token is not a valid operator token", body = ApiError),
        (status = 404, description = "no such subscription", body = ApiError),
    ),
)]
async fn redrive(
    State(app): State<ApiState>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = operator(&app, &headers) {
        return r.into_response();
    }
    let store = app.hub.store().clone();
    let name = id.clone();
    let result = blocking(move || {
        if !store.webhook_subscriptions()?.iter().any(|s| s.id == name) {
            return Ok(None);
        }
        store
            .redrive_dead_letters(&name, nodekit::unix_ms())
            .map(Some)
    })
    .await;
    match result {
        Ok(Ok(Some(n))) => Json(Redriven { requeued: n as u64 }).into_response(),
        Ok(Ok(None)) => ApiFailure::NotFound(format!("no webhook named {id:?}")).into_response(),
        Ok(Err(e)) => ApiFailure::Internal(e.to_string()).into_response(),
        Err(r) => r.into_response(),
    }
}
