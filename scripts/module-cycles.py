#!/usr/bin/env python3
"""Lists circular dependencies between the top-level modules of a crate, from its
`use crate::` lines and `crate::x::` paths (tests excluded). Exit 1 if there is a cycle.

    python3 scripts/module-cycles.py region-hub/src
"""
import os
import re
import sys

src = sys.argv[1] if len(sys.argv) > 1 else "region-hub/src"
# Top-level modules: files and directories next to lib.rs.
mods = set()
for name in os.listdir(src):
    if name.endswith(".rs") and name not in ("lib.rs", "main.rs"):
        mods.add(name[:-3])
    elif os.path.isdir(os.path.join(src, name)):
        mods.add(name)

edges = {m: set() for m in mods}
ref = re.compile(r"crate::([a-z_]+)")
for m in mods:
    path = os.path.join(src, m)
    files = []
    if os.path.isdir(path):
        for root, _, names in os.walk(path):
            files += [os.path.join(root, n) for n in names if n.endswith(".rs")]
    else:
        files = [path + ".rs"]
    for f in files:
        if f.endswith("tests.rs"):
            continue
        text = open(f).read()
        # Unit tests at the end of a file do not count.
        text = text.split("#[cfg(test)]\nmod tests")[0]
        for line in text.splitlines():
            if line.strip().startswith("//"):
                continue
            for target in ref.findall(line):
                if target in mods and target != m:
                    edges[m].add(target)

# Strongly connected components (Tarjan).
index, low, stack, on, sccs = {}, {}, [], set(), []
def visit(v, counter=[0]):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on.add(v)
    for w in edges[v]:
        if w not in index:
            visit(w)
            low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop()
            on.discard(w)
            comp.append(w)
            if w == v:
                break
        if len(comp) > 1:
            sccs.append(sorted(comp))

for v in sorted(mods):
    if v not in index:
        visit(v)
for m in sorted(mods):
    print(f"{m} -> {', '.join(sorted(edges[m])) or '-'}")
if sccs:
    for c in sccs:
        print("cycle:", " <-> ".join(c))
    sys.exit(1)
print("no cycles between top-level modules")
