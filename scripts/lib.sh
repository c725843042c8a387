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
