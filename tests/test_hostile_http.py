"""End to end: hostile and smuggling HTTP against the real appliance.

The corpus lives in tests/hostile/: raw requests listed in requests.toml
(each with the status it must get and the RFC rule it breaks) and raw
responses listed in responses.toml, which tests/hostile_origin.py serves.
One appliance serves the whole module; every case also checks that the
proxy still serves the next client, so a case that wedges it fails there.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from typing import Any, Iterator

import pytest

from conftest import REPO, Appliance, Origin, child_env, wait_for
from origin import pattern

HOSTILE = REPO / "tests" / "hostile"
LIMITS = {"max_request_line": 1024, "max_header_bytes": 4096, "max_headers": 32}
READ_TIMEOUT = 5.0
MARKER = b"SMUGGLED"  # in every hostile response's bytes that must never reach a client
LOG_ALARMS = ("Traceback (most recent call last)", "Unhandled Error", "internal error in the proxy")


def load(index: str) -> list[dict[str, Any]]:
    with open(HOSTILE / index, "rb") as f:
        return tomllib.load(f)["case"]


def params(cases: list[dict[str, Any]]) -> list[Any]:
    """One pytest param per case, named after its file."""
    return [pytest.param(case, id=case["file"].removesuffix(".http")) for case in cases]


REQUEST_CASES = load("requests.toml")
RESPONSE_CASES = load("responses.toml")


# -- a strict little HTTP/1.1 response reader over a raw socket --------------------------


@dataclass
class Response:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    complete: bool = False
    close_delimited: bool = False
    informational: list[int] = field(default_factory=list)

    def header(self, name: bytes) -> bytes | None:
        for n, v in self.headers:
            if n == name:
                return v
        return None


class Reader:
    """Reads responses off a client socket; remembers every byte received."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.received = b""
        self.closed = False
        self.reset = False
        self.deadline = 0.0

    def _fill(self) -> bool:
        """More bytes into the buffer; False at EOF, reset or the deadline."""
        if self.closed:
            return False
        left = self.deadline - time.monotonic()
        if left <= 0:
            return False
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except (socket.timeout, TimeoutError):
            return False
        except OSError:
            self.closed = self.reset = True
            return False
        if not data:
            self.closed = True
            return False
        self.buffer += data
        self.received += data
        return True

    def _line(self) -> bytes | None:
        while b"\r\n" not in self.buffer:
            if not self._fill():
                return None
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def _take(self, n: int) -> bytes | None:
        while len(self.buffer) < n:
            if not self._fill():
                return None
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def response(self, head_request: bool = False, timeout: float = READ_TIMEOUT) -> Response | None:
        """The next final response (1xx are noted and skipped), perhaps incomplete; None without a head."""
        self.deadline = time.monotonic() + timeout
        informational = []
        while True:
            while b"\r\n\r\n" not in self.buffer:
                if not self._fill():
                    return None
            raw, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            lines = raw.split(b"\r\n")
            parts = lines[0].split(b" ", 2)
            assert len(parts) >= 2 and parts[0] == b"HTTP/1.1" and parts[1].isdigit() and len(parts[1]) == 3, \
                f"the proxy sent a malformed status line: {lines[0]!r}"
            status = int(parts[1])
            headers = []
            for line in lines[1:]:
                name, colon, value = line.partition(b":")
                assert colon and name == name.strip() and name, f"the proxy sent a malformed field line: {line!r}"
                headers.append((name.lower(), value.strip()))
            if 100 <= status < 200:
                informational.append(status)
                continue
            break
        response = Response(status, headers, informational=informational)
        codings = b",".join(v for n, v in headers if n == b"transfer-encoding")
        lengths = [v for n, v in headers if n == b"content-length"]
        if codings:
            assert not lengths, "the proxy sent both Transfer-Encoding and Content-Length"
        if head_request or status in (204, 304):
            response.complete = True
        elif codings:
            names = [coding.strip().lower() for coding in codings.split(b",")]
            assert names[-1] == b"chunked" and names.count(b"chunked") == 1, \
                f"the proxy sent Transfer-Encoding: {codings!r}"
            response.body, response.complete = self._chunked()
            if not response.complete:  # cut short: the rest that arrived is still this response's
                response.body, self.buffer = response.body + self.buffer, b""
        elif lengths:
            assert len(set(lengths)) == 1 and lengths[0].isdigit(), f"the proxy sent Content-Length {lengths!r}"
            body = self._take(int(lengths[0]))
            if body is not None:
                response.body, response.complete = body, True
            else:  # cut short: what did arrive is this response's, not bytes after it
                response.body, self.buffer, response.complete = self.buffer, b"", False
        else:
            response.close_delimited = True
            while self._fill():
                pass
            response.body, self.buffer = self.buffer, b""
            response.complete = self.closed and not self.reset
        return response

    def _chunked(self) -> tuple[bytes, bool]:
        body = b""
        while True:
            line = self._line()
            if line is None:
                return body, False
            try:
                size = int(line.split(b";")[0], 16)
            except ValueError:
                raise AssertionError(f"the proxy sent a malformed chunk size: {line[:80]!r}") from None
            if size == 0:
                while True:
                    trailer = self._line()
                    if trailer is None:
                        return body, False
                    if trailer == b"":
                        return body, True
            data = self._take(size + 2)
            if data is None:
                return body, False
            assert data.endswith(b"\r\n"), "the proxy sent a malformed chunk"
            body += data[:size]

    def at_eof(self, timeout: float = READ_TIMEOUT) -> bool:
        """Does the connection end here, with no further bytes?"""
        self.deadline = time.monotonic() + timeout
        while self._fill():
            pass
        return self.closed and not self.buffer


def send(sock: socket.socket, data: bytes) -> bool:
    """Send all of ``data``; False when the proxy already closed the connection."""
    try:
        sock.sendall(data)
        return True
    except OSError:
        return False


# -- fixtures ------------------------------------------------------------------------


class HostileOrigin:
    """tests/hostile_origin.py in its own process."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(REPO / "tests" / "hostile_origin.py")],
            stdout=subprocess.PIPE, text=True, env=child_env(),
        )
        self.port = int(self.process.stdout.readline().split()[1])
        self.authority = f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


@pytest.fixture(scope="module")
def hostile_origin() -> Iterator[HostileOrigin]:
    server = HostileOrigin()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def hostile_appliance(tmp_path_factory: pytest.TempPathFactory, origin: Origin) -> Iterator[Appliance]:
    """One appliance for the module, tight limits, a capturing session (``session_id``)."""
    appliance = Appliance(tmp_path_factory.mktemp("hostile"), limits=LIMITS)
    try:
        appliance.start()
        appliance.session_id = appliance.new_session(name="hostile")["id"]
        # Capture is on once the proxy has the session's rules: wait for a first flow.
        with appliance.client() as client:
            assert client.get(f"{origin.url}/bytes?n=1", timeout=10).status_code == 200
        appliance.wait_for_flows(appliance.session_id, 1)
        yield appliance
    finally:
        try:
            appliance.stop(timeout=20)
        except subprocess.TimeoutExpired:
            appliance.kill()


def connect(appliance: Appliance) -> socket.socket:
    return socket.create_connection(("127.0.0.1", appliance.proxy_port), timeout=READ_TIMEOUT)


def still_serves(appliance: Appliance, origin: Origin, tag: str) -> str:
    """A normal GET through the proxy gets the origin's bytes; returns the path the origin saw."""
    path = f"/bytes?n=64&after={tag}"
    with appliance.client() as client:
        response = client.get(origin.url + path, timeout=10)
    assert response.status_code == 200 and response.content == pattern(64), "the proxy no longer serves"
    return path


def assert_log_clean(appliance: Appliance, offset: int) -> None:
    text = appliance.log_text()[offset:]
    for alarm in LOG_ALARMS:
        assert alarm not in text, f"the appliance logged {alarm!r}:\n{text[-3000:]}"


# -- hostile requests ------------------------------------------------------------------


def test_corpus_is_big_enough_and_indexed() -> None:
    """At least 60 hostile requests and 15 hostile responses, every file indexed and every index entry a file."""
    for kind, cases in (("requests", REQUEST_CASES), ("responses", RESPONSE_CASES)):
        files = {p.name for p in (HOSTILE / kind).glob("*.http")}
        assert files == {case["file"] for case in cases}, kind
    assert sum(1 for case in REQUEST_CASES if not case.get("forward")) >= 60
    assert sum(1 for case in REQUEST_CASES if case.get("forward")) >= 5
    assert len(RESPONSE_CASES) >= 15


@pytest.mark.parametrize("case", params(REQUEST_CASES))
def test_hostile_request(case: dict[str, Any], hostile_appliance: Appliance, origin: Origin) -> None:
    """Each corpus request gets its status, reaches the origin only when valid, and the proxy keeps serving."""
    appliance = hostile_appliance
    name = case["file"].removesuffix(".http")
    raw = (HOSTILE / "requests" / case["file"]).read_bytes()
    data = raw.replace(b"{ORIGIN}", f"127.0.0.1:{origin.port}".encode())
    expected = case["status"] if isinstance(case["status"], list) else [case["status"]]
    forward = case.get("forward", False)
    log_offset = len(appliance.log_text())
    before = len(origin.log())

    with connect(appliance) as sock:
        send(sock, data)
        response = Reader(sock).response()
    assert response is not None, "no response head before the connection ended"
    forwarded_ok = case.get("accept_forwarded") and response.status == 200
    assert response.status in expected or forwarded_ok, (response.status, response.body[:200])
    if response.status >= 400:
        assert response.complete and response.body.strip(), "an error without a text saying why"

    health = still_serves(appliance, origin, name)
    seen = [entry["path"] for entry in origin.log()[before:]]
    assert not [path for path in seen if "smuggled" in path], f"a smuggled request reached the origin: {seen}"
    if forward or forwarded_ok:
        assert sorted(seen) == sorted([f"/hostile/{name}", health]), seen
        if forward:
            assert response.status == 200
    else:
        assert seen == [health], f"a refused request reached the origin: {seen}"
    assert_log_clean(appliance, log_offset)


def test_bad_chunk_after_the_forwarded_head_is_400_and_smuggles_nothing(hostile_appliance: Appliance, origin: Origin) -> None:
    """A bad chunk arriving after the head was forwarded gets a 400 and a close; nothing behind it is forwarded."""
    appliance = hostile_appliance
    authority = f"127.0.0.1:{origin.port}".encode()
    before = len(origin.log())
    with connect(appliance) as sock:
        send(sock, b"POST http://%s/hostile/late-bad-chunk HTTP/1.1\r\nHost: %s\r\n"
                   b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n" % (authority, authority))
        time.sleep(0.3)
        send(sock, b"zz\r\n" + b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n")
        reader = Reader(sock)
        response = reader.response()
        assert response is not None and response.status == 400
        assert reader.at_eof()
    still_serves(appliance, origin, "late-bad-chunk")
    assert not [e for e in origin.log()[before:] if "smuggled" in e["path"]]


def test_malformed_request_pipelined_behind_a_valid_one(hostile_appliance: Appliance, origin: Origin) -> None:
    """The valid request's answer comes first (or the connection closes unanswered); a 400 never takes its place."""
    authority = f"127.0.0.1:{origin.port}".encode()
    with connect(hostile_appliance) as sock:
        send(sock, b"GET http://%s/bytes?n=16&pipelined=1 HTTP/1.1\r\nHost: %s\r\n\r\n"
                   b"BAD\x00 / HTTP/1.1\r\n\r\n" % (authority, authority))
        first = Reader(sock).response()
    assert first is None or (first.status, first.body) == (200, pattern(16)), first
    still_serves(hostile_appliance, origin, "pipelined")


# -- hostile responses -------------------------------------------------------------------


def find_flow(appliance: Appliance, path: str) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        flows = appliance.flows(appliance.session_id, filter="~u /case/")["flows"]
        return next((flow for flow in flows if flow["path"] == path), None)
    return wait_for(found, timeout=10, interval=0.1)


@pytest.mark.parametrize("case", params(RESPONSE_CASES))
def test_hostile_response(case: dict[str, Any], hostile_appliance: Appliance, hostile_origin: HostileOrigin,
                          origin: Origin) -> None:
    """A broken response is a 502 (or a cut connection), never bytes that desynchronise the client."""
    appliance = hostile_appliance
    name = case["file"].removesuffix(".http")
    method = case.get("method", "GET")
    path = f"/case/{name}"
    log_offset = len(appliance.log_text())

    with connect(appliance) as sock:
        reader = Reader(sock)
        assert send(sock, f"{method} http://{hostile_origin.authority}{path} HTTP/1.1\r\n"
                          f"Host: {hostile_origin.authority}\r\n\r\n".encode())
        first = reader.response(head_request=method == "HEAD", timeout=2)
        expect = case["expect"]
        if expect == "502":
            assert first is not None and first.status == 502 and first.complete, first
            assert b"origin" in first.body, first.body
            assert case.get("problem", "").encode() in first.body, first.body
        elif expect == "cut":
            assert first is None or first.status == 502 or not first.complete, \
                f"a broken body was relayed whole: {first}"
        if case.get("whole"):
            assert first is not None and first.complete and first.status < 500, f"a complete response was lost: {first}"
        if first is not None and first.close_delimited:
            assert reader.closed, "a response without framing on a connection that stays open (desynchronised)"
        # A second request on the same connection: answered correctly, or the connection is closed.
        if first is not None and first.complete and not reader.closed:
            if send(sock, f"GET {origin.url}/bytes?n=32 HTTP/1.1\r\nHost: 127.0.0.1:{origin.port}\r\n\r\n".encode()):
                second = reader.response()
                if second is not None:
                    assert (second.status, second.body) == (200, pattern(32)), second
        else:
            send(sock, f"GET {origin.url}/bytes?n=32 HTTP/1.1\r\nHost: 127.0.0.1:{origin.port}\r\n\r\n".encode())
            assert reader.at_eof(), f"bytes after a broken response: {reader.buffer[:200]!r}"
    assert MARKER not in reader.received, f"bytes of the bad response reached the client: {reader.received[-300:]!r}"

    if expect in ("502", "cut"):
        flow = find_flow(appliance, path)
        assert flow["error"], flow
    still_serves(appliance, origin, name)
    assert_log_clean(appliance, log_offset)
