//! The task that moves webhook bytes: it feeds the [`Dispatcher`] the outbox rows and the
//! result of every request, sends what it is told (bounded concurrency, a timeout per request),
//! and settles rows in the store. All decisions are the dispatcher's.

use crate::durable::outbox::DeadLetter;
use crate::durable::store::Store;
use crate::metrics::{ReasonLabel, WebhookMetrics};
use crate::webhooks::dispatch::{Action, Dispatcher, DispatcherConfig, Outcome, Pending, RowKey};
use crate::webhooks::sign;
use crate::webhooks::subscription::Subscription;
use protocol::DeliveryId;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Longest sleep between two looks at the dispatcher (ownership can change without a wake-up).
const IDLE_WAKE: Duration = Duration::from_millis(500);

/// Whether this hub sends a delivery's webhooks (it owns the delivery).
pub type Owns = Arc<dyn Fn(DeliveryId) -> bool + Send + Sync>;

/// What the sender needs beyond the dispatcher's tuning.
#[derive(Clone, Debug)]
pub struct SenderConfig {
    pub dispatcher: DispatcherConfig,
    pub request_timeout: Duration,
    pub max_in_flight: usize,
}

impl SenderConfig {
    pub fn from_config(c: &crate::config::WebhookConfig) -> Self {
        Self {
            dispatcher: DispatcherConfig {
                backoff_base_ms: c.backoff_base_ms,
                backoff_max_ms: c.backoff_max_ms,
                dead_letter_after_ms: c.dead_letter_after_s.saturating_mul(1000),
            },
            request_timeout: Duration::from_millis(c.request_timeout_ms),
            max_in_flight: c.max_in_flight.max(1),
        }
    }
}

/// The HTTPS client of webhooks: public web roots plus the CAs in `ca` (PEM), ring, HTTP/1.1
/// or h2, `timeout` per request.
pub fn http_client(ca: Option<&Path>, timeout: Duration) -> anyhow::Result<reqwest::Client> {
    use anyhow::Context;
    let tls = notify::transport::tls_client_config(ca).with_context(|| match ca {
        Some(p) => format!("loading the webhook CA {}", p.display()),
        None => "building the webhook TLS config".into(),
    })?;
    let mut tls = (*tls).clone();
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("trackline-hub/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("building the webhook HTTP client")
}

/// Sends one row, signed now.
pub async fn send_one(client: &reqwest::Client, sub: &Subscription, row: &Pending) -> Outcome {
    let t_s = nodekit::unix_s();
    let r = client
        .post(&sub.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(
            sign::SIGNATURE_HEADER,
            sign::signature(sub.secret.as_bytes(), t_s, &row.body),
        )
        .header(sign::IDEMPOTENCY_HEADER, row.idempotency_key.as_str())
        .header(sign::KIND_HEADER, row.kind.as_str())
        .body(row.body.to_vec())
        .send()
        .await;
    match r {
        Ok(resp) if resp.status().is_success() => Outcome::Delivered,
        Ok(resp) => Outcome::Status {
            code: resp.status().as_u16(),
            retry_after_s: resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok()),
        },
        Err(e) if e.is_timeout() => Outcome::Timeout,
        Err(e) if e.is_connect() => Outcome::Connect,
        Err(_) => Outcome::Reset,
    }
}

/// Starts the sender; it stops on `shutdown`, abandoning requests in flight (their rows stay
/// in the outbox and are sent again after a restart).
pub fn spawn_webhook_sender(
    store: Store,
    config: SenderConfig,
    client: reqwest::Client,
    metrics: Arc<WebhookMetrics>,
    owns: Owns,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(
        async move {
            if let Err(e) = run(store, config, client, metrics, owns, shutdown).await {
                tracing::error!(error = %e, "webhook sender stopped");
            }
        }
        .instrument(tracing::info_span!("webhooks")),
    )
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::durable::store::StoreError> + Send + 'static,
) -> anyhow::Result<T> {
    Ok(tokio::task::spawn_blocking(f).await??)
}

async fn run(
    store: Store,
    config: SenderConfig,
    client: reqwest::Client,
    metrics: Arc<WebhookMetrics>,
    owns: Owns,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut dispatcher = Dispatcher::new(config.dispatcher, rand::random());
    // News published before the scan are in the scan too (the dispatcher ignores repeats).
    let _ = store.take_outbox_news();
    let mut subs = load_subscriptions(&store).await?;
    let s = store.clone();
    let rows = blocking(move || s.outbox_rows()).await?;
    tracing::info!(
        subscriptions = subs.len(),
        pending = rows.len(),
        "webhook outbox loaded"
    );
    dispatcher.handle_rows(rows);
    dispatcher.retain_subscriptions(&subs.keys().cloned().collect::<Vec<_>>());

    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(RowKey, Outcome)>();
    let mut requests = tokio::task::JoinSet::new();
    let mut results: Vec<(RowKey, Outcome)> = Vec::new();
    loop {
        let (rows, changed) = store.take_outbox_news();
        if changed {
            subs = load_subscriptions(&store).await?;
        }
        dispatcher.handle_rows(rows);
        if changed {
            dispatcher.retain_subscriptions(&subs.keys().cloned().collect::<Vec<_>>());
        }
        while let Ok(r) = done_rx.try_recv() {
            results.push(r);
        }
        while requests.try_join_next().is_some() {}

        // Results first, settled in the store before the next row of a queue is sent.
        let now = nodekit::unix_ms();
        let (mut done, mut dead) = (Vec::new(), Vec::new());
        for (key, outcome) in results.drain(..) {
            if outcome == Outcome::Delivered {
                metrics.sent.inc();
            } else {
                metrics
                    .failed
                    .get_or_create(&ReasonLabel {
                        reason: outcome.reason(),
                    })
                    .inc();
            }
            for action in dispatcher.handle_result(now, &key, outcome) {
                match action {
                    Action::Ack(k) => done.push(k),
                    Action::Retry { key, at_ms } => {
                        metrics.retried.inc();
                        tracing::debug!(subscription = %key.subscription, delivery_id = %key.delivery, oseq = key.oseq, reason = outcome.reason(), in_ms = at_ms.saturating_sub(now), "webhook failed; retrying");
                    }
                    Action::DeadLetter { row, reason } => {
                        metrics.dead_letters.inc();
                        tracing::warn!(subscription = %row.key.subscription, delivery_id = %row.key.delivery, key = %row.idempotency_key, %reason, "webhook dead-lettered");
                        dead.push(dead_letter(row, reason, now));
                    }
                    Action::Send(_) | Action::Drop(_) => {}
                }
            }
        }
        settle(&store, done, dead).await;
        let room = config.max_in_flight.saturating_sub(requests.len());
        let owns_now = |id: DeliveryId| (*owns)(id);
        let mut dropped = Vec::new();
        for action in dispatcher.poll(now, room, owns_now) {
            match action {
                Action::Send(row) => {
                    let Some(sub) = subs.get(&row.key.subscription).cloned() else {
                        dispatcher.retain_subscriptions(&subs.keys().cloned().collect::<Vec<_>>());
                        continue;
                    };
                    let (client, done_tx) = (client.clone(), done_tx.clone());
                    requests.spawn(async move {
                        let outcome = send_one(&client, &sub, &row).await;
                        let _ = done_tx.send((row.key, outcome));
                    });
                }
                Action::Drop(k) => dropped.push(k),
                _ => {}
            }
        }
        settle(&store, dropped, Vec::new()).await;
        let (pending, oldest_ms) = dispatcher.pending(now, owns_now);
        metrics.pending.set(pending as i64);
        metrics
            .oldest_pending_age_seconds
            .set((oldest_ms / 1000) as i64);

        let wait = dispatcher.next_wake_ms(owns_now).map_or(IDLE_WAKE, |at| {
            Duration::from_millis(at.saturating_sub(now)).min(IDLE_WAKE)
        });
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = store.outbox_news() => {}
            Some(r) = done_rx.recv() => results.push(r),
            _ = tokio::time::sleep(wait) => {}
        }
    }
    requests.abort_all();
    Ok(())
}

/// Deletes delivered and dropped rows and stores dead letters, in one write transaction.
async fn settle(store: &Store, done: Vec<RowKey>, dead: Vec<DeadLetter>) {
    if done.is_empty() && dead.is_empty() {
        return;
    }
    let s = store.clone();
    if let Err(e) = blocking(move || s.settle_outbox(&done, &dead)).await {
        // The rows stay in the outbox and are sent again after a restart.
        tracing::error!(error = %e, "settling webhook rows failed");
    }
}

async fn load_subscriptions(store: &Store) -> anyhow::Result<HashMap<String, Subscription>> {
    let s = store.clone();
    let subs = blocking(move || s.webhook_subscriptions()).await?;
    Ok(subs.into_iter().map(|s| (s.id.clone(), s)).collect())
}

fn dead_letter(row: Pending, reason: String, now_ms: u64) -> DeadLetter {
    DeadLetter {
        subscription: row.key.subscription,
        delivery_id: row.key.delivery.0,
        oseq: row.key.oseq,
        kind: row.kind,
        idempotency_key: row.idempotency_key,
        created_ms: row.created_ms,
        dead_ms: now_ms,
        body: serde_json::from_slice(&row.body).unwrap_or(serde_json::Value::Null),
        reason,
    }
}
