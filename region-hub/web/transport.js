// Live feed of one delivery's ConsumerFrames: WebTransport first, WebSocket when WebTransport
// is missing, blocked or fails; reconnects with backoff and resumes after the last event seen.

const WT_TIMEOUT_MS = 3000;
const BACKOFF_MS = [500, 1000, 2000, 4000, 8000];

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
// final, anything else (network, hub restarting) is worth a retry.
async function refusal(deliveryId, token) {
  try {
    const r = await fetch(`/api/v1/tracking/${deliveryId}/status?token=${encodeURIComponent(token)}`);
    if (r.status === 401 || r.status === 403 || r.status === 404) {
      const body = await r.json().catch(() => ({}));
      return { code: r.status, message: body.message || r.statusText };
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

  async function run() {
    let failures = 0;
    while (!stopped) {
      onState({ transport: null, state: failures ? "reconnecting" : "connecting" });
      const useWebTransport = !webTransportFailed;
      const result = useWebTransport ? await viaWebTransport() : await viaWebSocket();
      current = null;
      if (stopped) return;
      if (!result.opened) {
        const refused = await refusal(deliveryId, token);
        if (refused) {
          stopped = true;
          onState({ transport: null, state: "refused" });
          onRefused(refused);
          return;
        }
        if (useWebTransport) {
          // Blocked UDP, no HTTP/3, a failed handshake: WebSocket from now on (until reload),
          // so that every reconnection does not wait out the WebTransport timeout again.
          webTransportFailed = true;
          console.info("trackline: WebTransport unavailable, using WebSocket:", result.detail);
          continue;
        }
      }
      failures = result.opened ? 1 : failures + 1;
      onState({ transport: null, state: "reconnecting", detail: result.detail });
      const base = BACKOFF_MS[Math.min(failures - 1, BACKOFF_MS.length - 1)];
      await sleep(base / 2 + Math.random() * base);
    }
  }

  run();
  return {
    close() {
      stopped = true;
      if (current) current.close();
    },
    // Drops the live connection; the loop reconnects (and resumes) after a short backoff.
    reconnect() {
      if (current) current.close();
    },
  };
}
