#!/usr/bin/env bash
# The speed benchmarks in one table (README, Performance): attach and attach + rollback against
# gdb's `call dlopen`, a minimal injector (scripts/bench/inject_min.c) and frida; later attaches
# of one build (the demo, and a 361 MB Rust binary built by scripts/bench/bigapp.sh); the longest
# pause a watcher thread sees against a minimal tracer, at 8 and 256 threads and as a non-root
# user; the cycles a patched call costs. Each figure is the median of >= 10 runs, measured side
# by side with its reference; warm (the cache knows the build) and cold figures are labelled.
# Installs what it needs (hyperfine, gdb, a venv with frida pinned), builds rpatch (release),
# the targets and, the first time, the large binary (tens of minutes; BENCH_SKIP_BIG=1 skips it,
# and its row is then missed), prints the machine's cores, kernel and load, and exits 1 when a
# target is missed. Run by hand: scripts/bench.sh  (RUNS=N, FREEZE_RUNS=N, STEADY_S=S)
set -euo pipefail
cd "$(dirname "$0")/.."
FRIDA_VERSION=17.26.2
scripts/install-deps.sh
need=()
command -v gdb >/dev/null || need+=(gdb)
command -v hyperfine >/dev/null || need+=(hyperfine)
if [ ${#need[@]} -gt 0 ]; then apt-get update -qq && apt-get install -y -qq "${need[@]}"; fi
RPATCH=$(scripts/build-release.sh)
export RPATCH
make -C test-targets --quiet -j"$(nproc)"
cargo build --release --quiet --manifest-path test-targets/rust/Cargo.toml --target-dir test-targets/target
B=target/bench
mkdir -p "$B"
CFLAGS="-O1 -g -Wall -fPIE -pie -pthread"
gcc $CFLAGS -o "$B/pausewatch" scripts/bench/pausewatch.c
gcc $CFLAGS -rdynamic -o "$B/pausewatch_dyn" scripts/bench/pausewatch.c   # frida finds `compute` by export
gcc -O2 -g -Wall -fPIE -pie -pthread -o "$B/callcost" scripts/bench/callcost.c -ldl
gcc -O2 -g -Wall -fPIC -shared -o "$B/callcost_fix.so" scripts/bench/callcost_fix.c
gcc -O2 -Wall -o "$B/inject_min" scripts/bench/inject_min.c -ldl
gcc -O2 -Wall -o "$B/freeze_min" scripts/bench/freeze_min.c
cp scripts/bench/frida_cycle.py "$B/"
if [ ! -x "$B/venv/bin/python3" ] || ! "$B/venv/bin/python3" -c "import frida; assert frida.__version__ == '$FRIDA_VERSION'" 2>/dev/null; then
  python3 -m venv "$B/venv"
  "$B/venv/bin/pip" install --quiet "frida==$FRIDA_VERSION"
fi
if [ "${BENCH_SKIP_BIG:-0}" != 1 ]; then
  WORK=${RPATCH_BENCH_DIR:-$PWD/target/bench-resolve}
  # shellcheck source=scripts/bench/bigapp.sh
  . scripts/bench/bigapp.sh
  export RPATCH_BIG_BINARY="$BIN" RPATCH_BIG_FIX="$FIX"
fi
exec python3 scripts/bench/bench.py
