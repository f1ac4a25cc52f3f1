#!/usr/bin/env python3
"""Checks that the Prometheus alert rules and the Grafana dashboard only name metrics that a
running hub and edge export.

It starts one region hub and one edge node from the release binaries, both in cluster mode so
the cluster and replication families are registered too (a dev PKI, a token key and two TOML
configs in --work, loopback ports from --port-base), waits for both /readyz, and drives a little
traffic through them: a consumer refused for its token, and a few seconds of `client-sim load`
(drivers over QUIC and HTTPS, consumers over WebSocket and WebTransport, status changes). The
traffic is needed because prometheus-client leaves a labelled family out of /metrics entirely
(no `# TYPE` line) until its first label set is created, and several hub families
(`hub_consumers_active`, `hub_status_events`, `hub_consumer_rejected`, `hub_anomalies`) and the
edge's `edge_fixes_routed` create theirs on first use. The hub runs
with anomaly thresholds lowered through `TRACKLINE_HUB_ANOMALY__*` variables so a stationary
anomaly is raised within seconds. Then it reads both /metrics and checks:

- every metric name in every rule `expr` and every dashboard query (panel targets and
  templating `label_values(...)`) is a series one of the nodes exports: `F_total` of a counter
  family `F`, `F` of a gauge, `F_bucket` / `F_sum` / `F_count` of a histogram. A family that
  has never been incremented still shows its `# TYPE` line, and that is what counts. `up`
  (made by Prometheus for every scrape target) is allowed;
- every label named in a selector (`{reason="overload"}`) appears on that family's samples,
  when the family has samples yet;
- every alert has `summary` and `description` annotations and a `runbook_url` whose
  `docs/operations.md#anchor` exists;
- the dashboard: a `datasource` variable of type `prometheus`, every panel and target uses it,
  panel ids are unique, every target has an expression, and every expression parses as PromQL
  (Grafana variables substituted, checked by `promtool check rules` as recording rules).

Stdlib only. Exit status 0 when everything holds, 1 with a list of problems otherwise.

    python3 scripts/check_monitoring.py [--bin-dir target/release] [--port-base 27600]
"""

import argparse
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MONITORING = os.path.join(ROOT, "deploy", "monitoring")
RULES = os.path.join(MONITORING, "prometheus", "trackline-alerts.yml")
DASHBOARD = os.path.join(MONITORING, "grafana", "trackline-dashboard.json")
OPERATIONS = os.path.join(ROOT, "docs", "operations.md")
RUNBOOK_PREFIX = "docs/operations.md#"

# Series Prometheus itself adds for every scrape target.
PROMETHEUS_SERIES = {"up"}

PROMQL_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "bool", "offset", "inf", "nan", "atan2",
}
AGGREGATIONS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile",
}


def log(msg):
    print(f"check-monitoring: {msg}", flush=True)


# ---------------------------------------------------------------- nodes

def run(*cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def toml_str(s):
    return json.dumps(str(s))


class Node:
    def __init__(self, name, binary, config, admin, work, env=None, ports=None):
        self.name, self.binary, self.config, self.admin = name, binary, config, admin
        self.env, self.ports = env or {}, ports or {}
        self.log_path = os.path.join(work, f"{name}.log")
        self.proc = None

    def start(self):
        log_file = open(self.log_path, "w")
        self.proc = subprocess.Popen([self.binary, "--config", self.config],
                                     stdout=log_file, stderr=subprocess.STDOUT,
                                     env={**os.environ, **self.env})
        log_file.close()

    def get(self, path):
        with urllib.request.urlopen(f"http://{self.admin}{path}", timeout=5) as r:
            return r.status, r.read().decode()

    def wait_ready(self, timeout_s):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                if self.get("/readyz")[0] == 200:
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {timeout_s} s:\n{self.tail()}")

    def tail(self):
        try:
            with open(self.log_path) as f:
                return "".join(f.readlines()[-20:])
        except OSError:
            return "(no log)"

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_nodes(args):
    work = os.path.abspath(args.work)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    certs = os.path.join(args.bin_dir, "certs")
    hub_bin = os.path.join(args.bin_dir, "region-hub")
    edge_bin = os.path.join(args.bin_dir, "edge-node")
    for b in (certs, hub_bin, edge_bin, os.path.join(args.bin_dir, "client-sim")):
        if not os.access(b, os.X_OK):
            raise RuntimeError(f"{b} is missing: build the release binaries first "
                               "(cargo build --release -p certs -p region-hub -p edge-node -p client-sim)")
    pki = os.path.join(work, "pki")
    run(certs, "init", "--dir", pki)
    for name, role in (("hub-1", "hub"), ("edge-1", "edge")):
        run(certs, "issue", "--dir", pki, "--name", name, "--role", role,
            "--san", "localhost", "--san", "127.0.0.1")
    key = os.path.join(work, "token.der")
    out = run(hub_bin, "keygen", "--out", key, "--force").stdout
    public = next((line.split("=", 1)[1].strip().strip('"')
                   for line in out.splitlines() if line.startswith("public_key")), None)
    if not public:
        raise RuntimeError(f"no public key in keygen output: {out}")

    p = args.port_base
    hub_ports = dict(link=p, wt=p + 1, https=p + 2, admin=p + 3, gossip=p + 4)
    edge_ports = dict(quic=p + 10, https=p + 11, admin=p + 12, gossip=p + 13)
    seeds = json.dumps([f"127.0.0.1:{hub_ports['gossip']}"])

    def tls(name):
        return (f"[tls]\ncert = {toml_str(os.path.join(pki, name + '.pem'))}\n"
                f"key = {toml_str(os.path.join(pki, name + '.key'))}\n"
                f"ca = {toml_str(os.path.join(pki, 'ca.pem'))}\n")

    def cluster(name, role, gossip):
        return (f"[cluster]\nnode_id = {toml_str(name)}\nrole = \"{role}\"\nregion = \"mon\"\n"
                f"seeds = {seeds}\nexpected_nodes = 2\n"
                f"[cluster.gossip]\nbind_addr = \"127.0.0.1:{gossip}\"\n"
                f"[cluster.control]\ncluster_id = \"trackline-mon\"\n")

    data = os.path.join(work, "hub-data")
    hub_config = os.path.join(work, "hub.toml")
    with open(hub_config, "w") as f:
        f.write(f"hub_id = \"hub-1\"\n"
                f"link_listen = \"127.0.0.1:{hub_ports['link']}\"\n"
                f"webtransport_listen = \"127.0.0.1:{hub_ports['wt']}\"\n"
                f"https_listen = \"127.0.0.1:{hub_ports['https']}\"\n"
                f"admin_listen = \"127.0.0.1:{hub_ports['admin']}\"\n"
                f"data_dir = {toml_str(data)}\n"
                f"token_signing_key = {toml_str(key)}\n"
                + tls("hub-1")
                # The node certificate also serves WebTransport, so clients verify it
                # against the CA.
                + f"[webtransport_tls]\ncert = {toml_str(os.path.join(pki, 'hub-1.pem'))}\n"
                f"key = {toml_str(os.path.join(pki, 'hub-1.key'))}\n"
                + "[cluster_hub]\njoin_grace_ms = 500\n"
                + cluster("hub-1", "hub", hub_ports["gossip"]))
    edge_config = os.path.join(work, "edge.toml")
    with open(edge_config, "w") as f:
        f.write(f"edge_id = \"edge-1\"\n"
                f"quic_listen = \"127.0.0.1:{edge_ports['quic']}\"\n"
                f"https_listen = \"127.0.0.1:{edge_ports['https']}\"\n"
                f"admin_listen = \"127.0.0.1:{edge_ports['admin']}\"\n"
                f"hubs = []\n"
                f"[[token_keys]]\nkid = 1\npublic_key = {toml_str(public)}\n"
                + tls("edge-1")
                + cluster("edge-1", "edge", edge_ports["gossip"]))
    # Through the environment layer: any driver standing still for 1 s away from the stops is
    # a stationary anomaly, so `hub_anomalies` gets its first label set.
    # One hub has no successor to copy status changes to: acknowledge them on one copy.
    hub_env = {
        "TRACKLINE_HUB_CLUSTER_HUB__MIN_COPIES": "1",
        "TRACKLINE_HUB_ANOMALY__STATIONARY_AFTER_S": "1",
        "TRACKLINE_HUB_ANOMALY__STATIONARY_RADIUS_M": "100000.0",
        "TRACKLINE_HUB_ANOMALY__STOP_RADIUS_M": "1.0",
    }
    hub = Node("hub", hub_bin, hub_config, f"127.0.0.1:{hub_ports['admin']}", work,
               env=hub_env, ports=hub_ports)
    edge = Node("edge", edge_bin, edge_config, f"127.0.0.1:{edge_ports['admin']}", work,
                ports=edge_ports)
    for node in (hub, edge):
        subprocess.run([node.binary, "--config", node.config, "--check-config"], check=True,
                       capture_output=True, env={**os.environ, **node.env})
    return [hub, edge], os.path.join(pki, "ca.pem"), key


def drive_traffic(args, hub, edge, ca, key):
    """Makes the lazily created label sets appear (see the module doc)."""
    ctx = ssl.create_default_context(cafile=ca)
    url = f"https://127.0.0.1:{hub.ports['https']}/api/v1/tracking/1/status"
    req = urllib.request.Request(url, headers={"Authorization": "Bearer not-a-token"})
    try:
        urllib.request.urlopen(req, context=ctx, timeout=5)
        raise RuntimeError(f"{url} accepted a bad token")
    except urllib.error.HTTPError as e:
        if e.code not in (401, 403):
            raise RuntimeError(f"{url} answered {e.code} to a bad token, expected 401")
    client_sim = os.path.join(args.bin_dir, "client-sim")
    report = os.path.join(args.work, "load.json")
    cmd = [client_sim, "load",
           "--edge", f"quic=127.0.0.1:{edge.ports['quic']},https=127.0.0.1:{edge.ports['https']}",
           "--hub", f"https=127.0.0.1:{hub.ports['https']},wt=127.0.0.1:{hub.ports['wt']}",
           "--ca", ca, "--token-key", key, "--deliveries", "4", "--duration", "8s",
           "--delivery-lifetime", "6s", "--ramp", "1s", "--settle", "5s",
           "--wt-share", "0.5", "--https-share", "0.5", "--report", report]
    log("driving traffic: " + " ".join(cmd[1:]))
    with open(os.path.join(args.work, "load.log"), "w") as out:
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"client-sim load failed ({done.returncode}): see {out.name}")
    with open(report) as f:
        moved = json.load(f).get("positions_received", 0)
    if not moved:
        # Without traffic the lazily created families are missing and would be reported as
        # not exported: say what really went wrong.
        raise RuntimeError(f"client-sim load delivered no position to a consumer: see {out.name}")


# ---------------------------------------------------------------- exported families

def parse_exposition(text):
    """{family: (type, [label-name sets of its samples])} from Prometheus/OpenMetrics text."""
    families = {}
    for line in text.splitlines():
        m = re.match(r"# TYPE (\S+) (\S+)", line)
        if m:
            families[m.group(1)] = (m.group(2), [])
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([A-Za-z_:][A-Za-z0-9_:]*)(\{([^}]*)\})?\s", line)
        if not m:
            continue
        sample, labels = m.group(1), set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=\"", m.group(3) or ""))
        for fam, (_, samples) in families.items():
            if sample == fam or (sample.startswith(fam + "_") and sample[len(fam) + 1:] in
                                 ("total", "created", "bucket", "sum", "count")):
                samples.append(labels)
                break
    return families


def series_names(families):
    """{series name: family} for every series the families can produce."""
    suffixes = {"counter": ["_total", "_created"], "gauge": [""],
                "histogram": ["_bucket", "_sum", "_count", "_created"],
                "summary": ["", "_sum", "_count", "_created"],
                "info": ["_info"], "stateset": [""], "unknown": [""], "untyped": [""]}
    out = {}
    for fam, (kind, _) in families.items():
        for s in suffixes.get(kind, [""]):
            out[fam + s] = fam
    return out


# ---------------------------------------------------------------- PromQL

STRING = r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`'
IDENT = r"[A-Za-z_:][A-Za-z0-9_:]*"


def promql_metrics(expr):
    """[(metric name, [label names matched])] of every selector in a PromQL expression."""
    e = re.sub(r"\$\{[^}]*\}|\$[A-Za-z_]\w*", "1", expr)            # Grafana variables
    e = re.sub(r"\[[^\]]*\]", " ", e)                                # ranges, subqueries
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    found = []
    # Selectors with matchers: name{...}; the strings inside the braces are kept for labels.
    def selector(m):
        labels = re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", re.sub(STRING, '""', m.group(2)))
        found.append((m.group(1), labels))
        return " "
    e = re.sub(rf"({IDENT})\s*\{{((?:{STRING}|[^}}])*)\}}", selector, e)
    e = re.sub(STRING, " ", e)
    if "{" in e:
        raise ValueError(f"a selector without a metric name is not supported: {expr}")
    for m in re.finditer(rf"(?<![A-Za-z0-9_:.]){IDENT}", e):
        name = m.group(0)
        rest = e[m.end():].lstrip()
        if rest.startswith("(") or name in PROMQL_KEYWORDS or name in AGGREGATIONS:
            continue
        found.append((name, []))
    return found


# ---------------------------------------------------------------- rules (a YAML subset)

def rule_entries(path):
    """[(alert name, expr, {annotation: value})] from a Prometheus rules file, read with the
    YAML subset the file uses (block scalars `|`/`>`, plain and quoted scalars)."""
    with open(path) as f:
        lines = f.read().splitlines()
    rules, current, i = [], None, 0
    section = None

    def scalar(value, i, indent):
        value = value.strip()
        if value in ("|", ">", "|-", ">-"):
            block = []
            j = i + 1
            while j < len(lines) and (not lines[j].strip() or
                                      len(lines[j]) - len(lines[j].lstrip()) > indent):
                block.append(lines[j].strip())
                j += 1
            return ("\n" if value.startswith("|") else " ").join(block).strip(), j
        if value[:1] in "\"'":
            return json.loads(value) if value[0] == '"' else value[1:-1].replace("''", "'"), i + 1
        return value, i + 1

    while i < len(lines):
        line = lines[i]
        indent = len(line) - len(line.lstrip())
        m = re.match(r"\s*(- )?(alert|record|expr|annotations|labels|for)\s*:\s*(.*)$", line)
        if m and m.group(1) and m.group(2) in ("alert", "record"):
            current = {"name": m.group(3).strip(), "kind": m.group(2), "expr": None,
                       "annotations": {}}
            rules.append(current)
            section = None
            i += 1
            continue
        if m and current is not None and m.group(2) == "expr":
            current["expr"], i = scalar(m.group(3), i, indent)
            continue
        if m and current is not None and m.group(2) in ("annotations", "labels"):
            section = (m.group(2), indent)
            i += 1
            continue
        if section and section[0] == "annotations" and indent > section[1]:
            a = re.match(r"\s*([A-Za-z_]+)\s*:\s*(.*)$", line)
            if a:
                current["annotations"][a.group(1)], i = scalar(a.group(2), i, indent)
                continue
        if section and line.strip() and indent <= section[1]:
            section = None
        i += 1
    return rules


# ---------------------------------------------------------------- dashboard

def dashboard_queries(dash, problems):
    """[(where, expr)] of every query in the dashboard; structural problems appended."""
    queries, ids = [], set()
    variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
    ds = variables.get("datasource")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        problems.append("dashboard: no `datasource` variable of type datasource/prometheus")

    def uses_variable(d):
        return isinstance(d, dict) and d.get("uid") == "${datasource}"

    for v in variables.values():
        if v.get("type") == "query":
            if not uses_variable(v.get("datasource")):
                problems.append(f"dashboard variable {v.get('name')}: datasource is not ${{datasource}}")
            q = v.get("query")
            q = q.get("query") if isinstance(q, dict) else q
            m = re.match(r"\s*label_values\(\s*(.*?)\s*,\s*[A-Za-z_]\w*\s*\)\s*$", q or "")
            if m:
                queries.append((f"variable {v.get('name')}", m.group(1)))
            elif q and not re.match(r"\s*label_values\(\s*[A-Za-z_]\w*\s*\)\s*$", q):
                queries.append((f"variable {v.get('name')}", q))

    def walk(panels):
        for p in panels:
            pid = p.get("id")
            if pid in ids:
                problems.append(f"dashboard: duplicate panel id {pid}")
            ids.add(pid)
            if p.get("type") == "row":
                walk(p.get("panels", []))
                continue
            targets = p.get("targets", [])
            if p.get("type") != "text":
                if not uses_variable(p.get("datasource")):
                    problems.append(f"dashboard panel {p.get('title')!r}: datasource is not ${{datasource}}")
                if not targets:
                    problems.append(f"dashboard panel {p.get('title')!r}: no query")
            for t in targets:
                if not t.get("expr"):
                    problems.append(f"dashboard panel {p.get('title')!r}: target without expr")
                    continue
                if not uses_variable(t.get("datasource", p.get("datasource"))):
                    problems.append(f"dashboard panel {p.get('title')!r}: target datasource is not ${{datasource}}")
                queries.append((f"panel {p.get('title')!r}", t["expr"]))

    walk(dash.get("panels", []))
    return queries


def promql_syntax(queries, work):
    """Problems `promtool check rules` finds in the dashboard's expressions."""
    if not shutil.which("promtool"):
        return ["promtool is missing (scripts/setup.sh installs Debian's prometheus package)"]
    subst = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for i, (_, expr) in enumerate(queries):
        for k, v in subst.items():
            expr = expr.replace(k, v)
        expr = re.sub(r"\$\{?[A-Za-z_]\w*\}?", ".*", expr)
        lines += [f"      - record: dashboard:query_{i}", f"        expr: {json.dumps(expr)}"]
    os.makedirs(work, exist_ok=True)
    path = os.path.join(work, "dashboard-queries.rules.yml")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    done = subprocess.run(["promtool", "check", "rules", path], capture_output=True, text=True)
    if done.returncode == 0:
        return []
    out = (done.stdout + done.stderr).strip()
    named = []
    for m in re.finditer(r"dashboard:query_(\d+)", out):
        where, expr = queries[int(m.group(1))]
        named.append(f"{where}: PromQL does not parse: {expr}")
    return named or [f"dashboard queries do not parse: {out}"]


# ---------------------------------------------------------------- checks

def markdown_anchors(path):
    anchors = set()
    with open(path) as f:
        for line in f:
            m = re.match(r"#+\s+(.*)", line)
            if m:
                slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
                anchors.add(slug)
    return anchors


def check(exported, rules, queries, anchors):
    problems = []
    series = {}
    for node, families in exported.items():
        for s, fam in series_names(families).items():
            series.setdefault(s, []).append((node, fam))
    used = {}
    alerts = [r for r in rules if r["kind"] == "alert"]
    if not alerts:
        problems.append("rules: no alert found")
    for r in rules:
        if r["kind"] == "record":
            problems.append(f"rule {r['name']}: recording rules are not expected here")
        if not r["expr"]:
            problems.append(f"alert {r['name']}: no expr read")
            continue
        for key in ("summary", "description", "runbook_url"):
            if not r["annotations"].get(key):
                problems.append(f"alert {r['name']}: no {key} annotation")
        url = r["annotations"].get("runbook_url", "")
        if RUNBOOK_PREFIX not in url:
            problems.append(f"alert {r['name']}: runbook_url {url!r} does not point into {RUNBOOK_PREFIX}")
        elif url.split("#", 1)[1] not in anchors:
            problems.append(f"alert {r['name']}: runbook anchor #{url.split('#', 1)[1]} is not a heading of docs/operations.md")
        queries = queries + [(f"alert {r['name']}", r["expr"])]
    for where, expr in queries:
        try:
            names = promql_metrics(expr)
        except ValueError as e:
            problems.append(f"{where}: {e}")
            continue
        if not names:
            problems.append(f"{where}: no metric found in {expr!r}")
        for name, labels in names:
            used.setdefault(name, set()).add(where)
            if name in PROMETHEUS_SERIES:
                continue
            if name not in series:
                hint = ""
                for fam_series, owners in series.items():
                    if owners[0][1] == name:
                        hint = f" (the family exists: use {fam_series})"
                        break
                problems.append(f"{where}: `{name}` is not exported by the hub or the edge{hint}")
                continue
            for node, fam in series[name]:
                samples = exported[node][fam][1]
                for label in labels:
                    if label in ("job", "instance"):
                        continue
                    if samples and not any(label in s for s in samples):
                        problems.append(f"{where}: `{name}` has no label `{label}` on the {node}")
    return problems, used


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin-dir", default=os.path.join(ROOT, "target", "release"))
    ap.add_argument("--work", default=os.path.join(ROOT, "target", "check-monitoring"))
    ap.add_argument("--port-base", type=int, default=27600,
                    help="the hub uses BASE..BASE+4, the edge BASE+10..BASE+13 (loopback)")
    ap.add_argument("--ready-timeout-s", type=float, default=60)
    ap.add_argument("--metrics-dir", help="read hub.metrics and edge.metrics from here "
                    "instead of starting nodes (for working on the rules offline)")
    ap.add_argument("--rules", default=RULES)
    ap.add_argument("--dashboard", default=DASHBOARD)
    args = ap.parse_args()

    exported = {}
    if args.metrics_dir:
        for name in ("hub", "edge"):
            with open(os.path.join(args.metrics_dir, f"{name}.metrics")) as f:
                exported[name] = parse_exposition(f.read())
    else:
        nodes = []
        try:
            nodes, ca, key = start_nodes(args)
            for node in nodes:
                node.start()
            for node in nodes:
                node.wait_ready(args.ready_timeout_s)
                log(f"{node.name} ready on {node.admin}")
            drive_traffic(args, *nodes, ca, key)
            for node in nodes:
                text = node.get("/metrics")[1]
                with open(os.path.join(args.work, f"{node.name}.metrics"), "w") as f:
                    f.write(text)
                exported[node.name] = parse_exposition(text)
        finally:
            for node in nodes:
                node.stop()
    for node, families in exported.items():
        log(f"{node} exports {len(families)} metric families")

    rules = rule_entries(args.rules)
    problems = []
    with open(args.dashboard) as f:
        queries = dashboard_queries(json.load(f), problems)
    more, used = check(exported, rules, queries, markdown_anchors(OPERATIONS))
    problems += more
    problems += promql_syntax(queries, args.work)
    log(f"{len(rules)} alert rules, {len(queries)} dashboard queries, "
        f"{len(used)} distinct metric names")
    if problems:
        for p in problems:
            print(f"  problem: {p}", flush=True)
        log(f"FAILED: {len(problems)} problem(s)")
        return 1
    log("every metric the rules and the dashboard use is exported")
    return 0


if __name__ == "__main__":
    sys.exit(main())
