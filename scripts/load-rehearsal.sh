#!/usr/bin/env bash
# A patch rehearsed on a real HTTP server under load: webapp (tokio + hyper, multi-threaded)
# serves GET /quote/7 = "quote 7 17", computed by webapp::pricing::quote; the patch makes it
# "quote 7 7000". `rpatch rehearse --cycles 10` attaches and rolls back ten times, a curl probe
# checks each state, and beside it all the load runs: wrk (loopback, at most 5 minutes; its Lua
# done() fails on any socket error or non-2xx response) and webcheck, a second client that
# checks every body is the old or the new value. The load lasts exactly as long as the cycles
# (it stops once rehearse creates $RPATCH_CYCLES_DONE: wrk reports at SIGINT), so its latency is
# the latency while patching. Then the same load for the same time against the server alone
# gives the baseline.
#
#   scripts/load-rehearsal.sh                  release builds
#   RPATCH=target/debug/rpatch scripts/load-rehearsal.sh
# Prints requests, socket errors, non-2xx, p50/p99 latency with and without patching, and the
# time the server's threads were stopped per attach/rollback; exits non-zero on any failure.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="$ROOT/test-targets/target/release"
URL_PATH=/quote/7
MAX_SECONDS=300

# --clients PORT SECONDS TAG: the load itself (run by rehearse, and for the baseline): wrk and
# webcheck at once, for SECONDS or until $RPATCH_CYCLES_DONE exists; fails when either does.
if [ "${1:-}" = "--clients" ]; then
    port=$2 seconds=$3 tag=$4
    url="http://127.0.0.1:$port$URL_PATH"
    out="$ROOT/target/load-rehearsal"
    WRK_SUMMARY="$out/$tag.wrk" wrk -t2 -c16 -d"${MAX_SECONDS}s" --timeout 5s \
        -s "$ROOT/scripts/wrk-check.lua" "$url" >"$out/$tag.wrk.log" 2>&1 &
    wrk_pid=$!
    check=0
    "$BIN/webcheck" "$url" --seconds "$seconds" --until "${RPATCH_CYCLES_DONE:-/nonexistent}" \
        --expect 'quote 7 17' --expect 'quote 7 7000' >"$out/$tag.webcheck" 2>&1 || check=$?
    # wrk stops at SIGINT, prints its report and runs done().
    kill -INT "$wrk_pid" 2>/dev/null || true
    wrk_status=0
    wait "$wrk_pid" || wrk_status=$?
    cat "$out/$tag.webcheck" "$out/$tag.wrk.log"
    [ "$check" -eq 0 ] && [ "$wrk_status" -eq 0 ]
    exit
fi

cd "$ROOT"
# A port the kernel has free now (a fixed one collides with another run on the machine).
PORT="${REHEARSAL_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
OUT="$ROOT/target/load-rehearsal"
rm -rf "$OUT"
mkdir -p "$OUT"
scripts/install-deps.sh
if [ -z "${RPATCH:-}" ]; then
    RPATCH=$(scripts/build-release.sh)
fi
cargo build --release --locked --quiet \
    --manifest-path test-targets/rust/Cargo.toml --target-dir test-targets/target \
    -p webapp -p webapp-fix
export RPATCH_STATE_DIR="$OUT/state"

# --- the rehearsal: 10 attach/rollback cycles under load -------------------------------------
echo "load-rehearsal: 10 attach/rollback cycles under load"
status=0
"$RPATCH" rehearse \
    --lib "$BIN/libwebapp.so" --func webapp::pricing::quote \
    --ready-line '^ready ' \
    --probe "curl -fsS http://127.0.0.1:$PORT$URL_PATH" \
    --expect-before '^quote 7 17$' --expect-after '^quote 7 7000$' \
    --cycles 10 \
    --load "'$0' --clients $PORT $MAX_SECONDS rehearsal" \
    --load-timeout 60 \
    --junit "$OUT/rehearsal.xml" --json \
    -- "$BIN/webapp" --port "$PORT" --threads 2 >"$OUT/rehearsal.json" 2>"$OUT/rehearsal.log" || status=$?

# --- baseline: the same load for as long, against the server alone ---------------------------
seconds=$(sed -n 's/^seconds=//p' "$OUT/rehearsal.wrk" 2>/dev/null || true)
seconds=$(python3 -c "import sys; print(max(1.0, float(sys.argv[1] or 0)))" "${seconds:-0}")
APP_PID=""
cleanup() {
    if [ -n "$APP_PID" ]; then kill -KILL "$APP_PID" 2>/dev/null || true; fi
}
trap cleanup EXIT
exec 3< <(exec "$BIN/webapp" --port "$PORT" --threads 2)
APP_PID=$!
read -r -t 30 ready <&3 || { echo "load-rehearsal: webapp did not start" >&2; exit 1; }
echo "load-rehearsal: baseline: the same load for ${seconds} s, no patching"
if ! "$0" --clients "$PORT" "$seconds" baseline >"$OUT/baseline.load" 2>&1; then
    cat "$OUT/baseline.load" >&2
    echo "load-rehearsal: the baseline load failed" >&2
    status=1
fi
kill -TERM "$APP_PID"
wait "$APP_PID" 2>/dev/null || true
APP_PID=""
exec 3<&-

# --- figures --------------------------------------------------------------------------------
python3 - "$OUT" "$status" <<'PY'
import json, os, statistics, sys
out, status = sys.argv[1], int(sys.argv[2])

def wrk(tag):
    path = os.path.join(out, tag + ".wrk")
    if not os.path.exists(path):
        return None
    return dict(line.strip().split("=", 1) for line in open(path) if "=" in line)

def bodies(tag):
    path = os.path.join(out, tag + ".webcheck")
    return open(path).readline().strip() if os.path.exists(path) else "no webcheck output"

for tag, what in (("rehearsal", "while patching (10 cycles)"), ("baseline", "without patching")):
    w = wrk(tag)
    if w is None:
        print(f"load-rehearsal: {what}: no wrk summary")
        continue
    print(f"load-rehearsal: {what}: {int(w['requests'])} requests in {float(w['seconds']):.1f} s, "
          f"{w['socket_errors']} socket errors, {w['non2xx']} non-2xx, "
          f"p50 {int(w['p50_us'])/1000:.2f} ms, p99 {int(w['p99_us'])/1000:.2f} ms, max {int(w['max_us'])/1000:.2f} ms")
    print(f"load-rehearsal:   {bodies(tag)}")
try:
    report = json.load(open(os.path.join(out, "rehearsal.json")))
except (OSError, ValueError):
    report = None
if report:
    frozen = [s["frozen_us"] for s in report["steps"] if s.get("frozen_us") is not None]
    c = report["counts"]
    print(f"load-rehearsal: rehearse: {'passed' if report['passed'] else 'FAILED'}, "
          f"{c['passed']}/{c['tests']} steps passed in {report['total_ms']/1000:.1f} s")
    if frozen:
        print(f"load-rehearsal: threads stopped per attach/rollback: median {statistics.median(frozen):.0f} us, "
              f"max {max(frozen)} us ({len(frozen)} operations)")
    if report.get("error"):
        print(f"load-rehearsal: {report['error']['message']}")
print(f"load-rehearsal: {'PASS' if status == 0 else 'FAIL'}")
PY
if [ "$status" -ne 0 ]; then
    echo "--- rpatch rehearse stderr" >&2
    tail -n 60 "$OUT/rehearsal.log" >&2
fi
exit "$status"
