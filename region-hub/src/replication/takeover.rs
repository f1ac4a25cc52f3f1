//! Taking a delivery over: what a hub's whole log of a delivery is (sent on a hand-off, a
//! successor's copy, or as the answer to a takeover's fetch), and merging the copies peers
//! answered with into the local log.

use crate::durable::copies::ReplicaEntry;
use crate::durable::store::{Store, StoreError};
use protocol::DeliveryId;

/// A delivery's whole durable state in `store`, as a hand-off entry; `None` when it holds
/// nothing of it.
pub fn full_log(store: &Store, id: DeliveryId) -> Result<Option<ReplicaEntry>, StoreError> {
    let rec = store.load_delivery(id)?;
    let proof = store.proof(id)?;
    let devices = store
        .devices()?
        .into_iter()
        .filter(|(d, _)| *d == id)
        .map(|(_, t)| t)
        .collect::<Vec<_>>();
    Ok(rec.map(|r| ReplicaEntry {
        delivery_id: id,
        record: Some(r.record),
        events: r.events,
        idempotency: r.idempotency,
        proofs: proof.into_iter().collect(),
        devices,
    }))
}

/// Merges copies fetched from a peer into the local log (monotone: events and keys already
/// stored are kept). Returns the deliveries whose copies held other events under seqs we
/// hold (counted as conflicts; ours are kept).
pub fn merge(store: &Store, copies: &[ReplicaEntry]) -> Result<Vec<DeliveryId>, StoreError> {
    store.apply_replica_checked(copies, false)
}
