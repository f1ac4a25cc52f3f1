//! The APNs sender against a real local HTTP/2 TLS server that checks what Apple would check.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{script, verify_jwt, write_p8, Reply, TestServer};
use hyper::{Method, Version};
use notify::{
    milestone_notification, ApnsConfig, ApnsSender, DeviceToken, ManualClock, Platform, PushError,
    PushSender, RetryConfig, SendOutcome,
};
use protocol::status::DeliveryStatus;
use serde_json::json;

const TEAM_ID: &str = "TEAM123456";
const KEY_ID: &str = "KEY987654A";
const BUNDLE_ID: &str = "com.example.trackline";
const NOW: u64 = 1_800_000_000;
const TOKEN: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";

struct Fixture {
    server: TestServer,
    sender: ApnsSender,
    clock: Arc<ManualClock>,
    public_key: Vec<u8>,
}

async fn fixture(name: &str, replies: Vec<Reply>, retry: RetryConfig) -> Fixture {
    let server = TestServer::start(name, script(replies, Reply::status(200))).await;
    let (key_path, public_key) = write_p8(&server.dir);
    let clock = Arc::new(ManualClock::new(NOW));
    let config = ApnsConfig {
        endpoint: server.url(),
        team_id: TEAM_ID.into(),
        key_id: KEY_ID.into(),
        bundle_id: BUNDLE_ID.into(),
        key_path,
        trust_roots: Some(server.ca_path.clone()),
        expiration_s: 3600,
        request_timeout_ms: 5000,
        retry,
    };
    let sender = ApnsSender::new(config, clock.clone()).expect("sender");
    Fixture {
        server,
        sender,
        clock,
        public_key,
    }
}

fn fast_retry(attempts: u32) -> RetryConfig {
    RetryConfig {
        attempts,
        base_delay_ms: 1,
        max_delay_ms: 5000,
        jitter: false,
    }
}

fn device() -> DeviceToken {
    DeviceToken::new(Platform::Apns, TOKEN).expect("valid token")
}

fn picked_up() -> notify::Notification {
    milestone_notification(42, DeliveryStatus::PickedUp, Some(600.0)).expect("milestone")
}

fn bearer(req: &common::Recorded) -> String {
    req.header("authorization")
        .strip_prefix("bearer ")
        .expect("authorization: bearer <jwt>")
        .to_string()
}

#[tokio::test]
async fn request_carries_apns_headers_a_valid_es256_provider_token_and_the_payload() {
    let mut f = fixture(
        "apns-happy",
        vec![Reply::status(200).header("apns-id", "11111111-2222-3333-4444-555555555555")],
        fast_retry(4),
    )
    .await;
    let outcome = f.sender.send(&device(), &picked_up()).await.expect("sent");
    assert_eq!(
        outcome,
        SendOutcome::Sent {
            attempts: 1,
            message_id: Some("11111111-2222-3333-4444-555555555555".into()),
            backoff: Duration::ZERO,
        }
    );

    let req = f.server.next_request().await;
    assert_eq!(req.method, Method::POST);
    assert_eq!(req.version, Version::HTTP_2);
    assert_eq!(req.path, format!("/3/device/{TOKEN}"));
    assert_eq!(req.header("apns-topic"), BUNDLE_ID);
    assert_eq!(req.header("apns-push-type"), "alert");
    assert_eq!(req.header("apns-priority"), "10");
    assert_eq!(req.header("apns-expiration"), (NOW + 3600).to_string());
    assert_eq!(req.header("apns-collapse-id"), "delivery-42");
    assert_eq!(req.header("content-type"), "application/json");

    let (header, claims) = verify_jwt(
        &bearer(&req),
        &ring::signature::ECDSA_P256_SHA256_FIXED,
        &f.public_key,
    );
    assert_eq!(header, json!({"alg": "ES256", "kid": KEY_ID}));
    assert_eq!(claims, json!({"iss": TEAM_ID, "iat": NOW}));

    assert_eq!(
        req.json(),
        json!({
            "aps": {
                "alert": {
                    "title": "Order picked up",
                    "body": "Your order is on its way, arriving in 10 min.",
                },
                "sound": "default",
            },
            "delivery_id": 42,
            "status": "picked_up",
            "eta_s": "600",
        })
    );
    f.server.assert_no_more_requests();
}

#[tokio::test]
async fn provider_token_and_connection_are_reused_and_the_token_renewed_after_fifty_minutes() {
    let mut f = fixture("apns-token-refresh", vec![], fast_retry(4)).await;
    let n = picked_up();
    f.sender.send(&device(), &n).await.expect("first");
    f.clock.advance(49 * 60);
    f.sender.send(&device(), &n).await.expect("second");
    f.clock.advance(60);
    f.sender.send(&device(), &n).await.expect("third");

    let first = f.server.next_request().await;
    let second = f.server.next_request().await;
    let third = f.server.next_request().await;
    assert_eq!(
        bearer(&first),
        bearer(&second),
        "token reused within 50 minutes"
    );
    assert_ne!(
        bearer(&second),
        bearer(&third),
        "token renewed at 50 minutes"
    );
    let (_, claims) = verify_jwt(
        &bearer(&third),
        &ring::signature::ECDSA_P256_SHA256_FIXED,
        &f.public_key,
    );
    assert_eq!(claims["iat"], json!(NOW + 50 * 60));
    assert_eq!(
        first.connection, third.connection,
        "one HTTP/2 connection for all sends"
    );
}

#[tokio::test]
async fn a_503_is_retried_with_backoff_then_succeeds() {
    let mut f = fixture(
        "apns-503",
        vec![Reply::json(503, json!({"reason": "ServiceUnavailable"}))],
        fast_retry(4),
    )
    .await;
    let outcome = f.sender.send(&device(), &picked_up()).await.expect("sent");
    assert_eq!(
        outcome,
        SendOutcome::Sent {
            attempts: 2,
            message_id: None,
            backoff: Duration::from_millis(1),
        }
    );
    let first = f.server.next_request().await;
    let second = f.server.next_request().await;
    assert_eq!(first.body, second.body, "the same notification is re-sent");
    f.server.assert_no_more_requests();
}

#[tokio::test]
async fn retry_after_from_a_429_is_honoured() {
    let mut f = fixture(
        "apns-429",
        vec![Reply::json(429, json!({"reason": "TooManyRequests"})).header("retry-after", "1")],
        fast_retry(4),
    )
    .await;
    let outcome = f.sender.send(&device(), &picked_up()).await.expect("sent");
    assert_eq!(
        outcome,
        SendOutcome::Sent {
            attempts: 2,
            message_id: None,
            backoff: Duration::from_secs(1),
        },
        "the 1 s retry-after replaces the 1 ms backoff"
    );
    f.server.next_request().await;
    f.server.next_request().await;
}

#[tokio::test]
async fn retry_after_longer_than_max_delay_fails_as_throttled() {
    let mut f = fixture(
        "apns-throttled",
        vec![Reply::json(429, json!({"reason": "TooManyRequests"})).header("retry-after", "60")],
        fast_retry(4),
    )
    .await;
    let err = f
        .sender
        .send(&device(), &picked_up())
        .await
        .expect_err("throttled");
    assert!(
        matches!(err, PushError::Throttled { platform: Platform::Apns, retry_after } if retry_after == Duration::from_secs(60)),
        "{err}"
    );
    f.server.next_request().await;
    f.server.assert_no_more_requests();
}

#[tokio::test]
async fn persistent_server_errors_give_up_after_the_configured_attempts() {
    let mut f = fixture(
        "apns-500",
        vec![Reply::status(500), Reply::status(500), Reply::status(500)],
        fast_retry(3),
    )
    .await;
    let err = f
        .sender
        .send(&device(), &picked_up())
        .await
        .expect_err("gave up");
    match err {
        PushError::RetriesExhausted { attempts, last } => {
            assert_eq!(attempts, 3);
            assert!(
                matches!(*last, PushError::Rejected { status: 500, .. }),
                "{last}"
            );
        }
        other => panic!("expected RetriesExhausted, got {other}"),
    }
    for _ in 0..3 {
        f.server.next_request().await;
    }
    f.server.assert_no_more_requests();
}

#[tokio::test]
async fn status_410_and_bad_device_token_report_the_device_gone() {
    let mut f = fixture(
        "apns-gone",
        vec![
            Reply::json(
                410,
                json!({"reason": "Unregistered", "timestamp": 1_700_000_000_000u64}),
            ),
            Reply::json(400, json!({"reason": "BadDeviceToken"})),
        ],
        fast_retry(4),
    )
    .await;
    let n = picked_up();
    assert_eq!(
        f.sender.send(&device(), &n).await.expect("answer"),
        SendOutcome::DeviceGone {
            reason: "Unregistered".into(),
            attempts: 1
        }
    );
    assert_eq!(
        f.sender.send(&device(), &n).await.expect("answer"),
        SendOutcome::DeviceGone {
            reason: "BadDeviceToken".into(),
            attempts: 1
        }
    );
    f.server.next_request().await;
    f.server.next_request().await;
    f.server.assert_no_more_requests();
}

#[tokio::test]
async fn expired_provider_token_is_renewed_and_retried_once() {
    let expired = || Reply::json(403, json!({"reason": "ExpiredProviderToken"}));
    let mut f = fixture("apns-expired", vec![expired()], fast_retry(4)).await;
    let n = picked_up();
    let outcome = f.sender.send(&device(), &n).await.expect("sent");
    assert!(
        matches!(outcome, SendOutcome::Sent { attempts: 2, .. }),
        "{outcome:?}"
    );
    let first = f.server.next_request().await;
    let second = f.server.next_request().await;
    assert_ne!(bearer(&first), bearer(&second), "a new token was signed");
    verify_jwt(
        &bearer(&second),
        &ring::signature::ECDSA_P256_SHA256_FIXED,
        &f.public_key,
    );

    // Refused again after renewing: a credentials problem, not retried further.
    let mut f = fixture(
        "apns-expired-twice",
        vec![expired(), expired()],
        fast_retry(4),
    )
    .await;
    let err = f.sender.send(&device(), &n).await.expect_err("auth error");
    assert!(matches!(err, PushError::Auth { status: 403, .. }), "{err}");
    f.server.next_request().await;
    f.server.next_request().await;
    f.server.assert_no_more_requests();
}

#[tokio::test]
async fn a_server_outside_the_trusted_roots_is_refused_without_retrying() {
    let mut f = fixture("apns-untrusted", vec![], fast_retry(4)).await;
    let config = ApnsConfig {
        endpoint: f.server.url(),
        team_id: TEAM_ID.into(),
        key_id: KEY_ID.into(),
        bundle_id: BUNDLE_ID.into(),
        key_path: write_p8(&f.server.dir).0,
        trust_roots: None,
        retry: fast_retry(4),
        ..ApnsConfig::default()
    };
    let public_roots_only = ApnsSender::new(config, f.clock.clone()).expect("sender");
    let err = public_roots_only
        .send(&device(), &picked_up())
        .await
        .expect_err("dev CA is not a public root");
    assert!(matches!(err, PushError::Tls { .. }), "{err}");
    f.server.assert_no_more_requests();
}

#[tokio::test]
async fn fcm_devices_are_refused_by_the_apns_sender() {
    let f = fixture("apns-wrong-platform", vec![], fast_retry(1)).await;
    let fcm = DeviceToken::new(Platform::Fcm, "fcm-token").expect("valid");
    let err = f
        .sender
        .send(&fcm, &picked_up())
        .await
        .expect_err("wrong platform");
    assert!(matches!(
        err,
        PushError::WrongPlatform {
            sender: Platform::Apns,
            device: Platform::Fcm
        }
    ));
}

#[tokio::test]
async fn an_unreachable_endpoint_is_retried_then_reported() {
    let f = fixture("apns-unreachable", vec![], fast_retry(2)).await;
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let closed_port = closed.local_addr().expect("addr").port();
    drop(closed);
    let config = ApnsConfig {
        endpoint: format!("https://127.0.0.1:{closed_port}"),
        team_id: TEAM_ID.into(),
        key_id: KEY_ID.into(),
        bundle_id: BUNDLE_ID.into(),
        key_path: write_p8(&f.server.dir).0,
        trust_roots: Some(f.server.ca_path.clone()),
        retry: fast_retry(2),
        ..ApnsConfig::default()
    };
    let sender = ApnsSender::new(config, f.clock.clone()).expect("sender");
    let err = sender
        .send(&device(), &picked_up())
        .await
        .expect_err("nobody listens");
    match err {
        PushError::RetriesExhausted { attempts: 2, last } => {
            assert!(matches!(*last, PushError::Connect { .. }), "{last}")
        }
        other => panic!("expected RetriesExhausted after 2 attempts, got {other}"),
    }
}
