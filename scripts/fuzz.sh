#!/usr/bin/env bash
# Fuzzes everything rpatch parses that a target's owner controls (ELF symbol tables, DWARF,
# CFI and stacks, /proc/PID/maps), the journal as found on disk, the binding-shim writer and
# the seccomp filter evaluator: each cargo-fuzz target (fuzz/) runs for a set time.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     SECONDS per target (default $RPATCH_FUZZ_SECONDS,
#                                             else 300); all targets unless some are named
#
# Needs a nightly toolchain and cargo-fuzz (installed here when missing). Seeds come from the
# test targets; the corpus grows in fuzz/corpus/TARGET, crashes land in fuzz/artifacts/TARGET
# (`cargo +nightly fuzz run TARGET ARTIFACT` reproduces one). A crash becomes a regression test
# by copying the input into fuzz/regressions/TARGET/: `cargo test` replays every file there
# through the same code (src/fuzzing.rs).
# libFuzzer runs with a 1 GiB malloc limit and 10 s per input: a hostile file must neither
# make rpatch allocate without bound nor hang it. Prints executions and coverage per target;
# exits non-zero if any target found a crash.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SECONDS_PER_TARGET=${1:-${RPATCH_FUZZ_SECONDS:-300}}
shift || true
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
    TARGETS=(elf_symbols dwarf_queries unwinder maps_parser journal_json shim_writer seccomp_filter)
fi

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
make -s -C test-targets >/dev/null

le32() { # a 32-bit little-endian integer as raw bytes
    printf "\\x$(printf %02x $(($1 & 255)))\\x$(printf %02x $((($1 >> 8) & 255)))\\x$(printf %02x $((($1 >> 16) & 255)))\\x$(printf %02x $((($1 >> 24) & 255)))"
}

seed() { # seed TARGET: puts starting inputs into fuzz/corpus/TARGET (once)
    local dir=fuzz/corpus/$1 build=test-targets/build
    mkdir -p "$dir"
    [ -n "$(ls -A "$dir")" ] && return 0
    case $1 in
    elf_symbols | dwarf_queries)
        for f in fix_basic.so fix_private.so planted.so libvictim.so basic_pie ambig; do
            [ -f "$build/$f" ] && cp "$build/$f" "$dir/$f"
        done ;;
    unwinder)
        for f in fix_basic.so libvictim.so; do
            { le32 $((0x1100)); printf '\x00\x01\x00\x02'; le32 "$(stat -c %s "$build/$f")"
              cat "$build/$f"; head -c 4096 /dev/urandom; } >"$dir/$f"
        done ;;
    maps_parser)
        cat /proc/self/maps >"$dir/self"
        printf '7f00-7f01 r-xp 00000000 00:01 77 /memfd:rpatch:ab (deleted)\n1000-2000 r-xp 0 fd:1a 1 /a b\n' >"$dir/memfd" ;;
    journal_json)
        cat >"$dir/journal.json" <<'JSON'
{"version":1,"identity":{"pid":42,"start_time":7,"boot_id":"b","exe":"/bin/x"},
 "islands":[{"address":4096,"size":4096}],
 "patches":[{"id":1,"group":1,"function":"f","module":"/bin/x","module_build_id":"ab12",
  "function_address":4096,"address":4100,"original":"5548","new":"e901020304",
  "replacement_name":"f","replacement":8192,"replacement_size":16,"library":"/l.so",
  "loaded_from":"/proc/self/fd/3","library_sha256":"00","method":"island","island_slot":4096,
  "state":"applied","created":0,"rolled_back":null,"loaded":{"dev":1,"inode":2,"l_addr":8192}}]}
JSON
        ;;
    shim_writer)
        printf '\x00\x10\x00\x00\x00\x00\x00\x00\x04\x00\x00\x00\x00\x00\x00\x00\x00counter\xff\x00\x20\x00\x00\x00\x00\x00\x00\x10\x00\x00\x00\x00\x00\x00\x00\x01calcapp::state::COUNTER' >"$dir/two" ;;
    seccomp_filter)
        { le32 319; le32 $((0xc000003e)); head -c 56 /dev/zero
          printf '\x20\x00\x00\x00'; le32 4; printf '\x15\x00\x01\x00'; le32 $((0xc000003e))
          printf '\x06\x00\x00\x00'; le32 0; printf '\x20\x00\x00\x00'; le32 0
          printf '\x15\x00\x00\x01'; le32 319; printf '\x06\x00\x00\x00'; le32 $((0x80000000))
          printf '\x06\x00\x00\x00'; le32 $((0x7fff0000)); } >"$dir/kill_memfd" ;;
    esac
}

cd fuzz
cargo +nightly fuzz build
cd "$ROOT"
status=0
summary=()
for t in "${TARGETS[@]}"; do
    seed "$t"
    mkdir -p "fuzz/artifacts/$t"
    log=fuzz/artifacts/$t/last-run.log
    echo "== $t: ${SECONDS_PER_TARGET}s"
    if (cd fuzz && cargo +nightly fuzz run "$t" "corpus/$t" -- \
        -max_total_time="$SECONDS_PER_TARGET" -malloc_limit_mb=1024 -rss_limit_mb=2048 \
        -timeout=10 -print_final_stats=1) >"$log" 2>&1; then
        result=clean
    else
        result="CRASH (see $log and fuzz/artifacts/$t/)"
        status=1
    fi
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)
    speed=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)
    last=$(grep -E '^#[0-9]+' "$log" | tail -1)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
    corp=$(sed -n 's/.* corp: \([0-9]*\).*/\1/p' <<<"$last")
    summary+=("$(printf '%-16s %-8s execs %-10s exec/s %-7s cov %-6s ft %-7s corpus %s' \
        "$t" "${SECONDS_PER_TARGET}s" "${runs:-?}" "${speed:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}") $result")
    echo "${summary[-1]}"
done
echo
echo "== summary"
printf '%s\n' "${summary[@]}"
exit $status
