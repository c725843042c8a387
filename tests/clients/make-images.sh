#!/usr/bin/env bash
# Build the test images for the client suite, without any registry.
#
#   make-images.sh OUTDIR
#
# OUTDIR/oci is an OCI image layout holding these references:
#   amd64-gz  linux/amd64, 3 gzip layers (small files, 3 MB of random bytes, text)
#   amd64     the same image with its third layer recompressed as zstd (same config)
#   arm64     linux/arm64/v8, 3 layers, its second layer zstd
#   multi     an OCI index of amd64 + arm64 (built by editing the layout's JSON)
#   v2-gz     amd64-gz plus a fourth gzip layer and another config (for tag overwrite)
# OUTDIR/docker-v1.tar and docker-v2.tar are docker-archive copies of amd64-gz and v2-gz
# (tagged e2e/img:v1 and e2e/img:v2) for `docker load`; docker 20.10 cannot load zstd.
# Content is random on every run, so digests never collide with an earlier run's.
set -euo pipefail

OUT=${1:?usage: make-images.sh OUTDIR}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OCITOOL="python3 $HERE/ocitool.py"

rm -rf "$OUT"
mkdir -p "$OUT/src"
L="$OUT/oci"
umoci init --layout "$L" >/dev/null

RUNID=$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')

mk_tree() { # ARCH DIR: three source directories, one per layer
    local arch=$1 d=$2
    mkdir -p "$d/base/etc" "$d/base/bin" "$d/bin" "$d/txt/doc" "$d/more"
    printf 'NAME=berth-e2e\nARCH=%s\nRUN=%s\n' "$arch" "$RUNID" > "$d/base/etc/os-release"
    printf '#!/bin/sh\necho hello from %s\n' "$arch" > "$d/base/bin/hello"
    chmod 755 "$d/base/bin/hello"
    ln -s hello "$d/base/bin/hi"
    head -c 3145728 /dev/urandom > "$d/bin/random.bin"
    head -c 1000 /dev/urandom > "$d/bin/small.bin"
    for i in $(seq 1 400); do echo "line $i of $arch $RUNID: the quick brown fox jumps over the lazy dog"; done > "$d/txt/doc/lines.txt"
    printf 'extra layer %s\n' "$RUNID" > "$d/more/extra.txt"
    head -c 200000 /dev/urandom > "$d/more/extra.bin"
}

build() { # REF ARCH VARIANT
    local ref=$1 arch=$2 variant=$3 d="$OUT/src/$1"
    mk_tree "$arch" "$d"
    umoci new --image "$L:$ref"
    umoci insert --image "$L:$ref" "$d/base" / >/dev/null
    umoci insert --image "$L:$ref" "$d/bin" /opt/bin >/dev/null
    umoci insert --image "$L:$ref" "$d/txt" /usr/share >/dev/null
    umoci config --image "$L:$ref" --os linux --architecture "$arch" \
        --author "berth e2e" --config.cmd /bin/hello --config.env "BERTH_E2E=$RUNID" \
        --config.label "org.example.berth.e2e=$RUNID" --config.workingdir /
    # umoci 0.4 has no option for the platform variant: set it in the config JSON
    if [ -n "$variant" ]; then
        $OCITOOL config-set "$L" "$ref" "$ref" variant "$variant" >/dev/null
    fi
}

build amd64-gz amd64 ""
build arm64-gz arm64 v8

# v2: one more layer and a changed config on top of amd64-gz
umoci config --image "$L:amd64-gz" --tag v2-gz --config.label "org.example.berth.version=2"
umoci insert --image "$L:v2-gz" "$OUT/src/amd64-gz/more" /opt/more >/dev/null

$OCITOOL zstd-layer "$L" amd64-gz amd64 2 >/dev/null
$OCITOOL zstd-layer "$L" arm64-gz arm64 1 >/dev/null
umoci rm --image "$L:arm64-gz"
$OCITOOL make-index "$L" multi amd64 arm64 >/dev/null
umoci gc --layout "$L"

for ref in amd64-gz amd64 arm64 multi v2-gz; do
    $OCITOOL verify "oci:$L:$ref" >/dev/null 2>&1 || { $OCITOOL verify "oci:$L:$ref"; exit 1; }
done

skopeo copy -q "oci:$L:amd64-gz" "docker-archive:$OUT/docker-v1.tar:e2e/img:v1"
skopeo copy -q "oci:$L:v2-gz" "docker-archive:$OUT/docker-v2.tar:e2e/img:v2"
rm -rf "$OUT/src"
echo "images in $OUT: multi=$($OCITOOL digest "oci:$L:multi")"
