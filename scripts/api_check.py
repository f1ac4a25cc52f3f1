#!/usr/bin/env python3
"""Checks the HTTP APIs of a live hub and a live edge against their own OpenAPI descriptions
with schemathesis (PyPI), as issue 14 asks: no 5xx, every response matches the description
(status code, content type, headers, body schema), every error body is an `ApiError`.

It starts one region hub and one edge node from the release binaries (the monitoring check's
setup: cluster mode, a dev PKI, a token key; the hub acknowledges status changes on one copy,
`min_copies = 1`) on loopback ports from --port-base (default 25400: hub 25400-25404, edge
25410-25413), mints an operator token (hub) and a driver token (edge) with `region-hub
mint-token` so the generated requests get past authentication, creates one delivery so ids
that exist are among those tried, and runs `schemathesis run` against
`/api/v1/openapi.json` of each node with `--checks all`, `--max-examples` per operation.

Left out, with the reason:
- `ignored_auth`: it resends requests without credentials and expects a 401, but several
  routes are public by design (pages, /healthz, /api/v1/map, /api/v1/webtransport/info,
  the description itself) and schemathesis cannot tell those from protected ones when the
  description lists the security scheme on others only. Authentication is covered by the
  crates' tests (401/403 for every token-taking route).
- `positive_data_acceptance`: a valid request is not always accepted here: a delivery id the
  hub does not know is a valid integer and still 404, a status change the machine refuses is
  409. Those answers are described and checked by `status_code_conformance`.

The run report (NDJSON events and JUnit XML) goes to --work; the number of generated requests
per node and the failures are printed. Exit 0 when both runs pass.

    python3 scripts/api_check.py [--bin-dir target/release] [--max-examples 100]
"""

import argparse
import base64
import json
import os
import ssl
import subprocess
import sys
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import check_monitoring as mon  # noqa: E402

EXCLUDED_CHECKS = ["ignored_auth", "positive_data_acceptance"]


def log(msg):
    print(f"api-check: {msg}", flush=True)


def mint(hub, *who):
    out = subprocess.run([hub.binary, "--config", hub.config, "mint-token", *who, "--ttl", "2h"],
                         check=True, capture_output=True, text=True,
                         env={**os.environ, **hub.env}).stdout
    return out.strip().splitlines()[-1]


def create_delivery(hub, ca, op):
    body = json.dumps({"pickup": {"lat": 60.170, "lng": 24.940},
                       "dropoff": {"lat": 60.175, "lng": 24.945}, "driver_id": 1}).encode()
    req = urllib.request.Request(f"https://127.0.0.1:{hub.ports['https']}/api/v1/deliveries",
                                 data=body, method="POST",
                                 headers={"Authorization": f"Bearer {op}",
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, context=ssl.create_default_context(cafile=ca),
                                timeout=10) as r:
        return json.load(r)["delivery_id"]


def schemathesis(args, name, port, ca, token):
    """Runs schemathesis against one node; returns (exit code, requests sent, failures)."""
    out_dir = os.path.join(args.work, f"schemathesis-{name}")
    os.makedirs(out_dir, exist_ok=True)
    ndjson = os.path.join(out_dir, "events.ndjson")
    cmd = [args.schemathesis, "run", f"https://127.0.0.1:{port}/api/v1/openapi.json",
           "--tls-verify", ca, "-H", f"Authorization: Bearer {token}",
           "--checks", "all", "--exclude-checks", ",".join(EXCLUDED_CHECKS),
           "--max-examples", str(args.max_examples), "--seed", str(args.seed),
           "--workers", "2", "--request-timeout", "10", "--no-color",
           "--generation-database", "none",
           "--report", "junit,ndjson", "--report-dir", out_dir,
           "--report-ndjson-path", ndjson,
           "--report-junit-path", os.path.join(out_dir, "junit.xml")]
    log(f"{name}: " + " ".join(cmd[1:3]) + " ...")
    with open(os.path.join(out_dir, "output.txt"), "w") as out:
        # In its own directory: schemathesis keeps a `.schemathesis/` cache where it runs.
        code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=out_dir,
                              timeout=args.timeout_s).returncode
    requests, failures = count(ndjson)
    return code, requests, failures, os.path.join(out_dir, "output.txt")


def api_error_problem(interaction):
    """Why an error response's body is not an `ApiError`, or None (also for non-errors)."""
    response = interaction.get("response") or {}
    status = response.get("status_code", 0)
    if status < 400:
        return None
    content = response.get("content") or {}
    try:
        body = json.loads(base64.b64decode(content.get("$base64", "")) or content.get("string", ""))
    except ValueError:
        return f"{status} body is not JSON"
    if not (isinstance(body, dict) and isinstance(body.get("error"), str)
            and isinstance(body.get("message"), str)):
        return f"{status} body is not an ApiError: {str(body)[:80]}"
    return None


def count(ndjson):
    """(requests sent, distinct failures) from schemathesis' NDJSON event stream; an error
    response whose body is not an `ApiError` is a failure too."""
    requests, failures = 0, set()
    if not os.path.exists(ndjson):
        return 0, []
    with open(ndjson) as f:
        for line in f:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            for kind, body in event.items():
                if kind != "ScenarioFinished":
                    continue
                recorder = body.get("recorder", {})
                interactions = recorder.get("interactions", {})
                requests += len(interactions)
                label = recorder.get("label", "?")
                for check_list in recorder.get("checks", {}).values():
                    for c in check_list:
                        if str(c.get("status", "")).lower() == "failure":
                            failures.add(f"{label}: {c.get('name')}")
                for interaction in interactions.values():
                    problem = api_error_problem(interaction)
                    if problem:
                        failures.add(f"{label}: {problem}")
    return requests, sorted(failures)


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin-dir", default=os.path.join(root, "target", "release"))
    ap.add_argument("--work", default=os.path.join(root, "target", "api-check"))
    ap.add_argument("--port-base", type=int, default=25400)
    ap.add_argument("--max-examples", type=int, default=100,
                    help="test cases per operation and phase (keeps the CI run short)")
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--timeout-s", type=int, default=300)
    ap.add_argument("--schemathesis", default="schemathesis")
    args = ap.parse_args()
    args.work = os.path.abspath(args.work)
    nodes = []
    try:
        nodes, ca, _key = mon.start_nodes(args)
        hub, edge = nodes
        for n in nodes:
            n.start()
        for n in nodes:
            n.wait_ready(60)
        op = mint(hub, "--operator")
        driver = mint(hub, "--driver", "1")
        log(f"delivery {create_delivery(hub, ca, op)} created for driver 1")
        results = {}
        for name, node, token in (("hub", hub, op), ("edge", edge, driver)):
            results[name] = schemathesis(args, name, node.ports["https"], ca, token)
        failed = False
        for name, (code, requests, failures, output) in results.items():
            log(f"{name}: {requests} requests, {len(failures)} failures, exit {code} "
                f"(output: {output})")
            for f in failures:
                log(f"  {f}")
            failed |= code != 0 or bool(failures)
        with open(os.path.join(args.work, "summary.json"), "w") as f:
            json.dump({n: {"exit": r[0], "requests": r[1], "failures": r[2]}
                       for n, r in results.items()}, f, indent=1)
        return 1 if failed else 0
    finally:
        for n in nodes:
            n.stop()


if __name__ == "__main__":
    sys.exit(main())
