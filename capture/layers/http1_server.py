"""The HTTP/1 server layer: parses a client's requests and runs their exchanges in order.

Requests are parsed by llhttp (``httptools``) within the bounds of
``[limits]``; each becomes an ``Exchange`` with an ``Http1ServerStream``
as its client side, which writes the response in HTTP/1.1 framing.  One
request runs at a time: a pipelined next one waits, its bytes unread.  A
``CONNECT`` hands the connection to the layer the stack builds for a
tunnel (``host.switch``), so this layer also serves requests inside a
tunnel, where ``host.tunnel`` names their target.  A WebSocket upgrade
request waits for its origin's answer with the client's later bytes held;
after a 101 the host is switched to the WebSocket layer the stack builds,
which gets those bytes first.

Hosted as described in ``capture.layers.host``.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import httptools
from twisted.logger import Logger
from twisted.python.failure import Failure

from capture.http import http1
from capture.http.exchange import Exchange
from capture.layers.host import LayerHost

Headers = list[tuple[bytes, bytes]]
MAX_EARLY_FRAMES = 1 << 20  # WebSocket bytes a client may send before the origin's 101


class Http1ServerStream:
    """The client side of one exchange on an HTTP/1 connection: writes its response."""

    def __init__(self, layer: Http1Server, method: bytes, version: bytes, keep_alive: bool) -> None:
        self.layer = layer
        self.transport = layer.host.transport
        self.method = method
        self.version = version
        self.keep_alive = keep_alive
        self._chunked = False

    def pause_request(self, reason: str) -> None:
        self.layer.host.pause(reason)

    def resume_request(self, reason: str) -> None:
        self.layer.host.resume(reason)

    def request_producer(self) -> Any:
        return self.layer.host.producer("upstream")

    def local_address(self) -> tuple[str, int]:
        here = self.transport.getHost()
        return here.host, here.port

    def send_informational(self, status: int, reason: bytes, headers: Headers) -> None:
        if self.version == b"1.1":
            self.transport.write(http1.response_head(b"1.1", status, reason, http1.end_to_end(headers)))

    def send_head(self, status: int, reason: bytes, headers: Headers, framing: str) -> None:
        out = framing
        if framing == "chunked" and self.version != b"1.1":
            out = "close"  # an HTTP/1.0 client cannot read chunked
        if out == "close":
            self.keep_alive = False
        self._chunked = chunked = out == "chunked"
        out_headers = http1.end_to_end(headers, frozenset({b"transfer-encoding"}) if chunked else frozenset())
        if chunked and not any(name.lower() == b"transfer-encoding" for name, _ in out_headers):
            out_headers.append((b"Transfer-Encoding", b"chunked"))
        if not self.keep_alive:
            out_headers.append((b"Connection", b"close"))
        elif self.version != b"1.1":
            out_headers.append((b"Connection", b"keep-alive"))
        # A proxy sends its own HTTP version (RFC 9110 6.2), so a 1.0 origin does not end keep-alive.
        self.transport.write(http1.response_head(b"1.1", status, reason, out_headers))

    def send_data(self, data: bytes) -> None:
        if self._chunked:
            if data:
                self.transport.writeSequence(http1.chunk(data))
        else:
            self.transport.write(data)

    def send_end(self, trailers: Headers) -> None:
        if self._chunked:
            self.transport.write(http1.last_chunk(trailers))
        if self.transport.producer is not None:
            self.transport.unregisterProducer()

    def register_producer(self, producer: Any) -> None:
        self.transport.registerProducer(producer, True)

    def send_whole(self, status: int, reason: bytes, headers: Headers, body: bytes, close: bool) -> None:
        self.transport.write(http1.whole_response(status, reason, headers, body, close, self.method == b"HEAD"))

    def upgrade(self, reason: bytes, headers: Headers, link: Any, relay: Any, on_messages: Any, on_end: Any,
                rest: bytes) -> None:
        """Relay the origin's 101 (with the handshake's ``headers``), then the connection is a WebSocket's."""
        self.transport.write(http1.response_head(b"1.1", 101, reason, headers))
        self.layer.upgraded(link, relay, on_messages, on_end, rest)

    def abort(self) -> None:
        self.transport.abortConnection()

    def finished(self, ok: bool) -> None:
        if self.transport.producer is not None:
            self.transport.unregisterProducer()
        self.layer.exchange_finished(self, ok and self.keep_alive)


class Http1Server:
    """Requests from one client connection (or one tunnel), parsed and answered in order."""

    log = Logger()

    def __init__(self, host: LayerHost) -> None:
        self.host = host
        services = host.services
        self.services = services
        self.limits = services.limits
        self._parser = httptools.HttpRequestParser(self)
        self._url: list[bytes] = []
        self._headers: Headers = []
        self._trailers: Headers = []
        self._parsing: Exchange | None = None
        self._exchanges: deque[Exchange] = deque()
        self._idle: Any = None
        self._connect: bytes | None = None
        self._feeding = False
        self._requested = False
        self._refusal: tuple[int, str] | None = None  # a 400 owed after the exchange under way
        self._early: bytearray | None = None  # after a WebSocket upgrade request: the client's bytes so far
        # Bounds on the request head being read (see [limits]).
        self._in_head = True
        self._head_bytes = 0
        self._head_tail = b""  # the last bytes of the head so far: its end may span two reads
        self._line_done = False
        self._url_bytes = 0
        self._header_count = 0
        self._head_timer: Any = None
        self._body_timer: Any = None
        self._start_idle_timer()

    @property
    def busy(self) -> bool:
        return bool(self._exchanges)

    # -- layer ----------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.host.closing:
            return
        if self._early is not None:  # frames sent before the origin's 101: held for the WebSocket layer
            self._early += data
            if len(self._early) > MAX_EARLY_FRAMES:
                self.host.abort()
            return
        if self._in_head:
            # llhttp buffers a header value until its line ends: bound the raw bytes too.
            limits = self.limits
            if not self._line_done:
                end = data.find(b"\n")
                self._line_done = end != -1 and self._head_bytes + end <= limits.max_request_line
                if not self._line_done and self._head_bytes + len(data) > limits.max_request_line:
                    self._refuse(414, "request line too long")
                    return
            # Only the head counts: a read may go on into the body (on_headers_complete
            # then checks the head's own size).
            seen = self._head_tail + data
            end = seen.find(b"\r\n\r\n")
            self._head_bytes += len(data) if end == -1 else end + 4 - len(self._head_tail)
            self._head_tail = seen[-3:]
            if self._head_bytes > limits.max_header_bytes + limits.max_request_line:
                self._refuse(431, "request head too large")
                return
        self._feeding = True
        tunnel_from = None
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            exchange = self._parsing
            if self._connect is not None:
                tunnel_from = e.args[0]
            elif exchange is not None and exchange.websocket and exchange.request_complete:
                self._early = bytearray(data[e.args[0]:])
                self._start_next()
            else:
                self._refuse(501, "this protocol upgrade is not supported (only WebSocket is)")
        except httptools.HttpParserCallbackError as e:
            cause = e.__cause__ or e.__context__
            if isinstance(cause, http1.BadRequest):
                self._refuse(cause.status, str(cause))
            else:
                self.log.failure("proxy request handling failed", Failure(cause))
                self._refuse(500, "internal error in the proxy")
        except httptools.HttpParserError as e:
            self._refuse(400, f"malformed request: {e}")
        else:
            self._start_next()
        finally:
            self._feeding = False
        if tunnel_from is not None:
            # Outside the handler: the next layer's own parser errors must not chain onto this one.
            self._begin_tunnel(data[tunnel_from:])

    def connection_lost(self, reason: Failure | None) -> None:
        for timer in (self._idle, self._head_timer, self._body_timer):
            if timer is not None and timer.active():
                timer.cancel()
        exchanges, self._exchanges = self._exchanges, deque()
        for exchange in exchanges:
            exchange.client_lost()

    def close_when_idle(self) -> None:
        """Shutting down: close now if nothing is under way, else after the exchange."""
        if not self._exchanges:
            self.host.close()

    def _start_next(self) -> None:
        """Start the first waiting exchange, once the bytes read so far are all parsed.

        Never from inside the parser: a request is only forwarded once the
        whole read it arrived in has been checked, so a bad chunk or trailer
        later in the same read stops it before it reaches the origin.
        """
        if self._exchanges and not self.host.closing:
            first = self._exchanges[0]
            if not first.started:
                first.start()

    def _begin_tunnel(self, rest: bytes) -> None:
        try:
            host, port = http1.parse_authority(self._connect)
        except http1.BadRequest as e:
            self._refuse(e.status, str(e))
            return
        if self.host.tunnel is not None or self._exchanges:
            self._refuse(400, "CONNECT is only accepted as the first request on a connection")
            return
        if self.services.is_self(host, port):
            self._refuse(403, "CONNECT would loop into the appliance itself")
            return
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        # One write, so the client is not left waiting on Nagle and delayed ACKs.
        self.host.transport.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        self.host.switch(self.services.layers.after_connect(self.host, host, port), rest)

    # -- llhttp callbacks ---------------------------------------------------------

    def on_message_begin(self) -> None:
        if not self._requested:
            self._requested = True
            self.host.request_begun()
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._url = []
        self._headers = []
        self._trailers = []
        self._parsing = None
        self._url_bytes = self._header_count = 0
        self._head_timer = self.services.reactor.callLater(self.limits.header_timeout, self._head_timed_out)

    def on_url(self, part: bytes) -> None:
        self._url_bytes += len(part)
        if self._url_bytes > self.limits.max_request_line:
            raise http1.BadRequest("request line too long", 414)
        self._url.append(part)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        limits = self.limits
        if self._header_count > limits.max_headers:
            raise http1.BadRequest(f"more than {limits.max_headers} header lines", 431)
        if self._parsing is not None:
            self._trailers.append((name, value))
        else:
            self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._head_timer is not None and self._head_timer.active():
            self._head_timer.cancel()
        size = self._url_bytes + sum(len(n) + len(v) + 4 for n, v in self._headers)
        if size > self.limits.max_header_bytes:
            raise http1.BadRequest("request header fields too large", 431)
        http1.check_connection_options(self._headers)
        parser = self._parser
        version = parser.get_http_version()
        if version not in ("1.0", "1.1"):
            raise http1.BadRequest(f"HTTP/{version} is not supported here; use HTTP/1.1", 505)
        method = parser.get_method()
        if method == b"CONNECT":
            self._connect = b"".join(self._url)
            return  # the parser raises HttpParserUpgrade next
        framing = http1.request_framing(self._headers, version)
        host = self.host
        stream = Http1ServerStream(self, method, version.encode("ascii"), parser.should_keep_alive())
        exchange = Exchange(self.services, stream, (host.client, host.client_port), host.tunnel,
                            method, b"".join(self._url), self._headers, framing, host.tls_facts)
        self._parsing = exchange
        self._exchanges.append(exchange)
        if exchange.websocket:
            stream.keep_alive = False  # after any answer but a 101 the parser cannot go on
        if framing != "none":
            self._body_timer = self.services.reactor.callLater(self.limits.body_timeout, self._body_timed_out)

    def on_body(self, data: bytes) -> None:
        if self._body_timer is not None:
            self._body_timer.reset(self.limits.body_timeout)
        self._parsing.request_body(data)

    def on_message_complete(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        self._head_tail = b""
        self._line_done = False
        if self._body_timer is not None:
            if self._body_timer.active():
                self._body_timer.cancel()
            self._body_timer = None
        exchange = self._parsing
        if exchange is None:
            return
        exchange.request_end(self._trailers)
        if not exchange.finished:
            self.host.pause("busy")  # one request at a time; a pipelined next one waits

    # -- exchanges ---------------------------------------------------------------

    def upgraded(self, link: Any, relay: Any, on_messages: Any, on_end: Any, rest: bytes) -> None:
        """The 101 is relayed: the host's bytes go to a WebSocket layer from now on."""
        early, self._early = bytes(self._early or b""), None
        layer = self.services.layers.websocket(self.host, link, relay, on_messages, on_end)
        self.host.switch(layer)
        layer.start(early, rest)
        self.host.resume("busy")

    def exchange_finished(self, stream: Http1ServerStream, keep_alive: bool) -> None:
        host = self.host
        if self._exchanges and self._exchanges[0].stream is stream:
            self._exchanges.popleft()
        if self._refusal is not None:  # a later request was bad: answer it now, in order
            status, message = self._refusal
            self._exchanges.clear()
            host.transport.write(http1.error_response(status, message))
            host.close()
            return
        if not keep_alive or host.closing or (self.services.draining and not self._exchanges):
            self._exchanges.clear()
            host.close()
            return
        if self._exchanges:
            if not self._feeding:
                self._start_next()
        else:
            self._start_idle_timer()
        host.resume("busy")

    def _refuse(self, status: int, message: str) -> None:
        """Answer a bad request with an error and close, after any earlier request's answer."""
        host = self.host
        host.closing = True  # read no further
        first = self._exchanges[0] if self._exchanges else None
        if first is not None and first is not self._parsing and first.request_complete and not first.finished:
            # An earlier, valid request is (or can be) answered first; the error follows it.
            while len(self._exchanges) > 1:
                self._exchanges.pop()
            self._refusal = (status, message)
            if not first.started:
                first.start()
            return
        if first is None or not first.response_started:
            host.transport.write(http1.error_response(status, message))
        host.close()

    def _head_timed_out(self) -> None:
        if self._in_head and not self.host.closing:
            self._refuse(408, "request head not received in time")

    def _body_timed_out(self) -> None:
        host = self.host
        if host.closing:
            return
        if host.paused:  # we stopped reading it ourselves: not the client's fault
            self._body_timer = self.services.reactor.callLater(self.limits.body_timeout, self._body_timed_out)
            return
        self._body_timer = None
        self.log.info("{client}: request body stalled; closing", client=host.client)
        host.abort()

    def _start_idle_timer(self) -> None:
        self._idle = self.services.reactor.callLater(self.services.settings.proxy.idle_timeout, self._idle_expired)

    def _idle_expired(self) -> None:
        if not self._exchanges:
            self.host.close()
