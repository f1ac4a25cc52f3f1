#!/usr/bin/env python3
"""Side-by-side CPU benchmark: Trackline's edge and hub against a bare quinn datagram sink and
a bare mosquitto relay, at the same connection count, rate and payload, one after another.

 (a) `trackline-baseline quic-sink` (same quinn/rustls/ring as the edge) under
     `trackline-baseline quic-load`: N connections, one ~22-byte fix datagram each per interval;
 (b) mosquitto (QoS 0, no TLS, its own loopback port) under `trackline-baseline mqtt-load`:
     N publishers, each to its own topic, and N subscribers, one per topic (each message
     relayed once, like a position to its consumer);
 (c) one edge + one hub as processes (cluster mode, as scripts/node_profile.py runs them)
     under the project's own load generator (`start_trackline_load`).

Each server process is pinned to one core and its load generator to the other (taskset); the
CPU of each server process is read from /proc/PID/stat (utime + stime) over a steady window
after warm-up, and the rate it handled from its own counters (the sink's metrics, the MQTT
subscribers' receive count, the nodes' metrics). Prints CPU (cores) and CPU microseconds per
message for each, the ratios edge/(a), hub/(b), (edge+hub)/((a)+(b)), and writes a JSON report.
Run through scripts/bench-baseline.sh (builds, installs mosquitto). Stdlib only.
"""

import argparse
import datetime
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
import node_profile as npf  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def cpu_s(pid):
    """User + system CPU seconds of one process (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def prom(port):
    """A node's /metrics, summed per metric name."""
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


def read_json(path):
    """The generator's live stats file (rewritten atomically every second)."""
    with open(path) as f:
        return json.load(f)


def pinned(cpu, cmd):
    return ["taskset", "-c", str(cpu)] + cmd


class Progress:
    """One line per phase step; redrawn in place on a terminal."""

    def __init__(self, label, total_s):
        self.label, self.total_s, self.t0 = label, total_s, time.time()
        self.tty = sys.stdout.isatty()
        self.last_pct = -1

    def show(self, what):
        done = min(1.0, (time.time() - self.t0) / max(self.total_s, 1e-9))
        pct = int(done * 100)
        bar = "#" * int(done * 30)
        line = f"[bench] {self.label:<10} [{bar:<30}] {pct:3d}% {what}"
        if self.tty:
            print("\r" + line[:150].ljust(150), end="", flush=True)
        elif pct // 10 != self.last_pct // 10:
            print(line, flush=True)
        self.last_pct = pct

    def done(self):
        if self.tty:
            print(flush=True)


def wait_steady(label, seconds, check, progress, what):
    """Sleeps `seconds`, failing early when `check()` reports a dead process."""
    end = time.time() + seconds
    while time.time() < end:
        problem = check()
        if problem:
            raise RuntimeError(f"{label}: {problem}")
        progress.show(what)
        time.sleep(0.5)


def measure(label, args, servers, counters, check, generator_pid=None):
    """Warm-up, then a window. `servers`: name -> pid; `counters()`: name -> messages handled
    so far (per server). Returns per server: cores, messages/s, µs of CPU per message."""
    p = Progress(label, args.warmup_s + args.window_s)
    wait_steady(label, args.warmup_s, check, p, "warming up")
    t_a = time.time()
    cpu_a = {n: cpu_s(pid) for n, pid in servers.items()}
    gen_a = cpu_s(generator_pid) if generator_pid else None
    cnt_a = counters()
    wait_steady(label, args.window_s, check, p, "measuring")
    t_b = time.time()
    cpu_b = {n: cpu_s(pid) for n, pid in servers.items()}
    gen_b = cpu_s(generator_pid) if generator_pid else None
    cnt_b = counters()
    p.done()
    dt = t_b - t_a
    out = {}
    for n in servers:
        cores = (cpu_b[n] - cpu_a[n]) / dt
        msgs = cnt_b[n] - cnt_a[n]
        out[n] = {
            "cpu_cores": round(cores, 4),
            "msgs_per_s": round(msgs / dt, 1),
            "cpu_us_per_msg": round((cpu_b[n] - cpu_a[n]) / msgs * 1e6, 2) if msgs > 0 else None,
        }
    if generator_pid:
        out["generator_cpu_cores"] = round((gen_b - gen_a) / dt, 4)
    out["window_s"] = round(dt, 1)
    return out


def stop(proc, sig=signal.SIGINT, timeout=60):
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def dead(*procs):
    def check():
        for name, proc in procs:
            if proc.poll() is not None:
                return f"{name} exited with {proc.returncode}"
        return None
    return check


def spawn(cmd, work, name, env=None):
    return subprocess.Popen(cmd, stdout=open(os.path.join(work, f"{name}.out"), "w"),
                            stderr=open(os.path.join(work, f"{name}.log"), "w"),
                            start_new_session=True, env=env)


def offered(args):
    return args.connections * 1000.0 / args.interval_ms


def run_quic_sink(args, work):
    """(a): the bare quinn sink under the QUIC load generator."""
    pki = os.path.join(work, "pki-sink")
    ct.sh(args.certs, "init", "--dir", pki, capture=True)
    ct.sh(args.certs, "issue", "--dir", pki, "--name", "sink", "--role", "edge",
          "--san", "localhost", "--san", "127.0.0.1", capture=True)
    quic, admin = args.base_port, args.base_port + 1
    sink = load = None
    try:
        sink = spawn(pinned(args.server_cpu, [
            args.baseline, "quic-sink", "--listen", f"127.0.0.1:{quic}",
            "--admin", f"127.0.0.1:{admin}", "--cert", os.path.join(pki, "sink.pem"),
            "--key", os.path.join(pki, "sink.key")]), work, "sink")
        wait_http(admin, sink, "sink")
        stats = os.path.join(work, "quic-load.stats.json")
        duration = args.warmup_s + args.window_s + 10
        load = spawn(pinned(args.load_cpu, [
            args.baseline, "quic-load", "--target", f"127.0.0.1:{quic}",
            "--ca", os.path.join(pki, "ca.pem"), "--connections", str(args.connections),
            "--interval", f"{args.interval_ms}ms", "--ramp", f"{args.ramp_s}s",
            "--duration", f"{duration}s", "--stats-file", stats,
            "--report", os.path.join(work, "quic-load.json")]), work, "quic-load")
        log(f"(a) bare quinn sink pid {sink.pid}: {args.connections} connections x "
            f"1 datagram / {args.interval_ms} ms ({offered(args):.0f}/s offered)")
        m = measure("(a) sink", args, {"sink": sink.pid},
                    lambda: {"sink": prom(admin).get("baseline_sink_datagrams_total", 0.0)},
                    dead(("sink", sink), ("quic-load", load)), load.pid)
        m["generator"] = read_json(stats)
        stop(load)
        load = None
        m["generator_report"] = read_json(os.path.join(work, "quic-load.json"))
        return m
    finally:
        stop(load)
        stop(sink, signal.SIGTERM)


def wait_http(port, proc, name, timeout_s=30):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode} before it served")
        try:
            prom(port)
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{name} did not serve /metrics within {timeout_s} s")


def run_mosquitto(args, work):
    """(b): mosquitto as a bare relay under the MQTT load generator."""
    port = args.base_port + 10
    conf = os.path.join(work, "mosquitto.conf")
    with open(conf, "w") as f:
        f.write(f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_connections -1\n"
                "sys_interval 1\npersistence false\nlog_dest stderr\nlog_type error\n"
                "log_type warning\n")
    broker = load = None
    try:
        broker = spawn(pinned(args.server_cpu, [args.mosquitto, "-c", conf]), work, "mosquitto")
        wait_tcp(port, broker, "mosquitto")
        stats = os.path.join(work, "mqtt-load.stats.json")
        duration = args.warmup_s + args.window_s + args.ramp_s + 10
        load = spawn(pinned(args.load_cpu, [
            args.baseline, "mqtt-load", "--broker", f"127.0.0.1:{port}",
            "--publishers", str(args.connections), "--interval", f"{args.interval_ms}ms",
            "--ramp", f"{args.ramp_s}s", "--duration", f"{duration}s", "--stats-file", stats,
            "--report", os.path.join(work, "mqtt-load.json")]), work, "mqtt-load")
        log(f"(b) mosquitto pid {broker.pid}: {args.connections} publishers -> "
            f"{args.connections} subscribers, 1 message / {args.interval_ms} ms each "
            f"({offered(args):.0f}/s offered)")
        # The generator writes its stats once every subscription is acknowledged and the
        # publishers are connected: warm-up counts from there.
        deadline = time.time() + args.ramp_s + 120
        while not os.path.exists(stats):
            if load.poll() is not None or broker.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"mqtt-load did not start publishing (see {work}/mqtt-load.log)")
            time.sleep(0.5)
        m = measure("(b) mqtt", args, {"mosquitto": broker.pid},
                    lambda: {"mosquitto": float(read_json(stats)["received"])},
                    dead(("mosquitto", broker), ("mqtt-load", load)), load.pid)
        m["generator"] = read_json(stats)
        stop(load)
        load = None
        m["generator_report"] = read_json(os.path.join(work, "mqtt-load.json"))
        return m
    finally:
        stop(load)
        stop(broker, signal.SIGTERM)


def wait_tcp(port, proc, name, timeout_s=30):
    import socket
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode} before it listened")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{name} did not listen within {timeout_s} s")


class PinnedNode(ct.Node):
    """A cluster_test.Node started under taskset (pinned before its runtime starts threads)."""

    def __init__(self, node, cpu):
        super().__init__(node.name, node.role, node.ports, node.config_path, node.binary,
                         node.workdir)
        self.cpu = cpu

    def start(self):
        self.starts += 1
        out = open(os.path.join(self.workdir, f"{self.name}.{self.starts}.log"), "w")
        env = dict(os.environ, RUST_LOG=os.environ.get("BENCH_NODE_LOG", "info"))
        self.proc = subprocess.Popen(pinned(self.cpu, [self.binary, "--config", self.config_path]),
                                     stdout=out, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)


def start_trackline_load(args, work, pki, key, edge, hub):
    """The project's load generator against one edge + one hub: today `client-sim load` as
    scripts/node_profile.py runs it (a QUIC driver and a consumer per delivery, consumers half
    WebTransport, half WebSocket). The one place to switch to `client-sim scale`."""
    duration = args.warmup_s + args.window_s + 10
    cmd = [args.client_sim, "load", "--ca", os.path.join(pki, "ca.pem"), "--token-key", key,
           "--token-kid", "1", "--duration", f"{duration}s",
           "--deliveries", str(args.connections),
           "--delivery-lifetime", f"{duration + 60}s", "--ramp", f"{args.ramp_s}s",
           "--fix-interval", f"{args.interval_ms}ms", "--wt-share", str(args.wt_share),
           "--report", os.path.join(work, "client-sim-load.json"),
           "--edge", f"quic=127.0.0.1:{edge.ports['quic']},https=127.0.0.1:{edge.ports['https']}",
           "--hub", f"https=127.0.0.1:{hub.ports['https']},wt=127.0.0.1:{hub.ports['wt']}"]
    return spawn(pinned(args.load_cpu, cmd), work, "client-sim-load")


def run_trackline(args, work):
    """(c): one edge + one hub (cluster mode, min_copies = 1) under the project's generator."""
    tdir = os.path.join(work, "trackline")
    os.makedirs(tdir)
    pki, key, hub, edge = npf.setup_pair(args, tdir, args.base_port + 100)
    hub, edge = PinnedNode(hub, args.server_cpu), PinnedNode(edge, args.server_cpu)
    load = None
    try:
        for n in (hub, edge):
            n.start()
        for n in (hub, edge):
            n.wait_ready()
        time.sleep(4)  # membership settles, the hub claims
        load = start_trackline_load(args, tdir, pki, key, edge, hub)
        log(f"(c) edge pid {edge.proc.pid} + hub pid {hub.proc.pid}: {args.connections} "
            f"deliveries, a fix every {args.interval_ms} ms ({offered(args):.0f}/s offered), "
            f"consumers {args.wt_share:.0%} WebTransport")

        def counters():
            return {"edge": prom(edge.admin).get("edge_fixes_accepted_total", 0.0),
                    "hub": prom(hub.admin).get("hub_fixes_received_total", 0.0)}

        m = measure("(c) nodes", args, {"edge": edge.proc.pid, "hub": hub.proc.pid}, counters,
                    dead(("edge", edge.proc), ("hub", hub.proc), ("generator", load)), load.pid)
        hm = prom(hub.admin)
        m["hub"]["positions_pushed_total"] = hm.get("hub_positions_pushed_total")
        m["hub"]["consumers_active"] = hm.get("hub_consumers_active")
        stop(load, timeout=120)
        load = None
        try:
            lr = read_json(os.path.join(tdir, "client-sim-load.json"))
            m["generator_report"] = {k: lr.get(k) for k in ("fixes_sent", "positions_received",
                                                            "errors", "first_errors")}
        except (OSError, ValueError) as e:
            m["generator_report"] = {"unreadable": str(e)}
        return m
    finally:
        stop(load)
        for n in (edge, hub):
            n.stop_hard()


def run_edge_quic(args, work):
    """(e), optional: the edge alone under the same QUIC generator as (a), in driver mode
    (signed tokens, Hello, OnDuty; its hub takes the batches). Isolates the edge's cost over
    the bare sink from the project's generator and the hub."""
    edir = os.path.join(work, "edge-quic")
    os.makedirs(edir)
    pki, key, hub, edge = npf.setup_pair(args, edir, args.base_port + 200)
    hub, edge = PinnedNode(hub, args.server_cpu), PinnedNode(edge, args.server_cpu)
    load = None
    try:
        for n in (hub, edge):
            n.start()
        for n in (hub, edge):
            n.wait_ready()
        stats = os.path.join(edir, "quic-load.stats.json")
        duration = args.warmup_s + args.window_s + 10
        load = spawn(pinned(args.load_cpu, [
            args.baseline, "quic-load", "--target", f"127.0.0.1:{edge.ports['quic']}",
            "--ca", os.path.join(pki, "ca.pem"), "--token-key", key, "--on-duty",
            "--connections", str(args.connections), "--interval", f"{args.interval_ms}ms",
            "--ramp", f"{args.ramp_s}s", "--duration", f"{duration}s", "--stats-file", stats,
            "--report", os.path.join(edir, "quic-load.json")]), edir, "quic-load")
        log(f"(e) edge pid {edge.proc.pid} under quic-load (driver sessions): "
            f"{args.connections} x 1 fix / {args.interval_ms} ms ({offered(args):.0f}/s offered)")
        m = measure("(e) edge", args, {"edge_quic": edge.proc.pid},
                    lambda: {"edge_quic": prom(edge.admin).get("edge_fixes_accepted_total", 0.0)},
                    dead(("edge", edge.proc), ("hub", hub.proc), ("quic-load", load)), load.pid)
        stop(load)
        load = None
        m["generator_report"] = read_json(os.path.join(edir, "quic-load.json"))
        return m
    finally:
        stop(load)
        for n in (edge, hub):
            n.stop_hard()


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def run_edge_memory(args, work):
    """(m), optional: memory per driver session. One edge (+ its hub) holds `--memory-sessions`
    driver sessions from the QUIC generator (a fix every `--memory-interval-ms` each); RSS
    above the edge's idle RSS, divided by the sessions held."""
    mdir = os.path.join(work, "edge-memory")
    os.makedirs(mdir)
    pki, key, hub, edge = npf.setup_pair(args, mdir, args.base_port + 300)
    hub, edge = PinnedNode(hub, args.server_cpu), PinnedNode(edge, args.server_cpu)
    n = args.memory_sessions
    load = None
    try:
        for node in (hub, edge):
            node.start()
        for node in (hub, edge):
            node.wait_ready()
        time.sleep(3)
        idle = rss_kib(edge.proc.pid)
        stats = os.path.join(mdir, "quic-load.stats.json")
        ramp_s = n / args.memory_ramp_per_s
        duration = ramp_s + 240
        load = spawn(pinned(args.load_cpu, [
            args.baseline, "quic-load", "--target", f"127.0.0.1:{edge.ports['quic']}",
            "--ca", os.path.join(pki, "ca.pem"), "--token-key", key, "--on-duty",
            "--connections", str(n), "--interval", f"{args.memory_interval_ms}ms",
            "--ramp", f"{ramp_s:.0f}s", "--duration", f"{duration:.0f}s",
            "--endpoints", str(max(4, n // 5000)), "--stats-file", stats,
            "--report", os.path.join(mdir, "quic-load.json")]), mdir, "quic-load")
        log(f"(m) edge pid {edge.proc.pid}: {n} driver sessions opened over {ramp_s:.0f} s, "
            f"a fix every {args.memory_interval_ms} ms each; idle RSS {idle / 1024:.1f} MiB")
        check = dead(("edge", edge.proc), ("hub", hub.proc), ("quic-load", load))
        p = Progress("(m) memory", ramp_s + 60)
        deadline = time.time() + ramp_s + 180
        active = 0.0
        while True:
            problem = check()
            if problem:
                raise RuntimeError(problem)
            active = prom(edge.admin).get("edge_driver_sessions_active", 0.0)
            p.show(f"{active:.0f}/{n} sessions, RSS {rss_kib(edge.proc.pid) / 1024:.0f} MiB")
            if active >= 0.999 * n or time.time() > deadline:
                break
            time.sleep(1)
        # Steady: every session has sent fixes for a while.
        wait_steady("(m) memory", args.memory_settle_s, check, p, "steady")
        p.done()
        samples = []
        for _ in range(5):
            samples.append((rss_kib(edge.proc.pid),
                            prom(edge.admin).get("edge_driver_sessions_active", 0.0)))
            time.sleep(1)
        rss = max(s[0] for s in samples)
        active = min(s[1] for s in samples)
        m = prom(edge.admin)
        out = {"sessions_target": n, "sessions_active": active, "rss_idle_kib": idle,
               "rss_kib": rss, "interval_ms": args.memory_interval_ms,
               "kib_per_session": round((rss - idle) / max(active, 1), 2),
               "sessions_rejected": {k: v for k, v in m.items() if "rejected" in k}}
        stop(load, timeout=120)
        load = None
        out["generator_report"] = read_json(os.path.join(mdir, "quic-load.json"))
        return out
    finally:
        stop(load)
        for node in (edge, hub):
            node.stop_hard()


def ratio(a, b):
    return round(a / b, 2) if a is not None and b else None


def table(res, args):
    rows = []

    def row(label, r):
        if r is None:
            return
        rows.append(f"| {label} | {r['cpu_cores']:.3f} | {r['msgs_per_s']:,.0f} | "
                    f"{r['cpu_us_per_msg'] if r['cpu_us_per_msg'] is not None else '-'} |")

    row("(a) bare quinn sink", res.get("sink"))
    row("(b) mosquitto relay", res.get("mosquitto"))
    row("edge", res.get("edge"))
    row("hub", res.get("hub"))
    row("(e) edge under the QUIC generator of (a)", res.get("edge_quic"))
    lines = [f"{args.connections} connections x 1 msg / {args.interval_ms} ms "
             f"({offered(args):.0f} msgs/s offered); CPU from /proc over {args.window_s:.0f} s "
             f"after {args.warmup_s:.0f} s warm-up", "",
             "| what | CPU (cores) | msgs/s handled | CPU µs per msg |", "|---|---|---|---|"]
    lines += rows
    r = res["ratios"]
    lines += ["", f"edge / (a): {r['edge_over_sink']}   hub / (b): {r['hub_over_mosquitto']}   "
                  f"(edge + hub) / ((a) + (b)): {r['pipeline_over_baselines']}"]
    if r.get("edge_quic_over_sink") is not None:
        lines += [f"(e) / (a): {r['edge_quic_over_sink']}"]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ct.binary_args(ap)
    rel = os.path.join(ct.ROOT, "target", "release")
    ap.add_argument("--baseline", default=os.path.join(rel, "trackline-baseline"))
    ap.add_argument("--mosquitto", default=shutil.which("mosquitto") or "/usr/sbin/mosquitto")
    ap.add_argument("--workdir", default=os.path.join(ct.ROOT, "target", "bench-baseline"))
    ap.add_argument("--base-port", type=int, default=25100,
                    help="(a) base, (b) base+10, (c) base+100.., (e) base+200..")
    ap.add_argument("--connections", type=int, default=2000,
                    help="QUIC connections / MQTT publishers (and subscribers) / deliveries")
    ap.add_argument("--interval-ms", type=int, default=250, help="per connection")
    ap.add_argument("--ramp-s", type=float, default=15)
    ap.add_argument("--warmup-s", type=float, default=30,
                    help="from the generator's start (ramp included) to the window")
    ap.add_argument("--window-s", type=float, default=30)
    ap.add_argument("--wt-share", type=float, default=0.5, help="(c): consumers on WebTransport")
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--load-cpu", type=int, default=1)
    ap.add_argument("--only", default="a,b,c",
                    help="which phases, e.g. a,c; extra: e (the edge alone under the QUIC "
                         "generator of (a)), m (edge memory per driver session)")
    ap.add_argument("--memory-sessions", type=int, default=50000, help="(m): sessions held")
    ap.add_argument("--memory-interval-ms", type=int, default=4000,
                    help="(m): a fix per session this often (the seed's rate)")
    ap.add_argument("--memory-ramp-per-s", type=float, default=500,
                    help="(m): new sessions per second")
    ap.add_argument("--memory-settle-s", type=float, default=30)
    ap.add_argument("--min-handled", type=float, default=0.95,
                    help="fail unless every server handled this share of the offered rate")
    args = ap.parse_args()
    phases = set(args.only.split(","))
    needed = ["baseline"] + (["edge_node", "region_hub"] if phases & {"c", "e", "m"} else []) \
        + (["client_sim"] if "c" in phases else [])
    for name in needed + ["certs"]:
        if not os.access(getattr(args, name), os.X_OK):
            sys.exit(f"missing binary {getattr(args, name)} (scripts/bench-baseline.sh builds it)")
    if "b" in phases and not os.access(args.mosquitto, os.X_OK):
        sys.exit("mosquitto is not installed (scripts/bench-baseline.sh installs it)")
    if shutil.which("taskset") is None:
        sys.exit("taskset (util-linux) is needed to pin servers and generators")

    work = os.path.abspath(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    started = datetime.datetime.now(datetime.timezone.utc)
    load_before = os.getloadavg()
    res = {}
    if "a" in phases:
        r = run_quic_sink(args, work)
        res["sink"], res["sink_run"] = r["sink"], r
    if "b" in phases:
        r = run_mosquitto(args, work)
        res["mosquitto"], res["mosquitto_run"] = r["mosquitto"], r
    if "c" in phases:
        r = run_trackline(args, work)
        res["edge"], res["hub"], res["trackline_run"] = r["edge"], r["hub"], r
    if "e" in phases:
        r = run_edge_quic(args, work)
        res["edge_quic"], res["edge_quic_run"] = r["edge_quic"], r
    if "m" in phases:
        res["edge_memory"] = run_edge_memory(args, work)

    def us(name):
        return (res.get(name) or {}).get("cpu_us_per_msg")

    base = (us("sink") or 0) + (us("mosquitto") or 0)
    pipe = (us("edge") or 0) + (us("hub") or 0)
    res["ratios"] = {
        "edge_over_sink": ratio(us("edge"), us("sink")),
        "hub_over_mosquitto": ratio(us("hub"), us("mosquitto")),
        "edge_quic_over_sink": ratio(us("edge_quic"), us("sink")),
        "pipeline_over_baselines": ratio(pipe, base) if us("sink") and us("mosquitto")
        and us("edge") and us("hub") else None,
    }
    problems = []
    for name in ("sink", "mosquitto", "edge", "hub", "edge_quic"):
        r = res.get(name)
        if r and r["msgs_per_s"] < args.min_handled * offered(args):
            problems.append(f"{name} handled {r['msgs_per_s']:.0f} msgs/s of "
                            f"{offered(args):.0f} offered")
    res["settings"] = {k: v for k, v in vars(args).items()}
    res["machine"] = {"nproc": os.cpu_count(), "loadavg_before": load_before,
                      "loadavg_after": os.getloadavg(), "uname": " ".join(os.uname()),
                      "started_utc": started.isoformat(timespec="seconds")}
    try:
        res["git"] = subprocess.run(["git", "-C", ct.ROOT, "rev-parse", "--short", "HEAD"],
                                    capture_output=True, text=True).stdout.strip()
    except OSError:
        pass
    res["problems"] = problems
    path = os.path.join(work, "report.json")
    with open(path, "w") as f:
        json.dump(res, f, indent=2)
    print()
    print(table(res, args))
    if res.get("edge_memory"):
        em = res["edge_memory"]
        print(f"\n(m) edge memory: {em['sessions_active']:.0f} driver sessions, RSS "
              f"{em['rss_kib'] / 1024:.0f} MiB (idle {em['rss_idle_kib'] / 1024:.0f} MiB): "
              f"{em['kib_per_session']} KiB per session")
    print()
    log(f"load average before / after: {load_before[0]:.2f} / {os.getloadavg()[0]:.2f} "
        "(figures are indicative on a busy machine)")
    log(f"report: {path}")
    for p in problems:
        log(f"FAIL: {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log("interrupted")
        sys.exit(130)
