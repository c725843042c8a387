#!/usr/bin/env bash
# Shared test services, started once per test run: loopback only, private state under DIR, and
# `stop` stops only what `start` started there (pg_ctl on DIR's own data directory, the Ceph
# daemons by the PIDs recorded in DIR/rgw).
#
#   scripts/services.sh start postgres DIR   private PostgreSQL cluster in DIR; writes DIR/env
#   scripts/services.sh start rgw DIR        private Ceph RADOS Gateway (S3) in RAM; writes DIR/env
#   scripts/services.sh start all DIR        both, started side by side
#   scripts/services.sh stop DIR             stop every service started in DIR (keeps DIR)
#   scripts/services.sh status DIR           say what runs in DIR (exit 1 when nothing does)
#
# DIR/env is a shell file to `source`; it exports, for each running service,
#   postgres: TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:PORT/berth
#   rgw:      TEST_S3_ENDPOINT=http://127.0.0.1:PORT     TEST_S3_ENDPOINT_B=http://127.0.0.1:PORT2
#             (a second gateway on the same cluster: a multipart upload started on one gateway
#             can be finished on the other), TEST_S3_ACCESS_KEY, TEST_S3_SECRET_KEY,
#             TEST_S3_BUCKET=berth-test (created empty), TEST_S3_REGION=us-east-1
# Each service writes its own DIR/env.<service>; DIR/env is their concatenation.
# Both commands are idempotent: starting a running service only rewrites DIR/env, stopping a
# stopped one does nothing.
set -euo pipefail

usage() {
    echo "usage: $0 start postgres|rgw|all DIR | stop DIR | status DIR" >&2
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

# DIR/env.<service> from stdin, then DIR/env as the concatenation of every DIR/env.*: services
# started side by side (`start all`) each add their part. The lock keeps one merge from
# overwriting another that saw a different set of parts.
write_env() {
    local dir=$1 service=$2
    cat >"$dir/env.$service.tmp"
    mv "$dir/env.$service.tmp" "$dir/env.$service"
    merge_env "$dir"
}

merge_env() {
    local dir=$1 f
    (
        flock 9
        : >"$dir/env.tmp"
        for f in "$dir"/env.postgres "$dir"/env.rgw; do
            if [ -f "$f" ]; then cat "$f" >>"$dir/env.tmp"; fi
        done
        if [ -s "$dir/env.tmp" ]; then mv "$dir/env.tmp" "$dir/env"; else rm -f "$dir/env.tmp" "$dir/env"; fi
    ) 9>"$dir/env.lock"
}

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
    printf 'export TEST_POSTGRES_URL=%s\n' "$url" | write_env "$dir" postgres
    say "wrote $dir/env (TEST_POSTGRES_URL=$url)"
}

# ---- rgw: a one-node Ceph cluster (one monitor, one OSD on memstore, no mgr) and two gateways.
#
# Everything lives in DIR/rgw: ceph.conf, the monitor's store, the OSD's (empty: memstore keeps
# the objects in RAM), pid files, admin sockets and logs. Nothing survives a stop (memstore), so
# every start that does not find the cluster running builds a new one from scratch.
# Auth is off inside the cluster (loopback only, disposable data); the gateways still check S3
# signatures against the user created below.

RGW_BUCKET=berth-test
RGW_REGION=us-east-1
# Every daemon of the cluster, by its Ceph name.
RGW_DAEMONS="mon.a osd.0 client.rgw.a client.rgw.b"

# The Ceph binaries, installing the packages when missing.
ceph_tools() {
    local t missing=""
    for t in ceph ceph-mon ceph-osd monmaptool radosgw radosgw-admin; do
        command -v "$t" >/dev/null 2>&1 || missing="$missing $t"
    done
    [ -n "$missing" ] || return 0
    [ "$(id -u)" = 0 ] || die "Ceph binaries missing:$missing; install them (apt-get install radosgw ceph-mon ceph-osd) or run as root"
    say "Ceph missing ($missing ): installing it with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q --no-install-recommends radosgw ceph-mon ceph-osd >&2; then
        apt-get update -q >&2
        apt-get install -y -q --no-install-recommends radosgw ceph-mon ceph-osd >&2
    fi
    for t in ceph ceph-mon ceph-osd monmaptool radosgw radosgw-admin; do
        command -v "$t" >/dev/null 2>&1 || die "Ceph installed but $t not found"
    done
}

# DIR as an absolute path, created.
abs_dir() {
    local dir=$1
    case "$dir" in /*) ;; *) dir="$PWD/$dir" ;; esac
    case "$dir" in *[[:space:]]*) die "DIR must not contain whitespace: '$dir'" ;; esac
    mkdir -p "$dir"
    (cd "$dir" && pwd)
}

# The PID recorded for daemon $2 (mon.a, osd.0, client.rgw.a, ...) in rgw dir $1, if that process
# still runs with our ceph.conf: a recycled PID is never taken for ours.
rgw_pid() {
    local rdir=$1 name=$2 pid
    pid=$(sed -n "s/^$name //p" "$rdir/pids" 2>/dev/null | tail -n 1)
    [ -n "$pid" ] || return 1
    [ -r "/proc/$pid/cmdline" ] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "-c $rdir/ceph.conf" || return 1
    echo "$pid"
}

# The last lines of a log, for an error message.
log_tail() {
    [ -f "$1" ] || return 0
    printf -- '--- last lines of %s\n' "$1" >&2
    tail -n 25 "$1" >&2 || true
}

# The conf of the cluster in rgw dir $1; ports of the monitor, gateway a and gateway b; fsid.
write_ceph_conf() {
    local rdir=$1 monport=$2 porta=$3 portb=$4 fsid=$5
    cat >"$rdir/ceph.conf.tmp" <<EOF
# Written by scripts/services.sh: a disposable one-node cluster on loopback.
[global]
fsid = $fsid
mon host = v2:127.0.0.1:$monport
# Every daemon on loopback, IPv4 only.
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind ipv4 = true
ms bind ipv6 = false
# No cephx: loopback only, throwaway data, and no keyring files to make or find.
auth cluster required = none
auth service required = none
auth client required = none
keyring = /dev/null
# One OSD: pools of one replica, few PGs, no autoscaler (there is no mgr).
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon max pg per osd = 1000
# All state, sockets and logs in this directory, never under /var or /run.
run dir = $rdir/run
log file = $rdir/log/\$name.log
pid file = $rdir/run/\$name.pid
crash dir = $rdir/crash
mon data = $rdir/mon/\$name
osd data = $rdir/osd/\$name
rgw data = $rdir/rgw-data/\$name

[mon]
admin socket = $rdir/run/\$name.asok
# A taken port fails at once (not 3 tries 5 s apart): the caller retries on a new port.
ms bind retry count = 1

[osd]
admin socket = $rdir/run/\$name.asok
# Objects in RAM: fast, and nothing to clean up on disk.
osd objectstore = memstore
memstore device bytes = 2147483648

[client.rgw.a]
admin socket = $rdir/run/\$name.asok
# tcp_nodelay: without it every GET answer waits ~40 ms (Nagle against the client's delayed
# ACK between the response head and a small body).
rgw frontends = beast endpoint=127.0.0.1:$porta tcp_nodelay=1
# Without these two, radosgw loops forever on auth error -13 (auth is off).
ms mon client mode = crc
ms client mode = crc

[client.rgw.b]
admin socket = $rdir/run/\$name.asok
rgw frontends = beast endpoint=127.0.0.1:$portb tcp_nodelay=1
ms mon client mode = crc
ms client mode = crc
EOF
    mv "$rdir/ceph.conf.tmp" "$rdir/ceph.conf"
}

# The `ceph` CLI against our cluster; never waits forever for the monitor.
ceph_cli() {
    timeout 60 ceph -c "$RDIR/ceph.conf" --connect-timeout 30 "$@"
}

# Record daemon $1's PID from its pid file (the daemons fork into the background and write it),
# waiting at most 10 s for it.
record_pid() {
    local name=$1 pid="" _
    for _ in $(seq 100); do
        pid=$(cat "$RDIR/run/$name.pid" 2>/dev/null || true)
        [ -n "$pid" ] && break
        sleep 0.1
    done
    [ -n "$pid" ] || { log_tail "$RDIR/log/$name.log"; die "$name wrote no pid file ($RDIR/run/$name.pid)"; }
    echo "$name $pid" >>"$RDIR/pids"
}

# Start gateway $1 (a or b) on port $2. Succeeds once it answers HTTP; fails (status 1) when it
# exited because the port was taken; dies on anything else.
start_gateway() {
    local id=$1 port=$2 name=client.rgw.$1 code _
    rm -f "$RDIR/run/$name.pid"
    : >"$RDIR/log/$name.log"
    radosgw -n "$name" -c "$RDIR/ceph.conf" >>"$RDIR/log/$name.out" 2>&1 \
        || { log_tail "$RDIR/log/$name.out"; log_tail "$RDIR/log/$name.log"; die "radosgw $name did not start"; }
    record_pid "$name"
    # The first gateway creates the RGW pools before it listens: give it 120 s.
    for _ in $(seq 1200); do
        code=$(curl -s -o /dev/null -m 2 -w '%{http_code}' "http://127.0.0.1:$port/" 2>/dev/null || true)
        # Anonymous GET / answers an empty ListAllMyBuckets (200) or AccessDenied (403).
        case "$code" in 200|403) return 0 ;; esac
        if ! rgw_pid "$RDIR" "$name" >/dev/null; then
            if grep -qi 'address already in use' "$RDIR/log/$name.log" "$RDIR/log/$name.out" 2>/dev/null; then
                return 1
            fi
            log_tail "$RDIR/log/$name.out"
            log_tail "$RDIR/log/$name.log"
            die "radosgw $name exited (log: $RDIR/log/$name.log)"
        fi
        sleep 0.1
    done
    log_tail "$RDIR/log/$name.log"
    die "radosgw $name did not answer on 127.0.0.1:$port within 120 s (log: $RDIR/log/$name.log)"
}

# A SigV4-signed PUT /BUCKET with only the Python standard library (boto3 may be missing).
# Succeeds when the bucket was created or is already ours.
#   s3_create_bucket ENDPOINT BUCKET ACCESS_KEY SECRET_KEY REGION
s3_create_bucket() {
    python3 - "$@" <<'PYTHON'
import datetime, hashlib, hmac, http.client, sys

endpoint, bucket, access, secret, region = sys.argv[1:6]
host = endpoint.split("://", 1)[1].rstrip("/")
amz_date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
date = amz_date[:8]
payload_hash = hashlib.sha256(b"").hexdigest()
signed_headers = "host;x-amz-content-sha256;x-amz-date"
canonical_request = "\n".join([
    "PUT", "/" + bucket, "",
    f"host:{host}\nx-amz-content-sha256:{payload_hash}\nx-amz-date:{amz_date}\n",
    signed_headers, payload_hash,
])
scope = f"{date}/{region}/s3/aws4_request"
string_to_sign = "\n".join([
    "AWS4-HMAC-SHA256", amz_date, scope,
    hashlib.sha256(canonical_request.encode()).hexdigest(),
])
key = ("AWS4" + secret).encode()
for part in (date, region, "s3", "aws4_request"):
    key = hmac.new(key, part.encode(), hashlib.sha256).digest()
signature = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
conn = http.client.HTTPConnection(host, timeout=30)
conn.request("PUT", "/" + bucket, body=b"", headers={
    "x-amz-date": amz_date,
    "x-amz-content-sha256": payload_hash,
    "Authorization": f"AWS4-HMAC-SHA256 Credential={access}/{scope}, "
                     f"SignedHeaders={signed_headers}, Signature={signature}",
})
resp = conn.getresponse()
body = resp.read().decode(errors="replace")
if resp.status == 200 or (resp.status == 409 and "BucketAlreadyOwnedByYou" in body):
    sys.exit(0)
print(f"PUT /{bucket}: HTTP {resp.status}: {body}", file=sys.stderr)
sys.exit(1)
PYTHON
}

# The PIDs among $@ that still run.
alive_pids() {
    local pid
    for pid in "$@"; do
        if kill -0 "$pid" 2>/dev/null; then echo "$pid"; fi
    done
}

# SIGTERM to the PIDs $@ (processes we started), then wait until they are gone: they are not our
# children (they forked away), so poll. 20 s, then SIGKILL (the data is disposable anyway).
terminate() {
    local pids=("$@") _
    [ ${#pids[@]} -gt 0 ] || return 0
    kill "${pids[@]}" 2>/dev/null || true
    for _ in $(seq 200); do
        mapfile -t pids < <(alive_pids "${pids[@]}")
        [ ${#pids[@]} -gt 0 ] || return 0
        sleep 0.1
    done
    say "Ceph daemons ${pids[*]} ignored SIGTERM for 20 s: killing them"
    kill -KILL "${pids[@]}" 2>/dev/null || true
    for _ in $(seq 50); do
        mapfile -t pids < <(alive_pids "${pids[@]}")
        [ ${#pids[@]} -gt 0 ] || return 0
        sleep 0.1
    done
    die "Ceph daemons ${pids[*]} survived SIGKILL"
}

# Stop the daemons recorded in rgw dir $1 (only those still running with our conf): the gateways,
# then the OSD, then the monitor. In that order each stops at once; an OSD whose monitor is gone
# first waits 5 s to report its shutdown.
stop_rgw_daemons() {
    local rdir=$1 group name pid pids
    [ -f "$rdir/pids" ] || return 0
    for group in "client.rgw.a client.rgw.b" osd.0 mon.a; do
        pids=()
        for name in $group; do
            if pid=$(rgw_pid "$rdir" "$name"); then pids+=("$pid"); fi
        done
        terminate "${pids[@]}"
    done
    rm -f "$rdir/pids"
}

# Whether every daemon of the cluster in rgw dir $1 runs.
rgw_running() {
    local rdir=$1 name
    [ -f "$rdir/state" ] || return 1
    for name in $RGW_DAEMONS; do
        rgw_pid "$rdir" "$name" >/dev/null || return 1
    done
}

start_rgw() {
    local dir monport porta portb fsid osd_uuid osd_id access secret tries id port _
    dir=$(abs_dir "$1")
    RDIR="$dir/rgw"
    # Admin sockets are Unix sockets (~107 bytes): "$RDIR/run/client.rgw.a.asok" must fit.
    [ $((${#dir} + 30)) -le 100 ] || die "DIR path too long for a Unix socket ($dir); choose a shorter DIR (e.g. under /tmp)"
    ceph_tools
    if rgw_running "$RDIR"; then
        # shellcheck source=/dev/null
        . "$RDIR/state"
        say "RGW already running in $RDIR on 127.0.0.1:$porta and 127.0.0.1:$portb"
    else
        # Whatever is left of an earlier cluster goes (memstore lost its objects anyway).
        stop_rgw_daemons "$RDIR"
        rm -rf "$RDIR"
        mkdir -p "$RDIR/run" "$RDIR/log" "$RDIR/mon/mon.a" "$RDIR/osd/osd.0" "$RDIR/crash" "$RDIR/rgw-data"
        fsid=$(cat /proc/sys/kernel/random/uuid)
        access=$(od -An -N10 -tx1 /dev/urandom | tr -d ' \n' | tr a-f A-F)
        secret=$(od -An -N20 -tx1 /dev/urandom | tr -d ' \n')
        porta=0 portb=0

        # The monitor. Its address is in the monmap: when another process takes the port
        # between free_port and bind, make a new monmap and store on a new port (a few times).
        tries=0
        while :; do
            monport=$(free_port)
            tries=$((tries + 1))
            write_ceph_conf "$RDIR" "$monport" "$porta" "$portb" "$fsid"
            rm -rf "$RDIR/mon/mon.a" "$RDIR/monmap" "$RDIR/run/mon.a.pid"
            mkdir -p "$RDIR/mon/mon.a"
            monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$monport]" "$RDIR/monmap" >"$RDIR/log/monmaptool.out" 2>&1 \
                || { log_tail "$RDIR/log/monmaptool.out"; die "monmaptool failed"; }
            ceph-mon --mkfs -i a --monmap "$RDIR/monmap" -c "$RDIR/ceph.conf" >"$RDIR/log/mon.a.mkfs.out" 2>&1 \
                || { log_tail "$RDIR/log/mon.a.mkfs.out"; die "ceph-mon --mkfs failed"; }
            # Forks into the background once it listens; exits non-zero when it cannot bind.
            if ceph-mon -i a -c "$RDIR/ceph.conf" >"$RDIR/log/mon.a.out" 2>&1; then
                break
            fi
            if [ "$tries" -ge 3 ] || ! grep -qi 'address already in use' "$RDIR/log/mon.a.out" "$RDIR/log/mon.a.log" 2>/dev/null; then
                log_tail "$RDIR/log/mon.a.out"
                log_tail "$RDIR/log/mon.a.log"
                die "ceph-mon did not start (log: $RDIR/log/mon.a.log)"
            fi
            say "monitor on port $monport failed; retrying"
        done
        record_pid mon.a
        say "Ceph monitor up on 127.0.0.1:$monport"

        # The OSD: registered, placed in the CRUSH map under a host bucket, then started.
        osd_uuid=$(cat /proc/sys/kernel/random/uuid)
        osd_id=$(ceph_cli osd new "$osd_uuid" 2>"$RDIR/log/osd-new.out") \
            || { log_tail "$RDIR/log/osd-new.out"; log_tail "$RDIR/log/mon.a.log"; die "ceph osd new failed"; }
        [ "$osd_id" = 0 ] || die "expected OSD id 0 from 'ceph osd new', got '$osd_id'"
        ceph-osd -i 0 --mkfs --osd-uuid "$osd_uuid" -c "$RDIR/ceph.conf" >"$RDIR/log/osd.0.mkfs.out" 2>&1 \
            || { log_tail "$RDIR/log/osd.0.mkfs.out"; die "ceph-osd --mkfs failed"; }
        {
            ceph_cli osd crush add-bucket localhost host
            ceph_cli osd crush move localhost root=default
            ceph_cli osd crush add osd.0 1.0 host=localhost
        } >"$RDIR/log/crush.out" 2>&1 || { log_tail "$RDIR/log/crush.out"; die "CRUSH setup failed"; }
        rm -f "$RDIR/run/osd.0.pid"
        ceph-osd -i 0 -c "$RDIR/ceph.conf" >"$RDIR/log/osd.0.out" 2>&1 \
            || { log_tail "$RDIR/log/osd.0.out"; log_tail "$RDIR/log/osd.0.log"; die "ceph-osd did not start"; }
        record_pid osd.0
        for _ in $(seq 300); do
            ceph_cli osd stat 2>/dev/null | grep -q ' 1 up' && break
            rgw_pid "$RDIR" osd.0 >/dev/null || { log_tail "$RDIR/log/osd.0.log"; die "ceph-osd exited (log: $RDIR/log/osd.0.log)"; }
            sleep 0.2
        done
        ceph_cli osd stat 2>/dev/null | grep -q ' 1 up' \
            || { log_tail "$RDIR/log/osd.0.log"; die "the OSD did not come up within 60 s (log: $RDIR/log/osd.0.log)"; }
        say "Ceph OSD up (memstore)"

        # The gateways, one after the other (the first creates the pools). When another process
        # takes the port between free_port and bind: a new port, a few times.
        for id in a b; do
            tries=0
            while :; do
                tries=$((tries + 1))
                port=$(free_port)
                if [ "$id" = a ]; then porta=$port; else portb=$port; fi
                write_ceph_conf "$RDIR" "$monport" "$porta" "$portb" "$fsid"
                start_gateway "$id" "$port" && break
                [ "$tries" -lt 3 ] || { log_tail "$RDIR/log/client.rgw.$id.log"; die "radosgw $id could not bind a port"; }
                # Rare, and then only slower: the dead gateway's watches stay until the OSD times
                # them out (30 s), and metadata writes (user create) wait for it meanwhile.
                say "gateway $id: port $port taken; retrying"
            done
        done
        say "RGW gateways up on 127.0.0.1:$porta and 127.0.0.1:$portb"

        timeout 60 radosgw-admin -c "$RDIR/ceph.conf" user create --uid=test --display-name=test \
            --access-key="$access" --secret-key="$secret" >"$RDIR/log/user-create.out" 2>&1 \
            || { log_tail "$RDIR/log/user-create.out"; die "radosgw-admin user create failed"; }
        s3_create_bucket "http://127.0.0.1:$porta" "$RGW_BUCKET" "$access" "$secret" "$RGW_REGION" \
            || { log_tail "$RDIR/log/client.rgw.a.log"; die "could not create bucket $RGW_BUCKET"; }
        printf 'monport=%s\nporta=%s\nportb=%s\naccess=%s\nsecret=%s\n' \
            "$monport" "$porta" "$portb" "$access" "$secret" >"$RDIR/state"
        say "RGW started in $RDIR: bucket $RGW_BUCKET, user test"
    fi
    {
        printf 'export TEST_S3_ENDPOINT=http://127.0.0.1:%s\n' "$porta"
        printf 'export TEST_S3_ENDPOINT_B=http://127.0.0.1:%s\n' "$portb"
        printf 'export TEST_S3_ACCESS_KEY=%s\n' "$access"
        printf 'export TEST_S3_SECRET_KEY=%s\n' "$secret"
        printf 'export TEST_S3_BUCKET=%s\n' "$RGW_BUCKET"
        printf 'export TEST_S3_REGION=%s\n' "$RGW_REGION"
    } | write_env "$dir" rgw
    say "wrote $dir/env (TEST_S3_ENDPOINT=http://127.0.0.1:$porta, TEST_S3_ENDPOINT_B=http://127.0.0.1:$portb)"
}

# Both services side by side (PostgreSQL's start overlaps Ceph's), each in a subshell so that
# one failing still lets the other finish before we report.
start_all() {
    local dir=$1 pg=0 rgw=0 rgw_job
    ( start_rgw "$dir" ) &
    rgw_job=$!
    ( start_postgres "$dir" ) || pg=$?
    wait "$rgw_job" || rgw=$?
    [ "$pg" = 0 ] || die "PostgreSQL did not start"
    [ "$rgw" = 0 ] || die "RGW did not start"
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
    if [ -f "$dir/rgw/pids" ]; then
        stop_rgw_daemons "$dir/rgw"
        say "RGW in $dir/rgw stopped"
    else
        say "no RGW running in $dir"
    fi
    # A stopped cluster cannot be restarted (memstore): only its logs stay, for a post-mortem.
    rm -f "$dir/rgw/state"
    rm -f "$dir/env" "$dir/env.postgres" "$dir/env.rgw" "$dir/env.lock" "$dir/postgres.port"
}

status_services() {
    local dir=$1 data up=0 ports
    data="$dir/postgres"
    if [ -f "$data/PG_VERSION" ] && pg_running "$(pg_bindir)" "$data"; then
        echo "postgres: running ($(cat "$dir/postgres.port" 2>/dev/null || echo 'port unknown'))"
        up=1
    else
        echo "postgres: stopped"
    fi
    if [ -d "$dir/rgw" ] && rgw_running "$(cd "$dir/rgw" && pwd)"; then
        ports=$(sed -n 's/^port[ab]=//p' "$dir/rgw/state" | paste -sd ' ')
        echo "rgw: running (gateways on ports $ports)"
        up=1
    else
        echo "rgw: stopped"
    fi
    [ "$up" = 1 ]
}

[ $# -ge 1 ] || usage
case "$1" in
    start)
        [ $# -eq 3 ] || usage
        case "$2" in
            postgres) start_postgres "$3" ;;
            rgw) start_rgw "$3" ;;
            all) start_all "$3" ;;
            *) die "unknown service '$2' (known: postgres, rgw, all)" ;;
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
