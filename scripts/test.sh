#!/usr/bin/env bash
# The test suite: installs what it needs, then lint, format check, unit and integration tests,
# the patch rehearsals (scripts/ci-rehearsal.sh, scripts/load-rehearsal.sh) and the arm64
# guest run (scripts/test-aarch64.sh).
# Integration tests spawn real processes from test-targets/ and patch them with the real binary,
# so they need ptrace rights over their own children (root, or ptrace_scope 0/1).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
# A clean clone gains nothing from incremental caches, and they double the build's disk use.
if [ "${CI:-}" = true ]; then export CARGO_INCREMENTAL=0; fi
df -h . | tail -n 1 | awk '{print "disk: " $4 " free before the build"}'
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo clippy --workspace --all-targets --features fault-injection --quiet -- -D warnings
# The default build (as released): RPATCH_FAULT must mean nothing to it.
cargo test --lib --quiet fault
# Everything, with the fault-injection hook the kill tests need.
cargo test --workspace --all-targets --features fault-injection
# The CI rehearsal of docs/ci/ with rpatch as shipped (scripts/build-release.sh: release,
# static-pie on glibc hosts), and 10 cycles on an HTTP server under load with the rpatch the
# tests just built.
RPATCH="$(scripts/build-release.sh)" scripts/ci-rehearsal.sh
RPATCH="$PWD/target/debug/rpatch" scripts/load-rehearsal.sh
# The arm64 port end to end: the real rpatch in an emulated arm64 machine, two boots (about 5
# minutes with a warm cache, 3 more from a fresh one). Where this host can run it: as root (the
# script installs qemu-system-arm and the cross toolchain when missing) or with QEMU present.
# RPATCH_SKIP_AARCH64=1 leaves it out.
if [ -z "${RPATCH_SKIP_AARCH64:-}" ] && { [ "$(id -u)" -eq 0 ] || command -v qemu-system-aarch64 >/dev/null; }; then
  scripts/test-aarch64.sh
fi
