#!/usr/bin/env bash
# cycle-stress N: N attach/rollback cycles on an 8-thread target (busy threads, threads blocked
# in read/nanosleep/epoll_wait) while an external sender queues a real-time signal to it at
# ~1 kHz. Passes when: every cycle succeeds and the patch is visible while applied; 0 crashes;
# signals sent == signals handled; 0 spurious EINTR; memory map count and fd count stable and
# the patch library mapped once. Run by hand: scripts/cycle-stress.sh 1000
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000}
HZ=${HZ:-1000}
# shellcheck source=scripts/stress-common.sh
. scripts/stress-common.sh
ask() { echo "$1" >&6; local reply; read -r -t 30 -u 5 reply || { echo "FAIL: target stopped answering ($1)" >&2; exit 1; }; echo "$reply"; }

mkfifo "$WORK/sender-in"
"$PWD/test-targets/build/sigsend" "$TPID" "$HZ" <"$WORK/sender-in" >"$WORK/sender-out" &
SPID=$!
EXTRA_PIDS=$SPID
exec 8>"$WORK/sender-in"
until grep -q sending "$WORK/sender-out" 2>/dev/null; do sleep 0.01; done

fail() { echo "FAIL: $*" >&2; exit 1; }
maps_after_first=""; fds_after_first=""
start=$(date +%s.%N)
for i in $(seq 1 "$N"); do
  "$RPATCH" attach "$TPID" --lib "$LIB" --func compute >/dev/null || fail "attach $i exited $?"
  [ "$(ask 'call 5')" = "compute 5 500" ] || fail "cycle $i: patch not visible"
  "$RPATCH" rollback "$TPID" >/dev/null || fail "rollback $i exited $?"
  [ "$(ask 'call 5')" = "compute 5 6" ] || fail "cycle $i: rollback not visible"
  if [ "$i" = 1 ]; then
    maps_after_first=$(wc -l < "/proc/$TPID/maps"); fds_after_first=$(ls "/proc/$TPID/fd" | wc -l)
  fi
  if (( i % 100 == 0 )); then echo "  $i cycles, $(ask stats)"; fi
done
elapsed=$(echo "$(date +%s.%N) - $start" | bc)
exec 8>&-
wait "$SPID" || fail "signal sender failed (queue full or target gone)"
sent=$(sed -n 's/^sent //p' "$WORK/sender-out")
# Every queued signal must be handled: wait (bounded) for the last ones to be delivered.
for _ in $(seq 1 300); do
  stats=$(ask stats); handled=${stats#*handled=}; handled=${handled%% *}
  [ "$handled" -ge "$sent" ] && break
  sleep 0.01
done
spurious=${stats#*spurious=}; spurious=${spurious%% *}
maps_end=$(wc -l < "/proc/$TPID/maps"); fds_end=$(ls "/proc/$TPID/fd" | wc -l)
lib_maps=$(grep -c "$RPATCH_STATE_DIR/libs/" "/proc/$TPID/maps" || true)
lib_files=$(grep "$RPATCH_STATE_DIR/libs/" "/proc/$TPID/maps" | awk '{print $6}' | sort -u | wc -l)
crashed=no; kill -0 "$TPID" 2>/dev/null || crashed=yes
traced=$(grep TracerPid "/proc/$TPID/status" | awk '{print $2}')

printf '| metric | value |\n|---|---|\n'
printf '| cycles (attach + rollback) | %s in %.1f s (%.1f ms per cycle) |\n' "$N" "$elapsed" "$(echo "$elapsed * 1000 / $N" | bc -l)"
printf '| signals sent / handled | %s / %s |\n' "$sent" "$handled"
printf '| spurious EINTR | %s |\n' "$spurious"
printf '| maps lines after cycle 1 / end | %s / %s |\n' "$maps_after_first" "$maps_end"
printf '| fds after cycle 1 / end | %s / %s |\n' "$fds_after_first" "$fds_end"
printf '| patch library mapped from | %s file(s), %s mappings |\n' "$lib_files" "$lib_maps"
printf '| target crashed / left traced | %s / %s |\n' "$crashed" "$([ "$traced" = 0 ] && echo no || echo "yes ($traced)")"

[ "$crashed" = no ] || fail "target crashed"
[ "$traced" = 0 ] || fail "target left traced"
[ "$handled" = "$sent" ] || fail "signals sent $sent != handled $handled"
[ "$spurious" = 0 ] || fail "$spurious spurious EINTR"
[ "$maps_end" = "$maps_after_first" ] || fail "memory maps grew: $maps_after_first -> $maps_end"
[ "$fds_end" = "$fds_after_first" ] || fail "fds grew: $fds_after_first -> $fds_end"
[ "$lib_files" = 1 ] || fail "patch library mapped from $lib_files files"
echo PASS
