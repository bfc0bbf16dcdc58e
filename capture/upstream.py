"""Connections from the proxy to origin servers, and a bounded pool of them.

A connection carries one exchange at a time.  It parses the response with
llhttp and hands the events to the exchange.  Nothing here retries: a
request must never reach an origin twice, so a failure goes back to the
exchange, which answers the client with an error.
"""

from __future__ import annotations

import base64
import fnmatch
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import httptools
from OpenSSL import SSL
from twisted.internet import defer, error
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from capture import http1, tcp
from capture.tls import UpstreamTLS, VerificationFailed, ClientConnection, describe_tls_failure
from capture.tlsbulk import BulkTLSFactory

if TYPE_CHECKING:
    from capture.proxy import Exchange

PoolKey = tuple[str, str, int, str]  # scheme, host, port, TLS server name


@implementer(IHandshakeListener)
class UpstreamProtocol(Protocol):
    """One connection to an origin; response events go to ``self.exchange``.

    ``ready`` fires with the protocol once it can carry a request: at once
    for plain HTTP, after a verified handshake for HTTPS.
    """

    def __init__(self, key: PoolKey, tls: ClientConnection | None = None, via: Via | None = None) -> None:
        self.key = key
        self.tls = tls
        self.via = via
        self._via_reply: bytes | None = None  # the upstream proxy's answer to our CONNECT, while it arrives
        self.ready: defer.Deferred = defer.Deferred()
        self.exchange: Exchange | None = None
        self.reusable = True
        self.on_lost: Any = None
        self._parser: Any = None
        self._reason: list[bytes] = []
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_seen = False
        self._complete = False
        self._head_request = False
        self._keep_alive = False
        self._first_bytes: bytes | None = None
        self._head_bytes = 0
        self._header_count = 0
        self._limits: Any = None

    @property
    def absolute_form(self) -> bool:
        """Requests on this connection go to a chained proxy in absolute form."""
        return self.via is not None and self.tls is None

    def connectionMade(self) -> None:
        tcp.tune(self.transport)
        if self.via is not None and self.tls is not None:
            self._via_reply = b""
            self.transport.write(self.via.connect_request(self.key[1], self.key[2]))
        else:
            self._secure()

    def _secure(self) -> None:
        if self.tls is None:
            self.ready.callback(self)
        elif self.via is not None:  # after a chained proxy's CONNECT: TLS starts now
            self.transport.startTLS(self.tls)
        # else the pool connected us under a TLS transport already: handshakeCompleted follows

    def _via_data(self, data: bytes) -> None:
        self._via_reply += data
        try:
            done = connect_reply_done(self._via_reply)
        except UpstreamProxyFailed as e:
            self._via_failed(str(e))
            return
        if done:
            self._via_reply = None
            self._secure()

    def _via_failed(self, what: str) -> None:
        self.reusable = False
        self._via_reply = None
        failure = Failure(UpstreamProxyFailed(f"upstream proxy {self.via.name}: {what}"))
        self.ready.errback(failure)
        self.transport.abortConnection()

    def handshakeCompleted(self) -> None:
        try:
            self.tls.check(self.tls.ssl)
        except VerificationFailed as e:
            self.reusable = False
            self.transport.abortConnection()
            self.ready.errback(e)
            return
        self.ready.callback(self)

    def start(self, exchange: Exchange, head_request: bool) -> None:
        """Bind a new exchange; its request is written by the exchange itself."""
        self.exchange = exchange
        self._parser = httptools.HttpResponseParser(self)
        self._head_request = head_request
        self._head_seen = False
        self._complete = False
        self._first_bytes = b""  # until the status line shows it is HTTP/1.x
        self._head_bytes = 0
        self._header_count = 0
        self._limits = exchange.proxy.factory.limits

    # -- llhttp callbacks -----------------------------------------------------
    # Once the final response is complete, whatever else the origin sent in
    # the same read is ignored (and the connection not reused): it would
    # otherwise reach the client as part of, or after, a finished answer.

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
        if self._header_count > self._limits.max_headers:
            raise http1.BadResponse(f"more than {self._limits.max_headers} header lines in the response")
        if self._head_seen:
            self.exchange.response_trailer(name, value)
        else:
            self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self._complete:
            return
        self._head_seen = True
        status = self._parser.get_status_code()
        version = self._parser.get_http_version().encode("ascii")
        if sum(len(n) + len(v) + 4 for n, v in self._headers) > self._limits.max_header_bytes:
            raise http1.BadResponse("response head too large")
        if http1.forbidden_connection_options(self._headers):
            raise http1.BadResponse("the response's Connection header names its own framing headers")
        self.exchange.response_head(status, b"".join(self._reason), version, self._headers)
        if self._head_request and status >= 200:
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

    # -- transport events -----------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._via_reply is not None:
            self._via_data(data)
            return
        exchange = self.exchange
        if exchange is None:
            self.reusable = False  # bytes nobody asked for
            self.transport.loseConnection()
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
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as e:
            if self._complete:  # junk after a finished answer: keep the answer, drop the connection
                self.reusable = False
            else:
                self._fail(exchange, _response_problem(e))
                return
        if not self._head_seen and self._head_bytes > self._limits.max_header_bytes:
            # llhttp holds an unfinished head in memory: bound it as we do requests'.
            self._fail(exchange, "response head too large")
            return
        if self._complete:
            # Finish outside the parser, so the next exchange may start on this connection.
            self.reusable = self.reusable and self._keep_alive
            self.exchange = None
            exchange.response_end()

    def _fail(self, exchange: Exchange, message: str) -> None:
        self.reusable = False
        exchange.upstream_failed(502, message)

    def connectionLost(self, reason: Failure = None) -> None:
        self.reusable = False
        if not self.ready.called:
            self.ready.errback(self._setup_failure(reason))
            return
        exchange, self.exchange = self.exchange, None
        if self.on_lost is not None:
            self.on_lost(self)
        if exchange is not None:
            exchange.upstream_lost()


    def _setup_failure(self, reason: Failure | None) -> Failure:
        """Why the connection ended before it could carry a request."""
        if self.tls is not None:
            why = self.tls.failure_reason()
            where = f"{self.key[1]}:{self.key[2]}"
            if why is not None:
                return Failure(VerificationFailed(f"TLS verification of {where} failed: {why}"))
            if reason is not None and reason.check(SSL.Error):
                return Failure(VerificationFailed(f"TLS handshake with {where} failed: {describe_tls_failure(reason)}"))
        return reason if reason is not None else Failure(error.ConnectionLost())


def _response_problem(e: Exception) -> str:
    if isinstance(e, httptools.HttpParserUpgrade):
        return "the origin switched protocols, which was not asked for"
    cause = e.__cause__ or e.__context__
    if isinstance(e, httptools.HttpParserCallbackError) and not isinstance(cause, http1.BadResponse):
        raise e  # a bug of ours, not the origin's: let it be logged
    return f"bad response from the origin: {_parser_message(e)}"


def _parser_message(e: Exception) -> str:
    cause = e.__cause__ or e.__context__
    return str(cause or e)


class UpstreamPool:
    """Idle keep-alive connections by (scheme, host, port), bounded in number and age."""

    def __init__(
        self,
        reactor: Any,
        tls: UpstreamTLS | None = None,
        via: Via | None = None,
        connect_timeout: float = 10.0,
        idle_timeout: float = 60.0,
        max_idle_per_host: int = 128,
        max_idle: int = 1024,
    ) -> None:
        self._reactor = reactor
        self.tls = tls or UpstreamTLS()
        self.via = via
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.max_idle_per_host = max_idle_per_host
        self.max_idle = max_idle
        self._idle: dict[PoolKey, list[tuple[UpstreamProtocol, Any]]] = defaultdict(list)
        self._idle_count = 0

    def acquire(self, scheme: str, host: str, port: int, server_name: str | None = None) -> defer.Deferred:
        """A ready UpstreamProtocol: the most recently used idle one, or a new one.

        ``server_name`` is the name to send as SNI and verify (for HTTPS): the
        client's SNI when it sent one, else the host.
        """
        key = (scheme, host, port, server_name or host)
        idle = self._idle.get(key)
        if idle:
            protocol, timer = idle.pop()
            self._idle_count -= 1
            timer.cancel()
            protocol.on_lost = None
            return defer.succeed(protocol)
        tls = self.tls.connection(key[3]) if scheme == "https" else None
        try:
            via = self.via_for(scheme, host, port)
        except UpstreamProxyFailed:
            return defer.fail()
        if via is None:
            endpoint = HostnameEndpoint(self._reactor, host, port, timeout=self.connect_timeout)
            if tls is None:
                return endpoint.connect(_OneShotFactory(key)).addCallback(lambda protocol: protocol.ready)
            factory = BulkTLSFactory(tls, True, _OneShotFactory(key, tls))
            return endpoint.connect(factory).addCallback(lambda layer: layer.wrappedProtocol.ready)
        endpoint = HostnameEndpoint(self._reactor, via.host, via.port, timeout=self.connect_timeout)
        d = endpoint.connect(_OneShotFactory(key, tls, via))
        d.addErrback(via.name_in_failure)
        return d.addCallback(lambda protocol: protocol.ready)

    def via_for(self, scheme: str, host: str, port: int) -> Via | None:
        """The chained proxy for this target, or None for a direct connection.

        ``via`` is a configured ``Via`` or any object with the same ``via_for``
        (``upstream = system``: capture.envproxy).
        """
        return self.via.via_for(scheme, host, port) if self.via is not None else None

    def release(self, protocol: UpstreamProtocol) -> None:
        """Keep a connection for reuse, or close it if it cannot be reused."""
        idle = self._idle[protocol.key]
        if not protocol.reusable or len(idle) >= self.max_idle_per_host or self._idle_count >= self.max_idle:
            protocol.transport.loseConnection()
            return
        protocol.transport.resumeProducing()
        timer = self._reactor.callLater(self.idle_timeout, protocol.transport.loseConnection)
        idle.append((protocol, timer))
        self._idle_count += 1
        protocol.on_lost = self._forget

    def _forget(self, protocol: UpstreamProtocol) -> None:
        idle = self._idle.get(protocol.key, [])
        for i, (candidate, timer) in enumerate(idle):
            if candidate is protocol:
                timer.active() and timer.cancel()
                del idle[i]
                self._idle_count -= 1
                break
        if not idle:
            self._idle.pop(protocol.key, None)


class _OneShotFactory(Factory):
    noisy = False

    def __init__(self, key: PoolKey, tls: ClientConnection | None = None, via: Via | None = None) -> None:
        self.key = key
        self.tls = tls
        self.via = via

    def buildProtocol(self, addr: Any) -> UpstreamProtocol:
        return UpstreamProtocol(self.key, self.tls, self.via)


class UpstreamProxyFailed(Exception):
    """The chained proxy could not be reached, or refused; the message names it."""


def connect_reply_done(reply: bytes) -> bool:
    """Has a chained proxy accepted our CONNECT?  False: not all of its answer is here yet.

    Raises UpstreamProxyFailed for a refusal (a non-2xx answer) or nonsense.
    """
    if b"\r\n\r\n" not in reply:
        if len(reply) > 65536:
            raise UpstreamProxyFailed("an oversized answer to CONNECT")
        return False
    head, rest = reply.split(b"\r\n\r\n", 1)
    status_line = head.split(b"\r\n", 1)[0]
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].startswith(b"2") or rest:
        raise UpstreamProxyFailed(f"CONNECT answered {status_line.decode('latin-1')!r}")
    return True


class Via:
    """A chained (corporate) proxy: absolute-form for HTTP, CONNECT for HTTPS."""

    def __init__(self, host: str, port: int, username: str | None = None, password: str | None = None,
                 direct: tuple[str, ...] = ()) -> None:
        self.host = host
        self.port = port
        self.direct = direct
        self.name = f"{host}:{port}"
        self.authorization: bytes | None = None
        if username is not None:
            credentials = f"{username}:{password or ''}".encode("utf-8")
            self.authorization = b"Basic " + base64.b64encode(credentials)

    def used_for(self, host: str) -> bool:
        return not any(fnmatch.fnmatchcase(host, pattern) for pattern in self.direct)

    def via_for(self, scheme: str, host: str, port: int) -> Via | None:
        """This proxy, unless the host is one reached directly."""
        return self if self.used_for(host) else None

    def describe(self) -> dict[str, str]:
        """For /api/status; credentials left out."""
        return {"mode": "configured", "proxy": self.name}

    def connect_request(self, host: str, port: int) -> bytes:
        authority = (f"[{host}]" if ":" in host else host).encode("idna") + b":%d" % port
        lines = [b"CONNECT %s HTTP/1.1" % authority, b"Host: %s" % authority]
        if self.authorization is not None:
            lines.append(b"Proxy-Authorization: " + self.authorization)
        return b"\r\n".join(lines) + b"\r\n\r\n"

    def name_in_failure(self, failure: Failure) -> Failure:
        """Say that it was the upstream proxy that failed, not the origin."""
        if failure.check(UpstreamProxyFailed):
            return failure
        status, message = describe_connect_error(failure, self.host, self.port)
        return Failure(UpstreamProxyFailed(f"upstream proxy {self.name}: {message}"))


def describe_connect_error(failure: Failure, host: str, port: int) -> tuple[int, str]:
    """(status, short text) for a failed connection to an origin."""
    where = f"{host}:{port}"
    if failure.check(error.DNSLookupError):
        return 502, f"cannot resolve {host}"
    if failure.check(error.ConnectionRefusedError):
        return 502, f"connection refused by {where}"
    if failure.check(error.TimeoutError, defer.CancelledError, error.ConnectingCancelledError):
        return 504, f"timed out connecting to {where}"
    if failure.check(VerificationFailed, UpstreamProxyFailed):
        return 502, str(failure.value)
    if failure.check(error.NoRouteError):
        return 502, f"no route to {where}"
    return 502, f"cannot connect to {where}: {failure.getErrorMessage()}"
