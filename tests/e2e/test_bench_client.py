"""The benchmark client's TLS and WebSocket transports, its MQTT 5 clients
and its shared subscription scenario (contrib/iotd-bench.c), checked
against a real broker: a Mosquitto started here with an MQTT, a TLS, a
WebSocket and a TLS WebSocket listener, all serving one ECDSA P-256
certificate for 127.0.0.1 signed by a CA made here (python3-cryptography).
Mosquitto 2.0 speaks MQTT 5 and shared subscriptions; iotd, which speaks
MQTT 3.1.1, is checked for the refusal the client reports.

A relay between the client and Mosquitto's WebSocket listener re-frames
everything the broker sends into fragments of one to three bytes with pings
between them, so that the client's reassembly of packets split across
frames, continuation frames and its pong answers are exercised too."""

import datetime
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from conftest import free_port, release_ports
from helpers import T, wait_for

x509 = pytest.importorskip("cryptography.x509")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
BENCH = Path(os.environ.get("IOTD_TOOLS", str(REPO / "build" / "contrib"))) / "iotd-bench"
MOSQUITTO = "/usr/sbin/mosquitto"

def pem_key(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def certificate(subject, issuer, key, signer, ca):
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
         .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(hours=1))
         .not_valid_after(now + datetime.timedelta(days=2))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        b = b.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return b.sign(signer, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def make_certs(d):
    """ca.pem, and server.pem/server.key (ECDSA P-256) for 127.0.0.1 signed by
    it; other-ca.pem, a CA that signed nothing here."""
    ca_key, other_key, key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    (d / "ca.pem").write_bytes(certificate("ca", "ca", ca_key, ca_key, True))
    (d / "other-ca.pem").write_bytes(certificate("other-ca", "other-ca", other_key, other_key, True))
    (d / "server.pem").write_bytes(certificate("127.0.0.1", "ca", key, ca_key, False))
    (d / "server.key").write_bytes(pem_key(key))
    for f in d.iterdir():
        os.chmod(f, 0o644)   # Mosquitto reads them as its own user; they guard this test only


def listening(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


class Mosquitto:
    """Mosquitto with a listener of each kind. Its websockets listeners bind
    without SO_REUSEADDR, so a port the kernel handed out while connections
    to it still linger in TIME_WAIT fails there: such a start is retried with
    fresh ports."""

    def __init__(self, d):
        for attempt in range(5):
            if self._start(d):
                return
        pytest.fail("mosquitto did not start: " + (d / "mosquitto.log").read_text())

    def _start(self, d):
        self.port = {k: free_port() for k in ("mqtt", "tls", "ws", "wss")}
        tls = [f"cafile {d}/ca.pem", f"certfile {d}/server.pem", f"keyfile {d}/server.key"]
        conf = ["allow_anonymous true", "persistence false", "max_queued_messages 1000000",
                "log_dest stderr", "log_type error", "log_type warning",
                f"listener {self.port['mqtt']} 127.0.0.1",
                f"listener {self.port['tls']} 127.0.0.1", *tls,
                f"listener {self.port['ws']} 127.0.0.1", "protocol websockets",
                f"listener {self.port['wss']} 127.0.0.1", "protocol websockets", *tls]
        (d / "mosquitto.conf").write_text("\n".join(conf) + "\n")
        self.log = open(d / "mosquitto.log", "wb")
        release_ports()   # Mosquitto's websockets listeners bind without SO_REUSEADDR
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(d / "mosquitto.conf")],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        for kind, port in self.port.items():
            wait_for(lambda p=port: self.proc.poll() is not None or listening(p), 10,
                     f"mosquitto's {kind} listener")
        if self.proc.poll() is None:
            return True
        self.log.close()
        log = (d / "mosquitto.log").read_text()
        assert "Unable to create websockets listener" in log, log
        return False

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=T(10))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def certs():
    if not os.access(MOSQUITTO, os.X_OK):
        pytest.skip(f"needs {MOSQUITTO}")
    if not BENCH.exists():
        pytest.skip(f"{BENCH} is not built")
    d = Path(tempfile.mkdtemp(prefix="iotd-e2e-bench-"))
    os.chmod(d, 0o755)
    make_certs(d)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def mosq(certs):
    m = Mosquitto(certs)
    yield m
    m.stop()


def bench(port, *args, expect_rc=0):
    """Runs iotd-bench, returns its --json report."""
    p = subprocess.run([str(BENCH), "-p", str(port), "--json", *args], capture_output=True,
                       text=True, timeout=T(60))
    assert p.returncode == expect_rc, f"rc {p.returncode}: {p.stdout} {p.stderr}"
    return json.loads(p.stdout.strip().splitlines()[-1])


def delivered_all(r):
    assert r["ok"], r["error"]
    assert r["received"] > 0 and r["received"] == r["expected"], r
    assert r["lost"] == 0 and r["duplicates"] == 0 and r["out_of_order"] == 0, r


def tls_args(certs, *more):
    return ["--tls", "--cafile", str(certs / "ca.pem"), *more]


def test_tls_qos1_pairs(mosq, certs):
    r = bench(mosq.port["tls"], "-s", "pairs", "-q", "1", "-t", "1",
              *tls_args(certs, "--tls-version", "1.3", "--ciphersuites", "TLS_AES_128_GCM_SHA256",
                        "--groups", "X25519"))
    delivered_all(r)
    assert r["transport"] == "tls"
    assert r["tls"] == "TLSv1.3 TLS_AES_128_GCM_SHA256 x25519 EC-256"


def test_tls12_pinned_cipher(mosq, certs):
    r = bench(mosq.port["tls"], "-s", "fanin", "-q", "0", "-t", "1",
              *tls_args(certs, "--tls-version", "1.2", "--ciphers", "ECDHE-ECDSA-AES128-GCM-SHA256"))
    delivered_all(r)
    assert r["tls"].startswith("TLSv1.2 ECDHE-ECDSA-AES128-GCM-SHA256 "), r["tls"]


def test_tls_untrusted_certificate_refused(mosq, certs):
    r = bench(mosq.port["tls"], "-s", "pairs", "-t", "1", "--tls", "--cafile",
              str(certs / "other-ca.pem"), expect_rc=2)
    assert "certificate" in r["error"], r["error"]


def test_tls_certificate_names_another_host(mosq, certs):
    r = bench(mosq.port["tls"], "-s", "pairs", "-t", "1", *tls_args(certs, "--sni", "example.org"),
              expect_rc=2)
    assert "hostname mismatch" in r["error"], r["error"]


def test_ws_packets_packed_into_frames(mosq):
    r = bench(mosq.port["ws"], "-s", "fanin", "-q", "1", "-t", "1", "--ws", "/mqtt")
    delivered_all(r)
    assert r["transport"] == "ws"


def test_ws_packets_split_across_frames(mosq):
    """Three payload bytes a frame from the client: every packet spans frames."""
    r = bench(mosq.port["ws"], "-s", "pairs", "-q", "1", "-t", "1", "--ws", "/mqtt",
              "--ws-frame-max", "3")
    delivered_all(r)


def test_wss(mosq, certs):
    r = bench(mosq.port["wss"], "-s", "pairs", "-q", "1", "-t", "1", "--ws", "/mqtt",
              *tls_args(certs))
    delivered_all(r)
    assert r["transport"] == "wss" and r["tls"].startswith("TLSv1.3 "), r


def test_handshakes_tls(mosq, certs):
    r = bench(mosq.port["tls"], "-s", "handshakes", "-t", "1", "--conn-window", "8",
              "--pids", str(mosq.proc.pid), *tls_args(certs))
    assert r["ok"] and r["handshakes"] > 0 and r["resumed"] == 0, r
    assert r["handshakes_per_cpu_s"] > 0, r


def test_handshakes_resumed(mosq, certs):
    r = bench(mosq.port["tls"], "-s", "handshakes", "-t", "1", "--conn-window", "8",
              *tls_args(certs, "--tls-resume"))
    assert r["ok"] and r["resumed"] > 0 and r["resumed"] < r["handshakes"], r


def test_handshakes_wss(mosq, certs):
    r = bench(mosq.port["wss"], "-s", "handshakes", "-t", "1", "--conn-window", "8",
              "--ws", "/mqtt", *tls_args(certs))
    assert r["ok"] and r["handshakes"] > 0 and r["transport"] == "wss", r


def test_conns_tls(mosq, certs):
    r = bench(mosq.port["tls"], "-s", "conns", "-c", "200", "--pids", str(mosq.proc.pid),
              *tls_args(certs))
    assert r["ok"] and r["connections"] == 200, r
    assert r["bytes_per_conn"] is not None and r["bytes_per_conn"] > 0, r


# ------------------------------------------------------------ the relay

def recv_exact(s, n):
    b = b""
    while len(b) < n:
        chunk = s.recv(n - len(b))
        if not chunk:
            raise EOFError
        b += chunk
    return b


def server_frames(s):
    """(opcode, payload) of each frame the broker sends (unmasked)."""
    while True:
        h = recv_exact(s, 2)
        n = h[1] & 0x7F
        if n == 126:
            n = int.from_bytes(recv_exact(s, 2), "big")
        elif n == 127:
            n = int.from_bytes(recv_exact(s, 8), "big")
        yield h[0] & 0x0F, recv_exact(s, n)


def frame(fin, opcode, payload):
    assert len(payload) < 126
    return bytes([(0x80 if fin else 0) | opcode, len(payload)]) + payload


def reframe(payload, k):
    """A binary message as fragments of 1..3 bytes, a ping between every two."""
    out, i, first = [], 0, True
    while i < len(payload):
        n = 1 + (i + k) % 3
        part = payload[i:i + n]
        i += n
        out.append(frame(i >= len(payload), 0x2 if first else 0x0, part))
        out.append(frame(True, 0x9, b"p"))
        first = False
    return b"".join(out)


class Relay:
    """Accepts the client's connections, forwards its bytes to the broker as
    they are, and the broker's back re-framed (reframe)."""

    def __init__(self, upstream):
        self.upstream = upstream
        self.ls = socket.create_server(("127.0.0.1", 0))
        self.port = self.ls.getsockname()[1]
        self.fragments = 0   # pings sent: one after each fragment
        self.lock = threading.Lock()
        self.socks = []
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                c, _ = self.ls.accept()
            except OSError:
                return
            u = socket.create_connection(("127.0.0.1", self.upstream))
            with self.lock:
                self.socks += [c, u]
            threading.Thread(target=self.pipe, args=(c, u), daemon=True).start()
            threading.Thread(target=self.down, args=(u, c), daemon=True).start()

    def pipe(self, src, dst):
        try:
            while True:
                b = src.recv(65536)
                if not b:
                    break
                dst.sendall(b)
        except OSError:
            pass
        self.shut(dst)

    def down(self, u, c):
        try:
            head = b""
            while b"\r\n\r\n" not in head:
                head += recv_exact(u, 1)
            c.sendall(head)
            for k, (op, payload) in enumerate(server_frames(u)):
                if op in (0x1, 0x2, 0x0):
                    data = reframe(payload, k)
                    c.sendall(data)
                    with self.lock:
                        self.fragments += data.count(b"\x89\x01p")
                else:
                    c.sendall(frame(True, op, payload))
        except (OSError, EOFError):
            pass
        self.shut(c)

    @staticmethod
    def shut(s):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self):
        self.ls.close()
        with self.lock:
            for s in self.socks:
                s.close()


def test_ws_broker_frames_split_and_pinged(mosq):
    """Packets the broker sends arrive in fragments of one to three bytes with
    pings between them; every delivery is still counted once and in order,
    and the pongs the client answers with do not upset the broker."""
    relay = Relay(mosq.port["ws"])
    try:
        r = bench(relay.port, "-s", "fanin", "-q", "1", "-t", "1", "--ws", "/mqtt",
                  "--max-lag", "256")
    finally:
        relay.close()
    delivered_all(r)
    assert relay.fragments > r["received"], (relay.fragments, r["received"])


# ------------------------------------------- MQTT 5 and shared subscriptions

@pytest.mark.parametrize("scenario,qos", [("fanin", "1"), ("pairs", "0")])
def test_v5_traffic(mosq, scenario, qos):
    r = bench(mosq.port["mqtt"], "-V", "5", "-s", scenario, "-q", qos, "-t", "1")
    delivered_all(r)
    assert r["mqtt_version"] == "5.0", r


def test_v5_conns(mosq):
    r = bench(mosq.port["mqtt"], "--mqtt-version", "5", "-s", "conns", "-c", "200")
    assert r["ok"] and r["connections"] == 200 and r["mqtt_version"] == "5.0", r


@pytest.mark.parametrize("version,qos", [("5", "0"), ("5", "1"), ("4", "1")])
def test_sharedfanin(mosq, version, qos):
    """Every message reaches exactly one member of the group, and the
    members' counts add up to the deliveries."""
    r = bench(mosq.port["mqtt"], "-V", version, "-s", "sharedfanin", "-q", qos, "-t", "1")
    delivered_all(r)
    assert r["publishers"] == 50 and r["subscribers"] == 10, r
    assert r["received"] == r["sent"], r
    members = r["member_deliveries"]
    assert len(members) == 10 and sum(members) == r["received"] and min(members) > 0, r
    assert r["fairness"] == pytest.approx(max(members) / min(members), rel=1e-4), r
    assert r["mqtt_version"] == ("5.0" if version == "5" else "3.1.1"), r


@pytest.mark.iotd_only
# Queues as deep as the benchmark's (BENCHMARKS.md): the load generator may run
# 65,536 deliveries ahead of its subscribers, past the default bounds.
@pytest.mark.broker_config(max_queued_messages=1000000, max_queued_bytes=0,
                           max_queued_bytes_total=0)
@pytest.mark.parametrize("args", [("-V", "5", "-s", "fanin", "-q", "1"),
                                  # QoS 1: a QoS 0 message may be dropped for a
                                  # subscriber that reads slowly (a loaded machine)
                                  ("-V", "5", "-s", "pairs", "-q", "1"),
                                  ("-s", "sharedfanin", "-q", "1")])
def test_against_iotd(broker, args):
    """The MQTT 5 clients and the shared group against iotd itself."""
    if not BENCH.exists():
        pytest.skip(f"{BENCH} is not built")
    r = bench(broker.port, *args, "-t", "1")
    delivered_all(r)
    assert r["mqtt_version"] == ("5.0" if "-V" in args else "3.1.1"), r
    if "sharedfanin" in args:
        assert len(r["member_deliveries"]) == 10 and min(r["member_deliveries"]) > 0, r


def varint(n):
    out = b""
    while True:
        b, n = n & 0x7F, n >> 7
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out


def read_varint(f):
    n = shift = 0
    while True:
        b = f.read(1)
        if not b:
            raise EOFError
        n |= (b[0] & 0x7F) << shift
        shift += 7
        if not b[0] & 0x80:
            return n


# Properties a broker may put on a delivery: the largest subscription
# identifier (a 4-byte Variable Byte Integer), a message expiry, a content
# type and a user property.
EXTRA_PROPS = (b"\x0b" + varint(268435455) + b"\x02\x00\x00\x0e\x10" +
               b"\x03\x00\x0aapp/binary" + b"\x26\x00\x01k\x00\x05value")


def with_props(first, body):
    """A v5 PUBLISH body with EXTRA_PROPS before the properties it had."""
    i = 2 + int.from_bytes(body[:2], "big") + (2 if first & 0x06 else 0)
    n, j = 0, i
    while True:
        n |= (body[j] & 0x7F) << (7 * (j - i))
        j += 1
        if not body[j - 1] & 0x80:
            break
    props = EXTRA_PROPS + body[j:j + n]
    return body[:i] + varint(len(props)) + props + body[j + n:]


class PropsRelay(Relay):
    """Forwards MQTT both ways, adding EXTRA_PROPS to every PUBLISH the broker sends."""

    def __init__(self, upstream):
        self.publishes = 0
        super().__init__(upstream)

    def down(self, u, c):
        f = u.makefile("rb")
        try:
            while True:
                first = f.read(1)
                if not first:
                    break
                body = f.read(read_varint(f))
                if first[0] >> 4 == 3:
                    body = with_props(first[0], body)
                    with self.lock:
                        self.publishes += 1
                c.sendall(first + varint(len(body)) + body)
        except (OSError, EOFError):
            pass
        self.shut(c)


def test_v5_delivery_properties_skipped(mosq):
    """Deliveries carrying properties (a 4-byte subscription identifier among
    them) are counted as they would be without."""
    relay = PropsRelay(mosq.port["mqtt"])
    try:
        r = bench(relay.port, "-V", "5", "-s", "fanin", "-q", "1", "-t", "1", "--max-lag", "256")
    finally:
        relay.close()
    delivered_all(r)
    assert relay.publishes >= r["received"] > 0, (relay.publishes, r)
