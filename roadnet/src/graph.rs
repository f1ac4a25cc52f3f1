//! The drivable road graph: loading from OpenStreetMap PBF, synthetic grid cities, and spatial look-ups.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use osmpbf::{Element, ElementReader};
use rstar::primitives::GeomWithData;
use rstar::RTree;
use serde::{Deserialize, Serialize};

use crate::geo::{haversine_m, BBox, LatLng, LocalProjection};
use crate::RoadError;

/// Index of a node in a [`RoadGraph`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId(pub u32);

impl NodeId {
    /// The index as `usize`.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// OSM `highway=*` classes that cars may use, from fastest to slowest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RoadClass {
    /// `motorway`, `motorway_link`.
    Motorway,
    /// `trunk`, `trunk_link`.
    Trunk,
    /// `primary`, `primary_link`.
    Primary,
    /// `secondary`, `secondary_link`.
    Secondary,
    /// `tertiary`, `tertiary_link`.
    Tertiary,
    /// `unclassified`.
    Unclassified,
    /// `residential`.
    Residential,
    /// `living_street`.
    LivingStreet,
    /// `service` (driveways, alleys, yards).
    Service,
}

impl RoadClass {
    /// All classes, fastest first.
    pub const ALL: [RoadClass; 9] = [
        RoadClass::Motorway,
        RoadClass::Trunk,
        RoadClass::Primary,
        RoadClass::Secondary,
        RoadClass::Tertiary,
        RoadClass::Unclassified,
        RoadClass::Residential,
        RoadClass::LivingStreet,
        RoadClass::Service,
    ];

    /// Parse an OSM `highway` value; returns the class and whether it is a `*_link`.
    pub fn from_highway(value: &str) -> Option<(RoadClass, bool)> {
        let (base, link) = match value.strip_suffix("_link") {
            Some(base) => (base, true),
            None => (value, false),
        };
        let class = match base {
            "motorway" => RoadClass::Motorway,
            "trunk" => RoadClass::Trunk,
            "primary" => RoadClass::Primary,
            "secondary" => RoadClass::Secondary,
            "tertiary" => RoadClass::Tertiary,
            "unclassified" if !link => RoadClass::Unclassified,
            "residential" if !link => RoadClass::Residential,
            "living_street" if !link => RoadClass::LivingStreet,
            "service" if !link => RoadClass::Service,
            _ => return None,
        };
        Some((class, link))
    }

    /// The OSM `highway` value of the class (without `_link`).
    pub fn as_str(self) -> &'static str {
        match self {
            RoadClass::Motorway => "motorway",
            RoadClass::Trunk => "trunk",
            RoadClass::Primary => "primary",
            RoadClass::Secondary => "secondary",
            RoadClass::Tertiary => "tertiary",
            RoadClass::Unclassified => "unclassified",
            RoadClass::Residential => "residential",
            RoadClass::LivingStreet => "living_street",
            RoadClass::Service => "service",
        }
    }

    /// Typical free-flow speed when no `maxspeed` is tagged, in m/s (urban European values).
    pub fn default_speed_mps(self) -> f64 {
        let kmh = match self {
            RoadClass::Motorway => 100.0,
            RoadClass::Trunk => 80.0,
            RoadClass::Primary => 50.0,
            RoadClass::Secondary => 50.0,
            RoadClass::Tertiary => 40.0,
            RoadClass::Unclassified => 40.0,
            RoadClass::Residential => 30.0,
            RoadClass::LivingStreet => 10.0,
            RoadClass::Service => 15.0,
        };
        kmh / 3.6
    }
}

/// Speed factor applied to the class default on `*_link` roads without `maxspeed`.
const LINK_SPEED_FACTOR: f64 = 0.7;

/// Parse an OSM `maxspeed` value ("50", "30 mph", "50;40") to m/s; `None` for "none", "signals",
/// zone codes and anything else without a leading number.
pub fn parse_maxspeed_mps(value: &str) -> Option<f64> {
    let first = value.split(';').next()?.trim();
    let digits_end = first
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(first.len());
    let number: f64 = first[..digits_end].parse().ok()?;
    if !(number.is_finite() && number > 0.0 && number < 400.0) {
        return None;
    }
    let unit = first[digits_end..].trim();
    let kmh = match unit {
        "" | "km/h" | "kmh" | "kph" => number,
        "mph" => number * 1.609_344,
        "knots" => number * 1.852,
        _ => return None,
    };
    Some(kmh / 3.6)
}

/// A directed road segment between two graph nodes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Edge {
    /// Start node.
    pub from: NodeId,
    /// End node.
    pub to: NodeId,
    /// Great-circle length in metres.
    pub length_m: f64,
    /// Road class.
    pub class: RoadClass,
    /// Free-flow speed: tagged `maxspeed` or the class default, in m/s.
    pub speed_mps: f64,
    /// True when the road can only be driven in this direction.
    pub oneway: bool,
}

impl Edge {
    /// Free-flow travel time in seconds.
    pub fn travel_time_s(&self) -> f64 {
        self.length_m / self.speed_mps
    }
}

/// Options for loading OpenStreetMap data.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadOptions {
    /// Keep `highway=service` roads (except parking aisles and drive-throughs).
    pub include_service: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            include_service: true,
        }
    }
}

type NodePoint = GeomWithData<[f64; 2], u32>;

/// A directed road graph in compressed adjacency form, reduced to its largest strongly
/// connected component so that any node can reach any other.
#[derive(Debug, Clone)]
pub struct RoadGraph {
    nodes: Vec<LatLng>,
    /// `edges[first_out[n]..first_out[n + 1]]` leave node `n`.
    first_out: Vec<u32>,
    edges: Vec<Edge>,
    max_speed_mps: f64,
    bbox: BBox,
    projection: LocalProjection,
    node_tree: RTree<NodePoint>,
    pruned_node_count: usize,
}

impl RoadGraph {
    /// Load the drivable roads of an OSM PBF extract held in memory.
    pub fn from_pbf_bytes(pbf: &[u8]) -> Result<RoadGraph, RoadError> {
        Self::from_pbf_bytes_with(pbf, &LoadOptions::default())
    }

    /// Load an OSM PBF file from disk.
    pub fn from_pbf_path(path: impl AsRef<Path>) -> Result<RoadGraph, RoadError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| RoadError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_pbf_bytes(&bytes)
    }

    /// The embedded default city ([`crate::DEFAULT_CITY_PBF`], central Helsinki).
    pub fn default_city() -> Result<RoadGraph, RoadError> {
        Self::from_pbf_bytes(crate::DEFAULT_CITY_PBF)
    }

    /// Load the drivable roads of an OSM PBF extract held in memory, with options.
    pub fn from_pbf_bytes_with(pbf: &[u8], options: &LoadOptions) -> Result<RoadGraph, RoadError> {
        struct Way {
            refs: Vec<i64>,
            class: RoadClass,
            speed_mps: f64,
            direction: Direction,
        }
        // Pass 1: drivable ways and the node ids they use.
        let mut ways = Vec::new();
        let mut needed: HashSet<i64> = HashSet::new();
        ElementReader::new(pbf)
            .for_each(|element| {
                if let Element::Way(way) = element {
                    if let Some((class, speed_mps, direction)) = classify_way(way.tags(), options) {
                        let refs: Vec<i64> = way.refs().collect();
                        if refs.len() >= 2 {
                            needed.extend(refs.iter().copied());
                            ways.push(Way {
                                refs,
                                class,
                                speed_mps,
                                direction,
                            });
                        }
                    }
                }
            })
            .map_err(|e| RoadError::Pbf(e.to_string()))?;
        // Pass 2: coordinates of those nodes.
        let mut coords: HashMap<i64, LatLng> = HashMap::with_capacity(needed.len());
        ElementReader::new(pbf)
            .for_each(|element| match element {
                Element::Node(n) if needed.contains(&n.id()) => {
                    coords.insert(n.id(), LatLng::new(n.lat(), n.lon()));
                }
                Element::DenseNode(n) if needed.contains(&n.id()) => {
                    coords.insert(n.id(), LatLng::new(n.lat(), n.lon()));
                }
                _ => {}
            })
            .map_err(|e| RoadError::Pbf(e.to_string()))?;

        let mut builder = GraphBuilder::new();
        let mut ids: HashMap<i64, NodeId> = HashMap::with_capacity(coords.len());
        for way in &ways {
            for pair in way.refs.windows(2) {
                // Extracts clip ways at their boundary: skip pieces whose nodes are missing.
                let (Some(&a), Some(&b)) = (coords.get(&pair[0]), coords.get(&pair[1])) else {
                    continue;
                };
                let na = *ids.entry(pair[0]).or_insert_with(|| builder.add_node(a));
                let nb = *ids.entry(pair[1]).or_insert_with(|| builder.add_node(b));
                match way.direction {
                    Direction::Both => builder.add_road(na, nb, way.class, way.speed_mps, false),
                    Direction::Forward => builder.add_road(na, nb, way.class, way.speed_mps, true),
                    Direction::Backward => builder.add_road(nb, na, way.class, way.speed_mps, true),
                }
            }
        }
        builder.build()
    }

    /// A synthetic grid city of `rows` x `cols` intersections `spacing_m` apart, with `origin`
    /// at the south-west corner. Every fifth row and column is a two-way secondary arterial
    /// (50 km/h); the border is two-way; the other streets are residential (30 km/h), of which
    /// every odd row and odd column is one-way, alternating direction. The result is strongly
    /// connected, so no node is pruned: node `r * cols + c` is at row `r`, column `c`.
    pub fn grid_city(
        rows: usize,
        cols: usize,
        spacing_m: f64,
        origin: LatLng,
    ) -> Result<RoadGraph, RoadError> {
        let proj = LocalProjection::new(origin);
        let mut b = GraphBuilder::new();
        for r in 0..rows {
            for c in 0..cols {
                b.add_node(proj.unproject([c as f64 * spacing_m, r as f64 * spacing_m]));
            }
        }
        let id = |r: usize, c: usize| NodeId((r * cols + c) as u32);
        // Returns (class, oneway direction): None = two-way, Some(true) = increasing index.
        let street = |i: usize, n: usize| -> (RoadClass, Option<bool>) {
            if i.is_multiple_of(5) {
                (RoadClass::Secondary, None)
            } else if i == n - 1 || i.is_multiple_of(2) {
                (RoadClass::Residential, None)
            } else {
                (RoadClass::Residential, Some((i / 2).is_multiple_of(2)))
            }
        };
        for r in 0..rows {
            let (class, dir) = street(r, rows);
            for c in 0..cols.saturating_sub(1) {
                add_grid_road(&mut b, id(r, c), id(r, c + 1), class, dir);
            }
        }
        for c in 0..cols {
            let (class, dir) = street(c, cols);
            for r in 0..rows.saturating_sub(1) {
                add_grid_road(&mut b, id(r, c), id(r + 1, c), class, dir);
            }
        }
        b.build()
    }

    /// Number of nodes.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Number of directed edges (a two-way street counts twice).
    pub fn edge_count(&self) -> usize {
        self.edges.len()
    }

    /// Position of a node. Panics if `id` is out of range.
    pub fn node(&self, id: NodeId) -> LatLng {
        self.nodes[id.index()]
    }

    /// All node positions, indexed by [`NodeId`].
    pub fn nodes(&self) -> &[LatLng] {
        &self.nodes
    }

    /// All directed edges, grouped by start node.
    pub fn edges(&self) -> &[Edge] {
        &self.edges
    }

    /// Edges leaving `id`. Panics if `id` is out of range.
    pub fn edges_from(&self, id: NodeId) -> &[Edge] {
        let i = id.index();
        &self.edges[self.first_out[i] as usize..self.first_out[i + 1] as usize]
    }

    /// Indices into [`RoadGraph::edges`] of the edges leaving `id`.
    pub(crate) fn out_edge_range(&self, id: NodeId) -> std::ops::Range<usize> {
        let i = id.index();
        self.first_out[i] as usize..self.first_out[i + 1] as usize
    }

    /// The highest edge speed in the graph (bounds the A* heuristic), in m/s.
    pub fn max_speed_mps(&self) -> f64 {
        self.max_speed_mps
    }

    /// Nodes dropped at build time for lying outside the largest strongly connected component
    /// (dead ends of one-ways, islands cut off by the extract boundary).
    pub fn pruned_node_count(&self) -> usize {
        self.pruned_node_count
    }

    /// Bounding box of all nodes.
    pub fn bbox(&self) -> BBox {
        self.bbox
    }

    /// The metric projection centred on the graph, shared by its spatial indexes.
    pub fn projection(&self) -> &LocalProjection {
        &self.projection
    }

    /// The node closest to `pos` (Euclidean in the local projection).
    pub fn nearest_node(&self, pos: LatLng) -> NodeId {
        let q = self.projection.project(pos);
        // The graph is never empty: `GraphBuilder::build` rejects that.
        NodeId(self.node_tree.nearest_neighbor(q).map_or(0, |p| p.data))
    }

    /// Straight road pieces for drawing the map: each street piece once, whichever its direction.
    pub fn edges_geometry(&self) -> impl Iterator<Item = (RoadClass, [LatLng; 2])> + '_ {
        self.edges
            .iter()
            .filter(|e| e.oneway || e.from < e.to)
            .map(|e| (e.class, [self.node(e.from), self.node(e.to)]))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Both,
    Forward,
    Backward,
}

fn add_grid_road(b: &mut GraphBuilder, a: NodeId, z: NodeId, class: RoadClass, dir: Option<bool>) {
    let speed = class.default_speed_mps();
    match dir {
        None => b.add_road(a, z, class, speed, false),
        Some(true) => b.add_road(a, z, class, speed, true),
        Some(false) => b.add_road(z, a, class, speed, true),
    }
}

/// Decide whether a way is drivable, and its class, speed and direction.
fn classify_way<'a>(
    tags: impl Iterator<Item = (&'a str, &'a str)>,
    options: &LoadOptions,
) -> Option<(RoadClass, f64, Direction)> {
    let mut highway = None;
    let (mut oneway, mut junction, mut maxspeed, mut service) = (None, None, None, None);
    for (k, v) in tags {
        match k {
            "highway" => highway = Some(v),
            "oneway" => oneway = Some(v),
            "junction" => junction = Some(v),
            "maxspeed" => maxspeed = Some(v),
            "service" => service = Some(v),
            "area" if v == "yes" => return None,
            "access" | "motor_vehicle" | "motorcar" if matches!(v, "no" | "private") => {
                return None
            }
            _ => {}
        }
    }
    let (class, link) = RoadClass::from_highway(highway?)?;
    if class == RoadClass::Service
        && (!options.include_service || matches!(service, Some("parking_aisle" | "drive-through")))
    {
        return None;
    }
    let implied_oneway =
        class == RoadClass::Motorway || matches!(junction, Some("roundabout" | "circular"));
    let direction = match oneway {
        Some("yes" | "true" | "1") => Direction::Forward,
        Some("-1" | "reverse") => Direction::Backward,
        Some("no" | "false" | "0") => Direction::Both,
        _ if implied_oneway => Direction::Forward,
        _ => Direction::Both,
    };
    let speed_mps = maxspeed.and_then(parse_maxspeed_mps).unwrap_or_else(|| {
        let d = class.default_speed_mps();
        if link {
            d * LINK_SPEED_FACTOR
        } else {
            d
        }
    });
    Some((class, speed_mps, direction))
}

/// Builds a [`RoadGraph`] from nodes and roads; used by the loaders and for hand-made test graphs.
#[derive(Debug, Default, Clone)]
pub struct GraphBuilder {
    nodes: Vec<LatLng>,
    edges: Vec<Edge>,
}

impl GraphBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a node and return its id.
    pub fn add_node(&mut self, pos: LatLng) -> NodeId {
        self.nodes.push(pos);
        NodeId((self.nodes.len() - 1) as u32)
    }

    /// Add a road from `a` to `b`; when `oneway` is false the reverse direction is added too.
    /// Zero-length roads and roads with a non-positive speed are ignored.
    pub fn add_road(
        &mut self,
        a: NodeId,
        b: NodeId,
        class: RoadClass,
        speed_mps: f64,
        oneway: bool,
    ) {
        let length_m = haversine_m(self.nodes[a.index()], self.nodes[b.index()]);
        if length_m <= 0.0 || a == b || speed_mps.is_nan() || speed_mps <= 0.0 {
            return;
        }
        let edge = Edge {
            from: a,
            to: b,
            length_m,
            class,
            speed_mps,
            oneway,
        };
        self.edges.push(edge);
        if !oneway {
            self.edges.push(Edge {
                from: b,
                to: a,
                ..edge
            });
        }
    }

    /// Keep the largest strongly connected component and index it. Node ids keep their relative
    /// order, so they are unchanged when the input is already strongly connected.
    pub fn build(self) -> Result<RoadGraph, RoadError> {
        let n = self.nodes.len();
        let (first_out, edges) = to_csr(n, self.edges);
        let comp = strongly_connected_components(n, &first_out, &edges);
        let mut sizes: HashMap<u32, usize> = HashMap::new();
        for &c in &comp {
            *sizes.entry(c).or_default() += 1;
        }
        let Some((&largest, &size)) = sizes
            .iter()
            .max_by_key(|(c, s)| (**s, std::cmp::Reverse(**c)))
        else {
            return Err(RoadError::EmptyGraph);
        };
        if size < 2 {
            return Err(RoadError::EmptyGraph);
        }
        let mut remap = vec![u32::MAX; n];
        let mut nodes = Vec::with_capacity(size);
        for (i, &c) in comp.iter().enumerate() {
            if c == largest {
                remap[i] = nodes.len() as u32;
                nodes.push(self.nodes[i]);
            }
        }
        let kept: Vec<Edge> = edges
            .into_iter()
            .filter(|e| remap[e.from.index()] != u32::MAX && remap[e.to.index()] != u32::MAX)
            .map(|e| Edge {
                from: NodeId(remap[e.from.index()]),
                to: NodeId(remap[e.to.index()]),
                ..e
            })
            .collect();
        let (first_out, edges) = to_csr(nodes.len(), kept);
        let bbox = BBox::from_points(nodes.iter().copied()).ok_or(RoadError::EmptyGraph)?;
        let projection = LocalProjection::new(bbox.center());
        let node_tree = RTree::bulk_load(
            nodes
                .iter()
                .enumerate()
                .map(|(i, &p)| GeomWithData::new(projection.project(p), i as u32))
                .collect(),
        );
        let max_speed_mps = edges.iter().map(|e| e.speed_mps).fold(0.0, f64::max);
        Ok(RoadGraph {
            nodes,
            first_out,
            edges,
            max_speed_mps,
            bbox,
            projection,
            node_tree,
            pruned_node_count: n - size,
        })
    }
}

/// Sort edges by start node and build the offsets array.
fn to_csr(n: usize, mut edges: Vec<Edge>) -> (Vec<u32>, Vec<Edge>) {
    edges.sort_by_key(|e| (e.from, e.to));
    let mut first_out = vec![0u32; n + 1];
    for e in &edges {
        first_out[e.from.index() + 1] += 1;
    }
    for i in 0..n {
        first_out[i + 1] += first_out[i];
    }
    (first_out, edges)
}

/// Iterative Tarjan: component id per node.
fn strongly_connected_components(n: usize, first_out: &[u32], edges: &[Edge]) -> Vec<u32> {
    const UNVISITED: u32 = u32::MAX;
    let mut index = vec![UNVISITED; n];
    let mut low = vec![0u32; n];
    let mut on_stack = vec![false; n];
    let mut comp = vec![UNVISITED; n];
    let mut stack: Vec<u32> = Vec::new();
    // (node, next edge offset to look at)
    let mut call: Vec<(u32, u32)> = Vec::new();
    let mut next_index = 0u32;
    let mut next_comp = 0u32;
    for root in 0..n as u32 {
        if index[root as usize] != UNVISITED {
            continue;
        }
        call.push((root, first_out[root as usize]));
        index[root as usize] = next_index;
        low[root as usize] = next_index;
        next_index += 1;
        stack.push(root);
        on_stack[root as usize] = true;
        while let Some(&mut (v, ref mut ei)) = call.last_mut() {
            let vu = v as usize;
            if *ei < first_out[vu + 1] {
                let w = edges[*ei as usize].to.0;
                *ei += 1;
                let wu = w as usize;
                if index[wu] == UNVISITED {
                    index[wu] = next_index;
                    low[wu] = next_index;
                    next_index += 1;
                    stack.push(w);
                    on_stack[wu] = true;
                    call.push((w, first_out[wu]));
                } else if on_stack[wu] {
                    low[vu] = low[vu].min(index[wu]);
                }
            } else {
                call.pop();
                if let Some(&(parent, _)) = call.last() {
                    let pu = parent as usize;
                    low[pu] = low[pu].min(low[vu]);
                }
                if low[vu] == index[vu] {
                    while let Some(w) = stack.pop() {
                        on_stack[w as usize] = false;
                        comp[w as usize] = next_comp;
                        if w == v {
                            break;
                        }
                    }
                    next_comp += 1;
                }
            }
        }
    }
    comp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_maxspeed_in_kmh_and_mph() {
        assert!((parse_maxspeed_mps("50").unwrap_or(0.0) - 50.0 / 3.6).abs() < 1e-9);
        assert!(
            (parse_maxspeed_mps("30 mph").unwrap_or(0.0) - 30.0 * 1.609_344 / 3.6).abs() < 1e-9
        );
        assert!((parse_maxspeed_mps("40;30").unwrap_or(0.0) - 40.0 / 3.6).abs() < 1e-9);
        assert_eq!(parse_maxspeed_mps("none"), None);
        assert_eq!(parse_maxspeed_mps("FI:urban"), None);
        assert_eq!(parse_maxspeed_mps("signals"), None);
    }

    #[test]
    fn classifies_oneway_tags_and_implied_oneways() {
        let opts = LoadOptions::default();
        let dir = |tags: &[(&'static str, &'static str)]| {
            classify_way(tags.iter().copied(), &opts).map(|(_, _, d)| d)
        };
        assert_eq!(dir(&[("highway", "residential")]), Some(Direction::Both));
        assert_eq!(
            dir(&[("highway", "residential"), ("oneway", "yes")]),
            Some(Direction::Forward)
        );
        assert_eq!(
            dir(&[("highway", "primary"), ("oneway", "-1")]),
            Some(Direction::Backward)
        );
        assert_eq!(
            dir(&[("highway", "tertiary"), ("junction", "roundabout")]),
            Some(Direction::Forward)
        );
        assert_eq!(dir(&[("highway", "motorway")]), Some(Direction::Forward));
        assert_eq!(
            dir(&[("highway", "motorway"), ("oneway", "no")]),
            Some(Direction::Both)
        );
        assert_eq!(dir(&[("highway", "footway")]), None);
        assert_eq!(
            dir(&[("highway", "residential"), ("access", "private")]),
            None
        );
        assert_eq!(
            dir(&[("highway", "service"), ("service", "parking_aisle")]),
            None
        );
    }

    #[test]
    fn link_roads_without_maxspeed_are_slower_than_their_class() {
        let opts = LoadOptions::default();
        let speed = |tags: &[(&'static str, &'static str)]| {
            classify_way(tags.iter().copied(), &opts).map(|(c, s, _)| (c, s))
        };
        let (class, link_speed) =
            speed(&[("highway", "primary_link")]).unwrap_or((RoadClass::Service, 0.0));
        assert_eq!(class, RoadClass::Primary);
        assert!(link_speed < RoadClass::Primary.default_speed_mps());
        let (_, tagged) = speed(&[("highway", "primary"), ("maxspeed", "60")])
            .unwrap_or((RoadClass::Service, 0.0));
        assert!((tagged - 60.0 / 3.6).abs() < 1e-9);
    }

    #[test]
    fn build_keeps_only_the_largest_strongly_connected_component() {
        let mut b = GraphBuilder::new();
        let p = |i: f64| LatLng::new(60.0, 25.0 + i * 0.001);
        let n: Vec<NodeId> = (0..5).map(|i| b.add_node(p(i as f64))).collect();
        // 0 <-> 1 <-> 2 two-way; 2 -> 3 one-way dead end; 4 isolated.
        b.add_road(n[0], n[1], RoadClass::Residential, 8.0, false);
        b.add_road(n[1], n[2], RoadClass::Residential, 8.0, false);
        b.add_road(n[2], n[3], RoadClass::Residential, 8.0, true);
        let g = b.build().expect("graph");
        assert_eq!(g.node_count(), 3);
        assert_eq!(g.pruned_node_count(), 2);
        assert_eq!(g.edge_count(), 4);
        assert_eq!(g.node(NodeId(2)), p(2.0));
    }
}
