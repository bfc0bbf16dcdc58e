"""Hostile HTTP/2 from a client (the corpus in tests/hostile/h2/, listed in h2.toml): each ends only its
own connection, with a GOAWAY naming the error, and the appliance keeps serving. Socketless against the
layer, end to end through the real appliance, and fuzzed with hypothesis."""

from __future__ import annotations

import socket
import ssl
import subprocess
import tomllib
from pathlib import Path

import pytest
from h2.errors import ErrorCodes
from hyperframe.frame import Frame, GoAwayFrame
from hypothesis import HealthCheck, given, settings, strategies as st
from twisted.internet.address import IPv4Address

from capture.layers.h2_server import H2Server
from capture.layers.host import LayerHost
from test_h2_server import GET, TARGET, Origins, Rig
from test_proxy import Transport

CORPUS = Path(__file__).resolve().parent / "hostile"
CASES = tomllib.loads((CORPUS / "h2.toml").read_text())["case"]
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def goaway_code(data: bytes) -> int | None:
    """The error code of the first GOAWAY among the frames the appliance wrote (None: no GOAWAY)."""
    offset = 0
    while len(data) - offset >= 9:
        frame, length = Frame.parse_frame_header(memoryview(data[offset:offset + 9]))
        body = data[offset + 9:offset + 9 + length]
        if len(body) < length:
            return None
        if isinstance(frame, GoAwayFrame):
            frame.parse_body(memoryview(body))
            return frame.error_code
        offset += 9 + length
    return None


def fresh_connection(rig: Rig, port: int) -> tuple[LayerHost, Transport]:
    host = LayerHost(rig.factory, TARGET, ("127.0.0.1", port), 1.0)
    transport = Transport(peerAddress=IPv4Address("TCP", "127.0.0.1", port))
    host.makeConnection(transport)
    host.switch(H2Server(host, Origins(rig.pool)))
    transport.clear()  # the layer's own preface
    return host, transport


@pytest.mark.parametrize("case", CASES, ids=[c["file"] for c in CASES])
def test_hostile_h2_ends_that_connection_with_goaway(case):
    """Each hostile input: GOAWAY with the expected error, the connection closed, a second connection served."""
    rig = Rig()
    host, transport = fresh_connection(rig, 50100)
    host.dataReceived((CORPUS / "h2" / case["file"]).read_bytes())
    assert goaway_code(transport.value()) == ErrorCodes[case["error"]], case["reason"]
    assert transport.disconnecting
    before = len(rig.pool.connections)
    rig.request(GET)
    assert len(rig.pool.connections) == before + 1  # the other connection still works


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=64), max_size=8), st.booleans())
def test_fuzzed_frames_never_escape_the_layer(chunks, with_preface):
    """Random bytes (after a valid preface, or not): nothing raises out of the layer, and a fresh
    connection of the same factory still gets its request through."""
    rig = Rig()
    host, transport = fresh_connection(rig, 50200)
    if with_preface:
        host.dataReceived(PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
    for chunk in chunks:
        if transport.disconnecting:
            break
        host.dataReceived(chunk)
    host.connectionLost(None)
    before = len(rig.pool.connections)
    rig.request(GET)
    assert len(rig.pool.connections) == before + 1


# -- end to end ------------------------------------------------------------------------------

from test_e2e_http2 import capture_ca, h2_appliance, h2_origin, origin_ca  # noqa: E402,F401


def h2_tunnel(appliance, port: int) -> ssl.SSLSocket:
    """TLS with ALPN h2 through the proxy's CONNECT to localhost:port, trusting the capture CA."""
    sock = appliance.tunnel(port)
    context = ssl.create_default_context(cafile=capture_ca(appliance))
    context.set_alpn_protocols(["h2"])
    tls = context.wrap_socket(sock, server_hostname="localhost")
    assert tls.selected_alpn_protocol() == "h2"
    return tls


def test_hostile_h2_through_the_appliance(h2_appliance, h2_origin):
    """Every corpus case sent inside intercepted TLS gets its GOAWAY; then curl --http2 is still served."""
    appliance = h2_appliance
    for case in CASES:
        with h2_tunnel(appliance, h2_origin.port) as tls:
            tls.sendall((CORPUS / "h2" / case["file"]).read_bytes())
            seen = b""
            try:
                while chunk := tls.recv(65536):
                    seen += chunk
            except (ConnectionError, ssl.SSLError, socket.timeout):
                pass
        assert goaway_code(seen) == ErrorCodes[case["error"]], (case["file"], seen[:200])
    result = subprocess.run(["curl", "-sS", "--http2", "--max-time", "30", "-x", appliance.proxy_url, "--cacert",
                             capture_ca(appliance), "-o", "/dev/null", "-w", "%{http_code} %{http_version}",
                             f"https://localhost:{h2_origin.port}/bytes?n=10"], capture_output=True, timeout=60)
    assert result.stdout == b"200 2", result.stderr
