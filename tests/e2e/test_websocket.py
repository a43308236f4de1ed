"""MQTT over WebSocket (ws:// listeners): Paho clients over WebSocket and
over TCP exchange messages across workers; a listener with a path refuses
another; MQTT packets split across frames and several in one frame; the
handshake's refusals; hostile frames, each closed with its close code
while a bystander keeps being served (the `bystander` fixture,
conftest.py); a never-finished upgrade closed by connect_timeout; and a
browser (headless Chromium running MQTT.js) publishing and subscribing.
"""

import os
import shutil
import signal
import subprocess

import pytest

import mqttraw as m
import wsraw
from wsraw import OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, WsClient, frame
from conftest import IOTD_BIN, REPO, free_port
from helpers import (T, PahoClient, server_side_inode, socket_inodes, uid, wait_for)
from test_reload import accept_listener_change

pytestmark = pytest.mark.iotd_only

MAX_PACKET = 4096


@pytest.fixture
def broker(request, start_broker):
    """A daemon with a TCP listener (first: the fixtures' probes use it), a
    ws:// listener serving /mqtt (.ws_port) and one serving any path
    (.any_port)."""
    mark = request.node.get_closest_marker("broker_config")
    opts = dict(mark.kwargs) if mark else {}
    tcp, ws, anyp = free_port(), free_port(), free_port()
    b = start_broker(listen=[f"127.0.0.1:{tcp}", f"ws://127.0.0.1:{ws}/mqtt",
                             f"ws://127.0.0.1:{anyp}"], **opts)
    b.ws_port, b.any_port = ws, anyp
    return b


def paho(port, tag, ws_path=None):
    c = PahoClient(port, uid(tag), ws_path=ws_path)
    c.connect()
    return c


def ws_worker(broker, client):
    """Pid of the worker holding a ws client's server side."""
    cport = client.local_port

    def find():
        inode = server_side_inode(broker.ws_port, cport)
        return next((pid for pid in broker.worker_pids()
                     if inode is not None and inode in socket_inodes(pid)), None)
    return wait_for(find, T(5), f"the worker holding the WebSocket from port {cport}")


def ws_mqtt(port, cid=None, path="/mqtt"):
    """A raw WebSocket, upgraded, with its CONNACK in."""
    c = WsClient(port)
    c.handshake(path)
    c.send(frame(OP_BINARY, m.connect(cid or uid("wsraw"))))
    assert c.recv_mqtt().type == m.CONNACK
    return c


def test_ws_and_tcp_clients_exchange_messages_across_workers(broker):
    wsub = paho(broker.ws_port, "wsub", ws_path="/mqtt")
    wpub = paho(broker.ws_port, "wpub", ws_path="/mqtt")
    tsub = paho(broker.port, "tsub")
    tpub = paho(broker.port, "tpub")
    wsub.subscribe("x/#", qos=1)
    tsub.subscribe("x/#", qos=1)
    # Both WebSockets, on different workers: the message crosses the router.
    assert ws_worker(broker, wsub) != ws_worker(broker, wpub)
    big = "b" * 20000          # several of wslay's frames out, several TCP reads in
    wpub.publish("x/ws", "from ws", qos=1)
    tpub.publish("x/tcp", "from tcp", qos=2)
    wpub.publish("x/big", big, qos=0)
    for c in (wsub, tsub):
        c.wait_messages(3)
        assert sorted(c.payloads()) == [("x/big", big), ("x/tcp", "from tcp"),
                                        ("x/ws", "from ws")]
    for c in (wsub, tsub, wpub, tpub):
        c.disconnect()


def test_path_restricted_listener_refuses_another_path(broker):
    with WsClient(broker.ws_port) as c:
        c.send(wsraw.upgrade_request("/other")[0])
        status, _ = c.http_response()
        assert status == 404
        c.expect_eof()
    # A query after the path is still the path; the other listener serves any.
    with WsClient(broker.ws_port) as c:
        c.handshake("/mqtt?client=1")
    with WsClient(broker.any_port) as c:
        c.handshake("/whatever/path")
        c.send(frame(OP_BINARY, m.connect(uid("any"))))
        assert c.recv_mqtt().type == m.CONNACK


def test_packets_split_across_frames_and_packed_in_one(broker):
    c = WsClient(broker.ws_port)
    c.handshake("/mqtt", protocol="chat, mqttv3.1, mqtt", chosen="mqttv3.1")
    connect = m.connect(uid("split"))
    # CONNECT in three frames of one fragmented message, then in one frame
    # SUBSCRIBE, PUBLISH (to itself) and PINGREQ.
    c.send(frame(OP_BINARY, connect[:3], fin=False) + frame(OP_CONT, connect[3:7], fin=False) +
           frame(OP_CONT, connect[7:]))
    assert c.recv_mqtt().type == m.CONNACK
    c.send(frame(OP_BINARY, m.subscribe(1, [("s/t", 0)]) + m.publish("s/t", b"self") +
                 m.pingreq()))
    got = [c.recv_mqtt() for _ in range(3)]
    assert sorted(p.type for p in got) == sorted([m.SUBACK, m.PUBLISH, m.PINGRESP])
    # A ping is answered with its payload; a client's close, with the same code.
    c.send(frame(OP_PING, b"are you there"))
    fin, op, payload = c.recv_frame()
    assert (op, payload) == (OP_PONG, b"are you there")
    c.send(frame(OP_CLOSE, wsraw.close_payload(1000)))
    c.expect_close(1000)
    c.close()


@pytest.mark.parametrize("request_bytes,status", [
    (wsraw.upgrade_request(protocol=None)[0], 400),
    (wsraw.upgrade_request(protocol="wamp")[0], 400),
    (wsraw.upgrade_request(version="8")[0], 426),
    (wsraw.upgrade_request(key="c2hvcnQ=")[0], 400),
    (wsraw.upgrade_request(method="POST")[0], 405),
    (b"GET /mqtt HTTP/1.1\r\nHost: x\r\n\r\n", 426),
    (b"GET /mqtt HTTP/1.0\r\nHost: x\r\n\r\n", 400),
    (wsraw.upgrade_request(extra=[f"X-Flood-{i}: y" for i in range(70)])[0], 431),
], ids=["no-subprotocol", "other-subprotocol", "version-8", "short-key", "post",
        "plain-http", "http-1.0", "header-flood"])
def test_bad_upgrade_is_refused(broker, bystander, request_bytes, status):
    with WsClient(broker.ws_port) as c:
        c.send(request_bytes)
        got, headers = c.http_response()
        assert got == status
        if status == 426:
            assert headers["sec-websocket-version"] == "13"
        c.expect_eof()
    bystander.check()


@pytest.mark.broker_config(max_http_request_size=1024)
def test_upgrade_request_past_its_bound_is_refused(broker, bystander):
    with WsClient(broker.ws_port) as c:
        c.send(wsraw.upgrade_request(extra=["X-Long: " + "a" * 2000])[0])
        status, _ = c.http_response()
        assert status == 431
        c.expect_eof()
    bystander.check()


@pytest.mark.broker_config(max_packet_size=MAX_PACKET)
@pytest.mark.parametrize("data,code", [
    (frame(OP_BINARY, m.pingreq(), mask=False), 1002),
    (frame(0x3, b"x"), 1002),
    (frame(OP_PING, b"p" * 126), 1002),
    (frame(OP_PING, b"p", fin=False), 1002),
    (frame(OP_CLOSE, wsraw.close_payload(1005)), 1002),
    (frame(OP_CLOSE, wsraw.close_payload(999)), 1002),
    (frame(OP_BINARY, m.pingreq(), rsv=4), 1002),
    (frame(OP_CONT, b"x"), 1002),
    (frame(OP_TEXT, b"hello"), 1003),
    # Declared past max_packet_size (and a fixed header): refused from its header.
    (frame(OP_BINARY, b"x" * 10, length=MAX_PACKET + 100), 1009),
    # Frames of one message past it together (PINGREQs, answered meanwhile).
    (frame(OP_BINARY, m.pingreq() * 1500, fin=False) + frame(OP_CONT, m.pingreq() * 1500),
     1009),
], ids=["unmasked", "bad-opcode", "control-over-125", "fragmented-control",
        "close-code-1005", "close-code-999", "rsv-bit", "continuation-first", "text",
        "oversized-frame", "oversized-message"])
def test_hostile_frames_are_closed_with_their_code(broker, bystander, data, code):
    c = ws_mqtt(broker.ws_port)
    c.send(data)
    c.expect_close(code)
    c.close()
    bystander.check()


@pytest.mark.broker_config(connect_timeout=1)
def test_never_finished_upgrade_is_closed_after_connect_timeout(broker, bystander):
    with WsClient(broker.ws_port, timeout=T(10)) as c:
        c.send(wsraw.upgrade_request()[0][:40])
        c.expect_eof(T(5))
    bystander.check()


def test_reload_changes_the_path_a_listener_serves(start_broker):
    """The same address with another path keeps its socket; the new
    listener serves the new path only."""
    tcp, ws = free_port(), free_port()
    b = start_broker(listen=[f"127.0.0.1:{tcp}", f"ws://127.0.0.1:{ws}/mqtt"],
                     listen_in_config=True)
    b.reload(listen_addresses=[f"127.0.0.1:{tcp}", f"ws://127.0.0.1:{ws}/live"])
    accept_listener_change(b)

    def status(path):
        with WsClient(ws) as c:
            c.send(wsraw.upgrade_request(path)[0])
            return c.http_response()[0]
    wait_for(lambda: status("/live") == 101, T(10), "the new listener to serve /live")
    assert status("/mqtt") == 404


def test_tls_listeners_need_a_certificate(tmp_path):
    conf = tmp_path / "empty.conf"
    conf.write_text("")
    for addr in (f"mqtts://127.0.0.1:{free_port()}", f"wss://127.0.0.1:{free_port()}/mqtt"):
        r = subprocess.run([IOTD_BIN, "-t", "-c", str(conf), "-l", addr],
                           capture_output=True, text=True, timeout=T(10))
        assert r.returncode != 0
        assert "needs tls.cert_file and tls.key_file" in r.stderr, r.stderr


# ---------------------------------------------------------------- browser

MQTTJS = os.environ.get("IOTD_MQTTJS",
                        str(REPO / "build/npm/node_modules/mqtt/dist/mqtt.min.js"))
CHROMIUM = shutil.which("chromium")


needs_browser = pytest.mark.skipif(CHROMIUM is None or not os.path.exists(MQTTJS),
                                   reason="needs chromium and MQTT.js (contrib/dev.sh "
                                   "installs both)")


def browser_round_trip(tcp_port, ws_port, tmp_path, scheme="ws", flags=()):
    """MQTT.js in headless Chromium (ws_browser.html, with Chromium's extra
    flags) connects to <scheme>://127.0.0.1:<ws_port>/mqtt, subscribes,
    publishes and gets its message back, then publishes the result, which
    a Paho client over TCP to tcp_port waits for."""
    tag = uid("br")
    watcher = paho(tcp_port, "watch")
    watcher.subscribe(f"browser/result/{tag}", qos=1)
    page = (REPO / "tests/e2e/ws_browser.html").as_uri()
    url = f"{page}?scheme={scheme}&port={ws_port}&id={tag}&mqttjs={MQTTJS}"
    proc = subprocess.Popen(
        [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium'}", *flags, url],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        watcher.wait_messages(1, timeout=60)
        assert watcher.payloads() == [(f"browser/result/{tag}", "ok")]
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(T(10))
        watcher.disconnect()


@needs_browser
def test_browser_publishes_and_subscribes_over_websocket(broker, tmp_path):
    """MQTT.js in headless Chromium over ws://."""
    browser_round_trip(broker.port, broker.ws_port, tmp_path)
