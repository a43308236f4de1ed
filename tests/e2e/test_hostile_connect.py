"""Hostile CONNECTs and packet order: a first packet that is not CONNECT, a
second CONNECT, server-only packets from a client, every invalid CONNECT
field, and what a client may make a worker hold before its CONNECT is
whole (max_connect_size, max_client_id_length). Each case asserts the exact
reaction (closed without a reply, or one CONNACK with a given code, then
closed), that a connected client's will is published when it breaks the
protocol, and that a bystander subscribed throughout received every message
while no daemon process died (the `bystander` fixture, conftest.py)."""

import pytest

import mqttraw as m
from helpers import T, closed_without_reply, closed_without_reply_to, raw, uid, wait_for


def refused_with(c, rc, timeout=5):
    """Exactly one CONNACK (session present 0, return code rc), then closed."""
    got = c.expect_closed(T(timeout))
    assert [(p.type, p.body) for p in got] == [(m.CONNACK, bytes([0, rc]))], \
        f"expected CONNACK {rc} then close, got {got!r}"


class WillWatch:
    """A client subscribed to one will topic."""

    def __init__(self, broker):
        self.topic = f"will/{uid('w')}"
        self.c = raw(broker, uid("watch"))
        self.c.subscribe([(self.topic, 1)])

    def will(self, payload=b"will"):
        return (self.topic, payload, 1, False)

    def expect_will(self, payload=b"will"):
        p = self.c.recv_publish(timeout=T(5))
        assert (p.topic, p.payload) == (self.topic, payload), repr(p)

    def expect_no_will(self, t=0.5):
        self.c.expect_no_packet(t)

    def close(self):
        self.c.close()


@pytest.fixture
def will_watch(broker, clients):
    return clients.own(WillWatch(broker))


# --- packet order -----------------------------------------------------------

@pytest.mark.parametrize("pkt", [
    pytest.param(m.publish("by/first", b"x"), id="publish"),
    pytest.param(m.publish("by/first", b"x", qos=1, pid=1), id="publish-qos1"),
    pytest.param(m.subscribe(1, [("by/#", 0)]), id="subscribe"),
    pytest.param(m.unsubscribe(1, ["by/#"]), id="unsubscribe"),
    pytest.param(m.pingreq(), id="pingreq"),
    pytest.param(m.puback(1), id="puback"),
    pytest.param(m.pubrel(1), id="pubrel"),
    pytest.param(m.disconnect(), id="disconnect"),
    pytest.param(m.connack(), id="connack"),
    pytest.param(m.suback(1, [0]), id="suback"),
    pytest.param(m.pingresp(), id="pingresp"),
])
def test_first_packet_not_connect_closes_without_reply(broker, bystander, pkt):
    closed_without_reply_to(broker, pkt, connect=False)
    bystander.check()


@pytest.mark.mosquitto_differs("Mosquitto 2.0.11 publishes no will after a second CONNECT")
def test_second_connect_closes_and_publishes_the_will(broker, bystander, will_watch):
    closed_without_reply_to(broker, m.connect(uid("twice-again")), cid=uid("twice"),
                            will=will_watch.will(b"second-connect"))
    will_watch.expect_will(b"second-connect")
    bystander.check()


@pytest.mark.parametrize("pkt", [
    pytest.param(m.connack(), id="connack"),
    pytest.param(m.suback(1, [0]), id="suback",
                 marks=pytest.mark.mosquitto_differs("Mosquitto ignores SUBACK from a client")),
    pytest.param(m.unsuback(1), id="unsuback",
                 marks=pytest.mark.mosquitto_differs("Mosquitto ignores UNSUBACK from a client")),
    pytest.param(m.pingresp(), id="pingresp",
                 marks=pytest.mark.mosquitto_differs("Mosquitto ignores PINGRESP from a client")),
])
def test_server_only_packet_closes_and_publishes_the_will(broker, bystander, will_watch, pkt):
    closed_without_reply_to(broker, pkt, cid=uid("srvonly"), will=will_watch.will(b"server-only"))
    will_watch.expect_will(b"server-only")
    bystander.check()


@pytest.mark.parametrize("pkt", [
    pytest.param(m.with_flags(m.disconnect(), 0x1), id="disconnect-reserved-flags"),
    pytest.param(bytes([0x00, 0x00]), id="reserved-type-0"),
    pytest.param(m.with_flags(m.subscribe(1, [("a", 0)]), 0x0), id="subscribe-flags-0"),
    pytest.param(m.publish("", b"x"), id="publish-empty-topic"),
    pytest.param(m.publish("by/+", b"x"), id="publish-wildcard"),
    pytest.param(m.publish(b"by/\xc0\xaf", b"x"), id="publish-overlong-utf8"),
])
def test_protocol_violation_publishes_the_will(broker, bystander, will_watch, pkt):
    """A connection ended by a protocol violation is not a DISCONNECT: the
    will goes out [MQTT-3.1.2-8]."""
    closed_without_reply_to(broker, pkt, cid=uid("violate"), will=will_watch.will(b"violation"))
    will_watch.expect_will(b"violation")
    bystander.check()


def test_disconnect_discards_the_will(broker, bystander, will_watch):
    """The control for the cases above: a clean DISCONNECT publishes nothing."""
    closed_without_reply_to(broker, m.disconnect(), cid=uid("clean"),
                            will=will_watch.will(b"must-not"))
    will_watch.expect_no_will(0.5)
    bystander.check()


# --- CONNECT fields ---------------------------------------------------------

@pytest.mark.parametrize("name", ["MQTX", "mqtt", "MQTT\x00", "MQ", "", "MQIsdpX"])
def test_unknown_protocol_name_closes_without_connack(broker, bystander, name):
    closed_without_reply_to(broker, m.connect(uid("name"), proto_name=name), connect=False)
    bystander.check()




@pytest.mark.parametrize("name,level", [("MQTT", 3), ("MQTT", 6), ("MQTT", 0), ("MQTT", 255),
                                        ("MQIsdp", 4)])
def test_unsupported_protocol_level_gets_connack_1(broker, bystander, name, level):
    with raw(broker, connect=False) as c:
        c.send(m.connect(uid("level"), proto_name=name, level=level))
        refused_with(c, 1)
    bystander.check()


@pytest.mark.parametrize("kw", [
    pytest.param(dict(will=("by/w", b"x", 3, False)), id="will-qos-3"),
    pytest.param(dict(will_flag=False, will_qos=3), id="will-qos-3-without-will"),
    pytest.param(dict(will_flag=False, will_retain=True), id="will-retain-without-will"),
    pytest.param(dict(will_flag=False, will_qos=1), id="will-qos-1-without-will"),
    pytest.param(dict(password=b"secret", username_flag=False), id="password-without-username"),
    pytest.param(dict(reserved=True), id="reserved-connect-flag"),
    pytest.param(dict(will=("by/+", b"x", 0, False)), id="will-topic-wildcard"),
    pytest.param(dict(will=("", b"x", 0, False)), id="will-topic-empty"),
])
def test_invalid_connect_flags_close_without_connack(broker, bystander, kw):
    closed_without_reply_to(broker, m.connect(uid("flags"), **kw), connect=False)
    bystander.check()


def test_empty_client_id_with_clean_session_0_gets_connack_2(broker, bystander):
    with raw(broker, connect=False) as c:
        c.send(m.connect("", clean=False))
        refused_with(c, 2)
    bystander.check()


def test_empty_client_id_with_clean_session_1_is_accepted(broker, bystander):
    with raw(broker, "", clean=True) as c:
        c.subscribe([("anon/t", 1)])
        c.publish("anon/t", b"me", qos=1, pid=3)
        assert c.recv_publish(timeout=T(5)).payload == b"me"
        c.disconnect()
    bystander.check()


@pytest.mark.broker_config(max_client_id_length=65535)
def test_client_id_of_65535_bytes_is_accepted_and_works(broker, bystander):
    """3.1.1 lets a server accept any client id length: with the bound at
    its top, iotd takes the longest one the wire can carry, serves it, and
    takes it over."""
    cid = ("L" + uid("long")).ljust(65535, "x")
    with raw(broker, cid, clean=True) as c:
        ack = c.connack
        assert (ack.session_present, ack.rc) == (False, 0)
        c.subscribe([("long/t", 1)])
        c.publish("long/t", b"to-myself", qos=1, pid=4)
        assert c.recv_publish(timeout=T(5)).payload == b"to-myself"
        with raw(broker, cid, clean=True) as c2:
            # the older connection is taken over: closed, nothing more sent
            assert c.expect_closed(T(5)) == []
            c2.ping()
            c2.disconnect()
    bystander.check()


def test_username_and_password_are_accepted_when_authentication_is_off(broker, bystander):
    with raw(broker, uid("user"), username="someone", password=b"\x00\xff binary") as c:
        c.ping()
        c.disconnect()
    bystander.check()


# --- before CONNECT: what a client may make a worker hold -------------------

def closed_before_connect(broker, data, why):
    """A new connection sends data: closed without a reply, and the worker's
    debug line for a connection closed before its CONNECT names the
    client's address and the reason."""
    with raw(broker, connect=False) as c:
        c.send(data)
        closed_without_reply(c)
        line = f"connection from 127.0.0.1:{c.local_port} closed before CONNECT: {why}"
        wait_for(lambda: line in broker.log, 5, f"the log line {line!r}")


# connect_timeout=60: what closes these connections within seconds can only
# be their first byte, not the connect timeout.
@pytest.mark.broker_config(connect_timeout=60)
@pytest.mark.parametrize("header", [
    pytest.param(bytes([0x30]) + m.enc_varint(500_000), id="publish"),
    pytest.param(bytes([0x82]) + m.enc_varint(500_000), id="subscribe"),
    pytest.param(bytes([0x30]), id="publish-first-byte-only"),
    pytest.param(bytes([0x82]), id="subscribe-first-byte-only"),
])
def test_first_packet_not_connect_is_closed_from_its_fixed_header(broker, bystander, header):
    """Only the fixed header (or just its first byte) of a packet declared
    at 500 kB, within max_packet_size, is sent: the worker closes at once,
    without waiting for the body."""
    closed_before_connect(broker, header, "first packet is not CONNECT")
    bystander.check()


@pytest.mark.broker_config(connect_timeout=60)
@pytest.mark.parametrize("first", [0x30, 0x82], ids=["publish", "subscribe"])
def test_first_packets_not_connect_leave_the_workers_no_bigger(broker, bystander, first):
    """32 connections each send a first packet declared at 1,000,000 bytes
    and 256 kB of its body: held, that would be 8 MB in the workers; each
    connection is closed from its first byte and the workers' memory does
    not grow."""
    workers = broker.worker_pids()
    mark = broker.memory_mark(workers)
    body = bytes([first]) + m.enc_varint(1_000_000) + bytes(256 * 1024)
    clients = [raw(broker, connect=False) for _ in range(32)]
    try:
        for c in clients:
            try:
                c.send(body)
            except OSError:
                pass        # the server closed while the body was on its way
        for c in clients:
            closed_without_reply(c)
    finally:
        for c in clients:
            c.close()
    if not broker.instrumented:
        grown = broker.pss_kb(workers) - mark.kb
        assert grown < 2048, f"the workers grew by {grown} kB on 32 refused first packets"
    bystander.check()
    mark.assert_back(what="the workers")


@pytest.mark.broker_config(max_connect_size=4096, connect_timeout=60)
def test_connect_declared_over_max_connect_size_is_closed_from_its_fixed_header(
        broker, bystander):
    """A CONNECT header declaring one byte more than max_connect_size, and
    nothing else: closed without a reply, and the worker says why."""
    closed_before_connect(broker, bytes([0x10]) + m.enc_varint(4096 - 3 + 1),
                          "CONNECT declared larger than 4096 bytes (max_connect_size)")
    bystander.check()


@pytest.mark.broker_config(max_connect_size=4096)
def test_connect_of_exactly_max_connect_size_is_accepted_one_byte_more_is_closed(
        broker, bystander):
    """max_connect_size counts the whole CONNECT, fixed header included, and
    bounds the CONNECT only: a PUBLISH twice that size follows it."""
    with raw(broker, connect=False) as c:
        c.send(m.connect_of_size(4096, uid("edge")))
        assert c.expect(m.CONNACK).rc == 0
        c.publish("by/after-connect", b"p" * 8192, qos=1, pid=1)
        for s in bystander.subs:
            p = s.recv_publish(timeout=T(5))
            assert (p.topic, len(p.payload)) == ("by/after-connect", 8192)
        c.disconnect()
    closed_without_reply_to(broker, m.connect_of_size(4097, uid("over")), connect=False)
    bystander.check()


@pytest.mark.broker_config(max_packet_size=2048, max_connect_size=65536)
def test_max_packet_size_bounds_a_connect_when_it_is_the_lower(broker, bystander):
    with raw(broker, connect=False) as c:
        c.send(m.connect_of_size(2048, uid("mps")))
        assert c.expect(m.CONNACK).rc == 0
        c.disconnect()
    closed_before_connect(broker, bytes([0x10]) + m.enc_varint(2048 - 3 + 1),
                          "CONNECT declared larger than 2048 bytes (max_packet_size)")
    bystander.check()


@pytest.mark.iotd_only
@pytest.mark.parametrize("bound", [None, 64], ids=["default-1024", "configured-64"])
def test_client_id_over_max_client_id_length_gets_connack_2(start_broker, bound):
    broker = start_broker(max_client_id_length=bound)
    longest = bound or 1024
    with raw(broker, ("L" + uid("id")).ljust(longest, "x")) as c:
        ack = c.connack
        assert (ack.session_present, ack.rc) == (False, 0)
        c.ping()
        c.disconnect()
    with raw(broker, connect=False) as c:
        c.send(m.connect(("L" + uid("id")).ljust(longest + 1, "x")))
        refused_with(c, 2)
