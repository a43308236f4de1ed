"""
What each iotd process may still do, read from /proc/PID/status and proved
by making a confined process try what it must not (docs/arch.md,
"Privileges"):

* started as root: the supervisor keeps uid 0 and exactly the capabilities
  it still uses (effective, permitted and bounding sets); every child runs
  as server.user with all four uids, no capability in any set (bounding
  included), no_new_privs and a seccomp filter; the listener and the
  workers are chrooted to a removed directory;
* started unprivileged (setpriv to nobody when the tests run as root): the
  supervisor has no capability and no filter, every child has
  no_new_privs and its seccomp filter, and the router keeps its state
  across its own kill -9 under them;
* the router, under Landlock, can open its store's files and nothing else
  (an open(2) it is made to call through gdb fails with EACCES); a worker
  that calls open(2) is killed by its filter (SIGSYS), which the
  supervisor logs, and its successor is confined again.

A daemon built with AddressSanitizer (or run under valgrind) is left
unconfined by design: the seccomp, chroot and Landlock checks are skipped
for it, the identity and capability checks are not.
"""

import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile

import pytest

from authfiles import AuthDir
from conftest import IOTD_BIN
from helpers import T, proc_title, wait_for
from helpers import proc_status as status

pytestmark = pytest.mark.iotd_only

# include/linux/capability.h
CAP_KILL, CAP_SETGID, CAP_SETUID, CAP_SETPCAP = 5, 6, 7, 8
CAP_NET_BIND_SERVICE, CAP_SYS_CHROOT, CAP_SYS_PTRACE = 10, 18, 19

NOBODY = pwd.getpwnam("nobody")
AS_NOBODY = ["setpriv", f"--reuid={NOBODY.pw_uid}", f"--regid={NOBODY.pw_gid}",
             "--clear-groups"]


@pytest.fixture(scope="module")
def unprivileged():
    """Broker options that start the daemon as nobody when the tests run as
    root (as themselves otherwise). nobody may not reach build/iotd (a
    checkout under a private home): then it runs a copy in a directory of
    its own, which the copy's libraries do not mind."""
    if os.geteuid() != 0:
        yield {"use_config": False}
        return
    opts = {"use_config": False, "wrapper": AS_NOBODY}
    if subprocess.run(AS_NOBODY + ["test", "-x", IOTD_BIN]).returncode == 0:
        yield opts
        return
    d = tempfile.mkdtemp(prefix="iotd-confinement-")
    try:
        os.chmod(d, 0o755)
        shutil.copy2(IOTD_BIN, f"{d}/iotd")
        yield {**opts, "binary": f"{d}/iotd"}
    finally:
        shutil.rmtree(d)


def caps(st, field):
    return int(st[field], 16)


def bits(*caps_):
    return sum(1 << c for c in caps_)


def children(broker):
    """{'router': pid, 'listener': pid, 'worker 0': pid, ...}"""
    out = {proc_title(p).removeprefix("iotd: "): p for p in broker.pids()[1:]}
    assert len(out) == 2 + broker.workers, f"daemon children: {out}"
    return out


def successor(broker, role, old):
    """The pid of the process that replaced `old` in `role`, once there is one."""
    return wait_for(lambda: next((p for p in broker.pids()[1:] if p != old and
                                  proc_title(p) == f"iotd: {role}"), None),
                    10, f"a new {role}")


def confining(broker):
    """False for a sanitizer build or a run under valgrind: iotd then keeps
    its children out of chroot, Landlock and seccomp (privsep.h)."""
    if broker.instrumented:
        assert "no chroot, Landlock or seccomp for the children" in broker.log
        return False
    return True


def landlock(broker):
    m = re.search(r"children confined: (.*)", broker.log)
    assert m, "the supervisor's log line about the children's confinement"
    return "Landlock" in m.group(1)


def store_dir(broker):
    m = wait_for(lambda: re.findall(r"router: serving \d+ workers \(store (\S+)\)", broker.log),
                 5, "the router's log line naming its store")
    return m[-1]


def assert_child_dropped(name, st, uid, gid, confined):
    assert st["Uid"].split() == [str(uid)] * 4, f"{name}: Uid {st['Uid']}"
    assert st["Gid"].split() == [str(gid)] * 4, f"{name}: Gid {st['Gid']}"
    for field in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
        assert caps(st, field) == 0, f"{name}: {field} {st[field]}, expected no capability"
    assert st["NoNewPrivs"] == "1", f"{name}: NoNewPrivs {st['NoNewPrivs']}"
    if confined:
        assert st["Seccomp"] == "2", f"{name}: Seccomp {st['Seccomp']}, expected a filter (2)"


def test_started_as_root(start_broker):
    if os.geteuid() != 0:
        pytest.skip("the daemon drops its user only when started as root")
    b = start_broker(user="nobody")
    confined = confining(b)
    own_bounding = caps(status(os.getpid()), "CapBnd")
    keep = bits(CAP_KILL, CAP_SETGID, CAP_SETUID, CAP_SETPCAP, CAP_NET_BIND_SERVICE,
                CAP_SYS_PTRACE) | (bits(CAP_SYS_CHROOT) if confined else 0)
    sup = status(b.proc.pid)
    assert sup["Uid"].split() == ["0"] * 4
    for field in ("CapPrm", "CapEff", "CapBnd"):
        assert caps(sup, field) == keep & own_bounding, \
            f"supervisor {field} {sup[field]}, expected {keep & own_bounding:016x}"
    assert caps(sup, "CapInh") == 0 and caps(sup, "CapAmb") == 0
    for name, pid in children(b).items():
        st = status(pid)
        assert_child_dropped(name, st, NOBODY.pw_uid, NOBODY.pw_gid, confined)
        assert st["Groups"] == "", f"{name}: Groups {st['Groups']}"
        assert caps(st, "CapBnd") == 0, f"{name}: CapBnd {st['CapBnd']}, expected empty"
        root = os.readlink(f"/proc/{pid}/root")
        if confined and name != "router":
            assert root.endswith("(deleted)"), f"{name}: root {root!r}, expected the removed dir"
        else:
            assert root == "/", f"{name}: root {root!r}"


def retained_round_trip(b, topic, payload):
    """Subscribe and read the one retained message of topic."""
    out = subprocess.run(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(b.port), "-t", topic,
                          "-C", "1", "-W", str(int(T(5)) + 1)],
                         capture_output=True, text=True, timeout=T(10))
    assert out.stdout.strip() == payload, f"retained {topic}: {out.stdout!r} {out.stderr!r}"


def test_started_unprivileged(start_broker, unprivileged):
    """No configuration file: the daemon, as nobody, reads nothing of the test's."""
    b = start_broker(**unprivileged)
    confined = confining(b)
    me = NOBODY if os.geteuid() == 0 else pwd.getpwuid(os.geteuid())
    sup = status(b.proc.pid)
    assert sup["Uid"].split() == [str(me.pw_uid)] * 4
    assert caps(sup, "CapPrm") == 0 and caps(sup, "CapEff") == 0
    assert sup["Seccomp"] == "0", "the supervisor has no filter of its own"
    for name, pid in children(b).items():
        st = status(pid)
        assert_child_dropped(name, st, me.pw_uid, me.pw_gid, confined)
        # Without CAP_SETPCAP nobody can change it: the supervisor's, inherited.
        assert st["CapBnd"] == sup["CapBnd"], f"{name}: CapBnd {st['CapBnd']}"

    # The router opens, sweeps and restores its store under its filter.
    subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(b.port), "-t", "cf/r",
                    "-m", "kept", "-r", "-q", "1"], check=True, timeout=T(10))
    router = children(b)["router"]
    os.kill(router, signal.SIGKILL)
    new = successor(b, "router", router)
    wait_for(lambda: f"router is back (pid {new})" in b.log, 10, "the new router to serve")
    retained_round_trip(b, "cf/r", "kept")
    assert_child_dropped("router", status(new), me.pw_uid, me.pw_gid, confined)
    assert "signal 31" not in b.log
    b.initial_pids = set(b.pids())


def gdb_calls(pid, *exprs):
    """Attach gdb to pid, evaluate each `call`, detach; the values printed."""
    argv = ["gdb", "-p", str(pid), "-batch", "-nx"]
    for e in exprs:
        argv += ["-ex", f"call {e}"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=T(60))
    return out.stdout + out.stderr, [int(v) for v in re.findall(r"^\$\d+ = (-?\d+)$",
                                                              out.stdout, re.M)]


def need_gdb():
    if shutil.which("gdb") is None:
        pytest.skip("gdb not installed (package gdb)")


@pytest.mark.parametrize("who", ["root", "unprivileged"])
def test_router_opens_only_its_store(start_broker, unprivileged, who):
    need_gdb()
    if who == "root" and os.geteuid() != 0:
        pytest.skip("needs root")
    b = start_broker(**({"user": "nobody"} if who == "root" else unprivileged))
    if not confining(b):
        pytest.skip("no Landlock in a sanitizer build or under valgrind")
    if not landlock(b):
        pytest.skip("this kernel has no Landlock")
    store = store_dir(b)
    out, vals = gdb_calls(children(b)["router"], '(int)open("/etc/passwd", 0)',
                          "(int)*__errno_location()", f'(int)open("{store}/data.mdb", 0)')
    assert len(vals) == 3, f"gdb did not evaluate the calls:\n{out}"
    assert vals[0] == -1 and vals[1] == 13, \
        f"the router opened /etc/passwd (fd {vals[0]}, errno {vals[1]}): expected EACCES"
    assert vals[2] >= 0, f"the router could not open its own store's data.mdb:\n{out}"
    gdb_calls(children(b)["router"], f"(int)close({vals[2]})")
    assert "signal 31" not in b.log


def test_worker_that_opens_a_file_is_killed(start_broker, unprivileged):
    need_gdb()
    b = start_broker(**unprivileged)
    if not confining(b):
        pytest.skip("no seccomp in a sanitizer build or under valgrind")
    old = children(b)["worker 1"]
    gdb_calls(old, '(int)open("/etc/passwd", 0)')
    wait_for(lambda: "worker 1 killed by signal 31 (a system call outside its seccomp "
             "allow-list)" in b.log, 10, "the supervisor to log the worker's SIGSYS")
    new = successor(b, "worker 1", old)
    wait_for(lambda: f"worker 1 is back (pid {new})" in b.log, 10, "the new worker to serve")
    assert status(new)["Seccomp"] == "2" and status(new)["NoNewPrivs"] == "1"
    b.initial_pids = set(b.pids())


def test_auth_role_reads_only_beneath_its_files(start_broker):
    """The auth role drops like every child and, under Landlock, reads the
    files beneath its password file's directory (a file replaced by rename
    stays readable), nothing else."""
    need_gdb()
    if os.geteuid() != 0:
        pytest.skip("needs root")
    d = AuthDir()
    try:
        path = d.mosquitto_passwd("passwd", {"alice": "alice-pw"})
        sibling = d.file("passwd.new", "alice:x\n")
        b = start_broker(user="nobody", probe_auth=("alice", "alice-pw"),
                         auth={"backend": "file", "password_file": path})
        pid = b.role_pid("auth")
        confined = confining(b)
        assert_child_dropped("auth", status(pid), NOBODY.pw_uid, NOBODY.pw_gid, confined)
        if not confined or not landlock(b):
            pytest.skip("no Landlock here")
        out, vals = gdb_calls(pid, '(int)open("/etc/passwd", 0)', "(int)*__errno_location()",
                              f'(int)open("{path}", 0)', f'(int)open("{sibling}", 0)')
        assert len(vals) == 4, f"gdb did not evaluate the calls:\n{out}"
        assert vals[0] == -1 and vals[1] == 13, \
            f"the auth role opened /etc/passwd (fd {vals[0]}, errno {vals[1]}): expected EACCES"
        assert vals[2] >= 0 and vals[3] >= 0, f"the auth role could not read its directory:\n{out}"
        gdb_calls(pid, f"(int)close({vals[2]})", f"(int)close({vals[3]})")
        assert "signal 31" not in b.log
    finally:
        d.remove()
