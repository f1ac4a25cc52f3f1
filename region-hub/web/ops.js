// Operator view of a region hub: every active delivery on the map, rates, anomalies, and a
// drill-down that replays one delivery's sampled positions and status events on the map.

import { MapView, loadMap } from "./map.js";

const POLL_MS = 1000;
const STALE_S = 10; // a fix older than this is flagged
const MAX_SPEED_MPS = 45; // ~160 km/h in a city is a bad fix or a bad driver
const MOVING = new Set(["picked_up", "en_route", "arriving"]);
const REPLAY_MS = 10000; // a replay lasts 10 s whatever the history's length
const HUB_ANOMALY_RECENT_MS = 5 * 60 * 1000; // hub-detected anomalies flag a delivery this long
const HUB_ANOMALY_POLL_MS = 5000;

const $ = (id) => document.getElementById(id);
const token = new URLSearchParams(location.search).get("token") || "";
const q = `token=${encodeURIComponent(token)}`;

const state = (window.trackline = {
  error: null,
  deliveries: [],
  anomalies: [], // [{id, why}]: the page's own checks plus the hub's recent detections
  hubAnomalies: [], // from /api/v1/anomalies, newest first
  rates: null, // {fixes_per_s, pushed_per_s, consumers, lag_p50_s, lag_max_s}
  selected: null, // delivery id
  history: null, // {snapshot, events, trail}
  replay: { playing: false, at: 1 }, // at: 0..1 of the history's time span
});

let map = null;
let previous = null; // last poll, for rates

function anomaliesOf(d) {
  const why = [];
  const seen = new Set();
  for (const a of state.hubAnomalies) {
    if (a.delivery_id !== d.delivery_id || d.server_time_ms - a.ts_ms > HUB_ANOMALY_RECENT_MS) continue;
    if (!seen.has(a.kind)) why.push(a.kind.replace("_", " "));
    seen.add(a.kind);
  }
  const age = d.position_age_s;
  if (MOVING.has(d.status) && !d.position) why.push("no position");
  if (d.position && age > STALE_S) why.push(`no fix for ${Math.round(age)} s`);
  if (d.position && d.position.speed_mps > MAX_SPEED_MPS) why.push(`${Math.round(d.position.speed_mps * 3.6)} km/h`);
  if (d.eta && d.eta.ts_ms + d.eta.eta_s * 1000 < d.server_time_ms - 120000) why.push("ETA overdue");
  return why;
}

function percentile(sorted, p) {
  if (!sorted.length) return null;
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))];
}

async function poll() {
  try {
    const r = await fetch(`/api/v1/ops/deliveries?${q}`);
    if (r.status === 401 || r.status === 403) {
      const body = await r.json().catch(() => ({}));
      return fail(`Operator token refused: ${body.message || r.statusText}`);
    }
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    onView(await r.json());
    $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (e) {
    $("updated").textContent = `retrying (${e.message})`;
  }
  setTimeout(poll, POLL_MS);
}

// The hub's own detections (stationary driver, driver moving away from the target).
async function pollHubAnomalies() {
  try {
    const r = await fetch(`/api/v1/anomalies?${q}&limit=100`);
    if (r.ok) state.hubAnomalies = (await r.json()).anomalies || [];
  } catch (_) {
    // Shown as stale by the main poll.
  }
  if (!state.error) setTimeout(pollHubAnomalies, HUB_ANOMALY_POLL_MS);
}

function fail(message) {
  state.error = message;
  $("error").textContent = message;
  $("error").hidden = false;
  $("updated").textContent = "refused";
}

function onView(v) {
  state.deliveries = v.deliveries;
  state.anomalies = v.deliveries.flatMap((d) => anomaliesOf(d).map((why) => ({ id: d.delivery_id, why })));
  const lags = v.deliveries.filter((d) => d.position).map((d) => d.position_age_s).sort((a, b) => a - b);
  const dt = previous ? (v.server_time_ms - previous.server_time_ms) / 1000 : 0;
  state.rates = {
    fixes_per_s: dt > 0 ? (v.fixes_received_total - previous.fixes_received_total) / dt : null,
    pushed_per_s: dt > 0 ? (v.positions_pushed_total - previous.positions_pushed_total) / dt : null,
    consumers: v.consumers_websocket + v.consumers_webtransport,
    consumers_websocket: v.consumers_websocket,
    consumers_webtransport: v.consumers_webtransport,
    lag_p50_s: percentile(lags, 0.5),
    lag_max_s: lags.length ? lags[lags.length - 1] : null,
  };
  previous = v;
  render();
}

const fmt = (x, digits = 0) => (x === null || x === undefined ? "-" : x.toFixed(digits));

function render() {
  const r = state.rates;
  if (!r) return;
  $("stat-active").textContent = state.deliveries.length;
  $("stat-fixes").textContent = fmt(r.fixes_per_s, 1);
  $("stat-pushed").textContent = fmt(r.pushed_per_s, 1);
  $("stat-consumers").textContent = `${r.consumers} (${r.consumers_webtransport} WT)`;
  $("stat-lag-p50").textContent = r.lag_p50_s === null ? "-" : `${fmt(r.lag_p50_s, 1)} s`;
  $("stat-lag-max").textContent = r.lag_max_s === null ? "-" : `${fmt(r.lag_max_s, 1)} s`;

  const list = $("anomalies");
  list.replaceChildren(
    ...(state.anomalies.length ? state.anomalies : [{ why: "none" }]).map((a) => {
      const li = document.createElement("li");
      li.textContent = a.id ? `#${a.id}: ${a.why}` : a.why;
      if (!a.id) li.className = "none";
      if (a.id) li.onclick = () => select(a.id);
      return li;
    }),
  );

  const rows = state.deliveries.map((d) => {
    const tr = document.createElement("tr");
    const why = anomaliesOf(d);
    tr.dataset.id = d.delivery_id;
    if (why.length) tr.classList.add("anomaly");
    if (d.delivery_id === state.selected) tr.classList.add("selected");
    const eta = d.eta ? Math.max(0, Math.round((d.eta.ts_ms + d.eta.eta_s * 1000 - d.server_time_ms) / 1000)) : null;
    for (const text of [
      d.delivery_id,
      d.status,
      d.position ? `${fmt(d.position_age_s, 1)} s` : "-",
      eta === null ? "-" : `${Math.floor(eta / 60)}:${String(eta % 60).padStart(2, "0")}`,
      why.join(", "),
    ]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.append(td);
    }
    tr.onclick = () => select(d.delivery_id);
    return tr;
  });
  $("deliveries").replaceChildren(...rows);
}

// ---- drill-down and replay ----

async function select(id) {
  state.selected = id;
  state.history = null;
  $("drill").hidden = false;
  $("drill-id").textContent = `#${id}`;
  const r = await fetch(`/api/v1/ops/deliveries/${id}/history?${q}`);
  if (!r.ok) {
    $("replay-time").textContent = `history unavailable (HTTP ${r.status})`;
    return;
  }
  state.history = await r.json();
  state.replay = { playing: false, at: 1 };
  $("replay-pos").value = 1000;
  renderReplay();
  render();
}

// Time span of the history: first event (or crumb) to the newest crumb (or event).
function span(h) {
  const times = [...h.events.map((e) => e.ts_ms), ...h.trail.map((c) => c[3])];
  return [Math.min(...times), Math.max(...times)];
}

function replayPosition(h, t) {
  let last = null;
  for (const c of h.trail) {
    if (c[3] > t) {
      if (!last) return null;
      const k = (t - last[3]) / (c[3] - last[3] || 1);
      return { lat: last[0] + (c[0] - last[0]) * k, lng: last[1] + (c[1] - last[1]) * k, heading: c[2] };
    }
    last = c;
  }
  return last && { lat: last[0], lng: last[1], heading: last[2] };
}

function renderReplay() {
  const h = state.history;
  if (!h) return;
  const [t0, t1] = span(h);
  const t = t0 + (t1 - t0) * state.replay.at;
  state.replay.time_ms = t;
  $("replay-time").textContent = new Date(t).toLocaleTimeString();
  $("replay-events").replaceChildren(
    ...h.events.map((e) => {
      const li = document.createElement("li");
      li.textContent = `${e.status} (${e.source}) ${new Date(e.ts_ms).toLocaleTimeString()}`;
      if (e.ts_ms <= t) li.className = "past";
      return li;
    }),
  );
}

function play() {
  if (!state.history) return;
  state.replay = { playing: true, at: 0, startMs: performance.now() };
}

// ---- drawing ----

function frame() {
  const rp = state.replay;
  if (rp.playing) {
    rp.at = Math.min(1, (performance.now() - rp.startMs) / REPLAY_MS);
    $("replay-pos").value = Math.round(rp.at * 1000);
    renderReplay();
    if (rp.at >= 1) rp.playing = false;
  }
  if (map) {
    const flagged = new Set(state.anomalies.map((a) => a.id));
    const markers = state.deliveries
      .filter((d) => d.position && d.delivery_id !== state.selected)
      .map((d) => ({
        id: d.delivery_id,
        lat: d.position.lat,
        lng: d.position.lng,
        heading: d.position.heading_deg,
        colour: flagged.has(d.delivery_id) ? "#dc2626" : "#1f2937",
        ring: flagged.has(d.delivery_id) ? "rgba(220,38,38,0.5)" : null,
      }));
    const layers = { markers };
    const h = state.history;
    if (h && state.selected) {
      const s = h.snapshot;
      layers.trail = h.trail.filter((c) => c[3] <= rp.time_ms).map((c) => [c[0], c[1]]);
      layers.stops = [
        { ...s.pickup, label: "P", colour: "#059669" },
        { ...s.dropoff, label: "D", colour: "#dc2626" },
      ];
      const at = replayPosition(h, rp.time_ms);
      if (at) markers.push({ ...at, colour: "#7c3aed", ring: "rgba(124,58,237,0.4)", label: `#${s.delivery_id}` });
    }
    state.markerCount = markers.length;
    map.draw(layers);
  }
  requestAnimationFrame(frame);
}

$("replay-play").onclick = play;
$("replay-pos").oninput = (e) => {
  state.replay = { playing: false, at: e.target.value / 1000 };
  renderReplay();
};
$("drill-close").onclick = () => {
  state.selected = state.history = null;
  $("drill").hidden = true;
  render();
};
$("map").onclick = (e) => {
  if (!map) return;
  const rect = e.target.getBoundingClientRect();
  const hit = map.hit(
    state.deliveries.filter((d) => d.position).map((d) => ({ id: d.delivery_id, lat: d.position.lat, lng: d.position.lng })),
    e.clientX - rect.left,
    e.clientY - rect.top,
  );
  if (hit) select(hit.id);
};

loadMap()
  .then((m) => {
    $("attribution").textContent = m.attribution;
    map = new MapView($("map"), m);
  })
  .catch((e) => console.warn("trackline: no map", e));
poll();
pollHubAnomalies();
requestAnimationFrame(frame);
