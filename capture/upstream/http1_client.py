"""HTTP/1.1 towards an origin: one request at a time on one origin link.

The client writes the request head and body the Exchange hands it (hop-by-
hop headers dropped, Host set, absolute form towards a chained proxy) and
parses the response with llhttp, passing the events to the Exchange through
its ``ResponseSink`` methods.  Once the final response is complete,
whatever else the origin sent in the same read is ignored (and the
connection not reused): it would otherwise reach the client as part of, or
after, a finished answer.

A WebSocket upgrade request keeps its Upgrade and Connection fields (with
the proxy's own extension offer, see :mod:`capture.http.websocket`); when
the exchange accepts the origin's 101, the link is handed to it
(``ResponseSink.upgraded``) with the bytes that followed the 101, and this
client is done with it.
"""

from __future__ import annotations

from typing import Any

import httptools
from twisted.python.failure import Failure

from capture.http import http1, websocket
from capture.http.streams import ResponseSink
from capture.upstream.connector import OriginLink

PoolKey = tuple[Any, ...]  # scheme, host, port, TLS server name, ALPN


class _Refused(http1.BadResponse):
    """A response that is the chained proxy's refusal, said as it is."""


class Http1Client:
    """HTTP/1.1 over one origin link; ``exchange`` is the one it carries now, if any."""

    alpn = b"http/1.1"

    def __init__(self, link: OriginLink, key: PoolKey, limits: Any) -> None:
        self.link = link
        self.key = key
        self.limits = limits
        link.handler = self
        self.exchange: ResponseSink | None = None
        self.reusable = True
        self.on_lost: Any = None
        self._parser: Any = None
        self._reason: list[bytes] = []
        self._headers: list[tuple[bytes, bytes]] = []
        self._trailers: list[tuple[bytes, bytes]] = []
        self._framing = "none"
        self._chunked = False
        self._head_seen = False
        self._complete = False
        self._head_request = False
        self._keep_alive = False
        self._first_bytes: bytes | None = None
        self._head_bytes = 0
        self._header_count = 0

    @property
    def transport(self) -> Any:
        return self.link.transport

    @property
    def producer(self) -> Any:
        """What the client side pauses while it cannot take more of the response."""
        return self.link.transport

    def peer(self) -> tuple[str, int]:
        peer = self.link.transport.getPeer()
        return peer.host, peer.port

    def tls_facts(self) -> tuple[str, str, str, str] | None:
        return self.link.tls_facts()

    def abort(self) -> None:
        self.reusable = False
        self.exchange = None
        self.link.transport.abortConnection()

    # -- the request ------------------------------------------------------------

    def send_request(self, exchange: ResponseSink, method: bytes, target: http1.Target,
                     headers: list[tuple[bytes, bytes]], framing: str, set_host: bool) -> None:
        """Bind ``exchange`` and write its request head.

        ``framing`` is the request body's: 'none', 'length' (Content-Length
        is among the headers) or 'chunked' (length unknown: sent chunked).
        ``set_host`` replaces Host with the target's authority.
        """
        self.exchange = exchange
        self._parser = httptools.HttpResponseParser(self)
        self._head_request = method == b"HEAD"
        self._head_seen = False
        self._complete = False
        self._trailers = []
        self._first_bytes = b""  # until the status line shows it is HTTP/1.x
        self._head_bytes = 0
        self._header_count = 0
        self._chunked = chunked = framing == "chunked"
        out = http1.end_to_end(headers, frozenset({b"transfer-encoding"}) if chunked else frozenset())
        if framing == "none" and websocket.upgrade_requested(method, headers):
            out = websocket.origin_request_headers(out)
        if chunked and not any(name.lower() == b"transfer-encoding" for name, _ in out):
            out.append((b"Transfer-Encoding", b"chunked"))
        if set_host or not http1.host_header(out):
            out = http1.with_host(out, target.authority)
        path = target.path.encode("latin-1")
        if self.link.absolute_form:
            path = b"http://" + target.authority + path
            if self.link.via.authorization is not None:
                out.append((b"Proxy-Authorization", self.link.via.authorization))
        self.link.transport.write(http1.request_head(method, path, out))

    def send_data(self, data: bytes) -> None:
        if self._chunked:
            if data:
                self.link.transport.writeSequence(http1.chunk(data))
        else:
            self.link.transport.write(data)

    def send_end(self, trailers: list[tuple[bytes, bytes]]) -> None:
        transport = self.link.transport
        if self._chunked:
            transport.write(http1.last_chunk(trailers))
        if transport.producer is not None:
            transport.unregisterProducer()

    def register_producer(self, producer: Any) -> None:
        """Pace the request body: ``producer`` pauses while the origin's socket is full."""
        self.link.transport.registerProducer(producer, True)

    def request_abandoned(self) -> None:
        """The response ended before the request body: the rest goes nowhere, and the link is not reused."""
        self.reusable = False
        if self.link.transport.producer is not None:
            self.link.transport.unregisterProducer()

    # -- llhttp callbacks -----------------------------------------------------

    def on_message_begin(self) -> None:
        if self._complete:
            self.reusable = False
            return
        self._reason = []
        self._headers = []
        self._head_seen = False
        self._header_count = 0

    def on_status(self, reason: bytes) -> None:
        if not self._complete:
            self._reason.append(reason)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._complete:
            return
        self._header_count += 1
        if self._header_count > self.limits.max_headers:
            raise http1.BadResponse(f"more than {self.limits.max_headers} header lines in the response")
        if self._head_seen:
            self._trailers.append((name, value))
        else:
            self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self._complete:
            return
        self._head_seen = True
        status = self._parser.get_status_code()
        headers = self._headers
        if sum(len(n) + len(v) + 4 for n, v in headers) > self.limits.max_header_bytes:
            raise http1.BadResponse("response head too large")
        if http1.forbidden_connection_options(headers):
            raise http1.BadResponse("the response's Connection header names its own framing headers")
        reason = b"".join(self._reason)
        if status < 200:
            self.exchange.response_informational(status, reason, headers)
            return
        if status == 407 and self.link.absolute_form:
            # The chained proxy wants credentials we do not have: that is its failure, not the client's.
            raise _Refused(f"upstream proxy {self.link.via.name} refused the request: 407 {reason.decode('latin-1')}")
        self._framing = framing = http1.response_framing(headers, status, self._head_request)
        self.exchange.response_head(status, reason, headers, framing)
        if self._head_request:
            self._complete = True
            self._keep_alive = self._parser.should_keep_alive()

    def on_body(self, data: bytes) -> None:
        if self._complete:
            self.reusable = False  # body bytes after a HEAD response: don't trust this peer
            return
        self.exchange.response_body(data)

    def on_message_complete(self) -> None:
        if self._complete:
            self.reusable = False
        elif self._parser.get_status_code() >= 200:
            self._complete = True
            # llhttp only knows this inside the callback; it resets right after.
            self._keep_alive = self._parser.should_keep_alive()

    # -- link events ------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None:
            self.reusable = False  # bytes nobody asked for
            self.link.transport.loseConnection()
            return
        if self._first_bytes is not None:
            # llhttp also takes RTSP/ICE status lines; a proxy must only relay HTTP/1.x.
            self._first_bytes += data[:8]
            if len(self._first_bytes) >= 7:
                if not self._first_bytes.startswith(b"HTTP/1."):
                    self._fail(exchange, "the origin did not answer with HTTP/1.x")
                    return
                self._first_bytes = None
        if not self._head_seen:
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            if self.exchange is None:  # the exchange gave up on this link inside the parser
                return
            if exchange.upgrade_accepted:  # a WebSocket's 101: the rest of the link is its frames
                self.reusable = False
                self.exchange = None
                self.link.handler = None
                exchange.upgraded(self.link, data[e.args[0]:])
                return
            if self._complete:
                self.reusable = False
            else:
                self._fail(exchange, _response_problem(e))
                return
        except httptools.HttpParserError as e:
            if self._complete:  # junk after a finished answer: keep the answer, drop the connection
                self.reusable = False
            else:
                self._fail(exchange, _response_problem(e))
                return
        if not self._head_seen and self._head_bytes > self.limits.max_header_bytes:
            # llhttp holds an unfinished head in memory: bound it as we do requests'.
            self._fail(exchange, "response head too large")
            return
        if self._complete:
            # Finish outside the parser, so the next exchange may start on this connection.
            self.reusable = self.reusable and self._keep_alive
            self.exchange = None
            exchange.response_end(self._trailers)

    def _fail(self, exchange: ResponseSink, message: str) -> None:
        self.reusable = False
        exchange.upstream_failed(502, message)

    def connection_lost(self, reason: Failure | None) -> None:
        self.reusable = False
        exchange, self.exchange = self.exchange, None
        if self.on_lost is not None:
            self.on_lost(self)
        if exchange is None:
            return
        if self._head_seen and self._framing == "close":
            exchange.response_end(self._trailers)  # the body ends with the connection
        elif self._head_seen:
            exchange.upstream_failed(502, "origin closed the connection in the middle of the response")
        else:
            exchange.upstream_failed(502, "origin closed the connection without a response")


def _response_problem(e: Exception) -> str:
    if isinstance(e, httptools.HttpParserUpgrade):
        return "the origin switched protocols, which was not asked for"
    cause = e.__cause__ or e.__context__
    if isinstance(cause, _Refused):
        return str(cause)
    if isinstance(e, httptools.HttpParserCallbackError) and not isinstance(cause, http1.BadResponse):
        raise e  # a bug of ours, not the origin's: let it be logged
    return f"bad response from the origin: {cause or e}"
