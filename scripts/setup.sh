#!/usr/bin/env bash
# Installs what the project needs beyond the Rust toolchain, on a fresh Debian machine.
# Idempotent: does nothing when everything is already there.
set -euo pipefail
need=()
command -v python3 >/dev/null || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: please install: ${need[*]}" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
echo "setup: system packages present"
