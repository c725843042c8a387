# shellcheck shell=bash
# Helpers for tests/clients/run.sh: step bookkeeping, assertions, process control.
# Sourced, never executed.

# ------------------------------------------------------------------ output

# shellcheck disable=SC2034  # C_BOLD is used by run.sh
if [ -t 1 ]; then
    C_RED=$'\e[31m' C_GREEN=$'\e[32m' C_YELLOW=$'\e[33m' C_BOLD=$'\e[1m' C_OFF=$'\e[0m'
else
    C_RED='' C_GREEN='' C_YELLOW='' C_BOLD='' C_OFF=''
fi

say()  { printf '%s\n' "$*"; }
warn() { printf '%s%s%s\n' "$C_YELLOW" "$*" "$C_OFF" >&2; }
die()  { printf '%sERROR: %s%s\n' "$C_RED" "$*" "$C_OFF" >&2; exit 2; }

# ------------------------------------------------------------------ steps

PASSED=0
FAILED=0
FAILED_STEPS=()
SKIPPED_CLIENTS=()
# shellcheck disable=SC2034  # read by run.sh
STEP_OK=1          # result of the last step (1 = passed)

# t CMD...: run a client command under the step timeout, echoing it into the step log.
t() {
    printf '+ %s\n' "$*" >&2
    timeout -k 10 "${STEP_TIMEOUT:-120}" "$@"
}

slug() { printf '%s' "$*" | tr -c 'A-Za-z0-9._-' '_' | cut -c1-80; }

# step "client: what" FUNCTION [ARGS...]
# Runs FUNCTION in a subshell with errexit on, output to a log file. Records pass/fail.
# Never call it in a conditional context (if/||/&&): that would disable errexit inside.
step() {
    local name=$1; shift
    local log
    log="$LOGS/$(printf '%03d' $((PASSED + FAILED + 1)))-$(slug "$name").log"
    local start end rc regoff=0
    if [ -n "${REGISTRY_LOG:-}" ] && [ -f "$REGISTRY_LOG" ]; then regoff=$(stat -c %s "$REGISTRY_LOG"); fi
    start=$(date +%s%N)
    set +e
    ( set -eo pipefail; "$@" ) >"$log" 2>&1 </dev/null
    rc=$?
    set -e
    end=$(date +%s%N)
    local ms=$(((end - start) / 1000000))
    local secs="$((ms / 1000)).$(((ms % 1000) / 100))"
    if [ "$rc" -eq 0 ]; then
        PASSED=$((PASSED + 1))
        STEP_OK=1
        say "${C_GREEN}PASS${C_OFF} $name (${secs}s)"
        if [ -n "${VERBOSE:-}" ]; then sed 's/^/    /' "$log"; fi
    else
        FAILED=$((FAILED + 1))
        FAILED_STEPS+=("$name")
        STEP_OK=0
        local why=""
        if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then why=" (a command timed out after ${STEP_TIMEOUT:-120}s)"; fi
        say "${C_RED}FAIL${C_OFF} $name (${secs}s, exit $rc$why)"
        say "---- output of '$name' (last 80 lines of $log):"
        tail -n 80 "$log" | sed 's/^/    /'
        if [ -n "${REGISTRY_LOG:-}" ] && [ -f "$REGISTRY_LOG" ]; then
            # what the registry logged during this step (distribution's duplicate
            # "response completed" info lines left out: its access log has the same requests)
            say "---- registry log during this step (last ${REGLOG_LINES:-30} lines; all in $REGISTRY_LOG):"
            tail -c +"$((regoff + 1))" "$REGISTRY_LOG" | grep -v 'level=info msg="response completed"' |
                tail -n "${REGLOG_LINES:-30}" | sed 's/\x1b\[[0-9;]*m//g' | cut -c1-400 | sed 's/^/    /' || true
        fi
        say "----"
    fi
    return 0
}

# skip_rest "client" "reason": report that the remaining steps of a client did not run.
skip_rest() {
    warn "     (remaining $1 steps not run: $2)"
}

# client_missing CLIENT "what is missing"
# With CI=true a missing tool is a failure; otherwise the client is skipped, loudly.
client_missing() {
    if [ "${CI:-}" = "true" ]; then
        FAILED=$((FAILED + 1))
        FAILED_STEPS+=("$1: required tool missing ($2)")
        say "${C_RED}FAIL${C_OFF} $1: required tool missing: $2 (CI=true)"
    else
        SKIPPED_CLIENTS+=("$1 ($2)")
        warn "SKIP $1: required tool missing: $2 -- this client was NOT tested"
    fi
}

# ------------------------------------------------------------------ assertions

assert_eq() { # ACTUAL EXPECTED MESSAGE
    if [ "$1" != "$2" ]; then
        printf 'ASSERTION FAILED: %s\n  got:  %s\n  want: %s\n' "$3" "$1" "$2" >&2
        return 1
    fi
    printf 'ok: %s (%s)\n' "$3" "$1"
}

assert_ne() { # ACTUAL UNEXPECTED MESSAGE
    if [ "$1" = "$2" ]; then
        printf 'ASSERTION FAILED: %s\n  got: %s (must differ)\n' "$3" "$1" >&2
        return 1
    fi
    printf 'ok: %s (%s != %s)\n' "$3" "$1" "$2"
}

assert_grep() { # FILE EXTENDED-REGEX MESSAGE
    if ! grep -Eq -- "$2" "$1"; then
        printf 'ASSERTION FAILED: %s\n  /%s/ not found in %s:\n' "$3" "$2" "$1" >&2
        sed 's/^/    | /' "$1" | tail -n 40 >&2
        return 1
    fi
    printf 'ok: %s\n' "$3"
}

assert_json() { # FILE [JQ-OPTIONS...] JQ-BOOLEAN-EXPR MESSAGE
    local f=$1; shift
    local msg=${*: -1} expr=${*: -2:1}
    local opts=("${@:1:$#-2}")
    if ! jq -e "${opts[@]}" "$expr" "$f" >/dev/null 2>&1; then
        printf 'ASSERTION FAILED: %s\n  jq %s %s\n  document:\n' "$msg" "${opts[*]}" "$expr" >&2
        head -c 4000 "$f" | sed 's/^/    | /' >&2
        echo >&2
        return 1
    fi
    printf 'ok: %s\n' "$msg"
}

sha256_of() { printf 'sha256:%s' "$(sha256sum "$1" | cut -d' ' -f1)"; }

# ------------------------------------------------------------------ processes

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# start_bg NAME LOGFILE CMD...: start a daemon in the background and record its pid in
# $WORK/started.pids (a file, so that daemons started inside a step's subshell are known too).
start_bg() {
    local name=$1 log=$2; shift 2
    "$@" >"$log" 2>&1 </dev/null &
    LAST_PID=$!
    printf '%s %s\n' "$LAST_PID" "$name" >>"$WORK/started.pids"
    say "started $name (pid $LAST_PID), log $log"
}

# wait_until SECONDS PID DESCRIPTION CMD...: poll CMD until it succeeds; fail early if PID died.
wait_until() {
    local secs=$1 pid=$2 what=$3; shift 3
    local i
    for ((i = 0; i < secs * 5; i++)); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        if ! kill -0 "$pid" 2>/dev/null; then
            warn "$what: process $pid exited"
            return 1
        fi
        sleep 0.2
    done
    warn "$what: not ready after ${secs}s"
    return 1
}

# stop_started: stop what this run started, newest first, by pid only.
stop_started() {
    [ -f "$WORK/started.pids" ] || return 0
    local pid name n
    while read -r pid name; do
        kill -0 "$pid" 2>/dev/null || continue
        kill -TERM "$pid" 2>/dev/null || true
        for ((n = 0; n < 100; n++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        if kill -0 "$pid" 2>/dev/null; then
            warn "$name (pid $pid) ignored SIGTERM for 20s, sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
        say "stopped $name (pid $pid)"
    done < <(tac "$WORK/started.pids")
    rm -f "$WORK/started.pids"
}
