#!/bin/sh
# `make test`'s system step: install the Debian packages named as arguments that are missing, when running
# as root on Debian (apt-get); otherwise print one line and go on (the tests needing them skip, saying why).
# apt's output goes to a log; only its tail is shown when the install fails.
set -u
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-query >/dev/null 2>&1; then
	echo "make: not root on Debian: not installing $*; the tests that need them will be skipped"
	exit 0
fi
missing=""
for pkg in "$@"; do
	dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
done
[ -z "$missing" ] && exit 0
log="${TMPDIR:-/tmp}/make-system-packages.log"
echo "make: installing Debian packages:$missing (log: $log)"
export DEBIAN_FRONTEND=noninteractive
apt="apt-get -o DPkg::Lock::Timeout=300 -y -q"
# shellcheck disable=SC2086 # word splitting of the package list is intended
if ! $apt install $missing >"$log" 2>&1; then
	# a fresh machine has no package lists yet
	if ! { $apt update && $apt install $missing; } >>"$log" 2>&1; then
		tail -n 5 "$log"
		echo "make: could not install$missing; the tests that need them will be skipped"
	fi
fi
exit 0
