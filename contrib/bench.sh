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
#   BENCH_SECONDS=10      measured seconds per run
#   BENCH_PAIRS=3         iotd/Mosquitto pairs per scenario and QoS
#   BENCH_SCENARIOS="fanin fanout pairs latency conns"   a subset, in any order
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
SCENARIOS=$(echo "${BENCH_SCENARIOS:-fanin fanout pairs latency conns}" | tr ',' ' ')
CONNS=${BENCH_CONNS:-10000}
NO_FAIL=${BENCH_NO_FAIL:-0}
MOSQUITTO=${MOSQUITTO:-/usr/sbin/mosquitto}
BENCH=$ROOT/build/contrib/iotd-bench
NULLB=$ROOT/build/contrib/nullbroker
IOTD=$ROOT/build/iotd

# Targets, iotd/Mosquitto: throughput, CPU efficiency; latency and memory are "at most".
declare -A T_TPUT=([fanin]=3 [pairs]=3 [fanout]=1.5)
declare -A T_EFF=([fanin]=5 [pairs]=5 [fanout]=3 [latency]=1.0 [conns]=1.0)
T_LAT=1.0            # p50 and p99 ratios, latency scenario
T_BYTES=1.0          # bytes per idle connection ratio
T_IDLE_KB=10240      # iotd's idle PSS

log() { printf '%s\n' "bench: $*" >&2; }
die() { log "$*"; exit 2; }

for v in "$SECS" "$PAIRS" "$CONNS"; do
	[[ $v =~ ^[0-9]+$ && $v -gt 0 ]] || die "BENCH_SECONDS, BENCH_PAIRS and BENCH_CONNS must be positive integers"
done
for s in $SCENARIOS; do
	case $s in fanin|fanout|pairs|latency|conns) ;; *) die "unknown scenario '$s'" ;; esac
done

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

free_port() {
	local p
	for _ in $(seq 20); do
		p=$("$BENCH" --free-port)
		[[ " ${USED_PORTS:-} " == *" $p "* ]] || { USED_PORTS="${USED_PORTS:-} $p"; echo "$p"; return; }
	done
	die "no free port"
}

wait_port() {  # port pid name
	for _ in $(seq 100); do
		kill -0 "$2" 2>/dev/null || die "$3 exited at start-up (see $WORK/$3.log)"
		if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
			return 0
		fi
		sleep 0.1
	done
	die "$3 does not listen on port $1 after 10 s"
}

# Sum of Pss (kB) over a process and its children.
pss_tree() {
	local pids
	pids="$1 $(ps -o pid= --ppid "$1" 2>/dev/null | tr '\n' ' ')"
	for p in $pids; do cat "/proc/$p/smaps_rollup" 2>/dev/null; done |
		awk '/^Pss:/ { s += $2 } END { print s + 0 }'
}

write_configs() {
	cat >"$WORK/iotd.conf" <<EOF
# Equivalent to mosquitto.conf: same in-flight window, queues deep enough
# never to drop at QoS 1 (Mosquitto 2.0 drops at 100000 with fewer
# messages outstanding), no per-address limits (the load comes from a few
# loopback addresses, as fast as it can), warnings and errors only.
server {
	listen_addresses = {"127.0.0.1:$PORT_IOTD"}
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
	cat >"$WORK/mosquitto.conf" <<EOF
listener $PORT_MOSQ 127.0.0.1
allow_anonymous true
persistence false
max_inflight_messages 20
max_queued_messages 1000000
max_queued_bytes 0
log_dest file $WORK/mosquitto.log
log_type error
log_type warning
connection_messages false
EOF
	: >"$WORK/mosquitto.log"
	if id mosquitto >/dev/null 2>&1; then
		chown mosquitto "$WORK/mosquitto.log" 2>/dev/null
	fi
}

start_iotd() {
	"$IOTD" -c "$WORK/iotd.conf" -l "127.0.0.1:$PORT_IOTD" -w 2 >>"$WORK/iotd.log" 2>&1 &
	PID_IOTD=$!
	STARTED+=("$PID_IOTD")
	wait_port "$PORT_IOTD" "$PID_IOTD" iotd
}

start_mosquitto() {
	"$MOSQUITTO" -c "$WORK/mosquitto.conf" >>"$WORK/mosquitto.stderr" 2>&1 &
	PID_MOSQ=$!
	STARTED+=("$PID_MOSQ")
	wait_port "$PORT_MOSQ" "$PID_MOSQ" mosquitto
}

start_null() {
	"$NULLB" -p "$PORT_NULL" >>"$WORK/nullbroker.log" 2>&1 &
	PID_NULL=$!
	STARTED+=("$PID_NULL")
	wait_port "$PORT_NULL" "$PID_NULL" nullbroker
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
	case $1 in
	iotd) stop_pid "$PID_IOTD"; start_iotd ;;
	mosquitto) stop_pid "$PID_MOSQ"; start_mosquitto ;;
	null) stop_pid "$PID_NULL"; start_null ;;
	esac
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

# broker scenario qos round -> $WORK/runs/<scenario>-q<qos>-<broker>-<round>.json
run_one() {
	local who=$1 sc=$2 q=$3 round=$4 port pid out args rc=0
	[[ $sc == conns ]] && restart "$who"
	case $who in
	iotd) port=$PORT_IOTD pid=$PID_IOTD ;;
	mosquitto) port=$PORT_MOSQ pid=$PID_MOSQ ;;
	null) port=$PORT_NULL pid=$PID_NULL ;;
	esac
	out="$WORK/runs/$sc-q$q-$who-$round"
	args="-s $sc -q $q -t $SECS"
	[[ $sc == conns ]] && args="-s conns $(conns_args)"
	# shellcheck disable=SC2086
	timeout $((SECS + 240)) "$BENCH" -p "$port" $args --pids "$pid" --json >"$out.json" 2>"$out.err" || rc=$?
	if [[ $rc -ne 0 ]]; then
		local why
		why=$(grep -o '"error":"[^"]*"' "$out.json" 2>/dev/null | cut -d'"' -f4)
		[[ -z $why ]] && why=$(tail -1 "$out.err")
		[[ $rc -eq 124 ]] && why="iotd-bench timed out"
		FAILURES+=("$sc qos $q: $who run $round failed: $why")
		log "  $who: FAILED ($why)"
		[[ $who == iotd ]] && BROKER_FAILURES+=("$sc qos $q run $round: $why")
	else
		log "  $who: $(summary "$out.json" "$sc")"
	fi
	if ! kill -0 "$pid" 2>/dev/null; then
		FAILURES+=("$sc qos $q: $who died during run $round")
		[[ $who == iotd ]] && BROKER_FAILURES+=("$sc qos $q run $round: iotd exited (see $WORK/iotd.log)")
		log "  $who died; restarting it"
		case $who in iotd) start_iotd ;; mosquitto) start_mosquitto ;; null) start_null ;; esac
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
	if [[ $2 == conns ]]; then
		echo "$(jget "$1" connect_per_s) conn/s, $(jget "$1" conns_per_cpu_s) conn/CPU-s, $(jget "$1" bytes_per_conn) B/conn"
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

# Median over pairs of the per-pair iotd/mosquitto ratio of one figure.
pair_ratio() {  # scenario qos key
	local r rs=()
	for ((r = 1; r <= PAIRS; r++)); do
		rs+=("$(ratio "$(jget "$WORK/runs/$1-q$2-iotd-$r.json" "$3")" "$(jget "$WORK/runs/$1-q$2-mosquitto-$r.json" "$3")")")
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

row() {  # scenario qos
	local sc=$1 q=$2 tk=msgs_per_s ek=msgs_per_cpu_s
	[[ $sc == conns ]] && tk=connect_per_s ek=conns_per_cpu_s
	local tput eff p50 p99 bytes
	tput=$(pair_ratio "$sc" "$q" $tk)
	eff=$(pair_ratio "$sc" "$q" $ek)
	p50=$(pair_ratio "$sc" "$q" lat_p50_us)
	p99=$(pair_ratio "$sc" "$q" lat_p99_us)
	bytes=$(pair_ratio "$sc" "$q" bytes_per_conn)
	local ie me ne
	ie=$(raw "$sc" "$q" iotd $ek)
	me=$(raw "$sc" "$q" mosquitto $ek)
	ne=$(raw "$sc" "$q" null $ek)
	VERDICT=ok
	local qn=$q
	[[ $sc == conns ]] && qn=-
	[[ -n ${T_TPUT[$sc]:-} ]] && check "$sc qos $qn throughput ratio" "$tput" ">=" "${T_TPUT[$sc]}"
	check "$sc qos $qn CPU-efficiency ratio" "$eff" ">=" "${T_EFF[$sc]}"
	if [[ $sc == latency ]]; then
		check "latency qos $q p50 ratio" "$p50" "<=" $T_LAT
		check "latency qos $q p99 ratio" "$p99" "<=" $T_LAT
	fi
	[[ $sc == conns ]] && check "conns bytes/conn ratio" "$bytes" "<=" $T_BYTES
	local f
	for f in "${FAILURES[@]}"; do [[ $f == "$sc qos $q:"* ]] && VERDICT=FAIL; done
	if [[ $sc == conns ]]; then p50=nan p99=nan; else bytes=nan; fi
	printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' \
		"$sc" "$qn" "$(fmt "$tput")" "$(fmt "$eff")" "$(fmt "$p50")" "$(fmt "$p99")" "$(fmt "$bytes")" \
		"$(fmt "$(raw "$sc" "$q" iotd $tk)")" "$(fmt "$(raw "$sc" "$q" mosquitto $tk)")" \
		"$(fmt "$ie")" "$(fmt "$me")" "$(fmt "$ne")" "$(fmt "$(ratio "$ie" "$ne")")" \
		"$(lat_pair "$sc" "$q" iotd)" "$(lat_pair "$sc" "$q" mosquitto)" "$VERDICT"
}

lat_pair() {  # scenario qos broker -> "p50/p99" in us, or bytes per connection for conns
	if [[ $1 == conns ]]; then
		fmt "$(raw "$1" "$2" "$3" bytes_per_conn)"
	else
		echo "$(fmt "$(raw "$1" "$2" "$3" lat_p50_us)") / $(fmt "$(raw "$1" "$2" "$3" lat_p99_us)")"
	fi
}

table() {
	echo "| scenario | qos | msgs/s ratio | msgs/CPU-s ratio | p50 ratio | p99 ratio | bytes/conn ratio |" \
		"iotd msgs/s | mosquitto msgs/s | iotd msgs/CPU-s | mosquitto msgs/CPU-s | null msgs/CPU-s |" \
		"iotd/null CPU eff | iotd p50/p99 us (conns: B/conn) | mosquitto p50/p99 us (conns: B/conn) | verdict |"
	echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
	local sc q
	for sc in $SCENARIOS; do
		for q in $(qos_list "$sc"); do row "$sc" "$q"; done
	done
}

qos_list() { if [[ $1 == conns ]]; then echo 0; else echo "0 1"; fi; }

# ------------------------------------------------------------------ main

build
install_mosquitto
PORT_IOTD=$(free_port)
PORT_MOSQ=$(free_port)
PORT_NULL=$(free_port)
write_configs
start_iotd
start_mosquitto
start_null
sleep 1
IDLE_IOTD_KB=$(pss_tree "$PID_IOTD")
IDLE_MOSQ_KB=$(pss_tree "$PID_MOSQ")
log "work directory $WORK; iotd :$PORT_IOTD (pid $PID_IOTD), mosquitto :$PORT_MOSQ (pid $PID_MOSQ), null :$PORT_NULL (pid $PID_NULL)"
log "idle PSS: iotd $IDLE_IOTD_KB kB, mosquitto $IDLE_MOSQ_KB kB"

START=$(date +%s)
for sc in $SCENARIOS; do
	for q in $(qos_list "$sc"); do
		for ((round = 1; round <= PAIRS; round++)); do
			log "$sc qos $q, pair $round/$PAIRS"
			run_one iotd "$sc" "$q" "$round"
			run_one mosquitto "$sc" "$q" "$round"
		done
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
	echo
	echo "idle PSS: iotd $IDLE_IOTD_KB kB (target < $T_IDLE_KB kB), mosquitto $IDLE_MOSQ_KB kB"
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
	grep -iE 'error|crit|fatal|signal' "$WORK/iotd.log" 2>/dev/null | tail -20 | sed 's/^/  log: /'
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
