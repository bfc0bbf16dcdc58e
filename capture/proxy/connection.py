"""One client's TCP connection to the proxy: admission, then the layers it hosts.

A connection past ``max_connections`` is closed at once; a client outside
``[proxy] allow`` gets a 403 and the close.  Everything after that is the
hosted layer's (``capture.layers.host``), starting with the HTTP/1 server.
"""

from __future__ import annotations

from typing import Any

from twisted.python.failure import Failure

from capture.http import http1
from capture.layers.host import LayerHost


class ClientConnection(LayerHost):
    """A client connection, counted against the limit while it is open."""

    def __init__(self, services: Any) -> None:
        super().__init__(services)
        self._counted = False

    def connectionMade(self) -> None:
        services = self.services
        if services.connections >= services.limits.max_connections:
            services.over_limit += 1
            self.closing = True
            self.transport.abortConnection()
            return
        services.connections += 1
        services.clients.add(self)
        self._counted = True
        super().connectionMade()
        if not services.allowed(self.client):
            services.refused += 1
            self.closing = True
            self.transport.write(http1.error_response(403, "this proxy does not serve your address"))
            self.close()
            return
        self.layer = services.layers.first(self)

    def dataReceived(self, data: bytes) -> None:
        if self.layer is not None:
            self.layer.data_received(data)

    def connectionLost(self, reason: Failure = None) -> None:
        if self._counted:
            self._counted = False
            self.services.connections -= 1
            self.services.clients.discard(self)
        super().connectionLost(reason)
