"""What happens after ``CONNECT``: the client's first bytes decide.

A TLS ClientHello is intercepted with a certificate from the appliance's CA
(unless the host is passed through), plain HTTP is parsed as HTTP, and
anything else is relayed untouched as a raw tunnel and recorded as a tunnel
flow.  Intercepted and plain requests run through the same ProxyProtocol and
Exchange as proxied HTTP, with the tunnel's host as their target.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.python.failure import Failure

from capture import tcp, tlshello
from capture.flow import Flow, Message
from capture.tls import ServerConnection
from capture.tlsbulk import BulkTLSFactory
from capture.upstream import UpstreamProxyFailed, Via, connect_reply_done, describe_connect_error

if TYPE_CHECKING:
    from capture.proxy import ProxyProtocol

FIRST_BYTES_TIMEOUT = 3.0  # then assume a server-speaks-first protocol


@dataclass(frozen=True, slots=True)
class TunnelTarget:
    """Where requests inside a tunnel go: the CONNECT host and port, and the SNI name."""

    scheme: str
    host: str
    port: int
    server_name: str | None = None


def host_matches(host: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(host, pattern) for pattern in patterns)


class Sniffer:
    """Holds the first bytes of a tunnel until they say what it carries."""

    log = Logger()

    def __init__(self, proxy: ProxyProtocol, host: str, port: int) -> None:
        self.proxy = proxy
        self.host = host
        self.port = port
        self.buffer = b""
        self._hello_started = False
        self.start = proxy.factory.reactor.seconds()
        self._timer = proxy.factory.reactor.callLater(FIRST_BYTES_TIMEOUT, self._silent)

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        kind = tlshello.classify(self.buffer)
        if kind is None:
            return
        if kind == "tls":
            try:
                hello = tlshello.parse_client_hello(self.buffer)
            except ValueError as e:
                self._cancel_timer()
                self.proxy.factory.record_tunnel(self.proxy, self.host, self.port, self.start, 0, 0, f"malformed TLS ClientHello: {e}")
                self.proxy.transport.abortConnection()
                return
            if hello is None:
                self._hello_started = True
                return
            self._cancel_timer()
            self._tls(hello)
        elif kind == "http":
            self._cancel_timer()
            self.proxy.switch_to(self.proxy.inner(TunnelTarget("http", self.host, self.port)), self.buffer)
        else:
            self._cancel_timer()
            self.proxy.switch_to(RawTunnel(self.proxy, self.host, self.port, self.start), self.buffer)

    def connectionLost(self, reason: Failure) -> None:
        self._cancel_timer()

    def _silent(self) -> None:
        if self._hello_started:  # a ClientHello that never finished: not something to relay
            self.proxy.factory.record_tunnel(self.proxy, self.host, self.port, self.start, len(self.buffer), 0,
                                             "TLS ClientHello cut short: the client stopped sending")
            self.proxy.closing = True
            self.proxy.transport.abortConnection()
            return
        # Nothing, or not enough to tell: a protocol where the server speaks first.
        self.proxy.switch_to(RawTunnel(self.proxy, self.host, self.port, self.start), self.buffer)

    def _cancel_timer(self) -> None:
        if self._timer.active():
            self._timer.cancel()

    def _tls(self, hello: tlshello.ClientHello) -> None:
        factory = self.proxy.factory
        name = hello.sni or self.host
        if factory.passes_through(self.proxy.client, name, self.host):
            self.proxy.switch_to(RawTunnel(self.proxy, self.host, self.port, self.start, tls_name=name), self.buffer)
            return
        context = factory.ca.cached(name)
        if context is not None:
            self._intercept(hello, name, context)
            return
        # Minting signs a certificate: keep it off the reactor thread.
        self.proxy.pause("mint")
        d = deferToThread(factory.ca.context_for, name)
        d.addCallbacks(lambda context: self._intercept(hello, name, context), self._mint_failed)
        d.addBoth(lambda _: self.proxy.resume("mint"))

    def _intercept(self, hello: tlshello.ClientHello, name: str, context: Any) -> None:
        if self.proxy.closing:
            return
        inner = self.proxy.inner(TunnelTarget("https", self.host, self.port, hello.sni), tls_name=name)
        tls_factory = BulkTLSFactory(ServerConnection(context), False, _Single(inner))
        tls = tls_factory.buildProtocol(self.proxy.transport.getPeer())
        limit = self.proxy.factory.limits.header_timeout  # the handshake is bounded like a request head
        inner.handshake_timer = self.proxy.factory.reactor.callLater(limit, inner.handshake_timed_out)
        self.proxy.switch_to(tls, self.buffer)

    def _mint_failed(self, failure: Failure) -> None:
        self.log.failure("cannot mint a certificate for {host}", failure, host=self.host)
        self.proxy.transport.abortConnection()


class _Single(Factory):
    """Hands the TLS wrapper the one protocol already built for it."""

    noisy = False

    def __init__(self, protocol: Protocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: Any) -> Protocol:
        return self._protocol


class RawTunnel:
    """Relays bytes both ways untouched; records one tunnel flow when it ends."""

    def __init__(self, proxy: ProxyProtocol, host: str, port: int, start: float, tls_name: str | None = None) -> None:
        self.proxy = proxy
        self.host = host
        self.port = port
        self.start = start
        self.tls_name = tls_name
        self.up = 0
        self.down = 0
        self.upstream: _RelayProtocol | None = None
        self._pending: list[bytes] = []
        self._recorded = False
        self._idle_timeout = proxy.factory.settings.proxy.idle_timeout
        self._idle = proxy.factory.reactor.callLater(self._idle_timeout, self._idle_expired)
        proxy.pause("connect")
        pool = proxy.factory.pool
        try:
            via = pool.via_for("https", host, port)  # a tunnel is a CONNECT: the https proxy carries it
        except UpstreamProxyFailed:
            self._failed(Failure())
            return
        address = (via.host, via.port) if via is not None else (host, port)
        endpoint = HostnameEndpoint(proxy.factory.reactor, *address, timeout=pool.connect_timeout)
        d = endpoint.connect(_RelayFactory(self, via))
        if via is not None:
            d.addErrback(via.name_in_failure)
            d.addCallback(lambda relay: relay.ready)
        d.addCallbacks(self._connected, self._failed)

    def _idle_expired(self) -> None:
        """Nothing crossed the tunnel for idle_timeout seconds: close both sides."""
        if self.upstream is not None:
            self.upstream.transport.loseConnection()
        self.proxy.transport.loseConnection()

    def _touch(self) -> None:
        if self._idle.active():
            self._idle.reset(self._idle_timeout)

    def dataReceived(self, data: bytes) -> None:
        self.up += len(data)
        self._touch()
        if self.upstream is None:
            self._pending.append(data)
        else:
            self.upstream.transport.write(data)

    def connectionLost(self, reason: Failure) -> None:
        if self._idle.active():
            self._idle.cancel()
        if self.upstream is not None:
            self.upstream.transport.loseConnection()
        self._record("")

    def _connected(self, upstream: _RelayProtocol) -> None:
        self.proxy.resume("connect")
        if self.proxy.closing:
            upstream.transport.loseConnection()
            return
        self.upstream = upstream
        for data in self._pending:
            upstream.transport.write(data)
        self._pending = []
        upstream.transport.registerProducer(self.proxy.transport, True)
        self.proxy.transport.registerProducer(upstream.transport, True)

    def _failed(self, failure: Failure) -> None:
        self.proxy.resume("connect")
        _, message = describe_connect_error(failure, self.host, self.port)
        self._record(message)
        self.proxy.transport.loseConnection()

    def downstream(self, data: bytes) -> None:
        self.down += len(data)
        self._touch()
        self.proxy.transport.write(data)

    def upstream_closed(self) -> None:
        self.proxy.transport.loseConnection()
        self._record("")

    def _record(self, error: str) -> None:
        if self._recorded:
            return
        self._recorded = True
        self.proxy.factory.record_tunnel(self.proxy, self.host, self.port, self.start, self.up, self.down, error,
                                         tls_name=self.tls_name)


class _RelayProtocol(Protocol):
    """The origin side of a raw tunnel, first asking a chained proxy for it if there is one."""

    def __init__(self, tunnel: RawTunnel, via: Via | None) -> None:
        self.tunnel = tunnel
        self.via = via
        self.ready: Deferred = Deferred()
        self._reply: bytes | None = None

    def connectionMade(self) -> None:
        tcp.tune(self.transport)
        if self.via is not None:
            self._reply = b""
            self.transport.write(self.via.connect_request(self.tunnel.host, self.tunnel.port))
        else:
            self.ready.callback(self)

    def dataReceived(self, data: bytes) -> None:
        if self._reply is None:
            self.tunnel.downstream(data)
            return
        self._reply += data
        try:
            done = connect_reply_done(self._reply)
        except UpstreamProxyFailed as e:
            self._reply = None
            self.ready.errback(UpstreamProxyFailed(f"upstream proxy {self.via.name}: {e}"))
            self.transport.abortConnection()
            return
        if done:
            self._reply = None
            self.ready.callback(self)

    def connectionLost(self, reason: Failure) -> None:
        if not self.ready.called:
            self.ready.errback(UpstreamProxyFailed(f"upstream proxy {self.via.name} closed the connection"))
        elif self.tunnel.upstream is self:
            self.tunnel.upstream_closed()


class _RelayFactory(Factory):
    noisy = False

    def __init__(self, tunnel: RawTunnel, via: Via | None) -> None:
        self.tunnel = tunnel
        self.via = via

    def buildProtocol(self, addr: Any) -> _RelayProtocol:
        return _RelayProtocol(self.tunnel, self.via)


def tunnel_flow(proxy: ProxyProtocol, host: str, port: int, start: float, end: float, up: int, down: int,
                error: str, scheme: str) -> Flow:
    """A tunnel (or failed TLS) as a flow: bytes each way and how long it lasted."""
    return Flow(
        kind="tunnel",
        client=proxy.client,
        client_port=proxy.client_port,
        scheme=scheme,
        host=host,
        port=port,
        method="CONNECT",
        path="",
        request=Message(size=up),
        response=Message(size=down) if not error else None,
        start=start,
        end=end,
        error=error,
    )
