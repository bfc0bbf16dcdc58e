"""The forward proxy: one protocol per client connection, one Exchange per request.

Bodies stream in both directions: each side's transport is registered as
the producer of the other, so a slow reader pauses the fast writer and a
1 GiB transfer passes with flat memory.  Capture keeps at most
``max_capture_body`` bytes per body and never changes what is forwarded.
"""

from __future__ import annotations

import ipaddress
import socket
from collections import deque
from typing import Any

import httptools
from twisted.internet import defer
from twisted.internet.interfaces import IHandshakeListener, IPushProducer, ITCPTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from capture import http1, pages, tcp
from capture.autopass import AutoPassthrough
from capture.ca import CertificateAuthority
from capture.config import Settings
from capture.envproxy import chained_proxy
from capture.rules import SessionRule, matching_sessions
from capture.shipper import Shipper
from capture.tls import UpstreamTLS
from capture.tunnel import Sniffer, TunnelTarget, host_matches, tunnel_flow
from capture.upstream import UpstreamPool, UpstreamProtocol, describe_connect_error

REDACTED = b"[redacted]"
CLOSE_TIMEOUT = 10.0
_LOCAL_NAMES = {"localhost", "localhost.localdomain", "0.0.0.0", "::", socket.gethostname().lower()}


class ProxyFactory(Factory):
    """What every client connection shares: settings, pool, shipper, own ports."""

    noisy = False

    log = Logger()

    def __init__(
        self,
        settings: Settings,
        shipper: Shipper,
        reactor: Any,
        pool: UpstreamPool | None = None,
        ca: CertificateAuthority | None = None,
    ) -> None:
        self.settings = settings
        self.shipper = shipper
        self.reactor = reactor
        self.ca = ca
        if pool is None:
            tls = UpstreamTLS(settings.tls.verify_upstream, settings.tls.upstream_ca)
            pool = UpstreamPool(reactor, tls, chained_proxy(settings.proxy), connect_timeout=settings.limits.connect_timeout,
                                idle_timeout=settings.proxy.idle_timeout)
        self.pool = pool
        self.own_ports: set[int] = set()
        self.proxy_port = 0  # the proxy listener's port, for onboarding pages
        self.limits = settings.limits
        self._redact = frozenset(name.encode("ascii") for name in settings.capture.redact)
        self.refused = 0  # clients outside [proxy] allow
        self.connections = 0
        self.over_limit = 0  # connections closed at once because max_connections were open
        self.clients: set[ProxyProtocol] = set()
        self.draining = False
        # (client address, host) pairs tunnelled untouched after the client rejected our certificate.
        self.auto_passthrough = AutoPassthrough(shipper, reactor, settings.tls.auto_passthrough)
        self._allowed: dict[str, bool] = {}

    def buildProtocol(self, addr: Any) -> ProxyProtocol:
        protocol = ProxyProtocol()
        protocol.factory = self
        return protocol

    def allowed(self, client: str) -> bool:
        verdict = self._allowed.get(client)
        if verdict is None:
            try:
                address = ipaddress.ip_address(client)
            except ValueError:
                return False
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
                address = address.ipv4_mapped
            verdict = any(address in net for net in self.settings.proxy.allow)
            if len(self._allowed) < 65536:
                self._allowed[client] = verdict
        return verdict

    def redact(self, headers: list[tuple[bytes, bytes]],
               trailers: list[tuple[bytes, bytes]] | None = None) -> list[tuple[bytes, bytes]]:
        """Headers, then trailers, as stored: [capture] redact names masked, so secrets never reach the store.

        Without names to mask, the list itself comes back: it is packed at once, not kept.
        """
        if trailers:
            headers = headers + trailers
        names = self._redact
        if not names:
            return headers
        return [(n, REDACTED) if n.lower() in names else (n, v) for n, v in headers]

    def passes_through(self, client: str, name: str, host: str) -> bool:
        """Should this TLS tunnel be relayed untouched instead of intercepted?"""
        patterns = self.settings.tls.passthrough
        if patterns and (host_matches(name, patterns) or host_matches(host, patterns)):
            return True
        return self.auto_passthrough.passes(client, name)

    def record(self, candidates: tuple[SessionRule, ...], flow: tuple[Any, ...]) -> None:
        """Hand a finished flow to the shipper for every session that wants it.

        ``flow`` is a ``Flow``, or its fields as ``pack_fields`` takes them.
        """
        sessions = matching_sessions(candidates, flow)
        if sessions:
            self.shipper.submit(flow, sessions)

    def record_tunnel(self, proxy: ProxyProtocol, host: str, port: int, start: float, up: int, down: int,
                      error: str, tls_name: str | None = None) -> None:
        candidates = self.shipper.rules.for_client(proxy.client)
        if candidates:
            scheme = "https" if tls_name else "tcp"
            self.record(candidates, tunnel_flow(proxy, tls_name or host, port, start, self.reactor.seconds(),
                                                up, down, error, scheme))

    def tls_failed(self, proxy: ProxyProtocol, target: TunnelTarget, name: str, reason: Failure | None,
                   timed_out: bool = False) -> None:
        """An intercepted handshake did not finish: record it; capture.autopass decides about passthrough."""
        if timed_out:  # the client is still there, it just never finished: no reason to pass its host through
            self._record_tls(proxy, target, f"TLS handshake for {name} timed out: the client never finished it")
            return
        self.auto_passthrough.handshake_failed(proxy.client, name, proxy.start, reason,
                                               lambda message: self._record_tls(proxy, target, message))

    def closed_before_request(self, proxy: ProxyProtocol, target: TunnelTarget, name: str) -> None:
        """The client closed an intercepted connection without sending a request."""
        self.auto_passthrough.closed_before_request(proxy.client, name, proxy.start,
                                                    lambda message: self._record_tls(proxy, target, message))

    def _record_tls(self, proxy: ProxyProtocol, target: TunnelTarget, message: str) -> None:
        name = proxy.tls_name or target.host
        self.log.info("{client}: {message}", client=proxy.client, message=message)
        candidates = self.shipper.rules.for_client(proxy.client)
        if candidates:
            self.record(candidates, tunnel_flow(proxy, name, target.port, proxy.start, self.reactor.seconds(),
                                                0, 0, message, "https"))

    def listening_on(self, port: int) -> None:
        """Our own proxy port: for onboarding pages, and to refuse requests that loop back."""
        self.own_ports.add(port)
        self.proxy_port = port

    def counters(self) -> dict[str, int]:
        return {
            "refused_clients": self.refused,
            "client_connections": self.connections,
            "connections_over_limit": self.over_limit,
        }

    def drain(self, grace: float) -> defer.Deferred:
        """Stop: close idle client connections now, busy ones after their exchange, all within ``grace``."""
        self.draining = True
        for client in list(self.clients):
            client.close_when_idle()
        d: defer.Deferred = defer.Deferred()

        def check(deadline: float) -> None:
            if not self.clients:
                d.callback(None)
            elif self.reactor.seconds() >= deadline:
                for client in list(self.clients):
                    client.transport.abortConnection()
                d.callback(None)
            else:
                self.reactor.callLater(0.05, check, deadline)

        check(self.reactor.seconds() + grace)
        return d

    def is_self(self, host: str, port: int) -> bool:
        """Would this target loop back into one of our own listeners?"""
        if port not in self.own_ports:
            return False
        if host in _LOCAL_NAMES:
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return address.is_loopback or address.is_unspecified


@implementer(IPushProducer)
class _Reason:
    """Pauses the client for one reason, so several reasons can overlap."""

    def __init__(self, protocol: ProxyProtocol, reason: str) -> None:
        self.protocol = protocol
        self.reason = reason

    def pauseProducing(self) -> None:
        self.protocol.pause(self.reason)

    def resumeProducing(self) -> None:
        self.protocol.resume(self.reason)

    def stopProducing(self) -> None:
        """The origin's connection is gone: the exchange, told by the upstream, decides what the client gets."""


@implementer(IHandshakeListener)
class ProxyProtocol(Protocol):
    """A client connection: parses requests and runs their exchanges in order.

    Inside a CONNECT tunnel a second ProxyProtocol parses the tunnelled
    requests; ``tunnel`` then names where they go.
    """

    factory: ProxyFactory
    log = Logger()

    def __init__(self, tunnel: TunnelTarget | None = None, tls_name: str | None = None) -> None:
        self.tunnel = tunnel
        self.tls_name = tls_name
        self.handshake_timer: Any = None
        self.start = 0.0
        self.client = ""
        self.client_port = 0
        self.closing = False
        self._parser: Any = None
        self._url: list[bytes] = []
        self._headers: list[tuple[bytes, bytes]] = []
        self._parsing: Exchange | None = None
        self._exchanges: deque[Exchange] = deque()
        self._paused: set[str] = set()
        self._idle: Any = None
        self._connect: bytes | None = None
        self._relay: Any = None  # after CONNECT: what the raw client bytes go to
        self._counted = False
        self._requested = False  # a request has begun on this connection
        self._handshake_done = False  # intercepted TLS with the client is up
        self._feeding = False
        self._lost = False
        self._close_timer: Any = None
        self._refusal: tuple[int, str] | None = None  # a 400 owed after the exchange under way
        # Bounds on the request head being read (see [limits]).
        self._in_head = True
        self._head_bytes = 0
        self._head_tail = b""  # the last bytes of the head so far: its end may span two reads
        self._line_done = False
        self._url_bytes = 0
        self._header_count = 0
        self._head_timer: Any = None
        self._body_timer: Any = None

    # -- connection -------------------------------------------------------------

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self.client, self.client_port = peer.host, peer.port
        self.start = self.factory.reactor.seconds()
        factory = self.factory
        if self.tunnel is None:
            if factory.connections >= factory.limits.max_connections:
                factory.over_limit += 1
                self.closing = True
                self.transport.abortConnection()
                return
            factory.connections += 1
            factory.clients.add(self)
            self._counted = True
        if self.tunnel is None and not factory.allowed(self.client):
            self.factory.refused += 1
            self.closing = True
            self.transport.write(http1.error_response(403, "this proxy does not serve your address"))
            self._close()
            return
        tcp.tune(self.transport)
        self._parser = httptools.HttpRequestParser(self)
        self._start_idle_timer()

    def dataReceived(self, data: bytes) -> None:
        if self._relay is not None:
            self._relay.dataReceived(data)
            return
        if self.closing:
            return
        if self._in_head:
            # llhttp buffers a header value until its line ends: bound the raw bytes too.
            limits = self.factory.limits
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
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            if self._connect is None:
                self._refuse(501, "protocol upgrades (WebSocket, h2c) are not supported")
            else:
                self._begin_tunnel(data[e.args[0]:])
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

    def _start_next(self) -> None:
        """Start the first waiting exchange, once the bytes read so far are all parsed.

        Never from inside the parser: a request is only forwarded once the
        whole read it arrived in has been checked, so a bad chunk or trailer
        later in the same read stops it before it reaches the origin.
        """
        if self._exchanges and not self.closing:
            first = self._exchanges[0]
            if not first.started:
                first.start()

    def connectionLost(self, reason: Failure = None) -> None:
        we_closed = self.closing  # an idle timeout, a refusal, a drain: not the client giving up
        self.closing = True
        self._lost = True
        if self._counted:
            self._counted = False
            self.factory.connections -= 1
            self.factory.clients.discard(self)
        for timer in (self._idle, self.handshake_timer, self._head_timer, self._body_timer, self._close_timer):
            if timer is not None and timer.active():
                timer.cancel()
        if self._relay is not None:
            self._relay.connectionLost(reason)
        elif self.tunnel is not None and self.tunnel.scheme == "https":
            if self.handshake_timer is not None:
                self.factory.tls_failed(self, self.tunnel, self.tls_name or self.tunnel.host, reason)
            elif self._handshake_done and not self._requested and not we_closed:
                self.factory.closed_before_request(self, self.tunnel, self.tls_name or self.tunnel.host)
        exchanges, self._exchanges = self._exchanges, deque()
        for exchange in exchanges:
            exchange.client_lost()

    def close_when_idle(self) -> None:
        """Shutting down: close now if nothing is under way, else after the exchange."""
        if self._relay is None and not self._exchanges and not self.closing:
            self.closing = True
            self._close()

    # -- tunnels ------------------------------------------------------------------

    def handshakeCompleted(self) -> None:
        """TLS with an intercepted client is up (IHandshakeListener)."""
        self._handshake_done = True
        if self.handshake_timer is not None:
            if self.handshake_timer.active():
                self.handshake_timer.cancel()
            self.handshake_timer = None

    def handshake_timed_out(self) -> None:
        """A client that never finishes the handshake: recorded, but no reason to pass its host through."""
        self.handshake_timer = None
        self.factory.tls_failed(self, self.tunnel, self.tls_name or self.tunnel.host, None, timed_out=True)
        self.transport.abortConnection()

    def inner(self, target: TunnelTarget, tls_name: str | None = None) -> ProxyProtocol:
        """The protocol for the requests inside a tunnel of this connection."""
        protocol = ProxyProtocol(target, tls_name)
        protocol.factory = self.factory
        return protocol

    def switch_to(self, relay: Any, buffered: bytes) -> None:
        """From now on the raw bytes go to ``relay`` (a TLS layer, an inner parser, a tunnel)."""
        self._relay = relay
        if isinstance(relay, Protocol):
            relay.makeConnection(self.transport)
        if buffered:
            relay.dataReceived(buffered)

    def _begin_tunnel(self, rest: bytes) -> None:
        try:
            host, port = http1.parse_authority(self._connect)
        except http1.BadRequest as e:
            self._refuse(e.status, str(e))
            return
        if self.tunnel is not None or self._exchanges:
            self._refuse(400, "CONNECT is only accepted as the first request on a connection")
            return
        if self.factory.is_self(host, port):
            self._refuse(403, "CONNECT would loop into the appliance itself")
            return
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        # One write, so the client is not left waiting on Nagle and delayed ACKs.
        self.transport.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        self.switch_to(Sniffer(self, host, port), rest)

    # -- flow control -----------------------------------------------------------

    def pause(self, reason: str) -> None:
        if not self._paused:
            self.transport.pauseProducing()
        self._paused.add(reason)

    def resume(self, reason: str) -> None:
        if reason in self._paused:
            self._paused.discard(reason)
            if not self._paused and not self.closing:
                self.transport.resumeProducing()

    def producer(self, reason: str) -> _Reason:
        return _Reason(self, reason)

    # -- llhttp callbacks ---------------------------------------------------------

    def on_message_begin(self) -> None:
        if not self._requested:
            self._requested = True
            if self.tunnel is not None and self.tunnel.scheme == "https":
                self.factory.auto_passthrough.request_seen(self.client, self.tls_name or self.tunnel.host)
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._url = []
        self._headers = []
        self._parsing = None
        self._url_bytes = self._header_count = 0
        self._head_timer = self.factory.reactor.callLater(self.factory.limits.header_timeout, self._head_timed_out)

    def on_url(self, part: bytes) -> None:
        self._url_bytes += len(part)
        if self._url_bytes > self.factory.limits.max_request_line:
            raise http1.BadRequest("request line too long", 414)
        self._url.append(part)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        limits = self.factory.limits
        if self._header_count > limits.max_headers:
            raise http1.BadRequest(f"more than {limits.max_headers} header lines", 431)
        if self._parsing is not None:
            self._parsing.request_trailer(name, value)
        else:
            self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._head_timer is not None and self._head_timer.active():
            self._head_timer.cancel()
        size = self._url_bytes + sum(len(n) + len(v) + 4 for n, v in self._headers)
        if size > self.factory.limits.max_header_bytes:
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
        exchange = Exchange(
            self,
            method,
            b"".join(self._url),
            version.encode("ascii"),
            self._headers,
            framing,
            parser.should_keep_alive(),
        )
        self._parsing = exchange
        self._exchanges.append(exchange)
        if framing != "none":
            self._body_timer = self.factory.reactor.callLater(self.factory.limits.body_timeout, self._body_timed_out)

    def on_body(self, data: bytes) -> None:
        if self._body_timer is not None:
            self._body_timer.reset(self.factory.limits.body_timeout)
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
        exchange.request_end()
        if not exchange.finished:
            self.pause("busy")  # one request at a time; a pipelined next one waits

    # -- exchanges ---------------------------------------------------------------

    def exchange_finished(self, exchange: Exchange, keep_alive: bool) -> None:
        if self._exchanges and self._exchanges[0] is exchange:
            self._exchanges.popleft()
        if self._refusal is not None:  # a later request was bad: answer it now, in order
            status, message = self._refusal
            self._exchanges.clear()
            self.transport.write(http1.error_response(status, message))
            self._close()
            return
        if not keep_alive or self.closing or (self.factory.draining and not self._exchanges):
            self.closing = True
            self._exchanges.clear()
            self._close()
            return
        if self._exchanges:
            if not self._feeding:
                self._start_next()
        else:
            self._start_idle_timer()
        self.resume("busy")

    def _refuse(self, status: int, message: str) -> None:
        """Answer a bad request with an error and close, after any earlier request's answer."""
        self.closing = True  # read no further
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
            self.transport.write(http1.error_response(status, message))
        self._close()

    def _close(self) -> None:
        """Close after what was written, reading on until the client closes too.

        Closing a socket that still has unread input sends a reset, which can
        destroy an answer the client has not read yet (a 413 to an upload it
        is still sending).  So plain TCP is half-closed (RFC 9112 9.6): the
        answer goes out with a FIN and whatever the client still sends is read
        and dropped until it closes.  TLS sends its close alert and waits for
        the client's in the same way.  Reading resumes first: a connection
        paused while its exchange ran would otherwise never see the client
        close and sit in CLOSE-WAIT; one that does not close within
        CLOSE_TIMEOUT is aborted.
        """
        self.closing = True
        if self._lost:
            return
        if self._paused:
            self._paused.clear()
            self.transport.resumeProducing()
        transport = self.transport
        if ITCPTransport.providedBy(transport) and not isinstance(transport, TLSMemoryBIOProtocol):
            transport.loseWriteConnection()
        else:
            transport.loseConnection()
        if self._close_timer is None:
            self._close_timer = self.factory.reactor.callLater(CLOSE_TIMEOUT, self.transport.abortConnection)

    def _head_timed_out(self) -> None:
        if self._in_head and not self.closing:
            self._refuse(408, "request head not received in time")

    def _body_timed_out(self) -> None:
        if self.closing:
            return
        if self._paused:  # we stopped reading it ourselves: not the client's fault
            self._body_timer = self.factory.reactor.callLater(self.factory.limits.body_timeout, self._body_timed_out)
            return
        self._body_timer = None
        self.log.info("{client}: request body stalled; closing", client=self.client)
        self.closing = True
        self.transport.abortConnection()

    def _start_idle_timer(self) -> None:
        self._idle = self.factory.reactor.callLater(self.factory.settings.proxy.idle_timeout, self._idle_expired)

    def _idle_expired(self) -> None:
        if not self._exchanges:
            self.closing = True
            self._close()


class Exchange:
    """One request and its response, from the client's first byte to the last."""

    def __init__(
        self,
        proxy: ProxyProtocol,
        method: bytes,
        target: bytes,
        version: bytes,
        headers: list[tuple[bytes, bytes]],
        framing: str,
        keep_alive: bool,
    ) -> None:
        factory = proxy.factory
        self.proxy = proxy
        self.method = method
        self.raw_target = target
        self.version = version
        self.headers = headers
        self.framing = framing
        self.keep_alive = keep_alive
        self.start_time = factory.reactor.seconds()
        self.started = False
        self.request_complete = False
        self.response_started = False
        self.finished = False
        self.upstream: UpstreamProtocol | None = None
        self.target: http1.Target | None = None
        self._absolute = False  # absolute-form target: Host comes from it
        self._server_ip = ""
        self._local = False  # answered by the proxy itself, once the request is in
        self._pending: list[bytes | None] | None = []  # request body waiting for the upstream
        self._request_trailers: list[tuple[bytes, bytes]] = []
        self._request_size = 0
        self._request_done: float | None = None
        # response side
        self._status = 0
        self._reason = b""
        self._response_headers: list[tuple[bytes, bytes]] = []
        self._response_trailers: list[tuple[bytes, bytes]] = []
        self._response_framing = "none"
        self._out_framing = "none"
        self._response_size = 0
        self._response_start: float | None = None
        # capture
        self._candidates = factory.shipper.rules.for_client(proxy.client)
        self._limit = factory.settings.proxy.max_capture_body
        # Captured body chunks, up to the limit; joined once, when the flow is built.
        self._request_body: list[bytes] | None = [] if self._candidates else None
        self._response_body: list[bytes] | None = None

    # -- request side, fed by the client's parser -----------------------------------

    def start(self) -> None:
        """Our turn on the client connection: find the target and connect."""
        self.started = True
        factory = self.proxy.factory
        tunnel = self.proxy.tunnel
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
        if target.host == factory.settings.proxy.magic_host:
            self._answer_locally()
            return
        if factory.is_self(target.host, target.port):
            self._fail(403, "request would loop into the appliance itself")
            return
        self.proxy.pause("connect")
        server_name = tunnel.server_name if tunnel is not None else None
        d = factory.pool.acquire(target.scheme, target.host, target.port, server_name)
        d.addCallbacks(self._connected, self._connect_failed)

    def request_body(self, data: bytes) -> None:
        size = self._request_size
        self._request_size = size + len(data)
        if self._request_body is not None and size < self._limit:
            self._request_body.append(data[: self._limit - size])
        if self._pending is not None:
            self._pending.append(data)
        elif self.upstream is not None:
            self._write_request_body(data)

    def request_trailer(self, name: bytes, value: bytes) -> None:
        self._request_trailers.append((name, value))

    def request_end(self) -> None:
        self.request_complete = True
        if self._local:
            self._answer_locally()
        elif self._pending is not None:
            self._pending.append(None)
        elif self.upstream is not None:
            self._end_request_body()

    # -- upstream connection ----------------------------------------------------------

    def _connected(self, upstream: UpstreamProtocol) -> None:
        self.proxy.resume("connect")
        if self.finished:  # the client went away while we connected
            upstream.transport.loseConnection()
            return
        peer = upstream.transport.getPeer()
        if self.proxy.factory.is_self(peer.host, peer.port):
            upstream.reusable = False
            upstream.transport.loseConnection()
            self._fail(403, "request would loop into the appliance itself")
            return
        self.upstream = upstream
        self._server_ip = peer.host
        upstream.start(self, self.method == b"HEAD")
        keep = frozenset({b"transfer-encoding"}) if self.framing == "chunked" else frozenset()
        headers = http1.end_to_end(self.headers, keep)
        if self._absolute or not _host_header(headers):
            headers = http1.with_host(headers, self.target.authority)
        path = self.target.path.encode("latin-1")
        if upstream.absolute_form:
            path = b"http://" + self.target.authority + path
            if upstream.via.authorization is not None:
                headers.append((b"Proxy-Authorization", upstream.via.authorization))
        upstream.transport.write(http1.request_head(self.method, path, headers))
        if not self.request_complete:
            upstream.transport.registerProducer(self.proxy.producer("upstream"), True)
        pending, self._pending = self._pending, None
        for item in pending:
            if item is None:
                self._end_request_body()
            else:
                self._write_request_body(item)

    def _connect_failed(self, failure: Failure) -> None:
        self.proxy.resume("connect")
        if not self.finished:
            status, message = describe_connect_error(failure, self.target.host, self.target.port)
            self._fail(status, message)

    def _write_request_body(self, data: bytes) -> None:
        if self.framing == "chunked":
            if data:
                self.upstream.transport.writeSequence(http1.chunk(data))
        else:
            self.upstream.transport.write(data)

    def _end_request_body(self) -> None:
        transport = self.upstream.transport
        if self.framing == "chunked":
            transport.write(http1.last_chunk(self._request_trailers))
        if transport.producer is not None:
            transport.unregisterProducer()
        self.proxy.resume("upstream")
        self._request_done = self.proxy.factory.reactor.seconds()

    # -- response side, fed by the upstream's parser ------------------------------------

    def response_head(self, status: int, reason: bytes, version: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        client = self.proxy.transport
        if status < 200:
            if status != 101 and self.version == b"1.1":
                client.write(http1.response_head(b"1.1", status, reason, http1.end_to_end(headers)))
            return
        if status == 407 and self.upstream.absolute_form:
            # The chained proxy wants credentials we do not have: that is its failure, not the client's.
            self.upstream_failed(502, f"upstream proxy {self.upstream.via.name} refused the request: 407 {reason.decode('latin-1')}")
            return
        framing = http1.response_framing(headers, status, self.method == b"HEAD")  # BadResponse: a 502
        self.response_started = True
        self._response_start = self.proxy.factory.reactor.seconds()
        self._status, self._reason, self._response_headers = status, reason, headers
        out = framing
        if framing == "chunked" and self.version != b"1.1":
            out = "close"  # an HTTP/1.0 client cannot read chunked
        self._response_framing, self._out_framing = framing, out
        if out == "close":
            self.keep_alive = False
        keep = frozenset({b"transfer-encoding"}) if out == "chunked" else frozenset()
        out_headers = http1.end_to_end(headers, keep)
        if not self.keep_alive:
            out_headers.append((b"Connection", b"close"))
        elif self.version != b"1.1":
            out_headers.append((b"Connection", b"keep-alive"))
        # A proxy sends its own HTTP version (RFC 9110 6.2), so a 1.0 origin does not end keep-alive.
        client.write(http1.response_head(b"1.1", status, reason, out_headers))
        for rule in self._candidates:
            if rule.capture_responses:
                self._response_body = []
                break
        if framing != "none":
            client.registerProducer(self.upstream.transport, True)

    def response_body(self, data: bytes) -> None:
        size = self._response_size
        self._response_size = size + len(data)
        if self._response_body is not None and size < self._limit:
            self._response_body.append(data[: self._limit - size])
        if self._out_framing == "chunked":
            if data:
                self.proxy.transport.writeSequence(http1.chunk(data))
        else:
            self.proxy.transport.write(data)

    def response_trailer(self, name: bytes, value: bytes) -> None:
        self._response_trailers.append((name, value))

    def response_end(self) -> None:
        client = self.proxy.transport
        if self._out_framing == "chunked":
            client.write(http1.last_chunk(self._response_trailers))
        if client.producer is not None:
            client.unregisterProducer()
        upstream, self.upstream = self.upstream, None
        if not self.request_complete:
            # The origin answered before taking the whole body: the rest goes nowhere, and the
            # client's connection must not end with the origin's (it closes after the answer).
            upstream.reusable = False
            if upstream.transport.producer is not None:
                upstream.transport.unregisterProducer()
        self.proxy.factory.pool.release(upstream)
        self._finish("")

    def upstream_lost(self) -> None:
        """The origin closed the connection while this exchange used it."""
        self.upstream = None
        if self.response_started and self._response_framing == "close":
            client = self.proxy.transport
            if client.producer is not None:
                client.unregisterProducer()
            self._finish("")
        elif self.response_started:
            self._abort_client("origin closed the connection in the middle of the response")
        else:
            self._fail(502, "origin closed the connection without a response")

    def upstream_failed(self, status: int, message: str) -> None:
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            upstream.exchange = None
            upstream.transport.abortConnection()
        if self.response_started:
            self._abort_client(message)
        else:
            self._fail(status, message)

    def client_lost(self) -> None:
        """The client went away: drop the upstream connection and record why."""
        if self.finished:
            return
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            upstream.exchange = None
            upstream.transport.abortConnection()
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
        factory = self.proxy.factory
        if self.target is not None:
            host = self.target.host
        elif self.proxy.tunnel is not None:
            host = self.proxy.tunnel.host
        else:
            host = _host_header(self.headers).rsplit(":", 1)[0]
        magic = factory.settings.proxy.magic_host
        if host == magic and factory.ca is not None:
            here = self.proxy.transport.getHost()
            path = self.target.path if self.target is not None else self.raw_target.decode("latin-1")
            page = pages.onboarding(path, factory.ca, here.host, factory.proxy_port or here.port, magic)
            response = pages.as_response(page, head=self.method == b"HEAD")
        else:
            response = http1.error_response(400, "this is an HTTP proxy: send absolute-form requests (curl -x)",
                                            close=False, head=self.method == b"HEAD")
        self.response_started = True
        self.proxy.transport.write(response)
        self._done(self.keep_alive and self.request_complete)

    def _fail(self, status: int, message: str) -> None:
        """Answer the client with an error of our own and close the connection."""
        self.response_started = True
        self.proxy.transport.write(http1.error_response(status, message, head=self.method == b"HEAD"))
        self._status = status
        self._record(message, local_status=True)
        self._done(False)

    def _abort_client(self, message: str) -> None:
        self._record(message)
        self.proxy.transport.abortConnection()
        self._done(False)

    def _finish(self, error: str) -> None:
        self._record(error)
        self._done(self.keep_alive and self.request_complete)

    def _done(self, keep_alive: bool) -> None:
        self.finished = True
        self.proxy.exchange_finished(self, keep_alive)

    def _record(self, error: str, local_status: bool = False) -> None:
        """Gather the flow and hand it on, if any session may want it.

        On the hot path of every captured request, so the flow stays a plain
        tuple of ``Flow``'s fields (``pack_fields``): a named tuple costs
        several times as much to build.  A body that came in one chunk is kept
        without a copy.
        """
        candidates = self._candidates
        if not candidates or self.target is None:
            return
        factory = self.proxy.factory
        target = self.target
        response = None
        if self.response_started and not local_status:
            chunks = self._response_body
            body = b"".join(chunks) if chunks is not None else b""
            size = self._response_size
            response = (factory.redact(self._response_headers, self._response_trailers), body, size,
                        chunks is None or size > len(body))
        body = b"".join(self._request_body)
        size = self._request_size
        factory.record(candidates, (
            self.proxy.client, self.proxy.client_port, target.scheme, target.host, target.port,
            self.method.decode("latin-1"), target.path, self.version.decode("ascii"),
            (factory.redact(self.headers, self._request_trailers), body, size, size > len(body)),
            self._status if response is not None else 0, self._reason.decode("latin-1"), response,
            self.start_time, self._request_done, self._response_start, factory.reactor.seconds(),
            f"{self._status} {error}" if local_status else error, self._server_ip, "http",
        ))


def _host_header(headers: list[tuple[bytes, bytes]]) -> str:
    for name, value in headers:
        if name.lower() == b"host":
            return value.decode("latin-1").lower()
    return ""
