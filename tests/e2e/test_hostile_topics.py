"""Hostile topics and subscriptions: empty and wildcard topic names, '$'
topics, topics and filters of 10,000 levels or 65,535 bytes, the
max_topic_levels and max_topic_length bounds, and SUBSCRIBE/UNSUBSCRIBE
packets with no filter, a requested QoS of 3 or reserved bits in the
requested-QoS byte. Each case asserts the exact reaction (closed without a
reply, or the exact SUBACK codes), that nothing foreign was delivered, and
that a bystander subscribed throughout received every message while no
daemon process died (the `bystander` fixture, conftest.py)."""

import pytest

import mqttraw as m
from helpers import T, closed_without_reply, closed_without_reply_to, raw


def levels(n, word="a"):
    return "/".join([word] * n)


@pytest.fixture
def everything(broker, clients):
    """A client subscribed to '#': sees every non-'$' topic."""
    c = clients.raw(broker, tag="all")
    c.subscribe([("#", 1)])
    return c


# --- topic names ------------------------------------------------------------

@pytest.mark.parametrize("qos", [0, 1, 2])
def test_empty_topic_in_publish_closes(broker, bystander, everything, qos):
    closed_without_reply_to(broker, m.publish("", b"empty", qos=qos, pid=1 if qos else None),
                            tag="empty")
    everything.expect_no_packet(0.3)
    bystander.check()


@pytest.mark.parametrize("topic", ["by/+", "by/#", "by/a+", "by/x#", "by/#/x", "by/+/x",
                                   "+", "#", "+/by", "by/\u00e9+"])
def test_wildcard_in_publish_topic_closes_and_nothing_is_delivered(broker, bystander,
                                                                   everything, topic):
    closed_without_reply_to(broker, m.publish(topic, b"wild", qos=1, pid=1), tag="wild")
    everything.expect_no_packet(0.3)
    bystander.check()


def test_dollar_topics_reach_dollar_filters_only(broker, bystander):
    """A client may publish to "$foo/bar": filters starting with a wildcard
    do not match it [MQTT-4.7.2-1], "$foo/..." filters do. Each subscriber
    also gets a plain "foo/bar" publish, so a miss is not a dead client."""
    match = ["$foo/#", "$foo/+", "$foo/bar", "$foo/bar/#"]
    miss = ["#", "+/bar", "+/+", "+/#"]
    subs = {}
    try:
        for f in match + miss:
            c = raw(broker, tag="dollar")
            c.subscribe([(f, 1)])
            subs[f] = c
        with raw(broker, tag="dpub") as pub:
            broker.assert_spread(pub, *subs.values())
            pub.publish("$foo/bar", b"dollar", qos=1, pid=1)
            pub.publish("foo/bar", b"plain", qos=1, pid=2)
            pub.disconnect()
        for f in match:
            p = subs[f].recv_publish(timeout=T(5))
            assert (p.topic, p.payload) == ("$foo/bar", b"dollar"), f"{f}: {p!r}"
        for f in miss:
            p = subs[f].recv_publish(timeout=T(5))
            assert (p.topic, p.payload) == ("foo/bar", b"plain"), \
                f"{f!r} got {p!r}: a '$' topic reached a leading wildcard"
        for c in subs.values():
            c.expect_no_packet(0.2)
    finally:
        for c in subs.values():
            c.close()
    bystander.check()


@pytest.mark.iotd_only        # max_topic_levels
@pytest.mark.parametrize("topic", [levels(10_000), "/" * 9_999, levels(129)],
                         ids=["10000-levels", "10000-empty-levels", "129-levels"])
def test_topic_over_max_topic_levels_closes_publisher(broker, bystander, everything, topic):
    """Default max_topic_levels = 128."""
    closed_without_reply_to(broker, m.publish(topic, b"deep", qos=1, pid=1), tag="deep")
    everything.expect_no_packet(0.3)
    bystander.check()


@pytest.mark.iotd_only        # max_topic_levels
@pytest.mark.parametrize("flt", [levels(10_000), "/" * 9_999, levels(129), levels(9_999) + "/#",
                                 "+/" * 9_999 + "+"],
                         ids=["10000-levels", "10000-empty-levels", "129-levels",
                              "10000-levels-hash", "10000-plus"])
def test_filter_over_max_topic_levels_gets_0x80(broker, bystander, flt):
    """The deep filter is refused (0x80), the other filter of the same
    SUBSCRIBE granted and working."""
    with raw(broker, tag="deepsub") as c:
        assert c.subscribe([("ok/t", 1), (flt, 1)], expect_codes=False) == [1, 0x80]
        c.publish("ok/t", b"fine", qos=1, pid=7)
        assert c.recv_publish(timeout=T(5)).payload == b"fine"
        c.ping()
        c.disconnect()
    bystander.check()


def test_topic_of_exactly_max_topic_levels_is_delivered(broker, bystander):
    topic = levels(128, "d")
    with raw(broker, tag="s128") as sub, raw(broker, tag="p128") as pub:
        assert sub.subscribe([(topic, 1), (levels(127, "d") + "/#", 1)]) == [1, 1]
        pub.publish(topic, b"128", qos=1, pid=1)
        p = sub.recv_publish(timeout=T(5))
        assert (p.topic, p.payload) == (topic, b"128")
        sub.expect_no_packet(0.2)
    bystander.check()


def test_topic_of_65535_bytes_is_accepted_and_delivered(broker, bystander):
    """With the default max_topic_length (65535) the longest topic the wire
    can carry goes through, to an exact subscriber, live and retained."""
    topic = "long/" + "x" * (65535 - 5)
    with raw(broker, tag="lsub") as sub, raw(broker, tag="lpub") as pub:
        broker.assert_different_workers(sub, pub)
        assert sub.subscribe([(topic, 1)]) == [1]
        pub.publish(topic, b"65535", qos=1, pid=1)
        p = sub.recv_publish(timeout=T(5))
        assert (len(p.topic_bytes), p.topic, p.payload) == (65535, topic, b"65535")
        pub.publish(topic, b"kept", qos=1, retain=True, pid=2)
        assert sub.recv_publish(timeout=T(5)).payload == b"kept"
        with raw(broker, tag="late") as late:
            late.subscribe([(topic, 1)])
            p = late.recv_publish(timeout=T(5))
            assert (p.topic, p.payload, p.retain) == (topic, b"kept", True)
        pub.publish(topic, b"", qos=1, retain=True, pid=3)     # clear it
        sub.recv_publish(timeout=T(5))
    bystander.check()


@pytest.mark.broker_config(max_topic_length=1024)
def test_max_topic_length_bounds_topics_and_filters(broker, bystander, everything):
    ok, over = "t/" + "x" * 1022, "t/" + "x" * 1023
    with raw(broker, tag="lensub") as sub:
        assert sub.subscribe([(ok, 1), (over, 1), ("t/+", 1)], expect_codes=False) == [1, 0x80, 1]
        with raw(broker, tag="lenpub") as pub:
            pub.publish(ok, b"1024", qos=1, pid=1)
            got = sub.recv_publish(timeout=T(5))
            assert (got.topic, got.payload) == (ok, b"1024")
            assert everything.recv_publish(timeout=T(5)).topic == ok
            sub.expect_no_packet(0.1)     # one copy for two matching filters
            pub.send(m.publish(over, b"1025", qos=1, pid=2))
            closed_without_reply(pub)
        sub.expect_no_packet(0.3)
    everything.expect_no_packet(0.1)
    bystander.check()


# --- SUBSCRIBE / UNSUBSCRIBE ------------------------------------------------

def sub_body(pid, entries):
    return pid.to_bytes(2, "big") + b"".join(m.enc_str(f) + bytes([q]) for f, q in entries)


@pytest.mark.parametrize("pkt", [
    pytest.param(m.packet(m.SUBSCRIBE, 2, b"\x00\x01"), id="subscribe-no-filter"),
    pytest.param(m.packet(m.UNSUBSCRIBE, 2, b"\x00\x01"), id="unsubscribe-no-filter"),
    pytest.param(m.packet(m.SUBSCRIBE, 2, b""), id="subscribe-empty"),
    pytest.param(m.packet(m.UNSUBSCRIBE, 2, b""), id="unsubscribe-empty"),
    pytest.param(m.packet(m.SUBSCRIBE, 2, sub_body(0, [("a", 0)])), id="subscribe-packet-id-0"),
    pytest.param(m.packet(m.UNSUBSCRIBE, 2, b"\x00\x00" + m.enc_str("a")),
                 id="unsubscribe-packet-id-0"),
])
def test_subscribe_without_filters_or_id_closes(broker, bystander, pkt):
    closed_without_reply_to(broker, pkt, tag="nosub")
    bystander.check()


@pytest.mark.parametrize("q", [3, 0x04, 0x80, 0x81, 0xFC, 0x41, 0xFF],
                         ids=lambda q: f"{q:#04x}")
@pytest.mark.parametrize("position", ["only", "second"])
def test_subscribe_bad_requested_qos_byte_closes(broker, bystander, everything, q, position):
    """QoS 3, or any reserved bit set in the requested-QoS byte
    [MQTT-3.8.3-4]: the whole SUBSCRIBE is malformed, no SUBACK, nothing
    subscribed."""
    entries = [("by/#", q)] if position == "only" else [("by/#", 1), ("by/x", q)]
    closed_without_reply_to(broker, m.packet(m.SUBSCRIBE, 2, sub_body(1, entries)), tag="qbyte")
    everything.expect_no_packet(0.1)
    bystander.check()
