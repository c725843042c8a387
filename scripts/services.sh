#!/usr/bin/env bash
# Shared test services, started once per test run: loopback only, private state under DIR, and
# `stop` stops only what `start` started there (pg_ctl on DIR's own data directory).
#
#   scripts/services.sh start postgres DIR   private PostgreSQL cluster in DIR; writes DIR/env
#   scripts/services.sh stop DIR             stop every service started in DIR (keeps DIR)
#   scripts/services.sh status DIR           say what runs in DIR
#
# DIR/env is a shell file to `source`; it exports
#   TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:PORT/berth
# Both commands are idempotent: starting a running service only rewrites DIR/env, stopping a
# stopped one does nothing.
set -euo pipefail

usage() {
    echo "usage: $0 start postgres DIR | stop DIR | status DIR" >&2
    exit 2
}
say() { printf 'services: %s\n' "$*" >&2; }
die() { printf 'services: error: %s\n' "$*" >&2; exit 1; }

# Debian's layout: /usr/lib/postgresql/<major>/bin, newest major first.
newest_packaged_bindir() {
    local d best=""
    for d in /usr/lib/postgresql/*/bin; do
        [ -x "$d/initdb" ] && best=$(printf '%s\n%s\n' "$best" "$d" | sed '/^$/d' | sort -V | tail -n 1)
    done
    echo "$best"
}

# The PostgreSQL server binaries (initdb, pg_ctl, postgres), installing them when missing.
pg_bindir() {
    local dir=""
    if command -v pg_config >/dev/null 2>&1; then
        dir=$(pg_config --bindir 2>/dev/null || true)
    fi
    if [ -z "$dir" ] || [ ! -x "$dir/initdb" ]; then
        dir=$(newest_packaged_bindir)
    fi
    if [ -n "$dir" ] && [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then
        echo "$dir"
        return
    fi
    [ "$(id -u)" = 0 ] || die "PostgreSQL server binaries not found; install them (apt-get install postgresql) or run as root"
    say "PostgreSQL not found: installing it with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q postgresql >&2; then
        apt-get update -q >&2
        apt-get install -y -q postgresql >&2
    fi
    # The Debian package starts a system cluster on port 5432; we leave it alone and never use it.
    dir=$(pg_config --bindir 2>/dev/null || true)
    if [ -z "$dir" ] || [ ! -x "$dir/initdb" ]; then
        dir=$(newest_packaged_bindir)
    fi
    if [ -z "$dir" ] || [ ! -x "$dir/initdb" ]; then
        die "PostgreSQL installed but initdb not found"
    fi
    echo "$dir"
}

# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

# Run a command as the cluster's owner: PostgreSQL refuses to run as root.
as_owner() {
    if [ "$(id -u)" = 0 ]; then
        # From /, which the postgres user may enter (the caller's directory may be private).
        (cd / && runuser -u postgres -- "$@")
    else
        "$@"
    fi
}

pg_running() {
    local bin=$1 data=$2
    [ -f "$data/PG_VERSION" ] && as_owner "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1
}

start_postgres() {
    local dir=$1 bin data sock port
    case "$dir" in /*) ;; *) dir="$PWD/$dir" ;; esac
    case "$dir" in *[[:space:]]*) die "DIR must not contain whitespace: '$dir'" ;; esac
    # A Unix socket path is limited to ~107 bytes: "$sock/.s.PGSQL.NNNNN" must fit.
    [ $((${#dir} + 34)) -le 100 ] || die "DIR path too long for a Unix socket ($dir); choose a shorter DIR (e.g. under /tmp)"
    bin=$(pg_bindir)
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    data="$dir/postgres"
    sock="$dir/postgres-socket"
    if [ "$(id -u)" = 0 ]; then
        id postgres >/dev/null 2>&1 || die "running as root needs the 'postgres' user (created by the postgresql package)"
        # DIR is ours (a `mktemp -d` one is 0700): let the server's user pass through, not list it.
        chmod go+x "$dir"
        # The owner must reach DIR: every parent directory must be traversable.
        local p=$dir
        while [ "$p" != / ]; do
            if ! runuser -u postgres -- test -x "$p"; then
                die "user postgres cannot enter $p; choose a DIR outside private directories (e.g. under /tmp)"
            fi
            p=$(dirname "$p")
        done
    fi
    mkdir -p "$sock"
    if [ ! -f "$data/PG_VERSION" ]; then
        say "initdb in $data"
        rm -rf "$data"
        mkdir -p "$data"
        [ "$(id -u)" = 0 ] && chown -R postgres: "$data" "$sock"
        as_owner "$bin/initdb" -D "$data" -A trust -U postgres -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
            || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
    fi
    [ "$(id -u)" = 0 ] && chown -R postgres: "$data" "$sock"
    if pg_running "$bin" "$data"; then
        port=$(sed -n 's/^port=//p' "$dir/postgres.port" 2>/dev/null || true)
        [ -n "$port" ] || die "a server runs on $data but $dir/postgres.port is missing; run '$0 stop $dir' first"
        say "PostgreSQL already running in $data on 127.0.0.1:$port"
    else
        # The port is free when chosen; another process could take it before the server binds,
        # so retry a few times on a new port.
        local tries=0
        while :; do
            port=$(free_port)
            tries=$((tries + 1))
            # Fast and disposable: the data dies with the test run.
            if as_owner "$bin/pg_ctl" -D "$data" -l "$data/log" -w -t 60 \
                -o "-p $port -k $sock -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
                start >/dev/null; then
                break
            fi
            [ "$tries" -lt 3 ] || { tail -n 20 "$data/log" >&2 || true; die "PostgreSQL did not start (log: $data/log)"; }
            say "start on port $port failed; retrying"
        done
        echo "port=$port" >"$dir/postgres.port"
        say "PostgreSQL started in $data on 127.0.0.1:$port"
    fi
    if ! as_owner "$bin/psql" -h "$sock" -p "$port" -U postgres -d postgres -XAtq \
        -c "SELECT 1 FROM pg_database WHERE datname = 'berth'" | grep -q 1; then
        as_owner "$bin/psql" -h "$sock" -p "$port" -U postgres -d postgres -Xq -v ON_ERROR_STOP=1 \
            -c "CREATE DATABASE berth" || die "could not create database berth"
    fi
    local url="postgres://postgres@127.0.0.1:$port/berth"
    printf 'export TEST_POSTGRES_URL=%s\n' "$url" >"$dir/env.tmp"
    mv "$dir/env.tmp" "$dir/env"
    say "wrote $dir/env (TEST_POSTGRES_URL=$url)"
}

stop_services() {
    local dir=$1 data bin
    if [ ! -d "$dir" ]; then
        say "nothing to stop: $dir does not exist"
        return
    fi
    dir=$(cd "$dir" && pwd)
    data="$dir/postgres"
    if [ -f "$data/PG_VERSION" ]; then
        bin=$(pg_bindir)
        if pg_running "$bin" "$data"; then
            as_owner "$bin/pg_ctl" -D "$data" -m fast -w -t 60 stop >/dev/null
            say "PostgreSQL in $data stopped"
        else
            say "PostgreSQL in $data is not running"
        fi
    else
        say "no PostgreSQL cluster in $dir"
    fi
    rm -f "$dir/env" "$dir/postgres.port"
}

status_services() {
    local dir=$1 data
    data="$dir/postgres"
    if [ -f "$data/PG_VERSION" ] && pg_running "$(pg_bindir)" "$data"; then
        echo "postgres: running ($(cat "$dir/postgres.port" 2>/dev/null || echo 'port unknown'))"
    else
        echo "postgres: stopped"
        return 1
    fi
}

[ $# -ge 1 ] || usage
case "$1" in
    start)
        [ $# -eq 3 ] || usage
        case "$2" in
            postgres) start_postgres "$3" ;;
            *) die "unknown service '$2' (known: postgres)" ;;
        esac
        ;;
    stop)
        [ $# -eq 2 ] || usage
        stop_services "$2"
        ;;
    status)
        [ $# -eq 2 ] || usage
        status_services "$2"
        ;;
    *) usage ;;
esac
