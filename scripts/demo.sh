#!/usr/bin/env bash
# Shows pg2sink's main job on a fresh machine: boots a throwaway Postgres
# (wal_level=logical), creates public.example, streams with the file sink
# while rows are inserted, updated and deleted, then prints the messages.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

bin_dir=$(scripts/install-postgres.sh "${PG2SINK_DEMO_PG_VERSION:-15}" | tail -n 1)
echo "==> building pg2sink" >&2
scripts/build-deps.sh
cargo build --release --quiet --bin pg2sink
pg2sink="$root/target/release/pg2sink"

work=$(mktemp -d /tmp/pg2sink-demo.XXXXXX)
chmod 755 "$work"
port=${PG2SINK_DEMO_PORT:-55499}
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
if [ "$(id -u)" = 0 ]; then chown postgres "$work"; fi

cleanup() {
  [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null || true
  as_pg "$bin_dir/pg_ctl" -D "$work/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "==> starting a throwaway Postgres on port $port" >&2
as_pg "$bin_dir/initdb" -D "$work/data" -A trust -U postgres >/dev/null
as_pg "$bin_dir/pg_ctl" -D "$work/data" -l "$work/postgres.log" -w -o \
  "-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$work -c wal_level=logical -c wal_sender_timeout=10s" \
  start >/dev/null
export PGHOST=127.0.0.1 PGPORT=$port PGUSER=postgres PGDATABASE=postgres PGSSLMODE=disable
psql() { command psql -X -q -v ON_ERROR_STOP=1 "$@"; }
psql -c "create table public.example (id bigserial primary key, msg text, tags text[], doc jsonb, at timestamptz default now())"

echo "==> pg2sink stream --sink=file" >&2
"$pg2sink" stream --sink=file \
  --sink.file.schemas-path="$work/schemas.jsonl" \
  --sink.file.modifications-path="$work/modifications.jsonl" \
  2>"$work/pg2sink.log" &
pid=$!
# Wait until the slot exists, so the changes below are captured.
for _ in $(seq 100); do
  [ "$(psql -Atc "select count(*) from pg_replication_slots where active")" = 1 ] && break
  sleep 0.1
done

psql <<'SQL'
insert into public.example (msg, tags, doc) values ('hello world', '{a,b}', '{"n": 1}');
begin;
insert into public.example (msg) values ('second'), ('third');
update public.example set msg = 'hello again', doc = '{"n": 2}' where id = 1;
commit;
delete from public.example where id = 2;
SQL
sleep 1
kill -TERM "$pid"; wait "$pid" || true; pid=

echo
echo "==> schemas ($work/schemas.jsonl)"
cat "$work/schemas.jsonl"
echo
echo "==> modifications ($work/modifications.jsonl)"
cat "$work/modifications.jsonl"
echo
echo "==> slot position confirmed to Postgres"
psql -Atc "select slot_name, confirmed_flush_lsn from pg_replication_slots"
