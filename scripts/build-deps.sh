#!/usr/bin/env bash
# What building pg2sink needs beyond Rust, installed if missing (Debian):
# the Kafka sink builds librdkafka from source, with a C toolchain, and
# links OpenSSL and zlib. Used by `make demo`, `make test` and
# `make bench` before they build.
set -euo pipefail
missing=()
for pkg in build-essential pkg-config libssl-dev zlib1g-dev; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing build dependencies: ${missing[*]}" >&2
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
fi
