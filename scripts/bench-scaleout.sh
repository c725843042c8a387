#!/usr/bin/env bash
# Scale-out benchmark: one berth node on S3 (Ceph RGW) + PostgreSQL against one on the embedded
# default (filesystem + SQLite), same workloads, one run; then the storage calls each kind of
# request makes on S3, read from the node's own metrics.
#
#   scripts/bench-scaleout.sh [--repos 10000] [--large-mib 256] [extra berth-bench flags]
#
# Uses the services in the environment (TEST_POSTGRES_URL, TEST_S3_*) when set, else starts
# its own with scripts/services.sh (stopped on exit). Servers get free ports and are stopped by
# PID on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
REPOS=10000
LARGE=256
EXTRA=()
while [ $# -gt 0 ]; do
    case "$1" in
        --repos) REPOS=$2; shift 2 ;;
        --large-mib) LARGE=$2; shift 2 ;;
        *) EXTRA+=("$1"); shift ;;
    esac
done
cargo build --release -p berth >/dev/null
BIN=$PWD/target/release/berth
with_scratch
if [ -z "${TEST_S3_ENDPOINT:-}" ] || [ -z "${TEST_POSTGRES_URL:-}" ]; then
    svc=$(mktemp -d /tmp/berth-bench-svc.XXXXXX)
    trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; scripts/services.sh stop "$svc" >/dev/null 2>&1 || true; rm -rf "$work" "$svc"' EXIT
    scripts/services.sh start all "$svc" >&2
    # shellcheck source=/dev/null
    . "$svc/env"
fi
db="bench_$(date +%s)_$$"
psql -X -q -v ON_ERROR_STOP=1 "$TEST_POSTGRES_URL" -c "CREATE DATABASE $db"
cat >"$work/s3.yaml" <<EOF
database: {driver: postgres, postgres: {url: "${TEST_POSTGRES_URL%/*}/$db"}}
storage:
  driver: s3
  s3: {endpoint: "$TEST_S3_ENDPOINT", bucket: "$TEST_S3_BUCKET", region: "$TEST_S3_REGION", path_style: true,
       access_key_id: "$TEST_S3_ACCESS_KEY", secret_access_key: "$TEST_S3_SECRET_KEY", prefix: "bench-$db"}
log: {level: warn}
EOF
echo "log: {level: warn}" >"$work/fs.yaml"

start() { # NAME CONFIG -> sets $addr $pid
    local port
    port=$(free_port)
    mkdir -p "$work/$1"
    "$BIN" serve --config "$2" --listen "127.0.0.1:$port" --data-dir "$work/$1" >"$work/$1.log" 2>&1 &
    pid=$!
    pids+=("$pid")
    addr=127.0.0.1:$port
    wait_up "$addr" || { cat "$work/$1.log"; exit 1; }
}
start fs "$work/fs.yaml"; fs_addr=$addr fs_pid=$pid
start s3 "$work/s3.yaml"; s3_addr=$addr s3_pid=$pid

drop_caches() { sync; [ -w /proc/sys/vm/drop_caches ] && echo 3 >/proc/sys/vm/drop_caches || true; }
workloads=push-small,push-large,push-chunked,pull,catalog,manifest-get,blob-head
drop_caches
"$BIN" bench --url "http://$fs_addr" --pid "$fs_pid" --label "berth, filesystem + SQLite" --only "$workloads" --repos "$REPOS" --large-mib "$LARGE" "${EXTRA[@]}"
echo
drop_caches
"$BIN" bench --url "http://$s3_addr" --pid "$s3_pid" --label "berth, S3 (Ceph RGW, in RAM) + PostgreSQL" --only "$workloads" --repos "$REPOS" --large-mib "$LARGE" "${EXTRA[@]}"

# Storage calls per request, by kind of request, from the S3 node's own counters.
metric_sum() { # METRIC-PREFIX [LABEL-FILTER]
    curl -fsS "http://$s3_addr/metrics" | grep "^$1" | grep -- "${2:-}" | awk '{s += $NF} END {printf "%d", s}'
}
echo
echo "== storage calls per request on S3 (from registry_storage_action_seconds_count)"
for w in manifest-get blob-head pull push-small; do
    c0=$(metric_sum registry_storage_action_seconds_count)
    r0=$(metric_sum registry_http_requests_total)
    "$BIN" bench --url "http://$s3_addr" --only "$w" --duration 2s --images 50 --large-mib 32 >/dev/null
    c1=$(metric_sum registry_storage_action_seconds_count)
    r1=$(metric_sum registry_http_requests_total)
    python3 -c "import sys; c, r = $c1 - $c0, $r1 - $r0; print(f'  {sys.argv[1]:<13} {r:>8} requests {c:>7} storage calls  {c / max(r, 1):.4f} per request')" "$w"
done
echo "  (manifest-get and blob-head include the few requests that set up their image)"
