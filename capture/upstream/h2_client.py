"""HTTP/2 towards an origin: many exchanges' streams on one origin link.

``H2ClientConnection`` runs ``h2`` over an origin link that negotiated
``h2``; ``open_stream`` gives an ``H2ClientStream``, the origin stream of
one exchange (``capture.http.streams.OriginStream``).  Server push is
refused (SETTINGS_ENABLE_PUSH = 0).  Flow control is tied to the client
side: DATA from the origin is acknowledged only when the client side has
taken it (the stream's ``producer`` is paused meanwhile), and request DATA
waits for the origin's window, pausing the client side's producer.  A
GOAWAY from the origin lets the streams it accepted finish and fails the
rest; a malformed frame ends the link with a GOAWAY of ours.
"""

from __future__ import annotations

from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from capture.http import hpack_speed, http2
from capture.http.h2frames import FrameScanner
from capture.http.http1 import Target, host_header
from capture.http.streams import Headers, ResponseSink
from capture.upstream.connector import OriginLink

# The connection-level window we grant the origin on top of each stream's own.  Streams of many client
# connections share one origin connection, so this covers 256 streams' full windows (65,535 bytes each):
# streams whose clients stopped reading cannot close it for the others.  Memory stays bounded by the
# stream windows, since each stream's DATA is acknowledged only as its client side takes it.
CONNECTION_WINDOW = 256 * 65535
# Our SETTINGS_MAX_FRAME_SIZE (the default): a longer frame from the origin is refused at its header.
MAX_FRAME = 16384


class H2ClientConnection:
    """One HTTP/2 connection to an origin; the handler of its link."""

    alpn = b"h2"
    log = Logger()

    def __init__(self, link: OriginLink, limits: Any) -> None:
        self.link = link
        link.handler = self
        self.streams: dict[int, H2ClientStream] = {}
        self.active: set[H2ClientStream] = set()  # handed out and not yet over (sent or not)
        self.accepting = True  # no GOAWAY seen, not lost
        self.on_change: Any = None  # called when a stream ends or the connection goes away (the pool's)
        self._transport_paused = False
        self._frames = FrameScanner(MAX_FRAME)
        config = h2.config.H2Configuration(client_side=True, header_encoding=None, **http2.OUTBOUND)
        self.conn = conn = h2.connection.H2Connection(config=config)
        hpack_speed.install()
        conn.encoder = hpack_speed.fast_encoder(conn.encoder)
        conn.local_settings = h2.settings.Settings(client=True, initial_values={
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: limits.max_header_bytes,
        })
        conn.initiate_connection()
        conn.increment_flow_control_window(CONNECTION_WINDOW)
        link.transport.registerProducer(_Paced(self), True)
        self.flush()

    def open_stream(self) -> H2ClientStream:
        stream = H2ClientStream(self)
        self.active.add(stream)
        return stream

    def has_room(self) -> bool:
        """Another stream fits under the origin's SETTINGS_MAX_CONCURRENT_STREAMS."""
        return self.accepting and len(self.active) < self.conn.remote_settings.max_concurrent_streams

    def close(self) -> None:
        """Idle too long: GOAWAY, then close."""
        self.accepting = False
        try:
            self.conn.close_connection(ErrorCodes.NO_ERROR)
        except h2.exceptions.ProtocolError:
            pass
        self.flush()
        self.link.transport.loseConnection()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.link.transport.write(data)

    # -- the link's events ---------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        data, goaways, frame_error = self._frames.feed(data)
        if frame_error:
            self._protocol_error(ErrorCodes.FRAME_SIZE_ERROR, frame_error)
            return
        for last_stream_id, _ in goaways:
            self._going_away(last_stream_id)
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            self._protocol_error(ErrorCodes.PROTOCOL_ERROR, str(e))
            return
        for event in events:
            self._dispatch(event)
        self.flush()

    def _protocol_error(self, code: int, message: str) -> None:
        self._fail_all(f"bad HTTP/2 from the origin: {message}")
        self.conn.close_connection(code)
        self.flush()
        self.link.transport.loseConnection()

    def _going_away(self, last_stream_id: int) -> None:
        """The origin's GOAWAY: no new streams here; those it accepted go on, the others fail."""
        self.accepting = False
        for stream_id, stream in list(self.streams.items()):
            if stream_id > last_stream_id:
                stream.failed("the origin went away (GOAWAY) before taking the request")
        self._close_if_done()
        self._changed()

    def _dispatch(self, event: Any) -> None:
        if isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
            for stream in list(self.streams.values()):
                stream.send_pending()
            return
        stream = self.streams.get(getattr(event, "stream_id", 0) or 0)
        if stream is None:
            return
        if isinstance(event, h2.events.InformationalResponseReceived):
            stream.informational(event.headers)
        elif isinstance(event, h2.events.ResponseReceived):
            stream.head(event.headers, event.stream_ended is not None)
        elif isinstance(event, h2.events.DataReceived):
            stream.data(event.data, event.flow_controlled_length)
        elif isinstance(event, h2.events.TrailersReceived):
            stream.trailers = [(n, v) for n, v in event.headers]
        elif isinstance(event, h2.events.StreamEnded):
            stream.ended()
        elif isinstance(event, h2.events.StreamReset):
            stream.failed(f"the origin reset the stream ({_code(event.error_code)})")

    def connection_lost(self, reason: Failure | None) -> None:
        self.accepting = False
        self._fail_all("the origin closed the HTTP/2 connection")
        self._changed()

    def _fail_all(self, message: str) -> None:
        self.accepting = False
        for stream in list(self.streams.values()):
            stream.failed(message)

    def forget(self, stream: H2ClientStream) -> None:
        if self.streams.get(stream.stream_id) is stream:
            del self.streams[stream.stream_id]
        if stream in self.active:
            self.active.discard(stream)
            self._close_if_done()
            self._changed()

    def _close_if_done(self) -> None:
        if not self.accepting and not self.active:
            self.link.transport.loseConnection()

    def pause_writes(self, paused: bool) -> None:
        """The origin's socket is full (or drained): request bodies wait (or go on)."""
        self._transport_paused = paused
        for stream in list(self.streams.values()):
            stream.pace()


@implementer(IPushProducer)
class _Paced:
    """Told by the link's transport when its buffer is full."""

    def __init__(self, connection: H2ClientConnection) -> None:
        self.connection = connection

    def pauseProducing(self) -> None:
        self.connection.pause_writes(True)

    def resumeProducing(self) -> None:
        self.connection.pause_writes(False)

    def stopProducing(self) -> None:
        """The link is going: its connectionLost fails the streams."""


@implementer(IPushProducer)
class _ResponsePacer:
    """The stream's producer for the client side: while paused, received DATA is not acknowledged."""

    def __init__(self, stream: H2ClientStream) -> None:
        self.stream = stream

    def pauseProducing(self) -> None:
        self.stream.paused = True

    def resumeProducing(self) -> None:
        self.stream.paused = False
        self.stream.acknowledge()

    def stopProducing(self) -> None:
        """The client side is gone: the exchange aborts the stream."""


class H2ClientStream:
    """One exchange's stream on an HTTP/2 connection to the origin."""

    alpn = b"h2"
    reusable = False

    def __init__(self, connection: H2ClientConnection) -> None:
        self.connection = connection
        self.stream_id = 0
        self.exchange: ResponseSink | None = None
        self.producer = _ResponsePacer(self)
        self.paused = False
        self.trailers: Headers = []
        self._unacked = 0
        self._request_producer: Any = None
        self._request_paused = False
        self._out: list[bytes] = []
        self._offset = 0
        self._end: Headers | None = None  # trailers to end the request with, once its body is out
        self._ending = False
        self._request_done = False
        self._head_request = False

    def peer(self) -> tuple[str, int]:
        peer = self.connection.link.transport.getPeer()
        return peer.host, peer.port

    def tls_facts(self) -> tuple[str, str, str, str] | None:
        return self.connection.link.tls_facts()

    # -- the request -------------------------------------------------------------------

    def send_request(self, exchange: ResponseSink, method: bytes, target: Target, headers: Headers,
                     framing: str, set_host: bool) -> None:
        self.exchange = exchange
        self._head_request = method == b"HEAD"
        connection = self.connection
        conn = connection.conn
        authority = target.authority
        if not set_host:
            authority = host_header(headers).encode("latin-1") or authority
        out = [(b":method", method), (b":scheme", target.scheme.encode("ascii")), (b":authority", authority),
               (b":path", target.path.encode("latin-1"))] + http2.outgoing(headers)
        ended = framing == "none"
        if not connection.accepting:
            self.exchange = None
            connection.forget(self)
            exchange.upstream_failed(502, "the origin went away (GOAWAY) before taking the request")
            return
        try:
            self.stream_id = conn.get_next_available_stream_id()
            conn.send_headers(self.stream_id, out, end_stream=ended)
        except h2.exceptions.ProtocolError as e:
            self.exchange = None
            connection.forget(self)
            exchange.upstream_failed(502, f"cannot open a stream to the origin: {e}")
            return
        connection.streams[self.stream_id] = self
        self._request_done = ended
        connection.flush()

    def send_data(self, data: bytes) -> None:
        if data:
            self._out.append(data)
            self.send_pending()

    def send_end(self, trailers: Headers) -> None:
        if self._request_done:
            return
        self._ending = True
        self._end = trailers
        self.send_pending()

    def register_producer(self, producer: Any) -> None:
        self._request_producer = producer

    def request_abandoned(self) -> None:
        """The response ended before the request body: tell the origin to stop expecting it."""
        if not self._request_done:
            self._request_done = True
            self._out = []
            self._reset(ErrorCodes.NO_ERROR)

    def abort(self) -> None:
        self.exchange = None
        self._reset(ErrorCodes.CANCEL)
        self.connection.forget(self)

    def _reset(self, code: int) -> None:
        conn = self.connection.conn
        if self.stream_id:
            try:
                conn.reset_stream(self.stream_id, code)
            except h2.exceptions.ProtocolError:  # closed already
                pass
            self.connection.flush()

    def send_pending(self) -> None:
        """Send what the origin's window allows of the request body, then its end."""
        if not self.stream_id or self._request_done:
            return
        conn = self.connection.conn
        sent = False
        try:
            while self._out:
                room = min(conn.local_flow_control_window(self.stream_id), conn.max_outbound_frame_size)
                if room <= 0:
                    break
                chunk = self._out[0]
                piece = chunk[self._offset:self._offset + room]
                conn.send_data(self.stream_id, piece)
                sent = True
                self._offset += len(piece)
                if self._offset >= len(chunk):
                    self._out.pop(0)
                    self._offset = 0
            if not self._out and self._ending:
                self._request_done = True
                if self._end:
                    conn.send_headers(self.stream_id, http2.outgoing(self._end), end_stream=True)
                else:
                    conn.end_stream(self.stream_id)
                sent = True
        except h2.exceptions.ProtocolError:  # the stream was reset or closed meanwhile
            self._out = []
            self._request_done = True
        if sent:
            self.connection.flush()
        self.pace()

    def pace(self) -> None:
        """Pause the client side's request body while this stream's data waits, resume it when it went."""
        producer = self._request_producer
        if producer is None:
            return
        waiting = bool(self._out) or self.connection._transport_paused
        if waiting and not self._request_paused:
            self._request_paused = True
            producer.pauseProducing()
        elif not waiting and self._request_paused:
            self._request_paused = False
            producer.resumeProducing()

    # -- the response ----------------------------------------------------------------

    def informational(self, headers: Headers) -> None:
        pseudo, regular = http2.split_request(list(headers))
        if self.exchange is not None:
            self.exchange.response_informational(int(pseudo.get(b":status", b"100")), b"", regular)

    def head(self, headers: Headers, ended: bool) -> None:
        pseudo, regular = http2.split_request(list(headers))
        status = int(pseudo.get(b":status", b"0"))
        if self.exchange is not None:
            framing = http2.response_framing(regular, status, self._head_request, ended)
            self.exchange.response_head(status, b"", regular, framing)

    def data(self, data: bytes, flow_controlled_length: int) -> None:
        if self.exchange is not None:
            self.exchange.response_body(data)
        self._unacked += flow_controlled_length
        if not self.paused or self.exchange is None:
            self.acknowledge()

    def acknowledge(self) -> None:
        if self._unacked and self.stream_id in self.connection.streams:
            unacked, self._unacked = self._unacked, 0
            try:
                self.connection.conn.acknowledge_received_data(unacked, self.stream_id)
            except h2.exceptions.ProtocolError:
                return
            self.connection.flush()

    def ended(self) -> None:
        exchange, self.exchange = self.exchange, None
        self.acknowledge()
        self.connection.forget(self)
        if exchange is not None:
            exchange.response_end(self.trailers)

    def failed(self, message: str) -> None:
        exchange, self.exchange = self.exchange, None
        self.connection.forget(self)
        if exchange is not None:
            exchange.upstream_failed(502, message)


def _code(code: Any) -> str:
    try:
        return ErrorCodes(code).name
    except ValueError:
        return str(code)
