//! The driver REST API over HTTPS on TCP, for networks that block UDP, and the edge's OpenAPI
//! description (built from the same handlers as the router; HTTP/3 serves the same paths).

use crate::ingest::{handle_location_batch, IngestContext, JsonResponse, MAX_BODY_BYTES};
use crate::metrics::Transport;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use protocol::api::{ApiError, IngestResult, JsonFix};
use std::sync::LazyLock;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Name of the driver token's security scheme in the description.
const DRIVER: &str = "driver_token";

/// The top of the OpenAPI description; the paths come from [`routes`].
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Trackline edge node",
        description = "The driver API of an edge PoP over HTTPS (TCP) and HTTP/3 (QUIC, ALPN \
            `h3`, same paths): the fallback location upload for drivers whose network blocks \
            the QUIC datagram session. Every error is an `ApiError` JSON body.",
    ),
    modifiers(&SecuritySchemes),
    components(schemas(ApiError))
)]
struct EdgeApi;

struct SecuritySchemes;

impl utoipa::Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
            DRIVER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("trackline")
                    .description(Some(
                        "driver token signed by the hub's key (`region-hub mint-token --driver N`)",
                    ))
                    .build(),
            ),
        );
    }
}

/// Every route with its description, without state: the one list the router and the
/// description are made from.
pub(crate) fn routes() -> OpenApiRouter<IngestContext> {
    OpenApiRouter::with_openapi(EdgeApi::openapi())
        .routes(routes!(post_locations))
        .routes(routes!(healthz))
        .routes(routes!(openapi_json))
}

/// The OpenAPI description of the edge's HTTP API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes().into_openapi()
}

/// The description as served (built once).
pub(crate) static OPENAPI_JSON: LazyLock<String> = LazyLock::new(|| {
    openapi()
        .to_json()
        .unwrap_or_else(|e| format!("{{\"error\":\"internal\",\"message\":\"{e}\"}}"))
});

/// The router: [`routes`] with JSON errors for unknown paths and wrong methods.
pub fn router(ctx: IngestContext) -> Router {
    let (router, _) = routes().split_for_parts();
    router
        .method_not_allowed_fallback(wrong_method)
        .fallback(no_route)
        .with_state(ctx)
}

#[utoipa::path(
    post,
    path = "/api/v1/tracking/locations",
    tag = "driver",
    description = "A batch of the driver's fixes (the HTTPS/HTTP/3 twin of the QUIC datagram \
        session). Each fix is filtered like a datagram fix; refused ones are counted by reason.",
    params((
        "x-trackline-deliveries" = Option<String>, Header,
        description = "comma-separated ids of the deliveries the driver is on duty for (at most 8)",
    )),
    request_body(content = Vec<JsonFix>, content_type = "application/json"),
    security(("driver_token" = [])),
    responses(
        (status = 200, description = "how many fixes were taken, and why the others were not", body = IngestResult),
        (status = 400, description = "the body is not a JSON array of fixes, too many fixes, or a bad deliveries header", body = ApiError),
        (status = 401, description = "no token, or a token that is not a valid driver token", body = ApiError),
        (status = 413, description = "the body is over 256 KiB", body = ApiError),
        (status = 503, description = "the edge is draining (`Retry-After`; the message names another edge)", body = ApiError),
    ),
)]
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

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "meta",
    responses((status = 200, description = "the edge serves", content_type = "text/plain", body = String)),
)]
async fn healthz() -> &'static str {
    "ok"
}

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

async fn no_route(method: Method, uri: Uri) -> Response {
    json_response(JsonResponse::error(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route for {method} {}", uri.path()),
    ))
}

async fn wrong_method(method: Method, uri: Uri) -> Response {
    json_response(JsonResponse::error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} does not take {method}", uri.path()),
    ))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::LOCATIONS_PATH;
    use std::collections::BTreeSet;

    /// The paths an axum router registered, from its `Debug` output (axum lists them no other
    /// way): its path router's `{RouteId(1): "/a", ..}`, before the fallback router.
    fn registered_paths<S>(router: &Router<S>) -> BTreeSet<String> {
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

    #[test]
    fn every_registered_route_is_described_and_only_those() {
        let (router, doc) = routes().split_for_parts();
        let described: BTreeSet<String> = doc.paths.paths.keys().cloned().collect();
        let registered = registered_paths(&router);
        assert!(registered.contains(LOCATIONS_PATH), "{registered:?}");
        assert_eq!(registered, described);
        // A route added beside the description is caught.
        let router = router.route("/undescribed", axum::routing::get(|| async { "" }));
        let extra: Vec<String> = registered_paths(&router)
            .difference(&described)
            .cloned()
            .collect();
        assert_eq!(extra, vec!["/undescribed".to_owned()]);
    }

    #[test]
    fn the_h3_api_serves_the_described_paths() {
        let doc = openapi();
        for (path, item) in &doc.paths.paths {
            let method = if item.post.is_some() {
                Method::POST
            } else {
                Method::GET
            };
            assert!(
                crate::h3api::serves(&method, path),
                "HTTP/3 does not serve {method} {path}"
            );
        }
        assert!(!crate::h3api::serves(&Method::GET, "/nothing"));
    }

    #[test]
    fn errors_in_the_description_are_api_errors() {
        let json = serde_json::to_value(openapi()).expect("json");
        let op = &json["paths"][LOCATIONS_PATH]["post"];
        for status in ["400", "401", "413", "503"] {
            assert_eq!(
                op["responses"][status]["content"]["application/json"]["schema"]["$ref"],
                "#/components/schemas/ApiError",
                "{status}"
            );
        }
        assert!(json["components"]["securitySchemes"][DRIVER].is_object());
    }
}
