"""Certificates for the TLS tests, made by the openssl command (`openssl
req` and `openssl ca`) in a world-readable directory under /tmp (the key
role reads them as the children's user): a CA; server certificates
(RSA-2048 or ECDSA P-256) for 127.0.0.1 and localhost (SAN IP and DNS),
one expired; client certificates with a CN or with a SAN alone; revoked
ones and the CRL that says so.

    pki = Pki()                          # the CA: pki.ca_cert, pki.ca_key
    srv = pki.server("a", kind="ec")     # Issued: .cert .key .serial .subject
    cli = pki.client("c1", cn="sensor-1")
    pki.revoke(cli); crl = pki.crl()     # the CA's CRL, path
    pki.remove()

make_set(pki) issues the set most tests need (Certs); the `pki` and
`certs` fixtures give a Pki and that set per test module."""

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

OPENSSL_TIMEOUT = 60

CA_CONF = """\
[ ca ]
default_ca = test_ca

[ test_ca ]
database = {d}/index.txt
new_certs_dir = {d}/newcerts
serial = {d}/serial
crlnumber = {d}/crlnumber
certificate = {d}/ca.pem
private_key = {d}/ca.key
default_md = sha256
default_days = 2
default_crl_days = 2
policy = any_subject
unique_subject = no
copy_extensions = none

[ any_subject ]
commonName = optional
organizationName = optional
"""

SERVER_EXT = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
"""

CLIENT_EXT = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
"""


@dataclass
class Issued:
    """A certificate the test CA issued and its private key (paths)."""
    cert: str
    key: str
    serial: str         # as openssl prints it: upper-case hex
    subject: str        # as openssl prints it (RFC 2253): "CN=sensor-1"


def openssl(*args, cwd=None):
    """Runs openssl; its stdout, or a failure with its stderr."""
    r = subprocess.run(["openssl", *args], capture_output=True, text=True, cwd=cwd,
                       timeout=OPENSSL_TIMEOUT)
    assert r.returncode == 0, f"openssl {' '.join(args)} failed: {r.stderr}"
    return r.stdout


def key_args(kind):
    """openssl req options for a new key: "rsa" (2048 bits) or "ec" (P-256)."""
    if kind == "rsa":
        return ["-newkey", "rsa:2048"]
    assert kind == "ec", f"unknown key kind {kind!r}"
    return ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]


class Pki:
    """A test CA in its own directory, and the certificates it issues."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="iotd-e2e-pki-"))
        os.chmod(self.dir, 0o755)
        (self.dir / "newcerts").mkdir()
        (self.dir / "index.txt").write_text("")
        # A random first serial: certificates of two test CAs never share one.
        (self.dir / "serial").write_text(openssl("rand", "-hex", "8"))
        (self.dir / "crlnumber").write_text("01\n")
        self.conf = self.dir / "ca.cnf"
        self.conf.write_text(CA_CONF.format(d=self.dir))
        self.ca_key = str(self.dir / "ca.key")
        self.ca_cert = str(self.dir / "ca.pem")
        openssl("req", "-x509", "-nodes", "-days", "2", "-subj", "/CN=iotd-e2e test CA",
                *key_args("ec"), "-keyout", self.ca_key, "-out", self.ca_cert,
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        self._readable(self.ca_key, self.ca_cert)

    @staticmethod
    def _readable(*paths):
        for p in paths:
            os.chmod(p, 0o644)

    def issue(self, name, subject, ext, kind="rsa", expired=False):
        """A key and a certificate for it signed by the CA, with the
        extensions in ext (openssl x509v3 lines), valid now, or expired
        (valid for a day in 2020)."""
        key, csr, cert = (str(self.dir / f"{name}.{x}") for x in ("key", "csr", "pem"))
        extfile = self.dir / f"{name}.ext"
        extfile.write_text(ext)
        openssl("req", "-new", "-nodes", "-subj", subject, *key_args(kind), "-keyout", key,
                "-out", csr)
        dates = ["-startdate", "20200101000000Z", "-enddate", "20200102000000Z"] \
            if expired else []
        openssl("ca", "-batch", "-notext", "-config", str(self.conf), "-extfile",
                str(extfile), "-in", csr, "-out", cert, *dates)
        self._readable(key, cert)
        out = openssl("x509", "-in", cert, "-noout", "-serial", "-subject",
                      "-nameopt", "RFC2253")
        fields = dict(line.split("=", 1) for line in out.splitlines())
        return Issued(cert, key, fields["serial"], fields["subject"].strip())

    def server(self, name, kind="rsa", expired=False):
        """A server certificate for 127.0.0.1 and localhost."""
        return self.issue(name, f"/CN=iotd-e2e {name}", SERVER_EXT, kind, expired)

    def client(self, name, cn=None, san=None, kind="ec"):
        """A client certificate with CN=cn, or (cn None) a subject without
        CN and the DNS name san as its one SAN."""
        ext = CLIENT_EXT + (f"subjectAltName = DNS:{san}\n" if san else "")
        subject = f"/CN={cn}" if cn else "/O=iotd-e2e"
        return self.issue(name, subject, ext, kind)

    def revoke(self, issued):
        openssl("ca", "-config", str(self.conf), "-revoke", issued.cert)

    def crl(self, name="crl"):
        """The CA's CRL now (every certificate revoked so far), PEM; its path."""
        path = str(self.dir / f"{name}.pem")
        openssl("ca", "-config", str(self.conf), "-gencrl", "-out", path)
        self._readable(path)
        return path

    def remove(self):
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class Certs:
    """The set most TLS tests need (make_set)."""
    ca: str                 # the CA certificate (tls.ca_file, clients' --cafile)
    server_rsa: Issued
    server_ec: Issued
    server_expired: Issued
    sensor1: Issued         # client, CN=sensor-1
    sensor2: Issued         # client, CN=sensor-2
    san_only: Issued        # client, no CN, SAN DNS:san-sensor
    revoked: Issued         # client, CN=revoked-1, in the CRL
    crl: str


def make_set(pki):
    revoked = pki.client("revoked", cn="revoked-1")
    pki.revoke(revoked)
    return Certs(
        ca=pki.ca_cert,
        server_rsa=pki.server("server-rsa", "rsa"),
        server_ec=pki.server("server-ec", "ec"),
        server_expired=pki.server("server-expired", "rsa", expired=True),
        sensor1=pki.client("sensor-1", cn="sensor-1"),
        sensor2=pki.client("sensor-2", cn="sensor-2"),
        san_only=pki.client("san-only", san="san-sensor"),
        revoked=revoked,
        crl=pki.crl())


@pytest.fixture(scope="module")
def pki():
    """A Pki for the test module (import it into a test module to use it)."""
    p = Pki()
    yield p
    p.remove()


@pytest.fixture(scope="module")
def certs(pki):
    """make_set(pki) for the test module."""
    return make_set(pki)
