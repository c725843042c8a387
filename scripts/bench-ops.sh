#!/usr/bin/env bash
# Manifest GET throughput with metrics, audit (to a file) and a webhook endpoint turned on
# ("on"; pull recording at its default, off), and additionally recording every pull
# ("on+pulls"), against the same run with all of it off. Runs alternate, so all see the same
# machine. The issue's bar: "on" within 10% of "off".
#
#   scripts/bench-ops.sh [rounds] [berth bench flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
rounds=${1:-2}; shift || true
cargo build --release -p berth >/dev/null
BIN=target/release/berth
with_scratch

# A webhook receiver that accepts everything.
hook=$(free_port)
python3 - "$hook" >/dev/null 2>&1 <<'PY' &
import sys, http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get('content-length', 0)))
        self.send_response(200); self.send_header('content-length', '0'); self.end_headers()
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()
PY
pids+=($!)

cat >"$work/off.yml" <<YML
metrics: {enabled: false}
audit: {output: "off", pulls: false}
log: {level: warn}
YML
cat >"$work/on.yml" <<YML
metrics: {enabled: true}
audit: {output: "$work/audit.jsonl"}
notifications:
  endpoints:
    - {name: all, url: "http://127.0.0.1:$hook/hook"}
log: {level: warn}
YML
cat >"$work/on+pulls.yml" <<YML
metrics: {enabled: true}
audit: {output: "$work/audit.jsonl", pulls: true}
notifications:
  endpoints:
    - {name: all, url: "http://127.0.0.1:$hook/hook"}
log: {level: warn}
YML
run() {
    local mode=$1 p; shift
    p=$(free_port)
    "$BIN" serve --listen "127.0.0.1:$p" --data-dir "$work/data-$mode" --config "$work/$mode.yml" >"$work/$mode.log" 2>&1 &
    local pid=$!
    pids+=("$pid") # stopped on exit even if the benchmark fails
    wait_up "127.0.0.1:$p"
    "$BIN" bench --url "http://127.0.0.1:$p" --pid "$pid" --label "$mode" --only manifest-get "$@" | grep "manifest GET" | sed "s/^/$mode /"
    kill "$pid"; wait "$pid" 2>/dev/null || true
}
for _ in $(seq "$rounds"); do
    run off "$@"
    run on "$@"
    run on+pulls "$@"
done
echo "audit lines written in the 'on' runs: $(wc -l <"$work/audit.jsonl")"
