//! `POST /api/v1/tracking/locations`: the one handler behind both HTTP/3 and HTTPS.

use crate::auth::{reject_label, AuthCache};
use crate::drain::DrainState;
use crate::filter::{check_json_fix, JsonReject};
use crate::metrics::{EdgeMetrics, Transport};
use crate::pipeline::Ingest;
use http::StatusCode;
use protocol::api::{parse_deliveries_header, ApiError, JsonFix};
use protocol::wire::MAX_FIXES_PER_DATAGRAM;
use std::sync::Arc;

/// Path of the location upload.
pub const LOCATIONS_PATH: &str = "/api/v1/tracking/locations";
/// Largest request body accepted (a larger one gets 413).
pub const MAX_BODY_BYTES: usize = 256 * 1024;
/// Most fixes one request may carry (a backlog after a long gap, at 1 Hz: ~17 minutes).
pub const MAX_FIXES_PER_REQUEST: usize = MAX_FIXES_PER_DATAGRAM * 20;

/// What both HTTP front ends need to serve the upload.
#[derive(Clone, Debug)]
pub struct IngestContext {
    pub auth: Arc<AuthCache>,
    pub pipeline: Ingest,
    pub metrics: Arc<EdgeMetrics>,
    pub drain: Arc<DrainState>,
    /// `Retry-After` of the 503 answers while draining, seconds.
    pub retry_after_s: u64,
}

/// A JSON response: status and body bytes.
#[derive(Debug)]
pub struct JsonResponse {
    pub status: StatusCode,
    pub body: Vec<u8>,
    /// `Retry-After` header value in seconds, if any.
    pub retry_after_s: Option<u64>,
}

impl JsonResponse {
    fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Self {
        Self {
            status,
            body: serde_json::to_vec(value).unwrap_or_default(),
            retry_after_s: None,
        }
    }

    /// The answer while the edge drains: 503, `Retry-After`, and where to go instead.
    pub fn draining(peer: Option<String>, retry_after_s: u64) -> Self {
        let message = match peer {
            Some(peer) => format!("edge draining; retry at {peer}"),
            None => "edge draining; retry later".to_owned(),
        };
        Self {
            retry_after_s: Some(retry_after_s),
            ..Self::error(StatusCode::SERVICE_UNAVAILABLE, "draining", message)
        }
    }

    /// An [`ApiError`] body.
    pub fn error(status: StatusCode, error: &str, message: impl Into<String>) -> Self {
        Self::json(
            status,
            &ApiError {
                error: error.to_owned(),
                message: message.into(),
            },
        )
    }

    /// The answer to a body over [`MAX_BODY_BYTES`].
    pub fn too_large() -> Self {
        Self::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body exceeds {MAX_BODY_BYTES} bytes"),
        )
    }
}

/// Extracts the token from an `Authorization: Bearer <token>` value.
pub fn bearer_token(authorization: Option<&str>) -> Option<&str> {
    let v = authorization?.trim();
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Authenticates, parses and ingests one location batch; `deliveries` is the
/// `x-trackline-deliveries` header, `now_ms` the edge's receive time.
pub async fn handle_location_batch(
    ctx: &IngestContext,
    transport: Transport,
    authorization: Option<&str>,
    deliveries: Option<&str>,
    body: &[u8],
    now_ms: u64,
) -> JsonResponse {
    if ctx.drain.is_draining() {
        return JsonResponse::draining(ctx.drain.any_target(), ctx.retry_after_s);
    }
    let Some(token) = bearer_token(authorization) else {
        ctx.metrics.sessions_rejected("missing_token").inc();
        return JsonResponse::error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing `Authorization: Bearer <driver token>` header",
        );
    };
    let auth = match ctx.auth.verify_driver(token, now_ms / 1000) {
        Ok(a) => a,
        Err(e) => {
            ctx.metrics.sessions_rejected(reject_label(&e)).inc();
            return JsonResponse::error(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string());
        }
    };
    if body.len() > MAX_BODY_BYTES {
        return JsonResponse::too_large();
    }
    let deliveries = match deliveries.map(parse_deliveries_header).transpose() {
        Ok(d) => d,
        Err(message) => {
            return JsonResponse::error(StatusCode::BAD_REQUEST, "bad_request", message);
        }
    };
    let fixes: Vec<JsonFix> = match serde_json::from_slice(body) {
        Ok(f) => f,
        Err(e) => {
            return JsonResponse::error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("body must be a JSON array of fixes: {e}"),
            )
        }
    };
    if fixes.len() > MAX_FIXES_PER_REQUEST {
        return JsonResponse::error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!(
                "{} fixes exceed the limit of {MAX_FIXES_PER_REQUEST} per request",
                fixes.len()
            ),
        );
    }
    // Values the conversion would hide are refused first, with their own reason.
    let mut impossible: Vec<(JsonReject, u32)> = Vec::new();
    let fixes: Vec<_> = fixes
        .iter()
        .filter_map(|f| match check_json_fix(f) {
            Ok(()) => Some(f.to_fix()),
            Err(reason) => {
                match impossible.iter_mut().find(|(r, _)| *r == reason) {
                    Some((_, n)) => *n += 1,
                    None => impossible.push((reason, 1)),
                }
                None
            }
        })
        .collect();
    let mut result = ctx.pipeline.submit_and_answer(
        auth.driver,
        transport,
        &fixes,
        deliveries.as_deref(),
        now_ms,
    );
    for (reason, n) in impossible {
        ctx.metrics.received(transport).inc_by(u64::from(n));
        ctx.metrics.rejected_json(reason).inc_by(u64::from(n));
        *result
            .rejected
            .entry(reason.as_str().to_owned())
            .or_insert(0) += n;
    }
    JsonResponse::json(StatusCode::OK, &result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_tokens_case_insensitively() {
        assert_eq!(bearer_token(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer_token(Some("bearer  abc ")), Some("abc"));
        assert_eq!(bearer_token(Some("Basic abc")), None);
        assert_eq!(bearer_token(Some("Bearer ")), None);
        assert_eq!(bearer_token(None), None);
    }
}
