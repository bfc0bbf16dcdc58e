"""The HTTP/2 client towards origins, scripted against an h2 server connection without sockets:
streams, trailers, push refused, GOAWAY letting accepted streams finish, DATA acknowledged only as
the client side takes it."""

from __future__ import annotations

import h2.config
import h2.errors
import h2.connection
import h2.events
import h2.settings
from hyperframe.frame import GoAwayFrame
from twisted.internet.address import IPv4Address

from capture import config
from capture.http.http1 import Target
from capture.upstream.connector import OriginLink
from capture.upstream.h2_client import H2ClientConnection
from test_proxy import Transport


class Sink:
    """A ResponseSink that notes every event."""

    def __init__(self) -> None:
        self.events: list = []

    def response_informational(self, status, reason, headers):
        self.events.append(("informational", status))

    def response_head(self, status, reason, headers, framing):
        self.events.append(("head", status, framing, headers))

    def response_body(self, data):
        self.events.append(("body", data))

    def response_end(self, trailers):
        self.events.append(("end", trailers))

    def upstream_failed(self, status, message):
        self.events.append(("failed", status, message))


class OriginEnd:
    """An origin link over a StringTransport and the origin's h2 server connection; ``pump`` carries bytes both ways."""

    def __init__(self, max_streams: int | None = None) -> None:
        self.transport = Transport(peerAddress=IPv4Address("TCP", "192.0.2.9", 443))
        self.link = OriginLink("origin.test", 443)
        self.link.makeConnection(self.transport)
        self.server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        if max_streams is not None:
            self.server.local_settings = h2.settings.Settings(client=False, initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: max_streams})
        self.server.initiate_connection()
        self.seen: list = []

    def pump(self) -> None:
        for _ in range(20):
            out = self.transport.value()
            self.transport.clear()
            if out:
                self.seen.extend(self.server.receive_data(out))
            back = self.server.data_to_send()
            if back:
                self.link.dataReceived(back)
            if not out and not back:
                return


class Rig(OriginEnd):
    """An H2ClientConnection on the origin link."""

    def __init__(self) -> None:
        super().__init__()
        self.client = H2ClientConnection(self.link, config.parse("").limits)
        self.pump()

    def get(self, path: str = "/") -> tuple[object, Sink]:
        stream, sink = self.client.open_stream(), Sink()
        stream.send_request(sink, b"GET", Target("https", "origin.test", 443, path), [(b"Accept", b"*/*")], "none", True)
        self.pump()
        return stream, sink

    def requests(self) -> list:
        return [e for e in self.seen if isinstance(e, h2.events.RequestReceived)]


def test_a_stream_carries_the_request_and_its_answer_with_trailers():
    """Pseudo-headers from the target, headers lowered; the answer's head, body and trailers come back apart."""
    rig = Rig()
    stream, sink = rig.get("/svc?x=1")
    [request] = rig.requests()
    assert (b":path", b"/svc?x=1") in request.headers and (b":authority", b"origin.test") in request.headers
    assert (b"accept", b"*/*") in request.headers
    sid = request.stream_id
    rig.server.send_headers(sid, [(b":status", b"200"), (b"content-type", b"application/grpc")])
    rig.server.send_data(sid, b"\0\0\0\0\1x")
    rig.server.send_headers(sid, [(b"grpc-status", b"0")], end_stream=True)
    rig.pump()
    assert sink.events[0][:3] == ("head", 200, "chunked")
    assert ("body", b"\0\0\0\0\1x") in sink.events
    assert sink.events[-1] == ("end", [(b"grpc-status", b"0")])


def test_push_is_refused_in_the_settings():
    """The client announces SETTINGS_ENABLE_PUSH = 0 to the origin."""
    rig = Rig()
    assert rig.server.remote_settings[h2.settings.SettingCodes.ENABLE_PUSH] == 0


def test_goaway_lets_accepted_streams_finish_and_fails_the_rest():
    """GOAWAY naming stream 1 as the last accepted: stream 1 still completes, stream 3 fails with a 502."""
    rig = Rig()
    first, first_sink = rig.get("/1")
    second, second_sink = rig.get("/2")
    one, three = [r.stream_id for r in rig.requests()]
    goaway = GoAwayFrame(0, last_stream_id=one, error_code=0)  # the origin's h2 keeps serving stream 1
    rig.link.dataReceived(goaway.serialize())
    assert second_sink.events and second_sink.events[0][0] == "failed" and second_sink.events[0][1] == 502
    assert not rig.client.accepting
    rig.server.send_headers(one, [(b":status", b"200"), (b"content-length", b"2")])
    rig.server.send_data(one, b"ok", end_stream=True)
    rig.pump()
    assert first_sink.events[-1] == ("end", [])
    assert rig.transport.disconnecting  # nothing left on a connection that is going away


def test_a_malformed_goaway_fails_the_streams_and_ends_the_connection():
    """A GOAWAY shorter than its 8 fixed bytes is a frame size error: open streams fail with a 502 naming
    it, and the connection ends with a GOAWAY of our own (FRAME_SIZE_ERROR)."""
    rig = Rig()
    stream, sink = rig.get("/1")
    rig.link.dataReceived((4).to_bytes(3, "big") + bytes((7, 0)) + (0).to_bytes(4, "big") + (1).to_bytes(4, "big"))
    assert sink.events[0][:2] == ("failed", 502) and "GOAWAY frame of 4 bytes" in sink.events[0][2]
    rig.pump()
    ended = [e for e in rig.seen if isinstance(e, h2.events.ConnectionTerminated)]
    assert ended and ended[0].error_code == h2.errors.ErrorCodes.FRAME_SIZE_ERROR


def test_data_is_acknowledged_only_as_the_client_side_takes_it():
    """While the stream's producer is paused (the client's socket is full), the origin's window stays
    consumed; resuming acknowledges what was delivered."""
    rig = Rig()
    stream, sink = rig.get("/big")
    [request] = rig.requests()
    sid = request.stream_id
    rig.server.send_headers(sid, [(b":status", b"200")])
    rig.pump()
    stream.producer.pauseProducing()
    window = rig.server.local_flow_control_window(sid)
    for _ in range(4):
        rig.server.send_data(sid, b"d" * 10000)
    rig.pump()
    assert sum(len(e[1]) for e in sink.events if e[0] == "body") == 40000
    assert rig.server.local_flow_control_window(sid) == window - 40000
    stream.producer.resumeProducing()
    rig.pump()
    assert rig.server.local_flow_control_window(sid) > window - 40000


def test_stalled_streams_do_not_close_the_connection_window_for_the_others():
    """80 streams whose client side stopped reading, each with a full 65,535-byte window unacknowledged:
    the origin can still send on another stream (streams of many clients share the connection)."""
    rig = Rig()
    stalled = []
    for _ in range(80):
        stream, sink = rig.get()
        stream.producer.pauseProducing()
        stalled.append((stream, sink))
    for request in rig.requests():
        rig.server.send_headers(request.stream_id, [(b":status", b"200")])
        for size in (16384, 16384, 16384, 16383):
            rig.server.send_data(request.stream_id, b"x" * size)
    rig.pump()
    assert all(sum(len(e[1]) for e in sink.events if e[0] == "body") == 65535 for _, sink in stalled)
    stream, sink = rig.get()
    sid = rig.requests()[-1].stream_id
    assert rig.server.local_flow_control_window(sid) > 16384
    rig.server.send_headers(sid, [(b":status", b"200")])
    rig.server.send_data(sid, b"y" * 16384, end_stream=True)
    rig.pump()
    assert ("body", b"y" * 16384) in sink.events and sink.events[-1][0] == "end"
