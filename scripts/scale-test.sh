#!/usr/bin/env bash
# Scale test: one hub + one edge as processes under `client-sim scale` (50,000 deliveries by
# default, 10 minutes steady), judged against issue 10's figures. See docs/benchmarks.md,
# "Scale". Arguments go to scripts/scale_test.py (e.g. --deliveries 5000 --steady 60s).
set -euo pipefail
cd "$(dirname "$0")/.."

rel=target/release
# Build only what is missing or older than the sources (release builds are heavy).
stale=0
for bin in $rel/edge-node $rel/region-hub $rel/client-sim; do
    if [[ ! -x $bin ]] || [[ -n $(find edge-node region-hub client-sim client cluster protocol \
            nodekit certs roadnet -name '*.rs' -newer "$bin" -print -quit) ]]; then
        stale=1
    fi
done
# SCALE_NO_BUILD=1 runs whatever binaries exist (CI builds them in an earlier stage).
if [[ $stale == 1 && ${SCALE_NO_BUILD:-0} != 1 ]]; then
    cargo build --release -p edge-node -p region-hub -p client-sim -p certs
fi
certs=$rel/certs
[[ -x $certs ]] || certs=target/debug/certs
[[ -x $certs ]] || { cargo build --release -p certs; certs=$rel/certs; }
exec python3 scripts/scale_test.py --certs "$certs" "$@"
