//! An in-memory [`ReplicaLink`]: hubs of one process answer each other's frames directly.
//! Links can be cut in one direction or both (a frame, or its answer, is then lost), so cluster
//! behaviour is tested without sockets.

use super::link::{Exchange, ReplicaError, ReplicaLink};
use super::wire::ReplicaFrame;
use cluster::HubInfo;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// What answers the frames sent to one hub.
pub type Handler = Arc<dyn Fn(ReplicaFrame) -> BoxFuture<'static, ReplicaFrame> + Send + Sync>;

#[derive(Default)]
struct Net {
    handlers: HashMap<String, Handler>,
    /// Directed links that lose everything: (from, to).
    cut: HashSet<(String, String)>,
}

/// The hubs of one process and the links between them. Cloning shares it.
#[derive(Clone, Default)]
pub struct LocalNet(Arc<Mutex<Net>>);

impl std::fmt::Debug for LocalNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalNet").finish_non_exhaustive()
    }
}

impl LocalNet {
    /// Hub `id` answers frames with `handler` (replacing an earlier one: a restart).
    pub fn attach(&self, id: &str, handler: Handler) {
        self.0.lock().handlers.insert(id.to_owned(), handler);
    }

    /// Hub `id` is gone: frames to it are lost.
    pub fn detach(&self, id: &str) {
        self.0.lock().handlers.remove(id);
    }

    /// Frames from `from` to `to` (and answers going that way) are lost until [`Self::heal`].
    pub fn cut(&self, from: &str, to: &str) {
        self.0.lock().cut.insert((from.to_owned(), to.to_owned()));
    }

    /// Every link works again.
    pub fn heal(&self) {
        self.0.lock().cut.clear();
    }

    /// The link of hub `me`.
    pub fn link(&self, me: &str) -> LocalLink {
        LocalLink {
            me: me.to_owned(),
            net: self.clone(),
        }
    }
}

/// Hub `me`'s end of a [`LocalNet`].
#[derive(Clone, Debug)]
pub struct LocalLink {
    me: String,
    net: LocalNet,
}

/// What a lost frame looks like to the sender: no answer in time.
const LOST: Duration = Duration::from_millis(0);

impl ReplicaLink for LocalLink {
    fn exchange<'a>(&'a self, to: &'a HubInfo, frame: ReplicaFrame) -> Exchange<'a> {
        Box::pin(async move {
            let (handler, back_cut) = {
                let net = self.net.0.lock();
                if net.cut.contains(&(self.me.clone(), to.id.clone())) {
                    return Err(ReplicaError::Timeout(LOST));
                }
                let back = net.cut.contains(&(to.id.clone(), self.me.clone()));
                match net.handlers.get(&to.id) {
                    Some(h) => (h.clone(), back),
                    None => return Err(ReplicaError::Connect(format!("{} is down", to.id))),
                }
            };
            // The peer acts on the frame even when its answer is lost.
            let answer = handler(frame).await;
            if back_cut {
                return Err(ReplicaError::Timeout(LOST));
            }
            Ok(answer)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::view::hub_info;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn counting(n: Arc<AtomicUsize>) -> Handler {
        Arc::new(move |_frame| {
            n.fetch_add(1, Ordering::SeqCst);
            Box::pin(async { ReplicaFrame::Ack })
        })
    }

    #[tokio::test]
    async fn a_one_way_cut_loses_the_answer_but_not_the_request() {
        let net = LocalNet::default();
        let seen = Arc::new(AtomicUsize::new(0));
        net.attach("b", counting(seen.clone()));
        let a = net.link("a");
        let b = hub_info("b");
        assert_eq!(
            a.exchange(&b, ReplicaFrame::Ack).await.ok(),
            Some(ReplicaFrame::Ack)
        );
        net.cut("b", "a");
        assert!(a.exchange(&b, ReplicaFrame::Ack).await.is_err());
        assert_eq!(seen.load(Ordering::SeqCst), 2, "b still got the frame");
        net.heal();
        net.cut("a", "b");
        assert!(a.exchange(&b, ReplicaFrame::Ack).await.is_err());
        assert_eq!(seen.load(Ordering::SeqCst), 2, "b never got it");
        net.heal();
        net.detach("b");
        assert!(matches!(
            a.exchange(&b, ReplicaFrame::Ack).await,
            Err(ReplicaError::Connect(_))
        ));
    }
}
