"""The hostile WebSocket corpus (tests/hostile/websocket.toml) against the real appliance.

Each case completes a handshake through the proxy to the real origin, then
sends its frames: the proxy must close the client with the case's code,
close the origin's side, record who closed and why, and keep serving.
"""

from __future__ import annotations

import socket
import tomllib
from pathlib import Path

import pytest
from wsproto import WSConnection
from wsproto.connection import ConnectionType
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage
from wsproto.extensions import PerMessageDeflate

from conftest import Appliance, wait_for
from test_e2e_websocket import WsOrigin

HOSTILE = Path(__file__).parent / "hostile"
CASES = tomllib.loads((HOSTILE / "websocket.toml").read_text())["case"]


@pytest.fixture(scope="module")
def ws_origin():
    origin = WsOrigin()
    yield origin
    origin.stop()


@pytest.fixture(scope="module")
def hostile_ws_appliance(tmp_path_factory):
    appliance = Appliance(tmp_path_factory.mktemp("hostile-ws"), limits={"max_websocket_message": 1048576}).start()
    appliance.session = appliance.new_session()
    yield appliance
    appliance.stop()


class Client:
    """A WebSocket client on a raw socket through the proxy (absolute form), driven by wsproto."""

    def __init__(self, appliance, origin: WsOrigin, deflate: bool = False, path: str = "/") -> None:
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.sock = socket.create_connection(("127.0.0.1", appliance.proxy_port), timeout=15)
        authority = f"127.0.0.1:{origin.port}"
        self.sock.sendall(self.ws.send(Request(host=authority, target=f"http://{authority}{path}",
                                               extensions=[PerMessageDeflate()] if deflate else [])))
        events = self.events_until(AcceptConnection)
        self.accepted = events[-1]

    def events_until(self, kind: type) -> list:
        events: list = []
        while not any(isinstance(e, kind) for e in events):
            data = self.sock.recv(65536)
            if not data:
                break
            self.ws.receive_data(data)
            events.extend(self.ws.events())
        return events

    def close(self) -> None:
        self.sock.close()


def still_serves(appliance, origin) -> None:
    client = Client(appliance, origin, path="/health")
    client.sock.sendall(client.ws.send(TextMessage("still here")))
    events = client.events_until(TextMessage)
    assert [e.data for e in events if isinstance(e, TextMessage)] == ["still here"]
    client.close()


def test_corpus_is_indexed() -> None:
    """Every file under hostile/websocket/ has an index entry, and every entry a file."""
    assert {p.name for p in (HOSTILE / "websocket").glob("*.bin")} == {case["file"] for case in CASES}


@pytest.mark.parametrize("case", CASES, ids=[case["file"].removesuffix(".bin") for case in CASES])
def test_hostile_frames(case, hostile_ws_appliance, ws_origin) -> None:
    """The proxy answers the bad frames with the case's close code, records it, and keeps serving."""
    appliance = hostile_ws_appliance
    path = "/" + case["file"].removesuffix(".bin")
    client = Client(appliance, ws_origin, deflate=case.get("deflate", False), path=path)
    if case.get("deflate"):
        assert client.accepted.extensions, "the proxy did not agree to deflate"
    client.sock.sendall((HOSTILE / "websocket" / case["file"]).read_bytes())
    events = client.events_until(CloseConnection)
    closes = [e for e in events if isinstance(e, CloseConnection)]
    assert closes and closes[0].code == case["close"], events
    client.close()

    def recorded():
        flows = appliance.flows(appliance.session["id"], filter=f"~u {path}$")["flows"]
        if not flows:
            return None
        detail = appliance.api("GET", f"/api/flows/{flows[0]['id']}").json()
        return detail if detail["websocket"]["open"] is False else None
    detail = wait_for(recorded, 15, interval=0.1)
    assert detail["websocket"]["close"]["code"] == case["close"]
    assert detail["websocket"]["close"]["closed_by"] == "proxy"
    still_serves(appliance, ws_origin)
