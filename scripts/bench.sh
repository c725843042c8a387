#!/usr/bin/env bash
# Run `berth bench` against berth and the reference registry (CNCF Distribution, Debian's
# docker-registry package) in one run, on loopback, and print both reports.
#
#   scripts/bench.sh [extra berth-bench flags, e.g. --large-mib 256 --duration 5s]
#
# Both servers get a fresh data directory and free ports; both are stopped (by PID) on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
command -v docker-registry >/dev/null || { apt-get install -y docker-registry >/dev/null || { apt-get update >/dev/null && apt-get install -y docker-registry >/dev/null; }; }
cargo build --release -p berth >/dev/null
BIN=target/release/berth
with_scratch

bp=$(free_port)
"$BIN" serve --listen "127.0.0.1:$bp" --data-dir "$work/berth" >"$work/berth.log" 2>&1 &
pids+=($!); berth_pid=$!
rp=$(free_port)
cat >"$work/registry.yml" <<YML
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $work/reference}, delete: {enabled: true}}
http: {addr: 127.0.0.1:$rp}
YML
docker-registry serve "$work/registry.yml" >"$work/reference.log" 2>&1 &
pids+=($!); ref_pid=$!
wait_up "127.0.0.1:$bp"; wait_up "127.0.0.1:$rp"

# On a VM, page-cache growth into untouched guest memory makes write-heavy runs noisy; give
# both registries the same start when we may (root).
drop_caches() { sync; [ -w /proc/sys/vm/drop_caches ] && echo 3 >/proc/sys/vm/drop_caches || true; }
drop_caches
"$BIN" bench --url "http://127.0.0.1:$rp" --pid "$ref_pid" --label "reference (Distribution $(dpkg-query -W -f '${Version}' docker-registry))" "$@"
echo
drop_caches
"$BIN" bench --url "http://127.0.0.1:$bp" --pid "$berth_pid" --label "berth $(git describe --always --dirty 2>/dev/null || echo dev)" "$@"
