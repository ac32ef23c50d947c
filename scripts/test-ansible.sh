#!/usr/bin/env bash
# The rpatch.live Ansible collection (ansible/), tested for real on one machine: five SSH "hosts",
# each an sshd in its own PID, mount and network namespace (veth pairs on a private bridge), with
# private /var/lib/rpatch, /etc/rpatch, /usr/local/bin, /run and /tmp and its own calcapp
# services, driven over real SSH by the rollout playbook from a controller in a namespace of its
# own:
#   1. canary (host1), then batches [1, 2] (host2 | host3 host4 | host5): every host patched;
#   2. the same rollout again: changed=0 on every host;
#   3. rpatch_rollback_all: every service answers its old values; a manifest whose library
#      changed is refused on every host, nothing touched;
#   4. check mode with diff: every host would apply, nothing changes;
#   5. a health check failing on host4 (second batch): host3 and host4 rolled back, host5
#      not_started, the play fails with the summary; host1 and host2 stay patched;
#   6. rpatch_rollback_all again: every host back.
# Then ansible-lint on the collection, and `ansible-test sanity` from a copy at
# ansible_collections/rpatch/live/. Everything started is stopped and every namespace removed
# on exit, also on failure.
#
#   scripts/test-ansible.sh                 builds rpatch (release) and the demo service
#   RPATCH=target/debug/rpatch scripts/test-ansible.sh   with an rpatch already built
#   SKIP_SANITY=1 scripts/test-ansible.sh   without ansible-lint and ansible-test sanity
#   KEEP=1 scripts/test-ansible.sh          keep target/test-ansible/ (logs, inventory) afterwards
#
# Needs root (namespaces, ptrace). Installs Debian's openssh-server and iproute2 when missing, and
# ansible-core 2.19 and ansible-lint from PyPI in a virtualenv cached outside the repository
# ($RPATCH_TOOLS_DIR, default ~/.cache/rpatch-tools).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
START=$SECONDS

ANSIBLE_CORE_VERSION=2.19.14
ANSIBLE_LINT_VERSION=26.10.1
TOOLS="${RPATCH_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/rpatch-tools}"
VENV="$TOOLS/ansible-venv"
HOSTS=(host1 host2 host3 host4 host5)
SUBNET=10.231.0                       # the private link: controller .1, hosts .11 to .15
RUN_ID=$(printf '%04x' $(($$ % 65536)))
NS_PREFIX="rpa$RUN_ID"                # netns and veth names (veth names stay under 15 bytes)
WORK="$ROOT/target/test-ansible"      # not under /tmp: every host mounts a /tmp of its own

say() { printf '\n== %s\n' "$*"; }
fail() {
    echo "test-ansible: FAILED: $*" >&2
    exit 1
}

[ "$(id -u)" -eq 0 ] || fail "run as root (network, PID and mount namespaces; ptrace)"

# --- dependencies --------------------------------------------------------------------------
need=()
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh >/dev/null || need+=(openssh-client)
command -v ip >/dev/null || need+=(iproute2)
command -v unshare >/dev/null || need+=(util-linux)
command -v curl >/dev/null || need+=(curl)
/usr/bin/python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
/usr/bin/python3 -c 'import apt' 2>/dev/null || need+=(python3-apt) # ansible.builtin.apt (.deb installs)
if ((${#need[@]})); then
    say "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
have_core=$("$VENV/bin/ansible-playbook" --version 2>/dev/null || true)
have_lint=$("$VENV/bin/ansible-lint" --version 2>/dev/null || true)
if [[ "$have_core" != *"core $ANSIBLE_CORE_VERSION]"* || "$have_lint" != *"$ANSIBLE_LINT_VERSION"* ]]; then
    say "installing ansible-core $ANSIBLE_CORE_VERSION and ansible-lint $ANSIBLE_LINT_VERSION in $VENV"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q "ansible-core==$ANSIBLE_CORE_VERSION" "ansible-lint==$ANSIBLE_LINT_VERSION"
fi
export PATH="$VENV/bin:$PATH"
# check-jsonschema (scripts/install-deps.sh puts it in its own virtualenv) checks the summaries.
scripts/install-deps.sh
CHECK_JSONSCHEMA=$(command -v check-jsonschema ||
    echo "${RPATCH_TOOLS_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/rpatch-tools/venv}/bin/check-jsonschema")

say "building rpatch and the demo service"
if [ -z "${RPATCH:-}" ]; then
    RPATCH=$(scripts/build-release.sh)
fi
RPATCH="$(realpath "$RPATCH")"
cargo build --release --locked --quiet \
    --manifest-path test-targets/rust/Cargo.toml --target-dir test-targets/target \
    -p calcapp -p calcapp-fix
APP="$ROOT/test-targets/target/release/calcapp"
FIX="$ROOT/test-targets/target/release/libcalcapp.so"

# --- cleanup (also on failure) -------------------------------------------------------------
HOST_PIDS=()
SANITY_DIR=""
CREATED_DIRS=()
NAMESPACES=()
cleanup() {
    local status=$?
    set +e
    if [ "$status" -ne 0 ] && [ -d "$WORK/hosts" ]; then
        for h in "${HOSTS[@]}"; do
            [ -f "$WORK/hosts/$h/init.log" ] && sed "s/^/[$h init] /" "$WORK/hosts/$h/init.log" | tail -n 20 >&2
        done
    fi
    # Each host is an unshare whose child is PID 1 of the host's PID namespace: killing unshare
    # kills that child (--kill-child), and with it every process of the namespace. (unshare
    # ignores SIGTERM while it waits for its child.)
    for pid in "${HOST_PIDS[@]}"; do
        kill -KILL "$pid" 2>/dev/null
    done
    for pid in "${HOST_PIDS[@]}"; do
        wait "$pid" 2>/dev/null
    done
    # SSH connection masters the controller left (ControlPersist) live in its namespace.
    if ip netns list 2>/dev/null | grep -qw "$NS_PREFIX-ctl"; then
        for pid in $(ip netns pids "$NS_PREFIX-ctl" 2>/dev/null); do
            kill -TERM "$pid" 2>/dev/null
        done
    fi
    for ns in "${NAMESPACES[@]}"; do
        ip netns del "$ns" 2>/dev/null
    done
    for dir in "${CREATED_DIRS[@]}"; do
        rmdir "$dir" 2>/dev/null
    done
    [ -z "$SANITY_DIR" ] || rm -rf "$SANITY_DIR"
    if [ -z "${KEEP:-}" ]; then
        rm -rf "$WORK"
    else
        echo "test-ansible: kept $WORK" >&2
    fi
    local left
    left=$(ip netns list 2>/dev/null | grep -c "^$NS_PREFIX-")
    [ "$left" -eq 0 ] || echo "test-ansible: $left namespaces could not be removed" >&2
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

rm -rf "$WORK"
mkdir -p "$WORK"/{hosts,patches,ansible-home,ansible-tmp}
chmod 700 "$WORK"

# Mount points of the hosts' private directories (created here only when missing, removed after).
for dir in /var/lib/rpatch /etc/rpatch; do
    if [ ! -d "$dir" ]; then
        mkdir -p "$dir"
        CREATED_DIRS+=("$dir")
    fi
done

# --- the patch: a manifest and its library, on the controller ------------------------------
cp "$FIX" "$WORK/patches/calc-fix-1.so"
"$RPATCH" manifest new --lib "$WORK/patches/calc-fix-1.so" --module "$APP" \
    --func crate::pricing::calc --name calc-fix-1 -o "$WORK/patches/calc-fix-1.toml"
# Another build of the service (the same code, another build-id): --all must skip it.
mkdir -p "$WORK/old"
python3 - "$APP" "$WORK/old/calcapp" <<'EOF'
import sys
data = bytearray(open(sys.argv[1], "rb").read())
# The NT_GNU_BUILD_ID note: namesz 4, descsz 20, type 3, "GNU\0", then the 20-byte id.
note = data.find(b"\x04\x00\x00\x00\x14\x00\x00\x00\x03\x00\x00\x00GNU\x00")
assert note > 0, "no build-id note"
data[note + 16] ^= 0xFF  # the first byte of the build-id
open(sys.argv[2], "wb").write(data)
EOF
chmod 755 "$WORK/old/calcapp"

# --- SSH keys --------------------------------------------------------------------------------
ssh-keygen -q -t ed25519 -N '' -C rpatch-test-controller -f "$WORK/id_ed25519"
cp "$WORK/id_ed25519.pub" "$WORK/authorized_keys"
cat >"$WORK/sshd_config" <<EOF
ListenAddress 0.0.0.0:22
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
AuthorizedKeysFile $WORK/authorized_keys
StrictModes no
PidFile /run/sshd.pid
Subsystem sftp internal-sftp
LogLevel INFO
EOF
: >"$WORK/known_hosts"

# --- each host's PID 1: private directories, services, sshd --------------------------------
cat >"$WORK/hostinit.sh" <<'EOF'
#!/bin/bash
# PID 1 of one test host: runs inside its own PID, mount and network namespaces.
set -euo pipefail
host=$1 work=$2 app=$3 index=$4
dir="$work/hosts/$host"
exec >>"$dir/init.log" 2>&1
mount --make-rprivate /
mount -t proc proc /proc
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/sshd
for private in /var/lib/rpatch /etc/rpatch /usr/local/bin; do
    mkdir -p "$dir/root$private"
    mount --bind "$dir/root$private" "$private"
done
chmod 700 /var/lib/rpatch

# Waits until FILE has a line matching REGEX (30 s at most).
wait_line() {
    local deadline=$((SECONDS + 30))
    until grep -qE "$2" "$1" 2>/dev/null; do
        [ $SECONDS -lt $deadline ] || { echo "$host: no '$2' in $1"; exit 1; }
        sleep 0.05
    done
}

# The service: two processes of the patched build, and on host2 one of another build.
cd /tmp
"$app" --http 8081 >/tmp/calcapp-8081.log 2>&1 </dev/null &
"$app" --http 8082 >/tmp/calcapp-8082.log 2>&1 </dev/null &
if [ "$index" = 2 ]; then
    "$work/old/calcapp" --http 8083 >/tmp/calcapp-8083.log 2>&1 </dev/null &
fi
logs=(/tmp/calcapp-8081.log /tmp/calcapp-8082.log)
[ "$index" != 2 ] || logs+=(/tmp/calcapp-8083.log)
for log in "${logs[@]}"; do
    wait_line "$log" '^ready '
done
/usr/sbin/sshd -D -e -f "$work/sshd_config" -h "$dir/ssh_host_ed25519_key" 2>"$dir/sshd.log" &
wait_line "$dir/sshd.log" 'Server listening on 0.0.0.0'
echo "ready $host" >"$dir/ready"
# PID 1 stays to reap orphans; the host ends when its sshd does or the script kills it.
wait
EOF

say "starting ${#HOSTS[@]} SSH hosts on $SUBNET.0/24"
SW="$NS_PREFIX-sw"
CTL="$NS_PREFIX-ctl"
ip netns add "$SW"
NAMESPACES+=("$SW")
ip -n "$SW" link add br0 type bridge
ip -n "$SW" link set br0 up
ip -n "$SW" link set lo up
# Connects namespace $1 to the bridge with address $2 (veth $3 on the bridge, eth0 inside).
plug() {
    ip netns add "$1"
    NAMESPACES+=("$1")
    ip link add "$3" type veth peer name eth0 netns "$1"
    ip link set "$3" netns "$SW"
    ip -n "$SW" link set "$3" master br0 up
    ip -n "$1" addr add "$2/24" dev eth0
    ip -n "$1" link set eth0 up
    ip -n "$1" link set lo up
}
plug "$CTL" "$SUBNET.1" "${NS_PREFIX}c"
index=0
for h in "${HOSTS[@]}"; do
    index=$((index + 1))
    ns="$NS_PREFIX-$h"
    plug "$ns" "$SUBNET.$((10 + index))" "${NS_PREFIX}h$index"
    mkdir -p "$WORK/hosts/$h"
    ssh-keygen -q -t ed25519 -N '' -C "$h" -f "$WORK/hosts/$h/ssh_host_ed25519_key"
    echo "$SUBNET.$((10 + index)) $(cut -d' ' -f1,2 "$WORK/hosts/$h/ssh_host_ed25519_key.pub")" >>"$WORK/known_hosts"
    ip netns exec "$ns" unshare --pid --mount --fork --kill-child --propagation private -- \
        /bin/bash "$WORK/hostinit.sh" "$h" "$WORK" "$APP" "$index" &
    HOST_PIDS+=($!)
done
deadline=$((SECONDS + 60))
for h in "${HOSTS[@]}"; do
    until [ -f "$WORK/hosts/$h/ready" ]; do
        [ $SECONDS -lt $deadline ] || fail "$h did not start (see its init.log above)"
        for pid in "${HOST_PIDS[@]}"; do
            kill -0 "$pid" 2>/dev/null || fail "a host exited while starting"
        done
        sleep 0.05
    done
done

# Runs a command inside host $1 (its mount, PID and network namespaces: its own /tmp).
in_host() {
    local index=${1#host} init
    shift
    init=$(cat "/proc/${HOST_PIDS[$((index - 1))]}/task/${HOST_PIDS[$((index - 1))]}/children")
    nsenter -t "${init%% *}" -m -p -n -- "$@"
}

# --- the controller's configuration ----------------------------------------------------------
cat >"$WORK/ansible.cfg" <<EOF
[defaults]
inventory = $WORK/inventory.yml
collections_path = $WORK/collections
home = $WORK/ansible-home
local_tmp = $WORK/ansible-tmp
remote_tmp = /tmp/.ansible/tmp
host_key_checking = True
forks = 10
callback_result_format = yaml

[ssh_connection]
pipelining = True
control_path_dir = $WORK/cp
ssh_args = -o ControlMaster=auto -o ControlPersist=60s -o UserKnownHostsFile=$WORK/known_hosts -o StrictHostKeyChecking=yes
EOF
{
    echo "all:"
    echo "  vars:"
    echo "    ansible_user: root"
    echo "    ansible_ssh_private_key_file: $WORK/id_ed25519"
    echo "    ansible_python_interpreter: /usr/bin/python3"
    echo "  children:"
    echo "    rpatch_canary:"
    echo "      hosts:"
    echo "        host1:"
    echo "    fleet:"
    echo "      hosts:"
    index=0
    for h in "${HOSTS[@]}"; do
        index=$((index + 1))
        echo "        $h:"
        echo "          ansible_host: $SUBNET.$((10 + index))"
    done
} >"$WORK/inventory.yml"
cat >"$WORK/rollout-vars.yml" <<EOF
rpatch_manifest: $WORK/patches/calc-fix-1.toml
rpatch_binary: $RPATCH
rpatch_hosts: fleet
rpatch_canary: rpatch_canary
rpatch_batches: [1, 2]
rpatch_timeout: 10
rpatch_health_timeout: 30
rpatch_health_delay: 1
rpatch_persist: true
rpatch_health_checks:
  - name: first service process
    url: http://127.0.0.1:8081/calc/7
    status: 200
    body: "^calc 7 7000$"
  - name: second service process
    url: http://127.0.0.1:8082/calc/7
    body: "^calc 7 7000$"
  - name: the service did not report itself unhealthy
    command: test ! -e /tmp/rpatch-test-unhealthy
EOF
export ANSIBLE_CONFIG="$WORK/ansible.cfg"
export ANSIBLE_FORCE_COLOR=0 ANSIBLE_NOCOLOR=1

say "building and installing the collection"
ansible-galaxy collection build --force --output-path "$WORK" ansible/ >/dev/null
ansible-galaxy collection install --force -p "$WORK/collections" "$WORK"/rpatch-live-*.tar.gz >/dev/null

# Runs ansible-playbook in the controller's namespace; output in $WORK/$1.log (and on stdout).
playbook() {
    local name=$1
    shift
    local rc=0
    ip netns exec "$CTL" ansible-playbook rpatch.live.rollout -e "@$WORK/rollout-vars.yml" \
        -e "rpatch_summary_file=$WORK/$name.summary.json" "$@" >"$WORK/$name.log" 2>&1 || rc=$?
    echo "$rc" >"$WORK/$name.rc"
    return 0
}
# Prints the summary lines of a run (the last summary the playbook printed).
show_summary() {
    python3 - "$WORK/$1.summary.json" <<'EOF'
import json, sys
for e in json.load(open(sys.argv[1]))["hosts"]:
    print("    %-6s %-16s %-8s %s" % (e["host"], e["outcome"], e["phase"], e["detail"]))
EOF
}
# Checks a run's exit code and the outcome of each host: expect NAME RC host=outcome...
expect() {
    local name=$1 want_rc=$2
    shift 2
    local rc
    rc=$(cat "$WORK/$name.rc")
    if [ "$rc" != "$want_rc" ]; then
        tail -n 60 "$WORK/$name.log" >&2
        fail "$name: ansible-playbook exited $rc, expected $want_rc"
    fi
    [ -f "$WORK/$name.summary.json" ] || { tail -n 60 "$WORK/$name.log" >&2; fail "$name: no summary"; }
    "$CHECK_JSONSCHEMA" -q --schemafile docs/schemas/rollout-summary.schema.json \
        "$WORK/$name.summary.json" || fail "$name: the summary does not match its schema"
    python3 - "$WORK/$name.summary.json" "$@" <<'EOF' || { tail -n 60 "$WORK/$name.log" >&2; fail "$name: outcomes differ"; }
import json, sys
got = {e["host"]: e["outcome"] for e in json.load(open(sys.argv[1]))["hosts"]}
bad = [(h, want, got.get(h)) for h, want in (a.split("=") for a in sys.argv[2:]) if got.get(h) != want]
for h, want, have in bad:
    print("%s: outcome %s, expected %s" % (h, have, want), file=sys.stderr)
sys.exit(1 if bad else 0)
EOF
}
# Checks what each host's services answer: values HOST EXPECTED-8081-AND-8082.
values() {
    local h=$1 want=$2 port got
    for port in 8081 8082; do
        got=$(ip netns exec "$NS_PREFIX-$h" curl -fsS --max-time 10 "http://127.0.0.1:$port/calc/7")
        [ "$got" = "calc 7 $want" ] || fail "$h:$port answers '$got', expected 'calc 7 $want'"
    done
}
# The PLAY RECAP's changed count of every host must be 0.
no_changes() {
    local bad
    bad=$(grep -E '^host[0-9]+ +:' "$WORK/$1.log" | grep -v 'changed=0 ' || true)
    [ -z "$bad" ] || fail "$1: hosts with changes: $bad"
}

say "1. rollout: canary host1, then batches host2 | host3 host4 | host5"
playbook rollout
expect rollout 0 host1=applied host2=applied host3=applied host4=applied host5=applied
show_summary rollout
for h in "${HOSTS[@]}"; do values "$h" 7000; done
got=$(ip netns exec "$NS_PREFIX-host2" curl -fsS --max-time 10 http://127.0.0.1:8083/calc/7)
[ "$got" = "calc 7 17" ] || fail "host2's other build was patched: '$got'"
grep -q "skipped 1" "$WORK/rollout.summary.json" || fail "host2's other build is not reported skipped"
grep -q "not persisted: PID 1 is bash, not systemd" "$WORK/rollout.summary.json" ||
    fail "rpatch_persist was not skipped on hosts without systemd"
# The batches ran in order: canary, then batch 1, 2, 3.
python3 - "$WORK/rollout.summary.json" <<'EOF' || fail "batches out of order"
import json, sys
summary = json.load(open(sys.argv[1]))
assert summary["stopped"] is False and summary["operation"] == "rollout", summary
phase = {e["host"]: e["phase"] for e in summary["hosts"]}
assert phase == {"host1": "canary", "host2": "batch 1", "host3": "batch 2", "host4": "batch 2",
                 "host5": "batch 3"}, phase
EOF
cat >"$WORK/status.yml" <<'EOF'
- name: Every host runs calc-fix-1 in its two calcapp processes, and in nothing else
  hosts: fleet
  gather_facts: false
  tasks:
    - name: Read what is patched
      rpatch.live.status_info:
        manifest_name: calc-fix-1
      register: st
    - name: Two processes carry calc-fix-1
      ansible.builtin.assert:
        that:
          - st.applied['calc-fix-1'] | length == 2
          - st.processes | length == 2
EOF
ip netns exec "$CTL" ansible-playbook "$WORK/status.yml" >"$WORK/status.log" 2>&1 ||
    { tail -n 40 "$WORK/status.log" >&2; fail "status_info: not 2 patched processes per host"; }

say "2. the same rollout again: nothing changes"
playbook rerun
expect rerun 0 host1=already_applied host2=already_applied host3=already_applied \
    host4=already_applied host5=already_applied
no_changes rerun
grep -E '^host[0-9]+ +:' "$WORK/rerun.log" | sed 's/^/    /'

say "3. rpatch_rollback_all: every host back"
playbook rollback -e rpatch_rollback_all=true
expect rollback 0 host1=rolled_back host2=rolled_back host3=rolled_back host4=rolled_back host5=rolled_back
show_summary rollback
for h in "${HOSTS[@]}"; do values "$h" 17; done

say "3b. a manifest whose library changed since it was made: refused, nothing touched"
mkdir -p "$WORK/tampered"
cp "$WORK/patches/calc-fix-1.toml" "$WORK/patches/calc-fix-1.so" "$WORK/tampered/"
printf 'x' >>"$WORK/tampered/calc-fix-1.so"
cat >"$WORK/tampered.yml" <<EOF
- name: A manifest whose library differs is refused on every host
  hosts: fleet
  gather_facts: false
  tasks:
    - name: Apply the manifest
      rpatch.live.patch:
        manifest: $WORK/tampered/calc-fix-1.toml
      register: r
      ignore_errors: true
    - name: It was refused with rpatch's kind
      ansible.builtin.assert:
        that:
          - r is failed
          - r.error.kind == 'library_invalid'
          - r.msg is search('sha256')
EOF
ip netns exec "$CTL" ansible-playbook "$WORK/tampered.yml" >"$WORK/tampered.log" 2>&1 ||
    { tail -n 40 "$WORK/tampered.log" >&2; fail "a tampered manifest was not refused"; }
for h in "${HOSTS[@]}"; do values "$h" 17; done

say "4. check mode: every host would apply, nothing changes"
playbook check --check --diff
expect check 0 host1=would_apply host2=would_apply host3=would_apply host4=would_apply host5=would_apply
grep -q "calc-fix-1 applied" "$WORK/check.log" || fail "check: no diff shown"
for h in "${HOSTS[@]}"; do values "$h" 17; done

say "5. a health check failing on host4, in the second batch"
in_host host4 touch /tmp/rpatch-test-unhealthy || fail "cannot mark host4 unhealthy"
playbook failing
expect failing 2 host1=applied host2=applied host3=rolled_back host4=rolled_back host5=not_started
show_summary failing
grep -q "PLAY RECAP" "$WORK/failing.log" || fail "failing: the play did not finish"
grep -q 'rpatch rollout stopped' "$WORK/failing.log" || fail "failing: no stop message"
python3 -c 'import json, sys; assert json.load(open(sys.argv[1]))["stopped"] is True' \
    "$WORK/failing.summary.json" || fail "failing: the summary does not say the rollout stopped"
values host1 7000
values host2 7000
values host3 17
values host4 17
values host5 17

say "6. rpatch_rollback_all after the failed rollout"
playbook rollback2 -e rpatch_rollback_all=true
expect rollback2 0 host1=rolled_back host2=rolled_back host3=not_applied host4=not_applied host5=not_applied
for h in "${HOSTS[@]}"; do values "$h" 17; done

if [ -z "${SKIP_SANITY:-}" ]; then
    say "ansible-lint"
    # ansible/.ansible-lint makes ansible/ the project; ansible-lint installs the collection into
    # ansible/.ansible/ (ignored by git and by the build) to resolve its modules.
    (cd ansible && env -u ANSIBLE_CONFIG ansible-lint --nocolor) || fail "ansible-lint"
    say "ansible-test sanity --venv --python 3.11"
    # From the collection as built: ansible-test wants it at ansible_collections/rpatch/live/,
    # outside this git repository (inside, it would see the copy as ignored files and skip them).
    SANITY_DIR=$(mktemp -d /tmp/rpatch-sanity.XXXXXX)
    copy="$SANITY_DIR/ansible_collections/rpatch/live"
    mkdir -p "$copy"
    tar -xzf "$WORK"/rpatch-live-*.tar.gz -C "$copy"
    # ansible-test --venv puts pip in each virtualenv with a get-pip script it downloads from a
    # host outside the package registries; an equivalent script that installs pip from its
    # wheel (from PyPI) goes into the cache of an ansible-test home of ours, where it looks first.
    at_home="$TOOLS/ansible-test-home"
    pip_version=$(python3 - <<'EOF'
import inspect, re
from ansible_test._internal import python_requirements
source = inspect.getsource(python_requirements.get_venv_packages)
print(re.search(r"pip='([0-9.]+)'", source).group(1))
EOF
)
    cache="$at_home/.ansible/test/cache"
    bootstrap="$cache/get_pip_${pip_version//./_}.py"
    if [ ! -f "$bootstrap" ]; then
        mkdir -p "$cache"
        pip download -q --no-deps --only-binary=:all: -d "$cache" "pip==$pip_version"
        cat >"$bootstrap.new" <<EOF
"""Installs pip $pip_version from its wheel beside this file, as get-pip.py would."""
import os
import sys

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "pip-$pip_version-py3-none-any.whl"))
from pip._internal.cli.main import main  # noqa: E402

args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
sys.exit(main(["install", "--no-index", "--find-links", here, "--upgrade", "--force-reinstall"] + args))
EOF
        mv "$bootstrap.new" "$bootstrap"
    fi
    rc=0
    (cd "$copy" && HOME="$at_home" env -u ANSIBLE_CONFIG ansible-test sanity --venv --python 3.11) \
        >"$WORK/sanity.log" 2>&1 || rc=$?
    grep -E '^(Running sanity test|ERROR|FATAL|WARNING)' "$WORK/sanity.log" || true
    [ "$rc" -eq 0 ] || { tail -n 40 "$WORK/sanity.log" >&2; fail "ansible-test sanity"; }
    ! grep -q "All targets skipped" "$WORK/sanity.log" || fail "ansible-test sanity tested nothing"
fi

say "passed in $((SECONDS - START)) s"
