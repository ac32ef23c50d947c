#!/usr/bin/env bash
# Times `rpatch attach --manifest --all` (and the rollback) over N processes of one build
# (default 50) of test-targets' basic_pie, with the release build, beside nothing else started
# here. Prints the wall time of each run and checks every process answers with the patch.
#
#   scripts/fleet-bench.sh [N] [--jobs J]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-50}
shift || true
rpatch=$(scripts/build-release.sh)
make -C test-targets --quiet -j"$(nproc)"
work=$(mktemp -d)
export RPATCH_STATE_DIR="$work/state"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

# A copy of its own (so no other process on the machine has its build-id): same code, another
# build-id, written over the note's descriptor.
cp test-targets/build/basic_pie "$work/bench_target"
python3 - "$work/bench_target" <<'PY'
import os, sys
path = sys.argv[1]
data = bytearray(open(path, 'rb').read())
at = data.find(b'\x03\x00\x00\x00GNU\x00')
size = int.from_bytes(data[at - 4:at], 'little')
data[at + 8:at + 8 + size] = os.urandom(size)
open(path, 'wb').write(data)
PY
"$rpatch" manifest new --lib test-targets/build/fix_basic.so --module "$work/bench_target" \
    --func compute -o "$work/bench.toml" >/dev/null

fds=()
for i in $(seq "$n"); do
    mkfifo "$work/in.$i"
    "$work/bench_target" <"$work/in.$i" >"$work/out.$i" &
    pids+=($!)
    disown $!                   # killed by PID at the end, without job-control noise
    exec {fd}>"$work/in.$i"     # each target's stdin, kept open
    fds+=("$fd")
done
for i in $(seq "$n"); do
    while ! grep -q '^ready' "$work/out.$i" 2>/dev/null; do sleep 0.01; done
done

# Every target answers `call 5` with $1 (the patch: 500; without: 6).
check() {
    local i
    for i in $(seq "$n"); do echo "call 5" >&"${fds[$((i - 1))]}"; done
    for i in $(seq "$n"); do
        local deadline=$((SECONDS + 30))
        until [ "$(tail -n 1 "$work/out.$i")" = "compute 5 $1" ]; do
            [ $SECONDS -lt $deadline ] || { echo "fleet-bench: target $i: $(tail -n 1 "$work/out.$i")" >&2; exit 1; }
            sleep 0.01
        done
    done
}

timed() {
    local label=$1 start end
    shift
    start=$(date +%s.%N)
    "$rpatch" "$@" >"$work/last.json" || true
    end=$(date +%s.%N)
    python3 -c "import json,sys; r=json.load(open(sys.argv[2])); print('%s: %.0f ms wall, %.0f ms total_ms, counts %s' % (sys.argv[1], (float(sys.argv[4]) - float(sys.argv[3])) * 1000, r['total_ms'], r['counts']))" \
        "$label" "$work/last.json" "$start" "$end"
}
echo "fleet-bench: $n processes, $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
timed "attach --manifest --all" attach --manifest "$work/bench.toml" --all --json "$@"
check 500
timed "attach --manifest --all (again)" attach --manifest "$work/bench.toml" --all --json "$@"
timed "rollback --manifest --all" rollback --manifest "$work/bench.toml" --all --json "$@"
check 6
