// Live feed of one delivery's ConsumerFrames: WebTransport first, WebSocket when WebTransport
// is missing, blocked or fails; reconnects with exponential backoff and jitter (honouring a
// Retry-After the hub sends while it joins a cluster), follows redirects at once, and resumes
// after the last event seen. The same rules as the client library (client/README.md).

const WT_TIMEOUT_MS = 3000;
// Backoff: the ceiling doubles per consecutive failure from BACKOFF_INITIAL_MS up to
// BACKOFF_MAX_MS; the wait is drawn from [ceiling/2, ceiling] so that pages cut off together
// (a hub restart) do not all come back at the same moment.
const BACKOFF_INITIAL_MS = 500;
const BACKOFF_MAX_MS = 30000;
// A connection that stayed up this long resets the failure count; a shorter one (accepted,
// then closed at once) counts as a failure, so a flapping hub is not hammered.
const STABLE_AFTER_MS = 10000;
// Redirects followed at once in a row; more (a loop between hubs) wait out the backoff.
const MAX_QUICK_REDIRECTS = 3;
// Consecutive WebTransport failures, after it worked once on this page, before switching to
// WebSocket (a hub restart should not cost the page its WebTransport for good).
const WT_FAILURES_BEFORE_FALLBACK = 3;

/** The wait before the next attempt after `failures` consecutive failures (>= 1). */
export function backoffDelayMs(failures, random = Math.random) {
  const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_INITIAL_MS * 2 ** Math.max(0, failures - 1));
  return ceiling / 2 + random() * (ceiling / 2);
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function base64Bytes(b64) {
  return Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
}

// Asks the REST endpoint why we cannot connect: a refusal (bad token, unknown delivery) is
// final; a hub that is joining its cluster (503/429) says when to come back (Retry-After);
// anything else (network, hub restarting) is worth a retry.
async function refusal(deliveryId, token) {
  try {
    const r = await fetch(`/api/v1/tracking/${deliveryId}/status?token=${encodeURIComponent(token)}`);
    if (r.status === 401 || r.status === 403 || r.status === 404) {
      const body = await r.json().catch(() => ({}));
      return { code: r.status, message: body.message || r.statusText };
    }
    if (r.status === 503 || r.status === 429) {
      const s = Number.parseInt(r.headers.get("Retry-After") || "", 10);
      if (Number.isFinite(s) && s > 0) return { retryAfterMs: s * 1000 };
    }
  } catch (_) {
    // The hub is unreachable: not a refusal.
  }
  return null;
}

/**
 * Opens the feed. Callbacks:
 *   onFrame(frame)              every ConsumerFrame, parsed
 *   onState({transport, state, resumeFrom})  transport: 'webtransport' | 'websocket' | null;
 *                               state: 'connecting' | 'open' | 'reconnecting' | 'refused';
 *                               resumeFrom: the last_event_seq sent when the connection opened
 *   onRefused({code, message})  the token or delivery was refused: the feed has stopped
 * lastEventSeq() is read at every (re)connect to resume after the last event seen.
 */
export function openFeed({ deliveryId, token, lastEventSeq, onFrame, onState, onRefused }) {
  let stopped = false;
  let current = null; // { close() } of the live connection
  let webTransportFailed = !("WebTransport" in window);
  let redirects = 0; // redirect frames followed so far
  // Where the WebSocket goes: this page's hub until a redirect names the delivery's owner.
  let wsOrigin = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}`;

  function deliver(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch (_) {
      return;
    }
    if (frame && frame.type === "redirect") follow(frame.url);
    onFrame(frame);
  }

  // A redirect names the hub that owns the delivery (cluster). A WebSocket URL is followed as
  // is; another hub's WebTransport certificate is not pinned by this page, so a WebTransport
  // redirect switches to WebSocket, whose redirect then names the owner's HTTPS address.
  function follow(url) {
    redirects += 1;
    let u;
    try {
      u = new URL(url);
    } catch (_) {
      return;
    }
    if (u.protocol === "wss:" || u.protocol === "ws:") wsOrigin = `${u.protocol}//${u.host}`;
    else webTransportFailed = true;
  }

  async function viaWebTransport() {
    const info = await fetch("/api/v1/webtransport/info").then((r) => (r.ok ? r.json() : null), () => null);
    if (!info) return { opened: false, detail: "no WebTransport info" };
    const resumeFrom = lastEventSeq();
    const url =
      `https://${location.hostname}:${info.port}/api/v1/tracking/${deliveryId}/wt` +
      `?token=${encodeURIComponent(token)}&last_event_seq=${resumeFrom}`;
    let wt;
    try {
      wt = new WebTransport(url, {
        serverCertificateHashes: [{ algorithm: "sha-256", value: base64Bytes(info.cert_sha256_b64) }],
      });
      wt.closed.catch(() => {}); // observed below; avoid an unhandled rejection
      await withTimeout(wt.ready, WT_TIMEOUT_MS, "WebTransport");
    } catch (e) {
      try {
        if (wt) wt.close();
      } catch (_) {}
      return { opened: false, detail: String(e && e.message ? e.message : e) };
    }
    current = { close: () => wt.close() };
    onState({ transport: "webtransport", state: "open", resumeFrom });
    readDatagrams(wt);
    readStream(wt);
    await wt.closed.catch(() => {});
    return { opened: true };
  }

  async function readDatagrams(wt) {
    const decoder = new TextDecoder();
    const reader = wt.datagrams.readable.getReader();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        deliver(decoder.decode(value));
      }
    } catch (_) {
      // Session closed.
    }
  }

  async function readStream(wt) {
    try {
      const streams = wt.incomingUnidirectionalStreams.getReader();
      const { value: stream, done } = await streams.read();
      if (done) return;
      const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done: ended } = await reader.read();
        if (ended) break;
        buffer += value;
        let nl;
        while ((nl = buffer.indexOf("\n")) >= 0) {
          const line = buffer.slice(0, nl);
          buffer = buffer.slice(nl + 1);
          if (line.trim()) deliver(line);
        }
      }
    } catch (_) {
      // Session closed.
    }
    try {
      wt.close();
    } catch (_) {}
  }

  function viaWebSocket() {
    return new Promise((resolve) => {
      const resumeFrom = lastEventSeq();
      const url =
        `${wsOrigin}/api/v1/tracking/${deliveryId}/connect` +
        `?token=${encodeURIComponent(token)}&last_event_seq=${resumeFrom}`;
      const ws = new WebSocket(url);
      let opened = false;
      ws.onopen = () => {
        opened = true;
        current = { close: () => ws.close() };
        onState({ transport: "websocket", state: "open", resumeFrom });
      };
      ws.onmessage = (ev) => deliver(ev.data);
      ws.onclose = (ev) => resolve({ opened, detail: `WebSocket closed (${ev.code})` });
    });
  }

  // A wait that a redirect, reconnect() or the browser coming back online cuts short.
  let wake = null;
  function pause(ms) {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      function done() {
        clearTimeout(timer);
        wake = null;
        resolve();
      }
      wake = done;
    });
  }
  let immediate = false; // next attempt without waiting (redirect, reconnect())
  window.addEventListener("online", () => {
    if (wake) wake();
  });

  async function run() {
    let failures = 0;
    let quickRedirects = 0;
    let webTransportWorked = false;
    let webTransportFailures = 0;
    while (!stopped) {
      onState({ transport: null, state: failures || immediate ? "reconnecting" : "connecting" });
      const useWebTransport = !webTransportFailed;
      const redirectsBefore = redirects;
      const startedMs = Date.now();
      const result = useWebTransport ? await viaWebTransport() : await viaWebSocket();
      current = null;
      if (stopped) return;
      const redirected = redirects !== redirectsBefore;
      let retryAfterMs = 0;
      if (result.opened && useWebTransport) {
        webTransportWorked = true;
        webTransportFailures = 0;
      }
      if (!result.opened) {
        const refused = await refusal(deliveryId, token);
        if (refused && refused.code) {
          stopped = true;
          onState({ transport: null, state: "refused" });
          onRefused(refused);
          return;
        }
        retryAfterMs = (refused && refused.retryAfterMs) || 0;
        if (useWebTransport) {
          webTransportFailures += 1;
          // Blocked UDP, no HTTP/3, a failed handshake: WebSocket from now on (until reload),
          // so that every reconnection does not wait out the WebTransport timeout again. A
          // page on which WebTransport worked retries it a few times first (hub restart).
          if (!webTransportWorked || webTransportFailures >= WT_FAILURES_BEFORE_FALLBACK) {
            webTransportFailed = true;
            console.info("trackline: WebTransport unavailable, using WebSocket:", result.detail);
            if (!webTransportWorked && !retryAfterMs) continue;
          }
        }
      }
      if ((redirected || immediate) && quickRedirects < MAX_QUICK_REDIRECTS) {
        // A redirect names the delivery's new hub, reconnect() asks for a fresh connection:
        // neither is a failure, go at once (a redirect loop falls back to the backoff).
        quickRedirects += redirected ? 1 : 0;
        immediate = false;
        continue;
      }
      immediate = false;
      const stable = result.opened && Date.now() - startedMs >= STABLE_AFTER_MS;
      if (stable) quickRedirects = 0;
      failures = stable ? 1 : failures + 1;
      onState({ transport: null, state: "reconnecting", detail: result.detail });
      await pause(Math.max(retryAfterMs, backoffDelayMs(failures)));
    }
  }

  run();
  return {
    close() {
      stopped = true;
      if (current) current.close();
    },
    // Drops the live connection; the loop reconnects at once and resumes after the last
    // event seen.
    reconnect() {
      immediate = true;
      if (current) current.close();
      else if (wake) wake();
    },
  };
}
