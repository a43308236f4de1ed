"""The secure default: without an auth backend only loopback clients are
served; a client from another address gets CONNACK 5 unless
auth.allow_anonymous. The other address is a veth pair into a network
namespace the test creates and removes (root only); the client runs in
the namespace (mosquitto_pub), the daemon outside it."""

import os
import subprocess

import pytest

from authfiles import AuthDir, refusals
from conftest import free_port
from helpers import T, raw, uid

pytestmark = [pytest.mark.iotd_only,
              pytest.mark.skipif(os.geteuid() != 0, reason="a network namespace needs root")]


def ip(*args):
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def netns():
    """(namespace, daemon-side address, client-side address) of a fresh veth pair."""
    n = os.getpid() % 250 + 1
    name, host_if, ns_if = f"iotd-e2e-{os.getpid()}", f"ie{os.getpid()}h", f"ie{os.getpid()}n"
    here, there = f"10.213.{n}.1", f"10.213.{n}.2"
    ip("netns", "add", name)
    try:
        ip("link", "add", host_if[:15], "type", "veth", "peer", "name", ns_if[:15])
        ip("link", "set", ns_if[:15], "netns", name)
        ip("addr", "add", f"{here}/30", "dev", host_if[:15])
        ip("link", "set", host_if[:15], "up")
        ip("-n", name, "addr", "add", f"{there}/30", "dev", ns_if[:15])
        ip("-n", name, "link", "set", ns_if[:15], "up")
        ip("-n", name, "link", "set", "lo", "up")
        yield name, here, there
    finally:
        subprocess.run(["ip", "link", "del", host_if[:15]], capture_output=True, timeout=10)
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


def pub_from(ns, host, port, *extra):
    r = subprocess.run(["ip", "netns", "exec", ns, "mosquitto_pub", "-h", host, "-p", str(port),
                        "-i", uid("far"), "-t", "far/t", "-m", "x", *extra],
                       capture_output=True, text=True, timeout=T(10))
    return r.returncode, r.stderr


def broker_on_both(start_broker, here, **opts):
    port = free_port()
    far = free_port(here)
    return start_broker(listen=[f"127.0.0.1:{port}", f"{here}:{far}"], **opts), far


def test_only_loopback_clients_by_default(start_broker, netns):
    ns, here, there = netns
    b, far = broker_on_both(start_broker, here)
    assert "authentication: none; only loopback clients are served" in b.log
    with raw(b, tag="near") as c:
        assert c.connack.rc == 0
    rc, err = pub_from(ns, here, far)
    assert rc != 0 and "not authori" in err
    m = refusals(b)[-1]
    assert (m["host"], m["code"]) == (there, "5")


def test_allow_anonymous_serves_every_address(start_broker, netns):
    ns, here, there = netns
    b, far = broker_on_both(start_broker, here, auth={"allow_anonymous": True})
    assert "clients from any address are served" in b.log
    rc, err = pub_from(ns, here, far)
    assert rc == 0, err


def test_a_backend_serves_every_address_that_authenticates(start_broker, netns):
    ns, here, there = netns
    d = AuthDir()
    try:
        path = d.mosquitto_passwd("passwd", {"alice": "alice-pw"})
        b, far = broker_on_both(start_broker, here, probe_auth=("alice", "alice-pw"),
                                auth={"backend": "file", "password_file": path})
        rc, err = pub_from(ns, here, far, "-u", "alice", "-P", "alice-pw")
        assert rc == 0, err
        rc, err = pub_from(ns, here, far, "-u", "alice", "-P", "wrong")
        assert rc != 0 and "bad user name or password" in err
        assert refusals(b)[-1]["host"] == there
    finally:
        d.remove()
