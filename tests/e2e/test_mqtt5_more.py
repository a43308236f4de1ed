"""MQTT 5 beyond the basics of test_mqtt5.py: shared subscriptions with
MQTT 5 members, subscription identifiers, the server's topic aliases and
the end of a QoS 2 exchange by a PUBREC of failure."""

import pytest

import mqttraw as m
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from helpers import T, PahoClient, raw, raw_on, uid, wait_for
from test_crash_router import kill_router
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


# ------------------------------------------------------------ subscription identifiers

def sub_ids(p):
    return sorted(v for k, v in p.props if k == m.P_SUB_ID)


def subscribe_with_id(c, filt, options, sub_id, pid):
    props = [(m.P_SUB_ID, sub_id)] if sub_id else []
    assert subscribe5(c, [(filt, options)], pid=pid, props=props) == [options & 3]


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("qos", [0, 1])
def test_a_delivery_carries_the_identifiers_of_every_subscription_it_matched(
        start_broker, clients, workers, qos):
    b = start_broker(workers=workers)
    c = clients.own(raw5(b, tag="sid"))
    subscribe_with_id(c, "si/#", 1, 5, 1)
    subscribe_with_id(c, "si/+", 1, 268435455, 2)
    subscribe_with_id(c, "si/x", 1, 0, 3)
    pub = clients.own(raw5(b, tag="sidp"))
    for round_ in range(2):       # the second time, a local route may have been cached
        for pid, (topic, want) in enumerate([("si/x", [5, 268435455]), ("si/y/z", [5])], 1):
            pub.send(m.publish_v5(topic, f"{topic}-{round_}", qos=qos, pid=pid if qos else None,
                                  props=[USER]))
            if qos:
                pub.expect(m.PUBACK, pid=pid)
            got = m.v5(c.recv_publish())
            assert (got.topic, got.payload) == (topic, f"{topic}-{round_}".encode()), \
                "one delivery per message, however many subscriptions it matched"
            assert sub_ids(got) == want, f"{topic}: {got.props!r}"
            assert USER in got.props


def test_retained_message_on_subscribe_carries_that_subscriptions_identifier(broker, clients):
    clients.own(raw(broker)).publish("sir/t", b"kept", qos=1, retain=True)
    c = clients.own(raw5(broker))
    subscribe_with_id(c, "sir/#", 1, 42, 1)
    got = m.v5(c.recv_publish())
    assert (got.payload, got.retain, sub_ids(got)) == (b"kept", True, [42])


def test_shared_subscription_identifier_reaches_its_member(broker, clients):
    c = clients.own(raw5(broker))
    subscribe_with_id(c, "$share/g/sis/#", 1, 9, 1)
    clients.own(raw(broker)).publish("sis/t", b"one", qos=1)
    got = m.v5(c.recv_publish())
    assert (got.payload, sub_ids(got)) == (b"one", [9])


def test_paho_sees_the_subscription_identifier(broker, clients):
    sub = PahoClient(broker.port, uid("psid"), v5=True)
    sub.connect()
    try:
        props = Properties(PacketTypes.SUBSCRIBE)
        props.SubscriptionIdentifier = 77
        assert sub.subscribe("psid/#", qos=1, properties=props) == [1]
        clients.own(raw(broker)).publish("psid/t", b"x", qos=1)
        msg = sub.wait_messages(1)[0]
        assert msg.properties.SubscriptionIdentifier == [77]
    finally:
        sub.disconnect()


@pytest.mark.iotd_only
def test_subscription_identifier_survives_a_router_crash(broker, clients):
    """The store keeps a subscription's identifier (format 6)."""
    c = clients.own(raw5(broker, cid=uid("sidcrash"), clean=False))
    subscribe_with_id(c, "sic/#", 1, 1234, 1)
    kill_router(broker)
    clients.own(raw(broker, tag="sicp")).publish("sic/t", b"after", qos=1)
    got = m.v5(c.recv_publish())
    assert (got.payload, sub_ids(got)) == (b"after", [1234])


def test_subscription_identifier_0_is_a_protocol_error(broker, clients):
    c = clients.own(raw5(broker))
    c.send(m.subscribe_v5(1, [("sid0/t", 0)], props=[(m.P_SUB_ID, 0)]))
    expect_disconnect(c, 0x82)


# ------------------------------------------------------------ topic aliases from the server

def alias_of(p):
    return p.propd.get(m.P_TOPIC_ALIAS)


def publish_each(pub, topics, qos=0):
    for i, topic in enumerate(topics, 1):
        pub.send(m.publish(topic, topic, qos=qos, pid=i if qos else None))
        if qos:
            pub.expect(m.PUBACK, pid=i)


def test_the_first_topics_sent_get_aliases_used_alone_later(broker, clients):
    c = clients.own(raw5(broker, props=[(m.P_TOPIC_ALIAS_MAX, 2)]))
    assert subscribe5(c, [("ta/#", 1)]) == [1]
    topics = ["ta/a", "ta/a", "ta/b", "ta/c", "ta/b", "ta/c", "ta/a"]
    publish_each(clients.own(raw(broker, tag="tap")), topics)
    got = [m.v5(p) for p in c.recv_publishes(len(topics))]
    assert [(p.topic, alias_of(p), p.payload) for p in got] == [
        ("ta/a", 1, b"ta/a"),       # sets alias 1
        ("", 1, b"ta/a"),           # the alias alone
        ("ta/b", 2, b"ta/b"),       # sets alias 2: the client's maximum reached
        ("ta/c", None, b"ta/c"),    # no alias left: the topic in full
        ("", 2, b"ta/b"),
        ("ta/c", None, b"ta/c"),
        ("", 1, b"ta/a"),
    ]


def test_no_alias_for_a_client_that_allows_none(broker, clients):
    c = clients.own(raw5(broker))
    assert subscribe5(c, [("tn/#", 0)]) == [0]
    publish_each(clients.own(raw(broker, tag="tnp")), ["tn/a"] * 3)
    got = [m.v5(p) for p in c.recv_publishes(3)]
    assert [(p.topic, alias_of(p)) for p in got] == [("tn/a", None)] * 3


@pytest.mark.broker_config(topic_alias_maximum_out=0)
def test_topic_alias_maximum_out_0_sets_none(broker, clients):
    c = clients.own(raw5(broker, props=[(m.P_TOPIC_ALIAS_MAX, 5)]))
    assert subscribe5(c, [("t0/#", 0)]) == [0]
    publish_each(clients.own(raw(broker, tag="t0p")), ["t0/a"] * 3)
    got = [m.v5(p) for p in c.recv_publishes(3)]
    assert [(p.topic, alias_of(p)) for p in got] == [("t0/a", None)] * 3


def test_a_message_resent_with_dup_carries_its_topic(broker, clients):
    """Aliases last as long as their connection [MQTT-3.3.2-7]: what is
    resent to the next one names its topic again."""
    cid = uid("tadup")
    # A session that outlives its connection: MQTT 5's default expiry is 0.
    props = [(m.P_TOPIC_ALIAS_MAX, 5), (m.P_SESSION_EXPIRY, 60)]
    c = raw5(broker, cid=cid, clean=False, props=props)
    try:
        assert subscribe5(c, [("td/#", 1)]) == [1]
        publish_each(clients.own(raw(broker, tag="tdp")), ["td/x", "td/x"], qos=1)
        first = [m.v5(p) for p in c.recv_publishes(2, ack=False)]
        assert [(p.topic, alias_of(p)) for p in first] == [("td/x", 1), ("", 1)]
    finally:
        c.close()
    again = clients.own(raw5(broker, cid=cid, clean=False, props=props))
    resent = [m.v5(p) for p in again.recv_publishes(2)]
    assert [(p.topic, p.dup, p.payload) for p in resent] == [("td/x", True, b"td/x")] * 2
    for p in resent:
        assert alias_of(p) in (None, 1), "an alias the new connection never set"


# ------------------------------------------------------------ QoS 2 refused, problem information

def test_a_pubrec_of_failure_ends_the_qos2_exchange(broker, clients):
    """No PUBREL after a PUBREC >= 0x80 [MQTT-4.3.3]: the next message,
    held back by the client's receive maximum of 1, comes instead."""
    s = clients.own(raw5(broker, props=[(m.P_RECEIVE_MAX, 1)]))
    assert subscribe5(s, [("prf/#", 2)]) == [2]
    p = clients.own(raw(broker, tag="prfp"))
    p.publish("prf/x", b"refused", qos=2)
    p.publish("prf/y", b"next", qos=2)
    got = m.v5(s.recv_publish(ack=False))
    assert (got.topic, got.qos) == ("prf/x", 2)
    s.send(m.ack_v5(m.PUBREC, got.pid, 0x80))
    nxt = m.v5(s.recv_packet(5, what="the next PUBLISH"))
    assert nxt.type == m.PUBLISH, f"expected the next PUBLISH, got {nxt!r}"
    assert nxt.topic == "prf/y"


def test_request_problem_information_0_gets_no_reason_string(broker, clients):
    """iotd sends no reason string nor user property: with Request Problem
    Information 0 none may come but in CONNACK and DISCONNECT [MQTT-3.1.2-29]."""
    c = clients.own(raw5(broker, props=[(0x17, 0)]))
    bad = [(m.P_PAYLOAD_FORMAT, 1)]
    c.send(m.publish_v5("rpi/bad", b"\xff", qos=1, pid=3, props=bad))
    ack = m.v5(c.expect(m.PUBACK, pid=3))
    assert (ack.reason, ack.props) == (0x99, [])
    assert subscribe5(c, [("rpi/#/x", 0)], pid=4) == [0x8F]
    c.send(m.unsubscribe_v5(5, ["rpi/never"]))
    assert m.v5(c.expect(m.UNSUBACK, pid=5)).props == []
