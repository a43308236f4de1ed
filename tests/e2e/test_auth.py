"""Authentication with a password file (auth.backend = "file"): files made
by Debian's mosquitto_passwd ($7$ and -H sha512) and by iotd-passwd, real
clients (mosquitto_pub/sub, Paho, raw), every CONNACK code, the refusal's
log line, reload with a good and a broken file, and start-up checks."""

import os
import re
import signal
import subprocess
import time

import pytest

import authfiles
from authfiles import AuthDir, auth_dir, mosquitto_passwd_has_sha512, refusals  # noqa: F401
from conftest import IOTD_BIN, REPO
from helpers import T, raw, uid, wait_for

pytestmark = pytest.mark.iotd_only

USERS = {"alice": "alice-pw", "bob": "bob pw with spaces"}


def file_broker(start_broker, path, **auth):
    return authfiles.file_broker(start_broker, path, "alice", USERS["alice"], **auth)


def pub(broker, user=None, password=None, topic="auth/t", msg="x"):
    """mosquitto_pub's exit status and its error output."""
    argv = ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-i", uid("mpub"),
            "-t", topic, "-m", msg, "-q", "1"]
    if user is not None:
        argv += ["-u", user]
    if password is not None:
        argv += ["-P", password]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=T(10))
    return r.returncode, r.stderr


def connack(broker, user=None, password=None):
    with raw(broker, tag="auth", expect_rc=None, username=user, password=password) as c:
        return c.connack.rc


def test_mosquitto_passwd_and_iotd_passwd_files(start_broker, auth_dir, clients):
    """One file with a $7$ line (mosquitto_passwd's default), a $6$ line
    (-H sha512) and an Argon2id line (iotd-passwd): each user connects with
    its own password, through mosquitto_pub, Paho and a raw client."""
    path = auth_dir.mosquitto_passwd("passwd", {"alice": USERS["alice"]})
    if mosquitto_passwd_has_sha512():
        auth_dir.mosquitto_passwd("passwd", {"bob": USERS["bob"]}, hash_kind="sha512",
                                  create=False)
    else:
        auth_dir.iotd_passwd("passwd", {"bob": USERS["bob"]}, create=False)
    auth_dir.iotd_passwd("passwd", {"carol": "carol-pw"}, create=False)
    text = open(path).read()
    assert "alice:$7$" in text and "carol:$argon2id$" in text
    b = file_broker(start_broker, path)
    for user, password in [("alice", USERS["alice"]), ("bob", USERS["bob"]),
                           ("carol", "carol-pw")]:
        rc, err = pub(b, user, password)
        assert rc == 0, f"{user}: mosquitto_pub failed: {err}"
        assert connack(b, user, password) == 0
        p = clients.paho(b.port, uid("paho"), username=user, password=password)
        p.connect(expect_rc=0)
        p.publish("auth/paho", "x", qos=1)


def test_sub_and_pub_with_passwords(start_broker, auth_dir):
    """mosquitto_sub and mosquitto_pub, each with its user and password, exchange a message."""
    path = auth_dir.mosquitto_passwd("passwd", USERS)
    b = file_broker(start_broker, path)
    sub = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(b.port),
                            "-u", "bob", "-P", USERS["bob"], "-t", "auth/sub", "-C", "1",
                            "-W", str(int(T(10)))], stdout=subprocess.PIPE, text=True)
    try:
        # Published until the subscriber has its subscription (it exits after one message).
        deadline = time.monotonic() + T(10)
        while sub.poll() is None and time.monotonic() < deadline:
            rc, err = pub(b, "alice", USERS["alice"], topic="auth/sub", msg="hello")
            assert rc == 0, err
            try:
                sub.wait(0.2)
            except subprocess.TimeoutExpired:
                pass
        out, _ = sub.communicate(timeout=T(5))
    finally:
        if sub.poll() is None:
            sub.kill()
    assert out.strip() == "hello"


def test_every_connack_code(start_broker, auth_dir):
    path = auth_dir.mosquitto_passwd("passwd", USERS)
    b = file_broker(start_broker, path)
    assert connack(b, "alice", USERS["alice"]) == 0
    assert connack(b, "alice", "wrong") == 4
    assert connack(b, "nobody-here", "x") == 4
    assert connack(b, "alice") == 4                    # a user name without a password
    assert connack(b) == 5                             # anonymous, with a backend
    rc, err = pub(b, "alice", "wrong")
    assert rc != 0 and "bad user name or password" in err
    rc, err = pub(b)
    assert rc != 0 and "not authori" in err


def test_allow_anonymous(start_broker, auth_dir):
    path = auth_dir.mosquitto_passwd("passwd", USERS)
    b = file_broker(start_broker, path, allow_anonymous=True)
    assert connack(b) == 0
    assert connack(b, "alice", USERS["alice"]) == 0
    assert connack(b, "alice", "wrong") == 4           # a user name is still checked


def test_refusal_log_line(start_broker, auth_dir):
    """One line per refusal, at a level shown by default, with REMOTE= (the
    address without its port, before anything the client chose) and the
    user name; never the password."""
    path = auth_dir.mosquitto_passwd("passwd", USERS)
    b = file_broker(start_broker, path)
    before = len(refusals(b))
    assert connack(b, "mallory", "secret-guess-1") == 4
    lines = wait_for(lambda: refusals(b)[before:], 5, "the refusal's log line")
    assert len(lines) == 1
    m = lines[0]
    assert (m["host"], m["user"], m["code"]) == ("127.0.0.1", "mallory", "4")
    line = next(l for l in b.log.splitlines() if 'USER="mallory"' in l)
    assert ": auth: warn: refused REMOTE=127.0.0.1 " in line
    assert "secret-guess-1" not in b.log
    # The README's fail2ban filter finds the address (<HOST> as fail2ban reads an IPv4 one).
    readme = (REPO / "README.md").read_text()
    failregex = re.search(r"^    failregex = (.*)$", readme, re.M).group(1)
    m = re.match(failregex.replace("<HOST>", r"(?P<host>\d+\.\d+\.\d+\.\d+)"), line)
    assert m and m["host"] == "127.0.0.1"


def test_reload_good_and_broken_password_file(start_broker, auth_dir):
    """SIGHUP reads the file again: a changed password applies to the next
    CONNECT; a file that does not parse changes nothing and is logged."""
    path = auth_dir.mosquitto_passwd("passwd", USERS)
    b = file_broker(start_broker, path)
    assert connack(b, "alice", USERS["alice"]) == 0
    # A new file renamed over the old one, as iotd-passwd and editors do: a new inode.
    new = auth_dir.mosquitto_passwd("passwd.new", {"alice": "new-pw", "bob": USERS["bob"]})
    os.replace(new, path)
    done = b.log.count("reload: files read again")
    b.send_signal(signal.SIGHUP)
    wait_for(lambda: b.log.count("reload: files read again") > done, 10,
             "the auth role to read its files again")
    assert connack(b, "alice", "new-pw") == 0
    assert connack(b, "alice", USERS["alice"]) == 4
    auth_dir.file("passwd", open(path).read() + "this line is no entry\n")
    kept = b.log.count("keeping the files in force")
    b.send_signal(signal.SIGHUP)
    wait_for(lambda: b.log.count("keeping the files in force") > kept, 10,
             "the auth role to refuse the broken file")
    assert "line 3" in b.log.split("keeping the files in force")[-2].splitlines()[-1]
    assert connack(b, "alice", "new-pw") == 0


def test_reload_to_another_file_replaces_the_auth_role(start_broker, auth_dir):
    """A reload naming another password file starts a new auth role shut in
    the new file's directory; one naming a broken file fails as a whole."""
    path = auth_dir.mosquitto_passwd("passwd", USERS)
    b = file_broker(start_broker, path)
    old = b.role_pid("auth")
    other = AuthDir()
    try:
        new = other.mosquitto_passwd("other", {"dave": "dave-pw"})
        broken = other.file("broken", "not a password file\n")
        line = b.reload(auth={"backend": "file", "password_file": broken},
                        expect="reload failed")
        assert "broken" in line and "line 1" in line
        assert b.role_pid("auth") == old
        b.reload(auth={"backend": "file", "password_file": new})
        wait_for(lambda: b.successor("auth", old), 10, "a new auth role")
        assert wait_for(lambda: connack(b, "dave", "dave-pw") == 0, 10, "dave accepted")
        assert connack(b, "alice", USERS["alice"]) == 4
        b.initial_pids = set(b.pids())
    finally:
        other.remove()


def run_iotd(*args):
    return subprocess.run([IOTD_BIN, *args], capture_output=True, text=True, timeout=T(10))


def test_config_checks(auth_dir):
    """The backend's file is required, and read (and refused when broken) at start and by -t."""
    conf = auth_dir.file("a.conf", 'auth { backend = "file" }\n')
    r = run_iotd("-t", "-c", conf)
    assert r.returncode == 1 and "backend 'file' needs password_file" in r.stderr
    conf = auth_dir.file("b.conf", 'auth { backend = "jwt" }\n')
    r = run_iotd("-t", "-c", conf)
    assert r.returncode == 1 and "backend 'jwt' needs jwt_key_file" in r.stderr
    broken = auth_dir.file("passwd", "alice:$7$nonsense\n")
    conf = auth_dir.file("c.conf", f'auth {{ backend = "file"\n password_file = "{broken}" }}\n')
    r = run_iotd("-t", "-c", conf)
    assert r.returncode == 1 and broken in r.stderr and "line 1" in r.stderr
    conf = auth_dir.file("d.conf", 'auth { enabled = true }\n')
    r = run_iotd("-t", "-c", conf)
    assert r.returncode == 1 and "enabled is true but backend is 'none'" in r.stderr
    good = auth_dir.mosquitto_passwd("good", USERS)
    conf = auth_dir.file("e.conf", f'auth {{ enabled = true\n backend = "file"\n'
                                   f' password_file = "{good}" }}\n')
    r = run_iotd("-t", "-c", conf)
    assert r.returncode == 0, r.stderr
