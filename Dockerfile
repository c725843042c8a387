# syntax=docker/dockerfile:1
#
# berth as a container image: one static (musl) binary on an empty base image.
#
#   docker build -t berth .
#   docker run --rm -p 5000:5000 -v berth-data:/var/lib/berth berth
#
# The default command runs the embedded default (filesystem blobs and SQLite under
# /var/lib/berth) on 0.0.0.0:5000. For a scale-out node, pass a configuration file:
#
#   docker run --rm -p 5000:5000 -v /etc/berth:/etc/berth:ro \
#     -e BERTH_DATABASE__POSTGRES__URL=... -e BERTH_STORAGE__S3__SECRET_ACCESS_KEY=... \
#     berth serve --config /etc/berth/berth.yaml
#
# See docs/deployment.md. berth has no authentication yet: publish the port only where every
# client that can reach it may push, pull and delete.

# ---- build ----------------------------------------------------------------------------------
FROM rust:1.95-alpine AS build

# aws-lc-sys (the crypto under rustls, used for https S3 endpoints) compiles C and assembly: it
# needs a C toolchain, cmake and perl. ca-certificates provides the bundle copied below.
RUN apk add --no-cache musl-dev build-base cmake perl ca-certificates

WORKDIR /src
COPY . .

# Static linking is asked for explicitly (+crt-static) rather than relying on the musl target's
# current default, and the target is named so that RUSTFLAGS applies to berth only, not to build
# scripts and proc-macros (which must stay dynamic on a musl host). The cache mounts keep the
# crate downloads and the build directory between builds; the binary is copied out of the
# cache into /out. The readelf check fails the build if the result needs a dynamic loader.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    set -eux; \
    target="$(rustc -vV | sed -n 's/^host: //p')"; \
    RUSTFLAGS="-C target-feature=+crt-static" \
        cargo build --release --locked -p berth --target "$target"; \
    install -D -m 0755 "target/$target/release/berth" /out/berth; \
    if readelf -l /out/berth | grep -q 'program interpreter'; then \
        echo "berth is not statically linked" >&2; exit 1; \
    fi; \
    mkdir -p /out/data

# ---- runtime --------------------------------------------------------------------------------
FROM scratch

# CA certificates, for https S3 endpoints (AWS, or an S3-compatible service behind TLS).
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt

COPY --from=build /out/berth /berth

# data_dir: the embedded default keeps its blobs and database here; a scale-out node keeps only
# its `instance-id` file here (an emptyDir is enough). Owned by the runtime user so that it is
# writable without a volume, and so that a new named volume mounted here inherits the owner.
COPY --from=build --chown=65532:65532 /out/data /var/lib/berth

USER 65532:65532
WORKDIR /var/lib/berth
EXPOSE 5000

ENTRYPOINT ["/berth"]
CMD ["serve", "--listen", "0.0.0.0:5000", "--data-dir", "/var/lib/berth"]
