//! The edge link and the fix path: batches of fixes from edges, applied to delivery state.

pub mod link;
pub(crate) mod workers;
