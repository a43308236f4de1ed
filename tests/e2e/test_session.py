"""Sessions: clean and persistent sessions, offline queueing and its bound,
redelivery of unacknowledged messages, PUBREL resend, takeover."""

import time

import pytest

import mqttraw as m
from helpers import T, offline_session, raw, raw_on, resumed, uid


def drain(c, quiet=0.5, limit=10.0):
    """Every PUBLISH until none arrives for `quiet` seconds (acked)."""
    out = []
    deadline = time.monotonic() + T(limit)
    while time.monotonic() < deadline:
        try:
            out.append(c.recv_publish(timeout=quiet))
        except m.Timeout:
            return out
    raise AssertionError(f"messages still arriving after {T(limit):.0f} s: {len(out)} so far")


def test_clean_session_1_drops_subscriptions_after_disconnect(broker, clients):
    cid = uid("clean1")
    pub = clients.raw(broker, uid("c1pub"))
    c = raw(broker, cid, clean=True)
    c.subscribe([("cs/t", 1)])
    c.disconnect()
    c = raw(broker, cid, clean=False)
    assert c.connack.session_present is False, "a clean-session session must not survive"
    pub.publish("cs/t", b"after", qos=1, pid=1)
    c.expect_no_packet(0.5)
    c.close()


def test_persistent_session_keeps_subscriptions_with_session_present(broker, clients):
    cid = uid("pers")
    pub = clients.raw(broker, uid("perspub"))
    c = raw(broker, cid, clean=False)
    assert c.connack.session_present is False, "no session existed yet"
    c.subscribe([("ps/t", 1)])
    c.disconnect()
    c = resumed(broker, cid, "CONNACK session present must be 1")
    broker.assert_different_workers(c, pub)
    pub.publish("ps/t", b"still-subscribed", qos=1, pid=1)
    p = c.recv_publish()
    assert (p.topic, p.payload, p.qos) == ("ps/t", b"still-subscribed", 1)
    c.disconnect()


def test_qos1_and_qos2_published_while_offline_delivered_after_reconnect(broker, clients):
    cid = uid("offl")
    offline_session(broker, cid, [("off/#", 2)])
    pub = clients.raw(broker, uid("offpub"))
    for i in range(3):
        pub.publish("off/q1", f"q1-{i}".encode(), qos=1, pid=10 + i)
        pub.publish("off/q2", f"q2-{i}".encode(), qos=2, pid=20 + i)
        pub.publish("off/q0", f"q0-{i}".encode(), qos=0)
    c = resumed(broker, cid)
    got = [p for p in drain(c) if p.topic != "off/q0"]   # QoS 0: either way
    q1 = [(p.payload.decode(), p.qos) for p in got if p.topic == "off/q1"]
    q2 = [(p.payload.decode(), p.qos) for p in got if p.topic == "off/q2"]
    assert q1 == [(f"q1-{i}", 1) for i in range(3)], f"QoS 1 while offline: {q1}"
    assert q2 == [(f"q2-{i}", 2) for i in range(3)], f"QoS 2 while offline: {q2}"
    c.disconnect()


@pytest.mark.broker_config(max_queued_messages=5, max_inflight=2)
def test_max_queued_messages_bounds_offline_queue(broker, clients):
    cid = uid("bound")
    offline_session(broker, cid, [("bq/t", 1)])
    pub = clients.raw(broker, uid("bqpub"))
    for i in range(30):
        pub.publish("bq/t", str(i).encode(), qos=1, pid=i + 1)
    c = resumed(broker, cid)
    got = [int(p.payload) for p in drain(c)]
    assert 5 <= len(got) <= 5 + 2, \
        f"{len(got)} queued messages delivered; max_queued_messages=5 (+2 in flight)"
    assert got == sorted(got), f"queued messages out of order: {got}"
    # The session is usable afterwards.
    pub.publish("bq/t", b"live", qos=1, pid=99)
    assert c.recv_publish().payload == b"live"
    c.disconnect()


@pytest.mark.iotd_only
@pytest.mark.broker_config(max_queued_messages=4, queue_qos0_messages=True)
def test_full_offline_queue_drops_qos0_first(broker, clients):
    """queue_qos0_messages: QoS 0 is queued for an offline persistent
    session too; a full queue drops its oldest QoS 0 messages first (logged
    once), then new messages."""
    cid = uid("q0first")
    offline_session(broker, cid, [("q0/t", 1)])
    pub = clients.raw(broker, uid("q0pub"))
    plan = [(b"a", 0), (b"b", 1), (b"c", 0), (b"d", 1), (b"e", 0),
            (b"f", 1), (b"g", 1), (b"h", 1)]
    sync = f"q0sync/{uid('s')}"
    pub.subscribe([(sync, 0)])
    for i, (payload, qos) in enumerate(plan):
        pub.publish("q0/t", payload, qos=qos, pid=i + 1)
    # A topic new to its worker goes through the router, after the publishes
    # above: once it is back they are all queued (the resume comes through
    # another ring, and must not overtake them).
    pub.publish(sync, b"sync", qos=0)
    assert pub.recv_publish(timeout=T(5)).topic == sync
    # e pushed a out, f pushed c, g pushed e; then no QoS 0 was left: h is dropped.
    c = resumed(broker, cid)
    got = [(p.payload, p.qos) for p in drain(c)]
    assert got == [(b"b", 1), (b"d", 1), (b"f", 1), (b"g", 1)], got
    assert broker.log.count("dropping QoS 0 messages first") == 1, broker.log_tail()
    c.disconnect()


@pytest.mark.iotd_only
@pytest.mark.broker_config(queue_qos0_messages=True)
def test_queued_qos0_is_delivered_once_at_qos0(broker, clients):
    cid = uid("q0once")
    offline_session(broker, cid, [("q0o/t", 2)])
    pub = clients.raw(broker, uid("q0opub"))
    pub.publish("q0o/t", b"zero", qos=0)
    pub.publish("q0o/t", b"one", qos=1, pid=1)
    c = resumed(broker, cid)
    first, second = c.recv_publish(), c.recv_publish()
    assert (first.payload, first.qos) == (b"zero", 0)
    assert (second.payload, second.qos) == (b"one", 1)
    c.disconnect()
    # Delivered: a further resume brings nothing before a fresh message.
    c = resumed(broker, cid)
    pub.publish("q0o/t", b"fresh", qos=1, pid=2)
    assert c.recv_publish().payload == b"fresh"
    c.disconnect()


@pytest.mark.parametrize("how", ["disconnect", "drop"])
def test_unacked_qos1_resent_with_dup_and_same_packet_id_on_reconnect(broker, how, clients):
    cid = uid("resend")
    c = raw(broker, cid, clean=False)
    c.subscribe([("rs/t", 1)])
    pub = clients.raw(broker, uid("rspub"))
    broker.assert_different_workers(c, pub)
    for i in range(3):
        pub.publish("rs/t", f"m{i}".encode(), qos=1, pid=i + 1)
    first = c.recv_publishes(3, ack=False)
    assert not any(p.dup for p in first), f"first delivery with DUP set: {first!r}"
    if how == "disconnect":
        c.disconnect()
    else:
        c.close()
    c = resumed(broker, cid)
    again = c.recv_publishes(3, ack=True)
    assert [(p.pid, p.payload, p.qos) for p in again] == \
        [(p.pid, p.payload, 1) for p in first], f"redelivery differs: {again!r} vs {first!r}"
    assert all(p.dup for p in again), f"redelivered messages must have DUP=1: {again!r}"
    c.expect_no_packet(0.5)
    c.disconnect()
    # Acked now: not sent a third time.
    c = raw(broker, cid, clean=False)
    c.expect_no_packet(0.5)
    c.disconnect()


def test_pubrel_resent_on_reconnect_when_pubcomp_missing(broker, clients):
    cid = uid("pubrel")
    c = raw(broker, cid, clean=False)
    c.subscribe([("rel/t", 2)])
    pub = clients.raw(broker, uid("relpub"))
    broker.assert_different_workers(c, pub)
    pub.publish("rel/t", b"q2", qos=2, pid=3)
    p = c.recv_publish(ack=False)
    assert p.qos == 2
    c.send(m.pubrec(p.pid))
    c.expect(m.PUBREL, pid=p.pid)
    c.close()       # no PUBCOMP
    c = resumed(broker, cid)
    rel = c.recv_packet(T(5), what="PUBREL")
    assert rel.type == m.PUBREL and rel.pid == p.pid, \
        f"expected PUBREL {p.pid} (not the PUBLISH again), got {rel!r}"
    assert rel.flags == 0x02
    c.send(m.pubcomp(p.pid))
    c.expect_no_packet(0.5)
    c.disconnect()


def test_takeover_closes_first_connection_on_other_worker(broker, clients):
    cid = uid("tkother")
    first = clients.raw(broker, cid)
    second = clients.raw(broker, connect=False)
    broker.assert_different_workers(first, second)
    ack = second.connect(cid)
    assert ack.rc == 0
    first.expect_closed(T(5))
    second.subscribe([("tk/t", 1)])
    second.publish("tk/t", b"mine", qos=1, pid=2)
    assert second.recv_publish().payload == b"mine"


def test_takeover_closes_first_connection_on_same_worker(broker, clients):
    cid = uid("tksame")
    first = clients.raw(broker, cid)
    # TCP only, no CONNECT yet; connections landing elsewhere are kept open,
    # which makes the target the least loaded in turn.
    second = clients.own(raw_on(broker, broker.worker_of(first), connect=False, tries=8,
                                spare=clients))
    second.connect(cid)
    first.expect_closed(T(5))
    second.ping()


def test_takeover_with_clean_session_0_keeps_the_session(broker, clients):
    cid = uid("tkpers")
    first = clients.raw(broker, cid, clean=False)
    first.subscribe([("tkp/t", 1)])
    second = resumed(broker, cid)
    first.expect_closed(T(5))
    pub = clients.raw(broker, uid("tkppub"))
    pub.publish("tkp/t", b"to-second", qos=1, pid=1)
    assert second.recv_publish().payload == b"to-second"
    second.disconnect()


def test_session_present_0_with_clean_session_1_on_reconnect(broker, clients):
    cid = uid("sp0")
    offline_session(broker, cid, [("sp/t", 1)])
    c = raw(broker, cid, clean=True)
    assert c.connack.session_present is False, "clean session 1 must get session present 0"
    c.disconnect()
    # The clean-session connection discarded the stored session.
    c = raw(broker, cid, clean=False)
    assert c.connack.session_present is False, "the stored session should have been discarded"
    pub = clients.raw(broker, uid("sp0pub"))
    pub.publish("sp/t", b"x", qos=1, pid=1)
    c.expect_no_packet(0.5)
    c.disconnect()


@pytest.mark.broker_config(session_timeout_secs=1)
def test_persistent_session_expires_after_session_timeout(broker):
    cid = uid("expire")
    offline_session(broker, cid, [("exp/t", 1)])
    c = resumed(broker, cid, "expired too early")
    c.disconnect()
    # A timer-driven behaviour: wait out session_timeout_secs=1 with margin.
    time.sleep(3.5)
    c = raw(broker, cid, clean=False)
    assert c.connack.session_present is False, "session still present 3.5 s after a 1 s timeout"
    with raw(broker, uid("exppub")) as pub:
        pub.publish("exp/t", b"x", qos=1, pid=1)
    c.expect_no_packet(0.5)
    c.disconnect()
