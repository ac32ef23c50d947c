#!/usr/bin/env bash
# cycle-stress N: N attach/rollback cycles on an 8-thread target (busy threads, threads blocked
# in read/nanosleep/epoll_wait) beside a CPU hog per core, while an external sender queues a
# thread-directed real-time signal to every thread of it (the main thread included) at ~1 kHz.
# Passes when: every cycle succeeds and the patch is visible while applied; 0 crashes; signals
# sent == signals handled; 0 spurious EINTR; memory map count and fd count stable and the patch
# library mapped once. Run by hand: scripts/cycle-stress.sh 1000 (BUILD=debug for a debug build,
# HOGS=0 for a quiet machine).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000}
HZ=${HZ:-1000}
# shellcheck source=scripts/stress-common.sh
. scripts/stress-common.sh
fail() { echo "FAIL: $*" >&2; exit 1; }

start_target
start_sender sigsend "$TPID" "$HZ"
maps_after_first=""; fds_after_first=""
start=$(date +%s.%N)
for i in $(seq 1 "$N"); do
  "$RPATCH" attach "$TPID" --lib "$LIB" --func compute --timeout 30 >/dev/null || fail "attach $i exited $?"
  [ "$(ask 'call 5')" = "compute 5 500" ] || fail "cycle $i: patch not visible"
  "$RPATCH" rollback "$TPID" --timeout 30 >/dev/null || fail "rollback $i exited $?"
  [ "$(ask 'call 5')" = "compute 5 6" ] || fail "cycle $i: rollback not visible"
  if [ "$i" = 1 ]; then
    maps_after_first=$(wc -l < "/proc/$TPID/maps"); fds_after_first=$(ls "/proc/$TPID/fd" | wc -l)
  fi
  if (( i % 100 == 0 )); then echo "  $i cycles, $(ask stats)"; fi
done
elapsed=$(echo "$(date +%s.%N) - $start" | bc)
stop_senders
wait_handled
maps_end=$(wc -l < "/proc/$TPID/maps"); fds_end=$(ls "/proc/$TPID/fd" | wc -l)
# The library is mapped from the sealed memfd rpatch loads it through (or, where a memfd cannot
# serve, from a private copy).
lib_re="/memfd:rpatch:|$RPATCH_STATE_DIR/libs/|/\.rpatch-"
lib_maps=$(grep -cE "$lib_re" "/proc/$TPID/maps" || true)
lib_files=$( (grep -E "$lib_re" "/proc/$TPID/maps" || true) | awk '{print $5}' | sort -u | wc -l)
crashed=no; kill -0 "$TPID" 2>/dev/null || crashed=yes
traced=$(grep TracerPid "/proc/$TPID/status" | awk '{print $2}')

printf '| metric | value |\n|---|---|\n'
printf '| load | %s CPU hog(s), %s Hz thread-directed signals to every thread, %s build |\n' "$HOGS" "$HZ" "$BUILD"
printf '| cycles (attach + rollback) | %s in %.1f s (%.1f ms per cycle) |\n' "$N" "$elapsed" "$(echo "$elapsed * 1000 / $N" | bc -l)"
printf '| signals sent / handled | %s / %s |\n' "$SENT" "$HANDLED"
printf '| spurious EINTR | %s |\n' "$SPURIOUS"
printf '| maps lines after cycle 1 / end | %s / %s |\n' "$maps_after_first" "$maps_end"
printf '| fds after cycle 1 / end | %s / %s |\n' "$fds_after_first" "$fds_end"
printf '| patch library mapped from | %s file(s), %s mappings |\n' "$lib_files" "$lib_maps"
printf '| target crashed / left traced | %s / %s |\n' "$crashed" "$([ "$traced" = 0 ] && echo no || echo "yes ($traced)")"

[ "$crashed" = no ] || fail "target crashed"
[ "$traced" = 0 ] || fail "target left traced"
[ "$HANDLED" = "$SENT" ] || fail "signals sent $SENT != handled $HANDLED"
[ "$SPURIOUS" = 0 ] || fail "$SPURIOUS spurious EINTR"
[ "$maps_end" = "$maps_after_first" ] || fail "memory maps grew: $maps_after_first -> $maps_end"
[ "$fds_end" = "$fds_after_first" ] || fail "fds grew: $fds_after_first -> $fds_end"
[ "$lib_files" = 1 ] || fail "patch library mapped from $lib_files files"
echo PASS
