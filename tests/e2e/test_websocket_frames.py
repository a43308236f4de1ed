"""How iotd frames its output over WebSocket (docs/arch.md, Transports):
what a flush finds to send becomes one binary frame, bounded (64 KiB;
16 KiB over wss://, one TLS record), so a burst of small publishes
arrives in far fewer frames than messages and 100 KiB ones in frames far
larger than 4 KiB, intact; over wss:// each frame, header and payload, is
exactly one TLS record (seen by a client that reads the records itself,
through a memory BIO). Then the subscriber stops reading until its
output is past max_output_bytes, the server's writes having stopped
partway (EAGAIN, SSL_write's WANT_WRITE): once it reads again every frame
is whole, and a ping sent meanwhile is answered between frames, never
inside one.
"""

import ssl
import struct
import time

import pytest

import mqttraw as m
from certs import certs, pki  # noqa: F401
from conftest import free_port
from helpers import T, raw, uid
from tlsbroker import client_context, tls_broker
from wsraw import OP_BINARY, OP_PING, OP_PONG, WsClient, accept_of, frame, upgrade_request

pytestmark = pytest.mark.iotd_only

SMALL = 400                   # small publishes in the burst
BIG = 100 * 1024              # a large publish's payload
BIGS = 4                      # large publishes after them
OUTPUT_MAX = 1 << 20          # max_output_bytes: a burst is held whole
DEAF_LIMIT = 64 << 20         # bytes published at most for a subscriber that does not read
FRAME_MAX = 65536             # a data frame's bytes, header included (worker_ws.c)
FRAME_MAX_TLS = 16384         # ... over wss://: one TLS record's plaintext
RCVBUF = 8192                 # the subscriber's receive buffer


def frame_size(payload_len):
    """Bytes of a server (unmasked) frame with payload_len bytes of payload."""
    return payload_len + (2 if payload_len < 126 else 4 if payload_len < 65536 else 10)


def parse_frame(data):
    """((fin, opcode, payload), bytes used) of the frame at the front of data, or (None, 0)."""
    if len(data) < 2:
        return None, 0
    assert not data[1] & 0x80, "a server frame is masked"
    n, off = data[1] & 0x7F, 2
    if n == 126:
        if len(data) < 4:
            return None, 0
        n, off = struct.unpack("!H", data[2:4])[0], 4
    elif n == 127:
        if len(data) < 10:
            return None, 0
        n, off = struct.unpack("!Q", data[2:10])[0], 10
    if len(data) < off + n:
        return None, 0
    return (bool(data[0] & 0x80), data[0] & 0x0F, data[off:off + n]), off + n


class Subscriber:
    """MQTT over the frames next_frame() returns: every frame kept (.frames,
    (fin, opcode, payload) each), the pongs counted apart."""

    def __init__(self, next_frame):
        self.next_frame = next_frame
        self.frames = []
        self.pongs = []
        self.stream = b""

    def frame(self, deadline):
        fin, op, payload = f = self.next_frame(deadline)
        if op == OP_PONG:
            self.pongs.append(payload)
            return
        assert op == OP_BINARY and fin, f"not a whole binary frame: fin={fin} opcode={op}"
        self.frames.append(f)
        self.stream += payload

    def packet(self, timeout=T(10)):
        deadline = time.monotonic() + timeout
        while True:
            pkt, used = m.parse_one(self.stream)
            if pkt is not None:
                self.stream = self.stream[used:]
                return pkt
            self.frame(deadline)


def burst_and_check(b, send, sub, frame_max):
    """sub (CONNECTed over send) subscribes; a TCP client publishes SMALL
    small messages and BIGS large ones in one write while sub pings; all
    arrive, in order, intact, as frames of at most frame_max bytes, far
    fewer than the messages."""
    send(frame(OP_BINARY, m.subscribe(1, [("wsf/t", 1)])))
    assert sub.packet().type == m.SUBACK
    bigs = [bytes([i]) + bytes(range(256)) * (BIG // 256) for i in range(BIGS)]
    with raw(b, tag="wsfpub") as pub:
        pub.send(b"".join(m.publish("wsf/t", b"small %04d" % i) for i in range(SMALL)) +
                 b"".join(m.publish("wsf/t", p) for p in bigs))
        send(frame(OP_PING, b"between frames"))
        before = len(sub.frames)
        got = [sub.packet().payload for _ in range(SMALL + BIGS)]
    assert got[:SMALL] == [b"small %04d" % i for i in range(SMALL)]
    assert got[SMALL:] == bigs, "a large payload broke"
    frames = sub.frames[before:]
    sizes = [frame_size(len(p)) for _, _, p in frames]
    assert max(sizes) <= frame_max, f"a frame of {max(sizes)} bytes"
    # Several packets to a frame: what each flush found went as one frame;
    # the large ones in frames of the bound, not of 4 KiB.
    least = (BIG + 10) * BIGS // (frame_max - 4) + 1
    assert len(frames) <= SMALL // 4 + 2 * least, \
        f"{SMALL + BIGS} messages in {len(frames)} frames"
    assert sum(1 for s in sizes if s > frame_max // 2) >= least // 2, sizes
    deadline = time.monotonic() + T(5)
    while not sub.pongs:
        sub.frame(deadline)
    assert sub.pongs == [b"between frames"] and sub.stream == b""


def numbered(i):
    return b"%08d" % i + bytes(range(256)) * 4


def blocked_then_drained(b, send, sub):
    """sub (subscribed by burst_and_check) stops reading while a TCP client
    publishes until sub's worker drops QoS 0 messages for it: its output is
    past max_output_bytes, the socket having taken no more, a frame
    half-sent. sub pings; then, reading again, it finds every frame whole,
    the pong between two, and what came of the publishes intact and in
    order, up to a QoS 1 one that is not dropped."""
    sub.pongs.clear()
    batch = 64
    with raw(b, tag="wsfdeaf") as pub:
        sent, deadline = 0, time.monotonic() + T(30)
        while "slow reader: dropping QoS 0 messages" not in b.log:
            assert sent * 1040 < DEAF_LIMIT and time.monotonic() < deadline, \
                "the subscriber's output never stopped"
            pub.send(b"".join(m.publish("wsf/t", numbered(i)) for i in range(sent, sent + batch)))
            sent += batch
        send(frame(OP_PING, b"while blocked"))
        pub.send(m.publish("wsf/t", b"end", qos=1, pid=1))
        assert pub.recv_packet(T(10)).type == m.PUBACK
        seen = []
        while (p := sub.packet(T(30))).payload != b"end":
            seen.append(p.payload)
    assert 0 < len(seen) < sent, f"{len(seen)} of {sent} publishes came"
    order = [int(p[:8]) for p in seen]
    assert seen == [numbered(i) for i in order] and order == sorted(set(order))
    deadline = time.monotonic() + T(5)
    while not sub.pongs:
        sub.frame(deadline)
    assert sub.pongs == [b"while blocked"]


def test_ws_output_leaves_in_few_large_frames(start_broker):
    tcp, ws = free_port(), free_port()
    b = start_broker(listen=[f"127.0.0.1:{tcp}", f"ws://127.0.0.1:{ws}/mqtt"],
                     max_output_bytes=OUTPUT_MAX)
    with WsClient(ws, timeout=T(5), rcvbuf=RCVBUF) as c:
        c.handshake("/mqtt")
        c.send(frame(OP_BINARY, m.connect(uid("wsf"))))
        sub = Subscriber(lambda deadline: c.recv_frame(max(deadline - time.monotonic(), 0.01)))
        assert sub.packet().type == m.CONNACK
        burst_and_check(b, c.send, sub, FRAME_MAX)
        blocked_then_drained(b, c.send, sub)


class TlsRecords:
    """A TLS client that reads the server's records itself (ssl.MemoryBIO):
    record() is the plaintext of the next one, b"" for one that carries
    none for the application (a session ticket)."""

    def __init__(self, port, ca):
        # Below TLS: a WsClient's socket and byte buffer, nothing of its WebSocket.
        self.tcp = WsClient(port, timeout=T(5), rcvbuf=RCVBUF)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = client_context(ca).wrap_bio(self.incoming, self.outgoing,
                                               server_hostname="localhost")
        deadline = time.monotonic() + T(10)
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._push()
                self.incoming.write(self._record_bytes(deadline))
        self._push()

    def close(self):
        self.tcp.close()

    def _push(self):
        data = self.outgoing.read()
        if data:
            self.tcp.send(data)

    def send(self, data):
        self.tls.write(data)
        self._push()

    def _read(self, n, deadline):
        while len(self.tcp.buf) < n:
            self.tcp.fill(deadline)
        out, self.tcp.buf = self.tcp.buf[:n], self.tcp.buf[n:]
        return out

    def _record_bytes(self, deadline):
        head = self._read(5, deadline)
        return head + self._read(struct.unpack("!H", head[3:5])[0], deadline)

    def record(self, deadline):
        self.incoming.write(self._record_bytes(deadline))
        out = b""
        while True:
            try:
                out += self.tls.read(65536)
            except ssl.SSLWantReadError:
                self._push()
                return out


def test_wss_frame_is_one_tls_record(start_broker, certs):  # noqa: F811
    b = tls_broker(start_broker, certs, max_output_bytes=OUTPUT_MAX)
    c = TlsRecords(b.wss_port, certs.ca)
    try:
        req, key = upgrade_request("/mqtt")
        c.send(req)
        answer = b""
        deadline = time.monotonic() + T(10)
        while b"\r\n\r\n" not in answer:
            answer += c.record(deadline)
        assert answer.startswith(b"HTTP/1.1 101 ") and accept_of(key).encode() in answer
        assert answer.endswith(b"\r\n\r\n"), "frames in the upgrade's answer"

        def next_frame(deadline):
            """The next record with application data: exactly one whole frame."""
            while not (data := c.record(deadline)):
                pass
            f, used = parse_frame(data)
            assert f is not None and used == len(data), \
                f"a record of {len(data)} bytes is not one whole frame ({used} used)"
            return f

        c.send(frame(OP_BINARY, m.connect(uid("wssf"))))
        sub = Subscriber(next_frame)
        assert sub.packet().type == m.CONNACK
        burst_and_check(b, c.send, sub, FRAME_MAX_TLS)
        blocked_then_drained(b, c.send, sub)
    finally:
        c.close()
