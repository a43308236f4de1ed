"""The ACL file enforced end to end: the auth role reads it and hands it
to the router (a sealed memfd on their channel) and each client's view to
its worker (in the verdict). Real clients (raw, mosquitto_pub/sub, Paho),
the daemon with backend "none" (user names taken as given, loopback
clients) or "file" (a mosquitto_passwd file).

Paths: with workers=1 publisher and subscriber share the worker, whose
local delivery path serves a topic once the router answered its route
"local" (every target may read it); with workers=2 they are placed on two
workers (raw_on), so every message goes through the router."""

import os
import signal
import subprocess

import pytest

from authfiles import auth_dir  # noqa: F401
from helpers import T, PahoClient, proc_alive, raw, raw_on, uid, wait_for

pytestmark = pytest.mark.iotd_only

ACL = """\
# anonymous clients
topic read public/#

user pub
topic write sensors/#
topic write open/#

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
        # sub may write none of it; users/sub/... is its own (pattern): a marker.
        p.publish("users/sub/end", b"end", qos=1, pid=7)
        x = s.recv_publish(timeout=T(5))
        assert x.topic == "users/sub/end"
        s.expect_no_packet(0.3)
    with raw(b, offline, tag="off", username="all", clean=False) as o:
        x = o.recv_publish(timeout=T(5))
        assert x.topic == "users/sub/end"
        o.expect_no_packet(0.3)
    with raw(b, tag="late", username="all") as late:
        late.subscribe(["sensors/#"])
        late.expect_no_packet(0.5)


def test_will_to_forbidden_topic_not_published(start_broker, auth_dir):
    b, _ = acl_broker(start_broker, auth_dir)
    with raw(b, tag="all", username="all") as s:
        s.subscribe(["#"])
        for topic in ("secret/will", "users/w/will"):
            c = raw(b, tag="will", username="w", will=(topic, b"gone", 0, False))
            c.close()                      # no DISCONNECT: the will goes, if allowed
        x = s.recv_publish(timeout=T(5))
        assert x.topic == "users/w/will"
        s.expect_no_packet(0.3)


def test_patterns_user_and_client_id(start_broker, auth_dir):
    b, _ = acl_broker(start_broker, auth_dir)
    with raw(b, "cl1", username="alice") as a, raw(b, tag="bob", username="bob") as bob:
        a.subscribe(["users/alice/#", "clients/cl1/#"])
        assert bob.subscribe(["users/alice/#", "users/bob/#"], expect_codes=False) == [0x80, 0]
        bob.publish("users/alice/x", b"no", qos=1)       # not bob's to write
        bob.publish("clients/cl1/x", b"no", qos=1)       # read-only pattern
        a.publish("users/alice/y", b"yes", qos=1)
        assert topics(a, 1) == ["users/alice/y"]
        a.expect_no_packet(0.3)


def test_anonymous_section(start_broker, auth_dir):
    """Clients without a user name get the lines before the first user line."""
    b, _ = acl_broker(start_broker, auth_dir)
    with raw(b, tag="anon") as a, raw(b, tag="all", username="all") as w:
        assert a.subscribe(["public/#", "sensors/#"], expect_codes=False) == [0, 0x80]
        a.publish("public/x", b"no", qos=1)             # read only
        w.subscribe(["#"])
        a.publish("public/y", b"no", qos=1)
        w.expect_no_packet(0.3)


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
    with raw(b, tag="sub", username="sub") as s:
        s.subscribe(["sensors/#"])
        assert topics(s, 1) == ["sensors/r"]
        s.expect_no_packet(0.3)
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


def test_a_thousand_rule_acl(start_broker, auth_dir):
    """1,000 users with a rule each (and the file's own rules): the router
    gets the whole ACL (a memfd, not bounded by a control message) and the
    last user's rule holds."""
    text = ACL + "".join(f"user u{i}\ntopic readwrite u/{i}/#\n" for i in range(1000))
    b, _ = acl_broker(start_broker, auth_dir, text=text)
    with raw(b, tag="u999", username="u999") as c:
        assert c.subscribe(["u/999/#", "u/998/#"], expect_codes=False) == [0, 0x80]
        c.publish("u/999/x", b"mine", qos=1)
        assert topics(c, 1) == ["u/999/x"]

