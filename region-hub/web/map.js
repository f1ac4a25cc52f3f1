// Canvas map drawn from the hub's own road data (/api/v1/map): roads, a route, stops and
// markers. No tile server; equirectangular projection of a box fitted to the canvas.

// Drawn slowest class first so that main roads lie on top: [width px, colour].
const ROAD_STYLE = {
  service: [1, "#e4e4e4"],
  living_street: [1.5, "#ececec"],
  residential: [2, "#ffffff"],
  unclassified: [2, "#ffffff"],
  tertiary: [2.5, "#fffbe0"],
  secondary: [3, "#fbe7a8"],
  primary: [3.5, "#f6cf82"],
  trunk: [4, "#f2b46b"],
  motorway: [4.5, "#e99560"],
};
const DRAW_ORDER = Object.keys(ROAD_STYLE);

export async function loadMap() {
  const r = await fetch("/api/v1/map");
  if (!r.ok) throw new Error(`map: HTTP ${r.status}`);
  return r.json();
}

// Google encoded polyline (precision 5) -> [[lat, lng], ...].
export function decodePolyline(text) {
  const points = [];
  let index = 0, lat = 0, lng = 0;
  const next = () => {
    let result = 0, shift = 0, byte;
    do {
      byte = text.charCodeAt(index++) - 63;
      result |= (byte & 0x1f) << shift;
      shift += 5;
    } while (byte >= 0x20 && index < text.length);
    return result & 1 ? ~(result >> 1) : result >> 1;
  };
  while (index < text.length) {
    lat += next();
    lng += next();
    points.push([lat / 1e5, lng / 1e5]);
  }
  return points;
}

export class MapView {
  constructor(canvas, map) {
    this.canvas = canvas;
    this.map = map;
    this.base = document.createElement("canvas"); // roads, redrawn on resize / view change
    const [w, s, e, n] = map.bbox;
    this.view = { w, s, e, n };
    new ResizeObserver(() => this.resize()).observe(canvas);
    this.resize();
  }

  // Shows the box [west, south, east, north] (grown to keep the aspect ratio).
  setView(w, s, e, n) {
    this.view = { w, s, e, n };
    this.resize();
  }

  resize() {
    const dpr = window.devicePixelRatio || 1;
    const { clientWidth: cw, clientHeight: ch } = this.canvas;
    if (!cw || !ch) return;
    for (const c of [this.canvas, this.base]) {
      c.width = Math.round(cw * dpr);
      c.height = Math.round(ch * dpr);
    }
    const { w, s, e, n } = this.view;
    this.kx = Math.cos(((s + n) / 2) * (Math.PI / 180)); // metres per degree of lng vs lat
    const pad = 16;
    this.scale = Math.min((cw - 2 * pad) / ((e - w) * this.kx || 1e-6), (ch - 2 * pad) / (n - s || 1e-6));
    this.cx = (w + e) / 2;
    this.cy = (s + n) / 2;
    this.width = cw;
    this.height = ch;
    this.dpr = dpr;
    this.drawRoads();
  }

  // [lat, lng] -> canvas CSS pixels.
  project(lat, lng) {
    return [
      this.width / 2 + (lng - this.cx) * this.kx * this.scale,
      this.height / 2 - (lat - this.cy) * this.scale,
    ];
  }

  drawRoads() {
    const g = this.base.getContext("2d");
    g.setTransform(this.dpr, 0, 0, this.dpr, 0, 0);
    g.fillStyle = "#f3efe6";
    g.fillRect(0, 0, this.width, this.height);
    g.lineCap = g.lineJoin = "round";
    const layers = new Map(this.map.roads.map((l) => [l.class, l.lines]));
    for (const cls of DRAW_ORDER) {
      const lines = layers.get(cls);
      if (!lines) continue;
      const [width, colour] = ROAD_STYLE[cls];
      for (const [lw, style] of [[width + 1.5, "#d3cbbb"], [width, colour]]) {
        g.lineWidth = lw;
        g.strokeStyle = style;
        g.beginPath();
        for (const line of lines) {
          line.forEach(([lng, lat], i) => {
            const [x, y] = this.project(lat, lng);
            if (i === 0) g.moveTo(x, y);
            else g.lineTo(x, y);
          });
        }
        g.stroke();
      }
    }
  }

  // Draws everything: { route: [[lat,lng]], trail: [[lat,lng]], stops: [{lat,lng,label,colour}],
  // markers: [{lat,lng,heading,colour,label,ring}] }.
  draw({ route = [], trail = [], stops = [], markers = [] } = {}) {
    const g = this.canvas.getContext("2d");
    g.setTransform(1, 0, 0, 1, 0, 0);
    g.drawImage(this.base, 0, 0);
    g.setTransform(this.dpr, 0, 0, this.dpr, 0, 0);
    g.lineCap = g.lineJoin = "round";
    this.polyline(g, route, 5, "rgba(37, 99, 235, 0.85)");
    this.polyline(g, trail, 3, "rgba(124, 58, 237, 0.7)");
    for (const s of stops) this.stop(g, s);
    for (const m of markers) this.marker(g, m);
  }

  polyline(g, points, width, colour) {
    if (points.length < 2) return;
    g.lineWidth = width;
    g.strokeStyle = colour;
    g.beginPath();
    points.forEach(([lat, lng], i) => {
      const [x, y] = this.project(lat, lng);
      if (i === 0) g.moveTo(x, y);
      else g.lineTo(x, y);
    });
    g.stroke();
  }

  stop(g, { lat, lng, label, colour }) {
    const [x, y] = this.project(lat, lng);
    g.fillStyle = colour;
    g.strokeStyle = "#fff";
    g.lineWidth = 2;
    g.beginPath();
    g.arc(x, y, 9, 0, 2 * Math.PI);
    g.fill();
    g.stroke();
    g.fillStyle = "#fff";
    g.font = "bold 11px system-ui, sans-serif";
    g.textAlign = "center";
    g.textBaseline = "middle";
    g.fillText(label, x, y + 0.5);
  }

  // A disc with an arrow pointing along `heading` (degrees clockwise from north).
  marker(g, { lat, lng, heading = 0, colour = "#111827", label, ring }) {
    const [x, y] = this.project(lat, lng);
    g.save();
    g.translate(x, y);
    if (ring) {
      g.strokeStyle = ring;
      g.lineWidth = 3;
      g.beginPath();
      g.arc(0, 0, 15, 0, 2 * Math.PI);
      g.stroke();
    }
    g.fillStyle = colour;
    g.strokeStyle = "#fff";
    g.lineWidth = 2;
    g.beginPath();
    g.arc(0, 0, 10, 0, 2 * Math.PI);
    g.fill();
    g.stroke();
    g.rotate((heading * Math.PI) / 180);
    g.fillStyle = "#fff";
    g.beginPath();
    g.moveTo(0, -7);
    g.lineTo(5, 4);
    g.lineTo(0, 1.5);
    g.lineTo(-5, 4);
    g.closePath();
    g.fill();
    g.restore();
    if (label) {
      g.fillStyle = "#111827";
      g.font = "11px system-ui, sans-serif";
      g.textAlign = "left";
      g.textBaseline = "middle";
      g.fillText(label, x + 14, y);
    }
  }

  // The marker (if any) within `radius` CSS pixels of a click.
  hit(markers, px, py, radius = 16) {
    let best = null, bestD = radius;
    for (const m of markers) {
      const [x, y] = this.project(m.lat, m.lng);
      const d = Math.hypot(x - px, y - py);
      if (d <= bestD) [best, bestD] = [m, d];
    }
    return best;
  }
}
