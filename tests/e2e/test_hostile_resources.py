"""Resource abuse: many connections that never send CONNECT, a slow reader
on a busy topic, retained messages to far more topics than
retained_message_limit, and a connection storm beyond max_connections.
Each case asserts the exact bound, that a bystander subscribed throughout
received every message while no daemon process died or was replaced (the
`bystander` fixture, conftest.py), and that the daemon's memory is bounded
while it lasts and back near where it started afterwards (Broker.pss_kb,
MemoryMark; not asserted under AddressSanitizer or valgrind).

Slow readers: a worker stops adding QoS 0 deliveries to a connection with
more than max_output_bytes of unsent output (docs/arch.md, "Limits"). The
bound asserted on the worker's memory is that output cap,
plus one message, plus the kernel's largest TCP send buffer (tcp_wmem max,
bytes iotd has written but still holds until its buffer drains), plus
1 MiB of slack."""

import errno
import select
import selectors
import socket
import threading
import time

import pytest

import mqttraw as m
from helpers import T, PeakPss, Placement, PublishReader, raise_nofile, raw, uid, wait_for

OUT_CAP = 2 << 20        # max_output_bytes' default


def tcp_wmem_max():
    try:
        with open("/proc/sys/net/ipv4/tcp_wmem") as f:
            return int(f.read().split()[2])
    except (OSError, ValueError, IndexError):
        return 4 << 20


class Reader(PublishReader):
    """Records (topic, first 16 bytes of payload) of each PUBLISH in .got."""

    def __init__(self, client):
        self.got = []
        super().__init__(client)

    def take(self, publishes):
        self.got.extend((p.topic, bytes(p.payload[:16])) for p in publishes)

    def wait(self, pred, timeout, what):
        """Until pred(.got)."""
        self.wait_until(lambda: pred(self.got), timeout, what)


# --- connections that never send CONNECT ------------------------------------

N_SILENT = 1000


@pytest.mark.broker_config(connect_timeout=2)
def test_thousand_connections_without_connect_are_all_closed(broker, bystander):
    """1,000 connections that send nothing: the daemon keeps serving while it
    holds them, closes every one after connect_timeout (2 s, checked once a
    second) without a byte, and its memory comes back."""
    raise_nofile(N_SILENT + 512)
    mark = broker.memory_mark()
    socks = []
    try:
        t0 = time.monotonic()
        for _ in range(N_SILENT):
            socks.append(socket.create_connection((broker.host, broker.port), timeout=T(5)))
        opened = time.monotonic()
        assert opened - t0 < T(10), f"opening {N_SILENT} connections took {opened - t0:.1f} s"
        bystander.check()            # served while the silent ones are held
        held = broker.pss_kb() - mark.kb
        if not broker.instrumented:
            assert held < N_SILENT * 4, \
                f"{N_SILENT} silent connections cost {held} kB (over 4 kB each)"
        pending = {s.fileno(): s for s in socks}
        for s in socks:
            s.setblocking(False)
        poller = select.poll()
        for fd in pending:
            poller.register(fd, select.POLLIN)
        first_close = None
        deadline = opened + T(2 + 4)
        while pending and time.monotonic() < deadline:
            for fd, _ in poller.poll(100):
                s = pending.pop(fd, None)
                if s is None:
                    continue
                poller.unregister(fd)
                try:
                    data = s.recv(64)
                except OSError as e:
                    assert e.errno in (errno.ECONNRESET,), repr(e)
                    data = b""
                assert data == b"", f"sent {data!r} to a client that never connected"
                if first_close is None:
                    first_close = time.monotonic()
        assert not pending, (f"{len(pending)} of {N_SILENT} connections still open "
                             f"{time.monotonic() - t0:.1f} s after they were opened "
                             f"(connect_timeout=2)")
        assert first_close - t0 >= 1.0, \
            f"first connection closed {first_close - t0:.2f} s after opening: before connect_timeout"
    finally:
        for s in socks:
            s.close()
    bystander.check()
    mark.assert_back(what=f"after {N_SILENT} silent connections")


# --- a slow reader on a busy topic -------------------------------------------

FLOOD_MSG = 64 * 1024
FLOOD_N = 800            # 800 x 64 kB = 50 MiB at QoS 0
BURST_N = 200


def slow_subscriber(broker, topic="busy/t", rcvbuf=4096):
    """A raw QoS 0 subscriber with a small receive buffer that, after its
    SUBACK, never reads again (unless the test reads its socket itself)."""
    c = raw(broker, uid("slow"), rcvbuf=rcvbuf)
    c.subscribe([(topic, 0)])
    return c


def flood(pub, topic, n, size, pace=0.0):
    """n QoS 0 PUBLISHes of size bytes, 16 per write, as fast as the
    connection takes them (or one batch per pace seconds)."""
    batch = b"".join(m.publish(topic, f"{i:08d}".encode() + b"f" * (size - 8))
                     for i in range(16))
    for _ in range(n // 16):
        pub.send(batch)
        if pace:
            time.sleep(pace)


def worker_bound_kb():
    return (OUT_CAP + FLOOD_MSG + 64 + tcp_wmem_max() + (1 << 20)) // 1024


@pytest.mark.iotd_only        # workers and iotd's output cap
def test_slow_reader_is_bounded_and_its_worker_serves_others_at_full_speed(broker, bystander):
    """A QoS 0 subscriber that never reads, while 50 MiB are published to its
    topic: its worker's memory stays within the output cap (see the module
    docstring); then another subscriber of the same topic, on the same
    worker, receives all of a 200-message burst within 3 s, while the slow
    reader is still stuck."""
    place = Placement(broker)
    slow = slow_subscriber(broker, "busy/t")
    worker = broker.worker_of(slow)
    fast = reader = None
    try:
        fast = place.client("fast", worker, same=True)
        pub = place.client("flood", worker, same=False)
        wmark = broker.memory_mark([worker])
        peak = PeakPss([worker])
        fast.subscribe([("busy/sync", 1)])
        reader = Reader(fast)
        flood(pub, "busy/t", FLOOD_N, FLOOD_MSG)
        # The router handles a publisher's messages in order, and its
        # deliveries reach a worker in order: when this one reaches the fast
        # subscriber, the slow reader's worker has handled the whole flood.
        pub.publish("busy/sync", b"sync", qos=1, pid=2)
        reader.wait(lambda g: ("busy/sync", b"sync") in g, 10, "the sync message")
        grown = peak.finish() - wmark.kb
        if not broker.instrumented:
            assert grown <= worker_bound_kb(), (
                f"worker {worker} grew by {grown} kB for a reader that never reads; bound "
                f"{worker_bound_kb()} kB (2 MiB output cap + one message + tcp_wmem max + 1 MiB)")
        # The same topic, the same worker: a burst reaches the other subscriber at once.
        reader.close()
        fast.subscribe([("busy/t", 1)])
        reader = Reader(fast)
        t0 = time.monotonic()
        pub.send(b"".join(m.publish("busy/t", f"burst-{i:04d}".encode()) for i in range(BURST_N)))
        pub.publish("busy/t", b"burst-end", qos=1, pid=3)
        reader.wait(lambda g: ("busy/t", b"burst-end") in g, 3, f"{BURST_N} burst messages")
        took = time.monotonic() - t0
        burst = [p for t, p in reader.got if p.startswith(b"burst-")]
        assert burst == [f"burst-{i:04d}".encode() for i in range(BURST_N)] + [b"burst-end"], \
            f"burst incomplete or out of order ({len(burst)} messages) in {took:.2f} s"
        assert slow.is_open(0.1), "the slow reader was disconnected (QoS 0 drops suffice)"
        bystander.check()
        pub.disconnect()
    finally:
        if reader:
            reader.close()
        for c in (slow, fast):
            if c:
                c.close()
        place.close()
    bystander.check()


def slow_reader_flood(broker, worker):
    """A never-reading subscriber on the given worker, 50 MiB published to
    its topic from another worker, then both gone."""
    place = Placement(broker)
    try:
        slow = place.client("slow", worker, same=True, factory=slow_subscriber)
        try:
            pub = place.client("flood", worker, same=False)
            flood(pub, "busy/t", FLOOD_N, FLOOD_MSG)
            pub.publish("busy/sync", b"", qos=1, pid=1)
            pub.disconnect()
        finally:
            slow.close()
    finally:
        place.close()


@pytest.mark.iotd_only
def test_memory_is_back_after_slow_reader_floods(broker, bystander):
    """50 MiB published to a topic whose only subscriber never reads, twice
    with the slow reader on each worker (the publisher on the other): once
    they are gone, the daemon's memory is back within max(+2 MB, +20%) of
    where it started."""
    if broker.instrumented:
        pytest.skip("a memory bound: not measurable under AddressSanitizer or valgrind")
    mark = broker.memory_mark()
    workers = broker.worker_pids()
    for w in workers + workers:
        slow_reader_flood(broker, w)
    bystander.check()
    mark.assert_back(timeout=3, what=f"after {2 * len(workers)} 50 MiB floods to slow readers")


@pytest.mark.iotd_only
def test_trickling_reader_is_bounded(broker, bystander):
    """A QoS 0 subscriber that reads, but slower (about 3 MB/s) than its
    topic is published (about 10 MB/s for 4 s): the worker must hold no more
    than for a reader that never reads."""
    if broker.instrumented:
        pytest.skip("a memory bound: not measurable under AddressSanitizer or valgrind")
    place = Placement(broker)
    slow = slow_subscriber(broker, "busy/t", rcvbuf=65536)
    worker = broker.worker_of(slow)
    stop = threading.Event()
    consumed = [0]

    def trickle():
        slow.sock.setblocking(False)
        while not stop.is_set():
            try:
                consumed[0] += len(slow.sock.recv(65536))
            except BlockingIOError:
                pass
            except OSError:
                return
            stop.wait(0.02)

    t = threading.Thread(target=trickle, daemon=True)
    try:
        pub = place.client("flood", worker, same=False)
        wmark = broker.memory_mark([worker])
        peak = PeakPss([worker])
        t.start()
        flood(pub, "busy/t", 640, FLOOD_MSG, pace=0.1)
        pub.publish("busy/sync", b"", qos=1, pid=1)
        grown = peak.finish() - wmark.kb
        assert grown <= worker_bound_kb(), (
            f"worker {worker} grew by {grown} kB for a reader that read {consumed[0] // 1024} kB "
            f"of its output; bound {worker_bound_kb()} kB")
        pub.disconnect()
    finally:
        stop.set()
        if t.is_alive():
            t.join(T(5))
        slow.close()
        place.close()
    bystander.check()


# --- retained messages past retained_message_limit -----------------------------

N_RETAINED_TOPICS = 100_000
RETAINED_LIMIT = 1000


@pytest.mark.broker_config(retained_message_limit=RETAINED_LIMIT)
def test_retained_messages_to_100000_topics_keep_only_the_limit(broker, bystander):
    """100,000 retained publishes to distinct topics with
    retained_message_limit = 1000: the first 1000 topics are stored (a new
    topic past the limit is not), every message is still delivered live, an
    existing topic can still be updated, a new '#' subscriber gets exactly
    1000 retained messages, and memory stays bounded."""
    mark = broker.memory_mark()
    with raw(broker, tag="live") as live, raw(broker, tag="retpub") as pub:
        broker.assert_different_workers(live, pub)
        live.subscribe([("ret/#", 0)])
        reader = Reader(live)
        try:
            data = b"".join(m.publish(f"ret/{i:06d}", f"v{i}".encode(), retain=True)
                            for i in range(N_RETAINED_TOPICS))
            peak = PeakPss(broker.pids())
            pub.send(data)
            pub.publish("ret/000005", b"updated", qos=1, retain=True, pid=1)
            pub.publish("ret/zz-sync", b"sync", qos=1, pid=2)
            reader.wait(lambda g: len(g) >= N_RETAINED_TOPICS + 2, 30,
                        f"{N_RETAINED_TOPICS + 2} live deliveries")
            assert len(reader.got) == N_RETAINED_TOPICS + 2
            assert reader.got[-1] == ("ret/zz-sync", b"sync")
            grown = peak.finish() - mark.kb
        finally:
            reader.close()
        with raw(broker, tag="retall") as c:
            c.subscribe([("#", 0)])
            got = c.recv_publishes(RETAINED_LIMIT, timeout=T(10))
            c.expect_no_packet(0.5)
        assert all(p.retain for p in got)
        topics = sorted(p.topic for p in got)
        assert topics == [f"ret/{i:06d}" for i in range(RETAINED_LIMIT)], \
            f"stored the wrong topics: {topics[:3]} ... {topics[-3:]}"
        by_topic = {p.topic: p.payload for p in got}
        assert by_topic["ret/000005"] == b"updated"
        assert by_topic["ret/000999"] == b"v999"
        pub.disconnect()
    if not broker.instrumented:
        # storing all 100,000 would take several MB (router store, index)
        assert grown < 4096, (f"the daemon grew by {grown} kB at its peak while storing "
                              f"{RETAINED_LIMIT} of {N_RETAINED_TOPICS} retained topics")
    bystander.check()
    mark.assert_back(what=f"after {N_RETAINED_TOPICS} retained topics")


# --- a connection storm beyond max_connections --------------------------------

MAX_CONN = 50
STORM = 200


def storm(broker, n):
    """Open n connections at once, send CONNECT on each; returns
    (socks, answered) where answered[i] is the CONNACK code, or None when
    the connection was closed without a byte."""
    raise_nofile(n + 512)
    socks = []
    sel = selectors.DefaultSelector()
    try:
        for i in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            err = s.connect_ex((broker.host, broker.port))
            assert err in (0, errno.EINPROGRESS), errno.errorcode.get(err, err)
            socks.append(s)
            sel.register(s, selectors.EVENT_WRITE, i)
        waiting = set(range(n))
        deadline = time.monotonic() + T(10)
        while waiting and time.monotonic() < deadline:
            for key, _ in sel.select(0.2):
                i = key.data
                sel.unregister(socks[i])
                waiting.discard(i)
                try:
                    socks[i].send(m.connect(f"storm-{i}-{uid('s')}"))
                except OSError:
                    pass        # already refused: reads EOF or reset below
                sel.register(socks[i], selectors.EVENT_READ, i)
        assert not waiting, f"{len(waiting)} of {n} connections not established within 10 s"
        answered = [None] * n
        bufs = [b""] * n
        pending = set(range(n))
        while pending and time.monotonic() < deadline:
            for key, _ in sel.select(0.2):
                i = key.data
                try:
                    data = socks[i].recv(16)
                except OSError:
                    data = b""
                if not data:
                    assert bufs[i] == b"", f"connection {i} got {bufs[i]!r} then was closed"
                elif len(bufs[i] + data) < 4:
                    bufs[i] += data
                    continue
                else:
                    bufs[i] += data
                    assert bufs[i][:3] == b"\x20\x02\x00", f"connection {i} got {bufs[i]!r}"
                    answered[i] = bufs[i][3]
                pending.discard(i)
                sel.unregister(socks[i])
        assert not pending, f"{len(pending)} connections neither answered nor closed within 10 s"
        return socks, answered
    except BaseException:
        for s in socks:
            s.close()
        raise
    finally:
        sel.close()


@pytest.mark.mosquitto_differs("Mosquitto 2.0.11 lets max_connections + 1 clients in")
@pytest.mark.broker_config(max_connections=MAX_CONN)
def test_connection_storm_beyond_max_connections(broker, bystander):
    """200 connections at once with max_connections = 50 (the bystander
    holds some): exactly 50 are held in all and answered CONNACK 0, every
    other one is closed without a byte; once they are closed, as many new
    connections work again."""
    mark = broker.memory_mark()
    room = MAX_CONN - bystander.conns
    socks, answered = storm(broker, STORM)
    try:
        accepted = [i for i, rc in enumerate(answered) if rc is not None]
        assert [answered[i] for i in accepted] == [0] * len(accepted)
        assert len(accepted) == room, (f"{len(accepted)} of {STORM} got CONNACK with "
                                       f"max_connections={MAX_CONN} and {bystander.conns} held")
        for i in accepted:      # and they stay connected and served
            socks[i].setblocking(True)
            socks[i].settimeout(T(5))
            socks[i].sendall(m.pingreq())
        for i in accepted:
            assert socks[i].recv(2) == b"\xd0\x00", f"connection {i}: no PINGRESP"
    finally:
        for s in socks:
            s.close()
    # the closed ones leave the workers' counts: then the same room is there again

    def room_again():
        socks2, answered2 = storm(broker, room)
        ok = all(rc == 0 for rc in answered2)
        for s in socks2:
            if ok:
                leave(s)
            s.close()
        return ok

    def leave(s):
        """DISCONNECT, then the daemon's close: a worker counts a connection
        gone before the client sees it closed, so the bystander's next
        connection finds its room."""
        s.setblocking(True)
        s.settimeout(T(5))
        s.sendall(m.disconnect())
        while s.recv(64):
            pass
    wait_for(room_again, 10, f"{room} new connections to be accepted again", interval=0.2)
    bystander.check()
    mark.assert_back(what="after a connection storm")
