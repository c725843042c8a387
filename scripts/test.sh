#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine: installs what it needs, builds once, runs the
# Rust tests in parallel (cargo-nextest), then drives the real clients (docker, podman, buildah,
# skopeo, containerd, ORAS) against a real `berth serve`, and then through nginx against a
# three-node cluster on Ceph RGW and PostgreSQL (started by this script, stopped at exit).
#
#   scripts/test.sh            everything
#   scripts/test.sh --rust     only the Rust tests
#   scripts/test.sh --clients  only the real-client suite
set -euo pipefail
cd "$(dirname "$0")/.."
want_rust=1 want_clients=1
case "${1:-}" in
    --rust) want_clients=0 ;;
    --clients) want_rust=0 ;;
    "") ;;
    *) echo "usage: $0 [--rust|--clients]" >&2; exit 2 ;;
esac

section() { printf '\n==== %s ====\n' "$*"; }

if ! command -v cargo >/dev/null; then
    echo "cargo is required (https://rustup.rs)" >&2
    exit 1
fi
if ! cargo nextest --version >/dev/null 2>&1; then
    section "installing cargo-nextest"
    cargo install cargo-nextest --locked
fi
if [ "$want_clients" = 1 ]; then
    section "installing the real clients (apt) when missing"
    tests/clients/install.sh tools skopeo podman buildah umoci dockerd docker containerd ctr curl python3 timeout docker-registry nginx psql jq htpasswd openssl
fi

# Shared services start once per run, while the build runs (they take ~20 s, mostly Ceph);
# the tests that need them fail (never skip) in CI when they are missing.
section "services: PostgreSQL (metadata backend) and Ceph RGW (S3 storage backend), in the background"
services_dir=$(mktemp -d /tmp/berth-services.XXXXXX)
scripts/services.sh start all "$services_dir" >"$services_dir/start.log" 2>&1 &
services_pid=$!
# On any exit: let a start still under way finish recording what it started, then stop it all.
trap 'wait "$services_pid" 2>/dev/null; scripts/services.sh stop "$services_dir" || true; rm -rf "$services_dir"' EXIT

section "build"
cargo build --workspace --tests --locked

section "services: waiting for them"
if ! wait "$services_pid"; then
    cat "$services_dir/start.log" >&2
    echo "the test services did not start" >&2
    exit 1
fi
cat "$services_dir/start.log"
# shellcheck source=/dev/null
. "$services_dir/env"

if [ "$want_rust" = 1 ]; then
    section "rust tests"
    cargo nextest run --workspace --locked --no-fail-fast
fi
if [ "$want_clients" = 1 ]; then
    section "real clients against berth"
    # `berth serve` reads every BERTH_* variable as configuration and rejects unknown keys: make
    # sure this environment is one it accepts before blaming a client.
    target/debug/berth config check /dev/null
    tests/clients/run.sh --target berth --berth-bin target/debug/berth

    section "real clients through nginx against a three-node berth cluster (S3 + PostgreSQL)"
    tests/clients/cluster.sh --berth-bin target/debug/berth
fi
