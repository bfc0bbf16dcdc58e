"""End to end: real WebSocket clients (python ``websockets``) through the appliance to a real origin.

``ws://`` and ``wss://`` go through CONNECT (as browsers and ``websockets``
send them through a proxy), ``wss://`` intercepted with the capture CA
trusted; an absolute-form ``GET ws://`` upgrade is sent by hand.  The
origin is tests/ws_origin.py, the ``websockets`` server in its own process.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time

import pytest
import requests
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from wsproto import WSConnection
from wsproto.connection import ConnectionType
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage

from certs import OriginCA
from conftest import REPO, child_env, pid_alive, wait_for


class WsOrigin:
    """tests/ws_origin.py in its own process."""

    def __init__(self, *arguments: str) -> None:
        self.process = subprocess.Popen([sys.executable, str(REPO / "tests" / "ws_origin.py"), *arguments],
                                        stdout=subprocess.PIPE, text=True, env=child_env())
        self.port = int(self.process.stdout.readline().split()[1])

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


@pytest.fixture(scope="module")
def origins(tmp_path_factory):
    """A deflate origin, one without deflate, and a TLS one (signed by a CA the appliance trusts)."""
    ca = OriginCA(tmp_path_factory.mktemp("wsca"))
    made = {"plain": WsOrigin(), "no_deflate": WsOrigin("--no-deflate"),
            "tls": WsOrigin(*map(str, ca.issue("ws", ["localhost", "127.0.0.1"])))}
    made["ca"] = ca
    yield made
    for origin in made.values():
        if isinstance(origin, WsOrigin):
            origin.stop()


@pytest.fixture
def ws_appliance(make_appliance, origins):
    return make_appliance(tls={"upstream_ca": origins["ca"].path}).start()


def client_tls(appliance) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(appliance.var / "ca" / "ca.pem"))
    return context


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 60))


def only_flow(appliance, session_id: int, **params) -> dict:
    (summary,) = appliance.wait_for_flows(session_id, 1)
    return appliance.api("GET", f"/api/flows/{summary['id']}").json()


def wait_for_close(appliance, flow_id: int) -> dict:
    def closed():
        detail = appliance.api("GET", f"/api/flows/{flow_id}").json()
        return detail if detail.get("websocket", {}).get("open") is False else None
    return wait_for(closed, 15, interval=0.1)


def test_ws_text_binary_and_client_close_are_captured(ws_appliance, origins):
    """ws:// through the proxy: text and binary echo; the flow (101) lists each message and the client's close."""
    session = ws_appliance.new_session()

    async def talk():
        async with connect(f"ws://127.0.0.1:{origins['plain'].port}/chat?room=1", proxy=ws_appliance.proxy_url) as ws:
            await ws.send("héllo")
            assert await ws.recv() == "héllo"
            await ws.send(b"\x00\x01\xff")
            assert await ws.recv() == b"\x00\x01\xff"
            await ws.close(4000, "done here")
    run(talk())
    detail = wait_for_close(ws_appliance, ws_appliance.wait_for_flows(session["id"], 1)[0]["id"])
    assert detail["status"] == 101 and detail["kind"] == "websocket" and detail["path"] == "/chat?room=1"
    section = detail["websocket"]
    assert [(m["from_client"], m["type"], m["content"], m["encoding"]) for m in section["messages"]] == [
        (True, "text", "héllo", "utf-8"), (False, "text", "héllo", "utf-8"),
        (True, "binary", "AAH/", "base64"), (False, "binary", "AAH/", "base64")]
    assert section["close"] == {"code": 4000, "reason": "done here", "closed_by": "client"}
    assert detail["duration_ms"] is not None
    listed = ws_appliance.flows(session["id"], filter="~websocket")["flows"]
    assert [f["id"] for f in listed] == [detail["id"]]
    assert ws_appliance.flows(session["id"], filter="!~websocket")["total"] == 0


def test_wss_is_intercepted_and_origin_close_relayed(ws_appliance, origins):
    """wss:// with the capture CA trusted: messages pass and are recorded; the origin's close code reaches the client."""
    session = ws_appliance.new_session()

    async def talk():
        async with connect(f"wss://localhost:{origins['tls'].port}/secure", proxy=ws_appliance.proxy_url,
                           ssl=client_tls(ws_appliance)) as ws:
            await ws.send("secret")
            assert await ws.recv() == "secret"
            await ws.send("close 4002 origin says bye")
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
            return closed.value.rcvd
    received = run(talk())
    assert (received.code, received.reason) == (4002, "origin says bye")
    detail = wait_for_close(ws_appliance, ws_appliance.wait_for_flows(session["id"], 1)[0]["id"])
    assert detail["scheme"] == "https" and detail["host"] == "localhost"
    assert [m["content"] for m in detail["websocket"]["messages"]] == ["secret", "secret", "close 4002 origin says bye"]
    assert detail["websocket"]["close"] == {"code": 4002, "reason": "origin says bye", "closed_by": "server"}


def test_ping_and_pong_both_ways(ws_appliance, origins):
    """A client's ping is answered through the proxy, and so is the origin's."""
    async def talk():
        async with connect(f"ws://127.0.0.1:{origins['plain'].port}/", proxy=ws_appliance.proxy_url) as ws:
            latency = await asyncio.wait_for(await ws.ping(b"from client"), 10)
            await ws.send("ping")
            assert await ws.recv() == "pong"
            return latency
    assert run(talk()) >= 0


def test_deflate_negotiated_per_side(ws_appliance, origins):
    """Client with deflate, origin without: the client compresses with the proxy only; messages stored inflated.
    A client without deflate gets none, and the origin is offered none."""
    session = ws_appliance.new_session()
    text = "compressible " * 5000

    async def talk(port: int, compression: str | None):
        async with connect(f"ws://127.0.0.1:{port}/", proxy=ws_appliance.proxy_url, compression=compression,
                           max_size=None) as ws:
            await ws.send("extensions")
            origin_side = await ws.recv()
            await ws.send(text)
            assert await ws.recv() == text
            return origin_side, ws.response.headers.get("Sec-WebSocket-Extensions", "")
    origin_side, client_side = run(talk(origins["no_deflate"].port, "deflate"))
    offered, accepted = origin_side.split("|")
    assert offered.startswith("permessage-deflate") and accepted == ""
    assert client_side.startswith("permessage-deflate")
    origin_side, client_side = run(talk(origins["plain"].port, None))
    assert origin_side == "|" and client_side == ""
    flows = ws_appliance.wait_for_flows(session["id"], 2)
    first = ws_appliance.api("GET", f"/api/flows/{flows[0]['id']}").json()
    stored = [m for m in first["websocket"]["messages"] if m["content"] == text]
    assert len(stored) == 2 and stored[0]["size"] == len(text)


def test_live_socket_shows_messages_while_open(ws_appliance, origins):
    """While the socket stays open its flow is listed, its messages grow, and the events stream announces them."""
    session = ws_appliance.new_session()
    events: list[str] = []
    stop = threading.Event()

    def listen():
        with requests.get(f"{ws_appliance.admin_url}/api/sessions/{session['id']}/events", stream=True, timeout=30,
                          headers={"Authorization": f"Bearer {ws_appliance.token}"}) as response:
            for line in response.iter_lines():
                if line.startswith(b"event: "):
                    events.append(line[7:].decode())
                if stop.is_set() or len(events) > 50:
                    return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    time.sleep(0.5)

    async def talk():
        async with connect(f"ws://127.0.0.1:{origins['plain'].port}/live", proxy=ws_appliance.proxy_url) as ws:
            for n in range(3):
                await ws.send(f"tick {n}")
                await ws.recv()
            flow_id = await asyncio.to_thread(lambda: ws_appliance.wait_for_flows(session["id"], 1)[0]["id"])

            def six_messages():
                detail = ws_appliance.api("GET", f"/api/flows/{flow_id}").json()
                return detail if detail["websocket"]["message_count"] == 6 else None
            detail = await asyncio.to_thread(wait_for, six_messages, 15)
            assert detail["websocket"]["open"] is True
            page = await asyncio.to_thread(ws_appliance.api, "GET", f"/api/flows/{flow_id}/messages",
                                           params={"offset": 4, "limit": 10})
            return detail, page.json()
    detail, page = run(talk())
    assert [m["content"] for m in page["messages"]] == ["tick 2", "tick 2"] and page["total"] == 6
    wait_for(lambda: "flow" in events and "messages" in events, 10)
    stop.set()


def proxy_rss(appliance) -> int:
    with open(f"/proc/{appliance.process.pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_slow_reader_pauses_the_origin_with_bounded_memory(ws_appliance, origins):
    """The origin sends 128 MiB while the client does not read: the proxy's memory stays bounded, nothing is lost."""
    count, size = 2048, 65536

    async def talk():
        async with connect(f"ws://127.0.0.1:{origins['no_deflate'].port}/", proxy=ws_appliance.proxy_url,
                           max_size=None, max_queue=4, compression=None) as ws:
            before = proxy_rss(ws_appliance)
            await ws.send(f"flood {count} {size}")
            await asyncio.sleep(3)  # the client reads nothing: its queue fills, then the sockets, then the proxy's
            during = proxy_rss(ws_appliance)
            received = 0
            for _ in range(count):
                received += len(await ws.recv())
            return before, during, received
    before, during, received = run(talk())
    assert received == count * size
    assert during - before < 32 * 1024 * 1024, (before, during)


def test_absolute_form_upgrade_without_connect(ws_appliance, origins):
    """A plain-HTTP proxy request ``GET http://host/path`` with Upgrade: websocket is relayed too."""
    session = ws_appliance.new_session()
    client = WSConnection(ConnectionType.CLIENT)
    with socket.create_connection(("127.0.0.1", ws_appliance.proxy_port), timeout=10) as sock:
        handshake = client.send(Request(host=f"127.0.0.1:{origins['plain'].port}",
                                        target=f"http://127.0.0.1:{origins['plain'].port}/abs"))
        sock.sendall(handshake)
        events = []
        sent = False
        while not any(isinstance(e, TextMessage) for e in events):
            data = sock.recv(65536)
            assert data, events
            client.receive_data(data)
            events.extend(client.events())
            if any(isinstance(e, AcceptConnection) for e in events) and not sent:
                sock.sendall(client.send(TextMessage("absolute")))
                sent = True
        assert [e.data for e in events if isinstance(e, TextMessage)] == ["absolute"]
        sock.sendall(client.send(CloseConnection(1000, "")))
    detail = wait_for_close(ws_appliance, ws_appliance.wait_for_flows(session["id"], 1)[0]["id"])
    assert detail["path"] == "/abs" and [m["content"] for m in detail["websocket"]["messages"]] == ["absolute"] * 2


def test_killed_session_manager_loses_and_doubles_no_message(ws_appliance, origins):
    """kill -9 of the session manager mid-socket: every message is stored exactly once, in order."""
    session = ws_appliance.new_session()
    total = 300

    async def talk():
        async with connect(f"ws://127.0.0.1:{origins['plain'].port}/", proxy=ws_appliance.proxy_url) as ws:
            for n in range(total):
                if n == total // 2:
                    os.kill(ws_appliance.sessiond_pid(), signal.SIGKILL)
                await ws.send(f"m{n}")
                assert await ws.recv() == f"m{n}"
                if n % 20 == 0:
                    await asyncio.sleep(0.02)
            await ws.close()
    old = ws_appliance.sessiond_pid()
    run(talk())
    wait_for(lambda: not pid_alive(old), 10)
    wait_for(lambda: ws_appliance.status().get("session_manager", {}).get("connected"), 30)
    flow_id = ws_appliance.wait_for_flows(session["id"], 1, timeout=30)[0]["id"]
    detail = wait_for_close(ws_appliance, flow_id)
    contents = []
    offset = 0
    while True:
        page = ws_appliance.api("GET", f"/api/flows/{flow_id}/messages", params={"offset": offset, "limit": 1000}).json()
        contents += [m["content"] for m in page["messages"]]
        offset += len(page["messages"])
        if not page["messages"]:
            break
    assert contents == [f"m{n}" for n in range(total) for _ in (0, 1)]
    assert detail["websocket"]["message_count"] == 2 * total


def test_paused_session_records_no_messages(ws_appliance, origins):
    """Messages sent while the session is paused are relayed but not recorded; after resume they are again."""
    session = ws_appliance.new_session()
    path = f"/api/sessions/{session['id']}"

    def rules_applied(state: str):
        return lambda: ws_appliance.api("GET", path).json()["state"] == state

    async def talk():
        async with connect(f"ws://127.0.0.1:{origins['plain'].port}/", proxy=ws_appliance.proxy_url) as ws:
            await ws.send("before")
            assert await ws.recv() == "before"
            await asyncio.to_thread(ws_appliance.api, "POST", path + "/pause")
            await asyncio.to_thread(wait_for, rules_applied("paused"), 10)
            await asyncio.sleep(0.5)  # the rules reach the proxy
            await ws.send("while paused")
            assert await ws.recv() == "while paused"
            await asyncio.to_thread(ws_appliance.api, "POST", path + "/resume")
            await asyncio.sleep(0.5)
            await ws.send("after")
            assert await ws.recv() == "after"
    run(talk())
    detail = wait_for_close(ws_appliance, ws_appliance.wait_for_flows(session["id"], 1)[0]["id"])
    assert [m["content"] for m in detail["websocket"]["messages"]] == ["before", "before", "after", "after"]


# -- the proxy process killed with sockets open ------------------------------------

PROXY_STOPPED = {"code": 1006, "reason": "proxy stopped", "closed_by": "proxy"}


def message_count(appliance, flow_id: int, count: int):
    """A predicate: the flow's detail once it holds ``count`` messages."""
    def check():
        detail = appliance.api("GET", f"/api/flows/{flow_id}").json()
        return detail if detail["websocket"]["message_count"] == count else None
    return check


def kill_proxy(appliance) -> int:
    """SIGKILL of the twistd (proxy) process we started; returns its session manager's pid."""
    sessiond = appliance.sessiond_pid()
    os.kill(appliance.process.pid, signal.SIGKILL)
    appliance.process.wait(timeout=10)
    return sessiond


async def first_echo_stored(appliance, session: dict, ws, text: str) -> int:
    """Send ``text`` and take its echo; the socket's flow id once both messages are stored."""
    await ws.send(text)
    assert await ws.recv() == text
    flow_id = await asyncio.to_thread(lambda: appliance.wait_for_flows(session["id"], 1)[0]["id"])
    await asyncio.to_thread(wait_for, message_count(appliance, flow_id, 2), 15)
    return flow_id


def all_messages(appliance, flow_id: int) -> list[str]:
    page = appliance.api("GET", f"/api/flows/{flow_id}/messages", params={"offset": 0, "limit": 1000}).json()
    assert page["total"] == len(page["messages"])
    return [m["content"] for m in page["messages"]]


def test_proxy_killed_mid_socket_is_closed_by_the_next_start(ws_appliance, origins):
    """kill -9 of the proxy with a socket open: the next start closes its flow (1006, "proxy stopped",
    closed by proxy), its messages stored once."""
    session = ws_appliance.new_session()

    async def talk():
        async with connect(f"ws://127.0.0.1:{origins['plain'].port}/doomed", proxy=ws_appliance.proxy_url) as ws:
            flow_id = await first_echo_stored(ws_appliance, session, ws, "before the kill")
            sessiond = kill_proxy(ws_appliance)
            with pytest.raises(ConnectionClosed):
                await ws.recv()  # the socket died with the proxy
            return flow_id, sessiond
    flow_id, sessiond = run(talk())
    wait_for(lambda: not pid_alive(sessiond), 15)  # the orphaned session manager leaves by itself
    ws_appliance.start()
    detail = wait_for_close(ws_appliance, flow_id)
    assert detail["websocket"]["close"] == PROXY_STOPPED
    assert detail["websocket"]["message_count"] == 2
    assert all_messages(ws_appliance, flow_id) == ["before the kill"] * 2


def test_socket_of_a_killed_proxy_waiting_in_its_spill_file_is_stored_closed(make_appliance, origins, origin):
    """The store frozen, the proxy killed with a socket open whose flow and messages wait in the spill file:
    the next start ships them, the flow closed as the proxy stopped, each message once."""
    appliance = make_appliance(capture={"buffer_memory": 16384}).start()
    session = appliance.new_session()
    sessiond = appliance.sessiond_pid()
    os.kill(sessiond, signal.SIGSTOP)
    try:
        client = appliance.client()
        for i in range(400):  # well past the in-flight window: what comes next stays in the spill file
            assert client.get(f"{origin.url}/bytes?n=1&i={i}", timeout=10).status_code == 200
        client.close()
        spilled = appliance.status()["spilled_flows"]
        assert spilled > 0

        async def talk():
            async with connect(f"ws://127.0.0.1:{origins['plain'].port}/spilled", proxy=appliance.proxy_url) as ws:
                for n in range(5):
                    await ws.send(f"s{n}")
                    assert await ws.recv() == f"s{n}"
                await asyncio.to_thread(wait_for, lambda: appliance.status()["spilled_flows"] >= spilled + 2, 15)
                await asyncio.sleep(0.2)  # the last messages' batch is queued 20 ms after they pass
                kill_proxy(appliance)
        run(talk())
    finally:
        os.kill(sessiond, signal.SIGCONT)
    wait_for(lambda: not pid_alive(sessiond), 15)
    appliance.start()
    (summary,) = wait_for(lambda: appliance.flows(session["id"], filter="~websocket")["flows"], 30)
    detail = wait_for_close(appliance, summary["id"])
    assert detail["websocket"]["close"] == PROXY_STOPPED
    wait_for(lambda: appliance.status().get("pending_flows") == 0, 30)
    assert all_messages(appliance, summary["id"]) == [f"s{n}" for n in range(5) for _ in (0, 1)]


def test_killed_session_manager_leaves_a_live_socket_open(ws_appliance, origins):
    """kill -9 of the session manager alone: the proxy keeps the socket, its flow stays open and keeps
    its messages, and the client's close is the one stored."""
    session = ws_appliance.new_session()

    async def talk():
        async with connect(f"ws://127.0.0.1:{origins['plain'].port}/survivor", proxy=ws_appliance.proxy_url) as ws:
            flow_id = await first_echo_stored(ws_appliance, session, ws, "one")
            old = ws_appliance.sessiond_pid()
            os.kill(old, signal.SIGKILL)

            def restarted():
                manager = ws_appliance.status().get("session_manager", {})
                return manager.get("connected") and manager.get("pid") not in (None, old)
            await asyncio.to_thread(wait_for, restarted, 30)
            await ws.send("two")
            assert await ws.recv() == "two"
            detail = await asyncio.to_thread(wait_for, message_count(ws_appliance, flow_id, 4), 15)
            assert detail["websocket"]["open"] is True and detail["websocket"]["close"] is None
            await ws.close(1000, "done")
            return flow_id
    flow_id = run(talk())
    detail = wait_for_close(ws_appliance, flow_id)
    assert detail["websocket"]["close"] == {"code": 1000, "reason": "done", "closed_by": "client"}
    assert all_messages(ws_appliance, flow_id) == ["one", "one", "two", "two"]


def test_killed_worker_closes_only_its_own_sockets(make_appliance, origins):
    """With workers = 2, kill -9 of worker 1: once it is restarted its sockets' flows are closed as the proxy
    stopped, and the main process's socket stays open, recording."""
    appliance = make_appliance(proxy={"workers": 2}).start()
    wait_for(lambda: appliance.status()["workers"]["running"] == 2, 20)
    session = appliance.new_session()

    def connections() -> dict[int, int]:
        return {p["worker"]: p["client_connections"] for p in appliance.status()["processes"]}

    async def talk():
        held = {0: 0, 1: 0}
        sockets: dict[int, tuple] = {}  # worker -> (a socket it holds, that socket's path)
        spare = []
        for n in range(40):  # the kernel spreads new connections over both processes
            ws = await connect(f"ws://127.0.0.1:{origins['plain'].port}/w{n}", proxy=appliance.proxy_url)
            await ws.send(f"hello {n}")
            assert await ws.recv() == f"hello {n}"
            # Workers report their counters every second: wait for the process that took it to say so.
            (owner,) = await asyncio.to_thread(
                wait_for, lambda: [w for w, count in connections().items() if count > held.get(w, 0)], 10)
            held[owner] += 1
            if owner in sockets:
                spare.append(ws)
            else:
                sockets[owner] = (ws, f"/w{n}")
            if len(sockets) == 2:
                break
        assert len(sockets) == 2, held
        worker = next(p["pid"] for p in appliance.status()["processes"] if p["worker"] == 1)
        os.kill(worker, signal.SIGKILL)
        with pytest.raises(ConnectionClosed):
            await sockets[1][0].recv()

        def restarted():
            status = appliance.status()
            pids = [p["pid"] for p in status["processes"] if p["worker"] == 1]
            return status["workers"]["restarts"] == 1 and pids and pids[0] != worker
        await asyncio.to_thread(wait_for, restarted, 30)
        ws = sockets[0][0]
        await ws.send("still here")
        assert await ws.recv() == "still here"
        by_path = {f["path"]: f["id"] for f in await asyncio.to_thread(lambda: appliance.flows(session["id"])["flows"])}
        main_flow, worker_flow = by_path[sockets[0][1]], by_path[sockets[1][1]]
        closed = await asyncio.to_thread(wait_for_close, appliance, worker_flow)
        detail = await asyncio.to_thread(wait_for, message_count(appliance, main_flow, 4), 15)
        for other in spare:
            await other.close()
        await ws.close(1000, "done")
        return closed, detail, main_flow
    closed, detail, main_flow = run(talk())
    assert closed["websocket"]["close"] == PROXY_STOPPED and closed["websocket"]["message_count"] == 2
    assert detail["websocket"]["open"] is True
    assert wait_for_close(appliance, main_flow)["websocket"]["close"]["closed_by"] == "client"


def test_responses_off_omits_the_origins_messages_and_body_filters_search_messages(ws_appliance, origins):
    """A session with capture_responses off lists the origin's messages with their size and no content
    (omitted, in the detail, the messages API and HAR), unless a session that captures them takes the
    socket too; ~bs hello over the API finds the socket whose origin said "hello"; ~bq hello does not."""
    private = ws_appliance.new_session(name="private", capture_responses=False, filter="~u private | ~u shared")
    full = ws_appliance.new_session(name="full", filter="!~u private")

    async def talk(url):
        async with connect(url, proxy=ws_appliance.proxy_url) as ws:
            await ws.send("greet")
            assert await ws.recv() == "hello"
            await ws.send(b"\xff\x02")
            assert await ws.recv() == b"\xff\x02"

    run(talk(f"ws://127.0.0.1:{origins['plain'].port}/private"))
    run(talk(f"ws://127.0.0.1:{origins['no_deflate'].port}/open"))
    run(talk(f"ws://127.0.0.1:{origins['plain'].port}/shared"))
    by_path = {f["path"]: f["id"] for f in ws_appliance.wait_for_flows(private["id"], 2)}
    by_path.update({f["path"]: f["id"] for f in ws_appliance.wait_for_flows(full["id"], 2)})
    details = {path: wait_for_close(ws_appliance, flow_id) for path, flow_id in by_path.items()}
    assert [(m["from_client"], m["type"], m["content"], m["size"], m["omitted"])
            for m in details["/private"]["websocket"]["messages"]] == [
        (True, "text", "greet", 5, False), (False, "text", "", 5, True),
        (True, "binary", "/wI=", 2, False), (False, "binary", "", 2, True)]
    # A flow is stored once: a socket the full session takes too keeps the origin's content.
    for path in ("/open", "/shared"):
        assert [m["content"] for m in details[path]["websocket"]["messages"]] == ["greet", "hello", "/wI=", "/wI="]
        assert not any(m["omitted"] for m in details[path]["websocket"]["messages"])
    paged = ws_appliance.api("GET", f"/api/flows/{by_path['/private']}/messages",
                             params={"offset": 1, "limit": 1}).json()
    assert paged["total"] == 4 and paged["messages"][0]["omitted"] is True and paged["messages"][0]["content"] == ""
    # Body filters over the API search the messages the store holds.
    assert sorted(f["path"] for f in ws_appliance.flows(full["id"], filter="~bs hello")["flows"]) == ["/open", "/shared"]
    assert ws_appliance.flows(full["id"], filter="~bq hello")["total"] == 0
    assert ws_appliance.flows(full["id"], filter="~bq greet")["total"] == 2
    assert [f["path"] for f in ws_appliance.flows(private["id"], filter="~bs hello")["flows"]] == ["/shared"]
    assert ws_appliance.flows(private["id"], filter="~b greet")["total"] == 2
    har = ws_appliance.api("GET", f"/api/sessions/{private['id']}/har")
    assert har.status_code == 200, har.text
    entries = {e["request"]["url"].rsplit("/", 1)[1]: e for e in har.json()["log"]["entries"]}
    assert [(m["type"], m["data"], m.get("_omitted", False)) for m in entries["private"]["_webSocketMessages"]] == [
        ("send", "greet", False), ("receive", "", True), ("send", "/wI=", False), ("receive", "", True)]
