"""A worker's local delivery path, end to end.

A worker may deliver a PUBLISH itself, without the router, while its cached
route for the topic says that every matching subscription belongs to a
clean-session client online on that same worker. The cache is valid while
the router's route generation (shared memory) is unchanged; the
router bumps it on SUBSCRIBE, UNSUBSCRIBE, a session with subscriptions
connecting, closing or taken over, and a worker's death. Retained and
QoS 2 publishes always go through the router.

These tests pin down what a client may observe whichever path a message
takes, and push the edges of that design: routes invalidated and
re-learned under a stream, subscribers joining and leaving (on the same
worker and on another), QoS downgrade and overlapping subscriptions,
retained and QoS 2 messages between cached ones, persistent sessions,
takeover, a worker's death, a stopped and a killed router. They hold for
a daemon that sends every publish to the router as well.

Co-location: workers=1 puts every client on the one worker; with workers=2
the tests place clients by asking which worker holds each connection
(Broker.worker_of), keeping misplaced connections open as fillers.

Causality, not sleeps: a message counts as published after a SUBACK when
the publisher started sending it after the subscriber's reader thread had
parsed that SUBACK (one monotonic clock for every thread), and as handled
by the daemon before an UNSUBSCRIBE when its PUBACK (same worker: the
worker queues PUBACK when it takes the message, and the router reads one
worker's records in order) or its arrival at a steady subscriber came
before the UNSUBSCRIBE was sent. Such a message must reach (or, after an
UNSUBACK, must not reach) the client; nothing else about the overlap is
asserted.

Allowed for whatever the path (iotd and Mosquitto 2.0.11 alike): a QoS 0
delivery is written at once while QoS 1/2 ones wait behind the client's
in-flight window, so a QoS 0 message may overtake QoS 1 ones held there
(where a test mixes delivered QoS under load, order is asserted per QoS);
and what a clean session has waiting behind its window ends with it at
DISCONNECT.
"""

import os
import secrets
import signal
import threading
import time

import pytest

import mqttraw as m
from helpers import T, Clients, proc_alive, raw_on, uid, wait_for

INF = float("inf")


# ------------------------------------------------------------ clients

class Sub:
    """A RawClient read by its own thread: every PUBLISH is recorded with the
    time it was parsed and acknowledged at once (QoS 2: PUBREC, then PUBCOMP
    on PUBREL); SUBACK and UNSUBACK are handed to the thread that asked. A
    payload b"<tag>:<n>" is also recorded as sequence number n of <tag>."""

    def __init__(self, client):
        self.c = client
        self.id = client.client_id
        self.cond = threading.Condition()
        self.send_lock = threading.Lock()
        self.got = []             # (Packet, t)
        self.seq = {}             # tag -> [(n, t, qos)]
        self.acks = {}            # (type, pid) -> (Packet, t)
        self.other = []
        self.closed_at = None
        self.error = None
        self._pid = 0
        self._stop = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True, name=f"sub-{self.id}")
        self.t.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                p = self.c.recv_packet(timeout=0.05)
            except m.Timeout:
                continue
            except m.ConnectionClosed:
                with self.cond:
                    self.closed_at = time.monotonic()
                    self.cond.notify_all()
                return
            except Exception as e:            # noqa: BLE001 - reported by every wait
                with self.cond:
                    self.error = e
                    self.closed_at = time.monotonic()
                    self.cond.notify_all()
                return
            now = time.monotonic()
            if p.type == m.PUBLISH:
                with self.cond:
                    self.got.append((p, now))
                    tag, sep, n = p.payload.rpartition(b":")
                    if sep and n.isdigit():
                        self.seq.setdefault(tag.decode(), []).append((int(n), now, p.qos))
                    self.cond.notify_all()
                if p.qos == 1:
                    self.send(m.puback(p.pid), quiet=True)
                elif p.qos == 2:
                    self.send(m.pubrec(p.pid), quiet=True)
            elif p.type == m.PUBREL:
                self.send(m.pubcomp(p.pid), quiet=True)
            elif p.type in (m.SUBACK, m.UNSUBACK):
                with self.cond:
                    self.acks[(p.type, p.pid)] = (p, now)
                    self.cond.notify_all()
            else:
                with self.cond:
                    self.other.append(p)
                    self.cond.notify_all()

    def send(self, data, quiet=False):
        try:
            with self.send_lock:
                self.c.send(data)
        except OSError:
            if not quiet:
                raise

    def _wait(self, cond, timeout, what):
        with self.cond:
            ok = self.cond.wait_for(lambda: cond() or self.error is not None, T(timeout))
            if self.error is not None:
                raise AssertionError(f"[{self.id}] reader failed: {self.error!r}")
            if not ok:
                raise AssertionError(f"[{self.id}] timed out after {T(timeout):.1f} s waiting "
                                     f"for {what}; last received: {self.got[-3:]!r}")

    def next_pid(self):
        self._pid = self._pid % 65535 + 1
        return self._pid

    # --- requests

    def send_subscribe(self, filters):
        """SUBSCRIBE without waiting; returns (pid, time sent)."""
        pid = self.next_pid()
        t = time.monotonic()
        self.send(m.subscribe(pid, filters))
        return pid, t

    def wait_ack(self, ptype, pid, timeout=5):
        self._wait(lambda: (ptype, pid) in self.acks, timeout,
                   f"{m.TYPE_NAMES[ptype]} {pid}")
        with self.cond:
            return self.acks[(ptype, pid)]

    def subscribe(self, filters, codes=None):
        """SUBSCRIBE [(filter, qos)], wait for SUBACK; (time sent, time of SUBACK)."""
        pid, t_sent = self.send_subscribe(filters)
        p, t_ack = self.wait_ack(m.SUBACK, pid)
        want = [q for _, q in filters] if codes is None else codes
        assert p.codes == want, f"[{self.id}] SUBACK codes {p.codes}, expected {want}"
        return t_sent, t_ack

    def unsubscribe(self, filters):
        """UNSUBSCRIBE, wait for UNSUBACK; (time sent, time of UNSUBACK)."""
        pid = self.next_pid()
        t_sent = time.monotonic()
        self.send(m.unsubscribe(pid, filters))
        return t_sent, self.wait_ack(m.UNSUBACK, pid)[1]

    def ping(self):
        """PINGREQ and wait for PINGRESP: the server has read everything
        this client sent before (acknowledgements included)."""
        with self.cond:
            n = sum(1 for p in self.other if p.type == m.PINGRESP)
        self.send(m.pingreq())
        self._wait(lambda: sum(1 for p in self.other if p.type == m.PINGRESP) > n, 5,
                   "PINGRESP")

    def disconnect(self):
        self.send(m.disconnect())
        self.wait_closed(2)
        self.close()

    # --- what arrived

    def packets(self):
        with self.cond:
            return list(self.got)

    def payloads(self):
        return [p.payload for p, _ in self.packets()]

    def seqs(self, tag):
        """[(n, arrival time, qos)] of tag, in arrival order."""
        with self.cond:
            return list(self.seq.get(tag, []))

    def nums(self, tag):
        return [n for n, _, _ in self.seqs(tag)]

    def max_seq(self, tag):
        s = self.seq.get(tag)
        return s[-1][0] if s else -1

    def wait_seq(self, tag, n, timeout=10):
        """Until a message of tag numbered n or higher arrived."""
        self._wait(lambda: self.max_seq(tag) >= n, timeout, f"{tag}:{n}")

    def wait_payload(self, payload, timeout=10):
        """Until a PUBLISH with this payload arrived; its index in packets()."""
        def find():
            for i, (p, _) in enumerate(self.got):
                if p.payload == payload:
                    return i + 1
            return 0
        self._wait(find, timeout, f"a PUBLISH with payload {payload!r}")
        with self.cond:
            return find() - 1

    def wait_count(self, n, timeout=10):
        self._wait(lambda: len(self.got) >= n, timeout, f"{n} PUBLISHes (have {len(self.got)})")
        return self.packets()

    def wait_closed(self, timeout=5):
        self._wait(lambda: self.closed_at is not None, timeout, "the server to close")

    def stop(self):
        self._stop.set()
        self.t.join(T(5))

    def close(self):
        self.stop()
        self.c.close()


class Pub:
    """A publishing RawClient used by one thread at a time."""

    def __init__(self, client):
        self.c = client
        self.id = client.client_id
        self._pid = 0
        self.sync_base = None
        self.sync_n = 0

    def next_pid(self):
        self._pid = self._pid % 65535 + 1
        return self._pid

    def publish(self, topic, payload, qos=1, retain=False):
        """PUBLISH and its whole handshake (PUBACK, or PUBREC PUBREL PUBCOMP)."""
        if isinstance(payload, str):
            payload = payload.encode()
        self.c.publish(topic, payload, qos=qos, retain=retain,
                       pid=self.next_pid() if qos else None)

    def burst(self, items):
        """Send every (topic, payload, qos, retain) in one write, then complete
        the handshakes (PUBREL on PUBREC) until every one is acknowledged."""
        data, waiting = b"", set()
        for topic, payload, qos, retain in items:
            pid = self.next_pid() if qos else None
            if isinstance(payload, str):
                payload = payload.encode()
            data += m.publish(topic, payload, qos=qos, retain=retain, pid=pid)
            if qos:
                waiting.add(pid)
        self.c.send(data)
        while waiting:
            p = self.c.recv_packet(timeout=T(5), what="acknowledgements of the burst")
            if p.type == m.PUBACK or p.type == m.PUBCOMP:
                assert p.pid in waiting, f"[{self.id}] unexpected {p!r}"
                waiting.discard(p.pid)
            elif p.type == m.PUBREC:
                self.c.send(m.pubrel(p.pid))
            else:
                raise AssertionError(f"[{self.id}] unexpected {p!r} while publishing")

    def enable_sync(self):
        """Subscribe to a topic tree of its own, for sync(). Call it before
        the routes a test relies on are learned (a SUBSCRIBE invalidates them)."""
        self.sync_base = f"ltsync/{secrets.token_hex(4)}"
        self.c.subscribe([(f"{self.sync_base}/+", 0)], pid=self.next_pid())

    def sync(self):
        """Publish to a topic never used before and wait for it to come back
        through the router. Every record the router sent this worker before
        it (route answers for earlier publishes included) has then been
        handled, so a route those publishes asked for is now cached."""
        self.sync_n += 1
        topic = f"{self.sync_base}/{self.sync_n}"
        self.c.send(m.publish(topic, b"sync", qos=0))
        p = self.c.expect(m.PUBLISH, timeout=T(5))
        assert p.topic == topic, f"[{self.id}] expected the sync message, got {p!r}"

    def warm(self, topic, n=3, qos=1, tag="warm"):
        """A few publishes on topic, then sync(): the route is learned."""
        for i in range(n):
            self.publish(topic, f"{tag}:{i}", qos=qos)
        self.sync()

    def close(self):
        self.c.close()


class Gate:
    """Lets a Stream publish message i only once i < allowed: the test
    widens it step by step, so the stream keeps pace with what the test does
    meanwhile (however fast the daemon answers), and opens it at the end."""

    def __init__(self, allowed):
        self.cond = threading.Condition()
        self.allowed = allowed

    def widen(self, by):
        with self.cond:
            self.allowed += by
            self.cond.notify_all()

    def open(self):
        self.widen(INF)

    def wait(self, i, timeout=10):
        with self.cond:
            if not self.cond.wait_for(lambda: i < self.allowed, T(timeout)):
                raise AssertionError(f"message {i} not allowed within {T(timeout):.0f} s")


class Stream(threading.Thread):
    """Publishes b"<tag>:<i>" for i = 0, 1, ... on one topic from its own
    thread: at least n messages, and on until complete() is called.
    QoS 1 waits for each PUBACK. With `follow` (a Sub), it keeps at most
    `window` messages ahead of that subscriber, so no queue limit drops
    anything. Records each message's start (before the write) and, QoS 1,
    done (PUBACK parsed) times."""

    CAP = 60000

    def __init__(self, pub, topic, tag, qos=1, n=2000, follow=None, window=200, gate=None):
        super().__init__(daemon=True, name=f"stream-{tag}")
        self.pub, self.topic, self.tag, self.qos = pub, topic, tag, qos
        self.n, self.follow, self.window = n, follow, window
        self.until = threading.Event()
        self.gate = gate
        self.t_start, self.t_done = [], []
        self.error = None
        self.halt = threading.Event()

    def run(self):
        try:
            i = 0
            while not self.halt.is_set():
                if i >= self.n and self.until.is_set():
                    break
                if i >= self.CAP:
                    raise AssertionError(f"stream {self.tag} reached {self.CAP} messages")
                if self.follow is not None and i - self.window > self.follow.max_seq(self.tag):
                    self.follow.wait_seq(self.tag, i - self.window, timeout=10)
                if self.gate is not None:
                    self.gate.wait(i)
                payload = f"{self.tag}:{i}".encode()
                self.t_start.append(time.monotonic())
                if self.qos:
                    self.pub.publish(self.topic, payload, qos=self.qos)
                else:
                    self.pub.c.send(m.publish(self.topic, payload, qos=0))
                self.t_done.append(time.monotonic())
                i += 1
        except BaseException as e:            # noqa: BLE001 - re-raised by finish()
            self.error = e

    @property
    def count(self):
        return len(self.t_done)

    def finish(self, timeout=30):
        """Wait for the stream to end (n reached and complete() called),
        re-raise its failure; the count."""
        self.join(T(timeout))
        if self.is_alive():
            self.halt.set()
            self.join(T(5))
            raise AssertionError(f"stream {self.tag} still running after {T(timeout):.0f} s "
                                 f"({self.count} sent)")
        if self.error is not None:
            raise AssertionError(f"stream {self.tag} failed: {self.error!r}") from self.error
        return self.count

    def end(self, sub):
        """After finish(): a QoS 1 end marker on the same topic, once the
        subscriber has it every earlier message has arrived (one publisher,
        one topic: in order)."""
        self.pub.publish(self.topic, f"{self.tag}-end", qos=1)
        sub.wait_payload(f"{self.tag}-end".encode())

    def release(self):
        """Let the stream end once it has sent n messages (its gate opened)."""
        self.until.set()
        if self.gate is not None:
            self.gate.open()

    def complete(self, sub):
        """release(), finish() and end(sub): the count."""
        self.release()
        total = self.finish()
        self.end(sub)
        return total


# ------------------------------------------------------------ fixture

class Env:
    """A test's clients, closed at teardown (before the broker stops)."""

    def __init__(self, broker):
        self.broker = broker
        self.owned = Clients()
        self.streams = []
        self.base = f"lt/{secrets.token_hex(3)}"

    def topic(self, name):
        return f"{self.base}/{name}"

    def raw(self, tag, cid=None, **kw):
        return self.owned.raw(self.broker, cid, tag=tag, **kw)

    def sub(self, tag="sub", client=None, subscribe=None, **kw):
        """A Sub of a new client (or of client), subscribed at once to the
        (filter, qos) list subscribe when given."""
        s = self.owned.own(Sub(client or self.raw(tag, **kw)))
        if subscribe:
            s.subscribe(subscribe)
        return s

    def pub(self, tag="pub", client=None, sync=True, **kw):
        p = Pub(client or self.raw(tag, **kw))
        if sync:
            p.enable_sync()
        return p

    def learned_route(self, name, qos=1, tag="sub"):
        """A subscriber to lt.topic(name) (granted qos) and a publisher, the
        route between them learned (Pub.warm): (topic, Sub, Pub)."""
        topic = self.topic(name)
        sub = self.sub(tag, subscribe=[(topic, qos)])
        pub = self.pub("pub")
        pub.warm(topic)
        return topic, sub, pub

    def stream(self, *a, **kw):
        s = Stream(*a, **kw)
        self.streams.append(s)
        return s

    def two_workers(self, n_a, n_b, tag="place"):
        """RawClients: n_a held by one worker, n_b by another (Mosquitto, one
        process: simply n_a and n_b clients). Misplaced connections stay
        open as fillers, so the listener's balance is not disturbed."""
        if not self.broker.multiworker:
            return ([self.raw(f"{tag}a") for _ in range(n_a)],
                    [self.raw(f"{tag}b") for _ in range(n_b)])
        by = {}
        for _ in range(4 * (n_a + n_b) + 4):
            c = self.raw(tag)
            by.setdefault(self.broker.worker_of(c), []).append(c)
            for wa, ca in by.items():
                for wb, cb in by.items():
                    if wa != wb and len(ca) >= n_a and len(cb) >= n_b:
                        return ca[:n_a], cb[:n_b]
        raise AssertionError(f"could not place {n_a} + {n_b} clients on two workers: "
                             f"{ {w: len(c) for w, c in by.items()} }")

    def close(self):
        for s in self.streams:
            s.release()
            s.halt.set()
            s.join(T(10))
        self.owned.close()


@pytest.fixture
def lt(broker, clients):
    return clients.own(Env(broker))


# ------------------------------------------------------------ checks

def flush(lt, sub, pub):
    """Wait until sub has every QoS 1/2 message the server holds for it
    behind its in-flight window: it subscribes to a fresh topic and pub
    sends one QoS 1 message there, which queues behind them."""
    topic = lt.topic(f"flush/{secrets.token_hex(3)}")
    sub.subscribe([(topic, 1)])
    pub.publish(topic, "flushed", qos=1)
    sub.wait_payload(b"flushed")


def assert_in_order(nums, what, total=None):
    """Strictly increasing (no duplicate, no reordering); with total:
    exactly 0..total-1."""
    if total is not None:
        if nums != list(range(total)):
            seen, dups, back = set(), [], []
            for a, b in zip(nums, nums[1:]):
                if b <= a:
                    back.append((a, b))
            for n in nums:
                if n in seen:
                    dups.append(n)
                seen.add(n)
            missing = sorted(set(range(total)) - seen)
            raise AssertionError(f"{what}: got {len(nums)} of {total} messages; missing "
                                 f"{missing[:20]} ({len(missing)}), duplicated {dups[:20]}, "
                                 f"out of order (prev, next) {back[:10]}")
        return
    back = [(a, b) for a, b in zip(nums, nums[1:]) if b <= a]
    assert not back, f"{what}: out of order or duplicated (prev, next): {back[:20]}"


def first_arrivals(sub, tag):
    out = {}
    for n, t, _ in sub.seqs(tag):
        out.setdefault(n, t)
    return out


def check_windows(stream, steady, sub, windows, same_worker, need_both=True):
    """Asserts what `sub` (which subscribed and unsubscribed during the
    stream) received of it. windows: [(qos granted, t SUBACK, t UNSUBSCRIBE
    sent, t UNSUBACK, t next SUBSCRIBE sent or INF)], in order. A message
    published after a SUBACK and handled before the following UNSUBSCRIBE
    was sent must arrive once at min(publish QoS, granted QoS); one
    published after an UNSUBACK and handled before the next SUBSCRIBE was
    sent must not arrive. "Handled" means
    received by the steady subscriber (or, on the same worker, acknowledged
    by PUBACK) before that instant. Fails when no message fell in either
    kind of window (nothing was tested); returns the two counts."""
    at_steady = first_arrivals(steady, stream.tag)
    got = sub.seqs(stream.tag)
    nums = [n for n, _, _ in got]
    dups = sorted(n for n in set(nums) if nums.count(n) > 1)
    assert not dups, f"{sub.id}: duplicated messages: {dups[:20]}"
    # In order within each delivered QoS: a QoS 0 delivery is written at
    # once while QoS 1 ones may wait behind the in-flight window (iotd and
    # Mosquitto alike), so a later window at QoS 0 may overtake an earlier
    # one at QoS 1.
    for q in (0, 1, 2):
        assert_in_order([n for n, _, dq in got if dq == q],
                        f"{sub.id} (subscribed and unsubscribed over and over), QoS {q}")
    qos_of = {n: q for n, _, q in got}
    start, done = stream.t_start, stream.t_done

    def handled_before(i, t):
        if same_worker and stream.qos and i < len(done) and done[i] < t:
            return True
        return at_steady.get(i, INF) < t

    missing, wrong_qos, extra = [], [], []
    n_in = n_out = 0
    for k, (g, t_suback, t_unsub, t_unsuback, t_next_sub) in enumerate(windows):
        for i in range(len(done)):
            if start[i] > t_suback and handled_before(i, t_unsub):
                n_in += 1
                if i not in qos_of:
                    missing.append((k, i))
                elif qos_of[i] != min(stream.qos, g):
                    wrong_qos.append((k, i, qos_of[i]))
            elif start[i] > t_unsuback and handled_before(i, t_next_sub):
                n_out += 1
                if i in qos_of:
                    extra.append((k, i))
    assert not missing, (f"{sub.id}: messages published after its SUBACK and handled before "
                         f"its UNSUBSCRIBE never arrived ((window, seq)): {missing[:20]} "
                         f"({len(missing)})")
    assert not extra, (f"{sub.id}: messages published after its UNSUBACK (and handled before "
                       f"its next SUBSCRIBE) were delivered ((window, seq)): {extra[:20]}")
    assert not wrong_qos, f"{sub.id}: wrong QoS ((window, seq, qos)): {wrong_qos[:20]}"
    if need_both:
        assert n_in and n_out, (f"{sub.id}: nothing to check ({n_in} messages had to arrive, "
                                f"{n_out} had not to): the test lost its point")
    return n_in, n_out


# ------------------------------------------------------------ iotd processes

# ------------------------------------------------------------ 1. churn

@pytest.mark.broker_config(workers=1)
@pytest.mark.parametrize("qos", [0, 1], ids=["qos0", "qos1"])
def test_steady_subscriber_keeps_order_while_another_client_churns_subscriptions(lt, qos):
    """A publisher streams numbered messages to a subscriber of the same
    worker that stays subscribed throughout, while a third client of that
    worker subscribes and unsubscribes the topic (exact filter, + and #, QoS 0
    and 1) over and over: each change invalidates the cached route and the
    next publish learns it again. The steady subscriber gets everything
    exactly once in order (QoS 0: in order, no duplicate); the churning
    client gets what it must, once, in order, and nothing after an UNSUBACK."""
    topic = lt.topic("churn/t")
    steady = lt.sub("steady", subscribe=[(topic, 1)])
    churn = lt.sub("churn")
    pub = lt.pub("pub")
    pub.warm(topic)
    # About 10 messages per subscribe or unsubscribe: each window below
    # waits for 2 more, which the gate, widened first, always allows.
    gate = Gate(20)
    stream = lt.stream(pub, topic, "c", qos=qos, n=2000, follow=steady, gate=gate)
    filters = [topic, lt.topic("churn/+"), lt.topic("churn/#")]
    windows = []
    stream.start()
    for k in range(120):
        flt, g = filters[k % 3], (k // 3) % 2
        t_sub, t_suback = churn.subscribe([(flt, g)])
        gate.widen(10)
        if windows:
            windows[-1] = windows[-1][:4] + (t_sub,)
        # Hold the subscription until two messages published after its
        # SUBACK reached the steady subscriber (same for the gap below).
        churn_from = len(stream.t_start)
        steady.wait_seq("c", churn_from + 1)
        t_unsub, t_unsuback = churn.unsubscribe([flt])
        gate.widen(10)
        windows.append((g, t_suback, t_unsub, t_unsuback, INF))
        if k % 2:
            steady.wait_seq("c", len(stream.t_start) + 1)
    total = stream.complete(steady)
    flush(lt, churn, pub)
    assert total >= 2000
    nums = steady.nums("c")
    if qos:
        assert_in_order(nums, "the steady subscriber", total)
    else:
        assert_in_order(nums, "the steady subscriber")
        assert nums, "the steady subscriber got none of the QoS 0 stream"
    assert {q for _, _, q in steady.seqs("c")} == {qos}
    n_in, n_out = check_windows(stream, steady, churn, windows, same_worker=True)
    print(f"\nchurn qos {qos}: {total} messages, {len(windows)} subscribe/unsubscribe cycles, "
          f"steady got {len(nums)}, churning client {len(churn.nums('c'))} "
          f"({n_in} had to arrive, {n_out} had not to)")


@pytest.mark.broker_config(workers=1)
def test_steady_subscriber_keeps_order_while_clients_come_subscribe_and_go(lt):
    """The same with the churn made of connections: a new clean-session
    client of the worker connects, subscribes, and disconnects (its
    subscription ends with its session), over and over. Each new client gets
    nothing before it has subscribed (a route naming a closed connection must
    not reach its successor) and, once, in order, everything published after
    its SUBACK and received by the steady subscriber before it leaves;
    the steady subscriber gets
    everything exactly once, in order."""
    topic, steady, pub = lt.learned_route("conn/t", tag="steady")
    gate = Gate(20)
    stream = lt.stream(pub, topic, "v", qos=1, n=1000, follow=steady, gate=gate)
    filters = [topic, lt.topic("conn/+"), lt.topic("conn/#")]
    visits = []
    stream.start()
    for k in range(60):
        c = lt.sub(f"visit{k}")
        gate.widen(10)
        steady.wait_seq("v", len(stream.t_start) + 1)
        t_sub, t_suback = c.subscribe([(filters[k % 3], k % 2)])
        gate.widen(10)
        steady.wait_seq("v", len(stream.t_start) + 1)
        # A clean session's messages still queued behind its in-flight
        # window end with it: before DISCONNECT, wait for what the
        # steady subscriber has now (it must come).
        t_seen = time.monotonic()
        c.wait_seq("v", steady.max_seq("v"))
        c.disconnect()
        visits.append((c, k % 2, t_sub, t_suback, t_seen))
    total = stream.complete(steady)
    assert_in_order(steady.nums("v"), "the steady subscriber", total)
    n_in = 0
    for c, g, t_sub, t_suback, t_seen in visits:
        early = [(p, t) for p, t in c.packets() if t < t_sub]
        assert not early, f"{c.id} got messages before it subscribed: {early[:5]}"
        # Handled: received by the steady subscriber (a PUBACK says less
        # here: a DISCONNECT is the worker's alone and may overtake a
        # delivery still in the router).
        n_in += check_windows(stream, steady, c, [(g, t_suback, t_seen, INF, INF)],
                              same_worker=False, need_both=False)[0]
    assert n_in, "no message had to reach a visiting client: the test lost its point"


# ------------------------------------------------------------ 2. subscribe

@pytest.mark.broker_config(workers=1)
@pytest.mark.parametrize("beside", [False, True], ids=["no_other_subscriber", "beside_another"])
def test_subscriber_gets_the_next_message_after_its_suback(lt, beside):
    """The publisher's route for the topic is learned (with no subscriber,
    or with another subscriber of the same worker), then a client of the
    same worker subscribes: the first message published after its SUBACK
    reaches it. Over and over, with each kind of filter and QoS."""
    topic = lt.topic("join/t")
    pub = lt.pub("pub")
    other = None
    if beside:
        other = lt.sub("other", subscribe=[(topic, 1)])
    pub.warm(topic)
    cases = [(topic, 0), (topic, 1), (lt.topic("join/+"), 1), (lt.topic("join/#"), 0),
             (lt.topic("+/t"), 1), (f"{lt.base}/#", 1)]
    for k, (flt, g) in enumerate(cases):
        for q in (0, 1):
            s = lt.sub(f"join{k}")
            pub.warm(topic, n=2, qos=q, tag=f"warm{k}{q}")
            s.subscribe([(flt, g)])
            pub.publish(topic, f"next:{k}{q}", qos=q)
            i = s.wait_payload(f"next:{k}{q}".encode(), timeout=5)
            got = s.packets()
            assert i == 0, f"{flt}: expected the message as its first, got {got!r}"
            assert got[0][0].qos == min(q, g), got[0][0]
            s.disconnect()
    if other is not None:
        want = sum(([f"warm{k}{q}:0", f"warm{k}{q}:1", f"next:{k}{q}"]
                    for k in range(len(cases)) for q in (0, 1)), [])
        pub.publish(topic, "other-end", qos=1)
        other.wait_payload(b"other-end")
        got = [(p.payload.decode(), p.qos) for p, _ in other.packets()]
        qos_of = {f"warm{k}{q}:{i}": q for k in range(len(cases)) for q in (0, 1)
                  for i in (0, 1)}
        qos_of.update({f"next:{k}{q}": q for k in range(len(cases)) for q in (0, 1)})
        # Per QoS: a QoS 0 delivery may overtake QoS 1 ones held behind a
        # full in-flight window, whatever the path.
        for q in (0, 1):
            assert [x for x, dq in got[3:-1] if dq == q] == \
                [x for x in want if qos_of[x] == q], f"the other subscriber: {got}"


# ------------------------------------------------------------ 3. unsubscribe

@pytest.mark.broker_config(workers=1)
def test_nothing_published_after_unsuback_is_delivered(lt):
    """A subscriber of the publisher's worker receives over a learned route,
    unsubscribes, and gets nothing published after its UNSUBACK, while a
    steady subscriber of the same worker proves those messages were routed.
    Then with overlapping subscriptions: dropping one filter leaves one copy
    at the remaining filter's QoS, dropping the last leaves nothing."""
    topic = lt.topic("leave/t")
    mark = lt.topic("leave/mark")
    steady = lt.sub("steady", subscribe=[(topic, 1)])
    s = lt.sub("leaver")
    pub = lt.pub("pub")
    for rnd in range(5):
        s.subscribe([(topic, 1), (mark, 0)])
        pub.warm(topic, n=3, tag=f"in{rnd}")
        s.wait_payload(f"in{rnd}:2".encode())
        s.unsubscribe([topic])
        n_before = len(s.packets())
        for i in range(5):
            pub.publish(topic, f"out{rnd}:{i}", qos=1)
        pub.publish(mark, f"mark{rnd}", qos=1)
        steady.wait_payload(f"out{rnd}:4".encode())
        s.wait_payload(f"mark{rnd}".encode())
        after = [p.payload for p, _ in s.packets()[n_before:]]
        assert after == [f"mark{rnd}".encode()], \
            f"round {rnd}: delivered after UNSUBACK: {after}"
        s.unsubscribe([mark])

    # Overlapping filters: a/# at QoS 0 and a/b at QoS 1, then one at a time.
    s.subscribe([(lt.topic("leave/#"), 0), (topic, 1)])
    pub.warm(topic, n=3, tag="both")
    s.wait_payload(b"both:2")
    n0 = len(s.packets())
    s.unsubscribe([topic])
    pub.publish(topic, "only-wild:0", qos=1)
    pub.publish(topic, "only-wild:1", qos=1)
    s.wait_payload(b"only-wild:1")
    got = s.packets()[n0:]
    assert [(p.payload, p.qos) for p, _ in got] == [(b"only-wild:0", 0), (b"only-wild:1", 0)], \
        f"after dropping {topic}: one copy each at QoS 0 expected, got {got}"
    s.subscribe([(mark, 0)])
    s.unsubscribe([lt.topic("leave/#")])
    n1 = len(s.packets())
    pub.publish(topic, "none:0", qos=1)
    pub.publish(mark, "last-mark", qos=1)
    s.wait_payload(b"last-mark")
    after = [p.payload for p, _ in s.packets()[n1:]]
    assert after == [b"last-mark"], f"delivered after the last UNSUBACK: {after}"
    steady.wait_payload(b"none:0")


# ------------------------------------------------------------ 4. other worker

@pytest.mark.broker_config(workers=2)
def test_subscriber_on_the_other_worker_joins_and_leaves_mid_stream(lt):
    """A publisher and a subscriber share a worker (a local route) while a
    client of the other worker subscribes in the middle of the stream
    (the route stops being local), and later leaves (it may become local
    again), three times. It receives, once, in order, every message
    published after its SUBACK until it unsubscribes, at its granted QoS, and
    none published after its UNSUBACK; the first subscriber gets everything
    in order, exactly once."""
    (pc, sc), (rc,) = lt.two_workers(2, 1)
    lt.broker.assert_different_workers(sc, rc)
    topic = lt.topic("remote/t")
    steady, remote = lt.sub(client=sc), lt.sub(client=rc)
    steady.subscribe([(topic, 1)])
    pub = lt.pub(client=pc)
    pub.warm(topic)
    stream = lt.stream(pub, topic, "r", qos=1, n=1500, follow=steady)
    windows = []
    stream.start()
    steady.wait_seq("r", 100)
    for k in range(3):
        g = (1, 0, 1)[k]
        t_sub, t_suback = remote.subscribe([(topic if k != 1 else lt.topic("remote/#"), g)])
        if windows:
            windows[-1] = windows[-1][:4] + (t_sub,)
        steady.wait_seq("r", len(stream.t_start) + 50)
        t_unsub, t_unsuback = remote.unsubscribe([topic if k != 1 else lt.topic("remote/#")])
        windows.append((g, t_suback, t_unsub, t_unsuback, INF))
        steady.wait_seq("r", len(stream.t_start) + 50)
    total = stream.complete(steady)
    flush(lt, remote, pub)
    assert_in_order(steady.nums("r"), "the subscriber beside the publisher", total)
    check_windows(stream, steady, remote, windows, same_worker=False)
    # Each stay is one run of consecutive numbers (a gap would mean the
    # subscription was in force, then not, then again).
    nums = sorted(remote.nums("r"))
    runs = sum(1 for a, b in zip([None] + nums, nums) if a is None or b != a + 1)
    assert runs <= 3, f"the remote subscriber's messages have gaps: {runs} runs for 3 stays"


# ------------------------------------------------------------ 5. QoS

@pytest.mark.broker_config(workers=1)
def test_delivered_qos_is_the_lower_of_publish_and_granted_qos_on_a_learned_route(lt):
    """Subscribers granted QoS 0, 1 and 2 on the publisher's worker; QoS 0, 1
    and 2 publishes, five rounds (after the first, the route is learned):
    each arrives once at min(publish QoS, granted QoS)."""
    pub = lt.pub("pub")
    subs = []
    for g in (0, 1, 2):
        s = lt.sub(f"g{g}")
        s.subscribe([(lt.topic(f"qos/g{g}"), g)])
        subs.append(s)
    for rnd in range(5):
        for q in (1, 0, 2):
            for g in (0, 1, 2):
                pub.publish(lt.topic(f"qos/g{g}"), f"r{rnd}q{q}", qos=q)
    for g, s in zip((0, 1, 2), subs):
        pub.publish(lt.topic(f"qos/g{g}"), "end", qos=1)
        s.wait_payload(b"end")
        got = [(p.payload.decode(), p.qos) for p, _ in s.packets()]
        want = [(f"r{rnd}q{q}", min(q, g)) for rnd in range(5) for q in (1, 0, 2)]
        assert got == want + [("end", min(1, g))], f"granted QoS {g}: {got}"


@pytest.mark.broker_config(workers=1)
@pytest.mark.mosquitto_differs("Mosquitto 2.0.11 folds overlapping subscriptions into one "
                               "copy at the QoS of one of them (not always the highest)")
@pytest.mark.parametrize("subs,top", [
    ([[("a/#", 0), ("a/b", 1)]], 1),
    ([[("a/b", 1)], [("a/#", 0)]], 1),
    ([[("a/#", 1)], [("a/+", 0), ("a/b", 0)]], 1),
    ([[("a/#", 2), ("a/b", 1)]], 2),
], ids=["wild0_exact1", "exact1_then_wild0", "wild1_plus0_exact0", "wild2_exact1"])
def test_overlapping_subscriptions_get_one_copy_at_the_highest_granted_qos(lt, subs, top):
    """One client's overlapping subscriptions (in one SUBSCRIBE or several),
    beside another client with a single one, all on the publisher's worker:
    each publish arrives once per client, at min(publish QoS, the highest
    granted QoS), five rounds of QoS 0, 1 and 2."""
    t = lt.topic("a/b")
    c = lt.sub("overlap")
    for packet in subs:
        c.subscribe([(lt.topic(f), q) for f, q in packet])
    single = lt.sub("single")
    single.subscribe([(lt.topic("a/#"), 0)])
    pub = lt.pub("pub")
    want = []
    for rnd in range(5):
        for q in (0, 1, 2):
            pub.publish(t, f"r{rnd}q{q}", qos=q)
            want.append((f"r{rnd}q{q}", q))
    pub.publish(t, "end", qos=1)
    for s, g in ((c, top), (single, 0)):
        s.wait_payload(b"end")
        got = [(p.payload.decode(), p.qos) for p, _ in s.packets()]
        assert got == [(x, min(q, g)) for x, q in want] + [("end", min(1, g))], \
            f"{s.id}: {got}"
    # No late duplicate after the end marker either.
    pub.publish(lt.topic("a/x"), "after", qos=1)
    single.wait_payload(b"after")
    c.wait_payload(b"after")
    assert [p.payload for p, _ in c.packets()][-2:] == [b"end", b"after"], c.packets()[-3:]


# ------------------------------------------------------------ 6. retained

@pytest.mark.broker_config(workers=1)
@pytest.mark.parametrize("qos", [0, 1], ids=["qos0", "qos1"])
def test_retained_publish_is_not_overtaken_by_the_messages_after_it(lt, qos):
    """Over a learned route, bursts of ten messages in one write where one is
    retained (it goes through the router, the others may not): the
    subscriber of the same worker gets the ten in order, the retained one
    with retain 0 (a live delivery); a client subscribing afterwards gets the
    last retained one, with retain 1."""
    topic, s, pub = lt.learned_route("ret/t")
    positions = [1, 0, 5, 9, 1]
    want = []
    for rnd, pos in enumerate(positions):
        items = [(topic, f"r{rnd}m{i + 1}", qos, i == pos) for i in range(10)]
        pub.burst(items)
        want += [(x, False) for _, x, _, _ in items]
    pub.publish(topic, "end", qos=1)
    s.wait_payload(b"end")
    got = [(p.payload.decode(), p.retain) for p, _ in s.packets()]
    assert got[3:] == want + [("end", False)], f"live deliveries: {got[3:]}"
    assert [p.qos for p, _ in s.packets()[3:-1]] == [qos] * len(want)

    late = lt.sub("late", subscribe=[(topic, 1)])
    p, _ = late.wait_count(1)[0]
    last = f"r{len(positions) - 1}m{positions[-1] + 1}".encode()
    assert (p.payload, p.retain, p.qos) == (last, True, qos), f"retained: {p!r}"
    pub.publish(topic, "after", qos=1)
    late.wait_payload(b"after")
    assert late.payloads() == [last, b"after"], late.packets()


# ------------------------------------------------------------ 7. QoS 2

@pytest.mark.broker_config(workers=1)
def test_qos2_publish_on_a_learned_route_arrives_once_between_its_neighbours(lt):
    """QoS 1, QoS 2 (whole handshake), QoS 1 publishes in turn on a topic
    whose route is learned, to a QoS 2 subscriber of the same worker: each
    arrives once, in order, the QoS 2 one at QoS 2."""
    topic, s, pub = lt.learned_route("q2/t", qos=2)
    want = []
    for rnd in range(6):
        for i, q in enumerate((1, 1, 2, 1, 1)):
            pub.publish(topic, f"r{rnd}m{i}", qos=q)
            want.append((f"r{rnd}m{i}", q))
    pub.publish(topic, "end", qos=1)
    s.wait_payload(b"end")
    got = [(p.payload.decode(), p.qos) for p, _ in s.packets()]
    assert got[3:] == want + [("end", 1)], f"{got[3:]}"


@pytest.mark.broker_config(workers=1, max_inflight=1000)
@pytest.mark.mosquitto_differs("Mosquitto hands a QoS 2 message on at PUBREL, not on receipt")
def test_qos2_publish_pipelined_with_qos1_on_a_learned_route_keeps_its_place(lt):
    """The same with QoS 1, QoS 2, QoS 1 PUBLISHes in one write (iotd routes a
    QoS 2 message when it first receives it, so the later QoS 1 ones, which
    may take the cached route, must not overtake it). A QoS 0 one closes each
    burst; the in-flight window is wide enough never to hold QoS 1/2
    deliveries back (a QoS 0 delivery is not queued behind it, so with a
    full window it would overtake them whatever the path)."""
    topic, s, pub = lt.learned_route("q2p/t", qos=2)
    want = []
    for rnd in range(10):
        items = [(topic, f"r{rnd}m{i}", q, False) for i, q in enumerate((1, 2, 1, 1, 2, 1, 0))]
        pub.burst(items)
        want += [(x, q) for _, x, q, _ in items]
    pub.publish(topic, "end", qos=1)
    s.wait_payload(b"end")
    got = [(p.payload.decode(), p.qos) for p, _ in s.packets()]
    assert got[3:] == want + [("end", 1)], f"{got[3:]}"


# ------------------------------------------------------------ 8. persistent

@pytest.mark.broker_config(workers=1)
@pytest.mark.parametrize("leave", ["disconnect", "drop"])
def test_persistent_subscriber_on_the_same_worker_gets_live_and_queued_messages(lt, leave):
    """Beside a clean subscriber (so the route was local), a persistent
    (clean session 0) client of the same worker subscribes: it gets what is
    published while it is connected; once it has left (DISCONNECT, or its
    socket just closed) QoS 1 messages are queued for it, not delivered
    locally to the gone connection, and arrive, in order, when it comes
    back; then live delivery resumes."""
    topic, clean, pub = lt.learned_route("pers/t", tag="clean")
    cid = uid("persist")
    p = lt.sub(client=lt.raw("persist", cid=cid, clean=False), subscribe=[(topic, 1)])
    for i in range(5):
        pub.publish(topic, f"live:{i}", qos=1)
    p.wait_seq("live", 4)
    p.ping()              # its PUBACKs were read: none of these comes again
    if leave == "disconnect":
        p.disconnect()
    else:
        p.close()
    for i in range(20):
        pub.publish(topic, f"away:{i}", qos=1)
    clean.wait_seq("away", 19)
    back = lt.sub(client=lt.raw("persist", cid=cid, clean=False))
    assert back.c.connack.session_present, "the persistent session was lost"
    back.wait_seq("away", 19)
    assert back.nums("away") == list(range(20)), f"queued: {back.packets()}"
    assert not back.seqs("live"), f"acknowledged messages came again: {back.packets()}"
    # Live again: the route includes it once more.
    for i in range(5):
        pub.publish(topic, f"again:{i}", qos=1)
    back.wait_seq("again", 4)
    assert back.nums("again") == list(range(5))
    # Away again, everything acknowledged: the next return brings only the new ones.
    back.disconnect()
    for i in range(5):
        pub.publish(topic, f"away2:{i}", qos=1)
    clean.wait_seq("away2", 4)
    last = lt.sub(client=lt.raw("persist", cid=cid, clean=False))
    last.wait_seq("away2", 4)
    pub.publish(topic, "end", qos=1)
    last.wait_payload(b"end")
    assert last.payloads() == [f"away2:{i}".encode() for i in range(5)] + [b"end"], \
        last.packets()
    assert p.nums("live") == list(range(5))
    assert clean.nums("away") == list(range(20)) and clean.nums("again") == list(range(5))


# ------------------------------------------------------------ 9. takeover

@pytest.mark.broker_config(workers=1)
def test_session_takeover_moves_delivery_to_the_new_connection(lt):
    """A clean-session subscriber of the publisher's worker (a local route)
    is taken over by a new connection with the same client id: the old
    connection is closed; the new one, before it subscribes, gets nothing
    (its session is new); after its SUBACK it gets every message, in order."""
    topic = lt.topic("take/t")
    watch = lt.sub("watch", subscribe=[(topic, 1)])
    cid = uid("taken")
    old = lt.sub(client=lt.raw("taken", cid=cid), subscribe=[(topic, 1)])
    pub = lt.pub("pub")
    pub.warm(topic)
    old.wait_payload(b"warm:2")
    new = lt.sub(client=lt.raw("taken", cid=cid))
    old.wait_closed()
    for i in range(5):
        pub.publish(topic, f"between:{i}", qos=1)
    pub.sync()
    watch.wait_payload(b"between:4")
    new.subscribe([(lt.topic("take/mark"), 0)])
    pub.publish(lt.topic("take/mark"), "mark", qos=1)
    new.wait_payload(b"mark")
    assert new.payloads() == [b"mark"], f"the new session got messages it never subscribed to: " \
                                        f"{new.packets()}"
    new.subscribe([(topic, 1)])
    for i in range(20):
        pub.publish(topic, f"after:{i}", qos=1)
    new.wait_seq("after", 19)
    assert new.nums("after") == list(range(20))
    assert [p.qos for p, _ in new.packets()[1:]] == [1] * 20
    assert old.nums("warm") == [0, 1, 2] and not old.seqs("between")


# ------------------------------------------------------------ 10. worker crash

@pytest.mark.iotd_only
@pytest.mark.broker_config(workers=2)
def test_killed_worker_leaves_the_other_workers_local_pair_streaming(lt):
    """Each of two workers holds a publisher and its subscriber (a local
    route each). kill -9 of one worker: its clients are disconnected; the
    other pair's QoS 1 stream loses nothing and stays in order. The worker
    is restarted: a new pair on it exchanges messages, and a new client on
    it subscribing to the surviving pair's topic gets everything published
    after its SUBACK."""
    broker = lt.broker
    (pa, sa), (pb, sb) = lt.two_workers(2, 2)
    wa, wb = broker.worker_of(pa), broker.worker_of(pb)
    assert wa == broker.worker_of(sa) and wb == broker.worker_of(sb) and wa != wb
    ta, tb = lt.topic("wk/a"), lt.topic("wk/b")
    suba, subb = lt.sub(client=sa), lt.sub(client=sb)
    suba.subscribe([(ta, 1)])
    subb.subscribe([(tb, 1)])
    puba, pubb = lt.pub(client=pa), lt.pub(client=pb)
    puba.warm(ta)
    pubb.warm(tb)
    suba.wait_payload(b"warm:2")
    stream = lt.stream(pubb, tb, "w", qos=1, n=600, follow=subb)
    stream.start()
    subb.wait_seq("w", 200)
    os.kill(wa, signal.SIGKILL)
    suba.wait_closed()
    pa.expect_closed(T(5))
    workers = broker.wait_worker_replaced(wa)
    broker.initial_pids = set(broker.pids())      # the kill was deliberate
    new_w = [p for p in workers if p != wb][0]
    subb.wait_seq("w", len(stream.t_start) + 100)

    # New clients land on the restarted worker (it holds the fewest); those
    # that land elsewhere stay open (lt closes them).
    reborn = dict(make=lambda: lt.raw("reborn"), spare=[])
    na = raw_on(broker, new_w, **reborn)
    nsub = lt.sub(client=raw_on(broker, new_w, **reborn), subscribe=[(ta, 1)])
    npub = lt.pub(client=na, sync=False)
    for i in range(20):
        npub.publish(ta, f"again:{i}", qos=1)
    nsub.wait_seq("again", 19)
    assert nsub.nums("again") == list(range(20))
    t_sub, t_suback = nsub.subscribe([(tb, 1)])
    subb.wait_seq("w", len(stream.t_start) + 100)
    t_unsub, t_unsuback = nsub.unsubscribe([tb])
    subb.wait_seq("w", len(stream.t_start) + 50)
    total = stream.complete(subb)
    flush(lt, nsub, pubb)
    assert_in_order(subb.nums("w"), "the surviving worker's subscriber", total)
    check_windows(stream, subb, nsub, [(1, t_suback, t_unsub, t_unsuback, INF)],
                  same_worker=False)
    assert nsub.nums("w"), "the restarted worker's subscriber got none of the stream"


# ------------------------------------------------------------ 11. router stopped

@pytest.mark.iotd_only
@pytest.mark.broker_config(workers=1)
def test_local_pair_keeps_flowing_while_the_router_is_stopped(lt):
    """A publisher and a subscriber of the same worker with a learned route:
    SIGSTOP the router; QoS 1 messages keep arriving, in order, while it is
    stopped; a SUBSCRIBE sent meanwhile is answered only after SIGCONT, and
    its client then gets what is published after its SUBACK."""
    topic = lt.topic("stop/t")
    s = lt.sub("sub", subscribe=[(topic, 1)])
    late = lt.sub("late")
    pub = lt.pub("pub")
    pub.warm(topic)
    s.wait_payload(b"warm:2")
    router = lt.broker.role_pid("router")
    assert router, "no router process"
    os.kill(router, signal.SIGSTOP)
    try:
        pid, _ = late.send_subscribe([(topic, 1)])
        for i in range(50):
            pub.publish(topic, f"st:{i}", qos=1)
        delivered_while_stopped = True
        try:
            s.wait_seq("st", 49, timeout=2)
        except AssertionError:
            delivered_while_stopped = False
        early_suback = (m.SUBACK, pid) in late.acks
    finally:
        os.kill(router, signal.SIGCONT)
        t_cont = time.monotonic()
    assert not early_suback, "SUBACK came while the router was stopped"
    _, t_suback = late.wait_ack(m.SUBACK, pid)
    assert t_suback >= t_cont
    for i in range(50, 70):
        pub.publish(topic, f"st:{i}", qos=1)
    s.wait_seq("st", 69)
    late.wait_seq("st", 69)
    assert_in_order(s.nums("st"), "the subscriber", 70)
    assert_in_order(late.nums("st"), "the client that subscribed during the stop")
    assert set(range(50, 70)) <= set(late.nums("st"))
    assert delivered_while_stopped, \
        f"nothing (or not all 50) delivered while the router was stopped: {s.nums('st')[:5]}..."


# ------------------------------------------------------------ 12. router killed

@pytest.mark.iotd_only
@pytest.mark.broker_config(workers=1)
def test_router_killed_while_a_local_pair_streams_loses_and_reorders_nothing(lt):
    """kill -9 of the router in the middle of a QoS 1 stream between two
    clients of one worker: the subscriber gets every message exactly once,
    in order (through the restarted router's replay, or the local path)."""
    broker = lt.broker
    topic, s, pub = lt.learned_route("rk/t")
    stream = lt.stream(pub, topic, "k", qos=1, n=1000, follow=s)
    stream.start()
    s.wait_seq("k", 300)
    old = broker.role_pid("router")
    assert old, "no router process"
    serving = broker.log.count("router: serving")
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: not proc_alive(old), 5, f"router {old} to die")
    wait_for(lambda: broker.log.count("router: serving") > serving, 10,
             "the new router to serve")
    broker.initial_pids = set(broker.pids())      # the kill was deliberate
    s.wait_seq("k", len(stream.t_start) + 300)
    total = stream.complete(s)
    assert_in_order(s.nums("k"), "the subscriber", total)
    assert {q for _, _, q in s.seqs("k")} == {1}
