"""Topic wildcards through the broker: the MQTT 3.1.1 section 4.7 examples,
'$' topics, and wildcards or emptiness where a topic name is required."""

import mqttraw as m
from helpers import T, raw, uid

# filter -> topics published below that it must match (all others must not).
TOPICS = [
    "sport/tennis/player1",
    "sport/tennis/player1/ranking",
    "sport/tennis/player1/score/wimbledon",
    "sport/tennis/player2",
    "sport",
    "sport/",
    "/finance",
    "finance",
    "sport/tennis",
    "sport/badminton/player1",
]
MATCHES = {
    "sport/tennis/player1/#": {"sport/tennis/player1", "sport/tennis/player1/ranking",
                               "sport/tennis/player1/score/wimbledon"},
    "sport/#": {"sport", "sport/", "sport/tennis", "sport/tennis/player1",
                "sport/tennis/player1/ranking", "sport/tennis/player1/score/wimbledon",
                "sport/tennis/player2", "sport/badminton/player1"},
    "#": set(TOPICS),
    "sport/tennis/+": {"sport/tennis/player1", "sport/tennis/player2"},
    "sport/+": {"sport/", "sport/tennis"},
    "+/+": {"/finance", "sport/", "sport/tennis"},
    "/+": {"/finance"},
    "+": {"finance", "sport"},
    "+/tennis/#": {"sport/tennis", "sport/tennis/player1", "sport/tennis/player1/ranking",
                   "sport/tennis/player1/score/wimbledon", "sport/tennis/player2"},
    "sport/+/player1": {"sport/tennis/player1", "sport/badminton/player1"},
    "sport/tennis/player1": {"sport/tennis/player1"},
}


def test_wildcard_filters_match_per_spec_examples(broker, clients):
    subs = {}
    for i, flt in enumerate(MATCHES):
        c = clients.raw(broker, uid(f"wc{i}"))
        c.subscribe([(flt, 0)])
        subs[flt] = c
    pub = clients.raw(broker, uid("wcpub"))
    broker.assert_spread(pub, *subs.values())
    for t in TOPICS:
        pub.publish(t, t.encode(), qos=1, pid=1)
    # Each subscriber gets exactly its expected count, then nothing more.
    failures = []
    for flt, c in subs.items():
        got = set()
        for p in c.recv_publishes(len(MATCHES[flt]), timeout=T(5)):
            assert p.payload == p.topic_bytes
            got.add(p.topic)
        c.expect_no_packet(0.2)
        if got != MATCHES[flt]:
            failures.append(f"{flt!r}: extra {sorted(got - MATCHES[flt])}, "
                            f"missing {sorted(MATCHES[flt] - got)}")
    assert not failures, "wrong matches:\n" + "\n".join(failures)


def test_dollar_topics_not_matched_by_leading_wildcards(broker, clients):
    hash_sub = clients.raw(broker, uid("dhash"))
    plus_sub = clients.raw(broker, uid("dplus"))
    dollar_sub = clients.raw(broker, uid("dfoo"))
    pub = clients.raw(broker, uid("dpub"))
    hash_sub.subscribe([("#", 1)])
    plus_sub.subscribe([("+/bar", 1), ("+/x", 1)])
    dollar_sub.subscribe([("$foo/#", 1)])
    broker.assert_spread(hash_sub, plus_sub, dollar_sub, pub)
    pub.publish("$foo/bar", b"dollar", qos=1, pid=1)
    pub.publish("$SYS/x", b"sys", qos=1, pid=2)
    p = dollar_sub.recv_publish()
    assert (p.topic, p.payload) == ("$foo/bar", b"dollar")
    dollar_sub.expect_no_packet(0.3)
    # Then an ordinary topic both wildcard subscribers match: it must be
    # the first thing they see.
    pub.publish("foo/bar", b"plain", qos=1, pid=3)
    for c in (hash_sub, plus_sub):
        p = c.recv_publish()
        assert p.topic == "foo/bar", f"a '$' topic matched a leading wildcard: {p!r}"
        c.expect_no_packet(0.3)


def test_publish_with_wildcard_in_topic_name_disconnects_publisher(broker, clients):
    sub = clients.raw(broker, uid("wsub"))
    sub.subscribe([("#", 0)])
    for topic in ("a/+", "a/#", "+", "#", "a/b+c"):
        pub = raw(broker, uid("wpub"))
        broker.assert_different_workers(sub, pub)
        pub.send(m.publish(topic, b"bad", qos=0))
        pub.expect_closed(T(5))
        pub.close()
    sub.expect_no_packet(0.5)
    sub.ping()


def test_publish_with_wildcard_at_qos1_gets_no_puback_and_disconnects(broker, clients):
    sub = clients.raw(broker, uid("wsub1"))
    pub = clients.raw(broker, uid("wpub1"))
    sub.subscribe([("#", 1)])
    pub.send(m.publish("x/+/y", b"bad", qos=1, pid=3))
    got = pub.expect_closed(T(5))
    assert not any(p.type == m.PUBACK for p in got), f"PUBACK for a wildcard topic: {got!r}"
    sub.expect_no_packet(0.5)


def test_publish_with_empty_topic_disconnects_publisher(broker, clients):
    sub = clients.raw(broker, uid("esub"))
    pub = clients.raw(broker, uid("epub"))
    sub.subscribe([("#", 0), ("+", 0)])
    pub.send(m.publish("", b"empty", qos=0))
    pub.expect_closed(T(5))
    sub.expect_no_packet(0.5)
