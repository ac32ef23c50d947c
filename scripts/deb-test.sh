#!/usr/bin/env bash
# Tests the Debian package on this machine (as root): builds it (scripts/deb.sh), checks it with
# lintian (no errors), installs it with dpkg -i, runs `rpatch --version`, the demo patch with the
# installed binary and `systemd-analyze verify` on the installed unit (which must not be
# enabled), then purges it and checks nothing is left.
#
# It refuses to run while an rpatch package is installed already (it would purge it).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "deb-test: run as root (dpkg -i)" >&2; exit 1; }
if dpkg-query -W -f '${Status}' rpatch 2>/dev/null | grep -q 'install ok installed'; then
    echo "deb-test: an rpatch package is installed already; purge it first" >&2
    exit 1
fi

deb=$(scripts/deb.sh)
echo "deb-test: $deb"
dpkg-deb --contents "$deb"

echo "deb-test: lintian"
lintian --fail-on error "$deb"

purge() { dpkg --purge rpatch >/dev/null 2>&1 || true; }
trap purge EXIT
dpkg -i "$deb"
test "$(command -v rpatch)" = /usr/bin/rpatch
rpatch --version
man -w rpatch-attach >/dev/null
test -s /usr/share/bash-completion/completions/rpatch

unit=/usr/lib/systemd/system/rpatch-watch.service
test -f "$unit"
echo "deb-test: systemd-analyze verify $unit"
systemd-analyze verify "$unit"
if [ -e /etc/systemd/system/multi-user.target.wants/rpatch-watch.service ]; then
    echo "deb-test: the unit was enabled by the package" >&2
    exit 1
fi

echo "deb-test: the demo patch with the installed rpatch"
RPATCH=/usr/bin/rpatch scripts/demo.sh

dpkg --purge rpatch
trap - EXIT
for f in /usr/bin/rpatch "$unit" /usr/share/man/man1/rpatch.1.gz; do
    if [ -e "$f" ]; then
        echo "deb-test: $f is left after purge" >&2
        exit 1
    fi
done
echo "deb-test: ok"
