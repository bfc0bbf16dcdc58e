"""End to end through the real appliance: curl and requests against a local origin."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import threading

import pytest

from origin import pattern, pattern_sha256


def curl(appliance, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "60", "-x", appliance.proxy_url, *args],
        capture_output=True,
        timeout=90,
    )


def raw_exchange(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes to the proxy and read until it closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def test_curl_gets_origin_answer_byte_for_byte_and_flow_is_captured(appliance, origin):
    """A curl GET through the proxy returns the origin's bytes, and the flow is stored in full."""
    session = appliance.new_session()
    result = curl(appliance, f"{origin.url}/bytes?n=200000")
    assert result.returncode == 0, result.stderr
    assert result.stdout == pattern(200000)

    [flow] = appliance.wait_for_flows(session["id"], 1)
    assert flow["method"] == "GET"
    assert flow["url"] == f"{origin.url}/bytes?n=200000"
    assert flow["path"] == "/bytes?n=200000"
    assert flow["status"] == 200
    assert flow["response_size"] == 200000
    assert flow["client"] == "127.0.0.1"
    assert flow["error"] is None

    detail = appliance.api("GET", f"/api/flows/{flow['id']}").json()
    assert detail["request"]["headers"][0] == ["Host", f"127.0.0.1:{origin.port}"]
    assert detail["response"]["status"] == 200
    assert detail["response"]["body_encoding"] == "base64"
    assert detail["response"]["size"] == 200000
    assert detail["response"]["truncated"] is False
    assert detail["server_ip"] == "127.0.0.1"
    assert detail["session_ids"] == [session["id"]]


def test_keep_alive_is_reused_on_both_sides(appliance, origin):
    """Three requests on one client connection travel over one upstream connection."""
    appliance.new_session()
    before = len(origin.log())
    request = f"GET {origin.url}/bytes?n=10 HTTP/1.1\r\nHost: 127.0.0.1:{origin.port}\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", appliance.proxy_port), timeout=10) as sock:
        replies = b""
        for _ in range(3):
            sock.sendall(request)
            replies += wait_for_reply(sock, 10)
    assert replies.count(b"HTTP/1.1 200 OK") == 3
    seen = origin.log()[before:]
    assert len(seen) == 3
    assert len({entry["client_port"] for entry in seen}) == 1


def wait_for_reply(sock: socket.socket, body_size: int) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < body_size:
        chunk = sock.recv(65536)
        assert chunk, "proxy closed a keep-alive connection"
        data += chunk
    return data


def test_pipelined_requests_are_answered_in_order(appliance, origin):
    """Two requests sent back to back on one connection get their responses in order."""
    first = f"GET {origin.url}/bytes?n=5 HTTP/1.1\r\nHost: x\r\n\r\n"
    second = f"GET {origin.url}/echo?second HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    reply = raw_exchange(appliance.proxy_port, (first + second).encode())
    head1, rest = reply.split(b"\r\n\r\n", 1)
    assert head1.startswith(b"HTTP/1.1 200")
    assert rest[:5] == pattern(5)
    assert b'"path": "/echo?second"' in rest


def test_chunked_upload_streams_to_origin(appliance, origin):
    """A chunked upload from requests reaches the origin whole; the flow keeps the true size."""
    session = appliance.new_session()
    pieces = [bytes([i]) * 70000 for i in range(20)]
    with appliance.client() as client:
        response = client.post(f"{origin.url}/echo", data=iter(pieces), timeout=30)
    assert response.status_code == 200
    echoed = response.json()
    everything = b"".join(pieces)
    assert echoed["size"] == len(everything)
    assert echoed["sha256"] == hashlib.sha256(everything).hexdigest()
    assert ["Transfer-Encoding", "chunked"] in echoed["headers"]

    [flow] = appliance.wait_for_flows(session["id"], 1)
    assert flow["request_size"] == len(everything)
    detail = appliance.api("GET", f"/api/flows/{flow['id']}").json()
    assert detail["request"]["truncated"] is True
    assert detail["request"]["stored_size"] == 1048576


def test_hop_by_hop_headers_removed_and_order_and_case_kept(appliance, origin):
    """Connection-named and hop-by-hop headers are dropped; the rest keep order and case."""
    request = (
        f"GET {origin.url}/echo HTTP/1.1\r\n"
        "Host: wrong.example\r\n"
        "X-First: 1\r\n"
        "Connection: x-secret, close\r\n"
        "X-Secret: drop me\r\n"
        "Proxy-Connection: keep-alive\r\n"
        "Keep-Alive: timeout=5\r\n"
        "mIxEd-CaSe: kept\r\n"
        "X-Last: 2\r\n\r\n"
    ).encode()
    reply = raw_exchange(appliance.proxy_port, request)
    echoed = json.loads(reply.split(b"\r\n\r\n", 1)[1])
    assert echoed["headers"] == [
        ["Host", f"127.0.0.1:{origin.port}"],
        ["X-First", "1"],
        ["mIxEd-CaSe", "kept"],
        ["X-Last", "2"],
    ]
    assert b"Connection: close" in reply.split(b"\r\n\r\n")[0]


def test_head_204_304_and_chunked_and_close_delimited(appliance, origin):
    """Responses without a body, and each way of framing one, come through intact."""
    head = curl(appliance, "-I", f"{origin.url}/bytes?n=12345")
    assert head.returncode == 0
    assert b"Content-Length: 12345" in head.stdout
    for code in (204, 304):
        result = curl(appliance, "-o", "/dev/null", "-w", "%{http_code}", f"{origin.url}/status/{code}")
        assert result.stdout == str(code).encode()
    with appliance.client() as client:
        chunked = client.get(f"{origin.url}/chunked?n=300000", timeout=30)
        assert chunked.content == pattern(300000)
        closed = client.get(f"{origin.url}/close?n=300000", timeout=30)
        assert closed.content == pattern(300000)
        # The connection survives a HEAD whose response announced a body.
        assert client.head(f"{origin.url}/bytes?n=99", timeout=10).headers["Content-Length"] == "99"
        assert client.get(f"{origin.url}/bytes?n=7", timeout=10).content == pattern(7)


def test_expect_100_continue_is_relayed_from_the_origin(appliance, origin):
    """curl's Expect: 100-continue reaches the origin, whose 100 is relayed to the client."""
    body = b"z" * 200000
    result = subprocess.run(
        ["curl", "-sS", "-v", "-x", appliance.proxy_url, "-H", "Expect: 100-continue",
         "--data-binary", "@-", f"{origin.url}/echo"],
        input=body, capture_output=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert b"HTTP/1.1 100 Continue" in result.stderr
    echoed = json.loads(result.stdout)
    assert ["Expect", "100-continue"] in echoed["headers"]
    assert echoed["size"] == len(body)


@pytest.mark.parametrize("framing", [["-H", "Transfer-Encoding: chunked"], []])
def test_an_upload_refused_early_gets_its_answer(appliance, origin, tmp_path, framing):
    """The origin answers 413 before reading a 20 MB upload and closes: the client reads the 413, not a reset."""
    session = appliance.new_session()
    upload = tmp_path / "upload.bin"
    upload.write_bytes(pattern(20 * 1024 * 1024))
    for _ in range(3):  # the reset this guards against depended on timing
        result = curl(appliance, *framing, "--data-binary", f"@{upload}", "-o", "/dev/null", "-w", "%{http_code}",
                      f"http://127.0.0.1:{origin.port}/early")
        assert result.returncode == 0, result.stderr
        assert result.stdout == b"413"
    assert [f["status"] for f in appliance.wait_for_flows(session["id"], 3)] == [413] * 3


def test_an_origin_that_drops_an_upload_gives_the_client_a_502(appliance, origin, tmp_path):
    """The origin resets the connection mid-upload without answering: the client gets a 502 naming it, not a reset."""
    upload = tmp_path / "upload.bin"
    upload.write_bytes(pattern(20 * 1024 * 1024))
    result = curl(appliance, "--data-binary", f"@{upload}", f"http://127.0.0.1:{origin.port}/reset")
    assert result.returncode == 0, result.stderr
    assert b"origin closed the connection" in result.stdout


def test_a_client_that_sends_the_whole_body_first_still_reads_the_early_answer(appliance, origin):
    """Like requests: write all 20 MB, then read. The proxy half-closes and drains, so no reset eats the 413."""
    size = 20 * 1024 * 1024
    head = (f"POST http://127.0.0.1:{origin.port}/early HTTP/1.1\r\nHost: 127.0.0.1:{origin.port}\r\n"
            f"Content-Length: {size}\r\n\r\n").encode()
    block = b"x" * 65536
    for _ in range(3):  # the reset came about one time in three before the half-close
        with socket.create_connection(("127.0.0.1", appliance.proxy_port), timeout=30) as client:
            client.sendall(head)
            for _ in range(size // len(block)):
                client.sendall(block)
            answer = b""
            while b"too large" not in answer:
                data = client.recv(65536)
                assert data, f"connection closed before the answer: {answer!r}"
                answer += data
        assert answer.startswith(b"HTTP/1.1 413 "), answer[:300]


def test_closed_port_gives_502_and_a_flow_with_the_error(appliance, origin):
    """A refused connection is a 502 naming the cause, recorded as a flow with an error."""
    session = appliance.new_session()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    result = curl(appliance, "-w", "\n%{http_code}", f"http://127.0.0.1:{closed_port}/nothing")
    assert result.stdout.endswith(b"\n502")
    assert b"connection refused" in result.stdout
    [flow] = appliance.wait_for_flows(session["id"], 1)
    assert "connection refused" in flow["error"]
    assert flow["status"] is None
    # The proxy keeps serving.
    assert curl(appliance, f"{origin.url}/bytes?n=3").stdout == pattern(3)


def test_unresolvable_host_gives_502(appliance):
    """A name that does not resolve is a 502 that says so."""
    result = curl(appliance, "-w", "\n%{http_code}", "http://no-such-host.invalid/")
    assert result.stdout.endswith(b"\n502")
    assert b"cannot resolve" in result.stdout


def test_request_looping_into_the_appliance_is_refused(appliance):
    """Asking the proxy for its own listeners is refused instead of looping."""
    for port in (appliance.proxy_port, appliance.admin_port):
        result = curl(appliance, "-w", "\n%{http_code}", f"http://127.0.0.1:{port}/api/status")
        assert result.stdout.endswith(b"\n403"), result.stdout


def test_magic_host_page_is_served_by_the_proxy(appliance):
    """http://capture.proxy/ through the proxy answers with the appliance's own page."""
    result = curl(appliance, "http://capture.proxy/")
    assert b"capture" in result.stdout and b"<html" in result.stdout


def test_clients_outside_allow_are_refused(make_appliance, origin):
    """A client address outside [proxy] allow gets a 403 and a closed connection."""
    appliance = make_appliance(proxy={"allow": "10.0.0.0/8"}).start()
    reply = raw_exchange(appliance.proxy_port, f"GET {origin.url}/bytes?n=1 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert reply.startswith(b"HTTP/1.1 403")
    assert appliance.status()["refused_clients"] == 1


def test_malformed_request_gets_400_and_proxy_keeps_serving(appliance, origin):
    """Garbage instead of a request line is a 400; the next client is served."""
    reply = raw_exchange(appliance.proxy_port, b"\x00\x01 nonsense\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400")
    assert curl(appliance, f"{origin.url}/bytes?n=4").stdout == pattern(4)


def test_100_mib_download_is_intact_with_flat_memory(appliance, origin):
    """100 MiB through the proxy keeps its sha256, and the proxy's peak RSS stays under 100 MiB."""
    appliance.new_session()
    size = 100 * 1024 * 1024
    digest = hashlib.sha256()
    received = 0
    with appliance.client() as client:
        with client.get(f"{origin.url}/bytes?n={size}", stream=True, timeout=120) as response:
            for block in response.iter_content(1024 * 1024):
                digest.update(block)
                received += len(block)
    assert received == size
    assert digest.hexdigest() == pattern_sha256(size)
    peak_kib = _status_kib(appliance.process.pid, "VmHWM")
    assert peak_kib < 100 * 1024, f"proxy peak RSS {peak_kib} KiB"


def _status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


def test_concurrent_clients_are_all_captured(appliance, origin):
    """Twenty clients at once: every request answered and every flow stored once."""
    session = appliance.new_session()
    errors: list[BaseException] = []

    def run(n: int) -> None:
        try:
            with appliance.client() as client:
                for i in range(5):
                    assert client.get(f"{origin.url}/bytes?n={n * 10 + i}", timeout=30).content == pattern(n * 10 + i)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    flows = appliance.wait_for_flows(session["id"], 100)
    assert sorted(f["path"] for f in flows) == sorted(f"/bytes?n={n * 10 + i}" for n in range(20) for i in range(5))
