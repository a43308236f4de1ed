"""What anonymous clients can make the router hold: sessions
(max_sessions), filters per session (max_subscriptions_per_session), and
queued messages, per session (max_queued_bytes, 16 MiB by default) and
for all sessions together (max_queued_bytes_total), a message queued for
many sessions being held once. Each bound is asserted exactly with real
clients, then changed by a reload (SIGHUP) and asserted again; what was
held before a lowered limit stays.

Messages are queued by the router after the publisher's PUBACK, so before
a session resumes, a clean witness subscribed to the same topic must have
received the last message: the router handled every one before it."""

import pytest

from helpers import T, offline_session, raw, resumed, uid

pytestmark = pytest.mark.iotd_only


def refused_unavailable(broker, cid, clean=False):
    """A CONNECT answered CONNACK 3 (server unavailable), then closed."""
    with raw(broker, cid, clean=clean, expect_rc=3) as c:
        c.expect_closed(T(5))


def persistent_subscribers(broker, n, topic, tag):
    """n persistent sessions subscribed to topic at QoS 1, left offline."""
    ids = [uid(tag) for _ in range(n)]
    for cid in ids:
        offline_session(broker, cid, [(topic, 1)])
    return ids


def publish_seen(broker, topic, payloads):
    """Publish each payload at QoS 1 and return once a clean witness
    subscribed to the topic got the last one (the router routed them all).
    At QoS 1, which its worker does not drop for a reader behind."""
    witness = raw(broker, uid("witness"))
    pub = raw(broker, uid("pub"))
    try:
        witness.subscribe([(topic, 1)])
        for i, payload in enumerate(payloads):
            pub.publish(topic, payload, qos=1, pid=i % 65535 + 1)
        got = witness.recv_publishes(len(payloads), timeout=T(20))
        assert got[-1].payload == payloads[-1]
    finally:
        pub.disconnect()
        witness.disconnect()


def resume_and_drain(broker, cid, n):
    """Resume a stored session: exactly n messages come (acknowledged), no more."""
    with raw(broker, cid, clean=False) as c:
        assert c.connack.session_present is True
        got = [p.payload for p in c.recv_publishes(n, timeout=T(20))]
        c.expect_no_packet(0.3)
        c.disconnect()
        return got


# --- max_sessions ------------------------------------------------------------


@pytest.mark.broker_config(max_connections=4, max_sessions=4)
def test_max_sessions_refuses_new_sessions_and_lets_stored_ones_back(broker):
    pids = sorted(broker.pids())
    ids = [uid("sess") for _ in range(4)]
    for cid in ids:
        raw(broker, cid, clean=False).disconnect()

    # Four offline sessions fill the router: a client needing a new one is
    # refused, persistent, clean or server-named alike.
    refused_unavailable(broker, uid("new"))
    refused_unavailable(broker, uid("new"), clean=True)
    refused_unavailable(broker, "", clean=True)
    assert broker.log.count("max_sessions (4) reached") == 1, broker.log_tail()

    # A stored session resumes; a second connection takes it over.
    first = raw(broker, ids[0], clean=False)
    second = resumed(broker, ids[0])
    first.expect_closed(T(5))
    first.close()
    second.disconnect()

    # Raised by a reload: one more session fits, then no more.
    broker.reload(max_sessions=5)
    extra = uid("extra")
    raw(broker, extra, clean=False).disconnect()
    refused_unavailable(broker, uid("new"))

    # Lowered below what is held: nothing is dropped, every session resumes.
    broker.reload(max_sessions=4)
    for cid in ids + [extra]:
        c = resumed(broker, cid, cid)
        c.disconnect()
    refused_unavailable(broker, uid("new"))
    assert sorted(broker.pids()) == pids


def test_max_sessions_below_max_connections_is_refused_by_a_reload(broker):
    broker.reload(expect="reload failed", max_connections=20, max_sessions=10)
    assert "max_sessions (10) is below max_connections (20)" in broker.log


# --- max_subscriptions_per_session ---------------------------------------------


@pytest.mark.broker_config(max_subscriptions_per_session=3)
def test_max_subscriptions_per_session_refuses_new_filters_only(broker, bystander):
    c = raw(broker, uid("subs"))
    c.subscribe([("s/1", 1), ("s/2", 1), ("s/3", 1), ("s/4", 1), ("s/5", 0)],
                expect_codes=[1, 1, 1, 0x80, 0x80])
    # A filter held may always be subscribed again: its QoS is replaced.
    c.subscribe([("s/1", 0)], pid=2)
    # Another session has its own count.
    other = raw(broker, uid("subs"))
    other.subscribe([("s/4", 1), ("s/5", 1), ("s/6", 1)], pid=3)
    pub = raw(broker, uid("spub"))
    pub.publish("s/4", b"refused filter", qos=1, pid=1)
    pub.publish("s/1", b"held filter", qos=1, pid=2)
    p = c.recv_publish(T(5))
    assert (p.topic, p.payload, p.qos) == ("s/1", b"held filter", 0)
    c.expect_no_packet(0.3)
    assert other.recv_publish(T(5)).payload == b"refused filter"
    assert broker.log.count("max_subscriptions_per_session (3) reached") == 1, broker.log_tail()

    # Raised by a reload: one more new filter fits.
    broker.reload(max_subscriptions_per_session=4)
    c.subscribe([("s/4", 1), ("s/5", 1)], pid=4, expect_codes=[1, 0x80])
    pub.publish("s/4", b"now held", qos=1, pid=3)
    assert c.recv_publish(T(5)).payload == b"now held"
    # Lowered: every filter held stays in force, a new one is refused.
    broker.reload(max_subscriptions_per_session=2)
    c.subscribe([("s/6", 1)], pid=5, expect_codes=[0x80])
    pub.publish("s/2", b"still held", qos=1, pid=4)
    assert c.recv_publish(T(5)).payload == b"still held"
    for x in (c, other, pub):
        x.disconnect()
    bystander.check()


# --- queued bytes ------------------------------------------------------------


@pytest.mark.broker_config(max_queued_bytes_total=1 << 20)
def test_a_message_queued_for_many_sessions_is_held_once_within_the_total_budget(
        broker, bystander):
    # 20 sessions and 20 messages of 64 KiB: held once each, a message costs
    # the budget 65540 bytes (topic and payload) plus 64 per session, so 15
    # fit in 1 MiB. Copied per session, not even one would.
    ids = persistent_subscribers(broker, 20, "qb/t", "qb")
    payloads = [bytes([i]) * 65536 for i in range(20)]
    publish_seen(broker, "qb/t", payloads)
    for cid in ids:
        assert resume_and_drain(broker, cid, 15) == payloads[:15], cid
    assert broker.log.count("max_queued_bytes_total (1048576) reached") == 1, broker.log_tail()

    # Raised by a reload: all 20 fit for every session.
    broker.reload(max_queued_bytes_total=2 << 20)
    publish_seen(broker, "qb/t", payloads)
    for cid in ids:
        assert resume_and_drain(broker, cid, 20) == payloads, cid
    bystander.check()


# 18 MB at QoS 1 to the live witness and back to the resumed session cross
# each connection's own bound (max_inflight_bytes, 16 MiB by default, tested
# on its own in test_client_bounds.py): raised, so that only the session
# queue's cap is under test.
@pytest.mark.broker_config(max_inflight_bytes=64 << 20)
def test_a_session_queues_16_mib_by_default(broker, bystander):
    # A topic of 4 bytes and payloads of 1,000,000: 16 fit in 16 MiB, not 17.
    [cid] = persistent_subscribers(broker, 1, "dq/t", "dq")
    payloads = [bytes([i]) * 1000000 for i in range(18)]
    publish_seen(broker, "dq/t", payloads)
    assert resume_and_drain(broker, cid, 16) == payloads[:16]
    assert "offline queue full (16 messages, 16000064 bytes)" in broker.log

    # 0 lifts the byte cap (a reload): all 18 are queued.
    broker.reload(max_queued_bytes=0)
    publish_seen(broker, "dq/t", payloads)
    assert resume_and_drain(broker, cid, 18) == payloads
    bystander.check()
