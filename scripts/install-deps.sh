#!/usr/bin/env bash
# Installs the system packages rpatch's build, demo and tests need, only when missing, and
# check-jsonschema (PyPI, in a virtualenv of its own) for scripts/check-schemas.sh.
# With --deb, also what packaging needs (scripts/deb.sh, deb-test.sh): lintian, man-db,
# systemd (systemd-analyze), and cargo-deb (crates.io).
# Rust (cargo) must already be installed.
set -euo pipefail
deb=false
[ "${1:-}" = --deb ] && deb=true
need=()
command -v gcc >/dev/null || need+=(gcc)
command -v g++ >/dev/null || need+=(g++)
command -v make >/dev/null || need+=(make)
command -v setpriv >/dev/null || need+=(util-linux)
command -v curl >/dev/null || need+=(curl)     # rehearsal probes
command -v wrk >/dev/null || need+=(wrk)       # scripts/load-rehearsal.sh
command -v python3 >/dev/null || need+=(python3)
python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
command -v unshare >/dev/null || need+=(util-linux)
command -v objcopy >/dev/null || need+=(binutils)
if $deb; then
  command -v lintian >/dev/null || need+=(lintian)
  command -v man >/dev/null || need+=(man-db)
  command -v systemd-analyze >/dev/null || need+=(systemd)
  command -v dpkg-deb >/dev/null || need+=(dpkg)
fi
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install these packages first (as root): ${need[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}"
fi
command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup) first" >&2; exit 1; }
if $deb && ! cargo deb --version >/dev/null 2>&1; then
  cargo install --locked --quiet cargo-deb@3.8.0
fi

# The same path scripts/check-schemas.sh looks in.
venv="${RPATCH_TOOLS_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/rpatch-tools/venv}"
if ! command -v check-jsonschema >/dev/null && [ ! -x "$venv/bin/check-jsonschema" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q check-jsonschema==0.39.0
fi
