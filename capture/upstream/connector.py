"""The one way out to an origin: TCP, optionally through a chained proxy, optionally TLS, verified.

``Connector.connect`` returns a Deferred that fires with an ``OriginLink``
once the link can carry bytes for its user: at once for plain TCP, after
the chained proxy accepted our CONNECT, after a verified handshake for
TLS.  The user (an HTTP/1 or HTTP/2 client, a raw relay) then sets
``link.handler``, which gets the origin's bytes (``data_received``) and the
end of the connection (``connection_lost``).  The pool and raw tunnels both
connect through here, so chaining and verification live in one place.
Nothing here retries: a request must never reach an origin twice.
"""

from __future__ import annotations

from typing import Any, Protocol as TypingProtocol

from OpenSSL import SSL
from twisted.internet import defer, error
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from capture import tcp
from capture.tls.bulk import BulkTLSFactory
from capture.tls.verify import ClientConnection, UpstreamTLS, VerificationFailed, describe_tls_failure
from capture.upstream.errors import UpstreamProxyFailed
from capture.upstream.via import Via, connect_reply_done


class LinkHandler(TypingProtocol):
    """What uses an origin link once it is ready."""

    def data_received(self, data: bytes) -> None: ...

    def connection_lost(self, reason: Failure | None) -> None: ...


@implementer(IHandshakeListener)
class OriginLink(Protocol):
    """One connection towards an origin; after ``ready``, its bytes go to ``handler``."""

    def __init__(self, host: str, port: int, tls: ClientConnection | None = None, via: Via | None = None,
                 raw: bool = False) -> None:
        self.host = host
        self.port = port
        self.tls = tls
        self.via = via
        # A chained proxy is asked to CONNECT for TLS and for raw tunnels; plain HTTP goes to it in absolute form.
        self._connect_via = via is not None and (tls is not None or raw)
        self._via_reply: bytes | None = None
        self.ready: defer.Deferred = defer.Deferred()
        self.handler: LinkHandler | None = None
        self.alpn: bytes | None = None  # what the origin chose by ALPN, after the handshake

    @property
    def absolute_form(self) -> bool:
        """HTTP requests on this link go to a chained proxy in absolute form."""
        return self.via is not None and not self._connect_via

    def connectionMade(self) -> None:
        tcp.tune(self.transport)
        if self._connect_via:
            self._via_reply = b""
            self.transport.write(self.via.connect_request(self.host, self.port))
        else:
            self._secure()

    def _secure(self) -> None:
        if self.tls is None:
            self.ready.callback(self)
        elif self.via is not None:  # after a chained proxy's CONNECT: TLS starts now
            self.transport.startTLS(self.tls)
        # else the connector connected us under a TLS transport already: handshakeCompleted follows

    def handshakeCompleted(self) -> None:
        try:
            self.tls.check(self.tls.ssl)
        except VerificationFailed as e:
            self.transport.abortConnection()
            self.ready.errback(e)
            return
        self.alpn = self.tls.ssl.get_alpn_proto_negotiated() or None
        self.ready.callback(self)

    def tls_facts(self) -> tuple[str, str, str, str] | None:
        """(SNI, ALPN, TLS version, cipher) of this link, or None for plain TCP."""
        ssl = self.tls.ssl if self.tls is not None else None
        if ssl is None:
            return None
        return (self.tls.server_name, (self.alpn or b"").decode("ascii", "replace"),
                ssl.get_protocol_version_name() or "", ssl.get_cipher_name() or "")

    def dataReceived(self, data: bytes) -> None:
        if self._via_reply is not None:
            self._via_data(data)
            return
        handler = self.handler
        if handler is None:  # bytes nobody asked for
            self.transport.loseConnection()
            return
        handler.data_received(data)

    def _via_data(self, data: bytes) -> None:
        self._via_reply += data
        try:
            done = connect_reply_done(self._via_reply)
        except UpstreamProxyFailed as e:
            self._via_reply = None
            self.ready.errback(Failure(UpstreamProxyFailed(f"upstream proxy {self.via.name}: {e}")))
            self.transport.abortConnection()
            return
        if done:
            self._via_reply = None
            self._secure()

    def connectionLost(self, reason: Failure = None) -> None:
        if not self.ready.called:
            self.ready.errback(self._setup_failure(reason))
            return
        handler, self.handler = self.handler, None
        if handler is not None:
            handler.connection_lost(reason)

    def _setup_failure(self, reason: Failure | None) -> Failure:
        """Why the connection ended before it could carry anything."""
        if self._via_reply is not None:
            return Failure(UpstreamProxyFailed(f"upstream proxy {self.via.name} closed the connection"))
        if self.tls is not None:
            why = self.tls.failure_reason()
            where = f"{self.host}:{self.port}"
            if why is not None:
                return Failure(VerificationFailed(f"TLS verification of {where} failed: {why}"))
            if reason is not None and reason.check(SSL.Error):
                return Failure(VerificationFailed(f"TLS handshake with {where} failed: {describe_tls_failure(reason)}"))
        return reason if reason is not None else Failure(error.ConnectionLost())


class Connector:
    """Opens origin links: directly, or through the chained proxy ``via`` names for the target.

    ``via`` is a configured ``Via`` or any object with the same ``via_for``
    (``upstream = system``: ``capture.envproxy``).
    """

    def __init__(self, reactor: Any, tls: UpstreamTLS | None = None, via: Any = None,
                 timeout: float = 10.0) -> None:
        self.reactor = reactor
        self.tls = tls or UpstreamTLS()
        self.via = via
        self.timeout = timeout

    def connect(self, host: str, port: int, server_name: str | None = None,
                alpn: tuple[bytes, ...] = (b"http/1.1",), raw: bool = False) -> defer.Deferred:
        """A Deferred OriginLink to host:port; TLS (sending and verifying ``server_name``) when one is given.

        ``raw``: a tunnel, asked of a chained proxy with CONNECT (its https proxy carries it).
        """
        tls = self.tls.connection(server_name, alpn) if server_name is not None else None
        try:
            via = self.via_for("https" if raw or tls is not None else "http", host, port)
        except UpstreamProxyFailed:
            return defer.fail()
        factory = _LinkFactory(host, port, tls, via, raw)
        if via is not None:
            endpoint = HostnameEndpoint(self.reactor, via.host, via.port, timeout=self.timeout)
            d = endpoint.connect(factory)
            d.addErrback(via.name_in_failure)
            return d.addCallback(lambda link: link.ready)
        endpoint = HostnameEndpoint(self.reactor, host, port, timeout=self.timeout)
        if tls is None:
            return endpoint.connect(factory).addCallback(lambda link: link.ready)
        return endpoint.connect(BulkTLSFactory(tls, True, factory)).addCallback(lambda layer: layer.wrappedProtocol.ready)

    def via_for(self, scheme: str, host: str, port: int) -> Via | None:
        """The chained proxy for this target, or None for a direct connection."""
        return self.via.via_for(scheme, host, port) if self.via is not None else None


class _LinkFactory(Factory):
    noisy = False

    def __init__(self, host: str, port: int, tls: ClientConnection | None, via: Via | None, raw: bool) -> None:
        self._args = (host, port, tls, via, raw)

    def buildProtocol(self, addr: Any) -> OriginLink:
        return OriginLink(*self._args)
