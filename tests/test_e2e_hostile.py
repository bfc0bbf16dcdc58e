"""Hostile peers: TLS garbage, stalled handshakes, bad wire frames, and every admin route without a token."""

from __future__ import annotations

import re
import socket
import ssl
import time

import msgpack
import pytest
import requests

from origin import pattern


@pytest.fixture
def strict(make_appliance):
    """An appliance with short timeouts, so stalls are cut off quickly."""
    return make_appliance(limits={"header_timeout": 2}).start()


def connect_tunnel(appliance, target: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", appliance.proxy_port), timeout=15)
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    assert sock.recv(1024) == b"HTTP/1.1 200 Connection established\r\n\r\n"
    return sock


def closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
    except socket.timeout:
        return False
    except OSError:
        pass
    return True


def still_serving(appliance, origin) -> bool:
    with appliance.client() as client:
        return client.get(f"{origin.url}/bytes?n=3", timeout=10).content == pattern(3)


def client_hello(server_name: str) -> bytes:
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def test_client_hello_cut_short_is_closed_and_recorded(strict, origin):
    """Half a ClientHello, then silence: the tunnel is closed after a timeout and a failed flow recorded."""
    session = strict.new_session()
    sock = connect_tunnel(strict, "localhost:443")
    sock.sendall(client_hello("localhost")[:40])
    assert closed_within(sock, 10)
    [flow] = strict.wait_for_flows(session["id"], 1)
    assert "ClientHello cut short" in flow["error"]
    assert still_serving(strict, origin)


def test_handshake_never_finished_is_closed_and_recorded(strict, origin):
    """A whole ClientHello and then nothing more: closed after header_timeout, recorded, not passed through."""
    session = strict.new_session()
    sock = connect_tunnel(strict, f"localhost:{origin.port}")
    sock.sendall(client_hello("localhost"))
    started = time.monotonic()
    assert closed_within(sock, 15)
    assert time.monotonic() - started >= 1.5
    [flow] = strict.wait_for_flows(session["id"], 1)
    assert "timed out" in flow["error"]
    assert strict.api("GET", "/api/passthrough").json()["passthrough"] == []
    assert still_serving(strict, origin)


def test_garbage_after_connect_is_a_recorded_tunnel(strict, origin):
    """Bytes that are neither TLS nor HTTP are relayed as a tunnel; the origin's refusal ends it."""
    session = strict.new_session()
    sock = connect_tunnel(strict, f"127.0.0.1:{origin.port}")
    sock.sendall(b"\x00\xffgarbage\r\n\r\n")
    assert closed_within(sock, 15)
    [flow] = strict.wait_for_flows(session["id"], 1)
    assert flow["method"] == "CONNECT" and flow["request_size"] == 13
    assert still_serving(strict, origin)


BAD_FRAMES = {
    "not-msgpack": lambda: b"\xc1\xc1\xc1",                            # bytes msgpack never uses
    "unknown-type": lambda: msgpack.packb({"t": "launch-missiles", "v": 1}),
    "not-a-map": lambda: msgpack.packb([1, 2, 3]),
    "unknown-version": lambda: msgpack.packb({"t": "flows", "v": 99, "items": []}),
    # 2 GiB announced, and more than the 64 MiB frame limit actually sent
    "oversized": lambda: b"\xc6\x7f\xff\xff\xff" + b"x" * (65 * 1024 * 1024),
}


@pytest.mark.parametrize("name", BAD_FRAMES)
def test_bad_wire_frames_drop_that_connection_only(appliance, origin, name):
    """A bad frame on the UNIX socket drops that connection, is logged once, and the store keeps serving."""
    session = appliance.new_session()
    path = str(appliance.var / "run" / "sessiond.sock")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(path)
        try:
            sock.sendall(BAD_FRAMES[name]())
        except OSError:
            pass  # dropped while we were still sending: what the oversized frame should get
        assert closed_within(sock, 10)
    with appliance.client() as client:
        client.get(f"{origin.url}/bytes?n=1", timeout=10)
    assert appliance.wait_for_flows(session["id"], 1)
    assert appliance.status()["session_manager"]["restarts"] == 0
    assert len(re.findall(r"dropping proxy connection after a bad message", appliance.log_text())) == 1


def _routes(appliance) -> list[tuple[str, str]]:
    from capture.admin.api import AdminApi
    from capture.admin.signin import SignIns

    routes = []
    for method, pattern_, _ in AdminApi(None, SignIns("x", time.time), lambda: {}, type("P", (), {"reactor": None})())._routes:
        path = pattern_.pattern.replace(r"(\d{1,15})", "1").replace("\\.", ".").replace("(request|response)", "request").replace("(pause|resume|stop|clear)", "pause")
        path = path.replace("(har|postman)", "har")
        routes.append((method.decode(), path))
    return routes


def test_every_api_route_refuses_a_missing_or_wrong_token(appliance):
    """Walk every /api/ route: without the token, or with a wrong one, each is a 401 JSON error."""
    routes = _routes(appliance)
    assert len(routes) >= 15
    for method, path in routes:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {appliance.token}"}):
            response = requests.request(method, appliance.admin_url + path, headers=headers, timeout=10)
            assert response.status_code == 401, (method, path, headers)
            assert response.json() == {"error": "missing or wrong bearer token"}


def test_admin_request_bodies_are_bounded(appliance):
    """A request body past the admin limit is refused with 413 and never read whole."""
    response = appliance.api("POST", "/api/sessions", data=b"{" + b" " * (2 * 1024 * 1024) + b"}")
    assert response.status_code == 413
    assert "error" in response.json()


def test_admin_errors_carry_no_traceback_or_paths(appliance):
    """Errors are short JSON: no Python traceback, no file path."""
    for method, path in (("GET", "/api/sessions/abc"), ("POST", "/api/sessions"), ("GET", "/api/flows/99999")):
        response = appliance.api(method, path, data=b"not json" if method == "POST" else None)
        assert response.headers["Content-Type"].startswith("application/json")
        assert "Traceback" not in response.text and "/capture/" not in response.text
