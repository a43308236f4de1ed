"""The router's state survives the router: kill -9 it while clients on
both workers publish and receive, and nobody notices but the log. With
storage.backend "disk" it also survives a restart of the whole daemon.

Every test here kills or restarts iotd processes on purpose, so each one
accepts the new process set (Broker.initial_pids) before its teardown
checks the daemon's health."""

import glob
import os
import re
import signal
import stat
import threading
import time

import pytest

from helpers import (T, offline_session, PahoClient, proc_alive, proc_cmdline, raw, resumed, uid,
                     wait_for)

pytestmark = pytest.mark.iotd_only


# ------------------------------------------------------------ helpers

def kill_router(broker):
    """SIGKILL the router; return once its successor runs and has logged
    that it serves (it rebuilt its state first)."""
    old = broker.role_pid("router")
    assert old, f"no router among {[(p, proc_cmdline(p)) for p in broker.pids()]}"
    serving = broker.log.count("router: serving")
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: not proc_alive(old), 5, f"router {old} to die")
    new = wait_for(lambda: broker.successor("router", old), 10,
                   "the supervisor to start a new router")
    wait_for(lambda: broker.log.count("router: serving") > serving, 10,
             "the new router to serve")
    # The restart is deliberate: the teardown must not take it for a crash.
    broker.initial_pids = set(broker.pids())
    return new


def paho(broker, tag, **kw):
    c = PahoClient(broker.port, uid(tag), **kw)
    c.connect()
    return c


STORE_NAME = re.compile(r"iotd-(\d+)-[0-9a-f]{32}$")


def store_dir(broker):
    """The daemon's memory store: /dev/shm/iotd-<supervisor pid>-<32 random hex digits>,
    the one directory of that pid (None while there is none)."""
    found = glob.glob(f"/dev/shm/iotd-{broker.proc.pid}-*")
    assert len(found) <= 1, f"more than one memory store for daemon {broker.proc.pid}: {found}"
    return found[0] if found else None


def disk_env(path):
    return {"IOTD_STORAGE_BACKEND": "disk", "IOTD_STORAGE_PATH": str(path)}


class Publisher(threading.Thread):
    """Publishes numbered messages at QoS 0, 1 and 2 in turn until stopped;
    keeps the paho handle of each so the test knows which ones were
    acknowledged (PUBACK / PUBCOMP)."""

    def __init__(self, client, tag, topic):
        super().__init__(daemon=True)
        self.client, self.tag, self.topic = client, tag, topic
        self.sent = []            # (payload, qos, MQTTMessageInfo)
        self.stop = threading.Event()

    def run(self):
        i = 0
        while not self.stop.is_set():
            qos = i % 3
            payload = f"{self.tag}-q{qos}-{i}"
            info = self.client.publish(self.topic, payload, qos=qos, wait=False)
            self.sent.append((payload, qos, info))
            i += 1
            time.sleep(0.001)

    def acknowledged(self, qos, timeout=20):
        out = []
        for payload, q, info in self.sent:
            if q != qos:
                continue
            info.wait_for_publish(T(timeout))
            assert info.is_published(), f"{payload} never acknowledged"
            out.append(payload)
        return out


# ------------------------------------------------------------ tests

def test_router_crash_under_traffic_loses_no_acknowledged_message_and_no_client(broker):
    s1, s2 = paho(broker, "csub1"), paho(broker, "csub2")
    p1, p2 = paho(broker, "cpub1"), paho(broker, "cpub2")
    broker.assert_different_workers(s1, s2)
    broker.assert_different_workers(p1, p2)
    for s in (s1, s2):
        s.subscribe("crash/#", qos=2)
    pubs = [Publisher(p1, "a", "crash/a"), Publisher(p2, "b", "crash/b")]
    for p in pubs:
        p.start()
    # Three kills: the more often, the likelier one lands in the middle of a batch.
    for _ in range(3):
        time.sleep(T(0.3))
        kill_router(broker)
    time.sleep(T(0.3))
    for p in pubs:
        p.stop.set()
        p.join(T(10))

    for p in pubs:
        q1, q2 = p.acknowledged(1), p.acknowledged(2)
        assert q1 and q2, "the publishers should have run across the crash"
        for s in (s1, s2):
            wait_for(lambda: set(q1 + q2) <= {p for _, p in s.payloads()}, 20,
                     f"{s.client_id} to receive every acknowledged QoS 1/2 message of {p.tag}")
            got = [p for _, p in s.payloads()]
            twice = [x for x in q2 if got.count(x) != 1]
            assert not twice, f"QoS 2 messages not delivered exactly once: {twice[:10]}"
    for c in (s1, s2, p1, p2):
        assert c.disconnected is None, f"{c.client_id} was disconnected by the router's crash"
        c.disconnect()


def test_subscriptions_retained_and_queues_survive_a_router_crash(broker):
    sub = raw(broker, uid("ksub"))
    sub.subscribe([("keep/live", 1)])
    pub = raw(broker, uid("kpub"))
    broker.assert_different_workers(sub, pub)
    pub.publish("keep/ret", b"retained-before", qos=1, pid=1, retain=True)
    off_id = uid("koff")
    offline_session(broker, off_id, [("keep/q", 2)])
    for i in range(3):
        pub.publish("keep/q", f"queued-{i}".encode(), qos=1 + i % 2, pid=10 + i)

    kill_router(broker)

    # The subscription is still in force: no resubscribe.
    pub.publish("keep/live", b"after-crash", qos=1, pid=2)
    p = sub.recv_publish(timeout=T(10))
    assert (p.topic, p.payload) == ("keep/live", b"after-crash")
    # The retained message is still there for a new subscriber.
    late = raw(broker, uid("klate"))
    late.subscribe([("keep/ret", 0)])
    p = late.recv_publish(timeout=T(5))
    assert (p.topic, p.payload, p.retain) == ("keep/ret", b"retained-before", True)
    # The persistent session and its queue are back.
    off = resumed(broker, off_id)
    got = [x.payload for x in off.recv_publishes(3, timeout=T(10))]
    assert got == [b"queued-0", b"queued-1", b"queued-2"]
    off.expect_no_packet(0.3)
    assert sub.is_open() and pub.is_open()
    for c in (sub, pub, late, off):
        c.disconnect()


def test_connections_restored_after_a_crash_keep_their_will_and_can_be_taken_over(broker):
    watcher = raw(broker, uid("wwatch"))
    watcher.subscribe([("will/#", 1)])
    cid = uid("wdev")
    dev = raw(broker, cid, clean=False, will=("will/dev", b"dev-gone", 1, False))
    broker.assert_different_workers(watcher, dev)
    taken_id = uid("wtake")
    taken = raw(broker, taken_id)

    kill_router(broker)

    # The new router knows the connection: its will goes out when it breaks.
    dev.close()
    p = watcher.recv_publish(timeout=T(10))
    assert (p.topic, p.payload) == ("will/dev", b"dev-gone")
    # And a connection from before the crash can be taken over.
    again = raw(broker, taken_id)
    taken.expect_closed(T(5))
    dev2 = resumed(broker, cid)
    for c in (watcher, again, dev2):
        c.disconnect()


def test_two_crashes_in_a_row_still_keep_everything(broker):
    sub = raw(broker, uid("twosub"))
    sub.subscribe([("two/#", 2)])
    pub = raw(broker, uid("twopub"))
    for round_ in range(2):
        pub.publish("two/r", f"retained-{round_}".encode(), qos=2, pid=1 + round_, retain=True)
        p = sub.recv_publish(timeout=T(5))
        assert p.payload == f"retained-{round_}".encode()
        kill_router(broker)
    pub.publish("two/x", b"after-two-crashes", qos=2, pid=9)
    assert sub.recv_publish(timeout=T(10)).payload == b"after-two-crashes"
    sub.expect_no_packet(0.3)
    late = raw(broker, uid("twolate"))
    late.subscribe([("two/r", 2)])
    assert late.recv_publish(timeout=T(5)).payload == b"retained-1"
    for c in (sub, pub, late):
        c.disconnect()


def test_memory_store_lives_with_the_daemon(start_broker):
    b = start_broker()
    d = wait_for(lambda: store_dir(b), 5, "the memory store to exist")
    # Its name cannot be guessed (so nobody plants anything there first), its pid can be read.
    name = STORE_NAME.match(os.path.basename(d))
    assert name and int(name.group(1)) == b.proc.pid, f"memory store named {d}"
    st = os.lstat(d)
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700, oct(st.st_mode)
    # The name is the daemon's, not the router's: a restarted router resumes the same store.
    kill_router(b)
    assert store_dir(b) == d
    b.stop(signal.SIGINT)
    wait_for(lambda: not os.path.exists(d), 5, f"{d} to be removed at a graceful stop")

    # SIGTERM: no goodbyes to clients, but the router drains the rings and removes it too.
    # (A daemon killed outright leaves it to the next one's sweep: test_crash_supervision.py.)
    b2 = start_broker()
    d2 = wait_for(lambda: store_dir(b2), 5, "the second daemon's memory store to exist")
    assert d2 != d
    b2.stop(signal.SIGTERM)
    assert not os.path.exists(d2), "the store of a daemon stopped by SIGTERM was left behind"


QUEUED_ON_DISK = 20


def test_disk_store_survives_a_daemon_restart(start_broker, store_parent):
    env = disk_env(os.path.join(store_parent, "store"))
    b = start_broker(env=env)
    pub = raw(b, uid("dpub"))
    pub.publish("disk/ret", b"kept-on-disk", qos=1, pid=1, retain=True)
    away_id, online_id = uid("daway"), uid("donline")
    offline_session(b, away_id, [("disk/q/#", 2)])
    online = raw(b, online_id, clean=False, will=("disk/will", b"must-not-fire", 1, False))
    online.subscribe([("disk/live", 1)])
    clean_id = uid("dclean")
    clean = raw(b, clean_id, clean=True)
    clean.subscribe([("disk/live", 1)])
    # SIGTERM right after the last PUBACK/PUBCOMP: every acknowledged message must
    # still be stored (the router drains the rings once the workers are gone).
    for i in range(QUEUED_ON_DISK):
        pub.publish(f"disk/q/{i}", f"queued-{i}".encode(), qos=1 + i % 2, pid=10 + i)
    b.stop(signal.SIGTERM)
    for c in (pub, online, clean):
        c.close()

    b2 = start_broker(env=env)
    watch = raw(b2, uid("dwatch"))
    watch.subscribe([("disk/#", 1)], pid=2)
    p = watch.recv_publish(timeout=T(5))
    assert (p.topic, p.payload, p.retain) == ("disk/ret", b"kept-on-disk", True)
    # No will of the previous daemon's connections fires on start.
    watch.expect_no_packet(0.5)

    away = resumed(b2, away_id)
    got = [x.payload for x in away.recv_publishes(QUEUED_ON_DISK, timeout=T(10))]
    assert got == [f"queued-{i}".encode() for i in range(QUEUED_ON_DISK)]
    online = resumed(b2, online_id)
    c2 = raw(b2, clean_id, clean=False)
    assert c2.connack.session_present is False, \
        "a clean session must not outlive its daemon"
    pub2 = raw(b2, uid("dpub2"))
    pub2.publish("disk/live", b"still-subscribed", qos=1, pid=3)
    p = online.recv_publish(timeout=T(5))
    assert p.payload == b"still-subscribed"
    c2.expect_no_packet(0.3)
    for c in (watch, away, online, c2, pub2):
        c.disconnect()


def test_acknowledged_messages_outlive_a_killed_supervisor_on_disk(start_broker, store_parent):
    """kill -9 of the supervisor with storage.backend "disk": the workers die
    with it, the router first stores what they left in the rings (here:
    messages acknowledged while the router was stopped, so they can only be
    in the rings), then exits; the next daemon delivers them all."""
    env = disk_env(os.path.join(store_parent, "store"))
    b = start_broker(env=env)
    away_id = uid("sk-away")
    offline_session(b, away_id, [("sk/q/#", 1)])
    pub = raw(b, uid("sk-pub"))
    router = b.role_pid("router")
    children = [p for p in b.pids() if p != b.proc.pid]
    os.kill(router, signal.SIGSTOP)
    try:
        for i in range(10):
            pub.publish(f"sk/q/{i}", f"ring-{i}".encode(), qos=1, pid=i + 1)
        os.kill(b.proc.pid, signal.SIGKILL)
        b.returncode = b.proc.wait(T(5))
        b.stopped = True                      # killed on purpose: the teardown reads the log
    finally:
        os.kill(router, signal.SIGCONT)
    try:
        wait_for(lambda: not [p for p in children if proc_alive(p)], T(3),
                 "every child of the killed supervisor to exit")
    finally:
        for p in children:                    # ours: never leave them behind
            if proc_alive(p):
                os.kill(p, signal.SIGKILL)
    pub.close()

    b2 = start_broker(env=env)
    back = resumed(b2, away_id)
    got = [p.payload for p in back.recv_publishes(10, timeout=T(10))]
    assert got == [f"ring-{i}".encode() for i in range(10)], got
    back.disconnect()


def test_qos0_deliveries_held_for_a_stopped_worker_stay_out_of_the_store(broker):
    """A worker that stops reading its ring (SIGSTOP) while 16 MiB of QoS 0
    reach its subscriber: the router holds what the 4 MiB ring cannot take,
    in memory only. A QoS 0 delivery may be lost with the router, so
    storing it would only fill the store (RAM, with the memory backend).
    Once the worker runs again its subscriber gets the messages, in order."""
    sub = raw(broker, uid("hq-sub"))
    sub.subscribe([("hq/t", 0)])
    worker = broker.worker_of(sub)
    spare, pub = [], None
    for _ in range(6):
        c = raw(broker, uid("hq-pub"))
        if broker.worker_of(c) != worker:
            pub = c
            break
        spare.append(c)
    assert pub, f"no publisher off worker {worker} in 6 connections"
    pub.subscribe([("hq/sync", 0)])
    store = os.path.join(store_dir(broker), "data.mdb")
    router = broker.role_pid("router")
    size0, router0 = os.path.getsize(store), broker.pss_kb([router])
    chunk = 64 * 1024
    os.kill(worker, signal.SIGSTOP)
    try:
        for i in range(256):
            pub.publish("hq/t", i.to_bytes(4, "big") + bytes(chunk - 4))
        # The router routes in ring order: once the publisher gets this back, all are routed.
        pub.publish("hq/sync", b"")
        assert pub.recv_publish(timeout=T(10)).topic == "hq/sync"
        held_kb = broker.pss_kb([router]) - router0
        grown = os.path.getsize(store) - size0
    finally:
        os.kill(worker, signal.SIGCONT)
    assert held_kb > 6 * 1024, \
        f"the router holds only {held_kb} kB more: the ring never filled, nothing was tested"
    assert grown < 1024 * 1024, f"the store grew by {grown} bytes for QoS 0 deliveries"
    first = sub.recv_publish(timeout=T(10))
    assert first.topic == "hq/t" and first.payload[:4] == (0).to_bytes(4, "big")
    for c in [pub, sub] + spare:
        c.disconnect()
