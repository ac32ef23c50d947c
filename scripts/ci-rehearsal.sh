#!/usr/bin/env bash
# The CI patch rehearsal of docs/ci/ (GitHub Actions workflow, GitLab CI job), run locally: build
# rpatch, the demo service (calcapp --http) and its patch, then rehearse the patch: 3 attach /
# rollback cycles, each proven by a probe (curl), reported as JUnit and JSON in target/rehearsal/.
#
#   scripts/ci-rehearsal.sh                       as the pipelines do (release build)
#   RPATCH=target/debug/rpatch scripts/ci-rehearsal.sh   with an rpatch already built
#   REHEARSAL_PORT=N (default: a free one)        the service's loopback port
# Exits as rpatch rehearse does: 0 when every step passed, 24 when a check failed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# A port the kernel has free now (a fixed one collides with another run on the machine).
PORT="${REHEARSAL_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
OUT="$ROOT/target/rehearsal"
mkdir -p "$OUT"

if [ -z "${RPATCH:-}" ]; then
    RPATCH=$(scripts/build-release.sh)
fi
cargo build --release --locked --quiet \
    --manifest-path test-targets/rust/Cargo.toml --target-dir test-targets/target \
    -p calcapp -p calcapp-fix

# A journal of its own, so that a developer's /var/lib/rpatch is left alone.
export RPATCH_STATE_DIR="${RPATCH_STATE_DIR:-$OUT/state}"

status=0
"$RPATCH" rehearse \
    --lib test-targets/target/release/libcalcapp.so \
    --func crate::pricing::calc \
    --ready-port "$PORT" \
    --probe "curl -fsS http://127.0.0.1:$PORT/calc/7" \
    --expect-before '^calc 7 17$' \
    --expect-after '^calc 7 7000$' \
    --cycles 3 \
    --junit "$OUT/rehearsal.xml" \
    --json \
    -- test-targets/target/release/calcapp --http "$PORT" >"$OUT/rehearsal.json" || status=$?

echo "ci-rehearsal: reports in $OUT/rehearsal.xml and $OUT/rehearsal.json (exit $status)"
exit $status
