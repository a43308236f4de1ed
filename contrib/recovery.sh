#!/usr/bin/env bash
# contrib/recovery.sh - how long iotd takes to route again after kill -9 of
# each role (`make recovery`).
#
# For each of RECOVERY_KILLS rounds, starts build/iotd on a free loopback
# port under light traffic (a QoS 1 publisher and a subscriber, ~200 msg/s,
# each reconnecting when its worker dies), and kills a worker, the router
# and the listener in turn, each with SIGKILL, measuring the time from the
# kill until routing works again through the affected path:
#
#   worker    a new client held by the restarted worker does a publish round
#             trip (subscribe, publish at QoS 1, receive: worker, router, worker)
#   router    a new client connects (its CONNACK comes from the router),
#             subscribes, publishes and receives
#   listener  a new connection gets CONNACK and does the same round trip
#
# Each round uses a fresh daemon: the supervisor's restart backoff (10 ms
# after a crash, x4 up to 5 s) is reset only once a child has run 10 s, so
# kills of one process in quick succession measure the backoff rather than
# the recovery. That backoff is shown apart: one daemon whose roles are
# each killed RECOVERY_LOOP times, every time as soon as they route again.
#
#   RECOVERY_KILLS=20      kills per role (one per round)
#   RECOVERY_LOOP=5        back-to-back kills per role in the crash-loop part (0: skip)
#   RECOVERY_WORKERS=2     worker processes
#   RECOVERY_TARGET_MS=200 the median worker and router recovery must stay under it
#   RECOVERY_NO_FAIL=1     report, but exit 0 when a target is missed
#
# Loopback only. Stops the daemon it started by PID (an EXIT trap), even on
# failure or Ctrl-C; the daemon's children die with their supervisor
# (PR_SET_PDEATHSIG). Signals only the processes it started and the
# children of its own daemon.
# Needs python3 (tests/e2e/mqttraw.py is the client).
set -uo pipefail

cd "$(dirname "$0")/.." || exit 2
ROOT=$(pwd)

KILLS=${RECOVERY_KILLS:-20}
LOOP=${RECOVERY_LOOP:-5}
WORKERS=${RECOVERY_WORKERS:-2}
TARGET=${RECOVERY_TARGET_MS:-200}
NO_FAIL=${RECOVERY_NO_FAIL:-0}
IOTD=${IOTD_BIN:-$ROOT/build/iotd}
PYTHON=${PYTHON:-/usr/bin/python3}

log() { printf '%s\n' "recovery: $*" >&2; }
die() { log "$*"; exit 2; }

for v in "$KILLS" "$LOOP" "$WORKERS" "$TARGET"; do
	[[ $v =~ ^[0-9]+$ ]] || die "RECOVERY_KILLS, RECOVERY_LOOP, RECOVERY_WORKERS and RECOVERY_TARGET_MS must be integers"
done
((KILLS > 0 && WORKERS >= 2)) || die "RECOVERY_KILLS must be > 0 and RECOVERY_WORKERS >= 2"
[[ -x $IOTD ]] || die "$IOTD not found (run make)"
[[ -x $PYTHON ]] || die "$PYTHON not found"

WORK=$(mktemp -d /tmp/iotd-recovery.XXXXXX) || die "cannot create a work directory"
chmod 755 "$WORK"
CURRENT=              # the daemon (supervisor pid) this script runs now, if any
MEASURING=            # the measuring client it runs now, if any
# Only these two are ever signalled, and each is cleared once reaped, so
# that a recycled pid can never be hit.

# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
	trap - INT TERM
	if [[ -n $MEASURING ]]; then
		kill -KILL "$MEASURING" 2>/dev/null
		wait "$MEASURING" 2>/dev/null
		MEASURING=
	fi
	[[ -n $CURRENT ]] && stop_daemon
	if [[ ${KEEP_WORK:-0} == 1 ]]; then log "work directory kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Placement on load alone (placement_slack 0): a worker's recovery is timed
# by a new connection reaching the restarted worker, the least-loaded one;
# with a slack, new connections would stay on the other worker.
printf 'server {\n    placement_slack = 0\n}\nlogging {\n    level = "warn"\n}\n' > "$WORK/iotd.conf"

free_port() {
	"$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_daemon NAME: starts iotd, sets CURRENT and PORT.
start_daemon() {
	PORT=$(free_port) || die "no free port"
	"$IOTD" -c "$WORK/iotd.conf" -l "127.0.0.1:$PORT" -w "$WORKERS" >"$WORK/$1.log" 2>&1 &
	CURRENT=$!
}

# measure OUT ERR ROLES: runs the measuring client against the current
# daemon, in the background so that a signal reaches the trap at once.
measure() {
	local out=$1 err=$2 roles=$3 rc
	"$PYTHON" "$WORK/measure.py" "$ROOT" "$PORT" "$CURRENT" "$WORKERS" "$roles" >>"$out" 2>"$err" &
	MEASURING=$!
	wait "$MEASURING"
	rc=$?
	MEASURING=
	return $rc
}

# stop_daemon: SIGINT (a graceful stop removes its store), bounded wait, then SIGKILL
# (its children die with it).
stop_daemon() {
	local i
	kill -INT "$CURRENT" 2>/dev/null
	for ((i = 0; i < 100; i++)); do
		kill -0 "$CURRENT" 2>/dev/null || break
		sleep 0.1
	done
	if kill -0 "$CURRENT" 2>/dev/null; then
		log "iotd (pid $CURRENT) did not stop within 10 s of SIGINT; killing it"
		kill -KILL "$CURRENT" 2>/dev/null
	fi
	wait "$CURRENT" 2>/dev/null
	CURRENT=
}

cat > "$WORK/measure.py" <<'EOF'
"""One measurement run against a running iotd: kill each role given on the
command line, time until routing works again, print "ROLE MS" per kill."""
import os, signal, socket, struct, sys, threading, time

sys.path.insert(0, os.path.join(sys.argv[1], "tests", "e2e"))
import mqttraw as m  # noqa: E402

port, sup, workers = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
signal.alarm(180)                      # every wait below is bounded; this bounds the whole run
plan = sys.argv[5].split(",")          # e.g. worker,router,listener
ROUTE_TIMEOUT = 10.0


def title(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def children():
    """The supervisor's living children (its task's children list: no scan of /proc)."""
    try:
        with open(f"/proc/{sup}/task/{sup}/children") as f:
            pids = [int(x) for x in f.read().split()]
    except OSError:
        pids = [int(n) for n in os.listdir("/proc") if n.isdigit()]
    out = []
    for p in pids:
        try:
            with open(f"/proc/{p}/stat", "rb") as f:
                d = f.read()
        except OSError:
            continue
        rest = d[d.rindex(b")") + 2:].split()
        if int(rest[1]) == sup and rest[0] not in (b"Z", b"X"):
            out.append(p)
    return out


def role_pid(role):
    for p in children():
        if title(p) == f"iotd: {role}":
            return p
    return None


def tcp_inode(sport, dport, addr="127.0.0.1"):
    """Inode of the TCP socket addr:sport <-> addr:dport, by an exact
    sock_diag lookup (far cheaper than /proc/net/tcp, whose thousands of
    TIME_WAIT rows would take longer to read than a worker takes to restart)."""
    a = socket.inet_aton(addr) + bytes(12)
    sockid = struct.pack("!HH", sport, dport) + a + a + struct.pack("=I", 0) + b"\xff" * 8
    req = struct.pack("=BBBBI", socket.AF_INET, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF) + sockid
    hdr = struct.pack("=IHHII", 16 + len(req), 20, 1, 1, 0)  # SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 4) as s:  # NETLINK_SOCK_DIAG
        s.sendto(hdr + req, (0, 0))
        data = s.recv(8192)
    length, typ = struct.unpack_from("=IH", data)
    if typ != 20 or length < 16 + 72:
        return None
    if struct.unpack_from("!HH", data, 16 + 4) != (sport, dport):
        return None          # the listening socket answers for a connection it does not know
    return struct.unpack_from("=I", data, 16 + 68)[0]


def server_worker(client):
    """Pid of the worker holding the server side of the client's connection."""
    inode = tcp_inode(port, client.local_port)
    if not inode:
        return None
    for p in children():
        if not title(p).startswith("iotd: worker"):
            continue
        try:
            fds = os.listdir(f"/proc/{p}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{p}/fd/{fd}") == f"socket:[{inode}]":
                    return p
            except OSError:
                pass
    return None


n_client = 0


def connect(timeout=ROUTE_TIMEOUT):
    global n_client
    n_client += 1
    c = m.RawClient(port, timeout=timeout)
    c.connect(f"rec-{os.getpid()}-{n_client}")
    return c


def round_trip(c, timeout=ROUTE_TIMEOUT):
    topic = f"rt/{c.client_id}"
    c.subscribe([(topic, 1)], pid=1)
    c.publish(topic, b"rt", qos=1, pid=2)
    p = c.recv_publish(timeout=timeout)
    assert p.topic == topic, f"round trip got {p!r}"


def ready():
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{sup}/stat", "rb") as f:
                gone = f.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X")
        except OSError:
            gone = True
        if gone:
            sys.exit(f"iotd (pid {sup}) exited during start-up")
        try:
            c = connect(timeout=1)
            round_trip(c, timeout=1)
            c.disconnect()
            if len(children()) == 2 + workers:
                return
        except (OSError, AssertionError):
            pass
        time.sleep(0.02)
    sys.exit(f"iotd on port {port} not ready within 10 s (children: {children()})")


class Traffic(threading.Thread):
    """Light load: a QoS 1 publisher and a subscriber, ~200 msg/s; each one
    reconnects when its worker dies."""

    def __init__(self):
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.sent = self.received = 0

    def sub_loop(self):
        s = None
        while not self.stop.is_set():
            try:
                if s is None:
                    s = connect(timeout=2)
                    s.subscribe([("load/#", 1)], pid=1)
                s.recv_publish(timeout=0.2)
                self.received += 1
            except m.Timeout:
                pass
            except (OSError, AssertionError):
                if s:
                    s.close()
                s = None
                time.sleep(0.005)
        if s:
            s.close()

    def run(self):
        threading.Thread(target=self.sub_loop, daemon=True).start()
        p, i = None, 0
        while not self.stop.is_set():
            try:
                if p is None:
                    p = connect(timeout=2)
                i += 1
                p.publish("load/x", b"%d" % i, qos=1, pid=i % 65535 + 1)
                self.sent += 1
            except (OSError, AssertionError):
                if p:
                    p.close()
                p = None
            time.sleep(0.005)
        if p:
            p.close()


def kill(pid):
    os.kill(pid, signal.SIGKILL)
    return time.monotonic()


def measure(kind, n):
    if kind == "worker":
        role = f"worker {n % workers}"
        old = role_pid(role)
        t0 = kill(old)
        deadline = t0 + ROUTE_TIMEOUT
        while True:       # until a new connection is held by the restarted worker
            c = connect()
            w = server_worker(c)
            if w and w != old and title(w) == f"iotd: {role}":
                break
            c.disconnect(wait_close=0)
            if time.monotonic() > deadline:
                raise AssertionError(f"no connection reached the restarted {role}")
            time.sleep(0.001)
    else:
        old = role_pid(kind)
        t0 = kill(old)
        c = connect()     # the router answers CONNACK; the listener accepts
    round_trip(c)
    ms = (time.monotonic() - t0) * 1000
    c.disconnect(wait_close=0)
    return ms


ready()
traffic = Traffic()
traffic.start()
time.sleep(0.1)
n = int(os.environ.get("ROUND", "0"))
try:
    for kind in plan:
        before = traffic.received
        deadline = time.monotonic() + 5
        while traffic.received < before + 5 and time.monotonic() < deadline:
            time.sleep(0.005)     # traffic flows before each kill
        print(f"{kind} {measure(kind, n):.2f}", flush=True)
finally:
    traffic.stop.set()
    traffic.join(2)
print(f"traffic {traffic.sent} {traffic.received}", flush=True)
EOF

RESULTS=$WORK/results
: > "$RESULTS"
failed=0

log "$KILLS rounds: a fresh iotd (-w $WORKERS) per round, worker, router and listener killed once each"
for ((r = 0; r < KILLS; r++)); do
	start_daemon "round$r"
	if ! ROUND=$r measure "$RESULTS" "$WORK/round$r.err" worker,router,listener; then
		log "round $r failed:"
		sed 's/^/    /' "$WORK/round$r.err" >&2
		tail -n 20 "$WORK/round$r.log" | sed 's/^/    iotd: /' >&2
		failed=1
	fi
	stop_daemon
	((failed)) && break
done

LOOPS=$WORK/loops
: > "$LOOPS"
if ((LOOP > 0 && !failed)); then
	log "crash loop: one iotd, each role killed $LOOP times, each time as soon as it routes again"
	start_daemon loop
	for kind in worker router listener; do
		plan=$(printf "$kind,%.0s" $(seq "$LOOP")); plan=${plan%,}
		if ! ROUND=0 measure "$LOOPS" "$WORK/loop-$kind.err" "$plan"; then
			log "crash loop of the $kind failed:"
			sed 's/^/    /' "$WORK/loop-$kind.err" >&2
			failed=1
			break
		fi
	done
	stop_daemon
fi

"$PYTHON" - "$RESULTS" "$LOOPS" "$KILLS" "$WORKERS" "$TARGET" "$failed" "$NO_FAIL" <<'EOF'
import statistics, sys
results, loops, kills, workers, target, failed, no_fail = sys.argv[1:]
target = float(target)
by, loop, traffic = {}, {}, [0, 0]
for line in open(results):
    k, *v = line.split()
    if k == "traffic":
        traffic[0] += int(v[0]); traffic[1] += int(v[1])
    else:
        by.setdefault(k, []).append(float(v[0]))
for line in open(loops):
    k, *v = line.split()
    if k != "traffic":
        loop.setdefault(k, []).append(float(v[0]))
print(f"\niotd recovery after kill -9: time from the kill until routing works again "
      f"(ms), {workers} workers, light traffic: {traffic[0]} QoS 1 messages published, "
      f"{traffic[1]} received by a clean-session subscriber that reconnects when its worker "
      f"dies\n")
print(f"| role | kills | min | median | max | target |")
print(f"|---|---:|---:|---:|---:|---|")
missed = []
for role, what in (("worker", "a new client on the restarted worker: round trip"),
                   ("router", "a new client: CONNACK, SUBACK, round trip"),
                   ("listener", "a new connection: CONNACK, round trip")):
    v = by.get(role, [])
    if not v:
        print(f"| {role} | 0 | - | - | - | |")
        continue
    med = statistics.median(v)
    tgt = f"< {target:.0f}" if role != "listener" else "-"
    if role != "listener" and med >= target:
        missed.append(f"{role} median {med:.1f} ms")
    print(f"| {role} | {len(v)} | {min(v):.1f} | {med:.1f} | {max(v):.1f} | {tgt} |")
if loop:
    print("\ncrash loop (one daemon; each kill as soon as the role routes again; the "
          "supervisor backs off 10 ms after a crash, x4, up to 5 s):\n")
    for role, v in loop.items():
        print(f"  {role:8} " + "  ".join(f"{x:.0f}" for x in v) + " ms")
print()
if failed == "1":
    print("recovery: FAILED (see the messages above)")
    sys.exit(1)
if missed:
    print("recovery: target missed: " + ", ".join(missed))
    sys.exit(0 if no_fail == "1" else 1)
print("recovery: ok")
EOF
