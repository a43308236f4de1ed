"""Malformed and hostile input in the fixed header and the framing: the
offending connection is closed (without a reply unless the case says
otherwise), while a bystander client subscribed the whole time keeps
receiving every message and no daemon process dies or is replaced (the
`bystander` fixture, conftest.py).

Remaining length: MQTT 3.1.1 (2.2.3) encodes it in at most four bytes and
does not require the shortest form, so iotd accepts a non-minimal encoding
(e.g. 7 written as 87 80 80 00) and refuses a fifth length byte.
"""

import time

import pytest

import mqttraw as m
from helpers import T, closed_without_reply_to, raw, uid


def send_quietly(c, data):
    """Send; the server may already have closed (it need not read it all)."""
    try:
        c.send(data)
    except OSError:
        pass


def time_to_close(c, data, timeout):
    """Sends data (when any) and waits, within T(timeout), for the server to
    close the connection: (the packets it sent meanwhile, the seconds from
    the send to the close)."""
    t0 = time.monotonic()
    if data:
        c.send(data)
    got = c.expect_closed(T(timeout))
    return got, time.monotonic() - t0


def trickle_until_closed(c, deadline):
    """Send one more byte every 0.3 s until the server closes the
    connection (True) or the deadline passes (False)."""
    while time.monotonic() < deadline:
        try:
            c.send(b"\x00")
        except OSError:
            return True
        if not c.is_open(0.3):
            return True
    return False


@pytest.mark.broker_config(max_packet_size=1024)
@pytest.mark.parametrize("connected", [True, False], ids=["after-connect", "as-first-packet"])
def test_declared_length_over_max_packet_size_closes(broker, bystander, connected):
    with raw(broker, tag="bad", connect=connected) as c:
        first = 0x30 if connected else 0x10
        c.send(bytes([first]) + m.enc_varint(100000) + b"\x00\x03a/b" + b"x" * 100)
        got = c.expect_closed(T(5))
        assert not any(p.type in (m.PUBACK, m.CONNACK) for p in got), repr(got)
    bystander.check()


@pytest.mark.broker_config(max_packet_size=1024)
def test_actual_packet_over_max_packet_size_closes_and_is_not_delivered(broker, bystander):
    with raw(broker, tag="bad") as c:
        try:
            c.send(m.publish("by/big", b"x" * 4096, qos=0))
        except OSError:
            pass
        c.expect_closed(T(5))
    bystander.c.expect_no_packet(0.3)
    bystander.check()


@pytest.mark.mosquitto_differs("Mosquitto 2.0.11 does not close at max_packet_size + 1")
@pytest.mark.broker_config(max_packet_size=1024)
def test_packet_of_exactly_max_packet_size_is_delivered_one_more_byte_closes(broker, bystander):
    """max_packet_size counts the whole packet, fixed header included."""
    fill = 1024 - 3 - len(m.enc_str("by/edge"))    # 1 type byte + 2 length bytes
    exact = m.publish("by/edge", b"e" * fill, qos=0)
    assert len(exact) == 1024
    with raw(broker, tag="bad") as c:
        c.send(exact)
        c.ping()
        for s in bystander.subs:
            p = s.recv_publish(timeout=T(5))
            assert (p.topic, len(p.payload)) == ("by/edge", fill)
        c.send(m.publish("by/edge", b"e" * (fill + 1), qos=0))
        assert c.expect_closed(T(5)) == []
    bystander.check()


@pytest.mark.mosquitto_differs("Mosquitto has no default packet size limit")
@pytest.mark.parametrize("connected", [True, False], ids=["after-connect", "as-first-packet"])
def test_declared_length_over_max_closes_before_the_body_is_sent(broker, bystander, connected):
    """Only the fixed header of a 200 MB packet is sent: the daemon closes at
    once, without waiting for (or allocating) the body."""
    with raw(broker, tag="bad", connect=connected) as c:
        worker = broker.worker_of(c)
        mark = broker.memory_mark([worker])
        first = 0x30 if connected else 0x10
        c.send(bytes([first]) + m.enc_varint(200_000_000))
        assert c.expect_closed(T(5)) == []
    if not broker.instrumented:
        grown = broker.pss_kb([worker]) - mark.kb
        assert grown < 4096, f"worker {worker} grew by {grown} kB on a refused 200 MB header"
    bystander.check()
    mark.assert_back(what=f"worker {worker}")


@pytest.mark.broker_config(max_packet_size=268_435_455)
def test_declared_length_is_not_allocated_before_the_body_arrives(broker, bystander):
    """A packet declared at 200 MB (under the configured limit) of which only
    1 kB arrives costs the worker about 1 kB, not 200 MB."""
    with raw(broker, tag="bad") as c:
        worker = broker.worker_of(c)
        mark = broker.memory_mark([worker])
        c.send(bytes([0x30]) + m.enc_varint(200_000_000) + m.enc_str("by/huge") + b"h" * 1024)
        assert c.is_open(0.5), "closed a connection whose packet is within max_packet_size"
        if not broker.instrumented:
            grown = broker.pss_kb([worker]) - mark.kb
            assert grown < 8192, f"worker {worker} grew by {grown} kB for 1 kB of a 200 MB packet"
    bystander.check()
    mark.assert_back(what=f"worker {worker}")


@pytest.mark.parametrize("connected", [True, False], ids=["after-connect", "as-first-packet"])
def test_five_byte_remaining_length_closes(broker, bystander, connected):
    closed_without_reply_to(broker, bytes([0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]) + b"\x00" * 16,
                            tag="bad", connect=connected)
    bystander.check()


@pytest.mark.parametrize("connected", [True, False], ids=["after-connect", "as-first-packet"])
def test_five_byte_remaining_length_of_small_value_closes(broker, bystander, connected):
    """80 80 80 80 01: small enough to pass any size limit, but five bytes."""
    with raw(broker, tag="bad", connect=connected) as c:
        first = 0x30 if connected else 0x10
        c.send(bytes([first]) + m.enc_varint_padded(0, 4)[:-1] + b"\x80\x01" + b"\x00" * 8)
        assert c.expect_closed(T(5)) == []
    bystander.check()


@pytest.mark.parametrize("width", [2, 3, 4])
def test_non_minimal_remaining_length_is_accepted(broker, bystander, width):
    """A receiver accepts a non-minimal remaining length (3.1.1 does not
    require the shortest form): the CONNECT is answered and the PUBLISH
    delivered, to subscribers on every worker."""
    with raw(broker, connect=False) as c:
        c.send(m.with_length_width(m.connect(uid("nonmin"), keepalive=60), width))
        ack = c.expect(m.CONNACK)
        assert ack.rc == 0
        c.send(m.with_length_width(m.publish("by/nonmin", f"w{width}", qos=1, pid=9), width))
        c.expect(m.PUBACK, pid=9)
        for s in bystander.subs:
            p = s.recv_publish(timeout=T(5))
            assert (p.topic, p.payload) == ("by/nonmin", f"w{width}".encode())
        c.disconnect()
    bystander.check()


@pytest.mark.parametrize("ptype", [0, 15])
@pytest.mark.parametrize("connected", [True, False], ids=["after-connect", "as-first-packet"])
def test_reserved_packet_type_closes(broker, bystander, ptype, connected):
    closed_without_reply_to(broker, bytes([ptype << 4, 0x00]), tag="bad", connect=connected)
    bystander.check()


MOSQ_FLAGS = pytest.mark.mosquitto_differs("Mosquitto 2.0.11 ignores the reserved flags of "
                                            "PINGREQ, PUBACK, PUBREC and PUBCOMP")

# Every packet a client may send, with fixed-header flags other than those
# 3.1.1 (2.2.2) requires: a malformed packet, closed without a reply.
RESERVED_FLAGS = [
    pytest.param(m.with_flags(m.subscribe(1, [("a", 0)]), 0x0), id="subscribe-flags-0"),
    pytest.param(m.with_flags(m.subscribe(1, [("a", 0)]), 0x3), id="subscribe-flags-3"),
    pytest.param(m.with_flags(m.subscribe(1, [("a", 0)]), 0xA), id="subscribe-flags-A"),
    pytest.param(m.with_flags(m.unsubscribe(1, ["a"]), 0x0), id="unsubscribe-flags-0"),
    pytest.param(m.with_flags(m.unsubscribe(1, ["a"]), 0x6), id="unsubscribe-flags-6"),
    pytest.param(m.with_flags(m.pubrel(5), 0x0), id="pubrel-flags-0"),
    pytest.param(m.with_flags(m.pubrel(5), 0x3), id="pubrel-flags-3"),
    pytest.param(m.with_flags(m.pingreq(), 0x1), id="pingreq-flags-1", marks=MOSQ_FLAGS),
    pytest.param(m.with_flags(m.puback(5), 0x1), id="puback-flags-1", marks=MOSQ_FLAGS),
    pytest.param(m.with_flags(m.pubrec(5), 0x2), id="pubrec-flags-2", marks=MOSQ_FLAGS),
    pytest.param(m.with_flags(m.pubcomp(5), 0x8), id="pubcomp-flags-8", marks=MOSQ_FLAGS),
    pytest.param(m.with_flags(m.disconnect(), 0x1), id="disconnect-flags-1"),
    pytest.param(m.with_flags(m.publish("by/dup0", b"x", qos=0), 0x8), id="publish-qos0-dup",
                 marks=pytest.mark.mosquitto_differs("Mosquitto accepts DUP on QoS 0")),
    pytest.param(m.with_flags(m.publish("by/q3", b"x", qos=1), 0x6), id="publish-qos3"),
]


@pytest.mark.parametrize("pkt", RESERVED_FLAGS)
def test_reserved_flag_bits_close(broker, bystander, pkt):
    closed_without_reply_to(broker, pkt, tag="bad")
    bystander.check()


def test_connect_with_reserved_header_flags_closes_without_connack(broker, bystander):
    closed_without_reply_to(broker, m.with_flags(m.connect(uid("flags")), 0x1), connect=False)
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
    pytest.param(bytes([0x40, 0x03, 0x00, 0x05, 0x00]), id="puback-trailing-byte",
                 marks=pytest.mark.mosquitto_differs("Mosquitto ignores bytes after a PUBACK's id")),
    pytest.param(bytes([0x40, 0x01, 0x00]), id="puback-short"),
    pytest.param(bytes([0xE0, 0x01, 0x00]), id="disconnect-with-body"),
])
def test_malformed_packet_after_connect_closes(broker, bystander, pkt):
    closed_without_reply_to(broker, pkt, tag="bad")
    bystander.check()


def test_garbage_bytes_close_connection(broker, bystander):
    with raw(broker, connect=False) as c:
        send_quietly(c, bytes(range(256)) * 4)
        assert c.expect_closed(T(5)) == []
    bystander.check()


# --- declared lengths never delivered: closed after a timeout

@pytest.mark.broker_config(connect_timeout=2)
def test_partial_connect_never_completed_is_closed_after_connect_timeout(broker, bystander):
    with raw(broker, connect=False) as c:
        full = m.connect(uid("partial"))
        got, elapsed = time_to_close(c, full[:5], 2 + 3)
        assert got == [], f"answered a CONNECT that never arrived whole: {got!r}"
        assert elapsed >= 1.0, f"closed after {elapsed:.2f} s: before connect_timeout=2"
    bystander.check()


@pytest.mark.broker_config(connect_timeout=1)
def test_connect_declared_longer_than_sent_is_closed_after_connect_timeout(broker, bystander):
    """A CONNECT header declaring 200 bytes, 20 of them sent, then silence."""
    with raw(broker, connect=False) as c:
        full = m.connect(uid("declared"))
        got, elapsed = time_to_close(c, bytes([0x10]) + m.enc_varint(200) + full[2:22], 1 + 3)
        assert got == [], repr(got)
        assert elapsed >= 0.5, f"closed after {elapsed:.2f} s: before connect_timeout=1"
    bystander.check()


@pytest.mark.broker_config(connect_timeout=1)
def test_connect_trickled_byte_by_byte_is_still_closed_after_connect_timeout(broker, bystander):
    """connect_timeout is the time a new connection has to send CONNECT: a
    client sending one byte of a never-ending CONNECT every 0.3 s must not
    hold its connection beyond it (1 s, checked once a second)."""
    with raw(broker, connect=False) as c:
        t0 = time.monotonic()
        c.send(bytes([0x10]) + m.enc_varint(200))
        closed = trickle_until_closed(c, t0 + T(1 + 2.5))
        elapsed = time.monotonic() - t0
        assert closed, f"still open after {elapsed:.1f} s with connect_timeout=1"
        assert elapsed >= 0.5, f"closed after {elapsed:.2f} s: before connect_timeout=1"
    bystander.check()


@pytest.mark.broker_config(connect_timeout=1)
def test_packet_declared_longer_than_sent_after_connect_is_closed_by_keepalive(broker, bystander):
    """After CONNECT the keep-alive governs (1.5 x 2 s), not connect_timeout
    (1 s): a PUBLISH declaring 100 bytes of which 10 arrive, then silence.
    The connection ends abnormally, so the will is published."""
    with raw(broker, uid("watch")) as watcher:
        watcher.subscribe([("will/declared", 0)])
        with raw(broker, tag="bad", keepalive=2, will=("will/declared", b"gone", 0, False)) as c:
            declared = bytes([0x30]) + m.enc_varint(100) + m.enc_str("by/x") + b"x" * 4
            got, elapsed = time_to_close(c, declared, 3 + 4)
            assert got == [], repr(got)
            assert elapsed >= 2.5, (f"closed after {elapsed:.2f} s: the keep-alive is 2 s "
                                    f"(closed at 3 s), connect_timeout no longer applies")
        p = watcher.recv_publish(timeout=T(5))
        assert (p.topic, p.payload) == ("will/declared", b"gone")
    bystander.check()


def test_packet_trickled_after_connect_is_closed_by_keepalive(broker, bystander):
    """Keep-alive 1 s: a PUBLISH declaring 200 bytes, one byte every 0.3 s,
    is no control packet: closed after 1.5 s."""
    with raw(broker, tag="bad", keepalive=1) as c:
        t0 = time.monotonic()
        c.send(bytes([0x30]) + m.enc_varint(200))
        closed = trickle_until_closed(c, t0 + T(1.5 + 2))
        elapsed = time.monotonic() - t0
        assert closed, f"still open after {elapsed:.1f} s with a keep-alive of 1 s"
    bystander.check()


@pytest.mark.broker_config(connect_timeout=2)
def test_connection_without_connect_is_closed_after_connect_timeout(broker, bystander):
    with raw(broker, connect=False) as c:
        got, elapsed = time_to_close(c, b"", 2 + 3)
        assert got == [], f"sent packets to a client that never connected: {got!r}"
        assert elapsed >= 1.0, f"closed after {elapsed:.2f} s: before connect_timeout=2"
    bystander.check()


def test_many_bad_connections_in_a_row_leave_daemon_healthy(broker, bystander):
    payloads = [bytes([0x00, 0x00]), bytes([0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]),
                m.connect(uid("x"), proto_name="XXXX"), bytes([0xF0, 0x00]),
                m.connect(uid("y"), reserved=True)]
    for i in range(20):
        with raw(broker, connect=False) as c:
            c.send(payloads[i % len(payloads)])
            c.expect_closed(T(5))
    bystander.check()
