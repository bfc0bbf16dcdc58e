"""The HTTP/2 server layer: an intercepted client's streams, each one Exchange.

``h2`` is the sans-I/O core: ``data_received`` feeds it and each event
goes to a small method.  Each stream has an ``H2ServerStream`` as its
Exchange's client side.  Flow control is tied to the other side: request
DATA is acknowledged only while the stream's origin takes it (a paused
stream keeps its window closed, so the client really slows down), and
response DATA waits for the client's window, pausing the origin's
producer meanwhile; a full client socket pauses every stream's origin.

Limits protect the appliance: at most ``MAX_STREAMS`` concurrent streams
and ``[limits] max_header_bytes`` of header list (h2 enforces both, and
bounds CONTINUATION frames); more than ``MAX_RESETS`` client resets within
``RESET_WINDOW`` seconds (rapid reset, CVE-2023-44487) or any malformed
frame ends the connection with GOAWAY, and only that connection.  Server
push is never used.  Hosted as described in ``capture.layers.host``.
"""

from __future__ import annotations

from collections import deque
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
from capture.http.h2frames import FrameScanner, goaway_frame
from capture.http.exchange import Exchange
from capture.http.streams import Headers, Pool
from capture.layers.host import LayerHost

MAX_STREAMS = 100
MAX_FRAME = 16384  # SETTINGS_MAX_FRAME_SIZE we announce (the default): h2 would buffer a longer frame whole
PREFACE_SIZE = 24
MAX_RESETS = 100
RESET_WINDOW = 10.0
# Granted to the client on top of each stream's window, so one stalled stream cannot starve the rest.
CONNECTION_WINDOW = 4 * 1024 * 1024


@implementer(IPushProducer)
class _RequestPacer:
    """The stream's request side as the origin's transport sees it: paused, its DATA is not acknowledged."""

    def __init__(self, stream: H2ServerStream) -> None:
        self.stream = stream

    def pauseProducing(self) -> None:
        self.stream.pause_request("upstream")

    def resumeProducing(self) -> None:
        self.stream.resume_request("upstream")

    def stopProducing(self) -> None:
        """The origin is gone: the exchange decides what the client gets."""


class H2ServerStream:
    """The client side of one exchange on an HTTP/2 connection (``capture.http.streams.ClientStream``)."""

    version = b"2.0"

    def __init__(self, layer: H2Server, stream_id: int, method: bytes) -> None:
        self.layer = layer
        self.stream_id = stream_id
        self.method = method
        self.exchange: Exchange | None = None
        self.trailers: Headers = []
        self._pauses: set[str] = set()
        self._unacked = 0
        self._out: deque[bytes] = deque()
        self._offset = 0
        self._end: Headers | None = None
        self._ending = False
        self._closed = False
        self._producer: Any = None
        self._producer_paused = False

    # -- request side -----------------------------------------------------------------

    def received(self, data: bytes, flow_controlled_length: int) -> None:
        if self.exchange is not None:
            self.exchange.request_body(data)
        self._unacked += flow_controlled_length
        if not self._pauses or self.exchange is None or self.exchange.finished:
            self._acknowledge()

    def _acknowledge(self) -> None:
        if self._unacked:
            unacked, self._unacked = self._unacked, 0
            self.layer.acknowledge(self.stream_id, unacked)

    def pause_request(self, reason: str) -> None:
        self._pauses.add(reason)

    def resume_request(self, reason: str) -> None:
        self._pauses.discard(reason)
        if not self._pauses:
            self._acknowledge()

    def request_producer(self) -> Any:
        return _RequestPacer(self)

    def local_address(self) -> tuple[str, int]:
        here = self.layer.host.transport.getHost()
        return here.host, here.port

    # -- response side ----------------------------------------------------------------

    def send_informational(self, status: int, reason: bytes, headers: Headers) -> None:
        self.layer.send_headers(self, [(b":status", b"%d" % status)] + http2.outgoing(headers), False)

    def send_head(self, status: int, reason: bytes, headers: Headers, framing: str) -> None:
        """A response without a body ends with its HEADERS frame (gRPC's trailers-only answers need that)."""
        ended = framing == "none"
        self.layer.send_headers(self, [(b":status", b"%d" % status)] + http2.outgoing(headers), ended)
        if ended:
            self._closed = True

    def send_data(self, data: bytes) -> None:
        if data and not self._closed:
            self._out.append(data)
            self.layer.send_pending(self)

    def send_end(self, trailers: Headers) -> None:
        if not self._closed:
            self._ending = True
            self._end = trailers
            self.layer.send_pending(self)

    def register_producer(self, producer: Any) -> None:
        self._producer = producer
        self.pace()

    def send_whole(self, status: int, reason: bytes, headers: Headers, body: bytes, close: bool) -> None:
        self.send_head(status, reason, headers, "length")
        if self.method != b"HEAD":
            self.send_data(body)
        self.send_end([])

    def abort(self) -> None:
        self._closed = True
        self._out.clear()
        self.layer.reset(self, ErrorCodes.INTERNAL_ERROR)

    def finished(self, ok: bool) -> None:
        self._pauses.clear()
        self._acknowledge()
        self.layer.stream_finished(self)

    # -- what the layer drives --------------------------------------------------------

    def take(self, room: int) -> bytes | None:
        """Up to ``room`` bytes of the response body waiting to go, or None when nothing waits."""
        if not self._out:
            return None
        chunk = self._out[0]
        piece = chunk[self._offset:self._offset + room] if self._offset or len(chunk) > room else chunk
        self._offset += len(piece)
        if self._offset >= len(chunk):
            self._out.popleft()
            self._offset = 0
        return piece

    def end_due(self) -> Headers | None:
        """The trailers to end with, once the body is out (an empty list: end without trailers)."""
        if self._ending and not self._out and not self._closed:
            self._closed = True
            return self._end or []
        return None

    def pace(self) -> None:
        """Pause the origin while this stream's response waits for the client, resume it once it went."""
        producer = self._producer
        if producer is None:
            return
        waiting = bool(self._out) or self.layer.transport_paused
        if waiting and not self._producer_paused:
            self._producer_paused = True
            producer.pauseProducing()
        elif not waiting and self._producer_paused:
            self._producer_paused = False
            producer.resumeProducing()


@implementer(IPushProducer)
class _ClientPacer:
    """Told by the client's transport when its buffer is full."""

    def __init__(self, layer: H2Server) -> None:
        self.layer = layer

    def pauseProducing(self) -> None:
        self.layer.set_transport_paused(True)

    def resumeProducing(self) -> None:
        self.layer.set_transport_paused(False)

    def stopProducing(self) -> None:
        """The client is gone: connectionLost ends the streams."""


class H2Server:
    """An intercepted client speaking HTTP/2: its streams, multiplexed, one Exchange each."""

    log = Logger()

    def __init__(self, host: LayerHost, origins: Pool) -> None:
        self.host = host
        self.services = services = host.services
        self.origins = origins
        self.streams: dict[int, H2ServerStream] = {}
        self.transport_paused = False
        self._resets: deque[float] = deque()
        self._going_away = False
        self._requested = False
        self._frames = FrameScanner(MAX_FRAME, skip=PREFACE_SIZE)
        config = h2.config.H2Configuration(client_side=False, header_encoding=None, **http2.OUTBOUND)
        self.conn = conn = h2.connection.H2Connection(config=config)
        hpack_speed.install()
        conn.encoder = hpack_speed.fast_encoder(conn.encoder)
        conn.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_STREAMS,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: services.limits.max_header_bytes,
            h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL: 0,
        })
        conn.initiate_connection()
        conn.increment_flow_control_window(CONNECTION_WINDOW)
        host.transport.registerProducer(_ClientPacer(self), True)
        self._idle: Any = None
        self._start_idle_timer()
        self._write()

    def _write(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.host.transport.write(data)

    # -- layer ----------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.host.closing and self._going_away and not self.streams:
            return
        data, goaways, frame_error = self._frames.feed(data)
        if frame_error:
            self._end_connection(ErrorCodes.FRAME_SIZE_ERROR, f"{frame_error} from the client")
            return
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            self._end_connection(_error_code(e), f"malformed HTTP/2 from the client: {e}")
            return
        for event in events:
            self._dispatch(event)
        if goaways:  # after the streams opened before it
            self._client_going_away()
        self._write()

    def _dispatch(self, event: Any) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self._request(event)
        elif isinstance(event, h2.events.DataReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.received(event.data, event.flow_controlled_length)
            else:
                self.acknowledge(event.stream_id, event.flow_controlled_length)
        elif isinstance(event, h2.events.TrailersReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.trailers = list(event.headers)
        elif isinstance(event, h2.events.StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None and stream.exchange is not None:
                stream.exchange.request_end(stream.trailers)
        elif isinstance(event, h2.events.StreamReset):
            self._client_reset(event.stream_id)
        elif isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
            for stream in list(self.streams.values()):
                self.send_pending(stream)

    def connection_lost(self, reason: Failure | None) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            if stream.exchange is not None:
                stream.exchange.client_lost()

    def close_when_idle(self) -> None:
        """Shutting down: no new streams (GOAWAY); close once the open ones are done.

        The GOAWAY is written beside h2, which would otherwise stop serving the open streams.
        """
        if not self._going_away:
            self._going_away = True
            self._write()
            self.host.transport.write(goaway_frame(self.conn.highest_inbound_stream_id, ErrorCodes.NO_ERROR))
        self._close_if_done()

    def _client_going_away(self) -> None:
        """The client's GOAWAY: it opens no more streams; those open finish (RFC 9113 6.8), then the connection closes."""
        self._going_away = True
        self._close_if_done()

    # -- streams ------------------------------------------------------------------

    def _request(self, event: h2.events.RequestReceived) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        pseudo, regular = http2.split_request(list(event.headers))
        method = pseudo.get(b":method", b"")
        stream = H2ServerStream(self, event.stream_id, method)
        self.streams[event.stream_id] = stream
        host = self.host
        if not self._requested:
            self._requested = True
            host.request_begun()
        if self._going_away:
            self.reset(stream, ErrorCodes.REFUSED_STREAM)
            self.streams.pop(event.stream_id, None)
            return
        if method == b"CONNECT":
            stream.exchange = None
            stream.send_whole(501, b"", [(b"content-type", b"text/plain; charset=utf-8")],
                              b"CONNECT over HTTP/2 is not supported here\n", False)
            self.streams.pop(event.stream_id, None)
            return
        ended = event.stream_ended is not None
        framing = "none" if ended else ("length" if any(n == b"content-length" for n, _ in regular) else "chunked")
        path = pseudo.get(b":path", b"/")
        exchange = Exchange(self.services, stream, (host.client, host.client_port), host.tunnel, method, path,
                            regular, framing, host.tls_facts, event.stream_id, self.origins)
        stream.exchange = exchange
        exchange.start()
        # A request that ended with its headers gets its StreamEnded event next, in the same batch.

    def stream_finished(self, stream: H2ServerStream) -> None:
        """The exchange is over; the stream stays while its response still waits for the client's window."""
        stream.exchange = None
        if stream._closed:
            self._forget(stream)

    def _forget(self, stream: H2ServerStream) -> None:
        self.streams.pop(stream.stream_id, None)
        if not self.streams:
            self._start_idle_timer()
        self._close_if_done()

    def _client_reset(self, stream_id: int) -> None:
        now = self.services.reactor.seconds()
        resets = self._resets
        resets.append(now)
        while resets and resets[0] < now - RESET_WINDOW:
            resets.popleft()
        stream = self.streams.pop(stream_id, None)
        if stream is not None:
            stream._closed = True
            if stream.exchange is not None:
                exchange, stream.exchange = stream.exchange, None
                exchange.client_lost()
        if len(resets) > MAX_RESETS:
            self._end_connection(ErrorCodes.ENHANCE_YOUR_CALM,
                                 f"more than {MAX_RESETS} stream resets in {RESET_WINDOW:g} s (rapid reset)")

    def acknowledge(self, stream_id: int, size: int) -> None:
        try:
            self.conn.acknowledge_received_data(size, stream_id)
        except h2.exceptions.ProtocolError:
            return
        self._write()

    def send_headers(self, stream: H2ServerStream, headers: Headers, end: bool) -> None:
        if stream._closed:
            return
        try:
            self.conn.send_headers(stream.stream_id, headers, end_stream=end)
        except h2.exceptions.ProtocolError:  # the client reset it meanwhile
            stream._closed = True
            return
        self._write()

    def send_pending(self, stream: H2ServerStream) -> None:
        """Send what the client's window allows of the stream's response, then its end."""
        conn = self.conn
        sid = stream.stream_id
        try:
            while not stream._closed:
                room = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
                if room <= 0:
                    break
                piece = stream.take(room)
                if piece is None:
                    break
                conn.send_data(sid, piece)
            trailers = stream.end_due()
            if trailers:
                conn.send_headers(sid, http2.outgoing(trailers), end_stream=True)
            elif trailers is not None:
                conn.end_stream(sid)
        except h2.exceptions.ProtocolError:  # the stream is gone on the client's side
            stream._closed = True
            stream._out.clear()
        self._write()
        stream.pace()
        if stream._closed and stream.exchange is None:
            self._forget(stream)

    def reset(self, stream: H2ServerStream, code: int) -> None:
        stream._closed = True
        try:
            self.conn.reset_stream(stream.stream_id, code)
        except h2.exceptions.ProtocolError:
            return
        self._write()

    def set_transport_paused(self, paused: bool) -> None:
        self.transport_paused = paused
        for stream in list(self.streams.values()):
            stream.pace()

    # -- endings ------------------------------------------------------------------

    def _end_connection(self, code: int, message: str) -> None:
        """GOAWAY with ``code``, then close: only this connection ends."""
        self.log.info("{client}: {message}", client=self.host.client, message=message)
        self._going_away = True
        try:
            self.conn.close_connection(code, additional_data=message.encode("utf-8")[:256])
        except h2.exceptions.ProtocolError:
            pass
        self._write()
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            if stream.exchange is not None:
                exchange, stream.exchange = stream.exchange, None
                exchange.client_lost()
        self.host.close()

    def _close_if_done(self) -> None:
        if self._going_away and not self.streams and not self.host.closing:
            self.host.close()

    def _start_idle_timer(self) -> None:
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = self.services.reactor.callLater(self.services.settings.proxy.idle_timeout, self._idle_expired)

    def _idle_expired(self) -> None:
        if not self.streams and not self.host.closing:
            self.close_when_idle()


def _error_code(error: h2.exceptions.ProtocolError) -> int:
    return getattr(error, "error_code", None) or ErrorCodes.PROTOCOL_ERROR
