//! Per-delivery consumer registry: newest-wins position slots and bounded reliable queues.
//!
//! Publishing never awaits, and encodes each frame once for all of its subscribers (the bytes
//! are shared). A position replaces whatever the subscriber has not yet sent (a one-value
//! [`PositionSlot`]), so a slow consumer skips positions but never sees them out of order. Reliable frames (status,
//! ETA, location-unavailable, redirect) go into a bounded queue; a consumer whose queue is full
//! is cut off and resumes later with `last_event_seq`.

use bytes::Bytes;
use futures::task::AtomicWaker;
use protocol::consumer::{ConsumerFrame, Position};
use protocol::DeliveryId;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::mpsc;

/// The `transport` of a consumer on WebSocket (metrics label, redirects keep it).
pub const WEBSOCKET: &str = "websocket";
/// The `transport` of a consumer on WebTransport.
pub const WEBTRANSPORT: &str = "webtransport";

/// What a consumer session needs to know about a frame without parsing it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    /// A position; `seq` orders a delivery's positions.
    Position { seq: u64 },
    /// A status event; sessions skip events they already sent.
    Status { event_seq: u64 },
    /// The delivery moved to another hub: the session ends after sending it.
    Redirect,
    /// Anything else (snapshot, ETA, location unavailable).
    Other,
}

/// A frame encoded once: its JSON followed by a newline (the WebTransport stream's framing;
/// [`Encoded::json`] is the same bytes without it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoded {
    pub kind: FrameKind,
    line: Bytes,
}

impl Encoded {
    /// Encodes `frame`.
    pub fn new(frame: &ConsumerFrame) -> Self {
        let kind = match frame {
            ConsumerFrame::Position(p) => FrameKind::Position { seq: p.seq },
            ConsumerFrame::Status(e) => FrameKind::Status {
                event_seq: e.event_seq,
            },
            ConsumerFrame::Redirect { .. } => FrameKind::Redirect,
            _ => FrameKind::Other,
        };
        let mut line = Vec::with_capacity(192);
        if serde_json::to_writer(&mut line, frame).is_err() {
            line.clear();
            line.extend_from_slice(br#"{"type":"error","code":500,"message":"encode"}"#);
        }
        line.push(b'\n');
        Self {
            kind,
            line: Bytes::from(line),
        }
    }

    /// The JSON and its newline.
    pub fn line(&self) -> &Bytes {
        &self.line
    }

    /// The JSON alone.
    pub fn json(&self) -> Bytes {
        self.line.slice(..self.line.len().saturating_sub(1))
    }
}

/// A subscriber's newest position not yet sent: the publisher replaces it, the session takes
/// it. Lighter than a `watch` channel (one small lock and an atomic waker, no version or
/// waiter list), which matters at one per position per consumer.
#[derive(Debug, Default)]
struct SlotInner {
    value: parking_lot::Mutex<Option<Encoded>>,
    waker: AtomicWaker,
    /// The session's end dropped the receiving side.
    closed: AtomicBool,
}

/// The session's side of a subscriber's position slot.
#[derive(Debug)]
pub struct PositionSlot(Arc<SlotInner>);

impl PositionSlot {
    /// Takes the newest position, if one is waiting.
    pub fn take(&self) -> Option<Encoded> {
        self.0.value.lock().take()
    }

    /// Waits for a position and takes it.
    pub fn poll_take(&self, cx: &mut Context<'_>) -> Poll<Encoded> {
        if let Some(v) = self.take() {
            return Poll::Ready(v);
        }
        self.0.waker.register(cx.waker());
        match self.take() {
            Some(v) => Poll::Ready(v),
            None => Poll::Pending,
        }
    }

    /// [`PositionSlot::poll_take`] as a future.
    pub async fn next(&self) -> Encoded {
        std::future::poll_fn(|cx| self.poll_take(cx)).await
    }
}

impl Drop for PositionSlot {
    fn drop(&mut self) {
        self.0.closed.store(true, Ordering::Release);
    }
}

/// What sending a datagram straight from the publisher did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatagramSent {
    /// Queued on the connection.
    Sent,
    /// Not sendable as a datagram (too large for the path, or the peer takes none): the
    /// session sends it on its stream instead.
    Unfit,
    /// The connection is gone.
    Closed,
}

/// A consumer connection that takes positions as datagrams, sent by the publisher itself
/// without waking the consumer's session (a WebTransport session: quinn queues the datagram
/// and its connection driver sends it).
pub trait DatagramOut: Send + Sync + std::fmt::Debug {
    /// Sends `payload` as one datagram, without waiting.
    fn send(&self, payload: &[u8]) -> DatagramSent;
}

struct Subscriber {
    id: u64,
    /// The consumer's transport: a redirect must name the same one at the new hub.
    transport: &'static str,
    position: Arc<SlotInner>,
    reliable: mpsc::Sender<Encoded>,
    /// Positions go here directly when set.
    datagrams: Option<std::sync::Arc<dyn DatagramOut>>,
}

/// What a consumer session reads from.
#[derive(Debug)]
pub struct Subscription {
    pub delivery_id: DeliveryId,
    pub id: u64,
    /// Newest position not yet sent.
    pub position: PositionSlot,
    /// Reliable frames in order; `None` means the hub cut this consumer off (overflow or
    /// the delivery's state was dropped).
    pub reliable: mpsc::Receiver<Encoded>,
}

/// Result of publishing one position.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PositionPush {
    /// Subscribers it was sent to as a datagram, directly.
    pub datagrams: usize,
    /// Subscribers whose session will send it (their newest-position slot was replaced).
    pub queued: usize,
}

/// Result of publishing one frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Published {
    /// Subscribers that got it.
    pub delivered: usize,
    /// Subscribers cut off because their queue was full.
    pub overflowed: usize,
}

/// The registry.
#[derive(Default)]
pub struct Fanout {
    subs: HashMap<DeliveryId, Vec<Subscriber>>,
    next_id: u64,
    queue: usize,
}

impl std::fmt::Debug for Fanout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fanout")
            .field("deliveries", &self.subs.len())
            .finish_non_exhaustive()
    }
}

impl Fanout {
    /// `queue` bounds each subscriber's reliable frames.
    pub fn new(queue: usize) -> Self {
        Self {
            subs: HashMap::new(),
            next_id: 1,
            queue: queue.max(1),
        }
    }

    /// Adds a subscriber to `delivery`'s frames; `transport` is what it is connected over
    /// (`"websocket"` or `"webtransport"`), so that a redirect can keep it. With `datagrams`,
    /// positions are sent there directly (the session gets only those that do not fit).
    pub fn subscribe(
        &mut self,
        delivery: DeliveryId,
        transport: &'static str,
        datagrams: Option<std::sync::Arc<dyn DatagramOut>>,
    ) -> Subscription {
        let id = self.next_id;
        self.next_id += 1;
        let slot = Arc::new(SlotInner::default());
        let (rtx, rrx) = mpsc::channel(self.queue);
        self.subs.entry(delivery).or_default().push(Subscriber {
            id,
            transport,
            position: slot.clone(),
            reliable: rtx,
            datagrams,
        });
        Subscription {
            delivery_id: delivery,
            id,
            position: PositionSlot(slot),
            reliable: rrx,
        }
    }

    /// Removes one subscriber (its session ended).
    pub fn unsubscribe(&mut self, delivery: DeliveryId, id: u64) {
        if let Some(v) = self.subs.get_mut(&delivery) {
            v.retain(|s| s.id != id);
            if v.is_empty() {
                self.subs.remove(&delivery);
            }
        }
    }

    /// Cuts off every subscriber of `delivery` (its state was dropped).
    pub fn remove_delivery(&mut self, delivery: DeliveryId) {
        self.subs.remove(&delivery);
    }

    /// Number of subscribers of `delivery`.
    pub fn subscribers(&self, delivery: DeliveryId) -> usize {
        self.subs.get(&delivery).map_or(0, Vec::len)
    }

    /// Sends `pos` to every subscriber (encoded once, only when someone is subscribed): as a
    /// datagram right away where the subscriber takes them, else by replacing its pending
    /// position.
    pub fn publish_position(&mut self, pos: &Position) -> PositionPush {
        let mut out = PositionPush::default();
        let Some(v) = self.subs.get_mut(&pos.delivery_id) else {
            return out;
        };
        let frame = Encoded::new(&ConsumerFrame::Position(pos.clone()));
        v.retain(|s| {
            if let Some(d) = &s.datagrams {
                match d.send(&frame.line[..frame.line.len().saturating_sub(1)]) {
                    DatagramSent::Sent => {
                        out.datagrams += 1;
                        return true;
                    }
                    DatagramSent::Closed => return false,
                    DatagramSent::Unfit => {}
                }
            }
            if s.position.closed.load(Ordering::Acquire) {
                return false;
            }
            *s.position.value.lock() = Some(frame.clone());
            s.position.waker.wake();
            out.queued += 1;
            true
        });
        if v.is_empty() {
            self.subs.remove(&pos.delivery_id);
        }
        out
    }

    /// Queues a reliable frame for every subscriber of `delivery`, cutting off full ones.
    pub fn publish_reliable(&mut self, delivery: DeliveryId, frame: &ConsumerFrame) -> Published {
        if !self.subs.contains_key(&delivery) {
            return Published::default();
        }
        let encoded = Encoded::new(frame);
        self.publish_each(delivery, |_| encoded.clone())
    }

    /// Queues a `redirect` for every subscriber of `delivery`, each to the URL `url` gives
    /// for its own transport (a WebTransport consumer stays on WebTransport).
    pub fn publish_redirect(
        &mut self,
        delivery: DeliveryId,
        url: impl Fn(&'static str) -> String,
    ) -> Published {
        self.publish_each(delivery, |transport| {
            Encoded::new(&ConsumerFrame::Redirect {
                url: url(transport),
            })
        })
    }

    fn publish_each(
        &mut self,
        delivery: DeliveryId,
        frame: impl Fn(&'static str) -> Encoded,
    ) -> Published {
        let mut out = Published::default();
        let Some(v) = self.subs.get_mut(&delivery) else {
            return out;
        };
        v.retain(|s| match s.reliable.try_send(frame(s.transport)) {
            Ok(()) => {
                out.delivered += 1;
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                out.overflowed += 1;
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
        if v.is_empty() {
            self.subs.remove(&delivery);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(seq: u64) -> Position {
        Position {
            delivery_id: DeliveryId(1),
            seq,
            lat: 60.0,
            lng: 24.0,
            heading_deg: 0.0,
            speed_mps: 0.0,
            accuracy_m: 0.0,
            ts_ms: seq,
        }
    }

    #[tokio::test]
    async fn a_slow_consumer_sees_only_the_newest_position() {
        let mut f = Fanout::new(4);
        let s = f.subscribe(DeliveryId(1), "websocket", None);
        for seq in 1..=100 {
            assert_eq!(f.publish_position(&pos(seq)).queued, 1);
        }
        assert_eq!(
            s.position.next().await.kind,
            FrameKind::Position { seq: 100 }
        );
        assert!(s.position.take().is_none(), "only the newest was kept");
    }

    #[tokio::test]
    async fn a_full_reliable_queue_cuts_the_consumer_off_without_blocking() {
        let mut f = Fanout::new(2);
        let mut slow = f.subscribe(DeliveryId(1), "websocket", None);
        let frame = ConsumerFrame::Redirect { url: "x".into() };
        assert_eq!(
            f.publish_reliable(DeliveryId(1), &frame),
            Published {
                delivered: 1,
                overflowed: 0
            }
        );
        assert_eq!(f.publish_reliable(DeliveryId(1), &frame).delivered, 1);
        assert_eq!(
            f.publish_reliable(DeliveryId(1), &frame),
            Published {
                delivered: 0,
                overflowed: 1
            }
        );
        assert_eq!(f.subscribers(DeliveryId(1)), 0);
        assert!(slow.reliable.recv().await.is_some());
        assert!(slow.reliable.recv().await.is_some());
        assert!(
            slow.reliable.recv().await.is_none(),
            "cut off after the queued frames"
        );
    }

    #[test]
    fn a_frame_is_encoded_once_with_a_newline_for_the_stream() {
        let e = Encoded::new(&ConsumerFrame::Position(pos(7)));
        assert_eq!(e.kind, FrameKind::Position { seq: 7 });
        assert!(e.line().ends_with(b"}\n"));
        let back = ConsumerFrame::from_json(std::str::from_utf8(&e.json()).expect("utf-8"));
        assert_eq!(back.expect("parses"), ConsumerFrame::Position(pos(7)));
    }

    #[test]
    fn dropped_subscriptions_are_pruned_on_publish() {
        let mut f = Fanout::new(2);
        let s = f.subscribe(DeliveryId(1), "websocket", None);
        let _other = f.subscribe(DeliveryId(2), "websocket", None);
        drop(s);
        assert_eq!(f.publish_position(&pos(1)), PositionPush::default());
        assert_eq!(f.subscribers(DeliveryId(1)), 0);
        assert_eq!(f.subscribers(DeliveryId(2)), 1);
    }

    #[tokio::test]
    async fn a_redirect_keeps_each_consumer_on_its_transport() {
        let mut f = Fanout::new(4);
        let mut ws = f.subscribe(DeliveryId(1), "websocket", None);
        let mut wt = f.subscribe(DeliveryId(1), "webtransport", None);
        let out = f.publish_redirect(DeliveryId(1), |t| format!("{t}://next"));
        assert_eq!(out.delivered, 2);
        let url = |frame: Option<Encoded>| {
            let frame = frame.expect("a frame");
            assert_eq!(frame.kind, FrameKind::Redirect);
            match ConsumerFrame::from_json(std::str::from_utf8(&frame.json()).expect("utf-8")) {
                Ok(ConsumerFrame::Redirect { url }) => url,
                other => panic!("expected a redirect, got {other:?}"),
            }
        };
        assert_eq!(url(ws.reliable.recv().await), "websocket://next");
        assert_eq!(url(wt.reliable.recv().await), "webtransport://next");
    }

    #[derive(Debug, Default)]
    struct Sink {
        sent: parking_lot::Mutex<Vec<Vec<u8>>>,
        answer: parking_lot::Mutex<Option<DatagramSent>>,
    }

    impl DatagramOut for Sink {
        fn send(&self, payload: &[u8]) -> DatagramSent {
            let answer = self.answer.lock().unwrap_or(DatagramSent::Sent);
            if answer == DatagramSent::Sent {
                self.sent.lock().push(payload.to_vec());
            }
            answer
        }
    }

    #[tokio::test]
    async fn positions_go_straight_out_as_datagrams_and_fall_back_to_the_session() {
        let mut f = Fanout::new(4);
        let sink = std::sync::Arc::new(Sink::default());
        let s = f.subscribe(DeliveryId(1), "webtransport", Some(sink.clone()));
        let out = f.publish_position(&pos(1));
        assert_eq!(
            out,
            PositionPush {
                datagrams: 1,
                queued: 0
            }
        );
        let sent = sink.sent.lock()[0].clone();
        let back = ConsumerFrame::from_json(std::str::from_utf8(&sent).expect("utf-8"));
        assert_eq!(back.expect("json"), ConsumerFrame::Position(pos(1)));
        assert!(s.position.take().is_none(), "the session is not woken");
        // Too large for the path: the session sends it on its stream.
        *sink.answer.lock() = Some(DatagramSent::Unfit);
        assert_eq!(f.publish_position(&pos(2)).queued, 1);
        assert_eq!(s.position.next().await.kind, FrameKind::Position { seq: 2 });
        // The connection went away: the subscriber is dropped.
        *sink.answer.lock() = Some(DatagramSent::Closed);
        assert_eq!(f.publish_position(&pos(3)), PositionPush::default());
        assert_eq!(f.subscribers(DeliveryId(1)), 0);
    }
}
