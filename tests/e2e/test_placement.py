"""Placement of new connections over the workers (server.placement_slack):
clients that connect one after another share the previous one's worker
while it would then hold at most the slack more than the least-loaded
worker, and move to the least-loaded one past it; a reload changes the
slack for the next connections.

Two workers. Each client has its CONNACK before the next one connects, so
each is placed on its own, after the one before. The daemon starts idle
(the fixture's probe connection is gone), so every load counts from 0.
"""

import pytest

from helpers import T, close_all, raw, uid

pytestmark = pytest.mark.iotd_only


def connect_in_turn(broker, n, name):
    clients = []
    try:
        for i in range(n):
            clients.append(raw(broker, uid(f"{name}{i}")))
    except BaseException:
        close_all(clients)
        raise
    return clients


def workers_of(broker, clients):
    return [broker.worker_of(c) for c in clients]


# placement_slack=None: the key left out of the file, so the daemon's own default (8).
@pytest.mark.broker_config(workers=2, placement_slack=None)
def test_default_slack_keeps_clients_connected_one_after_another_on_one_worker(broker):
    assert "placement_slack" not in broker.conf_path.read_text()
    clients = connect_in_turn(broker, 9, "dflt")
    try:
        owners = workers_of(broker, clients)
        # Eight on the first worker: the ninth would make it 9 above the other.
        assert len(set(owners[:8])) == 1, f"the first eight spread: {owners}"
        assert owners[8] != owners[0], f"the ninth stayed past the slack: {owners}"
    finally:
        close_all(clients)


@pytest.mark.broker_config(workers=2, placement_slack=8)
def test_two_clients_connected_one_after_another_share_a_worker(broker):
    a, b = connect_in_turn(broker, 2, "pair")
    try:
        assert broker.worker_of(a) == broker.worker_of(b)
        # And they talk through it like any two clients.
        b.subscribe([("pair/t", 1)])
        a.publish("pair/t", b"same worker", qos=1)
        assert b.recv_publish(T(5)).payload == b"same worker"
    finally:
        close_all((a, b))


@pytest.mark.broker_config(workers=2, placement_slack=2)
def test_slack_2_moves_to_the_other_worker_once_one_holds_2_more(broker):
    clients = connect_in_turn(broker, 7, "two")
    try:
        owners = workers_of(broker, clients)
        first, other = owners[0], owners[2]
        # 2 and 0: the third would make it 3 above, so it goes to the other,
        # which then takes clients until it holds 2 more (2 and 4).
        assert owners[:2] == [first, first], owners
        assert other != first, f"the third stayed past the slack: {owners}"
        assert owners[2:6] == [other] * 4, owners
        assert owners[6] == first, f"the seventh stayed past the slack: {owners}"
    finally:
        close_all(clients)


def test_a_reload_changes_the_slack_for_the_next_connections(broker):
    # The fixture's slack of 0: each new connection to the least-loaded worker.
    a, b = connect_in_turn(broker, 2, "before")
    clients = [a, b]
    try:
        wa, wb = broker.worker_of(a), broker.worker_of(b)
        assert wa != wb

        line = broker.reload(placement_slack=8)
        assert "applied: server.placement_slack;" in line
        clients += connect_in_turn(broker, 2, "slack8")
        # With b's worker, as one after another, though both workers held one.
        assert workers_of(broker, clients[2:]) == [wb, wb]

        broker.reload(placement_slack=0)
        clients += connect_in_turn(broker, 1, "slack0")
        # To the least-loaded (a's, 1 to 3), no longer with the previous one's.
        assert broker.worker_of(clients[4]) == wa
        # Those already connected stayed where they were.
        assert workers_of(broker, clients[:4]) == [wa, wb, wb, wb]
    finally:
        close_all(clients)
