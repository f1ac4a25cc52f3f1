//! The cluster: replication of the event log to successor hubs, fencing, rebalancing,
//! takeover and hand-off.

pub mod replica;
