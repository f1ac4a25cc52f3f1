//! What survives a restart: the event log (redb), breadcrumb history, photo proofs, plans.

pub mod history;
pub mod plans;
pub mod proof;
pub mod store;
