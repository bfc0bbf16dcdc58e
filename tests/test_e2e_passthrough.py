"""Auto-passthrough end to end: cut handshakes keep interception on, rejections pass the host through,
and one table serves every worker."""

from __future__ import annotations

import socket
import ssl
import struct
import subprocess

import pytest

from certs import OriginCA
from conftest import Origin, wait_for
from origin import pattern


@pytest.fixture(scope="module")
def tls_origin(tmp_path_factory):
    ca = OriginCA(tmp_path_factory.mktemp("passthrough-tls"), "passthrough origin CA")
    origin = Origin(*ca.issue("good", ["localhost"]))
    origin.ca = ca
    yield origin
    origin.stop()


def cut_after_server_flight(appliance, port: int, reset: bool) -> None:
    """Send a ClientHello, read the server's whole first flight, then vanish (RST or FIN), sending nothing more."""
    sock = appliance.tunnel(port)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    sock.sendall(outgoing.read())
    for _ in range(50):  # until the client side could finish: the server's flight is all here
        data = sock.recv(65536)
        assert data, "the proxy closed during the handshake"
        incoming.write(data)
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            continue
    outgoing.read()  # the client's Finished: never sent
    if reset:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def trusting_get(appliance, port: int) -> bytes:
    """A client that trusts the capture CA only: succeeds only if the proxy intercepts."""
    context = ssl.create_default_context(cafile=str(appliance.var / "ca" / "ca.pem"))
    with context.wrap_socket(appliance.tunnel(port), server_hostname="localhost") as tls:
        tls.sendall(b"GET /bytes?n=7 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    return data


def rejecting_handshake(appliance, port: int) -> None:
    """A client that does not trust the capture CA: Python's ssl sends an unknown_ca alert."""
    context = ssl.create_default_context()  # the system store, which does not hold the capture CA
    with pytest.raises(ssl.SSLCertVerificationError):
        context.wrap_socket(appliance.tunnel(port), server_hostname="localhost")


def passthrough(appliance) -> list[tuple[str, str]]:
    return [(e["client"], e["host"]) for e in appliance.api("GET", "/api/passthrough").json()["passthrough"]]


def intercepted(appliance, port: int) -> bool:
    """Does a client trusting only the origin's CA see the origin's own certificate (False) or ours (True)?"""
    context = ssl.create_default_context(cafile=str(appliance.var / "ca" / "ca.pem"))
    try:
        with context.wrap_socket(appliance.tunnel(port), server_hostname="localhost") as tls:
            tls.sendall(b"GET /bytes?n=1 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            while tls.recv(65536):
                pass
        return True
    except ssl.SSLCertVerificationError:
        return False


@pytest.fixture
def tls_appliance(make_appliance, tls_origin):
    return make_appliance(tls={"upstream_ca": tls_origin.ca.path}).start()


def test_two_cut_handshakes_leave_interception_on(tls_appliance, tls_origin):
    """Handshakes cut after the server's first flight (a reset, then a FIN) are recorded as the client
    going away, not as a CA problem, and the next client is still intercepted and captured."""
    appliance = tls_appliance
    session = appliance.new_session()
    cut_after_server_flight(appliance, tls_origin.port, reset=True)
    cut_after_server_flight(appliance, tls_origin.port, reset=False)
    cuts = appliance.wait_for_flows(session["id"], 2)
    for flow in cuts:
        assert "not finished: the client went away" in flow["error"], flow["error"]
        assert "capture CA" not in flow["error"] and "passed through" not in flow["error"]
    assert passthrough(appliance) == []
    assert trusting_get(appliance, tls_origin.port).endswith(pattern(7))
    flows = appliance.wait_for_flows(session["id"], 3)
    assert (flows[2]["scheme"], flows[2]["status"], flows[2]["path"]) == ("https", 200, "/bytes?n=7")


def test_unknown_ca_alert_passes_the_host_through(tls_appliance, tls_origin):
    """A client's unknown_ca alert (openssl s_client, which does not trust the capture CA) is a rejection:
    its flow names the alert and the next connection gets the origin's own certificate."""
    appliance = tls_appliance
    session = appliance.new_session()
    result = subprocess.run(
        ["openssl", "s_client", "-proxy", f"127.0.0.1:{appliance.proxy_port}", "-connect", f"localhost:{tls_origin.port}",
         "-servername", "localhost", "-verify_return_error", "-CAfile", str(tls_origin.ca.path)],
        input=b"", capture_output=True, timeout=30)
    assert result.returncode != 0
    [flow] = appliance.wait_for_flows(session["id"], 1)
    assert "alert unknown ca" in flow["error"] and "passed through" in flow["error"], flow["error"]
    wait_for(lambda: passthrough(appliance) == [("127.0.0.1", "localhost")])
    assert not intercepted(appliance, tls_origin.port)
    assert appliance.status()["auto_passthrough"][0]["host"] == "localhost"


def test_three_closes_in_a_row_pass_through_and_a_request_resets_the_count(tls_appliance, tls_origin):
    """cut, cut, good request, cut, cut: still intercepted; one more cut, the third in a row, passes it through."""
    appliance = tls_appliance
    session = appliance.new_session()
    port = tls_origin.port
    cut_after_server_flight(appliance, port, reset=True)
    cut_after_server_flight(appliance, port, reset=True)
    wait_for(lambda: len(appliance.flows(session["id"])["flows"]) == 2)
    assert trusting_get(appliance, port).endswith(pattern(7))
    cut_after_server_flight(appliance, port, reset=True)
    cut_after_server_flight(appliance, port, reset=False)
    flows = appliance.wait_for_flows(session["id"], 5)
    assert passthrough(appliance) == []
    assert "(2 of 3 in a row" in flows[4]["error"], flows[4]["error"]
    cut_after_server_flight(appliance, port, reset=True)
    flows = appliance.wait_for_flows(session["id"], 6)
    assert "3 connections in a row ended before a request" in flows[5]["error"], flows[5]["error"]
    assert passthrough(appliance) == [("127.0.0.1", "localhost")]
    assert not intercepted(appliance, port)
    assert appliance.api("DELETE", "/api/passthrough", params={"host": "localhost"}).json() == {"forgotten": 1}
    assert intercepted(appliance, port)


def test_closing_after_the_handshake_without_a_request_counts(tls_appliance, tls_origin):
    """An app that checks its pin after the handshake and closes: three such connections pass the host through."""
    appliance = tls_appliance
    session = appliance.new_session()
    context = ssl.create_default_context(cafile=str(appliance.var / "ca" / "ca.pem"))
    for i in range(3):
        with context.wrap_socket(appliance.tunnel(tls_origin.port), server_hostname="localhost"):
            pass
        wait_for(lambda: len(appliance.flows(session["id"])["flows"]) == i + 1)
    flows = appliance.flows(session["id"])["flows"]
    assert all("without sending a request" in f["error"] for f in flows)
    assert passthrough(appliance) == [("127.0.0.1", "localhost")]


def test_one_table_for_every_worker(make_appliance, tls_origin):
    """With two workers, a rejection seen by one passes the host through on all of them, and clearing it
    through the API intercepts again on all of them."""
    appliance = make_appliance(proxy={"workers": 2}, tls={"upstream_ca": tls_origin.ca.path}).start()
    wait_for(lambda: appliance.status()["workers"]["running"] == 2, 20)
    rejecting_handshake(appliance, tls_origin.port)
    wait_for(lambda: passthrough(appliance) == [("127.0.0.1", "localhost")])
    # New connections each: the kernel spreads them over both workers.
    assert [intercepted(appliance, tls_origin.port) for _ in range(12)] == [False] * 12
    assert appliance.api("DELETE", "/api/passthrough").json() == {"forgotten": 1}
    wait_for(lambda: passthrough(appliance) == [])
    assert [intercepted(appliance, tls_origin.port) for _ in range(12)] == [True] * 12
