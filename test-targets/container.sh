#!/bin/sh
# container.sh SETUP PROGRAM [ARGS...]: prepares a mount namespace the way a container runtime
# (or a hostile container's own init) would, then execs PROGRAM.
#
# Run it inside new namespaces, e.g.
#   unshare --mount --pid --fork --kill-child --propagation private -- container.sh SETUP PROG
# SETUP is shell code run first (mounts, planted files, symlinks); its mounts stay private to
# the namespace, so nothing it does is visible on the host. Used by tests/security.rs.
set -eu
setup=$1
program=$2
shift 2
# Opened before SETUP: a checkout under /tmp is hidden once SETUP mounts a private /tmp. The
# program then runs through this descriptor, or, with no procfs to name it, from a copy on a
# tmpfs private to the namespace.
exec 3<"$program"
eval "$setup"
if [ -e "$program" ]; then
    exec 3<&- "$program" "$@"
elif [ -e /proc/self/fd/3 ]; then
    exec /proc/self/fd/3 "$@"
fi
mount -t tmpfs tmpfs /mnt
copy=/mnt/$(basename "$program")
cat <&3 >"$copy"
chmod +x "$copy"
exec 3<&- "$copy" "$@"
