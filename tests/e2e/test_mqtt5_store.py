"""MQTT 5 messages kept for later: the properties and message expiry of a
message queued for an offline session, of a retained message, across a
router crash and a daemon restart with the disk store; retain as
published for queued messages; the subscription identifiers of queued
and resent messages, through the same."""

import os
import signal
import time

import pytest

import mqttraw as m
from helpers import T, offline_session, raw, resumed, uid, wait_for
from test_crash_router import disk_env, kill_router
from test_mqtt5 import RAP, raw5, subscribe5
from test_mqtt5_more import sub_ids, subscribe_with_id

pytestmark = pytest.mark.iotd_only

PROPS = [(m.P_CONTENT_TYPE, b"text/plain"), (m.P_USER_PROPERTY, (b"k", b"v1")),
         (m.P_USER_PROPERTY, (b"a", b"v2"))]
KEEP = [(m.P_SESSION_EXPIRY, 300)]     # a session that outlives its connection


def leave(c, props=()):
    """A normal DISCONNECT (with props), and the connection closed."""
    c.send(m.disconnect_v5(0, props=props))
    c.expect_closed()
    c.close()


def offline_v5(broker, cid, filters, expiry=300):
    """An MQTT 5 session for cid with that session expiry interval,
    subscribed to filters (filter, options), left offline by a normal
    DISCONNECT."""
    c = raw5(broker, cid=cid, clean=False, props=[(m.P_SESSION_EXPIRY, expiry)])
    assert subscribe5(c, filters) == [o & 3 for _, o in filters]
    leave(c)


def resumed_v5(broker, cid):
    c = raw5(broker, cid=cid, clean=False, props=KEEP)
    assert c.connack.body[0] & 1, "the session was not kept"
    return c


def publish5(broker, topic, payload, props=(), qos=1, retain=False):
    """One MQTT 5 PUBLISH from a connection of its own, acknowledged."""
    p = raw5(broker, tag="pub5")
    try:
        p.send(m.publish_v5(topic, payload, qos=qos, retain=retain, pid=1, props=props))
        if qos == 1:
            p.expect(m.PUBACK, pid=1)
        elif qos == 2:
            p.expect(m.PUBREC, pid=1)
            p.send(m.pubrel(1))
            p.expect(m.PUBCOMP, pid=1)
    finally:
        p.disconnect()


def expiry_left(props):
    """The message expiry interval a PUBLISH says is left, and the other properties."""
    left = [v for k, v in props if k == m.P_MESSAGE_EXPIRY]
    return (left[0] if left else None), [(k, v) for k, v in props if k != m.P_MESSAGE_EXPIRY]


def test_queued_message_keeps_its_properties_and_its_expiry_counts_down(broker, clients):
    cid = uid("q5")
    offline_v5(broker, cid, [("q5/#", 1)])
    before = broker.log.count("queued new message")
    publish5(broker, "q5/a", b"kept", PROPS + [(m.P_MESSAGE_EXPIRY, 60)])
    publish5(broker, "q5/b", b"expires", [(m.P_MESSAGE_EXPIRY, 1)])
    publish5(broker, "q5/c", b"marker")
    wait_for(lambda: broker.log.count("queued new message") >= before + 3, T(5),
             "the router to queue the three messages")
    # The second one's second must pass while it is queued: nothing to wait for but time.
    time.sleep(1.2)
    c = clients.own(resumed_v5(broker, cid))
    got = [m.v5(p) for p in c.recv_publishes(2)]
    assert [(p.topic, p.payload) for p in got] == [("q5/a", b"kept"), ("q5/c", b"marker")]
    left, rest = expiry_left(got[0].props)
    assert left is not None and left <= 59, f"interval left {left}: it did not count down"
    assert rest == PROPS
    assert got[1].props == []
    c.expect_no_packet(0.3)


def test_a_311_session_gets_a_queued_v5_message_without_properties(broker, clients):
    cid = uid("q3")
    offline_session(broker, cid, [("q3/#", 1)])
    publish5(broker, "q3/a", b"plain", PROPS + [(m.P_MESSAGE_EXPIRY, 60)])
    c = clients.own(resumed(broker, cid))
    p = c.recv_publish()
    assert (p.topic, p.payload) == ("q3/a", b"plain")


def test_retain_as_published_applies_to_queued_messages(broker, clients):
    keep, plain = uid("rapq"), uid("norapq")
    offline_v5(broker, keep, [("rapq/#", 1 | RAP)])
    offline_v5(broker, plain, [("rapq/#", 1)])
    publish5(broker, "rapq/t", b"r", retain=True)
    publish5(broker, "rapq/t", b"n")
    k = clients.own(resumed_v5(broker, keep))
    assert [(p.payload, p.retain) for p in map(m.v5, k.recv_publishes(2))] == \
        [(b"r", True), (b"n", False)]
    p = clients.own(resumed_v5(broker, plain))
    assert [(x.payload, x.retain) for x in map(m.v5, p.recv_publishes(2))] == \
        [(b"r", False), (b"n", False)]


def test_retained_message_keeps_its_properties_until_it_expires(broker, clients):
    publish5(broker, "ret5x/t", b"brief", PROPS + [(m.P_MESSAGE_EXPIRY, 2)], retain=True)
    s = clients.own(raw5(broker, tag="rs1"))
    assert subscribe5(s, [("ret5x/#", 1)]) == [1]
    got = m.v5(s.recv_publish())
    left, rest = expiry_left(got.props)
    assert (got.payload, got.retain) == (b"brief", True)
    assert left in (1, 2) and rest == PROPS
    # The router's sweep removes it once its expiry passed, and it is sent no more.
    wait_for(lambda: "retained message on 'ret5x/t' expired" in broker.log, T(5),
             "the retained message to expire")
    late = clients.own(raw5(broker, tag="rs2"))
    assert subscribe5(late, [("ret5x/#", 1)]) == [1]
    late.expect_no_packet(0.5)


def test_properties_of_kept_messages_survive_a_router_crash(broker, clients):
    cid = uid("qcr")
    offline_v5(broker, cid, [("qcr/#", 1)])
    publish5(broker, "qcr/q", b"queued", PROPS + [(m.P_MESSAGE_EXPIRY, 300)])
    publish5(broker, "qcr/r", b"retained", PROPS, retain=True)
    kill_router(broker)
    c = clients.own(resumed_v5(broker, cid))
    got = m.v5(c.recv_publish())
    left, rest = expiry_left(got.props)
    assert (got.topic, got.payload, rest) == ("qcr/q", b"queued", PROPS)
    assert left is not None and left <= 300
    # The retained one reached the session queued; a new subscriber gets it from the store.
    assert m.v5(c.recv_publish()).payload == b"retained"
    s = clients.own(raw5(broker, tag="qcrs"))
    assert subscribe5(s, [("qcr/r", 1)]) == [1]
    got = m.v5(s.recv_publish())
    assert (got.payload, got.retain, got.props) == (b"retained", True, PROPS)


def test_properties_of_kept_messages_survive_a_daemon_restart_on_disk(start_broker,
                                                                        store_parent):
    env = disk_env(os.path.join(store_parent, "store"))
    b = start_broker(env=env)
    cid = uid("qdisk")
    offline_v5(b, cid, [("qdisk/q", 1)])
    publish5(b, "qdisk/q", b"queued", PROPS + [(m.P_MESSAGE_EXPIRY, 300)])
    publish5(b, "qdisk/r", b"retained", PROPS + [(m.P_MESSAGE_EXPIRY, 300)], retain=True)
    b.stop(signal.SIGTERM)

    b2 = start_broker(env=env)
    c = resumed_v5(b2, cid)
    got = m.v5(c.recv_publish(timeout=T(5)))
    left, rest = expiry_left(got.props)
    assert (got.payload, rest) == (b"queued", PROPS) and 0 < left <= 300
    s = raw5(b2, tag="qdisks")
    assert subscribe5(s, [("qdisk/r", 1)]) == [1]
    got = m.v5(s.recv_publish(timeout=T(5)))
    left, rest = expiry_left(got.props)
    assert (got.payload, got.retain, rest) == (b"retained", True, PROPS) and 0 < left <= 300
    for x in (c, s):
        x.disconnect()


# ------------------------------------------------------------ subscription identifiers

def subscribed_with_ids(broker, cid, filters):
    """An MQTT 5 session for cid that outlives its connection, subscribed
    to each (filter, QoS, identifier) of filters; its connection."""
    c = raw5(broker, cid=cid, clean=False, props=KEEP)
    for pid, (filt, qos, sub_id) in enumerate(filters, 1):
        subscribe_with_id(c, filt, qos, sub_id, pid)
    return c


def ids_of(publishes):
    return [(p.topic, p.payload, sub_ids(p)) for p in publishes]


def test_queued_messages_carry_the_identifiers_of_their_subscriptions(broker, clients):
    cid = uid("qid")
    leave(subscribed_with_ids(broker, cid, [("qid/#", 1, 5), ("qid/+", 1, 268435455),
                                            ("qid/plain/#", 1, 0)]))
    publish5(broker, "qid/x", b"both", PROPS)
    publish5(broker, "qid/y/z", b"one")
    publish5(broker, "qid/plain/t", b"no id of its own")
    c = clients.own(resumed_v5(broker, cid))
    got = [m.v5(p) for p in c.recv_publishes(3)]
    assert ids_of(got) == [("qid/x", b"both", [5, 268435455]), ("qid/y/z", b"one", [5]),
                           ("qid/plain/t", b"no id of its own", [5])]
    assert [(k, v) for k, v in got[0].props if k != m.P_SUB_ID] == PROPS
    c.expect_no_packet(0.3)


def inflight_unacked(broker, cid, topic):
    """A QoS 1 and a QoS 2 message on topic sent to cid's connection,
    subscribed with identifiers 7 and 8, and not acknowledged; the
    connection."""
    c = subscribed_with_ids(broker, cid, [(f"{topic}/#", 2, 7), (f"{topic}/+", 2, 8)])
    publish5(broker, f"{topic}/one", b"q1", qos=1)
    publish5(broker, f"{topic}/two", b"q2", qos=2)
    got = [m.v5(p) for p in c.recv_publishes(2, ack=False)]
    assert [(p.payload, p.qos, p.dup, sub_ids(p)) for p in got] == \
        [(b"q1", 1, False, [7, 8]), (b"q2", 2, False, [7, 8])]
    return c, [p.pid for p in got]


def assert_resent(c, pids, topic):
    got = [m.v5(p) for p in c.recv_publishes(2)]
    assert [(p.topic, p.pid, p.qos, p.dup, sub_ids(p)) for p in got] == \
        [(f"{topic}/one", pids[0], 1, True, [7, 8]), (f"{topic}/two", pids[1], 2, True, [7, 8])]


@pytest.mark.parametrize("crash", [False, True], ids=["reconnect", "router-crash"])
def test_messages_in_flight_are_resent_with_dup_and_their_identifiers(broker, clients, crash):
    cid, topic = uid("fid"), uid("fidt")
    c, pids = inflight_unacked(broker, cid, topic)
    if crash:
        kill_router(broker)     # the new router knows them from the store alone
    c.close()                   # no DISCONNECT, no acknowledgement
    assert_resent(clients.own(resumed_v5(broker, cid)), pids, topic)


def test_queued_message_identifiers_survive_a_router_crash(broker, clients):
    cid = uid("qidc")
    leave(subscribed_with_ids(broker, cid, [("qidc/#", 1, 40), ("qidc/+", 1, 41)]))
    publish5(broker, "qidc/t", b"queued")
    kill_router(broker)
    c = clients.own(resumed_v5(broker, cid))
    assert ids_of([m.v5(c.recv_publish())]) == [("qidc/t", b"queued", [40, 41])]


def test_identifiers_of_kept_messages_survive_a_daemon_restart_on_disk(start_broker,
                                                                        store_parent):
    env = disk_env(os.path.join(store_parent, "store"))
    b = start_broker(env=env)
    cid, topic = uid("diskid"), uid("diskt")
    c, pids = inflight_unacked(b, cid, topic)
    c.close()
    wait_for(lambda: any("session offline" in line and f"client_id={cid}" in line
                         for line in b.log.splitlines()), T(5), "the session to go offline")
    publish5(b, f"{topic}/late", b"queued", qos=1)
    b.stop(signal.SIGTERM)

    b2 = start_broker(env=env)
    c = resumed_v5(b2, cid)
    try:
        assert_resent(c, pids, topic)
        got = m.v5(c.recv_publish(timeout=T(5)))
        assert (got.payload, got.dup, sub_ids(got)) == (b"queued", False, [7, 8])
    finally:
        c.disconnect()


def test_shared_subscriptions_queued_message_carries_the_members_identifier(broker, clients):
    """A persistent member offline queues what its group gives it, with its
    own subscription's identifier; an overlapping plain subscription gets
    a delivery of its own, with its identifier."""
    cid = uid("shq")
    leave(subscribed_with_ids(broker, cid, [("$share/gq/shq/#", 1, 11), ("shq/+", 1, 12)]))
    publish5(broker, "shq/t", b"shared")
    c = clients.own(resumed_v5(broker, cid))
    got = [m.v5(p) for p in c.recv_publishes(2)]
    assert sorted(ids_of(got)) == [("shq/t", b"shared", [11]), ("shq/t", b"shared", [12])]


def test_rerouted_shared_message_carries_the_new_members_identifier(broker, clients):
    """A clean member's connection closes with a message unacknowledged:
    the offline persistent member the group gives it to queues it with
    its own identifier, not the first member's."""
    group = f"$share/{uid('gr')}/rr/#"
    keeper = uid("rrk")
    leave(subscribed_with_ids(broker, keeper, [(group, 1, 22)]))
    first = raw5(broker, tag="rrf")
    try:
        subscribe_with_id(first, group, 1, 21, 1)
        publish5(broker, "rr/t", b"moved")
        got = m.v5(first.recv_publish(ack=False))
        assert (got.payload, sub_ids(got)) == (b"moved", [21])
    finally:
        first.close()
    c = clients.own(resumed_v5(broker, keeper))
    got = m.v5(c.recv_publish(timeout=T(5)))
    assert (got.payload, sub_ids(got)) == (b"moved", [22])


# ------------------------------------------------------------ session expiry

def expired(broker, cid):
    return lambda: any("session expired" in line and f"client_id={cid}" in line
                       for line in broker.log.splitlines())


def test_session_expires_after_its_interval(broker, clients):
    cid = uid("sx")
    offline_v5(broker, cid, [("sx/t", 1)], expiry=1)
    wait_for(expired(broker, cid), T(5), "the session to expire")
    again = clients.own(raw5(broker, cid=cid, clean=False, props=KEEP))
    assert not again.connack.body[0] & 1
    clients.own(raw(broker)).publish("sx/t", b"nobody", qos=1)
    again.expect_no_packet(0.3)          # the subscription went with the session


def test_session_resumed_within_its_interval_keeps_its_subscriptions(broker, clients):
    cid = uid("sxk")
    offline_v5(broker, cid, [("sxk/t", 1)], expiry=3)
    again = clients.own(resumed_v5(broker, cid))
    clients.own(raw(broker)).publish("sxk/t", b"kept", qos=1)
    assert m.v5(again.recv_publish()).payload == b"kept"
    assert not expired(broker, cid)()


@pytest.mark.broker_config(max_session_expiry_interval=1)
def test_the_cap_applies_and_connack_says_so(broker, clients):
    cid = uid("sxc")
    c = raw5(broker, cid=cid, clean=False, props=[(m.P_SESSION_EXPIRY, 3600)])
    assert c.connack.propd[m.P_SESSION_EXPIRY] == 1
    leave(c)
    wait_for(expired(broker, cid), T(5), "the capped session to expire")


def test_disconnect_sets_a_shorter_interval(broker, clients):
    cid = uid("sxd")
    c = raw5(broker, cid=cid, clean=False, props=[(m.P_SESSION_EXPIRY, 3600)])
    leave(c, props=[(m.P_SESSION_EXPIRY, 1)])
    wait_for(expired(broker, cid), T(5), "the session to expire at DISCONNECT's interval")


# ------------------------------------------------------------ wills

WILL_PROPS = [(m.P_CONTENT_TYPE, b"text/plain"), (m.P_USER_PROPERTY, (b"why", b"gone"))]
P_WILL_DELAY = 0x18


def will_watcher(broker, clients, topic):
    s = clients.own(raw5(broker, tag="ww"))
    assert subscribe5(s, [(topic, 1)]) == [1]
    return s


def client_with_will(broker, topic, expiry, delay=0, props=WILL_PROPS, cid=None):
    wp = list(props) + ([(P_WILL_DELAY, delay)] if delay else [])
    return raw5(broker, cid=cid or uid("wl"), clean=False,
                props=[(m.P_SESSION_EXPIRY, expiry)],
                will=(topic, b"gone", 1, False), will_props=wp)


def test_will_carries_its_properties(broker, clients):
    s = will_watcher(broker, clients, "wp/#")
    c = client_with_will(broker, "wp/t", 0, props=WILL_PROPS + [(m.P_MESSAGE_EXPIRY, 60)])
    c.close()                                   # no DISCONNECT: the will goes
    got = m.v5(s.recv_publish())
    left, rest = expiry_left(got.props)
    assert (got.topic, got.payload, rest) == ("wp/t", b"gone", WILL_PROPS)
    assert left is not None and left <= 60


def will_after_close(broker, clients, topic, expiry, delay):
    """A client with a will on topic closes without DISCONNECT: the will
    as a watcher got it, and the seconds it took."""
    s = will_watcher(broker, clients, topic)
    c = client_with_will(broker, topic, expiry, delay=delay)
    closed = time.monotonic()
    c.close()
    got = m.v5(s.recv_publish(timeout=T(6)))
    return got, time.monotonic() - closed


def test_will_delay_holds_the_will_until_it_passes(broker, clients):
    got, took = will_after_close(broker, clients, "wd/t", 60, 2)
    assert took >= 1.8, "the will did not wait for its delay"
    assert (got.topic, got.payload, got.props) == ("wd/t", b"gone", WILL_PROPS)


def test_will_delay_cancelled_by_a_resume_within_it(broker, clients):
    s = will_watcher(broker, clients, "wr/#")
    cid = uid("wr")
    c = client_with_will(broker, "wr/t", 60, delay=2, cid=cid)
    c.close()
    clients.own(raw5(broker, cid=cid, clean=False, props=KEEP))
    wait_for(lambda: "delayed will on 'wr/t' cancelled" in broker.log, T(5),
             "the resume to cancel the will")
    s.expect_no_packet(2.5)                     # past the delay: nothing


def test_will_goes_when_the_session_ends_before_its_delay(broker, clients):
    got, took = will_after_close(broker, clients, "we/t", 1, 30)
    assert got.payload == b"gone" and took < 10


def test_held_will_survives_a_router_crash(broker, clients):
    s = will_watcher(broker, clients, "wc/#")
    c = client_with_will(broker, "wc/t", 60, delay=2)
    c.close()
    wait_for(lambda: "will on 'wc/t' held" in broker.log, T(5), "the will to be held")
    kill_router(broker)
    got = m.v5(s.recv_publish(timeout=T(8)))
    assert (got.topic, got.props) == ("wc/t", WILL_PROPS)
