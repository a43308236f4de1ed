"""The supervisor's side of the crash contract: a dead listener, a dead
supervisor, a crash loop, and many kill -9 / restart cycles of every role.

* kill -9 the listener: established connections keep publishing and
  receiving; new connections are accepted again within a bounded time;
* kill -9 the supervisor: every child dies with it within a second
  (PR_SET_PDEATHSIG), nothing is left behind, and a new daemon starts on
  the same port at once;
* a worker killed each time it is back: every restart is logged with the
  signal, restarts back off exponentially (first one well under 100 ms,
  capped at a few seconds) and the supervisor does not spin;
* kill -9 / restart cycles of the worker, listener and router roles: the
  supervisor's descriptors, its children (no zombies) and the daemon's
  memory (Pss over every process) come back to where they started.

Each test kills iotd processes on purpose and accepts the new process set
(Broker.initial_pids) before its teardown checks the daemon's health."""

import glob
import os
import signal
import statistics
import threading
import time

import pytest

from helpers import (T, drop_paho, PahoClient, proc_alive, proc_stat, proc_title, published, raw,
                     raw_on, uid, wait_for)

pytestmark = pytest.mark.iotd_only

CLK_TCK = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------ /proc helpers

def children_of(pid):
    """(pid, state) of every process whose parent is pid, zombies included."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = proc_stat(int(name))
            if st is not None and st[1] == pid:
                out.append((int(name), st[0]))
    return out


def zombies_of(pid):
    return [c for c, state in children_of(pid) if state == "Z"]


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def fd_targets(pid):
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass
    return sorted(out)


def memfd_mappings(pid):
    """Lines of /proc/PID/maps that map a memfd (iotd's shared-memory rings)."""
    with open(f"/proc/{pid}/maps") as f:
        return sum(1 for line in f if "/memfd:" in line)


def role_fds(broker):
    """{role title: descriptor count} of every child."""
    out = {}
    for p in broker.pids()[1:]:
        try:
            out[proc_title(p)] = fd_count(p)
        except OSError:
            pass
    return out


def cpu_seconds(pid):
    """User + system CPU time of a process, in seconds."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    rest = data[data.rindex(b")") + 2:].split()
    return (int(rest[11]) + int(rest[12])) / CLK_TCK


def kill_time(pid):
    os.kill(pid, signal.SIGKILL)
    return time.monotonic()


def poll_until(cond, deadline, what):
    """cond() polled until truthy (returned) or the monotonic deadline passes
    (AssertionError naming what was awaited); every 2 ms at first, then
    less often (at most every 20 ms) as the wait grows."""
    t0 = time.monotonic()
    while True:
        v = cond()
        if v:
            return v
        now = time.monotonic()
        if now >= deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(min(0.02, max(0.002, (now - t0) / 20)))


# ------------------------------------------------------------ clients

def round_trip(c, topic, payload=b"rt", timeout=None):
    """The client subscribes to topic, publishes to it at QoS 1 and gets it
    back: its worker, the router and back (timeout in seconds, default T(5))."""
    c.subscribe([(topic, 1)], pid=7)
    c.publish(topic, payload, qos=1, pid=8)
    p = c.recv_publish(timeout=T(5) if timeout is None else timeout)
    assert (p.topic, p.payload) == (topic, payload), f"round trip got {p!r}"


def fresh_round_trip(broker, tag, timeout=None):
    """A new connection (listener, a worker, the router's CONNACK) does a
    publish round trip, then leaves (waiting for the server to close)."""
    timeout = T(5) if timeout is None else timeout
    c = raw(broker, tag=tag, timeout=timeout)
    try:
        round_trip(c, f"rt/{c.client_id}", timeout=timeout)
    finally:
        c.disconnect()


def paho_spread(broker, n_per_worker, tag):
    """PahoClients, n on each of the (two) workers: keeps connecting and
    keeps those on a worker that still needs some."""
    by_worker, spare = {}, []
    need = n_per_worker * len(broker.worker_pids())
    for _ in range(need * 4):
        if sum(len(v) for v in by_worker.values()) == need:
            break
        c = PahoClient(broker.port, uid(tag))
        c.connect()
        w = broker.worker_of(c)
        if len(by_worker.setdefault(w, [])) < n_per_worker:
            by_worker[w].append(c)
        else:
            spare.append(c)
    for c in spare:
        drop_paho(broker, c)
    assert sum(len(v) for v in by_worker.values()) == need, f"could not spread: {by_worker}"
    return by_worker


class Flow(threading.Thread):
    """Numbered publishes on <base>/q0, q1, q2 in turn until stopped."""

    def __init__(self, client, tag, base, period=0.002):
        super().__init__(daemon=True)
        self.client, self.tag, self.base, self.period = client, tag, base, period
        self.sent = []
        self.stop = threading.Event()

    def run(self):
        i = 0
        while not self.stop.is_set() and self.client.disconnected is None:
            qos = i % 3
            topic, payload = f"{self.base}/q{qos}", f"{self.tag}-q{qos}-{i}"
            self.sent.append((topic, payload, qos,
                              self.client.publish(topic, payload, qos=qos, wait=False)))
            i += 1
            time.sleep(self.period)

    def finish(self):
        self.stop.set()
        self.join(T(10))
        for _, _, q, info in self.sent:
            if q:
                try:
                    info.wait_for_publish(T(10))
                except (RuntimeError, ValueError):
                    pass
        return [p for _, p, q, info in self.sent if q and not published(info)]


# ------------------------------------------------------------ listener

def test_listener_crash_keeps_connections_and_accepts_again(broker):
    clients = paho_spread(broker, 2, "lc")
    subs = [v[0] for v in clients.values()]
    pubs = [v[1] for v in clients.values()]
    for s in subs:
        s.subscribe("lc/#", qos=2)
    flows = [Flow(p, f"p{i}", f"lc/p{i}") for i, p in enumerate(pubs)]
    for f in flows:
        f.start()
    wait_for(lambda: all(len(f.sent) > 50 for f in flows), 10, "traffic to flow")

    old = broker.role_pid("listener")
    assert old, f"no listener among {broker.pids()}"
    t0 = kill_time(old)
    c = raw(broker, tag="lc-new")                   # at once: waits in the backlog
    accept_ms = (time.monotonic() - t0) * 1000
    new = wait_for(lambda: broker.successor("listener", old),
                   5, "the supervisor to start a new listener")
    round_trip(c, "lc-new/x")
    c.disconnect()
    n = [len(f.sent) for f in flows]                 # traffic keeps flowing after the restart
    wait_for(lambda: all(len(f.sent) >= k + 50 for f, k in zip(flows, n)), 10,
             "traffic to go on after the listener's restart")
    for f in flows:
        unacked = f.finish()
        assert not unacked, f"publishes never acknowledged across the listener's death: {unacked[:10]}"

    for s in subs:
        for f in flows:
            for q in (0, 1, 2):
                sent = [p for t, p, qq, _ in f.sent if qq == q]
                wait_for(lambda: len([p for t, p in s.payloads() if t == f"{f.base}/q{q}"])
                         >= len(sent), 10, f"{s.client_id} to get every QoS {q} message of {f.tag}")
                got = [p for t, p in s.payloads() if t == f"{f.base}/q{q}"]
                assert got == sent, (f"{s.client_id}: QoS {q} from {f.tag}: {len(sent)} sent, "
                                     f"{len(got)} received (lost, duplicated or out of order)")
    for v in clients.values():
        for cl in v:
            assert cl.disconnected is None, f"{cl.client_id} was disconnected by the listener's death"
    assert accept_ms < T(1000), f"a new connection waited {accept_ms:.0f} ms for CONNACK"
    assert set(broker.pids()) == broker.initial_pids - {old} | {new}, \
        "only the listener should have been replaced"
    broker.initial_pids = set(broker.pids())
    for v in clients.values():
        for cl in v:
            cl.disconnect()


# ------------------------------------------------------------ supervisor

def test_supervisor_death_takes_every_child(start_broker):
    b = start_broker()
    sup = b.proc.pid
    children = b.pids()[1:]
    assert len(children) == 4, f"expected listener, router and 2 workers: {children}"
    conns = [raw(b, tag=f"sd{i}") for i in range(4)]
    b.assert_spread(*conns)
    stores = glob.glob(f"/dev/shm/iotd-{sup}-*")
    assert len(stores) == 1, f"the memory store of daemon {sup}: {stores}"
    store = stores[0]

    os.kill(sup, signal.SIGKILL)
    t0 = time.monotonic()
    b.returncode = b.proc.wait(T(5))
    b.stopped = True                      # killed on purpose: the teardown only reads the log
    try:
        wait_for(lambda: not [p for p in children if proc_alive(p)], 1,
                 "every child of the killed supervisor to exit")
    finally:
        left = [(p, proc_title(p)) for p in children if proc_alive(p)]
        for p, _ in left:                 # ours: do not leave them behind for other tests
            os.kill(p, signal.SIGKILL)
    gone_ms = (time.monotonic() - t0) * 1000
    assert not left, f"children still alive after the supervisor's death: {left}"
    for c in conns:
        c.expect_closed(T(2))
    assert gone_ms < T(1000)

    # A new daemon on the same port, at once; its router sweeps the dead one's store.
    t1 = time.monotonic()
    b2 = start_broker(listen=[f"127.0.0.1:{b.port}"])
    start_ms = (time.monotonic() - t1) * 1000
    fresh_round_trip(b2, "sd-new")
    assert start_ms < T(3000), f"the new daemon took {start_ms:.0f} ms to serve"
    wait_for(lambda: not os.path.exists(store), 5, f"{store} to be swept by the new daemon")


# ------------------------------------------------------------ crash loop

LOOP_KILLS = 8


def test_crash_loop_backs_off_without_spinning(broker):
    """Kill worker 0 each time it is back: 10 ms, x4, up to 5 s."""
    sup = broker.proc.pid
    # A client on worker 1 keeps its connection throughout.
    w1 = broker.role_pid("worker 1")
    keep = raw_on(broker, w1, tag="keep")
    restarts = broker.log.count("worker 0 killed by signal 9")
    cpu0, t_start = cpu_seconds(sup), time.monotonic()
    delays = []
    for k in range(LOOP_KILLS):
        old = broker.role_pid("worker 0")
        back = broker.log.count("worker 0 is back")
        t0 = kill_time(old)
        new = poll_until(lambda: broker.successor("worker 0", old), t0 + T(10),
                         f"restart {k + 1} of worker 0")
        delays.append(time.monotonic() - t0)
        poll_until(lambda: broker.log.count("worker 0 is back") > back, t0 + T(15),
                   f"worker 0 (pid {new}) to report it is back")
    episode = time.monotonic() - t_start
    cpu = cpu_seconds(sup) - cpu0
    log = broker.log
    report = (f"restart delays (ms): {[round(d * 1000) for d in delays]}; supervisor CPU "
              f"{cpu * 1000:.0f} ms over {episode:.1f} s")
    print(f"\ncrash loop: {report}")

    assert log.count("worker 0 killed by signal 9") - restarts == LOOP_KILLS, \
        f"each kill should be logged with its signal; {report}"
    assert "worker 0 keeps dying" in log, "a crash loop should be logged as such"
    assert delays[0] < T(0.1), f"first restart not well under 100 ms; {report}"
    # Growing (each delay at least the one before, give or take scheduling
    # noise) to seconds, then capped: the last two alike, none beyond a few
    # seconds.
    for a, b in zip(delays, delays[1:]):
        assert b >= a * 0.8 - 0.05, f"restart delays should not shrink in a crash loop; {report}"
    assert delays[-1] >= 2.0, f"restarts did not back off; {report}"
    assert abs(delays[-1] - delays[-2]) <= 0.2 * delays[-1], f"backoff not capped; {report}"
    assert max(delays) <= 5.0 + T(1.0), f"backoff not capped at a few seconds; {report}"
    assert cpu < T(0.5), f"the supervisor spun during the crash loop; {report}"

    # Healthy after: a client on the restarted worker does a round trip,
    # the client on the other worker never noticed.
    new = broker.role_pid("worker 0")
    c = raw_on(broker, new)
    round_trip(c, "loop/after")
    keep.publish("loop/after", b"from-worker-1", qos=1, pid=3)
    assert c.recv_publish(timeout=T(5)).payload == b"from-worker-1"
    assert keep.is_open(), "the client on the other worker was disconnected"
    c.disconnect()
    keep.disconnect()
    broker.initial_pids = set(broker.pids())


# ------------------------------------------------------------ restart cycles

class Cycles:
    """kill -9 / restart cycles of one role at a time, each waited for until
    the successor serves, with the supervisor's descriptors, its zombies and
    the daemon's Pss recorded at the start and checked at the end."""

    def __init__(self, broker):
        self.broker = broker
        self.sup = broker.proc.pid
        self.n_workers = len(broker.worker_pids())
        # One idle client on every worker, so that a restarted worker (which
        # lost its client) is the least-loaded one and gets the next connection.
        self.anchors = {}
        self.served_at = {}
        for i in range(self.n_workers):
            pid = broker.role_pid(f"worker {i}")
            self.anchors[i] = raw_on(broker, pid, tag=f"anchor{i}")
        self.fds0 = fd_count(self.sup)
        self.fd_list0 = fd_targets(self.sup)
        self.role_fds0 = role_fds(broker)
        self.memfd0 = memfd_mappings(self.sup)
        self.pss0 = broker.pss_kb()
        self.times = {}             # role -> [(restart s, serving s)]

    def cycle(self, role, budget):
        """Kill the role's process (role: "router", "listener", "worker N") and
        wait until its successor serves, within budget seconds of the kill."""
        b = self.broker
        # Pacing, not synchronisation: the supervisor takes a child that dies
        # within STABLE_MS (100 ms) of READY for a crash loop and backs off.
        since = time.monotonic() - self.served_at.get(role, 0.0)
        if since < SETTLED:
            time.sleep(SETTLED - since)
        old = b.role_pid(role)
        assert old, f"no {role} among {[(p, proc_title(p)) for p in b.pids()]}"
        t0 = kill_time(old)
        deadline = t0 + budget
        n = len(self.times.get(role.split()[0], [])) + 1
        what = f"{role} (cycle {n})"
        new = poll_until(lambda: b.successor(role, old),
                         deadline, f"the supervisor to restart {what} within {budget:.1f} s")
        t_new = time.monotonic() - t0
        if role.startswith("worker"):
            i = int(role.split()[1])
            self.anchors[i].close()
            c = raw_on(b, new, tag=f"anchor{i}", deadline=deadline)
            self.anchors[i] = c
            c.sock.settimeout(max(0.1, deadline - time.monotonic()))
            round_trip(c, f"cyc/w{i}", timeout=max(0.1, deadline - time.monotonic()))
        else:
            fresh_round_trip(b, "cyc", timeout=max(0.1, deadline - time.monotonic()))
        t_serving = time.monotonic() - t0
        assert t_serving <= budget + 0.05, \
            f"{what} served again only {t_serving * 1000:.0f} ms after the kill (budget {budget:.1f} s)"
        self.times.setdefault(role.split()[0], []).append((t_new, t_serving))
        self.served_at[role] = time.monotonic()
        # Deliberate: the teardown must not take the new process for a crash.
        b.initial_pids = set(b.pids())

    def summary(self):
        out = []
        for role, ts in self.times.items():
            serve = [s * 1000 for _, s in ts]
            out.append(f"{role}: {len(ts)} cycles, serving again after min "
                       f"{min(serve):.0f} / median {statistics.median(serve):.0f} / max "
                       f"{max(serve):.0f} ms")
        return "; ".join(out)

    def settle(self):
        """After a failed cycle: wait (bounded) until every role runs again,
        and accept the new process set, so that the teardown checks the
        daemon's health rather than the test's deliberate kills."""
        b = self.broker
        try:
            wait_for(lambda: len(b.pids()) == 3 + self.n_workers and
                     all(b.role_pid(r) for r in ("listener", "router")), 15,
                     "every role to run again")
        finally:
            b.initial_pids = set(b.pids())

    def check_nothing_leaked(self):
        b = self.broker
        fresh_round_trip(b, "cyc-end")
        wait_for(lambda: fd_count(self.sup) == self.fds0, 5,
                 f"the supervisor's descriptors back at {self.fds0}; now {fd_count(self.sup)}: "
                 f"{sorted(set(fd_targets(self.sup)) ^ set(self.fd_list0))}")
        assert memfd_mappings(self.sup) == self.memfd0, "the supervisor mapped more shared memory"
        # Each successor holds what its predecessor held (one client per worker).
        wait_for(lambda: role_fds(b) == self.role_fds0, 5,
                 f"every child's descriptor count back to {self.role_fds0} (now {role_fds(b)})")
        assert not zombies_of(self.sup), f"zombie children: {zombies_of(self.sup)}"
        live = [p for p, state in children_of(self.sup)]
        assert len(live) == 2 + self.n_workers, \
            f"children of the supervisor: {[(p, proc_title(p)) for p in live]}"
        pss = b.pss_kb()
        print(f"\nafter the cycles: supervisor fds {self.fds0} -> {fd_count(self.sup)}, "
              f"daemon Pss {self.pss0} -> {pss} kB{' (not asserted: instrumented)' if b.instrumented else ''}")
        if not b.instrumented:
            limit = max(self.pss0 + 2048, self.pss0 * 1.25)
            try:
                wait_for(lambda: b.pss_kb() <= limit, 10, "memory to settle")
            except AssertionError:
                raise AssertionError(f"daemon Pss {b.pss_kb()} kB after the cycles, started at "
                                     f"{self.pss0} kB (limit {limit:.0f} kB)") from None

    def close(self):
        for c in self.anchors.values():
            c.disconnect()


# The supervisor's backoff (10 ms after a crash, x4, up to 5 s) is only
# reset once a child has run 10 s. So cycles of one child stay quick for
# its first restarts: 0, 10, 40, 160 and 640 ms.
QUICK_KILLS_PER_CHILD = {"worker": 4, "listener": 5, "router": 5}
QUICK_WORKERS = 13          # 13 workers x 4 kills: 52 worker cycles


@pytest.mark.broker_config(workers=QUICK_WORKERS)
def test_restart_cycles_leak_no_descriptor_zombie_or_memory(broker):
    """Over 50 worker cycles (spread over 13 workers) and 5 listener and 5
    router cycles, within each child's first restarts (see above)."""
    cy = Cycles(broker)
    for k in range(QUICK_KILLS_PER_CHILD["worker"]):
        for i in range(QUICK_WORKERS):
            cy.cycle(f"worker {i}", T(3))
    for role in ("listener", "router"):
        for k in range(QUICK_KILLS_PER_CHILD[role]):
            cy.cycle(role, T(3))
    print(f"\nrestart cycles: {cy.summary()}")
    cy.check_nothing_leaked()
    cy.close()


FULL_CYCLES = 50
SETTLED = 0.15              # s a successor serves before the next kill of its role
CYCLE_BUDGET = 1.0          # seconds from a kill until the successor serves


def test_fifty_restart_cycles_of_each_role_leak_nothing(broker):
    """50 rounds, each killing a worker (in turn), the listener and the
    router, each serving again within CYCLE_BUDGET s; then nothing leaked."""
    cy = Cycles(broker)
    try:
        for k in range(FULL_CYCLES):
            for role in (f"worker {k % cy.n_workers}", "listener", "router"):
                cy.cycle(role, T(CYCLE_BUDGET))
    except BaseException:
        print(f"\nrestart cycles before the failure: {cy.summary()}")
        cy.settle()
        raise
    print(f"\nrestart cycles: {cy.summary()}")
    cy.check_nothing_leaked()
    cy.close()
