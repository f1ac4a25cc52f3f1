//! Device token validation, the registry, milestone notifications and config validation.

use notify::registry::MAX_DEVICES_PER_DELIVERY;
use notify::{
    milestone_notification, ApnsConfig, DeviceRegistry, DeviceToken, FcmConfig, NotifyConfig,
    Platform, RegistryError, RetryConfig,
};
use protocol::status::DeliveryStatus;

const APNS_HEX: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";

#[test]
fn apns_tokens_must_be_64_or_more_hex_characters() {
    let err = DeviceToken::new(Platform::Apns, &APNS_HEX[..62]).expect_err("short");
    assert_eq!(err, RegistryError::ApnsLength { len: 62 });
    assert_eq!(
        err.to_string(),
        "APNs device token must be 64 to 200 hex characters, got 62"
    );
    let not_hex = format!("{}zz", &APNS_HEX[..62]);
    let err = DeviceToken::new(Platform::Apns, not_hex).expect_err("not hex");
    assert_eq!(err, RegistryError::ApnsNotHex { index: 62, ch: 'z' });
    assert!(
        err.to_string().contains("found 'z' at position 62"),
        "{err}"
    );
    let upper = DeviceToken::new(Platform::Apns, APNS_HEX.to_uppercase()).expect("upper hex");
    assert_eq!(upper.token, APNS_HEX, "normalised to lower case");
    assert!(DeviceToken::new(Platform::Apns, format!("{APNS_HEX}{APNS_HEX}")).is_ok());
}

#[test]
fn fcm_tokens_must_be_non_empty_short_and_without_whitespace() {
    assert_eq!(
        DeviceToken::new(Platform::Fcm, "").expect_err("empty"),
        RegistryError::FcmEmpty
    );
    let long = "a".repeat(4097);
    let err = DeviceToken::new(Platform::Fcm, long).expect_err("long");
    assert_eq!(err, RegistryError::FcmTooLong { len: 4097 });
    assert!(
        err.to_string().contains("4097 bytes, more than the 4096"),
        "{err}"
    );
    let err = DeviceToken::new(Platform::Fcm, "abc def").expect_err("space");
    assert_eq!(err, RegistryError::FcmWhitespace { index: 3 });
    assert!(DeviceToken::new(Platform::Fcm, "a".repeat(4096)).is_ok());
    assert!(DeviceToken::new(Platform::Fcm, "fGx1:APA91b-_x").is_ok());
}

#[test]
fn registry_deduplicates_limits_and_unregisters() {
    let mut r = DeviceRegistry::new();
    let d = DeviceToken::new(Platform::Apns, APNS_HEX).expect("valid");
    assert_eq!(r.register(1, d.clone()), Ok(true));
    assert_eq!(r.register(1, d.clone()), Ok(false), "duplicate");
    assert_eq!(r.register(2, d.clone()), Ok(true));
    for i in 1..MAX_DEVICES_PER_DELIVERY {
        let t = DeviceToken::new(Platform::Fcm, format!("tok-{i}")).expect("valid");
        assert_eq!(r.register(1, t), Ok(true));
    }
    assert_eq!(
        r.register(
            1,
            DeviceToken::new(Platform::Fcm, "one-too-many").expect("valid")
        ),
        Err(RegistryError::TooManyDevices { delivery_id: 1 })
    );
    assert_eq!(r.len(), MAX_DEVICES_PER_DELIVERY + 1);
    assert!(r.unregister(2, &d));
    assert!(!r.unregister(2, &d));
    assert_eq!(r.unregister_everywhere(&d), 1);
    assert_eq!(r.remove_delivery(1).len(), MAX_DEVICES_PER_DELIVERY - 1);
    assert!(r.is_empty());
}

#[test]
fn registry_refuses_invalid_tokens_even_when_built_by_hand() {
    let mut r = DeviceRegistry::new();
    let forged = DeviceToken {
        platform: Platform::Apns,
        token: "../../admin".into(),
    };
    assert!(matches!(
        r.register(1, forged),
        Err(RegistryError::ApnsNotHex { .. })
    ));
}

#[test]
fn registry_round_trips_through_json_for_persistence() {
    let mut r = DeviceRegistry::new();
    r.register(
        7,
        DeviceToken::new(Platform::Apns, APNS_HEX).expect("valid"),
    )
    .expect("ok");
    r.register(7, DeviceToken::new(Platform::Fcm, "tok").expect("valid"))
        .expect("ok");
    let json = serde_json::to_string(&r).expect("serialize");
    assert!(json.contains(r#""platform":"apns""#), "{json}");
    let back: DeviceRegistry = serde_json::from_str(&json).expect("deserialize");
    assert_eq!(back, r);
}

#[test]
fn device_debug_output_does_not_leak_the_whole_token() {
    let d = DeviceToken::new(Platform::Apns, APNS_HEX).expect("valid");
    let shown = format!("{d:?}");
    assert_eq!(shown, "apns:a1b2c3d4…");
}

#[test]
fn milestone_notifications_exist_only_for_the_four_milestones() {
    use DeliveryStatus::*;
    for status in DeliveryStatus::ALL {
        let n = milestone_notification(9, status, Some(125.0));
        assert_eq!(n.is_some(), status.is_milestone(), "{status}");
    }
    let texts: Vec<_> = [DriverAssigned, PickedUp, Arriving, Delivered]
        .into_iter()
        .map(|s| {
            let n = milestone_notification(9, s, Some(125.0)).expect("milestone");
            assert_eq!((n.delivery_id, n.status), (9, s));
            assert_eq!(n.data["delivery_id"], "9");
            assert_eq!(n.data["status"], s.as_str());
            (n.title, n.body, n.data.get("eta_s").cloned())
        })
        .collect();
    let eta = Some("125".to_string());
    assert_eq!(
        texts,
        vec![
            (
                "Driver assigned".into(),
                "A driver has been assigned and is heading to pick up your order.".into(),
                None
            ),
            (
                "Order picked up".into(),
                "Your order is on its way, arriving in 3 min.".into(),
                eta.clone()
            ),
            (
                "Driver arriving".into(),
                "Your driver is almost there, about 3 min away.".into(),
                eta
            ),
            (
                "Order delivered".into(),
                "Your order has been delivered. Enjoy!".into(),
                None
            ),
        ]
    );
    let no_eta = milestone_notification(9, PickedUp, None).expect("milestone");
    assert_eq!(no_eta.body, "Your order is on its way.");
}

#[test]
fn default_config_disables_both_services_and_validates() {
    let config = NotifyConfig::default();
    assert_eq!(
        config,
        toml::from_str::<NotifyConfig>("").expect("empty TOML")
    );
    assert!(config.apns.is_none() && config.fcm.is_none());
    config.validate().expect("valid");
    assert_eq!(ApnsConfig::default().endpoint, "https://api.push.apple.com");
    assert_eq!(FcmConfig::default().endpoint, "https://fcm.googleapis.com");
    assert_eq!(
        RetryConfig::default(),
        RetryConfig {
            attempts: 4,
            base_delay_ms: 200,
            max_delay_ms: 5000,
            jitter: true
        }
    );
}

#[test]
fn config_errors_name_the_key_and_the_problem() {
    let apns = ApnsConfig {
        team_id: "TEAM123456".into(),
        key_id: "KEY987654A".into(),
        bundle_id: "com.example.app".into(),
        ..ApnsConfig::default()
    };
    apns.validate().expect("valid");
    let err = ApnsConfig {
        team_id: "short".into(),
        ..apns.clone()
    }
    .validate()
    .expect_err("bad team id");
    assert_eq!(
        err.to_string(),
        "invalid apns.team_id: \"short\" is not a 10-character Apple id (see the developer account)"
    );
    let err = ApnsConfig {
        endpoint: "http://api.push.apple.com".into(),
        ..apns.clone()
    }
    .validate()
    .expect_err("plain http");
    assert!(
        err.to_string().starts_with("invalid apns.endpoint:"),
        "{err}"
    );
    let err = ApnsConfig {
        retry: RetryConfig {
            base_delay_ms: 10_000,
            ..RetryConfig::default()
        },
        ..apns
    }
    .validate()
    .expect_err("max below base");
    assert!(
        err.to_string()
            .contains("max_delay_ms (5000) is below base_delay_ms (10000)"),
        "{err}"
    );
    let err = FcmConfig::default().validate().expect_err("no project");
    assert!(
        err.to_string().starts_with("invalid fcm.project_id"),
        "{err}"
    );
    let unknown = toml::from_str::<NotifyConfig>("[apns]\nteam = \"x\"\n").expect_err("typo");
    assert!(
        unknown.to_string().contains("unknown field `team`"),
        "{unknown}"
    );
}
