"""A token's read and write lists (auth.jwt_read_claim, jwt_write_claim)
as a client's rules, alone and next to an ACL file. Tokens made with
python3-jwt and python3-cryptography."""

import time

import pytest

from authfiles import auth_dir  # noqa: F401
from helpers import raw, raw_on
from test_acl import rounds

jwt = pytest.importorskip("jwt")
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

pytestmark = pytest.mark.iotd_only


@pytest.fixture(scope="module")
def ec_key():
    return ec.generate_private_key(ec.SECP256R1())


def token(key, sub, **lists):
    return jwt.encode({"sub": sub, "exp": int(time.time()) + 600, **lists}, key,
                      algorithm="ES256")


def jwt_acl_broker(start_broker, auth_dir, key, workers, acl=None):
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    auth = {"backend": "jwt", "jwt_key_file": auth_dir.file("keys.pem", pem.decode()),
            "jwt_read_claim": "read", "jwt_write_claim": "write"}
    if acl is not None:
        auth["acl_file"] = auth_dir.file("acl", acl)
    return start_broker(workers=workers, auth=auth, probe_auth=("any", token(key, "probe")))


def reader_and_writer(b, key, workers, **reader_kw):
    """A client whose token reads sensors/7/# and open/# (reader_kw: its
    other CONNECT options), and one whose token writes everything, on
    another worker when there are two."""
    s = raw(b, tag="jsub", username="x", **reader_kw,
            password=token(key, "reader", read=["sensors/7/#", "open/#"]))
    pw = token(key, "writer", write=["#"])
    if workers == 1:
        p = raw(b, tag="jpub", username="x", password=pw)
    else:
        p = raw_on(b, avoid=b.worker_of(s), tag="jpub", username="x", password=pw)
    return s, p


@pytest.mark.parametrize("workers", [1, 2])
def test_jwt_write_list(start_broker, auth_dir, ec_key, workers):
    """A token's write list: what it does not name is acknowledged and goes
    nowhere, on the local path and through the router."""
    b = jwt_acl_broker(start_broker, auth_dir, ec_key, workers)
    s = raw(b, tag="jsub", username="x", password=token(ec_key, "reader", read=["#"]))
    pw = token(ec_key, "dev-7", write=["sensors/7/#", "open/#"])
    if workers == 1:
        p = raw(b, tag="jpub", username="x", password=pw)
    else:
        p = raw_on(b, avoid=b.worker_of(s), tag="jpub", username="x", password=pw)
    with s, p:
        s.subscribe(["sensors/#", "open/#"])
        for qos in (0, 1, 2):
            assert rounds(p, s, ["sensors/7/a", "sensors/8/a"], n=2, qos=qos) == \
                ["sensors/7/a"] * 2


def test_jwt_lists_or_the_file(start_broker, auth_dir, ec_key):
    """With an ACL file too, a token without list claims gets the file's
    rules for its user (the claim's name): SUBACK 0x80 where the file lets
    it read nothing, and its writes checked against the file."""
    acl = "user dev-7\ntopic read sensors/#\ntopic write open/#\n"
    b = jwt_acl_broker(start_broker, auth_dir, ec_key, 2, acl=acl)
    with raw(b, tag="jf", username="x", password=token(ec_key, "dev-7")) as c:
        assert c.subscribe(["sensors/#", "other/#", "open/#"], expect_codes=False) == \
            [0, 0x80, 0x80]
        c.publish("sensors/x", b"no", qos=1)
        with raw(b, tag="jf2", username="x", password=token(ec_key, "dev-7")) as w:
            w.publish("open/x", b"no-reader", qos=1)
        c.expect_no_packet(0.3)


@pytest.mark.parametrize("workers", [1, 2])
def test_jwt_read_list(start_broker, auth_dir, ec_key, workers):
    """A token's read list, which the router has from the auth role's grant:
    SUBACK 0x80 for a filter it reaches nothing under, and a granted filter
    delivers only what the list names, on both paths."""
    b = jwt_acl_broker(start_broker, auth_dir, ec_key, workers)
    s, p = reader_and_writer(b, ec_key, workers)
    with s, p:
        assert s.subscribe(["sensors/#", "other/#", "open/#"], expect_codes=False) == \
            [0, 0x80, 0]
        assert rounds(p, s, ["sensors/7/a", "sensors/8/a"], n=3, qos=1) == ["sensors/7/a"] * 3


@pytest.mark.parametrize("workers", [1, 2])
def test_jwt_read_list_outlives_a_router_restart(start_broker, auth_dir, ec_key, workers):
    """A router killed with SIGKILL while a token's persistent session is
    connected: its successor has the token's read list from the store, so
    the session still gets only what the list names (without an ACL file,
    a session without its list would get everything)."""
    from test_crash_router import kill_router

    b = jwt_acl_broker(start_broker, auth_dir, ec_key, workers)
    s, p = reader_and_writer(b, ec_key, workers, clean=False)
    with s, p:
        s.subscribe([("sensors/#", 1), ("open/#", 1)])
        assert rounds(p, s, ["sensors/7/a", "sensors/8/a"], n=2, qos=1) == ["sensors/7/a"] * 2
        kill_router(b)
        assert rounds(p, s, ["sensors/7/a", "sensors/8/a"], n=3, qos=1) == ["sensors/7/a"] * 3
