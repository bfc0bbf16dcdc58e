"""The TLS interception layer: the client's TLS ends here, with a certificate from the appliance's CA.

The layer owns the TLS transport (``BulkTLSTransport``) over the client's
connection; the plaintext inside goes to a second ``LayerHost``
(``SecureHost``) whose layer the stack chooses once the handshake has
decided the protocol by ALPN.  A client that gives up during the
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


class TLSInterception:
    """The client's TLS, terminated here; the plaintext goes to ``inner``."""

    def __init__(self, host: LayerHost, target: TunnelTarget, name: str, context: Any) -> None:
        self.host = host
        self.target = target
        self.name = name
        services = host.services
        self.services = services
        self.inner = SecureHost(self, services, target, (host.client, host.client_port), host.start)
        tls_factory = BulkTLSFactory(ServerConnection(context), False, _Single(self.inner))
        self.tls = tls_factory.buildProtocol(host.transport.getPeer())
        self.tls.makeConnection(host.transport)
        limit = services.limits.header_timeout  # the handshake is bounded like a request head
        self.handshake_timer: Any = services.reactor.callLater(limit, self._handshake_timed_out)
        self._handshake_done = False
        self._requested = False

    def data_received(self, data: bytes) -> None:
        self.tls.dataReceived(data)

    def connection_lost(self, reason: Failure | None) -> None:
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
        self.inner.tls_facts = ((name or b"").decode("ascii", "replace"),
                                (ssl.get_alpn_proto_negotiated() or b"").decode("ascii", "replace"),
                                ssl.get_protocol_version_name() or "", ssl.get_cipher_name() or "")
        self.inner.switch(self.services.layers.secure(self.inner, self.target))

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
