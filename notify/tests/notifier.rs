//! The notifier end to end: config from TOML, a milestone fanned out to APNs and FCM devices
//! on real local HTTP/2 servers, gone devices unregistered, metrics counted.

mod common;

use std::sync::Arc;

use common::{rsa_fixture, write_p8, Recorded, Reply, TestServer};
use notify::{DeviceRegistry, DeviceToken, ManualClock, Notifier, NotifyConfig, Platform};
use parking_lot::Mutex;
use prometheus_client::registry::Registry;
use protocol::status::DeliveryStatus;
use serde_json::json;

const APNS_OK: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
const APNS_GONE: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";
const FCM_OK: &str = "fcm-device-token-1";

#[tokio::test]
async fn a_milestone_reaches_every_device_and_gone_devices_are_unregistered() {
    let mut apns = TestServer::start(
        "notifier-apns",
        Arc::new(|req: &Recorded| {
            if req.path.ends_with(APNS_GONE) {
                Reply::json(410, json!({"reason": "Unregistered"}))
            } else {
                Reply::status(200)
            }
        }),
    )
    .await;
    let mut fcm = TestServer::start(
        "notifier-fcm",
        Arc::new(|req: &Recorded| {
            if req.path == "/token" {
                Reply::json(200, json!({"access_token": "ya29.x", "expires_in": 3600}))
            } else {
                Reply::json(200, json!({"name": "projects/demo/messages/1"}))
            }
        }),
    )
    .await;

    let (p8, _) = write_p8(&apns.dir);
    let (private_key, _) = rsa_fixture();
    let account = fcm.dir.join("sa.json");
    std::fs::write(
        &account,
        json!({"client_email": "push@demo.iam.gserviceaccount.com", "private_key": private_key,
               "token_uri": format!("{}/token", fcm.url())})
        .to_string(),
    )
    .expect("write service account");
    let toml_text = format!(
        r#"
[apns]
endpoint = "{apns_url}"
team_id = "TEAM123456"
key_id = "KEY987654A"
bundle_id = "com.example.trackline"
key_path = "{p8}"
trust_roots = "{apns_ca}"
retry = {{ attempts = 2, base_delay_ms = 1, max_delay_ms = 10, jitter = false }}

[fcm]
endpoint = "{fcm_url}"
project_id = "demo"
service_account_path = "{account}"
trust_roots = "{fcm_ca}"
"#,
        apns_url = apns.url(),
        p8 = p8.display(),
        apns_ca = apns.ca_path.display(),
        fcm_url = fcm.url(),
        account = account.display(),
        fcm_ca = fcm.ca_path.display(),
    );
    let config: NotifyConfig = toml::from_str(&toml_text).expect("config parses");
    let mut metrics_registry = Registry::default();
    let notifier = Notifier::from_config(
        &config,
        Arc::new(ManualClock::new(1_800_000_000)),
        &mut metrics_registry,
    )
    .expect("notifier");

    let registry = Mutex::new(DeviceRegistry::new());
    {
        let mut r = registry.lock();
        for (platform, token) in [
            (Platform::Apns, APNS_OK),
            (Platform::Apns, APNS_GONE),
            (Platform::Fcm, FCM_OK),
        ] {
            r.register(42, DeviceToken::new(platform, token).expect("valid"))
                .expect("registered");
        }
        r.register(
            43,
            DeviceToken::new(Platform::Apns, APNS_GONE).expect("valid"),
        )
        .expect("registered");
    }

    assert!(
        notifier
            .handle_status_change(&registry, 42, DeliveryStatus::EnRoute, Some(300.0))
            .await
            .is_none(),
        "en_route is not a milestone"
    );

    let report = notifier
        .handle_status_change(&registry, 42, DeliveryStatus::Delivered, None)
        .await
        .expect("delivered is a milestone");
    assert_eq!(report.sent.len(), 2, "{report:?}");
    assert!(report.failed.is_empty(), "{report:?}");
    assert_eq!(
        report.gone,
        vec![DeviceToken::new(Platform::Apns, APNS_GONE).expect("valid")]
    );

    {
        let r = registry.lock();
        let left: Vec<_> = r.devices(42).iter().map(|d| d.token.as_str()).collect();
        assert_eq!(left, vec![APNS_OK, FCM_OK]);
        assert!(
            r.devices(43).is_empty(),
            "a gone device is dropped from every delivery"
        );
    }

    let mut apns_paths = vec![
        apns.next_request().await.path,
        apns.next_request().await.path,
    ];
    apns_paths.sort();
    assert_eq!(
        apns_paths,
        vec![
            format!("/3/device/{APNS_OK}"),
            format!("/3/device/{APNS_GONE}")
        ]
    );
    assert_eq!(fcm.next_request().await.path, "/token");
    let send = fcm.next_request().await;
    assert_eq!(
        send.json()["message"]["notification"]["title"],
        "Order delivered"
    );
    apns.assert_no_more_requests();
    fcm.assert_no_more_requests();

    let m = notifier.metrics();
    assert_eq!(
        (
            m.sent(Platform::Apns),
            m.device_gone(Platform::Apns),
            m.failed(Platform::Apns)
        ),
        (1, 1, 0)
    );
    assert_eq!((m.sent(Platform::Fcm), m.failed(Platform::Fcm)), (1, 0));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &metrics_registry).expect("encode");
    assert!(
        text.contains(r#"push_sent_total{platform="apns"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"push_sent_total{platform="fcm"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"push_device_gone_total{platform="apns"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"push_send_seconds_count{platform="fcm"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn devices_without_a_configured_sender_count_as_failed() {
    let mut metrics_registry = Registry::default();
    let notifier = Notifier::from_config(
        &NotifyConfig::default(),
        Arc::new(ManualClock::new(0)),
        &mut metrics_registry,
    )
    .expect("notifier without senders");
    let registry = Mutex::new(DeviceRegistry::new());
    registry
        .lock()
        .register(1, DeviceToken::new(Platform::Fcm, "tok").expect("valid"))
        .expect("registered");
    let report = notifier
        .handle_status_change(&registry, 1, DeliveryStatus::DriverAssigned, None)
        .await
        .expect("milestone");
    assert_eq!(report.failed.len(), 1);
    assert!(
        matches!(
            report.failed[0].1,
            notify::PushError::NotConfigured(Platform::Fcm)
        ),
        "{}",
        report.failed[0].1
    );
    assert_eq!(notifier.metrics().failed(Platform::Fcm), 1);
    assert_eq!(registry.lock().len(), 1, "failures do not unregister");
}
