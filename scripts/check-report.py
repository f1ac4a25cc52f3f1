#!/usr/bin/env python3
"""Checks a client-sim report: fixes reached consumers over both transports, no event lost."""
import json
import sys

path = sys.argv[1]
with open(path) as f:
    r = json.load(f)
problems = []
fixes = r["fixes"]
if fixes["delivered_to_consumers"] <= 0:
    problems.append("no position reached a consumer")
if r["consumers"]["webtransport"] <= 0 or r["consumers"]["websocket"] <= 0:
    problems.append("both consumer transports must be used")
if fixes["accepted"] <= 0:
    problems.append("the edge accepted no fix")
if fixes.get("out_of_order_at_consumers", 0) != 0:
    problems.append(f"{fixes['out_of_order_at_consumers']} positions arrived out of order")
ev = r["status_events"]
if ev["sent"] <= 0:
    problems.append("no status event was acknowledged")
if ev["lost"] != 0:
    problems.append(f"{ev['lost']} status events lost")
lat = r["latency_ms"]
print(
    f"report {path}: {fixes['sent']} fixes sent, {fixes['accepted']} accepted, "
    f"{fixes['delivered_to_consumers']} delivered; p50 {lat['p50']:.1f} ms p99 {lat['p99']:.1f} ms; "
    f"events sent {ev['sent']} received {ev['received']} lost {ev['lost']}; errors {len(r['errors'])}"
)
for p in problems:
    print(f"FAIL: {p}")
sys.exit(1 if problems else 0)
