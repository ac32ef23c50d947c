#!/usr/bin/env bash
# rpatch demo on a fresh machine: a Rust program prints calc(i) every 300 ms; rpatch replaces
# calcapp::pricing::calc (x+10) in the running process with the patch library's version (x*1000),
# shows the status, rolls the patch back, and the old values come back.  The program is never
# restarted.  Run as root (or with ptrace rights over your own processes): bash scripts/demo.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if [ -t 1 ]; then BOLD=$'\033[1m' PLAIN=$'\033[0m'; else BOLD="" PLAIN=""; fi
heading() { printf '\n%s== %s ==%s\n' "$BOLD" "$*" "$PLAIN"; }
run() { printf '$ %s\n' "$*"; "$@"; }

# --- what the demo needs -------------------------------------------------------------------
missing=()
for tool in gcc g++ make; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
    heading "installing ${missing[*]}"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update
    $SUDO apt-get install -y gcc g++ make
fi
command -v cargo >/dev/null 2>&1 || { echo "demo: cargo (Rust) is required" >&2; exit 1; }

# RPATCH=/usr/bin/rpatch runs the demo with an installed rpatch (scripts/deb-test.sh).
heading "building rpatch and the test targets"
[ -n "${RPATCH:-}" ] || RPATCH=$(scripts/build-release.sh)
make -C test-targets --quiet -j"$(nproc)"
cargo build --release --quiet --manifest-path test-targets/rust/Cargo.toml \
    --target-dir test-targets/target

APP="$ROOT/test-targets/target/release/calcapp"
FIX="$ROOT/test-targets/target/release/libcalcapp.so"

WORK="$(mktemp -d)"
export RPATCH_STATE_DIR="${RPATCH_STATE_DIR:-$WORK/state}"
OUT="$WORK/calcapp.out"
APP_PID=""
cleanup() {
    if [ -n "$APP_PID" ] && kill -0 "$APP_PID" 2>/dev/null; then
        kill -KILL "$APP_PID" 2>/dev/null || true
        wait "$APP_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# Waits until the output file has at least $1 lines (polling is fine for a demo).
wait_lines() {
    local want=$1 deadline=$((SECONDS + 30))
    while [ "$(wc -l <"$OUT")" -lt "$want" ]; do
        if [ $SECONDS -ge $deadline ]; then
            echo "demo: calcapp stopped printing" >&2
            exit 1
        fi
        sleep 0.05
    done
}

# Shows the next $1 lines the program prints.
show_next() {
    local have
    have=$(wc -l <"$OUT")
    wait_lines $((have + $1))
    sed -n "$((have + 1)),$((have + $1))p" "$OUT"
}

"$APP" --interval-ms 300 >"$OUT" </dev/null &
APP_PID=$!
wait_lines 1
echo "calcapp is running as pid $APP_PID ($(head -n1 "$OUT"))"

heading "before"
show_next 4

heading "patching calcapp::pricing::calc in pid $APP_PID"
run "$RPATCH" attach "$APP_PID" --lib "$FIX" --func crate::pricing::calc

heading "patched"
show_next 1 >/dev/null # a value computed just before the patch may still be on its way out
show_next 4

heading "status"
run "$RPATCH" status "$APP_PID"

heading "rolling back"
run "$RPATCH" rollback "$APP_PID"

heading "rolled back"
show_next 1 >/dev/null
show_next 4

heading "status"
run "$RPATCH" status "$APP_PID"

echo
echo "The same process (pid $APP_PID) ran throughout; stopping it now."
