#!/usr/bin/env bash
# arm64 end-to-end checks in an emulated arm64 machine (ptrace of another process does not work
# under qemu-user, so this boots a real arm64 kernel under qemu-system-aarch64).
#
# Builds dynamically linked arm64 test targets (test-targets/c sources, test-targets/aarch64),
# rpatch itself for arm64, and the guest's /init (test-targets/aarch64/guest, a static Rust
# program using rpatch-arch's arm64 bootstrap and stub to make remote calls in them, then
# running /rpatch attach/status/rollback against them), packs them with the arm64 glibc into
# an initramfs, and boots Debian's cloud arm64 kernel twice:
#   1. -cpu cortex-a72            the base scenarios (and the BTI/PAC checks as controls: no trap)
#   2. -cpu max,pauth-impdef=on   everything again with BTI and pointer authentication enforced
#                                 and SVE (a thread with live SVE registers borrowed by rpatch)
# Prints PASS/FAIL per scenario and `aarch64: N passed, M failed`; exits non-zero on a failure.
# For debugging: RPATCH_AARCH64_BOOTS="a72" runs one boot; RPATCH_AARCH64_GUEST_ARGS is added to
# the kernel command line ("rpatch.only=NAME,NAME" runs those scenarios, "rpatch.trace" prints
# each ptrace step of the guest's tracer).
# Run time on a 2-core machine under load: about 5 minutes with a warm cache (each boot about
# 2 minutes, most of it the 50 random kills of rpatch and the first attaches under a signal
# storm), a few minutes more from a fresh cache (kernel download and cross builds of rpatch, the
# guest and the Rust targets).
#
# Installs what it needs when missing (as root): qemu-system-arm, gcc-aarch64-linux-gnu,
# libc6-dev-arm64-cross, binutils-aarch64-linux-gnu, cpio, and the rustup target
# aarch64-unknown-linux-gnu. The kernel and all build output live in $RPATCH_AARCH64_CACHE
# (default ~/.cache/rpatch-aarch64), outside the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
started=$(date +%s)
cache=${RPATCH_AARCH64_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rpatch-aarch64}
mkdir -p "$cache"
# One run per cache at a time: a run from another checkout (a second clone, a CI job beside this
# one) waits here rather than rebuild the guest's initramfs under a guest that is booting it.
exec 9>"$cache/.lock"
if ! flock -n 9; then
  echo "aarch64: waiting for another run that uses $cache" >&2
  flock 9
fi

# ---- tools ----
need=()
command -v qemu-system-aarch64 >/dev/null || need+=(qemu-system-arm)
command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu)
[ -e /usr/aarch64-linux-gnu/lib/libc.so.6 ] && [ -e /usr/aarch64-linux-gnu/lib/libc.a ] \
  || need+=(libc6-dev-arm64-cross)
command -v aarch64-linux-gnu-readelf >/dev/null || need+=(binutils-aarch64-linux-gnu)
command -v cpio >/dev/null || need+=(cpio)
if [ ${#need[@]} -gt 0 ]; then
  [ "$(id -u)" -eq 0 ] || { echo "install these packages first (as root): ${need[*]}" >&2; exit 1; }
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
case "$(rustup target list --installed)" in
  *aarch64-unknown-linux-gnu*) ;;
  *) rustup target add aarch64-unknown-linux-gnu ;;
esac

# ---- kernel: Debian's cloud arm64 image, found and downloaded with a private apt state so the
# host's dpkg architectures and package lists stay as they are ----
kernel=$(ls "$cache"/vmlinuz-*-cloud-arm64 2>/dev/null | head -1 || true)
if [ -z "$kernel" ]; then
  apt_dir=$cache/apt
  mkdir -p "$apt_dir/lists/partial" "$apt_dir/archives/partial"
  apt_opts=(-o APT::Architecture=arm64 -o APT::Architectures::=arm64
            -o Dir::State::Lists="$apt_dir/lists" -o Dir::Cache="$apt_dir"
            -o Dir::State::status=/dev/null -o Debug::NoLocking=1 -o APT::Sandbox::User=root)
  apt-get "${apt_opts[@]}" update -qq
  pkg=$(apt-cache "${apt_opts[@]}" depends linux-image-cloud-arm64 \
        | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
  [ -n "$pkg" ] || { echo "no linux-image-*-cloud-arm64 package found" >&2; exit 1; }
  (cd "$apt_dir" && apt-get "${apt_opts[@]}" download "$pkg" >/dev/null)
  dpkg-deb --fsys-tarfile "$apt_dir/${pkg}"_*.deb | tar -x -C "$cache" --strip-components=2 ./boot/
  rm -f "$apt_dir/${pkg}"_*.deb
  kernel=$(ls "$cache"/vmlinuz-*-cloud-arm64 | head -1)
fi
echo "kernel: $kernel"

# ---- arm64 builds ----
out=$cache/build
rm -rf "$out" && mkdir -p "$out/root/t" "$out/root/lib/aarch64-linux-gnu"
cc=aarch64-linux-gnu-gcc
cflags=(-O1 -g -Wall -Wextra -fPIE -pie -pthread)
$cc "${cflags[@]}" -o "$out/root/t/sigstorm" test-targets/c/sigstorm.c
$cc "${cflags[@]}" -o "$out/root/t/sleepers" test-targets/aarch64/sleepers.c
$cc "${cflags[@]}" -o "$out/root/t/epollers" test-targets/aarch64/epollers.c
$cc "${cflags[@]}" -o "$out/root/t/vectors" test-targets/aarch64/vectors.c test-targets/aarch64/vector-spin.S
$cc "${cflags[@]}" -o "$out/root/t/sveregs" test-targets/aarch64/sveregs.c test-targets/aarch64/sve-hold.S
$cc -O1 -g -Wall -fPIC -shared -o "$out/root/t/planted.so" test-targets/c/planted.c
$cc -O1 -g -Wall -fPIC -shared -o "$out/root/t/fix_basic.so" test-targets/c/fix_basic.c
# pac-ret and BTI landing pads. Debian's cross crt objects are unmarked, which would leave the
# executable unmarked (and `-z force-bti` would guard their landing-pad-less _init and
# frame_dummy): btipac brings its own marked _start (test-targets/aarch64/start.S).
$cc -O1 -g -Wall -Wextra -fno-omit-frame-pointer -mbranch-protection=standard -fPIE -pie -pthread \
  -nostartfiles -o "$out/root/t/btipac" test-targets/aarch64/start.S test-targets/aarch64/btipac.c
# Its patch library, marked too (no crt files: a shared object needs none).
$cc -O1 -g -Wall -Wextra -mbranch-protection=standard -fPIC -shared -nostartfiles \
  -o "$out/root/t/fix_btipac.so" test-targets/aarch64/fix_btipac.c
CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=$cc RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --quiet --release --target aarch64-unknown-linux-gnu \
    --manifest-path test-targets/aarch64/guest/Cargo.toml --target-dir "$cache/target"
cp "$cache/target/aarch64-unknown-linux-gnu/release/rpatch-guest" "$out/root/init"
# A Rust target and its patch library (cdylib), dynamically linked.
CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=$cc \
  cargo build --quiet --release --target aarch64-unknown-linux-gnu -p calcapp -p calcapp-fix \
    --manifest-path test-targets/rust/Cargo.toml --target-dir "$cache/target-rust"
cp "$cache/target-rust/aarch64-unknown-linux-gnu/release/calcapp" "$out/root/t/calcapp"
cp "$cache/target-rust/aarch64-unknown-linux-gnu/release/libcalcapp.so" "$out/root/t/libcalcapp.so"
# The real rpatch, dynamically linked like the targets (its debug info stripped: the initramfs
# stays small).
CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=$cc \
  cargo build --quiet --release --target aarch64-unknown-linux-gnu --bin rpatch \
    --target-dir "$cache/target"
aarch64-linux-gnu-strip -o "$out/root/rpatch" "$cache/target/aarch64-unknown-linux-gnu/release/rpatch"
# The dynamic loader and libc the targets need, where the loader looks for them.
sysroot=/usr/aarch64-linux-gnu/lib
cp -L "$sysroot/ld-linux-aarch64.so.1" "$out/root/lib/"
for lib in $(aarch64-linux-gnu-readelf -d "$out"/root/t/* "$out/root/rpatch" | awk '/NEEDED/ { gsub(/[][]/, "", $5); print $5 }' | sort -u); do
  cp -L "$sysroot/$lib" "$out/root/lib/aarch64-linux-gnu/"
done
(cd "$out/root" && find . | cpio -o -H newc --quiet | gzip -1) >"$out/initrd.cpio.gz"

passed=0
failed=0
qemu=
# An interrupted run takes its emulator with it (timeout runs it in a process group of its own).
trap '[ -z "$qemu" ] || kill "$qemu" 2>/dev/null' EXIT
result() { # name, ok(0/1), detail
  if [ "$2" -eq 0 ]; then
    echo "PASS $1"
    passed=$((passed + 1))
  else
    echo "FAIL $1${3:+: $3}"
    failed=$((failed + 1))
  fi
}

# ---- host-side checks of the BTI/PAC target ----
notes=$(aarch64-linux-gnu-readelf -n "$out/root/t/btipac" | grep -o 'AArch64 feature: .*' || true)
result btipac-readelf-bti-pac "$([ "$notes" = "AArch64 feature: BTI, PAC" ]; echo $?)" "$notes"
signs=$(aarch64-linux-gnu-objdump -d "$out/root/t/btipac" | grep -c 'paciasp' || true)
result btipac-pac-ret-code "$([ "$signs" -gt 0 ]; echo $?)" "no paciasp in the code"

# ---- the two boots ----
boot() { # name, cpu, mode
  local log=$out/boot-$1.log t0=$(date +%s)
  # -nic none: without it QEMU wants efi-virtio.rom. QEMU exits 0 whatever /init did, so the
  # verdict comes from the console. A loaded host slows TCG a lot: the timeout is generous.
  timeout 1200 qemu-system-aarch64 -M virt -cpu "$2" -smp 2 -m 1024 -nographic -no-reboot \
    -nic none -kernel "$kernel" -initrd "$out/initrd.cpio.gz" \
    -append "console=ttyAMA0 panic=-1 quiet rpatch.mode=$3 ${RPATCH_AARCH64_GUEST_ARGS:-}" \
    </dev/null >"$log" 2>&1 &
  qemu=$!
  wait "$qemu" || true
  qemu=
  tr -d '\r' <"$log" | grep -E '^(PASS|FAIL|note|guest:) ' | sed "s/^\(PASS\|FAIL\|note\) /\1 $1:/" || true
  local line
  line=$(tr -d '\r' <"$log" | grep -E '^guest: [0-9]+ passed, [0-9]+ failed' || true)
  if [ -z "$line" ]; then
    result "$1:boot" 1 "the guest did not finish; console in $log"
    return
  fi
  passed=$((passed + $(echo "$line" | awk '{ print $2 }')))
  failed=$((failed + $(echo "$line" | awk '{ print $4 }')))
  echo "boot $1: $(($(date +%s) - t0)) s"
}
boots=${RPATCH_AARCH64_BOOTS:-a72 max-bti-pac}
case " $boots " in *" a72 "*) boot a72 cortex-a72 base ;; esac
case " $boots " in *" max-bti-pac "*) boot max-bti-pac max,pauth-impdef=on bti ;; esac

echo "total time: $(($(date +%s) - started)) s"
echo "aarch64: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
