#!/usr/bin/env python3
"""Per-node profile: CPU per fix and memory per delivery of one hub and one edge under load.

One hub and one edge run as separate processes on 127.0.0.1 (cluster mode, as in production),
`client-sim load` drives them at a steady fix rate, and the CPU time and memory each node
process used while doing it are read. The result is the per-core throughput behind the
sizing in docs/operations.md ("Sizing for the design load").

CPU is read from /proc/PID/stat (user + system time of that process alone), so the load
generator sharing the machine does not count against the nodes; it can only slow them down,
which makes the figures conservative. Stdlib only; reuses the multi-node test's setup.

    python3 scripts/node_profile.py --deliveries 2000 --fix-interval-ms 250 --ramp-s 15 --warmup-s 25
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster_test as ct  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def log(msg):
    print(f"[node-profile {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def cpu_s(pid):
    """User + system CPU seconds of one process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # After the command: state is field 3; utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_bytes(pid):
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE


def metrics(port):
    """Prometheus text of a node's admin endpoint, summed per metric name."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{", 1)[0]
        try:
            out[name] = out.get(name, 0.0) + float(value)
        except ValueError:
            pass
    return out


def sample(nodes):
    return {n.name: {"t": time.time(), "cpu_s": cpu_s(n.proc.pid), "rss": rss_bytes(n.proc.pid),
                     "m": metrics(n.admin)} for n in nodes}


def rate(a, b, name, key):
    return (b[name]["m"].get(key, 0.0) - a[name]["m"].get(key, 0.0)) / (b[name]["t"] - a[name]["t"])


def one_hub_cluster(hub_config):
    """A one-hub cluster has no successor to copy status changes to: with the hub's default
    `cluster_hub.min_copies = 2` it would refuse every one (503). Acknowledge on one copy."""
    with open(hub_config) as f:
        text = f.read()
    if "[cluster_hub]\n" not in text:
        raise RuntimeError(f"no [cluster_hub] section in {hub_config}")
    with open(hub_config, "w") as f:
        f.write(text.replace("[cluster_hub]\n", "[cluster_hub]\nmin_copies = 1\n", 1))


def setup_pair(args, work, base_port):
    """PKI, token key and configs of one hub and one edge in cluster mode (as in production)
    under `work`, ports from `base_port`; every config passes `--check-config`. Returns
    (pki_dir, token_key_path, hub, edge) with `hub`/`edge` not started (cluster_test.Node)."""
    ct.BASE = base_port
    args.nodes = 1
    pki, key, public = ct.make_pki(args, work)
    hubs, edges = ct.write_configs(args, work, pki, key, public)
    hub, edge = hubs[0], edges[0]
    one_hub_cluster(hub.config_path)
    ct.sh(hub.binary, "--config", hub.config_path, "--check-config", capture=True)
    return pki, key, hub, edge


def run(args):
    work = os.path.abspath(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    pki, key, hub, edge = setup_pair(args, work, args.base_port)
    nodes = [hub, edge]
    load = None
    try:
        for n in nodes:
            n.start()
        for n in nodes:
            n.wait_ready()
        time.sleep(args.settle_s)
        idle = sample(nodes)
        report = os.path.join(work, "load-report.json")
        duration = args.warmup_s + args.window_s + 5
        cmd = [args.client_sim, "load", "--ca", os.path.join(pki, "ca.pem"), "--token-key", key,
               "--token-kid", "1", "--duration", f"{duration}s",
               "--deliveries", str(args.deliveries),
               "--delivery-lifetime", f"{duration + 60}s", "--ramp", f"{args.ramp_s}s",
               "--fix-interval", f"{args.fix_interval_ms}ms",
               "--wt-share", str(args.wt_share), "--report", report,
               "--edge", f"quic=127.0.0.1:{edge.ports['quic']},https=127.0.0.1:{edge.ports['https']}",
               "--hub", f"https=127.0.0.1:{hub.ports['https']},wt=127.0.0.1:{hub.ports['wt']}"]
        load = subprocess.Popen(cmd, stdout=open(os.path.join(work, "load.out"), "w"),
                                stderr=open(os.path.join(work, "load.log"), "w"),
                                start_new_session=True)
        log(f"client-sim load: {args.deliveries} deliveries, a fix every {args.fix_interval_ms} ms "
            f"each ({args.deliveries * 1000 / args.fix_interval_ms:.0f} fixes/s offered)")
        for left in range(int(args.warmup_s), 0, -5):
            log(f"warming up: {left} s left")
            time.sleep(min(5, left))
        a = sample(nodes)
        steps = max(1, int(args.window_s // 5))
        for i in range(steps):
            time.sleep(args.window_s / steps)
            log(f"measuring: {100 * (i + 1) // steps} %")
        b = sample(nodes)
        load.send_signal(signal.SIGINT)
        load.wait(timeout=120)
        load = None
        out = {"deliveries": args.deliveries, "fix_interval_ms": args.fix_interval_ms,
               "window_s": round(b[hub.name]["t"] - a[hub.name]["t"], 1), "nodes": {}}
        for n in nodes:
            secs = b[n.name]["t"] - a[n.name]["t"]
            cores = (b[n.name]["cpu_s"] - a[n.name]["cpu_s"]) / secs
            out["nodes"][n.name] = {"cpu_cores": round(cores, 3),
                                    "rss_mib": round(b[n.name]["rss"] / 2**20, 1),
                                    "rss_idle_mib": round(idle[n.name]["rss"] / 2**20, 1)}
        e = out["nodes"][edge.name]
        e["fixes_per_s"] = round(rate(a, b, edge.name, "edge_fixes_accepted_total"), 1)
        e["fixes_per_core_s"] = round(e["fixes_per_s"] / max(e["cpu_cores"], 1e-9))
        h = out["nodes"][hub.name]
        h["fixes_per_s"] = round(rate(a, b, hub.name, "hub_fixes_received_total"), 1)
        h["positions_pushed_per_s"] = round(rate(a, b, hub.name, "hub_positions_pushed_total"), 1)
        h["fixes_per_core_s"] = round(h["fixes_per_s"] / max(h["cpu_cores"], 1e-9))
        h["consumers"] = b[hub.name]["m"].get("hub_consumers_active", 0)
        h["rss_per_delivery_kib"] = round(
            (b[hub.name]["rss"] - idle[hub.name]["rss"]) / 1024 / max(args.deliveries, 1), 1)
        with open(report) as f:
            lr = json.load(f)
        out["load"] = {k: lr.get(k) for k in ("fixes_sent", "positions_received", "errors",
                                               "first_errors")}
        path = os.path.join(work, "report.json")
        with open(path, "w") as f:
            json.dump(out, f, indent=2)
        print(json.dumps(out, indent=2))
        log(f"report: {path}")
        return 0
    finally:
        if load is not None and load.poll() is None:
            load.kill()
        for n in nodes:
            n.stop_hard()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ct.binary_args(ap)
    ap.add_argument("--workdir", default=os.path.join(ct.ROOT, "target", "node-profile"))
    ap.add_argument("--base-port", type=int, default=28100)
    ap.add_argument("--deliveries", type=int, default=2000)
    ap.add_argument("--fix-interval-ms", type=int, default=250,
                    help="per driver; the edge rate-limits drivers faster than 4 fixes/s")
    ap.add_argument("--wt-share", type=float, default=0.5)
    ap.add_argument("--settle-s", type=float, default=4)
    ap.add_argument("--ramp-s", type=int, default=15,
                    help="the load starts its deliveries over this many seconds")
    ap.add_argument("--warmup-s", type=float, default=25)
    ap.add_argument("--window-s", type=float, default=30)
    args = ap.parse_args()
    for name in ("edge_node", "region_hub", "client_sim", "certs"):
        if not os.access(getattr(args, name), os.X_OK):
            sys.exit(f"missing binary {getattr(args, name)}: cargo build --release "
                     "-p edge-node -p region-hub -p client-sim -p certs")
    sys.exit(run(args))


if __name__ == "__main__":
    main()
