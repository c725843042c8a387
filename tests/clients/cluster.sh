#!/usr/bin/env bash
# Real clients against a berth cluster: three `berth serve` nodes on loopback sharing one
# PostgreSQL database and one S3 bucket (Ceph RGW), behind nginx as the load balancer.
#
#   tests/clients/cluster.sh --berth-bin target/debug/berth
#
# Needs the shared services' variables (TEST_POSTGRES_URL, TEST_S3_*): start them with
#   scripts/services.sh start all DIR && . DIR/env
# It creates a database and a key prefix of its own, starts the nodes and nginx (private prefix,
# loopback only), runs tests/clients/run.sh through nginx (docker, skopeo, ORAS) including a
# docker push during which the node serving it is killed, and checks that the surviving nodes
# answer the catalog and tag lists identically. It stops only what it started.
#
# Options: --keep (keep the work directory), --verbose. CI=true: a missing tool is a failure.
# The last line of output is "N passed, M failed"; the exit status is non-zero when M > 0.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
source "$HERE/lib.sh"

BERTH_BIN=""
KEEP=""
while [ $# -gt 0 ]; do
    case "$1" in
        --berth-bin) BERTH_BIN=${2:?--berth-bin needs a path}; shift 2 ;;
        --keep) KEEP=1; shift ;;
        --verbose|-v) VERBOSE=1; shift ;;
        -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1" ;;
    esac
done
[ -x "$BERTH_BIN" ] || die "give --berth-bin PATH to a built berth binary"
BERTH_BIN=$(cd "$(dirname "$BERTH_BIN")" && pwd)/$(basename "$BERTH_BIN")
for v in TEST_POSTGRES_URL TEST_S3_ENDPOINT TEST_S3_ACCESS_KEY TEST_S3_SECRET_KEY TEST_S3_BUCKET TEST_S3_REGION; do
    [ -n "${!v:-}" ] || die "$v is not set: run scripts/services.sh start all DIR and source DIR/env"
done
export NO_PROXY="127.0.0.1,localhost${NO_PROXY:+,$NO_PROXY}" no_proxy="127.0.0.1,localhost${no_proxy:+,$no_proxy}"
export VERBOSE

WORK=$(mktemp -d "${TMPDIR:-/tmp}/berth-cluster.XXXXXX")
LOGS=$WORK/logs
mkdir -p "$LOGS"
RUN_START=$(date +%s)
cleanup() {
    local rc=$?
    set +e
    stop_started >/dev/null
    if [ -n "$KEEP" ] || [ "$FAILED" -gt 0 ] || [ "$rc" -ne 0 ]; then
        say "work directory kept: $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "== checking tools: nginx psql curl jq"
MISSING=$("$HERE/install.sh" tools nginx psql curl jq 2>"$LOGS/install.log") || true
MISSING=${MISSING#missing: }
[ -z "$MISSING" ] || { cat "$LOGS/install.log" >&2; die "required tools missing: $MISSING"; }
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

# ------------------------------------------------------------------ the cluster

NODES=3
DB="cluster_$(date +%s)_$$"
PREFIX="cluster-$(date +%s)-$$"
NODE_FILE=$WORK/nodes          # "PID HOST:PORT" per running node, for run.sh
LB=""

create_database() {
    t psql -X -v ON_ERROR_STOP=1 "$TEST_POSTGRES_URL" -c "CREATE DATABASE $DB"
}

write_config() {
    cat >"$WORK/berth.yaml" <<EOF
database:
  driver: postgres
  postgres:
    url: ${TEST_POSTGRES_URL%/*}/$DB
storage:
  driver: s3
  s3:
    endpoint: $TEST_S3_ENDPOINT
    bucket: $TEST_S3_BUCKET
    region: $TEST_S3_REGION
    path_style: true
    prefix: $PREFIX
    part_size: 8MiB
EOF
    t "$BERTH_BIN" config check "$WORK/berth.yaml"
}

start_nodes() {
    : >"$NODE_FILE"
    local i port
    for ((i = 0; i < NODES; i++)); do
        port=$(free_port)
        mkdir -p "$WORK/node$i"
        # Credentials through the environment, as a deployment passes secrets.
        start_bg "berth-node$i" "$WORK/node$i.log" env NO_COLOR=1 \
            BERTH_STORAGE__S3__ACCESS_KEY_ID="$TEST_S3_ACCESS_KEY" BERTH_STORAGE__S3__SECRET_ACCESS_KEY="$TEST_S3_SECRET_KEY" \
            "$BERTH_BIN" serve --config "$WORK/berth.yaml" --listen "127.0.0.1:$port" --data-dir "$WORK/node$i"
        wait_until 30 "$LAST_PID" "berth node $i" curl -fsS -o /dev/null "http://127.0.0.1:$port/readyz" \
            || { tail -n 30 "$WORK/node$i.log"; return 1; }
        echo "$LAST_PID 127.0.0.1:$port" >>"$NODE_FILE"
    done
    cat "$NODE_FILE"
}

start_nginx() {
    local port pid addr servers=""
    port=$(free_port)
    while read -r pid addr; do servers="$servers $addr"; done <"$NODE_FILE"
    mkdir -p "$WORK/nginx/logs" "$WORK/nginx/tmp"
    # The documented example itself (deploy/nginx/berth.conf), with its upstream pointed at our
    # nodes and its listen address on loopback; only the process-level settings are ours.
    # shellcheck disable=SC2086  # $servers: one argument per node
    python3 "$HERE/nginx-conf.py" "$HERE/../../deploy/nginx/berth.conf" "$port" $servers >"$WORK/nginx/berth.conf"
    cat >"$WORK/nginx/nginx.conf" <<EOF
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/logs/error.log warn;
events { worker_connections 1024; }
http {
    access_log $WORK/nginx/logs/access.log;
    client_body_temp_path $WORK/nginx/tmp/body;
    proxy_temp_path $WORK/nginx/tmp/proxy;
    fastcgi_temp_path $WORK/nginx/tmp/fastcgi;
    uwsgi_temp_path $WORK/nginx/tmp/uwsgi;
    scgi_temp_path $WORK/nginx/tmp/scgi;
    include $WORK/nginx/berth.conf;
}
EOF
    grep -E "^\s*(server|listen) " "$WORK/nginx/berth.conf"
    t "$NGINX" -t -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf"
    start_bg nginx "$WORK/nginx/stderr.log" "$NGINX" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -g 'daemon off;'
    wait_until 15 "$LAST_PID" nginx curl -fsS -o /dev/null "http://127.0.0.1:$port/v2/" || { cat "$WORK/nginx/logs/error.log"; return 1; }
    echo "127.0.0.1:$port" >"$WORK/lb"
}

step "cluster: create a database of its own" create_database
step "cluster: write and check the node config (S3 + PostgreSQL)" write_config
step "cluster: start $NODES berth nodes" start_nodes
[ "$STEP_OK" = 1 ] || die "the cluster did not start"
step "cluster: start nginx in front of them" start_nginx
[ "$STEP_OK" = 1 ] || die "nginx did not start"
LB=$(cat "$WORK/lb")   # steps run in subshells: the address comes back through a file

# ------------------------------------------------------------------ real clients through nginx

say ""
say "== real clients through nginx ($LB)"
clients_rc=0
# Node logs are separate files; run.sh shows the first one's lines on a failing step.
"$HERE/run.sh" --url "$LB" --only docker,skopeo,oras --kill-during-push "$NODE_FILE" \
    --registry-log "$WORK/node0.log" ${VERBOSE:+--verbose} 2>&1 | tee "$LOGS/run.log" || clients_rc=$?
client_summary=$(tail -n 1 "$LOGS/run.log")

# ------------------------------------------------------------------ the nodes agree

survivors_agree() {
    local pid addr first="" body path
    for path in "/v2/_catalog?n=1000" ; do
        first=""
        while read -r pid addr; do
            kill -0 "$pid" 2>/dev/null || { echo "node $addr is down (killed by the chaos step)"; continue; }
            body=$(curl -fsS "http://$addr$path")
            [ -n "$first" ] || first=$body
            assert_eq "$body" "$first" "$path is the same on $addr"
        done <"$NODE_FILE"
        echo "$first" | jq -e '.repositories | length > 0' >/dev/null
    done
    local repo
    for repo in $(echo "$first" | jq -r '.repositories[]'); do
        first=""
        while read -r pid addr; do
            kill -0 "$pid" 2>/dev/null || continue
            body=$(curl -fsS "http://$addr/v2/$repo/tags/list")
            [ -n "$first" ] || first=$body
            assert_eq "$body" "$first" "tags of $repo are the same on $addr"
        done <"$NODE_FILE"
    done
}

killed_node_seen() {
    local pid addr dead=0
    while read -r pid addr; do kill -0 "$pid" 2>/dev/null || dead=$((dead + 1)); done <"$NODE_FILE"
    assert_eq "$dead" 1 "exactly one node was killed during the push"
    grep -E '" 50[0-9] ' "$WORK/nginx/logs/access.log" | tail -n 5 || echo "(no 5xx in nginx's log)"
}

step "cluster: the surviving nodes list the same repositories and tags" survivors_agree
step "cluster: one node died during the docker push" killed_node_seen

say ""
say "== cluster done in $(($(date +%s) - RUN_START))s: clients $client_summary; cluster checks $PASSED passed, $FAILED failed"
if [ "$clients_rc" -ne 0 ]; then
    FAILED=$((FAILED + 1))
    warn "real clients through nginx failed: $client_summary"
fi
say "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
