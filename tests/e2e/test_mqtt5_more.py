"""MQTT 5 beyond the basics of test_mqtt5.py: shared subscriptions with
MQTT 5 members, subscription identifiers, the server's topic aliases and
the end of a QoS 2 exchange by a PUBREC of failure."""

import pytest

import mqttraw as m
from helpers import T, raw, raw_on, uid, wait_for
from test_mqtt5 import NO_LOCAL, expect_disconnect, raw5, subscribe5
from test_shared_subs import RawMember

USER = (m.P_USER_PROPERTY, (b"k", b"v"))
CTYPE = (m.P_CONTENT_TYPE, b"text/x")


def puback_each(i, p):
    return m.puback(p.pid) if p.qos == 1 else None


# ------------------------------------------------------------ shared subscriptions

@pytest.mark.iotd_only
def test_v5_and_311_members_share_one_group_across_workers(broker, clients):
    s5 = clients.own(raw5(broker, tag="sh5"))
    s3 = clients.own(raw_on(broker, avoid=broker.worker_of(s5), tag="sh3"))
    assert subscribe5(s5, [("$share/g5/sh/#", 1)]) == [1]
    s3.subscribe([("$share/g5/sh/#", 1)])
    a, b = RawMember(s5, puback_each), RawMember(s3, puback_each)
    try:
        pub = clients.own(raw5(broker, tag="shp"))
        sent = [f"m{i}".encode() for i in range(40)]
        for i, payload in enumerate(sent):
            pub.send(m.publish_v5("sh/t", payload, qos=1, pid=i + 1, props=[CTYPE, USER]))
            pub.expect(m.PUBACK, pid=i + 1)
        wait_for(lambda: len(a.got) + len(b.got) >= len(sent), T(10),
                 "the group to get every message")
        with a.cond, b.cond:
            got5 = [m.v5(p) for p in a.got]
            got3 = list(b.got)
        assert sorted([p.payload for p in got5] + [p.payload for p in got3]) == sorted(sent)
        assert got5 and got3, f"one member got nothing: {len(got5)} and {len(got3)}"
        for p in got5:
            assert p.props == [CTYPE, USER], f"properties lost on the way: {p.props!r}"
    finally:
        a.stop.set()
        b.stop.set()


def test_connack_says_shared_subscriptions_are_available(broker, clients):
    c = clients.own(raw5(broker))
    assert m.P_SHARED_AVAILABLE not in c.connack.propd


def test_no_local_on_a_shared_subscription_is_a_protocol_error(broker, clients):
    c = clients.own(raw5(broker))
    assert subscribe5(c, [("$share/g/ok", 1)]) == [1]
    c.send(m.subscribe_v5(2, [("$share/g/nl", 1 | NO_LOCAL)]))
    expect_disconnect(c, 0x82)
