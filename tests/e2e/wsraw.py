"""
A raw WebSocket client (RFC 6455) for the frames and handshakes
well-behaved libraries refuse to send: the upgrade request written by
hand, frames built bit by bit (masked or not, any opcode, any length),
and the server's answer read back as it comes.
"""
import base64
import hashlib
import os
import socket
import struct
import time

import mqttraw

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONT, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA


def upgrade_request(path="/mqtt", key=None, protocol="mqtt", version="13", method="GET",
                    extra=()):
    """The bytes of an upgrade request; None drops a header."""
    key = key if key is not None else base64.b64encode(os.urandom(16)).decode()
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Upgrade: websocket",
             "Connection: Upgrade"]
    if key:
        lines.append(f"Sec-WebSocket-Key: {key}")
    if version:
        lines.append(f"Sec-WebSocket-Version: {version}")
    if protocol:
        lines.append(f"Sec-WebSocket-Protocol: {protocol}")
    lines.extend(extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode(), key


def accept_of(key):
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


def frame(opcode, payload=b"", fin=True, mask=True, length=None, rsv=0):
    """One frame; length overrides the declared payload length."""
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    m = 0x80 if mask else 0
    if n < 126:
        head += bytes([m | n])
    elif n < 65536:
        head += bytes([m | 126]) + struct.pack("!H", n)
    else:
        head += bytes([m | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def close_payload(code, reason=b""):
    return struct.pack("!H", code) + reason


class WsClient:
    """A TCP connection to a ws:// listener; handshake() upgrades it."""

    def __init__(self, port, host="127.0.0.1", timeout=5.0, rcvbuf=None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if rcvbuf is not None:  # before connect(), so the window starts small
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.sock.settimeout(timeout)
            self.sock.connect((host, port))
        except BaseException:
            self.sock.close()
            raise
        self.buf = b""

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data):
        self.sock.sendall(data)

    def fill(self, deadline):
        """More bytes into buf before deadline."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise mqttraw.Timeout("timed out waiting for the server")
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            raise mqttraw.Timeout("timed out waiting for the server") from None
        except ConnectionResetError:
            data = b""
        if not data:
            raise mqttraw.ConnectionClosed("connection closed by the server")
        self.buf += data

    def http_response(self, timeout=5.0):
        """(status, {header: value}) of the server's answer to the upgrade."""
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self.buf:
            self.fill(deadline)
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode().split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(lines[0].split()[1]), headers

    def handshake(self, path="/mqtt", protocol="mqtt", chosen=None):
        """Upgrade, offering protocol; the server must choose chosen (default: protocol)."""
        req, key = upgrade_request(path, protocol=protocol)
        self.send(req)
        status, headers = self.http_response()
        assert status == 101, f"upgrade answered {status}"
        assert headers["sec-websocket-accept"] == accept_of(key)
        assert headers["sec-websocket-protocol"] == (chosen or protocol)
        return headers

    def recv_frame(self, timeout=5.0):
        """(fin, opcode, payload) of the next frame; the server's are unmasked."""
        deadline = time.monotonic() + timeout
        while True:
            if len(self.buf) >= 2:
                b0, b1 = self.buf[0], self.buf[1]
                assert not b1 & 0x80, "a server frame is masked"
                n, off = b1 & 0x7F, 2
                if n == 126 and len(self.buf) >= 4:
                    n, off = struct.unpack("!H", self.buf[2:4])[0], 4
                elif n == 127 and len(self.buf) >= 10:
                    n, off = struct.unpack("!Q", self.buf[2:10])[0], 10
                if (b1 & 0x7F) < 126 or off > 2:
                    if len(self.buf) >= off + n:
                        payload = self.buf[off:off + n]
                        self.buf = self.buf[off + n:]
                        return bool(b0 & 0x80), b0 & 0x0F, payload
            self.fill(deadline)

    def recv_mqtt(self, timeout=5.0):
        """The next MQTT packet, from the payload of binary frames."""
        deadline = time.monotonic() + timeout
        stream = getattr(self, "stream", b"")
        while True:
            pkt, used = mqttraw.parse_one(stream) if stream else (None, 0)
            if pkt is not None:
                self.stream = stream[used:]
                return pkt
            fin, op, payload = self.recv_frame(max(deadline - time.monotonic(), 0.01))
            assert op in (OP_BINARY, OP_CONT), f"frame with opcode {op} where MQTT was expected"
            stream += payload

    def expect_close(self, code, timeout=5.0):
        """A close frame with code, then the end of the connection."""
        while True:
            fin, op, payload = self.recv_frame(timeout)
            if op == OP_CLOSE:
                break
        got = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
        assert got == code, f"close code {got}, expected {code}"
        self.expect_eof(timeout)

    def expect_eof(self, timeout=5.0):
        deadline = time.monotonic() + timeout
        try:
            while True:
                self.fill(deadline)
                self.buf = b""
        except mqttraw.ConnectionClosed:
            return
