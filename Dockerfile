# syntax=docker/dockerfile:1
# The mcp-sidecar container image.
#
#   docker build -t ghcr.io/<you>/mcp-sidecar:0.1.0 .
#   docker run --rm -p 8080:8080 -p 9090:9090 \
#     -e MCP_UPSTREAM=http://host.docker.internal:8000/mcp ghcr.io/<you>/mcp-sidecar:0.1.0
#
# Needs BuildKit (the default builder of Docker >= 23) for the cache mounts. The image runs the
# shipped conf/sidecar.yaml, which reads its settings from environment variables (.env.example);
# in Kubernetes the configuration comes from a ConfigMap instead (k8s/).

# ---- build ---------------------------------------------------------------------------------
FROM rust:1-bookworm AS builder
# Pingora's zlib-ng build needs cmake. Packages are not version-pinned (hadolint DL3008): the
# Debian archive drops superseded versions, so a pin would break the build at the next point
# release; the base images are what to pin (by digest) for reproducible builds.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Only what the build reads; tests, benchmarks and docs stay out (.dockerignore).
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# The registry and target caches persist between builds on this builder (incremental rebuilds
# without a dependency layer trick); the binary is copied out of the cached target dir because
# cache mounts are not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin mcp-sidecar \
 && install -m 0755 target/release/mcp-sidecar /usr/local/bin/mcp-sidecar

# ---- runtime -------------------------------------------------------------------------------
# Same Debian release as the builder, so the glibc the binary was linked against is there. The
# binary needs only glibc and libgcc_s; gcr.io/distroless/cc-debian12:nonroot works as well
# (no shell, no package manager) if you do not need to exec into the container.
FROM debian:bookworm-slim
# ca-certificates: for TLS connections (a TLS Redis once supported); nothing else is installed.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 65532 mcp-sidecar \
 && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin mcp-sidecar
COPY --from=builder /usr/local/bin/mcp-sidecar /usr/local/bin/mcp-sidecar
COPY conf/sidecar.yaml /etc/mcp-sidecar/sidecar.yaml
# Non-root, numeric so Kubernetes' runAsNonRoot can verify it. The process writes only its pid
# file and upgrade socket, both in /tmp (mount an emptyDir there with a read-only root fs).
USER 65532:65532
ENV RUST_LOG=info
# 8080 MCP clients, 8081 peer hops between sidecars, 9090 health, readiness, metrics, admin API.
EXPOSE 8080 8081 9090
# SIGTERM (Docker's and Kubernetes' stop signal) starts the graceful shutdown:
# server.grace_period, then server.shutdown_timeout for in-flight requests and streams.
ENTRYPOINT ["mcp-sidecar"]
CMD ["-c", "/etc/mcp-sidecar/sidecar.yaml"]
