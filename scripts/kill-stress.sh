#!/usr/bin/env bash
# kill-stress N: SIGKILLs rpatch at N random instants during attach and rollback against an
# 8-thread target (busy threads, threads blocked in read/nanosleep/epoll_wait), and after every
# kill checks that the target survived: alive, no thread left traced or stopped, answering, and
# running either the old or the new code — exactly what `rpatch status` says memory holds.
# Every 10 kills, `rollback --all` must bring it back to the original. All of it beside a CPU hog
# per core, with thread-directed real-time signals to every thread of the target at ~1 kHz: at
# the end every signal sent must have been handled, and nothing a killed run left in slack bytes
# may remain. Prints survivors/N. Run by hand: scripts/kill-stress.sh 200 (BUILD=debug, HOGS=0).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-200}
HZ=${HZ:-1000}
# shellcheck source=scripts/stress-common.sh
. scripts/stress-common.sh
i=0; op=none; delay_us=0
fail() { echo "FAIL after kill $i ($op at ${delay_us} us): $*" >&2; exit 1; }
start_target
start_sender sigsend "$TPID" "$HZ"

# How long one attach and one rollback take, to spread the kills over them.
for _ in 1 2 3; do # the last of three rounds: warm caches
  t0=$(date +%s%N); "$RPATCH" attach "$TPID" --lib "$LIB" --func compute --timeout 30 >/dev/null
  t1=$(date +%s%N); "$RPATCH" rollback "$TPID" --timeout 30 >/dev/null
  t2=$(date +%s%N)
done
span_attach=$(( (t1 - t0) / 1000 )); span_rollback=$(( (t2 - t1) / 1000 ))
echo "attach takes ~${span_attach} us, rollback ~${span_rollback} us; killing at random instants within them"

survived=0; killed_mid=0
for i in $(seq 1 "$N"); do
  applied=$("$RPATCH" status "$TPID" --json | grep -o '"state":"applied"' | wc -l || true)
  if [ "$applied" -gt 0 ] && (( RANDOM % 2 )); then
    op=rollback; span=$span_rollback; cmd=("$RPATCH" rollback "$TPID" --timeout 30)
  else
    op=attach; span=$span_attach; cmd=("$RPATCH" attach "$TPID" --lib "$LIB" --func compute --timeout 30)
  fi
  delay_us=$(( (RANDOM * 32768 + RANDOM) % (span + 1) ))
  "${cmd[@]}" >/dev/null 2>&1 &
  rp=$!
  sleep "$(printf '0.%06d' "$delay_us")"
  if kill -9 "$rp" 2>/dev/null; then killed_mid=$((killed_mid + 1)); fi
  wait "$rp" 2>/dev/null || true

  state=$(awk '{print $3}' "/proc/$TPID/stat" 2>/dev/null || echo gone)
  [ "$state" != gone ] && [ "$state" != Z ] || fail "target died"
  for task in /proc/"$TPID"/task/*; do
    tracer=$(awk '/^TracerPid/ {print $2}' "$task/status")
    tstate=$(awk '/^State/ {print $2}' "$task/status")
    [ "$tracer" = 0 ] || fail "thread ${task##*/} still traced by $tracer"
    [ "$tstate" != t ] && [ "$tstate" != T ] || fail "thread ${task##*/} left stopped ($tstate)"
  done
  reply=$(ask "call 5")
  status=$("$RPATCH" status "$TPID" --json) || fail "status failed"
  top=$(echo "$status" | grep -o '"state":"applied","active":true' | wc -l || true)
  case "$reply" in
    "compute 5 6") [ "$top" = 0 ] || fail "status says applied, target runs the original" ;;
    "compute 5 500") [ "$top" = 1 ] || fail "target runs the patch, status does not say so: $status" ;;
    *) fail "unexpected reply '$reply'" ;;
  esac
  echo "$status" | grep -q '"state":"tampered"' && fail "status reports tampered memory: $status"
  if (( i % 10 == 0 )); then
    "$RPATCH" rollback "$TPID" --all --timeout 30 >/dev/null 2>&1 || true
    [ "$(ask 'call 5')" = "compute 5 6" ] || fail "rollback --all did not restore the original"
  fi
  survived=$((survived + 1))
done
"$RPATCH" rollback "$TPID" --all --timeout 30 >/dev/null 2>&1 || true
[ "$(ask 'call 5')" = "compute 5 6" ] || fail "rollback --all did not restore the original"
stop_senders
wait_handled
slack_left=$("$RPATCH" status "$TPID" --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["slack_left"]))')
echo "| metric | value |"
echo "|---|---|"
echo "| load | $HOGS CPU hog(s), $HZ Hz thread-directed signals to every thread, $BUILD build |"
echo "| kills (rpatch SIGKILLed before it finished) | $killed_mid of $N runs |"
echo "| target survived, untraced, consistent with status | $survived/$N |"
echo "| target threads | $(ls /proc/$TPID/task | wc -l) |"
echo "| signals sent / handled | $SENT / $HANDLED |"
echo "| spurious EINTR in the target (by call) | $(echo "$STATS" | grep -o "spurious_[a-z]*=[0-9]*" | tr "\n" " ") |"
echo "| bootstrap code left in slack at the end | $slack_left |"
[ "$HANDLED" = "$SENT" ] || fail "signals sent $SENT != handled $HANDLED"
[ "$slack_left" = 0 ] || fail "bootstrap code left in slack"
# Restartable calls must never see EINTR. A SIGKILL between interrupting a thread blocked in
# epoll_wait (plain EINTR, never restarted) and rewinding its registers leaves that call failing,
# as SIGSTOP/SIGCONT would: at most one per kill.
[ "$(field "$STATS" spurious_read)" = 0 ] || fail "spurious EINTR in read: $STATS"
[ "$(field "$STATS" spurious_nanosleep)" = 0 ] || fail "spurious EINTR in nanosleep: $STATS"
(( $(field "$STATS" spurious_epoll) <= killed_mid )) || fail "more spurious epoll EINTR than kills: $STATS"
[ "$survived" = "$N" ] && echo PASS
