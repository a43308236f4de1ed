"""Authentication by JSON Web Token (auth.backend = "jwt"): the password is
the token, checked against the key file's public keys, the user name taken
from its claim; expired tokens, other keys, other algorithms (HS256 signed
with the public key, "none") are CONNACK 4. Tokens made with python3-jwt
and python3-cryptography."""

import base64
import hashlib
import hmac
import json
import time

import pytest

from authfiles import AuthDir
from helpers import raw

jwt = pytest.importorskip("jwt")
crypto = pytest.importorskip("cryptography.hazmat.primitives.asymmetric.rsa")
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, rsa  # noqa: E402

pytestmark = pytest.mark.iotd_only


def pem_public(key):
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**extra):
    return {"sub": "sensor-7", "exp": int(time.time()) + 600, **extra}


@pytest.fixture(scope="module")
def keys():
    return {"rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
            "rsa_other": rsa.generate_private_key(public_exponent=65537, key_size=2048),
            "ec": ec.generate_private_key(ec.SECP256R1())}


@pytest.fixture
def jwt_broker(start_broker, keys):
    d = AuthDir()
    path = d.file("keys.pem", pem_public(keys["rsa"]).decode())
    token = jwt.encode(claims(), keys["rsa"], algorithm="RS256")
    b = start_broker(auth={"backend": "jwt", "jwt_key_file": path, "jwt_leeway": 0,
                           "jwt_read_claim": "read", "jwt_write_claim": "write"},
                     probe_auth=("any", token))
    yield b
    d.remove()


def connack(broker, token, user="any"):
    with raw(broker, tag="jwt", expect_rc=None, username=user, password=token) as c:
        return c.connack.rc


def test_valid_token(jwt_broker, keys):
    token = jwt.encode(claims(read=["sensors/#"], write=["sensors/7/#"]), keys["rsa"],
                       algorithm="RS256")
    assert connack(jwt_broker, token) == 0
    with raw(jwt_broker, tag="jwtpub", username="whatever", password=token) as c:
        c.publish("sensors/7/t", b"x", qos=1, pid=1)
    # Known by the token's claim, not by the user name it sent.
    assert 'as "sensor-7"' in jwt_broker.log and 'as "whatever"' not in jwt_broker.log


def test_expired_token(jwt_broker, keys):
    token = jwt.encode(claims(exp=int(time.time()) - 60), keys["rsa"], algorithm="RS256")
    assert connack(jwt_broker, token) == 4


def test_token_signed_by_another_key(jwt_broker, keys):
    assert connack(jwt_broker, jwt.encode(claims(), keys["rsa_other"], algorithm="RS256")) == 4
    # An algorithm no key of the file has.
    assert connack(jwt_broker, jwt.encode(claims(), keys["ec"], algorithm="ES256")) == 4


def test_hs256_signed_with_the_public_key(jwt_broker, keys):
    """The classic confusion: an HMAC keyed with the (public) PEM must not pass."""
    head = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64url(json.dumps(claims()).encode())
    mac = hmac.new(pem_public(keys["rsa"]), f"{head}.{body}".encode(), hashlib.sha256).digest()
    assert connack(jwt_broker, f"{head}.{body}.{b64url(mac)}") == 4


def test_alg_none(jwt_broker):
    head = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    body = b64url(json.dumps(claims()).encode())
    assert connack(jwt_broker, f"{head}.{body}.") == 4


def test_no_token_and_garbage(jwt_broker):
    assert connack(jwt_broker, None) == 4              # a user name, no password
    assert connack(jwt_broker, "not.a.token") == 4
    with raw(jwt_broker, tag="jwtanon", expect_rc=None) as c:
        assert c.connack.rc == 5                       # anonymous


def test_a_key_file_of_several_algorithms(start_broker, keys):
    """RS256 and ES256 keys in one file: each algorithm is checked with its
    own keys; the user name comes from the configured claim."""
    d = AuthDir()
    try:
        path = d.file("keys.pem", (pem_public(keys["rsa"]) + pem_public(keys["ec"])).decode())
        es = jwt.encode(claims(device="pump-3"), keys["ec"], algorithm="ES256")
        b = start_broker(auth={"backend": "jwt", "jwt_key_file": path,
                               "jwt_username_claim": "device"}, probe_auth=("x", es))
        assert connack(b, es) == 0
        assert connack(b, jwt.encode(claims(device="pump-4"), keys["rsa"],
                                     algorithm="RS256")) == 0
        assert 'as "pump-4"' in b.log
        # Signed with the EC key but claiming RS256: checked with the RSA key, refused.
        head = b64url(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
        assert connack(b, head + es[es.index("."):]) == 4
        # Without the configured claim: refused.
        assert connack(b, jwt.encode(claims(), keys["ec"], algorithm="ES256")) == 4
    finally:
        d.remove()
