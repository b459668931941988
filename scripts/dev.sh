#!/usr/bin/env bash
# The development environment without Docker (deploy/docker-compose.yml is
# the same with Docker): a Postgres with logical replication on port 5432
# (or $PG2SINK_DEV_PORT) holding a `pg2sink` database, and, when the Debian
# `prometheus` package is installed, Prometheus scraping pg2sink with the
# rules in deploy/.
#   scripts/dev.sh up          start (installing Postgres 15 if missing)
#   scripts/dev.sh recreatedb  drop and create the pg2sink database (and its slots)
#   scripts/dev.sh psql        a psql on it
#   scripts/dev.sh down        stop everything
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir="$root/.pg2sink/dev"
port=${PG2SINK_DEV_PORT:-5432}
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
url="postgres://postgres@127.0.0.1:$port"

up() {
  bin_dir=$("$root/scripts/install-postgres.sh" 15 | tail -n 1)
  mkdir -p "$dir"
  [ "$(id -u)" = 0 ] && chown postgres "$dir"
  if [ ! -d "$dir/data" ]; then
    as_pg "$bin_dir/initdb" -D "$dir/data" -A trust -U postgres >/dev/null
  fi
  if ! as_pg "$bin_dir/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
    as_pg "$bin_dir/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -o \
      "-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$dir -c wal_level=logical -c max_replication_slots=20 -c max_wal_senders=20" \
      start >/dev/null
  fi
  psql -X -q "$url/postgres" -tc "select 1 from pg_database where datname = 'pg2sink'" | grep -q 1 ||
    psql -X -q "$url/postgres" -c "create database pg2sink"
  echo "postgres: $url/pg2sink  (export PG2SINK_URL=$url/pg2sink?sslmode=disable)"
  if command -v prometheus >/dev/null && ! pgrep -f "prometheus.*$dir" >/dev/null; then
    # The compose file's scrape target, pointed at this machine.
    sed -e 's/host.docker.internal:9525/127.0.0.1:9525/' -e "s#- alerts.yml#- $root/deploy/alerts.yml#" \
      "$root/deploy/prometheus.yml" >"$dir/prometheus.yml"
    (nohup prometheus --config.file="$dir/prometheus.yml" --storage.tsdb.path="$dir/prometheus" \
      --web.listen-address=127.0.0.1:9090 >"$dir/prometheus.log" 2>&1 &)
    echo "prometheus: http://127.0.0.1:9090 (scraping pg2sink on 127.0.0.1:9525)"
  fi
}

case "${1:-up}" in
  up) up ;;
  recreatedb)
    up >/dev/null
    psql -X -q "$url/postgres" -c "select pg_drop_replication_slot(slot_name) from pg_replication_slots where database = 'pg2sink' and not active" \
      -c "drop database if exists pg2sink with (force)" -c "create database pg2sink"
    echo "recreated $url/pg2sink" ;;
  psql) shift; exec psql -X "$url/pg2sink" "$@" ;;
  down)
    pkill -f "prometheus.*$dir" 2>/dev/null || true
    bin_dir=$("$root/scripts/install-postgres.sh" 15 | tail -n 1)
    as_pg "$bin_dir/pg_ctl" -D "$dir/data" -m fast stop >/dev/null 2>&1 || true ;;
  *) echo "usage: $0 up|recreatedb|psql|down" >&2; exit 2 ;;
esac
