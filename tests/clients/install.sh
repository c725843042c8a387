#!/usr/bin/env bash
# Install what the client suite needs, when it is missing (Debian/Ubuntu, apt-get).
#
#   install.sh tools TOOL...   make sure each command exists; installs the Debian packages
#                              of the missing ones (apt-get update only if an install fails).
#                              Prints "missing: ..." and exits 1 if some are still missing.
#   install.sh venv DIR        make sure DIR is a Python venv with the `oras` package
#                              (ORAS_PIP_SPEC, default oras==0.2.43); prints its python.
set -euo pipefail

pkg_of() {
    case "$1" in
        dockerd|docker) echo docker.io ;;
        containerd|ctr) echo containerd ;;
        docker-registry) echo docker-registry ;;
        timeout|sha256sum) echo coreutils ;;
        python3) echo python3 ;;
        psql) echo postgresql-client ;;
        nginx) echo nginx-light ;;
        htpasswd) echo apache2-utils ;;
        *) echo "$1" ;;
    esac
}

apt_install() {
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "install.sh: no apt-get here; install these yourself: $*" >&2
        return 1
    fi
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then sudo=(sudo -n); else
            echo "install.sh: not root and no sudo; install these yourself: $*" >&2
            return 1
        fi
    fi
    echo "install.sh: apt-get install -y $*" >&2
    if ! DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y "$@" >&2; then
        echo "install.sh: install failed; running apt-get update once and retrying" >&2
        DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get update >&2 || true
        DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y "$@" >&2
    fi
}

cmd_tools() {
    local missing=() pkgs=() t p
    for t in "$@"; do
        command -v "$t" >/dev/null 2>&1 && continue
        missing+=("$t")
        p=$(pkg_of "$t")
        case " ${pkgs[*]} " in *" $p "*) ;; *) pkgs+=("$p") ;; esac
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    apt_install "${pkgs[@]}" || true
    local still=()
    for t in "${missing[@]}"; do
        command -v "$t" >/dev/null 2>&1 || still+=("$t")
    done
    if [ ${#still[@]} -gt 0 ]; then
        echo "missing: ${still[*]}"
        return 1
    fi
}

cmd_venv() {
    local dir=${1:?venv DIR} spec=${ORAS_PIP_SPEC:-oras==0.2.43}
    if [ -x "$dir/bin/python" ] && "$dir/bin/python" -c 'import oras.client' 2>/dev/null; then
        echo "$dir/bin/python"
        return 0
    fi
    # Debian's python3 needs python3-venv for `-m venv` (ensurepip)
    local py=/usr/bin/python3
    [ -x "$py" ] || py=$(command -v python3)
    if ! "$py" -c 'import ensurepip, venv' 2>/dev/null; then
        apt_install python3-venv || true
    fi
    rm -rf "$dir"
    mkdir -p "$(dirname "$dir")"
    "$py" -m venv "$dir" >&2
    "$dir/bin/pip" install --quiet --disable-pip-version-check "$spec" >&2
    "$dir/bin/python" -c 'import oras.client' >&2
    echo "$dir/bin/python"
}

case "${1:-}" in
    tools) shift; cmd_tools "$@" ;;
    venv) shift; cmd_venv "$@" ;;
    *) sed -n '2,9p' "$0" >&2; exit 2 ;;
esac
