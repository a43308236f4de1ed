"""CONNECT handling: acceptance, refusal codes and protocol violations."""

import os
import signal

import pytest

import mqttraw as m
from helpers import T, local_port_of, raw, server_rx_queue, uid, wait_for


IGNORED_BY_MOSQUITTO = pytest.mark.mosquitto_differs(
    "Mosquitto silently ignores SUBACK/UNSUBACK/PINGRESP from a client")


def assert_closed_without_accept(c, timeout=5):
    got = c.expect_closed(T(timeout))
    accepted = [p for p in got if p.type == m.CONNACK and p.rc == 0]
    assert not accepted, f"the server accepted the connection before closing: {got!r}"
    return got


def connect_refused(broker, connect):
    """A new connection sends the CONNECT packet `connect`: closed without
    being accepted."""
    with raw(broker, connect=False) as c:
        c.send(connect)
        assert_closed_without_accept(c)


def test_connect_returns_connack_accepted(broker):
    with raw(broker, connect=False) as c:
        c.send(m.connect(uid("ok"), clean=True, keepalive=30))
        ack = c.expect(m.CONNACK)
        assert ack.rc == 0
        assert ack.session_present is False
        assert ack.flags == 0 and len(ack.body) == 2, f"malformed CONNACK {ack!r}"


def test_mqtt31_mqisdp_level3_is_accepted(broker):
    with raw(broker, connect=False) as c:
        c.send(m.connect("v31-" + uid("a")[-8:], proto_name="MQIsdp", level=3))
        assert c.expect(m.CONNACK).rc == 0
        c.ping()


@pytest.mark.parametrize("level", [2, 7, 255])
def test_unsupported_protocol_level_gets_connack_1_then_close(broker, level):
    with raw(broker, connect=False) as c:
        c.send(m.connect(uid("lvl"), level=level))
        ack = c.expect(m.CONNACK)
        assert ack.rc == 1, f"expected CONNACK 1 (unacceptable protocol version), got {ack!r}"
        c.expect_closed(T(5))


@pytest.mark.parametrize("name", ["MQTX", "mqtt", "MQIsdp4", ""])
def test_wrong_protocol_name_closes_connection(broker, name):
    with raw(broker, connect=False) as c:
        c.send(m.connect(uid("name"), proto_name=name))
        got = c.expect_closed(T(5))
        assert got == [], f"expected a close without any packet, got {got!r}"


def test_reserved_connect_flag_closes_connection(broker):
    connect_refused(broker, m.connect(uid("rsv"), reserved=True))


def test_will_qos_3_closes_connection(broker):
    connect_refused(broker, m.connect(uid("wq3"), will=("w/t", b"x", 0, False), will_qos=3))


def test_will_retain_without_will_flag_closes_connection(broker):
    connect_refused(broker, m.connect(uid("wret"), will_retain=True))


def test_will_qos_without_will_flag_closes_connection(broker):
    connect_refused(broker, m.connect(uid("wqos"), will_qos=1))


def test_password_without_username_closes_connection(broker):
    connect_refused(broker, m.connect(uid("pw"), password=b"secret"))


def test_empty_client_id_with_clean_session_is_accepted(broker):
    with raw(broker, connect=False) as c:
        c.send(m.connect("", clean=True))
        assert c.expect(m.CONNACK).rc == 0
        c.ping()


def test_empty_client_id_without_clean_session_gets_connack_2(broker):
    with raw(broker, connect=False) as c:
        c.send(m.connect("", clean=False))
        ack = c.expect(m.CONNACK)
        assert ack.rc == 2, f"expected CONNACK 2 (identifier rejected), got {ack!r}"
        c.expect_closed(T(5))


@pytest.mark.parametrize("first", [
    pytest.param(m.pingreq(), id="pingreq"),
    pytest.param(m.publish("a/b", b"x"), id="publish"),
    pytest.param(m.subscribe(1, [("a", 0)]), id="subscribe"),
    pytest.param(m.disconnect(), id="disconnect"),
])
def test_first_packet_not_connect_closes_connection(broker, first):
    with raw(broker, connect=False) as c:
        c.send(first)
        got = c.expect_closed(T(5))
        assert got == [], f"expected a close without any packet, got {got!r}"


def test_second_connect_closes_connection(broker):
    with raw(broker, connect=False) as c:
        cid = uid("twice")
        c.connect(cid)
        c.send(m.connect(cid))
        got = c.expect_closed(T(5))
        assert all(p.type != m.CONNACK for p in got), f"second CONNACK sent: {got!r}"


@pytest.mark.parametrize("pkt", [
    pytest.param(m.connack(False, 0), id="connack"),
    pytest.param(m.suback(1, [0]), id="suback", marks=IGNORED_BY_MOSQUITTO),
    pytest.param(m.unsuback(1), id="unsuback", marks=IGNORED_BY_MOSQUITTO),
    pytest.param(m.pingresp(), id="pingresp", marks=IGNORED_BY_MOSQUITTO),
])
def test_server_only_packet_from_client_closes_connection(broker, pkt):
    with raw(broker, uid("srvpkt")) as c:
        c.send(pkt)
        c.expect_closed(T(5))


def test_pingreq_gets_pingresp(broker):
    with raw(broker, uid("ping")) as c:
        for _ in range(3):
            c.send(m.pingreq())
            p = c.expect(m.PINGRESP)
            assert p.flags == 0 and p.body == b""


@pytest.mark.iotd_only
def test_packets_sent_before_the_connack_are_handled_after_it(broker):
    """Packets that arrive while the worker waits for the router to place the
    session (the router is stopped meanwhile) wait, and are handled in order
    once the CONNACK is out."""
    router = broker.role_pid("router")
    with raw(broker, connect=False) as c, raw(broker, connect=False) as sub:
        sub.connect(uid("early-sub"))
        sub.subscribe([("early/t", 0)])
        os.kill(router, signal.SIGSTOP)
        try:
            port = local_port_of(c)

            def waiting(n):
                return lambda: server_rx_queue(broker.port, port) == n
            c.send(m.connect(uid("early")))
            # Its CONNECT is read: the worker waits for the router.
            wait_for(waiting(0), T(5), "the worker reading the CONNECT")
            subscribe = m.subscribe(1, [("early/t", 0)])
            c.send(subscribe)
            # Input before the CONNACK stays in the kernel; the next comes apart.
            wait_for(waiting(len(subscribe)), T(5), "the SUBSCRIBE in the server's socket")
            c.send(m.publish("early/t", b"early") + m.pingreq())
            c.expect_no_packet(0.3)          # nothing before the CONNACK
        finally:
            os.kill(router, signal.SIGCONT)
        assert c.expect(m.CONNACK, T(5)).rc == 0
        # The worker answers PINGREQ itself, the router SUBSCRIBE: no order between them.
        got = {p.type: p for p in (c.recv_packet(T(5)) for _ in range(3))}
        assert sorted(got) == sorted([m.SUBACK, m.PUBLISH, m.PINGRESP]), got
        assert got[m.SUBACK].body[-1:] == b"\x00"
        assert got[m.PUBLISH].payload == b"early"
        assert sub.recv_publish(T(5)).payload == b"early"


@pytest.mark.parametrize("bad_id", [
    pytest.param(b"\xff\xfe", id="invalid-bytes"),
    pytest.param(b"ab\xc3", id="truncated-sequence"),
    pytest.param(b"a\xed\xa0\x80b", id="surrogate"),
    pytest.param(b"a\x00b", id="nul"),
])
def test_invalid_utf8_client_id_closes_connection(broker, bad_id):
    connect_refused(broker, m.connect(bad_id))
