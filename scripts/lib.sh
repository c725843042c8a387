# Helpers shared by the scripts in this folder (sourced, not run).

# A free TCP port on the loopback address.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Wait (at most 10 s) until a registry answers GET /v2/ at host:port $1.
wait_up() {
    local _
    for _ in $(seq 100); do
        curl -fs "http://$1/v2/" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "no registry answered at $1" >&2
    return 1
}

# For scripts that start processes: a scratch directory in $work, the PIDs to stop in $pids,
# both cleaned up on exit. Only processes the script started are stopped.
with_scratch() {
    work=$(mktemp -d)
    pids=()
    trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT
}
