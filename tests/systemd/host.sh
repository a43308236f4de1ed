#!/usr/bin/env bash
# host.sh - iotd outside systemd, started as root, on this machine.
#
# Checks privilege separation (every child under server.user with all
# four uids, "nobody" when that user is missing, and no capability left;
# the listener and the workers chrooted to a removed directory, every
# child under seccomp, also after a restart; the supervisor alone keeps
# root, with only the capabilities it uses; a worker made to call
# socket(2) through gdb is killed by the filter, logged and restarted), a
# publish/subscribe round trip through the confined processes, a SIGHUP
# that reaches every child and a broken config that changes nothing, a
# clean SIGINT stop; and
# socket activation without systemd (systemd-socket-activate): a passed
# socket is served, a socket named for a transport iotd does not serve is
# refused. Needs root; prints "N passed, N failed".
# shellcheck disable=SC2317  # check functions are called through check()
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/systemd/lib.sh
. "$HERE/lib.sh"
BIN=${IOTD_BIN:-$HERE/../../build/iotd}
SUP=""   # pid of the daemon under test (started here, stopped here)

cleanup() {
	if [ -n "$SUP" ] && kill -0 "$SUP" 2>/dev/null; then
		kill -KILL "$SUP" 2>/dev/null || true
	fi
	rm -rf "$WORK"
}
trap cleanup EXIT

if [ "$(id -u)" != 0 ]; then
	echo "SKIP: host.sh needs root (privilege separation only happens when iotd starts as root)"
	exit 0
fi

write_conf() {  # write_conf PORT USER LEVEL [EXTRA]
	cat >"$WORK/iotd.conf" <<EOF
server {
	listen_addresses = {"127.0.0.1:$1"}
	workers = 2
	user = "$2"
	${4:-}
}
logging {
	level = "$3"
}
EOF
}

children() { ps -eo pid=,ppid=,args= | awk -v p="$SUP" '$2 == p { print $1, $4 $5 }'; }
child_pid() { children | awk -v r="$1" '$2 == r { print $1 }'; }
status_field() { awk -v f="$2:" '$1 == f { $1 = ""; print substr($0, 2) }' "/proc/$1/status"; }

start_daemon() {  # start_daemon PORT: run $BIN as root, wait until its 4 children serve
	"$BIN" -c "$WORK/iotd.conf" >"$WORK/log" 2>&1 &
	SUP=$!
	wait_until 10 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
	wait_until 10 bash -c "[ \$(ps -eo ppid= | grep -cx ' *$SUP') = 4 ]"
}

stop_daemon() {  # SIGINT, expect exit status 0
	local rc=0
	kill -INT "$SUP"
	wait "$SUP" || rc=$?
	SUP=""
	return "$rc"
}

# ---- the configured user --------------------------------------------------
PORT=$(free_port)
UID_DAEMON=$(id -u daemon)
GID_DAEMON=$(id -g daemon)
write_conf "$PORT" daemon info
start_daemon "$PORT"

ids() { status_field "$1" "$2" | tr -s '\t ' ' '; }
t_ids() {  # every child: all four uids and gids the configured user's, no groups, no_new_privs
	local n=0 pid role
	while read -r pid role; do
		echo "$role pid $pid: Uid $(ids "$pid" Uid) Gid $(ids "$pid" Gid)" \
			"Groups '$(ids "$pid" Groups)' NoNewPrivs $(ids "$pid" NoNewPrivs)"
		[ "$(ids "$pid" Uid)" = "$UID_DAEMON $UID_DAEMON $UID_DAEMON $UID_DAEMON" ] || return 1
		[ "$(ids "$pid" Gid)" = "$GID_DAEMON $GID_DAEMON $GID_DAEMON $GID_DAEMON" ] || return 1
		[ -z "$(ids "$pid" Groups)" ] && [ "$(ids "$pid" NoNewPrivs)" = 1 ] || return 1
		for f in CapInh CapPrm CapEff CapBnd CapAmb; do
			[ "$(ids "$pid" $f)" = 0000000000000000 ] || { echo "$f $(ids "$pid" $f)"; return 1; }
		done
		n=$((n + 1))
	done < <(children)
	[ "$n" = 4 ]
}
t_supervisor_root() {  # uid 0, with KILL SETGID SETUID SETPCAP NET_BIND_SERVICE SYS_CHROOT SYS_PTRACE only
	echo "CapEff $(ids "$SUP" CapEff) CapBnd $(ids "$SUP" CapBnd)"
	[ "$(ids "$SUP" Uid)" = "0 0 0 0" ] && [ "$(ids "$SUP" CapEff)" = 00000000000c05e0 ] &&
		[ "$(ids "$SUP" CapBnd)" = 00000000000c05e0 ]
}
t_confined() {  # ROLE...: chrooted to a removed directory and under a seccomp filter
	local role pid root
	for role in "$@"; do
		pid=$(child_pid "$role")
		root=$(readlink "/proc/$pid/root")
		echo "$role pid $pid: root '$root' Seccomp $(status_field "$pid" Seccomp)"
		[[ $root == *"(deleted)" ]] || return 1
		[ "$(status_field "$pid" Seccomp)" = 2 ] || return 1
	done
}
t_router_confined() {  # not chrooted (its store is on the file system), under seccomp
	local pid; pid=$(child_pid router)
	[ "$(readlink "/proc/$pid/root")" = / ] && [ "$(status_field "$pid" Seccomp)" = 2 ]
}
t_roundtrip() {  # a subscriber and a publisher through the confined listener and workers
	local out
	out=$(timeout 10 bash -c "mosquitto_sub -h 127.0.0.1 -p $PORT -t rt/# -v -C 1 -W 8 & s=\$!;
		for _ in \$(seq 40); do mosquitto_pub -h 127.0.0.1 -p $PORT -t rt/x -m hello -q 1;
		kill -0 \$s 2>/dev/null || break; sleep 0.2; done; wait \$s")
	echo "$out"
	[ "$out" = "rt/x hello" ]
}
t_log_says() { grep -q -- "$1" "$WORK/log"; }
t_reload_reaches_children() {  # level debug: a worker and the listener log debug lines
	write_conf "$PORT" daemon debug
	kill -HUP "$SUP"
	wait_until 5 t_log_says "configuration reloaded: applied: logging.level"
	mosquitto_pub -h 127.0.0.1 -p "$PORT" -t d/x -m y
	wait_until 5 grep -Eq "listener: debug: connection from" "$WORK/log"
	wait_until 5 grep -Eq "worker [01]: debug: " "$WORK/log"
}
t_reload_broken() {
	local before
	before=$(children | sort)
	write_conf "$PORT" daemon debug "max_inflight = \"lots\""
	kill -HUP "$SUP"
	wait_until 5 t_log_says "reload failed, keeping the running configuration: .*max_inflight"
	[ "$(children | sort)" = "$before" ] && t_roundtrip
}
t_restarted_confined() {  # ROLE: kill -9 it; its successor is dropped and confined too
	local old new
	old=$(child_pid "$1")
	kill -KILL "$old"
	wait_until 5 bash -c "p=\$(ps -eo pid=,ppid=,args= | awk -v p=$SUP '\$2 == p && \$4 \$5 == \"$1\" { print \$1 }'); [ -n \"\$p\" ] && [ \"\$p\" != $old ]"
	new=$(child_pid "$1")
	wait_until 5 t_log_says "${1/worker/worker } is back (pid $new)" || return 1
	t_confined "$1" && t_ids
}
t_no_sigsys() { ! grep -E "signal 31|SIGSYS" "$WORK/log"; }
t_stop() {
	local pids; pids=$(children | awk '{ print $1 }')
	stop_daemon || return 1
	sleep 0.2
	for p in $pids; do ! kill -0 "$p" 2>/dev/null || { echo "pid $p left over"; return 1; }; done
}

check "every child runs as the configured user (Uid/Gid of 'daemon', no groups, no capability, no_new_privs)" t_ids
check "the supervisor alone keeps root, with only the capabilities it uses" t_supervisor_root
check "listener and workers are chrooted (/proc/PID/root) and under seccomp (Seccomp: 2)" \
	t_confined listener worker0 worker1
check "the router is under seccomp but not chrooted (documented)" t_router_confined
check "publish/subscribe round trip through the confined processes" t_roundtrip
check "SIGHUP: the new log level reaches the listener and the workers" t_reload_reaches_children
check "SIGHUP with a broken config: logged, nothing restarted, still serving" t_reload_broken
check "a killed worker's successor is dropped and confined" t_restarted_confined worker0
check "a killed listener's successor is dropped and confined" t_restarted_confined listener
check "round trip after the restarts" t_roundtrip
check "no process died of a seccomp violation" t_no_sigsys
t_enforced() {  # make worker 1 call socket(2) through gdb: the filter must kill it
	local old; old=$(child_pid worker1)
	timeout 30 gdb -p "$old" -batch -ex 'call (int)socket(2, 1, 0)' >"$WORK/gdb" 2>&1 || true
	wait_until 5 t_log_says "worker 1 killed by signal 31 (a system call outside its seccomp allow-list)" &&
		wait_until 5 t_log_says "worker 1 is back" && t_confined worker1 && t_roundtrip
}
if command -v gdb >/dev/null; then
	check "a confined worker that calls socket(2) is killed (SIGSYS), logged and restarted" t_enforced
else
	echo "SKIP: gdb not installed: the seccomp filter's enforcement was not exercised"
fi
check "SIGINT: exit 0, no process left" t_stop

# ---- a missing user falls back to nobody ------------------------------------
write_conf "$PORT" iotd-no-such-user info
start_daemon "$PORT"
t_nobody() {
	local pid
	t_log_says "user 'iotd-no-such-user' does not exist; the children run as 'nobody'" || return 1
	for pid in $(children | awk '{ print $1 }'); do
		[ "$(ids "$pid" Uid | cut -d' ' -f1)" = "$(id -u nobody)" ] || return 1
	done
}
check "a missing server.user: the children run as nobody, with a log line" t_nobody
check "stopped" t_stop

# ---- socket activation without systemd ---------------------------------------
write_conf "$PORT" daemon info
t_activated() {
	local out
	systemd-socket-activate -l "127.0.0.1:$PORT" --fdname=mqtt "$BIN" -c "$WORK/iotd.conf" \
		>"$WORK/log" 2>&1 &
	SUP=$!
	sleep 0.2
	t_roundtrip || return 1
	# Several connections in a row: the passed socket must have been made non-blocking.
	for _ in 1 2 3; do mosquitto_pub -h 127.0.0.1 -p "$PORT" -t a/b -m x || return 1; done
	out=$(cat "$WORK/log")
	grep -q "listening on 127.0.0.1:$PORT (socket 'mqtt' passed by systemd)" <<<"$out"
}
# A WebSocket upgrade on 127.0.0.1:$1 answered "101".
ws_upgrade() {
	timeout 10 bash -c 'exec 3<>/dev/tcp/127.0.0.1/$1 &&
		printf "GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n" >&3 &&
		head -c 12 <&3' _ "$1" | grep -qx 'HTTP/1.1 101'
}
t_ws_activated() {
	local out
	systemd-socket-activate -l "127.0.0.1:$PORT" -l "127.0.0.1:$((PORT + 1))" \
		--fdname=mqtt:websocket "$BIN" -c "$WORK/iotd.conf" >"$WORK/log" 2>&1 &
	SUP=$!
	sleep 0.2
	t_roundtrip || return 1
	ws_upgrade $((PORT + 1)) || return 1
	out=$(cat "$WORK/log")
	grep -q "listening on ws://127.0.0.1:$((PORT + 1)) (socket 'websocket' passed by systemd)" <<<"$out"
}
t_refused() {  # t_refused NAME WHAT: a passed socket named NAME, refused with a log line saying WHAT
	systemd-socket-activate -l "127.0.0.1:$PORT" --fdname="$1" "$BIN" -c "$WORK/iotd.conf" \
		>"$WORK/log" 2>&1 &
	SUP=$!
	sleep 0.2
	timeout 5 bash -c "exec 3<>/dev/tcp/127.0.0.1/$PORT" || true
	local rc=0
	timeout 5 tail --pid="$SUP" -f /dev/null || return 1
	wait "$SUP" || rc=$?
	SUP=""
	cat "$WORK/log"
	[ "$rc" = 1 ] && t_log_says "$2"
}
# A certificate for 127.0.0.1 and a tls section that serves it (the key role reads them as server.user).
tls_conf() {
	chmod o+x "$WORK" && mkdir -p -m 0755 "$WORK/tls" || return 1
	openssl req -x509 -nodes -days 2 -subj /CN=iotd-host-test -newkey ec \
		-pkeyopt ec_paramgen_curve:P-256 -addext subjectAltName=IP:127.0.0.1 \
		-keyout "$WORK/tls/key.pem" -out "$WORK/tls/cert.pem" 2>/dev/null || return 1
	chmod 0644 "$WORK/tls/key.pem" "$WORK/tls/cert.pem"
	printf 'tls {\n\tcert_file = "%s"\n\tkey_file = "%s"\n}\n' "$WORK/tls/cert.pem" \
		"$WORK/tls/key.pem" >>"$WORK/iotd.conf"
}
t_tls_activated() {  # passed 'mqtts' and 'websocket-tls' sockets: a TLS round trip, an upgrade over TLS
	local out wss=$((PORT + 2))
	tls_conf || return 1
	systemd-socket-activate -l "127.0.0.1:$PORT" -l "127.0.0.1:$((PORT + 1))" -l "127.0.0.1:$wss" \
		--fdname=mqtt:mqtts:websocket-tls "$BIN" -c "$WORK/iotd.conf" >"$WORK/log" 2>&1 &
	SUP=$!
	sleep 0.5
	out=$(timeout 10 bash -c "mosquitto_sub -h 127.0.0.1 -p $((PORT + 1)) --cafile $WORK/tls/cert.pem \
		-t rt/# -v -C 1 -W 8 & s=\$!;
		for _ in \$(seq 40); do mosquitto_pub -h 127.0.0.1 -p $((PORT + 1)) \
		--cafile $WORK/tls/cert.pem -t rt/x -m hello -q 1;
		kill -0 \$s 2>/dev/null || break; sleep 0.2; done; wait \$s")
	echo "$out"
	[ "$out" = "rt/x hello" ] || { cat "$WORK/log"; return 1; }
	# stdin held open: s_client would end at its EOF before the answer came.
	out=$({ printf "GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"; sleep 3; } |
		timeout 10 openssl s_client -quiet -connect "127.0.0.1:$wss" -CAfile "$WORK/tls/cert.pem" \
		2>/dev/null | head -c 12)
	[ "$out" = "HTTP/1.1 101" ] || { echo "answer: $out"; return 1; }
	t_log_says "listening on mqtts://127.0.0.1:$((PORT + 1)) (socket 'mqtts' passed by systemd)" &&
		t_log_says "listening on wss://127.0.0.1:$wss (socket 'websocket-tls' passed by systemd)"
}
if command -v systemd-socket-activate >/dev/null; then
	check "systemd-socket-activate: the passed 'mqtt' socket is served" t_activated
	check "stopped" t_stop
	check "systemd-socket-activate: passed 'mqtt' and 'websocket' sockets are served" \
		t_ws_activated
	check "stopped" t_stop
	check "a passed 'websocket-tls' socket without a certificate is refused: exit 1, a log line" \
		t_refused websocket-tls "is for wss, which needs tls.cert_file and tls.key_file"
	check "systemd-socket-activate: passed 'mqtts' and 'websocket-tls' sockets are served" \
		t_tls_activated
	check "stopped" t_stop
	write_conf "$PORT" daemon info
	check "a passed socket of an unknown name is refused: exit 1 with a log line" \
		t_refused quic "unknown FileDescriptorName="
else
	echo "SKIP: systemd-socket-activate not installed (package systemd)"
fi

summary "host (outside systemd, as root)"
