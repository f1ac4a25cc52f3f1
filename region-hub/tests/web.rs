//! The hub's browser routes over a real plain-HTTP listener: pages and assets, the city map,
//! and the operator endpoints with their token check. (The pages themselves run in Chromium
//! in `tests/browser/`.)

use protocol::api::{ChangeStatus, CreateDelivery, DeliveryCreated};
use protocol::geo::LatLng;
use protocol::status::DeliveryStatus;
use protocol::token::Subject;
use protocol::DriverId;
use region_hub::{HubConfig, HubHandle};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A hub on port 0 with a plain-HTTP listener, in a temp dir removed on drop.
struct TestHub {
    hub: Option<HubHandle>,
    dir: PathBuf,
    http: reqwest::Client,
}

impl TestHub {
    async fn start(name: &str) -> Self {
        certs::install_default_crypto_provider();
        let dir =
            std::env::temp_dir().join(format!("trackline-web-it-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let pki_dir = dir.join("pki");
        let pki = certs::DevPki::load_or_create(&pki_dir).expect("dev pki");
        let sans = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        certs::NodeCert::load_or_issue(&pki, &pki_dir, "hub", &sans, certs::NodeRole::Hub)
            .expect("issue");
        let (cert, key) = certs::NodeCert::paths(&pki_dir, "hub");
        let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let config = HubConfig {
            link_listen: any,
            webtransport_listen: any,
            https_listen: any,
            http_listen: Some(any),
            admin_listen: any,
            data_dir: dir.join("data"),
            tls: nodekit::TlsFiles {
                cert,
                key,
                ca: pki_dir.join("ca.pem"),
            },
            token_signing_key: dir.join("data/token.pk8"),
            ..HubConfig::default()
        };
        let hub = region_hub::spawn(config).await.expect("hub starts");
        let tls = certs::client_config_with_roots(
            vec![pki.ca_cert_der()],
            &[b"http/1.1"],
            certs::TlsFor::Tcp,
        )
        .expect("tls");
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(Duration::from_secs(20))
            .build()
            .expect("client");
        Self {
            hub: Some(hub),
            dir,
            http,
        }
    }

    fn hub(&self) -> &HubHandle {
        self.hub.as_ref().expect("running")
    }

    fn url(&self, path: &str) -> String {
        let addr = self.hub().http_addr().expect("http listener");
        format!("http://{addr}{path}")
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(self.url(path)).send().await.expect("GET")
    }

    async fn stop(mut self) {
        if let Some(hub) = self.hub.take() {
            hub.shutdown();
            hub.join().await;
        }
    }
}

impl Drop for TestHub {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn header<'a>(r: &'a reqwest::Response, name: &str) -> &'a str {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test]
async fn pages_and_assets_are_served_uncached_with_their_content_types() {
    let t = TestHub::start("assets").await;
    let r = t.get("/track/42?token=abc").await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), "text/html; charset=utf-8");
    assert_eq!(header(&r, "cache-control"), "no-cache");
    assert!(r.text().await.expect("body").contains("/web/track.js"));

    let r = t.get("/ops").await;
    assert_eq!(r.status(), 200);
    assert!(r.text().await.expect("body").contains("/web/ops.js"));

    for (file, kind) in [
        ("track.js", "text/javascript"),
        ("ops.js", "text/javascript"),
        ("map.js", "text/javascript"),
        ("transport.js", "text/javascript"),
        ("style.css", "text/css"),
    ] {
        let r = t.get(&format!("/web/{file}")).await;
        assert_eq!(r.status(), 200, "{file}");
        assert!(header(&r, "content-type").starts_with(kind), "{file}");
        assert_eq!(header(&r, "cache-control"), "no-cache", "{file}");
    }
    assert_eq!(t.get("/web/secret.txt").await.status(), 404);
    assert_eq!(t.get("/web/..%2Fsrc%2Flib.rs").await.status(), 404);
    t.stop().await;
}

#[tokio::test]
async fn map_endpoint_serves_the_city_roads_with_the_osm_attribution() {
    let t = TestHub::start("map").await;
    let r = t.get("/api/v1/map").await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), "application/json");
    let body = r.bytes().await.expect("body");
    assert!(body.len() < 500_000, "{} bytes", body.len());
    let map: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(map["attribution"], "(c) OpenStreetMap contributors");
    let bbox: Vec<f64> = serde_json::from_value(map["bbox"].clone()).expect("bbox");
    // Central Helsinki, the default city.
    assert!(
        bbox[0] > 24.9 && bbox[2] < 25.0 && bbox[1] > 60.1 && bbox[3] < 60.2,
        "{bbox:?}"
    );
    let lines: usize = map["roads"]
        .as_array()
        .expect("roads")
        .iter()
        .map(|l| l["lines"].as_array().map_or(0, Vec::len))
        .sum();
    assert!(lines > 100, "{lines} polylines");
    t.stop().await;
}

#[tokio::test]
async fn operator_endpoints_need_an_operator_token_and_list_open_deliveries_with_history() {
    let t = TestHub::start("ops").await;
    let op = t.hub().mint_token(Subject::Operator, 600);
    let created: DeliveryCreated = t
        .http
        .post(t.url("/api/v1/deliveries"))
        .bearer_auth(&op)
        .json(&CreateDelivery {
            delivery_id: None,
            pickup: LatLng::new(60.170, 24.940),
            dropoff: LatLng::new(60.175, 24.950),
            driver_id: Some(DriverId(7)),
        })
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("created");
    let id = created.delivery_id;
    let r = t
        .http
        .post(t.url(&format!("/api/v1/deliveries/{id}/status")))
        .bearer_auth(&op)
        .json(&ChangeStatus {
            status: DeliveryStatus::PickedUp,
            idempotency_key: None,
            driver_id: None,
            metadata: serde_json::Value::Null,
        })
        .send()
        .await
        .expect("status");
    assert_eq!(r.status(), 200);

    assert_eq!(t.get("/api/v1/ops/deliveries").await.status(), 401);
    let as_consumer = format!("/api/v1/ops/deliveries?token={}", created.tracking_token);
    assert_eq!(t.get(&as_consumer).await.status(), 403);

    let view: serde_json::Value = t
        .get(&format!("/api/v1/ops/deliveries?token={op}"))
        .await
        .json()
        .await
        .expect("view");
    let listed = view["deliveries"].as_array().expect("deliveries");
    assert_eq!(listed.len(), 1, "{view}");
    assert_eq!(listed[0]["delivery_id"], id.0);
    assert_eq!(listed[0]["status"], "picked_up");
    assert!(view["fixes_received_total"].is_u64(), "{view}");

    let history: serde_json::Value = t
        .get(&format!("/api/v1/ops/deliveries/{id}/history?token={op}"))
        .await
        .json()
        .await
        .expect("history");
    let statuses: Vec<&str> = history["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["status"].as_str())
        .collect();
    assert_eq!(statuses.last(), Some(&"picked_up"), "{history}");
    assert!(
        history["trail"].as_array().expect("trail").is_empty(),
        "no fixes were sent"
    );
    assert_eq!(
        t.get(&format!("/api/v1/ops/deliveries/999/history?token={op}"))
            .await
            .status(),
        404
    );
    t.stop().await;
}
