"""
mqttraw - a small raw MQTT 3.1.1 (and MQTT 5) client over a plain socket,
for protocol edge cases the well-behaved client libraries refuse to produce.

Packet builders are plain functions returning bytes, so a test can send any
packet (or any bytes) and take any liberty with flags, lengths and ids. The
RawClient reads and parses what iotd sends back, always with a timeout.
"""

import errno
import select
import socket
import struct
import time

# Packet types
CONNECT = 1
CONNACK = 2
PUBLISH = 3
PUBACK = 4
PUBREC = 5
PUBREL = 6
PUBCOMP = 7
SUBSCRIBE = 8
SUBACK = 9
UNSUBSCRIBE = 10
UNSUBACK = 11
PINGREQ = 12
PINGRESP = 13
DISCONNECT = 14
AUTH = 15

TYPE_NAMES = {
    0: "RESERVED0", CONNECT: "CONNECT", CONNACK: "CONNACK", PUBLISH: "PUBLISH",
    PUBACK: "PUBACK", PUBREC: "PUBREC", PUBREL: "PUBREL", PUBCOMP: "PUBCOMP",
    SUBSCRIBE: "SUBSCRIBE", SUBACK: "SUBACK", UNSUBSCRIBE: "UNSUBSCRIBE",
    UNSUBACK: "UNSUBACK", PINGREQ: "PINGREQ", PINGRESP: "PINGRESP",
    DISCONNECT: "DISCONNECT", 15: "RESERVED15",
}

SUBACK_FAILURE = 0x80


class MQTTError(AssertionError):
    """A protocol expectation was not met (fails the test)."""


class ConnectionClosed(MQTTError):
    """The server closed the connection while a packet was expected."""


class Timeout(MQTTError):
    """Nothing (or not enough) arrived within the time allowed."""


# ---------------------------------------------------------------- encoding

def enc_varint(n):
    """Remaining-length encoding (1 to 4 bytes for legal values)."""
    if n < 0:
        raise ValueError("negative length")
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        if n:
            b |= 0x80
        out.append(b)
        if not n:
            return bytes(out)


def enc_bytes(b):
    if isinstance(b, str):
        b = b.encode("utf-8")
    return struct.pack("!H", len(b)) + b


enc_str = enc_bytes


def packet(ptype, flags=0, body=b"", remaining_length=None):
    """A control packet. remaining_length overrides the true length (to lie)."""
    rl = len(body) if remaining_length is None else remaining_length
    return bytes([(ptype << 4) | (flags & 0x0F)]) + enc_varint(rl) + body


def enc_varint_padded(n, width):
    """n as a remaining length of exactly width bytes (1..5): a non-minimal
    (or, at 5 bytes, an illegal) encoding padded with continuation bytes."""
    out = bytearray()
    for i in range(width):
        b = n % 128
        n //= 128
        out.append(b | (0x80 if i < width - 1 else 0))
    if n:
        raise ValueError("value does not fit in that many bytes")
    return bytes(out)


def split_packet(pkt):
    """(first byte, remaining length, body) of an encoded packet."""
    p, n = parse_one(pkt)
    if p is None or n != len(pkt):
        raise ValueError("not exactly one whole packet")
    return pkt[0], len(p.body), p.body


def with_length_width(pkt, width):
    """The same packet with its remaining length encoded in width bytes."""
    first, rl, body = split_packet(pkt)
    return bytes([first]) + enc_varint_padded(rl, width) + body


def with_flags(pkt, flags):
    """The same packet with other fixed-header flags (low nibble)."""
    return bytes([(pkt[0] & 0xF0) | (flags & 0x0F)]) + pkt[1:]


# MQTT 5 properties: identifier -> how its value is encoded.
PROP_KINDS = {
    0x01: "u8", 0x02: "u32", 0x03: "str", 0x08: "str", 0x09: "bin", 0x0B: "var",
    0x11: "u32", 0x12: "str", 0x13: "u16", 0x15: "str", 0x16: "bin", 0x17: "u8",
    0x18: "u32", 0x19: "u8", 0x1A: "str", 0x1C: "str", 0x1F: "str", 0x21: "u16",
    0x22: "u16", 0x23: "u16", 0x24: "u8", 0x25: "u8", 0x26: "pair", 0x27: "u32",
    0x28: "u8", 0x29: "u8", 0x2A: "u8",
}
P_PAYLOAD_FORMAT, P_MESSAGE_EXPIRY, P_CONTENT_TYPE, P_RESPONSE_TOPIC = 0x01, 0x02, 0x03, 0x08
P_CORRELATION_DATA, P_SUB_ID, P_SESSION_EXPIRY, P_ASSIGNED_CLIENT_ID = 0x09, 0x0B, 0x11, 0x12
P_SERVER_KEEP_ALIVE, P_AUTH_METHOD, P_RECEIVE_MAX, P_TOPIC_ALIAS_MAX = 0x13, 0x15, 0x21, 0x22
P_TOPIC_ALIAS, P_RETAIN_AVAILABLE, P_USER_PROPERTY, P_MAX_PACKET_SIZE = 0x23, 0x25, 0x26, 0x27
P_WILDCARD_AVAILABLE, P_SUB_ID_AVAILABLE, P_SHARED_AVAILABLE = 0x28, 0x29, 0x2A


def enc_props(props=()):
    """An MQTT 5 property block from (identifier, value) pairs, in order
    (a user property's value is a (key, value) pair)."""
    out = b""
    for pid, v in props:
        kind = PROP_KINDS[pid]
        out += bytes([pid])
        if kind == "u8":
            out += bytes([v])
        elif kind == "u16":
            out += struct.pack("!H", v)
        elif kind == "u32":
            out += struct.pack("!I", v)
        elif kind == "var":
            out += enc_varint(v)
        elif kind in ("str", "bin"):
            out += enc_bytes(v)
        else:
            out += enc_bytes(v[0]) + enc_bytes(v[1])
    return enc_varint(len(out)) + out


def dec_varint(buf, pos):
    """(value, position after it) of the Variable Byte Integer at buf[pos:]."""
    mult, n = 1, 0
    while True:
        b = buf[pos]
        pos += 1
        n += (b & 0x7F) * mult
        mult *= 128
        if not b & 0x80:
            return n, pos


def dec_props(buf, pos=0):
    """(list of (identifier, value), position after the block) from buf[pos:]."""
    n, pos = dec_varint(buf, pos)
    end, out = pos + n, []
    while pos < end:
        pid = buf[pos]
        kind = PROP_KINDS[pid]
        pos += 1
        if kind == "u8":
            v, pos = buf[pos], pos + 1
        elif kind == "u16":
            v, pos = struct.unpack("!H", buf[pos:pos + 2])[0], pos + 2
        elif kind == "u32":
            v, pos = struct.unpack("!I", buf[pos:pos + 4])[0], pos + 4
        elif kind == "var":
            v, pos = dec_varint(buf, pos)
        else:
            items = []
            for _ in range(2 if kind == "pair" else 1):
                ln = struct.unpack("!H", buf[pos:pos + 2])[0]
                items.append(bytes(buf[pos + 2:pos + 2 + ln]))
                pos += 2 + ln
            v = tuple(items) if kind == "pair" else items[0]
        out.append((pid, v))
    return out, end


def connect_v5(client_id="", clean=True, keepalive=60, props=(), will=None, will_props=(),
               username=None, password=None):
    """An MQTT 5 CONNECT; will: (topic, payload, qos, retain)."""
    flags = (0x02 if clean else 0)
    if will is not None:
        flags |= 0x04 | (will[2] << 3) | (0x20 if will[3] else 0)
    if username is not None:
        flags |= 0x80
    if password is not None:
        flags |= 0x40
    body = enc_str("MQTT") + bytes([5, flags]) + struct.pack("!H", keepalive)
    body += enc_props(props) + enc_bytes(client_id)
    if will is not None:
        body += enc_props(will_props) + enc_bytes(will[0]) + enc_bytes(will[1])
    if username is not None:
        body += enc_bytes(username)
    if password is not None:
        body += enc_bytes(password)
    return packet(CONNECT, 0, body)


def publish_v5(topic, payload=b"", qos=0, retain=False, pid=None, props=(), dup=False):
    """An MQTT 5 PUBLISH: the 3.1.1 one with a property block before the payload."""
    return publish(topic, payload, qos=qos, retain=retain, dup=dup, pid=pid,
                   props_block=enc_props(props))


def subscribe_v5(pid, filters, props=()):
    """filters: list of (topic_filter, options byte)."""
    body = struct.pack("!H", pid) + enc_props(props)
    for f, o in filters:
        body += enc_bytes(f) + bytes([o])
    return packet(SUBSCRIBE, 0x02, body)


def unsubscribe_v5(pid, filters, props=()):
    body = struct.pack("!H", pid) + enc_props(props)
    for f in filters:
        body += enc_bytes(f)
    return packet(UNSUBSCRIBE, 0x02, body)


def ack_v5(ptype, pid, reason=0):
    return packet(ptype, 0x02 if ptype == PUBREL else 0, struct.pack("!H", pid) + bytes([reason]))


def auth_v5(reason, props=()):
    """An MQTT 5 AUTH: its reason code and properties."""
    return packet(AUTH, 0, bytes([reason]) + enc_props(props))


def disconnect_v5(reason=0, props=()):
    return packet(DISCONNECT, 0, bytes([reason]) + enc_props(props))


def v5(p):
    """What an MQTT 5 packet adds, as attributes of p: reason, props (a list
    of (identifier, value)); a PUBLISH's payload and an ack's codes taken
    past the property block. Returns p."""
    p.props, p.reason = [], 0
    b = p.body
    if p.type == CONNACK:
        p.reason = b[1]
        p.props, _ = dec_props(b, 2)
    elif p.type == PUBLISH:
        pos = 2 + len(p.topic_bytes) + (2 if p.qos else 0)
        p.props, pos = dec_props(b, pos)
        p.payload = b[pos:]
    elif p.type in (SUBACK, UNSUBACK):
        p.props, pos = dec_props(b, 2)
        p.codes = list(b[pos:])
    elif p.type in (PUBACK, PUBREC, PUBREL, PUBCOMP):
        if len(b) > 2:
            p.reason = b[2]
        if len(b) > 3:
            p.props, _ = dec_props(b, 3)
    elif p.type in (DISCONNECT, AUTH) and b:
        p.reason = b[0]
        if len(b) > 1:
            p.props, _ = dec_props(b, 1)
    p.propd = {k: v for k, v in p.props}
    return p


def connect(client_id="", clean=True, keepalive=60, will=None, username=None,
            password=None, proto_name="MQTT", level=4, reserved=False,
            flags=None, will_flag=None, will_qos=None, will_retain=None,
            username_flag=None, password_flag=None):
    """CONNECT. will = (topic, payload, qos, retain) or None.

    The *_flag / will_qos / will_retain / reserved / flags arguments force the
    connect-flags byte independently of the fields actually present.
    """
    if will is not None:
        wtopic, wpayload, wqos, wretain = will
    else:
        wtopic = wpayload = None
        wqos, wretain = 0, False
    f = 0
    if reserved:
        f |= 0x01
    if clean:
        f |= 0x02
    wf = will is not None if will_flag is None else will_flag
    if wf:
        f |= 0x04
    q = wqos if will_qos is None else will_qos
    f |= (q & 3) << 3
    r = wretain if will_retain is None else will_retain
    if r:
        f |= 0x20
    pf = password is not None if password_flag is None else password_flag
    if pf:
        f |= 0x40
    uf = username is not None if username_flag is None else username_flag
    if uf:
        f |= 0x80
    if flags is not None:
        f = flags
    body = enc_str(proto_name) + bytes([level, f]) + struct.pack("!H", keepalive)
    body += enc_bytes(client_id)
    if wtopic is not None:
        body += enc_bytes(wtopic) + enc_bytes(wpayload)
    if username is not None:
        body += enc_bytes(username)
    if password is not None:
        body += enc_bytes(password)
    return packet(CONNECT, 0, body)


def connect_of_size(total, client_id, will_topic="big/will"):
    """A CONNECT of exactly `total` bytes, fixed header included: a will
    payload fills it up."""
    fill = total - len(connect(client_id, will=(will_topic, b"", 0, False)))
    for _ in range(4):              # the remaining length may take up to 3 bytes more
        pkt = connect(client_id, will=(will_topic, b"w" * fill, 0, False))
        if len(pkt) == total:
            return pkt
        fill -= 1
    raise ValueError(f"no CONNECT of exactly {total} bytes")


def connack(session_present=False, rc=0):
    return packet(CONNACK, 0, bytes([1 if session_present else 0, rc]))


def publish(topic, payload=b"", qos=0, retain=False, dup=False, pid=None, props_block=b""):
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    flags = (0x08 if dup else 0) | ((qos & 3) << 1) | (0x01 if retain else 0)
    body = enc_bytes(topic)
    if qos > 0:
        body += struct.pack("!H", pid if pid is not None else 1)
    return packet(PUBLISH, flags, body + props_block + payload)


def _ack(ptype, pid, flags=0):
    return packet(ptype, flags, struct.pack("!H", pid))


def puback(pid):
    return _ack(PUBACK, pid)


def pubrec(pid):
    return _ack(PUBREC, pid)


def pubrel(pid):
    return _ack(PUBREL, pid, 0x02)


def pubcomp(pid):
    return _ack(PUBCOMP, pid)


def subscribe(pid, filters, flags=0x02):
    """filters: list of (topic_filter, qos) or bare filter strings (qos 0)."""
    body = struct.pack("!H", pid)
    for f in filters:
        if isinstance(f, (str, bytes)):
            f = (f, 0)
        body += enc_bytes(f[0]) + bytes([f[1]])
    return packet(SUBSCRIBE, flags, body)


def suback(pid, codes):
    return packet(SUBACK, 0, struct.pack("!H", pid) + bytes(codes))


def unsubscribe(pid, filters, flags=0x02):
    body = struct.pack("!H", pid)
    for f in filters:
        body += enc_bytes(f)
    return packet(UNSUBSCRIBE, flags, body)


def unsuback(pid):
    return _ack(UNSUBACK, pid)


def pingreq():
    return packet(PINGREQ)


def pingresp():
    return packet(PINGRESP)


def disconnect():
    return packet(DISCONNECT)


# ---------------------------------------------------------------- decoding

class Packet:
    """A received packet. Always: type, flags, body. Then, by type:
    CONNACK: session_present, rc; PUBLISH: topic, payload, qos, dup, retain,
    pid; SUBACK: pid, codes; PUBACK/PUBREC/PUBREL/PUBCOMP/UNSUBACK: pid."""

    def __init__(self, ptype, flags, body):
        self.type = ptype
        self.flags = flags
        self.body = body
        self.pid = None
        if ptype == CONNACK and len(body) >= 2:
            self.session_present = bool(body[0] & 1)
            self.rc = body[1]
        elif ptype == PUBLISH:
            self.dup = bool(flags & 0x08)
            self.qos = (flags >> 1) & 3
            self.retain = bool(flags & 0x01)
            tl = struct.unpack("!H", body[:2])[0]
            self.topic_bytes = body[2:2 + tl]
            self.topic = self.topic_bytes.decode("utf-8", "replace")
            pos = 2 + tl
            if self.qos > 0:
                self.pid = struct.unpack("!H", body[pos:pos + 2])[0]
                pos += 2
            self.payload = body[pos:]
        elif ptype == SUBACK and len(body) >= 2:
            self.pid = struct.unpack("!H", body[:2])[0]
            self.codes = list(body[2:])
        elif ptype in (PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK) and len(body) >= 2:
            self.pid = struct.unpack("!H", body[:2])[0]

    @property
    def name(self):
        return TYPE_NAMES.get(self.type, str(self.type))

    def __repr__(self):
        if self.type == PUBLISH:
            return (f"<PUBLISH topic={self.topic!r} qos={self.qos} dup={int(self.dup)} "
                    f"retain={int(self.retain)} pid={self.pid} payload={self.payload[:40]!r}>")
        if self.type == CONNACK:
            return f"<CONNACK sp={int(self.session_present)} rc={self.rc}>"
        if self.type == SUBACK:
            return f"<SUBACK pid={self.pid} codes={self.codes}>"
        if self.pid is not None:
            return f"<{self.name} pid={self.pid} flags={self.flags:#x}>"
        return f"<{self.name} flags={self.flags:#x} body={self.body!r}>"


def parse_one(buf):
    """(Packet, consumed) from the front of buf, or (None, 0) if incomplete."""
    if len(buf) < 2:
        return None, 0
    mult, rl, i = 1, 0, 1
    while True:
        if i >= len(buf):
            return None, 0
        b = buf[i]
        rl += (b & 0x7F) * mult
        mult *= 128
        i += 1
        if not b & 0x80:
            break
        if i > 4:
            raise MQTTError(f"server sent a malformed remaining length: {bytes(buf[:8])!r}")
    if len(buf) < i + rl:
        return None, 0
    return Packet(buf[0] >> 4, buf[0] & 0x0F, bytes(buf[i:i + rl])), i + rl


# ---------------------------------------------------------------- client

class RawClient:
    """A raw MQTT connection. Every read is bounded by a timeout."""

    def __init__(self, port, host="127.0.0.1", timeout=5.0, family=None, rcvbuf=None,
                 source=None):
        if family is None:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        if rcvbuf is not None:      # before connect(), so the window starts small
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        try:
            if source is not None:  # another loopback address: another client address
                self.sock.bind((source, 0))
            self.sock.settimeout(timeout)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock.connect((host, port))
        except BaseException:
            self.sock.close()
            raise
        self.port = port
        self.buf = bytearray()
        self.pending = []   # PUBLISH packets that arrived while expect() waited for another type
        self.closed = False
        self.client_id = None

    # --- plumbing

    @property
    def local_port(self):
        return self.sock.getsockname()[1]

    def send(self, data):
        self.sock.sendall(data)

    def close(self):
        if not self.closed:
            self.closed = True
            try:
                self.sock.close()
            except OSError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _fill(self, deadline):
        """Read more bytes into buf before deadline. Returns False on timeout;
        raises ConnectionClosed on EOF/reset."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        # poll, not select: a test may hold more than FD_SETSIZE (1024) sockets
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        if not poller.poll(remaining * 1000):
            return False
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        except OSError as e:
            if e.errno in (errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED):
                data = b""
            else:
                raise
        if not data:
            raise ConnectionClosed("server closed the connection")
        self.buf += data
        return True

    def recv_packet(self, timeout=5.0, what=None):
        """The next packet; Timeout or ConnectionClosed otherwise."""
        if self.pending:
            return self.pending.pop(0)
        return self._recv_wire(timeout, what)

    def _recv_wire(self, timeout, what=None):
        deadline = time.monotonic() + timeout
        while True:
            p, n = parse_one(self.buf)
            if p is not None:
                del self.buf[:n]
                return p
            try:
                ok = self._fill(deadline)
            except ConnectionClosed:
                raise ConnectionClosed(
                    f"server closed the connection while waiting for {what or 'a packet'}"
                    + (f" (partial bytes: {bytes(self.buf)!r})" if self.buf else ""))
            if not ok:
                raise Timeout(f"no {what or 'packet'} from the server within {timeout:.1f} s")

    def expect(self, ptype, timeout=5.0, pid=None):
        """The next packet, asserted to be of ptype (and pid when given).
        A PUBLISH arriving meanwhile (e.g. a client's own message) is kept for
        the next recv_packet/recv_publish."""
        deadline = time.monotonic() + timeout
        if ptype == PUBLISH and self.pending:
            p = self.pending.pop(0)
        else:
            while True:
                p = self._recv_wire(max(0.0, deadline - time.monotonic()),
                                    what=TYPE_NAMES[ptype])
                if p.type == PUBLISH and ptype != PUBLISH:
                    self.pending.append(p)
                    continue
                break
        if p.type != ptype:
            raise MQTTError(f"expected {TYPE_NAMES[ptype]}, got {p!r}")
        if pid is not None and p.pid != pid:
            raise MQTTError(f"expected {TYPE_NAMES[ptype]} with packet id {pid}, got {p!r}")
        return p

    def expect_closed(self, timeout=5.0):
        """Assert the server closes the connection within timeout. Returns the
        packets (parsed) it sent before closing."""
        deadline = time.monotonic() + timeout
        got, self.pending = self.pending, []
        while True:
            while True:
                p, n = parse_one(self.buf)
                if p is None:
                    break
                del self.buf[:n]
                got.append(p)
            try:
                if not self._fill(deadline):
                    raise Timeout(f"server did not close the connection within {timeout:.1f} s"
                                  f" (received meanwhile: {got!r})")
            except ConnectionClosed:
                return got

    def expect_no_packet(self, t=0.5):
        """Assert nothing arrives (and the connection stays open) for t seconds."""
        if self.pending:
            raise MQTTError(f"expected no packet for {t} s, got {self.pending[0]!r}")
        deadline = time.monotonic() + t
        while True:
            p, n = parse_one(self.buf)
            if p is not None:
                del self.buf[:n]
                raise MQTTError(f"expected no packet for {t} s, got {p!r}")
            try:
                if not self._fill(deadline):
                    return
            except ConnectionClosed:
                raise ConnectionClosed(f"server closed the connection (expected it to stay "
                                       f"open and silent for {t} s)")

    def is_open(self, t=0.2):
        """True if the connection is still open (no EOF within t seconds).
        Any packet arriving meanwhile is kept in the buffer."""
        try:
            self._fill(time.monotonic() + t)
            return True
        except ConnectionClosed:
            return False

    # --- conveniences

    def connect(self, client_id="", clean=True, keepalive=60, expect_rc=0, **kw):
        """Send CONNECT and wait for CONNACK; asserts rc == expect_rc."""
        self.client_id = client_id
        self.send(connect(client_id, clean=clean, keepalive=keepalive, **kw))
        ack = self.expect(CONNACK)
        if expect_rc is not None and ack.rc != expect_rc:
            raise MQTTError(f"CONNACK return code {ack.rc}, expected {expect_rc}")
        return ack

    def subscribe(self, filters, pid=1, expect_codes=None):
        """SUBSCRIBE and wait for SUBACK; returns the granted codes. If
        expect_codes is None, each code must equal the requested qos."""
        norm = [(f, 0) if isinstance(f, (str, bytes)) else f for f in filters]
        self.send(subscribe(pid, norm))
        ack = self.expect(SUBACK, pid=pid)
        want = [q for _, q in norm] if expect_codes is None else expect_codes
        if want is not False and ack.codes != list(want):
            raise MQTTError(f"SUBACK codes {ack.codes}, expected {list(want)}")
        return ack.codes

    def unsubscribe(self, filters, pid=1):
        self.send(unsubscribe(pid, filters))
        return self.expect(UNSUBACK, pid=pid)

    def publish(self, topic, payload=b"", qos=0, retain=False, pid=None, dup=False):
        """PUBLISH and complete the handshake for the qos (PUBACK or
        PUBREC/PUBREL/PUBCOMP)."""
        if qos and pid is None:
            pid = 1
        self.send(publish(topic, payload, qos=qos, retain=retain, dup=dup, pid=pid))
        if qos == 1:
            self.expect(PUBACK, pid=pid)
        elif qos == 2:
            self.expect(PUBREC, pid=pid)
            self.send(pubrel(pid))
            self.expect(PUBCOMP, pid=pid)

    def ping(self):
        self.send(pingreq())
        self.expect(PINGRESP)

    def disconnect(self, wait_close=2.0):
        """DISCONNECT, then give the server up to wait_close seconds to close
        its side (it should; not asserted), so that the connection is gone
        from the server when this returns."""
        try:
            self.send(disconnect())
            if wait_close:
                self.expect_closed(wait_close)
        except (OSError, Timeout):
            pass
        self.close()

    def recv_publish(self, timeout=5.0, ack=True):
        """The next packet, asserted to be a PUBLISH; acked per its qos when
        ack is true (QoS 2: PUBREC, then PUBREL expected, then PUBCOMP)."""
        p = self.recv_packet(timeout, what="PUBLISH")
        if p.type != PUBLISH:
            raise MQTTError(f"expected PUBLISH, got {p!r}")
        if ack:
            self.ack(p)
        return p

    def ack(self, p, timeout=5.0):
        if p.qos == 1:
            self.send(puback(p.pid))
        elif p.qos == 2:
            self.send(pubrec(p.pid))
            self.expect(PUBREL, timeout=timeout, pid=p.pid)
            self.send(pubcomp(p.pid))

    def recv_publishes(self, n, timeout=10.0, ack=True):
        """Exactly n PUBLISH packets within timeout (overall)."""
        deadline = time.monotonic() + timeout
        out = []
        while len(out) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Timeout(f"received {len(out)} of {n} PUBLISH packets within "
                              f"{timeout:.1f} s: {out!r}")
            try:
                out.append(self.recv_publish(left, ack=ack))
            except Timeout:
                raise Timeout(f"received {len(out)} of {n} PUBLISH packets within "
                              f"{timeout:.1f} s: {out!r}")
        return out
