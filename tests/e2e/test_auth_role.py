"""The auth role as a process: killed, it is restarted without
disconnecting anyone, and a CONNECT it held is answered by its successor;
repeated failures from one address are slowed down; a reload starts or
stops it; an ACL file alone runs it."""

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import mqttraw
import authfiles
from authfiles import auth_dir, refusals  # noqa: F401
from helpers import T, raw, wait_for

pytestmark = pytest.mark.iotd_only

USERS = {"alice": "alice-pw"}


def file_broker(start_broker, auth_dir, **auth):
    path = auth_dir.mosquitto_passwd("passwd", USERS)
    return authfiles.file_broker(start_broker, path, "alice", USERS["alice"], **auth)


def connack(broker, user, password, source=None):
    with raw(broker, tag="role", source=source, expect_rc=None, username=user,
             password=password) as c:
        return c.connack.rc


def timed_connack(broker, user, password, source=None):
    t0 = time.monotonic()
    rc = connack(broker, user, password, source)
    return rc, time.monotonic() - t0


def test_auth_role_killed(start_broker, auth_dir):
    """SIGKILL of the auth role: connected clients stay, a CONNECT waiting
    for a verdict at the kill is answered by the successor, new CONNECTs work."""
    b = file_broker(start_broker, auth_dir)
    sub = raw(b, tag="stay", username="alice", password=USERS["alice"])
    sub.subscribe([("role/#", 1)])
    # Two failures: the next verdict from this address is held for 200 ms or more,
    # so the kill below finds it in the auth role (or still in the channel).
    assert connack(b, "alice", "wrong") == 4
    assert connack(b, "alice", "wrong") == 4
    pending = raw(b, tag="pending", connect=False)
    pending.send(mqttraw.connect("pending-1", username="alice", password=USERS["alice"]))
    old = b.role_pid("auth")
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: b.successor("auth", old), 10, "the auth role's successor")
    ack = pending.expect(mqttraw.CONNACK)
    assert ack.rc == 0
    pending.close()
    assert connack(b, "alice", USERS["alice"]) == 0
    with raw(b, tag="pub", username="alice", password=USERS["alice"]) as p:
        p.publish("role/t", b"after", qos=1, pid=1)
    assert [m.payload for m in sub.recv_publishes(1, timeout=T(5))] == [b"after"]
    sub.close()
    assert "auth killed by signal 9" in b.log
    b.initial_pids = set(b.pids())


def test_failures_are_slowed_down(start_broker, auth_dir):
    """Each failure from an address doubles the wait before its next
    verdict (100 ms after the first): the fifth attempt waits 800 ms or more."""
    b = file_broker(start_broker, auth_dir)
    for _ in range(4):
        assert connack(b, "alice", "wrong") == 4
    rc, took = timed_connack(b, "alice", "wrong")
    assert rc == 4
    assert took >= 0.8, f"the fifth failure was answered after {took:.3f} s"
    # A success is slowed down too, and forgets the address's failures.
    rc, took = timed_connack(b, "alice", USERS["alice"])
    assert rc == 0 and took >= 1.6, f"the success was answered after {took:.3f} s"
    assert len(refusals(b)) == 5


def test_no_slow_down_when_disabled(start_broker, auth_dir):
    """max_failure_delay_ms = 0: after a failure the next five failures and
    a success are answered at once (slowed down, they would take 6.3 s)."""
    b = file_broker(start_broker, auth_dir, max_failure_delay_ms=0)
    assert connack(b, "alice", "wrong") == 4
    t0 = time.monotonic()
    for _ in range(5):
        assert connack(b, "alice", "wrong") == 4
    assert connack(b, "alice", USERS["alice"]) == 0
    took = time.monotonic() - t0
    assert took < 1.0, f"six answers took {took:.3f} s"


def test_acl_file_alone_runs_the_auth_role(start_broker, auth_dir):
    """backend "none" with an ACL file: the auth role holds the file, user
    names are taken as given, loopback clients are served."""
    acl = auth_dir.file("acl", "user alice\ntopic readwrite a/#\n")
    b = start_broker(auth={"acl_file": acl})
    assert b.role_pid("auth") is not None
    assert connack(b, "whoever", None) == 0
    with raw(b, tag="anon") as c:
        assert c.connack.rc == 0


def test_reload_starts_and_stops_the_auth_role(start_broker, auth_dir):
    path = auth_dir.mosquitto_passwd("passwd", USERS)
    b = start_broker()
    assert b.role_pid("auth") is None
    b.reload(auth={"backend": "file", "password_file": path})
    wait_for(lambda: b.role_pid("auth"), 10, "the auth role")
    assert wait_for(lambda: connack(b, "alice", USERS["alice"]) == 0, 10, "alice accepted")
    with raw(b, tag="anon", expect_rc=None) as c:
        assert c.connack.rc == 5
    assert "authentication: backend file, anonymous clients refused" in b.log
    b.reload(auth={})
    wait_for(lambda: b.role_pid("auth") is None, 10, "the auth role to stop")
    with raw(b, tag="anon2") as c:
        assert c.connack.rc == 0
    assert "auth stopped: the configuration no longer asks for it" in b.log
    b.initial_pids = set(b.pids())


def closed_while_held(b):
    return b.log.count("closed before CONNECT")


def test_closed_connections_free_their_place_at_once(start_broker, auth_dir):
    """auth.max_pending = 2, one worker. Rounds of two clients whose
    CONNECTs wait for the auth role (their address failed: the answers are
    slowed down by seconds), the worker full with them (a third gets
    CONNACK 3), then closed: each cancels its request, which stops counting
    in the auth role at once. A valid client from another address after
    them is accepted, not refused (CONNACK 3). (Without the cancel, the
    auth role would hold two requests until the first answers, seconds
    later: the second round would already be refused by it.)"""
    path = auth_dir.mosquitto_passwd("passwd", USERS)
    b = start_broker(workers=1, probe_auth=("alice", USERS["alice"]),
                     auth={"backend": "file", "password_file": path, "max_pending": 2,
                           "max_failure_delay_ms": 10000})
    for _ in range(5):
        assert connack(b, "alice", "wrong") == 4      # the next answer waits 1.6 s
    for r in range(4):
        held = [raw(b, tag="gone", connect=False) for _ in range(2)]
        for i, c in enumerate(held):
            c.send(mqttraw.connect(f"gone-{r}-{i}", username="alice", password="wrong"))
        # The worker holds both (so their requests went to the auth role).
        assert wait_for(lambda: connack(b, "alice", "wrong") == 3, T(5),
                        "the worker to hold both CONNECTs")
        before = closed_while_held(b)
        for c in held:
            c.close()
        wait_for(lambda: closed_while_held(b) >= before + 2, T(5),
                 "the worker to see both close")
    assert connack(b, "alice", USERS["alice"], source="127.0.0.2") == 0
    # The verdicts still due for the closed ones find nobody, and nothing breaks.
    assert connack(b, "alice", USERS["alice"], source="127.0.0.3") == 0


def test_parallel_failures_wait_their_turn(start_broker, auth_dir):
    """An address that failed gets one answer at a time, each after its own
    delay (100, 200, 400, 800 ms), however many connections it opens at
    once; a right password from another address meanwhile is not held up
    by them."""
    b = file_broker(start_broker, auth_dir, max_failure_delay_ms=800)
    assert connack(b, "alice", "wrong") == 4
    clients = [raw(b, tag="par", connect=False) for _ in range(4)]
    t0 = time.monotonic()
    for i, c in enumerate(clients):
        c.send(mqttraw.connect(f"par-{i}", username="alice", password="wrong"))

    def answered(c):
        rc = c.expect(mqttraw.CONNACK, timeout=T(10)).rc
        return time.monotonic() - t0, rc

    with ThreadPoolExecutor(len(clients)) as pool:
        waits = pool.map(answered, clients)
        rc, took = timed_connack(b, "alice", USERS["alice"], source="127.0.0.2")
        assert rc == 0 and took < 0.4, f"the other address waited {took:.3f} s"
        results = sorted(waits)
    for c in clients:
        c.close()
    assert [rc for _, rc in results] == [4] * 4
    due = 0.0
    for (at, _), delay in zip(results, (0.1, 0.2, 0.4, 0.8)):
        due += delay
        assert at >= due, f"answers at {[round(t, 3) for t, _ in results]} s"


def test_max_pending_bounds_the_connects_a_worker_holds(start_broker, auth_dir):
    """With auth.max_pending = 1, a second CONNECT while one waits for its
    (slowed-down) verdict gets CONNACK 3 at once, logged once."""
    path = auth_dir.mosquitto_passwd("passwd", USERS)
    b = start_broker(workers=1, probe_auth=("alice", USERS["alice"]),
                     auth={"backend": "file", "password_file": path, "max_pending": 1})
    for _ in range(4):
        assert connack(b, "alice", "wrong") == 4      # the next answer waits 800 ms
    first = raw(b, tag="first", connect=False)
    first.send(mqttraw.connect("first-1", username="alice", password=USERS["alice"]))
    second = raw(b, tag="second", connect=False)
    second.send(mqttraw.connect("second-1", username="alice", password=USERS["alice"]))
    codes = sorted([first.expect(mqttraw.CONNACK).rc, second.expect(mqttraw.CONNACK).rc])
    first.close()
    second.close()
    assert codes == [0, 3]
    assert b.log.count("(auth.max_pending); answering CONNACK 3 until they drain") == 1


def test_reload_without_a_backend_decides_what_waited(start_broker, auth_dir):
    """A CONNECT waiting for the auth role when a reload stops it is decided
    by the worker, by the loopback rule (user names as given): a wrong
    password the auth role would have refused gets CONNACK 0."""
    b = file_broker(start_broker, auth_dir)
    for _ in range(5):
        assert connack(b, "alice", "wrong") == 4      # the next answer waits 1.6 s
    waiting = raw(b, tag="waiting", connect=False)
    waiting.send(mqttraw.connect("waiting-1", username="alice", password="wrong"))
    b.reload(auth={})
    assert waiting.expect(mqttraw.CONNACK).rc == 0
    waiting.close()
    wait_for(lambda: b.role_pid("auth") is None, 10, "the auth role to stop")
    b.initial_pids = set(b.pids())
