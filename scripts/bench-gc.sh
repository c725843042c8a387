#!/usr/bin/env bash
# Garbage collection benchmark: berth's online collection against Distribution's offline
# `garbage-collect`, on the same data (N small blobs, half referenced by manifests of 100
# layers, half garbage), in one run. For berth it also measures a concurrent load (manifest
# GETs, blob HEADs, small-image pushes) with and without a collection running.
#
#   scripts/bench-gc.sh [--blobs 100000] [--no-reference]
#
# Servers get fresh data directories and free ports and are stopped by PID on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
BLOBS=100000
REFERENCE=1
while [ $# -gt 0 ]; do
    case "$1" in
        --blobs) BLOBS=$2; shift 2 ;;
        --no-reference) REFERENCE=0; shift ;;
        *) echo "usage: $0 [--blobs N] [--no-reference]" >&2; exit 2 ;;
    esac
done
command -v docker-registry >/dev/null || { apt-get install -y docker-registry >/dev/null || { apt-get update >/dev/null && apt-get install -y docker-registry >/dev/null; }; }
cargo build --release -p berth >/dev/null
BIN=$PWD/target/release/berth
with_scratch

now_s() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$(now_s)"; }

# ---- berth: fill, then collect online under load
bp=$(free_port)
"$BIN" serve --listen "127.0.0.1:$bp" --data-dir "$work/berth" >"$work/berth.log" 2>&1 &
pids+=($!); berth_pid=$!
wait_up "127.0.0.1:$bp"
echo "== berth: filling with $BLOBS blobs"
"$BIN" bench --url "http://127.0.0.1:$bp" --pid "$berth_pid" --label "berth fill" --only gc-fill --gc-blobs "$BLOBS" | grep -E "gc fill"
load() { # LABEL: a fixed mixed load; prints its figures
    "$BIN" bench --url "http://127.0.0.1:$bp" --pid "$berth_pid" --label "$1" --only manifest-get,blob-head,push-small --duration 3s --images 150 \
        | grep -E "small-image push|manifest GET|blob HEAD"
}
echo "== berth: load alone"
load "berth load, no collection"
echo "== berth: collection (grace 0s) with the same load running"
t0=$(now_s)
"$BIN" gc --data-dir "$work/berth" --grace 0s >"$work/gc.out" 2>"$work/gc.err" &
gc_pid=$!
load "berth load during collection"
wait "$gc_pid" || { cat "$work/gc.err" >&2; echo "berth gc failed" >&2; exit 1; }
echo "  berth gc: $(cat "$work/gc.out") (wall $(since "$t0") s from start to end, the load ran alongside)"
t0=$(now_s)
"$BIN" gc --data-dir "$work/berth" --grace 0s
echo "  a second berth gc with nothing left: $(since "$t0") s"

# ---- Distribution: fill, stop, garbage-collect offline
[ "$REFERENCE" = 1 ] || exit 0
rp=$(free_port)
cat >"$work/registry.yml" <<YML
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $work/reference}, delete: {enabled: true}}
http: {addr: 127.0.0.1:$rp}
YML
docker-registry serve "$work/registry.yml" >"$work/reference.log" 2>&1 &
ref_pid=$!
pids+=("$ref_pid")
wait_up "127.0.0.1:$rp"
echo "== Distribution $(dpkg-query -W -f '${Version}' docker-registry): filling with $BLOBS blobs"
"$BIN" bench --url "http://127.0.0.1:$rp" --pid "$ref_pid" --label "reference fill" --only gc-fill --gc-blobs "$BLOBS" | grep -E "gc fill"
kill "$ref_pid"
wait "$ref_pid" 2>/dev/null || true
echo "== Distribution: garbage-collect (the registry must be stopped)"
t0=$(now_s)
docker-registry garbage-collect "$work/registry.yml" >"$work/ref-gc.out" 2>&1
echo "  docker-registry garbage-collect: $(since "$t0") s; $(grep -c 'blob eligible for deletion' "$work/ref-gc.out" || true) blobs eligible"
