# Shared by the scripts in this folder: install what a fresh Debian machine with only the Rust
# toolchain lacks. Sourced, not run.

# apt_install PKG...: installs the packages that are not installed yet (one apt-get update).
apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "==> installing ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

# need_cmd CMD PKG: installs PKG when CMD is not on PATH.
need_cmd() {
  command -v "$1" >/dev/null 2>&1 || apt_install "$2"
}

# python_venv DIR REQUIREMENTS: a venv at DIR with REQUIREMENTS installed (redone when they change).
python_venv() {
  local dir=$1 req=$2 stamp
  if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    apt_install python3 python3-venv
  fi
  stamp=$(sha256sum "$req" | cut -c1-16)
  if [ ! -x "$dir/bin/python" ] || [ "$(cat "$dir/.stamp" 2>/dev/null)" != "$stamp" ]; then
    echo "==> creating Python venv in $dir"
    rm -rf "$dir"
    python3 -m venv "$dir"
    "$dir/bin/pip" install -q --disable-pip-version-check -r "$req"
    echo "$stamp" > "$dir/.stamp"
  fi
}

# node_peers DIR: Node >= 18 and the npm packages locked in DIR/package-lock.json.
node_peers() {
  local dir=$1 stamp major
  need_cmd node nodejs
  need_cmd npm npm
  major=$(node -p 'process.versions.node.split(".")[0]')
  if [ "$major" -lt 18 ]; then
    echo "Node $major is too old for the MCP SDK (need >= 18)" >&2
    exit 1
  fi
  stamp=$(sha256sum "$dir/package-lock.json" | cut -c1-16)
  if [ ! -d "$dir/node_modules" ] || [ "$(cat "$dir/node_modules/.stamp" 2>/dev/null)" != "$stamp" ]; then
    echo "==> installing Node test peers in $dir"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
    echo "$stamp" > "$dir/node_modules/.stamp"
  fi
}
