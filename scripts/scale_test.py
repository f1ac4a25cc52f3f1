#!/usr/bin/env python3
"""Scale test: one hub and one edge as processes (cluster mode, as in production) under
`client-sim scale`, then the figures judged.

Defaults are the seed-scale run of issue 10: 50,000 deliveries, each a driver (a fix every
4 s: 12,500 fixes/s; 5 % on the HTTPS fallback) and one consumer (30 % WebSocket, 70 %
WebTransport), a ramp of 500 sessions/s, then 10 minutes steady. Exits 0 only when:

  - no acknowledged status event was lost (and some were acknowledged);
  - at least 99.9 % of the sessions that should be connected were, at every steady sample;
  - driver -> consumer latency p99 <= 1 s at steady state;
  - connections that broke at steady state < 1 % of sessions per minute;
  - hub RSS <= 30 KiB per delivery (with its consumer) and edge RSS <= 10 KiB per driver
    session, over the nodes' idle RSS, at steady state (`--no-memory-check`: printed only).

The JSON report and the SVG plot go to target/scale-test/ (with the node logs). Stdlib only;
reuses the multi-node test's node start-up (scripts/cluster_test.py).

    python3 scripts/scale_test.py --deliveries 5000 --steady 60s
"""

import argparse
import collections
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_test as ct  # noqa: E402


def log(msg):
    print(f"[scale-test {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def one_hub_cluster(hub):
    """A one-hub cluster has no successor to copy to: without `min_copies = 1` every status
    change would be refused (503)."""
    with open(hub.config_path) as f:
        text = f.read()
    if "min_copies" not in text:
        text = text.replace("[cluster_hub]\n", "[cluster_hub]\nmin_copies = 1\n", 1)
    with open(hub.config_path, "w") as f:
        f.write(text)
    subprocess.run([hub.binary, "--config", hub.config_path, "--check-config"], check=True,
                   capture_output=True)


def log_summary(work, limit=8):
    """The most frequent WARN/ERROR messages of each node log (timestamps and fields cut)."""
    out = {}
    for name in sorted(os.listdir(work)):
        if not (name.endswith(".log") and (name.startswith("hub") or name.startswith("edge"))):
            continue
        counts = collections.Counter()
        with open(os.path.join(work, name), errors="replace") as f:
            for line in f:
                if " WARN " in line or " ERROR " in line:
                    msg = re.sub(r"^\S+\s+", "", line.strip())
                    msg = re.sub(r"\d+", "N", msg)[:160]
                    counts[msg] += 1
        out[name] = counts.most_common(limit)
    return out


def judge(rep, args):
    """The checks of issue 10 as (name, passed, shown, informational)."""
    ev = rep["status_events"]
    steady_p99 = rep["latency_ms"]["steady"]["p99"]
    ratio = rep["sessions"]["steady_connected_ratio_min"]
    drops = rep["reconnects"]["steady_drops_pct_of_sessions_per_min"]
    nodes = rep.get("nodes", {})
    hub_kib = nodes.get("hub", {}).get("rss_over_idle_kib_per_delivery")
    edge_kib = nodes.get("edge", {}).get("rss_over_idle_kib_per_delivery")
    mem_info = args.no_memory_check
    # Memory per session means something only when the sessions were held.
    held = ratio is not None and ratio >= 0.999
    unheld = "" if held else " (sessions not held: not a per-session figure)"
    checks = [
        ("acknowledged status events lost", ev["acknowledged"] > 0 and ev["lost"] == 0,
         f"{ev['lost']} of {ev['acknowledged']} (must be 0 of > 0)", False),
        ("sessions connected at steady state (min)", ratio is not None and ratio >= 0.999,
         f"{100 * (ratio or 0):.3f} % (>= 99.9 %)", False),
        ("driver -> consumer latency p99 at steady state",
         rep["latency_ms"]["steady"]["samples"] > 0 and steady_p99 <= 1000,
         f"{steady_p99:.0f} ms (<= 1000 ms; {rep['latency_ms']['steady']['samples']} samples)", False),
        ("connections broken at steady state", drops is not None and drops < 1.0,
         f"{drops:.3f} % of sessions per minute (< 1 %)", False),
        ("hub RSS per delivery over idle", held and hub_kib is not None and hub_kib <= 30,
         f"{hub_kib} KiB (<= 30 KiB){unheld}", mem_info),
        ("edge RSS per driver session over idle", held and edge_kib is not None and edge_kib <= 10,
         f"{edge_kib} KiB (<= 10 KiB){unheld}", mem_info),
    ]
    return checks


def run(args):
    work = os.path.abspath(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    ct.BASE = args.base_port
    args.nodes = 1
    # Node logs at warn: at this scale debug logging would cost the nodes more than the load.
    os.environ.setdefault("CT_NODE_LOG", "warn")
    pki, key, public = ct.make_pki(args, work)
    hubs, edges = ct.write_configs(args, work, pki, key, public)
    hub, edge = hubs[0], edges[0]
    one_hub_cluster(hub)
    hub.name, edge.name = "hub", "edge"
    nodes = [hub, edge]
    gen = None
    try:
        for n in nodes:
            n.start()
        for n in nodes:
            n.wait_ready()
        log("hub and edge ready")
        time.sleep(args.settle_s)
        report = os.path.join(work, "report.json")
        cmd = [args.client_sim, "scale", "--ca", os.path.join(pki, "ca.pem"),
               "--token-key", key, "--token-kid", "1",
               "--edge", f"quic=127.0.0.1:{edge.ports['quic']},https=127.0.0.1:{edge.ports['https']}",
               "--hub", f"https=127.0.0.1:{hub.ports['https']},wt=127.0.0.1:{hub.ports['wt']}",
               "--deliveries", str(args.deliveries), "--ramp-rate", args.ramp_rate,
               "--steady", args.steady, "--warmup", args.warmup,
               "--fix-interval", args.fix_interval,
               "--ws-share", str(args.ws_share), "--https-share", str(args.https_share),
               "--pickup-wait-s", str(args.pickup_wait_s), "--between", args.between,
               "--node", f"hub={hub.proc.pid}", "--node", f"edge={edge.proc.pid}",
               "--report", report] + args.extra
        log("generator: " + " ".join(cmd[1:]))
        gen = subprocess.Popen(cmd, start_new_session=True)
        while gen.poll() is None:
            for n in nodes:
                if n.proc.poll() is not None:
                    raise RuntimeError(f"{n.name} died during the run ({n.proc.returncode}); "
                                       f"see {work}/{n.name}.1.log")
            time.sleep(1)
        if gen.returncode != 0:
            raise RuntimeError(f"client-sim scale exited with {gen.returncode} "
                               f"(see {work}/report.workers.log)")
        gen = None
        with open(report) as f:
            rep = json.load(f)
    finally:
        if gen is not None and gen.poll() is None:
            os.killpg(gen.pid, signal.SIGKILL)
            gen.wait(timeout=10)
        for n in nodes:
            n.stop_hard()
    rep["node_log_warnings"] = log_summary(work)
    with open(report, "w") as f:
        json.dump(rep, f, indent=2)
    return show(rep, args, work)


def show(rep, args, work):
    print()
    print(f"deliveries {rep['deliveries']} (ramp {rep['ramp_s']} s at {rep['ramp_rate_per_s']}/s, "
          f"steady window {rep['steady_window_s']} s), fixes sent {rep['fixes_sent']}, "
          f"positions received {rep['positions_received']}, deliveries created "
          f"{rep['deliveries_created']} completed {rep['deliveries_completed']}")
    print(f"sessions at end: " + ", ".join(f"{k} {v['connected']}/{v['wanted']}"
                                           for k, v in rep["sessions"]["at_end"].items()))
    for k, p in rep["handshake_ms"].items():
        print(f"handshake {k}: p50 {p['p50']:.0f} ms p99 {p['p99']:.0f} ms ({p['samples']})")
    if rep["failures"]:
        print("failed attempts: " + ", ".join(f"{k} {v}" for k, v in rep["failures"].items()))
    lat = rep["latency_ms"]
    print(f"latency all: p50 {lat['all']['p50']:.0f} ms p99 {lat['all']['p99']:.0f} ms "
          f"max {lat['all']['max']:.0f} ms")
    ev = rep["status_events"]
    print(f"status events: acknowledged {ev['acknowledged']} seen {ev['seen']} lost {ev['lost']} "
          f"(made by the hub first {ev['made_by_hub_first']}, failed {ev['failed']}, "
          f"gaps {ev['gaps_seen_by_consumers']})"
          + (f" lost: {', '.join(ev['lost_events'][:20])}" if ev["lost_events"] else ""))
    r = rep["reconnects"]
    print(f"reconnects: drops {r['drops_total']} (steady {r['steady_drops']}), reconnected "
          f"{r['reconnected_by_kind']}, new consumer sessions {r['new_consumer_sessions']}")
    for name, n in rep["nodes"].items():
        print(f"{name}: {n['cpu_cores_steady']} cores at steady state, RSS idle "
              f"{n['rss_idle_mib']} MiB -> {n['rss_steady_max_mib']} MiB "
              f"({n['rss_over_idle_kib_per_delivery']} KiB per delivery)")
    g = rep["generator"]
    print(f"generator: {g['cpu_cores_steady']} cores at steady state, {g['rss_mib_at_end']} MiB, "
          f"{rep['workers']} workers; errors {rep['errors']}")
    for e in rep.get("first_errors", [])[:8]:
        print(f"  error: {e}")
    for name, top in rep.get("node_log_warnings", {}).items():
        for msg, count in top[:5]:
            print(f"  {name}: {count} x {msg}")
    print()
    failed = False
    for name, ok, shown, info in judge(rep, args):
        tag = "ok  " if ok else ("info" if info else "FAIL")
        failed |= not ok and not info
        print(f"{tag} {name}: {shown}")
    log(f"report: {work}/report.json  plot: {work}/report.svg")
    return 1 if failed else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ct.binary_args(ap)
    ap.add_argument("--workdir", default=os.path.join(ct.ROOT, "target", "scale-test"))
    ap.add_argument("--base-port", type=int, default=29100)
    ap.add_argument("--deliveries", type=int, default=50000)
    ap.add_argument("--steady", default="10m", help="steady time after the ramp (humantime)")
    ap.add_argument("--warmup", default="30s",
                    help="time after the ramp before the judged window starts")
    ap.add_argument("--ramp-rate", default="500/s")
    ap.add_argument("--fix-interval", default="4s")
    ap.add_argument("--ws-share", type=float, default=0.3)
    ap.add_argument("--https-share", type=float, default=0.05)
    ap.add_argument("--pickup-wait-s", type=float, default=600,
                    help="mean wait of a driver at the pickup (order being prepared)")
    ap.add_argument("--between", default="60s", help="a driver's pause between deliveries")
    ap.add_argument("--settle-s", type=float, default=5)
    ap.add_argument("--no-memory-check", action="store_true",
                    help="print the memory figures without judging them")
    ap.add_argument("--judge", metavar="REPORT",
                    help="judge an existing report instead of running")
    ap.add_argument("extra", nargs="*", help="more arguments for client-sim scale (after --)")
    args = ap.parse_args()
    if args.judge:
        with open(args.judge) as f:
            sys.exit(show(json.load(f), args, os.path.dirname(os.path.abspath(args.judge))))
    for name in ("edge_node", "region_hub", "client_sim", "certs"):
        if not os.access(getattr(args, name), os.X_OK):
            sys.exit(f"missing binary {getattr(args, name)} (scripts/scale-test.sh builds them)")
    try:
        sys.exit(run(args))
    except KeyboardInterrupt:
        log("interrupted")
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - any harness failure fails the test
        log(f"FAIL: {e}")
        sys.exit(1)


if __name__ == "__main__":
    main()
