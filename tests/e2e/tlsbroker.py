"""iotd serving TLS, and clients that speak it: tls_broker() starts the
daemon with a tls { } section and mqtts:// and wss:// listeners beside a
plain one (first, for the fixtures' start-up probe); TlsRawClient is
mqttraw's client over TLS; presented() asks `openssl s_client` which
certificate the server shows; cli_tls() gives mosquitto_sub/pub their
TLS options."""

import ssl
import subprocess

import mqttraw
from conftest import free_port
from helpers import T, connected, wait_for


def tls_broker(start_broker, certs, server=None, tls=None, wss_path="/mqtt", **opts):
    """A daemon with listeners 127.0.0.1:<port> (.port), mqtts:// (.mqtts_port)
    and wss://...<wss_path> (.wss_port); its tls section: the server
    certificate `server` (an Issued; default certs.server_rsa), the CA as
    ca_file, and the keys in `tls` (None leaves a key out). Returns once a TLS handshake on the
    mqtts port succeeded (the workers have the chain), with no connection
    held."""
    server = server or certs.server_rsa
    tcp, mqtts, wss = free_port(), free_port(), free_port()
    conf = {"cert_file": server.cert, "key_file": server.key, "ca_file": certs.ca, **(tls or {})}
    conf = {k: v for k, v in conf.items() if v is not None}
    b = start_broker(listen=[f"127.0.0.1:{tcp}", f"mqtts://127.0.0.1:{mqtts}",
                             f"wss://127.0.0.1:{wss}{wss_path}"], tls=conf, **opts)
    b.mqtts_port, b.wss_port = mqtts, wss
    wait_for(lambda: handshake_ok(mqtts, certs.ca, certs.sensor1), 10,
             "a TLS handshake on the mqtts port")
    b.wait_idle()
    return b


def client_context(ca, client=None):
    """A client's SSLContext trusting ca, presenting client (an Issued) if given."""
    ctx = ssl.create_default_context(cafile=ca)
    if client is not None:
        ctx.load_cert_chain(client.cert, client.key)
    return ctx


def handshake_ok(port, ca, client=None):
    """True when a TLS handshake with the server on port succeeds."""
    try:
        with TlsRawClient(port, client_context(ca, client)):
            return True
    except (OSError, ssl.SSLError):
        return False


class TlsRawClient(mqttraw.RawClient):
    """A mqttraw.RawClient over TLS (the handshake done in the constructor,
    bounded by timeout), asking for server name localhost."""

    def __init__(self, port, ctx, host="127.0.0.1", timeout=5.0, server_name="localhost"):
        super().__init__(port, host=host, timeout=timeout)
        try:
            self.sock = ctx.wrap_socket(self.sock, server_hostname=server_name)
        except BaseException:
            self.close()
            raise

    def _fill(self, deadline):
        # Bytes OpenSSL decrypted already do not make the socket readable.
        if self.sock.pending():
            self.buf += self.sock.recv(self.sock.pending())
            return True
        try:
            return super()._fill(deadline)
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError) as e:
            raise mqttraw.ConnectionClosed(f"server closed the TLS connection ({e})")


def tls_raw(port, certs, client=None, cid=None, tag="tls", connect=True, **connect_kw):
    """A TlsRawClient to port trusting the test CA, with the client
    certificate `client` (an Issued) if given, CONNECTed as in helpers.raw."""
    c = TlsRawClient(port, client_context(certs.ca, client), timeout=T(5))
    return connected(c, cid, tag, **connect_kw) if connect else c


def presented(port, ca):
    """(serial, subject) of the certificate the server on port presents
    to `openssl s_client`, which verifies it against ca."""
    r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}",
                        "-servername", "localhost", "-CAfile", ca, "-verify_return_error"],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=T(10))
    assert r.returncode == 0, f"openssl s_client failed ({r.returncode}): {r.stderr[-2000:]}"
    x = subprocess.run(["openssl", "x509", "-noout", "-serial", "-subject", "-nameopt",
                        "RFC2253"], input=r.stdout, capture_output=True, text=True,
                       timeout=T(10))
    assert x.returncode == 0, f"no certificate in s_client's output: {r.stdout[-2000:]}"
    fields = dict(line.split("=", 1) for line in x.stdout.splitlines())
    return fields["serial"], fields["subject"].strip()


def cli_tls(certs, client=None):
    """mosquitto_sub/pub options for TLS trusting the test CA (and with a client certificate)."""
    args = ["--cafile", certs.ca]
    if client is not None:
        args += ["--cert", client.cert, "--key", client.key]
    return args
