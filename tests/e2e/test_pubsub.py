"""Publish/subscribe across workers: QoS 0/1/2 with paho, mosquitto_sub/pub and
raw clients; QoS downgrade, QoS 2 handshakes, ordering, overlapping
subscriptions, unsubscribe, SUBACK failure codes, the in-flight window."""

import pytest

import mqttraw as m
from helpers import T, CliPub, CliSub, PahoClient, uid


# ------------------------------------------------------------ QoS 0/1/2

@pytest.mark.parametrize("v5", [False, True], ids=["mqtt311", "mqtt5"])
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_paho_clients_on_two_workers_exchange_messages_both_directions(broker, qos, clients, v5):
    a = clients.paho(broker.port, uid("pa"), v5=v5)
    b = clients.paho(broker.port, uid("pb"), v5=v5)
    a.connect()
    b.connect()
    broker.assert_different_workers(a, b)
    assert a.subscribe("pp/to-a", qos) == [qos]
    assert b.subscribe("pp/to-b", qos) == [qos]
    for i in range(3):
        a.publish("pp/to-b", f"a{i}", qos)
        b.publish("pp/to-a", f"b{i}", qos)
    got_b = b.wait_messages(3)
    got_a = a.wait_messages(3)
    assert [(x.topic, x.payload, x.qos) for x in got_b] == \
        [("pp/to-b", f"a{i}".encode(), qos) for i in range(3)]
    assert [(x.topic, x.payload, x.qos) for x in got_a] == \
        [("pp/to-a", f"b{i}".encode(), qos) for i in range(3)]


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_mosquitto_sub_receives_from_mosquitto_pub_on_other_worker(broker, qos):
    sub = CliSub(broker.port, "cli/t", qos, uid("csub")).wait_subscribed()
    pub = None
    try:
        pub = CliPub(broker.port, "cli/t", qos, uid("cpub"))
        broker.assert_different_workers(sub, pub)
        for i in range(3):
            pub.send_line(f"m{i}")
        pub.finish()
        got = sub.wait_messages(3)
        assert got == [("cli/t", f"m{i}", qos, 0) for i in range(3)]
    finally:
        sub.stop()
        if pub:
            pub.stop()


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_mosquitto_clients_and_paho_exchange_both_directions(broker, qos):
    # mosquitto_pub -> paho subscriber, and paho publisher -> mosquitto_sub.
    p = PahoClient(broker.port, uid("mix"))
    sub = pub = None
    try:
        p.connect()
        assert p.subscribe("mix/to-paho", qos) == [qos]
        sub = CliSub(broker.port, "mix/to-cli", qos, uid("msub")).wait_subscribed()
        broker.assert_different_workers(p, sub)
        p.publish("mix/to-cli", "from-paho", qos)
        assert sub.wait_messages(1) == [("mix/to-cli", "from-paho", qos, 0)]

        pub = CliPub(broker.port, "mix/to-paho", qos, uid("mpub"))
        broker.assert_spread(p, sub, pub)
        pub.send_line("from-cli")
        pub.finish()
        got = p.wait_messages(1)
        assert [(x.topic, x.payload, x.qos, x.retain) for x in got] == \
            [("mix/to-paho", b"from-cli", qos, 0)]
    finally:
        p.disconnect()
        for x in (sub, pub):
            if x:
                x.stop()


def test_delivered_at_min_of_publish_qos_and_granted_qos(broker, clients):
    subs = []
    for g in (0, 1, 2):
        c = clients.raw(broker, uid(f"g{g}"))
        c.subscribe([("minq/t", g)])
        subs.append(c)
    pub = clients.raw(broker, uid("minpub"))
    subs.append(pub)
    broker.assert_spread(*subs)
    for q in (0, 1, 2):
        pub.publish("minq/t", f"p{q}", qos=q, pid=10 + q)
    for g, c in zip((0, 1, 2), subs):
        got = {p.payload.decode(): p.qos for p in c.recv_publishes(3)}
        assert got == {f"p{q}": min(q, g) for q in (0, 1, 2)}, \
            f"subscriber granted QoS {g} got {got}"
        c.expect_no_packet(0.3)


# ------------------------------------------------------------ QoS 2 flows

def test_qos2_publish_resent_with_dup_before_pubrel_is_delivered_once(broker, clients):
    sub, pub = clients.sub_and_pub(broker, "q2", [("q2/once", 2)])
    for dup in (False, True):
        pub.send(m.publish("q2/once", b"only-once", qos=2, pid=77, dup=dup))
        pub.expect(m.PUBREC, pid=77)
    pub.send(m.pubrel(77))
    pub.expect(m.PUBCOMP, pid=77)
    got = sub.recv_publish()
    assert (got.topic, got.payload, got.qos) == ("q2/once", b"only-once", 2)
    sub.expect_no_packet(0.5)
    # A fresh message with the same (now released) packet id is a new message.
    pub.publish("q2/once", b"second", qos=2, pid=77)
    assert sub.recv_publish().payload == b"second"
    sub.expect_no_packet(0.3)


def test_qos2_flow_with_raw_publisher_pubrec_pubrel_pubcomp(broker, clients):
    sub, pub = clients.sub_and_pub(broker, "f2", [("q2/flow", 2)])
    pub.send(m.publish("q2/flow", b"x", qos=2, pid=0x1234))
    rec = pub.expect(m.PUBREC)
    assert rec.pid == 0x1234 and rec.flags == 0, f"bad PUBREC {rec!r}"
    pub.send(m.pubrel(0x1234))
    comp = pub.expect(m.PUBCOMP)
    assert comp.pid == 0x1234 and comp.flags == 0, f"bad PUBCOMP {comp!r}"
    pub.expect_no_packet(0.3)
    got = sub.recv_publish()
    assert (got.payload, got.qos) == (b"x", 2)


def test_qos2_flow_with_raw_subscriber_pubrec_pubrel_pubcomp(broker, clients):
    sub, pub = clients.sub_and_pub(broker, "s2", [("q2/sflow", 2)], paho=True)
    pub.publish("q2/sflow", "y", 2)
    p = sub.recv_publish(ack=False)
    assert p.qos == 2 and p.pid and not p.dup and p.payload == b"y", repr(p)
    sub.send(m.pubrec(p.pid))
    rel = sub.expect(m.PUBREL)
    assert rel.pid == p.pid, f"PUBREL for {rel.pid}, expected {p.pid}"
    assert rel.flags == 0x02, f"PUBREL fixed-header flags must be 0010, got {rel.flags:#x}"
    sub.send(m.pubcomp(p.pid))
    sub.expect_no_packet(0.5)
    sub.ping()


# ------------------------------------------------------------ ordering

def test_1000_qos1_messages_arrive_in_order_on_another_worker(broker, clients):
    n = 1000
    sub, pub = clients.sub_and_pub(broker, "ord", [("order/t", 1)], paho=True)
    infos = [pub.publish("order/t", str(i), 1, wait=False) for i in range(n)]
    got = sub.recv_publishes(n, timeout=T(60))
    payloads = [int(p.payload) for p in got]
    assert payloads == list(range(n)), \
        f"out of order or missing: first mismatch at {next(i for i, v in enumerate(payloads) if v != i)}"
    assert all(p.qos == 1 for p in got)
    for info in infos[-1:]:
        info.wait_for_publish(T(10))
    sub.expect_no_packet(0.3)


# ------------------------------------------------------------ subscriptions

def test_overlapping_subscriptions_deliver_one_copy_at_max_qos(broker, clients):
    sub, pub = clients.sub_and_pub(broker, "ov", [("a/#", 1), ("a/+", 2)])
    pub.publish("a/b", b"one", qos=2, pid=5)
    p = sub.recv_publish()
    assert (p.topic, p.payload, p.qos) == ("a/b", b"one", 2)
    sub.expect_no_packet(0.5)
    # Only a/# matches a/b/c: one copy at QoS 1.
    pub.publish("a/b/c", b"two", qos=2, pid=6)
    p = sub.recv_publish()
    assert (p.topic, p.qos) == ("a/b/c", 1)
    sub.expect_no_packet(0.3)


def test_unsubscribe_stops_delivery_and_unsuback_has_packet_id(broker, clients):
    sub = clients.raw(broker, uid("unsub"))
    pub = clients.raw(broker, uid("unpub"))
    sub.subscribe([("un/t", 1), ("un/keep", 1)], pid=3)
    broker.assert_different_workers(sub, pub)
    pub.publish("un/t", b"before", qos=1, pid=1)
    assert sub.recv_publish().payload == b"before"
    ack = sub.unsubscribe(["un/t"], pid=4242)
    assert ack.pid == 4242 and ack.flags == 0
    pub.publish("un/t", b"after", qos=1, pid=2)
    pub.publish("un/keep", b"kept", qos=1, pid=3)
    p = sub.recv_publish()
    assert (p.topic, p.payload) == ("un/keep", b"kept"), \
        f"after UNSUBSCRIBE got {p!r} (un/t must no longer be delivered)"
    sub.expect_no_packet(0.5)
    # Unsubscribing a filter that is not subscribed still gets UNSUBACK.
    assert sub.unsubscribe(["never/subscribed"], pid=7).pid == 7


@pytest.mark.mosquitto_differs("Mosquitto closes the connection on an invalid filter")
def test_suback_0x80_for_invalid_filters_while_others_are_granted(broker, clients):
    sub = clients.raw(broker, uid("badflt"))
    pub = clients.raw(broker, uid("badpub"))
    codes = sub.subscribe([("ok/one", 1), ("a/#/b", 1), ("a+", 0), ("ok/two", 2),
                           ("#/x", 0), ("+x/y", 1)],
                          pid=9, expect_codes=[1, 0x80, 0x80, 2, 0x80, 0x80])
    assert codes[1] == m.SUBACK_FAILURE
    broker.assert_different_workers(sub, pub)
    pub.publish("ok/one", b"1", qos=1, pid=1)
    pub.publish("ok/two", b"2", qos=2, pid=2)
    got = {(p.topic, p.qos) for p in sub.recv_publishes(2)}
    assert got == {("ok/one", 1), ("ok/two", 2)}
    sub.expect_no_packet(0.3)


# ------------------------------------------------------------ in-flight

def test_packet_ids_distinct_among_unacked_inflight_messages(broker, clients):
    sub, pub = clients.sub_and_pub(broker, "pid", [("pid/t", 1)], paho=True)
    for i in range(15):
        pub.publish("pid/t", str(i), 1)
    got = sub.recv_publishes(15, ack=False)
    pids = [p.pid for p in got]
    assert all(1 <= x <= 65535 for x in pids)
    assert len(set(pids)) == len(pids), f"packet ids reused while in flight: {pids}"
    assert [int(p.payload) for p in got] == list(range(15))


@pytest.mark.broker_config(max_inflight=5)
def test_inflight_window_holds_back_messages_until_acked(broker, clients):
    n = 12
    sub, pub = clients.sub_and_pub(broker, "win", [("win/t", 1)], paho=True)
    for i in range(n):
        pub.publish("win/t", str(i), 1)
    first = sub.recv_publishes(5, ack=False)
    sub.expect_no_packet(0.5)
    assert len({p.pid for p in first}) == 5, f"packet ids reused: {first!r}"
    for p in first:
        sub.send(m.puback(p.pid))
    rest = sub.recv_publishes(n - 5, ack=True, timeout=T(10))
    assert [int(p.payload) for p in first + rest] == list(range(n))
    sub.expect_no_packet(0.3)
