"""Last will: published when the connection ends without DISCONNECT (socket
close, keep-alive expiry, protocol violation, takeover), not after
DISCONNECT; the will's QoS and retain flag are honoured."""

import time

import pytest

import mqttraw as m
from helpers import T, raw, uid


def watcher(clients, broker, flt="will/#", qos=2):
    c = clients.raw(broker, uid("watch"))
    c.subscribe([(flt, qos)])
    return c


def test_will_published_when_socket_closes_without_disconnect(broker, clients):
    w = watcher(clients, broker)
    c = raw(broker, uid("wclose"), will=("will/close", b"gone", 1, False))
    broker.assert_different_workers(w, c)
    w.expect_no_packet(0.3)
    c.close()
    p = w.recv_publish(timeout=T(5))
    assert (p.topic, p.payload, p.qos, p.retain) == ("will/close", b"gone", 1, False)
    w.expect_no_packet(0.3)


def test_will_published_on_keepalive_expiry(broker, clients):
    w = watcher(clients, broker)
    c = raw(broker, uid("wka"), keepalive=1, will=("will/ka", b"silent", 0, False))
    broker.assert_different_workers(w, c)
    t0 = time.monotonic()
    # The client goes silent: no PINGREQ. 1.5 x keep-alive = 1.5 s.
    # (Mosquitto only checks keep-alives every few seconds: ~5 s here.)
    bound = T(3.5) if broker.kind == "iotd" else T(8)
    p = w.recv_publish(timeout=bound + 0.5)
    elapsed = time.monotonic() - t0
    assert (p.topic, p.payload) == ("will/ka", b"silent")
    assert elapsed >= 1.0, f"will published after {elapsed:.2f} s, before the keep-alive expired"
    assert elapsed <= bound, f"will published only after {elapsed:.2f} s (keep-alive 1 s)"
    c.expect_closed(T(2))
    c.close()


def test_keepalive_is_kept_by_pingreq(broker, clients):
    w = watcher(clients, broker)
    c = raw(broker, uid("wping"), keepalive=1, will=("will/ping", b"x", 0, False))
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        c.ping()
        time.sleep(0.5)
    w.expect_no_packet(0.2)
    c.disconnect()
    w.expect_no_packet(0.5)


def test_will_published_on_protocol_violation(broker, clients):
    w = watcher(clients, broker)
    c = raw(broker, uid("wviol"), will=("will/viol", b"bad", 1, False))
    broker.assert_different_workers(w, c)
    c.send(bytes([0x00, 0x00]))    # reserved packet type 0
    c.expect_closed(T(5))
    c.close()
    p = w.recv_publish(timeout=T(5))
    assert (p.topic, p.payload) == ("will/viol", b"bad")


def test_will_published_on_takeover(broker, clients):
    w = watcher(clients, broker)
    cid = uid("wtake")
    first = clients.raw(broker, cid, will=("will/take", b"taken-over", 1, False))
    second = clients.raw(broker, connect=False)
    broker.assert_different_workers(first, second)
    second.connect(cid)
    first.expect_closed(T(5))
    p = w.recv_publish(timeout=T(5))
    assert (p.topic, p.payload) == ("will/take", b"taken-over")
    second.ping()


def test_will_not_published_after_disconnect(broker, clients):
    w = watcher(clients, broker)
    c = raw(broker, uid("wdisc"), will=("will/disc", b"never", 1, True))
    broker.assert_different_workers(w, c)
    c.send(m.disconnect())
    c.expect_closed(T(5))
    c.close()
    w.expect_no_packet(1.0)
    # Nor was it retained.
    late = watcher(clients, broker, "will/disc", 1)
    late.expect_no_packet(0.5)


def test_will_retain_flag_is_honoured(broker, clients):
    w = watcher(clients, broker, qos=1)
    kept = raw(broker, uid("wret"), will=("will/kept", b"retained-will", 1, True))
    notkept = raw(broker, uid("wnot"), will=("will/notkept", b"plain-will", 1, False))
    kept.close()
    notkept.close()
    got = {p.topic: p for p in w.recv_publishes(2)}
    assert set(got) == {"will/kept", "will/notkept"}
    # Live delivery to an existing subscription: retain 0.
    assert not got["will/kept"].retain
    late = watcher(clients, broker, "will/#", 1)
    p = late.recv_publish()
    assert (p.topic, p.payload, p.retain) == ("will/kept", b"retained-will", True)
    late.expect_no_packet(0.5)


@pytest.mark.broker_config(keep_alive_timeout_secs=1)
def test_keep_alive_timeout_applies_to_client_asking_for_none(broker, clients):
    w = watcher(clients, broker)
    c = raw(broker, uid("wka0"), keepalive=0, will=("will/ka0", b"idle", 0, False))
    t0 = time.monotonic()
    p = w.recv_publish(timeout=T(4.5))
    elapsed = time.monotonic() - t0
    assert (p.topic, p.payload) == ("will/ka0", b"idle")
    assert elapsed >= 1.0, f"closed after {elapsed:.2f} s, before keep_alive_timeout_secs=1"
    c.expect_closed(T(2))
    c.close()
