"""Fuzzing: random and mutated input to the request and response handling, the wire decoder and the filter parser.

The HTTP side runs the proxy protocol on in-memory transports (as
tests/test_proxy.py does).  Whatever the input: no exception escapes a
protocol callback, none is logged, the client never gets a malformed or
unframed response on a connection that stays open, and afterwards a new
connection on the same factory still carries a valid exchange end to end.

``CAPTURE_FUZZ_EXAMPLES=5000 pytest tests/test_fuzz.py`` searches harder.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.defer import succeed
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure

from capture import config, filters, wire
from capture.layers.http1_server import Http1Server
from capture.proxy.connection import ClientConnection
from capture.proxy.factory import ProxyFactory
from capture.rules import RuleSet
from capture.shipper import Shipper
from conftest import REPO
from test_filters import SAMPLES
from test_hostile_http import Reader
from test_proxy import FakePool, Transport, origin_client, queued

EXAMPLES = int(os.environ.get("CAPTURE_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

HOSTILE = REPO / "tests" / "hostile"
# Tight limits so that the fuzzer reaches them; TLS passed through so that no CA is needed in memory.
INI = "[limits]\nmax_request_line = 256\nmax_header_bytes = 1024\nmax_headers = 16\n[tls]\npassthrough = *\n"
SESSIONS = [{"id": 1, "clients": [], "filter": "", "capture_responses": True}]
OK_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


# -- in-memory proxy -------------------------------------------------------------------


class LenientTransport(Transport):
    """Pausing and resuming after loseConnection is a no-op, as on a real TCP transport (StringTransport raises)."""

    def pauseProducing(self) -> None:
        self.producerState = "paused"

    def resumeProducing(self) -> None:
        if not self.disconnecting:
            self.producerState = "producing"


class Pool(FakePool):
    """FakePool on tolerant transports."""

    def acquire(self, scheme: str, host: str, port: int, server_name: str | None = None) -> Any:
        client = origin_client(scheme, host, port, LenientTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", port)),
                               self.limits)
        self.connections.append(client)
        return succeed(client)


class Rig:
    """A factory with a fake pool, a clock and a shipper; clients are connected on demand."""

    def __init__(self) -> None:
        self.clock = MemoryReactorClock()
        self.shipper = Shipper(self.clock)
        self.shipper.rules = RuleSet.from_sessions(SESSIONS)
        self.pool = Pool(config.parse(INI).limits)
        self.factory = ProxyFactory(config.parse(INI), self.shipper, self.clock, pool=self.pool)
        self._port = 50000

    def client(self) -> tuple[ClientConnection, LenientTransport]:
        self._port += 1
        protocol = self.factory.buildProtocol(None)
        transport = LenientTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", self._port))
        protocol.makeConnection(transport)
        return protocol, transport

    def answer_all(self, response: bytes = OK_RESPONSE, limit: int = 20) -> None:
        """Answer every upstream connection that still waits for a response (pipelined ones appear as we go)."""
        i = 0
        while i < len(self.pool.connections) and i < limit:
            upstream = self.pool.connections[i]
            if upstream.exchange is not None and not upstream.transport.disconnecting:
                upstream.link.dataReceived(response)
            i += 1

    def settle(self) -> None:
        """Let every timer run (idle, head, body, tunnel timeouts)."""
        for _ in range(4):
            self.clock.advance(100)

    def assert_serves(self) -> None:
        """A new client on the same factory gets a valid request through to the pool and the answer back."""
        before = len(self.pool.connections)
        proxy, transport = self.client()
        proxy.dataReceived(b"GET http://example.test/after HTTP/1.1\r\nHost: example.test\r\n\r\n")
        assert len(self.pool.connections) == before + 1, "the valid request never reached the pool"
        upstream = self.pool.connections[-1]
        assert upstream.transport.value() == b"GET /after HTTP/1.1\r\nHost: example.test\r\n\r\n"
        upstream.link.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nafter")
        assert transport.value() == b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nafter"
        assert not transport.disconnecting
        assert queued(self.shipper)[-1].path == "/after"
        proxy.connectionLost(Failure(ConnectionDone()))
        assert self.factory.connections == 0 and not self.factory.clients


@contextlib.contextmanager
def logged_failures() -> Iterator[list[dict[str, Any]]]:
    """Events logged with a failure (log.failure, unhandled errors) while the block runs."""
    failures: list[dict[str, Any]] = []

    def observe(entry: dict[str, Any]) -> None:
        if entry.get("log_failure") is not None:
            failures.append(entry)

    globalLogPublisher.addObserver(observe)
    try:
        yield failures
    finally:
        globalLogPublisher.removeObserver(observe)


def describe(failures: list[dict[str, Any]]) -> str:
    return "\n".join(entry["log_failure"].getTraceback() for entry in failures)


class _Bytes:
    """A socket stand-in for Reader over what a StringTransport holds: EOF only if the proxy closed it."""

    def __init__(self, data: bytes, closed: bool) -> None:
        self.data, self.closed = data, closed

    def settimeout(self, timeout: float) -> None:
        pass

    def recv(self, n: int) -> bytes:
        if self.data:
            data, self.data = self.data, b""
            return data
        if self.closed:
            return b""
        raise socket.timeout()


def assert_well_framed(output: bytes, closed: bool, idle: bool, head_request: bool = False) -> None:
    """What the client got parses as responses; once the connection is idle (open, nothing under way) the
    last one is complete and delimited by its own framing, so the client is in step for the next request.
    """
    reader = Reader(_Bytes(output, closed))  # type: ignore[arg-type]
    reader.deadline = time.monotonic() + 1
    while reader.buffer or reader._fill():
        response = reader.response(head_request=head_request, timeout=1)
        finished = response is not None and response.complete and not response.close_delimited
        if not finished:
            assert closed or not idle, f"an unfinished or unframed response on an idle connection: {output[-300:]!r}"
            return


def aborted(transport: Transport) -> bool:
    """Was the connection aborted?  A real transport then drops the bytes it has not sent."""
    return getattr(transport, "aborted", False)


def outcome(output: bytes) -> str:
    """The first status line the client got, for hypothesis' statistics."""
    return output.split(b"\r\n", 1)[0][9:12].decode("latin-1") or "nothing"


# -- strategies --------------------------------------------------------------------------

VALID_REQUESTS = [
    b"GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET http://h:8080/a?b=c HTTP/1.1\r\nHost: h\r\nAccept: */*\r\nConnection: keep-alive\r\n\r\n",
    b"HEAD http://h/ HTTP/1.1\r\nHost: h\r\n\r\n",
    b"POST http://h/p HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
    b"PUT http://h/p HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
    b"POST http://h/c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nX-T: 1\r\n\r\n",
    b"GET http://h/1.0 HTTP/1.0\r\n\r\n",
    b"GET http://h/1 HTTP/1.1\r\nHost: h\r\n\r\nGET http://h/2 HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /local HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET http://capture.proxy/ HTTP/1.1\r\nHost: capture.proxy\r\n\r\n",
    b"CONNECT h:80 HTTP/1.1\r\nHost: h:80\r\n\r\nGET /inner HTTP/1.1\r\nHost: h\r\n\r\n",
    b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n\x16\x03\x01\x00\x05hello",
    b"CONNECT h:22 HTTP/1.1\r\nHost: h:22\r\n\r\nSSH-2.0-x\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
]
CORPUS_REQUESTS = [p.read_bytes().replace(b"{ORIGIN}", b"h:80") for p in sorted((HOSTILE / "requests").glob("*.http"))]

VALID_RESPONSES = [
    OK_RESPONSE,
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
    b"HTTP/1.0 200 OK\r\n\r\nclose delimited",
    b"HTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
    b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\nConnection: close\r\n\r\nnope",
    b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: keep-alive, X-Drop\r\nX-Drop: 1\r\n\r\nbody",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n",
]
# The corpus responses (tests/hostile/responses.toml) as seeds to mutate.
CORPUS_RESPONSES = [p.read_bytes().replace(b"{PAUSE}", b"") for p in sorted((HOSTILE / "responses").glob("*.http"))]

SPECIAL = [b"\r", b"\n", b"\r\n", b"\x00", b" ", b"\t", b":", b",", b";", b"\x7f", b"\xff", b"0", b"-1",
           b"ffffffffffffffffff", b"chunked", b"\r\n\r\n", b"0\r\n\r\n", b"HTTP/1.1 ", b" HTTP/1.1\r\n",
           b"Transfer-Encoding: chunked\r\n", b"Content-Length: 5\r\n", b"Content-Length: 0\r\n",
           b"Connection: close\r\n", b"Expect: 100-continue\r\n", b"Upgrade: websocket\r\nConnection: upgrade\r\n",
           b"Host: h\r\n", b"GET http://h/ HTTP/1.1\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx"]


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A seed with a few byte-level mutations: flips, inserts, deletes, duplicated slices, special tokens."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["flip", "insert", "special", "delete", "duplicate"]))
        at = draw(st.integers(0, len(data)))
        if op == "flip" and data:
            data[min(at, len(data) - 1)] = draw(st.integers(0, 255))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "special":
            data[at:at] = draw(st.sampled_from(SPECIAL))
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 16))]
        elif op == "duplicate":
            data[at:at] = data[at:at + draw(st.integers(1, 64))]
    return bytes(data)


@st.composite
def split(draw: st.DrawFn, data_strategy: st.SearchStrategy[bytes]) -> list[bytes]:
    """Bytes cut into the pieces the reads deliver."""
    data = draw(data_strategy)
    cuts = sorted(set(draw(st.lists(st.integers(0, len(data)), max_size=6))))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]


# Mutated valid input twice as often: it gets past the parser, where the state worth corrupting is.
requests_ = st.one_of(st.binary(max_size=512), mutated(VALID_REQUESTS), mutated(VALID_REQUESTS),
                      mutated(CORPUS_REQUESTS))
responses_ = st.one_of(st.binary(max_size=512), mutated(VALID_RESPONSES), mutated(VALID_RESPONSES),
                       mutated(CORPUS_RESPONSES))


# -- request side ------------------------------------------------------------------------


@FUZZ
@given(chunks=split(requests_), close=st.sampled_from([ConnectionDone, ConnectionLost]))
def test_fuzzed_requests_never_escape_and_leave_the_factory_serving(chunks: list[bytes], close: type) -> None:
    """Random or mutated request bytes: nothing raises or is logged, no open connection is desynchronised."""
    rig = Rig()
    with logged_failures() as failures:
        proxy, transport = rig.client()
        for chunk in chunks:
            proxy.dataReceived(chunk)
        rig.answer_all()
        event(f"client got {outcome(transport.value())}; {min(len(rig.pool.connections), 2)}+ upstream connections")
        # Inside a tunnel the bytes are no longer HTTP; the checker cannot tell which answers are to
        # HEADs (a head without its body is right for those); an aborted connection loses what was not
        # sent yet, so the client sees a reset whatever the transport holds.
        if proxy.tunnel is None and isinstance(proxy.layer, Http1Server) and b"HEAD" not in b"".join(chunks) and not aborted(transport):
            assert_well_framed(transport.value(), transport.disconnecting, not proxy.layer.busy)
        proxy.connectionLost(Failure(close()))
        rig.settle()
        assert rig.factory.connections == 0 and not rig.factory.clients
        rig.assert_serves()
    assert not failures, describe(failures)


# -- response side -----------------------------------------------------------------------

REQUESTS_FOR_RESPONSES = [
    (b"GET http://h/r HTTP/1.1\r\nHost: h\r\n\r\n", False),
    (b"HEAD http://h/r HTTP/1.1\r\nHost: h\r\n\r\n", True),
    (b"POST http://h/r HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc", False),
    # The body is still arriving when the response comes.
    (b"POST http://h/r HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n", False),
    (b"GET http://h/r HTTP/1.0\r\n\r\n", False),
]


@FUZZ
@given(request=st.sampled_from(REQUESTS_FOR_RESPONSES), chunks=split(responses_), end=st.booleans())
def test_fuzzed_responses_never_escape_or_desynchronise(request: tuple[bytes, bool], chunks: list[bytes],
                                                        end: bool) -> None:
    """Random or mutated origin bytes: nothing raises or is logged, the client's bytes stay well framed."""
    rig = Rig()
    raw, head_request = request
    with logged_failures() as failures:
        proxy, transport = rig.client()
        proxy.dataReceived(raw)
        upstream = rig.pool.connections[0]
        for chunk in chunks:
            if upstream.transport.disconnecting:
                break
            upstream.link.dataReceived(chunk)
        if end and not upstream.transport.disconnecting:
            upstream.link.connectionLost(Failure(ConnectionDone()))
        event(f"client got {outcome(transport.value())}")
        if not aborted(transport):
            assert_well_framed(transport.value(), transport.disconnecting, not proxy.layer.busy, head_request)
        if not transport.disconnecting and not proxy.layer.busy:
            # The exchange ended with the connection kept: the same connection serves the next request.
            before = len(rig.pool.connections)
            proxy.dataReceived(b"GET http://h/next HTTP/1.1\r\nHost: h\r\n\r\n")
            assert len(rig.pool.connections) == before + 1
            rig.pool.connections[-1].link.dataReceived(OK_RESPONSE)
            assert transport.value().endswith(OK_RESPONSE)
        proxy.connectionLost(Failure(ConnectionDone()))
        rig.settle()
        rig.assert_serves()
    assert not failures, describe(failures)


def test_unsolicited_101_is_contained() -> None:
    """A 101 Switching Protocols nobody asked for is a 502, not an exception out of dataReceived."""
    rig = Rig()
    proxy, transport = rig.client()
    proxy.dataReceived(b"GET http://h/r HTTP/1.1\r\nHost: h\r\n\r\n")
    rig.pool.connections[0].link.dataReceived(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                                         b"Upgrade: websocket\r\n\r\nraw")
    assert transport.value().startswith(b"HTTP/1.1 502 ")


def test_stray_interim_after_a_response_is_not_relayed() -> None:
    """Bytes after a complete response, even a well-formed 1xx, never reach the client."""
    rig = Rig()
    proxy, transport = rig.client()
    proxy.dataReceived(b"GET http://h/r HTTP/1.1\r\nHost: h\r\n\r\n")
    rig.pool.connections[0].link.dataReceived(OK_RESPONSE + b"HTTP/1.1 100 Continue\r\n\r\n")
    assert transport.value() == OK_RESPONSE


def test_local_answer_to_a_pipelined_head_has_no_body() -> None:
    """A HEAD the proxy answers itself gets a head only, so a kept-alive client stays in step."""
    rig = Rig()
    proxy, transport = rig.client()
    proxy.dataReceived(b"GET http://h/1 HTTP/1.1\r\nHost: h\r\n\r\nHEAD /local HTTP/1.1\r\nHost: h\r\n\r\n")
    rig.pool.connections[0].link.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx")
    first, _, second = transport.value().partition(b"\r\n\r\nx")
    assert second.startswith(b"HTTP/1.1 400 ")
    if not transport.disconnecting:
        assert second.endswith(b"\r\n\r\n"), "a body after the head of a HEAD response"


# -- the wire decoder --------------------------------------------------------------------

VALID_FRAMES = [
    wire.encode("hello", instance="proxy-1", pid=42),
    wire.encode("welcome", pid=7, last_seq=12),
    wire.encode("ack", instance="proxy-1", seq=12),
    wire.encode("rules", sessions=SESSIONS),
    wire.encode("call", id=3, method="sessions.list", args={"limit": 10}),
    wire.encode("flows", instance="proxy-1", items=[[13, [1], SAMPLES[0].pack()]]),
    wire.encode("reply", id=3, error={"status": 404, "message": "no such session"}),
]
msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2 ** 63), 2 ** 64 - 1) | st.floats() | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=5) | st.integers(-(2 ** 63), 2 ** 63 - 1), inner, max_size=4),
    max_leaves=20,
)


def check_decoder(chunks: list[bytes], max_size: int) -> None:
    decoder = wire.Decoder(max_size=max_size)
    try:
        for chunk in chunks:
            for message in decoder.feed(chunk):
                assert isinstance(message, dict) and isinstance(message["t"], str) and message["v"] == wire.VERSION
    except wire.WireError:
        pass
    # A connection that sent junk is dropped; the next one decodes as ever.
    assert [m["t"] for m in wire.Decoder().feed(b"".join(VALID_FRAMES))] == [
        "hello", "welcome", "ack", "rules", "call", "flows", "reply"]


@FUZZ
@given(chunks=split(st.one_of(st.binary(max_size=512), mutated(VALID_FRAMES), mutated([b"".join(VALID_FRAMES)]))),
       max_size=st.sampled_from([64, 4096, wire.MAX_MESSAGE]))
def test_wire_decoder_raises_only_wire_error(chunks: list[bytes], max_size: int) -> None:
    """Random or mutated bytes: the decoder returns typed messages or raises WireError, nothing else."""
    check_decoder(chunks, max_size)


@FUZZ
@given(values=st.lists(msgpack_values, min_size=1, max_size=4))
def test_wire_decoder_takes_any_msgpack_value(values: list[Any]) -> None:
    """Well-formed msgpack that is not a message (or is, by chance) is a WireError or a message."""
    import msgpack

    check_decoder([msgpack.packb(value, use_bin_type=True) for value in values], wire.MAX_MESSAGE)


def test_unhashable_map_key_is_a_wire_error() -> None:
    """A map keyed by an array or a map is malformed input: WireError, not TypeError."""
    for frame in (b"\x81\x90\x01", b"\x81\x80\x01"):
        with pytest.raises(wire.WireError):
            wire.Decoder().feed(frame)


# -- the filter parser -----------------------------------------------------------------------

FILTER_TOKENS = ["~all", "~q", "~s", "~e", "~a", "~http", "~https", "~tcp", "~m", "~u", "~d", "~h", "~hq", "~hs",
                 "~b", "~bq", "~bs", "~t", "~tq", "~ts", "~c", "~src", "~dst", "~x", "!", "&", "|", "(", ")", " ",
                 "\t", '"', "'", "\\", "GET", "200", "999999999999999999999999", "a.*b", "(?i)x", "[", "]",
                 "*", "+", "?", "{9999}", "\\d", "\\u00e9", "café", "\x00", "(?P<x>", "a|b"]


@FUZZ
@given(text=st.one_of(st.text(max_size=200), st.lists(st.sampled_from(FILTER_TOKENS), max_size=40).map("".join),
                      st.lists(st.sampled_from(FILTER_TOKENS), max_size=40).map(" ".join)))
def test_filter_parse_raises_only_filter_error(text: str) -> None:
    """Any text parses to a filter that evaluates and renders back, or raises FilterError."""
    try:
        selected = filters.parse(text)
    except filters.FilterError:
        return
    for flow in SAMPLES:
        assert selected(flow) in (True, False)
    assert filters.parse(str(selected)) == selected


def test_deep_filter_nesting_is_a_filter_error() -> None:
    """Nesting past MAX_DEPTH is refused with FilterError, never RecursionError."""
    for text in ("(" * 5000 + "x" + ")" * 5000, "!" * 5000 + "x", "(!" * 3000 + "x" + ")" * 3000):
        with pytest.raises(filters.FilterError):
            filters.parse(text)
