#!/usr/bin/env bash
# kill-stress N: SIGKILLs rpatch at N random instants during attach and rollback against an
# 8-thread target (busy threads, threads blocked in read/nanosleep/epoll_wait), and after every
# kill checks that the target survived: alive, no thread left traced or stopped, answering, and
# running either the old or the new code — exactly what `rpatch status` says memory holds.
# Every 10 kills, `rollback --all` must bring it back to the original. Prints survivors/N.
# Run by hand: scripts/kill-stress.sh 200
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-200}
# shellcheck source=scripts/stress-common.sh
. scripts/stress-common.sh
fail() { echo "FAIL after kill $i ($op at ${delay_us} us): $*" >&2; exit 1; }
ask() {
  echo "$1" >&6
  local reply
  read -r -t 10 -u 5 reply || fail "target stopped answering '$1' (hang or crash)"
  echo "$reply"
}

# How long one attach and one rollback take, to spread the kills over them.
for _ in 1 2 3; do # the last of three rounds: warm caches
  t0=$(date +%s%N); "$RPATCH" attach "$TPID" --lib "$LIB" --func compute >/dev/null
  t1=$(date +%s%N); "$RPATCH" rollback "$TPID" >/dev/null
  t2=$(date +%s%N)
done
span_attach=$(( (t1 - t0) / 1000 )); span_rollback=$(( (t2 - t1) / 1000 ))
echo "attach takes ~${span_attach} us, rollback ~${span_rollback} us; killing at random instants within them"

survived=0; killed_mid=0; i=0; op=none; delay_us=0
for i in $(seq 1 "$N"); do
  applied=$("$RPATCH" status "$TPID" --json | grep -o '"state":"applied"' | wc -l || true)
  if [ "$applied" -gt 0 ] && (( RANDOM % 2 )); then
    op=rollback; span=$span_rollback; cmd=("$RPATCH" rollback "$TPID")
  else
    op=attach; span=$span_attach; cmd=("$RPATCH" attach "$TPID" --lib "$LIB" --func compute)
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
    "$RPATCH" rollback "$TPID" --all >/dev/null 2>&1 || true
    [ "$(ask 'call 5')" = "compute 5 6" ] || fail "rollback --all did not restore the original"
  fi
  survived=$((survived + 1))
done
stats=$(ask stats)
echo "| metric | value |"
echo "|---|---|"
echo "| kills (rpatch SIGKILLed before it finished) | $killed_mid of $N runs |"
echo "| target survived, untraced, consistent with status | $survived/$N |"
echo "| target threads | $(ls /proc/$TPID/task | wc -l) |"
echo "| spurious EINTR in the target (by call) | $(echo "$stats" | grep -o "spurious_[a-z]*=[0-9]*" | tr "\n" " ") |"
[ "$survived" = "$N" ] && echo PASS
