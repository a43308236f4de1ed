"""MQTT 5 enhanced authentication (AUTH, method SCRAM-SHA-256) against a
password file written by iotd-passwd -s: the exchange on both workers, its
failures (wrong password, unknown user, another kind of hash, malformed
messages, other methods, no password file), plain passwords of SCRAM users,
AUTH where it has no place, exchanges abandoned and the auth role killed
midway, the ACL under the exchange's user name, and re-authentication.
SCRAM's client side is computed here (hashlib, hmac)."""

import base64
import hashlib
import hmac
import os
import signal
import subprocess

import pytest

import mqttraw as m
from authfiles import TOOLS, auth_dir, refusals  # noqa: F401
from helpers import T, raw, raw_on, uid, wait_for

pytestmark = pytest.mark.iotd_only

P_AUTH_DATA = 0x16
METHOD = b"SCRAM-SHA-256"
CONTINUE, REAUTH = 0x18, 0x19
ALICE, BOB = "alice-pw", "bob-pw"


def b64(b):
    return base64.b64encode(b).decode()


class Scram:
    """A SCRAM-SHA-256 client (RFC 5802, RFC 7677), without channel binding."""

    def __init__(self, user, password):
        self.user, self.password = user, password
        self.nonce = b64(os.urandom(18))
        self.bare = f"n={user},r={self.nonce}"

    def first(self):
        return ("n,," + self.bare).encode()

    def final(self, server_first, proof_of=None):
        """client-final for server-first (bytes); proof_of: another password's proof."""
        sf = server_first.decode()
        attrs = dict(kv.split("=", 1) for kv in sf.split(","))
        assert attrs["r"].startswith(self.nonce) and len(attrs["r"]) > len(self.nonce)
        self.salt, self.iterations = base64.b64decode(attrs["s"]), int(attrs["i"])
        salted = hashlib.pbkdf2_hmac("sha256", (proof_of or self.password).encode(),
                                     self.salt, self.iterations)
        client_key = hmac.new(salted, b"Client Key", "sha256").digest()
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = f"c=biws,r={attrs['r']}"
        auth_message = f"{self.bare},{sf},{without_proof}".encode()
        sig = hmac.new(stored_key, auth_message, "sha256").digest()
        proof = bytes(a ^ b for a, b in zip(client_key, sig))
        server_key = hmac.new(salted, b"Server Key", "sha256").digest()
        self.server_final = ("v=" + b64(hmac.new(server_key, auth_message,
                                                 "sha256").digest())).encode()
        return f"{without_proof},p={b64(proof)}".encode()


def auth_props(data):
    return [(m.P_AUTH_METHOD, METHOD), (P_AUTH_DATA, data)]


def scram_begin(b, user, password, cid=None):
    """A raw client that sent CONNECT with client-first and got AUTH 0x18
    (server-first in .server_first)."""
    c = raw(b, connect=False)
    c.scram = Scram(user, password)
    c.send(m.connect_v5(cid or uid("scram"), props=auth_props(c.scram.first())))
    a = m.v5(c.expect(m.AUTH, timeout=T(5)))
    assert a.reason == CONTINUE, f"AUTH reason {a.reason:#x}"
    assert a.propd[m.P_AUTH_METHOD] == METHOD
    c.server_first = a.propd[P_AUTH_DATA]
    return c


def scram_connect(b, user, password, expect=0, proof_of=None, cid=None):
    """The whole exchange; the CONNACK (parsed) in .connack. A failure's
    connection is closed by the daemon."""
    c = scram_begin(b, user, password, cid)
    c.send(m.auth_v5(CONTINUE, auth_props(c.scram.final(c.server_first, proof_of))))
    c.connack = m.v5(c.expect(m.CONNACK, timeout=T(10)))
    assert c.connack.reason == expect, f"CONNACK {c.connack.reason:#x}, expected {expect:#x}"
    if expect == 0:
        assert c.connack.propd[m.P_AUTH_METHOD] == METHOD
        assert c.connack.propd[P_AUTH_DATA] == c.scram.server_final
    else:
        c.expect_closed(timeout=T(5))
    return c


def passwd(path, user, password, scram=True, create=False):
    argv = [str(TOOLS / "iotd-passwd")] + (["-s"] if scram else ["-t", "1", "-m", "64"]) + \
        (["-c"] if create else []) + ["-b", path, user, password]
    subprocess.run(argv, check=True, capture_output=True, timeout=30)
    os.chmod(path, 0o644)


def scram_file(auth_dir):
    """alice: a SCRAM entry; bob: an Argon2id one."""
    path = str(auth_dir.path / "passwd")
    passwd(path, "alice", ALICE, create=True)
    passwd(path, "bob", BOB, scram=False)
    text = open(path).read()
    assert "alice:$scram-sha-256$4096$" in text and "bob:$argon2id$" in text
    return path


def scram_broker(start_broker, auth_dir, **auth):
    # The start-up probe logs in with alice's plain password: her SCRAM entry takes it.
    return start_broker(auth={"backend": "file", "password_file": scram_file(auth_dir), **auth},
                        probe_auth=("alice", ALICE))


def test_scram_on_both_workers(start_broker, auth_dir, clients):
    """The exchange succeeds on each worker; CONNACK carries server-final,
    whose signature the client checks; the connections then work."""
    b = scram_broker(start_broker, auth_dir)
    s = clients.own(scram_connect(b, "alice", ALICE))
    p = clients.own(raw_on(b, avoid=b.worker_of(s),
                           make=lambda: scram_connect(b, "alice", ALICE)))
    b.assert_different_workers(s, p)
    s.send(m.subscribe_v5(1, [("scram/#", 1)]))
    assert m.v5(s.expect(m.SUBACK, pid=1)).codes == [1]
    p.send(m.publish_v5("scram/t", b"hi", qos=1, pid=1))
    assert m.v5(p.expect(m.PUBACK, pid=1)).reason == 0
    assert m.v5(s.recv_publish(timeout=T(5))).payload == b"hi"


def test_wrong_password_and_unknown_user_look_alike(start_broker, auth_dir):
    """A wrong password: CONNACK 0x86 and the refusal's log line. An
    unknown user gets a server-first of the same form (its salt the same
    at each attempt) and the same refusal."""
    b = scram_broker(start_broker, auth_dir)
    known = scram_connect(b, "alice", ALICE, expect=0x86, proof_of="wrong")
    ghost = scram_connect(b, "ghost", "x", expect=0x86)
    again = scram_connect(b, "ghost", "y", expect=0x86)
    assert len(ghost.scram.salt) == len(known.scram.salt) == 16
    assert ghost.scram.iterations == known.scram.iterations == 4096
    assert ghost.scram.salt == again.scram.salt
    wait_for(lambda: {(r["user"], r["code"]) for r in refusals(b)} >=
             {("alice", "4"), ("ghost", "4")}, T(5), "the refusals' log lines")


def test_plain_password_of_scram_user_and_argon2_user(start_broker, auth_dir):
    """alice (SCRAM entry) logs in with a plain password too, a wrong one
    refused; bob (Argon2id) with his password, but not with SCRAM."""
    b = scram_broker(start_broker, auth_dir)
    with raw(b, tag="plain", username="alice", password=ALICE) as c:
        assert c.connack.rc == 0
    with raw(b, tag="plain", username="alice", password="nope", expect_rc=None) as c:
        assert c.connack.rc == 4
    with raw(b, tag="plain", username="bob", password=BOB) as c:
        assert c.connack.rc == 0
    scram_connect(b, "bob", BOB, expect=0x86)


def test_other_method_and_no_password_file(start_broker, auth_dir):
    """A method iotd does not offer, or SCRAM without a password file:
    CONNACK 0x8C."""
    b = scram_broker(start_broker, auth_dir)
    c = raw(b, connect=False)
    c.send(m.connect_v5(uid("m"), props=[(m.P_AUTH_METHOD, b"SCRAM-SHA-1"),
                                         (P_AUTH_DATA, b"n,,n=alice,r=abc")]))
    assert m.v5(c.expect(m.CONNACK)).reason == 0x8C
    c.expect_closed()
    plain = start_broker()
    c = raw(plain, connect=False)
    c.send(m.connect_v5(uid("m"), props=auth_props(Scram("alice", ALICE).first())))
    assert m.v5(c.expect(m.CONNACK)).reason == 0x8C
    c.expect_closed()


def test_auth_packet_over_the_clients_maximum_packet_size(start_broker, auth_dir):
    """server-first does not fit in the Maximum Packet Size the client
    allows: no AUTH goes out (a packet over it is never sent), the exchange
    ends with a refusal; the same client allowing more gets through."""
    b = scram_broker(start_broker, auth_dir)
    c = raw(b, connect=False)
    c.send(m.connect_v5(uid("small"), props=[(m.P_MAX_PACKET_SIZE, 40),
                                             *auth_props(Scram("alice", ALICE).first())]))
    got = c.expect_closed(timeout=T(10))
    assert all(p.type != m.AUTH for p in got), [p.type for p in got]
    assert all(len(p.body) + 2 <= 40 for p in got), [len(p.body) for p in got]
    c = raw(b, connect=False)
    c.scram = Scram("alice", ALICE)
    c.send(m.connect_v5(uid("big"), props=[(m.P_MAX_PACKET_SIZE, 512),
                                           *auth_props(c.scram.first())]))
    a = m.v5(c.expect(m.AUTH, timeout=T(5)))
    assert a.reason == CONTINUE


def test_malformed_messages(start_broker, auth_dir):
    """client-first asking for channel binding, and a client-final of
    another nonce: CONNACK 0x87. AUTH of another method, or AUTH 0x19
    before CONNACK: CONNACK 0x82 (protocol error)."""
    b = scram_broker(start_broker, auth_dir)
    c = raw(b, connect=False)
    c.send(m.connect_v5(uid("m"), props=auth_props(b"p=tls-unique,,n=alice,r=abc")))
    assert m.v5(c.expect(m.CONNACK)).reason == 0x87
    c.expect_closed()
    c = scram_begin(b, "alice", ALICE)
    c.send(m.auth_v5(CONTINUE, auth_props(b"c=biws,r=other,p=" + b64(bytes(32)).encode())))
    assert m.v5(c.expect(m.CONNACK)).reason == 0x87
    c.expect_closed()
    c = scram_begin(b, "alice", ALICE)
    c.send(m.auth_v5(CONTINUE, [(m.P_AUTH_METHOD, b"PLAIN"), (P_AUTH_DATA, b"x")]))
    assert m.v5(c.expect(m.CONNACK)).reason == 0x82
    c.expect_closed()
    c = scram_begin(b, "alice", ALICE)
    c.send(m.publish_v5("t", b"x"))
    c.expect_closed()
    # The address failed: the next exchange still succeeds (after its slow-down).
    scram_connect(b, "alice", ALICE).close()


def test_auth_where_it_has_no_place(start_broker, auth_dir):
    """AUTH on a 3.1.1 connection closes it; on an MQTT 5 connection that
    logged in with a password, DISCONNECT 0x82."""
    b = scram_broker(start_broker, auth_dir)
    with raw(b, tag="v3", username="alice", password=ALICE) as c:
        c.send(m.auth_v5(CONTINUE, auth_props(b"x")))
        c.expect_closed()
    c = raw(b, connect=False)
    c.send(m.connect_v5(uid("pw"), username="alice", password=ALICE))
    assert m.v5(c.expect(m.CONNACK)).reason == 0
    c.send(m.auth_v5(REAUTH, auth_props(Scram("alice", ALICE).first())))
    p = m.v5(c.expect(m.DISCONNECT))
    assert p.reason == 0x82
    c.expect_closed()


def test_abandoned_exchanges(start_broker, auth_dir):
    """Exchanges left midway: one closed by its client, more than
    auth.max_pending of them, leave nothing held (new exchanges succeed);
    one left open is ended at connect_timeout (CONNACK 0x88)."""
    b = start_broker(auth={"backend": "file", "password_file": scram_file(auth_dir),
                           "max_pending": 2},
                     probe_auth=("alice", ALICE), connect_timeout=2)
    for _ in range(5):
        scram_begin(b, "alice", ALICE).close()
    scram_connect(b, "alice", ALICE).close()
    c = scram_begin(b, "alice", ALICE)
    assert m.v5(c.expect(m.CONNACK, timeout=T(6))).reason == 0x88
    c.expect_closed()
    scram_connect(b, "alice", ALICE).close()


def test_exchanges_held_past_max_pending(start_broker, auth_dir):
    """auth.max_pending exchanges waiting for their clients' final step on
    one worker: one more is refused (CONNACK 0x88) while they wait, and
    those held still finish."""
    b = start_broker(auth={"backend": "file", "password_file": scram_file(auth_dir),
                           "max_pending": 2},
                     probe_auth=("alice", ALICE), workers=1)
    held = [scram_begin(b, "alice", ALICE) for _ in range(2)]
    c = raw(b, connect=False)
    c.send(m.connect_v5(uid("over"), props=auth_props(Scram("alice", ALICE).first())))
    assert m.v5(c.expect(m.CONNACK, timeout=T(5))).reason == 0x88
    c.expect_closed()
    for h in held:
        h.send(m.auth_v5(CONTINUE, auth_props(h.scram.final(h.server_first))))
        assert m.v5(h.expect(m.CONNACK, timeout=T(10))).reason == 0
        h.close()
    scram_connect(b, "alice", ALICE).close()


def test_acl_under_the_scram_user(start_broker, auth_dir):
    """The ACL applies to the user the exchange named."""
    acl = auth_dir.file("acl", "user alice\ntopic readwrite alice/#\n")
    b = scram_broker(start_broker, auth_dir, acl_file=acl)
    wait_for(lambda: "router: ACL in force" in b.log, T(5), "the router to take the ACL")
    c = scram_connect(b, "alice", ALICE)
    c.send(m.subscribe_v5(1, [("alice/#", 1), ("bob/#", 1)]))
    assert m.v5(c.expect(m.SUBACK, pid=1)).codes == [1, 0x80]
    c.send(m.publish_v5("alice/t", b"mine", qos=1, pid=2))
    assert m.v5(c.expect(m.PUBACK, pid=2)).reason == 0
    assert m.v5(c.recv_publish(timeout=T(5))).payload == b"mine"
    c.close()


def test_auth_role_killed_mid_exchange(start_broker, auth_dir, clients):
    """The auth role killed between server-first and client-final: that
    exchange fails (CONNACK 0x88); a client connected before keeps working;
    the next exchange succeeds with the new process."""
    b = scram_broker(start_broker, auth_dir)
    stay = clients.own(scram_connect(b, "alice", ALICE))
    c = scram_begin(b, "alice", ALICE)
    old = b.role_pid("auth")
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: b.successor("auth", old), T(10), "the auth role's successor")
    try:
        c.send(m.auth_v5(CONTINUE, auth_props(c.scram.final(c.server_first))))
    except OSError:
        pass                     # already answered and closed
    assert m.v5(c.expect(m.CONNACK, timeout=T(10))).reason == 0x88
    c.expect_closed()
    stay.send(m.subscribe_v5(1, [("alice/x", 0)]))
    assert m.v5(stay.expect(m.SUBACK, pid=1)).codes == [0]
    clients.own(scram_connect(b, "alice", ALICE))
    assert "auth killed by signal 9" in b.log
    b.initial_pids = set(b.pids())


def reauth(c, password):
    """AUTH 0x19 with client-first, then client-final: the last AUTH or DISCONNECT."""
    c.scram = Scram(getattr(c, "next_user", "alice"), password)
    c.send(m.auth_v5(REAUTH, auth_props(c.scram.first())))
    a = m.v5(c.expect(m.AUTH, timeout=T(5)))
    assert a.reason == CONTINUE
    c.send(m.auth_v5(CONTINUE, auth_props(c.scram.final(a.propd[P_AUTH_DATA]))))
    p = c.recv_packet(timeout=T(10))
    return m.v5(p)


def test_reauthentication(start_broker, auth_dir, clients):
    """A SCRAM client re-authenticates while its connection keeps working:
    success ends in AUTH 0x00 with server-final; a wrong password ends the
    connection with DISCONNECT 0x87; so does another user name."""
    b = scram_broker(start_broker, auth_dir)
    c = clients.own(scram_connect(b, "alice", ALICE))
    p = reauth(c, ALICE)
    assert p.type == m.AUTH and p.reason == 0
    assert p.propd[P_AUTH_DATA] == c.scram.server_final
    c.send(m.subscribe_v5(1, [("alice/r", 0)]))
    assert m.v5(c.expect(m.SUBACK, pid=1)).codes == [0]
    p = reauth(c, "wrong")
    assert p.type == m.DISCONNECT and p.reason == 0x87
    c.expect_closed()
    d = clients.own(scram_connect(b, "alice", ALICE))
    d.next_user = "ghost"
    p = reauth(d, "x")
    assert p.type == m.DISCONNECT and p.reason == 0x87
    d.expect_closed()


def test_reauthentication_abandoned(start_broker, auth_dir, clients):
    """A re-authentication left after server-first ends its connection at
    connect_timeout (DISCONNECT 0x87); a second AUTH 0x19 while one is in
    progress is a protocol error."""
    b = start_broker(auth={"backend": "file", "password_file": scram_file(auth_dir)},
                     probe_auth=("alice", ALICE), connect_timeout=2)
    c = clients.own(scram_connect(b, "alice", ALICE))
    c.send(m.auth_v5(REAUTH, auth_props(Scram("alice", ALICE).first())))
    assert m.v5(c.expect(m.AUTH, timeout=T(5))).reason == CONTINUE
    p = m.v5(c.expect(m.DISCONNECT, timeout=T(6)))
    assert p.reason == 0x87
    c.expect_closed()
    d = clients.own(scram_connect(b, "alice", ALICE))
    d.send(m.auth_v5(REAUTH, auth_props(Scram("alice", ALICE).first())))
    assert m.v5(d.expect(m.AUTH, timeout=T(5))).reason == CONTINUE
    d.send(m.auth_v5(REAUTH, auth_props(Scram("alice", ALICE).first())))
    assert m.v5(d.expect(m.DISCONNECT)).reason == 0x82
    d.expect_closed()
    # Nothing of theirs is left held: a new client still gets through.
    scram_connect(b, "alice", ALICE).close()
