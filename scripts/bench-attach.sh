#!/usr/bin/env bash
# Benchmark: time of `rpatch attach` and `rpatch rollback` on the demo target (a Rust program),
# the part of it during which the target's threads are stopped, and gdb's `call dlopen` on the
# same process for comparison. Run by hand: scripts/bench-attach.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-30}
scripts/install-deps.sh
command -v hyperfine >/dev/null || { apt-get update -qq && apt-get install -y -qq hyperfine; }
RPATCH=$(scripts/build-release.sh)
make -C test-targets --quiet -j"$(nproc)"
cargo build --release --quiet --manifest-path test-targets/rust/Cargo.toml --target-dir test-targets/target

APP="$PWD/test-targets/target/release/calcapp"
FIX="$PWD/test-targets/target/release/libcalcapp.so"
WORK=$(mktemp -d)
export RPATCH_STATE_DIR="$WORK/state"
"$APP" --interval-ms 50 >"$WORK/out" </dev/null &
PID=$!
trap 'kill -9 $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$WORK"' EXIT
while [ ! -s "$WORK/out" ]; do sleep 0.01; done

attach="$RPATCH attach $PID --lib $FIX --func crate::pricing::calc"
rollback="$RPATCH rollback $PID --all"
hyperfine --warmup 3 --runs "$RUNS" -N --export-json "$WORK/attach.json" \
  --prepare "$rollback" "$attach" >/dev/null 2>&1 || hyperfine --warmup 3 --runs "$RUNS" \
  --export-json "$WORK/attach.json" --prepare "sh -c '$rollback >/dev/null 2>&1 || true'" "$attach" >/dev/null
$attach >/dev/null
hyperfine --warmup 3 --runs "$RUNS" --export-json "$WORK/rollback.json" \
  --prepare "sh -c '$attach >/dev/null'" "$rollback" >/dev/null

# Frozen time as rpatch reports it.
frozen_attach=(); frozen_rollback=()
$rollback >/dev/null 2>&1 || true
for _ in $(seq 1 "$RUNS"); do
  frozen_attach+=("$($attach --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["frozen_us"])')")
  frozen_rollback+=("$($rollback --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["frozen_us"])')")
done

# gdb for comparison: one `call dlopen` on a fresh copy of each kind of target (gdb's call can
# break the target, so each gets its own): wall time, and whether the target survived.
gdb_line="n/a (gdb not installed)"
gdb_call() { # PID -> "<ms> ms, exit <rc>"
  local t0 t1 rc=0
  t0=$(date +%s%N)
  gdb -q -batch -p "$1" -ex "call (void*)dlopen(\"$WORK/gdbfix.so\", 2)" >"$WORK/gdb.log" 2>&1 || rc=$?
  t1=$(date +%s%N)
  echo "$(( (t1 - t0) / 1000000 )) ms, gdb exit $rc"
}
target_state() { # PID ERRFILE
  sleep 0.5
  if ! kill -0 "$1" 2>/dev/null || grep -q ' Z ' "/proc/$1/stat"; then
    echo "target DIED $(grep -m1 -A2 panicked "$2" 2>/dev/null | tail -2 | tr '\n' ' ')"
  else
    echo "target alive"
  fi
}
if command -v gdb >/dev/null; then
  cp "$FIX" "$WORK/gdbfix.so"
  mkfifo "$WORK/cin"
  "$PWD/test-targets/build/basic_pie" <"$WORK/cin" >"$WORK/c-out" 2>"$WORK/c-err" &
  C_PID=$!
  exec 7>"$WORK/cin"
  while [ ! -s "$WORK/c-out" ]; do sleep 0.01; done
  c_result="$(gdb_call $C_PID); $(target_state $C_PID "$WORK/c-err")"
  exec 7>&-
  kill -9 $C_PID 2>/dev/null || true; wait $C_PID 2>/dev/null || true
  "$APP" --interval-ms 50 >"$WORK/gdb-out" 2>"$WORK/gdb-err" </dev/null &
  GDB_PID=$!
  while [ ! -s "$WORK/gdb-out" ]; do sleep 0.01; done
  r_result="$(gdb_call $GDB_PID); $(target_state $GDB_PID "$WORK/gdb-err")"
  kill -9 $GDB_PID 2>/dev/null || true; wait $GDB_PID 2>/dev/null || true
  gdb_line="C target in read(): $c_result | Rust demo target in nanosleep: $r_result"
fi
survived=yes
if grep -q ' Z ' /proc/$PID/stat 2>/dev/null || ! kill -0 $PID 2>/dev/null; then survived=NO; fi

python3 - "$WORK" "${frozen_attach[*]}" "${frozen_rollback[*]}" "$gdb_line" "$survived" <<'PY'
import json, sys, statistics as st
work, fa, fr, gdb, survived = sys.argv[1], sys.argv[2].split(), sys.argv[3].split(), sys.argv[4], sys.argv[5]
def row(name, path):
    r = json.load(open(f"{work}/{path}"))["results"][0]
    t = sorted(r["times"])
    print(f"| {name:<28} | {st.median(t)*1000:8.1f} | {t[0]*1000:8.1f} | {t[-1]*1000:8.1f} | {r['stddev']*1000:7.1f} |")
def frow(name, xs):
    xs = sorted(int(x) for x in xs)
    print(f"| {name:<28} | {st.median(xs)/1000:8.3f} | {xs[0]/1000:8.3f} | {xs[-1]/1000:8.3f} |         |")
print("| what (ms)                    |   median |      min |      max |  stddev |")
print("|------------------------------|----------|----------|----------|---------|")
row("rpatch attach (wall)", "attach.json")
row("rpatch rollback (wall)", "rollback.json")
frow("attach: threads stopped", fa)
frow("rollback: threads stopped", fr)
print(f"rpatch's target survived every cycle: {survived}")
print(f"gdb: {gdb}")
PY
