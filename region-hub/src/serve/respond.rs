//! How the HTTP API answers: JSON `ApiError` bodies for every failure, and where a request's
//! token is read from.

use crate::hub::{ApiFailure, AuthRefusal};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use protocol::api::ApiError;
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
