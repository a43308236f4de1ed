# lib.sh - helpers shared by the scripts in tests/systemd (sourced, bash).
#
# Owns the pass/fail counters, the scratch directory ($WORK, removed at
# exit by the caller's cleanup) and the small waiting and /proc helpers.
# Every check prints "ok   - what" or "FAIL - what" followed by the
# output of the command that failed.
# shellcheck shell=bash

pass=0
fail=0
WORK=$(mktemp -d /tmp/iotd-systemd-test.XXXXXX)

check() {  # check DESCRIPTION COMMAND...
	local what=$1
	shift
	if "$@" >"$WORK/out" 2>&1; then
		pass=$((pass + 1))
		echo "ok   - $what"
	else
		fail=$((fail + 1))
		echo "FAIL - $what"
		tail -n 40 "$WORK/out" | sed 's/^/       /'
	fi
}

summary() {  # summary NAME: print the counts; status 1 if anything failed
	echo "$1: $pass passed, $fail failed"
	[ "$fail" = 0 ]
}

wait_until() {  # wait_until SECONDS COMMAND...: poll every 0.1 s
	local tries=$(($1 * 10))
	shift
	until "$@"; do
		tries=$((tries - 1))
		[ "$tries" -gt 0 ] || return 1
		sleep 0.1
	done
}

free_port() {
	/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# "pid role" of each process whose title starts with "iotd: ", from `ps -eo pid=,args=` on stdin.
iotd_procs() {
	awk '$2 == "iotd:" { r = $3; if ($3 == "worker") r = "worker" $4; print $1, r }'
}
