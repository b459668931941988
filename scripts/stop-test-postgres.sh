#!/usr/bin/env bash
# Stops every Postgres test server started by the integration-test harness
# (crates/pg2sink/tests/harness) under <repo>/target/pg2sink-test
# (pg_ctl stop -m fast). Safe to run when none is running.
set -uo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BASE="$(cd "$SCRIPT_DIR/.." && pwd)/target/pg2sink-test"
[[ -d "$BASE" ]] || exit 0

# Same lock the harness takes around start/stop/restart.
exec 9>>"$BASE/.lock"
if command -v flock >/dev/null 2>&1; then
    flock -w 300 9 || echo "stop-test-postgres: lock busy, stopping anyway" >&2
fi

status=0
for data in "$BASE"/*/data; do
    [[ -f "$data/postmaster.pid" ]] || continue
    dir="$(dirname "$data")"
    bin=""
    [[ -f "$dir/bin_dir" ]] && bin="$(head -n1 "$dir/bin_dir")"
    if [[ -z "$bin" || ! -x "$bin/pg_ctl" ]]; then
        v="$(cat "$data/PG_VERSION" 2>/dev/null || true)"
        bin="/usr/lib/postgresql/$v/bin"
    fi
    if [[ ! -x "$bin/pg_ctl" ]]; then
        echo "stop-test-postgres: no pg_ctl for $data" >&2
        status=1
        continue
    fi
    echo "stop-test-postgres: stopping $dir" >&2
    if [[ "$(id -u)" -eq 0 ]]; then
        (cd "$dir" && runuser -u postgres -- "$bin/pg_ctl" -D "$data" -w -t 60 -m fast stop >&2) || status=1
    else
        (cd "$dir" && "$bin/pg_ctl" -D "$data" -w -t 60 -m fast stop >&2) || status=1
    fi
done
exit $status
