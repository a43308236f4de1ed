"""MQTT 5 clients (Paho MQTT 5 publish/subscribe across two workers is in
test_pubsub.py): CONNACK and what it advertises, publish/subscribe with 3.1.1
clients (Paho, mosquitto_pub/sub, raw), topic aliases,
the limits iotd gives (receive maximum, maximum packet size) and the one the
client gives, reason codes in acknowledgements, and the DISCONNECT reason
codes of both sides."""

import pytest

import mqttraw as m
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from authfiles import auth_dir  # noqa: F401
from helpers import CliPub, CliSub, raw, raw_on, uid
from test_acl import acl_broker
from test_crash_router import kill_router


def raw5(target, cid=None, props=(), expect_reason=0, tag="v5", **kw):
    """A raw client that sent an MQTT 5 CONNECT and got its CONNACK
    (parsed: .connack.reason, .connack.propd)."""
    c = raw(target, connect=False)
    try:
        c.send(m.connect_v5(uid(tag) if cid is None else cid, props=props, **kw))
        c.connack = m.v5(c.expect(m.CONNACK))
        assert c.connack.reason == expect_reason, \
            f"CONNACK reason {c.connack.reason:#x}, expected {expect_reason:#x}"
    except BaseException:
        c.close()
        raise
    return c


def subscribe5(c, filters, pid=1, props=()):
    """SUBSCRIBE (filters: (filter, options)) and its SUBACK's codes."""
    c.send(m.subscribe_v5(pid, filters, props))
    return m.v5(c.expect(m.SUBACK, pid=pid)).codes


def subscribers_5_and_311(broker, clients, filt, qos):
    """An MQTT 5 and a 3.1.1 raw subscriber to filt at qos."""
    s5 = clients.own(raw5(broker, tag="s5"))
    assert subscribe5(s5, [(filt, qos)]) == [qos]
    s3 = clients.own(raw(broker, tag="s3"))
    s3.subscribe([(filt, qos)])
    return s5, s3


def expect_disconnect(c, reason):
    p = m.v5(c.expect(m.DISCONNECT))
    assert p.reason == reason, f"DISCONNECT reason {p.reason:#x}, expected {reason:#x}"
    c.expect_closed()


# ------------------------------------------------------------ CONNECT / CONNACK

@pytest.mark.broker_config(max_inflight=7, max_packet_size=4096)
def test_connack_advertises_what_iotd_supports(broker, clients):
    c = clients.own(raw5(broker, cid=""))
    props = c.connack.propd
    assert props[m.P_RECEIVE_MAX] == 7
    assert props[m.P_MAX_PACKET_SIZE] == 4096
    assert props[m.P_TOPIC_ALIAS_MAX] == 10
    assert props[m.P_RETAIN_AVAILABLE] == 1
    assert props[m.P_WILDCARD_AVAILABLE] == 1
    assert m.P_SUB_ID_AVAILABLE not in props       # available
    assert m.P_SHARED_AVAILABLE not in props     # available
    assert props[m.P_ASSIGNED_CLIENT_ID].startswith(b"iotd-")
    assert m.P_SERVER_KEEP_ALIVE not in props        # its keep-alive (60) is kept
    # Clean Start with no session expiry asked: none granted, none said.
    assert m.P_SESSION_EXPIRY not in props


@pytest.mark.broker_config(max_session_expiry_interval=20)
def test_client_id_given_is_not_assigned_and_session_expiry_granted(broker, clients):
    c = clients.own(raw5(broker, clean=False, props=[(m.P_SESSION_EXPIRY, 10)]))
    assert m.P_ASSIGNED_CLIENT_ID not in c.connack.propd
    # Granted as asked: nothing to say.
    assert m.P_SESSION_EXPIRY not in c.connack.propd
    # Over max_session_expiry_interval (also "never"): the client is told what it got.
    for asked in (30, 0xFFFFFFFF):
        d = clients.own(raw5(broker, clean=True, props=[(m.P_SESSION_EXPIRY, asked)]))
        assert d.connack.propd[m.P_SESSION_EXPIRY] == 20


@pytest.mark.broker_config(max_keepalive=30, keep_alive_timeout_secs=20)
def test_server_keep_alive_replaces_what_is_over_max_keepalive(broker, clients):
    for asked in (0, 300):
        c = clients.own(raw5(broker, keepalive=asked))
        assert c.connack.propd[m.P_SERVER_KEEP_ALIVE] == 30
    c = clients.own(raw5(broker, keepalive=20))
    assert m.P_SERVER_KEEP_ALIVE not in c.connack.propd


def test_authentication_method_is_refused(broker, clients):
    c = clients.own(raw5(broker, props=[(m.P_AUTH_METHOD, "SCRAM-SHA-1")], expect_reason=0x8C))
    c.expect_closed()


@pytest.mark.broker_config(max_client_id_length=23)
def test_refused_connect_gets_a_v5_reason_code(broker, clients):
    c = clients.own(raw5(broker, cid="x" * 24, expect_reason=0x85))
    assert c.connack.body == b"\x00\x85\x00"      # MQTT 5 form: properties length 0
    c.expect_closed()


# ------------------------------------------------------------ publish / subscribe

@pytest.mark.parametrize("qos", [1, 2])
def test_v5_and_311_clients_share_one_topic_space(broker, clients, qos):
    v5c = clients.paho(broker.port, uid("p5"), v5=True)
    v3c = clients.paho(broker.port, uid("p3"))
    v5c.connect()
    v3c.connect()
    broker.assert_different_workers(v5c, v3c)
    assert v5c.subscribe("mix5/#", qos) == [qos]
    assert v3c.subscribe("mix3/#", qos) == [qos]
    v3c.publish("mix5/x", "from-311", qos, retain=False)
    v5c.publish("mix3/y", "from-5", qos)
    assert [(x.topic, x.payload) for x in v5c.wait_messages(1)] == [("mix5/x", b"from-311")]
    assert [(x.topic, x.payload) for x in v3c.wait_messages(1)] == [("mix3/y", b"from-5")]


def mosquitto_v5_exchange(broker, topic, lines, sub_extra=(), pub_extra=()):
    """mosquitto_pub -V mqttv5 sends lines to topic; the mosquitto_sub -V
    mqttv5 on it (subscribed first, QoS 1) is returned, stopped."""
    sub = CliSub(broker.port, topic, 1, uid("c5sub"), extra=("-V", "mqttv5", *sub_extra))
    pub = None
    try:
        sub.wait_subscribed()
        pub = CliPub(broker.port, topic, 1, uid("c5pub"), extra=("-V", "mqttv5", *pub_extra))
        broker.assert_different_workers(sub, pub)
        for line in lines:
            pub.send_line(line)
        pub.finish()
        sub.wait_line(rf"^MSG 1 0 {topic} {lines[-1]}", 10, "the last message")
    finally:
        sub.stop()
        if pub:
            pub.stop()
    return sub


def test_mosquitto_clients_speak_v5(broker):
    sub = mosquitto_v5_exchange(broker, "cli5/t", [f"m{i}" for i in range(3)])
    assert sub.messages() == [("cli5/t", f"m{i}", 1, 0) for i in range(3)]


def test_retained_message_reaches_a_v5_subscriber(broker, clients):
    p = clients.own(raw(broker))
    p.publish("ret5/a", b"kept", qos=1, retain=True)
    s = clients.own(raw5(broker))
    assert subscribe5(s, [("ret5/#", 1)]) == [1]
    got = m.v5(s.recv_publish())
    assert (got.topic, got.payload, got.retain, got.props) == ("ret5/a", b"kept", True, [])


APP_PROPS = [(m.P_PAYLOAD_FORMAT, 1), (m.P_USER_PROPERTY, (b"k", b"v1")),
             (m.P_CONTENT_TYPE, b"text/plain"), (m.P_USER_PROPERTY, (b"a", b"v2")),
             (m.P_RESPONSE_TOPIC, b"reply/here"), (m.P_CORRELATION_DATA, b"\x00\x01corr"),
             (m.P_USER_PROPERTY, (b"k", b"v3"))]


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_message_properties_reach_v5_subscribers_in_order(broker, clients, qos):
    s5, s3 = subscribers_5_and_311(broker, clients, "props/#", qos)
    p = clients.own(raw_on(broker, avoid=broker.worker_of(s5),
                           make=lambda: raw5(broker, tag="pp5")))
    # What the broker rewrites does not travel: the topic alias stays with the publisher.
    p.send(m.publish_v5("props/t", "hello", qos=qos, pid=7,
                        props=APP_PROPS + [(m.P_TOPIC_ALIAS, 1)]))
    if qos == 1:
        p.expect(m.PUBACK, pid=7)
    got = m.v5(s5.recv_publish())
    assert (got.topic, got.payload, got.props) == ("props/t", b"hello", APP_PROPS)
    plain = s3.recv_publish()
    assert (plain.topic, plain.payload) == ("props/t", b"hello")   # 3.1.1: no properties


def test_message_expiry_interval_left_reaches_v5_subscribers(broker, clients):
    s5, s3 = subscribers_5_and_311(broker, clients, "exp/#", 1)
    p = clients.own(raw5(broker, tag="ep5"))
    p.send(m.publish_v5("exp/t", "soon", qos=1, pid=2,
                        props=[(m.P_MESSAGE_EXPIRY, 60), (m.P_USER_PROPERTY, ("u", "1"))]))
    p.expect(m.PUBACK, pid=2)
    got = m.v5(s5.recv_publish())
    # The interval left (rounded up), written first, then the properties forwarded.
    assert got.props[0][0] == m.P_MESSAGE_EXPIRY and 55 <= got.props[0][1] <= 60
    assert got.props[1:] == [(m.P_USER_PROPERTY, (b"u", b"1"))]
    plain = s3.recv_publish()
    assert (plain.topic, plain.payload) == ("exp/t", b"soon")


def test_paho_v5_user_properties_and_response_topic(broker, clients):
    sub = clients.paho(broker.port, uid("pps"), v5=True)
    pub = clients.paho(broker.port, uid("ppp"), v5=True)
    sub.connect()
    pub.connect()
    assert sub.subscribe("pprops/t", 1) == [1]
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = [("first", "1"), ("second", "2")]
    props.ResponseTopic = "pprops/reply"
    props.CorrelationData = b"id-42"
    props.ContentType = "application/json"
    pub.publish("pprops/t", "{}", 1, properties=props)
    msg = sub.wait_messages(1)[0]
    assert msg.properties.UserProperty == [("first", "1"), ("second", "2")]
    assert msg.properties.ResponseTopic == "pprops/reply"
    assert msg.properties.CorrelationData == b"id-42"
    assert msg.properties.ContentType == "application/json"


def test_mosquitto_sub_v5_prints_user_properties(broker):
    sub = mosquitto_v5_exchange(broker, "mprops/t", ["x"],
                                sub_extra=("-F", "MSG %q %r %t %p %P"),
                                pub_extra=("-D", "publish", "user-property", "key", "val"))
    assert "MSG 1 0 mprops/t x key:val" in sub.lines


# ------------------------------------------------------------ subscription options

NO_LOCAL, RAP = 0x04, 0x08


def rh(n):
    return n << 4


@pytest.mark.parametrize("workers", [1, 2])
def test_no_local_keeps_a_publishers_own_messages_from_it(start_broker, clients, workers):
    b = start_broker(workers=workers)
    c = clients.own(raw5(b, tag="nl"))
    assert subscribe5(c, [("nl/#", 1 | NO_LOCAL), ("nlmark/#", 1)]) == [1, 1]
    other = clients.own(raw(b, tag="nlo"))
    other.subscribe([("nl/#", 1)])
    for _ in range(2):         # the second time, a local route may have been cached
        c.send(m.publish_v5("nl/t", "own", qos=1, pid=3))
        c.expect(m.PUBACK, pid=3)
        assert other.recv_publish().payload == b"own"
    c.send(m.publish_v5("nlmark/t", "marker", qos=1, pid=4))
    c.expect(m.PUBACK, pid=4)
    got = m.v5(c.recv_publish())
    assert (got.topic, got.payload) == ("nlmark/t", b"marker"), f"own message came back: {got!r}"
    other_pub = clients.own(raw(b, tag="nlp"))
    other_pub.publish("nl/t", b"from-other", qos=1)
    assert m.v5(c.recv_publish()).payload == b"from-other"


@pytest.mark.parametrize("workers", [1, 2])
def test_retain_as_published_keeps_the_retain_flag_live(start_broker, clients, workers):
    b = start_broker(workers=workers)
    keep = clients.own(raw5(b, tag="rap"))
    assert subscribe5(keep, [("rap/#", 1 | RAP)]) == [1]
    plain = clients.own(raw5(b, tag="norap"))
    assert subscribe5(plain, [("rap/#", 1)]) == [1]
    p = clients.own(raw(b, tag="rapp"))
    for _ in range(2):
        p.publish("rap/t", b"r", qos=1, retain=True)
        p.publish("rap/t", b"n", qos=1)
        assert [(x.payload, x.retain) for x in map(m.v5, keep.recv_publishes(2))] == \
            [(b"r", True), (b"n", False)]
        assert [(x.payload, x.retain) for x in map(m.v5, plain.recv_publishes(2))] == \
            [(b"r", False), (b"n", False)]


@pytest.mark.iotd_only
def test_subscription_options_survive_a_router_crash(broker, clients):
    """The store keeps a subscription's options (format 5): after the
    router's kill -9 and rebuild, no local and retain as published hold."""
    cid = uid("optcrash")
    c = clients.own(raw5(broker, cid=cid, clean=False))
    assert subscribe5(c, [("oc/#", 1 | NO_LOCAL | RAP), ("ocmark/#", 1)]) == [1, 1]
    kill_router(broker)
    c.send(m.publish_v5("oc/own", "own", qos=1, pid=3))
    c.expect(m.PUBACK, pid=3)
    p = clients.own(raw(broker, tag="ocp"))
    p.publish("oc/t", b"kept", qos=1, retain=True)
    got = m.v5(c.recv_publish())
    assert (got.topic, got.payload, got.retain) == ("oc/t", b"kept", True), \
        f"own message back, or the retain flag lost: {got!r}"


@pytest.mark.parametrize("handling,first,again", [(0, True, True), (1, True, False),
                                                  (2, False, False)])
def test_retain_handling(broker, clients, handling, first, again):
    clients.own(raw(broker)).publish(f"rh{handling}/t", b"kept", qos=1, retain=True)
    c = clients.own(raw5(broker))
    p = clients.own(raw(broker))
    for pid, sent in ((1, first), (2, again)):
        assert subscribe5(c, [(f"rh{handling}/#", 1 | rh(handling))], pid=pid) == [1]
        p.publish(f"rh{handling}/marker", b"marker", qos=1)
        got = [(x.topic, x.payload) for x in map(m.v5, c.recv_publishes(2 if sent else 1))]
        want = ([(f"rh{handling}/t", b"kept")] if sent else []) + \
            [(f"rh{handling}/marker", b"marker")]
        assert got == want


# ------------------------------------------------------------ acknowledgements

def test_unsuback_says_whether_the_subscription_existed(broker, clients):
    c = clients.own(raw5(broker))
    assert subscribe5(c, [("u5/a", 0)]) == [0]
    c.send(m.unsubscribe_v5(2, ["u5/a", "u5/never"]))
    ack = m.v5(c.expect(m.UNSUBACK, pid=2))
    assert ack.codes == [0x00, 0x11]


def test_suback_reason_codes_for_refused_filters(broker, clients):
    c = clients.own(raw5(broker))
    assert subscribe5(c, [("ok5/+", 2), ("$share/g/t", 1), ("bad5/#/x", 0)]) == \
        [2, 1, 0x8F]


def test_payload_not_utf8_as_its_format_says_is_refused_with_0x99(broker, clients):
    s = clients.own(raw(broker))
    s.subscribe([("pfi/#", 1)])
    c = clients.own(raw5(broker))
    bad = [(m.P_PAYLOAD_FORMAT, 1)]
    c.send(m.publish_v5("pfi/bad", b"\xff\xfe", qos=1, pid=3, props=bad))
    assert m.v5(c.expect(m.PUBACK, pid=3)).reason == 0x99
    c.send(m.publish_v5("pfi/bad", b"\xc3", qos=2, pid=4, props=bad))
    assert m.v5(c.expect(m.PUBREC, pid=4)).reason == 0x99
    c.send(m.publish_v5("pfi/ok", "marker", qos=1, pid=5, props=bad))
    assert m.v5(c.expect(m.PUBACK, pid=5)).reason == 0
    p = s.recv_publish()
    assert (p.topic, p.payload) == ("pfi/ok", b"marker")


@pytest.mark.iotd_only
def test_publish_the_acl_refuses_is_acknowledged_with_0x87(start_broker, auth_dir):
    b, _ = acl_broker(start_broker, auth_dir, workers=1)
    s = raw(b, tag="acl5s")
    c = raw(b, connect=False)
    try:
        s.subscribe([("public/#", 1)])
        c.send(m.connect_v5(uid("acl5")))
        assert m.v5(c.expect(m.CONNACK)).reason == 0
        c.send(m.publish_v5("private/t", "no", qos=1, pid=4))
        assert m.v5(c.expect(m.PUBACK, pid=4)).reason == 0x87
        c.send(m.publish_v5("public/marker", "marker", qos=1, pid=5))
        assert m.v5(c.expect(m.PUBACK, pid=5)).reason == 0
        p = s.recv_publish()
        assert (p.topic, p.payload) == ("public/marker", b"marker")
    finally:
        c.close()
        s.close()


# ------------------------------------------------------------ sessions

def test_disconnect_with_session_expiry_0_ends_a_persistent_session(broker, clients):
    cid = uid("se0")
    c = clients.own(raw5(broker, cid=cid, clean=False, props=[(m.P_SESSION_EXPIRY, 60)]))
    assert subscribe5(c, [("se0/t", 1)]) == [1]
    c.send(m.disconnect_v5(0, props=[(m.P_SESSION_EXPIRY, 0)]))
    c.expect_closed()
    again = clients.own(raw5(broker, cid=cid, clean=False))
    assert not again.connack.session_present


def test_disconnect_keeps_a_persistent_session_otherwise(broker, clients):
    cid = uid("se1")
    c = clients.own(raw5(broker, cid=cid, clean=False, props=[(m.P_SESSION_EXPIRY, 60)]))
    assert subscribe5(c, [("se1/t", 1)]) == [1]
    c.send(m.disconnect_v5(0))
    c.expect_closed()
    again = clients.own(raw5(broker, cid=cid, clean=False, props=[(m.P_SESSION_EXPIRY, 60)]))
    assert again.connack.session_present
    clients.own(raw(broker)).publish("se1/t", b"kept", qos=1)
    assert m.v5(again.recv_publish()).payload == b"kept"


def test_unknown_packet_ids_are_answered_0x92(broker, clients):
    c = clients.own(raw5(broker))
    c.send(m.ack_v5(m.PUBREL, 77))
    assert m.v5(c.expect(m.PUBCOMP, pid=77)).reason == 0x92
    c.send(m.ack_v5(m.PUBREC, 78))
    assert m.v5(c.expect(m.PUBREL, pid=78)).reason == 0x92
    # A 3.1.1 client still gets the plain PUBCOMP.
    d = clients.own(raw(broker))
    d.send(m.pubrel(79))
    p = d.expect(m.PUBCOMP, pid=79)
    assert p.body == b"\x00\x4f"


# ------------------------------------------------------------ topic aliases

def test_topic_alias_set_then_used(broker, clients):
    s = clients.own(raw(broker))
    s.subscribe([("al/#", 0)])
    c = clients.own(raw5(broker))
    c.send(m.publish_v5("al/one", "1", props=[(m.P_TOPIC_ALIAS, 3)]))
    c.send(m.publish_v5("", "2", props=[(m.P_TOPIC_ALIAS, 3)]))
    c.send(m.publish_v5("al/two", "3", props=[(m.P_TOPIC_ALIAS, 3)]))     # set again
    c.send(m.publish_v5("", "4", qos=1, pid=9, props=[(m.P_TOPIC_ALIAS, 3)]))
    c.expect(m.PUBACK, pid=9)
    got = [(p.topic, p.payload) for p in s.recv_publishes(4)]
    assert got == [("al/one", b"1"), ("al/one", b"2"), ("al/two", b"3"), ("al/two", b"4")]


@pytest.mark.parametrize("alias,topic", [(11, "al/t"), (2, "")], ids=["over-max", "unknown"])
def test_topic_alias_out_of_range_or_unknown_is_0x94(broker, clients, alias, topic):
    c = clients.own(raw5(broker))
    c.send(m.publish_v5("al/x", "set", props=[(m.P_TOPIC_ALIAS, 1)]))
    c.send(m.publish_v5(topic, "x", props=[(m.P_TOPIC_ALIAS, alias)]))
    expect_disconnect(c, 0x94)


@pytest.mark.broker_config(topic_alias_maximum=0)
def test_topic_alias_maximum_0_allows_none(broker, clients):
    c = clients.own(raw5(broker))
    assert m.P_TOPIC_ALIAS_MAX not in c.connack.propd
    c.send(m.publish_v5("al/x", "x", props=[(m.P_TOPIC_ALIAS, 1)]))
    expect_disconnect(c, 0x94)


# ------------------------------------------------------------ limits, both ways

@pytest.mark.broker_config(max_inflight=2)
def test_receive_maximum_exceeded_by_the_client_is_0x93(broker, clients):
    c = clients.own(raw5(broker))
    assert c.connack.propd[m.P_RECEIVE_MAX] == 2
    for pid in (1, 2):
        c.send(m.publish_v5("rm/t", "x", qos=2, pid=pid))
        c.expect(m.PUBREC, pid=pid)
    c.send(m.publish_v5("rm/t", "x", qos=2, pid=3))
    expect_disconnect(c, 0x93)


def test_the_clients_receive_maximum_bounds_what_is_in_flight_to_it(broker, clients):
    s = clients.own(raw5(broker, props=[(m.P_RECEIVE_MAX, 2)]))
    assert subscribe5(s, [("crm/q1", 1), ("crm/marker", 0)]) == [1, 0]
    p = clients.own(raw(broker))
    for i in range(4):
        p.publish("crm/q1", f"m{i}".encode(), qos=1)
    first = [s.recv_publish(ack=False) for _ in range(2)]
    assert [x.payload[1:] for x in first] == [b"m0", b"m1"]   # past an empty property block
    p.publish("crm/marker", b"marker")
    got = s.recv_publish()
    assert (got.topic, got.payload[1:]) == ("crm/marker", b"marker"), \
        f"a third message in flight past receive maximum 2: {got!r}"
    s.ack(first[0])
    assert s.recv_publish(ack=False).payload[1:] == b"m2"


@pytest.mark.broker_config(max_packet_size=1024)
def test_packet_over_maximum_packet_size_is_0x95(broker, clients):
    c = clients.own(raw5(broker))
    c.send(m.publish_v5("mp/t", b"x" * 1100))
    expect_disconnect(c, 0x95)


@pytest.mark.parametrize("qos", [0, 1])
def test_message_over_the_clients_maximum_packet_size_is_not_sent(broker, clients, qos):
    s = clients.own(raw5(broker, props=[(m.P_MAX_PACKET_SIZE, 100)]))
    assert subscribe5(s, [("cmp/#", qos)]) == [qos]
    p = clients.own(raw(broker))
    p.publish("cmp/big", b"x" * 200, qos=qos)
    p.publish("cmp/small", b"marker", qos=qos)
    got = m.v5(s.recv_publish())
    assert (got.topic, got.payload) == ("cmp/small", b"marker")
    # The QoS 1 exchange of the one left out is over: more flows.
    p.publish("cmp/small", b"again", qos=qos)
    assert m.v5(s.recv_publish()).payload == b"again"


# ------------------------------------------------------------ DISCONNECT

def test_takeover_is_0x8e(broker, clients):
    cid = uid("take")
    a = clients.own(raw5(broker, cid=cid))
    clients.own(raw5(broker, cid=cid))
    expect_disconnect(a, 0x8E)


def test_keep_alive_timeout_is_0x8d(broker, clients):
    c = clients.own(raw5(broker, keepalive=1))
    p = m.v5(c.expect(m.DISCONNECT, timeout=4))
    assert p.reason == 0x8D


@pytest.mark.parametrize("bad", [
    pytest.param(m.connect_v5("again"), id="second-connect"),
    pytest.param(m.publish_v5("pe/t", "x", props=[(m.P_SUB_ID, 1)]), id="sub-id-in-publish"),
    pytest.param(m.packet(m.AUTH, 0, b"\x18\x00"), id="auth"),
])
def test_protocol_error_is_0x82(broker, clients, bad):
    c = clients.own(raw5(broker))
    c.send(bad)
    expect_disconnect(c, 0x82)


def test_malformed_packet_is_0x81(broker, clients):
    c = clients.own(raw5(broker))
    c.send(m.packet(m.PUBLISH, 0, m.enc_bytes("mf/t") + b"\x05\x01\x01"))   # props past the end
    expect_disconnect(c, 0x81)


def test_session_expiry_set_at_disconnect_after_none_is_0x82(broker, clients):
    c = clients.own(raw5(broker))
    c.send(m.disconnect_v5(0, props=[(m.P_SESSION_EXPIRY, 60)]))
    expect_disconnect(c, 0x82)


@pytest.mark.parametrize("reason,will", [(0x00, False), (0x04, True)],
                         ids=["normal", "with-will"])
def test_disconnect_reason_says_whether_the_will_goes(broker, clients, reason, will):
    s = clients.own(raw(broker))
    s.subscribe([("dw/#", 0)])
    c = clients.own(raw5(broker, will=("dw/will", b"gone", 0, False)))
    c.send(m.disconnect_v5(reason))
    c.expect_closed()
    if will:
        p = s.recv_publish()
        assert (p.topic, p.payload) == ("dw/will", b"gone")
    clients.own(raw(broker)).publish("dw/marker", b"marker")
    p = s.recv_publish()
    assert (p.topic, p.payload) == ("dw/marker", b"marker")

