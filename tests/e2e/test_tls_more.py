"""MQTT over TLS (mqtts://) and WebSocket over TLS (wss://), the harder
promises, with real clients (mosquitto_pub/sub, Paho, openssl s_client,
MQTT.js in Chromium) and the certificates of certs.py:

* client certificates: use_identity_as_username makes the certificate's
  CN (else its SAN) the user name the ACL is matched against, whatever
  the CONNECT says; a client without a certificate, or with a revoked
  one, is refused; a socket systemd passes where no certificate is
  required refuses the start;
* certificate rotation by SIGHUP while a subscriber stays connected, and
  a broken pair on a later SIGHUP that changes nothing;
* the private key's secret material is in the memory of `iotd: keys`
  alone (not in the listener's, a worker's or any other process's);
* a killed key role: connected clients go on, new ones connect once it
  is back, and handshakes whose requests it had read are signed by its
  successor;
* a browser over wss://;
* hostile TLS: a handshake flood does not keep a well-behaved client out,
  and a connection silent after TCP is closed after tls.handshake_timeout.
"""

import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

import mqttraw as m
from authfiles import auth_dir  # noqa: F401
from certs import Issued, certs, pki  # noqa: F401
from conftest import free_port
from helpers import T, CliSub, connected, raise_nofile, uid, wait_for
from test_acl import until_marker
from test_tls_keys import exit_status
from test_websocket import browser_round_trip, needs_browser
from tlsbroker import TlsRawClient, cli_tls, client_context, presented, tls_broker, tls_raw

pytestmark = pytest.mark.iotd_only

READ_AGAIN = "reload: keys and certificate chains read again"
KEPT = "keeping every key and certificate in force"


def peer_serial(c):
    """Serial of the certificate the server presented to a TlsRawClient."""
    return x509.load_der_x509_certificate(c.sock.getpeercert(binary_form=True)).serial_number


def connack_count(cli):
    """CONNACKs a mosquitto_sub saw: more than one means it reconnected."""
    return sum("received CONNACK" in line for line in cli.lines)


def refused(port, certs, client=None):
    """True when the server ends a TLS connection presenting `client` (or no
    certificate) before or instead of a CONNACK; False when it stays open."""
    try:
        with tls_raw(port, certs, client, connect=False) as c:
            c.send(m.connect(uid("refused")))
            return not any(p.type == m.CONNACK for p in c.expect_closed(T(5)))
    except m.Timeout:
        return False
    except (ssl.SSLError, ConnectionError, m.ConnectionClosed):
        return True


# ---------------------------------------------------------------- identities

ACL = """\
user sensor-1
topic readwrite sensors/sensor-1/#

user sensor-2
topic readwrite sensors/sensor-2/#

pattern write markers/%u
pattern read markers/#
pattern readwrite devices/%u/#
"""

MTLS = {"require_certificate": True, "use_identity_as_username": True}


def mtls_broker(start_broker, certs, auth_dir, **tls):
    b = tls_broker(start_broker, certs, tls={**MTLS, **tls},
                   auth={"acl_file": auth_dir.file("acl", ACL)})
    wait_for(lambda: "router: ACL in force" in b.log, 5, "the router to take the ACL")
    return b


def test_certificate_identity_drives_the_acl(start_broker, certs, auth_dir, clients):
    """CN=sensor-1 reads and writes sensors/sensor-1/# (its `user` section)
    even when its CONNECT names sensor-2; its publish to
    sensors/sensor-2/x reaches nobody (a marker after it arrives), its
    subscription to sensors/sensor-2/# gets 0x80; a certificate with a SAN
    alone is named by it (a `pattern ... %u` rule)."""
    b = mtls_broker(start_broker, certs, auth_dir)
    port = b.mqtts_port
    s2 = clients.own(tls_raw(port, certs, certs.sensor2, tag="s2"))
    assert s2.subscribe([("sensors/sensor-2/#", 1), ("markers/#", 1)],
                        expect_codes=False) == [1, 1], \
        "the certificate's CN=sensor-2 is not the user name the ACL matched"
    own = CliSub(port, "sensors/sensor-1/#", 1, uid("s1sub"), extra=cli_tls(certs, certs.sensor1))
    clients.own(own, own.stop).wait_subscribed()
    s1 = clients.own(tls_raw(port, certs, certs.sensor1, tag="s1", username="sensor-2"))
    assert s1.subscribe([("sensors/sensor-1/#", 1), ("sensors/sensor-2/#", 1)],
                        expect_codes=False) == [1, 0x80], \
        "CN=sensor-1, CONNECT naming sensor-2: not matched as sensor-1"
    for qos in (0, 1):
        s1.publish("sensors/sensor-2/x", b"denied", qos=qos)
    s1.publish("markers/sensor-1", b"marker", qos=1)
    assert until_marker(s2, "markers/sensor-1") == []
    s1.publish("sensors/sensor-1/a", b"own", qos=1)
    assert s1.recv_publish(timeout=T(5)).topic == "sensors/sensor-1/a"
    assert own.wait_messages(1) == [("sensors/sensor-1/a", "own", 1, 0)]
    # sensor-2 is served on its own topics (the denial above was sensor-1's).
    with tls_raw(port, certs, certs.sensor2, tag="s2pub") as p2:
        p2.publish("sensors/sensor-2/y", b"mine", qos=1)
    assert s2.recv_publish(timeout=T(5)).payload == b"mine"
    with tls_raw(port, certs, certs.san_only, tag="san") as san:
        assert san.subscribe([("devices/san-sensor/#", 0), ("devices/sensor-1/#", 0)],
                             expect_codes=False) == [0, 0x80]


def test_client_certificate_required_and_checked(start_broker, pki, certs, auth_dir):
    """With require_certificate and a CRL: no certificate, or a revoked one,
    is refused; a valid one is served; revoked later, a new CRL renamed
    into place and SIGHUP, it is refused from then on."""
    crl = str(pki.dir / "crl-live.pem")
    shutil.copyfile(certs.crl, crl)
    os.chmod(crl, 0o644)
    b = mtls_broker(start_broker, certs, auth_dir, crl_file=crl)
    late = pki.client("late", cn="late-1")
    assert refused(b.mqtts_port, certs)
    assert refused(b.mqtts_port, certs, certs.revoked)
    for client in (certs.sensor1, late):
        with tls_raw(b.mqtts_port, certs, client, tag="ok") as c:
            c.ping()
    pki.revoke(late)
    os.replace(pki.crl("crl-next"), crl)
    n = b.log.count(READ_AGAIN)
    b.send_signal(signal.SIGHUP)
    wait_for(lambda: b.log.count(READ_AGAIN) > n, 10, "the key role to read its files again")
    wait_for(lambda: refused(b.mqtts_port, certs, late), 10,
             "the certificate revoked by the new CRL to be refused")
    with tls_raw(b.mqtts_port, certs, certs.sensor1, tag="ok") as c:
        c.ping()


def test_identity_on_a_passed_socket_needs_a_required_certificate(start_broker, certs):
    """A socket systemd passes for mqtts presents tls { }'s certificate:
    with use_identity_as_username and without tls.require_certificate,
    the start is refused, saying so (no client may come in without an
    identity)."""
    if shutil.which("systemd-socket-activate") is None:
        pytest.skip("systemd-socket-activate not installed")
    port = free_port()
    b = start_broker(tls={"cert_file": certs.server_rsa.cert, "key_file": certs.server_rsa.key,
                          "use_identity_as_username": True},
                     wrapper=["systemd-socket-activate", "-l", f"127.0.0.1:{port}",
                              "--fdname=mqtts"], wait=False)

    def knock():
        # systemd-socket-activate starts iotd at the first connection.
        try:
            socket.create_connection(("127.0.0.1", port), timeout=T(1)).close()
            return True
        except OSError:
            return False
    wait_for(knock, 10, "the socket systemd-socket-activate listens on")
    assert exit_status(b) == 1
    assert (f"socket 'mqtts' (fd 3, 127.0.0.1:{port}) is for mqtts, which presents tls {{ }}'s "
            "certificate: tls.use_identity_as_username needs tls.require_certificate = true "
            "there") in b.log


# ---------------------------------------------------------------- rotation

def install(issued, cert, key):
    """Put issued's certificate and key at the paths cert and key, each
    renamed into place (as a renewal tool does)."""
    for src, dst in ((issued.cert, cert), (issued.key, key)):
        tmp = f"{dst}.new"
        shutil.copyfile(src, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dst)


def serials_on_workers(b, certs, held):
    """{worker pid: serials presented} from new TLS connections (kept open in
    `held`, which spreads them) until every worker made some (bounded)."""
    seen = {}
    for _ in range(3 * b.workers):
        c = tls_raw(b.mqtts_port, certs, tag="look")
        held.append(c)
        seen.setdefault(b.worker_of(c, port=b.mqtts_port), set()).add(peer_serial(c))
        if len(seen) == b.workers:
            break
    assert len(seen) == b.workers, f"new connections reached workers {sorted(seen)} only"
    return seen


def test_certificate_rotation_by_sighup(start_broker, pki, certs, clients):
    a, new = pki.server("rot-a"), pki.server("rot-b", kind="ec")
    cert, key = str(pki.dir / "live.pem"), str(pki.dir / "live.key")
    install(a, cert, key)
    b = tls_broker(start_broker, certs, server=Issued(cert, key, a.serial, a.subject))
    assert presented(b.mqtts_port, certs.ca) == (a.serial, a.subject)
    sub = CliSub(b.mqtts_port, "rot/#", 1, uid("rotsub"), extra=cli_tls(certs))
    clients.own(sub, sub.stop).wait_subscribed()
    sub_port = sub.local_port

    install(new, cert, key)
    n = b.log.count(READ_AGAIN)
    b.send_signal(signal.SIGHUP)
    wait_for(lambda: b.log.count(READ_AGAIN) > n, 10, "the key role to read its files again")
    wait_for(lambda: presented(b.mqtts_port, certs.ca) == (new.serial, new.subject), 10,
             "new handshakes to present the new certificate")
    held = []
    try:
        seen = serials_on_workers(b, certs, held)
        assert all(s == {int(new.serial, 16)} for s in seen.values()), seen
        with tls_raw(b.mqtts_port, certs, tag="rotpub") as p:
            p.publish("rot/after", b"1", qos=1)
        assert sub.wait_messages(1) == [("rot/after", "1", 1, 0)]

        # A key that does not match the certificate: nothing changes.
        install(Issued(new.cert, pki.server("rot-other").key, "", ""), cert, key)
        n = b.log.count(KEPT)
        b.send_signal(signal.SIGHUP)
        wait_for(lambda: b.log.count(KEPT) > n, 10, "the refused reload logged")
        assert "does not match the certificate in tls.cert_file" in b.log
        assert presented(b.mqtts_port, certs.ca) == (new.serial, new.subject)
        seen = serials_on_workers(b, certs, held)
        assert all(s == {int(new.serial, 16)} for s in seen.values()), seen
    finally:
        for c in held:
            c.close()
    with tls_raw(b.mqtts_port, certs, tag="rotpub") as p:
        p.publish("rot/after-broken", b"2", qos=1)
    assert sub.wait_messages(2)[1] == ("rot/after-broken", "2", 1, 0)
    # The same connection throughout: one CONNACK, the same local port.
    assert connack_count(sub) == 1 and sub.local_port == sub_port


# ---------------------------------------------------------------- key material

def key_secrets(path):
    """The private key's secret material as byte strings to look for, by
    name: its numbers (RSA d, p, q; the EC scalar) big-endian and
    little-endian (OpenSSL's BIGNUM words on x86-64), its DER and each
    line of its PEM body."""
    pem = open(path, "rb").read()
    k = serialization.load_pem_private_key(pem, None)
    if isinstance(k, rsa.RSAPrivateKey):
        nums = k.private_numbers()
        ints = {"d": nums.d, "p": nums.p, "q": nums.q}
    else:
        assert isinstance(k, ec.EllipticCurvePrivateKey)
        ints = {"scalar": k.private_numbers().private_value}
    out = {}
    for name, v in ints.items():
        n = (v.bit_length() + 7) // 8
        out[f"{name} (big-endian)"] = v.to_bytes(n, "big")
        out[f"{name} (little-endian)"] = v.to_bytes(n, "little")
    out["DER"] = k.private_bytes(serialization.Encoding.DER,
                                 serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())
    body = [l for l in pem.splitlines() if l and not l.startswith(b"-----")]
    for i, line in enumerate(body):
        out[f"PEM line {i + 1}"] = line
    return out


CHUNK = 8 << 20
# Larger readable regions are reservations, not memory a copy of the key
# could be in: a sanitizer's shadow (terabytes, zero pages), a store's map.
REGION_MAX = 1 << 30


def scan_memory(pid, needles):
    """Names of the needles found in the readable memory of pid (every
    region of /proc/PID/maps up to REGION_MAX, through /proc/PID/mem), or
    None when its memory cannot be read."""
    try:
        maps = open(f"/proc/{pid}/maps").read().splitlines()
        mem = open(f"/proc/{pid}/mem", "rb", buffering=0)
    except OSError:
        return None
    overlap = max(len(v) for v in needles.values()) - 1
    found = set()
    with mem:
        for line in maps:
            f = line.split()
            if f[1][0] != "r" or (len(f) > 5 and f[5] in ("[vvar]", "[vsyscall]")):
                continue
            lo, hi = (int(x, 16) for x in f[0].split("-"))
            if hi - lo > REGION_MAX:
                continue
            tail = b""
            for pos in range(lo, hi, CHUNK):
                try:
                    mem.seek(pos)
                    data = tail + mem.read(min(CHUNK, hi - pos))
                except OSError:
                    break
                found.update(name for name, v in needles.items() if v in data)
                tail = data[-overlap:]
    return found


@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_private_key_only_in_the_key_role(start_broker, certs, kind, clients):
    """After handshakes over mqtts:// and wss://, no process but `iotd:
    keys` holds the private key's secret material in its memory; the key
    role does (so that the scan can fail)."""
    server = certs.server_rsa if kind == "rsa" else certs.server_ec
    b = tls_broker(start_broker, certs, server=server)
    keys = b.role_pid("keys")
    needles = key_secrets(server.key)
    if scan_memory(keys, needles) is None:
        pytest.skip("cannot read the daemon's memory through /proc/PID/mem (not root?)")
    for i in range(4):
        c = clients.own(tls_raw(b.mqtts_port, certs, tag=f"scan{i}"))
        c.subscribe([("scan/#", 1)])
        c.publish("scan/x", b"%d" % i, qos=1)
    for i in range(2):
        w = clients.paho(b.wss_port, uid(f"scanws{i}"), ws_path="/mqtt",
                         tls=(certs.ca, None, None))
        w.connect()
        w.publish("scan/ws", "x", qos=1)
    others = [p for p in b.pids() if p != keys]
    assert b.role_pid("listener") in others and set(b.worker_pids()) <= set(others)
    for pid in others:
        found = scan_memory(pid, needles)
        assert found is not None, f"cannot read the memory of pid {pid}"
        assert not found, f"{kind} key material {sorted(found)} in pid {pid} ({b.pids()})"
    in_keys = scan_memory(keys, needles)
    wanted = {n for n in needles if n.startswith(("d ", "p ", "q ", "scalar "))}
    assert in_keys & wanted, (f"the scan found none of the key's numbers in iotd: keys "
                              f"(found {sorted(in_keys)}): it cannot see what it looks for")


# ---------------------------------------------------------------- key role killed

def test_killed_key_role(start_broker, certs, clients):
    """SIGKILL to `iotd: keys` while TLS clients are connected: they go on
    exchanging messages; once the role is back a new TLS client connects."""
    b = tls_broker(start_broker, certs)
    sub = CliSub(b.mqtts_port, "keep/#", 1, uid("keepsub"), extra=cli_tls(certs))
    clients.own(sub, sub.stop).wait_subscribed()
    wsub = clients.paho(b.wss_port, uid("keepws"), ws_path="/mqtt", tls=(certs.ca, None, None))
    wsub.connect()
    wsub.subscribe("keep/#", qos=1)
    pub = clients.own(tls_raw(b.mqtts_port, certs, tag="keeppub"))

    old = b.role_pid("keys")
    os.kill(old, signal.SIGKILL)
    pub.publish("keep/1", b"while-down", qos=1)
    assert sub.wait_messages(1) == [("keep/1", "while-down", 1, 0)]
    assert wsub.wait_messages(1)[0].payload == b"while-down"
    wait_for(lambda: b.successor("keys", old), 10, "the key role's successor")
    wait_for(lambda: "keys is back" in b.log, 10, "the key role back")
    b.initial_pids = set(b.pids())

    def new_client():
        try:
            return tls_raw(b.mqtts_port, certs, tag="after")
        except (OSError, ssl.SSLError, m.MQTTError):
            return None
    late = clients.own(wait_for(new_client, 10, "a new TLS client to connect"))
    late.publish("keep/2", b"new", qos=1)
    pub.publish("keep/3", b"old", qos=1)
    assert sub.wait_messages(3)[1:] == [("keep/2", "new", 1, 0), ("keep/3", "old", 1, 0)]
    assert [x.payload for x in wsub.wait_messages(3)] == [b"while-down", b"new", b"old"]
    assert connack_count(sub) == 1


@pytest.mark.parametrize("reloaded", [False, True])
def test_signatures_lost_with_the_key_role_are_asked_again(start_broker, certs, clients,
                                                           reloaded):
    """Handshakes whose signature requests the key role had read when it
    died: gdb holds `iotd: keys` at its first signature (it had read that
    request, maybe others; the rest wait in its socket) and kills it there.
    Its successor sends the chain, the workers send every unanswered
    request again, and every handshake completes with a CONNACK; a
    subscriber connected before goes on, on the same connection. After a
    reload the keys had ids the successor, which numbers them anew, does
    not know: the requests go again under the id the certificate has now."""
    if shutil.which("gdb") is None:
        pytest.skip("gdb not installed (package gdb)")
    b = tls_broker(start_broker, certs, tls={"handshake_timeout": 60})
    if b.instrumented:
        pytest.skip("gdb cannot attach to a daemon under valgrind")
    sub = CliSub(b.mqtts_port, "resend/#", 1, uid("resendsub"), extra=cli_tls(certs))
    clients.own(sub, sub.stop).wait_subscribed()
    if reloaded:
        b.send_signal(signal.SIGHUP)
        wait_for(lambda: READ_AGAIN in b.log, 10, "the key role's reload")
    old = b.role_pid("keys")
    gdb = subprocess.Popen(["gdb", "-p", str(old), "-batch", "-nx", "-ex", "break keys_sign",
                            "-ex", "continue", "-ex", "kill"], stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = []
    try:
        # Set while the process is held: in place before it reads a request.
        for line in gdb.stdout:
            out.append(line)
            if line.startswith("Breakpoint 1 at"):
                break
        assert out and out[-1].startswith("Breakpoint 1 at"), "".join(out)
        done = [None] * 4

        def handshake(i):
            try:
                c = TlsRawClient(b.mqtts_port, client_context(certs.ca), timeout=T(30))
                done[i] = connected(c, tag=f"resend{i}")
            except Exception as e:  # noqa: BLE001 - reported by the assertion below
                done[i] = e
        threads = [threading.Thread(target=handshake, args=(i,)) for i in range(len(done))]
        for t in threads:
            t.start()
        rest, _ = gdb.communicate(timeout=T(30))
        out.append(rest)
        for t in threads:
            t.join(T(40))
    finally:
        if gdb.poll() is None:
            gdb.kill()
            gdb.wait()
    out = "".join(out)
    assert "Breakpoint 1, keys_sign" in out, out
    assert "keys killed by signal 9" in b.log
    wait_for(lambda: b.successor("keys", old), 10, "the key role's successor")
    b.initial_pids = set(b.pids())
    for c in done:
        assert not isinstance(c, BaseException) and c is not None, repr(c)
        clients.own(c)
    for i, c in enumerate(done):
        c.publish(f"resend/{i}", b"after", qos=1)
    got = sub.wait_messages(len(done))
    assert sorted(t for t, *_ in got) == [f"resend/{i}" for i in range(len(done))]
    assert connack_count(sub) == 1
    assert "TLS handshake not finished" not in b.log


# ---------------------------------------------------------------- browser

@needs_browser
def test_browser_over_wss(start_broker, certs, tmp_path):
    """MQTT.js in headless Chromium over wss:// (the test CA not trusted
    by Chromium: --ignore-certificate-errors), with tls.ca_file set but
    no certificate required: the browser is not asked for one (asked for
    a certificate it has none of, headless Chromium abandons the
    handshake)."""
    b = tls_broker(start_broker, certs)
    browser_round_trip(b.port, b.wss_port, tmp_path, scheme="wss",
                       flags=["--ignore-certificate-errors"])


# ---------------------------------------------------------------- hostile

def client_hello():
    """The bytes of a TLS ClientHello, as a client's first flight."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    into, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(into, out, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


def closed_by_server(s, deadline):
    """(closed, bytes read): closed is True once the server closed s (EOF
    or reset), False at deadline (time.monotonic())."""
    got = 0
    while True:
        s.settimeout(max(0.0, deadline - time.monotonic()))
        try:
            data = s.recv(65536)
        except ConnectionError:
            return True, got
        except (socket.timeout, BlockingIOError):
            return False, got
        if not data:
            return True, got
        got += len(data)


FLOOD = 300
HANDSHAKE_TIMEOUT = 5


@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_handshake_flood_does_not_keep_a_client_out(start_broker, certs, kind):
    """FLOOD connections to the one worker each send a ClientHello (a
    signature each for the key role) and stop; a well-behaved client
    connects within tls.handshake_timeout meanwhile, and the flood is
    closed after it."""
    raise_nofile(FLOOD + 200)
    server = certs.server_rsa if kind == "rsa" else certs.server_ec
    b = tls_broker(start_broker, certs, server=server, workers=1,
                   tls={"handshake_timeout": HANDSHAKE_TIMEOUT})
    hello = client_hello()
    flood = []
    try:
        for _ in range(FLOOD):
            s = socket.create_connection(("127.0.0.1", b.mqtts_port), timeout=T(5))
            flood.append(s)
            s.sendall(hello)
        wait_for(lambda: len(b.held_connections()) >= FLOOD, 5, "the worker to hold the flood")
        start = time.monotonic()
        with tls_raw(b.mqtts_port, certs, tag="good") as c:
            c.subscribe([("good/#", 1)])
            c.publish("good/x", b"in", qos=1)
            assert c.recv_publish(timeout=T(5)).payload == b"in"
        took = time.monotonic() - start
        assert took < HANDSHAKE_TIMEOUT, f"the client took {took:.1f} s to be served"
        deadline = time.monotonic() + T(HANDSHAKE_TIMEOUT + 5)
        ends = [closed_by_server(s, deadline) for s in flood]
        still = sum(not closed for closed, _ in ends)
        assert not still, f"{still} of {FLOOD} stalled handshakes still open"
        # The server's first flight (signed by the key role) answered them.
        answered = sum(got > 0 for _, got in ends)
        assert answered >= FLOOD // 2, f"only {answered} of {FLOOD} ClientHellos answered"
    finally:
        for s in flood:
            s.close()


@pytest.mark.parametrize("scheme", ["mqtts", "wss"])
def test_silent_connection_closed_after_handshake_timeout(start_broker, certs, scheme):
    """A client that completes TCP and sends nothing is closed after
    tls.handshake_timeout (2 s), well before connect_timeout (30 s)."""
    b = tls_broker(start_broker, certs, tls={"handshake_timeout": 2}, connect_timeout=30)
    port = b.mqtts_port if scheme == "mqtts" else b.wss_port
    with socket.create_connection(("127.0.0.1", port), timeout=T(5)) as s:
        start = time.monotonic()
        assert closed_by_server(s, start + T(2) + 3)[0], "still open 5 s after accept"
        took = time.monotonic() - start
    assert took >= 1.0, f"closed after {took:.1f} s, before tls.handshake_timeout"
