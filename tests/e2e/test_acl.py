"""The ACL file enforced end to end: the auth role reads it and hands it
to the router (a sealed memfd on their channel) and each client's view to
its worker (in the verdict). Real clients (raw, mosquitto_pub/sub, Paho),
the daemon with backend "none" (user names taken as given, loopback
clients) or "file" (a mosquitto_passwd file).

Paths: with workers=1 publisher and subscriber share the worker, whose
local delivery path serves a topic once the router answered its route
"local" (every target may read it); with workers=2 they are placed on two
workers (raw_on), so every message goes through the router.

What must not arrive is checked with a marker: a message that may
arrive, sent after it on the same path (the same connection, or the
router's order), so that once the marker is in, what was refused can no
longer be on its way."""

import os
import re
import signal
import subprocess

import pytest

from authfiles import auth_dir  # noqa: F401
from conftest import REPO
from helpers import T, PahoClient, proc_alive, raw, raw_on, uid, wait_for

HOSTILE = os.environ.get("IOTD_HOSTILE", str(REPO / "build" / "tests" / "hostile"))

pytestmark = pytest.mark.iotd_only

ACL = """\
# anonymous clients
topic read public/#
topic write public/marker

user pub
topic write sensors/#
topic write open/#
topic write acl/marker

user sub
topic read sensors/#
topic deny sensors/private/#
topic read open/#

user all
topic read #

pattern readwrite users/%u/#
pattern read clients/%c/#
"""


def acl_broker(start_broker, auth_dir, text=ACL, workers=2, **auth):
    path = auth_dir.file("acl", text)
    b = start_broker(workers=workers, auth={"acl_file": path, **auth})
    wait_for(lambda: "router: ACL in force" in b.log, T(5), "the router to take the ACL")
    return b, path


def pair(b, workers, sub_user="sub", pub_user="pub"):
    """A subscriber and a publisher: on the one worker, or on two."""
    s = raw(b, tag="sub", username=sub_user)
    if workers == 1:
        p = raw(b, tag="pub", username=pub_user)
    else:
        p = raw_on(b, avoid=b.worker_of(s), tag="pub", username=pub_user)
        b.assert_different_workers(s, p)
    return s, p


def topics(c, n, timeout=5):
    return [x.topic for x in c.recv_publishes(n, timeout=T(timeout))]


def until_marker(c, marker, timeout=5):
    """The topics c receives before the first PUBLISH on marker."""
    got = []
    while True:
        x = c.recv_publish(timeout=T(timeout))
        if x.topic == marker:
            return got
        got.append(x.topic)


def rounds(p, sub, names, n=5, qos=0):
    """n rounds of PUBLISHes to names, each ended by a PUBLISH to open/end
    (readable): what came before it arrived already, so nothing
    denied can still be on its way when the round's end is seen."""
    got = []
    for i in range(n):
        for t in names:
            p.publish(t, b"%d" % i, qos=qos, pid=1 if qos else None)
        p.publish("open/end", b"%d" % i, qos=qos, pid=1 if qos else None)
        while True:
            x = sub.recv_publish(timeout=T(5))
            if x.topic == "open/end":
                break
            got.append(x.topic)
    return got


@pytest.mark.parametrize("workers", [1, 2])
def test_read_and_deny_local_and_remote(start_broker, auth_dir, workers):
    """topic read sensors/# + topic deny sensors/private/#: a sensors/#
    subscriber gets sensors/a and never sensors/private/a, on the worker's
    local path (workers=1) and through the router (workers=2)."""
    b, _ = acl_broker(start_broker, auth_dir, workers=workers)
    s, p = pair(b, workers)
    with s, p:
        s.subscribe(["sensors/#", "open/#"])
        for qos in (0, 1):
            got = rounds(p, s, ["sensors/a", "sensors/private/a", "sensors/b"], qos=qos)
            assert got == ["sensors/a", "sensors/b"] * 5


def test_suback_0x80_next_to_granted(start_broker, auth_dir):
    b, _ = acl_broker(start_broker, auth_dir)
    with raw(b, tag="sub", username="sub") as s:
        codes = s.subscribe([("sensors/#", 1), ("secret/#", 1), ("open/x", 0),
                             ("sensors/private/#", 1)], expect_codes=False)
        assert codes == [1, 0x80, 0, 0x80]


@pytest.mark.parametrize("workers", [1, 2])
def test_denied_publish_acknowledged_not_delivered_retained_or_queued(start_broker, auth_dir,
                                                                     workers):
    """A PUBLISH its client may not write, at QoS 0, 1 and 2 (retained too):
    PUBACK, PUBREC/PUBCOMP as for any other, and nobody gets it, now, as
    retained, or queued for an offline session."""
    b, _ = acl_broker(start_broker, auth_dir, workers=workers)
    offline = uid("off")
    with raw(b, offline, tag="off", username="all", clean=False) as o:
        o.subscribe([("#", 1)])
    s, p = pair(b, workers, sub_user="all", pub_user="sub")
    with s, p:
        s.subscribe([("#", 2)])
        for qos in (0, 1, 2):
            p.publish("sensors/x", b"denied", qos=qos, retain=True, pid=qos or None)
        # sub may write none of it; users/sub/... is its own (pattern): a
        # marker, retained too, published after the denied ones.
        p.publish("users/sub/end", b"end", qos=1, retain=True, pid=7)
        assert until_marker(s, "users/sub/end") == []
    with raw(b, offline, tag="off", username="all", clean=False) as o:
        assert until_marker(o, "users/sub/end") == []
    # The retained marker is held (s got it, so the router took it): asked
    # for after sensors/#, it comes after whatever sensors/# has retained.
    with raw(b, tag="late", username="all") as late:
        late.subscribe(["sensors/#"])
        late.subscribe(["users/sub/end"], pid=2)
        assert until_marker(late, "users/sub/end") == []


def test_will_to_forbidden_topic_not_published(start_broker, auth_dir):
    """The refused will is decided (the router says so) before the allowed
    one is sent: the allowed one must be the first to arrive."""
    b, _ = acl_broker(start_broker, auth_dir)
    with raw(b, tag="all", username="all") as s:
        s.subscribe(["#"])
        c = raw(b, tag="will", username="w", will=("secret/will", b"gone", 0, False))
        c.close()                          # no DISCONNECT: the will goes, if allowed
        wait_for(lambda: "will on 'secret/will' not published" in b.log, T(5),
                 "the router to refuse the will")
        c = raw(b, tag="will", username="w", will=("users/w/will", b"gone", 0, False))
        c.close()
        assert until_marker(s, "users/w/will") == []


def test_patterns_user_and_client_id(start_broker, auth_dir):
    b, _ = acl_broker(start_broker, auth_dir)
    with raw(b, "cl1", username="alice") as a, raw(b, tag="bob", username="bob") as bob, \
            raw(b, tag="all", username="all") as watch:
        a.subscribe(["users/alice/#", "clients/cl1/#"])
        watch.subscribe(["users/#", "clients/#"])
        assert bob.subscribe(["users/alice/#", "users/bob/#"], expect_codes=False) == [0x80, 0]
        bob.publish("users/alice/x", b"no", qos=1)       # not bob's to write
        bob.publish("clients/cl1/x", b"no", qos=1)       # read-only pattern
        bob.publish("users/bob/end", b"marker", qos=1)   # his own
        assert until_marker(watch, "users/bob/end") == []
        a.publish("users/alice/y", b"yes", qos=1)
        # Also read by alice's own subscription (patterns), and nothing before it.
        assert until_marker(a, "users/alice/y") == []


@pytest.mark.parametrize("workers", [1, 2])
def test_patterns_on_the_local_path(start_broker, auth_dir, workers):
    """A publisher whose patterns allow fleet/%u/x and fleet/%c/s: its own
    topics arrive, another user's and another client id's never, on the
    worker's local path (workers=1: the worker substitutes the patterns it
    was sent once into the publisher's view) and through the router."""
    text = ACL + "pattern write fleet/%u/x\npattern write fleet/%c/s\npattern write fleet/%u/end\n"
    b, _ = acl_broker(start_broker, auth_dir, text=text, workers=workers)
    s = raw(b, tag="sub", username="all")
    if workers == 1:
        p = raw(b, "car7", username="fleet1")
    else:
        p = raw_on(b, cid="car7", avoid=b.worker_of(s), username="fleet1")
        b.assert_different_workers(s, p)
    with s, p:
        s.subscribe(["fleet/#"])
        for qos in (0, 1):
            for i in range(5):
                for t in ("fleet/other/x", "fleet/fleet1/x", "fleet/car8/s", "fleet/car7/s"):
                    p.publish(t, b"%d" % i, qos=qos, pid=1 if qos else None)
                p.publish("fleet/fleet1/end", b"%d" % i, qos=qos, pid=1 if qos else None)
                assert until_marker(s, "fleet/fleet1/end") == ["fleet/fleet1/x", "fleet/car7/s"]


def test_anonymous_section(start_broker, auth_dir):
    """Clients without a user name get the lines before the first user line."""
    b, _ = acl_broker(start_broker, auth_dir)
    with raw(b, tag="anon") as a, raw(b, tag="all", username="all") as w:
        assert a.subscribe(["public/#", "sensors/#"], expect_codes=False) == [0, 0x80]
        w.subscribe(["#"])
        a.publish("public/x", b"no", qos=1)             # read only
        a.publish("public/marker", b"marker", qos=1)    # the one it may write
        assert until_marker(w, "public/marker") == []


def test_anonymous_with_a_password_file(start_broker, auth_dir):
    """With backend "file" and allow_anonymous, the anonymous lines apply to
    clients without a user name; users get their own section."""
    pw = auth_dir.mosquitto_passwd("passwd", {"sub": "s-pw", "pub": "p-pw"})
    path = auth_dir.file("acl", ACL)
    b = start_broker(auth={"backend": "file", "password_file": pw, "acl_file": path,
                           "allow_anonymous": True}, probe_auth=("sub", "s-pw"))
    with raw(b, tag="anon") as a, raw(b, tag="sub", username="sub", password="s-pw") as s:
        assert a.subscribe(["public/#", "sensors/#"], expect_codes=False) == [0, 0x80]
        s.subscribe(["sensors/#"])
        r = subprocess.run(["mosquitto_pub", "-p", str(b.port), "-u", "pub", "-P", "p-pw",
                            "-t", "sensors/m", "-m", "hi", "-q", "1"], capture_output=True,
                           timeout=T(10))
        assert r.returncode == 0, r.stderr
        assert topics(s, 1) == ["sensors/m"]


def test_retained_only_where_readable(start_broker, auth_dir):
    b, _ = acl_broker(start_broker, auth_dir)
    with raw(b, tag="pub", username="pub") as p:
        p.publish("sensors/private/r", b"hidden", qos=1, retain=True)
        p.publish("sensors/r", b"shown", qos=1, retain=True)
        p.publish("open/rmark", b"marker", qos=1, retain=True)
    # Retained or live, what sensors/# gets comes before the marker.
    with raw(b, tag="sub", username="sub") as s:
        s.subscribe(["sensors/#"])
        s.subscribe(["open/rmark"], pid=2)
        assert until_marker(s, "open/rmark") == ["sensors/r"]
    with raw(b, tag="all", username="all") as a:
        a.subscribe(["sensors/#"])
        assert sorted(topics(a, 2)) == ["sensors/private/r", "sensors/r"]


def stale_seen(b):
    return b.log.count("the ACL changed:")


@pytest.mark.parametrize("workers", [1, 2])
def test_reload_applies_to_next_message_broken_file_changes_nothing(start_broker, auth_dir,
                                                                   workers):
    b, path = acl_broker(start_broker, auth_dir, workers=workers)
    s, p = pair(b, workers)
    with s, p:
        s.subscribe(["sensors/#", "open/#"])
        assert rounds(p, s, ["sensors/a", "sensors/private/a"], n=3) == ["sensors/a"] * 3
        # sensors/a denied now, sensors/private/a allowed.
        before = stale_seen(b)
        with open(path, "w") as f:
            f.write(ACL.replace("topic deny sensors/private/#", "topic deny sensors/a"))
        b.reload(expect="configuration reloaded")
        wait_for(lambda: stale_seen(b) >= before + workers, T(5),
                 "every worker to drop its connections' views")
        assert rounds(p, s, ["sensors/a", "sensors/private/a"], n=3) == \
            ["sensors/private/a"] * 3
        # A file that does not parse: the ACL in force stays.
        with open(path, "w") as f:
            f.write("topic bogus-access sensors/#\n")
        b.reload(expect="configuration reloaded")
        wait_for(lambda: "keeping the files in force" in b.log, T(5), "the refusal")
        assert rounds(p, s, ["sensors/a", "sensors/private/a"], n=3) == \
            ["sensors/private/a"] * 3


def kill(b, role):
    """kill -9 of the role's process, once it is dead; its old pid."""
    old = b.role_pid(role)
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: not proc_alive(old), T(5), f"the {role} to die")
    return old


def restarted(b, role, old):
    """Once a successor runs; the restart is deliberate, not a crash for the teardown."""
    wait_for(lambda: b.successor(role, old), T(10), f"a new {role}")
    b.initial_pids = set(b.pids())


def test_router_killed_enforcement_continues(start_broker, auth_dir):
    b, _ = acl_broker(start_broker, auth_dir)
    s, p = pair(b, 2)
    with s, p:
        s.subscribe(["sensors/#", "open/#"])
        taken = b.log.count("router: ACL in force")
        restarted(b, "router", kill(b, "router"))
        wait_for(lambda: b.log.count("router: ACL in force") > taken, T(10),
                 "the new router to take the ACL")
        assert rounds(p, s, ["sensors/a", "sensors/private/a"], n=3, qos=1) == \
            ["sensors/a"] * 3


def test_auth_killed_enforcement_continues(start_broker, auth_dir):
    b, _ = acl_broker(start_broker, auth_dir)
    s, p = pair(b, 2)
    with s, p:
        s.subscribe(["sensors/#", "open/#"])
        old = kill(b, "auth")
        assert rounds(p, s, ["sensors/a", "sensors/private/a"], n=2) == ["sensors/a"] * 2
        restarted(b, "auth", old)
        with raw(b, tag="sub2", username="sub") as s2:
            assert s2.subscribe(["sensors/#", "secret/#"], expect_codes=False) == [0, 0x80]
        assert rounds(p, s, ["sensors/a", "sensors/private/a"], n=2) == ["sensors/a"] * 2


def test_paho_and_mosquitto_pub(start_broker, auth_dir):
    """A Paho subscriber as "sub" (SUBACK 0x80 for what it may not read),
    mosquitto_pub as "pub": sensors/a arrives, sensors/private/a never."""
    b, _ = acl_broker(start_broker, auth_dir)
    s = PahoClient(b.port, uid("paho"), username="sub")
    s.connect()
    try:
        assert s.subscribe("secret/#", 1) == [0x80]
        assert s.subscribe("sensors/#", 1) == [1]
        for topic in ("sensors/private/a", "sensors/a"):
            r = subprocess.run(["mosquitto_pub", "-p", str(b.port), "-u", "pub", "-t", topic,
                                "-m", "m", "-q", "1"], capture_output=True, timeout=T(10))
            assert r.returncode == 0, r.stderr
        s.wait_messages(1)
        with raw(b, tag="end", username="pub") as p:
            p.publish("sensors/end", b"", qos=1)
        s.wait_messages(2)
        assert [t for t, _ in s.payloads()] == ["sensors/a", "sensors/end"]
    finally:
        s.close()


@pytest.mark.skipif(os.geteuid() != 0 or not os.access(HOSTILE, os.X_OK),
                    reason=f"needs root and {HOSTILE} (/proc/PID/mem of a worker)")
def test_router_refuses_a_publish_record_the_worker_did_not(start_broker, auth_dir):
    """A compromised worker skips its own check: tests/hostile writes
    PUBLISH records on acl/denied (pub may not write it) then acl/marker
    (it may) for the sessions it holds. The router refuses the first: a
    subscriber on the other worker gets the marker and nothing before it."""
    b, _ = acl_broker(start_broker, auth_dir)
    victim = raw(b, tag="victim", username="pub")
    w = b.worker_of(victim)
    with raw_on(b, avoid=w, tag="sub", username="all") as s:
        s.subscribe(["acl/#"])
        out = subprocess.run([HOSTILE, "acl", "publish", str(w)], capture_output=True,
                             text=True, timeout=T(60))
        assert out.returncode == 0, out.stdout + out.stderr
        assert until_marker(s, "acl/marker") == []
    victim.close()
    # The tool killed the worker it played: its successor is not a crash.
    wait_for(lambda: w not in b.worker_pids() and len(b.worker_pids()) == 2, T(10),
             "the worker's successor")
    b.initial_pids = set(b.pids())


IPC_MAX_PAYLOAD = 200 * 1024          # include/ipc.h: the most one control message carries


def test_a_thousand_rule_acl(start_broker, auth_dir):
    """Thousands of users with a rule each (and the file's own rules),
    encoded larger than a control message can carry: the router gets the
    whole ACL (a sealed memfd) and the last user's rule holds."""
    n = 6000
    text = ACL + "".join(f"user u{i}\ntopic readwrite u/{i}/a-level-that-weighs-the-rule/#\n"
                         for i in range(n))
    b, _ = acl_broker(start_broker, auth_dir, text=text)
    size = int(re.search(r"router: ACL in force \((\d+) bytes\)", b.log).group(1))
    assert size > IPC_MAX_PAYLOAD, f"the ACL encodes to {size} bytes only"
    last = f"u/{n - 1}/a-level-that-weighs-the-rule"
    with raw(b, tag="last", username=f"u{n - 1}") as c:
        assert c.subscribe([last + "/#", "u/0/a-level-that-weighs-the-rule/#"],
                           expect_codes=False) == [0, 0x80]
        c.publish(last + "/x", b"mine", qos=1)
        assert topics(c, 1) == [last + "/x"]

