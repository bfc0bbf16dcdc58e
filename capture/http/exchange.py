"""One request and its response, whatever HTTP version either side speaks.

A server layer (HTTP/1 or HTTP/2) builds an Exchange per request and feeds
it request events (``request_body``, ``request_end``); the Exchange finds
the target, takes an origin stream from the pool, relays the request to it
and the response events it gets back (``ResponseSink``) to the client
stream, and has the one recorder build the flow when it ends.  Nothing
here writes a byte of any wire format: the streams do.

Bodies stream in both directions: each side is registered as the producer
of the other, so a slow reader pauses the fast writer and a 1 GiB transfer
passes with flat memory.  Capture keeps at most ``max_capture_body`` bytes
per body and never changes what is forwarded.

A WebSocket upgrade (HTTP/1.1) goes to the origin like any request; an
origin that answers 101 completes the handshake here (each side's
extensions, see :mod:`capture.http.websocket`), and the client stream
relays the 101 and hands the connection to a WebSocket layer.  The flow is
opened with the recorder then, its messages recorded as they pass, and it
is closed when both connections are gone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.python.failure import Failure

from capture import pages
from capture.http import grpc, http1, http2, websocket
from capture.http.streams import ClientStream, Headers, OriginStream, Pool
from capture.upstream.errors import describe_connect_error


@dataclass(frozen=True, slots=True)
class TunnelTarget:
    """Where requests inside a CONNECT tunnel go: the CONNECT host and port, and the client's SNI name."""

    scheme: str
    host: str
    port: int
    server_name: str | None = None


class Exchange:
    """One request and its response, from the client's first byte to the last.

    ``services`` is what every connection shares (the proxy factory):
    ``reactor``, ``settings``, ``pool``, ``recorder``, ``ca``, ``proxy_port``
    and ``is_self``.  ``tunnel`` names the target of origin-form requests
    inside a CONNECT tunnel.
    """

    def __init__(
        self,
        services: Any,
        stream: ClientStream,
        client: tuple[str, int],
        tunnel: TunnelTarget | None,
        method: bytes,
        target: bytes,
        headers: Headers,
        framing: str,
        client_tls: tuple[str, str, str, str] | None = None,
        stream_id: int = 0,
        origins: Pool | None = None,
    ) -> None:
        self.services = services
        self.origins = origins if origins is not None else services.pool
        self.client_tls = client_tls
        self.stream_id = stream_id
        self._server_tls: tuple[str, str, str, str] | None = None
        self.stream = stream
        self.client, self.client_port = client
        self.tunnel = tunnel
        self.method = method
        self.raw_target = target
        self.headers = headers
        self.framing = framing
        self.start_time = services.reactor.seconds()
        self.started = False
        self.request_complete = False
        self.response_started = False
        self.finished = False
        self.upstream: OriginStream | None = None
        self.target: http1.Target | None = None
        self._absolute = False  # absolute-form target: Host comes from it
        self._server_ip = ""
        self._local = False  # answered by the proxy itself, once the request is in
        self._pending: list[bytes | None] | None = []  # request body waiting for the upstream
        self._request_trailers: Headers = []
        self._request_size = 0
        self._request_done: float | None = None
        self._status = 0
        self._reason = b""
        self._response_headers: Headers = []
        self._response_trailers: Headers = []
        self._response_framing = "none"
        self._response_size = 0
        self._response_start: float | None = None
        recorder = services.recorder
        self._candidates = recorder.candidates(self.client)
        self._limit = services.settings.proxy.max_capture_body
        # Captured body chunks, up to the limit; joined once, when the flow is built.
        self._request_body: list[bytes] | None = [] if self._candidates else None
        self._response_body: list[bytes] | None = None
        # gRPC (HTTP/2 only): which way each message went, and when, for the flow to list them as they passed.
        self._grpc = (grpc.MessageOrder() if self._candidates and stream.version == b"2.0"
                      and grpc.is_grpc_request(headers) else None)
        # WebSocket: asked for, accepted by the origin's 101 (its head for the client, each side's
        # extensions), then relayed by a WebSocket layer; ``_live`` is the open flow with the recorder.
        self.websocket = framing == "none" and websocket.upgrade_requested(method, headers)
        self.upgrade_accepted = False
        self._upgrade: tuple[Headers, websocket.Sides] | None = None
        self._upgraded = False
        self._live: Any = None

    # -- request side, fed by the client's layer ------------------------------------

    def start(self) -> None:
        """Our turn on the client connection: find the target and connect."""
        self.started = True
        services = self.services
        tunnel = self.tunnel
        try:
            if tunnel is not None and self.raw_target.startswith(b"/"):
                self.target = http1.Target(tunnel.scheme, tunnel.host, tunnel.port, self.raw_target.decode("latin-1"))
            elif self.raw_target.startswith(b"/") or self.raw_target == b"*":
                self._answer_locally()
                return
            else:
                self.target = http1.parse_target(self.raw_target)
                self._absolute = True
        except http1.BadRequest as e:
            self._fail(e.status, str(e))
            return
        target = self.target
        if tunnel is None and target.scheme != "http":
            self._fail(400, "https:// targets must be tunnelled with CONNECT")
            return
        if target.host == services.settings.proxy.magic_host:
            self._answer_locally()
            return
        if services.is_self(target.host, target.port):
            self._fail(403, "request would loop into the appliance itself")
            return
        self.stream.pause_request("connect")
        server_name = tunnel.server_name if tunnel is not None else None
        d = self.origins.acquire(target.scheme, target.host, target.port, server_name)
        d.addCallbacks(self._connected, self._connect_failed)

    def request_body(self, data: bytes) -> None:
        size = self._request_size
        self._request_size = size + len(data)
        if self._request_body is not None and size < self._limit:
            self._request_body.append(data[: self._limit - size])
        if self._grpc is not None:
            self._grpc.feed(True, data, self.services.reactor.seconds())
        if self._pending is not None:
            self._pending.append(data)
        elif self.upstream is not None:
            self.upstream.send_data(data)

    def request_end(self, trailers: Headers) -> None:
        self.request_complete = True
        self._request_trailers = trailers
        if self._local:
            self._answer_locally()
        elif self._pending is not None:
            self._pending.append(None)
        elif self.upstream is not None:
            self._end_request_body()

    # -- upstream connection ----------------------------------------------------------

    def _connected(self, upstream: OriginStream) -> None:
        self.stream.resume_request("connect")
        if self.finished:  # the client went away while we connected
            upstream.abort()
            return
        host, port = upstream.peer()
        if self.services.is_self(host, port):
            upstream.abort()
            self._fail(403, "request would loop into the appliance itself")
            return
        headers = self.headers
        if self.stream.version == b"2.0" and upstream.alpn != b"h2":
            # Translated to HTTP/1.1: refused rather than relayed without what it depends on.
            why = http2.untranslatable(headers)
            if why is not None:
                self.origins.release(upstream)
                self._fail(502, why)
                return
            headers = http2.join_cookies(headers)
        self.upstream = upstream
        self._server_ip = host
        self._server_tls = upstream.tls_facts()
        upstream.send_request(self, self.method, self.target, headers, self.framing, self._absolute)
        if not self.request_complete:
            upstream.register_producer(self.stream.request_producer())
        pending, self._pending = self._pending, None
        for item in pending:
            if item is None:
                self._end_request_body()
            else:
                upstream.send_data(item)

    def _connect_failed(self, failure: Failure) -> None:
        self.stream.resume_request("connect")
        if not self.finished:
            status, message = describe_connect_error(failure, self.target.host, self.target.port)
            self._fail(status, message)

    def _end_request_body(self) -> None:
        self.upstream.send_end(self._request_trailers)
        self.stream.resume_request("upstream")
        self._request_done = self.services.reactor.seconds()

    # -- response side, fed by the origin stream (ResponseSink) -------------------------

    def response_informational(self, status: int, reason: bytes, headers: Headers) -> None:
        if status == 101 and self.websocket:
            try:
                self._upgrade = websocket.complete_handshake(self.headers, http1.end_to_end(headers))
            except websocket.HandshakeError as e:
                self.upstream_failed(502, str(e))
                return
            self.upgrade_accepted = True
            self.response_started = True
            self._response_start = self.services.reactor.seconds()
            self._status, self._reason, self._response_headers = status, reason, headers
        elif status != 101:
            self.stream.send_informational(status, reason, headers)

    def upgraded(self, link: Any, rest: bytes) -> None:
        """The origin accepted the WebSocket upgrade: open the flow, relay the 101, hand both connections over."""
        services = self.services
        head, sides = self._upgrade
        self.upstream = None
        self._upgraded = True
        if self._candidates:
            self._live = services.recorder.open_websocket(self._candidates, self._websocket_flow("", None))
        live = self._live
        limit = self._limit if live is not None else 0
        relay = websocket.Relay(sides, limit, services.limits.max_websocket_message, services.reactor.seconds,
                                omit_server=live is not None and not live.responses)
        self.stream.upgrade(self._reason, head, link, relay, self._websocket_messages, self._websocket_ended, rest)

    def _websocket_messages(self, messages: list[Any]) -> None:
        if self._live is not None:
            self.services.recorder.websocket_messages(self._live, self.client, messages)

    def _websocket_ended(self, close: Any) -> None:
        if self._live is not None:
            error = close.reason if close.closed_by == "proxy" else ""
            flow = self._websocket_flow(error, self.services.reactor.seconds())
            self.services.recorder.close_websocket(self._live, flow, close)
        self._done(False)

    def _websocket_flow(self, error: str, end: float | None) -> tuple[Any, ...]:
        target = self.target
        return self.services.recorder.websocket(
            self.client, self.client_port, target.scheme, target.host, target.port, target.path,
            self.stream.version.decode("ascii"), self.headers, self._reason.decode("latin-1"),
            self._response_headers, (self.start_time, self._request_done, self._response_start, end),
            error, self._server_ip, self.client_tls, self._server_tls,
        )

    def response_head(self, status: int, reason: bytes, headers: Headers, framing: str) -> None:
        self.response_started = True
        self._response_start = self.services.reactor.seconds()
        self._status, self._reason, self._response_headers = status, reason, headers
        self._response_framing = framing
        self.stream.send_head(status, reason, headers, framing)
        for rule in self._candidates:
            if rule.capture_responses:
                self._response_body = []
                break
        if framing != "none":
            self.stream.register_producer(self.upstream.producer)

    def response_body(self, data: bytes) -> None:
        size = self._response_size
        self._response_size = size + len(data)
        if self._response_body is not None and size < self._limit:
            self._response_body.append(data[: self._limit - size])
        if self._grpc is not None:
            self._grpc.feed(False, data, self.services.reactor.seconds())
        self.stream.send_data(data)

    def response_end(self, trailers: Headers) -> None:
        self._response_trailers = trailers
        self.stream.send_end(trailers)
        upstream, self.upstream = self.upstream, None
        if not self.request_complete:
            # The origin answered before taking the whole body: the rest goes nowhere, and the
            # client's connection must not end with the origin's (it closes after the answer).
            upstream.request_abandoned()
        self.origins.release(upstream)
        self._finish("")

    def upstream_failed(self, status: int, message: str) -> None:
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            upstream.abort()
        if self.response_started:
            self._abort_client(message)
        else:
            self._fail(status, message)

    def client_lost(self) -> None:
        """The client went away: drop the upstream connection and record why."""
        if self.finished or self._upgraded:  # a WebSocket layer sees its own ends
            return
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            upstream.abort()
        if self.target is not None or self.response_started:
            self._record("client closed the connection before the exchange completed")
        self.finished = True

    # -- endings ---------------------------------------------------------------------

    def _answer_locally(self) -> None:
        """Requests for the proxy itself: the magic host's pages, or a hint.

        Answered once the whole request is read, so the connection stays usable.
        """
        if not self.request_complete:
            self._local = True
            return
        self._local = False
        services = self.services
        if self.target is not None:
            host = self.target.host
        elif self.tunnel is not None:
            host = self.tunnel.host
        else:
            host = http1.host_header(self.headers).rsplit(":", 1)[0]
        magic = services.settings.proxy.magic_host
        if host == magic and services.ca is not None:
            here_host, here_port = self.stream.local_address()
            path = self.target.path if self.target is not None else self.raw_target.decode("latin-1")
            page = pages.onboarding(path, services.ca, here_host, services.proxy_port or here_port, magic)
            response = pages.page_response(page)
        else:
            response = http1.error_parts(400, "this is an HTTP proxy: send absolute-form requests (curl -x)")
        self.response_started = True
        self.stream.send_whole(*response, close=False)
        self._done(True)

    def _fail(self, status: int, message: str) -> None:
        """Answer the client with an error of our own and close the connection."""
        self.response_started = True
        self.stream.send_whole(*http1.error_parts(status, message), close=True)
        self._status = status
        self._record(message, local_status=True)
        self._done(False)

    def _abort_client(self, message: str) -> None:
        self._record(message)
        self.stream.abort()
        self._done(False)

    def _finish(self, error: str) -> None:
        self._record(error)
        self._done(self.request_complete)

    def _done(self, ok: bool) -> None:
        self.finished = True
        self.stream.finished(ok)

    def _record(self, error: str, local_status: bool = False) -> None:
        """Hand what was gathered to the recorder, if any session may want it."""
        candidates = self._candidates
        if not candidates or self.target is None:
            return
        target = self.target
        response = None
        if self.response_started and not local_status:
            response = (self._response_headers, self._response_trailers, self._response_body, self._response_size)
        services = self.services
        services.recorder.http(
            candidates, self.client, self.client_port, target.scheme, target.host, target.port,
            self.method.decode("latin-1"), target.path, self.stream.version.decode("ascii"),
            (self.headers, self._request_trailers, self._request_body, self._request_size),
            self._status if response is not None else 0, self._reason.decode("latin-1"), response,
            (self.start_time, self._request_done, self._response_start, services.reactor.seconds()),
            f"{self._status} {error}" if local_status else error, self._server_ip,
            self.stream_id, self.client_tls, self._server_tls,
            self._grpc.entries if self._grpc is not None else (),
        )
