//! The driver REST API over HTTP/3 (h3 + h3-quinn) on connections that negotiated ALPN `h3`.

use crate::ingest::{
    handle_location_batch, IngestContext, JsonResponse, LOCATIONS_PATH, MAX_BODY_BYTES,
};
use crate::metrics::Transport;
use bytes::{Buf, Bytes, BytesMut};
use http::{header, Method, Response, StatusCode};
use tokio_util::sync::CancellationToken;
use tracing::{debug, Instrument};

/// True when HTTP/3 answers `method path` with a handler (the rest get 404 or 405); the
/// description test checks it against the HTTPS routes.
#[cfg(test)]
pub(crate) fn serves(method: &Method, path: &str) -> bool {
    matches!(
        (method, path),
        (&Method::POST, LOCATIONS_PATH) | (&Method::GET, "/healthz" | OPENAPI_PATH)
    )
}

/// Where the description is served.
const OPENAPI_PATH: &str = "/api/v1/openapi.json";

type H3Stream = h3::server::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;

/// Serves HTTP/3 requests on one QUIC connection until it closes or `shutdown` fires.
pub async fn serve_connection(
    conn: quinn::Connection,
    ctx: IngestContext,
    shutdown: CancellationToken,
) {
    let mut h3_conn = match h3::server::builder()
        .build(h3_quinn::Connection::new(conn))
        .await
    {
        Ok(c) => c,
        Err(e) => {
            debug!(error = %e, "http/3 setup failed");
            return;
        }
    };
    loop {
        let resolver = tokio::select! {
            _ = shutdown.cancelled() => {
                let _ = h3_conn.shutdown(0).await;
                break;
            }
            r = h3_conn.accept() => match r {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) => {
                    debug!(error = %e, "http/3 connection ended");
                    break;
                }
            },
        };
        let ctx = ctx.clone();
        tokio::spawn(
            async move {
                match resolver.resolve_request().await {
                    Ok((req, stream)) => {
                        if let Err(e) = handle_request(req, stream, &ctx).await {
                            debug!(error = %e, "http/3 request failed");
                        }
                    }
                    Err(e) => debug!(error = %e, "http/3 request headers failed"),
                }
            }
            .instrument(tracing::debug_span!("h3_request")),
        );
    }
}

async fn handle_request(
    req: http::Request<()>,
    mut stream: H3Stream,
    ctx: &IngestContext,
) -> Result<(), h3::error::StreamError> {
    let resp = match (req.method(), req.uri().path()) {
        (&Method::POST, LOCATIONS_PATH) => {
            let authorization = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            let deliveries = req
                .headers()
                .get(protocol::api::DELIVERIES_HEADER)
                .and_then(|v| v.to_str().ok());
            match read_body(&mut stream).await? {
                Some(body) => {
                    handle_location_batch(
                        ctx,
                        Transport::H3,
                        authorization,
                        deliveries,
                        &body,
                        nodekit::unix_ms(),
                    )
                    .await
                }
                None => JsonResponse::too_large(),
            }
        }
        (&Method::GET, "/healthz") => JsonResponse {
            status: StatusCode::OK,
            body: b"\"ok\"".to_vec(),
            retry_after_s: None,
        },
        (&Method::GET, OPENAPI_PATH) => JsonResponse {
            status: StatusCode::OK,
            body: crate::https::OPENAPI_JSON.as_bytes().to_vec(),
            retry_after_s: None,
        },
        (_, LOCATIONS_PATH) => JsonResponse::error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "use POST",
        ),
        (_, "/healthz" | OPENAPI_PATH) => JsonResponse::error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "use GET",
        ),
        (_, path) => JsonResponse::error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no route for {path}"),
        ),
    };
    let mut head = Response::builder()
        .status(resp.status)
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(s) = resp.retry_after_s {
        head = head.header(header::RETRY_AFTER, s);
    }
    let head = head.body(()).unwrap_or_default();
    stream.send_response(head).await?;
    stream.send_data(Bytes::from(resp.body)).await?;
    stream.finish().await
}

/// Reads the request body; `None` when it exceeds [`MAX_BODY_BYTES`].
async fn read_body(stream: &mut H3Stream) -> Result<Option<Bytes>, h3::error::StreamError> {
    let mut body = BytesMut::new();
    while let Some(mut chunk) = stream.recv_data().await? {
        if body.len() + chunk.remaining() > MAX_BODY_BYTES {
            return Ok(None);
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            body.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    Ok(Some(body.freeze()))
}
