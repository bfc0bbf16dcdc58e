"""The HTTP/2 server layer as scripted exchanges: an h2 client connection on one side, fake origins on
the other, no sockets. Translation to HTTP/1.1, flow control tied to the origin, limits and GOAWAY."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
from h2.errors import ErrorCodes
from twisted.internet.address import IPv4Address

from capture import config
from capture.http.exchange import TunnelTarget
from capture.layers.h2_server import MAX_RESETS, H2Server
from capture.layers.host import LayerHost
from capture.proxy.factory import ProxyFactory
from capture.rules import RuleSet
from capture.shipper import Shipper
from test_proxy import FakePool, Transport, queued
from twisted.internet.testing import MemoryReactorClock

TARGET = TunnelTarget("https", "example.test", 443, "example.test")


class Origins:
    """Origin streams for the layer: HTTP/1.1 clients from a FakePool (so every request is translated)."""

    def __init__(self, pool: FakePool) -> None:
        self.pool = pool

    def acquire(self, scheme, host, port, server_name=None):
        return self.pool.acquire(scheme, host, port, server_name)

    def release(self, stream) -> None:
        self.pool.release(stream)


class Rig:
    """An H2Server on a host over a StringTransport, and an h2 client connection that talks to it."""

    def __init__(self, ini: str = "") -> None:
        self.clock = MemoryReactorClock()
        self.shipper = Shipper(self.clock)
        self.shipper.rules = RuleSet.from_sessions([{"id": 1, "clients": [], "filter": "", "capture_responses": True}])
        self.pool = FakePool()
        self.factory = ProxyFactory(config.parse(ini), self.shipper, self.clock, pool=self.pool)
        self.host = LayerHost(self.factory, TARGET, ("127.0.0.1", 50000), 1.0)
        self.transport = Transport(peerAddress=IPv4Address("TCP", "127.0.0.1", 50000))
        self.host.makeConnection(self.transport)
        self.layer = H2Server(self.host, Origins(self.pool))
        self.host.switch(self.layer)
        self.client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.client.initiate_connection()
        self.events: list = []
        self.pump()

    def pump(self) -> None:
        """Client bytes to the layer, the layer's bytes back to the client (until both are quiet)."""
        for _ in range(20):
            out = self.client.data_to_send()
            if out:
                self.host.dataReceived(out)
            back = self.transport.value()
            self.transport.clear()
            if back:
                self.events.extend(self.client.receive_data(back))
            if not out and not back:
                return

    def request(self, headers, body: bytes | None = None, end: bool = True) -> int:
        stream_id = self.client.get_next_available_stream_id()
        self.client.send_headers(stream_id, headers, end_stream=body is None and end)
        if body is not None:
            self.client.send_data(stream_id, body, end_stream=end)
        self.pump()
        return stream_id

    def of(self, kind):
        return [e for e in self.events if isinstance(e, kind)]


GET = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"example.test"), (b":path", b"/a?b=1")]


def test_h2_request_is_translated_to_http11_and_answered_over_h2():
    """An h2 GET reaches an HTTP/1.1 origin with Host from :authority and cookies joined; the answer
    comes back on the stream, and the flow is HTTP/2.0 with its stream id."""
    rig = Rig()
    sid = rig.request(GET + [(b"cookie", b"a=1"), (b"cookie", b"b=2"), (b"accept", b"*/*")])
    [origin] = rig.pool.connections
    sent = origin.transport.value()
    assert sent.startswith(b"GET /a?b=1 HTTP/1.1\r\nHost: example.test\r\n")
    assert b"cookie: a=1; b=2\r\n" in sent and sent.count(b"cookie") == 1
    origin.link.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\nX-A: 1\r\n\r\nhello")
    rig.pump()
    [response] = rig.of(h2.events.ResponseReceived)
    assert response.stream_id == sid
    assert (b":status", b"200") in response.headers and (b"x-a", b"1") in response.headers
    assert not any(name == b"connection" for name, _ in response.headers)
    assert b"".join(e.data for e in rig.of(h2.events.DataReceived)) == b"hello"
    assert rig.of(h2.events.StreamEnded)
    [flow] = queued(rig.shipper)
    assert (flow.http_version, flow.stream_id, flow.path, flow.status) == ("2.0", sid, "/a?b=1", 200)
    assert rig.pool.released == [origin]


def test_grpc_is_refused_rather_than_translated():
    """A gRPC request towards an HTTP/1.1 origin gets a 502 on its stream, and nothing is sent to the origin."""
    rig = Rig()
    rig.request(GET[:1] + [(b":scheme", b"https"), (b":authority", b"example.test"), (b":path", b"/svc/M"),
                           (b"content-type", b"application/grpc"), (b"te", b"trailers")], b"\0\0\0\0\0")
    [response] = rig.of(h2.events.ResponseReceived)
    assert (b":status", b"502") in response.headers
    assert b"gRPC" in b"".join(e.data for e in rig.of(h2.events.DataReceived))
    assert rig.pool.connections[0].transport.value() == b""


def test_request_data_is_acknowledged_only_as_the_origin_takes_it():
    """Flow control tied to the origin: DATA that arrives while the origin's transport is paused is
    not acknowledged (the client's window stays consumed) until the transport resumes."""
    rig = Rig()
    post = [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"example.test"), (b":path", b"/up"),
            (b"content-length", b"60000")]
    sid = rig.request(post, b"x" * 10000, end=False)
    origin = rig.pool.connections[0]
    stream = rig.layer.streams[sid]
    assert stream._unacked == 0  # taken at once: acknowledged
    origin.transport.producer.pauseProducing()  # the origin's socket is full
    for _ in range(4):
        rig.client.send_data(sid, b"y" * 10000)
    rig.pump()
    assert stream._unacked == 40000
    assert not [e for e in rig.of(h2.events.WindowUpdated) if e.stream_id == sid]
    origin.transport.producer.resumeProducing()
    rig.pump()
    assert stream._unacked == 0
    assert [e for e in rig.of(h2.events.WindowUpdated) if e.stream_id == sid]
    assert origin.transport.value().endswith(b"y" * 40000)


def test_response_waits_for_the_clients_window_and_pauses_the_origin():
    """Response DATA beyond the client's window is held and the origin's transport paused until
    the client opens the window."""
    rig = Rig()
    rig.client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1000})
    rig.pump()
    sid = rig.request(GET)
    origin = rig.pool.connections[0]
    origin.link.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b"z" * 5000)
    rig.pump()
    got = sum(len(e.data) for e in rig.of(h2.events.DataReceived))
    assert got == 1000
    assert origin.transport.producerState == "paused"
    for event in rig.of(h2.events.DataReceived):
        rig.client.acknowledge_received_data(len(event.data), sid)
    rig.client.increment_flow_control_window(10000, sid)
    rig.pump()
    assert sum(len(e.data) for e in rig.of(h2.events.DataReceived)) == 5000
    assert origin.transport.producerState == "producing"


def test_rapid_reset_ends_the_connection_with_goaway():
    """More than MAX_RESETS streams opened and reset at once (CVE-2023-44487): GOAWAY ENHANCE_YOUR_CALM, closed."""
    rig = Rig()
    for _ in range(MAX_RESETS + 5):
        sid = rig.client.get_next_available_stream_id()
        rig.client.send_headers(sid, GET, end_stream=True)
        rig.client.reset_stream(sid)
        rig.host.dataReceived(rig.client.data_to_send())
        if rig.transport.disconnecting:
            break
    rig.pump()
    [goaway] = rig.of(h2.events.ConnectionTerminated)
    assert goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    assert rig.transport.disconnecting


def test_bad_preface_ends_only_that_connection():
    """Bytes that are not the HTTP/2 preface: GOAWAY (protocol error) and the connection closes;
    the factory still serves a new connection."""
    rig = Rig.__new__(Rig)
    Rig.__init__(rig)
    host = LayerHost(rig.factory, TARGET, ("127.0.0.1", 50001), 1.0)
    transport = Transport(peerAddress=IPv4Address("TCP", "127.0.0.1", 50001))
    host.makeConnection(transport)
    host.switch(H2Server(host, Origins(rig.pool)))
    host.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + b"\0" * 40)
    assert transport.disconnecting
    assert b"\x07" in transport.value()  # a GOAWAY frame (type 7) was written
    rig.request(GET)
    assert len(rig.pool.connections) == 1


def _answer(rig: Rig, body: bytes = b"hello") -> None:
    [origin] = rig.pool.connections
    origin.link.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    rig.pump()


def test_client_goaway_lets_its_open_streams_finish():
    """A GOAWAY from the client (RFC 9113 6.8): its open stream still gets the whole response and is recorded,
    a stream it opens after is refused, and the connection closes once the open one is done."""
    from hyperframe.frame import GoAwayFrame

    rig = Rig()
    sid = rig.request(GET)
    # Written beside the client's h2, which would otherwise stop reading the answer it still wants.
    rig.host.dataReceived(GoAwayFrame(0, last_stream_id=0, error_code=0).serialize())
    assert not rig.transport.disconnecting
    _answer(rig)
    [response] = rig.of(h2.events.ResponseReceived)
    assert response.stream_id == sid
    assert b"".join(e.data for e in rig.of(h2.events.DataReceived)) == b"hello"
    assert [e.stream_id for e in rig.of(h2.events.StreamEnded)] == [sid]
    [flow] = queued(rig.shipper)
    assert (flow.stream_id, flow.status, flow.error) == (sid, 200, "")
    assert rig.transport.disconnecting


def test_drain_goaway_lets_open_streams_finish():
    """Shutting down: a GOAWAY (NO_ERROR, naming the last stream taken) goes out first, the open stream is still
    answered in full, and the connection closes after it."""
    from capture.http.h2frames import FrameScanner

    rig = Rig()
    sid = rig.request(GET)
    scanner = FrameScanner(1 << 24)
    rig.layer.close_when_idle()
    wire, goaways, _ = scanner.feed(rig.transport.value())
    rig.transport.clear()
    assert goaways == [(sid, ErrorCodes.NO_ERROR)]
    assert not rig.transport.disconnecting
    [origin] = rig.pool.connections
    origin.link.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
    wire += scanner.feed(rig.transport.value())[0]
    events = rig.client.receive_data(wire)
    assert b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived)) == b"hello"
    assert [e.stream_id for e in events if isinstance(e, h2.events.StreamEnded)] == [sid]
    assert rig.transport.disconnecting
