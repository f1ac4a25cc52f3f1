#!/usr/bin/env bash
# Installs what the project needs beyond the Rust toolchain, on a fresh Debian machine.
# Idempotent: does nothing when everything is already there.
set -euo pipefail
need=()
command -v python3 >/dev/null || need+=(python3)
# Browser tests (tests/browser): headless Chromium, its driver, iptables to block WebTransport.
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
command -v iptables >/dev/null || need+=(iptables)
python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: please install: ${need[*]}" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
# Monitoring checks (scripts/test.sh): promtool comes with Debian's prometheus package. Installed
# without recommends (no node exporter); on a machine running systemd its postinst also enables
# and starts a Prometheus server on :9090 (`systemctl disable --now prometheus` if unwanted).
if ! command -v promtool >/dev/null; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: please install: prometheus (for promtool)" >&2
    exit 1
  fi
  [ ${#need[@]} -gt 0 ] || apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus
fi
if ! python3 -c "import selenium, pytest" 2>/dev/null; then
  python3 -m pip install --quiet selenium pytest 2>/dev/null ||
    python3 -m pip install --quiet --break-system-packages selenium pytest
fi
# API check (scripts/api-check.sh): schemathesis runs the nodes' OpenAPI descriptions against them.
if ! command -v schemathesis >/dev/null; then
  python3 -m pip install --quiet schemathesis 2>/dev/null ||
    python3 -m pip install --quiet --break-system-packages schemathesis
fi
echo "setup: system packages present"
