"""Shared subscriptions, "$share/{group}/{filter}", for MQTT 3.1.1 clients.

Each message a group's filter matches goes to one member of the group (the
sessions holding that same subscription, on either worker), besides every
plain subscriber and every other group. The members take turns
(server.shared_subscription_policy "round_robin"), or each publisher
sticks to one member ("hash_publisher"). A QoS 1/2 message a clean
member's connection had not finished when it closed (or its worker died)
goes to another member; one a member sent PUBREC for is delivered and goes
nowhere else. No retained message comes on a shared subscribe.

Members are Paho, mosquitto_sub and raw clients (a raw client decides
exactly which messages it acknowledges before it leaves). Members of one
group connect one after another, so that the listener places them on
different workers (asserted)."""

import os
import signal
import threading

import pytest

import mqttraw as m
from helpers import (T, CliSub, PahoClient, mosquitto_pub_once, raw, resumed, uid,
                     wait_for)
from test_crash_router import kill_router
from test_crash_worker import paho_on

pytestmark = pytest.mark.iotd_only

MAX_INFLIGHT = 20            # server.max_inflight's default: the router's view of a window


def paho(broker, tag, **kw):
    c = PahoClient(broker.port, uid(tag), **kw)
    c.connect()
    return c


def publish_all(pub, topic, payloads, qos):
    """Publish each payload, then wait for every PUBACK / PUBCOMP."""
    infos = [pub.publish(topic, p, qos=qos, wait=False) for p in payloads]
    for p, info in zip(payloads, infos):
        info.wait_for_publish(T(20))
        assert info.is_published(), f"{p} was never acknowledged"


def got(c):
    """Payloads a PahoClient or CliSub received, in order."""
    if isinstance(c, CliSub):
        return [p for _, p, _, _ in c.messages()]
    return [p for _, p in c.payloads()]


def union_of(*members):
    out = []
    for c in members:
        out += got(c)
    return out


class RawMember(threading.Thread):
    """A raw client's reader: records every PUBLISH and answers it as
    answer(index, packet) says (bytes to send, or None), until stopped."""

    def __init__(self, client, answer):
        super().__init__(daemon=True)
        self.c, self.answer = client, answer
        self.got = []
        self.cond = threading.Condition()
        self.stop = threading.Event()
        self.start()

    def run(self):
        while not self.stop.is_set():
            try:
                p = self.c.recv_packet(0.05)
            except m.Timeout:
                continue
            except (m.MQTTError, OSError):
                return
            if p.type != m.PUBLISH:
                continue
            with self.cond:
                reply = self.answer(len(self.got), p)
                self.got.append(p)
                if reply:
                    self.c.send(reply)
                self.cond.notify_all()

    def wait_count(self, n, what):
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.got) >= n, T(10)), \
                f"timed out waiting for {what} (have {len(self.got)})"

    def leave(self):
        """Stop reading, and close the connection without DISCONNECT."""
        self.stop.set()
        self.join(T(5))
        self.c.close()

    def payloads(self, which=None):
        with self.cond:
            return [p.payload.decode() for i, p in enumerate(self.got)
                    if which is None or which(i)]


# ------------------------------------------------------------ routing

def test_members_on_both_workers_share_the_stream_and_a_plain_subscriber_gets_all(broker):
    a = paho(broker, "ma")
    b = CliSub(broker.port, "$share/g/rr/#", 1, uid("mb")).wait_subscribed()
    try:
        broker.assert_different_workers(a, b)
        assert a.subscribe("$share/g/rr/#", qos=1) == [1]
        plain = CliSub(broker.port, "rr/#", 1, uid("plain")).wait_subscribed()
        other = paho(broker, "other")
        assert other.subscribe("$share/h/rr/x", qos=1) == [1]
        pub = paho(broker, "pub")
        sent = [f"m{i}" for i in range(200)]
        publish_all(pub, "rr/x", sent, 1)

        wait_for(lambda: len(union_of(a, b)) >= len(sent), 20, "the group to get every message")
        wait_for(lambda: len(got(plain)) >= len(sent) and len(got(other)) >= len(sent), 20,
                 "the plain subscriber and the other group to get every message")
        assert sorted(union_of(a, b)) == sorted(sent), "each message once across the group"
        assert sorted(got(plain)) == sorted(sent)
        assert sorted(got(other)) == sorted(sent)
        na, nb = len(got(a)), len(got(b))
        # Round robin, but a member the router knows to have a full window is
        # passed over: a member slowed down by a loaded machine gets less, never
        # next to nothing.
        assert min(na, nb) >= len(sent) // 4, f"unfair share: {na} and {nb}"
        plain.stop()
        for c in (a, other, pub):
            c.disconnect()
    finally:
        b.stop()


@pytest.mark.broker_config(shared_subscription_policy="hash_publisher")
def test_hash_publisher_keeps_each_publisher_on_one_member(broker):
    a, b = paho(broker, "ha"), paho(broker, "hb")
    broker.assert_different_workers(a, b)
    for c in (a, b):
        assert c.subscribe("$share/g/hp/t", qos=1) == [1]
    sent = {}
    for k in range(4):
        pub = paho(broker, f"hp{k}")
        sent[k] = [f"p{k}-{i}" for i in range(15)]
        for p in sent[k]:
            pub.publish("hp/t", p, qos=1)
        pub.disconnect()
    total = sum(len(v) for v in sent.values())
    wait_for(lambda: len(union_of(a, b)) >= total, 20, "the group to get every message")
    assert sorted(union_of(a, b)) == sorted(p for v in sent.values() for p in v)
    for k, payloads in sent.items():
        holders = {name for name, c in (("a", a), ("b", b)) if set(payloads) & set(got(c))}
        assert len(holders) == 1, f"publisher {k}'s messages went to {holders}"
    a.disconnect()
    b.disconnect()


def test_malformed_share_filters_are_refused(broker, clients):
    c = clients.raw(broker, tag="bad")
    codes = c.subscribe([("$share/g", 1), ("$share//a", 1), ("$share/g+/a", 1),
                         ("$share/g/", 1), ("$share/g/a/#", 1), ("$share/g/a#", 1)],
                        expect_codes=False)
    assert codes == [0x80, 0x80, 0x80, 0x80, 1, 0x80], codes
    # The good one works, and the connection stays.
    pub = clients.raw(broker, tag="badpub")
    pub.publish("a/b", b"ok", qos=1)
    p = c.recv_publish(timeout=T(5))
    assert (p.topic, p.payload) == ("a/b", b"ok")


def test_a_shared_subscribe_gets_no_retained_message(broker, clients):
    mosquitto_pub_once(broker.port, "ret/t", "kept", qos=1, retain=True)
    plain = clients.raw(broker, tag="rplain")
    plain.subscribe([("ret/#", 1)])
    r = plain.recv_publish(timeout=T(5))
    assert (r.payload, r.retain) == (b"kept", True), "the retained message is there"
    c = clients.raw(broker, tag="rshare")
    c.subscribe([("$share/g/ret/#", 1)])
    mosquitto_pub_once(broker.port, "ret/t", "live", qos=1)
    p = c.recv_publish(timeout=T(5))
    assert (p.payload, p.retain) == (b"live", False), f"expected the live message first: {p!r}"
    c.expect_no_packet(T(0.3))


# ------------------------------------------------------------ nothing lost

def stream_with_a_leaving_member(broker, tag, qos, answer, n, leave_after):
    """Two members of one group, on different workers: a raw one answering
    each message as answer(index, packet) says, and a Paho one. n messages
    are published at qos; the raw member drops its connection once it got
    leave_after of them, mid-stream. Returns (raw member, Paho member,
    publisher, payloads sent), every publish acknowledged."""
    leaver = raw(broker, tag=f"{tag}leaver")
    stayer = paho(broker, f"{tag}stayer")
    broker.assert_different_workers(leaver, stayer)
    leaver.subscribe([(f"$share/g/{tag}/#", qos)])
    assert stayer.subscribe(f"$share/g/{tag}/#", qos=qos) == [qos]
    member = RawMember(leaver, answer)
    pub = paho(broker, f"{tag}pub")
    sent = [f"m{i}" for i in range(n)]
    infos = [pub.publish(f"{tag}/t", p, qos=qos, wait=False) for p in sent[:n // 2]]
    member.wait_count(leave_after, "the leaving member's first messages")
    member.leave()
    infos += [pub.publish(f"{tag}/t", p, qos=qos, wait=False) for p in sent[n // 2:]]
    for info in infos:
        info.wait_for_publish(T(20))
        assert info.is_published()
    return member, stayer, pub, sent


def test_qos1_member_leaving_mid_stream_loses_nothing(broker):
    """A raw member acknowledges its first 5 messages, holds the next ones
    unacknowledged and drops its connection: those go to the other member;
    the acknowledged ones do not."""
    member, stayer, pub, sent = stream_with_a_leaving_member(
        broker, "ql", 1, lambda i, p: m.puback(p.pid) if i < 5 else None, 300, 12)
    acked = set(member.payloads(lambda i: i < 5))
    held = set(member.payloads(lambda i: i >= 5))
    wait_for(lambda: set(sent) <= set(got(stayer)) | acked, 20,
             "every message at a member")
    missing = set(sent) - set(got(stayer)) - acked
    assert not missing, f"{len(missing)} messages lost: {sorted(missing)[:10]}"
    again = acked & set(got(stayer))
    assert not again, f"acknowledged messages came again elsewhere: {sorted(again)}"
    assert held <= set(got(stayer)), "unacknowledged messages go to the other member"
    dups = len(got(stayer)) - len(set(got(stayer)))
    assert dups == 0, f"{dups} messages twice at one member"
    stayer.disconnect()
    pub.disconnect()


def test_worker_killed_mid_stream_loses_nothing(broker):
    fillers = []
    a = paho(broker, "ka")
    b = paho(broker, "kb")
    broker.assert_different_workers(a, b)
    wa, wb = broker.worker_of(a), broker.worker_of(b)
    for c in (a, b):
        assert c.subscribe("$share/g/kw/#", qos=1) == [1]
    pub, _ = paho_on(broker, lambda: paho(broker, "kpub"), want=wb, fillers=fillers)
    sent = [f"m{i}" for i in range(400)]
    infos = [pub.publish("kw/t", p, qos=1, wait=False) for p in sent[:200]]
    wait_for(lambda: len(got(a)) >= 20, 10, "the doomed worker's member to get some")
    os.kill(wa, signal.SIGKILL)
    a.wait_disconnected(T(5))
    infos += [pub.publish("kw/t", p, qos=1, wait=False) for p in sent[200:]]
    for info in infos:
        info.wait_for_publish(T(20))
        assert info.is_published()

    wait_for(lambda: set(sent) <= set(union_of(a, b)), 20, "every message at a member")
    missing = set(sent) - set(union_of(a, b))
    assert not missing, f"{len(missing)} messages lost"
    dups = len(union_of(a, b)) - len(set(union_of(a, b)))
    assert dups <= MAX_INFLIGHT, f"{dups} duplicates: more than the dead member had in flight"
    for c in [b, pub] + fillers:
        (c.disconnect if hasattr(c, "disconnect") else c.close)()
    a.close()
    broker.wait_worker_replaced(wa)
    broker.initial_pids = set(broker.pids())      # the kill was deliberate


def test_qos2_member_leaving_mid_stream_delivers_each_message_once(broker):
    """A raw member sends PUBREC for its first 4 messages (they are its now),
    ignores the next ones and drops its connection: those, and only those,
    go to the other member."""
    member, stayer, pub, sent = stream_with_a_leaving_member(
        broker, "q2", 2, lambda i, p: m.pubrec(p.pid) if i < 4 else None, 120, 10)
    owned = member.payloads(lambda i: i < 4)
    wait_for(lambda: len(got(stayer)) + len(owned) >= len(sent), 20,
             "every message at a member")
    everything = got(stayer) + owned
    assert sorted(everything) == sorted(sent), \
        (f"not exactly once: missing {sorted(set(sent) - set(everything))[:10]}, "
         f"twice {sorted(x for x in set(everything) if everything.count(x) > 1)[:10]}")
    stayer.disconnect()
    pub.disconnect()


# ------------------------------------------------------------ persistence

def test_a_persistent_members_shared_subscription_survives_a_router_crash(broker, clients):
    cid = uid("pmember")
    p = raw(broker, cid, clean=False)
    p.subscribe([("$share/g/pr/#", 1)])
    kill_router(broker)
    pub = clients.raw(broker, tag="prpub")
    pub.publish("pr/t", b"after-crash", qos=1)
    got_live = p.recv_publish(timeout=T(5))
    assert got_live.payload == b"after-crash"
    p.disconnect()
    # The only member, offline: the group's messages queue for it.
    for i in range(3):
        pub.publish("pr/t", f"q{i}".encode(), qos=1, pid=i + 1)
    back = clients.own(resumed(broker, cid))
    queued = [x.payload for x in back.recv_publishes(3, timeout=T(5))]
    assert queued == [b"q0", b"q1", b"q2"]
    # It still holds the subscription without subscribing again.
    pub.publish("pr/t", b"live", qos=1, pid=9)
    assert back.recv_publish(timeout=T(5)).payload == b"live"
