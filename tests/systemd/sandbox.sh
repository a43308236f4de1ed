#!/usr/bin/env bash
# sandbox.sh - iotd under a real systemd: a throw-away Debian 12 container
# booted by systemd-sandbox (../shared/tools beside the repository), with
# `make install` output copied in as a package would put it.
#
# Checks, in order: the units pass `systemd-analyze verify` silently;
# socket activation (nothing runs before the first connection, which
# succeeds; round trips on IPv4 and IPv6); the journal's ROLE=, WORKER=,
# CLIENT_ID=, REMOTE= and PRIORITY= fields; every process under the iotd
# user; reload with a changed and with a broken config (connections stay,
# the broken one is rejected with a journal line); kill -9 of a worker;
# the watchdog (keep-alives flow, a stopped router gets the service
# restarted); `systemctl start iotd` without the socket (binds from the
# config, READY, STATUS=; a reload adding a port below 1024 is refused,
# one adding another port is served); `systemctl stop` within a second with nothing
# left; and iotd run as root by a unit (children drop to iotd, confined
# workers still log to the journal with their fields).
# Needs root and IOTD_STAGE (a `make install DESTDIR=` tree); prints
# "N passed, N failed". IOTD_SANDBOX overrides the tool's path.
# shellcheck disable=SC2016,SC2317  # snippets run inside; checks called through check()
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/systemd/lib.sh
. "$HERE/lib.sh"
ROOT=$(git -C "$HERE" rev-parse --show-toplevel 2>/dev/null || (cd "$HERE/../.." && pwd))
SB=${IOTD_SANDBOX:-$ROOT/../shared/tools/systemd-sandbox}
STAGE=${IOTD_STAGE:?set IOTD_STAGE to a make install DESTDIR tree}
# The daemon's runtime libraries, the clients, and man for `verify`'s Documentation= check.
export SANDBOX_PACKAGES="libconfuse2 libsystemd0 libseccomp2 liblmdb0 libwslay1 mosquitto-clients man-db"
export SANDBOX_NAME=${SANDBOX_NAME:-iotd-test-$$}
KEEPER=""   # pid (inside) of the subscriber that must survive reloads

cleanup() { "$SB" stop --purge >/dev/null 2>&1 || true; rm -rf "$WORK"; }
trap cleanup EXIT

if [ ! -x "$SB" ]; then
	echo "SKIP: $SB not found: iotd was not tested under a real systemd"
	exit 0
fi
if [ "$(id -u)" != 0 ]; then
	echo "SKIP: systemd-sandbox needs root: iotd was not tested under a real systemd"
	exit 0
fi

sx() { "$SB" exec "$@"; }
pub() { sx mosquitto_pub -h "${HOST:-127.0.0.1}" -p "${PORT:-1883}" "$@"; }
procs() { sx ps -eo pid=,args= | iotd_procs; }
proc_pid() { procs | awk -v r="$1" '$2 == r { print $1 }'; }
show() { sx systemctl show -p "$2" --value "$1"; }
# The journal of the current run of a unit (or of the run INVOCATION, once
# stopped), as "MESSAGE|ROLE|WORKER|CLIENT_ID|REMOTE|PRIORITY" lines.
INVOCATION=""
journal_fields() {
	sx journalctl --no-pager -o json "_SYSTEMD_INVOCATION_ID=${INVOCATION:-$(show "$1" InvocationID)}" |
		/usr/bin/python3 -c '
import json, sys
for line in sys.stdin:
    e = json.loads(line)
    if e.get("SYSLOG_IDENTIFIER") == "iotd":
        print("|".join(str(e.get(k, "")) for k in
                       ("MESSAGE", "ROLE", "WORKER", "CLIENT_ID", "REMOTE", "PRIORITY")))'
}
journal_has() { journal_fields "$1" | grep -E -- "$2"; }
wait_journal() { wait_until "${3:-5}" journal_has "$1" "$2" >/dev/null && journal_has "$1" "$2"; }

# A round trip: subscribe, publish until the message comes back (the
# subscription may take a moment to reach the router).
roundtrip() {  # roundtrip HOST PORT
	sx timeout 15 bash -c '
		mosquitto_sub -h "$1" -p "$2" -t rt/# -v -C 1 -W 10 > /tmp/rt.out & s=$!
		for _ in $(seq 50); do
			mosquitto_pub -h "$1" -p "$2" -t rt/x -m hello -q 1 || exit 1
			kill -0 $s 2>/dev/null || break
			sleep 0.2
		done
		wait $s && cat /tmp/rt.out' _ "$1" "$2" | tee /dev/stderr | grep -qx "rt/x hello"
}

t0=$SECONDS
"$SB" prepare
"$SB" boot
"$SB" install "$STAGE/usr" "$STAGE/etc" /
sx systemd-sysusers
sx systemd-tmpfiles --create /usr/local/lib/tmpfiles.d/iotd.conf
sx systemctl daemon-reload
CONF=$(sx cat /etc/iotd/iotd.conf)

# ---- the units ------------------------------------------------------------------
t_verify() { local out; out=$(sx systemd-analyze verify iotd.socket iotd-websocket.socket iotd-mqtts.socket iotd-websocket-tls.socket iotd.service 2>&1); echo "$out"; [ -z "$out" ]; }
check "systemd-analyze verify of iotd.service and its four socket units prints nothing" t_verify
check "the iotd user exists (sysusers.d) and /var/lib/iotd is its (tmpfiles.d)" \
	sx bash -c 'id iotd && [ "$(stat -c %U /var/lib/iotd)" = iotd ]'

# ---- 1. socket activation ---------------------------------------------------------
t_idle() {
	[ "$(sx systemctl is-active iotd.socket)" = active ] || return 1
	[ "$(sx systemctl is-active iotd.service || true)" = inactive ] || return 1
	[ -z "$(procs)" ]
}
t_first() { pub -t first/t -m hello -r -q 1 -i first-conn; }
t_retained() { sx mosquitto_sub -h 127.0.0.1 -t first/t -v -C 1 -W 5 -i second-conn | grep -x "first/t hello"; }
t_passed() {
	wait_journal iotd "listening on 0\.0\.0\.0:1883 \(socket 'mqtt' passed by systemd\)" &&
		journal_has iotd "listening on \[::\]:1883 \(socket 'mqtt' passed by systemd\)" &&
		journal_has iotd "listening on ws://0\.0\.0\.0:8080 \(socket 'websocket' passed by systemd\)" &&
		journal_has iotd "listening on ws://\[::\]:8080 \(socket 'websocket' passed by systemd\)"
}
t_ws_upgrade() {  # a WebSocket upgrade on the passed socket is answered 101
	sx timeout 10 bash -c 'exec 3<>/dev/tcp/127.0.0.1/8080 &&
		printf "GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n" >&3 &&
		head -c 12 <&3' | grep -qx 'HTTP/1.1 101'
}
check "systemctl start iotd.socket iotd-websocket.socket" \
	sx systemctl start iotd.socket iotd-websocket.socket
check "nothing runs before the first connection" t_idle
check "the first connection activates iotd and succeeds (retained publish)" t_first
check "systemctl is-active iotd: active" sx systemctl is-active iotd
check "the retained message comes back to a subscriber" t_retained
check "live publish/subscribe round trip over IPv4" roundtrip 127.0.0.1 1883
check "live publish/subscribe round trip over IPv6" roundtrip ::1 1883
check "iotd took the four sockets systemd passed, by name" t_passed
check "a WebSocket upgrade on the passed 'websocket' socket is answered 101" t_ws_upgrade

# ---- 3. the journal's fields ------------------------------------------------------
t_fields() {
	wait_journal iotd '^worker [0-9]+: connected .*client_id=first-conn.*\|worker\|[0-9]+\|first-conn\|127\.0\.0\.1:[0-9]+\|6$' &&
		wait_journal iotd '^worker [0-9]+: disconnected: .*\|worker\|[0-9]+\|first-conn\|127\.0\.0\.1:[0-9]+\|6$' &&
		journal_has iotd '^router: session started .*\|router\|\|first-conn\|' &&
		journal_has iotd '^supervisor: iotd .* ready: .*\|supervisor\|\|\|\|6$'
}
check "journalctl -u iotd -o json: connect/disconnect with ROLE=, WORKER=, CLIENT_ID=, REMOTE=, PRIORITY=" t_fields
t_odd_id() {  # a client id with a space (escaped in MESSAGE, kept in the field)
	pub -t odd/t -m x -i "odd id" || return 1
	wait_journal iotd '^worker [0-9]+: connected .*client_id=odd\\x20id .*\|worker\|[0-9]+\|odd id\|'
}
check "CLIENT_ID= holds the client id as sent (MESSAGE escapes its space)" t_odd_id

# ---- 4. users ---------------------------------------------------------------------
t_users() {
	local out; out=$(sx ps -eo user=,uid=,args= | awk '$3 == "iotd:"'); echo "$out"
	[ "$(wc -l <<<"$out")" -ge 4 ] && ! awk '$1 != "iotd" || $2 == 0' <<<"$out" | grep .
}
check "ps: every iotd process runs as user iotd, none as root" t_users
t_unit_confined() {  # under User=iotd too, each child has its seccomp filter and no_new_privs
	local n=0 pid role
	while read -r pid role; do
		[ "$role" = supervisor ] && continue
		echo "$role pid $pid: $(sx grep -E '^(Seccomp|NoNewPrivs|CapEff):' "/proc/$pid/status" | tr '\n\t' '  ')"
		sx grep -Eq '^Seccomp:[[:space:]]+2$' "/proc/$pid/status" || return 1
		sx grep -Eq '^NoNewPrivs:[[:space:]]+1$' "/proc/$pid/status" || return 1
		n=$((n + 1))
	done < <(procs)
	[ "$n" -ge 3 ] && ! sx journalctl -u iotd -o cat | grep -E 'signal 31|landlock: |seccomp: '
}
check "under the unit every child is under its seccomp filter, none killed by it" t_unit_confined

# ---- 5. reload ----------------------------------------------------------------------
MAIN=$(show iotd MainPID)
t_keeper() {
	KEEPER=$(sx bash -c 'setsid mosquitto_sub -h 127.0.0.1 -t keep/# -v -q 1 -i keeper \
		> /tmp/keeper.out 2>&1 < /dev/null & echo $!')
	wait_journal iotd 'connected .*client_id=keeper'
}
t_reload_changed() {
	local listener; listener=$(proc_pid listener)
	sx sed -i -e 's/level = "info"/level = "debug"/' \
		-e 's/max_connections = 10000/max_connections = 5000/' /etc/iotd/iotd.conf
	sx systemctl reload iotd || return 1
	wait_journal iotd 'configuration reloaded: applied: server\.max_connections, logging\.level' || return 1
	# The new limit reached every child (at debug level, set by the same reload).
	wait_journal iotd '^router: took the reloaded configuration\|router\|' &&
		wait_journal iotd '^listener: took the reloaded configuration\|listener\|' &&
		wait_journal iotd '^worker [0-9]+: took the reloaded configuration\|worker\|[0-9]+\|' || return 1
	pub -t keep/1 -m one -q 1 || return 1
	# Debug lines now come from every kind of child; no process was replaced.
	wait_journal iotd '^listener: connection from .*\|listener\|' &&
		wait_journal iotd '^worker [0-9]+: .*\|worker\|[0-9]+\|.*\|7$' &&
		[ "$(proc_pid listener)" = "$listener" ]
}
t_reload_broken() {
	sx sed -i 's/max_inflight = 20/max_inflight = "lots"/' /etc/iotd/iotd.conf
	sx systemctl reload iotd || return 1
	wait_journal iotd 'reload failed, keeping the running configuration: /etc/iotd/iotd\.conf:[0-9]+: server: max_inflight.*\|supervisor\|.*\|3$' &&
		[ "$(sx systemctl is-active iotd)" = active ] && [ "$(show iotd MainPID)" = "$MAIN" ]
}
t_kept() {
	pub -t keep/2 -m two -q 1 || return 1
	wait_until 5 sx grep -qx "keep/2 two" /tmp/keeper.out || return 1
	sx cat /tmp/keeper.out
	sx grep -qx "keep/1 one" /tmp/keeper.out && ! journal_has iotd 'disconnected.*client_id=keeper'
}
check "a subscriber stays connected across the reloads" t_keeper
check "systemctl reload with a changed config: applied at once in every process, none replaced" t_reload_changed
check "systemctl reload with a broken config: rejected with a journal line, service active" t_reload_broken
check "the subscriber got messages from before and after, without a disconnect" t_kept
printf '%s\n' "$CONF" | sx bash -c 'cat > /etc/iotd/iotd.conf'

# ---- 6. kill -9 of a worker ---------------------------------------------------------
t_kill_worker() {
	local old; old=$(proc_pid worker0)
	sx kill -KILL "$old"
	wait_journal iotd "worker 0 killed by signal 9; restarting it" || return 1
	wait_journal iotd "worker 0 is back" || return 1
	[ "$(sx systemctl is-active iotd)" = active ] && [ "$(show iotd MainPID)" = "$MAIN" ] &&
		[ -n "$(proc_pid worker0)" ] && [ "$(proc_pid worker0)" != "$old" ] &&
		roundtrip 127.0.0.1 1883
}
check "kill -9 of a worker: restarted (journal), service active, same main PID" t_kill_worker
if [ -n "$KEEPER" ]; then sx kill "$KEEPER" || true; fi

# ---- the watchdog -------------------------------------------------------------------
mkdir -p "$WORK/dropin"
printf '[Service]\nWatchdogSec=2\n' >"$WORK/dropin/watchdog.conf"
"$SB" install "$WORK/dropin/watchdog.conf" /etc/systemd/system/iotd.service.d
sx systemctl daemon-reload
sx systemctl restart iotd
t_keepalives() {
	sleep 3.5   # past the 2 s limit: only WATCHDOG=1 keeps it alive
	[ "$(show iotd NRestarts)" = 0 ] && [ "$(show iotd ActiveState)" = active ]
}
t_hung_router() {
	local main; main=$(show iotd MainPID)
	sx kill -STOP "$(proc_pid router)"
	wait_until 15 bash -c "[ \"\$('$SB' exec systemctl show -p NRestarts --value iotd)\" = 1 ]" || return 1
	wait_until 10 bash -c "[ \"\$('$SB' exec systemctl is-active iotd)\" = active ]" || return 1
	sx journalctl -u iotd --no-pager -o cat | grep -E "has not answered a health check|Watchdog timeout" &&
		[ "$(show iotd MainPID)" != "$main" ] && roundtrip 127.0.0.1 1883
}
check "WatchdogSec=2: keep-alives flow while every role answers" t_keepalives
check "a stopped (hung) router: keep-alives withheld, systemd restarts iotd" t_hung_router
sx rm -f /etc/systemd/system/iotd.service.d/watchdog.conf
sx systemctl daemon-reload

# ---- 2. systemctl start iotd without the socket unit -------------------------------
sx systemctl stop iotd.socket iotd-websocket.socket iotd.service
t_direct() {
	sx systemctl start iotd || return 1   # Type=notify: returns once READY=1 arrived
	[ "$(sx systemctl is-active iotd)" = active ] &&
		wait_journal iotd '^supervisor: listening on 127\.0\.0\.1:1883\|' &&
		! journal_has iotd 'passed by systemd' && journal_has iotd 'ready: '
}
t_status() {
	roundtrip 127.0.0.1 1883 || return 1
	wait_until 5 bash -c "'$SB' exec systemctl status iotd --no-pager | grep -E 'Status: \"[0-9]+ connections, [1-9][0-9]* messages in, [1-9][0-9]* out, [0-9]+ workers\"'"
	sx systemctl status iotd --no-pager | grep 'Status:'
}
# A port below 1024 cannot be bound by the unprivileged supervisor: refused whole.
t_reload_listen() {
	sx sed -i 's/^\(\s*listen_addresses = \).*/\1{"127.0.0.1:1883", "127.0.0.1:883"}/' \
		/etc/iotd/iotd.conf
	sx systemctl reload iotd || return 1
	wait_journal iotd 'reload failed, keeping the running configuration: cannot listen on 127\.0\.0\.1:883: Permission denied \(a port below 1024' || return 1
	sx sed -i 's/"127.0.0.1:883"/"127.0.0.1:1884"/' /etc/iotd/iotd.conf
	sx systemctl reload iotd || return 1
	wait_journal iotd 'configuration reloaded: applied: server\.listen_addresses;' &&
		roundtrip 127.0.0.1 1884 && roundtrip 127.0.0.1 1883
}
check "systemctl start iotd (no socket): binds from the config, READY reached" t_direct
check "systemctl status shows the STATUS= line with the counters" t_status
check "systemctl reload with new listen addresses: a privileged port refused, another served" t_reload_listen

# ---- 7. stop -----------------------------------------------------------------------
t_stop() {
	local took
	INVOCATION=$(show iotd InvocationID)
	took=$(sx bash -c 's=$EPOCHREALTIME; systemctl stop iotd; e=$EPOCHREALTIME; echo "$s $e" | awk "{ printf \"%.3f\", \$2 - \$1 }"')
	echo "stop took $took s"
	awk -v t="$took" 'BEGIN { exit !(t < 1.0) }' || return 1
	sx systemctl show -p Result -p ExecMainStatus -p ActiveState iotd
	procs
	[ "$(show iotd Result)" = success ] && [ "$(show iotd ExecMainStatus)" = 0 ] &&
		[ "$(show iotd ActiveState)" = inactive ] && [ -z "$(procs)" ] &&
		wait_journal iotd 'stopping \(SIGTERM\)' && wait_journal iotd '^supervisor: stopped\|'
}
check "systemctl stop iotd: clean exit within a second, no process left" t_stop
INVOCATION=""

# ---- iotd started as root by a unit: privilege separation and the journal -----------
printf 'server {\n\tlisten_addresses = {"127.0.0.1:1884"}\n\tworkers = 1\n}\n' |
	sx bash -c 'cat > /etc/iotd/root.conf'
t_root_unit() {
	local w
	sx systemd-run --unit=iotd-root -p Type=notify /usr/local/sbin/iotd -c /etc/iotd/root.conf || return 1
	PORT=1884 pub -t r/x -m y -i rootclient || return 1
	w=$(proc_pid worker0)
	sx bash -c "grep -E '^Uid:' /proc/$w/status; readlink /proc/$w/root"
	sx bash -c "[ \"\$(awk '/^Uid:/ { print \$2 }' /proc/$w/status)\" = \"\$(id -u iotd)\" ] &&
		readlink /proc/$w/root | grep -q '(deleted)$'" || return 1
	wait_journal iotd-root '^worker 0: connected .*\|worker\|0\|rootclient\|127\.0\.0\.1:[0-9]+\|6$'
}
check "as root in a unit: a chrooted worker under iotd still logs to the journal with fields" t_root_unit
sx systemctl stop iotd-root || true

echo "(sandbox part took $((SECONDS - t0)) s)"
summary "sandbox (real systemd)"
