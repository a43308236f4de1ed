"""A worker dies (kill -9) while clients on every worker publish and
receive at QoS 0, 1 and 2: only its own clients notice.

One scenario runs once for the module (the `crash` fixture); each test
below checks one promise of the crash contract against what it recorded:

* clients of the surviving worker keep their connections and every
  message, in order (QoS 0, 1 and 2 between two of its clients);
* the dead worker's clients are disconnected, their wills are published
  once each (seen by a watcher on the surviving worker), and they can
  reconnect at once (a persistent one gets its session back);
* QoS 1/2 messages published to an offline persistent session after the
  kill are all delivered when it comes back, QoS 2 exactly once;
* publishes the dead worker had acknowledged (PUBACK / PUBCOMP) reach the
  surviving worker's subscriber;
* the restarted worker serves, and the daemon keeps every other process.

* QoS 1/2 deliveries that sat inside the dying worker at the instant of
  the kill (unsent, or sent and not acknowledged) reach the persistent
  subscriber when it returns: the router kept a copy of each.

test_inflight_exchanges_resume_with_their_packet_ids checks the last
point alone, deterministically, packet ids and QoS 2 states included."""

import os
import signal
import threading
import time

import pytest

import mqttraw as m
from conftest import Broker
from helpers import (T, drop_paho, PahoClient, proc_alive, proc_title, published, raw, raw_on,
                     resumed, uid, wait_for)

pytestmark = pytest.mark.iotd_only

FLOW_PERIOD = 0.002          # seconds between two publishes of one flow
BATCH = 12                   # messages per QoS in each batch for the offline session


# ------------------------------------------------------------ helpers

def worker_index(pid):
    """N of "iotd: worker N" (None when pid is not a worker)."""
    t = proc_title(pid)
    return int(t.split()[-1]) if t.startswith("iotd: worker") else None


def worker_pid_by_index(broker, index):
    for p in broker.worker_pids():
        if worker_index(p) == index:
            return p
    return None


def paho_on(broker, make, want=None, avoid=None, fillers=None, tries=8):
    """A connected PahoClient (from make()) held by worker pid `want` (or by
    any worker but `avoid`). The listener hands a connection to the
    least-loaded worker, ties round-robin: a client that lands elsewhere is
    disconnected, a plain filler connection (kept open in `fillers`) shifts
    the balance, and another client is made."""
    for _ in range(tries):
        c = make()
        w = broker.worker_of(c)
        if (want is None or w == want) and w != avoid:
            return c, w
        drop_paho(broker, c)
        fillers.append(raw(broker, tag="filler"))
    raise AssertionError(f"could not place a client on worker {want} (avoiding {avoid}) "
                         f"in {tries} tries")


class Flow(threading.Thread):
    """Publishes numbered messages on <base>/q0, /q1 and /q2 in turn until
    stopped or disconnected; records each publish with the time it was
    handed to paho and paho's handle (acknowledged or not)."""

    def __init__(self, client, tag, base):
        super().__init__(daemon=True)
        self.client, self.tag, self.base = client, tag, base
        self.sent = []            # (topic, payload, qos, t, MQTTMessageInfo)
        self.stop = threading.Event()

    def run(self):
        i = 0
        while not self.stop.is_set() and self.client.disconnected is None:
            qos = i % 3
            topic = f"{self.base}/q{qos}"
            payload = f"{self.tag}-q{qos}-{i}"
            t = time.monotonic()
            info = self.client.publish(topic, payload, qos=qos, wait=False)
            self.sent.append((topic, payload, qos, t, info))
            i += 1
            time.sleep(FLOW_PERIOD)

    def by_qos(self, qos, before=None, after=None):
        return [(tp, p) for tp, p, q, t, _ in self.sent if q == qos and
                (before is None or t < before) and (after is None or t > after)]

    def acked(self, qos, before=None):
        """Payloads of this QoS whose PUBACK / PUBCOMP arrived (before a time)."""
        return [(tp, p) for tp, p, q, t, info in self.sent
                if q == qos and published(info) and (before is None or t < before)]


class Result:
    """What the scenario saw; the tests assert on it."""


# ------------------------------------------------------------ the scenario

@pytest.fixture(scope="module")
def crash(tmp_path_factory):
    broker = Broker(tmp_path_factory.mktemp("crash-worker"), "broker", workers=2,
                    max_queued_messages=100000)
    try:
        yield run_scenario(broker)
        broker.teardown()
    finally:
        if broker.proc.poll() is None:
            broker._kill_all(broker.pids())


def run_scenario(broker):
    r = Result()
    r.broker = broker
    wpids = broker.worker_pids()
    assert len(wpids) == 2, f"expected 2 workers, have {wpids}"

    # Worker A (to be killed): a persistent subscriber and a persistent
    # publisher, both with wills. Worker B (survives): a subscriber, a
    # publisher and a will watcher.
    r.fillers = []
    ids = {}

    def make(tag, clean=True, will=False):
        def f():
            cid = ids[tag] = uid(tag)
            return _paho(broker, cid, clean,
                         (f"cwill/{cid}", f"{tag}-gone".encode(), 1, False) if will else None)
        return f
    sa, a = paho_on(broker, make("cw-sa", False, True), fillers=r.fillers)
    pa, _ = paho_on(broker, make("cw-pa", False, True), want=a, fillers=r.fillers)
    sb, b = paho_on(broker, make("cw-sb"), avoid=a, fillers=r.fillers)
    pb, _ = paho_on(broker, make("cw-pb"), want=b, fillers=r.fillers)
    watcher, _ = paho_on(broker, make("cw-will"), want=b, fillers=r.fillers)
    r.sa_id, r.pa_id = ids["cw-sa"], ids["cw-pa"]
    r.a_pid, r.b_pid, r.a_index = a, b, worker_index(a)
    r.pids_before = set(broker.pids())
    watcher.subscribe("cwill/#", qos=1)
    for s in (sa, sb):
        s.subscribe("cw/#", qos=2)
    sa.subscribe("cwq/#", qos=2)
    r.sa, r.pa, r.sb, r.pb, r.watcher = sa, pa, sb, pb, watcher

    # Traffic on both workers, in both directions, then the kill.
    fa, fb = Flow(pa, "a", "cw/a"), Flow(pb, "b", "cw/b")
    r.fa, r.fb = fa, fb
    fa.start()
    fb.start()
    wait_for(lambda: len(fa.sent) > 150 and len(fb.sent) > 150 and
             len(sa.messages) > 100 and len(sb.messages) > 100, 10,
             "traffic to flow on both workers")
    r.t_kill = time.monotonic()
    os.kill(a, signal.SIGKILL)
    wait_for(lambda: not proc_alive(a), 5, f"worker {a} to die")

    # Batch 1: straight after the kill, for the persistent subscriber now offline.
    r.batch = []
    for q in (1, 2):
        for i in range(BATCH):
            p = f"b1-q{q}-{i}"
            pb.publish(f"cwq/q{q}", p, qos=q)
            r.batch.append((f"cwq/q{q}", p, q))

    # The dead worker's clients are disconnected; one comes back at once.
    r.disconnected = {}
    for name, c in (("sa", sa), ("pa", pa)):
        try:
            c.wait_disconnected(5)
            r.disconnected[name] = c.disconnected
        except AssertionError:
            r.disconnected[name] = None
    t0 = time.monotonic()
    r.pa2 = PahoClient(broker.port, r.pa_id, clean_session=False)
    r.pa2_connack = r.pa2.connect()
    r.reconnect_ms = (time.monotonic() - t0) * 1000
    r.pa2.publish("cw/again", "pa-is-back", qos=1)

    # Wills, seen on the surviving worker.
    def wills():
        return [(t, p) for t, p in watcher.payloads()]
    try:
        wait_for(lambda: {f"cwill/{r.sa_id}", f"cwill/{r.pa_id}"} <= {t for t, _ in wills()},
                 5, "the wills of the dead worker's clients")
    except AssertionError:
        pass

    # Batch 2: once the router has surely taken the worker's death in.
    for q in (1, 2):
        for i in range(BATCH):
            p = f"b2-q{q}-{i}"
            pb.publish(f"cwq/q{q}", p, qos=q)
            r.batch.append((f"cwq/q{q}", p, q))

    # The surviving worker's traffic keeps going for a while, then stops.
    n = len(fb.sent)
    wait_for(lambda: len(fb.sent) >= n + 100, 10, "the surviving worker's traffic to go on")
    fa.stop.set()
    fb.stop.set()
    fa.join(T(10))
    fb.join(T(10))
    r.fb_unacked = []
    for tp, p, q, t, info in fb.sent:
        if q:
            try:
                info.wait_for_publish(T(10))
            except (RuntimeError, ValueError):
                pass
            if not published(info):
                r.fb_unacked.append(p)
    # Everything pb sent (all three QoS) should reach sb; wait for it, bounded.
    want_b = {(tp, p) for tp, p, q, t, _ in fb.sent}
    try:
        wait_for(lambda: want_b <= set(sb.payloads()), 10, "sb to receive every message of pb")
    except AssertionError:
        pass
    r.pa_acked_before_kill = fa.acked(1, before=r.t_kill) + fa.acked(2, before=r.t_kill)
    try:
        wait_for(lambda: set(r.pa_acked_before_kill) <= set(sb.payloads()), 5,
                 "sb to receive pa's acknowledged messages")
    except AssertionError:
        pass
    time.sleep(T(0.2))            # to prove a negative: no duplicate will comes late
    r.wills = wills()
    r.sb_got = sb.payloads()
    r.sa_live = sa.payloads()
    # Exchanges at PUBREL stage (the dead worker had its PUBREC): the client
    # holds these messages and would deliver each on the PUBREL its session
    # gets again on reconnect; the raw client that stands in for it cannot.
    r.sa_held = sa.held_qos2()

    # The persistent subscriber comes back and gets what was queued for it.
    r.sa_back = raw(broker, r.sa_id, clean=False)
    r.sa_connack = r.sa_back.connack
    r.sa_queued = drain(r, r.sa_back)

    # The restarted worker serves: a new client held by it does a round trip.
    broker.wait_worker_replaced(a)
    r.a_new = worker_pid_by_index(broker, r.a_index)
    probe = raw_on(broker, r.a_new, tries=20, deadline=time.monotonic() + T(5))
    probe.subscribe([("cwprobe/x", 1)])
    r.pa2.publish("cwprobe/x", "through-the-new-worker", qos=1)
    r.probe_got = probe.recv_publish(timeout=T(5)).payload
    probe.disconnect()
    r.pids_after = set(broker.pids())
    # The restart is deliberate: the teardown must not take it for a crash.
    broker.initial_pids = set(broker.pids())

    r.b_disconnected = {c.client_id: c.disconnected for c in (sb, pb, watcher)}
    for c in (sb, pb, watcher, r.pa2):
        c.disconnect()
    r.sa_back.disconnect()
    for f in r.fillers:
        f.close()
    return r


def _paho(broker, cid, clean=True, will=None):
    c = PahoClient(broker.port, cid, clean_session=clean, will=will)
    c.connect()
    return c


def drain(r, c):
    """Every PUBLISH the reconnected persistent subscriber gets (acknowledged),
    until what it must get is there and nothing more comes for a moment. A
    PUBREL (a QoS 2 exchange the dead worker had got PUBREC for) is
    completed and recorded in r.pubrels."""
    want = expected_queued(r)
    got = []
    r.pubrels = []
    deadline = time.monotonic() + T(15)
    while time.monotonic() < deadline:
        complete = want <= {(p.topic, p.payload.decode()) for p in got}
        try:
            p = c.recv_packet(timeout=T(0.5) if complete else T(1), what="PUBLISH or PUBREL")
        except m.Timeout:
            if complete:
                break
            continue
        if p.type == m.PUBREL:
            c.send(m.pubcomp(p.pid))
            r.pubrels.append(p.pid)
            continue
        assert p.type == m.PUBLISH, f"expected PUBLISH or PUBREL, got {p!r}"
        c.ack(p)
        got.append(p)
    return got


def expected_queued(r):
    """What the offline persistent subscriber must get on reconnect: the
    batches, and every QoS 1/2 message of the surviving publisher's flow
    handed to it after the kill."""
    want = {(t, p) for t, p, q in r.batch}
    for q in (1, 2):
        want |= set(r.fb.by_qos(q, after=r.t_kill))
    return want


# ------------------------------------------------------------ the tests

def test_clients_of_the_surviving_worker_keep_their_connection(crash):
    assert crash.b_disconnected == {k: None for k in crash.b_disconnected}, \
        f"clients of the surviving worker were disconnected: {crash.b_disconnected}"
    assert not crash.fb_unacked, \
        f"publishes of a client of the surviving worker never acknowledged: {crash.fb_unacked[:10]}"


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_surviving_worker_delivers_every_message_in_order(crash, qos):
    """pb -> sb, both on the surviving worker, through the kill."""
    sent = [p for _, p in crash.fb.by_qos(qos)]
    topic = f"cw/b/q{qos}"
    got = [p for t, p in crash.sb_got if t == topic]
    before, after = crash.fb.by_qos(qos, before=crash.t_kill), crash.fb.by_qos(qos, after=crash.t_kill)
    assert len(before) > 20 and len(after) > 20, \
        f"the publisher should have run across the kill ({len(before)} before, {len(after)} after)"
    missing = [p for p in sent if p not in set(got)]
    assert got == sent, (f"QoS {qos} {topic}: {len(sent)} sent, {len(got)} received; missing "
                         f"{missing[:10]}, duplicated {[p for p in set(got) if got.count(p) > 1][:10]}"
                         f", in order: {[p for p in got if p in set(sent)] == sent}")


def test_dead_workers_clients_are_disconnected(crash):
    assert all(v is not None for v in crash.disconnected.values()), \
        f"clients of the killed worker not disconnected within 5 s: {crash.disconnected}"


def test_dead_workers_wills_are_published_once(crash):
    for cid, payload in ((crash.sa_id, "cw-sa-gone"), (crash.pa_id, "cw-pa-gone")):
        seen = [p for t, p in crash.wills if t == f"cwill/{cid}"]
        assert seen == [payload], f"will of {cid}: expected [{payload!r}] once, got {seen!r}"


def test_dead_workers_client_reconnects_at_once(crash):
    sp, rc = crash.pa2_connack
    assert rc == 0
    assert sp == 1, "the persistent session of a client of the dead worker was not kept"
    assert crash.reconnect_ms < T(1000), f"reconnect took {crash.reconnect_ms:.0f} ms"
    assert ("cw/again", "pa-is-back") in crash.sb_got, \
        "a publish of the reconnected client did not reach the surviving worker's subscriber"


def test_offline_persistent_session_gets_everything_queued_after_the_kill(crash):
    assert crash.sa_connack.session_present is True, "the persistent session was lost"
    got = [(p.topic, p.payload.decode(), p.qos) for p in crash.sa_queued]
    have = {(t, p) for t, p, _ in got}
    want = expected_queued(crash)
    missing = sorted(want - have)
    assert not missing, (f"{len(missing)} of {len(want)} QoS 1/2 messages published after "
                         f"the kill not delivered on reconnect: {missing[:12]}")
    twice = sorted({(t, p) for t, p, q in got if q == 2 and
                    [(t2, p2) for t2, p2, _ in got].count((t, p)) > 1})
    assert not twice, f"QoS 2 messages delivered more than once: {twice[:10]}"
    for topic in ("cwq/q1", "cwq/q2"):
        order = [p for t, p, _ in got if t == topic]
        want_order = [p for t, p, _ in crash.batch if t == topic]
        assert [p for p in order if p in want_order] == want_order, \
            f"{topic}: queued messages out of order: {order}"


def test_acknowledged_publishes_of_the_dead_workers_client_are_delivered(crash):
    """A QoS 1/2 publish the dead worker had acknowledged had already gone
    to the router: the surviving worker's subscriber gets it."""
    have = set(crash.sb_got)
    acked = crash.pa_acked_before_kill
    assert acked, "the dead worker's publisher should have had acknowledged messages"
    missing = [p for tp, p in acked if (tp, p) not in have]
    assert not missing, (f"{len(missing)} of {len(acked)} acknowledged publishes of a client of "
                         f"the killed worker never delivered: {missing[:10]}")


def test_messages_in_flight_at_the_kill_reach_the_persistent_subscriber(crash):
    """Every QoS 1/2 message handed to the router before the kill reaches
    the persistent subscriber of the killed worker: live before the kill,
    or, if the dead worker still held it (unsent, or sent but not
    acknowledged), after the subscriber's return; or, for a QoS 2 exchange
    the worker had the PUBREC of, held by the client, whose PUBREL its
    session gets again on return. That is every message of
    the surviving worker's publisher, and every message of the dead
    worker's publisher that it got PUBACK/PUBCOMP for (one it did not may
    have died unread with the worker)."""
    have = set(crash.sa_live) | {(p.topic, p.payload.decode()) for p in crash.sa_queued}
    # A PUBREL resent on reconnect completes a message the client already
    # holds (received, PUBREC sent): it is the client's, delivered on PUBREL.
    # (A PUBREL may also come again for one it completed, whose PUBCOMP the
    # dead worker never read: that one is in sa_live.)
    have |= {crash.sa_held[pid] for pid in crash.pubrels if pid in crash.sa_held}
    report = []
    lost_total = 0
    for name, flow in (("pa", crash.fa), ("pb", crash.fb)):
        for q in (1, 2):
            sent = (flow.acked(q, before=crash.t_kill) if flow is crash.fa else
                    flow.by_qos(q, before=crash.t_kill))
            lost = [p for tp, p in sent if (tp, p) not in have]
            lost_total += len(lost)
            report.append(f"{name} QoS {q}: {len(lost)} of {len(sent)} lost {lost[:5]}")
    qos0 = crash.fa.by_qos(0, before=crash.t_kill)
    lost0 = [p for tp, p in qos0 if (tp, p) not in set(crash.sb_got)]
    report.append(f"pa QoS 0 to the surviving worker: {len(lost0)} of {len(qos0)} lost")
    print("\nworker crash, messages in flight at the kill: " + "; ".join(report))
    assert lost_total == 0, "; ".join(report)


def test_restarted_worker_serves_and_nothing_else_was_replaced(crash):
    assert crash.probe_got == b"through-the-new-worker"
    gone = crash.pids_before - crash.pids_after
    assert gone == {crash.a_pid}, \
        f"only the killed worker {crash.a_pid} should have been replaced; gone: {sorted(gone)}"
    assert crash.a_new not in crash.pids_before


# ------------------------------------------- in-flight state across a worker's death

def recv_n(c, n, what):
    """The next n packets, whatever their type."""
    return [c.recv_packet(timeout=T(5), what=f"{what} ({i + 1} of {n})") for i in range(n)]


@pytest.mark.broker_config(workers=2, max_inflight=4)
def test_inflight_exchanges_resume_with_their_packet_ids(broker):
    """A persistent subscriber's worker is killed while it holds QoS 1/2
    messages for it in every state: sent and unacknowledged (QoS 1 and 2),
    PUBREC received (PUBREL sent, no PUBCOMP yet), and not yet sent (past
    the in-flight window). On its return the subscriber gets each again as
    [MQTT-4.4.0-1] says: the PUBREL again, the PUBLISHes again with DUP set
    and their packet ids, the unsent one as a new delivery; the one it had
    acknowledged never; and once all are acknowledged, nothing more."""
    cid = uid("inflight")
    sub = raw(broker, cid, clean=False)
    sub.subscribe([("inf/q1", 1), ("inf/q2", 2)])
    w = broker.worker_of(sub)
    other = [p for p in broker.worker_pids() if p != w]
    assert len(other) == 1, f"expected a second worker besides {w}: {broker.worker_pids()}"
    pub = raw_on(broker, other[0], uid("inflight-pub"), tries=20,
                 deadline=time.monotonic() + T(5))

    plan = [("inf/q2", "A", 2), ("inf/q2", "B", 2), ("inf/q1", "C", 1),
            ("inf/q1", "D", 1), ("inf/q1", "E", 1), ("inf/q2", "F", 2)]
    for i, (topic, payload, qos) in enumerate(plan):
        pub.publish(topic, payload.encode(), qos=qos, pid=i + 1)

    # The window (4) holds A, B, C, D; nothing acknowledged yet.
    first = {p.payload.decode(): p for p in recv_n(sub, 4, "the first window")}
    assert set(first) == {"A", "B", "C", "D"}, f"first window: {first}"
    assert all(p.type == m.PUBLISH and not p.dup for p in first.values()), first
    sub.send(m.pubrec(first["A"].pid))
    sub.expect(m.PUBREL, pid=first["A"].pid, timeout=T(5))
    sub.send(m.puback(first["C"].pid))
    e = sub.recv_publish(timeout=T(5), ack=False)
    assert e.payload == b"E" and e.qos == 1, f"expected E once C was acknowledged: {e!r}"
    # Now: A PUBREL sent; B, D, E sent and unacknowledged; F queued in the worker.

    os.kill(w, signal.SIGKILL)
    sub.expect_closed(T(5))
    sub.close()

    back = resumed(broker, cid, "the session was lost")
    again = recv_n(back, 4, "the resent exchanges")
    rels = [p for p in again if p.type == m.PUBREL]
    pubs = {p.payload.decode(): p for p in again if p.type == m.PUBLISH}
    assert [p.pid for p in rels] == [first["A"].pid], f"expected PUBREL for A: {again}"
    assert set(pubs) == {"B", "D", "E"}, f"expected B, D and E again: {again}"
    for name, p in pubs.items():
        orig = e if name == "E" else first[name]
        assert p.dup and p.pid == orig.pid and p.qos == orig.qos, \
            f"{name} must come again with DUP and packet id {orig.pid}: {p!r}"

    back.send(m.pubcomp(first["A"].pid))
    for p in pubs.values():
        back.ack(p)
    f = back.recv_publish(timeout=T(5))
    assert (f.payload, f.qos, f.dup) == (b"F", 2, False), f"expected F as a new delivery: {f!r}"

    # Everything acknowledged: a further resume brings nothing before a fresh message.
    back.disconnect()
    last = resumed(broker, cid)
    pub.publish("inf/q1", b"marker", qos=1, pid=99)
    p = last.recv_publish(timeout=T(5))
    assert p.payload == b"marker", f"a finished exchange came again: {p!r}"
    last.disconnect()
    pub.disconnect()
    # The kill was deliberate: the teardown must not take the new worker for a crash.
    broker.wait_worker_replaced(w)
    broker.initial_pids = set(broker.pids())


@pytest.mark.broker_config(workers=2)
def test_qos2_publish_resent_after_a_worker_death_is_routed_once(broker):
    """A persistent publisher got PUBREC for a QoS 2 PUBLISH and its worker
    dies before the PUBREL. Reconnected, it may resend the PUBLISH (DUP,
    same id) and then PUBREL, as a client unsure of the PUBREC does: the
    subscriber gets the message exactly once."""
    sub = raw(broker, uid("q2in-sub"))
    sub.subscribe([("q2in/x", 2)])
    other = [p for p in broker.worker_pids() if p != broker.worker_of(sub)]
    assert len(other) == 1, f"expected two workers: {broker.worker_pids()}"
    cid = uid("q2in-pub")
    pub = raw_on(broker, other[0], cid, clean=False, tries=20,
                 deadline=time.monotonic() + T(5))
    w = broker.worker_of(pub)

    pub.send(m.publish("q2in/x", b"once", qos=2, pid=7))
    pub.expect(m.PUBREC, pid=7, timeout=T(5))
    got = sub.recv_publish(timeout=T(5))
    assert got.payload == b"once"

    os.kill(w, signal.SIGKILL)
    pub.expect_closed(T(5))
    pub.close()
    back = resumed(broker, cid)
    back.send(m.publish("q2in/x", b"once", qos=2, pid=7, dup=True))
    back.expect(m.PUBREC, pid=7, timeout=T(5))
    back.send(m.pubrel(7))
    back.expect(m.PUBCOMP, pid=7, timeout=T(5))
    # A fresh message after it proves the resent one was not routed again.
    back.publish("q2in/x", b"after", qos=1, pid=8)
    nxt = sub.recv_publish(timeout=T(5))
    assert nxt.payload == b"after", f"the resent QoS 2 PUBLISH was routed twice: {nxt!r}"
    for c in (back, sub):
        c.disconnect()
    broker.wait_worker_replaced(w)
    broker.initial_pids = set(broker.pids())
