#!/usr/bin/env bash
# first-attach-stress N: N fresh 8-thread targets, each attached once — the attach that maps
# rpatch's call stub through the bootstrap — beside a CPU hog per core, under a ~1 kHz storm of
# thread-directed real-time signals to every thread, plus one signal (whose handler sleeps 50 ms)
# queued to each thread the moment it becomes traced, so it lands on the thread rpatch borrows.
# Each trial must end patched, alive and untraced, with signals sent == handled, 0 spurious
# EINTR, and the slack the bootstrap used holding the module file's bytes again.
# Run by hand: scripts/first-attach-stress.sh 300 (BUILD=debug for a debug build, HOGS=0).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-300}
HZ=${HZ:-1000}
# shellcheck source=scripts/stress-common.sh
. scripts/stress-common.sh
trial=0
fail() { echo "FAIL in trial $trial: $*" >&2; [ -f "$WORK/attach.log" ] && tail -20 "$WORK/attach.log" >&2; exit 1; }

passed=0; cut_short=0; moved=0; sent_total=0; attach_ms_total=0
for trial in $(seq 1 "$N"); do
  rm -rf "$RPATCH_STATE_DIR"
  start_target 50
  start_sender sigsend "$TPID" "$HZ"
  start_sender sigontrace "$TPID"
  t0=$(date +%s%N)
  "$RPATCH" attach "$TPID" --lib "$LIB" --func compute --timeout 30 -v >/dev/null 2>"$WORK/attach.log" \
    || fail "attach exited $?"
  attach_ms_total=$(( attach_ms_total + ($(date +%s%N) - t0) / 1000000 ))
  [ "$(ask 'call 5')" = "compute 5 500" ] || fail "patch not visible"
  stop_senders
  wait_handled
  state=$(awk '{print $3}' "/proc/$TPID/stat" 2>/dev/null || echo gone)
  [ "$state" != gone ] && [ "$state" != Z ] || fail "target died"
  for task in /proc/"$TPID"/task/*; do
    tracer=$(awk '/^TracerPid/ {print $2}' "$task/status")
    [ "$tracer" = 0 ] || fail "thread ${task##*/} still traced by $tracer"
  done
  [ "$HANDLED" = "$SENT" ] || fail "signals sent $SENT != handled $HANDLED"
  [ "$SPURIOUS" = 0 ] || fail "$SPURIOUS spurious EINTR ($STATS)"
  grep -q "bytes of slack at" "$WORK/attach.log" || fail "the attach did not bootstrap"
  slack_restored "$WORK/attach.log" || fail "the slack does not hold the file's bytes"
  grep -q "a signal interrupted the bootstrap" "$WORK/attach.log" && cut_short=$((cut_short + 1))
  grep -q "arriving in it delivered at the thread's own code" "$WORK/attach.log" && moved=$((moved + 1))
  sent_total=$((sent_total + SENT))
  passed=$((passed + 1))
  if (( trial % 50 == 0 )); then echo "  $trial trials passed"; fi
done
echo "| metric | value |"
echo "|---|---|"
echo "| load | $HOGS CPU hog(s), $HZ Hz thread-directed signals to every thread + one 50 ms-handler signal per traced thread, $BUILD build |"
echo "| fresh targets patched, alive, untraced, slack restored | $passed/$N |"
echo "| bootstraps with a signal arriving in them, delivered at the thread's own code | $moved |"
echo "| of which cut short before the mappings were done (run again) | $cut_short |"
echo "| signals sent = handled, 0 spurious EINTR | $sent_total |"
echo "| mean attach wall time | $(( attach_ms_total / N )) ms |"
[ "$passed" = "$N" ] && echo PASS
