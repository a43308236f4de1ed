#!/usr/bin/env bash
# units.sh - the unit files as systemd's own analysers see them, on this
# machine (no systemd needed as PID 1): the service's sandboxing exposure
# must stay at 2.0 or lower ("OK"). `systemd-analyze verify` needs the
# installed binary and man pages, so sandbox.sh runs it.
# Prints "N passed, N failed".
# shellcheck disable=SC2317  # check functions are called through check()
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/systemd/lib.sh
. "$HERE/lib.sh"
UNITS=$HERE/../../systemd
trap 'rm -rf "$WORK"' EXIT

if ! command -v systemd-analyze >/dev/null; then
	echo "SKIP: systemd-analyze not installed (package systemd)"
	exit 0
fi

t_exposure() {
	local out level
	out=$(systemd-analyze security --offline=yes --no-pager "$UNITS/iotd.service" 2>&1)
	level=$(sed -n 's/.*Overall exposure level for iotd.service: \([0-9.]*\).*/\1/p' <<<"$out")
	grep -E "✗|Overall" <<<"$out"
	[ -n "$level" ] && awk -v l="$level" 'BEGIN { exit !(l <= 2.0) }'
}
t_cap_empty() { grep -qx 'CapabilityBoundingSet=' "$UNITS/iotd.service"; }
t_names() {
	grep -qx 'FileDescriptorName=mqtt' "$UNITS/iotd.socket" &&
		grep -qx 'ListenStream=0.0.0.0:1883' "$UNITS/iotd.socket" &&
		grep -qx 'ListenStream=\[::\]:1883' "$UNITS/iotd.socket"
}

check "systemd-analyze security --offline=yes iotd.service: exposure 2.0 or lower" t_exposure
check "iotd.service keeps no capability (CapabilityBoundingSet= empty)" t_cap_empty
t_ws_names() {
	grep -qx 'FileDescriptorName=websocket' "$UNITS/iotd-websocket.socket" &&
		grep -qx 'Service=iotd.service' "$UNITS/iotd-websocket.socket" &&
		grep -qx 'ListenStream=0.0.0.0:8080' "$UNITS/iotd-websocket.socket" &&
		grep -qx 'ListenStream=\[::\]:8080' "$UNITS/iotd-websocket.socket"
}
t_tls_names() {  # t_tls_names UNIT NAME PORT
	grep -qx "FileDescriptorName=$2" "$UNITS/$1" &&
		grep -qx 'Service=iotd.service' "$UNITS/$1" &&
		grep -qx "ListenStream=0.0.0.0:$3" "$UNITS/$1" &&
		grep -qx "ListenStream=\[::\]:$3" "$UNITS/$1"
}
check "iotd.socket: 1883 on IPv4 and IPv6, named 'mqtt'" t_names
check "iotd-websocket.socket: 8080 on IPv4 and IPv6 for iotd.service, named 'websocket'" t_ws_names
check "iotd-mqtts.socket: 8883 on IPv4 and IPv6 for iotd.service, named 'mqtts'" \
	t_tls_names iotd-mqtts.socket mqtts 8883
check "iotd-websocket-tls.socket: 8081 on IPv4 and IPv6 for iotd.service, named 'websocket-tls'" \
	t_tls_names iotd-websocket-tls.socket websocket-tls 8081
summary "units"
