#!/usr/bin/env bash
# Runs every test: unit tests and the end-to-end suite against real redis-server, FastMCP,
# server-everything and the official Python and TypeScript MCP clients, all on loopback.
# Installs what it needs on a fresh Debian machine that has only the Rust toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

need_cmd cmake cmake               # pingora-core -> zlib-ng
need_cmd redis-server redis-server
need_cmd redis-cli redis-tools      # --cluster create, and a Sentinel's state for the tests
need_cmd openssl openssl            # the TLS tests' CA and certificates
need_cmd nginx nginx-light          # the round-robin "Service" in front of the test pods
python_venv tests/peers/.venv tests/peers/requirements.txt
python_venv tests/peers/.venv-modern tests/peers/requirements-modern.txt
node_peers tests/peers

# the end-to-end tests mostly wait on sockets: run more of them than there are cores
cargo test --all-targets -- --test-threads "${TEST_THREADS:-8}" "$@"

# the multi-pod scenarios again on a Redis Cluster (3 primaries, 3 replicas) and on a
# Sentinel-managed primary (MCP_TEST_REDIS: see Redis::deployment in tests/e2e/harness.rs)
if [ $# -eq 0 ]; then
  for mode in cluster sentinel; do
    MCP_TEST_REDIS=$mode cargo test --test e2e -- --test-threads "${TEST_THREADS:-8}" \
      pods:: shared:: hub:: legacy::
  done
fi

# the Kubernetes manifests: schemas, the kustomization, and the shipped sidecar config checked by
# the binary just built
bash scripts/validate-k8s.sh
