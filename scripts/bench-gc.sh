#!/usr/bin/env bash
# Garbage collection benchmark: berth's online collection against Distribution's offline
# `garbage-collect`, on the same data (N small blobs, half referenced by manifests of 100
# layers, half garbage), in one run. For berth it also measures a concurrent load (manifest
# GETs, blob HEADs, small-image pushes) with and without a collection running, with the
# collection run either way:
#
#   process: `berth gc --data-dir` as a second process on the server's data (on SQLite it
#            contends with the server for the database file lock);
#   server:  `berth gc --url`, i.e. `POST /admin/gc`: the server collects itself, through its
#            own write connection.
#
#   scripts/bench-gc.sh [--blobs 100000] [--mode both|process|server | --in-server]
#                       [--load-duration 3s] [--no-reference]
#
# BENCH_BIN=path/to/berth uses that binary instead of building target/release/berth.
#
# Each mode gets a freshly filled server. During the collection the load runs round after
# round until the collection ends, so every phase of it is sampled. The load alone runs once
# before the collection and once after it, and each round is reported against the mean of the
# two: on a shared machine the rate of one run of the load alone drifts by a fifth from one
# minute to the next, and bracketing the collection keeps that drift out of the percentages.
# Servers get fresh data directories and free ports and are stopped by PID on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
BLOBS=100000
REFERENCE=1
MODE=both
LOAD_DURATION=3s
while [ $# -gt 0 ]; do
    case "$1" in
        --blobs) BLOBS=$2; shift 2 ;;
        --mode) MODE=$2; shift 2 ;;
        --in-server) MODE=server; shift ;;
        --load-duration) LOAD_DURATION=$2; shift 2 ;;
        --no-reference) REFERENCE=0; shift ;;
        *) echo "usage: $0 [--blobs N] [--mode both|process|server | --in-server] [--load-duration 3s] [--no-reference]" >&2; exit 2 ;;
    esac
done
case "$MODE" in both) MODES="process server" ;; process|server) MODES=$MODE ;; *) echo "--mode: both, process or server" >&2; exit 2 ;; esac
command -v docker-registry >/dev/null || { apt-get install -y docker-registry >/dev/null || { apt-get update >/dev/null && apt-get install -y docker-registry >/dev/null; }; }
# BENCH_BIN: a berth binary to use instead of building one.
if [ -n "${BENCH_BIN:-}" ]; then BIN=$BENCH_BIN; else cargo build --release -p berth >/dev/null; BIN=$PWD/target/release/berth; fi
with_scratch

now_s() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$(now_s)"; }
machine() { echo "  machine: $(uptime | sed 's/.*load average/load average/'); compilers running: $(pgrep -c -x rustc || true)"; }

# Compare load rounds (files of `berth bench` lines) against the mean of the two baseline
# files (the load alone before and after the collection): ops/s and %.
compare() { # BEFORE AFTER ROUND...
    python3 - "$@" <<'PY'
import re, sys
def figures(path):
    out = {}
    for line in open(path):
        parts = re.split(r"\s{2,}", line.strip())
        if len(parts) >= 2 and parts[1].split():
            out[parts[0]] = float(parts[1].split()[0])
    return out
before, after = figures(sys.argv[1]), figures(sys.argv[2])
rounds = [figures(p) for p in sys.argv[3:]]
for name, b0 in before.items():
    vals = [r[name] for r in rounds if name in r]
    if not vals or name not in after:
        continue
    b1 = after[name]
    b = (b0 + b1) / 2
    pct = [100 * v / b for v in vals]
    each = ", ".join(f"{v:.1f} ({p:.0f}%)" for v, p in zip(vals, pct))
    print(f"  {name:<22} alone {b0:.1f} before, {b1:.1f} after (mean {b:.1f}); during: {each}; mean {sum(pct) / len(pct):.0f}%, min {min(pct):.0f}%")
PY
}

# ---- berth: fill, then collect online under load, in each mode on fresh data
for mode in $MODES; do
    data=$work/berth-$mode
    bp=$(free_port)
    "$BIN" serve --listen "127.0.0.1:$bp" --data-dir "$data" >"$work/berth-$mode.log" 2>&1 &
    pids+=($!); berth_pid=$!
    wait_up "127.0.0.1:$bp"
    echo "== berth ($mode mode): filling with $BLOBS blobs"
    "$BIN" bench --url "http://127.0.0.1:$bp" --pid "$berth_pid" --label "berth fill" --only gc-fill --gc-blobs "$BLOBS" | grep -E "gc fill"
    load() { # LABEL: a fixed mixed load; prints its figures
        "$BIN" bench --url "http://127.0.0.1:$bp" --pid "$berth_pid" --label "$1" --only manifest-get,blob-head,push-small --duration "$LOAD_DURATION" --images 150 \
            | grep -E "^  (small-image push|manifest GET|blob HEAD)"
    }
    echo "== berth ($mode mode): load alone, before the collection"
    machine
    load "berth load, no collection" | tee "$work/before-$mode"
    echo "== berth ($mode mode): collection (grace 0s) with the same load running, round after round"
    machine
    t0=$(now_s)
    if [ "$mode" = process ]; then
        "$BIN" gc --data-dir "$data" --grace 0s >"$work/gc.out" 2>"$work/gc.err" &
    else
        "$BIN" gc --url "http://127.0.0.1:$bp" --grace 0s >"$work/gc.out" 2>"$work/gc.err" &
    fi
    gc_pid=$!
    rounds=()
    n=0
    while kill -0 "$gc_pid" 2>/dev/null; do
        n=$((n + 1))
        load "berth load during collection ($n)" >"$work/round-$mode-$n"
        # A round the collection ended in is only partly under load.
        if kill -0 "$gc_pid" 2>/dev/null || [ "$n" = 1 ]; then rounds+=("$work/round-$mode-$n"); tag=""; else tag=" (collection ended during it; not counted)"; fi
        echo "  round $n$tag:"
        cat "$work/round-$mode-$n"
    done
    wait "$gc_pid" || { cat "$work/gc.err" >&2; echo "berth gc failed" >&2; exit 1; }
    echo "  berth gc ($mode): $(tr '\n' ' ' <"$work/gc.out")(wall $(since "$t0") s from start to end, the load ran alongside)"
    machine
    echo "== berth ($mode mode): load alone, after the collection"
    load "berth load, no collection (after)" | tee "$work/after-$mode"
    echo "  load during the collection against the load alone (the mean of before and after):"
    compare "$work/before-$mode" "$work/after-$mode" "${rounds[@]}"
    t0=$(now_s)
    if [ "$mode" = process ]; then "$BIN" gc --data-dir "$data" --grace 0s >/dev/null 2>&1; else "$BIN" gc --url "http://127.0.0.1:$bp" --grace 0s >/dev/null 2>&1; fi
    echo "  a second collection with nothing left: $(since "$t0") s"
    kill "$berth_pid"
    wait "$berth_pid" 2>/dev/null || true
    rm -rf "$data" # the next fill needs the disk space
done

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
machine
t0=$(now_s)
docker-registry garbage-collect "$work/registry.yml" >"$work/ref-gc.out" 2>&1
echo "  docker-registry garbage-collect: $(since "$t0") s; $(grep -c 'blob eligible for deletion' "$work/ref-gc.out" || true) blobs eligible"
