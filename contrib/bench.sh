#!/usr/bin/env bash
# contrib/bench.sh - iotd side by side with Mosquitto, with a null broker
# as the machine's ceiling (`make bench`).
#
# Starts iotd (2 workers), Mosquitto and contrib/nullbroker on free
# loopback ports with equivalent settings, runs every scenario at QoS 0
# and 1 as A B A B... pairs (iotd, then Mosquitto; the null broker once),
# prints a table of iotd/Mosquitto ratios (median of the pairs) and exits
# non-zero naming every scenario below its target.
#
# The -auth scenarios run the same clients with a user name and password
# against a second iotd and Mosquitto that both read one password file
# ($7$, made by mosquitto_passwd) and one ACL of 1,000 rules, generated in
# the work directory. Each round runs iotd without authentication too, so
# their own table also gives iotd with/without authentication, pair by pair.
#
# The TLS and WebSocket scenarios (fanin-tls, pairs-tls, handshakes-ecdsa,
# handshakes-rsa, conns-tls, fanin-ws) run against a further iotd and
# Mosquitto per listener kind: TLS with an ECDSA P-256 certificate, TLS with
# an RSA-2048 one, WebSocket on /mqtt. A CA and both certificates for
# 127.0.0.1 are made in the work directory; both brokers serve the same
# certificate and key. The client offers only TLS 1.3, TLS_AES_128_GCM_SHA256
# and X25519, so both brokers negotiate the same. While an iotd cannot
# start with such a listener, its rows say so and Mosquitto is measured alone.
#
# The -v5 scenarios (fanin-v5, fanout-v5, pairs-v5, conns-v5) are their
# 3.1.1 twins with MQTT 5 clients (iotd-bench -V 5), against the same
# brokers and with the same targets. sharedfanin (and sharedfanin-v5) is
# fanin's load spread over a shared subscription: 50 publishers, a group of
# 10 subscribers on $share/bench/bench/in/#, each message to one member;
# its rows are judged as fanin's. A broker without MQTT 5 refuses the -v5
# clients' CONNECT, one without shared subscriptions delivers nothing to
# the group: either run fails, is reported, and the script goes on. The
# null broker speaks neither, so it sits these scenarios out.
#
#   BENCH_SECONDS=10      measured seconds per run
#   BENCH_PAIRS=3         iotd/Mosquitto pairs (-auth: rounds) per scenario and QoS
#   BENCH_SCENARIOS="fanin fanout pairs latency conns conns-auth"   a subset, in
#                         any order; also fanin-auth and fanout-auth (about 3.5
#                         minutes each with the defaults, so not in the default set),
#                         and the TLS and WebSocket ones above (not in the default set:
#                         BENCH_SCENARIOS="fanin-tls pairs-tls handshakes-ecdsa
#                         handshakes-rsa conns-tls fanin-ws"), and the MQTT 5 and
#                         shared subscription ones above (not in the default set:
#                         BENCH_SCENARIOS="fanin-v5 fanout-v5 pairs-v5 conns-v5
#                         sharedfanin sharedfanin-v5")
#   BENCH_CONNS=10000     idle connections for "conns" (100000 needs higher
#                         per-process open-file limits in the brokers)
#   BENCH_NO_FAIL=1       report without failing
#   quick smoke test:     BENCH_SECONDS=3 BENCH_PAIRS=1 contrib/bench.sh
# No 'set -e': every failure is checked where it happens, and reported.
set -uo pipefail

cd "$(dirname "$0")/.." || exit 2
ROOT=$(pwd)

SECS=${BENCH_SECONDS:-10}
PAIRS=${BENCH_PAIRS:-3}
SCENARIOS=$(echo "${BENCH_SCENARIOS:-fanin fanout pairs latency conns conns-auth}" | tr ',' ' ')
CONNS=${BENCH_CONNS:-10000}
NO_FAIL=${BENCH_NO_FAIL:-0}
MOSQUITTO=${MOSQUITTO:-/usr/sbin/mosquitto}
MOSQUITTO_PASSWD=${MOSQUITTO_PASSWD:-/usr/bin/mosquitto_passwd}
BENCH=$ROOT/build/contrib/iotd-bench
NULLB=$ROOT/build/contrib/nullbroker
IOTD=$ROOT/build/iotd

# Targets, iotd/Mosquitto: throughput, CPU efficiency; latency and memory are "at most".
declare -A T_TPUT=([fanin]=3 [pairs]=3 [fanout]=1.5 [fanin-auth]=3 [fanout-auth]=1.5
	[fanin-tls]=3 [pairs-tls]=3 [fanin-ws]=3
	[fanin-v5]=3 [pairs-v5]=3 [fanout-v5]=1.5 [sharedfanin]=3 [sharedfanin-v5]=3)
declare -A T_EFF=([fanin]=5 [pairs]=5 [fanout]=3 [latency]=1.0 [conns]=1.0
	[fanin-auth]=5 [fanout-auth]=3 [conns-auth]=1.0
	[fanin-tls]=5 [pairs-tls]=5 [fanin-ws]=5 [handshakes-ecdsa]=1.0 [handshakes-rsa]=1.0
	[conns-tls]=1.0
	[fanin-v5]=5 [pairs-v5]=5 [fanout-v5]=3 [conns-v5]=1.0 [sharedfanin]=5 [sharedfanin-v5]=5)
T_NOAUTH=0.9         # fanin-auth, fanout-auth: iotd with/without auth, msgs/s and msgs/CPU-s
T_LAT=1.0            # p50 and p99 ratios, latency scenario
T_BYTES=1.0          # bytes per idle connection ratio
T_IDLE_KB=10240      # iotd's idle PSS

log() { printf '%s\n' "bench: $*" >&2; }
die() { log "$*"; exit 2; }

for v in "$SECS" "$PAIRS" "$CONNS"; do
	[[ $v =~ ^[0-9]+$ && $v -gt 0 ]] || die "BENCH_SECONDS, BENCH_PAIRS and BENCH_CONNS must be positive integers"
done
for s in $SCENARIOS; do
	case $s in fanin|fanout|pairs|latency|conns|fanin-auth|fanout-auth|conns-auth) ;;
	fanin-tls|pairs-tls|handshakes-ecdsa|handshakes-rsa|conns-tls|fanin-ws) ;;
	fanin-v5|fanout-v5|pairs-v5|conns-v5|sharedfanin|sharedfanin-v5) ;;
	*) die "unknown scenario '$s'" ;; esac
done
AUTH=0               # 1: an -auth scenario is selected, so the -auth brokers run
[[ " $SCENARIOS " == *"-auth "* ]] && AUTH=1
AUTH_PASSWORD=bench-secret   # every client's; the brokers see only its $7$ hashes
ACL_RULES=1000

# The TLS and WebSocket scenarios: which listener each runs against, and the
# client's side of it. One suite, one group, one version for both brokers.
is_transport() { [[ $1 == *-tls || $1 == *-ws || $1 == handshakes-* ]]; }
listener_of() {  # scenario -> tls, rsa or ws
	case $1 in handshakes-rsa) echo rsa ;; *-ws) echo ws ;; *) echo tls ;; esac
}
TLS_SUITE=TLS_AES_128_GCM_SHA256
TLS_GROUP=X25519
WS_PATH=/mqtt
LISTENERS=""         # the listener kinds the selected scenarios need
for s in $SCENARIOS; do
	is_transport "$s" || continue
	l=$(listener_of "$s")
	[[ " $LISTENERS " == *" $l "* ]] || LISTENERS="$LISTENERS $l"
done
declare -A UNAVAILABLE   # an iotd that cannot start with its listener: why
is_transport_broker() { [[ $1 == *-tls || $1 == *-rsa || $1 == *-ws ]]; }

# ------------------------------------------------------------ prerequisites

build() {
	log "building iotd, iotd-bench and nullbroker"
	make -s "build/iotd" "build/contrib/iotd-bench" "build/contrib/nullbroker" >&2 ||
		die "build failed"
}

install_mosquitto() {
	[[ -x $MOSQUITTO ]] && return 0
	log "installing Debian's mosquitto"
	local sudo=""
	[[ $(id -u) -ne 0 ]] && sudo=sudo
	$sudo apt-get update -qq >&2
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq mosquitto >&2 ||
		die "cannot install mosquitto"
	[[ -x $MOSQUITTO ]] || die "mosquitto is still missing at $MOSQUITTO"
	((AUTH)) && [[ ! -x $MOSQUITTO_PASSWD ]] && die "the -auth scenarios need $MOSQUITTO_PASSWD (Debian's mosquitto)"
	return 0
}

# ------------------------------------------------------------------ brokers

WORK=$(mktemp -d /tmp/iotd-bench.XXXXXX) || die "cannot create a work directory"
chmod 755 "$WORK"      # mosquitto drops root for its own user, and logs here
mkdir -p "$WORK/runs"
STARTED=()             # every pid this script started, and only those

# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
	local pid
	for pid in "${STARTED[@]}"; do
		kill -TERM "$pid" 2>/dev/null || true
	done
	for pid in "${STARTED[@]}"; do
		for _ in $(seq 50); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	done
	STARTED=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM

declare -A PORT PID  # by broker: iotd, mosquitto, null, and iotd-auth, mosquitto-auth
BROKERS="iotd mosquitto null"
((AUTH)) && BROKERS="$BROKERS iotd-auth mosquitto-auth"
for l in $LISTENERS; do BROKERS="$BROKERS iotd-$l mosquitto-$l"; done

free_port() {  # broker -> PORT[broker]
	local p
	for _ in $(seq 20); do
		p=$("$BENCH" --free-port)
		[[ " ${USED_PORTS:-} " == *" $p "* ]] || { USED_PORTS="${USED_PORTS:-} $p"; PORT[$1]=$p; return; }
	done
	die "no free port"
}

log_of() { if [[ $1 == null ]]; then echo "$WORK/nullbroker.log"; else echo "$WORK/$1.log"; fi; }

# Returns 1 when an iotd with a TLS or WebSocket listener exits at start-up:
# an iotd without those listeners yet refuses the configuration.
wait_port() {  # broker
	local hint=""
	[[ $1 == iotd-auth ]] && hint="; does this iotd have the \"file\" auth backend? BENCH_SCENARIOS without the -auth scenarios runs the others"
	for _ in $(seq 100); do
		if ! kill -0 "${PID[$1]}" 2>/dev/null && [[ $1 == iotd-* ]] && is_transport_broker "$1"; then
			wait "${PID[$1]}" 2>/dev/null
			UNAVAILABLE[$1]=$(tail -1 "$(log_of "$1")")
			log "$1 cannot serve this yet: ${UNAVAILABLE[$1]}"
			return 1
		fi
		kill -0 "${PID[$1]}" 2>/dev/null || die "$1 exited at start-up (see $(log_of "$1"))$hint"
		if (exec 3<>"/dev/tcp/127.0.0.1/${PORT[$1]}") 2>/dev/null; then
			return 0
		fi
		sleep 0.1
	done
	die "$1 does not listen on port ${PORT[$1]} after 10 s"
}

# Sum of Pss (kB) over a process and its children.
pss_tree() {
	local pids
	pids="$1 $(ps -o pid= --ppid "$1" 2>/dev/null | tr '\n' ' ')"
	for p in $pids; do cat "/proc/$p/smaps_rollup" 2>/dev/null; done |
		awk '/^Pss:/ { s += $2 } END { print s + 0 }'
}

# A broker's listener address, in iotd's form.
iotd_listen() {  # broker
	case $1 in
	*-tls | *-rsa) echo "mqtts://127.0.0.1:${PORT[$1]}" ;;
	*-ws) echo "ws://127.0.0.1:${PORT[$1]}$WS_PATH" ;;
	*) echo "127.0.0.1:${PORT[$1]}" ;;
	esac
}

cert_of() { if [[ $1 == *-rsa ]]; then echo rsa; else echo ecdsa; fi; }

iotd_conf() {  # broker -> $WORK/<broker>.conf; iotd-auth's with the auth files
	cat <<EOF
# Equivalent to mosquitto.conf: same in-flight window, queues deep enough
# never to drop at QoS 1 (Mosquitto 2.0 drops at 100000 with fewer
# messages outstanding), no per-address limits (the load comes from a few
# loopback addresses, as fast as it can), warnings and errors only.
server {
	listen_addresses = {"$(iotd_listen "$1")"}
	workers = 2
	max_connections = $((CONNS + 1000))
	max_sessions = 0
	max_inflight = 20
	max_queued_messages = 1000000
	max_queued_bytes = 0
	max_queued_bytes_total = 0
	max_connections_per_address = 0
	max_connect_rate_per_address = 0
	max_inflight_bytes = 1099511627776
}
logging {
	level = "warn"
}
EOF
	if [[ $1 == iotd-auth ]]; then
		cat <<EOF
auth {
	backend = "file"
	password_file = "$WORK/passwd"
	acl_file = "$WORK/acl"
	allow_anonymous = false
}
EOF
	fi
	if [[ $1 == *-tls || $1 == *-rsa ]]; then
		cat <<EOF
tls {
	cert_file = "$WORK/tls/$(cert_of "$1").pem"
	key_file = "$WORK/tls/$(cert_of "$1").key"
}
EOF
	fi
}

mosquitto_conf() {  # broker -> $WORK/<broker>.conf; mosquitto-auth's with the auth files
	echo "listener ${PORT[$1]} 127.0.0.1"
	case $1 in
	*-tls | *-rsa)
		echo "cafile $WORK/tls/ca.pem"
		echo "certfile $WORK/tls/$(cert_of "$1").pem"
		echo "keyfile $WORK/tls/$(cert_of "$1").key"
		echo "tls_version tlsv1.3"
		echo "ciphers_tls1.3 $TLS_SUITE"
		;;
	*-ws)
		echo "protocol websockets"
		# Mosquitto 2.0.11 exits with websockets listeners only ("Unable to
		# start any listening sockets"): an MQTT listener no client uses
		echo "listener ${PORT[$1-mqtt]} 127.0.0.1"
		;;
	esac
	if [[ $1 == mosquitto-auth ]]; then
		echo "allow_anonymous false"
		echo "password_file $WORK/passwd"
		echo "acl_file $WORK/acl"
	else
		echo "allow_anonymous true"
	fi
	cat <<EOF
persistence false
max_inflight_messages 20
max_queued_messages 1000000
max_queued_bytes 0
log_dest file $WORK/$1.log
log_type error
log_type warning
connection_messages false
EOF
}

write_configs() {
	local b
	for b in $BROKERS; do
		case $b in
		iotd*) iotd_conf "$b" >"$WORK/$b.conf" ;;
		mosquitto*)
			mosquitto_conf "$b" >"$WORK/$b.conf"
			: >"$WORK/$b.log"
			if id mosquitto >/dev/null 2>&1; then
				chown mosquitto "$WORK/$b.log" 2>/dev/null
			fi
			;;
		esac
	done
}

# A CA, and an ECDSA P-256 and an RSA-2048 server certificate for
# 127.0.0.1 signed by it. The keys are readable by both brokers' users:
# they guard nothing but this run.
write_certs() {
	local d=$WORK/tls k ext
	ext=$'subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth'
	{ mkdir -p "$d" && chmod 755 "$d"; } || die "cannot create $d"
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 7 \
		-subj /CN=iotd-bench-ca -keyout "$d/ca.key" -out "$d/ca.pem" 2>>"$d/openssl.log" ||
		die "openssl cannot make the CA (see $d/openssl.log)"
	for k in ecdsa rsa; do
		local kopt=(-newkey ec -pkeyopt ec_paramgen_curve:P-256)
		[[ $k == rsa ]] && kopt=(-newkey rsa:2048)
		openssl req "${kopt[@]}" -nodes -subj /CN=127.0.0.1 -keyout "$d/$k.key" -out "$d/$k.csr" \
			2>>"$d/openssl.log" || die "openssl cannot make the $k key (see $d/openssl.log)"
		openssl x509 -req -in "$d/$k.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial \
			-days 7 -extfile <(echo "$ext") -out "$d/$k.pem" 2>>"$d/openssl.log" ||
			die "openssl cannot sign the $k certificate (see $d/openssl.log)"
	done
	chmod 644 "$d"/*.key "$d"/*.pem
}

# The -auth scenarios' password file: "bench" for the traffic scenarios and
# client0... for each conns-auth connection, one password, hashed by
# mosquitto_passwd as it hashes a new user ($7$, PBKDF2-SHA512, its own salt
# each). Readable by both brokers' users: it guards nothing but this run.
write_passwd() {
	local f=$WORK/passwd
	{
		echo "bench:$AUTH_PASSWORD"
		seq 0 $((CONNS - 1)) | sed "s/.*/client&:$AUTH_PASSWORD/"
	} >"$f"
	"$MOSQUITTO_PASSWD" -U "$f" >&2 || die "mosquitto_passwd -U $f failed"
	awk -F: '$2 !~ /^\$7\$/ { bad = 1 } END { exit bad || NR != '$((CONNS + 1))' }' "$f" ||
		die "$f: mosquitto_passwd -U did not write $((CONNS + 1)) \$7\$ entries"
	chmod 644 "$f"
}

# One user section of the ACL, for a client the benchmark does not run.
acl_user() {  # number
	local u site=$(($1 % 20))
	u=$(printf 'sensor-%04d' "$1")
	echo
	echo "user $u"
	echo "topic readwrite site/$site/$u/#"
	echo "topic deny site/$site/$u/config/secret"
	echo "topic read site/$site/broadcast/+"
	echo "topic write site/$site/alarms"
	echo "topic read firmware/sensor/+"
}

# The ACL of the -auth scenarios, ACL_RULES rules as a fleet's might be:
# anonymous rules, patterns every client gets with its user name or client
# id in them, 190 user sections for other clients, and in the middle the
# section of "bench", which allows exactly the topics the traffic scenarios
# use (publishers write bench/in/N or bench/fanout, subscribers read bench/#
# or bench/fanout). No other rule matches a bench/ topic or "bench".
write_acl() {
	local f=$WORK/acl i
	{
		echo "# contrib/bench.sh: $ACL_RULES rules"
		echo "topic read public/announcements"
		echo "topic read public/time"
		echo
		for ((i = 0; i < 11; i++)); do
			echo "pattern read fleet/$i/%u/cmd/#"
			echo "pattern deny fleet/$i/%u/cmd/firmware/#"
			echo "pattern write fleet/$i/%u/telemetry/#"
			echo "pattern write fleet/$i/%c/status"
		done
		for ((i = 0; i < 190; i++)); do
			if ((i == 95)); then
				echo
				echo "user bench"
				echo "topic deny bench/private/#"
				echo "topic write bench/in/+"
				echo "topic write bench/fanout"
				echo "topic read bench/#"
			fi
			acl_user "$i"
		done
	} >"$f"
	[[ $(grep -cE '^(topic|pattern) ' "$f") -eq $ACL_RULES ]] || die "$f does not hold $ACL_RULES rules"
	chmod 644 "$f"
}

start_broker() {  # broker
	case $1 in
	iotd-tls | iotd-rsa | iotd-ws) "$IOTD" -c "$WORK/$1.conf" >>"$WORK/$1.log" 2>&1 & ;;
	iotd*) "$IOTD" -c "$WORK/$1.conf" -l "127.0.0.1:${PORT[$1]}" -w 2 >>"$WORK/$1.log" 2>&1 & ;;
	mosquitto*) "$MOSQUITTO" -c "$WORK/$1.conf" >>"$WORK/$1.stderr" 2>&1 & ;;
	null) "$NULLB" -p "${PORT[$1]}" >>"$(log_of null)" 2>&1 & ;;
	esac
	PID[$1]=$!
	STARTED+=("${PID[$1]}")
	wait_port "$1"
}

stop_pid() {  # pid: one we started; TERM, then KILL after 5 s
	kill -TERM "$1" 2>/dev/null
	for _ in $(seq 50); do
		kill -0 "$1" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL "$1" 2>/dev/null
	wait "$1" 2>/dev/null
	local keep=() p
	for p in "${STARTED[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
	STARTED=("${keep[@]}")
}

# A fresh broker: memory per connection means nothing on a heap that earlier
# runs have grown (freed memory is reused before new pages are touched).
restart() {  # broker
	stop_pid "${PID[$1]}"
	start_broker "$1"
	sleep 1
}

# -------------------------------------------------------------------- runs

FAILURES=()
BROKER_FAILURES=()

conns_args() {
	local procs=$(((CONNS + 17999) / 18000)) naddr=$(((CONNS + 24999) / 25000)) src="" i
	for ((i = 0; i < naddr; i++)); do src="$src${src:+,}127.0.0.$((i + 2))"; done
	echo "-c $CONNS --procs $procs --src-addrs $src"
}

# The brokers a round of a scenario runs, in order: an -auth scenario runs
# iotd without authentication too, for the with/without ratios.
brokers_of() {
	if [[ $1 == *-auth ]]; then echo "iotd iotd-auth mosquitto-auth"
	elif is_transport "$1"; then echo "iotd-$(listener_of "$1") mosquitto-$(listener_of "$1")"
	else echo "iotd mosquitto"; fi
}

# The client scenario under a bench.sh scenario: fanin-tls -> fanin.
base_of() { local b=${1%-auth}; b=${b%-tls}; b=${b%-ws}; b=${b%-ecdsa}; b=${b%-v5}; echo "${b%-rsa}"; }

# The client's MQTT version: 5 for the -v5 scenarios.
version_args() { [[ $1 == *-v5 ]] && echo "-V 5"; return 0; }

# Scenarios the null broker cannot serve: it speaks neither MQTT 5 nor shared subscriptions.
null_serves() { [[ $1 != *-v5 && $1 != sharedfanin* ]]; }

# The scenarios of the first table: not -auth, not TLS or WebSocket.
is_plain() { [[ $1 != *-auth ]] && ! is_transport "$1"; }
any_plain() { local s; for s in $SCENARIOS; do is_plain "$s" && return 0; done; return 1; }

# Scenarios of connections only, run at one QoS and shown without one.
no_qos() { case $(base_of "$1") in conns | handshakes) return 0 ;; esac; return 1; }

# The client's transport options for a scenario.
transport_args() {  # scenario
	is_transport "$1" || return 0
	case $(listener_of "$1") in
	ws) echo "--ws $WS_PATH" ;;
	*) echo "--tls --cafile $WORK/tls/ca.pem --tls-version 1.3 --ciphersuites $TLS_SUITE --groups $TLS_GROUP" ;;
	esac
}

# An -auth scenario's clients: one user for the traffic, one each for conns-auth.
auth_user() { if [[ $1 == conns-auth ]]; then echo "client%d"; else echo "bench"; fi; }

# broker scenario qos round -> $WORK/runs/<scenario>-q<qos>-<broker>-<round>.json
run_one() {
	local who=$1 sc=$2 q=$3 round=$4 base port pid out args rc=0 creds=() tag="run $4"
	base=$(base_of "$2")
	if [[ -n ${UNAVAILABLE[$who]:-} ]]; then
		log "  $who: cannot serve this yet"
		return
	fi
	[[ $base == conns ]] && restart "$who"
	port=${PORT[$who]} pid=${PID[$who]}
	out="$WORK/runs/$sc-q$q-$who-$round"
	args="-s $base -q $q -t $SECS"
	[[ $base == conns ]] && args="-s conns $(conns_args)"
	[[ $base == handshakes ]] && args="-s handshakes -t $SECS"
	args="$args $(transport_args "$sc") $(version_args "$sc")"
	# the same CONNECT for every broker of an -auth round (iotd without auth ignores the password)
	[[ $sc == *-auth ]] && creds=(--user "$(auth_user "$sc")" --password "$AUTH_PASSWORD") tag="run $4, $who"
	# shellcheck disable=SC2086
	timeout $((SECS + 240)) "$BENCH" -p "$port" $args "${creds[@]}" --pids "$pid" --json >"$out.json" 2>"$out.err" || rc=$?
	if [[ $rc -ne 0 ]]; then
		local why
		why=$(grep -o '"error":"[^"]*"' "$out.json" 2>/dev/null | cut -d'"' -f4)
		[[ -z $why ]] && why=$(tail -1 "$out.err")
		[[ $rc -eq 124 ]] && why="iotd-bench timed out"
		FAILURES+=("$sc qos $q: $who run $round failed: $why")
		log "  $who: FAILED ($why)"
		[[ $who == iotd* ]] && BROKER_FAILURES+=("$sc qos $q $tag: $why")
	else
		log "  $who: $(summary "$out.json" "$base")"
	fi
	if ! kill -0 "$pid" 2>/dev/null; then
		FAILURES+=("$sc qos $q: $who died during run $round")
		[[ $who == iotd* ]] && BROKER_FAILURES+=("$sc qos $q $tag: $who exited (see $(log_of "$who"))")
		log "  $who died; restarting it"
		start_broker "$who"
	fi
	sleep 1    # the broker finishes closing the run's connections outside the next measurement
}

jget() {  # file key -> value; "nan" when missing, null, or the run failed
	local v
	grep -q '"ok":true' "$1" 2>/dev/null || { echo nan; return; }
	v=$(grep -o "\"$2\":[^,}]*" "$1" 2>/dev/null | head -1 | cut -d: -f2 | tr -d '"')
	[[ -z $v || $v == null ]] && v=nan
	echo "$v"
}

summary() {
	if [[ $2 == handshakes ]]; then
		echo "$(jget "$1" handshakes_per_s) handshakes/s, $(jget "$1" handshakes_per_cpu_s) per CPU-s, p50 $(jget "$1" hs_p50_us) us ($(jget "$1" tls))"
	elif [[ $2 == conns ]]; then
		echo "$(jget "$1" connect_per_s) conn/s, $(jget "$1" conns_per_cpu_s) conn/CPU-s, $(jget "$1" bytes_per_conn) B/conn"
	elif [[ $2 == sharedfanin ]]; then
		echo "$(jget "$1" msgs_per_s) msg/s, $(jget "$1" msgs_per_cpu_s) msg/CPU-s, p50 $(jget "$1" lat_p50_us) us, members max/min $(jget "$1" fairness)"
	else
		echo "$(jget "$1" msgs_per_s) msg/s, $(jget "$1" msgs_per_cpu_s) msg/CPU-s, p50 $(jget "$1" lat_p50_us) us, p99 $(jget "$1" lat_p99_us) us"
	fi
}

# --------------------------------------------------------------- analysis

median() {  # numbers (nan skipped) -> median or nan
	printf '%s\n' "$@" | awk '$1 ~ /^-?[0-9.]+(e[-+]?[0-9]+)?$/' | sort -g |
		awk '{ a[NR] = $1 } END { if (!NR) print "nan"; else if (NR % 2) print a[(NR + 1) / 2];
		      else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "nan" || b == "nan" || b + 0 == 0) print "nan"; else printf "%.3g\n", a / b }'; }
fmt() { awk -v a="$1" 'BEGIN { if (a == "nan") print "-"; else if (a >= 100) printf "%.0f\n", a; else printf "%.3g\n", a }'; }
below() { awk -v a="$1" -v t="$2" 'BEGIN { exit !(a == "nan" || a + 0 < t + 0) }'; }
above() { awk -v a="$1" -v t="$2" 'BEGIN { exit !(a == "nan" || a + 0 > t + 0) }'; }

# Median over pairs of the per-pair ratio of one figure, iotd/mosquitto unless given.
pair_ratio() {  # scenario qos key [broker broker]
	local r rs=() a=${4:-iotd} b=${5:-mosquitto}
	for ((r = 1; r <= PAIRS; r++)); do
		rs+=("$(ratio "$(jget "$WORK/runs/$1-q$2-$a-$r.json" "$3")" "$(jget "$WORK/runs/$1-q$2-$b-$r.json" "$3")")")
	done
	median "${rs[@]}"
}

raw() {  # scenario qos broker key -> median over rounds
	local r vs=() n=$PAIRS
	[[ $3 == null ]] && n=1
	for ((r = 1; r <= n; r++)); do vs+=("$(jget "$WORK/runs/$1-q$2-$3-$r.json" "$4")"); done
	median "${vs[@]}"
}

check() {  # label value op target
	if { [[ $3 == ">=" ]] && below "$2" "$4"; } || { [[ $3 == "<=" ]] && above "$2" "$4"; }; then
		MISSED+=("$1 = $(fmt "$2") (target $3 $4)")
		VERDICT=MISS
	fi
}

# The throughput and CPU-efficiency keys of a scenario's runs.
fig_keys() {
	case $(base_of "$1") in
	conns) echo "connect_per_s conns_per_cpu_s" ;;
	handshakes) echo "handshakes_per_s handshakes_per_cpu_s" ;;
	*) echo "msgs_per_s msgs_per_cpu_s" ;;
	esac
}

# One row's ratios of an iotd broker to a Mosquitto broker, checked against
# the scenario's targets: sets TPUT EFF P50 P99 BYTES, QN and VERDICT.
compare() {  # scenario qos iotd-broker mosquitto-broker
	local sc=$1 q=$2 tk ek
	read -r tk ek <<<"$(fig_keys "$sc")"
	TPUT=$(pair_ratio "$sc" "$q" "$tk" "$3" "$4")
	EFF=$(pair_ratio "$sc" "$q" "$ek" "$3" "$4")
	P50=$(pair_ratio "$sc" "$q" lat_p50_us "$3" "$4")
	P99=$(pair_ratio "$sc" "$q" lat_p99_us "$3" "$4")
	BYTES=$(pair_ratio "$sc" "$q" bytes_per_conn "$3" "$4")
	VERDICT=ok
	QN=$q
	no_qos "$sc" && QN=-
	[[ -n ${T_TPUT[$sc]:-} ]] && check "$sc qos $QN throughput ratio" "$TPUT" ">=" "${T_TPUT[$sc]}"
	check "$sc qos $QN CPU-efficiency ratio" "$EFF" ">=" "${T_EFF[$sc]}"
	if [[ $sc == latency ]]; then
		check "latency qos $q p50 ratio" "$P50" "<=" $T_LAT
		check "latency qos $q p99 ratio" "$P99" "<=" $T_LAT
	fi
	[[ $sc == conns || $sc == conns-tls || $sc == conns-v5 ]] && check "$sc bytes/conn ratio" "$BYTES" "<=" $T_BYTES
	if no_qos "$sc"; then P50=nan P99=nan; fi
	[[ $(base_of "$sc") == conns ]] || BYTES=nan
}

failed_runs() {  # scenario qos: a FAIL verdict when one of its runs failed
	local f
	for f in "${FAILURES[@]}"; do [[ $f == "$1 qos $2:"* ]] && VERDICT=FAIL; done
}

row() {  # scenario qos
	local sc=$1 q=$2 tk ek ie me ne
	read -r tk ek <<<"$(fig_keys "$sc")"
	ie=$(raw "$sc" "$q" iotd "$ek")
	me=$(raw "$sc" "$q" mosquitto "$ek")
	ne=$(raw "$sc" "$q" null "$ek")
	compare "$sc" "$q" iotd mosquitto
	failed_runs "$sc" "$q"
	printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' \
		"$sc" "$QN" "$(fmt "$TPUT")" "$(fmt "$EFF")" "$(fmt "$P50")" "$(fmt "$P99")" "$(fmt "$BYTES")" \
		"$(fmt "$(raw "$sc" "$q" iotd "$tk")")" "$(fmt "$(raw "$sc" "$q" mosquitto "$tk")")" \
		"$(fmt "$ie")" "$(fmt "$me")" "$(fmt "$ne")" "$(fmt "$(ratio "$ie" "$ne")")" \
		"$(lat_pair "$sc" "$q" iotd)" "$(lat_pair "$sc" "$q" mosquitto)" "$VERDICT"
}

# An -auth row: iotd-auth against mosquitto-auth (same files), and against
# iotd without authentication in the same rounds ("no auth" columns).
auth_row() {  # scenario qos
	local sc=$1 q=$2 tk ek tput_na eff_na
	read -r tk ek <<<"$(fig_keys "$sc")"
	compare "$sc" "$q" iotd-auth mosquitto-auth
	tput_na=$(pair_ratio "$sc" "$q" "$tk" iotd-auth iotd)
	eff_na=$(pair_ratio "$sc" "$q" "$ek" iotd-auth iotd)
	if [[ $sc != conns-auth ]]; then
		check "$sc qos $q msgs/s with/without auth" "$tput_na" ">=" $T_NOAUTH
		check "$sc qos $q msgs/CPU-s with/without auth" "$eff_na" ">=" $T_NOAUTH
	fi
	failed_runs "$sc" "$q"
	printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' \
		"$sc" "$QN" "$(fmt "$TPUT")" "$(fmt "$EFF")" "$(fmt "$tput_na")" "$(fmt "$eff_na")" \
		"$(fmt "$P50")" "$(fmt "$P99")" "$(fmt "$BYTES")" \
		"$(fmt "$(raw "$sc" "$q" iotd-auth "$tk")")" "$(fmt "$(raw "$sc" "$q" iotd "$tk")")" \
		"$(fmt "$(raw "$sc" "$q" mosquitto-auth "$tk")")" \
		"$(fmt "$(raw "$sc" "$q" iotd-auth "$ek")")" "$(fmt "$(raw "$sc" "$q" iotd "$ek")")" \
		"$(fmt "$(raw "$sc" "$q" mosquitto-auth "$ek")")" \
		"$(lat_pair "$sc" "$q" iotd-auth)" "$(lat_pair "$sc" "$q" mosquitto-auth)" "$VERDICT"
}

lat_pair() {  # scenario qos broker -> "p50/p99" in us, or bytes per connection for conns
	if [[ $(base_of "$1") == conns ]]; then
		fmt "$(raw "$1" "$2" "$3" bytes_per_conn)"
	elif [[ $(base_of "$1") == handshakes ]]; then
		echo "$(fmt "$(raw "$1" "$2" "$3" hs_p50_us)") / $(fmt "$(raw "$1" "$2" "$3" hs_p99_us)")"
	else
		echo "$(fmt "$(raw "$1" "$2" "$3" lat_p50_us)") / $(fmt "$(raw "$1" "$2" "$3" lat_p99_us)")"
	fi
}

table() {
	local sc q
	if any_plain; then
		echo "| scenario | qos | msgs/s ratio | msgs/CPU-s ratio | p50 ratio | p99 ratio | bytes/conn ratio |" \
			"iotd msgs/s | mosquitto msgs/s | iotd msgs/CPU-s | mosquitto msgs/CPU-s | null msgs/CPU-s |" \
			"iotd/null CPU eff | iotd p50/p99 us (conns: B/conn) | mosquitto p50/p99 us (conns: B/conn) | verdict |"
		echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
		for sc in $SCENARIOS; do
			is_plain "$sc" || continue
			for q in $(qos_list "$sc"); do row "$sc" "$q"; done
		done
	fi
	((AUTH)) || return 0
	any_plain && echo
	echo "With authentication: ratios are iotd/Mosquitto, both reading the same password file and"
	echo "ACL ($ACL_RULES rules); \"no auth\" ratios are iotd with/without authentication, same rounds."
	echo
	echo "| scenario | qos | msgs/s ratio | msgs/CPU-s ratio | msgs/s vs no auth | msgs/CPU-s vs no auth |" \
		"p50 ratio | p99 ratio | bytes/conn ratio | iotd msgs/s | iotd no-auth msgs/s | mosquitto msgs/s |" \
		"iotd msgs/CPU-s | iotd no-auth msgs/CPU-s | mosquitto msgs/CPU-s |" \
		"iotd p50/p99 us (conns: B/conn) | mosquitto p50/p99 us (conns: B/conn) | verdict |"
	echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
	for sc in $SCENARIOS; do
		[[ $sc == *-auth ]] || continue
		for q in $(qos_list "$sc"); do auth_row "$sc" "$q"; done
	done
}

qos_list() { if no_qos "$1"; then echo 0; else echo "0 1"; fi; }

# A TLS or WebSocket row: iotd against Mosquitto on the same listener kind;
# an iotd that cannot start with that listener yet leaves Mosquitto's alone.
transport_row() {  # scenario qos
	local sc=$1 q=$2 tk ek i m
	i=iotd-$(listener_of "$1") m=mosquitto-$(listener_of "$1")
	read -r tk ek <<<"$(fig_keys "$sc")"
	if [[ -n ${UNAVAILABLE[$i]:-} ]]; then
		TPUT=nan EFF=nan BYTES=nan QN=$q VERDICT="iotd cannot serve this yet"
		no_qos "$sc" && QN=-
	else
		compare "$sc" "$q" "$i" "$m"
	fi
	failed_runs "$sc" "$q"
	printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' \
		"$sc" "$QN" "$(fmt "$TPUT")" "$(fmt "$EFF")" "$(fmt "$BYTES")" \
		"$(fmt "$(raw "$sc" "$q" "$i" "$tk")")" "$(fmt "$(raw "$sc" "$q" "$m" "$tk")")" \
		"$(fmt "$(raw "$sc" "$q" "$i" "$ek")")" "$(fmt "$(raw "$sc" "$q" "$m" "$ek")")" \
		"$(lat_pair "$sc" "$q" "$i")" "$(lat_pair "$sc" "$q" "$m")" \
		"$(negotiated "$sc" "$q" "$m")" "$VERDICT"
}

negotiated() {  # scenario qos broker -> what its first run negotiated, or the transport
	local v
	v=$(jget "$WORK/runs/$1-q$2-$3-1.json" tls)
	[[ $v == nan || -z $v ]] && v=$(jget "$WORK/runs/$1-q$2-$3-1.json" transport)
	[[ $v == nan ]] && v=-
	echo "$v"
}

transport_table() {
	local sc q
	[[ -n $LISTENERS ]] || return 0
	if ((AUTH)) || any_plain; then echo; fi
	echo "TLS and WebSocket: ratios are iotd/Mosquitto serving the same certificate and key"
	echo "(handshakes: per second and per broker CPU-second; conns-tls: connections per CPU-second)."
	echo
	echo "| scenario | qos | throughput ratio | per-CPU-s ratio | bytes/conn ratio | iotd throughput |" \
		"mosquitto throughput | iotd per CPU-s | mosquitto per CPU-s |" \
		"iotd p50/p99 us (conns: B/conn) | mosquitto p50/p99 us (conns: B/conn) | mosquitto's session | verdict |"
	echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
	for sc in $SCENARIOS; do
		is_transport "$sc" || continue
		for q in $(qos_list "$sc"); do transport_row "$sc" "$q"; done
	done
}

# ------------------------------------------------------------------ main

build
install_mosquitto
for b in $BROKERS; do free_port "$b"; done
[[ " $LISTENERS " == *" ws "* ]] && free_port mosquitto-ws-mqtt
write_configs
if ((AUTH)); then
	log "writing the -auth scenarios' password file ($((CONNS + 1)) users) and ACL ($ACL_RULES rules)"
	write_passwd
	write_acl
fi
[[ " $LISTENERS " == *" tls "* || " $LISTENERS " == *" rsa "* ]] && write_certs
for b in $BROKERS; do start_broker "$b"; done
sleep 1
IDLE_IOTD_KB=$(pss_tree "${PID[iotd]}")
IDLE_MOSQ_KB=$(pss_tree "${PID[mosquitto]}")
log "work directory $WORK; iotd :${PORT[iotd]} (pid ${PID[iotd]}), mosquitto :${PORT[mosquitto]} (pid ${PID[mosquitto]}), null :${PORT[null]} (pid ${PID[null]})"
((AUTH)) && log "with authentication: iotd-auth :${PORT[iotd-auth]} (pid ${PID[iotd-auth]}), mosquitto-auth :${PORT[mosquitto-auth]} (pid ${PID[mosquitto-auth]})"
log "idle PSS: iotd $IDLE_IOTD_KB kB, mosquitto $IDLE_MOSQ_KB kB"

START=$(date +%s)
for sc in $SCENARIOS; do
	for q in $(qos_list "$sc"); do
		for ((round = 1; round <= PAIRS; round++)); do
			if [[ $sc == *-auth ]]; then log "$sc qos $q, round $round/$PAIRS"; else log "$sc qos $q, pair $round/$PAIRS"; fi
			for b in $(brokers_of "$sc"); do run_one "$b" "$sc" "$q" "$round"; done
		done
		# the null broker ignores credentials and speaks neither TLS nor WebSocket
		is_plain "$sc" || continue
		null_serves "$sc" || continue
		log "$sc qos $q, null broker"
		run_one null "$sc" "$q" 1
	done
done
ELAPSED=$(($(date +%s) - START))

MISSED=()
{
	echo "iotd $("$IOTD" -V 2>/dev/null | awk '{print $2}') vs $("$MOSQUITTO" -h 2>/dev/null | awk 'NR==1 {print $1, $3}'), $SECS s per run, $PAIRS pair(s), $(nproc) CPUs, $ELAPSED s of runs"
	echo
	table
	transport_table
	echo
	echo "idle PSS: iotd $IDLE_IOTD_KB kB (target < $T_IDLE_KB kB), mosquitto $IDLE_MOSQ_KB kB"
	for b in "${!UNAVAILABLE[@]}"; do echo "$b cannot serve this yet: ${UNAVAILABLE[$b]}"; done
} >"$WORK/results.md"
if ((IDLE_IOTD_KB >= T_IDLE_KB)); then
	MISSED+=("iotd idle PSS = $IDLE_IOTD_KB kB (target < $T_IDLE_KB kB)")
fi
cat "$WORK/results.md"
echo
echo "raw results: $WORK/runs/*.json; logs: $WORK/*.log"

status=0
if ((${#BROKER_FAILURES[@]})); then
	echo
	echo "iotd failures:"
	printf '  %s\n' "${BROKER_FAILURES[@]}"
	grep -hiE 'error|crit|fatal|signal' "$WORK"/iotd*.log 2>/dev/null | tail -20 | sed 's/^/  log: /'
fi
if ((${#FAILURES[@]})); then
	echo
	echo "failed runs:"
	printf '  %s\n' "${FAILURES[@]}"
	status=1
fi
if ((${#MISSED[@]})); then
	echo
	echo "below target:"
	printf '  %s\n' "${MISSED[@]}"
	status=1
fi
if ((status)) && [[ $NO_FAIL == 1 ]]; then
	echo "(BENCH_NO_FAIL=1: not failing)"
	status=0
fi
exit $status
