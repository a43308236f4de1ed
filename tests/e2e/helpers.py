"""
Shared helpers for the iotd end-to-end tests: bounded waiting, unique client
ids, /proc lookups (which process holds the server side of a connection),
the raw-client factory (raw; raw_on to place a client on a worker; Clients,
closed at the end of a test), a test's instruments (PeakPss samples memory,
PublishReader drains a client on a thread), a paho-mqtt wrapper and
mosquitto_sub / mosquitto_pub subprocess wrappers.
"""

import os
import pwd
import re
import secrets
import select
import shutil
import subprocess
import threading
import time

import paho.mqtt.client as mqtt

import mqttraw

# Multiply every bound by this (e.g. E2E_TIMEOUT_SCALE=3 under a slow sanitizer build).
SCALE = float(os.environ.get("E2E_TIMEOUT_SCALE", "1"))


def T(seconds):
    """A timeout bound, scaled for slow builds."""
    return seconds * SCALE


def children_uid():
    """The user iotd's children run as when started as root (server.user
    "iotd", else "nobody"); None when not root (no privilege drop)."""
    if os.geteuid() != 0:
        return None
    for name in ("iotd", "nobody"):
        try:
            return pwd.getpwnam(name).pw_uid
        except KeyError:
            pass
    return None


def wait_for(cond, timeout, what, interval=0.02):
    """Poll cond() until it returns something truthy; return that value.
    Fails with 'timed out after N s waiting for <what>' otherwise."""
    timeout = T(timeout)
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(interval)


def uid(tag="c"):
    """A client id unique to this call, at most 23 characters (the MQTT
    3.1.1 limit a server must accept)."""
    return f"{tag[:12]}-{secrets.token_hex(4)}"


# ------------------------------------------------------------ /proc helpers

def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def proc_stat(pid):
    """(state, ppid) of a process, or None if it is gone."""
    data = _read(f"/proc/{pid}/stat")
    if data is None:
        return None
    rest = data[data.rindex(b")") + 2:].split()
    return rest[0].decode(), int(rest[1])


def proc_status(pid):
    """/proc/PID/status as {field: value}."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


def proc_alive(pid):
    """True if the process exists and is not a zombie."""
    st = proc_stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def proc_cmdline(pid):
    """The process's argv joined by spaces (a rewritten process title shows
    here), or '' if gone."""
    data = _read(f"/proc/{pid}/cmdline")
    if not data:
        return ""
    return data.replace(b"\0", b" ").decode("utf-8", "replace").strip()


def proc_title(pid):
    """The process title: its cmdline when that was rewritten ("iotd: ..."),
    else /proc/PID/comm (15 bytes at most), which a process wrapped by
    valgrind still sets while its cmdline stays valgrind's."""
    title = proc_cmdline(pid)
    if title.startswith("iotd:"):
        return title
    comm = _read(f"/proc/{pid}/comm")
    if comm and comm.decode("utf-8", "replace").startswith("iotd:"):
        return comm.decode("utf-8", "replace").strip()
    return title


def smaps_rollup(pid):
    """The kB fields of /proc/PID/smaps_rollup ({"Pss": ..., "Pss_Shmem": ...}),
    or {} if the process is gone."""
    data = _read(f"/proc/{pid}/smaps_rollup")
    if not data:
        return {}
    return {k.decode(): int(v) for k, v in re.findall(rb"^(\w+):\s+(\d+) kB", data, re.M)}


RING_MAPPING = "/memfd:iotd-shm"


def pss_kb(pid, shmem=True):
    """Proportional set size of a process in kB (0 if it is gone); without
    the pages of iotd's shared-memory rings (the "/memfd:iotd-shm" mapping)
    when shmem is false."""
    if shmem:
        return smaps_rollup(pid).get("Pss", 0)
    data = _read(f"/proc/{pid}/smaps")
    if not data:
        return 0
    total, ring = 0, False
    for line in data.split(b"\n"):
        if line[:1] in b"0123456789abcdef" and b"-" in line.split(b" ", 1)[0]:
            ring = line.rstrip().endswith(RING_MAPPING.encode()) or \
                line.rstrip().endswith(RING_MAPPING.encode() + b" (deleted)")
        elif line.startswith(b"Pss:") and not ring:
            total += int(line.split()[1])
    return total


def raise_nofile(want):
    """Raise this process's soft RLIMIT_NOFILE towards want (at most the hard
    limit); returns the new soft limit."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def descendants(root):
    """All living descendants of root (not root itself), via /proc/*/stat ppid."""
    children = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        st = proc_stat(int(name))
        if st is None or st[0] in ("Z", "X"):
            continue
        children.setdefault(st[1], []).append(int(name))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        for c in children.get(p, []):
            out.append(c)
            todo.append(c)
    return sorted(out)


def _tcp_rows():
    """The fields of each socket row of /proc/net/tcp and tcp6 held by a
    process (inode not 0)."""
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        data = _read(path)
        if not data:
            continue
        for line in data.decode().splitlines()[1:]:
            f = line.split()
            if len(f) >= 10 and int(f[9]):
                yield f


def _port(field):
    return int(field.rsplit(":", 1)[1], 16)


def tcp_table():
    """Rows (local_port, remote_port, inode) of /proc/net/tcp and tcp6."""
    return [(_port(f[1]), _port(f[2]), int(f[9])) for f in _tcp_rows()]


def in_epoll_wait(pid):
    """True if the process is asleep in epoll_wait (its /proc/PID/wchan, the
    kernel function it sleeps in, is do_epoll_wait or ep_poll)."""
    wchan = _read(f"/proc/{pid}/wchan") or b""
    return b"epoll_wait" in wchan or b"ep_poll" in wchan


def socket_inodes(pid):
    """Inodes of the sockets open in a process."""
    out = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        m = re.match(r"socket:\[(\d+)\]", link)
        if m:
            out.add(int(m.group(1)))
    return out


def server_rx_queue(broker_port, client_port):
    """Bytes waiting in the receive queue of the server side of the
    connection from client_port to broker_port (not yet read by the
    daemon), or None while no process holds that socket (not accepted)."""
    for f in _tcp_rows():
        if _port(f[1]) == broker_port and _port(f[2]) == client_port:
            return int(f[4].split(":")[1], 16)     # tx_queue:rx_queue
    return None


def server_side_inode(broker_port, client_port):
    """Inode of the server-side TCP socket of the connection from
    client_port to broker_port, or None."""
    for lport, rport, inode in tcp_table():
        if lport == broker_port and rport == client_port:
            return inode
    return None


def client_port_of_pid(pid, broker_port):
    """Local port of the process's TCP connection to broker_port, or None."""
    inodes = socket_inodes(pid)
    for lport, rport, inode in tcp_table():
        if rport == broker_port and inode in inodes:
            return lport
    return None


def local_port_of(client):
    """The client-side local port of a RawClient, PahoClient, socket, CLI
    wrapper or a port number."""
    if isinstance(client, int):
        return client
    if hasattr(client, "local_port"):
        return client.local_port
    if hasattr(client, "getsockname"):
        return client.getsockname()[1]
    raise TypeError(f"cannot find the local port of {client!r}")


# ------------------------------------------------------------ raw clients

def raw(target, cid=None, *, tag="raw", host=None, source=None, rcvbuf=None, timeout=None,
        connect=True, **connect_kw):
    """A mqttraw.RawClient to target (a Broker: its first listen address;
    or a port on 127.0.0.1, unless host says otherwise), from source (a
    local address to bind) with a receive buffer of rcvbuf bytes when
    given; timeout (default T(5)) bounds connecting and sending.
    connect=False returns the bare TCP connection. Otherwise it has sent
    CONNECT as cid (default: a unique id made from tag) with connect_kw
    (clean, keepalive, will, expect_rc, username, ...; see
    RawClient.connect) and received the CONNACK, kept in .connack."""
    if isinstance(target, int):
        port, host = target, host or "127.0.0.1"
    else:
        port, host = target.port, host or target.host
    c = mqttraw.RawClient(port, host=host, timeout=T(5) if timeout is None else timeout,
                          rcvbuf=rcvbuf, source=source)
    return connected(c, cid, tag, **connect_kw) if connect else c


def connected(c, cid=None, tag="raw", **connect_kw):
    """c (a RawClient) once it sent CONNECT as cid (default: a unique id
    made from tag) with connect_kw and received the CONNACK, kept in
    .connack; closed if that fails."""
    try:
        c.connack = c.connect(uid(tag) if cid is None else cid, **connect_kw)
    except BaseException:
        c.close()
        raise
    return c


def raw_on(broker, want=None, cid=None, *, avoid=None, tag="on", tries=None, deadline=None,
           spare=None, make=None, connect=True, **connect_kw):
    """A RawClient held by worker pid `want` (or by any worker but `avoid`):
    raw(broker, cid, tag=tag, connect=connect, **connect_kw), or make(),
    again until one lands there. The listener gives a new connection to the
    least-loaded worker, and a restarted worker only once it said it is
    alive. A client that lands elsewhere is disconnected and, after a short
    pause, another made; given a list `spare`, it is kept open there
    instead (it shifts the balance), or, when it has a fixed client id or
    CONNECT options (a will, a persistent session), it leaves and a plain
    filler connection takes its place there. Gives up after `tries`
    connections or at `deadline` (time.monotonic()), whichever comes
    first; with neither, T(5) from now."""
    if tries is None and deadline is None:
        deadline = time.monotonic() + T(5)
    n = 0
    while True:
        c = make() if make else raw(broker, cid, tag=tag, connect=connect, **connect_kw)
        w = broker.worker_of(c)
        if (want is None or w == want) and w != avoid:
            return c
        n += 1
        if spare is None:
            c.disconnect()
        elif cid is not None or connect_kw:
            c.disconnect()
            spare.append(raw(broker, tag="filler"))
        else:
            spare.append(c)
        if (tries is not None and n >= tries) or \
                (deadline is not None and time.monotonic() >= deadline):
            where = f"worker pid {want}" if avoid is None else f"a worker other than {avoid}"
            raise AssertionError(f"no new connection reached {where} in {n} tries")
        if spare is None:
            time.sleep(0.01)


class Clients:
    """Clients a test holds, each ended at its end, the last made first: the
    `clients` fixture, or an owner of its own."""

    def __init__(self):
        self.ends = []

    def own(self, c, end=None):
        """c, ended at the end by end() (default: c.close())."""
        self.ends.append(end or c.close)
        return c

    append = own        # a `spare` list for raw_on

    def raw(self, target, cid=None, **kw):
        """raw(target, cid, **kw), closed at the end."""
        return self.own(raw(target, cid, **kw))

    def sub_and_pub(self, broker, tag, filters, paho=False):
        """A raw subscriber to filters and a publisher (a PahoClient with
        paho), client ids made from tag + "sub" and tag + "pub", held by
        different workers (asserted when the daemon has several)."""
        sub = self.raw(broker, tag=f"{tag}sub")
        if paho:
            pub = self.paho(broker.port, uid(f"{tag}pub"))
        else:
            pub = self.raw(broker, tag=f"{tag}pub")
        sub.subscribe(filters)
        if paho:
            pub.connect()
        broker.assert_different_workers(sub, pub)
        return sub, pub

    def paho(self, port, client_id, **kw):
        """A PahoClient (not connected yet), disconnected at the end."""
        c = PahoClient(port, client_id, **kw)
        return self.own(c, c.disconnect)

    def close(self):
        while self.ends:
            self.ends.pop()()


def offline_session(target, cid, filters):
    """Leaves a persistent session for cid subscribed to filters, offline
    (after DISCONNECT)."""
    c = raw(target, cid, clean=False)
    c.subscribe(filters)
    c.disconnect()


def resumed(target, cid, why=None, **connect_kw):
    """A connection that resumed cid's stored session: CONNACK session
    present 1 (asserted; why says what it means otherwise)."""
    c = raw(target, cid, clean=False, **connect_kw)
    if why is None:
        assert c.connack.session_present is True
    else:
        assert c.connack.session_present is True, why
    return c


def close_all(clients):
    """Close each of the clients (None entries skipped)."""
    for c in clients:
        if c:
            c.close()


def closed_without_reply(c, timeout=5):
    """Assert the server closes the connection within T(timeout), sending nothing first."""
    got = c.expect_closed(T(timeout))
    assert got == [], f"expected the connection closed without a reply, got {got!r}"


def closed_without_reply_to(target, data, **raw_kw):
    """A new connection, raw(target, **raw_kw), sends data: the server
    closes it without a reply (closed_without_reply). Returns the client."""
    with raw(target, **raw_kw) as c:
        c.send(data)
        closed_without_reply(c)
    return c


# ------------------------------------------------------------ placement and instruments

class Placement:
    """Connected clients placed on a chosen worker: the listener gives each
    new connection to the least-loaded worker, so a client landing on the
    wrong one is kept open (it shifts the balance) and another is tried."""

    def __init__(self, broker):
        self.broker = broker
        self.spare = []

    def client(self, tag, worker, same=True, tries=6, factory=None):
        make = (lambda: factory(self.broker)) if factory else None
        return raw_on(self.broker, worker if same else None, avoid=None if same else worker,
                      tag=tag, tries=tries, spare=self.spare, make=make)

    def close(self):
        for c in self.spare:
            c.close()


class PeakPss:
    """Samples the Pss of some processes (rings aside) every 20 ms on a
    thread; .peak is the largest sum seen."""

    def __init__(self, pids):
        self.pids = list(pids)
        self.peak = 0
        self.stop = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, sum(pss_kb(p, shmem=False) for p in self.pids))
            self.stop.wait(0.02)

    def finish(self):
        self.stop.set()
        self.t.join(T(5))
        self.peak = max(self.peak, sum(pss_kb(p, shmem=False) for p in self.pids))
        return self.peak


class PublishReader:
    """Reads a RawClient's socket on a thread as fast as it can, parses every
    packet and acknowledges each QoS 1 PUBLISH; a subclass's take(publishes)
    records each batch (under .cond). close() stops reading; a partial
    packet goes back to the client's buffer."""

    def __init__(self, client):
        self.c = client
        self.cond = threading.Condition()
        self.stop = threading.Event()
        self.error = None
        self.buf = bytearray(client.buf)    # bytes of a packet not yet whole
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def take(self, publishes):
        raise NotImplementedError

    def _run(self):
        s, buf = self.c.sock, self.buf
        poller = select.poll()
        poller.register(s, select.POLLIN)
        try:
            while not self.stop.is_set():
                if not poller.poll(50):
                    continue
                data = s.recv(4 << 20)
                if not data:
                    raise ConnectionError("server closed the connection")
                buf += data
                got, acks, off = [], [], 0
                while True:
                    p, n = mqttraw.parse_one(memoryview(buf)[off:])
                    if p is None:
                        break
                    off += n
                    if p.type == mqttraw.PUBLISH:
                        if p.qos == 1:
                            acks.append(mqttraw.puback(p.pid))
                        got.append(p)
                del buf[:off]
                if acks:
                    s.sendall(b"".join(acks))
                if got:
                    with self.cond:
                        self.take(got)
                        self.cond.notify_all()
        except Exception as e:  # reported by wait_until()
            with self.cond:
                self.error = e
                self.cond.notify_all()

    def wait_until(self, cond, timeout, what):
        """Until cond() (called under .cond), within T(timeout); fails if the reader failed."""
        with self.cond:
            ok = self.cond.wait_for(lambda: self.error is not None or cond(), T(timeout))
            assert self.error is None, f"reader failed: {self.error!r}"
            assert ok, f"timed out after {T(timeout):.1f} s waiting for {what}"

    def close(self):
        if self.stop.is_set():
            return
        self.stop.set()
        self.t.join(T(5))
        self.c.buf = self.buf


# ------------------------------------------------------------ paho wrapper

class PahoClient:
    """paho-mqtt 1.6.1 client run on its own network thread, with bounded
    waits for CONNACK, SUBACK, publish completion and incoming messages."""

    def __init__(self, port, client_id, clean_session=True, keepalive=60,
                 will=None, host="127.0.0.1", username=None, password=None, ws_path=None,
                 tls=None, v5=False):
        """ws_path: MQTT over WebSocket, asking for that path ("/mqtt");
        tls: (CA file, certificate file or None, key file or None), over TLS;
        v5: speak MQTT 5 (clean_session is then Clean Start)."""
        self.port = port
        self.host = host
        self.client_id = client_id
        self.v5 = v5
        self.clean_start = clean_session
        self.connack_props = None
        self.c = mqtt.Client(client_id=client_id,
                             clean_session=None if v5 else clean_session,
                             protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
                             reconnect_on_failure=False,
                             transport="tcp" if ws_path is None else "websockets")
        if ws_path is not None:
            self.c.ws_set_options(path=ws_path)
        if tls is not None:
            cafile, certfile, keyfile = tls
            self.c.tls_set(ca_certs=cafile, certfile=certfile, keyfile=keyfile)
        if will is not None:
            topic, payload, qos, retain = will
            self.c.will_set(topic, payload, qos, retain)
        if username is not None:
            self.c.username_pw_set(username, password)
        self.keepalive = keepalive
        self.lock = threading.Condition()
        self.messages = []
        self.connack = None
        self.granted = {}
        self.disconnected = None
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        self.c.on_subscribe = self._on_subscribe
        self.c.on_disconnect = self._on_disconnect

    # Under MQTT 5 paho passes reason codes (ReasonCodes, compared by value) and properties.
    def _on_connect(self, c, ud, flags, rc, props=None):
        with self.lock:
            self.connack = (flags.get("session present", 0), getattr(rc, "value", rc))
            self.connack_props = props
            self.lock.notify_all()

    def _on_message(self, c, ud, msg):
        with self.lock:
            self.messages.append(msg)
            self.lock.notify_all()

    def _on_subscribe(self, c, ud, mid, granted, props=None):
        with self.lock:
            self.granted[mid] = [getattr(g, "value", g) for g in granted]
            self.lock.notify_all()

    def _on_disconnect(self, c, ud, rc, props=None):
        with self.lock:
            self.disconnected = getattr(rc, "value", rc)
            self.lock.notify_all()

    def _wait(self, cond, timeout, what):
        timeout = T(timeout)
        with self.lock:
            if not self.lock.wait_for(cond, timeout):
                raise AssertionError(f"[{self.client_id}] timed out after {timeout:.1f} s "
                                     f"waiting for {what}")

    def connect(self, expect_rc=0, properties=None):
        if self.v5:
            self.c.connect(self.host, self.port, self.keepalive, clean_start=self.clean_start,
                           properties=properties)
        else:
            self.c.connect(self.host, self.port, self.keepalive)
        self.c.loop_start()
        self._wait(lambda: self.connack is not None, 5, "CONNACK")
        assert self.connack[1] == expect_rc, f"CONNACK rc {self.connack[1]}, expected {expect_rc}"
        return self.connack

    def subscribe(self, topic, qos=0, properties=None):
        rc, mid = self.c.subscribe(topic, qos, properties=properties)
        assert rc == mqtt.MQTT_ERR_SUCCESS, f"subscribe failed locally: {rc}"
        self._wait(lambda: mid in self.granted, 5, f"SUBACK for {topic!r}")
        return self.granted[mid]

    def unsubscribe(self, topic):
        done = threading.Event()
        self.c.on_unsubscribe = lambda c, ud, mid, *v5: done.set()
        self.c.unsubscribe(topic)
        assert done.wait(T(5)), f"[{self.client_id}] no UNSUBACK for {topic!r}"

    def publish(self, topic, payload, qos=0, retain=False, wait=True, properties=None):
        info = self.c.publish(topic, payload, qos, retain, properties=properties)
        if wait:
            info.wait_for_publish(T(10))
            assert info.is_published(), f"[{self.client_id}] publish to {topic!r} not completed"
        return info

    def payloads(self):
        """(topic, payload as str) of every message received so far."""
        with self.lock:
            return [(msg.topic, msg.payload.decode()) for msg in self.messages]

    def held_qos2(self):
        """QoS 2 messages this client received and sent PUBREC for, awaiting
        PUBREL, by packet id: paho keeps them as session state and hands each
        to on_message when its PUBREL comes (paho-mqtt 1.6.1 internals)."""
        with self.c._in_message_mutex:
            return {mid: (msg.topic, msg.payload.decode())
                    for mid, msg in self.c._in_messages.items()}

    def wait_messages(self, n, timeout=10):
        self._wait(lambda: len(self.messages) >= n, timeout,
                   f"{n} messages (have {len(self.messages)})")
        with self.lock:
            return list(self.messages)

    def wait_disconnected(self, timeout=5):
        self._wait(lambda: self.disconnected is not None, timeout, "disconnection")

    @property
    def local_port(self):
        s = self.c.socket()
        assert s is not None, f"[{self.client_id}] not connected"
        return getattr(s, "_socket", s).getsockname()[1]   # over WebSocket, paho's wrapper

    def disconnect(self):
        try:
            self.c.disconnect()
        finally:
            self.c.loop_stop()

    def close(self):
        """Drop the connection without DISCONNECT."""
        s = self.c.socket()
        self.c.loop_stop()
        if s is not None:
            s.close()


def drop_paho(broker, c):
    """DISCONNECT a paho client and wait until the server side is gone, so
    that the listener's load count no longer includes it."""
    port = c.local_port
    c.disconnect()
    wait_for(lambda: server_side_inode(broker.port, port) is None, 5,
             f"the server to close the connection from port {port}")


def published(info):
    """Whether paho got the PUBACK / PUBCOMP of a publish (paho raises for a
    publish made while it was not connected)."""
    try:
        return info.is_published()
    except (RuntimeError, ValueError):
        return False


# ------------------------------------------------------------ CLI clients

def _cli(name):
    path = shutil.which(name)
    assert path, f"{name} not found (install mosquitto-clients)"
    return path


class _CliProc:
    """A mosquitto-clients subprocess whose output is read line by line on a
    thread (line-buffered through stdbuf)."""

    def __init__(self, argv, stdin=None):
        cmd = (["stdbuf", "-oL"] if shutil.which("stdbuf") else []) + argv
        self.proc = subprocess.Popen(cmd, stdin=stdin, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self.lines = []
        self.cond = threading.Condition()
        self.t = threading.Thread(target=self._reader, daemon=True)
        self.t.start()

    def _reader(self):
        for raw in self.proc.stdout:
            with self.cond:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def wait_line(self, pattern, timeout, what):
        rx = re.compile(pattern)
        timeout = T(timeout)
        with self.cond:
            ok = self.cond.wait_for(lambda: any(rx.search(l) for l in self.lines), timeout)
            if not ok:
                raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what}; "
                                     f"output so far: {self.lines[-20:]!r}")

    def port_to(self, broker_port):
        return wait_for(lambda: client_port_of_pid(self.proc.pid, broker_port), 5,
                        "the client's TCP connection in /proc")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(T(5))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class CliSub(_CliProc):
    """mosquitto_sub; messages parsed into (topic, payload, qos, retain)."""

    FMT = "MSG %q %r %t %p"

    def __init__(self, port, topic, qos, client_id, extra=()):
        self.client_id = client_id
        self.broker_port = port
        super().__init__([_cli("mosquitto_sub"), "-h", "127.0.0.1", "-p", str(port),
                          "-V", "mqttv311", "-t", topic, "-q", str(qos), "-i", client_id,
                          "-d", "-F", self.FMT, *extra])

    def wait_subscribed(self):
        self.wait_line(r"received SUBACK", 5, f"mosquitto_sub {self.client_id} SUBACK")
        return self

    @property
    def local_port(self):
        return self.port_to(self.broker_port)

    def messages(self):
        out = []
        with self.cond:
            for l in self.lines:
                if l.startswith("MSG "):
                    _, q, r, topic, payload = (l.split(" ", 4) + [""])[:5]
                    out.append((topic, payload, int(q), int(r)))
        return out

    def wait_messages(self, n, timeout=10):
        wait_for(lambda: len(self.messages()) >= n, timeout,
                 f"mosquitto_sub {self.client_id} to get {n} messages")
        return self.messages()


class CliPub(_CliProc):
    """mosquitto_pub -l: stays connected and publishes one message per line
    written to it."""

    def __init__(self, port, topic, qos, client_id, extra=()):
        self.client_id = client_id
        self.broker_port = port
        super().__init__([_cli("mosquitto_pub"), "-h", "127.0.0.1", "-p", str(port),
                          "-V", "mqttv311", "-t", topic, "-q", str(qos), "-i", client_id,
                          "-d", "-l", *extra], stdin=subprocess.PIPE)
        self.wait_line(r"received CONNACK", 5, f"mosquitto_pub {client_id} CONNACK")

    @property
    def local_port(self):
        return self.port_to(self.broker_port)

    def send_line(self, line):
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def finish(self, timeout=10):
        """Close stdin; mosquitto_pub completes the publishes and exits 0."""
        self.proc.stdin.close()
        try:
            rc = self.proc.wait(T(timeout))
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"mosquitto_pub {self.client_id} did not finish; "
                                 f"output: {self.lines[-20:]!r}")
        self.t.join(T(5))
        assert rc == 0, f"mosquitto_pub {self.client_id} exit {rc}: {self.lines[-20:]!r}"


def mosquitto_pub_once(port, topic, message, qos=0, client_id=None, retain=False, timeout=10):
    """A one-shot mosquitto_pub; asserts it exits 0."""
    cmd = [_cli("mosquitto_pub"), "-h", "127.0.0.1", "-p", str(port), "-V", "mqttv311",
           "-t", topic, "-m", message, "-q", str(qos), "-i", client_id or uid("pub")]
    if retain:
        cmd.append("-r")
    r = subprocess.run(cmd, capture_output=True, timeout=T(timeout))
    assert r.returncode == 0, f"mosquitto_pub failed ({r.returncode}): {r.stderr!r}"
