//! Where a request about a delivery is answered: here (serve it, taking it over first if
//! ownership just moved here), at its owner (redirect), or not yet (this hub is joining and
//! has not claimed its deliveries). One decision for every transport: HTTP, WebSocket,
//! WebTransport and delivery creation.

use super::view::View;
use cluster::HubInfo;
use protocol::DeliveryId;

/// The answer for a request about one delivery.
#[derive(Clone, Debug, PartialEq)]
pub enum Route {
    /// This hub serves it (it holds it live, or owns it and it is already loaded).
    Serve,
    /// This hub owns it but does not hold it live yet: take it over, then serve.
    TakeOver,
    /// Another hub owns it.
    Redirect(HubInfo),
    /// This hub has just started and not claimed its deliveries: retry (503).
    Joining,
}

/// Decides where a request about `delivery` goes. `held`: this hub holds it live; `claimed`:
/// the rebalancer has claimed the deliveries this hub owns (past `join_grace`).
///
/// With no placeable hub at all (`owner` is `None`) this hub answers rather than bounce
/// requests around.
pub fn decide(me: &str, owner: Option<HubInfo>, held: bool, claimed: bool) -> Route {
    match owner {
        Some(o) if o.id != me => Route::Redirect(o),
        _ if held => Route::Serve,
        // Owned (or no owner at all) but not held: a takeover may find it at a peer; before
        // the view has filled, the peers holding the newest copy may be missing from it.
        _ if !claimed => Route::Joining,
        _ => Route::TakeOver,
    }
}

/// Where a new delivery is created.
#[derive(Clone, Debug, PartialEq)]
pub enum Creation {
    /// Here, under this id.
    Here(DeliveryId),
    /// At this hub (it owns the chosen id, or this hub owns nothing: it drains).
    Redirect(HubInfo),
}

/// Decides where a new delivery is created: the caller's `chosen` id at its owner; else the
/// first of `candidates` (random ids) this hub owns; else (it owns nothing) at the owner of
/// the first candidate. Without a cluster view every id is ours.
pub fn create(
    me: &str,
    view: &dyn View,
    chosen: Option<DeliveryId>,
    candidates: impl IntoIterator<Item = DeliveryId>,
) -> Option<Creation> {
    if let Some(id) = chosen {
        return Some(match view.owner_of(id) {
            Some(o) if o.id != me => Creation::Redirect(o),
            _ => Creation::Here(id),
        });
    }
    let mut first = None;
    for id in candidates {
        match view.owner_of(id) {
            Some(o) if o.id != me => {
                first.get_or_insert(o);
            }
            _ => return Some(Creation::Here(id)),
        }
    }
    first.map(Creation::Redirect)
}

/// The URL a consumer of `id` should reconnect to at `owner`.
pub fn consumer_redirect_url(owner: &HubInfo, id: DeliveryId, webtransport: bool) -> String {
    if webtransport {
        format!("https://{}/api/v1/tracking/{id}/wt", owner.wt_addr)
    } else {
        format!("wss://{}/api/v1/tracking/{id}/connect", owner.https_addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::view::{hub_info, StaticView};

    #[test]
    fn a_delivery_owned_elsewhere_is_redirected_even_if_held_here() {
        let b = hub_info("b");
        assert_eq!(decide("a", Some(b.clone()), true, true), Route::Redirect(b));
    }

    #[test]
    fn an_owned_delivery_not_held_is_taken_over_once_claimed_and_refused_while_joining() {
        let a = hub_info("a");
        assert_eq!(decide("a", Some(a.clone()), false, true), Route::TakeOver);
        assert_eq!(decide("a", Some(a.clone()), false, false), Route::Joining);
        assert_eq!(decide("a", Some(a), true, false), Route::Serve);
    }

    #[test]
    fn with_no_placeable_hub_this_hub_answers() {
        assert_eq!(decide("a", None, true, true), Route::Serve);
        assert_eq!(decide("a", None, false, true), Route::TakeOver);
        assert_eq!(decide("a", None, false, false), Route::Joining);
    }

    #[test]
    fn a_new_delivery_gets_an_id_this_hub_owns_or_goes_to_the_owner() {
        let view = StaticView::of(&["a", "b"]);
        let ids: Vec<DeliveryId> = (1..100).map(DeliveryId).collect();
        match create("a", &view, None, ids.clone()) {
            Some(Creation::Here(id)) => {
                assert_eq!(view.owner_of(id).map(|h| h.id), Some("a".into()));
            }
            other => panic!("{other:?}"),
        }
        let theirs = *ids
            .iter()
            .find(|id| view.owner_of(**id).is_some_and(|h| h.id == "b"))
            .expect("b owns some");
        assert_eq!(
            create("a", &view, Some(theirs), std::iter::empty()),
            Some(Creation::Redirect(hub_info("b")))
        );
        // Draining: a owns nothing, so the owner of a candidate creates it.
        let drained = view.clone().draining("a");
        assert_eq!(
            create("a", &drained, None, ids),
            Some(Creation::Redirect(hub_info("b")))
        );
    }

    #[test]
    fn consumers_are_redirected_to_the_owners_transport_address() {
        let b = hub_info("b");
        assert_eq!(
            consumer_redirect_url(&b, DeliveryId(7), true),
            "https://b.wt:4434/api/v1/tracking/7/wt"
        );
        assert_eq!(
            consumer_redirect_url(&b, DeliveryId(7), false),
            "wss://b.https:9443/api/v1/tracking/7/connect"
        );
    }
}
