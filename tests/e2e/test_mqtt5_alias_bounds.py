"""MQTT 5 topic aliases within server.topic_alias_max_bytes, both ways: a
client whose aliases would hold more topic bytes than that gets DISCONNECT
0x97 and its worker holds no more than the bound meanwhile, other clients
served throughout; iotd gives a subscriber no new alias past the bound and
sends those topics in full."""

import pytest

import mqttraw as m
from helpers import T, PeakPss, close_all, raw, uid
from test_mqtt5 import expect_disconnect, raw5, subscribe5
from test_mqtt5_more import alias_of, publish_each

LONG = 60000                 # bytes in each long topic
IN_BOUND = 1 << 20           # topic_alias_max_bytes of the client side test
IN_FIT = IN_BOUND // LONG    # long-topic aliases one client may hold (17)
HOGS = 12


def long_topic(prefix, i, n=LONG):
    head = f"{prefix}/{i}/"
    return head + "x" * (n - len(head))


def again_topic(i):
    return long_topic("abin", i)


def fill_aliases(c, i):
    """Aliases 1..IN_FIT set to long topics, alias 1 set again to
    again_topic(i) (as long: the bytes held stay the same), then used alone."""
    for a in range(1, IN_FIT + 1):
        c.send(m.publish_v5(long_topic(f"abhog{i}", a), b"set", props=[(m.P_TOPIC_ALIAS, a)]))
    c.send(m.publish_v5(again_topic(i), b"again", props=[(m.P_TOPIC_ALIAS, 1)]))
    c.send(m.publish_v5("", b"alone", qos=1, pid=1, props=[(m.P_TOPIC_ALIAS, 1)]))
    c.expect(m.PUBACK, pid=1)


@pytest.mark.broker_config(topic_alias_maximum=1000, topic_alias_max_bytes=IN_BOUND)
def test_client_aliases_past_their_bytes_get_0x97_and_the_worker_stays_bounded(
        broker, clients, bystander):
    """Each client may make its worker hold IN_BOUND bytes of aliased topics,
    not topic_alias_maximum x 64 KiB: the alias that would pass it is refused
    with Quota exceeded (the client kept the protocol, the bound is iotd's)."""
    sub = clients.own(raw(broker, tag="absub"))
    sub.subscribe([("abin/#", 0)])
    workers = broker.worker_pids()
    base = broker.pss_kb(workers)
    peak = PeakPss(workers)
    hogs = []
    try:
        for i in range(HOGS):
            c = raw5(broker, tag=f"abhog{i}")
            hogs.append(c)
            fill_aliases(c, i)
        got = sub.recv_publishes(2 * HOGS, timeout=T(10))
        assert sorted((p.topic, p.payload) for p in got) == sorted(
            (again_topic(i), payload) for i in range(HOGS) for payload in (b"again", b"alone"))
        for i, c in enumerate(hogs):
            c.send(m.publish_v5(long_topic(f"abhog{i}", IN_FIT + 1), b"past",
                                props=[(m.P_TOPIC_ALIAS, IN_FIT + 1)]))
            expect_disconnect(c, 0x97)
        grown = peak.finish() - base
    finally:
        peak.finish()
        close_all(hogs)
    assert "server.topic_alias_max_bytes" in broker.log
    if not broker.instrumented:
        # Without the bound they could hold 1000 aliases x 60 kB each.
        bound_kb = (2 * HOGS * IN_BOUND + (4 << 20)) // 1024
        assert grown <= bound_kb, f"workers grew by {grown} kB (bound {bound_kb} kB)"
    bystander.check()
    # A client setting aliases within the bound is served as before.
    c = clients.own(raw5(broker, tag="abok"))
    c.send(m.publish_v5("abin/ok", b"1", props=[(m.P_TOPIC_ALIAS, 1)]))
    c.send(m.publish_v5("", b"2", props=[(m.P_TOPIC_ALIAS, 1)]))
    assert [(p.topic, p.payload) for p in sub.recv_publishes(2)] == \
        [("abin/ok", b"1"), ("abin/ok", b"2")]


@pytest.mark.broker_config(topic_alias_max_bytes=100)
def test_one_client_alias_longer_than_the_bound_is_0x97(broker, clients):
    c = clients.own(raw5(broker))
    c.send(m.publish_v5("ab1/" + "z" * 96, b"fits", props=[(m.P_TOPIC_ALIAS, 1)]))
    c.send(m.publish_v5("", b"used", qos=1, pid=3, props=[(m.P_TOPIC_ALIAS, 1)]))
    c.expect(m.PUBACK, pid=3)
    c.send(m.publish_v5("ab1/x", b"past", props=[(m.P_TOPIC_ALIAS, 2)]))
    expect_disconnect(c, 0x97)


OUT_LONG = 3000


@pytest.mark.broker_config(topic_alias_maximum_out=100, topic_alias_max_bytes=10000)
def test_iotd_gives_no_alias_past_the_bytes_and_sends_topics_in_full(broker, clients):
    c = clients.own(raw5(broker, props=[(m.P_TOPIC_ALIAS_MAX, 100)]))
    assert subscribe5(c, [("abo/#", 0)]) == [0]
    t = [long_topic("abo", i, OUT_LONG) for i in range(40)]
    # Three long topics fit 10,000 bytes, a fourth does not; a short one still does.
    topics = t[:5] + [t[0], t[3], "abo/s", "abo/s"] + t[5:] + t[:5]
    publish_each(clients.own(raw(broker, tag="abop")), topics)
    got = [m.v5(p) for p in c.recv_publishes(len(topics), timeout=T(10))]
    assert [p.payload.decode() for p in got] == topics, "a message lost or out of order"
    seen = [(p.topic, alias_of(p)) for p in got]
    assert seen[:9] == [(t[0], 1), (t[1], 2), (t[2], 3), (t[3], None), (t[4], None),
                        ("", 1), (t[3], None), ("abo/s", 4), ("", 4)]
    assert seen[9:44] == [(x, None) for x in t[5:]]
    assert seen[44:] == [("", 1), ("", 2), ("", 3), (t[3], None), (t[4], None)]
    c.send(m.disconnect_v5())
    c.expect_closed()


def test_default_bound_lets_a_long_topic_take_an_alias(broker, clients):
    """topic_alias_max_bytes (64 KiB by default) takes any one topic."""
    c = clients.own(raw5(broker))
    sub = clients.own(raw(broker, tag="abdsub"))
    sub.subscribe([("abd/#", 0)])
    topic = long_topic("abd", uid(), 65535)
    c.send(m.publish_v5(topic, b"1", props=[(m.P_TOPIC_ALIAS, 1)]))
    c.send(m.publish_v5("", b"2", props=[(m.P_TOPIC_ALIAS, 1)]))
    assert [(p.topic, p.payload) for p in sub.recv_publishes(2)] == [(topic, b"1"), (topic, b"2")]
