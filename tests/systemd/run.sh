#!/usr/bin/env bash
# run.sh - every systemd-related test of iotd (make systemd-test):
#   units.sh    the unit files, on this machine (systemd-analyze security)
#   host.sh     outside systemd, as root: privilege separation, activation
#   sandbox.sh  under a real systemd (systemd-sandbox), points 1-7 of the
#               deployment contract, verify, the watchdog
# IOTD_BIN is the daemon under test; IOTD_STAGE a `make install DESTDIR=`
# tree of it (the Makefile target prepares both). Parts that cannot run
# here (no root, no sandbox tool) say so and are skipped.
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
status=0
for t in units.sh host.sh sandbox.sh; do
	echo "== tests/systemd/$t"
	"$HERE/$t" || status=1
done
[ "$status" = 0 ] && echo "systemd tests: all passed" || echo "systemd tests: FAILED"
exit "$status"
