//! What survives a restart: the event log (redb), breadcrumb history, photo proofs, plans.

pub mod blobs;
pub mod copies;
pub mod history;
pub mod outbox;
pub mod plans;
pub mod store;
