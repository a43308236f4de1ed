"""Limits that bound the whole daemon: the retained byte budget and the
memory ceiling (memory_limit)."""

import time

import pytest

import mqttraw as m
from conftest import IOTD_WRAPPER
from helpers import T, raw, uid, wait_for

pytestmark = pytest.mark.iotd_only


@pytest.mark.broker_config(retained_bytes_limit=1000)
def test_retained_bytes_limit_stores_no_more_than_the_budget(broker, clients):
    pub = clients.raw(broker, uid("rbpub"))
    # 5 topics of about 310 bytes (topic + payload): only 3 fit in 1000.
    for i in range(5):
        pub.publish(f"rb/{i}", bytes(300), qos=1, retain=True, pid=i + 1)
    sub = raw(broker, uid("rbsub"))
    sub.subscribe([("rb/#", 0)])
    got = []
    while True:
        try:
            p = sub.recv_publish(timeout=T(1))
        except AssertionError:
            break
        got.append(p.topic)
    assert got == ["rb/0", "rb/1", "rb/2"], f"retained topics delivered: {got}"
    assert "retained" in broker.log.lower(), "no log line about the retained budget"
    sub.close()


def refused(port):
    """True when a new connection is closed without a CONNACK."""
    with raw(port, connect=False, timeout=T(2)) as c:
        c.send(m.connect(uid("probe-mem")))
        try:
            c.expect_closed(T(1))
            return True
        except AssertionError:
            return False


@pytest.mark.skipif(bool(IOTD_WRAPPER), reason="valgrind alone takes the daemon past "
                    "the 32 MiB ceiling this test sets")
@pytest.mark.broker_config(memory_limit=32 << 20, max_inflight=160, max_inflight_bytes=64 << 20)
def test_memory_limit_refuses_connections_and_pauses_reads_until_memory_is_back(broker, clients):
    # A QoS 1 subscriber that never reads makes the daemon hold every
    # message in flight to it: 160 x 256 KiB is past the 32 MiB ceiling
    # (which leaves room for the rings' pages, resident once used).
    hog = clients.raw(broker, uid("memhog"), rcvbuf=4096)
    hog.subscribe([("mem/big", 1)])
    pub = clients.raw(broker, uid("mempub"))
    sub = clients.raw(broker, uid("memsub"))
    sub.subscribe([("mem/small", 0)])
    for i in range(160):
        pub.publish("mem/big", bytes(256 << 10), qos=1, pid=i + 1)
    wait_for(lambda: "memory_limit reached" in broker.log, T(6),
             "the supervisor to log that memory_limit was reached")
    wait_for(lambda: refused(broker.port), T(3), "a new connection refused over memory_limit")
    pub.send(m.publish("mem/small", b"held back", qos=0))
    sub.expect_no_packet(0.5)
    if broker.instrumented:
        # A sanitizer's allocator keeps freed memory in quarantine: PSS
        # does not fall, so the way back is checked on plain builds only.
        return
    # The hog goes: its messages are freed, memory falls, service resumes.
    hog.close()
    wait_for(lambda: "accepting and reading again" in broker.log, T(10),
             "the supervisor to log that memory is back under the ceiling")
    assert sub.recv_publish(timeout=T(3)).payload == b"held back"
    wait_for(lambda: not refused(broker.port), T(3), "new connections accepted again")


@pytest.mark.broker_config(memory_limit=1 << 30)
def test_memory_limit_far_away_changes_nothing(broker, clients):
    sub = clients.raw(broker, uid("memsub2"))
    pub = clients.raw(broker, uid("mempub2"))
    sub.subscribe([("mem2/t", 0)])
    time.sleep(1.2)  # past one measurement, to prove nothing is refused
    assert not refused(broker.port)
    pub.publish("mem2/t", b"flows", qos=0)
    assert sub.recv_publish().payload == b"flows"
