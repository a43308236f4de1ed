"""SIGHUP (systemctl reload): limits reach every process while clients stay
connected, listen addresses change without a gap on those kept, and what
cannot change live is named and left for the next start.

Every test reloads through broker.reload(), which returns once the
supervisor logged the outcome and every child took the new configuration.
Teardown checks that no process died or was replaced unless a test says so
(the listener, when the addresses change; a worker killed on purpose).
"""

import os
import signal
import socket

import pytest

import mqttraw as m
from conftest import free_port
from helpers import (T, closed_without_reply_to, offline_session, raw, server_rx_queue, tcp_table,
                     uid, wait_for)

pytestmark = pytest.mark.iotd_only


def refuses(port):
    """True when nothing listens on the port any more."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=T(1)):
            return False
    except ConnectionRefusedError:
        return True


def serves(port):
    """True when a client completes CONNECT/CONNACK on the port."""
    try:
        with raw(port, uid("probe")) as c:
            c.disconnect()
        return True
    except (OSError, AssertionError):
        return False


def listening_inode(port):
    """Inode of the socket listening on the port (what a rebind would change)."""
    for lport, rport, inode in tcp_table():
        if lport == port and rport == 0:
            return inode
    return None


def accept_listener_change(broker):
    """The listener was replaced on purpose: the other processes must not have been."""
    before = broker.initial_pids
    pid = wait_for(lambda: broker.role_pid("listener") not in (None, *before) and broker.role_pid("listener"),
                   10, "a new listener")
    now = set(broker.pids())
    gone = before - now
    assert len(gone) == 1 and len(now - before) == 1 and pid in now - before, \
        f"only the listener should have been replaced: gone {gone}, new {now - before}"
    broker.initial_pids = now


# --- limits ----------------------------------------------------------------


@pytest.mark.broker_config(workers=2)
def test_lowered_max_packet_size_closes_a_client_connected_before_and_spares_the_others(
        broker, bystander, clients):
    big = raw(broker, uid("big"))
    small = clients.raw(broker, uid("small"))
    sub = clients.raw(broker, uid("sub"))
    sub.subscribe([("mps/#", 1)])
    big.publish("mps/a", bytes(4000), qos=1)
    assert len(sub.recv_publish(T(5)).payload) == 4000

    line = broker.reload(max_packet_size=2048)
    assert "server.max_packet_size" in line

    # The next packet over the new limit closes its sender, connected before the reload.
    big.send(m.publish("mps/a", bytes(4000), qos=0))
    big.expect_closed(T(5))
    # Clients connected before it go on under the new limit, within it.
    small.publish("mps/b", bytes(1000), qos=1)
    assert sub.recv_publish(T(5)).topic == "mps/b"
    bystander.check()


@pytest.mark.broker_config(workers=1, max_inflight=2)
def test_max_inflight_raised_sends_what_waited_and_lowered_holds_new_ones_back(broker, clients):
    sub = clients.raw(broker, uid("slow"))
    sub.subscribe([("inf/#", 1)])
    pub = clients.raw(broker, uid("pub"))
    for i in range(6):
        pub.publish("inf/t", f"m{i}".encode(), qos=1, pid=i + 1)
    first = sub.recv_publishes(2, timeout=T(5), ack=False)
    assert [p.payload for p in first] == [b"m0", b"m1"]
    sub.expect_no_packet(0.5)

    # Raised: the four queued behind the old window go out without an acknowledgement.
    broker.reload(max_inflight=10)
    held = sub.recv_publishes(4, timeout=T(5), ack=False)
    assert [p.payload for p in held] == [b"m2", b"m3", b"m4", b"m5"]

    # Lowered below the six now in flight: nothing new until the window is under 2.
    broker.reload(max_inflight=2)
    for i in (6, 7, 8):
        pub.publish("inf/t", f"m{i}".encode(), qos=1, pid=i + 1)
    sub.expect_no_packet(0.5)
    # Acknowledge the six: m6 and m7 fill the new window of 2, m8 waits.
    for p in first + held:
        sub.ack(p)
    got = sub.recv_publishes(2, timeout=T(5), ack=False)
    assert [p.payload for p in got] == [b"m6", b"m7"]
    sub.expect_no_packet(0.5)
    sub.send(m.puback(got[0].pid))
    assert sub.recv_publish(T(5), ack=False).payload == b"m8"


@pytest.mark.broker_config(workers=1, max_inflight=1, max_queued_messages=10)
def test_lowered_max_queued_messages_keeps_what_is_queued_and_refuses_new_ones(broker, clients):
    sub = clients.raw(broker, uid("slowq"))
    sub.subscribe([("q/#", 1)])
    # On the same (only) worker: each message reaches both in one record, so
    # once the witness has m4, the slow subscriber's queue holds it too.
    witness = clients.raw(broker, uid("witness"))
    witness.subscribe([("q/#", 0)])
    pub = clients.raw(broker, uid("pubq"))
    for i in range(5):                    # m0 in flight, m1..m4 queued
        pub.publish("q/t", f"m{i}".encode(), qos=1, pid=i + 1)
    assert [p.payload for p in witness.recv_publishes(5, timeout=T(5))][-1] == b"m4"
    p0 = sub.recv_publish(T(5), ack=False)
    assert p0.payload == b"m0"

    broker.reload(max_queued_messages=2)
    for i in (5, 6):                      # the queue holds 4 > 2: refused
        pub.publish("q/t", f"m{i}".encode(), qos=1, pid=i + 1)
    sub.ack(p0)
    got = [p.payload for p in sub.recv_publishes(4, timeout=T(5))]
    assert got == [b"m1", b"m2", b"m3", b"m4"], "a message queued before the reload was dropped"
    sub.expect_no_packet(0.5)
    assert "queue full" in broker.log
    # Under the new limit again: new messages flow.
    pub.publish("q/t", b"m7", qos=1, pid=8)
    assert sub.recv_publish(T(5)).payload == b"m7"


@pytest.mark.broker_config(workers=2)
def test_lowered_max_topic_levels_applies_to_clients_connected_before(broker, clients):
    c = raw(broker, uid("lvl"))
    c.subscribe([("a/b/c/d", 0)])
    broker.reload(max_topic_levels=3)
    assert c.subscribe([("x/y/z/w", 0), ("x/y/z", 0)], pid=2, expect_codes=False) == [0x80, 0]
    new = clients.raw(broker, uid("lvl2"))
    assert new.subscribe([("p/q/r/s", 0)], expect_codes=False) == [0x80]
    c.send(m.publish("a/b/c/d", b"too deep"))
    c.expect_closed(T(5))


@pytest.mark.broker_config(workers=2, connect_timeout=60)
def test_lowered_connect_timeout_closes_silent_connections(broker, clients):
    before = socket.create_connection(("127.0.0.1", broker.port), timeout=T(5))
    client = clients.raw(broker, uid("ok"))
    broker.reload(connect_timeout=1)
    after = socket.create_connection(("127.0.0.1", broker.port), timeout=T(5))
    for s, what in ((before, "accepted before the reload"), (after, "accepted after it")):
        s.settimeout(T(5))
        try:
            data = s.recv(16)
        except ConnectionResetError:
            data = b""
        assert data == b"", f"a connection {what} sent no CONNECT and was not closed"
        s.close()
    assert client.is_open(), "a connected client was closed by connect_timeout"
    client.ping()


@pytest.mark.broker_config(workers=1, max_keepalive=0)
def test_raised_max_keepalive_caps_new_connections_only(broker, clients):
    old = clients.raw(broker, uid("ka"), keepalive=600)
    broker.reload(max_keepalive=60)
    raw(broker, uid("ka2"), keepalive=600, expect_rc=2).close()
    old.ping()


@pytest.mark.broker_config(workers=1, max_client_id_length=200)
def test_max_client_id_length_lowered_and_raised_applies_to_new_connects(broker, clients):
    cid = ("L" + uid("id")).ljust(100, "x")
    old = clients.raw(broker, cid)
    broker.reload(max_client_id_length=50)
    raw(broker, ("L" + uid("id")).ljust(100, "x"), expect_rc=2).close()
    with raw(broker, ("L" + uid("id")).ljust(50, "x")) as c:
        c.disconnect()
    old.ping()          # connected before: keeps its id
    broker.reload(max_client_id_length=100)
    with raw(broker, ("L" + uid("id")).ljust(100, "x")) as c:
        c.disconnect()


@pytest.mark.broker_config(workers=1, connect_timeout=60)
def test_max_connect_size_lowered_and_raised_applies_to_connects_not_yet_whole(broker):
    """A CONNECT declared at 2000 bytes, 100 of them sent, waits within the
    default bound; lowered to 1024 by a reload, its next byte closes it. A
    CONNECT within the new bound is served, and one of 2000 bytes again once
    the bound is raised."""
    partial = raw(broker, connect=False)
    whole = m.connect_of_size(2000, uid("big"))
    partial.send(whole[:100])
    wait_for(lambda: server_rx_queue(broker.port, partial.local_port) == 0, 5,
             "the worker to have read the first 100 bytes of the CONNECT")
    broker.reload(max_connect_size=1024)
    partial.send(whole[100:101])
    assert partial.expect_closed(T(5)) == []
    partial.close()
    closed_without_reply_to(broker, bytes([0x10]) + m.enc_varint(1024 - 3 + 1), connect=False)
    with raw(broker, connect=False) as c:
        c.send(m.connect_of_size(1024, uid("fits")))
        assert c.expect(m.CONNACK).rc == 0
    broker.reload(max_connect_size=4096)
    with raw(broker, connect=False) as c:
        c.send(m.connect_of_size(2000, uid("big2")))
        assert c.expect(m.CONNACK).rc == 0


@pytest.mark.broker_config(workers=1, session_timeout_secs=3600)
def test_lowered_session_timeout_expires_sessions_already_offline(broker, clients):
    cid = uid("persist")
    offline_session(broker, cid, [("s/#", 1)])
    broker.reload(session_timeout_secs=1)
    wait_for(lambda: "session expired after 1 s offline" in broker.log, 10,
             "the offline session to expire under the new timeout")
    clients.raw(broker, cid, clean=False)


@pytest.mark.broker_config(workers=1, retained_message_limit=10)
def test_lowered_retained_limit_keeps_what_is_stored_and_refuses_new_topics(broker, clients):
    # The router stores a retained message before it delivers it: once the
    # witness has all three, all three are stored.
    witness = raw(broker, uid("rwit"))
    witness.subscribe([("r/#", 0)])
    pub = clients.raw(broker, uid("rpub"))
    for i in range(3):
        pub.publish(f"r/{i}", f"v{i}".encode(), qos=1, retain=True, pid=i + 1)
    witness.recv_publishes(3, timeout=T(5))
    witness.close()
    broker.reload(retained_message_limit=2)
    pub.publish("r/new", b"refused", qos=1, retain=True, pid=4)
    pub.publish("r/0", b"replaced", qos=1, retain=True, pid=5)
    sub = clients.raw(broker, uid("rsub"))
    sub.subscribe([("r/#", 0)])
    got = {}
    for _ in range(3):
        p = sub.recv_publish(T(5))
        got[p.topic] = p.payload
    sub.expect_no_packet(0.5)
    assert got == {"r/0": b"replaced", "r/1": b"v1", "r/2": b"v2"}


@pytest.mark.broker_config(workers=1)
def test_restarted_worker_runs_with_the_reloaded_limits(broker):
    broker.reload(max_topic_levels=2, max_packet_size=2048)
    (old,) = broker.worker_pids()
    os.kill(old, signal.SIGKILL)
    new = wait_for(lambda: [p for p in broker.worker_pids() if p != old], 10,
                   "the supervisor to restart the killed worker")[0]
    wait_for(lambda: "worker 0 is back" in broker.log, 10, "the new worker to report ready")
    broker.initial_pids = set(broker.pids())
    c = raw(broker, uid("after"))
    assert broker.worker_of(c) == new
    assert c.subscribe([("a/b/c", 0), ("a/b", 0)], expect_codes=False) == [0x80, 0]
    c.send(m.publish("a/b", bytes(4000)))
    c.expect_closed(T(5))


@pytest.mark.broker_config(workers=1)
def test_router_backlog_cap_reloads_live(broker):
    line = broker.reload(max_router_backlog_bytes=2 << 20)
    assert "applied: server.max_router_backlog_bytes;" in line
    line = broker.reload(expect="reload failed, keeping the running configuration",
                         max_router_backlog_bytes=4096)
    assert "max_router_backlog_bytes" in line
    assert serves(broker.port)


def test_keys_that_need_a_restart_are_named_and_the_rest_applies(broker):
    line = broker.reload(max_inflight=5, user="nobody")
    assert "applied: server.max_inflight;" in line
    assert "after a restart of iotd: server.user" in line
    # The rings were sized for the starting max_packet_size: beyond, it waits for a restart.
    line = broker.reload(max_packet_size=64 << 20)
    assert "after a restart of iotd: server.max_packet_size (above " in line
    line = broker.reload(expect="reload failed, keeping the running configuration",
                         max_inflight="lots")
    assert "max_inflight" in line
    assert serves(broker.port)


# --- listen addresses --------------------------------------------------------


@pytest.mark.broker_config(workers=2, listen_in_config=True)
def test_listen_addresses_move_to_a_new_port_without_dropping_clients(broker, clients):
    old_port = broker.port
    keeper = clients.raw(old_port, uid("keeper"))
    keeper.subscribe([("keep/#", 1)])
    new_port = free_port()

    # Add a port: the kept one keeps its very socket, so accepting never stops.
    inode = listening_inode(old_port)
    line = broker.reload(listen_addresses=[f"127.0.0.1:{old_port}", f"127.0.0.1:{new_port}"])
    assert "applied: server.listen_addresses" in line
    accept_listener_change(broker)
    assert listening_inode(old_port) == inode, "the kept address was bound again"
    wait_for(lambda: serves(new_port), 10, f"the new port {new_port} to serve")
    assert serves(old_port)

    # Drop the old one: it refuses, the client connected through it stays.
    broker.reload(listen_addresses=[f"127.0.0.1:{new_port}"])
    accept_listener_change(broker)
    wait_for(lambda: refuses(old_port), 10, f"the old port {old_port} to refuse connections")
    assert serves(new_port)
    with raw(new_port, uid("pub")) as pub:
        pub.publish("keep/a", b"after the move", qos=1)
    assert keeper.recv_publish(T(5)).payload == b"after the move"


@pytest.mark.broker_config(workers=1, listen_in_config=True)
def test_unbindable_listen_address_rejects_the_whole_reload(broker):
    port = broker.port
    listener = broker.role_pid("listener")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        line = broker.reload(expect="reload failed, keeping the running configuration",
                             listen_addresses=[f"127.0.0.1:{port}", f"127.0.0.1:{taken}"],
                             max_inflight=7)
        assert f"cannot listen on 127.0.0.1:{taken}: Address already in use" in line
    assert serves(port)
    assert broker.role_pid("listener") == listener, "the listener was replaced by a failed reload"
    # Nothing of it was applied: the original file changes nothing.
    assert broker.reload(expect="nothing changed",
                         listen_addresses=[f"127.0.0.1:{port}"], max_inflight=None)
