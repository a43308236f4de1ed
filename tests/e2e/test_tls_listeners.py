"""Several certificates in one daemon: tls { }'s own for the listeners
that name none, and a named one (tls { certificate "internal" { } }, of
another CA) for the listeners whose address ends in ?tls=internal. Each
listener presents its own (openssl s_client), clients of either reach
each other (mosquitto_pub/sub), a reload that rotates one certificate
leaves the other, a reload with a broken pair changes neither, and a
listener naming a certificate no section declares refuses the start."""

import os
import shutil
import signal
import subprocess

import pytest

from certs import Issued, Pki, certs, pki  # noqa: F401
from conftest import free_port, iotd_config_text
from helpers import CliSub, T, uid, wait_for
from test_reload import accept_listener_change
from test_tls_keys import exit_status
from tlsbroker import presented

pytestmark = pytest.mark.iotd_only

READ_AGAIN = "reload: keys and certificate chains read again"
KEPT = "keeping every key and certificate in force"
KEY_ROLE = {"certificate": "internal"}  # for the fixture: the file (config_text) has a key role
SERVER_OPTS = {"placement_slack": 0, "max_connections_per_address": 0,
               "max_connect_rate_per_address": 0}


@pytest.fixture(scope="module")
def internal():
    """A second CA, the internal one, and a server certificate it issued."""
    p = Pki()
    p.server_cert = p.server("internal", "ec")
    yield p
    p.remove()


def two_cert_config(default, named, name="internal", server=None):
    """The file: tls { } with `default` (an Issued) and certificate "name"
    with `named`; server: more server { } keys."""
    text = iotd_config_text({**SERVER_OPTS, **(server or {})}, "debug", None,
                            {"cert_file": default.cert, "key_file": default.key})
    block = (f'    certificate "{name}" {{\n        cert_file = "{named.cert}"\n'
             f'        key_file = "{named.key}"\n    }}\n')
    return text.replace("tls {\n", "tls {\n" + block, 1)


def start_two(start_broker, certs, internal, named=None):  # noqa: F811
    """A daemon with a plain listener, mqtts:// on tls { }'s certificate,
    and mqtts:// and wss:// on the internal one."""
    public, private, wss = free_port(), free_port(), free_port()
    b = start_broker(config_text=two_cert_config(certs.server_rsa, named or internal.server_cert),
                     tls=KEY_ROLE, listen=[f"127.0.0.1:{free_port()}", f"mqtts://127.0.0.1:{public}",
                             f"mqtts://127.0.0.1:{private}?tls=internal",
                             f"wss://127.0.0.1:{wss}/mqtt?tls=internal"])
    b.public, b.private, b.wss = public, private, wss
    return b


def pub(port, ca, topic, message):
    r = subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "--cafile", ca,
                        "-V", "mqttv311", "-t", topic, "-m", message, "-q", "1",
                        "-i", uid("pub")], capture_output=True, text=True, timeout=T(10))
    assert r.returncode == 0, r.stderr


def wait_presented(port, ca, serial):
    """Wait (bounded) until the listener on port presents the certificate of that serial."""
    wait_for(lambda: presented(port, ca)[0] == serial, 10, f"certificate {serial} on {port}")


def test_each_listener_presents_its_own(start_broker, certs, internal):  # noqa: F811
    b = start_two(start_broker, certs, internal)
    wait_presented(b.public, certs.ca, certs.server_rsa.serial)
    assert presented(b.public, certs.ca) == (certs.server_rsa.serial, certs.server_rsa.subject)
    wait_presented(b.private, internal.ca_cert, internal.server_cert.serial)
    assert presented(b.private, internal.ca_cert) == (internal.server_cert.serial,
                                                      internal.server_cert.subject)
    # The internal listener's certificate is not one the public CA vouches for.
    r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{b.private}",
                        "-servername", "localhost", "-CAfile", certs.ca,
                        "-verify_return_error"], stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=T(10))
    assert r.returncode != 0


def test_round_trip_across_listeners(start_broker, certs, internal):  # noqa: F811
    b = start_two(start_broker, certs, internal)
    wait_presented(b.private, internal.ca_cert, internal.server_cert.serial)
    for (sub_port, sub_ca), (pub_port, pub_ca) in (
            ((b.public, certs.ca), (b.private, internal.ca_cert)),
            ((b.private, internal.ca_cert), (b.public, certs.ca))):
        topic = f"two/{uid('t')}"
        sub = CliSub(sub_port, topic, 1, uid("sub"), extra=["--cafile", sub_ca])
        try:
            sub.wait_subscribed()
            pub(pub_port, pub_ca, topic, "across")
            assert sub.wait_messages(1)[0][:2] == (topic, "across")
        finally:
            sub.stop()


def test_reload_rotates_one(start_broker, certs, internal):  # noqa: F811
    """A SIGHUP reads every certificate again: the internal one renewed,
    the public one as it was; then a renewal whose key does not match
    changes neither (the reload is one transaction)."""
    named = internal.server("rotated-0", "ec")
    # The paths the daemon reads, in the CA's directory (readable by the children's user).
    cert, key = str(internal.dir / "live.pem"), str(internal.dir / "live.key")
    shutil.copy(named.cert, cert)
    shutil.copy(named.key, key)
    b = start_two(start_broker, certs, internal,
                  named=Issued(cert, key, named.serial, named.subject))
    wait_presented(b.private, internal.ca_cert, named.serial)
    renewed = internal.server("rotated-1", "ec")
    os.replace(renewed.key, key)
    os.replace(renewed.cert, cert)
    b.send_signal(signal.SIGHUP)
    wait_for(lambda: READ_AGAIN in b.log, 10, "the key role's reload")
    wait_presented(b.private, internal.ca_cert, renewed.serial)
    assert presented(b.public, certs.ca)[0] == certs.server_rsa.serial
    # A certificate whose key is another: nothing changes, anywhere.
    broken = internal.server("rotated-2", "ec")
    os.replace(broken.cert, cert)
    b.send_signal(signal.SIGHUP)
    wait_for(lambda: KEPT in b.log, 10, "the refused reload")
    assert ('the key in tls.certificate "internal".key_file does not match the certificate '
            f'in tls.certificate "internal".cert_file {cert}') in b.log
    assert presented(b.private, internal.ca_cert)[0] == renewed.serial
    assert presented(b.public, certs.ca)[0] == certs.server_rsa.serial


def test_reload_adds_listeners(start_broker, certs, internal):  # noqa: F811
    """A reload may add a listener presenting a certificate of the start,
    found by its name even when a new section comes before it in the file;
    one naming a certificate new in the file waits for a restart: the
    reload is refused, saying so."""
    tcp, first = f"127.0.0.1:{free_port()}", f"mqtts://127.0.0.1:{free_port()}?tls=internal"
    text = two_cert_config(certs.server_rsa, internal.server_cert,
                           server={"listen_addresses": [tcp, first]})
    b = start_broker(config_text=text, tls=KEY_ROLE, listen=[tcp, first],
                     listen_in_config=True)
    added = free_port()
    b.conf_path.write_text(two_cert_config(
        certs.server_rsa, internal.server_cert,
        server={"listen_addresses": [tcp, first, f"mqtts://127.0.0.1:{added}?tls=internal"]}))
    before = b.log.count("configuration reloaded: applied")
    b.send_signal(signal.SIGHUP)
    wait_for(lambda: b.log.count("configuration reloaded: applied") > before, 10, "the reload")
    accept_listener_change(b)
    wait_presented(added, internal.ca_cert, internal.server_cert.serial)
    other = free_port()
    text = two_cert_config(certs.server_rsa, internal.server_cert,
                           server={"listen_addresses": [tcp, first,
                                                        f"mqtts://127.0.0.1:{other}?tls=new"]})
    block = (f'    certificate "new" {{\n        cert_file = "{certs.server_ec.cert}"\n'
             f'        key_file = "{certs.server_ec.key}"\n    }}\n')
    b.conf_path.write_text(text.replace("tls {\n", "tls {\n" + block, 1))
    b.send_signal(signal.SIGHUP)
    wait_for(lambda: f"mqtts://127.0.0.1:{other}?tls=new presents a certificate that is read "
             "at the next start of iotd" in b.log, 10, "the refused reload")
    assert presented(added, internal.ca_cert)[0] == internal.server_cert.serial


def test_unknown_certificate_refuses_start(start_broker, certs, internal):  # noqa: F811
    port = free_port()
    b = start_broker(config_text=two_cert_config(certs.server_rsa, internal.server_cert),
                     listen=[f"127.0.0.1:{free_port()}", f"mqtts://127.0.0.1:{port}?tls=intern"],
                     wait=False)
    assert exit_status(b) == 1
    assert 'mqtts://127.0.0.1:%d?tls=intern: no tls { certificate "intern" { } } is ' \
           'declared' % port in b.log


@pytest.mark.parametrize("fault", ["wrong", "missing"])
def test_named_key_refuses_start(start_broker, certs, internal, fault):  # noqa: F811
    """A named certificate's key that does not match, or cannot be read,
    stops the start with a message naming that certificate's keys, not
    tls { }'s own."""
    key = internal.server("other", "ec").key if fault == "wrong" else \
        str(internal.dir / "missing.key")
    s = internal.server_cert
    named = Issued(s.cert, key, s.serial, s.subject)
    b = start_broker(config_text=two_cert_config(certs.server_rsa, named),
                     listen=[f"127.0.0.1:{free_port()}",
                             f"mqtts://127.0.0.1:{free_port()}?tls=internal"], wait=False)
    assert exit_status(b) == 1
    if fault == "wrong":
        says = ('cannot start: keys: the key in tls.certificate "internal".key_file does not '
                f'match the certificate in tls.certificate "internal".cert_file {s.cert}')
    else:
        says = f'cannot start: keys: tls.certificate "internal".key_file {key}: No such file'
    assert says in b.log
    assert "tls.key_file" not in b.log


def test_named_only(start_broker, certs, internal):  # noqa: F811
    """Without tls { }'s own certificate, a TLS listener must name one."""
    text = two_cert_config(certs.server_rsa, internal.server_cert)
    text = "\n".join(line for line in text.splitlines()
                     if not line.startswith("    cert_file") and
                     not line.startswith("    key_file")) + "\n"
    port = free_port()
    b = start_broker(config_text=text, tls=KEY_ROLE,
                     listen=[f"127.0.0.1:{free_port()}", f"mqtts://127.0.0.1:{port}?tls=internal"])
    wait_presented(port, internal.ca_cert, internal.server_cert.serial)
    b2 = start_broker(config_text=text,
                      listen=[f"127.0.0.1:{free_port()}", f"mqtts://127.0.0.1:{free_port()}"],
                      wait=False)
    assert exit_status(b2) == 1
    assert "needs tls.cert_file and tls.key_file, or ?tls=name" in b2.log
