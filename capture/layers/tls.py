"""The TLS interception layer: the client's TLS ends here, with a certificate from the appliance's CA.

The layer owns the TLS transport (``BulkTLSTransport``) over the client's
connection; the plaintext inside goes to a second ``LayerHost``
(``SecureHost``) whose layer the stack chooses once the handshake has
decided the protocol by ALPN.  A client that offers ``h2`` waits, its
ClientHello held, while the origin is connected first with the same offer:
the client is then given what the origin chose (``h2`` when the origin
could not be reached, so the failure reaches it as an HTTP/2 answer), and
the origin link goes to the shared ``H2Pool`` (or, if it chose HTTP/1.1, to the
HTTP/1.1 pool); when that pool already holds an HTTP/2 connection to the
origin with a stream free, the client is given ``h2`` without connecting
first.  A client that gives up during the
handshake, or never finishes it within ``header_timeout``, is reported to
``services.tls_failed``.  Hosted as described in ``capture.layers.host``.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from capture.http.exchange import TunnelTarget
from capture.layers.host import LayerHost
from capture.tls.bulk import BulkTLSFactory
from capture.tls.verify import ServerConnection
from capture.upstream.alpn_pool import ALPN_BOTH, AlpnOrigins
from capture.upstream.connector import OriginLink


class TLSInterception:
    """The client's TLS, terminated here; the plaintext goes to ``inner``."""

    def __init__(self, host: LayerHost, target: TunnelTarget, name: str, context: Any, offers_h2: bool) -> None:
        self.host = host
        self.target = target
        self.name = name
        services = host.services
        self.services = services
        self.context = context
        self.inner = SecureHost(self, services, target, (host.client, host.client_port), host.start)
        self.tls: Any = None
        self.origins: AlpnOrigins | None = None
        self._held: list[bytes] | None = None
        limit = services.limits.header_timeout  # the handshake is bounded like a request head
        self.handshake_timer: Any = services.reactor.callLater(limit, self._handshake_timed_out)
        self._handshake_done = False
        self._requested = False
        if not offers_h2:
            self._start_tls(None)
            return
        self.origins = AlpnOrigins(services.h2_pool)
        server_name = target.server_name or target.host
        if services.h2_pool.has_room((target.host, target.port, server_name)):
            self._start_tls(b"h2")  # a shared HTTP/2 connection to the origin is open already
            return
        self._held = []
        d = services.connector.connect(target.host, target.port, server_name, ALPN_BOTH)
        d.addCallbacks(self._origin_ready, lambda _: self._start_tls(b"h2"))

    def _origin_ready(self, link: OriginLink) -> None:
        if self.host.closing:
            link.transport.loseConnection()
            return
        self.origins.adopt(link, self.target.server_name or self.target.host)
        self._start_tls(b"h2" if link.alpn == b"h2" else b"http/1.1")

    def _start_tls(self, alpn: bytes | None) -> None:
        """Begin the client's handshake, selecting ``alpn`` when the client offers it."""
        if self.host.closing:
            return
        tls_factory = BulkTLSFactory(ServerConnection(self.context), False, _Single(self.inner))
        self.tls = tls_factory.buildProtocol(self.host.transport.getPeer())
        self.tls.alpn_choice = alpn
        self.tls.makeConnection(self.host.transport)
        held, self._held = self._held, None
        if held:
            self.tls.dataReceived(b"".join(held))

    def data_received(self, data: bytes) -> None:
        if self._held is not None:
            self._held.append(data)
        else:
            self.tls.dataReceived(data)

    def connection_lost(self, reason: Failure | None) -> None:
        if self.tls is None:  # gone while the origin was being connected
            if self.handshake_timer is not None and self.handshake_timer.active():
                self.handshake_timer.cancel()
            return
        self.tls.connectionLost(reason)  # the inner host's connectionLost follows, then inner_lost

    def close_when_idle(self) -> None:
        self.inner.close_when_idle()

    def handshake_done(self) -> None:
        self._handshake_done = True
        if self.handshake_timer is not None:
            if self.handshake_timer.active():
                self.handshake_timer.cancel()
            self.handshake_timer = None
        ssl = self.tls._tlsConnection
        name = ssl.get_servername()
        alpn = ssl.get_alpn_proto_negotiated() or b""
        self.inner.tls_facts = ((name or b"").decode("ascii", "replace"), alpn.decode("ascii", "replace"),
                                ssl.get_protocol_version_name() or "", ssl.get_cipher_name() or "")
        self.inner.switch(self.services.layers.secure(self.inner, self.target, alpn, self.origins))

    def request_begun(self) -> None:
        """The first request inside: the client accepted our certificate."""
        self._requested = True
        self.services.request_seen(self.host, self.name)

    def inner_lost(self, reason: Failure | None, we_closed: bool) -> None:
        """The plaintext connection ended: before the handshake finished, or before any request, say so.

        ``we_closed``: an idle timeout, a refusal, a drain, not the client giving up.
        """
        if self.handshake_timer is not None:
            if self.handshake_timer.active():
                self.handshake_timer.cancel()
            self.handshake_timer = None
            self.services.tls_failed(self.host, self.target, self.name, reason)
        elif self._handshake_done and not self._requested and not we_closed:
            self.services.closed_before_request(self.host, self.target, self.name)

    def _handshake_timed_out(self) -> None:
        """A client that never finishes the handshake: recorded, but no reason to pass its host through."""
        self.handshake_timer = None
        self.services.tls_failed(self.host, self.target, self.name, None, timed_out=True)
        self.host.abort()


@implementer(IHandshakeListener)
class SecureHost(LayerHost):
    """The plaintext inside an intercepted TLS connection, hosting the layer chosen after the handshake."""

    def __init__(self, tls_layer: TLSInterception, services: Any, tunnel: TunnelTarget, client: tuple[str, int],
                 start: float) -> None:
        super().__init__(services, tunnel, client, start)
        self.tls_layer = tls_layer

    def handshakeCompleted(self) -> None:
        self.tls_layer.handshake_done()

    def request_begun(self) -> None:
        self.tls_layer.request_begun()

    def connectionLost(self, reason: Failure = None) -> None:
        self.tls_layer.inner_lost(reason, we_closed=self.closing)
        super().connectionLost(reason)


class _Single(Factory):
    """Hands the TLS wrapper the one protocol already built for it."""

    noisy = False

    def __init__(self, protocol: Protocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: Any) -> Protocol:
        return self._protocol
