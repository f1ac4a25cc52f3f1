//! A webhook subscription: where to send, what, and the secret it is signed with. Configured
//! (`[[webhooks.subscriptions]]`) or created through the operator API; stored in redb.

use protocol::DeliveryId;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What a webhook is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A status event of a delivery (any source: `api`, `geofence`, `driver`).
    Status,
    /// An anomaly (stationary driver, moving away from the target).
    Anomaly,
    /// A photo proof of delivery was uploaded.
    Proof,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Status => "status",
            EventKind::Anomaly => "anomaly",
            EventKind::Proof => "proof",
        }
    }
}

/// A subscription as configured and stored.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subscription {
    /// Name of the subscription (letters, digits, `-`, `_`; at most 64).
    pub id: String,
    /// Where the events are POSTed (`https://`; `http://` only for local development).
    pub url: String,
    /// HMAC-SHA256 key of the `Trackline-Signature` header (at least 16 bytes). Never returned
    /// by the API and redacted by `--print-config`.
    pub secret: String,
    /// The kinds sent (`status`, `anomaly`, `proof`); all when empty.
    #[serde(default)]
    pub kinds: Vec<EventKind>,
    /// Only these deliveries; all when empty.
    #[serde(default)]
    pub deliveries: Vec<DeliveryId>,
    /// Only status events from these sources (`api`, `geofence`, `driver`); all when empty.
    /// `["geofence", "driver"]` sends only the changes the order service did not make.
    #[serde(default)]
    pub sources: Vec<String>,
    /// Whether it came from the config file (replaced at every start) or the API; set by the
    /// hub, not written in the config.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub from_config: bool,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.id)
            .field("url", &self.url)
            .field("secret", &"<redacted>")
            .field("kinds", &self.kinds)
            .field("deliveries", &self.deliveries)
            .field("sources", &self.sources)
            .finish()
    }
}

/// A subscription as the API shows it (no secret).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SubscriptionView {
    pub id: String,
    pub url: String,
    #[schema(value_type = Vec<String>)]
    pub kinds: Vec<EventKind>,
    #[schema(value_type = Vec<u64>)]
    pub deliveries: Vec<DeliveryId>,
    pub sources: Vec<String>,
    /// `config` or `api`.
    pub origin: String,
}

impl From<&Subscription> for SubscriptionView {
    fn from(s: &Subscription) -> Self {
        Self {
            id: s.id.clone(),
            url: s.url.clone(),
            kinds: s.kinds.clone(),
            deliveries: s.deliveries.clone(),
            sources: s.sources.clone(),
            origin: if s.from_config { "config" } else { "api" }.into(),
        }
    }
}

impl Subscription {
    /// Whether an event of `kind` about `delivery` (from `source`, for status events) goes to
    /// this subscription.
    pub fn wants(&self, kind: EventKind, delivery: DeliveryId, source: Option<&str>) -> bool {
        (self.kinds.is_empty() || self.kinds.contains(&kind))
            && (self.deliveries.is_empty() || self.deliveries.contains(&delivery))
            && (self.sources.is_empty()
                || source.is_none_or(|s| self.sources.iter().any(|x| x == s)))
    }

    /// Checks the fields, with a message naming the one at fault.
    pub fn validate(&self) -> Result<(), String> {
        let id_ok = !self.id.is_empty()
            && self.id.len() <= 64
            && self
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !id_ok {
            return Err(format!(
                "webhook id {:?} must be 1-64 letters, digits, '-' or '_'",
                self.id
            ));
        }
        match reqwest::Url::parse(&self.url) {
            Ok(u) if (u.scheme() == "https" || u.scheme() == "http") && u.host().is_some() => {}
            _ => {
                return Err(format!(
                    "webhook {}: url {:?} must be an absolute https:// (or http://) URL",
                    self.id, self.url
                ))
            }
        }
        if self.secret.len() < 16 {
            return Err(format!(
                "webhook {}: secret must be at least 16 bytes",
                self.id
            ));
        }
        if self.secret.len() > 1024 {
            return Err(format!(
                "webhook {}: secret must be at most 1024 bytes",
                self.id
            ));
        }
        if self.deliveries.len() > 10_000 || self.sources.len() > 16 {
            return Err(format!(
                "webhook {}: at most 10000 deliveries and 16 sources",
                self.id
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub() -> Subscription {
        Subscription {
            id: "orders".into(),
            url: "https://example.com/hook".into(),
            secret: "0123456789abcdef".into(),
            kinds: vec![EventKind::Status],
            deliveries: Vec::new(),
            sources: vec!["geofence".into(), "driver".into()],
            from_config: false,
        }
    }

    #[test]
    fn filters_by_kind_delivery_and_source() {
        let s = sub();
        assert!(s.wants(EventKind::Status, DeliveryId(1), Some("geofence")));
        assert!(!s.wants(EventKind::Status, DeliveryId(1), Some("api")));
        assert!(!s.wants(EventKind::Anomaly, DeliveryId(1), None));
        let only_7 = Subscription {
            deliveries: vec![DeliveryId(7)],
            kinds: Vec::new(),
            ..sub()
        };
        assert!(only_7.wants(EventKind::Proof, DeliveryId(7), None));
        assert!(!only_7.wants(EventKind::Proof, DeliveryId(8), None));
    }

    #[test]
    fn rejects_bad_ids_urls_and_short_secrets_and_never_prints_the_secret() {
        assert!(sub().validate().is_ok());
        for bad in [
            Subscription {
                id: "a b".into(),
                ..sub()
            },
            Subscription {
                url: "ftp://x/".into(),
                ..sub()
            },
            Subscription {
                url: "not a url".into(),
                ..sub()
            },
            Subscription {
                secret: "short".into(),
                ..sub()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        assert!(!format!("{:?}", sub()).contains("0123456789abcdef"));
    }
}
