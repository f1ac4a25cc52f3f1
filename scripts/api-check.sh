#!/usr/bin/env bash
# schemathesis against a live hub and edge (scripts/api_check.py; loopback ports 25400-25413).
# Builds the release binaries first unless API_CHECK_NO_BUILD=1 (scripts/test.sh built them).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${API_CHECK_NO_BUILD:-0}" != 1 ]; then
  cargo build --release -q -p certs -p region-hub -p edge-node -p client-sim
fi
exec python3 scripts/api_check.py "$@"
