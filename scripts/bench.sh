#!/usr/bin/env bash
# `make bench`: builds pg2sink (release), boots a Postgres tuned for load
# generation, and runs every workload side by side with the server's own
# limit (pg_recvlogical + pgoutput to /dev/null), wal2json, and COPY,
# with the CPU time of the walsender serving each slot beside pg2sink's.
# Writes docs/benchmarks.md (with the CPU model and the issue's targets as
# ratios). Usage: scripts/bench.sh [--quick] [--only=abcdefghi]
# [--repeat=N] [--out=FILE] [--note="a sentence about the machine"]
# [--allocs] [--allocator=system|mimalloc]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bin_dir=$(scripts/install-postgres.sh 15 | tail -n 1)
if [ ! -f /usr/lib/postgresql/15/lib/wal2json.so ]; then
  echo "==> installing wal2json" >&2
  apt-get install -y -q postgresql-15-wal2json >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q postgresql-15-wal2json >/dev/null; }
fi
scripts/build-deps.sh
# --allocs: a build with the counting allocator beside the timed one;
# --allocator=mimalloc: the timed build uses mimalloc. Each variant is
# built in target/release and copied aside, and the default build comes
# last, so target/release/pg2sink stays the default.
pg2sink=$root/target/release/pg2sink
extra=()
for arg in "$@"; do
  case $arg in
    --allocs)
      echo "==> building pg2sink (release, --features alloc-count)" >&2
      cargo build --release --quiet --bin pg2sink --features alloc-count
      cp target/release/pg2sink target/release/pg2sink-alloc-count
      extra+=(--pg2sink-allocs "$root/target/release/pg2sink-alloc-count") ;;
    --allocator=mimalloc)
      echo "==> building pg2sink (release, --features mimalloc)" >&2
      cargo build --release --quiet --bin pg2sink --features mimalloc
      cp target/release/pg2sink target/release/pg2sink-mimalloc
      pg2sink=$root/target/release/pg2sink-mimalloc ;;
    --allocator=*|--allocator)
      [ "$arg" = --allocator=system ] || { echo "bench.sh: --allocator=system or --allocator=mimalloc" >&2; exit 2; } ;;
  esac
done
echo "==> building pg2sink (release)" >&2
cargo build --release --quiet --bin pg2sink
exec python3 bench/bench.py --bin-dir "$bin_dir" --pg2sink "$pg2sink" "${extra[@]}" "$@"
