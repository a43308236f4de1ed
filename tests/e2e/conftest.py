"""
End-to-end tests for iotd: each test starts a fresh daemon on a free port
and talks MQTT 3.1.1 to it (raw sockets, paho-mqtt, mosquitto_sub/pub).

Run (from the repository root):
    /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/e2e
    IOTD_BIN=/path/to/iotd ...            # default: <repo>/build/iotd
    E2E_BROKER=mosquitto ...              # run against /usr/sbin/mosquitto instead
    E2E_TIMEOUT_SCALE=3 ...               # stretch every bound (sanitizer builds)
    IOTD_WRAPPER="valgrind --log-file=..." ...  # prefix the daemon's command line
                                          # (make valgrind; set E2E_TIMEOUT_SCALE too)

Use /usr/bin/python3: the paho-mqtt the tests need is Debian's python3-paho-mqtt.

Fixtures:
    broker        a running daemon; options from @pytest.mark.broker_config(**server_opts)
                  (workers=N, listen=[...], env={...}, args=[...] are fixture options,
                  everything else goes into the config file's server { } section)
                  (listen_in_config=True writes the addresses into the file's
                  listen_addresses instead of passing -l, so that a reload can change them)
                  (wrapper=[...] prefixes the daemon's command line, e.g. setpriv to
                  start it as another user; it must exec the daemon in its own process;
                  binary= runs that copy of build/iotd instead)
                  (placement_slack: the generated file sets placement_slack = 0 unless
                  the options give one, so that each new connection goes to the
                  least-loaded worker and clients connected one after another land on
                  different workers, as assert_different_workers, assert_spread and the
                  bystander expect; placement_slack=None leaves the key out, for the
                  daemon's default. config_text= and use_config=False write no such line)
                  (max_connections_per_address, max_connect_rate_per_address: likewise
                  0 unless the options give them, since every test client connects
                  from 127.0.0.1 as fast as it can)
    start_broker  factory: start_broker(**same options) -> Broker (stopped at teardown)
    worker_of     worker_of(client) -> pid of the worker holding the server side
    clients       clients.raw(broker_or_port, cid, **kw) -> a RawClient (helpers.raw),
                  closed at the end of the test
    bystander     a client subscribed to "by/#" on every worker from before the test's
                  hostile input; bystander.check() proves the daemon kept every
                  process (same pids) and delivered every message published to it

Reload: broker.reload(**changes) rewrites the config file's server { } section
and sends SIGHUP; it returns once the supervisor logged the outcome and, when
a limit changed, every child took the new configuration.

Memory: broker.pss_kb(pids) sums Pss (/proc/PID/smaps) over the daemon's
processes, leaving out the shared-memory regions (fixed-size memfd mappings
whose pages become resident as traffic first touches them);
broker.memory_mark() records it and .assert_back() waits (bounded) until it
is back within max(+2 MB, +20%). Under an instrumented daemon
(AddressSanitizer, or IOTD_WRAPPER such as valgrind), whose allocators keep
freed memory in quarantine, broker.instrumented is true and memory bounds are
not asserted.

Teardown fails the test if the daemon crashed: the supervisor is gone or
exits non-zero on SIGINT, a child process disappeared or was replaced
(a child died and was restarted), the daemon did not stop in time, or the
log holds a sanitizer report ("ERROR: AddressSanitizer", "runtime error:")
or mentions a crash signal.

Markers:
    iotd_only                 iotd-specific behaviour (process titles, workers,
                              CLI, config errors, -t): skipped for mosquitto
    mosquitto_differs(why)    MQTT behaviour where Mosquitto 2.0.11 knowingly
                              differs from what iotd must do: skipped for mosquitto

Known Mosquitto 2.0.11 differences (why a test skips or is looser under
E2E_BROKER=mosquitto):
  * server options with no Mosquitto equivalent skip the test automatically:
    retained_message_limit, connect_timeout, keep_alive_timeout_secs,
    session_timeout_secs, max_topic_levels, max_topic_length (so the
    retained-limit and connect-timeout tests only run against iotd).
  * an invalid topic filter in SUBSCRIBE (e.g. "a/#/b", "a+") makes Mosquitto
    close the connection instead of answering SUBACK 0x80 for that filter.
  * Mosquitto silently ignores SUBACK, UNSUBACK and PINGRESP sent by a client
    (it closes only on CONNACK); iotd must close on all four.
  * Mosquitto answers a PINGREQ that carries a body; iotd must close.
  * Mosquitto checks keep-alives only every few seconds (the will of a silent
    client with keep-alive 1 s comes after ~5 s): the keep-alive will test
    allows 8 s for Mosquitto and 3.5 s for iotd.
  * QoS 0 messages for an offline persistent session: Mosquitto drops them
    unless queue_qos0_messages is set; the tests never assert either way.
  * MQTT 3.1 (MQIsdp) client ids: the 3.1 test uses an id of at most 23 bytes
    (the 3.1 limit some brokers enforce); longer ids are not tested.
  * a single Mosquitto process holds every connection: "clients on two
    different workers" assertions only apply to iotd (Broker.multiworker).
  * everything iotd_only (process titles, workers, CLI, -t, config errors,
    IOTD_* environment, signals) is skipped.
"""

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import mqttraw  # noqa: E402
from helpers import (T, Clients, children_uid, descendants, in_epoll_wait,  # noqa: E402
                     local_port_of, proc_alive, proc_cmdline, proc_title, pss_kb, raw,
                     RING_MAPPING, server_side_inode, socket_inodes, tcp_table, uid, wait_for)

REPO = Path(__file__).resolve().parents[2]
BROKER_KIND = os.environ.get("E2E_BROKER", "iotd").strip().lower()
IOTD_BIN = os.environ.get("IOTD_BIN", str(REPO / "build" / "iotd"))
MOSQUITTO_BIN = os.environ.get("MOSQUITTO_BIN", "/usr/sbin/mosquitto")
# A command the daemon runs under (e.g. valgrind): prefixed to its argv.
IOTD_WRAPPER = shlex.split(os.environ.get("IOTD_WRAPPER", ""))

if BROKER_KIND not in ("iotd", "mosquitto"):
    raise SystemExit(f"E2E_BROKER must be 'iotd' or 'mosquitto', not {BROKER_KIND!r}")

CRASH_PATTERNS = [
    re.compile(r"ERROR: AddressSanitizer"),
    re.compile(r"ERROR: LeakSanitizer"),
    re.compile(r"runtime error:"),
    re.compile(r"\b(SIGSEGV|SIGBUS|SIGILL|SIGFPE|SIGABRT)\b"),
    re.compile(r"[Ss]egmentation fault"),
]

# server { } option -> mosquitto.conf option. None: no equivalent (skip).
MOSQ_GLOBAL = {
    "max_inflight": "max_inflight_messages",
    "max_queued_messages": "max_queued_messages",
    "max_queued_bytes": "max_queued_bytes",
    "queue_qos0_messages": "queue_qos0_messages",
    "max_packet_size": "max_packet_size",
    "max_keepalive": "max_keepalive",
}
MOSQ_LISTENER = {"max_connections": "max_connections"}


# Ports handed out by free_port(), each with the socket that keeps it taken.
_reserved_ports = {}


def free_port(host="127.0.0.1"):
    """A port for a daemon to listen on, reserved until release_ports() (a
    Broker releases its ports once it serves, the test's teardown whatever is
    left). The port stays bound by a socket of ours with SO_REUSEADDR that
    never listens: no other process's bind(port 0) and no outgoing
    connection's ephemeral port can take it meanwhile (several suites run at
    once), while the daemon, which binds with SO_REUSEADDR too, can."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, 0))
        port = s.getsockname()[1]
    except BaseException:
        s.close()
        raise
    _reserved_ports.setdefault(port, []).append(s)
    return port


def release_ports(ports=None):
    """Give back ports reserved by free_port() (default: all of them)."""
    for port in list(_reserved_ports) if ports is None else ports:
        for s in _reserved_ports.pop(port, []):
            s.close()


def split_listen(addr):
    """'127.0.0.1:1883' / '[::1]:1883' / 'ws://127.0.0.1:8080/mqtt' /
    'mqtts://127.0.0.1:8883?tls=name' -> (host, port)."""
    addr = re.sub(r"^[a-z]+://", "", addr)
    addr = re.sub(r"\?.*$", "", addr)
    addr = re.sub(r"/.*$", "", addr)
    m = re.match(r"^\[([^\]]+)\]:(\d+)$", addr) or re.match(r"^([^:]*):(\d+)$", addr)
    assert m, f"bad listen address {addr!r}"
    return m.group(1) or "127.0.0.1", int(m.group(2))


def conf_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, (list, tuple)):
        return "{" + ", ".join(conf_value(x) for x in v) + "}"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def iotd_config_text(server_opts, log_level="debug", auth=None, tls=None):
    lines = []
    for name, opts in (("server", server_opts), ("auth", auth), ("tls", tls)):
        if opts:
            lines.append(name + " {")
            for k, v in opts.items():
                lines.append(f"    {k} = {conf_value(v)}")
            lines.append("}")
    if log_level:
        lines.append("logging {")
        lines.append(f"    level = {conf_value(log_level)}")
        lines.append("}")
    return "\n".join(lines) + "\n"


def mosquitto_config_text(server_opts, listen):
    glob, lst = [], []
    for k, v in server_opts.items():
        if k in MOSQ_GLOBAL:
            glob.append(f"{MOSQ_GLOBAL[k]} {str(v).lower() if isinstance(v, bool) else v}")
        elif k in MOSQ_LISTENER:
            lst.append(f"{MOSQ_LISTENER[k]} {v}")
        else:
            pytest.skip(f"mosquitto has no equivalent of server option {k!r}")
    lines = ["per_listener_settings false", "allow_anonymous true", "persistence false",
             "log_dest stderr", "log_type all", "sys_interval 0",
             "allow_zero_length_clientid true"]
    if os.geteuid() == 0:
        lines.append("user root")
    lines += glob
    for addr in listen:
        host, port = split_listen(addr)
        lines.append(f"listener {port} {host}")
        lines += lst
    return "\n".join(lines) + "\n"


class Broker:
    """One running daemon (iotd or, with E2E_BROKER=mosquitto, Mosquitto)."""

    def __init__(self, tmpdir, name, workers=2, listen=None, env=None, args=None,
                 config_text=None, log_level="debug", use_config=True, wait=True,
                 listen_in_config=False, wrapper=None, binary=None, auth=None,
                 probe_auth=None, tls=None, **server_opts):
        self.kind = BROKER_KIND
        self.tmpdir = Path(tmpdir)
        self.name = name
        self.workers = workers
        if listen is None:
            listen = [f"127.0.0.1:{free_port()}"]
        self.listen = listen
        self.port = split_listen(listen[0])[1]
        self.host = split_listen(self.listen[0])[0]
        if listen_in_config:
            # In the file's listen_addresses instead of -l (which a reload could not change).
            server_opts = {"listen_addresses": list(self.listen), **server_opts}
        self.listen_in_config = listen_in_config
        if self.kind == "iotd":
            # Placement on load alone, and no per-address limits (every test
            # client comes from 127.0.0.1, as fast as it can), unless the test
            # says otherwise (see the module's docstring); None: the key left
            # out, the daemon's default.
            server_opts = {"placement_slack": 0, "max_connections_per_address": 0,
                           "max_connect_rate_per_address": 0, **server_opts}
            server_opts = {k: v for k, v in server_opts.items() if v is not None}
        self.log_level = log_level
        self.server_opts = server_opts
        # auth { } keys; probe_auth: (user, password) the start-up probe connects with.
        self.auth = auth
        self.probe_auth = probe_auth
        # tls { } keys: with a certificate, the key role runs.
        self.tls = tls
        self.conf_path = self.tmpdir / f"{name}.conf"
        self.log_path = self.tmpdir / f"{name}.log"
        self.stopped = False
        self.returncode = None
        self.initial_pids = None
        if self.kind == "mosquitto":
            if not os.path.exists(MOSQUITTO_BIN):
                pytest.skip(f"{MOSQUITTO_BIN} not installed")
            self.conf_path.write_text(mosquitto_config_text(server_opts, self.listen))
            argv = [MOSQUITTO_BIN, "-c", str(self.conf_path)]
        else:
            if not os.access(IOTD_BIN, os.X_OK):
                pytest.fail(f"iotd binary {IOTD_BIN} not found (run make, or set IOTD_BIN)")
            argv = [binary or IOTD_BIN]
            if use_config:
                text = config_text if config_text is not None else \
                    iotd_config_text(server_opts, log_level, auth, tls)
                self.conf_path.write_text(text)
                argv += ["-c", str(self.conf_path)]
            for addr in ([] if listen_in_config else self.listen):
                argv += ["-l", addr]
            if workers is not None:
                argv += ["-w", str(workers)]
            argv += list(args or [])
            argv = list(wrapper or []) + IOTD_WRAPPER + argv
        self.argv = argv
        full_env = dict(os.environ)
        full_env.update(env or {})
        full_env.setdefault("ASAN_OPTIONS", "abort_on_error=0:detect_leaks=1")
        self._logf = open(self.log_path, "wb")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._logf,
                                     stderr=subprocess.STDOUT, env=full_env,
                                     start_new_session=True)
        if wait:
            try:
                self.wait_ready()
            except BaseException:
                # Not yet handed to the fixture: nobody else would stop it.
                if self.proc.poll() is None:
                    self._kill_all(self.pids())
                raise

    # --- introspection

    @property
    def auth_role(self):
        """True when the configuration runs an auth role (a backend, or an ACL file)."""
        a = self.auth or {}
        return a.get("backend", "none") != "none" or bool(a.get("acl_file"))

    @property
    def multiworker(self):
        """True when connections are spread over several worker processes."""
        return self.kind == "iotd" and (self.workers or 0) > 1

    @property
    def log(self):
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, n=40):
        return "\n".join(self.log.splitlines()[-n:])

    def pids(self):
        """The supervisor and all its living descendants."""
        if not proc_alive(self.proc.pid):
            return []
        return [self.proc.pid] + descendants(self.proc.pid)

    def worker_pids(self):
        if self.kind == "mosquitto":
            return [self.proc.pid] if proc_alive(self.proc.pid) else []
        return [p for p in descendants(self.proc.pid)
                if proc_title(p).startswith("iotd: worker")]

    def wait_worker_replaced(self, gone, n=2, timeout=10):
        """Wait until the supervisor has replaced worker process gone: n
        workers, gone not among them, each try one look at them (two looks
        could see gone still there, then neither it nor its successor
        yet). Returns that look's pids."""
        seen = []
        wait_for(lambda: seen.append(self.worker_pids()) or
                 (len(seen[-1]) == n and gone not in seen[-1]),
                 T(timeout), "the supervisor to restart the killed worker")
        return seen[-1]

    def role_pid(self, role):
        """Pid of the one living "iotd: router" / "iotd: listener" /
        "iotd: worker N" (role "worker 0"), or None when there is none, or
        more than one. Every role is a child of the supervisor: its task's
        children list is read, not the whole of /proc."""
        want = f"iotd: {role}"
        sup = self.proc.pid
        try:
            with open(f"/proc/{sup}/task/{sup}/children") as f:
                kids = [int(x) for x in f.read().split()]
        except OSError:
            kids = self.pids()[1:]
        found = [p for p in kids if proc_alive(p) and proc_title(p) == want]
        return found[0] if len(found) == 1 else None

    def successor(self, role, old):
        """Pid of the role's process once it is not `old` any more (a
        successor runs), else None."""
        p = self.role_pid(role)
        return p if p and p != old else None

    def worker_of(self, client, timeout=5, port=None):
        """Pid of the worker holding the server side of the client's TCP
        connection to port (default: the first listen address's), found
        through /proc/net/tcp{,6} and /proc/PID/fd."""
        cport = local_port_of(client)

        def find():
            inode = server_side_inode(port or self.port, cport)
            if inode is None:
                return None
            for pid in self.worker_pids():
                if inode in socket_inodes(pid):
                    return pid
            return None
        return wait_for(find, timeout,
                        f"a worker holding the server side of the connection from port {cport}")

    def assert_spread(self, *clients):
        """Assert the clients are held by at least two different workers
        (iotd with several workers only; a no-op for Mosquitto)."""
        if not self.multiworker:
            return
        owners = {self.worker_of(c) for c in clients}
        assert len(owners) >= 2, (f"expected clients on at least two workers, all on "
                                  f"{owners} (the listener should balance to the least-loaded worker)")

    def assert_different_workers(self, a, b):
        if not self.multiworker:
            return
        wa, wb = self.worker_of(a), self.worker_of(b)
        assert wa != wb, f"both clients on worker pid {wa}: expected different workers"

    def held_connections(self):
        """Server-side TCP connections to the daemon's listen ports that a
        process still holds: an fd in a worker, or in flight from the listener
        to one. (A socket its holder closed is orphaned, inode 0, like one
        still waiting in the listen queue.)"""
        ports = {split_listen(a)[1] for a in self.listen}
        return [(lport, rport) for lport, rport, inode in tcp_table()
                if lport in ports and rport != 0 and inode != 0]

    def wait_idle(self, timeout=5):
        """Wait until the daemon holds no client connection and counts none
        against max_connections. A worker closes a connection's socket
        before it takes it off its count in shared memory (which the listener
        checks max_connections against), in the same turn of its event loop;
        so: first no socket held (held_connections()), then every worker seen
        asleep in epoll_wait, which it reaches only after that turn."""
        def idle():
            if self.held_connections():
                return False
            if self.kind != "iotd":
                return True
            return all(in_epoll_wait(p) for p in self.worker_pids())
        wait_for(idle, timeout, f"the daemon to hold no connection (held: "
                 f"{self.held_connections()})")

    # --- memory

    @property
    def instrumented(self):
        """True when the daemon runs under a wrapper (valgrind) or is built with
        AddressSanitizer: their allocators keep freed memory in quarantine, so
        Pss says nothing about the daemon's own bounds."""
        if IOTD_WRAPPER:
            return True
        try:
            with open(f"/proc/{self.proc.pid}/maps") as f:
                return "libasan" in f.read()
        except OSError:
            return False

    def pss_kb(self, pids=None, shmem=False):
        """Proportional set size, in kB, summed over pids (default: every
        daemon process), so memory shared between them counts once. Without
        shmem, the pages of the shared-memory regions (memfd mappings) are
        left out: the rings are mapped at start at a size fixed by the
        configuration, and their pages become resident as traffic first
        passes through them, which is not growth (shmem_kb() checks they
        stay within the mapping). Everything else counts, the router's
        store in /dev/shm included."""
        return sum(pss_kb(p, shmem) for p in (self.pids() if pids is None else pids))

    def shmem_kb(self):
        """(resident kB summed over the daemon's processes, mapped kB) of the
        shared-memory regions: resident can never exceed mapped. Each region
        is its own memfd, mapped by the processes that use it: counted once
        (by inode), whoever maps it."""
        pids = self.pids()
        resident = sum(pss_kb(p) - pss_kb(p, shmem=False) for p in pids)
        regions = {}
        for pid in pids:
            try:
                with open(f"/proc/{pid}/maps") as f:
                    for line in f:
                        if RING_MAPPING in line:
                            fields = line.split()
                            lo, hi = fields[0].split("-")
                            regions[fields[4]] = (int(hi, 16) - int(lo, 16)) // 1024
            except OSError:
                pass
        return resident, sum(regions.values())

    def memory_mark(self, pids=None):
        """Record the daemon's memory now; .assert_back() later."""
        return MemoryMark(self, pids)

    # --- lifecycle

    def _fail(self, msg):
        pytest.fail(f"{msg}\n--- daemon log ({self.log_path}) tail ---\n{self.log_tail()}",
                    pytrace=False)

    def wait_ready(self, timeout=10):
        """Wait until the port accepts connections and answers an MQTT CONNECT,
        every process is up, and the daemon holds no connection (wait_idle):
        a test starts from an empty daemon, max_connections slots included."""
        deadline = time.monotonic() + T(timeout)
        while True:
            rc = self.proc.poll()
            if rc is not None:
                self.stopped = True
                self.returncode = rc
                self._fail(f"daemon exited with status {rc} during startup: {self.argv}")
            try:
                probe = raw(self, connect=False)
                break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self._fail(f"daemon did not accept connections on {self.host}:{self.port} "
                           f"within {T(timeout):.0f} s")
            time.sleep(0.02)
        # The connection that found the port open is the probe itself (a bare
        # one would stay in a worker's count until that worker read its EOF):
        # a full handshake proves a worker serves clients.
        try:
            with probe:
                # With a backend and no credentials, any CONNACK shows a worker serves.
                user, password = self.probe_auth or (None, None)
                probe.connect(uid("probe"), keepalive=30, username=user, password=password,
                              expect_rc=0 if self.probe_auth or not self.auth_role else None)
                probe.send(mqttraw.disconnect())
                probe.expect_closed(T(5))
        except (AssertionError, OSError) as e:
            self._fail(f"daemon accepts TCP on {self.port} but the MQTT probe failed: {e}")
        if self.kind == "iotd" and self.workers:
            want = 3 + self.workers + self.auth_role + bool(self.tls)
            try:
                wait_for(lambda: len(self.pids()) == want and
                         len(self.worker_pids()) == self.workers, timeout,
                         f"{want} daemon processes (supervisor, listener, router, "
                         f"{self.workers} workers)")
            except AssertionError as e:
                self._fail(f"{e}; have {[(p, proc_cmdline(p)) for p in self.pids()]}")
        # Bound and serving: the reservations (free_port) have done their job.
        release_ports(split_listen(a)[1] for a in self.listen)
        try:
            self.wait_idle(timeout)
        except AssertionError as e:
            self._fail(str(e))
        self.initial_pids = set(self.pids())

    def check_health(self):
        """Fail if the daemon crashed or a child was replaced."""
        rc = self.proc.poll()
        if rc is not None and not self.stopped:
            self.stopped = True
            self.returncode = rc
            self._fail(f"daemon exited by itself with status {rc}")
        if self.initial_pids is not None and not self.stopped:
            now = set(self.pids())
            if now != self.initial_pids:
                gone = sorted(self.initial_pids - now)
                new = sorted(now - self.initial_pids)
                self._fail(f"daemon processes changed during the test (a child died?): "
                           f"gone {gone}, new {[(p, proc_cmdline(p)) for p in new]}")
        self.check_log()

    def check_log(self):
        log = self.log
        for rx in CRASH_PATTERNS:
            m = rx.search(log)
            if m:
                i = m.start()
                self._fail(f"crash report in the daemon log ({rx.pattern!r}):\n"
                           f"{log[max(0, i - 500):i + 3000]}")

    def send_signal(self, sig):
        self.proc.send_signal(sig)

    RELOAD_LINE = re.compile(r"configuration reloaded: .*|reload failed, keeping the running "
                             r"configuration: .*")
    TOOK_CONFIG = "took the reloaded configuration"

    def reload(self, expect="configuration reloaded: applied", auth=None, **changes):
        """Rewrite the config file with the server { } options changed by
        `changes` (None removes one), send SIGHUP and wait (bounded) for the
        supervisor's next reload line, which must contain `expect`; returns
        that line. When it applied a limit, also waits until every child
        (router, listener, each worker) logged that it took the new
        configuration (a debug line), so the limit is in force on return."""
        opts = {**self.server_opts, **changes}
        opts = {k: v for k, v in opts.items() if v is not None}
        auth = self.auth if auth is None else auth
        self.conf_path.write_text(iotd_config_text(opts, self.log_level, auth))
        before = len(self.RELOAD_LINE.findall(self.log))
        took = self.log.count(self.TOOK_CONFIG)
        children = 2 + len(self.worker_pids()) + (self.role_pid("auth") is not None)
        self.send_signal(signal.SIGHUP)
        lines = wait_for(lambda: self.RELOAD_LINE.findall(self.log)[before:], 10,
                         "the supervisor's log line about the reload")
        line = lines[0]
        if expect not in line:
            self._fail(f"reload: expected {expect!r} in the log line, got {line!r}")
        if "reload failed" in line:
            return line
        self.server_opts = opts
        self.auth = auth
        m = re.search(r"applied: (.*?); after a restart", line)
        applied = m.group(1).split(", ") if m and m.group(1) != "nothing" else []
        if any(not k.startswith("logging.") and k != "server.listen_addresses" for k in applied):
            assert self.log_level == "debug", "reload() needs the children's debug lines"
            wait_for(lambda: self.log.count(self.TOOK_CONFIG) >= took + children, 10,
                     f"{children} children to take the reloaded configuration")
        return line

    def stop(self, sig=signal.SIGINT, timeout=10, expect_rc=0):
        """Stop the daemon: sig, bounded wait, then SIGKILL (a failure).
        Returns the exit status; fails on an unexpected one or leftovers."""
        if self.stopped:
            return self.returncode
        pids = self.pids()
        self.stopped = True
        self.proc.send_signal(sig)
        try:
            self.returncode = self.proc.wait(T(timeout))
        except subprocess.TimeoutExpired:
            self._kill_all(pids)
            self._fail(f"daemon did not exit within {T(timeout):.0f} s of {sig.name}")
        finally:
            self._logf.close()
        leftover = []
        deadline = time.monotonic() + T(5)
        while time.monotonic() < deadline:
            leftover = [p for p in pids if proc_alive(p)]
            if not leftover:
                break
            time.sleep(0.02)
        if leftover:
            self._kill_all(leftover)
            self._fail(f"daemon processes still alive after the supervisor exited: "
                       f"{[(p, proc_cmdline(p)) for p in leftover]}")
        if self.returncode < 0:
            self._fail(f"daemon killed by signal {-self.returncode} (on {sig.name})")
        if expect_rc is not None and self.returncode != expect_rc:
            self._fail(f"daemon exited with status {self.returncode} on {sig.name}, "
                       f"expected {expect_rc}")
        return self.returncode

    def _kill_all(self, pids):
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass

    def teardown(self):
        try:
            if not self.stopped:
                self.check_health()
                self.stop()
            self.check_log()
        finally:
            if self.proc.poll() is None:
                self._kill_all(self.pids())
            if not self._logf.closed:
                self._logf.close()


class MemoryMark:
    """The daemon's Pss at one moment, to check it comes back after a burst."""

    MARGIN_KB = 2048
    MARGIN_RATIO = 0.20

    def __init__(self, broker, pids=None):
        self.broker = broker
        self.pids = list(broker.pids() if pids is None else pids)
        self.kb = broker.pss_kb(self.pids)

    def limit_kb(self):
        return max(self.kb + self.MARGIN_KB, self.kb * (1 + self.MARGIN_RATIO))

    def now_kb(self):
        return self.broker.pss_kb(self.pids)

    def assert_back(self, timeout=10, what="the daemon's memory"):
        """Wait (bounded) until Pss (rings aside, see Broker.pss_kb) is within
        max(+2 MB, +20%) of the mark, and the rings within their mapping.
        Not asserted for an instrumented daemon (see Broker.instrumented)."""
        if self.broker.instrumented:
            return
        limit = self.limit_kb()
        try:
            wait_for(lambda: self.now_kb() <= limit, timeout, "memory to settle")
        except AssertionError:
            per = {f"{p} {proc_title(p) or '?'}": pss_kb(p, shmem=False) for p in self.pids}
            raise AssertionError(f"{what}: Pss {self.now_kb()} kB (by pid: {per}), not back "
                                 f"within {limit:.0f} kB of the {self.kb} kB it started at"
                                 ) from None
        resident, mapped = self.broker.shmem_kb()
        assert resident <= mapped + 64, \
            f"shared memory resident {resident} kB, more than its {mapped} kB mapping"


class Bystander:
    """Clients subscribed to "by/#" at QoS 2 before a test's hostile input,
    one per worker (two when the daemon has several), kept connected
    throughout. check() publishes a numbered message at QoS 0, 1 and 2 from a
    fresh connection and asserts each subscriber's next PUBLISHes are exactly
    those (so nothing was lost, and nothing foreign was delivered under
    "by/"), and that the daemon still runs the same processes."""

    TOPIC = "by/t"

    def __init__(self, broker):
        self.broker = broker
        self.pids = sorted(broker.pids())
        self.subs = []
        for i in range(2 if broker.multiworker else 1):
            c = raw(broker, tag=f"bystand{i}")
            c.subscribe([("by/#", 2)])
            self.subs.append(c)
        if len(self.subs) > 1:
            broker.assert_spread(*self.subs)
        self.c = self.subs[0]
        self.n = 0

    @property
    def conns(self):
        """Connections the bystander holds open."""
        return len(self.subs)

    def check(self, timeout=5):
        self.n += 1
        want = [f"still-alive-{self.n}-qos{q}".encode() for q in (0, 1, 2)]
        assert sorted(self.broker.pids()) == self.pids, \
            f"daemon processes changed: {self.pids} -> {sorted(self.broker.pids())}"
        with raw(self.broker, tag="bypub") as pub:
            for q, payload in enumerate(want):
                pub.publish(self.TOPIC, payload, qos=q, pid=q or None)
            pub.disconnect()
        for c in self.subs:
            got = [p.payload for p in c.recv_publishes(3, timeout=T(timeout))]
            assert got == want, (f"bystander {c.client_id} received {got!r}, expected "
                                 f"{want!r}: a message was lost or a foreign one delivered")
        assert sorted(self.broker.pids()) == self.pids, \
            f"daemon processes changed: {self.pids} -> {sorted(self.broker.pids())}"

    def close(self):
        for c in self.subs:
            c.close()


# ------------------------------------------------------------ pytest hooks

def pytest_configure(config):
    config.addinivalue_line("markers", "iotd_only: iotd-specific behaviour, skipped for mosquitto")
    config.addinivalue_line("markers", "mosquitto_differs(reason): Mosquitto knowingly "
                            "differs; skipped for mosquitto")
    config.addinivalue_line("markers", "broker_config(**opts): options of the broker fixture")


def pytest_report_header(config):
    target = MOSQUITTO_BIN if BROKER_KIND == "mosquitto" else IOTD_BIN
    return f"e2e broker: {BROKER_KIND} ({target})"


def pytest_runtest_setup(item):
    if BROKER_KIND == "mosquitto":
        if item.get_closest_marker("iotd_only"):
            pytest.skip("iotd-only behaviour")
        m = item.get_closest_marker("mosquitto_differs")
        if m:
            pytest.skip("mosquitto differs: " + (m.args[0] if m.args else ""))


@pytest.fixture
def store_parent():
    """A directory the router may create storage.path in, even after it
    left root (pytest's tmp_path is private to root)."""
    d = tempfile.mkdtemp(prefix="iotd-e2e-store-")
    os.chmod(d, 0o755)
    u = children_uid()
    if u is not None:
        os.chown(d, u, -1)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(autouse=True)
def _release_reserved_ports():
    yield
    release_ports()


@pytest.fixture
def start_broker(tmp_path):
    started = []

    def start(**opts):
        b = Broker(tmp_path, f"broker{len(started)}", **opts)
        started.append(b)
        return b

    yield start
    errors = []
    for b in started:
        try:
            b.teardown()
        except BaseException as e:  # pytest.fail raises an OutcomeException
            errors.append(e)
    if errors:
        raise errors[0]


@pytest.fixture
def clients(start_broker):
    """Clients the test holds (helpers.Clients), closed at its end, before
    any daemon it started stops."""
    c = Clients()
    yield c
    c.close()


@pytest.fixture
def broker(request, start_broker):
    m = request.node.get_closest_marker("broker_config")
    opts = dict(m.kwargs) if m else {}
    return start_broker(**opts)


@pytest.fixture
def worker_of(broker):
    return broker.worker_of


@pytest.fixture
def bystander(broker, clients):
    return clients.own(Bystander(broker))
