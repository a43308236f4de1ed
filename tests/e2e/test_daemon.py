"""The iotd daemon itself: process titles, command line, configuration
errors, environment overrides, listen addresses, signals, a store the
router cannot open at start."""

import ctypes
import ctypes.util
import os
import re
import signal
import subprocess
import threading
import time

import pytest

import mqttraw as m
from conftest import IOTD_BIN, IOTD_WRAPPER, REPO, free_port
from helpers import T, children_uid, proc_alive, proc_cmdline, raw, uid, wait_for

pytestmark = pytest.mark.iotd_only


def run_iotd(*args, timeout=10, env=None):
    """Run iotd to completion (bounded); returns (rc, stdout + stderr)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    try:
        r = subprocess.run([IOTD_BIN, *args], stdin=subprocess.DEVNULL, capture_output=True,
                           timeout=T(timeout), env=full_env)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"iotd {' '.join(args)} did not exit within {T(timeout):.0f} s "
                    f"(output: {e.stdout!r} {e.stderr!r})")
    return r.returncode, (r.stdout + r.stderr).decode("utf-8", "replace")


def expected_version():
    hdr = REPO / "include" / "iotd.h"
    mt = re.search(r'#define\s+IOTD_VERSION\s+"([^"]+)"', hdr.read_text()) if hdr.exists() else None
    return mt.group(1) if mt else None


# ------------------------------------------------------------ processes

@pytest.mark.skipif(bool(IOTD_WRAPPER), reason="a process run by valgrind cannot rewrite "
                    "the command line ps shows")
@pytest.mark.parametrize("workers", [2, 3])
def test_process_titles_show_supervisor_listener_router_and_workers(start_broker, workers):
    b = start_broker(workers=workers)
    titles = sorted(proc_cmdline(p) for p in b.pids())
    want = sorted(["iotd: supervisor", "iotd: listener", "iotd: router"] +
                  [f"iotd: worker {i}" for i in range(workers)])
    assert titles == want, f"process titles {titles}"
    assert proc_cmdline(b.proc.pid) == "iotd: supervisor"
    # ps(1) shows the same.
    out = subprocess.run(["ps", "-o", "args=", "-p", ",".join(map(str, b.pids()))],
                         capture_output=True, text=True, timeout=10).stdout
    assert sorted(l.strip() for l in out.splitlines() if l.strip()) == want


def test_clients_are_balanced_over_workers(broker, clients):
    conns = [clients.raw(broker, connect=False) for _ in range(4)]
    for c in conns:
        c.connect(uid("bal"))
    owners = [broker.worker_of(c) for c in conns]
    counts = {w: owners.count(w) for w in broker.worker_pids()}
    assert sorted(counts.values()) == [2, 2], f"4 clients over 2 workers: {counts}"


# ------------------------------------------------------------ command line

@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_exits_0_and_lists_options(flag):
    rc, out = run_iotd(flag)
    assert rc == 0, f"{flag} exit status {rc}: {out}"
    for opt in ("-c", "-l", "-w", "-t", "--help", "--version"):
        assert opt in out, f"{flag} output does not mention {opt}: {out}"


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_prints_version(flag):
    rc, out = run_iotd(flag)
    assert rc == 0, f"{flag} exit status {rc}: {out}"
    want = expected_version()
    if want:
        assert want in out, f"{flag} output {out!r} lacks version {want}"
    else:
        assert re.search(r"\d+\.\d+", out), f"no version in {out!r}"


def test_unknown_option_exits_nonzero_naming_it():
    rc, out = run_iotd("--no-such-option")
    assert rc != 0
    assert "--no-such-option" in out, out


def test_test_config_with_valid_config_exits_0(tmp_path):
    conf = tmp_path / "good.conf"
    conf.write_text('server {\n    max_inflight = 20\n    max_queued_messages = 1000\n'
                    '    retained_message_limit = 10000\n    keep_alive_timeout_secs = 60\n'
                    '    max_packet_size = 1048576\n    connect_timeout = 10\n'
                    '    session_timeout_secs = 300\n}\nlogging {\n    level = "debug"\n}\n')
    rc, out = run_iotd("-t", "-c", str(conf))
    assert rc == 0, f"-t on a valid config: status {rc}: {out}"


BAD_CONFIGS = [
    pytest.param("# bad key\nserver {\n    bogus_option = 5\n}\n", 3, "bogus_option",
                 id="unknown-key"),
    pytest.param("server {\n    max_inflight = 20\n    max_connections = abc\n}\n", 3,
                 "max_connections", id="bad-integer"),
    pytest.param("server {\n    max_inflight = 20\n}\n\nlogging {\n    level = \"loud\"\n}\n",
                 6, "level", id="bad-log-level"),
]


def assert_names_file_line_key(out, path, line, key):
    assert str(path) in out, f"message does not name the file {path}: {out!r}"
    rest = out.replace(str(path), "")
    assert re.search(rf"(?<![\d.]){line}(?![\d.])", rest), \
        f"message does not give line {line}: {out!r}"
    assert key in out, f"message does not name the key {key!r}: {out!r}"


@pytest.mark.parametrize("text,line,key", BAD_CONFIGS)
def test_test_config_with_bad_config_names_file_line_and_key(tmp_path, text, line, key):
    conf = tmp_path / "bad.conf"
    conf.write_text(text)
    rc, out = run_iotd("-t", "-c", str(conf))
    assert rc != 0, f"-t on a bad config exited 0: {out}"
    assert_names_file_line_key(out, conf, line, key)


def test_start_with_bad_config_exits_nonzero_naming_file_line_and_key(tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text("server {\n    max_inflight = 20\n    max_connections = abc\n}\n")
    rc, out = run_iotd("-c", str(conf), "-l", f"127.0.0.1:{free_port()}", "-w", "2")
    assert rc != 0
    assert_names_file_line_key(out, conf, 3, "max_connections")


def test_missing_config_file_exits_nonzero_naming_it(tmp_path):
    missing = tmp_path / "no-such-dir" / "missing.conf"
    rc, out = run_iotd("-c", str(missing), "-l", f"127.0.0.1:{free_port()}", "-w", "2")
    assert rc != 0, f"started with a missing -c file: {out}"
    assert str(missing) in out, f"message does not name {missing}: {out!r}"


def test_missing_config_file_with_test_flag_exits_nonzero(tmp_path):
    missing = tmp_path / "missing.conf"
    rc, out = run_iotd("-t", "-c", str(missing))
    assert rc != 0
    assert str(missing) in out


def test_starts_with_defaults_without_config_file(start_broker):
    b = start_broker(use_config=False)
    with raw(b, uid("defaults")) as c:
        c.subscribe([("d/t", 1)])
        c.publish("d/t", b"x", qos=1, pid=1)
        assert c.recv_publish().payload == b"x"


def test_empty_config_file_means_defaults(start_broker):
    b = start_broker(config_text="")
    with raw(b, uid("empty")) as c:
        c.ping()


# ------------------------------------------------------------ environment

def test_env_max_connections_refuses_third_connection(start_broker):
    # The broker fixture starts from an idle daemon (wait_idle). Each
    # connection opens only once the one before has its CONNACK, so that
    # the first two are surely held when the third arrives.
    b = start_broker(env={"IOTD_SERVER_MAX_CONNECTIONS": "2"})
    a = c2 = None
    try:
        a = raw(b, uid("mc1"))
        c2 = raw(b, uid("mc2"))
        try:
            third = raw(b, connect=False)
        except OSError:
            third = None      # refused outright: fine
        if third is not None:
            try:
                third.send(m.connect(uid("mc3")))
            except OSError:
                pass
            got = third.expect_closed(T(5))
            assert all(p.type == m.CONNACK and p.rc == 3 for p in got), \
                f"third connection: expected close without CONNACK or CONNACK 3, got {got!r}"
            third.close()
        a.ping()
        c2.ping()
        # A slot frees when a client leaves.
        a.disconnect()

        def fourth_ok():
            try:
                with raw(b, connect=False, timeout=T(2)) as c:
                    c.send(m.connect(uid("mc4")))
                    return c.recv_packet(T(2)).rc == 0
            except (AssertionError, OSError):
                return False
        wait_for(fourth_ok, 5, "a new connection to be accepted after one left")
    finally:
        for c in (a, c2):
            if c is not None:
                c.close()


# ------------------------------------------------------------ listen addresses

def delivered(clients, sub_at, pub_at, name, payload, apart=None):
    """A subscriber connected to sub_at (port, host) gets at QoS 1 what a
    publisher connected to pub_at publishes to <name>/t (both connections
    open before either sends CONNECT; held by different workers of the
    daemon `apart`, when given)."""
    sub = clients.raw(sub_at[0], connect=False, host=sub_at[1])
    pub = clients.raw(pub_at[0], connect=False, host=pub_at[1])
    sub.connect(uid(f"{name}sub"))
    sub.subscribe([(f"{name}/t", 1)])
    pub.connect(uid(f"{name}pub"))
    if apart is not None:
        apart.assert_different_workers(sub, pub)
    pub.publish(f"{name}/t", payload, qos=1, pid=1)
    assert sub.recv_publish().payload == payload


def test_listen_on_ipv6_loopback(start_broker, clients):
    port = free_port("::1")
    b = start_broker(listen=[f"[::1]:{port}"])
    delivered(clients, (port, "::1"), (port, "::1"), "v6", b"over-ipv6", apart=b)


def test_two_listen_addresses_both_accept(start_broker, clients):
    p1, p2 = free_port(), free_port("::1")
    b = start_broker(listen=[f"127.0.0.1:{p1}", f"[::1]:{p2}"])
    delivered(clients, (p1, "127.0.0.1"), (p2, "::1"), "two", b"across-listeners")
    assert b.port == p1


# ------------------------------------------------------------ signals

def test_sigint_graceful_stop_exits_0_and_all_processes_go(start_broker):
    b = start_broker()
    clients = [raw(b, connect=False) for _ in range(2)]
    for c in clients:
        c.connect(uid("sigint"))
    pids = b.pids()
    assert len(pids) == 5
    t0 = time.monotonic()
    rc = b.stop(signal.SIGINT, timeout=10, expect_rc=0)
    assert rc == 0
    wait_for(lambda: not any(proc_alive(p) for p in pids), 5, "every daemon process to exit")
    assert time.monotonic() - t0 < T(10)
    for c in clients:
        c.expect_closed(T(2))
        c.close()
    b.check_log()


def test_sigterm_stops_all_processes(start_broker):
    b = start_broker()
    with raw(b, uid("sigterm")) as c:
        pids = b.pids()
        assert len(pids) == 5
        b.stopped = True
        b.proc.send_signal(signal.SIGTERM)
        try:
            rc = b.proc.wait(T(10))
        except subprocess.TimeoutExpired:
            b._kill_all(pids)
            pytest.fail("iotd did not exit within 10 s of SIGTERM")
        assert rc >= 0 or rc == -signal.SIGTERM, f"iotd died of signal {-rc} on SIGTERM"
        wait_for(lambda: not any(proc_alive(p) for p in pids), 5, "every daemon process to exit")
        c.expect_closed(T(2))
    b.check_log()


def test_ipv6_wildcard_listen_is_dual_stack(start_broker, clients):
    port = free_port("::")
    start_broker(listen=[f"[::]:{port}"])
    delivered(clients, (port, "::1"), (port, "127.0.0.1"), "dual", b"v4-to-v6")


# ------------------------------------------------------------ a store the router cannot open

class Knocker(threading.Thread):
    """Connects to a port again and again until stopped, counting the
    attempts refused (.knocking is set at the first) and keeping the
    connections that were accepted, each with whether MQTT CONNECT got a
    CONNACK on it."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port = port
        self.knocking = threading.Event()
        self.stop = threading.Event()
        self.refused = 0
        self.accepted = []

    def run(self):
        while not self.stop.is_set():
            try:
                c = raw(self.port, connect=False, timeout=T(1))
            except ConnectionRefusedError:
                self.refused += 1
                self.knocking.set()
                time.sleep(0.001)       # pacing the attempts, not waiting for a condition
                continue
            with c:
                try:
                    c.connect(uid("knock"))
                    self.accepted.append("CONNACK")
                except (AssertionError, OSError, m.MQTTError) as e:
                    self.accepted.append(f"no CONNACK ({e})")


def lmdb_env_of_another_program(path):
    """A real LMDB environment in directory path (through liblmdb): a key
    in its main database and no iotd meta, somebody else's data."""
    lib = ctypes.CDLL(ctypes.util.find_library("lmdb") or "liblmdb.so.0")

    class Val(ctypes.Structure):
        _fields_ = [("mv_size", ctypes.c_size_t), ("mv_data", ctypes.c_char_p)]

    env, txn, dbi = ctypes.c_void_p(), ctypes.c_void_p(), ctypes.c_uint()
    key, val = Val(5, b"owner"), Val(15, b"another program")
    assert lib.mdb_env_create(ctypes.byref(env)) == 0
    assert lib.mdb_env_open(env, os.fsencode(path), 0, 0o600) == 0
    assert lib.mdb_txn_begin(env, None, 0, ctypes.byref(txn)) == 0
    assert lib.mdb_dbi_open(txn, None, 0, ctypes.byref(dbi)) == 0
    assert lib.mdb_put(txn, dbi, ctypes.byref(key), ctypes.byref(val), 0) == 0
    assert lib.mdb_txn_commit(txn) == 0
    lib.mdb_env_close(env)


def give_to_children(*paths):
    """Make paths the children's (they left root), so that only what the test
    means to be wrong with a store is."""
    u = children_uid()
    if u is not None:
        for p in paths:
            os.chown(p, u, -1)


def bad_store(kind, parent):
    """(storage.path, what the error names) for one kind of store the router cannot open."""
    path = os.path.join(parent, kind)
    if kind == "regular-file":
        with open(path, "w") as f:
            f.write("not a directory\n")
        give_to_children(path)
        return path, f"store {path}: not a directory"
    if kind == "unwritable-dir":
        os.mkdir(path, 0o555)           # not even the children's user may create in it
        give_to_children(path)
        return os.path.join(path, "store"), "cannot create the directory: Permission denied"
    os.mkdir(path, 0o700)
    if kind == "not-lmdb":
        with open(os.path.join(path, "data.mdb"), "wb") as f:
            f.write(b"this is not an LMDB file\n" * 400)
        give_to_children(path, os.path.join(path, "data.mdb"))
        return path, "not an iotd store (data.mdb is not an LMDB file)"
    assert kind == "foreign-lmdb"
    lmdb_env_of_another_program(path)
    give_to_children(path, *(os.path.join(path, f) for f in os.listdir(path)))
    return path, "not an iotd store (an LMDB environment without iotd's meta)"


def start_must_fail(tmp_path, store, expect):
    """Start iotd over a disk store its router cannot open while a client keeps
    connecting: iotd exits 1 soon, with the reason on stderr, never started its
    listener, and refused every connection meanwhile (none got as far as a
    CONNACK). The start fails within milliseconds: the client is knocking
    before it begins, but how many of its attempts fall inside is up to the
    scheduler; the debug log says for certain that no listener ran."""
    port = free_port()
    conf = tmp_path / "bad-store.conf"
    conf.write_text('logging {\n    level = "debug"\n}\n')
    env = dict(os.environ, IOTD_STORAGE_BACKEND="disk", IOTD_STORAGE_PATH=store)
    knock = Knocker(port)
    knock.start()
    assert knock.knocking.wait(T(5)), "the client never tried to connect"
    t0 = time.monotonic()
    proc = subprocess.Popen([IOTD_BIN, "-c", str(conf), "-l", f"127.0.0.1:{port}", "-w", "2"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=T(10))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)     # the session this test started
        proc.communicate()
        pytest.fail("iotd over a store it cannot open did not exit within 10 s")
    finally:
        knock.stop.set()
        knock.join(T(10))
    elapsed = time.monotonic() - t0
    err = err.decode("utf-8", "replace")
    assert proc.returncode == 1, f"exit status {proc.returncode}; stderr:\n{err}"
    assert elapsed < T(5), f"took {elapsed:.1f} s to give up"
    assert "cannot start: router: " in err and expect in err, err
    assert "started router" in err and "started worker 1" in err, err
    assert "started listener" not in err and "listening on" not in err, err
    assert not re.search(r"iotd \S+ ready:", err), err
    assert knock.accepted == [], f"connections accepted before the exit: {knock.accepted}"
    return err


@pytest.mark.parametrize("kind", ["regular-file", "unwritable-dir", "not-lmdb", "foreign-lmdb"])
def test_a_store_the_router_cannot_open_stops_the_start(tmp_path, store_parent, kind):
    store, expect = bad_store(kind, store_parent)
    start_must_fail(tmp_path, store, expect)


def test_a_store_another_daemon_holds_stops_the_start(start_broker, tmp_path, store_parent):
    store = os.path.join(store_parent, "shared")
    first = start_broker(env={"IOTD_STORAGE_BACKEND": "disk", "IOTD_STORAGE_PATH": store})
    start_must_fail(tmp_path, store, f"store {store}: in use by another iotd router")
    # The daemon that holds it never noticed.
    raw(first, uid("holder")).close()
