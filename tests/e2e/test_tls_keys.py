"""The key role (`iotd: keys`): with a tls section it runs, as the
children's user, without capabilities, under its seccomp filter; killed,
it is restarted; a key that does not match its certificate, or a
certificate without its key, stops the daemon's start with a clear error,
and `iotd -t` says so too; SIGHUP has it read its files again as a
transaction; without a tls section there is no key role."""

import os
import signal
import subprocess
import time

import pytest

from authfiles import AuthDir
from conftest import IOTD_BIN
from helpers import T, children_uid, proc_status, proc_title, wait_for

pytestmark = pytest.mark.iotd_only


@pytest.fixture
def tls_dir():
    d = AuthDir()
    yield d
    d.remove()


def make_cert(d, name, kind="rsa"):
    """A self-signed certificate and its key (RSA-2048 or P-256), made by openssl."""
    key, cert = str(d.path / f"{name}.key"), str(d.path / f"{name}.pem")
    algo = ["-newkey", "rsa:2048"] if kind == "rsa" else \
        ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
    subprocess.run(["openssl", "req", "-x509", "-nodes", "-days", "1", "-subj", "/CN=iotd-e2e",
                    "-keyout", key, "-out", cert] + algo, check=True, capture_output=True,
                   timeout=60)
    # The key role reads it as the children's user.
    os.chmod(key, 0o644)
    os.chmod(cert, 0o644)
    return cert, key


def exit_status(b, timeout=10):
    """The daemon's exit status once it stopped by itself."""
    b.returncode = b.proc.wait(T(timeout))
    b.stopped = True
    return b.returncode


@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_keys_role_runs_confined(start_broker, tls_dir, kind):
    cert, key = make_cert(tls_dir, "server", kind)
    b = start_broker(tls={"cert_file": cert, "key_file": key})
    pid = b.role_pid("keys")
    assert pid is not None, "no iotd: keys process"
    assert proc_title(pid) == "iotd: keys"
    st = proc_status(pid)
    uid = children_uid()
    if uid is not None:
        assert st["Uid"].split() == [str(uid)] * 4
    for field in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
        assert int(st[field], 16) == 0, f"{field} {st[field]}"
    assert st["NoNewPrivs"] == "1"
    if not b.instrumented:
        assert st["Seccomp"] == "2"
    # No shared memory: it holds nothing another process writes.
    with open(f"/proc/{pid}/maps") as f:
        assert "iotd-shm" not in f.read()


def test_keys_role_restarted(start_broker, tls_dir):
    cert, key = make_cert(tls_dir, "server")
    b = start_broker(tls={"cert_file": cert, "key_file": key})
    old = b.role_pid("keys")
    os.kill(old, signal.SIGKILL)
    new = wait_for(lambda: b.successor("keys", old), 10, "the key role's successor")
    wait_for(lambda: "keys is back" in b.log, 10, "the key role back")
    assert "keys killed by signal 9" in b.log
    assert new != old
    b.initial_pids = set(b.pids())


def test_wrong_key_refuses_start(start_broker, tls_dir):
    cert, _ = make_cert(tls_dir, "server")
    _, other = make_cert(tls_dir, "other")
    b = start_broker(tls={"cert_file": cert, "key_file": other}, wait=False)
    assert exit_status(b) == 1
    assert "cannot start: keys: the key in tls.key_file does not match the certificate" in b.log


def test_ed25519_key_refuses_start(start_broker, tls_dir):
    """A key the workers cannot stand in for stops the start, saying what
    to use, rather than every handshake failing."""
    key, cert = str(tls_dir.path / "ed.key"), str(tls_dir.path / "ed.pem")
    subprocess.run(["openssl", "req", "-x509", "-nodes", "-days", "1", "-subj", "/CN=iotd-e2e",
                    "-newkey", "ed25519", "-keyout", key, "-out", cert], check=True,
                   capture_output=True, timeout=60)
    os.chmod(key, 0o644)
    b = start_broker(tls={"cert_file": cert, "key_file": key}, wait=False)
    assert exit_status(b) == 1
    assert "cannot start: keys: tls.key_file " + key + ": an Ed25519 key, which iotd cannot " \
        "serve yet: use RSA (2048 bits or more) or EC (P-256, P-384)" in b.log, b.log


def test_unreadable_key_refuses_start(start_broker, tls_dir):
    cert, _ = make_cert(tls_dir, "server")
    b = start_broker(tls={"cert_file": cert, "key_file": str(tls_dir.path / "missing.key")},
                     wait=False)
    assert exit_status(b) == 1
    assert "cannot start: keys: tls.key_file" in b.log


def test_cert_without_key_refused(start_broker, tls_dir):
    cert, _ = make_cert(tls_dir, "server")
    b = start_broker(tls={"cert_file": cert}, wait=False)
    assert exit_status(b) == 1
    assert "cert_file needs key_file" in b.log


def test_no_keys_role_without_tls(broker):
    assert broker.role_pid("keys") is None
    assert not any(proc_title(p) == "iotd: keys" for p in broker.pids())


def test_reload_reads_files_again(start_broker, tls_dir):
    """SIGHUP: the key role reads its files again in place (certificate
    renewal); a key that does not match changes nothing. Either way it
    stays the same process."""
    cert, key = make_cert(tls_dir, "server")
    b = start_broker(tls={"cert_file": cert, "key_file": key})
    pid = b.role_pid("keys")
    new_cert, new_key = make_cert(tls_dir, "renewed", "ec")
    os.replace(new_cert, cert)
    os.replace(new_key, key)
    b.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload: keys and certificate chains read again" in b.log, 10,
             "the key role's reload")
    _, other = make_cert(tls_dir, "other")
    os.replace(other, key)
    b.send_signal(signal.SIGHUP)
    wait_for(lambda: "does not match the certificate in tls.cert_file" in b.log and
             "keeping every key and certificate in force" in b.log, 10, "the refused reload")
    assert b.role_pid("keys") == pid


def test_check_only(tls_dir, tmp_path):
    """iotd -t loads the key role's files too: a key that does not match
    its certificate is an error, a matching one is valid."""
    cert, key = make_cert(tls_dir, "server")
    _, other = make_cert(tls_dir, "other")
    conf = tmp_path / "t.conf"
    for key_file, rc, says in ((other, 1, "does not match the certificate"),
                               (key, 0, "is valid")):
        conf.write_text(f'tls {{\n    cert_file = "{cert}"\n    key_file = "{key_file}"\n}}\n')
        p = subprocess.run([IOTD_BIN, "-t", "-c", str(conf)], capture_output=True, text=True,
                           timeout=T(30))
        assert p.returncode == rc, p.stderr
        assert says in p.stdout + p.stderr


def test_restart_with_bad_files_backs_off(start_broker, tls_dir):
    """A key role restarted after the daemon's start that cannot use its
    files says why, exits and is restarted with backoff (the daemon
    serves on); once the files are fixed, it is back."""
    cert, key = make_cert(tls_dir, "server")
    b = start_broker(tls={"cert_file": cert, "key_file": key})
    good = (tls_dir.path / "server.key").read_bytes()
    _, other = make_cert(tls_dir, "other")
    os.replace(other, key)
    old = b.role_pid("keys")
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: b.log.count("keys exited with status 1") >= 2, 10,
             "the key role failing again")
    assert "keys: the key in tls.key_file does not match the certificate" in b.log
    assert "cannot start" not in b.log
    assert b.proc.poll() is None
    tmp = tls_dir.path / "fixed.key"
    tmp.write_bytes(good)
    os.chmod(tmp, 0o644)
    os.replace(tmp, key)
    wait_for(lambda: "keys is back" in b.log, 15, "the key role back")
    b.initial_pids = set(b.pids())
