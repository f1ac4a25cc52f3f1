#!/usr/bin/env bash
# Side-by-side CPU benchmark: (a) a bare quinn datagram sink, (b) mosquitto as a bare relay,
# (c) one edge + one hub, at the same connections, rate and payload; CPU per message of each
# server process from /proc and the ratios. See docs/benchmarks.md. Extra arguments go to
# scripts/bench_baseline.py (--help). Installs mosquitto (Debian) when missing; builds the
# release binaries unless BENCH_NO_BUILD=1.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v mosquitto >/dev/null && [[ ! -x /usr/sbin/mosquitto ]]; then
    echo "[bench] installing mosquitto (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null
fi
command -v taskset >/dev/null || { echo "[bench] taskset (util-linux) is needed" >&2; exit 1; }

if [[ ${BENCH_NO_BUILD:-0} != 1 ]]; then
    nice -n 10 cargo build --release -p trackline-baseline -p edge-node -p region-hub \
        -p client-sim -p certs
fi
exec python3 scripts/bench_baseline.py "$@"
