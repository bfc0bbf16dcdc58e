"""End to end over real TLS: interception, verification, passthrough, pinning, tunnels, onboarding."""

from __future__ import annotations

import datetime
import hashlib
import socket
import socketserver
import ssl
import stat
import subprocess
import sys
import threading

import pytest
import requests
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from certs import OriginCA
from conftest import Origin, child_env, wait_for
from origin import pattern


@pytest.fixture(scope="module")
def tls_origins(tmp_path_factory):
    """HTTPS origins: one trusted, one with the wrong name, one from an unknown CA, one expired."""
    directory = tmp_path_factory.mktemp("tls")
    trusted = OriginCA(directory, "trusted CA")
    stranger = OriginCA(directory, "stranger CA")
    origins = {
        "good": Origin(*trusted.issue("good", ["localhost", "127.0.0.1"])),
        "wrong_name": Origin(*trusted.issue("wrong", ["other.test"])),
        "unknown_issuer": Origin(*stranger.issue("stranger", ["localhost", "127.0.0.1"])),
        "expired": Origin(*trusted.issue("expired", ["localhost", "127.0.0.1"], expired=True)),
    }
    origins["ca"] = trusted
    yield origins
    for name, origin in origins.items():
        if isinstance(origin, Origin):
            origin.stop()


@pytest.fixture
def https_appliance(make_appliance, tls_origins):
    return make_appliance(tls={"upstream_ca": tls_origins["ca"].path}).start()


def capture_ca(appliance) -> str:
    return str(appliance.var / "ca" / "ca.pem")


def curl(appliance, *args: str, cacert: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "30", "-x", appliance.proxy_url, "--cacert", cacert or capture_ca(appliance), *args],
        capture_output=True, timeout=60,
    )


def test_https_is_intercepted_and_captured_with_curl(https_appliance, tls_origins):
    """curl trusting only the capture CA gets the origin's bytes; the flow is https, in full."""
    appliance = https_appliance
    session = appliance.new_session()
    port = tls_origins["good"].port
    result = curl(appliance, f"https://localhost:{port}/bytes?n=70000")
    assert result.returncode == 0, result.stderr
    assert result.stdout == pattern(70000)
    [flow] = appliance.wait_for_flows(session["id"], 1)
    assert (flow["scheme"], flow["host"], flow["port"], flow["path"], flow["status"]) == (
        "https", "localhost", port, "/bytes?n=70000", 200)
    assert flow["url"] == f"https://localhost:{port}/bytes?n=70000"
    detail = appliance.api("GET", f"/api/flows/{flow['id']}").json()
    assert detail["response"]["size"] == 70000
    assert ["Host", f"localhost:{port}"] in detail["request"]["headers"]


def test_https_post_with_requests_and_keep_alive(https_appliance, tls_origins):
    """requests with verify=CA posts through the tunnel twice on one connection; both flows stored."""
    appliance = https_appliance
    session = appliance.new_session()
    url = f"https://localhost:{tls_origins['good'].port}/echo"
    with requests.Session() as client:
        client.trust_env = False
        client.proxies = {"https": appliance.proxy_url}
        client.verify = capture_ca(appliance)
        for body in (b"first", b"second" * 1000):
            echoed = client.post(url, data=body, timeout=30).json()
            assert echoed["sha256"] == hashlib.sha256(body).hexdigest()
    flows = appliance.wait_for_flows(session["id"], 2)
    assert [f["request_size"] for f in flows] == [5, 6000]
    detail = appliance.api("GET", f"/api/flows/{flows[0]['id']}").json()
    assert detail["request"]["body"] == "first"


def test_large_bodies_cross_the_tunnel_intact(https_appliance, tls_origins):
    """8 MiB down (length-delimited and chunked) and up (sized and chunked) keep every byte, in order."""
    appliance = https_appliance
    session = appliance.new_session()
    base = f"https://localhost:{tls_origins['good'].port}"
    n = 8 * 1024 * 1024
    with requests.Session() as client:
        client.trust_env = False
        client.proxies = {"https": appliance.proxy_url}
        client.verify = capture_ca(appliance)
        for path in (f"/bytes?n={n}", f"/chunked?n={n}"):
            response = client.get(base + path, timeout=60)
            assert response.status_code == 200
            assert hashlib.sha256(response.content).hexdigest() == hashlib.sha256(pattern(n)).hexdigest()
        body = pattern(n)
        sized = client.post(base + "/echo", data=body, timeout=60).json()
        chunked = client.post(base + "/echo", data=iter([body[:1000], body[1000:5_000_000], body[5_000_000:]]),
                              timeout=60).json()
    for echoed in (sized, chunked):
        assert echoed["sha256"] == hashlib.sha256(body).hexdigest()
    flows = appliance.wait_for_flows(session["id"], 4)
    assert [f["response_size"] for f in flows[:2]] == [n, n]
    assert [f["request_size"] for f in flows[2:]] == [n, n]


@pytest.mark.parametrize("framing", [["-H", "Transfer-Encoding: chunked"], []])
def test_an_upload_refused_early_gets_its_answer(https_appliance, tls_origins, tmp_path, framing):
    """The origin answers 413 before reading a 20 MB upload and closes: the client reads the 413, not a reset."""
    appliance = https_appliance
    session = appliance.new_session()
    upload = tmp_path / "upload.bin"
    upload.write_bytes(pattern(20 * 1024 * 1024))
    result = curl(appliance, *framing, "--data-binary", f"@{upload}", "-o", "/dev/null", "-w", "%{http_code}",
                  f"https://localhost:{tls_origins['good'].port}/early")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"413"
    (flow,) = appliance.wait_for_flows(session["id"], 1)
    assert flow["status"] == 413


def test_leaf_certificate_is_what_devices_accept(https_appliance, tls_origins):
    """The leaf the client sees: SAN, serverAuth, issued by the capture CA, at most 180 days; s_client verifies."""
    appliance = https_appliance
    port = tls_origins["good"].port
    result = subprocess.run(
        ["openssl", "s_client", "-proxy", f"127.0.0.1:{appliance.proxy_port}", "-connect", f"localhost:{port}",
         "-servername", "localhost", "-CAfile", capture_ca(appliance), "-verify_return_error", "-showcerts"],
        input=b"", capture_output=True, timeout=30,
    )
    assert b"Verify return code: 0 (ok)" in result.stdout, result.stdout + result.stderr
    leaf = x509.load_pem_x509_certificate(result.stdout[result.stdout.index(b"-----BEGIN CERTIFICATE-----"):])
    ca = x509.load_pem_x509_certificate((appliance.var / "ca" / "ca.pem").read_bytes())
    assert leaf.issuer == ca.subject
    assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName) == ["localhost"]
    assert ExtendedKeyUsageOID.SERVER_AUTH in leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc <= datetime.timedelta(days=180)
    assert leaf.not_valid_before_utc <= datetime.datetime.now(datetime.timezone.utc) <= leaf.not_valid_after_utc


def test_ip_literal_gets_an_ip_san(https_appliance, tls_origins):
    """CONNECT to an IP without SNI: the leaf carries an IP SAN and curl verifies it."""
    appliance = https_appliance
    port = tls_origins["good"].port
    result = curl(appliance, f"https://127.0.0.1:{port}/bytes?n=10")
    assert result.returncode == 0, result.stderr
    assert result.stdout == pattern(10)


@pytest.mark.parametrize("origin_name, reason", [
    ("wrong_name", "name mismatch"),
    ("unknown_issuer", "unknown issuer"),
    ("expired", "expired"),
])
def test_upstream_verification_failures_are_502_with_the_reason(https_appliance, tls_origins, origin_name, reason):
    """An origin whose certificate fails verification is a 502 and a flow whose error says why."""
    appliance = https_appliance
    session = appliance.new_session()
    result = curl(appliance, "-w", "\n%{http_code}", f"https://localhost:{tls_origins[origin_name].port}/")
    assert result.stdout.endswith(b"\n502"), result.stdout + result.stderr
    assert reason.encode() in result.stdout
    [flow] = appliance.wait_for_flows(session["id"], 1)
    assert reason in flow["error"]


def test_verify_upstream_off_accepts_any_origin(make_appliance, tls_origins):
    """verify_upstream = no lets an untrusted origin through."""
    appliance = make_appliance(tls={"verify_upstream": "no"}).start()
    result = curl(appliance, f"https://localhost:{tls_origins['unknown_issuer'].port}/bytes?n=3")
    assert result.stdout == pattern(3)


def test_passthrough_host_sees_the_origin_certificate(make_appliance, tls_origins):
    """A host on the passthrough list is tunnelled: the client gets the origin's own certificate."""
    appliance = make_appliance(tls={"upstream_ca": tls_origins["ca"].path, "passthrough": "localhost"}).start()
    session = appliance.new_session()
    port = tls_origins["good"].port
    result = curl(appliance, f"https://localhost:{port}/bytes?n=5", cacert=str(tls_origins["ca"].path))
    assert result.returncode == 0, result.stderr
    assert result.stdout == pattern(5)
    [flow] = appliance.wait_for_flows(session["id"], 1)
    assert flow["method"] == "CONNECT" and flow["scheme"] == "https" and flow["host"] == "localhost"
    assert flow["request_size"] > 0 and flow["response_size"] > 0


def _tls_through_proxy(appliance, port: int, cafile: str) -> ssl.SSLSocket:
    sock = appliance.tunnel(port)
    context = ssl.create_default_context(cafile=cafile)
    return context.wrap_socket(sock, server_hostname="localhost")


def test_pinning_client_is_recorded_and_then_passed_through(https_appliance, tls_origins):
    """A client that rejects our certificate leaves a TLS-failed flow; its next connection is tunnelled."""
    appliance = https_appliance
    session = appliance.new_session()
    port = tls_origins["good"].port
    origin_ca = str(tls_origins["ca"].path)  # trusts the origin only, like a pinning app
    with pytest.raises(ssl.SSLError):
        _tls_through_proxy(appliance, port, origin_ca)
    [failed] = appliance.wait_for_flows(session["id"], 1)
    assert "TLS handshake for localhost failed" in failed["error"]
    listed = appliance.api("GET", "/api/passthrough").json()["passthrough"]
    assert [(entry["client"], entry["host"]) for entry in listed] == [("127.0.0.1", "localhost")]

    with _tls_through_proxy(appliance, port, origin_ca) as tls:  # now the origin's own certificate
        tls.sendall(b"GET /bytes?n=4 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    assert data.endswith(pattern(4))

    assert appliance.api("DELETE", "/api/passthrough").json() == {"forgotten": 1}
    assert appliance.api("GET", "/api/passthrough").json()["passthrough"] == []


def test_connect_carrying_plain_http_is_parsed(appliance, origin):
    """Plain HTTP inside a CONNECT tunnel is parsed and captured as an ordinary flow."""
    session = appliance.new_session()
    with socket.create_connection(("127.0.0.1", appliance.proxy_port), timeout=10) as sock:
        sock.sendall(f"CONNECT 127.0.0.1:{origin.port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        sock.sendall(f"GET /bytes?n=6 HTTP/1.1\r\nHost: 127.0.0.1:{origin.port}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 Connection established\r\n\r\nHTTP/1.1 200 OK")
    assert data.endswith(pattern(6))
    [flow] = appliance.wait_for_flows(session["id"], 1)
    assert (flow["scheme"], flow["path"], flow["status"]) == ("http", "/bytes?n=6", 200)


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


def test_connect_carrying_other_bytes_is_a_recorded_raw_tunnel(appliance):
    """Non-HTTP bytes in a tunnel are relayed untouched and recorded with their byte counts."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        session = appliance.new_session()
        port = server.server_address[1]
        with socket.create_connection(("127.0.0.1", appliance.proxy_port), timeout=10) as sock:
            sock.sendall(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n".encode())
            assert sock.recv(1024) == b"HTTP/1.1 200 Connection established\r\n\r\n"
            sock.sendall(b"\x01\x02 hello echo")
            echoed = b""
            while len(echoed) < 13:
                echoed += sock.recv(1024)
            assert echoed == b"\x01\x02 hello echo"
        [flow] = appliance.wait_for_flows(session["id"], 1)
        assert (flow["method"], flow["scheme"], flow["request_size"], flow["response_size"]) == ("CONNECT", "tcp", 13, 13)
        assert flow["url"] == f"127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()


def test_onboarding_pages_need_no_token_and_match_the_ca(appliance):
    """/, /ca.pem, /ca.der and /proxy.pac are served without a token; the CA files match ca_dir."""
    ca_dir = appliance.var / "ca"
    page = requests.get(appliance.admin_url + "/", timeout=10)
    status = appliance.status()
    assert page.status_code == 200 and "text/html" in page.headers["Content-Type"]
    assert status["ca_sha256"] in page.text
    for word in ("iOS", "Android", "macOS", "Windows", "Linux", "Certificate Trust Settings"):
        assert word in page.text
    pem = requests.get(appliance.admin_url + "/ca.pem", timeout=10)
    assert pem.content == (ca_dir / "ca.pem").read_bytes()
    der = requests.get(appliance.admin_url + "/ca.der", timeout=10)
    assert der.headers["Content-Type"] == "application/x-x509-ca-cert"
    assert der.content == (ca_dir / "ca.der").read_bytes()
    assert hashlib.sha256(der.content).hexdigest().upper() == status["ca_sha256"].replace(":", "")
    pac = requests.get(appliance.admin_url + "/proxy.pac", timeout=10).text
    assert f"PROXY 127.0.0.1:{appliance.proxy_port}" in pac


def test_magic_host_serves_onboarding_and_ca_through_the_proxy(appliance):
    """http://capture.proxy/ and its /ca.pem answer through the proxy itself."""
    with appliance.client() as client:
        page = client.get("http://capture.proxy/", timeout=10)
        pem = client.get("http://capture.proxy/ca.pem", timeout=10)
    assert "Install the CA certificate" in page.text
    assert pem.content == (appliance.var / "ca" / "ca.pem").read_bytes()


def test_ca_is_private_and_reused_across_restarts(make_appliance):
    """The CA key is 0600 in a 0700 directory, and a restart keeps the same CA."""
    appliance = make_appliance().start()
    ca_dir = appliance.var / "ca"
    assert stat.S_IMODE(ca_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((ca_dir / "ca-key.pem").stat().st_mode) == 0o600
    first = appliance.status()["ca_sha256"]
    appliance.stop()
    appliance.start()
    assert appliance.status()["ca_sha256"] == first


def test_damaged_ca_stops_start_up_with_one_line(make_appliance, tmp_path):
    """A damaged CA file is never replaced: start-up stops with one line naming it."""
    appliance = make_appliance().start()
    appliance.stop()
    ca_pem = appliance.var / "ca" / "ca.pem"
    ca_pem.write_bytes(b"not a certificate")
    result = subprocess.run(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
         "capture", "--config", str(appliance.config)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, env=child_env(),
    )
    assert result.returncode != 0
    output = (result.stdout + result.stderr).strip()
    assert "ca.pem" in output and "Traceback" not in output
    assert ca_pem.read_bytes() == b"not a certificate"


def test_connections_close_after_an_error_inside_a_tunnel(https_appliance, tls_origins):
    """After a 502 inside an intercepted tunnel the connection really closes: none is left open."""
    appliance = https_appliance
    for _ in range(3):
        result = curl(appliance, "-w", "\n%{http_code}", f"https://localhost:{tls_origins['unknown_issuer'].port}/")
        assert result.stdout.endswith(b"\n502")
    wait_for(lambda: appliance.status()["client_connections"] == 0, 10)
