#!/usr/bin/env bash
# shellcheck disable=SC2016  # jq programs are in single quotes on purpose
# Real-client end-to-end suite for berth: docker, podman, buildah, skopeo, containerd (ctr)
# and ORAS push to and pull from a registry over plain HTTP on 127.0.0.1, and every pull is
# compared with what was pushed (digests, and layer content byte for byte).
#
#   tests/clients/run.sh --target berth --berth-bin target/debug/berth
#   tests/clients/run.sh --target reference         # CNCF Distribution (docker-registry)
#   tests/clients/run.sh --url 127.0.0.1:5000       # a registry that is already running
#
# Options:
#   --only docker,podman,buildah,skopeo,containerd,oras,gc,auth   clients to run (default: all;
#                            gc: berth's garbage collection under real clients; auth: TLS, users,
#                            basic and token auth, policy; both --target berth only)
#   --step-timeout SECONDS   bound on every client command (default 120)
#   --registry-log FILE      with --url: the registry's log, shown when a step fails
#   --kill-during-push FILE  with --url to a load balancer: FILE lists the nodes behind it, one
#                            "PID HOST:PORT" per line; adds a docker step that kills the node
#                            serving a large push and expects docker to finish through another
#   --keep                   keep the work directory (default: kept only when a step fails)
#   --verbose                show every step's output, not only failing ones
# Environment: CI=true makes a missing tool a failure instead of a loud skip;
# XDG_CACHE_HOME (default ~/.cache) holds the ORAS venv under berth-clients/.
#
# The last line of output is "N passed, M failed"; the exit status is non-zero when M > 0.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
source "$HERE/lib.sh"

ALL_CLIENTS=(docker podman buildah skopeo containerd oras gc auth)
TARGET=""
BERTH_BIN=""
URL=""
ONLY=""
KEEP=""
STEP_TIMEOUT=${STEP_TIMEOUT:-120}
REGISTRY_LOG=""
KILL_NODES=""

usage() { sed -n '3,20p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --target) TARGET=${2:?--target needs berth or reference}; shift 2 ;;
        --berth-bin) BERTH_BIN=${2:?--berth-bin needs a path}; shift 2 ;;
        --url) URL=${2:?--url needs HOST:PORT}; shift 2 ;;
        --only) ONLY=${2:?--only needs a list}; shift 2 ;;
        --step-timeout) STEP_TIMEOUT=${2:?}; shift 2 ;;
        --registry-log) REGISTRY_LOG=${2:?}; shift 2 ;;
        --kill-during-push) KILL_NODES=${2:?}; shift 2 ;;
        --keep) KEEP=1; shift ;;
        --verbose|-v) VERBOSE=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

if [ -n "$URL" ]; then
    [ -z "$TARGET" ] || die "--url and --target exclude each other"
    URL=${URL#http://}
    URL=${URL%/}
elif [ "$TARGET" = berth ]; then
    [ -n "$BERTH_BIN" ] || die "--target berth needs --berth-bin PATH"
    [ -x "$BERTH_BIN" ] || die "berth binary not found or not executable: $BERTH_BIN"
    BERTH_BIN=$(cd "$(dirname "$BERTH_BIN")" && pwd)/$(basename "$BERTH_BIN")
elif [ "$TARGET" != reference ]; then
    usage >&2
    die "give --target berth --berth-bin PATH, --target reference, or --url HOST:PORT"
fi

CLIENTS=()
if [ -n "$ONLY" ]; then
    IFS=, read -r -a CLIENTS <<<"$ONLY"
    for c in "${CLIENTS[@]}"; do
        case " ${ALL_CLIENTS[*]} ctr " in *" $c "*) ;; *) die "unknown client '$c' (know: ${ALL_CLIENTS[*]})" ;; esac
    done
    CLIENTS=("${CLIENTS[@]/#ctr/containerd}")
else
    CLIENTS=("${ALL_CLIENTS[@]}")
fi

export NO_PROXY="127.0.0.1,localhost${NO_PROXY:+,$NO_PROXY}" no_proxy="127.0.0.1,localhost${no_proxy:+,$no_proxy}"
export STEP_TIMEOUT VERBOSE

WORK=$(mktemp -d "${TMPDIR:-/tmp}/berth-clients.XXXXXX")
LOGS=$WORK/logs
mkdir -p "$LOGS"
RUN_START=$(date +%s)

KEEP_DECIDED=""
cleanup() {
    local rc=$?
    set +e
    stop_started
    if [ -n "$KEEP" ] || [ "$FAILED" -gt 0 ] || [ "$rc" -ne 0 ]; then
        [ -n "$KEEP_DECIDED" ] || say "work directory kept: $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------ tools

OCITOOL=(python3 "$HERE/ocitool.py")
ocitool() { t "${OCITOOL[@]}" "$@"; }

declare -A NEEDS=(
    [docker]="dockerd docker containerd ctr"
    [podman]="podman skopeo"
    [buildah]="buildah skopeo"
    [skopeo]="skopeo"
    [containerd]="containerd ctr"
    [oras]=""
    [gc]="skopeo"
    [auth]="dockerd docker containerd ctr podman skopeo openssl"
)
BASE_TOOLS=(curl jq python3 timeout sha256sum umoci skopeo zstd tar)

need=("${BASE_TOOLS[@]}")
for c in "${CLIENTS[@]}"; do
    # shellcheck disable=SC2206
    need+=(${NEEDS[$c]})
done
[ "$TARGET" = reference ] && need+=(docker-registry)
say "== checking tools: ${need[*]}"
MISSING=$("$HERE/install.sh" tools "${need[@]}" 2>"$LOGS/install.log") || true
MISSING=${MISSING#missing: }
if [ -n "$MISSING" ]; then
    warn "still missing after install attempt: $MISSING (see $LOGS/install.log)"
    cat "$LOGS/install.log" >&2
fi
is_missing() { case " $MISSING " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
for tool in "${BASE_TOOLS[@]}"; do
    is_missing "$tool" && die "required tool missing: $tool (needed to build the test images)"
done
[ "$TARGET" = reference ] && is_missing docker-registry && die "docker-registry missing (apt-get install docker-registry)"

# ------------------------------------------------------------------ registry

start_registry() {
    local port
    port=$(free_port)
    REG=127.0.0.1:$port
    REGISTRY_LOG=$WORK/registry.log
    if [ "$TARGET" = reference ]; then
        mkdir -p "$WORK/reference-data"
        cat >"$WORK/reference.yml" <<EOF
version: 0.1
log:
  level: info
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $WORK/reference-data
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: $REG
EOF
        start_bg docker-registry "$REGISTRY_LOG" docker-registry serve "$WORK/reference.yml"
    else
        mkdir -p "$WORK/berth-data"
        start_bg berth "$REGISTRY_LOG" env RUST_LOG="${RUST_LOG:-info}" NO_COLOR=1 \
            "$BERTH_BIN" serve --listen "$REG" --data-dir "$WORK/berth-data"
    fi
    wait_until 30 "$LAST_PID" "registry on $REG" curl -fsS -o /dev/null "http://$REG/v2/" || {
        tail -n 50 "$REGISTRY_LOG" >&2
        die "registry did not start"
    }
}

if [ -n "$URL" ]; then
    REG=$URL
    curl -fsS -o /dev/null --max-time 10 "http://$REG/v2/" || die "no registry answers GET http://$REG/v2/"
else
    start_registry
fi
# repositories of this run live under their own namespace, so reruns against a long-running
# registry (--url) never see an earlier run's content
NS="e2e-$(date +%H%M%S)-$RANDOM"
say "== registry http://$REG (target ${TARGET:-url}), repositories under $NS/"

# ------------------------------------------------------------------ test images

IMG=$WORK/images
L=$IMG/oci
build_images() { t "$HERE/make-images.sh" "$IMG"; }
step "images: build OCI layout (gzip + zstd layers, 2-platform index)" build_images
[ "$STEP_OK" = 1 ] || die "cannot build the test images"
DIG_MULTI=$("${OCITOOL[@]}" digest "oci:$L:multi")
CFG_AMD64=$("${OCITOOL[@]}" config-digest "oci:$L:amd64")
CFG_ARM64=$("${OCITOOL[@]}" config-digest "oci:$L:arm64")
CFG_V1=$("${OCITOOL[@]}" config-digest "oci:$L:amd64-gz")
CFG_V2=$("${OCITOOL[@]}" config-digest "oci:$L:v2-gz")
export REG NS IMG L

# digest printed by "docker push"/"podman push" style output: "<tag>: digest: sha256:... size: N"
pushed_digest() { grep -Eio 'digest: sha256:[0-9a-f]{64}' "$1" | tail -n 1 | cut -d' ' -f2; }
raw_digest() { # REF (without docker://): sha256 of the manifest skopeo fetches
    t skopeo inspect --tls-verify=false --raw "docker://$1" >"$WORK/raw.json"
    sha256_of "$WORK/raw.json"
}

# ================================================================== docker

DK=$WORK/docker
docker_cli() { t "$DOCKER_CLI" "$@"; }

docker_start() {
    # dockerd uses this run's containerd, not a child of its own (whose state would go to /opt)
    containerd_start
    mkdir -p "$DK/data" "$DK/exec" "$DK/config"
    echo '{}' >"$DK/daemon.json"
    start_bg dockerd "$DK/dockerd.log" dockerd --config-file "$DK/daemon.json" \
        --data-root "$DK/data" --exec-root "$DK/exec" --pidfile "$DK/dockerd.pid" \
        -H "unix://$DK/docker.sock" --storage-driver=vfs --iptables=false --ip6tables=false \
        --bridge=none --ip-forward=false --ip-masq=false --insecure-registry "$REG" \
        --containerd "$CD/containerd.sock"
    wait_until 60 "$LAST_PID" dockerd "$DOCKER_CLI" version || { tail -n 30 "$DK/dockerd.log"; return 1; }
    "$DOCKER_CLI" version
}

docker_login() {
    echo "not-a-secret" | docker_cli login "$REG" -u e2e --password-stdin | tee "$WORK/dk-login.out"
    assert_grep "$WORK/dk-login.out" "Login Succeeded" "docker login to a registry without auth succeeds"
}

docker_load() {
    docker_cli load -i "$IMG/docker-v1.tar"
    docker_cli load -i "$IMG/docker-v2.tar"
    assert_eq "$(docker_cli image inspect --format '{{.Id}}' e2e/img:v1)" "$CFG_V1" "loaded v1 image id is its config digest"
    assert_eq "$(docker_cli image inspect --format '{{.Id}}' e2e/img:v2)" "$CFG_V2" "loaded v2 image id is its config digest"
}

docker_push() {
    docker_cli tag e2e/img:v1 "$REG/$NS/docker/a:v1"
    docker_cli push "$REG/$NS/docker/a:v1" | tee "$WORK/dk-push-a.out"
    DK_V1=$(pushed_digest "$WORK/dk-push-a.out")
    echo "$DK_V1" >"$WORK/dk-v1.digest"
    assert_eq "$(raw_digest "$REG/$NS/docker/a:v1")" "$DK_V1" "registry serves the manifest docker pushed"
    ocitool same-content "reg:$REG/$NS/docker/a:v1" "oci:$L:amd64-gz"
}

docker_mount() {
    docker_cli tag e2e/img:v1 "$REG/$NS/docker/b:v1"
    docker_cli push "$REG/$NS/docker/b:v1" | tee "$WORK/dk-push-b.out"
    # docker asks for POST /v2/<b>/blobs/uploads/?mount=<digest>&from=<a>; it prints
    # "Mounted from" only when the registry answered 201 Created (mounted)
    assert_grep "$WORK/dk-push-b.out" "Mounted from $NS/docker/a" "layers mounted from the first repository"
    if grep -Eq "(Pushed|Layer already exists)$" "$WORK/dk-push-b.out"; then
        echo "note: some layers were not mounted:" && grep -E "(Pushed|Layer already exists)$" "$WORK/dk-push-b.out"
    fi
    assert_eq "$(pushed_digest "$WORK/dk-push-b.out")" "$(cat "$WORK/dk-v1.digest")" "same manifest digest in the second repository"
    ocitool same-content "reg:$REG/$NS/docker/b:v1" "oci:$L:amd64-gz"
    assert_mount_logged "$NS/docker/b"
}

# assert_mount_logged REPO: when the registry log is one this suite knows how to read, check
# that a blob upload POST to REPO was answered 201 Created, i.e. the blob was mounted
# (a real upload session answers 202). Registries with other log formats: a note only.
assert_mount_logged() {
    local repo=$1 log
    [ -f "${REGISTRY_LOG:-}" ] || { echo "note: no registry log to check mounts in"; return 0; }
    log=$WORK/registry-log.txt
    sed 's/\x1b\[[0-9;]*m//g' "$REGISTRY_LOG" >"$log"
    if grep -q 'berth::access' "$log"; then
        assert_grep "$log" "method=POST route=\"/v2/\{name\}/blobs/uploads/\" repository=\"$repo\" status=201" \
            "berth log: POST blobs/uploads/ to $repo answered 201 (mounted)"
    elif grep -q '"POST /v2/.* HTTP/1.1" [0-9]' "$log"; then
        assert_grep "$log" "\"POST /v2/$repo/blobs/uploads/\\?[^\"]*mount=[^\"]* HTTP/1.1\" 201 " \
            "access log: POST blobs/uploads/?mount=... to $repo answered 201"
    else
        echo "note: registry log format not known here; mount not checked in the log"
    fi
}

docker_rm_local() { # remove every local tag of the test images so pulls really download
    local ids
    mapfile -t ids < <(t "$DOCKER_CLI" images -q | sort -u)
    [ ${#ids[@]} -eq 0 ] || docker_cli rmi -f "${ids[@]}" >/dev/null
    [ -z "$(t "$DOCKER_CLI" images -q)" ]
}

docker_pull_tag() {
    docker_rm_local
    docker_cli pull "$REG/$NS/docker/a:v1" | tee "$WORK/dk-pull.out"
    assert_eq "$(pushed_digest "$WORK/dk-pull.out")" "$(cat "$WORK/dk-v1.digest")" "pulled digest equals pushed digest"
    assert_eq "$(docker_cli image inspect --format '{{.Id}}' "$REG/$NS/docker/a:v1")" "$CFG_V1" "pulled image id (config digest)"
    docker_cli save -o "$WORK/dk-save.tar" "$REG/$NS/docker/a:v1"
    ocitool docker-save "$WORK/dk-save.tar" "oci:$L:amd64-gz"
}

docker_pull_digest() {
    docker_rm_local
    local d
    d=$(cat "$WORK/dk-v1.digest")
    docker_cli pull "$REG/$NS/docker/b@$d" | tee "$WORK/dk-pull-d.out"
    assert_grep "$WORK/dk-pull-d.out" "Digest: $d" "pull by digest reports the digest"
    assert_eq "$(docker_cli image inspect --format '{{.Id}}' "$REG/$NS/docker/b@$d")" "$CFG_V1" "image pulled by digest has the right config"
    docker_cli image inspect --format '{{join .RepoDigests " "}}' "$CFG_V1" | tee "$WORK/dk-repodigests"
    assert_grep "$WORK/dk-repodigests" "$NS/docker/b@$d" "RepoDigests lists the digest"
}

docker_overwrite() {
    docker_cli load -i "$IMG/docker-v2.tar"
    docker_cli tag e2e/img:v2 "$REG/$NS/docker/a:v1"
    docker_cli push "$REG/$NS/docker/a:v1" | tee "$WORK/dk-push-v2.out"
    local d1 d2
    d1=$(cat "$WORK/dk-v1.digest")
    d2=$(pushed_digest "$WORK/dk-push-v2.out")
    assert_ne "$d2" "$d1" "the new image has another digest"
    docker_rm_local
    docker_cli pull "$REG/$NS/docker/a:v1" | tee "$WORK/dk-pull-v2.out"
    assert_eq "$(pushed_digest "$WORK/dk-pull-v2.out")" "$d2" "the tag now resolves to the new digest"
    assert_eq "$(docker_cli image inspect --format '{{.Id}}' "$REG/$NS/docker/a:v1")" "$CFG_V2" "pulled the new image"
    ocitool same-content "reg:$REG/$NS/docker/a:v1" "oci:$L:v2-gz"
    # the old manifest is untagged, not gone
    ocitool same-content "reg:$REG/$NS/docker/a@$d1" "oci:$L:amd64-gz"
}

# The node (a "PID HOST:PORT" line of $KILL_NODES) with a request in flight on two polls in a
# row: a long upload, not a passing HEAD. A scrape counts itself, hence ">= 2".
busy_node() {
    local pid addr n seen=""
    for ((i = 0; i < 600; i++)); do
        while read -r pid addr; do
            kill -0 "$pid" 2>/dev/null || continue
            n=$(curl -s --max-time 1 "http://$addr/metrics" | awk '/^registry_http_in_flight_requests /{print int($2)}')
            if [ "${n:-0}" -ge 2 ]; then
                [ "$seen" = "$pid" ] && { echo "$pid $addr"; return 0; }
                seen=$pid
                continue 2
            fi
        done <"$KILL_NODES"
        seen=""
        sleep 0.05
    done
    return 1
}

docker_push_node_killed() {
    mkdir -p "$WORK/chaos"
    # One 160 MiB layer of random bytes: the push is still uploading when the node dies.
    head -c $((160 << 20)) /dev/urandom >"$WORK/chaos/big.bin"
    tar -C "$WORK/chaos" -cf "$WORK/chaos/rootfs.tar" big.bin
    docker_cli import "$WORK/chaos/rootfs.tar" "$REG/$NS/docker/chaos:1"
    local id victim rc=0
    id=$(docker_cli image inspect --format '{{.Id}}' "$REG/$NS/docker/chaos:1")
    t "$DOCKER_CLI" push "$REG/$NS/docker/chaos:1" >"$WORK/dk-chaos.out" 2>&1 &
    local push=$!
    victim=$(busy_node) || { wait "$push" || true; cat "$WORK/dk-chaos.out"; echo "no node was seen serving the push"; return 1; }
    kill -KILL "${victim%% *}"
    echo "killed node ${victim#* } (pid ${victim%% *}) during the push"
    wait "$push" || rc=$?
    cat "$WORK/dk-chaos.out"
    assert_eq "$rc" 0 "docker push finished through the remaining nodes"
    assert_grep "$WORK/dk-chaos.out" "Retrying in" "docker saw the node die and retried the layer"
    local d
    d=$(pushed_digest "$WORK/dk-chaos.out")
    docker_rm_local
    docker_cli pull "$REG/$NS/docker/chaos:1" | tee "$WORK/dk-chaos-pull.out"
    assert_eq "$(pushed_digest "$WORK/dk-chaos-pull.out")" "$d" "pulled digest equals pushed digest"
    assert_eq "$(docker_cli image inspect --format '{{.Id}}' "$REG/$NS/docker/chaos:1")" "$id" "pulled image id equals the imported one"
}

test_docker() {
    # the CLI that comes with dockerd, if any: its API version matches the daemon
    DOCKER_CLI=$(dirname "$(command -v dockerd)")/docker
    [ -x "$DOCKER_CLI" ] || DOCKER_CLI=$(command -v docker)
    export DOCKER_HOST=unix://$DK/docker.sock DOCKER_CONFIG=$DK/config
    step "docker: start containerd and dockerd (vfs, private state)" docker_start
    [ "$STEP_OK" = 1 ] || { skip_rest docker "dockerd did not start"; return 0; }
    step "docker: login (no auth configured)" docker_login
    step "docker: load test images" docker_load
    [ "$STEP_OK" = 1 ] || { skip_rest docker "no images"; return 0; }
    step "docker: push" docker_push
    [ "$STEP_OK" = 1 ] || { skip_rest docker "push failed"; return 0; }
    step "docker: push to a second repository mounts the blobs" docker_mount
    step "docker: pull by tag, save, compare layers" docker_pull_tag
    step "docker: pull by digest" docker_pull_digest
    step "docker: overwrite a tag with a new image" docker_overwrite
    if [ -n "$KILL_NODES" ]; then
        step "docker: push a large image while the node serving it is killed" docker_push_node_killed
    fi
}

# ================================================================== podman

PM=$WORK/podman
podman_cli() {
    t podman --root "$PM/root" --runroot "$PM/run" --tmpdir "$PM/tmp" --network-config-dir "$PM/net" --storage-driver=vfs \
        --cgroup-manager=cgroupfs --events-backend=file "$@"
}

podman_load() {
    mkdir -p "$PM"
    # podman names an image pulled from oci:PATH after PATH, which must be lowercase:
    # use the relative path "oci"
    cd "$IMG"
    podman_cli pull -q "oci:oci:amd64"
    podman_cli pull -q "oci:oci:arm64"
    podman_cli tag "${CFG_AMD64#sha256:}" "$REG/$NS/podman/img:amd64"
    podman_cli tag "${CFG_ARM64#sha256:}" "$REG/$NS/podman/img:arm64"
    podman_cli images --digests
}

podman_push() {
    podman_cli push --tls-verify=false --digestfile "$WORK/pm-amd64.digest" "$REG/$NS/podman/img:amd64"
    assert_eq "$(raw_digest "$REG/$NS/podman/img:amd64")" "$(cat "$WORK/pm-amd64.digest")" "registry serves the pushed amd64 manifest"
    ocitool same-content "reg:$REG/$NS/podman/img:amd64" "oci:$L:amd64"
    podman_cli push --tls-verify=false --compression-format zstd --digestfile "$WORK/pm-arm64.digest" "$REG/$NS/podman/img:arm64"
    assert_eq "$(raw_digest "$REG/$NS/podman/img:arm64")" "$(cat "$WORK/pm-arm64.digest")" "registry serves the pushed arm64 manifest"
    ocitool same-content "reg:$REG/$NS/podman/img:arm64" "oci:$L:arm64"
}

podman_pull() {
    podman_cli rmi -a -f >/dev/null
    podman_cli pull --tls-verify=false "$REG/$NS/podman/img:amd64"
    assert_eq "$(podman_cli image inspect --format '{{.Digest}}' "$REG/$NS/podman/img:amd64")" "$(cat "$WORK/pm-amd64.digest")" "pulled digest equals pushed digest"
    assert_eq "sha256:$(podman_cli image inspect --format '{{.Id}}' "$REG/$NS/podman/img:amd64")" "$CFG_AMD64" "pulled image id (config digest)"
    rm -rf "$WORK/pm-out"
    podman_cli push "$REG/$NS/podman/img:amd64" "oci:$WORK/pm-out:amd64"
    ocitool same-content "oci:$WORK/pm-out:amd64" "oci:$L:amd64"
}

podman_manifest() {
    podman_cli manifest create "e2e-list-$NS"
    podman_cli manifest add --tls-verify=false "e2e-list-$NS" "docker://$REG/$NS/podman/img:amd64"
    podman_cli manifest add --tls-verify=false "e2e-list-$NS" "docker://$REG/$NS/podman/img:arm64"
    podman_cli manifest push --all --tls-verify=false --digestfile "$WORK/pm-list.digest" \
        "e2e-list-$NS" "docker://$REG/$NS/podman/list:v1"
    assert_eq "$(raw_digest "$REG/$NS/podman/list:v1")" "$(cat "$WORK/pm-list.digest")" "registry serves the pushed list"
    assert_json "$WORK/raw.json" '(.manifests | length) == 2' "the list has two manifests"
    assert_json "$WORK/raw.json" '[.manifests[].platform | .os + "/" + .architecture + (if .variant then "/" + .variant else "" end)] | sort == ["linux/amd64", "linux/arm64/v8"]' "platforms linux/amd64 and linux/arm64/v8"
    assert_json "$WORK/raw.json" --arg a "$(cat "$WORK/pm-amd64.digest")" --arg b "$(cat "$WORK/pm-arm64.digest")" \
        '[.manifests[].digest] | sort == ([$a, $b] | sort)' "the list points at the pushed images"
    ocitool same-content "reg:$REG/$NS/podman/list:v1" "oci:$L:multi"
}

podman_pull_arch() {
    podman_cli rmi -a -f >/dev/null
    podman_cli pull --tls-verify=false --arch arm64 "$REG/$NS/podman/list:v1"
    assert_eq "sha256:$(podman_cli image inspect --format '{{.Id}}' "$REG/$NS/podman/list:v1")" "$CFG_ARM64" "--arch arm64 pulls the arm64 image"
    podman_cli pull --tls-verify=false --arch amd64 "$REG/$NS/podman/list:v1"
    assert_eq "sha256:$(podman_cli image inspect --format '{{.Id}}' "$REG/$NS/podman/list:v1")" "$CFG_AMD64" "--arch amd64 pulls the amd64 image"
}

test_podman() {
    step "podman: load images from the OCI layout" podman_load
    [ "$STEP_OK" = 1 ] || { skip_rest podman "no images"; return 0; }
    step "podman: push (gzip, and zstd compression)" podman_push
    [ "$STEP_OK" = 1 ] || { skip_rest podman "push failed"; return 0; }
    step "podman: pull, compare content" podman_pull
    step "podman: manifest create/add/push --all (multi-arch)" podman_manifest
    step "podman: pull the list for each architecture" podman_pull_arch
}

# ================================================================== buildah

BH=$WORK/buildah
buildah_cli() { t buildah --root "$BH/root" --runroot "$BH/run" --storage-driver=vfs "$@"; }

buildah_build() {
    mkdir -p "$BH/ctx/data"
    printf 'built by buildah for %s\n' "$NS" >"$BH/ctx/hello.txt"
    head -c 300000 /dev/urandom >"$BH/ctx/data/blob.bin"
    local c
    c=$(buildah_cli from scratch)
    buildah_cli copy "$c" "$BH/ctx/hello.txt" /hello.txt
    buildah_cli config --os linux --arch amd64 --label "org.example.berth.e2e=$NS" --cmd /hello.txt "$c"
    buildah_cli commit -q --rm "$c" e2e-built:one
    # a second layer: a new working container on top of the first image
    c=$(buildah_cli from e2e-built:one)
    buildah_cli copy "$c" "$BH/ctx/data" /data
    buildah_cli commit -q --rm "$c" e2e-built:two
    rm -rf "$WORK/bh-local"
    buildah_cli push e2e-built:two "oci:$WORK/bh-local:two"
    ocitool verify "oci:$WORK/bh-local:two"
}

buildah_push() {
    buildah_cli push --tls-verify=false --digestfile "$WORK/bh.digest" e2e-built:two "docker://$REG/$NS/buildah/built:v1"
    assert_eq "$(raw_digest "$REG/$NS/buildah/built:v1")" "$(cat "$WORK/bh.digest")" "registry serves the pushed manifest"
    assert_json "$WORK/raw.json" '.mediaType == "application/vnd.oci.image.manifest.v1+json" and (.layers | length) == 2' "OCI manifest with two layers"
    ocitool same-content "reg:$REG/$NS/buildah/built:v1" "oci:$WORK/bh-local:two"
    # the same image as a Docker schema 2 manifest
    buildah_cli push --tls-verify=false --format v2s2 --digestfile "$WORK/bh-v2s2.digest" e2e-built:two "docker://$REG/$NS/buildah/built:v1-docker"
    assert_eq "$(raw_digest "$REG/$NS/buildah/built:v1-docker")" "$(cat "$WORK/bh-v2s2.digest")" "registry serves the pushed v2s2 manifest"
    assert_json "$WORK/raw.json" '.mediaType == "application/vnd.docker.distribution.manifest.v2+json"' "Docker schema 2 manifest"
    ocitool same-content "reg:$REG/$NS/buildah/built:v1-docker" "oci:$WORK/bh-local:two"
}

buildah_pull() {
    buildah_cli rmi -a -f >/dev/null
    buildah_cli pull --tls-verify=false "docker://$REG/$NS/buildah/built:v1"
    assert_eq "$(buildah_cli inspect --type image --format '{{.FromImageDigest}}' "$REG/$NS/buildah/built:v1")" "$(cat "$WORK/bh.digest")" "pulled digest equals pushed digest"
    rm -rf "$WORK/bh-out"
    buildah_cli push "$REG/$NS/buildah/built:v1" "oci:$WORK/bh-out:v1"
    ocitool same-content "oci:$WORK/bh-out:v1" "oci:$WORK/bh-local:two"
    # and an image with a zstd layer, pulled from the layout and pushed as is
    cd "$IMG"   # see podman_load: the image is named after the (lowercase) path
    buildah_cli pull "oci:oci:amd64"
    buildah_cli push --tls-verify=false "${CFG_AMD64#sha256:}" "docker://$REG/$NS/buildah/img:amd64"
    ocitool same-content "reg:$REG/$NS/buildah/img:amd64" "oci:$L:amd64"
}

test_buildah() {
    step "buildah: build an image from scratch" buildah_build
    [ "$STEP_OK" = 1 ] || { skip_rest buildah "build failed"; return 0; }
    step "buildah: push (OCI and Docker v2s2 manifests)" buildah_push
    [ "$STEP_OK" = 1 ] || { skip_rest buildah "push failed"; return 0; }
    step "buildah: pull, compare content" buildah_pull
}

# ================================================================== skopeo

sk() { t skopeo "$@"; }
SKR=""   # set in test_skopeo

skopeo_copy_up() {
    sk copy --all --preserve-digests --dest-tls-verify=false "oci:$L:multi" "docker://$SKR:v1"
    ocitool identical "reg:$SKR:v1" "oci:$L:multi"
}

skopeo_copy_down() {
    rm -rf "$WORK/sk-back"
    sk copy --all --preserve-digests --src-tls-verify=false "docker://$SKR:v1" "oci:$WORK/sk-back:v1"
    assert_eq "$("${OCITOOL[@]}" digest "oci:$WORK/sk-back:v1")" "$DIG_MULTI" "index digest after the round trip"
    ocitool identical "oci:$WORK/sk-back:v1" "oci:$L:multi"
}

skopeo_inspect() {
    sk inspect --tls-verify=false "docker://$SKR:v1" | tee "$WORK/sk-inspect.json"
    assert_json "$WORK/sk-inspect.json" --arg d "$DIG_MULTI" '.Digest == $d' "inspect reports the index digest"
    assert_json "$WORK/sk-inspect.json" '.Architecture == "amd64" and .Os == "linux"' "inspect picks linux/amd64"
    assert_json "$WORK/sk-inspect.json" '.Labels["org.example.berth.e2e"] | length > 0' "labels from the config"
    sk inspect --tls-verify=false --override-arch arm64 --override-variant v8 "docker://$SKR:v1" >"$WORK/sk-inspect-arm.json"
    assert_json "$WORK/sk-inspect-arm.json" '.Architecture == "arm64"' "inspect --override-arch arm64"
    assert_eq "$(raw_digest "$SKR:v1")" "$DIG_MULTI" "inspect --raw hashes to the index digest"
    sk inspect --tls-verify=false --config --raw "docker://$SKR:v1" >"$WORK/sk-config.json"
    assert_eq "$(sha256_of "$WORK/sk-config.json")" "$CFG_AMD64" "inspect --config --raw returns the amd64 config bytes"
}

skopeo_tags() {
    sk copy --all --preserve-digests --dest-tls-verify=false "oci:$L:multi" "docker://$SKR:v2"
    sk copy --preserve-digests --dest-tls-verify=false "oci:$L:amd64" "docker://$SKR:amd64"
    sk copy --preserve-digests --dest-tls-verify=false "oci:$L:v2-gz" "docker://$SKR:old"
    sk list-tags --tls-verify=false "docker://$SKR" | tee "$WORK/sk-tags.json"
    assert_json "$WORK/sk-tags.json" '(.Tags | sort) == ["amd64", "old", "v1", "v2"]' "list-tags lists exactly the pushed tags"
}

skopeo_delete() {
    local d
    d=$(raw_digest "$SKR:old")
    sk delete --tls-verify=false "docker://$SKR:old"
    if t skopeo inspect --tls-verify=false --raw "docker://$SKR:old" >"$WORK/sk-deleted.out" 2>&1; then
        echo "the deleted tag still resolves:" && cat "$WORK/sk-deleted.out" && return 1
    fi
    cat "$WORK/sk-deleted.out"
    local code
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 30 \
        -H 'Accept: application/vnd.oci.image.manifest.v1+json' "http://$REG/v2/$NS/skopeo/multi/manifests/$d")
    assert_eq "$code" 404 "the deleted manifest is gone by digest"
    sk list-tags --tls-verify=false "docker://$SKR" | tee "$WORK/sk-tags2.json"
    assert_json "$WORK/sk-tags2.json" '(.Tags | sort) == ["amd64", "v1", "v2"]' "the deleted tag is no longer listed"
    ocitool identical "reg:$SKR:v1" "oci:$L:multi"
}

skopeo_sync() {
    sk sync --all --preserve-digests --src docker --dest docker --src-tls-verify=false --dest-tls-verify=false \
        "$SKR" "$REG/$NS/synced"
    sk list-tags --tls-verify=false "docker://$REG/$NS/synced/multi" | tee "$WORK/sk-sync-tags.json"
    assert_json "$WORK/sk-sync-tags.json" '(.Tags | sort) == ["amd64", "v1", "v2"]' "sync copied every tag"
    local tag
    for tag in v1 v2 amd64; do
        ocitool identical "reg:$REG/$NS/synced/multi:$tag" "reg:$SKR:$tag"
    done
    # and down into a directory tree
    rm -rf "$WORK/sk-sync-dir"
    mkdir -p "$WORK/sk-sync-dir"
    sk sync --src docker --dest dir --src-tls-verify=false "$REG/$NS/synced/multi" "$WORK/sk-sync-dir"
    ocitool same-content "dir:$WORK/sk-sync-dir/multi:amd64" "oci:$L:amd64"
}

test_skopeo() {
    SKR=$REG/$NS/skopeo/multi
    step "skopeo: copy --all the 2-platform index up" skopeo_copy_up
    [ "$STEP_OK" = 1 ] || { skip_rest skopeo "copy failed"; return 0; }
    step "skopeo: copy --all back to an OCI layout" skopeo_copy_down
    step "skopeo: inspect" skopeo_inspect
    step "skopeo: list-tags" skopeo_tags
    step "skopeo: delete" skopeo_delete
    step "skopeo: sync a whole repository" skopeo_sync
}

# ================================================================== containerd

CD=$WORK/containerd
ctr_cli() { t ctr --address "$CD/containerd.sock" "$@"; }

containerd_start() { # idempotent: docker and the containerd client share it
    if [ -S "$CD/containerd.sock" ] && ctr --address "$CD/containerd.sock" version >/dev/null 2>&1; then
        echo "containerd already running"
        return 0
    fi
    mkdir -p "$CD/root" "$CD/state" "$CD/opt"
    cat >"$CD/config.toml" <<EOF
version = 2
root = "$CD/root"
state = "$CD/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$CD/containerd.sock"
[ttrpc]
  address = "$CD/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$CD/opt"
EOF
    start_bg containerd "$CD/containerd.log" containerd --config "$CD/config.toml"
    wait_until 60 "$LAST_PID" containerd ctr --address "$CD/containerd.sock" version || { tail -n 30 "$CD/containerd.log"; return 1; }
    ctr --address "$CD/containerd.sock" version
}

ctr_import() {
    # an OCI archive of the index, named with the full reference to push
    rm -rf "$WORK/ctr-layout"
    sk copy --all --preserve-digests "oci:$L:multi" "oci:$WORK/ctr-layout:multi"
    jq --arg n "$REG/$NS/ctr/multi:v1" \
        '.manifests[0].annotations["org.opencontainers.image.ref.name"] = $n' \
        "$WORK/ctr-layout/index.json" >"$WORK/ctr-index.json"
    mv "$WORK/ctr-index.json" "$WORK/ctr-layout/index.json"
    tar -C "$WORK/ctr-layout" -cf "$WORK/ctr-import.tar" .
    ctr_cli -n e2e-push images import --all-platforms --no-unpack "$WORK/ctr-import.tar"
    ctr_cli -n e2e-push images ls | tee "$WORK/ctr-ls.out"
    assert_grep "$WORK/ctr-ls.out" "^$REG/$NS/ctr/multi:v1 .*$DIG_MULTI" "imported under the full reference"
}

ctr_push() {
    ctr_cli -n e2e-push images push --plain-http "$REG/$NS/ctr/multi:v1"
    ocitool identical "reg:$REG/$NS/ctr/multi:v1" "oci:$L:multi"
}

ctr_pull() {
    ctr_cli -n e2e-pull images pull --plain-http --all-platforms "$REG/$NS/ctr/multi:v1"
    ctr_cli -n e2e-pull images ls | tee "$WORK/ctr-ls2.out"
    assert_grep "$WORK/ctr-ls2.out" "^$REG/$NS/ctr/multi:v1 .*$DIG_MULTI" "pulled the index digest"
    ctr_cli -n e2e-pull images check | tee "$WORK/ctr-check.out"
    rm -rf "$WORK/ctr-export" && mkdir -p "$WORK/ctr-export"
    ctr_cli -n e2e-pull images export --all-platforms "$WORK/ctr-export.tar" "$REG/$NS/ctr/multi:v1"
    tar -C "$WORK/ctr-export" -xf "$WORK/ctr-export.tar"
    ocitool identical "oci:$WORK/ctr-export:$DIG_MULTI" "oci:$L:multi"
}

ctr_push_other_repo() {
    # content pulled from repository A carries its source label: pushing it to repository B
    # makes containerd try a cross-repository mount (POST ...?mount=&from=)
    ctr_cli -n e2e-pull images tag "$REG/$NS/ctr/multi:v1" "$REG/$NS/ctr/copy:v1"
    ctr_cli -n e2e-pull images push --plain-http "$REG/$NS/ctr/copy:v1"
    ocitool identical "reg:$REG/$NS/ctr/copy:v1" "oci:$L:multi"
    assert_mount_logged "$NS/ctr/copy"
}

test_containerd() {
    # unpack into plain directories: works where overlayfs does not (containers, CI)
    export CONTAINERD_SNAPSHOTTER=native
    step "containerd: containerd running (private root, CRI off)" containerd_start
    [ "$STEP_OK" = 1 ] || { skip_rest containerd "containerd did not start"; return 0; }
    step "containerd: ctr import the 2-platform index" ctr_import
    [ "$STEP_OK" = 1 ] || { skip_rest containerd "import failed"; return 0; }
    step "containerd: ctr push --plain-http" ctr_push
    [ "$STEP_OK" = 1 ] || { skip_rest containerd "push failed"; return 0; }
    step "containerd: ctr pull --plain-http --all-platforms, export, compare" ctr_pull
    step "containerd: ctr push to a second repository" ctr_push_other_repo
}

# ================================================================== oras

ORAS_PY=""
OR=$WORK/oras
ORREPO=""
oras_py() { t "$ORAS_PY" "$HERE/oras_test.py" "$@"; }
orstate() { jq -r "$1" "$OR/oras-state.json"; }

oras_setup() {
    ORAS_PY=$("$HERE/install.sh" venv "${XDG_CACHE_HOME:-$HOME/.cache}/berth-clients/venv")
    "$ORAS_PY" -c 'import oras.version; print("oras-py", oras.version.__version__)'
    echo "$ORAS_PY" >"$WORK/oras-python"
}

oras_artifact() { oras_py artifact "$REG" "$ORREPO" "$OR"; }
oras_image() { oras_py image "$REG" "$ORREPO" "$OR" "$L" amd64; ocitool identical "reg:$REG/$ORREPO:image" "oci:$L:amd64"; }
oras_referrers_push() { oras_py referrers "$REG" "$ORREPO" "$OR"; }

oras_oci_subject() {
    local img
    img=$(orstate .image_digest)
    assert_eq "$(orstate .signature_oci_subject)" "$img" "manifest PUT with subject answers OCI-Subject (signature)"
    assert_eq "$(orstate .sbom_oci_subject)" "$img" "manifest PUT with subject answers OCI-Subject (SBOM, oras push)"
}

# referrers_get DIGEST [QUERY] -> $WORK/ref.json, $WORK/ref.headers; echoes the status code
referrers_get() {
    t curl -sS --max-time 60 -D "$WORK/ref.headers" -o "$WORK/ref.json" -w '%{http_code}' \
        -H 'Accept: application/vnd.oci.image.index.v1+json' \
        "http://$REG/v2/$ORREPO/referrers/$1${2:+?$2}"
}

check_referrers_index() { # STATUS: the common checks on a referrers answer
    echo "HTTP $1"
    cat "$WORK/ref.headers"
    cat "$WORK/ref.json"
    echo
    assert_eq "$1" 200 "GET /v2/<name>/referrers/<digest> answers 200"
    assert_grep "$WORK/ref.headers" '^[Cc]ontent-[Tt]ype: application/vnd\.oci\.image\.index\.v1\+json' "Content-Type is the OCI index type"
    assert_json "$WORK/ref.json" '.schemaVersion == 2 and .mediaType == "application/vnd.oci.image.index.v1+json" and (.manifests | type) == "array"' "body is an OCI image index"
}

oras_referrers_list() {
    local code
    code=$(referrers_get "$(orstate .image_digest)")
    check_referrers_index "$code"
    assert_json "$WORK/ref.json" '.manifests | length == 2' "two referrers"
    assert_json "$WORK/ref.json" --arg d "$(orstate .signature_digest)" --arg t "$(orstate .signature_type)" \
        --argjson s "$(orstate .signature_size)" \
        'any(.manifests[]; .digest == $d and .artifactType == $t and .size == $s and .mediaType == "application/vnd.oci.image.manifest.v1+json")' \
        "the signature is listed with its artifactType, size and media type"
    assert_json "$WORK/ref.json" --arg d "$(orstate .signature_digest)" \
        'any(.manifests[]; .digest == $d and .annotations["org.example.berth.e2e.signer"] == "e2e-test")' \
        "the signature's annotations are listed"
    assert_json "$WORK/ref.json" --arg d "$(orstate .sbom_digest)" --arg t "$(orstate .sbom_type)" \
        'any(.manifests[]; .digest == $d and .artifactType == $t)' \
        "the SBOM is listed with its config media type as artifactType"
}

oras_referrers_filter() {
    local code
    code=$(referrers_get "$(orstate .image_digest)" "artifactType=$(jq -rn --arg v "$(orstate .signature_type)" '$v | @uri')")
    check_referrers_index "$code"
    if grep -Eiq '^OCI-Filters-Applied:.*artifactType' "$WORK/ref.headers"; then
        assert_json "$WORK/ref.json" --arg d "$(orstate .signature_digest)" \
            '[.manifests[].digest] == [$d]' "filter applied: only the signature is listed"
    else
        echo "note: the registry did not apply the artifactType filter (no OCI-Filters-Applied header)"
        assert_json "$WORK/ref.json" '.manifests | length == 2' "unfiltered answer lists both referrers"
    fi
}

oras_referrers_none() {
    local code
    code=$(referrers_get "$(orstate .artifact_typed)")
    check_referrers_index "$code"
    assert_json "$WORK/ref.json" '.manifests == []' "a manifest without referrers has an empty list"
}

oras_referrers_delete() {
    local code
    code=$(t curl -sS --max-time 60 -o /dev/null -w '%{http_code}' -X DELETE \
        "http://$REG/v2/$ORREPO/manifests/$(orstate .sbom_digest)")
    assert_eq "$code" 202 "DELETE of the SBOM manifest answers 202"
    code=$(referrers_get "$(orstate .image_digest)")
    check_referrers_index "$code"
    assert_json "$WORK/ref.json" --arg d "$(orstate .signature_digest)" \
        '[.manifests[].digest] == [$d]' "only the signature is left"
}

test_oras() {
    ORREPO=$NS/oras/artifacts
    mkdir -p "$OR"
    step "oras: set up the python client (venv)" oras_setup
    [ "$STEP_OK" = 1 ] || { skip_rest oras "no oras client"; return 0; }
    ORAS_PY=$(cat "$WORK/oras-python")
    step "oras: push artifacts (config media type; explicit artifactType), pull back" oras_artifact
    step "oras: push an image to refer to" oras_image
    [ "$STEP_OK" = 1 ] || { skip_rest oras "no subject image"; return 0; }
    step "oras: push a signature and an SBOM with subject" oras_referrers_push
    [ "$STEP_OK" = 1 ] || { skip_rest oras "referrer push failed"; return 0; }
    step "oras: registry answers OCI-Subject on manifests with subject" oras_oci_subject
    step "oras: referrers API lists both referrers (curl)" oras_referrers_list
    step "oras: referrers API with ?artifactType= filter" oras_referrers_filter
    step "oras: referrers API for a manifest without referrers" oras_referrers_none
    step "oras: referrers API after deleting a referrer" oras_referrers_delete
}

# ================================================================== gc (berth only)

# Garbage collection while a real client pushes images that reuse old layers. The grace period
# is short (GC_GRACE) so that the test does not wait a day, and long enough for a push's layers
# to be referenced by its manifest before they are collectable.
GC_GRACE=3
berth_gc() { t "$BERTH_BIN" gc --data-dir "$WORK/berth-data" --grace "${GC_GRACE}s" "$@"; }
blob_file() { local d=${1#sha256:}; echo "$WORK/berth-data/blobs/sha256/${d:0:2}/$d"; }

gc_fill() {
    sk copy --preserve-digests --dest-tls-verify=false "oci:$L:amd64-gz" "docker://$REG/$NS/gc/app:v1"
    # Overwrite the tag: the first image is untagged, and kept with its layers.
    sk copy --preserve-digests --dest-tls-verify=false "oci:$L:v2-gz" "docker://$REG/$NS/gc/app:v1"
    # An image pushed and deleted, and a blob no manifest ever references: garbage after the grace period.
    sk copy --preserve-digests --dest-tls-verify=false "oci:$L:amd64" "docker://$REG/$NS/gc/tmp:x"
    sk delete --tls-verify=false "docker://$REG/$NS/gc/tmp:x"
    head -c 100000 /dev/urandom >"$WORK/gc-stray.bin"
    local d
    d=$(sha256_of "$WORK/gc-stray.bin")
    t curl -fsS -X POST --data-binary "@$WORK/gc-stray.bin" -H 'Content-Type: application/octet-stream' \
        "http://$REG/v2/$NS/gc/tmp/blobs/uploads/?digest=$d"
    echo "$d" >"$WORK/gc-stray.digest"
    [ -f "$(blob_file "$d")" ]
}

gc_while_pushing() {
    sleep $((GC_GRACE + 1))
    # Collections back to back while skopeo pushes images whose layers are those of the
    # deleted and the untagged images.
    (
        set +e
        while [ ! -f "$WORK/gc-stop" ]; do
            "$BERTH_BIN" gc --data-dir "$WORK/berth-data" --grace "${GC_GRACE}s" >>"$WORK/gc-loop.out" 2>>"$WORK/gc-loop.err" || echo "FAILED" >>"$WORK/gc-loop.out"
            sleep 0.2
        done
    ) &
    local loop=$! i
    for i in 1 2 3; do
        sk copy --preserve-digests --dest-tls-verify=false "oci:$L:amd64" "docker://$REG/$NS/gc/reuse:r$i"
        sk copy --preserve-digests --dest-tls-verify=false "oci:$L:amd64-gz" "docker://$REG/$NS/gc/reuse:g$i"
    done
    touch "$WORK/gc-stop"
    wait "$loop"
    cat "$WORK/gc-loop.out"
    ! grep -q FAILED "$WORK/gc-loop.out" || { cat "$WORK/gc-loop.err"; return 1; }
    grep -Eq "deleted [1-9][0-9]* blobs" "$WORK/gc-loop.out" || { echo "no collection deleted anything"; return 1; }
}

gc_verify() {
    sleep $((GC_GRACE + 1))
    berth_gc | tee "$WORK/gc-final.out"
    berth_gc --dry-run | tee "$WORK/gc-dry.out"
    assert_grep "$WORK/gc-dry.out" "would delete 0 blobs" "nothing unreferenced past the grace period remains"
    [ ! -f "$(blob_file "$(cat "$WORK/gc-stray.digest")")" ] || { echo "the stray blob's file is still on disk"; return 1; }
    local i
    for i in 1 2 3; do
        ocitool same-content "reg:$REG/$NS/gc/reuse:r$i" "oci:$L:amd64"
        ocitool same-content "reg:$REG/$NS/gc/reuse:g$i" "oci:$L:amd64-gz"
    done
    ocitool same-content "reg:$REG/$NS/gc/app:v1" "oci:$L:v2-gz"
    # What the other clients pushed earlier and did not delete is whole too.
    if curl -fs -o /dev/null "http://$REG/v2/$NS/skopeo/multi/manifests/v1"; then
        ocitool identical "reg:$REG/$NS/skopeo/multi:v1" "oci:$L:multi"
    fi
    if curl -fs -o /dev/null "http://$REG/v2/$NS/docker/a/manifests/v1"; then
        ocitool same-content "reg:$REG/$NS/docker/a:v1" "oci:$L:v2-gz"
    fi
}

test_gc() {
    if [ "$TARGET" != berth ]; then
        say "gc: runs only with --target berth (it drives berth gc on the server's data directory)"
        return 0
    fi
    SKR=$REG/$NS/skopeo/multi
    step "gc: fill (overwritten tag, deleted image, stray blob)" gc_fill
    [ "$STEP_OK" = 1 ] || { skip_rest gc "fill failed"; return 0; }
    step "gc: collections back to back while skopeo pushes images reusing old layers" gc_while_pushing
    step "gc: nothing unreferenced remains; every image pulls byte for byte" gc_verify
}

# ================================================================== auth (berth only)

# shellcheck source=auth.sh
source "$HERE/auth.sh"

# ================================================================== main

declare -A CLIENT_TOOLS_MISSING=()
for c in "${CLIENTS[@]}"; do
    miss=""
    for tool in ${NEEDS[$c]}; do
        is_missing "$tool" && miss="$miss $tool"
    done
    [ -z "$miss" ] || CLIENT_TOOLS_MISSING[$c]=${miss# }
done

for c in "${CLIENTS[@]}"; do
    say ""
    say "${C_BOLD}== $c${C_OFF}"
    if [ -n "${CLIENT_TOOLS_MISSING[$c]:-}" ]; then
        client_missing "$c" "${CLIENT_TOOLS_MISSING[$c]}"
        continue
    fi
    "test_$c"
done

stop_started >/dev/null

say ""
say "== done in $(($(date +%s) - RUN_START))s against ${TARGET:-$URL} ($REG)"
if [ ${#FAILED_STEPS[@]} -gt 0 ]; then
    say "failed steps:"
    for s in "${FAILED_STEPS[@]}"; do say "  - $s"; done
fi
if [ ${#SKIPPED_CLIENTS[@]} -gt 0 ]; then
    warn "NOT TESTED (tools missing; CI=true would fail): ${SKIPPED_CLIENTS[*]}"
fi
if [ -n "$KEEP" ] || [ "$FAILED" -gt 0 ]; then
    say "work directory kept: $WORK (logs in $LOGS)"
    KEEP_DECIDED=1
fi
say "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
