"""A compromised worker: tests/hostile/hostile.c takes worker 0's place
against the running daemon (it stops the worker and writes, through
/proc/PID/mem, exactly what code in that worker could write: its own
shared-memory region) and plays one case, after which worker 0 dies.
Each case then asserts that only worker 0 noticed:

* the supervisor, the router, the listener and worker 1 are the same
  processes (same pids);
* clients on worker 1 missed nothing and got nothing foreign: the QoS 1
  and 2 messages a worker-1 client published just before the case reach
  a clean and a persistent subscriber on worker 1 exactly once, then a
  QoS 0, 1 and 2 message published after the case, and nothing else (no
  forged message, no will of a worker-1 client, whose connection stays);
* worker 0 was restarted (a new pid) and its successor serves: a new
  client lands there and publishes and subscribes across both workers;
* for the cases that break a ring, the log names the faulty worker once
  (the router's "worker 0 ...: no longer reading its ring" and the
  supervisor's kill line, once each);
* the successor runs as the configured user with NoNewPrivs 1 and, unless
  the daemon is a sanitizer build (no seccomp there, see privsep.c),
  Seccomp 2 (/proc/PID/status);
* the router's memory stays bounded over all the cases (Pss, checked
  last; not under an instrumented daemon).

The cases share one daemon; those that find a fault in the daemon run on
their own (and are marked xfail with the reason). The tool needs root:
/proc/PID/mem of a worker that dropped to another user, and gdb for the
readonly case. Run: make e2e PYTEST_ARGS="-k hostile_worker"."""

import os
import re
import subprocess
from pathlib import Path

import pytest

import mqttraw as m
from conftest import Broker
from helpers import T, proc_title, pss_kb, raw, raw_on, uid, wait_for

REPO = Path(__file__).resolve().parents[2]
HOSTILE = os.environ.get("IOTD_HOSTILE", str(REPO / "build" / "tests" / "hostile"))

pytestmark = [
    pytest.mark.iotd_only,
    pytest.mark.skipif(os.geteuid() != 0, reason="the hostile worker needs root "
                       "(/proc/PID/mem of a worker running as another user)"),
    pytest.mark.skipif(not os.access(HOSTILE, os.X_OK),
                       reason=f"{HOSTILE} not built (make {HOSTILE})"),
]

FAULT_LINE = re.compile(r"router: worker 0 [^\n]*: no longer reading its ring")
KILL_LINE = "worker 0 broke its shared memory: killing it"
PRE = 3                      # QoS 1 and QoS 2 messages each published before the case


def worker_pid(broker, index):
    for p in broker.worker_pids():
        if proc_title(p) == f"iotd: worker {index}":
            return p
    return None


def status_fields(pid):
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


class Scene:
    """Clients around one case: a victim on worker 0, and on worker 1 a
    clean and a persistent subscriber, a client with a will, and a
    publisher."""

    def __init__(self, broker):
        self.broker = broker
        self.spare = []
        self.w0, self.w1 = worker_pid(broker, 0), worker_pid(broker, 1)
        self.others = {r: broker.role_pid(r) for r in ("router", "listener")}
        self.others["supervisor"] = broker.proc.pid
        self.others["worker 1"] = self.w1
        self.victim = self.client_on(self.w0, "victim")
        self.victim.subscribe([("v/#", 1)])
        self.sub = self.client_on(self.w1, "by-clean")
        self.sub.subscribe([("by/#", 2), ("forged/#", 2), ("will/#", 2)])
        self.psub_id = uid("by-pers")
        self.psub = self.client_on(self.w1, "by-pers", cid=self.psub_id, clean=False)
        self.psub.subscribe([("by/#", 2)])
        self.willer = self.client_on(self.w1, "willer", will=("will/w1", b"gone", 1, False))
        self.pub = self.client_on(self.w1, "pub")
        self.log_at = len(broker.log)

    def client_on(self, want, tag, cid=None, **kw):
        """A connected RawClient held by worker pid `want`, those that land
        elsewhere kept in the scene's spares (raw_on; the spares on worker 0
        die with it: no will of theirs)."""
        return raw_on(self.broker, want, cid, tag=tag, tries=12, spare=self.spare, **kw)

    def publish_before(self):
        """QoS 1 and 2 messages from worker 1, not yet seen by anyone."""
        self.pre = []
        for i in range(PRE):
            for q in (1, 2):
                payload = f"pre-{q}-{i}".encode()
                self.pub.publish("by/pre", payload, qos=q, pid=len(self.pre) + 1)
                self.pre.append(payload)

    def run_tool(self, case, variant, expect_rc=0):
        cmd = [HOSTILE, case, variant, str(self.w0)]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=T(60))
        print(out.stdout, out.stderr)
        assert out.returncode == expect_rc, \
            f"{' '.join(cmd)} exited {out.returncode}:\n{out.stdout}{out.stderr}"
        return out.stdout

    # --- what must hold after the case

    def assert_others_kept(self):
        now = {r: self.broker.role_pid(r) for r in ("router", "listener")}
        now["supervisor"] = self.broker.proc.pid if self.broker.proc.poll() is None else None
        now["worker 1"] = worker_pid(self.broker, 1)
        assert now == self.others, f"processes other than worker 0 changed: {self.others} -> {now}"

    def wait_successor(self):
        def serving():
            p = worker_pid(self.broker, 0)
            return p if p and p != self.w0 else None
        self.new_w0 = wait_for(serving, 10, "worker 0 to be restarted")
        return self.new_w0

    def assert_worker1_clients(self):
        """Exactly the messages published before and after, once each: a
        probe on forged/ reaches only the subscriber that asked for it (a
        forged SUBSCRIBE would add the other), the rest reaches both (a
        forged UNSUBSCRIBE or CLOSE would lose them)."""
        post = [f"post-{q}".encode() for q in (0, 1, 2)]
        self.pub.publish("forged/probe", b"probe", qos=1, pid=99)
        for q, payload in enumerate(post):
            self.pub.publish("by/post", payload, qos=q, pid=100 + q if q else None)
        for c, extra in ((self.sub, [b"probe"]), (self.psub, [])):
            want = len(self.pre) + len(extra) + len(post)
            got = [p.payload for p in c.recv_publishes(want, timeout=T(10))]
            pre, rest = got[:len(self.pre)], got[len(self.pre):]
            assert sorted(pre) == sorted(self.pre) and rest == extra + post, \
                (f"{c.client_id} on worker 1 received {got!r}, expected {self.pre!r} then "
                 f"{extra + post!r}: a message lost, duplicated or forged")
            c.expect_no_packet(0.3)
        assert self.willer.is_open(0.1), "a worker-1 client lost its connection"

    def assert_successor_serves(self):
        fresh = self.client_on(self.new_w0, "succ")
        fresh.subscribe([("s/#", 1)])
        self.pub.publish("s/from1", b"to-w0", qos=1, pid=200)
        got = fresh.recv_publish(T(5))
        assert (got.topic, got.payload) == ("s/from1", b"to-w0"), f"successor delivered {got!r}"
        self.sub.subscribe([("s/#", 1)], pid=300)
        fresh.publish("s/from0", b"to-w1", qos=1, pid=1)
        for c in (self.sub, fresh):
            got = c.recv_publish(T(5))
            assert (got.topic, got.payload) == ("s/from0", b"to-w1"), \
                f"{c.client_id} got {got!r} from the successor's client"
        fresh.disconnect()

    def assert_fault_logged_once(self, faulty):
        log = self.broker.log[self.log_at:]
        faults = FAULT_LINE.findall(log)
        kills = log.count(KILL_LINE)
        if faulty is None:       # either way, but never twice
            assert len(faults) <= 1 and kills <= 1, \
                f"the fault named more than once: {faults!r}, {kills} kill line(s)"
        elif faulty:
            assert len(faults) == 1 and kills == 1, \
                f"expected the fault named once, got {faults!r} and {kills} kill line(s)"
        else:
            assert not faults and not kills, f"worker 0 reported faulty: {faults!r}"

    def assert_confined(self, pid):
        run_as = re.search(r"children run as \S+ \(uid (\d+), gid (\d+)\)", self.broker.log)
        assert run_as, "the supervisor did not log whom the children run as"
        st = status_fields(pid)
        assert st["Uid"].split()[0] == run_as.group(1) and st["Gid"].split()[0] == run_as.group(2), \
            f"worker 0's successor runs as {st['Uid']} / {st['Gid']}"
        assert st["NoNewPrivs"].strip() == "1", f"successor NoNewPrivs {st['NoNewPrivs']}"
        if not self.broker.instrumented:
            assert st["Seccomp"].strip() == "2", f"successor Seccomp {st['Seccomp']}"

    def finish(self, faulty):
        """Every promise of the module docstring, in order."""
        self.assert_others_kept()
        self.wait_successor()
        self.assert_worker1_clients()
        self.assert_successor_serves()
        self.assert_fault_logged_once(faulty)
        self.assert_confined(self.new_w0)
        self.assert_others_kept()

    def close(self):
        """DISCONNECT everyone (no will published after the scene), and end
        the persistent session with a clean connection."""
        for c in [self.victim, self.sub, self.willer, self.pub, self.psub] + self.spare:
            c.disconnect(wait_close=T(2))
        c = raw(self.broker, self.psub_id, clean=True)
        c.disconnect()


def play(broker, case, variant, faulty, expect_rc=0):
    """One case on worker 0 with a fresh Scene; returns the tool's output."""
    scene = Scene(broker)
    try:
        scene.publish_before()
        out = scene.run_tool(case, variant, expect_rc)
        scene.finish(faulty)
        return out
    finally:
        scene.close()
        # Worker 0's restart was the case's doing; anything else still fails the teardown.
        broker.initial_pids = set(broker.pids()) - {scene.w0} | set(scene.others.values())


# ------------------------------------------------------------ one daemon for the cases

@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    broker = Broker(tmp_path_factory.mktemp("hostile-worker"), "broker", workers=2)
    try:
        # A first round through every role before the router's memory is marked.
        Scene(broker).close()
        broker.router_mark = broker.memory_mark([broker.role_pid("router")])
        yield broker
        broker.teardown()
    finally:
        if broker.proc.poll() is None:
            broker._kill_all(broker.pids())


RING_CASES = [
    ("ring-head", "misaligned"), ("ring-head", "backwards"), ("ring-head", "beyond"),
    ("record-len", "huge"), ("record-len", "over-max"), ("record-len", "pad"),
    ("tail", "backwards"), ("tail", "beyond"), ("tail", "misaligned"),
]


@pytest.mark.parametrize("case,variant", RING_CASES)
def test_impossible_ring_kills_only_that_worker(daemon, case, variant):
    out = play(daemon, case, variant, faulty=True)
    assert "ok: killed by the daemon" in out


def test_race_on_ring_data_and_head(daemon):
    """A thread rewrites the ring's data, another its head, for about a
    second while the router reads: the router copies each record once and
    finds the ring impossible sooner or later, never reads out of bounds."""
    out = play(daemon, "race", "random", faulty=None)
    assert "writes to the w2r data and head" in out


def test_forged_records_are_dropped(daemon):
    """Well-formed records about worker 1's connections (CLOSE with will,
    SUBSCRIBE, UNSUBSCRIBE, MSG_STATE, QOS2_IN, SESSION_MSG), about its own
    predecessors' connections, CONNECTs in slots past its capacity,
    router-only record types (CONNACK, that is the old WORKER_DOWN number,
    SUBACK, UNSUBACK, DELIVER, KICK, ROUTE) and unknown types: all read,
    each dropped (logged once per type), nothing applied, and the ring is
    still read."""
    out = play(daemon, "forge", "conns", faulty=False)
    assert "all read by the router" in out and "FAILED" not in out
    log = daemon.log
    for name in ("CLOSE", "SUBSCRIBE", "UNSUBSCRIBE", "MSG_STATE", "QOS2_IN", "SESSION_MSG",
                 "CONNECT", "CONNACK", "SUBACK", "UNSUBACK", "DELIVER", "KICK", "ROUTE"):
        assert f"malformed or unexpected record {name} " in log, f"no {name} dropped"


def test_readonly_regions_stay_readonly(daemon):
    """Every read-only mapping refuses writes through /proc/PID/mem; the
    worker itself (made to call mprotect by gdb) cannot make one writable
    (EACCES); it maps exactly its own region writable, the ring from the
    router, sup and router, and nothing of the other worker, the listener
    or the journal."""
    out = play(daemon, "readonly", "writes", faulty=False)
    assert "errno 13" in out or "gdb could not" in out
    assert out.count("refused: ") == 3


def test_router_memory_bounded_across_cases(daemon):
    """Last of the module: the router's Pss is back near the mark taken
    before the first case (rings aside; not under an instrumented daemon)."""
    daemon.router_mark.assert_back(timeout=10, what="the router's memory after the cases")
    print(f"router Pss {daemon.router_mark.kb} -> {pss_kb(daemon.role_pid('router'), False)} kB")


# ------------------------------------------------------------ faults found in the daemon

def test_forged_session_message_reaches_no_other_session(start_broker):
    """SESSION_MSG records naming every session id with connection ids
    worker 0 may hold: a session takes one only from its own connection
    (the current or last one, or the one a takeover replaced), so no
    session of worker 1, online or offline, gets the forged message."""
    broker = start_broker(workers=2)
    play(broker, "forge", "session", faulty=False)


def test_garbage_counters_keep_max_connections(start_broker, clients):
    """Garbage counters left by a dead worker are not its successor's: each
    process counts from 0 and the listener from when it saw the epoch, so
    max_connections still holds afterwards."""
    limit = 16
    broker = start_broker(workers=2, max_connections=limit)
    play(broker, "counters", "garbage", faulty=False)
    held = []
    for _ in range(limit + 4):
        c = clients.raw(broker, connect=False)
        held.append(c)
        try:
            c.connect(uid("fill"))
        except m.MQTTError:
            break
    accepted = sum(1 for c in held if c.is_open(0.05))
    assert accepted <= limit, f"{accepted} connections held at once, max_connections {limit}"


def test_garbage_left_for_the_successor_does_not_reach_it(start_broker):
    """A worker that leaves garbage in its counters and flags and breaks
    both ring positions before dying: the router opens the ring again only
    once the supervisor says the successor is READY (nothing in the dead
    worker's region can say so), the successor repairs and publishes the
    r2w tail before that, and is found faulty by nobody."""
    broker = start_broker(workers=2)
    play(broker, "counters", "inherit", faulty=True)
