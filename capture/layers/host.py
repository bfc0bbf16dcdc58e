"""The Twisted protocol that hosts a layer, and what a layer may ask of it.

A client connection is one ``LayerHost`` (``capture.proxy.connection``
adds admission and counting to it); inside intercepted TLS another
``LayerHost`` sits on the TLS transport.  A host holds exactly one layer
at a time and passes it every read and the end of the connection.  A layer
is any object with:

    data_received(data)        bytes from the client, in order
    connection_lost(reason)    the connection is gone (reason: a Failure or None)
    close_when_idle()          the appliance is stopping: close once nothing is under way

A layer hands the connection on with ``host.switch(new_layer, buffered)``:
from then on every read goes to ``new_layer``, starting with ``buffered``
(bytes the old layer read but did not consume).  The old layer must not
touch the connection afterwards.  Example: the HTTP/1 server layer, after
relaying a 101 Switching Protocols answer to an Upgrade request, builds a
WebSocket layer from the client host and the origin link it still holds
(``Exchange.upstream``: set ``link.handler`` to the new layer to receive
the origin's bytes) and calls ``host.switch(websocket_layer, rest)``; the
WebSocket layer then writes to ``host.transport`` and to the link's
transport, and pauses either side with ``registerProducer``.

Layers never import each other: the proxy's ``LayerStack`` (reached as
``host.services.layers``) builds the next layer, so each layer can be
tested with a fake stack, a ``StringTransport`` and a ``MemoryReactorClock``.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IPushProducer, ITCPTransport
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from capture import tcp
from capture.http.exchange import TunnelTarget

CLOSE_TIMEOUT = 10.0


@implementer(IPushProducer)
class _Reason:
    """Pauses the host's reading for one reason, so several reasons can overlap."""

    def __init__(self, host: LayerHost, reason: str) -> None:
        self.host = host
        self.reason = reason

    def pauseProducing(self) -> None:
        self.host.pause(self.reason)

    def resumeProducing(self) -> None:
        self.host.resume(self.reason)

    def stopProducing(self) -> None:
        """The other side is gone: whoever relays to it decides what the client gets."""


class LayerHost(Protocol):
    """A connection from a client (or the plaintext inside its TLS) and the one layer it hosts.

    ``tunnel`` names the CONNECT target when this host sits inside a tunnel.
    """

    log = Logger()

    def __init__(self, services: Any, tunnel: TunnelTarget | None = None, client: tuple[str, int] | None = None,
                 start: float | None = None) -> None:
        self.services = services
        self.tunnel = tunnel
        self.client, self.client_port = client or ("", 0)
        self.start = start or 0.0
        self.layer: Any = None
        self.tls_facts: tuple[str, str, str, str] | None = None  # (SNI, ALPN, version, cipher) inside TLS
        self.closing = False
        self._lost = False
        self._paused: set[str] = set()
        self._close_timer: Any = None

    def connectionMade(self) -> None:
        if not self.client:
            peer = self.transport.getPeer()
            self.client, self.client_port = peer.host, peer.port
        if not self.start:
            self.start = self.services.reactor.seconds()
        tcp.tune(self.transport)

    def dataReceived(self, data: bytes) -> None:
        self.layer.data_received(data)

    def connectionLost(self, reason: Failure = None) -> None:
        self.closing = True
        self._lost = True
        if self._close_timer is not None and self._close_timer.active():
            self._close_timer.cancel()
        layer, self.layer = self.layer, None
        if layer is not None:
            layer.connection_lost(reason)

    def switch(self, layer: Any, buffered: bytes = b"") -> None:
        """From now on the bytes go to ``layer``, ``buffered`` first."""
        self.layer = layer
        if buffered:
            layer.data_received(buffered)

    def request_begun(self) -> None:
        """The hosted HTTP layer has begun reading its first request (intercepted TLS counts it)."""

    def close_when_idle(self) -> None:
        if self.layer is not None and not self.closing:
            self.layer.close_when_idle()

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

    @property
    def paused(self) -> bool:
        """Is reading paused, for any reason?"""
        return bool(self._paused)

    def producer(self, reason: str) -> _Reason:
        return _Reason(self, reason)

    # -- ending -------------------------------------------------------------------

    def close(self) -> None:
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
            self._close_timer = self.services.reactor.callLater(CLOSE_TIMEOUT, self.transport.abortConnection)

    def abort(self) -> None:
        self.closing = True
        self.transport.abortConnection()
