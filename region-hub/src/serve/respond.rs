//! How the HTTP API answers: JSON `ApiError` bodies for every failure (the handlers' own, axum's
//! extractor rejections, unknown routes and wrong methods), and where a request's token is read
//! from.

use crate::hub::{ApiFailure, AuthRefusal};
use axum::extract::rejection::JsonRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{FromRequestParts, Path, Query};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use protocol::api::ApiError;
use serde::de::DeserializeOwned;
use std::collections::HashMap;

/// A JSON [`ApiError`] with `status`.
pub(crate) fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(ApiError {
            error: code.to_owned(),
            message: message.into(),
        }),
    )
        .into_response()
}

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            ApiFailure::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiFailure::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiFailure::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiFailure::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiFailure::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        error(status, code, self.to_string())
    }
}

impl IntoResponse for AuthRefusal {
    fn into_response(self) -> Response {
        match &self {
            AuthRefusal::Missing => {
                let mut r = error(StatusCode::UNAUTHORIZED, "unauthorized", self.to_string());
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer"),
                );
                r
            }
            AuthRefusal::Invalid(_) => error(StatusCode::FORBIDDEN, "forbidden", self.to_string()),
        }
    }
}

/// Token from `Authorization: Bearer ...`, else from `?token=`.
pub(crate) fn token<'a>(
    headers: &'a HeaderMap,
    query: &'a HashMap<String, String>,
) -> Option<&'a str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .or_else(|| query.get("token").map(String::as_str))
}

/// `axum::extract::Path` whose rejection (a segment that does not parse, e.g. `abc` for a
/// delivery id) is a JSON [`ApiError`] (400) instead of axum's plain text.
#[derive(Debug)]
pub(crate) struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(v)) => Ok(Self(v)),
            Err(e) => Err(error(e.status(), "bad_request", e.body_text())),
        }
    }
}

/// `axum::extract::Query` whose rejection is a JSON [`ApiError`] (400).
#[derive(Debug)]
pub(crate) struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(v)) => Ok(Self(v)),
            Err(e) => Err(error(e.status(), "bad_request", e.body_text())),
        }
    }
}

/// A JSON body that did not parse, as an [`ApiError`] with axum's status: 400 (not JSON),
/// 415 (no `Content-Type: application/json`), 422 (JSON of the wrong shape) or 413.
pub(crate) fn json_rejection(e: JsonRejection) -> Response {
    let code = match e.status() {
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::UNPROCESSABLE_ENTITY => "unprocessable_entity",
        _ => "bad_request",
    };
    error(e.status(), code, e.body_text())
}

/// A WebSocket route asked without a valid upgrade: 400 (headers), 405 (not GET) or 426.
pub(crate) fn upgrade_rejection(e: WebSocketUpgradeRejection) -> Response {
    let code = match e.status() {
        StatusCode::UPGRADE_REQUIRED => "upgrade_required",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        _ => "bad_request",
    };
    error(e.status(), code, e.body_text())
}

/// The answer for a path no route matches: 404 `not_found`.
pub(crate) async fn no_route(method: Method, uri: Uri) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route for {method} {}", uri.path()),
    )
}

/// The answer for a known path asked with a method it does not take: 405
/// `method_not_allowed` (axum adds the `Allow` header).
pub(crate) async fn wrong_method(method: Method, uri: Uri) -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} does not take {method}", uri.path()),
    )
}
