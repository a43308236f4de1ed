"""Retained messages: delivery on subscribe, the retain flag, clearing,
replacement and the retained_message_limit."""

import pytest

from helpers import uid


@pytest.mark.parametrize("flt", ["ret/a/b", "ret/+/b", "ret/#", "#"])
def test_retained_message_delivered_on_subscribe_with_retain_flag(broker, clients, flt):
    pub = clients.raw(broker, uid("rpub"))
    pub.publish("ret/a/b", b"kept", qos=1, retain=True, pid=1)
    pub.publish("ret/other", b"live-only", qos=1, retain=False, pid=2)
    sub = clients.raw(broker, uid("rsub"))
    broker.assert_different_workers(sub, pub)
    sub.subscribe([(flt, 1)])
    p = sub.recv_publish()
    assert (p.topic, p.payload, p.retain) == ("ret/a/b", b"kept", True), repr(p)
    assert p.qos == 1
    sub.expect_no_packet(0.3)


def test_live_delivery_of_retained_publish_has_retain_0(broker, clients):
    sub, pub = clients.sub_and_pub(broker, "l", [("live/t", 1)])
    pub.publish("live/t", b"now", qos=1, retain=True, pid=1)
    p = sub.recv_publish()
    assert p.payload == b"now"
    assert p.retain is False, "a message delivered to an existing subscription must have retain 0"
    # ...but it was stored: a new subscriber gets it with retain 1.
    late = clients.raw(broker, uid("llate"))
    late.subscribe([("live/t", 1)])
    p = late.recv_publish()
    assert (p.payload, p.retain) == (b"now", True)


def test_empty_retained_publish_clears_retained_message(broker, clients):
    pub = clients.raw(broker, uid("cpub"))
    pub.publish("clr/t", b"old", qos=1, retain=True, pid=1)
    pub.publish("clr/t", b"", qos=1, retain=True, pid=2)
    pub.publish("clr/marker", b"m", qos=1, retain=True, pid=3)
    sub = clients.raw(broker, uid("csub"))
    sub.subscribe([("clr/#", 1)])
    p = sub.recv_publish()
    assert p.topic == "clr/marker", f"cleared retained message still delivered: {p!r}"
    sub.expect_no_packet(0.5)


def test_newer_retained_message_replaces_older(broker, clients):
    pub = clients.raw(broker, uid("npub"))
    pub.publish("new/t", b"v1", qos=1, retain=True, pid=1)
    pub.publish("new/t", b"v2", qos=0, retain=True)
    pub.publish("new/t", b"v3", qos=1, retain=True, pid=2)
    sub = clients.raw(broker, uid("nsub"))
    broker.assert_different_workers(sub, pub)
    sub.subscribe([("new/t", 1)])
    p = sub.recv_publish()
    assert (p.payload, p.retain, p.qos) == (b"v3", True, 1)
    sub.expect_no_packet(0.5)


@pytest.mark.broker_config(retained_message_limit=3)
def test_retained_message_limit_stores_no_more_distinct_topics(broker, clients):
    sub, pub = clients.sub_and_pub(broker, "lm", [("lim/#", 1)])
    for i in range(4):
        pub.publish(f"lim/{i}", f"r{i}".encode(), qos=1, retain=True, pid=i + 1)
    # All four are delivered live, the fourth included.
    assert sorted(p.topic for p in sub.recv_publishes(4)) == [f"lim/{i}" for i in range(4)]
    # Replacing a stored topic is still allowed at the limit.
    pub.publish("lim/0", b"r0b", qos=1, retain=True, pid=9)
    assert sub.recv_publish().payload == b"r0b"
    late = clients.raw(broker, uid("lmlate"))
    late.subscribe([("lim/#", 1)])
    got = {p.topic: p.payload for p in late.recv_publishes(3)}
    late.expect_no_packet(0.5)
    assert got == {"lim/0": b"r0b", "lim/1": b"r1", "lim/2": b"r2"}, \
        f"retained store beyond the limit of 3: {got}"
