#!/usr/bin/env bash
# The scrub's re-hash rate: fill a data directory with 64 blobs of 16 MiB through a running
# berth, stop it, then time `berth fsck --all` with 1, 2 and 4 jobs.
#
#   scripts/bench-fsck.sh [--blobs N] [--size-mib M]
#
# BENCH_BIN=path/to/berth uses that binary instead of building target/release/berth.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

blobs=64
size_mib=16
while [ $# -gt 0 ]; do
    case "$1" in
        --blobs) blobs=${2:?}; shift 2 ;;
        --size-mib) size_mib=${2:?}; shift 2 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
bin=${BENCH_BIN:-}
if [ -z "$bin" ]; then
    cargo build --release -p berth >&2
    bin=target/release/berth
fi
with_scratch
port=$(free_port)
"$bin" serve --listen "127.0.0.1:$port" --data-dir "$work/data" >"$work/server.log" 2>&1 &
pids+=($!)
wait_up "127.0.0.1:$port"
for i in $(seq "$blobs"); do
    head -c "$((size_mib << 20))" /dev/urandom >"$work/blob"
    d=sha256:$(sha256sum "$work/blob" | cut -d' ' -f1)
    curl -fsS -X POST --data-binary "@$work/blob" -H 'Content-Type: application/octet-stream' \
        "http://127.0.0.1:$port/v2/bulk/blobs/uploads/?digest=$d" >/dev/null
done
rm -f "$work/blob"
kill "${pids[0]}"
wait "${pids[0]}" 2>/dev/null || true
pids=()
total_mib=$((blobs * size_mib))
echo "berth fsck --all over $blobs blobs, $total_mib MiB ($(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg))"
for jobs in 1 2 4; do
    start=$(date +%s.%N)
    "$bin" fsck --data-dir "$work/data" --all --jobs "$jobs" >"$work/fsck.out" 2>"$work/fsck.err"
    end=$(date +%s.%N)
    python3 -c "import sys; s=float(sys.argv[2])-float(sys.argv[1]); print(f'--jobs {sys.argv[3]}: {s:.2f} s, {int(sys.argv[4])/s:.0f} MiB/s')" "$start" "$end" "$jobs" "$total_mib"
done
