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
shift
eval "$setup"
exec "$@"
