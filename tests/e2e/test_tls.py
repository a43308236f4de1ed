"""MQTT over TLS (mqtts://) and over WebSocket over TLS (wss://), with
real clients: mosquitto_pub/sub and Paho through a round trip (RSA and
ECDSA server certificates, client certificates when required), openssl
s_client for what must fail (an unknown CA, a wrong host name, an expired
certificate, a revoked client, TLS 1.0/1.1), bytes that are no TLS, a
stalled handshake, session resumption on either worker, and the key role
killed."""

import os
import signal
import socket
import subprocess
import time

import pytest

from certs import certs, pki  # noqa: F401 (fixtures)
from conftest import free_port
from helpers import PahoClient, T, raw, uid, wait_for

pytestmark = pytest.mark.iotd_only


def tls_broker(start_broker, server, workers=2, server_opts=None, **tls):
    """A daemon with a plain listener first (its readiness probe) and mqtts
    and wss ones; tls: the tls section's keys beside the certificate."""
    tcp, mqtts, wss = free_port(), free_port(), free_port()
    b = start_broker(workers=workers,
                     listen=[f"127.0.0.1:{tcp}", f"mqtts://127.0.0.1:{mqtts}",
                             f"wss://127.0.0.1:{wss}/mqtt"],
                     tls={"cert_file": server.cert, "key_file": server.key, **tls},
                     **(server_opts or {}))
    b.mqtts, b.wss = mqtts, wss
    return b


def mosquitto(tool, port, ca, *args, timeout=10):
    return subprocess.run([tool, "-h", "127.0.0.1", "-p", str(port), "--cafile", ca, *args],
                          capture_output=True, text=True, timeout=T(timeout))


def round_trip(port, ca, tag, client=()):
    """mosquitto_sub gets what mosquitto_pub sends, both over TLS."""
    topic = f"tls/{uid(tag)}"
    sub = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "--cafile",
                            ca, *client, "-t", topic, "-C", "1", "-W", str(int(T(10))),
                            "-q", "1", "-i", uid("sub")],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # Published until the subscriber has it: its SUBSCRIBE may come after the first.
        deadline = time.monotonic() + T(10)
        while sub.poll() is None and time.monotonic() < deadline:
            r = mosquitto("mosquitto_pub", port, ca, *client, "-t", topic, "-m", f"hi {tag}",
                          "-q", "1")
            assert r.returncode == 0, r.stderr
            time.sleep(0.1)
        out, err = sub.communicate(timeout=T(10))
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait()
    assert sub.returncode == 0, err
    assert out.strip() == f"hi {tag}"


def tls_paho(port, ca, tag, ws_path=None):
    """A PahoClient over TLS that verifies the server against ca."""
    c = PahoClient(port, uid(tag), ws_path=ws_path)
    c.c.tls_set(ca_certs=ca)
    return c


def s_client(port, *args, data=b"", timeout=10):
    r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", *args],
                       input=data, capture_output=True, timeout=T(timeout))
    return r.returncode, r.stdout.decode(errors="replace") + r.stderr.decode(errors="replace")


# ---------------------------------------------------------------- round trips

@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_mosquitto_round_trip(start_broker, certs, kind):
    server = certs.server_rsa if kind == "rsa" else certs.server_ec
    b = tls_broker(start_broker, server)
    round_trip(b.mqtts, certs.ca, kind)


def test_client_certificate_required(start_broker, certs):
    b = tls_broker(start_broker, certs.server_ec, ca_file=certs.ca, require_certificate=True)
    round_trip(b.mqtts, certs.ca, "cert",
               client=("--cert", certs.sensor1.cert, "--key", certs.sensor1.key))
    r = mosquitto("mosquitto_pub", b.mqtts, certs.ca, "-t", "x", "-m", "no certificate")
    assert r.returncode != 0
    wait_for(lambda: "TLS handshake failed" in b.log, T(10), "the refusal logged")


def test_revoked_client_certificate_refused(start_broker, certs):
    b = tls_broker(start_broker, certs.server_rsa, ca_file=certs.ca, crl_file=certs.crl,
                   require_certificate=True)
    r = mosquitto("mosquitto_pub", b.mqtts, certs.ca, "--cert", certs.revoked.cert,
                  "--key", certs.revoked.key, "-t", "x", "-m", "revoked")
    assert r.returncode != 0
    round_trip(b.mqtts, certs.ca, "crl",
               client=("--cert", certs.sensor2.cert, "--key", certs.sensor2.key))


@pytest.mark.parametrize("transport", ["tcp", "websockets"])
def test_paho(start_broker, certs, transport):
    b = tls_broker(start_broker, certs.server_rsa)
    port = b.mqtts if transport == "tcp" else b.wss
    ws_path = "/mqtt" if transport == "websockets" else None
    sub = tls_paho(port, certs.ca, "psub", ws_path)
    pub = tls_paho(port, certs.ca, "ppub", ws_path)
    try:
        sub.connect()
        sub.subscribe("paho/tls", qos=1)
        pub.connect()
        # Larger than a TLS record and a WebSocket frame buffer: both split it.
        payload = os.urandom(100_000)
        pub.c.publish("paho/tls", payload, qos=1)
        msgs = sub.wait_messages(1, 10)
        assert msgs[0].payload == payload
    finally:
        for c in (sub, pub):
            c.c.loop_stop()
            c.c.disconnect()


# ---------------------------------------------------------------- refusals

def test_refusing_connack_reaches_the_client(start_broker, certs):
    """The last write on close goes through TLS: the CONNACK that refuses."""
    b = tls_broker(start_broker, certs.server_ec, server_opts={"max_keepalive": 60})
    r = mosquitto("mosquitto_pub", b.mqtts, certs.ca, "-k", "600", "-t", "x", "-m", "y")
    assert r.returncode != 0
    assert "identifier rejected" in r.stderr.lower(), r.stderr


def test_unknown_ca_fails_on_the_client(start_broker, certs):
    b = tls_broker(start_broker, certs.server_rsa)
    _, out = s_client(b.mqtts, "-CAfile", "/etc/ssl/certs/ca-certificates.crt",
                      "-verify_return_error")
    assert "verify error" in out, out
    assert "CONNECTED" in out


def test_wrong_host_fails_on_the_client(start_broker, certs):
    """The broker presents its certificate for 127.0.0.1 and localhost: a
    client that expects another name refuses it, one that expects either
    name (or connects to it: mosquitto_pub) accepts it."""
    b = tls_broker(start_broker, certs.server_rsa)
    rc, out = s_client(b.mqtts, "-CAfile", certs.ca, "-verify_hostname", "broker.example.org",
                       "-verify_return_error")
    assert rc != 0
    assert "hostname mismatch" in out, out
    for name in ("localhost", "127.0.0.1"):
        check = "-verify_ip" if name[0].isdigit() else "-verify_hostname"
        rc, out = s_client(b.mqtts, "-CAfile", certs.ca, check, name, "-verify_return_error")
        assert "Verify return code: 0 (ok)" in out, out
    # mosquitto_pub checks the name it connects to against the certificate.
    r = subprocess.run(["mosquitto_pub", "-h", "localhost", "-p", str(b.mqtts), "--cafile",
                        certs.ca, "-t", "tls/right-host", "-m", "x"],
                       capture_output=True, text=True, timeout=T(10))
    assert r.returncode == 0, r.stderr


def test_expired_server_certificate_rejected(start_broker, certs):
    b = tls_broker(start_broker, certs.server_expired)
    rc, out = s_client(b.mqtts, "-CAfile", certs.ca, "-verify_return_error")
    assert rc != 0
    assert "certificate has expired" in out, out


@pytest.mark.parametrize("version", ["-tls1", "-tls1_1"])
def test_old_tls_versions_refused(start_broker, certs, version):
    b = tls_broker(start_broker, certs.server_rsa)
    rc, out = s_client(b.mqtts, "-CAfile", certs.ca, version, "-cipher", "DEFAULT@SECLEVEL=0")
    assert rc != 0
    assert "Cipher is (NONE)" in out or "no protocols available" in out, out
    round_trip(b.mqtts, certs.ca, "after-old")


def closed_after(port, *chunks):
    """Sends chunks to port; the daemon closes (after an alert at most;
    a reset when it closed with bytes of ours unread)."""
    got = b""
    with socket.create_connection(("127.0.0.1", port), timeout=T(10)) as s:
        try:
            for data in chunks:
                s.sendall(data)
            while (data := s.recv(4096)) and len(got) < 4096:
                got += data
            assert data == b"", "still open"
        except ConnectionResetError:
            pass
    return got


def test_plaintext_and_garbage_closed_others_unaffected(start_broker, certs):
    b = tls_broker(start_broker, certs.server_rsa)
    held = tls_paho(b.mqtts, certs.ca, "held")
    held.connect()
    try:
        # An MQTT CONNECT where a ClientHello belongs.
        closed_after(b.mqtts, b"\x10\x10\x00\x04MQTT\x04\x02\x00\x3c\x00\x04abcd")
        # Garbage, then a ClientHello's start.
        closed_after(b.mqtts, b"GARBAGE" * 10, b"\x16\x03\x01\x00\x05hello")
        wait_for(lambda: b.log.count("TLS handshake failed") >= 2, T(10), "both refused")
        held.publish("still/here", b"x", qos=1)
        round_trip(b.mqtts, certs.ca, "unaffected")
    finally:
        held.c.loop_stop()
        held.c.disconnect()


def test_stalled_handshake_closed(start_broker, certs):
    b = tls_broker(start_broker, certs.server_rsa, handshake_timeout=1)
    t0 = time.monotonic()
    closed_after(b.mqtts, b"\x16\x03\x01\x02\x00")     # a ClientHello's record header, no more
    assert time.monotonic() - t0 < T(5)
    assert "TLS handshake not finished within tls.handshake_timeout" in b.log


# ---------------------------------------------------------------- sessions and keys

def tls_workers(b):
    """The workers that finished a TLS handshake so far."""
    return {line.split("worker ")[1].split(":")[0] for line in b.log.splitlines()
            if ": debug: TLS from " in line}


def test_session_resumed_on_both_workers(start_broker, certs, tmp_path):
    b = tls_broker(start_broker, certs.server_ec)
    sess = str(tmp_path / "sess.pem")
    # Read until the daemon closes (on the byte that is no MQTT): TLS 1.3's ticket came first.
    rc, out = s_client(b.mqtts, "-CAfile", certs.ca, "-sess_out", sess, "-ign_eof", data=b"\n")
    assert "New," in out, out
    held = []
    try:
        for i in range(8):
            rc, out = s_client(b.mqtts, "-CAfile", certs.ca, "-sess_in", sess, "-ign_eof",
                               data=b"\n")
            assert "Reused," in out, out
            if len(tls_workers(b)) == 2:
                break
            # A connection held: the listener puts the next one on the other worker.
            held.append(raw(b, uid("hold")))
        assert len(tls_workers(b)) == 2, "resumption never reached the second worker"
    finally:
        for c in held:
            c.close()


def test_key_role_killed(start_broker, certs):
    b = tls_broker(start_broker, certs.server_rsa)
    sub = tls_paho(b.mqtts, certs.ca, "ksub")
    sub.connect()
    try:
        sub.subscribe("keys/killed", qos=1)
        old = b.role_pid("keys")
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: b.successor("keys", old), T(10), "the key role's successor")
        wait_for(lambda: "keys is back" in b.log, T(10), "the key role back")
        b.initial_pids = set(b.pids())
        # A new handshake needs the new key role; the established one needs none.
        round_trip(b.mqtts, certs.ca, "after-keys")
        mosquitto("mosquitto_pub", b.mqtts, certs.ca, "-t", "keys/killed", "-m", "k", "-q", "1")
        assert sub.wait_messages(1, 10)[0].payload == b"k"
    finally:
        sub.c.loop_stop()
        sub.c.disconnect()


def test_handshake_waiting_for_a_dead_key_role_completes(start_broker, certs):
    """A handshake whose signature the key role had not made when it died
    is signed by its successor, within tls.handshake_timeout."""
    b = tls_broker(start_broker, certs.server_rsa, workers=1, handshake_timeout=30)
    old = b.role_pid("keys")
    os.kill(old, signal.SIGSTOP)
    seen = b.log.count("new connection from")
    client = subprocess.Popen(["openssl", "s_client", "-connect", f"127.0.0.1:{b.mqtts}",
                               "-CAfile", certs.ca, "-ign_eof"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: b.log.count("new connection from") > seen, T(10), "the connection")
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: b.successor("keys", old), T(10), "the key role's successor")
        b.initial_pids = set(b.pids())
        # A byte that is no MQTT once the handshake is done: the daemon closes.
        out, _ = client.communicate(b"\n", timeout=T(20))
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    out = out.decode(errors="replace")
    assert "Verify return code: 0 (ok)" in out, out
    assert "TLS handshake not finished" not in b.log
