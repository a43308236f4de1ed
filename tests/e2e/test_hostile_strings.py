"""Ill-formed UTF-8 strings [MQTT-1.5.3-1, -2] and string lengths that run
past the end of the packet, in every string a client sends: client id,
will topic, user name, PUBLISH topic, SUBSCRIBE and UNSUBSCRIBE filters.
Each closes the connection without a reply (no CONNACK, PUBACK, SUBACK or
UNSUBACK), nothing is delivered (the bad topics start with "by/", which the
bystander subscribes to), and no daemon process dies."""

import struct

import pytest

import mqttraw as m
from helpers import T, closed_without_reply, closed_without_reply_to, raw, uid

BAD_UTF8 = [
    pytest.param(b"\xff", id="byte-ff"),
    pytest.param(b"\x80", id="lone-continuation"),
    pytest.param(b"\xe2\x82", id="truncated-sequence"),
    pytest.param(b"a\x00b", id="U+0000"),
    pytest.param(b"\xed\xa0\x80", id="surrogate-D800"),
    pytest.param(b"\xed\xbf\xbf", id="surrogate-DFFF"),
    pytest.param(b"\xc0\xaf", id="overlong-2"),
    pytest.param(b"\xe0\x80\xaf", id="overlong-3"),
    pytest.param(b"\xf0\x80\x80\xaf", id="overlong-4"),
    pytest.param(b"\xf4\x90\x80\x80", id="above-U+10FFFF"),
]


def connect_body(flags, payload, keepalive=60):
    return m.enc_str("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive) + payload


def past_end(prefix_len_field=100, data=b"abc"):
    """A length prefix larger than the bytes that follow it in the packet."""
    return struct.pack("!H", prefix_len_field) + data


@pytest.mark.parametrize("bad", BAD_UTF8)
@pytest.mark.parametrize("field", ["client-id", "will-topic", "username"])
def test_bad_utf8_in_connect_closes_without_connack(broker, bystander, field, bad):
    if field == "client-id":
        pkt = m.connect(b"id-" + bad)
    elif field == "will-topic":
        pkt = m.connect(uid("wt"), will=(b"by/" + bad, b"x", 0, False))
    else:
        pkt = m.connect(uid("un"), username=b"user-" + bad)
    closed_without_reply_to(broker, pkt, connect=False)
    bystander.check()


@pytest.mark.parametrize("bad", BAD_UTF8)
@pytest.mark.parametrize("qos", [0, 1])
def test_bad_utf8_in_publish_topic_closes_and_is_not_delivered(broker, bystander, bad, qos):
    leak = m.publish(b"by/" + bad, b"leak", qos=qos, pid=1 if qos else None)
    closed_without_reply_to(broker, leak, cid=uid("pub"))
    bystander.check()


@pytest.mark.parametrize("bad", BAD_UTF8)
@pytest.mark.parametrize("kind", ["subscribe", "unsubscribe"])
def test_bad_utf8_in_filter_closes_without_ack(broker, bystander, bad, kind):
    with raw(broker, uid("sub")) as c:
        if kind == "subscribe":
            c.send(m.subscribe(1, [("ok/#", 0), (b"by/" + bad, 0)]))
        else:
            c.send(m.unsubscribe(1, ["ok/#", b"by/" + bad]))
        closed_without_reply(c)
    bystander.check()


def test_well_formed_multibyte_utf8_is_accepted_and_delivered(broker, bystander):
    """The control: 2-, 3- and 4-byte characters and U+FEFF (never stripped
    [MQTT-1.5.3-3]) pass in every field."""
    topic = "by/\u00e9/\u65e5\u672c/\U0001F600/\ufeff"
    with raw(broker, connect=False) as c:
        c.connect("id-\u00e9\u65e5\U0001F600", username="us\u00e9r\ufeff",
                  will=("wt/\U0001F600", b"x", 0, False))
        c.subscribe([("\u65e5/+/\U0001F600", 1)])
        c.unsubscribe(["\u65e5/+/\U0001F600"])
        c.publish(topic, b"utf8", qos=1, pid=2)
        for s in bystander.subs:
            p = s.recv_publish(timeout=T(5))
            assert (p.topic_bytes, p.payload) == (topic.encode(), b"utf8")
        c.disconnect()
    bystander.check()


# --- lengths past the end of the packet

CID = m.enc_str("past-end")

PAST_END_CONNECT = [
    pytest.param(connect_body(0x02, past_end()), id="client-id"),
    pytest.param(connect_body(0x06, CID + past_end()), id="will-topic"),
    pytest.param(connect_body(0x06, CID + m.enc_str("by/w") + past_end()), id="will-payload"),
    pytest.param(connect_body(0x82, CID + past_end()), id="username"),
    pytest.param(connect_body(0xC2, CID + m.enc_str("u") + past_end()), id="password"),
    pytest.param(connect_body(0x02, CID + m.enc_str("trailing")), id="trailing-string"),
    pytest.param(m.enc_str("MQTT") + bytes([4, 0x02]), id="no-keepalive"),
    pytest.param(past_end(100, b"MQ"), id="protocol-name"),
]


@pytest.mark.parametrize("body", PAST_END_CONNECT)
def test_connect_string_past_packet_end_closes_without_connack(broker, bystander, body):
    closed_without_reply_to(broker, m.packet(m.CONNECT, 0, body), connect=False)
    bystander.check()


PAST_END_AFTER_CONNECT = [
    pytest.param(m.packet(m.PUBLISH, 0, past_end(100, b"by/x")), id="publish-topic"),
    pytest.param(m.packet(m.PUBLISH, 2, past_end(100, b"by/x")), id="publish-qos1-topic"),
    pytest.param(m.packet(m.PUBLISH, 2, m.enc_str("by/x") + b"\x00"), id="publish-half-packet-id"),
    pytest.param(m.packet(m.SUBSCRIBE, 2, b"\x00\x01" + past_end(100, b"by/#")),
                 id="subscribe-filter"),
    pytest.param(m.packet(m.SUBSCRIBE, 2, b"\x00\x01" + m.enc_str("by/#")),
                 id="subscribe-missing-qos"),
    pytest.param(m.packet(m.SUBSCRIBE, 2, b"\x00\x01" + m.enc_str("a") + b"\x00" + b"\x00"),
                 id="subscribe-second-filter-truncated"),
    pytest.param(m.packet(m.UNSUBSCRIBE, 2, b"\x00\x01" + past_end(100, b"by/#")),
                 id="unsubscribe-filter"),
    pytest.param(m.packet(m.SUBSCRIBE, 2, b"\x00"), id="subscribe-half-packet-id"),
]


@pytest.mark.parametrize("pkt", PAST_END_AFTER_CONNECT)
def test_string_past_packet_end_after_connect_closes(broker, bystander, pkt):
    closed_without_reply_to(broker, pkt, cid=uid("past"))
    bystander.check()
