"""Malformed and hostile input: the offending connection is closed, while a
bystander client subscribed the whole time keeps working and no daemon
process dies or is replaced."""

import time

import pytest

import mqttraw as m
from helpers import T, uid


class Bystander:
    """A client subscribed before the bad input and checked after it."""

    def __init__(self, broker):
        self.broker = broker
        self.pids = sorted(broker.pids())
        self.c = m.RawClient(broker.port, timeout=T(5))
        self.c.connect(uid("bystand"))
        self.c.subscribe([("by/#", 1)])
        self.n = 0

    def check(self):
        self.n += 1
        with m.RawClient(self.broker.port, timeout=T(5)) as pub:
            pub.connect(uid("bypub"))
            pub.publish("by/t", f"still-alive-{self.n}".encode(), qos=1, pid=1)
            pub.disconnect()
        p = self.c.recv_publish(timeout=T(5))
        assert p.payload == f"still-alive-{self.n}".encode()
        assert sorted(self.broker.pids()) == self.pids, \
            f"daemon processes changed: {self.pids} -> {sorted(self.broker.pids())}"


@pytest.fixture
def bystander(broker):
    b = Bystander(broker)
    yield b
    b.c.close()


def bad(broker, connected=True):
    c = m.RawClient(broker.port, timeout=T(5))
    if connected:
        c.connect(uid("bad"))
    return c


@pytest.mark.broker_config(max_packet_size=1024)
@pytest.mark.parametrize("connected", [True, False], ids=["after-connect", "as-first-packet"])
def test_declared_length_over_max_packet_size_closes(broker, bystander, connected):
    with bad(broker, connected) as c:
        first = 0x30 if connected else 0x10
        c.send(bytes([first]) + m.enc_varint(100000) + b"\x00\x03a/b" + b"x" * 100)
        got = c.expect_closed(T(5))
        assert not any(p.type in (m.PUBACK, m.CONNACK) for p in got), repr(got)
    bystander.check()


@pytest.mark.broker_config(max_packet_size=1024)
def test_actual_packet_over_max_packet_size_closes_and_is_not_delivered(broker, bystander):
    with bad(broker) as c:
        try:
            c.send(m.publish("by/big", b"x" * 4096, qos=0))
        except OSError:
            pass
        c.expect_closed(T(5))
    bystander.c.expect_no_packet(0.3)
    bystander.check()


@pytest.mark.parametrize("connected", [True, False], ids=["after-connect", "as-first-packet"])
def test_five_byte_remaining_length_closes(broker, bystander, connected):
    with bad(broker, connected) as c:
        c.send(bytes([0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]) + b"\x00" * 16)
        c.expect_closed(T(5))
    bystander.check()


@pytest.mark.parametrize("ptype", [0, 15])
@pytest.mark.parametrize("connected", [True, False], ids=["after-connect", "as-first-packet"])
def test_reserved_packet_type_closes(broker, bystander, ptype, connected):
    with bad(broker, connected) as c:
        c.send(bytes([ptype << 4, 0x00]))
        c.expect_closed(T(5))
    bystander.check()


@pytest.mark.parametrize("pkt", [
    pytest.param(bytes([0x32, 0x03, 0x00, 0x01, 0x61]), id="publish-qos1-no-packet-id"),
    pytest.param(bytes([0x36]) + m.publish("a", b"x", qos=1)[1:], id="publish-qos3"),
    pytest.param(bytes([0x30, 0x05, 0x00, 0x09, 0x61, 0x62, 0x63]), id="topic-length-past-end"),
    pytest.param(bytes([0x80]) + m.subscribe(1, [("a", 0)])[1:], id="subscribe-bad-flags"),
    pytest.param(m.subscribe(1, [("a", 3)]), id="subscribe-qos3"),
    pytest.param(bytes([0x82, 0x02, 0x00, 0x01]), id="subscribe-no-filters"),
    pytest.param(bytes([0xA2, 0x02, 0x00, 0x01]), id="unsubscribe-no-filters"),
    pytest.param(bytes([0x60, 0x02, 0x00, 0x05]), id="pubrel-bad-flags"),
    pytest.param(bytes([0xC0, 0x01, 0x00]), id="pingreq-with-body",
                 marks=pytest.mark.mosquitto_differs("Mosquitto answers a PINGREQ with a body")),
])
def test_malformed_packet_after_connect_closes(broker, bystander, pkt):
    with bad(broker) as c:
        c.send(pkt)
        c.expect_closed(T(5))
    bystander.check()


def test_garbage_bytes_close_connection(broker, bystander):
    with bad(broker, connected=False) as c:
        c.send(bytes(range(256)) * 4)
        c.expect_closed(T(5))
    bystander.check()


@pytest.mark.broker_config(connect_timeout=2)
def test_partial_connect_never_completed_is_closed_after_connect_timeout(broker, bystander):
    with bad(broker, connected=False) as c:
        full = m.connect(uid("partial"))
        c.send(full[:5])
        t0 = time.monotonic()
        c.expect_closed(T(2 + 3))
        elapsed = time.monotonic() - t0
        assert elapsed >= 1.0, f"closed after {elapsed:.2f} s: before connect_timeout=2"
    bystander.check()


@pytest.mark.broker_config(connect_timeout=2)
def test_connection_without_connect_is_closed_after_connect_timeout(broker, bystander):
    with bad(broker, connected=False) as c:
        t0 = time.monotonic()
        got = c.expect_closed(T(2 + 3))
        elapsed = time.monotonic() - t0
        assert got == [], f"sent packets to a client that never connected: {got!r}"
        assert elapsed >= 1.0, f"closed after {elapsed:.2f} s: before connect_timeout=2"
    bystander.check()


def test_many_bad_connections_in_a_row_leave_daemon_healthy(broker, bystander):
    payloads = [bytes([0x00, 0x00]), bytes([0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]),
                m.connect(uid("x"), proto_name="XXXX"), bytes([0xF0, 0x00]),
                m.connect(uid("y"), reserved=True)]
    for i in range(20):
        with bad(broker, connected=False) as c:
            c.send(payloads[i % len(payloads)])
            c.expect_closed(T(5))
    bystander.check()
