// Consumer tracking page: map, driver marker interpolated between fixes, ETA countdown,
// status timeline, location-unavailable banner, proof photo. State is mirrored in
// `window.trackline` for people and browser tests.

import { MapView, loadMap, decodePolyline } from "./map.js";
import { openFeed } from "./transport.js";

const HAPPY_PATH = ["confirmed", "preparing", "driver_assigned", "picked_up", "en_route", "arriving", "delivered"];
const LABELS = {
  confirmed: "Order confirmed",
  preparing: "Preparing",
  driver_assigned: "Driver assigned",
  picked_up: "Picked up",
  en_route: "On the way",
  arriving: "Arriving",
  delivered: "Delivered",
  cancelled: "Cancelled",
};
const UNAVAILABLE_AFTER_S = 30;

const $ = (id) => document.getElementById(id);
const deliveryId = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop() || "");
const token = new URLSearchParams(location.search).get("token") || "";

// Everything the page knows; tests read it.
const state = (window.trackline = {
  deliveryId,
  transport: null, // 'webtransport' | 'websocket' | null
  connection: "connecting",
  connects: 0, // connections opened (1 + reconnections)
  resumedFrom: null, // last_event_seq sent on the latest connection
  error: null,
  lastEventSeq: 0,
  positions: 0, // position frames received
  lastFix: null, // newest Position frame
  marker: null, // where the marker is drawn now: {lat, lng, heading}
  status: null,
  events: [], // StatusEvents by event_seq
  eta: null,
  route: null, // [[lat, lng]] from the ETA frames
  pickup: null,
  dropoff: null,
  unavailableSinceMs: null, // ts of the last fix when the driver went silent
  proofUrl: null, // the proof photo's path once delivered
  serverOffsetMs: 0, // server clock - local clock
});

let anim = null; // {from, to, startMs, durationMs}
let routeProgress = 0; // index of the route segment the driver is on (only moves forward)
let lastFixArrivalMs = 0;
let map = null;
let viewFitted = false;

const serverNow = () => Date.now() + state.serverOffsetMs;

function showError(message) {
  state.error = message;
  state.lastFix = state.marker = state.eta = state.route = null;
  anim = null;
  $("error").textContent = message;
  $("error").hidden = false;
  $("unavailable").hidden = true;
  $("eta").textContent = "--:--";
  $("eta-detail").textContent = "";
  $("timeline").replaceChildren();
}

function setTransport({ transport, state: connection, resumeFrom }) {
  state.transport = transport;
  state.connection = connection;
  if (connection === "open") {
    state.connects += 1;
    state.resumedFrom = resumeFrom;
  }
  const el = $("transport");
  el.dataset.transport = transport || "";
  el.dataset.state = connection;
  el.textContent =
    transport === "webtransport" ? "via WebTransport" : transport === "websocket" ? "via WebSocket" : connection;
}

// ---- frames ----

function onFrame(f) {
  if (state.error) return;
  switch (f.type) {
    case "snapshot":
      return onSnapshot(f);
    case "position":
      return onPosition(f);
    case "status":
      return onStatus(f);
    case "eta":
      return onEta(f);
    case "location_unavailable":
      state.unavailableSinceMs = f.last_ts_ms;
      return tick();
    case "redirect":
      return feed.reconnect();
    case "error":
      feed.close();
      return showError(f.message || `error ${f.code}`);
  }
}

function onSnapshot(s) {
  state.serverOffsetMs = s.server_time_ms - Date.now();
  state.pickup = s.pickup;
  state.dropoff = s.dropoff;
  if (!state.status) state.status = s.status;
  if (s.position) onPosition(s.position);
  if (s.eta) onEta(s.eta);
  const stale = s.position && s.position_age_s > UNAVAILABLE_AFTER_S && !isTerminal(s.status);
  state.unavailableSinceMs = stale ? s.position.ts_ms : null;
  fitView();
  renderStatus();
  tick();
}

function onPosition(p) {
  const last = state.lastFix;
  // Newest wins; a later measurement with a lower seq means the hub's counter restarted.
  if (last && p.seq <= last.seq && p.ts_ms <= last.ts_ms) return;
  const now = performance.now();
  const from = state.marker || { lat: p.lat, lng: p.lng, heading: p.heading_deg };
  // Glide over about one fix interval, so the marker keeps moving until the next fix.
  const interval = lastFixArrivalMs ? now - lastFixArrivalMs : 1000;
  anim = { from, to: { lat: p.lat, lng: p.lng, heading: p.heading_deg }, startMs: now, durationMs: clamp(interval, 200, 3000) };
  lastFixArrivalMs = now;
  state.lastFix = p;
  state.positions += 1;
  if (state.unavailableSinceMs !== null && p.ts_ms > state.unavailableSinceMs) state.unavailableSinceMs = null;
}

function onStatus(ev) {
  if (state.events.some((e) => e.event_seq === ev.event_seq)) return;
  state.events.push(ev);
  state.events.sort((a, b) => a.event_seq - b.event_seq);
  state.lastEventSeq = Math.max(state.lastEventSeq, ev.event_seq);
  state.status = state.events[state.events.length - 1].status;
  const proof = ev.metadata && ev.metadata.proof_url;
  if (typeof proof === "string" && proof.startsWith("/")) {
    // The hub's own path; an <img> cannot send a bearer token, so it goes in the query.
    const url = new URL(proof, location.origin);
    url.searchParams.set("token", token);
    $("proof-img").src = url.pathname + url.search;
    $("proof").hidden = false;
    state.proofUrl = proof;
  }
  renderStatus();
}

function onEta(e) {
  state.eta = e;
  tick();
  if (e.route_polyline) {
    state.route = decodePolyline(e.route_polyline);
    routeProgress = 0;
    viewFitted = false;
    fitView();
  }
}

// ---- rendering ----

const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));
const isTerminal = (s) => s === "delivered" || s === "cancelled";
const clock = (ms) => new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });

function renderStatus() {
  $("status").textContent = LABELS[state.status] || state.status || "-";
  const list = $("timeline");
  list.replaceChildren();
  const reached = new Set();
  for (const ev of state.events) {
    reached.add(ev.status);
    list.append(timelineItem(ev.status, "done", clock(ev.ts_ms)));
  }
  if (!isTerminal(state.status)) {
    const at = HAPPY_PATH.indexOf(state.status);
    for (const s of HAPPY_PATH.slice(at + 1)) if (!reached.has(s)) list.append(timelineItem(s, "todo", ""));
  }
}

function timelineItem(status, cls, time) {
  const li = document.createElement("li");
  li.className = cls;
  li.dataset.status = status;
  const name = document.createElement("span");
  name.textContent = LABELS[status] || status;
  const t = document.createElement("time");
  t.textContent = time;
  li.append(name, t);
  return li;
}

// Fits the view around the stops, the route and the driver (at least ~600 m across).
function fitView() {
  if (!map || viewFitted || !state.pickup) return;
  const pts = [state.pickup, state.dropoff];
  if (state.lastFix) pts.push(state.lastFix);
  for (const [lat, lng] of state.route || []) pts.push({ lat, lng });
  let [w, s, e, n] = [Infinity, Infinity, -Infinity, -Infinity];
  for (const p of pts) [w, s, e, n] = [Math.min(w, p.lng), Math.min(s, p.lat), Math.max(e, p.lng), Math.max(n, p.lat)];
  const [cx, cy] = [(w + e) / 2, (s + n) / 2];
  const halfLat = Math.max((n - s) * 0.6, 0.0027);
  const halfLng = Math.max((e - w) * 0.6, 0.0027 / Math.cos((cy * Math.PI) / 180));
  map.setView(cx - halfLng, cy - halfLat, cx + halfLng, cy + halfLat);
  viewFitted = true;
}

// The part of the route still ahead of `pos`. The driver's segment is searched a little way
// ahead of the last one, and the earliest of the near ones wins: a route that comes back
// along the same street (to the pickup and back) is not skipped.
function routeAhead(route, pos) {
  const k = Math.cos((pos.lat * Math.PI) / 180);
  const dist = (i) => {
    const [ay, ax] = route[i], [by, bx] = route[i + 1];
    const [dx, dy] = [(bx - ax) * k, by - ay];
    const t = clamp(((pos.lng - ax) * k * dx + (pos.lat - ay) * dy) / (dx * dx + dy * dy || 1e-18), 0, 1);
    return Math.hypot((ax - pos.lng) * k + dx * t, ay - pos.lat + dy * t);
  };
  const end = Math.min(route.length - 1, routeProgress + 40);
  const d = [];
  for (let i = routeProgress; i < end; i++) d.push(dist(i));
  const near = Math.min(...d) + 0.00003; // ~3 m in degrees of latitude: same street, other leg
  routeProgress += Math.max(0, d.findIndex((x) => x <= near));
  return [[pos.lat, pos.lng], ...route.slice(routeProgress + 1)];
}

function lerpAngle(a, b, t) {
  const d = ((((b - a) % 360) + 540) % 360) - 180; // shortest way round
  return (a + d * t + 360) % 360;
}

function frame() {
  if (anim) {
    const t = clamp((performance.now() - anim.startMs) / anim.durationMs, 0, 1);
    const { from, to } = anim;
    state.marker = {
      lat: from.lat + (to.lat - from.lat) * t,
      lng: from.lng + (to.lng - from.lng) * t,
      heading: lerpAngle(from.heading, to.heading, t),
    };
  }
  if (map) {
    const stops = [];
    if (state.pickup) stops.push({ ...state.pickup, label: "P", colour: "#059669" });
    if (state.dropoff) stops.push({ ...state.dropoff, label: "D", colour: "#dc2626" });
    let route =
      state.route ||
      (state.pickup && state.dropoff ? [[state.pickup.lat, state.pickup.lng], [state.dropoff.lat, state.dropoff.lng]] : []);
    if (state.route && state.marker && route.length > 1) route = routeAhead(route, state.marker);
    const markers = [];
    if (state.marker && !state.error) {
      const grey = state.unavailableSinceMs !== null;
      markers.push({ ...state.marker, colour: grey ? "#9ca3af" : "#111827", ring: grey ? null : "rgba(37,99,235,0.35)" });
    }
    const hideRoute = state.error || isTerminal(state.status);
    map.draw({ route: hideRoute ? [] : route, stops: state.error ? [] : stops, markers });
  }
  requestAnimationFrame(frame);
}

// The hub's confidence band as "12-15 min · " (empty when the hub sent none): minutes left
// at the band's ends, counted down like the estimate.
function etaRange(eta) {
  if (!(eta.eta_high_s > 0)) return "";
  const now = serverNow();
  const mins = (s) => Math.max(0, Math.round((eta.ts_ms + s * 1000 - now) / 60000));
  const lo = mins(eta.eta_low_s), hi = Math.max(mins(eta.eta_high_s), mins(eta.eta_low_s) + 1);
  return `${lo}-${hi} min · `;
}

// Once a second: ETA countdown and the age of the last position.
function tick() {
  if (state.error) return;
  const eta = state.eta;
  if (eta && !isTerminal(state.status)) {
    const left = Math.max(0, Math.round((eta.ts_ms + eta.eta_s * 1000 - serverNow()) / 1000));
    $("eta").textContent = `${Math.floor(left / 60)}:${String(left % 60).padStart(2, "0")}`;
    $("eta-detail").textContent = `${etaRange(eta)}${(eta.remaining_m / 1000).toFixed(1)} km to go`;
  } else if (isTerminal(state.status)) {
    $("eta").textContent = LABELS[state.status];
    $("eta-detail").textContent = "";
  }
  const banner = $("unavailable");
  if (state.unavailableSinceMs !== null && !isTerminal(state.status)) {
    const age = Math.max(0, Math.round((serverNow() - state.unavailableSinceMs) / 1000));
    banner.textContent = `Driver location unavailable - last seen ${age} s ago`;
    banner.dataset.ageS = age;
    banner.hidden = false;
  } else {
    banner.hidden = true;
  }
}

// ---- start ----

$("delivery-id").textContent = `#${deliveryId}`;
renderStatus();
const feed = openFeed({
  deliveryId,
  token,
  lastEventSeq: () => state.lastEventSeq,
  onFrame,
  onState: setTransport,
  onRefused: ({ code, message }) => {
    console.warn("trackline: refused:", code, message);
    showError(
      code === 404
        ? "This delivery cannot be found."
        : "This tracking link is not valid or has expired. Ask the shop for a new one.",
    );
  },
});
window.tracklineFeed = feed; // lets tests drop the connection
loadMap()
  .then((m) => {
    $("attribution").textContent = m.attribution;
    map = new MapView($("map"), m);
    fitView();
  })
  .catch((e) => console.warn("trackline: no map", e));
setInterval(tick, 1000);
requestAnimationFrame(frame);
