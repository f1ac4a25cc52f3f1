//! Crash safety of the real binary: concurrent status changes, SIGKILL in the middle of the
//! run, restart on the same data directory. Every acknowledged event must be in the log, and a
//! consumer resuming with the last event seq it saw must get exactly the events it missed.

mod support;

use futures::StreamExt;
use protocol::api::{ChangeStatus, CreateDelivery, DeliveryCreated, StatusChanged};
use protocol::consumer::{ConsumerFrame, Snapshot};
use protocol::status::DeliveryStatus::{self, *};
use protocol::{DeliveryId, DriverId};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{http_client, HubProcess, Pki, TestDir, DROPOFF, PICKUP, WAIT};
use tokio_tungstenite::tungstenite::Message;

/// Deliveries driven concurrently, and the statuses each goes through after creation.
const DELIVERIES: u64 = 24;
const WORKERS: u64 = 6;
const PATH: [DeliveryStatus; 6] = [
    Preparing,
    DriverAssigned,
    PickedUp,
    EnRoute,
    Arriving,
    Delivered,
];
/// The hub is killed once this many status changes were acknowledged.
const KILL_AFTER_ACKS: usize = 90;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

async fn ws_connect(pki: &Pki, hub: &HubProcess, id: DeliveryId, query: &str) -> Ws {
    let tls =
        certs::client_config_with_roots(pki.ca(), &[b"http/1.1"], certs::TlsFor::Tcp).expect("tls");
    let tcp = tokio::net::TcpStream::connect(hub.https)
        .await
        .expect("tcp");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .expect("tls");
    let u = format!(
        "wss://localhost:{}/api/v1/tracking/{id}/connect{query}",
        hub.https.port()
    );
    tokio_tungstenite::client_async(u, stream)
        .await
        .expect("websocket")
        .0
}

/// Reads frames until `stop` says so or the socket ends; returns the status seqs seen.
async fn read_until(ws: &mut Ws, seqs: &mut Vec<u64>, stop: impl Fn(&ConsumerFrame) -> bool) {
    loop {
        let msg = match tokio::time::timeout(WAIT, ws.next()).await {
            Ok(Some(Ok(m))) => m,
            _ => return,
        };
        let Message::Text(t) = msg else { continue };
        let frame = ConsumerFrame::from_json(&t).expect("frame");
        if let ConsumerFrame::Status(e) = &frame {
            seqs.push(e.event_seq);
        }
        if stop(&frame) {
            return;
        }
    }
}

/// Acknowledged events: delivery -> seq -> status.
type Acked = Arc<Mutex<BTreeMap<DeliveryId, BTreeMap<u64, DeliveryStatus>>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_run_loses_no_acknowledged_event_and_consumers_resume_without_gaps() {
    certs::install_default_crypto_provider();
    let dir = TestDir::new("crash");
    let pki = Pki::new(&dir);
    let (config_path, op) = support::write_process_config(&dir, &pki, |_| {});
    let http = http_client(&pki);

    let hub = HubProcess::start(&config_path);
    let acked: Acked = Arc::default();
    let mut created: Vec<DeliveryCreated> = Vec::new();
    for _ in 0..DELIVERIES {
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
        acked
            .lock()
            .expect("lock")
            .entry(d.delivery_id)
            .or_default()
            .insert(d.last_event_seq, d.status);
        created.push(d);
    }

    // Consumers watching a few deliveries when the hub dies.
    let watched: Vec<DeliveryCreated> = created.iter().step_by(4).cloned().collect();
    let mut consumers = Vec::new();
    for (i, d) in watched.iter().enumerate() {
        let ws = ws_connect(
            &pki,
            &hub,
            d.delivery_id,
            &format!("?token={}", d.tracking_token),
        )
        .await;
        let id = d.delivery_id;
        // Half read until the socket dies with the hub; the others leave after event 2
        // (an app sent to the background) and miss everything after it.
        let leaves_early = i % 2 == 1;
        consumers.push(tokio::spawn(async move {
            let mut ws = ws;
            let mut seqs = Vec::new();
            read_until(&mut ws, &mut seqs, |f| {
                leaves_early && matches!(f, ConsumerFrame::Status(e) if e.event_seq >= 2)
            })
            .await;
            (id, seqs)
        }));
    }

    // Workers push every delivery along the path, concurrently, with idempotency keys.
    let acks = Arc::new(AtomicUsize::new(0));
    let in_flight: Arc<Mutex<HashMap<DeliveryId, (DeliveryStatus, String)>>> = Arc::default();
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let mine: Vec<DeliveryId> = created
            .iter()
            .map(|d| d.delivery_id)
            .filter(|id| id.0 % WORKERS == w)
            .collect();
        let (http, url, op) = (http.clone(), hub.url("/api/v1/deliveries"), op.clone());
        let (acked, acks, in_flight) = (acked.clone(), acks.clone(), in_flight.clone());
        workers.push(tokio::spawn(async move {
            for (step, status) in PATH.iter().enumerate() {
                for id in &mine {
                    let key = format!("crash-{id}-{step}");
                    in_flight
                        .lock()
                        .expect("lock")
                        .insert(*id, (*status, key.clone()));
                    let r = http
                        .post(format!("{url}/{id}/status"))
                        .bearer_auth(&op)
                        .json(&ChangeStatus {
                            status: *status,
                            idempotency_key: Some(key),
                            driver_id: (*status == DriverAssigned).then_some(DriverId(id.0)),
                            metadata: serde_json::Value::Null,
                        })
                        .send()
                        .await;
                    let Ok(r) = r else { return };
                    if r.status() != 200 {
                        return;
                    }
                    let Ok(c) = r.json::<StatusChanged>().await else {
                        return;
                    };
                    in_flight.lock().expect("lock").remove(id);
                    acked
                        .lock()
                        .expect("lock")
                        .entry(*id)
                        .or_default()
                        .insert(c.event_seq, c.status);
                    acks.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while acks.load(Ordering::SeqCst) < KILL_AFTER_ACKS {
        assert!(
            tokio::time::Instant::now() < deadline,
            "status changes too slow"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    hub.kill();
    let total_acks = acks.load(Ordering::SeqCst);
    for w in workers {
        w.await.expect("worker");
    }
    assert!(
        total_acks < (DELIVERIES as usize) * PATH.len(),
        "the kill landed mid-run ({total_acks} acks)"
    );
    let mut before_crash: HashMap<DeliveryId, Vec<u64>> = HashMap::new();
    for c in consumers {
        let (id, seqs) = c.await.expect("consumer");
        before_crash.insert(id, seqs);
    }

    // Restart on the same data directory.
    let hub = HubProcess::start(&config_path);
    let acked = acked.lock().expect("lock").clone();
    let mut last_seq: HashMap<DeliveryId, u64> = HashMap::new();
    for d in &created {
        let id = d.delivery_id;
        let r = http
            .get(hub.url(&format!("/api/v1/tracking/{id}/status")))
            .bearer_auth(&d.tracking_token)
            .send()
            .await
            .expect("status");
        assert_eq!(r.status(), 200, "delivery {id} survived");
        let snap: Snapshot = r.json().await.expect("json");
        // The full log from the start, over the WebSocket resume path.
        let mut ws = ws_connect(
            &pki,
            &hub,
            id,
            &format!("?token={}&last_event_seq=0", d.tracking_token),
        )
        .await;
        let mut seqs = Vec::new();
        let mut statuses = BTreeMap::new();
        let last = snap.last_event_seq;
        if last > 0 {
            loop {
                let msg = tokio::time::timeout(WAIT, ws.next())
                    .await
                    .expect("frame in time")
                    .expect("open")
                    .expect("ws");
                let Message::Text(t) = msg else { continue };
                if let ConsumerFrame::Status(e) = ConsumerFrame::from_json(&t).expect("frame") {
                    seqs.push(e.event_seq);
                    statuses.insert(e.event_seq, e.status);
                    if e.event_seq == last {
                        break;
                    }
                }
            }
        }
        assert_eq!(
            seqs,
            (1..=last).collect::<Vec<_>>(),
            "delivery {id}: a gap-free log"
        );
        for (seq, status) in acked.get(&id).into_iter().flatten() {
            assert_eq!(
                statuses.get(seq),
                Some(status),
                "acknowledged event {seq} of delivery {id} is in the log"
            );
        }
        for w in statuses.values().collect::<Vec<_>>().windows(2) {
            assert!(w[0].check_transition(*w[1]).is_ok(), "{} -> {}", w[0], w[1]);
        }
        last_seq.insert(id, last);
    }

    // Consumers resume with the last seq they saw and get exactly what they missed.
    let mut missed_total = 0;
    for d in &watched {
        let id = d.delivery_id;
        let seen = before_crash.get(&id).cloned().unwrap_or_default();
        let resume_from = seen.last().copied().unwrap_or(1);
        let mut ws = ws_connect(
            &pki,
            &hub,
            id,
            &format!("?token={}&last_event_seq={resume_from}", d.tracking_token),
        )
        .await;
        let last = last_seq[&id];
        let mut resumed = Vec::new();
        if resume_from < last {
            read_until(
                &mut ws,
                &mut resumed,
                |f| matches!(f, ConsumerFrame::Status(e) if e.event_seq >= last),
            )
            .await;
        }
        assert_eq!(
            resumed,
            (resume_from + 1..=last).collect::<Vec<_>>(),
            "delivery {id}: exactly the missed events"
        );
        missed_total += resumed.len();
        let mut all = seen.clone();
        all.extend(&resumed);
        assert_eq!(
            all,
            (2..=last).collect::<Vec<_>>(),
            "delivery {id}: no gap, no duplicate"
        );
    }
    assert!(missed_total > 0, "some consumer had events to catch up on");

    // The same over WebTransport: the browser-style client pins the certificate by hash.
    let info: serde_json::Value = http
        .get(hub.url("/api/v1/webtransport/info"))
        .send()
        .await
        .expect("info")
        .json()
        .await
        .expect("json");
    let hash = {
        use base64::Engine;
        let b = base64::engine::general_purpose::STANDARD
            .decode(info["cert_sha256_b64"].as_str().expect("hash"))
            .expect("base64");
        <[u8; 32]>::try_from(b.as_slice()).expect("32 bytes")
    };
    let port = info["port"].as_u64().expect("port");
    let d = &watched[0];
    let last = last_seq[&d.delivery_id];
    let client = wtransport::ClientConfig::builder()
        .with_bind_default()
        .with_server_certificate_hashes([wtransport::tls::Sha256Digest::new(hash)])
        .build();
    let endpoint = wtransport::Endpoint::client(client).expect("wt client");
    let conn = tokio::time::timeout(
        WAIT,
        endpoint.connect(format!(
            "https://127.0.0.1:{port}/api/v1/tracking/{}/wt?token={}&last_event_seq=1",
            d.delivery_id, d.tracking_token
        )),
    )
    .await
    .expect("wt in time")
    .expect("wt session");
    let stream = tokio::time::timeout(WAIT, conn.accept_uni())
        .await
        .expect("uni in time")
        .expect("uni");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stream));
    let mut wt_seqs = Vec::new();
    while wt_seqs.last().copied().unwrap_or(1) < last {
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .expect("line in time")
            .expect("read")
            .expect("open");
        if let ConsumerFrame::Status(e) = ConsumerFrame::from_json(&line).expect("frame") {
            wt_seqs.push(e.event_seq);
        }
    }
    assert_eq!(
        wt_seqs,
        (2..=last).collect::<Vec<_>>(),
        "webtransport resume"
    );
    drop(conn);

    // A request in flight at the kill, retried with its key: replayed if it was committed,
    // appended once otherwise.
    let in_flight = in_flight.lock().expect("lock").clone();
    assert!(
        !in_flight.is_empty(),
        "some requests were cut off by the kill"
    );
    eprintln!(
        "acknowledged before the kill: {total_acks} status changes; cut off in flight: {}; \
         events caught up by resuming consumers: {missed_total}",
        in_flight.len()
    );
    for (id, (status, key)) in in_flight {
        let r = http
            .post(hub.url(&format!("/api/v1/deliveries/{id}/status")))
            .bearer_auth(&op)
            .json(&ChangeStatus {
                status,
                idempotency_key: Some(key),
                driver_id: (status == DriverAssigned).then_some(DriverId(id.0)),
                metadata: serde_json::Value::Null,
            })
            .send()
            .await
            .expect("retry");
        assert_eq!(r.status(), 200, "retry of {status} for {id}");
        let c: StatusChanged = r.json().await.expect("json");
        let last = last_seq[&id];
        if c.replayed {
            assert!(c.event_seq <= last, "a replay names a stored event");
        } else {
            assert_eq!(c.event_seq, last + 1, "a new event follows the log");
        }
        assert_eq!(c.status, status);
    }
    hub.kill();
}
