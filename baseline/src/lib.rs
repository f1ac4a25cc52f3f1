//! Baselines Trackline is measured against (`scripts/bench-baseline.sh`): a bare quinn
//! datagram sink and its QUIC load generator (which also drives an edge with real driver
//! sessions), and an MQTT load generator for mosquitto used as a bare relay.

pub mod mqtt_load;
pub mod pace;
pub mod quic_load;
pub mod report;
pub mod sink;
