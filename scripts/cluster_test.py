#!/usr/bin/env python3
"""Multi-node test: 3 hubs + 3 edges as separate processes on 127.0.0.1, client-sim load mode
against them, and faults (5% UDP loss, kill -9 of a hub, a partitioned edge, a rolling
restart). Fails unless no acknowledged status event was lost and consumers received positions
after every fault. Needs root (iptables). Stdlib only. See docs/operations.md, "Multi-node test".

Everything it starts or changes is undone on exit (processes, the TRACKLINE_CT iptables chain),
also on failure and Ctrl-C.
"""

import argparse
import asyncio
import json
import random
import threading
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHAIN = "TRACKLINE_CT"
REGION = "ct"
BASE = 27100  # hubs 27100.., edges 27200..


def log(msg):
    print(f"[cluster-test {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sh(*args, check=True, capture=False):
    r = subprocess.run(args, check=False, capture_output=capture, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({r.returncode}): {r.stderr if capture else ''}")
    return r


class Node:
    def __init__(self, name, role, ports, config_path, binary, workdir):
        self.name, self.role, self.ports = name, role, ports
        self.config_path, self.binary, self.workdir = config_path, binary, workdir
        self.proc = None
        self.starts = 0

    @property
    def admin(self):
        return self.ports["admin"]

    def udp_ports(self):
        if self.role == "hub":
            return [self.ports["link"], self.ports["wt"], self.ports["gossip"]]
        return [self.ports["quic"], self.ports["gossip"]]

    def tcp_ports(self):
        return [self.ports["https"]]

    def start(self):
        self.starts += 1
        out = open(os.path.join(self.workdir, f"{self.name}.{self.starts}.log"), "w")
        env = dict(os.environ, RUST_LOG=os.environ.get("CT_NODE_LOG", "info,region_hub=debug"))
        self.proc = subprocess.Popen([self.binary, "--config", self.config_path],
                                     stdout=out, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        log(f"started {self.name} pid {self.proc.pid}")

    def ready(self):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/readyz", timeout=1) as r:
                return r.status == 200
        except Exception:
            return False

    def wait_ready(self, timeout_s=60):
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} before ready")
            if self.ready():
                return time.time()
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready within {timeout_s} s")

    def signal(self, sig):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait_exit(self, timeout_s):
        try:
            self.proc.wait(timeout=timeout_s)
            return True
        except subprocess.TimeoutExpired:
            return False

    def stop_hard(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


class Firewall:
    """All rules live in one chain jumped to from INPUT; `close` removes every trace."""

    def __init__(self):
        self.installed = False

    def open(self):
        self.close()
        sh("iptables", "-N", CHAIN)
        sh("iptables", "-I", "INPUT", "-i", "lo", "-j", CHAIN)
        self.installed = True

    def loss(self, proto, ports, probability):
        # Both directions: to the port (requests) and from it (answers).
        for p in ports:
            for d in ("--dport", "--sport"):
                sh("iptables", "-A", CHAIN, "-p", proto, d, str(p), "-m", "statistic",
                   "--mode", "random", "--probability", str(probability), "-j", "DROP")

    def partition(self, node):
        rules = []
        for proto, ports in (("udp", node.udp_ports()), ("tcp", node.tcp_ports())):
            for p in ports:
                for d in ("--dport", "--sport"):
                    rule = ["-p", proto, d, str(p), "-j", "DROP"]
                    sh("iptables", "-I", CHAIN, *rule)
                    rules.append(rule)
        return rules

    def heal(self, rules):
        for rule in rules:
            sh("iptables", "-D", CHAIN, *rule, check=False)

    def counters(self, path):
        """Saves the chain with packet counters (evidence that the loss rules dropped)."""
        r = sh("iptables", "-L", CHAIN, "-n", "-v", "-x", check=False, capture=True)
        with open(path, "w") as f:
            f.write(r.stdout)
        dropped = 0
        for line in r.stdout.splitlines():
            cols = line.split()
            if cols and cols[0].isdigit() and "statistic" in line:
                dropped += int(cols[0])
        return dropped

    def close(self):
        # Idempotent: also clears what a crashed earlier run left behind.
        while sh("iptables", "-D", "INPUT", "-i", "lo", "-j", CHAIN, check=False,
                 capture=True).returncode == 0:
            pass
        sh("iptables", "-F", CHAIN, check=False, capture=True)
        sh("iptables", "-X", CHAIN, check=False, capture=True)
        self.installed = False


class DelayRelay:
    """User-space UDP relay that delays every datagram by `delay_ms` +- `jitter_ms` in each
    direction (the kernel has no netem). Each client address gets its own upstream socket, so
    answers find their way back; QUIC sees a longer, jittery round trip and some reordering.
    Runs its own asyncio loop in a thread."""

    def __init__(self, listen_port, target_port, delay_ms, jitter_ms):
        self.listen = ("127.0.0.1", listen_port)
        self.target = ("127.0.0.1", target_port)
        self.delay_ms, self.jitter_ms = delay_ms, jitter_ms
        self.relayed = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.front = None
        self.upstreams = {}

    def _delay(self):
        return max(0.0, self.delay_ms + random.uniform(-self.jitter_ms, self.jitter_ms)) / 1000

    def start(self):
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._open(), self.loop).result(timeout=5)

    async def _open(self):
        relay = self

        class Front(asyncio.DatagramProtocol):
            def datagram_received(self, data, addr):
                relay._from_client(data, addr)

        self.front, _ = await self.loop.create_datagram_endpoint(Front, local_addr=self.listen)

    def _from_client(self, data, addr):
        self.relayed += 1
        up = self.upstreams.get(addr)
        if up is None:
            up = self.upstreams[addr] = {"transport": None, "queue": [data]}
            self.loop.create_task(self._connect(addr, up))
        elif up["transport"] is None:
            up["queue"].append(data)
        else:
            self.loop.call_later(self._delay(), up["transport"].sendto, data)

    async def _connect(self, addr, up):
        relay = self

        class Back(asyncio.DatagramProtocol):
            def datagram_received(self, data, _src):
                relay.relayed += 1
                relay.loop.call_later(relay._delay(), relay.front.sendto, data, addr)

        transport, _ = await self.loop.create_datagram_endpoint(Back, remote_addr=self.target)
        up["transport"] = transport
        for data in up["queue"]:
            self.loop.call_later(self._delay(), transport.sendto, data)
        up["queue"] = []

    def close(self):
        def stop():
            for up in self.upstreams.values():
                if up["transport"] is not None:
                    up["transport"].close()
            if self.front is not None:
                self.front.close()
            self.loop.stop()

        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(stop)
            self.thread.join(timeout=5)


def toml_str(s):
    return json.dumps(str(s))


def make_pki(args, work):
    pki = os.path.join(work, "pki")
    os.makedirs(pki, exist_ok=True)
    sh(args.certs, "init", "--dir", pki, capture=True)
    for role in ("hub", "edge"):
        for i in range(1, args.nodes + 1):
            sh(args.certs, "issue", "--dir", pki, "--name", f"{role}-{i}", "--role", role,
               "--san", "localhost", "--san", "127.0.0.1", capture=True)
    key = os.path.join(work, "token.der")
    out = sh(args.region_hub, "keygen", "--out", key, "--force", capture=True).stdout
    public = None
    for line in out.splitlines():
        if line.startswith("public_key"):
            public = line.split("=", 1)[1].strip().strip('"')
    if not public:
        raise RuntimeError(f"no public key in keygen output: {out}")
    return pki, key, public


def write_configs(args, work, pki, key, public):
    hubs, edges = [], []
    n = args.nodes
    hub_ports = [dict(link=BASE + 10 * i, wt=BASE + 10 * i + 1, https=BASE + 10 * i + 2,
                      admin=BASE + 10 * i + 3, gossip=BASE + 10 * i + 4) for i in range(n)]
    edge_ports = [dict(quic=BASE + 100 + 10 * i, https=BASE + 100 + 10 * i + 1,
                       admin=BASE + 100 + 10 * i + 2, gossip=BASE + 100 + 10 * i + 3,
                       relay=BASE + 100 + 10 * i + 5)
                  for i in range(n)]
    # With a delay relay, drivers reach an edge through it: edges advertise the relay's port,
    # so redirects between edges go through the relays too.
    relayed = getattr(args, "delay_ms", 0) > 0
    seeds = json.dumps([f"127.0.0.1:{p['gossip']}" for p in hub_ports])

    def tls(name):
        return (f"[tls]\ncert = {toml_str(os.path.join(pki, name + '.pem'))}\n"
                f"key = {toml_str(os.path.join(pki, name + '.key'))}\n"
                f"ca = {toml_str(os.path.join(pki, 'ca.pem'))}\n")

    def cluster(name, role, gossip):
        return (f"[cluster]\nnode_id = {toml_str(name)}\nrole = \"{role}\"\nregion = \"{REGION}\"\n"
                f"seeds = {seeds}\nexpected_nodes = {2 * n}\n"
                f"[cluster.gossip]\nbind_addr = \"127.0.0.1:{gossip}\"\n"
                f"[cluster.control]\ncluster_id = \"trackline-{REGION}\"\n")

    for i, p in enumerate(hub_ports, 1):
        name = f"hub-{i}"
        data = os.path.join(work, name)
        os.makedirs(data, exist_ok=True)
        text = (f"hub_id = {toml_str(name)}\n"
                f"link_listen = \"127.0.0.1:{p['link']}\"\n"
                f"webtransport_listen = \"127.0.0.1:{p['wt']}\"\n"
                f"https_listen = \"127.0.0.1:{p['https']}\"\n"
                f"admin_listen = \"127.0.0.1:{p['admin']}\"\n"
                f"data_dir = {toml_str(data)}\n"
                f"token_signing_key = {toml_str(key)}\n"
                f"token_kid = 1\n"
                + tls(name)
                # The node certificate also serves WebTransport, so clients verify it
                # against the CA (no per-start self-signed certificate to pin).
                + f"[webtransport_tls]\ncert = {toml_str(os.path.join(pki, name + '.pem'))}\n"
                f"key = {toml_str(os.path.join(pki, name + '.key'))}\n"
                + "[cluster_hub]\ndrain_timeout_s = 15\n"
                + cluster(name, "hub", p["gossip"]))
        path = os.path.join(work, f"{name}.toml")
        with open(path, "w") as f:
            f.write(text)
        hubs.append(Node(name, "hub", p, path, args.region_hub, work))
    for i, p in enumerate(edge_ports, 1):
        name = f"edge-{i}"
        text = (f"edge_id = {toml_str(name)}\n"
                f"quic_listen = \"127.0.0.1:{p['quic']}\"\n"
                f"https_listen = \"127.0.0.1:{p['https']}\"\n"
                f"admin_listen = \"127.0.0.1:{p['admin']}\"\n"
                f"advertise_quic_addr = \"127.0.0.1:{p['relay'] if relayed else p['quic']}\"\n"
                f"hubs = []\n"
                f"[[token_keys]]\nkid = 1\npublic_key = {toml_str(public)}\n"
                + tls(name)
                + "[drain]\ntimeout_s = 10\n"
                + cluster(name, "edge", p["gossip"]))
        path = os.path.join(work, f"{name}.toml")
        with open(path, "w") as f:
            f.write(text)
        edges.append(Node(name, "edge", p, path, args.edge_node, work))
    for node in hubs + edges:
        sh(node.binary, "--config", node.config_path, "--check-config", capture=True)
    return hubs, edges


class Faults:
    def __init__(self, path):
        self.path = path
        open(path, "w").close()

    def mark(self, name, kind):
        log(f"fault {name} ({kind})")
        with open(self.path, "a") as f:
            f.write(json.dumps({"name": name, "kind": kind, "unix_ms": int(time.time() * 1000)}) + "\n")


def sleep_checked(seconds, nodes, load):
    """Sleeps, failing early if a node that should run died or the load generator exited."""
    end = time.time() + seconds
    while time.time() < end:
        for n in nodes:
            if n.proc.poll() is not None:
                raise RuntimeError(f"{n.name} died unexpectedly ({n.proc.returncode})")
        if load.poll() is not None:
            raise RuntimeError(f"client-sim load exited early ({load.returncode})")
        time.sleep(0.2)


def restart(node, faults, label, timeout_s=40):
    faults.mark(label, "rolling-restart")
    node.signal(signal.SIGTERM)
    t0 = time.time()
    if not node.wait_exit(timeout_s):
        log(f"{node.name} did not stop within {timeout_s} s after SIGTERM: kill -9")
        node.stop_hard()
    stopped = time.time() - t0
    node.start()
    ready = node.wait_ready() - t0
    log(f"{node.name}: stopped after {stopped:.1f} s, ready again after {ready:.1f} s")
    return {"stop_s": round(stopped, 1), "ready_s": round(ready, 1)}


def run(args):
    work = os.path.abspath(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    pki, key, public = make_pki(args, work)
    hubs, edges = write_configs(args, work, pki, key, public)
    nodes = hubs + edges
    fw = Firewall()
    load = None
    timings = {}
    relays = []
    try:
        fw.open()
        if args.delay_ms > 0:
            for e in edges:
                r = DelayRelay(e.ports["relay"], e.ports["quic"], args.delay_ms, args.jitter_ms)
                r.start()
                relays.append(r)
            log(f"drivers reach the edges through delay relays: {args.delay_ms} +- "
                f"{args.jitter_ms} ms each way")
        for h in hubs:
            h.start()
        for e in edges:
            e.start()
        for n in nodes:
            n.wait_ready()
        log("all nodes ready")
        # Let membership settle (hubs claim after join_grace_ms) before load starts.
        time.sleep(args.settle_s)
        faults = Faults(os.path.join(work, "faults.jsonl"))
        report = os.path.join(work, "report.json")
        cmd = [args.client_sim, "load", "--ca", os.path.join(pki, "ca.pem"), "--token-key", key,
               "--token-kid", "1", "--duration", f"{args.max_duration_s}s",
               "--deliveries", str(args.deliveries), "--wt-share", str(args.wt_share),
               "--https-share", str(args.https_share),
               "--faults-file", faults.path,
               "--report", report]
        for e in edges:
            quic = e.ports["relay"] if relays else e.ports["quic"]
            cmd += ["--edge", f"quic=127.0.0.1:{quic},https=127.0.0.1:{e.ports['https']}"]
        for h in hubs:
            cmd += ["--hub", f"https=127.0.0.1:{h.ports['https']},wt=127.0.0.1:{h.ports['wt']}"]
        # client-sim logs each acknowledged and each seen status event (debug), so a lost
        # one can be traced through load.log and the nodes' logs.
        load_env = dict(os.environ,
                        RUST_LOG=os.environ.get("CT_LOAD_LOG", "info,client_sim=debug"))
        load = subprocess.Popen(cmd, stdout=open(os.path.join(work, "load.out"), "w"),
                                stderr=open(os.path.join(work, "load.log"), "w"),
                                start_new_session=True, env=load_env)
        log(f"client-sim load pid {load.pid}")
        sleep_checked(args.phase_s, nodes, load)

        # Every packet to or from a node, UDP (QUIC, WebTransport, gossip) and TCP (HTTPS,
        # WebSocket), is dropped with probability `--loss`, for the rest of the run.
        fw.loss("udp", [p for n in nodes for p in n.udp_ports()], args.loss)
        fw.loss("tcp", [p for n in nodes for p in n.tcp_ports()], args.loss)
        faults.mark("loss-5pct", f"packet-loss-{args.loss}")
        sleep_checked(args.phase_s, nodes, load)

        victim = hubs[1]
        victim.stop_hard()
        faults.mark(f"kill-{victim.name}", "kill-9")
        alive = [n for n in nodes if n is not victim]
        sleep_checked(2 * args.phase_s, alive, load)
        victim.start()
        victim.wait_ready()
        faults.mark(f"return-{victim.name}", "restart-after-kill")
        sleep_checked(args.phase_s, nodes, load)

        part = edges[2]
        rules = fw.partition(part)
        faults.mark(f"partition-{part.name}", "partition")
        sleep_checked(args.partition_s, nodes, load)
        fw.heal(rules)
        faults.mark(f"heal-{part.name}", "heal")
        sleep_checked(args.phase_s, nodes, load)

        for n in hubs + edges:
            timings[n.name] = restart(n, faults, f"restart-{n.name}")
            sleep_checked(args.restart_gap_s, nodes, load)

        sleep_checked(args.phase_s, nodes, load)
        dropped = fw.counters(os.path.join(work, "iptables-counters.txt"))
        log(f"random-loss rules dropped {dropped} packets")
        log("faults done: stopping the load")
        load.send_signal(signal.SIGINT)
        load.wait(timeout=120)
        load_rc = load.returncode
        load = None
        if load_rc != 0:
            raise RuntimeError(f"client-sim load exited with {load_rc} (see {work}/load.log)")
        with open(report) as f:
            rep = json.load(f)
        rep["restarts"] = timings
        rep["loss_rule_drops"] = dropped
        rep["node_log_counts"] = log_counts(work)
        rep["delay_relay"] = {"one_way_delay_ms": args.delay_ms, "jitter_ms": args.jitter_ms,
                              "datagrams_relayed": sum(r.relayed for r in relays)}
        with open(report, "w") as f:
            json.dump(rep, f, indent=2)
        return check(rep, work)
    finally:
        if load is not None and load.poll() is None:
            load.kill()
            load.wait(timeout=10)
        for n in nodes:
            n.stop_hard()
        for r in relays:
            r.close()
        fw.close()
        log("cleaned up (processes stopped, firewall chain removed)")


def check(rep, work):
    problems = []
    ev = rep["status_events"]
    if ev["acknowledged"] == 0:
        problems.append("no status event was acknowledged")
    if ev["lost"] != 0:
        problems.append(f"{ev['lost']} acknowledged status events were lost "
                        f"(delivery/seq: {', '.join(ev.get('lost_events', []))})")
    if rep.get("consumer_redirects_wrong_transport", 0) != 0:
        problems.append(f"{rep['consumer_redirects_wrong_transport']} redirects named the "
                        "other transport than the consumer's")
    if ev["failed"] != 0:
        problems.append(f"{ev['failed']} status changes were accepted by no hub within 30 s")
    for name, f in rep["faults"].items():
        if f["positions_within_30s"] == 0:
            problems.append(f"{name}: no position delivered in the 30 s after the fault")
        if f["recovered"] < f["active_deliveries"]:
            problems.append(f"{name}: only {f['recovered']} of {f['active_deliveries']} "
                            "active consumers got a position after it")
    keys = ("status_events", "history", "max_position_gap_s", "max_position_gap_from_s", "faults",
            "restarts", "loss_rule_drops", "consumers_websocket", "consumers_webtransport",
            "drivers_quic", "drivers_https", "delay_relay",
            "consumer_redirects_wrong_transport", "node_log_counts", "errors")
    print(json.dumps({k: rep.get(k) for k in keys}, indent=2))
    log(f"report: {work}/report.json")
    if problems:
        trace_lost(ev.get("lost_events", []), work)
        for p in problems:
            log(f"FAIL: {p}")
        return 1
    log("PASS: no acknowledged status event lost, positions after every fault")
    return 0


# Log lines worth counting per run: how often the failure handling ran, not failures.
LOG_COUNTS = {
    "declared_down_while_running": "had declared this node down",
    "writes_refused_by_replication": "refused by replication (fenced",
    "takeovers": "took over a delivery",
    "handoffs": "handed a delivery to its new owner",
}


def log_counts(work):
    counts = dict.fromkeys(LOG_COUNTS, 0)
    for name in os.listdir(work):
        if name.endswith(".log") and name != "load.log":
            with open(os.path.join(work, name), errors="replace") as f:
                for line in f:
                    for key, needle in LOG_COUNTS.items():
                        if needle in line:
                            counts[key] += 1
    return counts


def trace_lost(lost, work, limit=80):
    """Prints the log lines (client-sim's and every node's) that name a lost event's
    delivery, so a failure in CI can be followed without the work directory."""
    ids = sorted({e.split("/")[0] for e in lost})
    if not ids:
        return
    for name in sorted(os.listdir(work)):
        if not name.endswith(".log"):
            continue
        with open(os.path.join(work, name), errors="replace") as f:
            hits = [line.rstrip() for line in f if any(i in line for i in ids)]
        if hits:
            log(f"--- {name}: {len(hits)} lines naming {', '.join(ids)}"
                + (f" (last {limit})" if len(hits) > limit else ""))
            for line in hits[-limit:]:
                print(line)


def binary_args(ap):
    """The release binaries a harness runs (--edge-node, --region-hub, --client-sim, --certs)."""
    rel = os.path.join(ROOT, "target", "release")
    for name in ("edge-node", "region-hub", "client-sim", "certs"):
        ap.add_argument(f"--{name}", default=os.path.join(rel, name))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    binary_args(ap)
    ap.add_argument("--workdir", default=os.path.join(ROOT, "target", "cluster-test"))
    ap.add_argument("--nodes", type=int, default=3, help="hubs and edges each")
    ap.add_argument("--deliveries", type=int, default=12)
    ap.add_argument("--wt-share", type=float, default=0.5,
                    help="share of consumers on WebTransport (the rest WebSocket)")
    ap.add_argument("--https-share", type=float, default=0.25,
                    help="share of drivers on the HTTPS fallback (the rest QUIC)")
    ap.add_argument("--loss", type=float, default=0.05)
    ap.add_argument("--delay-ms", type=float, default=40,
                    help="one-way delay the drivers' UDP relays add (0: no relays)")
    ap.add_argument("--jitter-ms", type=float, default=10)
    ap.add_argument("--phase-s", type=float, default=10)
    ap.add_argument("--partition-s", type=float, default=10)
    ap.add_argument("--restart-gap-s", type=float, default=5,
                    help="pause after a restarted node is ready (hubs claim after join_grace_ms)")
    ap.add_argument("--settle-s", type=float, default=5)
    ap.add_argument("--max-duration-s", type=int, default=900)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("cluster-test needs root for iptables")
    for name in ("edge_node", "region_hub", "client_sim", "certs"):
        if not os.access(getattr(args, name), os.X_OK):
            sys.exit(f"missing binary {getattr(args, name)} (scripts/cluster-test.sh builds them)")

    def on_signal(signum, _frame):
        raise KeyboardInterrupt()

    signal.signal(signal.SIGTERM, on_signal)
    try:
        sys.exit(run(args))
    except KeyboardInterrupt:
        log("interrupted")
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - report any harness failure as a failed test
        log(f"FAIL: {e}")
        sys.exit(1)


if __name__ == "__main__":
    main()
