#!/usr/bin/env bash
# Runs mcp-sidecar in front of a demo FastMCP server, on a fresh Debian machine that has only
# the Rust toolchain. Clients connect to http://127.0.0.1:8080/mcp; admin on 127.0.0.1:9090.
# Set REDIS_URL to share sessions through Redis; without it the sidecar runs in memory mode.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

need_cmd cmake cmake
python_venv tests/peers/.venv tests/peers/requirements.txt
cargo build --release

DEMO_PORT=${DEMO_PORT:-8000}
tests/peers/.venv/bin/python tests/peers/fastmcp_server.py --port "$DEMO_PORT" --name demo &
demo=$!
trap 'kill $demo 2>/dev/null' EXIT
for _ in $(seq 50); do
  (exec 3<>"/dev/tcp/127.0.0.1/$DEMO_PORT") 2>/dev/null && break
  sleep 0.2
done

export MCP_UPSTREAM="http://127.0.0.1:$DEMO_PORT/mcp"
# a demo value; a deployment shares a real secret between its sidecars
export PEER_SECRET=${PEER_SECRET:-demo-peer-secret-change-me}
export SIDECAR_PEER_LISTEN=${SIDECAR_PEER_LISTEN:-127.0.0.1:8081}
export SIDECAR_LISTEN=${SIDECAR_LISTEN:-127.0.0.1:8080}
export SIDECAR_ADMIN_LISTEN=${SIDECAR_ADMIN_LISTEN:-127.0.0.1:9090}
echo "==> MCP endpoint: http://$SIDECAR_LISTEN/mcp   admin: http://$SIDECAR_ADMIN_LISTEN/readyz"
./target/release/mcp-sidecar -c conf/sidecar.yaml
