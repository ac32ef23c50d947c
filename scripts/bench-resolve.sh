#!/usr/bin/env bash
# Benchmark of the symbols layer on a large Rust binary (>= 100 MB of .debug_info):
#   1. `rpatch resolve --exe BIN NAME --no-inlined`: a name with its size, file:line and
#      signature (symbol table + unit address ranges + one DWARF unit, zero-copy); warm cache.
#   2. `rpatch resolve --exe BIN NAME`: the same plus the full scan for inlined copies, which
#      streams through all of .debug_info on every core; throughput from rpatch's own timer.
#   3. gdb (`info address NAME`) and addr2line (the function's address) on the same binary.
# Peak memory of each (maximum resident set size, /usr/bin/time -v) beside the file size.
#
# The binary is built here, once, from a crate with many dependencies from crates.io
# (syn, tokio, cranelift, naga, image, reqwest/rustls, regex, clap, ...) at debug=2: the first
# run downloads and compiles them (tens of minutes on two cores); later runs reuse the build.
# Run by hand: scripts/bench-resolve.sh [RUNS]     (RPATCH_BENCH_NO_GDB=1 skips gdb: ~30 s)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RUNS=${1:-10}
WORK=${RPATCH_BENCH_DIR:-$ROOT/target/bench-resolve}
NAME=bigapp::pricing::calc
command -v hyperfine >/dev/null || { apt-get update -qq && apt-get install -y -qq hyperfine; }
[ -x /usr/bin/time ] || { apt-get update -qq && apt-get install -y -qq time; }

# --- the large binary (scripts/bench/bigapp.sh builds it once) ---------------------------
# shellcheck source=scripts/bench/bigapp.sh
. scripts/bench/bigapp.sh

section_size() { # FILE SECTION -> bytes
  readelf -SW "$1" | python3 -c '
import re, sys
for l in sys.stdin:
    m = re.match(r"\s*\[\s*\d+\]\s+(\S+)\s+\S+\s+[0-9a-f]+\s+[0-9a-f]+\s+([0-9a-f]+)", l)
    if m and m.group(1) == sys.argv[1]:
        print(int(m.group(2), 16)); break
else:
    print(0)' "$2"
}
INFO=$(section_size "$BIN" .debug_info)
FILE=$(stat -c %s "$BIN")
if [ "$INFO" -lt 100000000 ]; then
  echo "warning: .debug_info is only $((INFO / 1000000)) MB (< 100 MB)" >&2
fi

RPATCH=$(scripts/build-release.sh)
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

# Warm the page cache (the targets are about warm runs).
cat "$BIN" >/dev/null
"$RPATCH" resolve --exe "$BIN" "$NAME" --json >"$OUT/full.json"

peak_kb() { # CMD... -> maximum resident set size in kB
  /usr/bin/time -v "$@" 2>"$OUT/time.log" >/dev/null || true
  awk -F: '/Maximum resident set size/ { gsub(/ /, "", $2); print $2 }' "$OUT/time.log"
}
median_ms() { # hyperfine JSON -> median ms
  python3 -c 'import json,sys; print("%.1f" % (json.load(open(sys.argv[1]))["results"][0]["median"] * 1000))' "$1"
}

# 1. A name with size, file:line and signature.
hyperfine -N --warmup 2 --runs "$RUNS" --export-json "$OUT/resolve.json" \
  "$RPATCH resolve --exe $BIN $NAME --no-inlined --json" >/dev/null
RESOLVE_MS=$(median_ms "$OUT/resolve.json")
RESOLVE_KB=$(peak_kb "$RPATCH" resolve --exe "$BIN" "$NAME" --no-inlined --json)

# 2. With the full scan for inlined copies: rpatch's own timer of the scan, and CPU time.
SCAN_RUNS=$(( RUNS < 5 ? RUNS : 5 ))
scans=()
for _ in $(seq 1 "$SCAN_RUNS"); do
  "$RPATCH" resolve --exe "$BIN" "$NAME" --json >"$OUT/full.json"
  scans+=("$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["timings"]["inline_scan_ms"])' "$OUT/full.json")")
done
SCAN_MS=$(printf '%s\n' "${scans[@]}" | sort -n | awk '{ a[NR] = $1 } END { printf "%.1f", a[int((NR + 1) / 2)] }')
SCAN_MBS=$(python3 -c "print('%.0f' % ($INFO / 1e6 / ($SCAN_MS / 1000)))")
hyperfine -N --warmup 1 --runs "$SCAN_RUNS" --export-json "$OUT/scan.json" \
  "$RPATCH resolve --exe $BIN $NAME --json" >/dev/null
FULL_MS=$(median_ms "$OUT/scan.json")
CPU=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1]))["results"][0]; print("%.2f" % (r["user"] + r["system"]))' "$OUT/scan.json")
FULL_KB=$(peak_kb "$RPATCH" resolve --exe "$BIN" "$NAME" --json)
INLINED=$(python3 -c 'import json,sys; m=json.load(open(sys.argv[1]))["matches"][0]; print(len(m["inlined"] or []))' "$OUT/full.json")
ADDR=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["matches"][0]["address"])' "$OUT/full.json")
SIG=$(python3 -c 'import json,sys; m=json.load(open(sys.argv[1]))["matches"][0]; print(m["signature_text"], m["location"])' "$OUT/full.json")

# 3. gdb and addr2line on the same binary.
GDB_MS="n/a"; GDB_KB="n/a"
if command -v gdb >/dev/null && [ -z "${RPATCH_BENCH_NO_GDB:-}" ]; then
  t0=$(date +%s%N)
  gdb -q -batch -ex "info address $NAME" "$BIN" >"$OUT/gdb.log" 2>&1 || true
  t1=$(date +%s%N)
  GDB_MS=$(( (t1 - t0) / 1000000 ))
  GDB_KB=$(peak_kb gdb -q -batch -ex "info address $NAME" "$BIN")
fi
A2L_MS="n/a"; A2L_KB="n/a"
if command -v addr2line >/dev/null; then
  hyperfine -N --warmup 1 --runs 3 --export-json "$OUT/a2l.json" "addr2line -f -C -i -e $BIN $ADDR" >/dev/null
  A2L_MS=$(median_ms "$OUT/a2l.json")
  A2L_KB=$(peak_kb addr2line -f -C -i -e "$BIN" "$ADDR")
fi

mb() { python3 -c "print('%.0f' % ($1 / 1000))"; }
echo
echo "binary: $BIN"
echo "  file $((FILE / 1000000)) MB, .debug_info $((INFO / 1000000)) MB, $(nproc) cores"
echo "  $NAME: $SIG, inlined into $INLINED places"
echo
printf '| %-58s | %10s | %12s |\n' "operation (warm page cache)" "time" "peak RSS"
printf '|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..60})" "$(printf -- '-%.0s' {1..12})" "$(printf -- '-%.0s' {1..14})"
printf '| %-58s | %7s ms | %9s MB |\n' "rpatch resolve NAME (size, file:line, signature)" "$RESOLVE_MS" "$(mb "$RESOLVE_KB")"
printf '| %-58s | %7s ms | %9s MB |\n' "rpatch resolve NAME + inlined-copies scan (whole run)" "$FULL_MS" "$(mb "$FULL_KB")"
printf '| %-58s | %7s ms | %12s |\n' "  of which the scan: $SCAN_MBS MB/s of .debug_info (CPU ${CPU}s)" "$SCAN_MS" ""
printf '| %-58s | %7s ms | %9s MB |\n' "gdb -batch -ex 'info address NAME'" "$GDB_MS" "$( [ "$GDB_KB" = n/a ] && echo n/a || mb "$GDB_KB")"
printf '| %-58s | %7s ms | %9s MB |\n' "addr2line -f -C -i ADDRESS" "$A2L_MS" "$( [ "$A2L_KB" = n/a ] && echo n/a || mb "$A2L_KB")"
echo
echo "targets: resolve <= 150 ms; scan >= 200 MB/s on 2 cores; peak memory far below the file size"
echo "(machine load while measuring: $(cut -d' ' -f1-3 /proc/loadavg))"
