"""Hostile QoS flows: a QoS 2 packet id reused before PUBREL, acknowledgements
for ids that were never sent, packet id 0, and a subscriber that never
acknowledges (bounded by max_inflight and max_queued_messages, in messages
and in worker memory). Each case asserts the exact reaction, and that a
bystander subscribed throughout received every message while no daemon
process died (the `bystander` fixture, conftest.py)."""

import pytest

import mqttraw as m
from helpers import T, closed_without_reply_to, raw


def test_qos2_packet_id_reused_before_pubrel_is_delivered_once(broker, bystander):
    """Until PUBREL, every PUBLISH with the same id is answered with PUBREC
    and not delivered again, whatever its payload or DUP flag
    [MQTT-4.3.3-2]; after PUBREL the id starts a new message. (Whether the
    first copy goes out at PUBLISH or at PUBREL is the server's choice.)"""
    with raw(broker, tag="q2sub") as sub, raw(broker, tag="q2pub") as pub:
        broker.assert_different_workers(sub, pub)
        sub.subscribe([("q2/t", 2)])
        for payload, dup in ((b"one", False), (b"two", False), (b"one", True)):
            pub.send(m.publish("q2/t", payload, qos=2, pid=7, dup=dup))
            pub.expect(m.PUBREC, pid=7)
        pub.send(m.pubrel(7))
        pub.expect(m.PUBCOMP, pid=7)
        assert sub.recv_publish(timeout=T(5)).payload == b"one"
        sub.expect_no_packet(0.5)
        pub.send(m.publish("q2/t", b"three", qos=2, pid=7))
        pub.expect(m.PUBREC, pid=7)
        pub.send(m.pubrel(7))
        pub.expect(m.PUBCOMP, pid=7)
        assert sub.recv_publish(timeout=T(5)).payload == b"three"
        sub.expect_no_packet(0.3)
        pub.expect_no_packet(0.1)
    bystander.check()


def test_pubrel_for_unknown_id_gets_pubcomp(broker, bystander):
    """[MQTT-4.3.3-1] method B: PUBREL for an id with no state is answered
    with PUBCOMP all the same, and the connection stays."""
    with raw(broker, tag="relunk") as c:
        for pid in (1, 4242, 65535):
            c.send(m.pubrel(pid))
            p = c.recv_packet(T(5), what="PUBCOMP")
            assert (p.type, p.pid) == (m.PUBCOMP, pid), repr(p)
        c.ping()
        c.disconnect()
    bystander.check()


@pytest.mark.parametrize("ack", [m.puback, m.pubcomp], ids=["puback", "pubcomp"])
def test_ack_for_unknown_id_is_ignored(broker, bystander, ack):
    """PUBACK or PUBCOMP for an id never sent: no reply, connection stays
    (the next packet it gets is the PINGRESP it asks for)."""
    with raw(broker, tag="ackunk") as c:
        for pid in (1, 999, 65535):
            c.send(ack(pid))
        c.send(m.pingreq())
        p = c.recv_packet(T(5), what="PINGRESP")
        assert p.type == m.PINGRESP, f"expected only PINGRESP, got {p!r}"
        c.expect_no_packet(0.2)
        c.disconnect()
    bystander.check()


def test_pubrec_for_unknown_id_keeps_the_connection(broker, bystander):
    """PUBREC for an id never sent: 3.1.1 says nothing of it; the server may
    ignore it or answer PUBREL (MQTT 5 does), and keeps the connection."""
    with raw(broker, tag="recunk") as c:
        for pid in (1, 999, 65535):
            c.send(m.pubrec(pid))
        c.send(m.pingreq())
        got = []
        while True:
            p = c.recv_packet(T(5), what="PINGRESP")
            if p.type == m.PINGRESP:
                break
            got.append((p.type, p.pid))
        assert got in ([], [(m.PUBREL, 1), (m.PUBREL, 999), (m.PUBREL, 65535)]), got
        c.expect_no_packet(0.2)
        c.disconnect()
    bystander.check()


@pytest.mark.mosquitto_differs("Mosquitto closes on a PUBCOMP for a QoS 1 delivery")
def test_ack_with_wrong_type_for_a_real_id_is_ignored(broker, bystander):
    """A QoS 1 delivery answered with PUBCOMP stays in flight until the
    right PUBACK; nothing is sent in reply to the wrong one."""
    with raw(broker, tag="wrongack") as sub, raw(broker, tag="wapub") as pub:
        sub.subscribe([("wa/t", 1)])
        pub.publish("wa/t", b"q1", qos=1, pid=1)
        p = sub.recv_publish(timeout=T(5), ack=False)
        sub.send(m.pubcomp(p.pid))
        sub.send(m.pingreq())
        assert sub.recv_packet(T(5)).type == m.PINGRESP
        sub.send(m.puback(p.pid))
        sub.ping()
        sub.expect_no_packet(0.2)
    bystander.check()


@pytest.mark.parametrize("pkt", [
    pytest.param(m.publish("by/zero", b"z", qos=1, pid=0), id="publish-qos1"),
    pytest.param(m.publish("by/zero", b"z", qos=2, pid=0), id="publish-qos2"),
    pytest.param(m.packet(m.PUBACK, 0, b"\x00\x00"), id="puback"),
    pytest.param(m.packet(m.PUBREC, 0, b"\x00\x00"), id="pubrec"),
    pytest.param(m.packet(m.PUBREL, 2, b"\x00\x00"), id="pubrel"),
    pytest.param(m.packet(m.PUBCOMP, 0, b"\x00\x00"), id="pubcomp"),
])
def test_packet_id_0_closes_and_is_not_delivered(broker, bystander, pkt):
    """[MQTT-2.3.1-1]: packet ids are non-zero."""
    closed_without_reply_to(broker, pkt, tag="pid0")
    bystander.check()


INFLIGHT, QUEUED = 5, 10
PAYLOAD = 256 * 1024


@pytest.mark.mosquitto_differs("Mosquitto 2.0.11 releases more than one queued message per "
                               "acknowledgement")
@pytest.mark.broker_config(max_inflight=INFLIGHT, max_queued_messages=QUEUED)
@pytest.mark.parametrize("qos", [1, 2])
def test_subscriber_that_never_acknowledges_is_bounded(broker, bystander, qos):
    """3 x (max_inflight + max_queued_messages) messages of 256 kB to a
    subscriber that acknowledges none: it gets exactly max_inflight, the
    worker holds at most max_queued_messages more (not the 11 MB sent),
    each acknowledgement releases exactly one more, and in total it gets
    max_inflight + max_queued_messages, in order; then nothing. (Whether
    memory is given back afterwards: test_hostile_resources.py.)"""
    total = 3 * (INFLIGHT + QUEUED)
    with raw(broker, tag="noack") as sub, raw(broker, tag="flood") as pub:
        broker.assert_different_workers(sub, pub)
        worker = broker.worker_of(sub)
        wmark = broker.memory_mark([worker])
        sub.subscribe([("flow/t", qos), ("flow/sync", 0)])
        for i in range(total):
            pub.publish("flow/t", f"{i:04d}".encode() + b"." * PAYLOAD, qos=qos, pid=i % 60000 + 1)
        # QoS 0 bypasses the window: when it arrives, every earlier message
        # was routed and either sent, queued or dropped.
        pub.publish("flow/sync", b"sync", qos=0)
        first = sub.recv_publishes(INFLIGHT, timeout=T(10), ack=False)
        sync = sub.recv_packet(T(10), what="the QoS 0 sync message")
        assert (sync.type, getattr(sync, "topic", None)) == (m.PUBLISH, "flow/sync"), \
            f"more than max_inflight={INFLIGHT} unacknowledged deliveries: got {sync!r}"
        sub.expect_no_packet(0.5)
        if not broker.instrumented:
            grown = broker.pss_kb([worker]) - wmark.kb
            bound = (INFLIGHT + QUEUED) * PAYLOAD // 1024 + 4096
            assert grown <= bound, (f"worker {worker} grew by {grown} kB holding for one "
                                    f"subscriber; bound {bound} kB "
                                    f"({INFLIGHT}+{QUEUED} messages of {PAYLOAD // 1024} kB)")
        got = list(first)
        sub.ack(first[0])
        nxt = sub.recv_publish(timeout=T(5), ack=False)
        got.append(nxt)
        sub.expect_no_packet(0.2)           # one acknowledgement, one more message
        for p in got[1:]:
            sub.ack(p)
        while len(got) < INFLIGHT + QUEUED:
            p = sub.recv_publish(timeout=T(5), ack=False)
            got.append(p)
            sub.ack(p)
        sub.expect_no_packet(0.5)
        seq = [int(p.payload[:4]) for p in got]
        assert seq == list(range(INFLIGHT + QUEUED)), f"deliveries out of order or lost: {seq}"
        assert all(p.qos == qos and len(p.payload) == 4 + PAYLOAD for p in got)
        pub.disconnect()
        sub.disconnect()
    bystander.check()
