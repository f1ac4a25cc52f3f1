//! Delivery state and its decisions (sans-IO): the status machine, ETA, geofences,
//! anomalies, and the registry of consumers per delivery.

pub mod anomaly;
pub mod deliveries;
pub mod eta;
pub mod fanout;
pub mod geofence;
pub mod proof;
pub mod shards;
