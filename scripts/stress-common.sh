# Sourced by the stress scripts: builds rpatch (release) and the test targets, and starts the
# 8-thread sigstorm target as a coprocess answering on fds 5 (replies) and 6 (commands).
# Sets RPATCH, LIB, WORK, RPATCH_STATE_DIR, TPID; kills the target and removes WORK on exit
# (plus any PIDs the caller adds to EXTRA_PIDS).
scripts/install-deps.sh
cargo build --release --quiet
make -C test-targets --quiet -j"$(nproc)"
RPATCH="$PWD/target/release/rpatch"
LIB="$PWD/test-targets/build/fix_basic.so"
WORK=$(mktemp -d)
export RPATCH_STATE_DIR="$WORK/state"
EXTRA_PIDS=""

coproc TARGET { exec "$PWD/test-targets/build/sigstorm" 8; }
TPID=$TARGET_PID
exec 5<&"${TARGET[0]}" 6>&"${TARGET[1]}"
cleanup() {
  # shellcheck disable=SC2086
  { kill -9 "$TPID" $EXTRA_PIDS && wait "$TPID"; } 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
read -r -u 5 _ready
