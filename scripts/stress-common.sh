# Sourced by the stress scripts: builds rpatch (release unless BUILD=debug) and the test targets,
# puts the machine under the load a shared CI machine has — a CPU hog per core — and provides
# targets under a storm of thread-directed real-time signals to every thread.
#   start_target [SLOW_MS]  the 8-thread sigstorm target as a coprocess answering on fds 5
#                           (replies) and 6 (commands); sets TPID
#   start_sender TOOL ARGS  sigsend/sigontrace in the background (stdin a fifo); sets SENDER_PIDS
#   stop_senders            ends them and sets SENT (signals queued, all senders)
#   ask CMD                 one command to the target, its reply on stdout
#   wait_handled            waits (bounded) until the target handled SENT signals; sets STATS,
#                           HANDLED, SPURIOUS
# Sets RPATCH, LIB, WORK, RPATCH_STATE_DIR; on exit kills the target, the senders, the hogs and
# anything in EXTRA_PIDS, and removes WORK.
scripts/install-deps.sh
BUILD=${BUILD:-release}
if [ "$BUILD" = debug ]; then
  cargo build --quiet
  RPATCH="$PWD/target/debug/rpatch"
else
  RPATCH=$(scripts/build-release.sh)
fi
make -C test-targets --quiet -j"$(nproc)"
LIB="$PWD/test-targets/build/fix_basic.so"
WORK=$(mktemp -d)
export RPATCH_STATE_DIR="$WORK/state"
EXTRA_PIDS=""
HOG_PIDS=""
SENDER_PIDS=""
TPID=""
HOGS=${HOGS:-$(nproc)}
for _ in $(seq 1 "$HOGS"); do
  sh -c 'while :; do :; done' &
  HOG_PIDS="$HOG_PIDS $!"
done
cleanup() {
  # shellcheck disable=SC2086
  { kill -9 $TPID $SENDER_PIDS $HOG_PIDS $EXTRA_PIDS && wait; } 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
echo "load: $HOGS CPU hog(s) beside the run; build: $BUILD"

start_target() {
  if [ -n "$TPID" ]; then
    exec 5<&- 6>&-
    { kill -9 "$TPID" && wait "$TPID"; } 2>/dev/null || true
  fi
  coproc TARGET { exec "$PWD/test-targets/build/sigstorm" 8 "${1:-0}"; }
  TPID=$TARGET_PID
  exec 5<&"${TARGET[0]}" 6>&"${TARGET[1]}"
  read -r -u 5 _ready
}

ask() {
  echo "$1" >&6
  local reply
  read -r -t 60 -u 5 reply || { echo "FAIL: target stopped answering '$1' (hang or crash)" >&2; exit 1; }
  echo "$reply"
}

SENDERS=0
start_sender() {
  local tool=$1; shift
  SENDERS=$((SENDERS + 1))
  local n=$SENDERS
  mkfifo "$WORK/sender$n-in"
  "$PWD/test-targets/build/$tool" "$@" <"$WORK/sender$n-in" >"$WORK/sender$n-out" &
  SENDER_PIDS="$SENDER_PIDS $!"
  eval "exec $((10 + n))>\"$WORK/sender$n-in\""
  until [ -s "$WORK/sender$n-out" ]; do sleep 0.01; done
}

stop_senders() {
  local n pid
  SENT=0
  for n in $(seq 1 "$SENDERS"); do eval "exec $((10 + n))>&-"; done
  for pid in $SENDER_PIDS; do
    wait "$pid" || { echo "FAIL: a signal sender failed (queue full or target gone)" >&2; exit 1; }
  done
  for n in $(seq 1 "$SENDERS"); do
    SENT=$((SENT + $(sed -n 's/^sent //p' "$WORK/sender$n-out")))
    rm -f "$WORK/sender$n-in" "$WORK/sender$n-out"
  done
  SENDERS=0; SENDER_PIDS=""
}

field() { local v=${1#*"$2"=}; echo "${v%% *}"; }

wait_handled() {
  for _ in $(seq 1 3000); do
    STATS=$(ask stats)
    HANDLED=$(field "$STATS" handled)
    [ "$HANDLED" -ge "$SENT" ] && break
    sleep 0.01
  done
  SPURIOUS=$(field "$STATS" spurious)
}

# Whether the slack bytes named in rpatch -v output ("bootstrapped from N bytes of slack at ADDR
# in PATH") hold the module file's bytes in the target's memory again.
slack_restored() {
  python3 - "$TPID" "$1" <<'PY'
import re, sys
pid, log = sys.argv[1], open(sys.argv[2]).read()
m = re.search(r"bootstrapped from (\d+) bytes of slack at (0x[0-9a-f]+) in ([^\s;]+)", log)
if not m:
    sys.exit(0)  # a reused stub region needs no bootstrap
n, addr, path = int(m[1]), int(m[2], 16), m[3]
for line in open(f"/proc/{pid}/maps"):
    f = line.split()
    lo, hi = (int(x, 16) for x in f[0].split("-"))
    if lo <= addr and addr + n <= hi and line.rstrip().endswith(path):
        mem = open(f"/proc/{pid}/mem", "rb"); mem.seek(addr); got = mem.read(n)
        disk = open(path, "rb"); disk.seek(addr - lo + int(f[2], 16)); want = disk.read(n)
        want += bytes(n - len(want))
        sys.exit(0 if got == want else 1)
sys.exit(1)
PY
}
