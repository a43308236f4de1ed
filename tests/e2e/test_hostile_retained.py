"""Retained messages as a weapon: a client that stores big or many retained
messages and then subscribes to them many times over in one SUBSCRIBE.

The router sends the retained messages a subscription is owed from a
resumable walk, at the pace the ring to the subscriber's worker takes
them, a bounded amount per loop turn (docs/arch.md, "MQTT flows"), and a
filter repeated in one SUBSCRIBE is one subscription. So, while the
attacker receives everything it is owed:

* the router's memory (Pss, rings aside) stays within ROUTER_BOUND_KB
  (8 MiB) of what it held before the SUBSCRIBE: a few records' worth
  (measured: under 200 kB), where holding what the SUBSCRIBE asks for at
  once takes the whole machine (a router that did so grew by 1.4 GB with
  only 8 "#" instead of 4,000);
* a bystander pair (a publisher and a persistent subscriber, whose
  messages always cross the router) on the other worker keeps its round
  trip under RTT_P99 (200 ms; measured: about 25 ms on a busy 2-CPU
  machine) at the 99th percentile, over at most RTT_N (400) round trips
  made while the attack runs, at least RTT_MIN of them before it ends;
* no daemon process dies (same PIDs, the `bystander` fixture).
"""

import time

import pytest

import mqttraw as m
from helpers import T, PeakPss, Placement, pss_kb, PublishReader, raw

ROUTER_BOUND_KB = 8 * 1024
RTT_P99 = 0.2
RTT_N = 400
RTT_MIN = 5              # round trips the attack must last for the latency to mean anything (a fast machine sends the tree in ~10)

BIG_N = 64
BIG_SIZE = 1_000_000     # 64 x 1 MB: within retained_bytes_limit (64 MiB) and max_packet_size
HASHES = 4000            # "#" repeated: one subscription


class Counter(PublishReader):
    """Counts the PUBLISHes per (topic, retain flag) without keeping
    payloads; .total counts those with retain set (the attacker's "#" also
    gets the bystander pair's live messages)."""

    def __init__(self, client):
        self.n = {}
        self.total = 0
        self.bytes = 0
        super().__init__(client)

    def take(self, publishes):
        for p in publishes:
            self.n[(p.topic, p.retain)] = self.n.get((p.topic, p.retain), 0) + 1
            self.bytes += len(p.payload)
            self.total += p.retain

    def done(self, want):
        with self.cond:
            return self.error is not None or self.total >= want

    def wait(self, want, timeout):
        self.wait_until(lambda: self.total >= want, timeout,
                        f"the attacker to get {want} retained messages")


class Pair:
    """A publisher and a persistent subscriber on one worker: a persistent
    session is never served by the publisher's worker alone, so every
    round trip crosses the router."""

    def __init__(self, broker, place, worker):
        self.sub = place.client("rttsub", worker, same=True,
                                factory=lambda b: raw(b, tag="rttsub", clean=False))
        self.pub = place.client("rttpub", worker, same=True)
        self.sub.subscribe([("rtt/t", 1)])
        self.rtts = []
        self.n = 0

    def round_trip(self):
        self.n += 1
        payload = f"rtt-{self.n}".encode()
        t0 = time.monotonic()
        self.pub.publish("rtt/t", payload, qos=0)
        p = self.sub.recv_publish(timeout=T(5))
        self.rtts.append(time.monotonic() - t0)
        assert p.payload == payload, f"round trip {self.n}: got {bytes(p.payload)!r}"

    def p99(self):
        s = sorted(self.rtts)
        return s[min(len(s) - 1, int(len(s) * 0.99))]

    def close(self):
        self.sub.disconnect()
        self.pub.disconnect()


def attack(broker, bystander, store, filters, want, timeout, what):
    """Store the retained messages (store(pub)), then one SUBSCRIBE with
    filters from an attacker on one worker while the pair on the other
    makes round trips; returns the attacker's counts of retained messages
    by (topic, True)."""
    place = Placement(broker)
    counter = None
    try:
        attacker = place.client("attacker", broker.worker_pids()[0], same=True)
        pub = place.client("retpub", broker.worker_pids()[0], same=False)
        pair = Pair(broker, place, broker.worker_of(pub))
        store(pub)
        pair.round_trip()              # the stored messages have all gone through the router
        router = broker.role_pid("router")
        assert router, f"router not found among {broker.pids()}"
        before = pss_kb(router, shmem=False)
        peak = PeakPss([router])
        attacker.send(m.subscribe(1, filters))
        ack = attacker.expect(m.SUBACK, timeout=T(10), pid=1)
        assert ack.codes == [q for _, q in filters], "SUBACK: one code per filter, in order"
        counter = Counter(attacker)
        while not counter.done(want) and pair.n < RTT_N:
            pair.round_trip()
        during = len(pair.rtts) - 1
        counter.wait(want, timeout)
        grown = peak.finish() - before
        if not broker.instrumented:
            assert grown < ROUTER_BOUND_KB, (
                f"the router grew by {grown} kB while sending {what}; bound {ROUTER_BOUND_KB} kB")
        # Under a sanitizer every round trip is slow too: too few fit in the
        # attack to say anything of its latency (the p99 bound still holds).
        assert during >= RTT_MIN or broker.instrumented, (
            f"only {during} round trips while the attack ran: it was over too soon to "
            f"measure anything")
        assert pair.p99() < T(RTT_P99), (
            f"bystander round trip p99 {pair.p99() * 1000:.0f} ms over {len(pair.rtts)} "
            f"round trips (max {max(pair.rtts) * 1000:.0f} ms) while sending {what}")
        # Nothing beyond the count: no retained message more within 0.3 s.
        # (Live round trips of the pair, which the filters also match, may
        # still arrive: they are not the attack's.)
        with counter.cond:
            extra = counter.cond.wait_for(lambda: counter.total > want, 0.3)
        assert not extra, f"{counter.total - want} retained messages more than {want}"
        counter.close()
        pair.close()
        pub.disconnect()
        attacker.disconnect()
        bystander.check()
        return {k: n for k, n in counter.n.items() if k[1]}
    finally:
        if counter:
            counter.close()
        place.close()


# The attacker is owed 256 MB at QoS 1, far past what one connection may
# hold in its worker (max_inflight_bytes, max_queued_bytes: 16 MiB each,
# tested on their own): raised here, so that every message is owed and the
# router's pace is what is measured.
@pytest.mark.iotd_only       # Mosquitto holds all of it at once
@pytest.mark.broker_config(max_inflight_bytes=1 << 30, max_queued_bytes=1 << 30)
def test_thousands_of_hash_filters_over_big_retained_messages(broker, bystander):
    """64 retained messages of 1 MB, then one SUBSCRIBE of 4,000 "#" and
    three other filters matching them all: the attacker gets each message
    exactly four times (once per distinct filter, retain set), the router
    stays within its bound and the bystander's latency within its own."""
    topics = [f"big/r/{i:02d}" for i in range(BIG_N)]

    def store(pub):
        for i, t in enumerate(topics):
            pub.publish(t, bytes([65 + i % 26]) * BIG_SIZE, qos=1, retain=True, pid=1)

    filters = [("#", 1)] * HASHES + [("big/#", 1), ("+/+/+", 1), ("big/+/#", 1)]
    got = attack(broker, bystander, store, filters, 4 * BIG_N, 60,
                 f"4 x {BIG_N} retained messages of 1 MB")
    assert got == {(t, True): 4 for t in topics}


TREE_N = 20_000


@pytest.mark.iotd_only
@pytest.mark.broker_config(retained_message_limit=TREE_N)
def test_wildcard_levels_over_a_big_retained_tree(broker, bystander):
    """20,000 retained topics four levels deep, then one SUBSCRIBE of
    "+/+/+/#", "+/+/#", "tree/+/+/+" and each of them again a thousand
    times: every topic reaches the attacker three times, retain set, with
    the same bounds."""
    topics = [f"tree/{i // 1000}/{i // 100 % 10}/{i:05d}" for i in range(TREE_N)]

    def store(pub):
        batch = 500
        for i in range(0, TREE_N, batch):
            pub.send(b"".join(m.publish(t, b"v" * 32, retain=True) for t in topics[i:i + batch]))
        pub.publish("tree/sync", b"", qos=1, pid=1)

    filters = [("+/+/+/#", 1), ("+/+/#", 0), ("tree/+/+/+", 1)] * 1000
    got = attack(broker, bystander, store, filters, 3 * TREE_N, 60,
                 f"3 x {TREE_N} retained messages")
    assert got == {(t, True): 3 for t in topics}
