#!/usr/bin/env bash
# Multi-node test: 3 hubs + 3 edges as processes on 127.0.0.1, client-sim load mode, 5% UDP
# loss, kill -9 of a hub, a partitioned edge, a rolling restart. See docs/operations.md,
# "Multi-node test". Needs root (iptables). Extra arguments go to scripts/cluster_test.py.
set -euo pipefail
cd "$(dirname "$0")/.."

rel=target/release
# Build only what is missing or older than the sources (release builds are heavy).
stale=0
for bin in $rel/edge-node $rel/region-hub $rel/client-sim; do
    if [[ ! -x $bin ]] || [[ -n $(find edge-node region-hub client-sim cluster protocol nodekit certs \
            -name '*.rs' -newer "$bin" -print -quit) ]]; then
        stale=1
    fi
done
# CT_NO_BUILD=1 runs whatever binaries exist (e.g. while others edit the sources).
if [[ $stale == 1 && ${CT_NO_BUILD:-0} != 1 ]]; then
    cargo build --release -p edge-node -p region-hub -p client-sim
fi
certs=$rel/certs
[[ -x $certs ]] || certs=target/debug/certs
[[ -x $certs ]] || { cargo build -p certs; certs=target/debug/certs; }

exec python3 scripts/cluster_test.py --certs "$certs" "$@"
