//! Signed webhooks against a local HTTPS receiver that verifies every signature and its time
//! window, counts duplicates by idempotency key, checks per-delivery order, and fails on purpose
//! (5xx with and without `Retry-After`, a hang past the client's timeout, a connection reset).
//! The main test SIGKILLs the real hub binary while webhooks are failing and pending.

mod support;

use protocol::api::{ChangeStatus, CreateDelivery, DeliveryCreated, StatusChanged};
use protocol::geo::destination;
use protocol::status::DeliveryStatus::{self, *};
use protocol::token::Subject;
use protocol::wire::{Fix, RoutedFix};
use protocol::DriverId;
use region_hub::config::WebhookConfig;
use region_hub::webhooks::sign;
use region_hub::webhooks::{EventKind, Subscription};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{http_client, metric, metrics_page, HubProcess, Pki, TestDir, DROPOFF, PICKUP};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "test-secret-0123456789";
/// The receiver's replay window (seconds): a signature made further from now is refused.
const TOLERANCE_S: u64 = 300;
/// How long a test waits for the hub or the receiver to get somewhere before failing.
const PATIENCE: Duration = Duration::from_secs(90);

/// How the receiver answers.
const FLAKY: u8 = 0;
const SUCCEED: u8 = 1;
const ALWAYS_500: u8 = 2;

/// What the receiver saw.
#[derive(Debug, Default)]
struct Seen {
    /// (path, idempotency key) -> body of the first accepted copy.
    accepted: BTreeMap<(String, String), Vec<u8>>,
    /// Accepted copies of a key accepted before.
    duplicates: usize,
    /// A different body under a key accepted before.
    changed_bodies: Vec<String>,
    /// Requests whose signature or time window did not check out.
    bad_signatures: Vec<String>,
    /// First-seen status events that came after a later one of the same delivery.
    out_of_order: Vec<String>,
    last_seq: HashMap<(String, u64), u64>,
    /// Failures served, by kind.
    failures: BTreeMap<&'static str, usize>,
    /// Requests held open right now (the hang).
    hanging: usize,
}

struct Receiver {
    port: u16,
    mode: Arc<AtomicU8>,
    seen: Arc<Mutex<Seen>>,
    changed: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    async fn start(pki: &Pki, mode: u8) -> Self {
        let files = pki.node("receiver", certs::NodeRole::Hub);
        let chain = certs::load_certs_pem(&files.cert).expect("cert");
        let key = certs::load_key_pem(&files.key).expect("key");
        let tls =
            certs::server_tls_config(chain, key, &[b"http/1.1"], certs::TlsFor::Tcp).expect("tls");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let mode = Arc::new(AtomicU8::new(mode));
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let changed = Arc::new(tokio::sync::Notify::new());
        let requests = Arc::new(AtomicUsize::new(0));
        let task = {
            let (mode, seen, changed) = (mode.clone(), seen.clone(), changed.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        return;
                    };
                    let (acceptor, mode, seen, changed, requests) = (
                        acceptor.clone(),
                        mode.clone(),
                        seen.clone(),
                        changed.clone(),
                        requests.clone(),
                    );
                    tokio::spawn(async move {
                        serve(tcp, acceptor, &mode, &seen, &requests).await;
                        changed.notify_waiters();
                    });
                }
            })
        };
        Self {
            port,
            mode,
            seen,
            changed,
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }

    /// Waits until `done` holds for what the receiver saw, or fails after [`PATIENCE`].
    async fn wait_for(&self, what: &str, done: impl Fn(&Seen) -> bool) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let notified = self.changed.notified();
            if done(&self.seen.lock().expect("lock")) {
                return;
            }
            // Also look again now and then: a hang ends without a request finishing.
            let _ = tokio::time::timeout(Duration::from_millis(200), notified).await;
            let seen = self.seen.lock().expect("lock");
            assert!(
                tokio::time::Instant::now() < deadline,
                "receiver: {what} did not happen: {seen:?}"
            );
        }
    }
}

/// One connection, one request: read it, check it, answer as the mode says.
async fn serve(
    tcp: tokio::net::TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    mode: &AtomicU8,
    seen: &Mutex<Seen>,
    requests: &AtomicUsize,
) {
    let Ok(mut tls) = acceptor.accept(tcp).await else {
        return;
    };
    let Some((path, headers, body)) = read_request(&mut tls).await else {
        return;
    };
    // Every request is checked, failing ones too.
    let key = headers
        .get("trackline-idempotency-key")
        .cloned()
        .unwrap_or_default();
    let sig = headers
        .get("trackline-signature")
        .cloned()
        .unwrap_or_default();
    if let Err(e) = sign::verify(
        SECRET.as_bytes(),
        &sig,
        &body,
        nodekit::unix_s(),
        TOLERANCE_S,
    ) {
        seen.lock()
            .expect("lock")
            .bad_signatures
            .push(format!("{key}: {e}"));
    }
    let n = requests.fetch_add(1, Ordering::SeqCst);
    let failure = match (mode.load(Ordering::SeqCst), path.as_str()) {
        (_, "/gone") => Some("410"),
        (SUCCEED, _) => None,
        (ALWAYS_500, _) => Some("500"),
        _ => match n % 5 {
            0 => Some("503-retry-after"),
            1 => Some("500"),
            2 => Some("hang"),
            3 => Some("reset"),
            _ => None,
        },
    };
    if let Some(kind) = failure {
        *seen.lock().expect("lock").failures.entry(kind).or_default() += 1;
    }
    let answer: &[u8] = match failure {
        None => {
            record(seen, path, key, body);
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        }
        Some("503-retry-after") => {
            b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        }
        Some("500") => {
            b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        }
        Some("410") => b"HTTP/1.1 410 Gone\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        Some("hang") => {
            // Hold the request until the client gives up (its timeout) and closes.
            seen.lock().expect("lock").hanging += 1;
            let mut buf = [0u8; 64];
            while matches!(tls.read(&mut buf).await, Ok(n) if n > 0) {}
            seen.lock().expect("lock").hanging -= 1;
            return;
        }
        Some(_) => {
            // Reset: RST instead of an answer.
            let _ = tls.get_ref().0.set_zero_linger();
            return;
        }
    };
    let _ = tls.write_all(answer).await;
    let _ = tls.shutdown().await;
}

fn record(seen: &Mutex<Seen>, path: String, key: String, body: Vec<u8>) {
    let mut guard = seen.lock().expect("lock");
    let seen = &mut *guard;
    if let Some(first) = seen.accepted.get(&(path.clone(), key.clone())) {
        if *first != body {
            seen.changed_bodies.push(key);
        }
        seen.duplicates += 1;
        return;
    }
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    if v["kind"] == "status" {
        let delivery = v["delivery_id"].as_u64().unwrap_or(0);
        let seq = v["data"]["event_seq"].as_u64().unwrap_or(0);
        let last = seen.last_seq.entry((path.clone(), delivery)).or_insert(0);
        if seq <= *last {
            let msg = format!("{path} delivery {delivery}: seq {seq} after {last}");
            seen.out_of_order.push(msg);
        } else {
            *last = seq;
        }
    }
    seen.accepted.insert((path, key), body);
}

async fn read_request(
    tls: &mut tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
) -> Option<(String, HashMap<String, String>, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tls.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end]).ok()?.to_owned();
    let mut lines = head.split("\r\n");
    let path = lines.next()?.split_whitespace().nth(1)?.to_owned();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers.get("content-length")?.parse().ok()?;
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let n = tls.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some((path, headers, body))
}

fn subscription(id: &str, url: String) -> Subscription {
    Subscription {
        id: id.into(),
        url,
        secret: SECRET.into(),
        kinds: Vec::new(),
        deliveries: Vec::new(),
        sources: Vec::new(),
        from_config: false,
    }
}

/// Webhook settings with short timeouts so a test exercises many retries.
fn fast_webhooks(pki: &Pki, subscriptions: Vec<Subscription>) -> WebhookConfig {
    WebhookConfig {
        subscriptions,
        dead_letter_after_s: 3_600,
        request_timeout_ms: 400,
        backoff_base_ms: 50,
        backoff_max_ms: 400,
        max_in_flight: 8,
        ca: Some(pki.dir.join("ca.pem")),
    }
}

const PATH: [DeliveryStatus; 6] = [
    Preparing,
    DriverAssigned,
    PickedUp,
    EnRoute,
    Arriving,
    Delivered,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_webhooks_fail_loses_nothing_and_each_event_arrives_once_after_dedupe() {
    certs::install_default_crypto_provider();
    let dir = TestDir::new("webhooks-crash");
    let pki = Pki::new(&dir);
    let receiver = Receiver::start(&pki, FLAKY).await;
    let (config_path, op) = support::write_process_config(&dir, &pki, |c| {
        c.webhooks = fast_webhooks(&pki, vec![subscription("orders", receiver.url("/hook"))]);
    });
    let http = http_client(&pki);

    let hub = HubProcess::start(&config_path);
    // Every committed (acknowledged) event: idempotency key -> status.
    let mut committed: BTreeMap<String, DeliveryStatus> = BTreeMap::new();
    let mut ids = Vec::new();
    for _ in 0..6 {
        let r = http
            .post(hub.url("/api/v1/deliveries"))
            .bearer_auth(&op)
            .json(&CreateDelivery {
                delivery_id: None,
                pickup: PICKUP,
                dropoff: DROPOFF,
                driver_id: None,
            })
            .send()
            .await
            .expect("create");
        assert_eq!(r.status(), 201);
        let d: DeliveryCreated = r.json().await.expect("json");
        committed.insert(
            format!("status:{}:{}", d.delivery_id, d.last_event_seq),
            d.status,
        );
        ids.push(d.delivery_id);
    }
    for status in PATH {
        for id in &ids {
            let r = http
                .post(hub.url(&format!("/api/v1/deliveries/{id}/status")))
                .bearer_auth(&op)
                .json(&ChangeStatus {
                    status,
                    idempotency_key: None,
                    driver_id: (status == DriverAssigned).then_some(DriverId(id.0)),
                    metadata: serde_json::Value::Null,
                })
                .send()
                .await
                .expect("change");
            assert_eq!(r.status(), 200);
            let c: StatusChanged = r.json().await.expect("json");
            committed.insert(format!("status:{id}:{}", c.event_seq), c.status);
        }
    }
    let total = committed.len();
    assert_eq!(total, 6 * 7);

    // Kill the hub mid-delivery: some webhooks through, one held open, most still pending.
    receiver
        .wait_for("a few deliveries and a hanging request", |s| {
            s.accepted.len() >= 10 && s.hanging >= 1
        })
        .await;
    hub.kill();
    let before = receiver.seen.lock().expect("lock").accepted.len();
    assert!(
        before < total,
        "the kill landed while webhooks were pending ({before} of {total} through)"
    );
    {
        let seen = receiver.seen.lock().expect("lock");
        for kind in ["503-retry-after", "500", "hang", "reset"] {
            assert!(
                seen.failures.get(kind).copied().unwrap_or(0) > 0,
                "the receiver served a {kind}: {:?}",
                seen.failures
            );
        }
    }

    // The receiver recovers; the restarted hub delivers the rest from its outbox.
    receiver.mode.store(SUCCEED, Ordering::SeqCst);
    let hub = HubProcess::start(&config_path);
    receiver
        .wait_for("every committed event", |s| s.accepted.len() >= total)
        .await;
    // Wait for the hub to settle everything, so a stray extra delivery would show up.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let page = metrics_page(hub.admin).await;
        if metric(&page, "hub_webhook_pending") == Some(0.0) {
            assert!(metric(&page, "hub_webhook_sent_total").unwrap_or(0.0) >= 1.0);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "pending never drained: {page}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let seen = receiver.seen.lock().expect("lock");
    let got: BTreeSet<&str> = seen.accepted.keys().map(|(_, k)| k.as_str()).collect();
    let want: BTreeSet<&str> = committed.keys().map(String::as_str).collect();
    assert_eq!(
        got, want,
        "exactly the committed events, each once after dedupe"
    );
    assert!(seen.bad_signatures.is_empty(), "{:?}", seen.bad_signatures);
    assert!(seen.out_of_order.is_empty(), "{:?}", seen.out_of_order);
    assert!(seen.changed_bodies.is_empty(), "{:?}", seen.changed_bodies);
    for ((_, key), body) in &seen.accepted {
        let v: serde_json::Value = serde_json::from_slice(body).expect("json body");
        assert_eq!(v["id"], key.as_str());
        assert_eq!(v["kind"], "status");
        assert_eq!(
            v["data"]["status"],
            serde_json::to_value(committed[key]).expect("status"),
            "{key}"
        );
    }
    eprintln!(
        "webhooks: {total} events, {before} through before the SIGKILL, {} duplicates after \
         the restart, failures served {:?}",
        seen.duplicates, seen.failures
    );
    drop(seen);
    drop(hub);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_webhooks_are_dead_lettered_visible_in_the_api_and_metrics_and_can_be_redriven() {
    let dir = TestDir::new("webhooks-dead");
    let pki = Pki::new(&dir);
    let receiver = Receiver::start(&pki, ALWAYS_500).await;
    let mut config = support::config(&dir, &pki);
    config.webhooks = WebhookConfig {
        dead_letter_after_s: 1,
        ..fast_webhooks(
            &pki,
            vec![
                subscription("flaky", receiver.url("/hook")),
                subscription("gone", receiver.url("/gone")),
            ],
        )
    };
    let hub = support::start_with(config).await;
    let http = http_client(&pki);
    let op = hub.mint_token(Subject::Operator, 600);
    let d = support::create(&hub, &http, None).await;
    let key = format!("status:{}:{}", d.delivery_id, d.last_event_seq);

    let deadline = tokio::time::Instant::now() + PATIENCE;
    let letters = loop {
        let r = http
            .get(support::url(&hub, "/api/v1/webhooks/dead-letters"))
            .bearer_auth(&op)
            .send()
            .await
            .expect("dead letters");
        assert_eq!(r.status(), 200);
        let v: serde_json::Value = r.json().await.expect("json");
        let letters = v["dead_letters"].as_array().cloned().unwrap_or_default();
        if letters.len() >= 2 {
            break letters;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no dead letters: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let by_sub: HashMap<&str, &serde_json::Value> = letters
        .iter()
        .map(|l| (l["subscription"].as_str().unwrap_or(""), l))
        .collect();
    assert_eq!(by_sub["gone"]["reason"], "410 Gone");
    assert_eq!(by_sub["gone"]["idempotency_key"], key.as_str());
    let flaky_reason = by_sub["flaky"]["reason"].as_str().unwrap_or("");
    assert!(flaky_reason.starts_with("HTTP 500 after"), "{flaky_reason}");
    assert_eq!(by_sub["flaky"]["body"]["id"], key.as_str());

    let page = metrics_page(hub.admin_addr()).await;
    assert_eq!(metric(&page, "hub_webhook_dead_letters_total"), Some(2.0));
    assert!(metric(&page, "hub_webhook_failed_total{reason=\"5xx\"}").unwrap_or(0.0) >= 1.0);
    assert!(metric(&page, "hub_webhook_failed_total{reason=\"4xx\"}").unwrap_or(0.0) >= 1.0);

    // The receiver is fixed: a redrive delivers the dead letter.
    receiver.mode.store(SUCCEED, Ordering::SeqCst);
    let r = http
        .post(support::url(&hub, "/api/v1/webhooks/flaky/redrive"))
        .bearer_auth(&op)
        .send()
        .await
        .expect("redrive");
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["requeued"], 1);
    receiver
        .wait_for("the redriven webhook", |s| {
            s.accepted.contains_key(&("/hook".to_owned(), key.clone()))
        })
        .await;
    assert!(receiver
        .seen
        .lock()
        .expect("lock")
        .bad_signatures
        .is_empty());
    hub.shutdown();
    hub.join().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anomaly_from_the_drivers_fixes_arrives_once_signed_and_only_where_subscribed() {
    let dir = TestDir::new("webhooks-anomaly");
    let pki = Pki::new(&dir);
    let receiver = Receiver::start(&pki, SUCCEED).await;
    let mut ops = subscription("ops", receiver.url("/ops"));
    ops.kinds = vec![EventKind::Anomaly];
    let mut orders = subscription("orders", receiver.url("/orders"));
    orders.kinds = vec![EventKind::Status];
    let mut config = support::config(&dir, &pki);
    config.webhooks = fast_webhooks(&pki, vec![ops, orders]);
    let hub = support::start_with(config).await;
    let http = http_client(&pki);
    let d = support::create(&hub, &http, Some(8)).await;

    // Parked 600 m west of the pickup (far from both stops) for 5.5 minutes: one stationary
    // anomaly, detected by the hub from the fixes that come through the edge link.
    let spot = destination(PICKUP, 270.0, 600.0);
    let t0 = nodekit::unix_ms() - 900_000;
    let fixes = (0..=11u64)
        .map(|i| {
            let at = destination(spot, (i * 77 % 360) as f64, (i % 2) as f64 * 5.0);
            RoutedFix {
                driver_id: DriverId(8),
                fix: Fix::from_units(
                    i as u32 + 1,
                    t0 + i * 30_000,
                    at.lat,
                    at.lng,
                    90.0,
                    0.0,
                    4.0,
                ),
                edge_rx_ms: t0 + i * 30_000,
            }
        })
        .collect();
    let mut edge = support::Edge::connect(&hub, &pki).await;
    edge.send_fixes(fixes).await;

    receiver
        .wait_for("the anomaly and the creation's status webhooks", |s| {
            s.accepted.keys().any(|(path, _)| path == "/ops")
                && s.accepted.keys().any(|(path, _)| path == "/orders")
        })
        .await;
    let seen = receiver.seen.lock().expect("lock");
    let anomalies: Vec<(&String, &Vec<u8>)> = seen
        .accepted
        .iter()
        .filter(|((path, _), _)| path == "/ops")
        .map(|((_, key), body)| (key, body))
        .collect();
    assert_eq!(anomalies.len(), 1, "{seen:?}");
    let (key, body) = anomalies[0];
    assert!(key.starts_with("anomaly:"), "{key}");
    let v: serde_json::Value = serde_json::from_slice(body).expect("json");
    assert_eq!(v["kind"], "anomaly");
    assert_eq!(v["delivery_id"], d.delivery_id.0);
    assert_eq!(v["data"]["kind"], "stationary", "{v}");
    // The status subscription got the creation's events and never the anomaly.
    assert!(seen
        .accepted
        .iter()
        .filter(|((path, _), _)| path == "/orders")
        .all(|((_, key), _)| key.starts_with("status:")));
    assert!(seen.bad_signatures.is_empty(), "{seen:?}");
    assert!(seen.changed_bodies.is_empty(), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_api_manages_subscriptions_without_ever_returning_the_secret() {
    let dir = TestDir::new("webhooks-api");
    let pki = Pki::new(&dir);
    let receiver = Receiver::start(&pki, SUCCEED).await;
    let mut config = support::config(&dir, &pki);
    config.webhooks = fast_webhooks(&pki, Vec::new());
    let hub = support::start_with(config).await;
    let http = http_client(&pki);
    let op = hub.mint_token(Subject::Operator, 600);
    let hooks = support::url(&hub, "/api/v1/webhooks");

    let r = http.get(&hooks).send().await.expect("no token");
    assert_eq!(r.status(), 401);
    let create = serde_json::json!({
        "id": "orders",
        "url": receiver.url("/hook"),
        "secret": SECRET,
        "kinds": ["status"],
        "sources": ["api"],
    });
    let r = http
        .post(&hooks)
        .bearer_auth(&op)
        .json(&create)
        .send()
        .await
        .expect("create");
    assert_eq!(r.status(), 201);
    let text = r.text().await.expect("text");
    assert!(!text.contains(SECRET), "{text}");
    let r = http
        .post(&hooks)
        .bearer_auth(&op)
        .json(&create)
        .send()
        .await
        .expect("again");
    assert_eq!(r.status(), 409);
    let mut bad = create.clone();
    bad["url"] = "ftp://nowhere".into();
    bad["id"] = "other".into();
    let r = http
        .post(&hooks)
        .bearer_auth(&op)
        .json(&bad)
        .send()
        .await
        .expect("bad url");
    assert_eq!(r.status(), 400);
    let r = http
        .get(&hooks)
        .bearer_auth(&op)
        .send()
        .await
        .expect("list");
    assert_eq!(r.status(), 200);
    let text = r.text().await.expect("text");
    assert!(!text.contains(SECRET), "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(v["webhooks"][0]["id"], "orders");
    assert_eq!(v["webhooks"][0]["kinds"], serde_json::json!(["status"]));

    // The new subscription gets the events committed from now on, signed.
    let d = support::create(&hub, &http, None).await;
    let key = format!("status:{}:{}", d.delivery_id, d.last_event_seq);
    receiver
        .wait_for("the first event", |s| {
            s.accepted.contains_key(&("/hook".to_owned(), key.clone()))
        })
        .await;
    assert!(receiver
        .seen
        .lock()
        .expect("lock")
        .bad_signatures
        .is_empty());

    let one = support::url(&hub, "/api/v1/webhooks/orders");
    let r = http
        .delete(&one)
        .bearer_auth(&op)
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), 204);
    let r = http
        .delete(&one)
        .bearer_auth(&op)
        .send()
        .await
        .expect("again");
    assert_eq!(r.status(), 404);
    let r = http
        .get(&hooks)
        .bearer_auth(&op)
        .send()
        .await
        .expect("list");
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["webhooks"], serde_json::json!([]));
    hub.shutdown();
    hub.join().await;
}

#[test]
fn kinds_serialize_as_documented() {
    assert_eq!(
        serde_json::to_value([EventKind::Status, EventKind::Anomaly, EventKind::Proof])
            .expect("json"),
        serde_json::json!(["status", "anomaly", "proof"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_webhooks_follow_a_delivery_to_its_successor_when_the_owner_goes_away() {
    let dir = TestDir::new("webhooks-cluster");
    let pki = Pki::new(&dir);
    let receiver = Receiver::start(&pki, ALWAYS_500).await;
    let hooks = fast_webhooks(&pki, vec![subscription("orders", receiver.url("/hook"))]);
    let a = support::start_with({
        let mut c =
            support::cluster_hub_config(&dir, &pki, "hub-a", vec![], "trackline-eu-webhooks");
        c.webhooks = hooks.clone();
        c
    })
    .await;
    let seed = a.cluster().expect("cluster").gossip.advertise_addr();
    let b = support::start_with({
        let mut c =
            support::cluster_hub_config(&dir, &pki, "hub-b", vec![seed], "trackline-eu-webhooks");
        c.webhooks = hooks.clone();
        c
    })
    .await;
    let mut hubs = vec![Some(a), Some(b)];
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !hubs.iter().flatten().all(|h| {
        let live = h.cluster().expect("cluster").view.live_hubs();
        live.len() == 2 && live.iter().all(|l| !l.https_addr.is_empty())
    }) {
        assert!(tokio::time::Instant::now() < deadline, "hubs never met");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A delivery created at hub-a (it picks an id it owns); hub-b is its successor.
    let http = http_client(&pki);
    let owner = hubs[0].as_ref().expect("hub-a");
    let d = support::create(owner, &http, Some(7)).await;
    let r = support::change(owner, &http, d.delivery_id, PickedUp, None, Some("p")).await;
    assert_eq!(r.status(), 200);
    let last: StatusChanged = r.json().await.expect("json");
    let want: BTreeSet<String> = (1..=last.event_seq)
        .map(|s| format!("status:{}:{s}", d.delivery_id))
        .collect();
    // The successor holds the rows (replicated with the events), and does not send them.
    let succ = hubs[1].as_ref().expect("hub-b");
    let copies: BTreeSet<String> = succ
        .store()
        .outbox_rows()
        .expect("rows")
        .into_iter()
        .filter(|r| r.key.delivery == d.delivery_id)
        .map(|r| r.idempotency_key)
        .collect();
    assert_eq!(copies, want);
    receiver
        .wait_for("the owner's failing attempts", |s| {
            s.failures.get("500").copied().unwrap_or(0) >= 2
        })
        .await;

    // The owner goes away (no drain); the receiver recovers; the successor delivers.
    let gone = hubs[0].take().expect("hub-a");
    gone.shutdown();
    gone.join().await;
    receiver.mode.store(SUCCEED, Ordering::SeqCst);
    receiver
        .wait_for("every event from the successor", |s| {
            want.iter()
                .all(|k| s.accepted.contains_key(&("/hook".to_owned(), k.clone())))
        })
        .await;
    {
        let seen = receiver.seen.lock().expect("lock");
        assert!(seen.bad_signatures.is_empty(), "{:?}", seen.bad_signatures);
        assert!(seen.out_of_order.is_empty(), "{:?}", seen.out_of_order);
    }
    for h in hubs.into_iter().flatten() {
        h.shutdown();
        h.join().await;
    }
}
