//! Simulated drivers and consumers: the demo, the load generator and the measuring instrument.

pub mod consumer;
pub mod demo;
pub mod driver;
pub mod lifecycle;
pub mod load;
pub mod quality;
pub mod report;
pub mod scale;
pub mod scenario;
pub mod stats;
pub mod trips;
pub mod truth;
pub mod world;
