"""What one client connection, or one remote address, can make the daemon
hold: max_output_bytes (a QoS 1 publisher that never reads its PUBACKs),
max_inflight_bytes (QoS 1/2 messages held for one connection), inbound
QoS 2 ids awaiting PUBREL (max_inflight), and at the listener
max_connections_per_address and max_connect_rate_per_address. Each is
changed by a reload in one of the tests, and a bystander subscribed on
every worker throughout receives every message while no process dies.

Every test client comes from the loopback: other addresses of 127.0.0.0/8
(the client socket bound to 127.0.0.2 and so on) are other remote
addresses to the listener."""

import os
import select
import signal
import time

import pytest

import mqttraw as m
from helpers import T, close_all, PeakPss, Placement, raw, uid, wait_for

pytestmark = pytest.mark.iotd_only


def connect_from(broker, source):
    """A client connected (CONNACK 0) from that address, or None when the
    listener closed the connection at once."""
    try:
        return raw(broker, tag="addr", source=source, timeout=T(2))
    except (OSError, m.MQTTError):
        return None


# --- max_output_bytes --------------------------------------------------------

OUTPUT_CAP = 256 << 10
DEAF_LIMIT = 48 << 20           # bytes sent at most: far beyond any bound


def send_until_held_back(sock, chunk, limit, stall):
    """Send chunk after chunk without blocking until limit bytes went or
    the socket took nothing for stall seconds; returns the bytes sent."""
    sock.setblocking(False)
    sent, view = 0, memoryview(chunk)
    off = 0
    while sent < limit:
        _, writable, _ = select.select([], [sock], [], stall)
        if not writable:
            break
        try:
            n = sock.send(view[off:])
        except BlockingIOError:
            continue
        sent += n
        off = (off + n) % len(chunk)
    sock.setblocking(True)
    return sent


def read_exactly(sock, n, timeout):
    """n bytes from the socket within timeout (overall)."""
    got = bytearray()
    deadline = time.monotonic() + T(timeout)
    while len(got) < n:
        left = deadline - time.monotonic()
        assert left > 0, f"received {len(got)} of {n} bytes within {T(timeout):.0f} s"
        sock.settimeout(left)
        data = sock.recv(min(1 << 20, n - len(got)))
        assert data, f"connection closed after {len(got)} of {n} bytes"
        got += data
    return got


def deaf_client(broker, bystander, packet, reply, check_memory):
    """A client sending packet (each answered by reply) as fast as it can
    and never reading its socket: past max_output_bytes of unsent replies
    its worker stops reading it, so TCP holds it back; another client of the
    same worker is served meanwhile. Once it reads, it gets one reply for
    every whole packet it sent. With check_memory, the worker's growth is
    asserted within twice the cap (its buffer grows by doubling) and a MiB."""
    deaf = raw(broker, uid("deaf"), rcvbuf=4096)
    worker = broker.worker_of(deaf)
    place = Placement(broker)
    sub = pub = None
    try:
        sub = place.client("sub", worker, same=True)
        sub.subscribe([("deaf/other", 0)])
        pub = raw(broker, tag="other")
        base = broker.pss_kb([worker])
        peak = PeakPss([worker])
        sent = send_until_held_back(deaf.sock, packet * 8192, DEAF_LIMIT, T(1))
        grown = peak.finish() - base
        assert sent < DEAF_LIMIT, "the client was never held back"
        wait_for(lambda: "max_output_bytes" in broker.log, 5, "the worker to log the hold-back")
        if check_memory and not broker.instrumented:
            assert grown <= (2 * OUTPUT_CAP + (1 << 20)) // 1024, (
                f"worker grew by {grown} kB for a client that never reads "
                f"(bound: 2 x {OUTPUT_CAP // 1024} kB + 1 MiB)")
        pub.publish("deaf/other", b"still served", qos=1, pid=7)
        assert sub.recv_publish(timeout=T(2)).payload == b"still served"
        bystander.check()
        n = sent // len(packet)
        replies = read_exactly(deaf.sock, len(reply) * n, 30)
        assert replies == reply * n
        assert deaf.is_open(0.2)
    finally:
        close_all([deaf, sub, pub])
        place.close()
    bystander.check()


@pytest.mark.broker_config(max_output_bytes=OUTPUT_CAP)
def test_pings_from_a_client_that_never_reads_are_held_back_and_its_worker_bounded(
        broker, bystander):
    """PINGREQ after PINGREQ, no PINGRESP read: nothing but its replies can
    grow, and the worker holds no more than max_output_bytes of them."""
    deaf_client(broker, bystander, m.pingreq(), m.pingresp(), check_memory=True)


@pytest.mark.broker_config(max_output_bytes=OUTPUT_CAP)
def test_qos1_publisher_that_never_reads_is_held_back(broker, bystander):
    """QoS 1 PUBLISHes, no PUBACK read: held back the same way. (Its
    worker's memory is not asserted here: the messages also wait for the
    router, whose own bound, the 8 MiB backlog past which a worker stops
    reading every client, comes first.)"""
    deaf_client(broker, bystander, m.publish("deaf/t", b"", qos=1, pid=1), m.puback(1),
                check_memory=False)


# --- max_inflight_bytes ---------------------------------------------------------

def held_for(sub, sync_payload, timeout=5):
    """The QoS 1 PUBLISHes a never-acknowledging subscriber receives before
    the QoS 0 sync message published after them (which nothing holds back)."""
    got = []
    while True:
        p = sub.recv_publish(timeout=T(timeout), ack=False)
        if p.qos == 0 and p.payload == sync_payload:
            return got
        got.append(p)


@pytest.mark.broker_config(max_inflight=100, max_queued_messages=1000, max_inflight_bytes=65536)
def test_inflight_bytes_bound_what_one_connection_holds_and_reload_raises_it(broker, bystander):
    """A QoS 1 subscriber that acknowledges nothing, sent 40 messages of 4096
    bytes (topic + payload) with a window of 100: it is given 16 (64 KiB),
    the others are dropped and logged. Raised to 128 KiB by a reload, 16
    more of the next 40; once it acknowledges, new messages flow again."""
    sub = raw(broker, tag="ibsub")
    pub = raw(broker, tag="ibpub")
    try:
        sub.subscribe([("ib/t", 1), ("ib/sync", 0)])
        size = 4096 - len("ib/t")
        for i in range(40):
            pub.publish("ib/t", b"%04d" % i + b"x" * (size - 4), qos=1, pid=i + 1)
        pub.publish("ib/sync", b"one")
        first = held_for(sub, b"one")
        assert [p.payload[:4] for p in first] == [b"%04d" % i for i in range(16)]
        wait_for(lambda: "max_inflight_bytes reached" in broker.log, 5, "the drop to be logged")
        broker.reload(max_inflight_bytes=131072)
        for i in range(40):
            pub.publish("ib/t", b"%04d" % (100 + i) + b"x" * (size - 4), qos=1, pid=i + 1)
        pub.publish("ib/sync", b"two")
        second = held_for(sub, b"two")
        assert [p.payload[:4] for p in second] == [b"%04d" % (100 + i) for i in range(16)]
        for p in first + second:
            sub.ack(p)
        pub.publish("ib/t", b"after", qos=1, pid=99)
        assert sub.recv_publish(timeout=T(2)).payload == b"after"
        bystander.check()
    finally:
        close_all([sub, pub])


# --- inbound QoS 2 ------------------------------------------------------------------

@pytest.mark.broker_config(max_inflight=5)
def test_qos2_ids_awaiting_pubrel_are_bounded_by_max_inflight(broker, bystander, clients):
    """A publisher may hold max_inflight QoS 2 ids awaiting PUBREL: a resent
    id is acknowledged again, a PUBREL makes room, and a new id past the
    bound closes the connection (the client resends what it was not
    acknowledged when it comes back)."""
    c = clients.raw(broker, tag="q2")
    for pid in range(1, 6):
        c.send(m.publish("q2/t", b"m%d" % pid, qos=2, pid=pid))
        c.expect(m.PUBREC, pid=pid)
    c.send(m.publish("q2/t", b"m3", qos=2, pid=3, dup=True))
    c.expect(m.PUBREC, pid=3)
    c.send(m.pubrel(1))
    c.expect(m.PUBCOMP, pid=1)
    c.send(m.publish("q2/t", b"m6", qos=2, pid=6))
    c.expect(m.PUBREC, pid=6)
    c.send(m.publish("q2/t", b"m7", qos=2, pid=7))
    c.expect_closed(T(5))
    assert "too many QoS 2 messages awaiting PUBREL" in broker.log
    bystander.check()


# --- per address ------------------------------------------------------------------


@pytest.mark.broker_config(max_connections_per_address=3)
def test_connections_per_address_past_the_limit_are_refused_until_one_goes(broker, bystander):
    """Three connections from 127.0.0.2 are held, the fourth is closed at
    once (logged once, with the address), another address is not concerned;
    once one of the three goes, a new one is taken. A reload raises the
    limit for the next connection, and a lowered one disconnects nobody."""
    held, extra = [], []
    try:
        for _ in range(3):
            held.append(connect_from(broker, "127.0.0.2"))
            assert held[-1], "a connection within the limit was refused"
        assert connect_from(broker, "127.0.0.2") is None
        assert connect_from(broker, "127.0.0.2") is None
        extra.append(connect_from(broker, "127.0.0.3"))
        assert extra[-1], "another address was refused"
        line = "max_connections_per_address (3) reached for 127.0.0.2"
        assert broker.log.count(line) == 1, "a refusal logged other than once"
        assert "remote=127.0.0.2:" in broker.log_tail(200)
        held.pop(0).disconnect()
        held.append(wait_for(lambda: connect_from(broker, "127.0.0.2"), 5,
                             "a connection from 127.0.0.2 taken once one of its three went"))
        assert connect_from(broker, "127.0.0.2") is None
        broker.reload(max_connections_per_address=4)
        held.append(connect_from(broker, "127.0.0.2"))
        assert held[-1], "the raised limit did not apply to the next connection"
        assert connect_from(broker, "127.0.0.2") is None
        bystander.check()
        # (The bystander's two clients and its publisher come from 127.0.0.1: not below 3.)
        broker.reload(max_connections_per_address=2)
        assert connect_from(broker, "127.0.0.2") is None
        assert all(c.is_open(0.1) for c in held), "a lowered limit disconnected a client"
        held[0].ping()
    finally:
        close_all(held + extra)


@pytest.mark.broker_config(max_connect_rate_per_address=5)
def test_connect_rate_per_address(broker, bystander):
    """From one address, 12 connections one after another: the bucket lets
    the first 5 in at once, and then only as it refills (5 a second); other
    addresses are not concerned. Lifted by a reload (0), all come in."""
    got = []
    try:
        t0 = time.monotonic()
        for _ in range(12):
            got.append(connect_from(broker, "127.0.0.4"))
        took = time.monotonic() - t0
        taken = sum(1 for c in got if c)
        assert all(got[:5]), "a connection within the burst was refused"
        assert taken <= 5 + int(took * 5) + 1, f"{taken} of 12 taken in {took:.2f} s"
        assert taken < 12
        got.append(connect_from(broker, "127.0.0.5"))
        assert got[-1], "another address was refused"
        assert broker.log.count("max_connect_rate_per_address (5) reached for 127.0.0.4") == 1
        got.append(wait_for(lambda: connect_from(broker, "127.0.0.4"), 3,
                            "a connection from 127.0.0.4 once its bucket refilled"))
        broker.reload(max_connect_rate_per_address=0)
        for _ in range(12):
            got.append(connect_from(broker, "127.0.0.4"))
            assert got[-1], "refused with the rate limit lifted"
        bystander.check()
    finally:
        close_all(got)


@pytest.mark.broker_config(workers=2, max_connections_per_address=2)
def test_a_restarted_worker_leaves_no_count_behind(broker):
    """The connections of a killed worker are gone: their address may connect
    again up to the limit once the worker is back (the listener starts its
    count of the new worker afresh and asks it what it holds)."""
    a = connect_from(broker, "127.0.0.6")
    b = connect_from(broker, "127.0.0.6")
    assert a and b
    assert connect_from(broker, "127.0.0.6") is None
    worker = broker.worker_of(a)
    survivor = b if broker.worker_of(b) != worker else None
    os.kill(worker, signal.SIGKILL)
    a.expect_closed(T(5))
    broker.wait_worker_replaced(worker)
    broker.initial_pids = set(broker.pids())
    c = wait_for(lambda: connect_from(broker, "127.0.0.6"), 5,
                 "a connection from 127.0.0.6 once the worker holding one died")
    # Exactly the limit again: what the survivor holds still counts.
    d = connect_from(broker, "127.0.0.6") if survivor else None
    try:
        if survivor:
            assert d is None, "the surviving worker's connection no longer counts"
        else:
            assert connect_from(broker, "127.0.0.6") is not None
    finally:
        close_all([a, b, c, d])
