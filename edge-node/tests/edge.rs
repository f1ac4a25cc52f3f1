//! End-to-end behaviour of the edge over real sockets: drivers in, a real test hub out.

mod common;

use common::*;
use http::{Method, StatusCode};
use protocol::api::{ApiError, IngestResult};
use protocol::reject::RejectReason;
use protocol::token::{Subject, TokenSigner};
use protocol::wire::{CloseCode, DriverToEdge, EdgeToDriver, Fix};
use protocol::{DeliveryId, DriverId};
use std::collections::HashMap;

const LOCATIONS: &str = "/api/v1/tracking/locations";

#[tokio::test]
async fn datagram_fixes_reach_the_hub_in_order_with_the_driver_id() {
    let setup = Setup::new("datagrams");
    let mut hub = TestHub::start(&setup, "127.0.0.1:0".parse().expect("addr"));
    let edge = setup.start_edge(hub.addr).await;
    let mut driver = DriverConn::hello(&setup, edge.quic_addr(), &setup.driver_token(42)).await;
    match driver.welcome().await {
        EdgeToDriver::Welcome {
            driver_id,
            max_datagram,
            ..
        } => {
            assert_eq!(driver_id, DriverId(42));
            assert!(max_datagram >= 1000, "{max_datagram}");
        }
        other => panic!("expected welcome, got {other:?}"),
    }
    let fixes = track(20, 1);
    for f in &fixes {
        driver.send_fix(f).await;
    }
    let mut got = Vec::new();
    while got.len() < fixes.len() {
        let f = hub.next_fix().await;
        assert_eq!(f.driver_id, DriverId(42));
        got.push(f.fix);
    }
    assert_eq!(got, fixes, "every fix, in order, unchanged");
    assert_eq!(edge.metrics().accepted().get(), 20);
    assert_eq!(
        edge.metrics().received(edge_node::Transport::Quic).get(),
        20
    );
    assert_eq!(edge.metrics().sessions_active().get(), 1);
    edge.shutdown();
    edge.join().await;
}

#[tokio::test]
async fn bad_expired_and_non_driver_tokens_close_the_session_with_a_clear_reason() {
    let setup = Setup::new("tokens");
    let hub = TestHub::start(&setup, "127.0.0.1:0".parse().expect("addr"));
    let edge = setup.start_edge(hub.addr).await;

    let stranger = TokenSigner::from_pkcs8(1, &TokenSigner::generate_pkcs8().expect("keygen"))
        .expect("signer");
    let forged = stranger.sign(Subject::Driver(DriverId(42)), nodekit::unix_s(), 3600);
    let (code, reason) = DriverConn::hello(&setup, edge.quic_addr(), &forged)
        .await
        .closed()
        .await;
    assert_eq!(code, CloseCode::BadToken as u64);
    assert!(reason.contains("signature"), "{reason}");

    let expired = setup
        .signer
        .sign(Subject::Driver(DriverId(42)), nodekit::unix_s() - 100, 10);
    let (code, reason) = DriverConn::hello(&setup, edge.quic_addr(), &expired)
        .await
        .closed()
        .await;
    assert_eq!(code, 0x11);
    assert!(reason.contains("token expired for driver 42"), "{reason}");

    let operator = setup
        .signer
        .sign(Subject::Operator, nodekit::unix_s(), 3600);
    let (code, reason) = DriverConn::hello(&setup, edge.quic_addr(), &operator)
        .await
        .closed()
        .await;
    assert_eq!(code, CloseCode::WrongTokenKind as u64);
    assert!(reason.contains("operator"), "{reason}");

    assert_eq!(edge.metrics().sessions_rejected("bad_token").get(), 1);
    assert_eq!(edge.metrics().sessions_rejected("expired").get(), 1);
    assert_eq!(edge.metrics().sessions_rejected("wrong_kind").get(), 1);
    edge.shutdown();
    edge.join().await;
}

#[tokio::test]
async fn a_malformed_datagram_is_counted_and_the_session_lives_on() {
    let setup = Setup::new("malformed");
    let mut hub = TestHub::start(&setup, "127.0.0.1:0".parse().expect("addr"));
    let edge = setup.start_edge(hub.addr).await;
    let mut driver = DriverConn::hello(&setup, edge.quic_addr(), &setup.driver_token(5)).await;
    assert!(matches!(
        driver.welcome().await,
        EdgeToDriver::Welcome { .. }
    ));
    driver
        .conn
        .send_datagram(bytes::Bytes::from_static(&[1, 1, 0xff, 0xff]))
        .expect("send garbage");
    let fix = track(1, 1)[0];
    driver.send_fix(&fix).await;
    let got = hub.next_fix().await;
    assert_eq!((got.driver_id, got.fix), (DriverId(5), fix));
    assert_eq!(edge.metrics().rejected(RejectReason::Malformed).get(), 1);

    let text = reqwest::get(format!("http://{}/metrics", edge.admin_addr()))
        .await
        .expect("admin reachable")
        .text()
        .await
        .expect("metrics body");
    assert!(
        text.contains("edge_fixes_rejected_total{reason=\"malformed\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("edge_fixes_rejected_total{reason=\"speed\"} 0"),
        "{text}"
    );
    assert!(text.contains("edge_hub_connected 1"), "{text}");
    edge.shutdown();
    edge.join().await;
}

/// Two good fixes, one with 500 m accuracy, one from the future.
fn mixed_batch() -> (Vec<Fix>, Vec<Fix>) {
    let good = track(2, 0);
    let mut bad_accuracy = good[1];
    bad_accuracy.ts_ms += 100;
    bad_accuracy.accuracy_dm = 5_000;
    let mut future = good[1];
    future.ts_ms = nodekit::unix_ms() + 60_000;
    (good.clone(), vec![good[0], good[1], bad_accuracy, future])
}

fn expected_result() -> IngestResult {
    let mut r = IngestResult {
        accepted: 2,
        ..Default::default()
    };
    r.rejected.insert("accuracy".into(), 1);
    r.rejected.insert("future_timestamp".into(), 1);
    r
}

#[tokio::test]
async fn https_fallback_delivers_fixes_and_reports_rejections_by_reason() {
    let setup = Setup::new("https");
    let mut hub = TestHub::start(&setup, "127.0.0.1:0".parse().expect("addr"));
    let edge = setup.start_edge(hub.addr).await;
    let client = https_client(&setup);
    let url = format!("https://127.0.0.1:{}{LOCATIONS}", edge.https_addr().port());
    let (good, sent) = mixed_batch();

    let resp = client
        .post(&url)
        .bearer_auth(setup.driver_token(7))
        .body(json_fixes(&sent))
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.json::<IngestResult>().await.expect("json"),
        expected_result()
    );
    for f in &good {
        let got = hub.next_fix().await;
        assert_eq!((got.driver_id, got.fix), (DriverId(7), *f));
    }
    assert_eq!(
        edge.metrics().received(edge_node::Transport::Https).get(),
        4
    );

    let resp = client
        .post(&url)
        .body(json_fixes(&sent))
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let err: ApiError = resp.json().await.expect("api error json");
    assert!(err.message.contains("Bearer"), "{err:?}");

    let resp = client
        .post(&url)
        .bearer_auth(setup.driver_token(7))
        .body("{\"not\":\"an array\"}")
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    let huge = vec![b' '; 300 * 1024];
    let resp = client
        .post(&url)
        .bearer_auth(setup.driver_token(7))
        .body(huge)
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    edge.shutdown();
    edge.join().await;
}

#[tokio::test]
async fn a_json_fix_with_negative_accuracy_is_rejected_with_its_own_reason() {
    let setup = Setup::new("negative-accuracy");
    let mut hub = TestHub::start(&setup, "127.0.0.1:0".parse().expect("addr"));
    let edge = setup.start_edge(hub.addr).await;
    let client = https_client(&setup);
    let url = format!("https://127.0.0.1:{}{LOCATIONS}", edge.https_addr().port());
    let good = track(2, 1);
    let mut body: Vec<protocol::api::JsonFix> =
        good.iter().map(protocol::api::JsonFix::from_fix).collect();
    let mut impossible = body[1];
    impossible.seq = 3;
    impossible.accuracy = -4.0;
    body.push(impossible);
    let resp = client
        .post(&url)
        .bearer_auth(setup.driver_token(9))
        .json(&body)
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), StatusCode::OK);
    let result: IngestResult = resp.json().await.expect("json");
    assert_eq!(result.accepted, 2);
    assert_eq!(
        result.rejected,
        [("negative_accuracy".to_owned(), 1)].into_iter().collect()
    );
    for f in &good {
        assert_eq!(hub.next_fix().await.fix, *f);
    }
    let m = edge.metrics();
    assert_eq!(m.received(edge_node::Transport::Https).get(), 3);
    assert_eq!(
        m.rejected_json(edge_node::filter::JsonReject::NegativeAccuracy)
            .get(),
        1
    );
    edge.shutdown();
    edge.join().await;
}

#[tokio::test]
async fn http3_serves_the_same_location_api() {
    let setup = Setup::new("h3");
    let mut hub = TestHub::start(&setup, "127.0.0.1:0".parse().expect("addr"));
    let edge = setup.start_edge(hub.addr).await;
    let (good, sent) = mixed_batch();
    let token = setup.driver_token(8);
    let (status, body) = h3_request(
        &setup,
        edge.quic_addr(),
        Method::POST,
        LOCATIONS,
        Some(&token),
        json_fixes(&sent).into_bytes(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(
        serde_json::from_slice::<IngestResult>(&body).expect("json"),
        expected_result()
    );
    for f in &good {
        let got = hub.next_fix().await;
        assert_eq!((got.driver_id, got.fix), (DriverId(8), *f));
    }
    assert_eq!(edge.metrics().received(edge_node::Transport::H3).get(), 4);

    let (status, body) = h3_request(
        &setup,
        edge.quic_addr(),
        Method::POST,
        LOCATIONS,
        None,
        json_fixes(&sent).into_bytes(),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    serde_json::from_slice::<ApiError>(&body).expect("api error json");
    edge.shutdown();
    edge.join().await;
}

#[tokio::test]
async fn while_the_hub_is_down_only_the_newest_fix_per_driver_is_delivered() {
    let setup = Setup::new("hub-down");
    let hub_addr = reserve_udp_port();
    let edge = setup.start_edge_without_hub(hub_addr).await;
    let client = https_client(&setup);
    let url = format!("https://127.0.0.1:{}{LOCATIONS}", edge.https_addr().port());
    let mut newest = HashMap::new();
    for driver in 1..=3u64 {
        let fixes = track(5, 0);
        let resp = client
            .post(&url)
            .bearer_auth(setup.driver_token(driver))
            .body(json_fixes(&fixes))
            .send()
            .await
            .expect("post");
        assert_eq!(resp.json::<IngestResult>().await.expect("json").accepted, 5);
        newest.insert(DriverId(driver), fixes[4]);
    }
    assert_eq!(edge.metrics().hub_connected().get(), 0);
    assert_eq!(edge.metrics().shed().get(), 12);

    let mut hub = TestHub::start(&setup, hub_addr);
    let mut delivered = HashMap::new();
    while delivered.len() < 3 {
        let f = hub.next_fix().await;
        assert_eq!(
            newest.get(&f.driver_id),
            Some(&f.fix),
            "only the newest fix of {}",
            f.driver_id
        );
        assert!(
            delivered.insert(f.driver_id, f.fix).is_none(),
            "one fix per driver"
        );
    }
    // A fresh fix after reconnecting is the very next thing the hub sees: nothing older is left.
    let fresh = track(1, 0)[0];
    let resp = client
        .post(&url)
        .bearer_auth(setup.driver_token(1))
        .body(json_fixes(&[fresh]))
        .send()
        .await
        .expect("post");
    assert_eq!(resp.json::<IngestResult>().await.expect("json").accepted, 1);
    let got = hub.next_fix().await;
    assert_eq!((got.driver_id, got.fix), (DriverId(1), fresh));
    assert_eq!(edge.metrics().hub_connected().get(), 1);
    edge.shutdown();
    edge.join().await;
}

#[tokio::test]
async fn a_driver_that_sends_no_hello_is_closed_with_hello_timeout() {
    let setup = Setup::new("hello-timeout");
    let hub = TestHub::start(&setup, "127.0.0.1:0".parse().expect("addr"));
    let mut config = setup.edge_config(hub.addr);
    config.hello_timeout_ms = 200;
    let edge = edge_node::spawn(config).await.expect("edge starts");
    let endpoint = client_endpoint(&setup, protocol::ALPN_DRIVER);
    let conn = endpoint
        .connect(edge.quic_addr(), "localhost")
        .expect("connect")
        .await
        .expect("handshake");
    let err = tokio::time::timeout(WAIT, conn.closed())
        .await
        .expect("closed in time");
    match err {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(c.error_code.into_inner(), CloseCode::HelloTimeout as u64);
            assert!(
                String::from_utf8_lossy(&c.reason).contains("no hello within 200 ms"),
                "{c:?}"
            );
        }
        other => panic!("expected an application close, got {other}"),
    }
    assert_eq!(edge.metrics().sessions_rejected("hello_timeout").get(), 1);
    edge.shutdown();
    edge.join().await;
}

#[tokio::test]
async fn a_session_is_closed_when_its_token_expires() {
    let setup = Setup::new("expiry");
    let hub = TestHub::start(&setup, "127.0.0.1:0".parse().expect("addr"));
    let edge = setup.start_edge(hub.addr).await;
    let short = setup
        .signer
        .sign(Subject::Driver(DriverId(9)), nodekit::unix_s(), 2);
    let mut driver = DriverConn::hello(&setup, edge.quic_addr(), &short).await;
    assert!(matches!(
        driver.welcome().await,
        EdgeToDriver::Welcome { .. }
    ));
    let (code, reason) = driver.closed().await;
    assert_eq!(code, CloseCode::TokenExpired as u64);
    assert!(reason.contains("token expired for driver 9"), "{reason}");
    edge.shutdown();
    edge.join().await;
}

#[tokio::test]
async fn declaring_more_than_eight_deliveries_closes_the_session_as_a_protocol_violation() {
    let setup = Setup::new("on-duty-limit");
    let hub = TestHub::start(&setup, "127.0.0.1:0".parse().expect("addr"));
    let edge = setup.start_edge(hub.addr).await;
    let mut driver = DriverConn::hello(&setup, edge.quic_addr(), &setup.driver_token(3)).await;
    assert!(matches!(
        driver.welcome().await,
        EdgeToDriver::Welcome { .. }
    ));
    driver
        .send_frame(&DriverToEdge::OnDuty {
            deliveries: (1..=9).map(DeliveryId).collect(),
        })
        .await;
    let (code, reason) = driver.closed().await;
    assert_eq!(code, CloseCode::ProtocolViolation as u64);
    assert!(reason.contains("9 deliveries"), "{reason}");
    edge.shutdown();
    edge.join().await;
}

#[tokio::test]
async fn unknown_routes_and_wrong_methods_answer_json_and_the_description_is_served() {
    let setup = Setup::new("api-errors");
    let hub = TestHub::start(&setup, "127.0.0.1:0".parse().expect("addr"));
    let edge = setup.start_edge(hub.addr).await;
    let client = https_client(&setup);
    let base = format!("https://127.0.0.1:{}", edge.https_addr().port());
    let r = client
        .get(format!("{base}/api/v1/nothing"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let e: ApiError = r.json().await.expect("404 body is an ApiError");
    assert_eq!(e.error, "not_found");
    let r = client
        .get(format!("{base}{LOCATIONS}"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        r.headers().get("allow").and_then(|v| v.to_str().ok()),
        Some("POST")
    );
    let e: ApiError = r.json().await.expect("405 body is an ApiError");
    assert_eq!(e.error, "method_not_allowed");
    let r = client
        .get(format!("{base}/api/v1/openapi.json"))
        .send()
        .await
        .expect("openapi");
    assert_eq!(r.status(), StatusCode::OK);
    let doc: serde_json::Value = r.json().await.expect("json");
    assert!(doc["paths"][LOCATIONS]["post"].is_object(), "{doc}");
    hub.close();
}
