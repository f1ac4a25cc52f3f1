//! The FCM sender against a real local HTTP/2 TLS server playing both the OAuth2 token
//! endpoint and the FCM HTTP v1 API.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{parse_form, rsa_fixture, verify_jwt, Recorded, Reply, Responder, TestServer};
use hyper::{Method, Version};
use notify::{
    milestone_notification, DeviceToken, FcmConfig, FcmSender, ManualClock, Platform, PushError,
    PushSender, RetryConfig, SendOutcome,
};
use protocol::status::DeliveryStatus;
use serde_json::json;

const PROJECT: &str = "trackline-demo";
const CLIENT_EMAIL: &str = "push@trackline-demo.iam.gserviceaccount.com";
const NOW: u64 = 1_800_000_000;
const FCM_TOKEN: &str = "dGVzdC1mY20tdG9rZW4:APA91bH-test_registration_token";
const SEND_PATH: &str = "/v1/projects/trackline-demo/messages:send";

/// Answers `/token` with `ya29.token-<n>` (n counting from 1) or the scripted token replies,
/// and the send path with the scripted send replies, then 200.
fn fcm_responder(token_replies: Vec<Reply>, send_replies: Vec<Reply>) -> Responder {
    let issued = AtomicU32::new(0);
    let token_script = common::script(token_replies, Reply::status(0));
    let send_script = common::script(
        send_replies,
        Reply::json(200, json!({"name": "projects/trackline-demo/messages/0:1"})),
    );
    Arc::new(move |req: &Recorded| {
        if req.path == "/token" {
            let scripted = token_script(req);
            if scripted.status != 0 {
                return scripted;
            }
            let n = issued.fetch_add(1, Ordering::SeqCst) + 1;
            Reply::json(
                200,
                json!({"access_token": format!("ya29.token-{n}"), "expires_in": 3600, "token_type": "Bearer"}),
            )
        } else {
            send_script(req)
        }
    })
}

struct Fixture {
    server: TestServer,
    sender: FcmSender,
    clock: Arc<ManualClock>,
    public_key: Vec<u8>,
}

async fn fixture(name: &str, responder: Responder, retry: RetryConfig) -> Fixture {
    let server = TestServer::start(name, responder).await;
    let (private_key, public_key) = rsa_fixture();
    let account_path = server.dir.join("service-account.json");
    let account = json!({
        "type": "service_account",
        "project_id": PROJECT,
        "private_key_id": "0123456789abcdef",
        "private_key": private_key,
        "client_email": CLIENT_EMAIL,
        "token_uri": format!("{}/token", server.url()),
    });
    std::fs::write(&account_path, account.to_string()).expect("write service account");
    let clock = Arc::new(ManualClock::new(NOW));
    let config = FcmConfig {
        endpoint: server.url(),
        project_id: PROJECT.into(),
        service_account_path: account_path,
        trust_roots: Some(server.ca_path.clone()),
        request_timeout_ms: 5000,
        retry,
    };
    let sender = FcmSender::new(config, clock.clone()).expect("sender");
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
    DeviceToken::new(Platform::Fcm, FCM_TOKEN).expect("valid token")
}

fn arriving() -> notify::Notification {
    milestone_notification(7, DeliveryStatus::Arriving, Some(90.0)).expect("milestone")
}

/// Checks a token request: form fields and a valid RS256 assertion with the right claims.
fn assert_token_request(req: &Recorded, token_uri: &str, public_key: &[u8], iat: u64) {
    assert_eq!(req.method, Method::POST);
    assert_eq!(req.version, Version::HTTP_2);
    assert_eq!(req.path, "/token");
    assert_eq!(
        req.header("content-type"),
        "application/x-www-form-urlencoded"
    );
    let form = parse_form(&req.body);
    assert_eq!(
        form["grant_type"],
        "urn:ietf:params:oauth:grant-type:jwt-bearer"
    );
    let (header, claims) = verify_jwt(
        &form["assertion"],
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        public_key,
    );
    assert_eq!(header["alg"], "RS256");
    assert_eq!(
        claims,
        json!({
            "iss": CLIENT_EMAIL,
            "scope": "https://www.googleapis.com/auth/firebase.messaging",
            "aud": token_uri,
            "iat": iat,
            "exp": iat + 3600,
        })
    );
}

#[tokio::test]
async fn fetches_an_access_token_with_a_signed_assertion_then_sends_the_message() {
    let mut f = fixture("fcm-happy", fcm_responder(vec![], vec![]), fast_retry(4)).await;
    let outcome = f.sender.send(&device(), &arriving()).await.expect("sent");
    assert_eq!(
        outcome,
        SendOutcome::Sent {
            attempts: 1,
            message_id: Some("projects/trackline-demo/messages/0:1".into()),
            backoff: Duration::ZERO,
        }
    );

    let token_uri = format!("{}/token", f.server.url());
    let token_req = f.server.next_request().await;
    assert_token_request(&token_req, &token_uri, &f.public_key, NOW);

    let send = f.server.next_request().await;
    assert_eq!(send.method, Method::POST);
    assert_eq!(send.version, Version::HTTP_2);
    assert_eq!(send.path, SEND_PATH);
    assert_eq!(send.header("authorization"), "Bearer ya29.token-1");
    assert!(send.header("content-type").starts_with("application/json"));
    assert_eq!(
        send.json(),
        json!({
            "message": {
                "token": FCM_TOKEN,
                "notification": {
                    "title": "Driver arriving",
                    "body": "Your driver is almost there, about 2 min away.",
                },
                "data": {"delivery_id": "7", "status": "arriving", "eta_s": "90"},
                "android": {"priority": "high"},
            }
        })
    );
    f.server.assert_no_more_requests();
}

#[tokio::test]
async fn access_token_is_cached_until_shortly_before_it_expires() {
    let mut f = fixture(
        "fcm-token-cache",
        fcm_responder(vec![], vec![]),
        fast_retry(4),
    )
    .await;
    let n = arriving();
    f.sender.send(&device(), &n).await.expect("first");
    f.clock.advance(3600 - 61);
    f.sender.send(&device(), &n).await.expect("second");
    f.clock.advance(1);
    f.sender.send(&device(), &n).await.expect("third");

    let token_uri = format!("{}/token", f.server.url());
    assert_eq!(f.server.next_request().await.path, "/token");
    assert_eq!(
        f.server.next_request().await.header("authorization"),
        "Bearer ya29.token-1"
    );
    let second = f.server.next_request().await;
    assert_eq!(second.path, SEND_PATH, "no new token 61 s before expiry");
    assert_eq!(second.header("authorization"), "Bearer ya29.token-1");
    let renew = f.server.next_request().await;
    assert_token_request(&renew, &token_uri, &f.public_key, NOW + 3600 - 60);
    assert_eq!(
        f.server.next_request().await.header("authorization"),
        "Bearer ya29.token-2"
    );
    f.server.assert_no_more_requests();
}

#[tokio::test]
async fn a_401_renews_the_access_token_once_and_retries() {
    let unauthorized = || {
        Reply::json(
            401,
            json!({"error": {"code": 401, "message": "Request had invalid authentication credentials.", "status": "UNAUTHENTICATED"}}),
        )
    };
    let mut f = fixture(
        "fcm-401",
        fcm_responder(vec![], vec![unauthorized()]),
        fast_retry(4),
    )
    .await;
    let outcome = f.sender.send(&device(), &arriving()).await.expect("sent");
    assert!(
        matches!(outcome, SendOutcome::Sent { attempts: 2, .. }),
        "{outcome:?}"
    );
    let paths: Vec<_> = [
        f.server.next_request().await,
        f.server.next_request().await,
        f.server.next_request().await,
        f.server.next_request().await,
    ]
    .into_iter()
    .map(|r| {
        let auth = r
            .headers
            .get("authorization")
            .map(|v| v.to_str().unwrap_or("").to_string());
        (r.path, auth)
    })
    .collect();
    assert_eq!(
        paths,
        vec![
            ("/token".to_string(), None),
            (
                SEND_PATH.to_string(),
                Some("Bearer ya29.token-1".to_string())
            ),
            ("/token".to_string(), None),
            (
                SEND_PATH.to_string(),
                Some("Bearer ya29.token-2".to_string())
            ),
        ]
    );

    let f = fixture(
        "fcm-401-twice",
        fcm_responder(vec![], vec![unauthorized(), unauthorized()]),
        fast_retry(4),
    )
    .await;
    let err = f
        .sender
        .send(&device(), &arriving())
        .await
        .expect_err("auth error");
    assert!(
        matches!(
            err,
            PushError::Auth {
                platform: Platform::Fcm,
                status: 401,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn unregistered_and_invalid_tokens_report_the_device_gone() {
    let unregistered = Reply::json(
        404,
        json!({"error": {"code": 404, "message": "Requested entity was not found.", "status": "NOT_FOUND",
            "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "UNREGISTERED"}]}}),
    );
    let invalid = Reply::json(
        400,
        json!({"error": {"code": 400, "message": "The registration token is not a valid FCM registration token", "status": "INVALID_ARGUMENT",
            "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "INVALID_ARGUMENT"}]}}),
    );
    let f = fixture(
        "fcm-gone",
        fcm_responder(vec![], vec![unregistered, invalid]),
        fast_retry(4),
    )
    .await;
    let n = arriving();
    let first = f.sender.send(&device(), &n).await.expect("answer");
    assert!(
        matches!(first, SendOutcome::DeviceGone { ref reason, attempts: 1 } if reason.starts_with("UNREGISTERED")),
        "{first:?}"
    );
    let second = f.sender.send(&device(), &n).await.expect("answer");
    assert!(
        matches!(second, SendOutcome::DeviceGone { attempts: 1, .. }),
        "{second:?}"
    );
}

#[tokio::test]
async fn a_503_with_retry_after_is_retried_then_succeeds() {
    let mut f = fixture(
        "fcm-503",
        fcm_responder(
            vec![],
            vec![Reply::json(
                503,
                json!({"error": {"code": 503, "status": "UNAVAILABLE", "message": "overloaded"}}),
            )
            .header("retry-after", "0")],
        ),
        fast_retry(4),
    )
    .await;
    let outcome = f.sender.send(&device(), &arriving()).await.expect("sent");
    assert_eq!(
        outcome,
        SendOutcome::Sent {
            attempts: 2,
            message_id: Some("projects/trackline-demo/messages/0:1".into()),
            backoff: Duration::from_millis(1),
        }
    );
    assert_eq!(f.server.next_request().await.path, "/token");
    assert_eq!(f.server.next_request().await.path, SEND_PATH);
    let retry = f.server.next_request().await;
    assert_eq!(
        retry.path, SEND_PATH,
        "the cached token is reused for the retry"
    );
    f.server.assert_no_more_requests();
}

#[tokio::test]
async fn a_refused_assertion_is_an_auth_error_and_nothing_is_sent() {
    let refused = Reply::json(
        400,
        json!({"error": "invalid_grant", "error_description": "Invalid JWT Signature."}),
    );
    let mut f = fixture(
        "fcm-invalid-grant",
        fcm_responder(vec![refused], vec![]),
        fast_retry(4),
    )
    .await;
    let err = f
        .sender
        .send(&device(), &arriving())
        .await
        .expect_err("auth error");
    match &err {
        PushError::Auth {
            platform: Platform::Fcm,
            status: 400,
            reason,
        } => {
            assert!(reason.contains("invalid_grant"), "{reason}")
        }
        other => panic!("expected an auth error, got {other}"),
    }
    assert_eq!(f.server.next_request().await.path, "/token");
    f.server.assert_no_more_requests();
}
